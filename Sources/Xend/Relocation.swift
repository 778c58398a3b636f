// The relocation server (Xen 3.0's xend/server/relocate.py): a TCP listener on
// `xend-relocation-port` (8002) that takes incoming migrations when
// `xend-relocation-server` is yes. Xen's exchange: the peer sends `receive`, the server
// answers `(ready receive)` and the state stream follows, or `(err REASON)` and closes.
// Peers are checked against `xend-relocation-hosts-allow` (Xen 3.0.2+: space-separated
// regular expressions, each matched from the start of the peer's host name and of its
// address; none matching refuses the peer, with a log line and an error to it). A host
// name counts only when it resolves back to the peer's address (a peer controls its own
// reverse DNS), and it is looked up on the connection's thread, never the accept loop's;
// an expression written for addresses is matched against the address only. A peer the
// address alone refuses is refused in the accept loop, and every check comes before TLS.
// At most `RelocationServer.maxConnections` peers are served at once; one more is told
// the server is busy and closed.
//
// After the stream Xenith adds the switch-over of the disk locks (DiskLockHandover.swift):
// the source sends `(switchover)` once it released its locks; the target takes them,
// resumes the guest and answers `(running DOMID)`, or `(err REASON)`.
import CLinux
import DomainConfig
import Foundation
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The relocation protocol's lines and its bounded reads and writes on a connected socket.
enum RelocationWire {
    /// Seconds to connect, and to wait for each handshake line.
    static let handshakeTimeout = 10.0
    /// Seconds each side waits for the other's switch-over line once the stream is over.
    static let switchoverTimeout = 30.0
    /// Seconds a refused stream is drained after the reason went out (so it is not reset).
    static let refusalDrain = 2.0
    /// Longest line either side accepts.
    static let maxLine = 4096

    /// Xen's request, and the answers.
    static let receive = "receive"
    static let ready = "(ready receive)"
    static let switchover = "(switchover)"

    /// `(err "REASON")` with the reason quoted as an SXP string.
    static func err(_ reason: String) -> String {
        let flat = reason.replacingOccurrences(of: "\n", with: " ")
        return "(err \"" + flat.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\")"
    }

    /// The reason of an `(err ...)` line, nil for any other line.
    static func errReason(_ line: String) -> String? {
        guard line.hasPrefix("(err"), line.hasSuffix(")") else { return nil }
        var body = line.dropFirst(4).dropLast().trimmingCharacters(in: .whitespaces)
        if body.hasPrefix("\""), body.hasSuffix("\""), body.count >= 2 {
            body = String(body.dropFirst().dropLast())
            var out = "", escaped = false
            for c in body {
                if escaped { out.append(c); escaped = false } else if c == "\\" { escaped = true } else { out.append(c) }
            }
            return out
        }
        return body
    }

    /// Writes `line` and a newline, whole, within `handshakeTimeout`.
    /// - Throws: `XendError` 500 naming the peer when the write fails.
    static func write(_ fd: Int32, _ line: String, peer: String) throws(XendError) {
        let bytes = Array((line + "\n").utf8)
        var off = 0
        let deadline = Date().addingTimeInterval(handshakeTimeout)
        while off < bytes.count {
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let ms = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
            if poll(&p, 1, ms) <= 0 { throw XendError(.internalError, "\(peer): the connection took no data for \(Int(handshakeTimeout)) s") }
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw XendError(.internalError, "\(peer): \(String(cString: strerror(errno)))")
            }
            off += n
        }
    }

    /// Reads one line (without its newline) byte by byte, so nothing after it is taken from
    /// the stream, waiting at most `timeout` seconds in all.
    /// - Returns: nil when the peer closed the connection before a whole line.
    /// - Throws: `XendError` 500 on a timeout, an error, or a line over `maxLine` bytes.
    static func readLine(_ fd: Int32, timeout: Double, peer: String) throws(XendError) -> String? {
        var bytes: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = deadline.timeIntervalSinceNow
            let ready = left <= 0 ? 0 : poll(&p, 1, Int32(left * 1000))
            if ready == 0 { throw XendError(.internalError, "\(peer) sent no answer for \(Int(timeout)) s") }
            if ready < 0 {
                // A signal: poll again with what is left (a blocking recv here would wait forever).
                if errno == EINTR { continue }
                throw XendError(.internalError, "\(peer): \(String(cString: strerror(errno)))")
            }
            var b: UInt8 = 0
            let n = recv(fd, &b, 1, 0)
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw XendError(.internalError, "\(peer): \(String(cString: strerror(errno)))")
            }
            if n == 0 { return nil }
            if b == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespaces) }
            bytes.append(b)
            if bytes.count > maxLine { throw XendError(.internalError, "\(peer) sent a line over \(maxLine) bytes") }
        }
    }
}

