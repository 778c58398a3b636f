// A small blocking HTTP/1.1 client over a Unix socket: xm's side of the management API.
// (No event loop: xm is a short-lived command and its start-up counts in `xm list`'s latency.)
import Foundation
import UnixSocket
#if canImport(Glibc)
import Glibc
#endif

/// Why a request to xend failed before any HTTP reply arrived.
public struct XendConnectionError: Error, Sendable, CustomStringConvertible {
    /// The socket path tried.
    public var path: String
    /// strerror text ("No such file or directory", "Connection refused").
    public var reason: String
    public var description: String { reason }
}

/// A reply: status code and body bytes.
public struct HTTPReply: Sendable {
    public var status: Int
    public var body: [UInt8]
}

/// Talks to xend's Unix socket (`xend-unix-path`).
public struct XendClient: Sendable {
    public let socketPath: String
    public init(socketPath: String) { self.socketPath = socketPath }

    /// Sends one request (Connection: close) and reads the whole reply.
    /// - Throws: `XendConnectionError` when the socket cannot be reached or the reply is cut.
    public func send(_ method: String, _ path: String, body: [UInt8]? = nil) throws -> HTTPReply {
        let fd: Int32
        do { fd = try UnixSocket.connect(path: socketPath) } catch {
            // A refused or missing socket reads as strerror alone; a bad path as its own line.
            if case .system = error { throw XendConnectionError(path: socketPath, reason: String(cString: strerror(error.errno))) }
            throw XendConnectionError(path: socketPath, reason: error.description)
        }
        defer { close(fd) }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: xend\r\nConnection: close\r\n"
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        else if method == "POST" { head += "Content-Length: 0\r\n" }
        head += "\r\n"
        var out = Array(head.utf8)
        if let body { out += body }
        var off = 0
        while off < out.count {
            let n = out[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw XendConnectionError(path: socketPath, reason: String(cString: strerror(errno))) }
            off += n
        }
        var reply: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            reply += buf[0..<n]
            if let r = Self.parse(reply), r.complete { return r.reply }
        }
        guard let r = Self.parse(reply) else {
            throw XendConnectionError(path: socketPath, reason: "connection closed without a reply")
        }
        return r.reply
    }

    /// Parses a (possibly partial) HTTP/1.1 reply: Content-Length or chunked bodies.
    static func parse(_ data: [UInt8]) -> (reply: HTTPReply, complete: Bool)? {
        let sep: [UInt8] = [13, 10, 13, 10]
        guard data.count >= 4, let end = (0...(data.count - 4)).first(where: { data[$0..<$0 + 4].elementsEqual(sep) }) else { return nil }
        let head = String(decoding: data[0..<end], as: UTF8.self)
        let lines = head.components(separatedBy: "\r\n")
        let parts = lines[0].split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { return nil }
        var length: Int? = nil
        var chunked = false
        for l in lines.dropFirst() {
            let kv = l.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard kv.count == 2 else { continue }
            if kv[0].lowercased() == "content-length" { length = Int(kv[1]) }
            if kv[0].lowercased() == "transfer-encoding" && kv[1].lowercased().contains("chunked") { chunked = true }
        }
        let body = Array(data[(end + 4)...])
        if chunked {
            var out: [UInt8] = []
            var i = 0
            while true {
                guard let crlf = (i..<max(i, body.count - 1)).first(where: { body[$0] == 13 && body[$0 + 1] == 10 }) else {
                    return (HTTPReply(status: status, body: out), false)
                }
                let sizeText = String(decoding: body[i..<crlf], as: UTF8.self).split(separator: ";").first ?? ""
                guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else {
                    return (HTTPReply(status: status, body: out), false)
                }
                if size == 0 { return (HTTPReply(status: status, body: out), true) }
                let start = crlf + 2
                guard start + size + 2 <= body.count else { return (HTTPReply(status: status, body: out), false) }
                out += body[start..<start + size]
                i = start + size + 2
            }
        }
        if let length { return (HTTPReply(status: status, body: Array(body.prefix(length))), body.count >= length) }
        return (HTTPReply(status: status, body: body), false)
    }

    /// JSON coders for the API (snake_case keys).
    public static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys]
        return e
    }()
    public static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }()

    /// A request whose 2xx reply decodes as `T`.
    /// - Throws: `XendConnectionError`; `APIErrorReply` for a non-2xx reply.
    public func call<T: Decodable>(_ method: String, _ path: String, body: (some Encodable)? = Optional<TextReply>.none,
                                   as type: T.Type) throws -> T {
        let data = try body.map { try Array(Self.encoder.encode($0)) }
        let r = try send(method, path, body: data)
        guard (200..<300).contains(r.status) else {
            if let e = try? Self.decoder.decode(APIErrorReply.self, from: Data(r.body)) { throw e }
            throw APIErrorReply(error: "Xend has probably crashed!  ProtocolError(\(r.status)).", kind: "internal")
        }
        return try Self.decoder.decode(T.self, from: Data(r.body))
    }

    /// Percent-escapes a domain name or id for use in a path.
    public static func escape(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? s
    }
}
