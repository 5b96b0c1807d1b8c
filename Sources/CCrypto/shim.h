// OpenSSL's libcrypto (Debian: libssl-dev) for AES-XTS, PBKDF2, digests and random
// bytes, and libargon2 (Debian: libargon2-dev) for Argon2i and Argon2id.
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <argon2.h>
