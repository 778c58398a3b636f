import Foundation
import Testing
@testable import Xend
#if canImport(Glibc)
import Glibc
#endif

/// The relocation server's lines and its peer check (Relocation.swift), without a network:
/// a socketpair stands in for the connection.
@Suite struct RelocationTests {
    @Test func errLinesQuoteAndParseTheirReason() {
        let reason = #"VM name "web1" already exists (path C:\x)"#
        let line = RelocationWire.err(reason)
        #expect(line.hasPrefix("(err \"") && line.hasSuffix("\")"))
        #expect(RelocationWire.errReason(line) == reason)
        #expect(RelocationWire.errReason("(err plain)") == "plain")
        #expect(RelocationWire.errReason(RelocationWire.ready) == nil)
        #expect(RelocationWire.errReason("(running 3)") == nil)
        #expect(!RelocationWire.err("two\nlines").contains("\n"))
    }

    @Test func hostsAllowMatchesFromTheStartOfNameOrAddress() throws {
        let allow = try ["^10\\.1\\.0\\.[0-9]+$", "hostb"].map { try NSRegularExpression(pattern: $0) }
        #expect(RelocationServer.allowed(allow, address: "10.1.0.7", name: "10.1.0.7"))
        #expect(RelocationServer.allowed(allow, address: "192.168.0.9", name: "hostb.example"))
        // Python's re.match: anchored at the start only.
        #expect(!RelocationServer.allowed(allow, address: "192.168.0.9", name: "not-hostb"))
        #expect(!RelocationServer.allowed(allow, address: "10.1.0.77x", name: "x"))
        #expect(RelocationServer.allowed([], address: "1.2.3.4", name: "anyone"))
    }

    @Test func anExpressionForAddressesIsNotMatchedAgainstAPeersChosenName() throws {
        let allow = try ["^10\\.1\\.", "192\\.168\\.[0-9]+\\.\\d+$", "fe80:", "hostb"].map { try NSRegularExpression(pattern: $0) }
        // The peer 203.0.113.5 controls its reverse DNS and names itself 10.1.evil.example.
        #expect(!RelocationServer.allowed(allow, address: "203.0.113.5", name: "10.1.evil.example"))
        #expect(!RelocationServer.allowed(allow, address: "203.0.113.5", name: "192.168.1.1"))
        #expect(RelocationServer.allowed(allow, address: "10.1.0.7", name: "some.name"))
        #expect(RelocationServer.allowed(allow, address: "fe80::1", name: "fe80::1"))
        #expect(RelocationServer.allowed(allow, address: "203.0.113.5", name: "hostb.example"))
        #expect(RelocationServer.addressOnly("^10\\.0\\.[0-9]+$") && RelocationServer.addressOnly("::1"))
        #expect(!RelocationServer.addressOnly("hostb") && !RelocationServer.addressOnly("^h10\\.") && !RelocationServer.addressOnly(".*"))
    }

    @Test func theAddressAloneSettlesThePeerCheckWhenNoExpressionNamesAHost() throws {
        let byAddress = try ["^10\\.1\\."].map { try NSRegularExpression(pattern: $0) }
        #expect(RelocationServer.allowedByAddress(byAddress, address: "10.1.0.7") == true)
        #expect(RelocationServer.allowedByAddress(byAddress, address: "10.2.0.7") == false)
        let withName = try ["^10\\.1\\.", "^hostb$"].map { try NSRegularExpression(pattern: $0) }
        #expect(RelocationServer.allowedByAddress(withName, address: "10.1.0.7") == true)
        #expect(RelocationServer.allowedByAddress(withName, address: "10.2.0.7") == nil)   // the name decides
        #expect(RelocationServer.allowedByAddress([], address: "10.2.0.7") == true)
    }

    @Test func aPeersHostNameCountsOnlyWhenItResolvesBackToItsAddress() throws {
        // /etc/hosts: localhost is 127.0.0.1 (and ::1), so the reverse name is confirmed.
        #expect(RelocationServer.resolves("localhost", to: "127.0.0.1"))
        // A peer that names itself (its PTR record) a host whose address is another's.
        #expect(!RelocationServer.resolves("localhost", to: "10.1.0.7"))
        #expect(!RelocationServer.resolves("no-such-host.invalid", to: "10.1.0.7"))
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_addr.s_addr = inet_addr("127.0.0.1")
        var ss = sockaddr_storage()
        withUnsafeMutableBytes(of: &ss) { d in withUnsafeBytes(of: sin) { d.copyMemory(from: $0) } }
        let (addr, name) = RelocationServer.peerNames(&ss, socklen_t(MemoryLayout<sockaddr_in>.size))
        #expect(addr == "127.0.0.1" && name == "localhost", "\(addr) \(name)")
    }

    @Test func linesAreReadWithoutTakingTheBytesAfterThemAndWithABound() throws {
        var sv: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0)
        defer { close(sv[0]); close(sv[1]) }
        try RelocationWire.write(sv[0], RelocationWire.receive, peer: "test")
        _ = "XNTH".withCString { write(sv[0], $0, 4) }
        #expect(try RelocationWire.readLine(sv[1], timeout: 2, peer: "test") == "receive")
        var rest = [UInt8](repeating: 0, count: 8)
        #expect(read(sv[1], &rest, 8) == 4 && Array(rest.prefix(4)) == Array("XNTH".utf8))
        // Nothing more comes: a bounded wait, then a clear error.
        let t0 = Date()
        #expect(throws: XendError.self) { _ = try RelocationWire.readLine(sv[1], timeout: 0.3, peer: "the peer") }
        #expect(Date().timeIntervalSince(t0) < 2)
        // Over-long lines are refused.
        let long = String(repeating: "a", count: RelocationWire.maxLine + 10) + "\n"
        _ = long.withCString { write(sv[0], $0, strlen($0)) }
        #expect(throws: XendError.self) { _ = try RelocationWire.readLine(sv[1], timeout: 2, peer: "the peer") }
        // The peer closing is nil, not an error.
        close(sv[0]); sv[0] = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var drain = [UInt8](repeating: 0, count: 65536)
        while recv(sv[1], &drain, drain.count, Int32(MSG_DONTWAIT)) > 0 {}
        #expect(try RelocationWire.readLine(sv[1], timeout: 2, peer: "the peer") == nil)
    }
}
