import DomainConfig
import Foundation
import Testing
@testable import Xend
#if canImport(Glibc)
import Glibc
#endif

/// `xend-relocation-ssl` (RelocationTLS.swift): the files' checks, and the TLS relay end to
/// end over a socketpair standing in for the TCP connection, with throwaway certificates
/// made by openssl(1): a whole stream both ways with half-closes, a peer from another CA
/// refused, a certificate for another host refused.
@Suite(.serialized) struct RelocationTLSTests {
    /// Makes CA `ca1` and `ca2`, hosts `a` and `b` signed by ca1 and `rogue` by ca2 (each
    /// for DNS:localhost), in a new directory; nil when openssl is not installed.
    static func certificates() throws -> String? {
        guard access("/usr/bin/openssl", X_OK) == 0 else { return nil }
        let dir = "/tmp/tls-unit-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let script = """
            set -e; cd "$1"
            ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $1.key -out $1.pem -days 2 -subj "/CN=xenith test $1" 2>/dev/null; }
            host() {
              openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $1.key -out $1.csr -subj "/CN=$1" 2>/dev/null
              printf 'subjectAltName=DNS:localhost\\n' > $1.ext
              openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -out $1.pem -days 2 -extfile $1.ext 2>/dev/null
            }
            ca ca1; ca ca2; host a ca1; host b ca1; host rogue ca2
            # expired: valid for no time at all (-days 0)
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout expired.key -out expired.csr -subj "/CN=expired" 2>/dev/null
            openssl x509 -req -in expired.csr -CA ca1.pem -CAkey ca1.key -CAcreateserial -out expired.pem -days 0 2>/dev/null
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", script, "sh", dir]
        try p.run(); p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw XendError(.internalError, "openssl failed making test certificates in \(dir)") }
        return dir
    }

    static func config(_ dir: String, host: String, ca: String = "ca1") -> XendConfig {
        var c = XendConfig()
        c.relocationSSL = true
        c.relocationSSLKeyFile = "\(dir)/\(host).key"
        c.relocationSSLCertFile = "\(dir)/\(host).pem"
        c.relocationSSLCAFile = "\(dir)/\(ca).pem"
        return c
    }

    @Test func offLoadsNothing() throws {
        #expect(try RelocationTLS.load(XendConfig()) == nil)
    }

    @Test func missingOrWrongFilesAreNamed() throws {
        var c = XendConfig()
        c.relocationSSL = true
        #expect(throws: XendError.self) { try RelocationTLS.load(c) }
        do { _ = try RelocationTLS.load(c); Issue.record("loaded without files") } catch {
            #expect(error.message.contains("xend-relocation-ssl-cert-file is not set"), "\(error.message)")
        }
        c.relocationSSLCertFile = "/nonexistent/host.pem"
        c.relocationSSLKeyFile = "/nonexistent/host.key"
        c.relocationSSLCAFile = "/nonexistent/ca.pem"
        do { _ = try RelocationTLS.load(c); Issue.record("loaded missing files") } catch {
            #expect(error.message == "xend-relocation-ssl-cert-file /nonexistent/host.pem: No such file or directory", "\(error.message)")
        }
        guard let dir = try Self.certificates() else { print("SKIP: \(#function) (part): openssl is not installed"); return }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        c = Self.config(dir, host: "a")
        c.relocationSSLCAFile = "/nonexistent/ca.pem"
        do { _ = try RelocationTLS.load(c); Issue.record("loaded a missing CA file") } catch {
            #expect(error.message == "xend-relocation-ssl-ca-file /nonexistent/ca.pem: No such file or directory", "\(error.message)")
        }
        // A key that is not PEM, and a key that is not the certificate's.
        c = Self.config(dir, host: "a")
        c.relocationSSLKeyFile = "\(dir)/a.ext"
        do { _ = try RelocationTLS.load(c); Issue.record("loaded a bad key") } catch {
            #expect(error.message.hasPrefix("xend-relocation-ssl-key-file \(dir)/a.ext: not a PEM private key"), "\(error.message)")
        }
        // This host's certificate out of date.
        sleep(1)
        do { _ = try RelocationTLS.load(Self.config(dir, host: "expired")); Issue.record("loaded an expired certificate") } catch {
            #expect(error.message.hasPrefix("xend-relocation-ssl-cert-file \(dir)/expired.pem: the certificate expired at 20"), "\(error.message)")
        }
        c = Self.config(dir, host: "a")
        c.relocationSSLKeyFile = "\(dir)/b.key"
        do { _ = try RelocationTLS.load(c); Issue.record("loaded a key of another certificate") } catch {
            #expect(error.message.contains("does not go with xend-relocation-ssl-cert-file"), "\(error.message)")
        }
    }

    /// Runs `server` and `client` wraps on the two ends of a socketpair at once.
    static func handshake(_ server: RelocationTLS, _ client: RelocationTLS, host: String = "localhost")
        -> (server: Result<RelocationTLS.Connection, XendError>, client: Result<RelocationTLS.Connection, XendError>, raw: [Int32]) {
        var pair: [Int32] = [-1, -1]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0)
        let box = NSLock()
        nonisolated(unsafe) var serverResult: Result<RelocationTLS.Connection, XendError>?
        let done = DispatchSemaphore(value: 0)
        let fd0 = pair[0]
        Thread {
            let r: Result<RelocationTLS.Connection, XendError>
            do throws(XendError) { r = .success(try server.wrap(fd0, role: .server, peer: "test client")) } catch { r = .failure(error) }
            box.lock(); serverResult = r; box.unlock()
            done.signal()
        }.start()
        let c: Result<RelocationTLS.Connection, XendError>
        do throws(XendError) { c = .success(try client.wrap(pair[1], role: .client(host: host), peer: "test server")) } catch { c = .failure(error) }
        done.wait()
        box.lock(); defer { box.unlock() }
        return (serverResult!, c, pair)
    }

    static func waitFor(_ cond: () -> Bool) -> Bool {
        for _ in 0..<100 where !cond() { usleep(20_000) }
        return cond()
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            precondition(n > 0, "write: \(String(cString: strerror(errno)))")
            off += n
        }
    }

    static func readAll(_ fd: Int32) -> [UInt8] {
        var out: [UInt8] = [], buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { return out }
            out += buf[0..<n]
        }
    }

    @Test func relaysAStreamBothWaysWithHalfCloses() throws {
        guard let dir = try Self.certificates() else { print("SKIP: \(#function): openssl is not installed"); return }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let server = try #require(try RelocationTLS.load(Self.config(dir, host: "b")))
        let client = try #require(try RelocationTLS.load(Self.config(dir, host: "a")))
        let h = Self.handshake(server, client)
        defer { close(h.raw[0]); close(h.raw[1]) }
        let s = try h.server.get().fd, c = try h.client.get().fd
        defer { close(s); close(c) }
        // 4 MiB one way (far more than the relay may hold), then a line back after the
        // sender's half-close, as the refusal path does.
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        let payload = [UInt8](unsafeUninitializedCapacity: 4 << 20) { buf, n in
            for i in 0..<buf.count { x = x &* 6364136223846793005 &+ 1442695040888963407; buf[i] = UInt8(truncatingIfNeeded: x >> 56) }
            n = buf.count
        }
        let received = NSLock()
        nonisolated(unsafe) var got: [UInt8] = []
        let reader = Thread {
            let r = Self.readAll(s)
            received.lock(); got = r; received.unlock()
            Self.writeAll(s, Array("(ready receive)\n".utf8))
            shutdown(s, Int32(SHUT_WR))
        }
        reader.start()
        Self.writeAll(c, payload)
        shutdown(c, Int32(SHUT_WR))
        let answer = Self.readAll(c)
        #expect(String(decoding: answer, as: UTF8.self) == "(ready receive)\n")
        received.lock(); defer { received.unlock() }
        #expect(got.count == payload.count && got == payload)
    }

    @Test func aPeerFromAnotherCAIsRefusedOnBothSides() throws {
        guard let dir = try Self.certificates() else { print("SKIP: \(#function): openssl is not installed"); return }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The target presents ca2's certificate: the source refuses it.
        let rogue = try #require(try RelocationTLS.load(Self.config(dir, host: "rogue")))
        let a = try #require(try RelocationTLS.load(Self.config(dir, host: "a")))
        var h = Self.handshake(rogue, a)
        #expect(throws: XendError.self) { try h.client.get() }
        if case .failure(let e) = h.client {
            #expect(e.message.contains("TLS handshake with test server failed: the peer's certificate did not verify"), "\(e.message)")
            #expect(e.message.contains("unknown CA"), "\(e.message)")
        }
        #expect(throws: XendError.self) { try h.server.get() }
        for fd in h.raw { close(fd) }
        // The source presents ca2's certificate: the target refuses it (mutual TLS).
        let b = try #require(try RelocationTLS.load(Self.config(dir, host: "b")))
        h = Self.handshake(b, rogue)
        if case .failure(let e) = h.server {
            #expect(e.message.contains("the peer's certificate did not verify"), "\(e.message)")
        } else { Issue.record("the server took a client certificate from another CA") }
        switch h.client {
        case .failure(let e):
            #expect(e.message.contains("refused our certificate"), "\(e.message)")
        case .success(let conn):
            // TLS 1.3: the client's handshake ended before the server checked; it learns
            // the refusal when the connection ends.
            #expect(Self.readAll(conn.fd).isEmpty)
            #expect(Self.waitFor { conn.failure != nil })
            #expect(conn.failure?.contains("refused our certificate: unknown CA") ?? false, "\(String(describing: conn.failure))")
            close(conn.fd)
        }
        for fd in h.raw { close(fd) }
        // A certificate for another host name.
        h = Self.handshake(b, a, host: "otherhost")
        if case .failure(let e) = h.client {
            #expect(e.message.contains("hostname mismatch"), "\(e.message)")
        } else { Issue.record("the client took a certificate for another host") }
        for fd in h.raw { close(fd) }
        if case .success(let conn) = h.server { close(conn.fd) }
    }
}