/// The TCP listener of the relocation server and its per-connection threads.
final class RelocationServer: @unchecked Sendable {
    let manager: DomainManager
    let log: Logger
    let port: Int
    let address: String
    let allow: [NSRegularExpression]
    /// TLS when `xend-relocation-ssl` is yes: every connection is a TLS one (no plaintext).
    let tls: RelocationTLS?
    private var listenFD: Int32 = -1
    /// Peers served at once (handshakes and incoming migrations); more are refused as busy
    /// so that connections that send nothing cannot take threads without bound.
    static let maxConnections = 4
    /// Connections being served now.
    private let served = Atomic<Int>(0)

    /// - Throws: `XendError` 400 naming `xend-relocation-hosts-allow` and the expression
    ///   that does not compile, or what is wrong with the `xend-relocation-ssl-*` files.
    init(manager: DomainManager, config: XendConfig, log: Logger) throws(XendError) {
        self.manager = manager; self.log = log
        tls = try manager.relocationTLS.get()
        port = config.relocationPort
        address = config.relocationAddress
        var rx: [NSRegularExpression] = []
        for p in config.relocationHostsAllow {
            do { rx.append(try NSRegularExpression(pattern: p)) } catch {
                throw XendError(.badRequest, "xend-relocation-hosts-allow: '\(p)' is not a regular expression")
            }
        }
        allow = rx
    }

    /// Binds and listens, then accepts on a thread of its own until the process ends.
    /// - Throws: `XendError` 500 naming the address and port when they cannot be bound.
    func start() throws(XendError) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE
        var res: UnsafeMutablePointer<addrinfo>?
        let host = address.isEmpty ? nil : (address == "localhost" ? "127.0.0.1" : address)
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, let ai = res else {
            throw XendError(.internalError, "xend-relocation-address \(address): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(res) }
        let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw XendError(.internalError, "relocation server: socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0, listen(fd, 8) == 0 else {
            let e = String(cString: strerror(errno)); close(fd)
            throw XendError(.internalError, "relocation server: cannot listen on \(address.isEmpty ? "*" : address):\(port): \(e)")
        }
        listenFD = fd
        let t = Thread { [self] in acceptLoop() }
        t.name = "relocation-server"
        t.start()
        log.info("Relocation server listening on \(address.isEmpty ? "*" : address):\(port)\(tls == nil ? "" : " (TLS, peers' certificates checked)")\(allow.isEmpty ? "" : ", hosts allowed: \(allow.map(\.pattern).joined(separator: " "))")")
    }

    private func acceptLoop() {
        while true {
            var ss = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let c = withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listenFD, $0, &len) } }
            if c < 0 {
                if errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE { usleep(10_000); continue }
                log.error("relocation server: accept: \(String(cString: strerror(errno)))")
                return
            }
            _ = fcntl(c, F_SETFD, FD_CLOEXEC)
            // A peer refused by its address alone never takes one of the served places.
            if Self.allowedByAddress(allow, address: Self.numericAddress(&ss, len)) == false {
                let addr = Self.numericAddress(&ss, len)
                refuse(c, address: addr, name: addr, plaintextAnswer: tls == nil)
                close(c)
                continue
            }
            if served.wrappingAdd(1, ordering: .relaxed).newValue > Self.maxConnections {
                served.wrappingSubtract(1, ordering: .relaxed)
                let addr = Self.numericAddress(&ss, len)
                log.warning("Rejected connection from \(addr): \(Self.maxConnections) relocation peers are served already")
                if tls == nil {
                    try? RelocationWire.write(c, RelocationWire.err("the relocation server is busy (\(Self.maxConnections) peers at once); try again"),
                                              peer: "relocation peer \(addr)")
                }
                close(c)
                continue
            }
            let peerAddress = ss, peerLength = len
            let t = Thread { [self] in
                defer { close(c); served.wrappingSubtract(1, ordering: .relaxed) }
                var ss = peerAddress
                let (addr, name) = Self.peerNames(&ss, peerLength)
                // The hosts-allow check comes before the TLS handshake: a refused peer is
                // let go at once, not after a handshake it may drag out.
                guard allowed(address: addr, name: name) else {
                    refuse(c, address: addr, name: name, plaintextAnswer: tls == nil)
                    return
                }
                var fd = c
                if let tls {
                    do throws(XendError) { fd = try tls.wrap(c, role: .server, peer: "relocation peer \(addr) (\(name))").fd } catch {
                        log.warning("Rejected connection from \(addr) (\(name)): \(error.message)")
                        manager.dmesg("Relocation: rejected connection from \(addr) (\(name)): \(error.message)")
                        return
                    }
                }
                handle(fd, address: addr, name: name)
                if fd != c { close(fd) }
            }
            t.name = "relocation-peer"
            t.start()
        }
    }

