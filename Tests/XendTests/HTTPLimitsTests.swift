// The API server's bounds on its clients (Xend/HTTPLimits.swift): an announced body above
// the bound is answered 413 at once, a request that does not arrive in time 408, an idle
// connection is closed, connections above the bound get 503, and a create whose client
// went away leaves a whole domain, not half of one.
import DomainConfig
import Foundation
import Testing
import UnixSocket
import XendAPI
@testable import Xend
#if canImport(Glibc)
import Glibc
#endif

/// A raw client connection to the test server's socket.
struct RawConnection: Sendable {
    let fd: Int32
    init(_ path: String) throws { fd = try UnixSocket.connect(path: path) }
    func send(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }
    /// Everything the server sends until it closes or `seconds` pass; and whether it closed.
    /// Reads until the peer closes, `seconds` pass, or (when given) `until` appears in what was read.
    func readAll(seconds: Double, until: String? = nil) -> (text: String, closed: Bool) {
        var out: [UInt8] = []
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let until, String(decoding: out, as: UTF8.self).contains(until) { break }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, 50)
            if r <= 0 { continue }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { return (String(decoding: out, as: UTF8.self), true) }
            out += buf[..<n]
        }
        return (String(decoding: out, as: UTF8.self), false)
    }
    func close() { Glibc.close(fd) }
}

/// Runs blocking socket work on a Dispatch thread: the tests' async functions share the
/// cooperative pool (two threads on two cores) with the server they talk to, and a blocked
/// pool thread there can starve the server's request handling.
func blocking<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { c in
        DispatchQueue.global().async { c.resume(with: Result { try work() }) }
    }
}

/// The first line of a response ("\r\n" is one Character in Swift: split on it as a string).
func statusLine(_ response: String) -> String {
    response.range(of: "\r\n").map { String(response[..<$0.lowerBound]) } ?? response
}

// In ServerTests (serialized): two servers under test at once, each with a test blocked on
// it, can take both threads of the cooperative pool on a 2-core machine.
extension ServerTests {
@Suite struct HTTPLimitsTests {
    @Test func announcedBodyAboveTheBoundIsAnswered413AtOnce() async throws {
        try await withServer { _, _, root in
            let c = try RawConnection(root + "/xend-socket")
            defer { c.close() }
            // Nothing of the body follows: the answer must not wait for it.
            c.send("POST /api/v1/domains HTTP/1.1\r\nHost: xend\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n")
            let start = Date()
            let r = (try await blocking { c.readAll(seconds: 5) })
            #expect(statusLine(r.text).hasPrefix("HTTP/1.1 413 "), "\(r.text)")
            #expect(r.text.contains("99999999999 bytes is larger than xend accepts"))
            #expect(r.closed)
            #expect(Date().timeIntervalSince(start) < 2)
            // Beyond 64 bits: NIO's HTTP parser refuses the header itself (400), at once too.
            let c2 = try RawConnection(root + "/xend-socket")
            defer { c2.close() }
            c2.send("POST /api/v1/domains HTTP/1.1\r\nHost: xend\r\nContent-Length: 99999999999999999999999\r\n\r\n")
            let r2 = (try await blocking { c2.readAll(seconds: 5) })
            #expect(statusLine(r2.text) == "HTTP/1.1 400 Bad Request" && r2.closed, "\(r2.text)")
        }
    }

