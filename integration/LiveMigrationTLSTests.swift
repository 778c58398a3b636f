import Foundation
import Testing

/// `xm migrate --live` with `xend-relocation-ssl yes` on both hosts (issue 13, item 5), on
/// the two-namespace set-up of `LiveMigrationTests`: a throwaway CA signs both hosts'
/// certificates (openssl(1)); the target first presents a certificate from another CA and
/// is refused (the guest counts on at the source, nothing is left on the target, the error
/// names the reason); with its right certificate the guest moves and its counter goes on.
@Suite(.serialized) struct LiveMigrationTLSTests {
    /// Writes `ca1` and `ca2` (CAs), `a` and `b` (signed by ca1, for the hosts' LAN
    /// addresses) and `rogue` (signed by ca2, for b's address) into `dir`.
    static func makeCertificates(_ dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let script = """
            set -e; cd "$1"
            ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $1.key -out $1.pem -days 2 -subj "/CN=xenith test $1" 2>/dev/null; }
            host() {
              openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $1.key -out $1.csr -subj "/CN=$1" 2>/dev/null
              printf 'subjectAltName=%s\\n' "$3" > $1.ext
              openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -out $1.pem -days 2 -extfile $1.ext 2>/dev/null
            }
            ca ca1; ca ca2
            host a ca1 IP:\(LiveMigrationTests.lanA)
            host b ca1 IP:\(LiveMigrationTests.lanB)
            host rogue ca2 IP:\(LiveMigrationTests.lanB)
            """
        try LiveMigrationTests.sh("sh -c '\(script.replacingOccurrences(of: "'", with: "'\\''"))' sh \(dir)")
    }

    static func tlsConfig(_ dir: String, key: String, cert: String) -> String {
        """
        (xend-relocation-ssl yes)
        (xend-relocation-ssl-key-file '\(dir)/\(key)')
        (xend-relocation-ssl-cert-file '\(dir)/\(cert)')
        (xend-relocation-ssl-ca-file '\(dir)/ca1.pem')
        """
    }

    @Test func liveMigrationOverMutualTLS() throws {
        if skip(LiveMigrationTests.unavailable) { return }
        if skip(access("/usr/bin/openssl", X_OK) == 0 ? nil : "openssl is not installed (.ci/deps)") { return }
        // b's configured files start as copies of the rogue pair; they are replaced later.
        let s = try LiveMigrationTests.setUp("s", stream: false) { shared in
            let dir = shared + "/tls"
            try Self.makeCertificates(dir)
            try LiveMigrationTests.sh("cp \(dir)/rogue.pem \(dir)/b-host.pem && cp \(dir)/rogue.key \(dir)/b-host.key")
            return (Self.tlsConfig(dir, key: "a.key", cert: "a.pem"), Self.tlsConfig(dir, key: "b-host.key", cert: "b-host.pem"))
        }
        defer { s.teardown() }
        let c = try s.a.xm("create", s.config)
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        #expect(LiveMigrationTests.waitUntil(120) { s.a.counts("lm").count >= 3 }, "\(s.a.consoleLog("lm").suffix(800))")

        // The target's certificate is from another CA: refused before anything is sent.
        let before = s.a.counts("lm").last ?? -1
        let bad = try s.a.xm("migrate", "-l", "lm", LiveMigrationTests.lanB)
        #expect(bad.status != 0, "migrated to a target with a certificate from another CA")
        #expect(bad.stderr.contains("TLS handshake with the relocation server at \(LiveMigrationTests.lanB):8002 failed")
                && bad.stderr.contains("unknown CA"), "\(bad.stderr)")
        #expect(try s.a.xm("list", "lm").stdout.contains("r-----"), "not running on the source")
        #expect(LiveMigrationTests.waitUntil(20) { (s.a.counts("lm").last ?? -1) >= before + 2 }, "the guest does not count on")
        #expect(LiveMigrationTests.waitUntil(15) { s.b.leftovers().isEmpty }, "left on the target: \(s.b.leftovers())")
        print("rogue target refused: \(bad.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")

        // b gets its certificate from the CA a trusts; xend reads the files when it starts.
        let dir = s.shared + "/tls"
        try LiveMigrationTests.sh("cp \(dir)/b.pem \(dir)/b-host.pem && cp \(dir)/b.key \(dir)/b-host.key")
        let restart = try run("/usr/bin/env", ["ip", "netns", "exec", s.b.ns, "env", "XENITH_ROOT=\(s.b.root)", Env.binary("xend"), "restart"], timeout: 60)
        #expect(restart.status == 0, "\(restart.stderr)")
        let logB = s.b.consoleLog("lm").count
        let t0 = Date()
        let ok = try s.a.xm("migrate", "--live", "lm", LiveMigrationTests.lanB)
        #expect(ok.status == 0 && ok.stdout.isEmpty && ok.stderr.isEmpty, "\(ok.stdout)\(ok.stderr)")
        guard ok.status == 0 else { return }
        try LiveMigrationTests().expectMoved(s, from: s.a, to: s.b, targetLog: logB, seconds: Date().timeIntervalSince(t0))
    }
}