    /// The peer's numeric address (IPv4-mapped IPv6 written as IPv4); "?" when it has none.
    static func numericAddress(_ ss: inout sockaddr_storage, _ len: socklen_t) -> String {
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let addr: String = withUnsafePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, len, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 ? String(cString: host) : "?"
            }
        }
        return addr.hasPrefix("::ffff:") ? String(addr.dropFirst(7)) : addr
    }

    /// The peer's numeric address and its host name: the reverse (PTR) name when that name
    /// resolves back to the address, the address otherwise. Blocks on DNS.
    static func peerNames(_ ss: inout sockaddr_storage, _ len: socklen_t) -> (String, String) {
        let addr = numericAddress(&ss, len)
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let reverse: String? = withUnsafePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, len, &host, socklen_t(host.count), nil, 0, NI_NAMEREQD) == 0 ? String(cString: host) : nil
            }
        }
        guard let reverse, resolves(reverse, to: addr) else { return (addr, addr) }
        return (addr, reverse)
    }

    /// Whether `name`'s forward lookup (A and AAAA) includes the numeric `address`.
    static func resolves(_ name: String, to address: String) -> Bool {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &res) == 0 else { return false }
        defer { freeaddrinfo(res) }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var p = res
        while let ai = p {
            if getnameinfo(ai.pointee.ai_addr, ai.pointee.ai_addrlen, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 {
                let a = String(cString: host)
                if a == address || a == "::ffff:" + address { return true }
            }
            p = ai.pointee.ai_next
        }
        return false
    }

    /// Whether `xend-relocation-hosts-allow` lets the peer in (an empty list lets all in).
    func allowed(address: String, name: String) -> Bool { Self.allowed(allow, address: address, name: name) }

    /// Xen 3.0.2's rule: some expression of `allow` matches from the start of the peer's
    /// host name or of its address (Python's `re.match`); an empty list lets every peer in.
    /// Unlike Xen, an expression written for addresses (`addressOnly`) is matched against
    /// the address alone: a peer names itself through its reverse DNS, and a name such as
    /// `10.evil.example` must not pass `^10\.`.
    static func allowed(_ allow: [NSRegularExpression], address: String, name: String) -> Bool {
        if allow.isEmpty { return true }
        return allow.contains { rx in
            (addressOnly(rx.pattern) ? [address] : [name, address]).contains { s in
                rx.firstMatch(in: s, options: .anchored, range: NSRange(s.startIndex..., in: s)) != nil
            }
        }
    }

    /// Whether the address alone settles the check: no expression could match a host name
    /// (every one is `addressOnly`), or one matches the address. `nil` when the name is
    /// needed (a DNS lookup, done on the connection's thread).
    static func allowedByAddress(_ allow: [NSRegularExpression], address: String) -> Bool? {
        if allowed(allow, address: address, name: address) { return true }
        return allow.allSatisfy { addressOnly($0.pattern) } ? false : nil
    }

    /// Whether a hosts-allow expression is written for addresses: it names an IPv6 address
    /// (a colon), or once `\d` and `\.` are set aside it has digits, dots and regular-
    /// expression punctuation only (`^10\.0\.[0-9]+$`, `192\.168\..*`).
    static func addressOnly(_ pattern: String) -> Bool {
        if pattern.contains(":") { return true }
        let bare = pattern.replacingOccurrences(of: "\\d", with: "0").replacingOccurrences(of: "\\.", with: ".")
        return bare.contains { $0.isASCII && $0.isNumber } && bare.allSatisfy { "0123456789.^$[]-()|?*+{},".contains($0) }
    }

    /// Logs a peer that `xend-relocation-hosts-allow` refuses and, on a plaintext server,
    /// tells it why (a TLS peer, refused before its handshake, is only closed).
    private func refuse(_ fd: Int32, address: String, name: String, plaintextAnswer: Bool) {
        log.warning("Rejected connection from \(address) (\(name)): not in xend-relocation-hosts-allow")
        manager.dmesg("Relocation: rejected connection from \(address) (\(name)): not in xend-relocation-hosts-allow")
        if plaintextAnswer {
            try? RelocationWire.write(fd, RelocationWire.err("relocation from \(address) (\(name)) refused: not in the target's xend-relocation-hosts-allow"),
                                      peer: "relocation peer \(address)")
        }
    }

    /// One connection, once its peer passed hosts-allow: the request, then the incoming
    /// migration.
    func handle(_ fd: Int32, address: String, name: String) {
        let peer = "relocation peer \(address)"
        do throws(XendError) {
            guard let request = try RelocationWire.readLine(fd, timeout: RelocationWire.handshakeTimeout, peer: peer) else { return }
            guard request == RelocationWire.receive || request == "(" + RelocationWire.receive + ")" else {
                try RelocationWire.write(fd, RelocationWire.err("unknown relocation request '\(request.prefix(80))' (expected receive)"), peer: peer)
                return
            }
            guard manager.migration != nil else {
                try RelocationWire.write(fd, RelocationWire.err("the migration service is not installed on the target"), peer: peer)
                return
            }
            try RelocationWire.write(fd, RelocationWire.ready, peer: peer)
        } catch {
            log.warning("Relocation from \(address): \(error.message)")
            return
        }
        manager.receiveMigration(fd, peer: address)
    }
}