    @Test func chunkedBodyGrowingPastTheBoundIs413() async throws {
        try await withServer(limits: HTTPLimits(maxBodyBytes: 1000)) { _, _, root in
            let c = try RawConnection(root + "/xend-socket")
            defer { c.close() }
            c.send("POST /api/v1/domains HTTP/1.1\r\nHost: xend\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in 0..<3 { c.send("200\r\n" + String(repeating: "x", count: 512) + "\r\n") }
            let r = (try await blocking { c.readAll(seconds: 5) })
            #expect(statusLine(r.text).hasPrefix("HTTP/1.1 413 "), "\(r.text)")
            #expect(r.closed)
        }
    }

    @Test func slowAndIdleClientsAreTimedOut() async throws {
        try await withServer(limits: HTTPLimits(requestSeconds: 1)) { client, _, root in
            // A head, then a body that never comes: 408, closed.
            let slow = try RawConnection(root + "/xend-socket")
            defer { slow.close() }
            slow.send("POST /api/v1/domains HTTP/1.1\r\nHost: xend\r\nContent-Length: 100\r\n\r\n{\"con")
            // Half a head, trickled: closed by the same clock although bytes keep coming.
            let trickle = try RawConnection(root + "/xend-socket")
            defer { trickle.close() }
            trickle.send("GET /api/v1/info HTTP/1.1\r\n")
            // Connected, nothing sent.
            let idle = try RawConnection(root + "/xend-socket")
            defer { idle.close() }
            let start = Date()
            var trickled = false
            for _ in 0..<10 { trickle.send("X-Slow: 1\r\n"); try await Task.sleep(nanoseconds: 150_000_000); trickled = true }
            let r = (try await blocking { slow.readAll(seconds: 4) })
            #expect(statusLine(r.text) == "HTTP/1.1 408 Request Timeout", "\(r.text)")
            #expect(r.text.contains("within 1 s"))
            #expect(r.closed)
            let trickleClosed = try await blocking { trickle.readAll(seconds: 3) }.closed
            #expect(trickled && trickleClosed)
            let idleClosed = try await blocking { idle.readAll(seconds: 3) }.closed
            #expect(idleClosed)
            #expect(Date().timeIntervalSince(start) < 6)
            // A request answered, then nothing: the keep-alive connection is closed too;
            // time spent answering is not counted.
            let kept = try RawConnection(root + "/xend-socket")
            defer { kept.close() }
            kept.send("GET /api/v1/info HTTP/1.1\r\nHost: xend\r\n\r\n")
            let k = (try await blocking { kept.readAll(seconds: 3) })
            #expect(statusLine(k.text) == "HTTP/1.1 200 OK")
            #expect(k.closed)
            // The server still answers everyone else.
            let infoStatus = try await blocking { try client.send("GET", "/api/v1/info").status }
            #expect(infoStatus == 200)
        }
    }

    @Test func aPipelinedRequestIsTimedFromItsOwnHead() async throws {
        try await withServer(limits: HTTPLimits(requestSeconds: 1)) { _, _, root in
            // A whole request and, behind it in the same write, the head of a second whose body
            // never comes: the first is answered, the second gets 408 on its own clock (it
            // arrived while the first was served, when no clock was running).
            let c = try RawConnection(root + "/xend-socket")
            defer { c.close() }
            c.send("GET /api/v1/info HTTP/1.1\r\nHost: xend\r\n\r\n"
                   + "POST /api/v1/domains HTTP/1.1\r\nHost: xend\r\nContent-Length: 100\r\n\r\n{\"con")
            let start = Date()
            let r = (try await blocking { c.readAll(seconds: 5) })
            #expect(r.text.hasPrefix("HTTP/1.1 200 OK"), "\(r.text)")
            #expect(r.text.contains("HTTP/1.1 408 Request Timeout"), "\(r.text)")
            #expect(r.closed && Date().timeIntervalSince(start) < 4, "closed after \(Date().timeIntervalSince(start)) s")
        }
    }

    @Test func connectionsAboveTheBoundGet503() async throws {
        try await withServer(limits: HTTPLimits(maxConnections: 4)) { client, _, root in
            // withServer's own probe connection may still be closing: let it go.
            try await Task.sleep(nanoseconds: 200_000_000)
            var held: [RawConnection] = []
            defer { for c in held { c.close() } }
            for _ in 0..<4 { held.append(try RawConnection(root + "/xend-socket")) }
            // The four are served.
            held[0].send("GET /api/v1/info HTTP/1.1\r\nHost: xend\r\n\r\n")
            // Off the cooperative pool (the server needs it to answer), and up to 10 s: under
            // load a 1 s window saw no answer yet.
            let first = held[0]
            #expect(statusLine(try await blocking { first.readAll(seconds: 10, until: "\r\n\r\n") }.text) == "HTTP/1.1 200 OK")
            let extra = try RawConnection(root + "/xend-socket")
            defer { extra.close() }
            let r = (try await blocking { extra.readAll(seconds: 3) })
            #expect(statusLine(r.text) == "HTTP/1.1 503 Service Unavailable", "\(r.text)")
            #expect(r.text.contains("\"kind\":\"unavailable\""))
            #expect(r.closed)
            // One goes away: room for a client again.
            held.removeLast().close()
            var ok = false
            for _ in 0..<50 where !ok {
                ok = (try? await blocking { try client.send("GET", "/api/v1/info") })?.status == 200
                if !ok { try await Task.sleep(nanoseconds: 20_000_000) }
            }
            #expect(ok)
        }
    }

    @Test func createWhoseClientWentAwayLeavesAWholeDomain() async throws {
        try await withServer { client, manager, root in
            var cfg = DomainConfiguration(name: "gone")
            cfg.kernel = root + "/kernel"
            let body = String(decoding: try XendClient.encoder.encode(CreateRequest(config: cfg.toSXP().description)), as: UTF8.self)
            let c = try RawConnection(root + "/xend-socket")
            c.send("POST /api/v1/domains HTTP/1.1\r\nHost: xend\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body)
            c.close()   // before any answer
            var info: DomainInfo?
            for _ in 0..<200 where info == nil {
                info = try? manager.get("gone", long: false)
                if info == nil { try await Task.sleep(nanoseconds: 10_000_000) }
            }
            #expect(info?.name == "gone")
            #expect(info?.state == "r-----", "\(String(describing: info))")
            // Whole: it is listed, a second create of the name conflicts, and destroy removes it.
            let getStatus = try await blocking { try client.send("GET", "/api/v1/domains/gone").status }
            #expect(getStatus == 200)
            let create = Array(body.utf8)
            let againStatus = try await blocking { try client.send("POST", "/api/v1/domains", body: create).status }
            #expect(againStatus == 409)
            let destroyStatus = try await blocking { try client.send("POST", "/api/v1/domains/gone/destroy").status }
            #expect(destroyStatus == 200)
            // A create whose body never arrived in full made nothing.
            let half = try RawConnection(root + "/xend-socket")
            half.send("POST /api/v1/domains HTTP/1.1\r\nHost: xend\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body.prefix(20))
            half.close()
            try await Task.sleep(nanoseconds: 300_000_000)
            #expect(manager.list(long: false).map(\.name) == ["Domain-0"])
        }
    }
}
}
