// OpenSSL's libcrypto (Debian: libssl-dev) for AES-XTS, PBKDF2, digests and random
// bytes, and libargon2 (Debian: libargon2-dev) for Argon2i and Argon2id.
// EVP_CIPHER_CTX_iv_noconst is marked deprecated since OpenSSL 3.0 (see below).
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <argon2.h>

// The IV inside a cipher context that has one, where a new tweak can be written before
// each sector: initialising the context again with the IV costs as much as encrypting
// 512 bytes. OpenSSL 3 returns the provider's own IV here. XTSCipher checks when it is
// made that a tweak written here is the one used, and initialises per sector otherwise.
static inline unsigned char *strata_cipher_iv(EVP_CIPHER_CTX *context) {
    return EVP_CIPHER_CTX_iv_noconst(context);
}
