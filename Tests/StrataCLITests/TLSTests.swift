import Foundation
import Testing

/// NBD over TLS with the clients users have: nbdinfo, nbdcopy, qemu-img and qemu-io, and
/// libnbd's Python binding, with X.509 certificates made by certtool and pre-shared keys
/// made by psktool; plain clients refused under `tls: require`; wrong keys, untrusted
/// certificates and names an export does not allow refused, the server unharmed;
/// STARTTLS with bytes behind it refused; keys reloaded; keys never in a dump.
@Suite(.serialized, .timeLimit(.minutes(4)),
       .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/certtool"), "needs gnutls-bin"))
struct TLSTests {
    /// A CA, a server certificate for localhost, and client directories as libnbd and
    /// qemu read them: `client` (CN=client.example.com, signed by the CA), `mallory`
    /// (signed by the CA, another name) and `rogue` (signed by a CA the server does not
    /// trust).
    static func makeCertificates(in directory: String) throws {
        let script = """
            set -e
            cd '\(directory)'
            mkdir -p pki client mallory rogue
            certtool --generate-privkey --outfile pki/ca-key.pem 2>/dev/null
            printf 'cn = Strata test CA\\nca\\ncert_signing_key\\nexpiration_days = 2\\n' > ca.info
            certtool --generate-self-signed --load-privkey pki/ca-key.pem --template ca.info --outfile pki/ca-cert.pem 2>/dev/null
            certtool --generate-privkey --outfile pki/server-key.pem 2>/dev/null
            printf 'organization = Strata test\\ncn = localhost\\ndns_name = localhost\\ntls_www_server\\nencryption_key\\nsigning_key\\nexpiration_days = 2\\n' > server.info
            certtool --generate-certificate --load-ca-certificate pki/ca-cert.pem --load-ca-privkey pki/ca-key.pem \\
                --load-privkey pki/server-key.pem --template server.info --outfile pki/server-cert.pem 2>/dev/null
            client() {  # DIR CA-DIR CN
                certtool --generate-privkey --outfile "$1/client-key.pem" 2>/dev/null
                printf 'country = GB\\norganization = Strata test\\ncn = %s\\ntls_www_client\\nencryption_key\\nsigning_key\\nexpiration_days = 2\\n' "$3" > "$1.info"
                certtool --generate-certificate --load-ca-certificate "$2/ca-cert.pem" --load-ca-privkey "$2/ca-key.pem" \\
                    --load-privkey "$1/client-key.pem" --template "$1.info" --outfile "$1/client-cert.pem" 2>/dev/null
                cp pki/ca-cert.pem "$1/ca-cert.pem"
            }
            client client pki client.example.com
            client mallory pki mallory
            mkdir -p rogue-ca
            certtool --generate-privkey --outfile rogue-ca/ca-key.pem 2>/dev/null
            certtool --generate-self-signed --load-privkey rogue-ca/ca-key.pem --template ca.info --outfile rogue-ca/ca-cert.pem 2>/dev/null
            client rogue rogue-ca client.example.com
            psktool -u alice -p keys.psk >/dev/null
            psktool -u bob -p keys.psk >/dev/null
            psktool -u alice -p wrong.psk >/dev/null
            """
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let made = try runProgram("/bin/sh", ["-c", script])
        #expect(made.0 == 0, "\(made)")
    }

    static let clientName = "CN=client.example.com,O=Strata test,C=GB"

    /// Whether the server logs `text` within 10 s (its log is its standard error).
    static func logs(_ server: ServeProcess, _ text: String) -> Bool {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if server.stderr.contains(text) { return true }
            usleep(20_000)
        }
        return false
    }

    static func serve(_ header: String, in directory: String) throws -> ServeProcess {
        let server = try RestartTests.serve(header + """

            disks:
              - {name: m0, memory: 16MiB}
              - {name: m1, memory: 16MiB}
            exports:
              - {name: open, provider: m0}
              - {name: secret, provider: m1, tls-allow: ["\(clientName)", bob]}
            """, in: directory)
        #expect(server.waitForOutput("control socket"), "\(server.stderr)")
        return server
    }

    /// A TLS URI of `export` on the test's socket, as `user` (PSK) if given.
    static func uri(_ export: String, _ directory: String, _ query: String = "", user: String? = nil) -> String {
        "nbds+unix://\(user.map { $0 + "@" } ?? "")/\(export)?socket=\(directory)/nbd.sock" + query
    }

    /// nbdinfo's exit status and output for `uri`.
    static func nbdinfo(_ arguments: [String]) throws -> (Int32, String) {
        let result = try runProgram("/usr/bin/nbdinfo", arguments)
        return (result.0, result.1 + result.2)
    }

    @Test func certificatesWithRealClientsAndEveryRefusal() throws {
        let directory = NSTemporaryDirectory() + "strata-tls-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Self.makeCertificates(in: directory)
        let server = try Self.serve("tls: require\ntls-certificates: pki\ntls-verify-peer: true", in: directory)
        defer { _ = server.stop() }
        let client = "&tls-certificates=\(directory)/client"

        // nbdinfo lists and opens; qemu-io writes and reads back; nbdcopy copies out.
        let listed = try Self.nbdinfo(["--list", Self.uri("", directory, client)])
        #expect(listed.0 == 0 && listed.1.contains("export=\"open\"") && listed.1.contains("export=\"secret\""), "\(listed)")
        let opened = try Self.nbdinfo([Self.uri("secret", directory, client)])
        #expect(opened.0 == 0 && opened.1.contains("with TLS"), "\(opened)")
        let qemu = ["--object", "tls-creds-x509,id=tls0,endpoint=client,dir=\(directory)/client", "--image-opts",
                    "driver=nbd,path=\(directory)/nbd.sock,export=secret,tls-creds=tls0,tls-hostname=localhost"]
        let io = try runProgram("/usr/bin/qemu-io", qemu + ["-c", "write -P 0x6b 1M 2M", "-c", "read -P 0x6b 1M 2M"])
        #expect(io.0 == 0 && !io.1.contains("Pattern verification failed"), "\(io)")
        let info = try runProgram("/usr/bin/qemu-img", ["info"] + qemu)
        #expect(info.0 == 0 && info.1.contains("16 MiB"), "\(info)")
        let copied = try runProgram("/bin/sh", ["-c", "nbdcopy '\(Self.uri("secret", directory, client))' - | head -c 3145728 | tail -c 2097152 | od -An -tx1 | sort -u"])
        #expect(copied.1.trimmingCharacters(in: .whitespacesAndNewlines).hasPrefix("6b 6b 6b"), "\(copied)")

        // Refused: a plain client, a certificate from a CA the server does not trust, no
        // certificate, and a trusted certificate whose name the export does not allow.
        let plain = try Self.nbdinfo(["nbd+unix:///open?socket=\(directory)/nbd.sock"])
        #expect(plain.0 != 0, "\(plain)")
        let plainList = try runProgram("/usr/bin/python3", ["-c", """
            import nbd
            h = nbd.NBD(); h.set_opt_mode(True); h.connect_uri("nbd+unix:///?socket=\(directory)/nbd.sock")
            try:
                h.opt_list(lambda name, description: print("listed", name))
            except nbd.Error as e:
                print("refused", e.errno)
            """])
        #expect(plainList.1.contains("refused") && !plainList.1.contains("listed"), "no export is listed before TLS: \(plainList)")
        let rogue = try Self.nbdinfo([Self.uri("open", directory, "&tls-certificates=\(directory)/rogue")])
        #expect(rogue.0 != 0, "\(rogue)")
        let mallory = "&tls-certificates=\(directory)/mallory"
        let refused = try Self.nbdinfo([Self.uri("secret", directory, mallory)])
        #expect(refused.0 != 0 && refused.1.contains("secret"), "\(refused)")
        let malloryList = try Self.nbdinfo(["--list", Self.uri("", directory, mallory)])
        #expect(malloryList.1.contains("export=\"open\"") && !malloryList.1.contains("export=\"secret\""), "\(malloryList)")
        #expect(Self.logs(server, "TLS handshake failed"), "\(server.stderr)")
        #expect(server.stderr.contains("CERTIFICATE_VERIFY_FAILED"), "\(server.stderr)")
        #expect(server.stderr.contains("export 'secret' is not open to 'CN=mallory,O=Strata test,C=GB'"), "\(server.stderr)")
        #expect(server.stderr.contains("tls-client=\(Self.clientName)"), "\(server.stderr)")

        // The server is unharmed, and a dump names the directory, never a key.
        #expect(try Self.nbdinfo([Self.uri("open", directory, client)]).0 == 0)
        let dump = try runProgram(strataBinary, ["config", "dump", "--control", directory + "/control.sock"])
        #expect(dump.1.contains("tls: require") && dump.1.contains("tls-certificates: \(directory)/pki")
                && dump.1.contains("tls-verify-peer: true") && dump.1.contains("tls-allow:"), "\(dump)")
        #expect(!dump.1.contains("PRIVATE KEY") && !server.stderr.contains("PRIVATE KEY"))
        #expect(server.stop() == 0)
    }

    @Test func presharedKeysWithRealClientsReloadedWithoutARestart() throws {
        let directory = NSTemporaryDirectory() + "strata-psk-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Self.makeCertificates(in: directory)
        let server = try Self.serve("tls: require\ntls-psk-file: keys.psk", in: directory)
        defer { _ = server.stop() }
        func open(_ export: String, as user: String, keys: String) throws -> (Int32, String) {
            try Self.nbdinfo([Self.uri(export, directory, "&tls-psk-file=\(directory)/\(keys)", user: user)])
        }
        #expect(try open("open", as: "alice", keys: "keys.psk").0 == 0)
        #expect(try open("secret", as: "bob", keys: "keys.psk").0 == 0, "bob is on secret's list")
        #expect(try open("secret", as: "alice", keys: "keys.psk").0 != 0, "alice is not")
        #expect(try open("open", as: "alice", keys: "wrong.psk").0 != 0, "a wrong key")
        #expect(try open("open", as: "carol", keys: "keys.psk").0 != 0, "an identity the server does not have")
        try FileManager.default.createDirectory(atPath: directory + "/qemu", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: directory + "/keys.psk", toPath: directory + "/qemu/keys.psk")
        let qemu = try runProgram("/usr/bin/qemu-io", [
            "--object", "tls-creds-psk,id=tls0,endpoint=client,dir=\(directory)/qemu,username=alice", "--image-opts",
            "driver=nbd,path=\(directory)/nbd.sock,export=open,tls-creds=tls0", "-c", "write -P 0x21 0 64k", "-c", "read -P 0x21 0 64k"])
        #expect(qemu.0 == 0 && !qemu.1.contains("Pattern verification failed"), "\(qemu)")
        #expect(Self.logs(server, "TLS handshake failed"), "\(server.stderr)")

        // A new key for alice takes over on reload; the old one is refused from then on.
        try FileManager.default.moveItem(atPath: directory + "/keys.psk", toPath: directory + "/old.psk")
        #expect(try runProgram("/usr/bin/psktool", ["-u", "alice", "-p", directory + "/keys.psk"]).0 == 0)
        let reload = try runProgram(strataBinary, ["tls", "reload", "--control", directory + "/control.sock"])
        #expect(reload.0 == 0 && reload.1.contains("1 identity") && !reload.1.contains("warning"), "psktool's file is 0600: \(reload)")
        // A key file every user may read is said, at reload and in the log, and still used.
        #expect(chmod(directory + "/keys.psk", 0o644) == 0)
        let exposed = try runProgram(strataBinary, ["tls", "reload", "--control", directory + "/control.sock"])
        let warning = "\(directory)/keys.psk is readable by every user (mode 644); only the server's user needs to read it"
        #expect(exposed.0 == 0 && exposed.1.replacingOccurrences(of: "\\/", with: "/").contains("warning: " + warning), "\(exposed)")
        #expect(Self.logs(server, warning), "\(server.stderr)")
        #expect(chmod(directory + "/keys.psk", 0o600) == 0)
        #expect(try open("open", as: "alice", keys: "keys.psk").0 == 0)
        #expect(try open("open", as: "alice", keys: "old.psk").0 != 0)
        // A file that does not do is refused, naming it, and the keys in use stay.
        try Data("alice:not-hex\n".utf8).write(to: URL(fileURLWithPath: directory + "/keys.psk"))
        let broken = try runProgram(strataBinary, ["tls", "reload", "--control", directory + "/control.sock"])
        #expect(broken.0 == 1 && broken.2.contains("\(directory)/keys.psk: line 1: the key of alice is not hexadecimal"), "\(broken)")
        try FileManager.default.removeItem(atPath: directory + "/keys.psk")
        #expect(try open("open", as: "bob", keys: "old.psk").0 != 0, "bob went with the reload")
        try FileManager.default.copyItem(atPath: directory + "/old.psk", toPath: directory + "/keys.psk")
        #expect(!server.stderr.contains(try String(contentsOfFile: directory + "/old.psk", encoding: .utf8).split(separator: ":")[1].prefix(16)),
                "no key in the log")
        #expect(server.stop() == 0)
    }

    /// `tls: allow`: plain clients open the exports with no list; an export with a list
    /// is TLS-only. STARTTLS with an option behind it in the same write is a violation:
    /// the option was sent in the clear and must not be taken as if it came through TLS.
    @Test func allowModeServesBothAndStartTLSWithBytesBehindItIsRefused() throws {
        let directory = NSTemporaryDirectory() + "strata-tlsallow-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Self.makeCertificates(in: directory)
        let server = try Self.serve("tls: allow\ntls-psk-file: keys.psk", in: directory)
        defer { _ = server.stop() }
        let plain = try Self.nbdinfo(["nbd+unix:///open?socket=\(directory)/nbd.sock"])
        #expect(plain.0 == 0 && !plain.1.contains("with TLS"), "\(plain)")
        let plainSecret = try Self.nbdinfo(["nbd+unix:///secret?socket=\(directory)/nbd.sock"])
        #expect(plainSecret.0 != 0, "\(plainSecret)")
        #expect(Self.logs(server, "export 'secret' is served over TLS only"), "\(server.stderr)")
        let overTLS = try Self.nbdinfo([Self.uri("secret", directory, "&tls-psk-file=\(directory)/keys.psk", user: "bob")])
        #expect(overTLS.0 == 0 && overTLS.1.contains("with TLS"), "\(overTLS)")

        let injected = try runProgram("/usr/bin/python3", ["-c", """
            import socket, struct
            s = socket.socket(socket.AF_UNIX); s.connect("\(directory)/nbd.sock")
            greeting = s.recv(18)
            s.sendall(struct.pack(">I", 3))   # fixed newstyle, no zeroes
            option = lambda code, data=b"": struct.pack(">QII", 0x49484156454F5054, code, len(data)) + data
            s.sendall(option(5) + option(3))  # STARTTLS, then LIST behind it, in the clear
            reply = s.recv(20)
            print("ack" if struct.unpack(">QIII", reply)[2] == 1 else "no ack")
            s.settimeout(5)
            print("closed" if s.recv(4096) == b"" else "answered")
            """])
        #expect(injected.1.contains("ack") && injected.1.contains("closed"), "\(injected)")
        #expect(Self.logs(server, "data after STARTTLS, before the TLS handshake"), "\(server.stderr)")
        #expect(try Self.nbdinfo(["nbd+unix:///open?socket=\(directory)/nbd.sock"]).0 == 0, "the server is unharmed")
        #expect(server.stop() == 0)
    }

    /// fio's nbd engine over TLS (libnbd takes no key file from a URI fio passes, so the
    /// server asks for no client certificate and fio takes the server's unchecked).
    @Test func fioVerifiesWhatItWritesOverTLS() throws {
        let directory = NSTemporaryDirectory() + "strata-tlsfio-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Self.makeCertificates(in: directory)
        let server = try Self.serve("tls: require\ntls-certificates: pki", in: directory)
        defer { _ = server.stop() }
        let fio = try runProgram("/usr/bin/fio", ["--name=verify", "--ioengine=nbd",
                                                  "--uri=nbds+unix:///open?socket=\(directory)/nbd.sock&tls-verify-peer=false",
                                                  "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=8m", "--verify=crc32c",
                                                  "--do_verify=1", "--output-format=terse"])
        #expect(fio.0 == 0 && !fio.2.contains("bad"), "\(fio)")
        #expect(Self.logs(server, "TLS established"), "\(server.stderr)")
        #expect(server.stop() == 0)
    }

    @Test func credentialsThatDoNotDoStopTheStartNamingTheFile() throws {
        let directory = NSTemporaryDirectory() + "strata-tlsbad-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Self.makeCertificates(in: directory)
        try FileManager.default.removeItem(atPath: directory + "/pki/server-key.pem")
        for (header, message) in [
            ("tls: require\ntls-certificates: pki", "tls-certificates: '\(directory)/pki': \(directory)/pki/server-key.pem: cannot be read as a PEM private key"),
            ("tls: require", "t.yaml:3: tls: 'require': needs tls-certificates or tls-psk-file"),
            ("tls: sometimes\ntls-psk-file: keys.psk", "t.yaml:3: tls: 'sometimes': must be off, allow or require"),
            ("tls: allow\ntls-psk-file: nowhere.psk", "tls-psk-file: '\(directory)/nowhere.psk': \(directory)/nowhere.psk: cannot be read"),
            ("tls: allow\ntls-psk-file: keys.psk\ntls-certificates: pki", "tls-psk-file: '\(directory)/keys.psk': cannot be given with tls-certificates"),
        ] {
            let server = try RestartTests.serve(header + "\ndisks:\n  - {name: m0, memory: 1MiB}\n", in: directory)
            #expect(server.waitForExit() == 1, "\(header)")
            #expect(server.stderr.contains(message), "\(header): \(server.stderr)")
        }
    }
}
