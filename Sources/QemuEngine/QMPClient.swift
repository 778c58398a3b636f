// A QMP client: QEMU's JSON machine protocol over a Unix stream socket
// (QEMU docs/interop/qmp-spec.rst): greeting, qmp_capabilities, then one command at a
// time; asynchronous events are delivered to a callback from a reader thread.
import Foundation
import UnixSocket
#if canImport(Glibc)
import Glibc
#endif

/// A QMP failure; `message` is QEMU's `error.desc` or what went wrong locally.
public struct QMPError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ m: String) { message = m }
    public var description: String { message }
}

/// One asynchronous QMP event (`{"event": NAME, "data": {...}, "timestamp": {...}}`).
public struct QMPEvent: @unchecked Sendable {
    /// Event name: `SHUTDOWN`, `RESET`, `STOP`, `RESUME`, `GUEST_PANICKED`, `POWERDOWN`...
    public var name: String
    /// The `data` member (JSON object as Foundation values), empty when absent.
    public var data: [String: Any]
    /// `SHUTDOWN`'s `reason`: `guest-shutdown`, `guest-reset`, `host-qmp-quit`, ...
    public var reason: String? { data["reason"] as? String }
}

/// A guest vCPU as `query-cpus-fast` reports it.
public struct QMPCPU: Sendable, Equatable {
    /// vCPU index.
    public var index: Int
    /// Host thread id (TID) running it.
    public var threadID: Int32
}

/// A connected, negotiated QMP session. Thread-safe: commands are serialized.
public final class QMPClient: @unchecked Sendable {
    private let fd: Int32
    private let lock = NSCondition()
    private var replies: [Int: Result<Any, QMPError>] = [:]
    private var nextID = 1
    private var closed = false
    private let sendLock = NSLock()
    private let onEvent: @Sendable (QMPEvent) -> Void
    private let onClose: @Sendable () -> Void
    /// The greeting's QEMU version, e.g. `7.2.22`.
    public private(set) var version = ""

    /// Connects to `path`, reads the greeting and negotiates capabilities.
    /// - Parameters:
    ///   - timeout: seconds to keep retrying the connection (QEMU may not listen yet).
    ///   - onEvent: called on the reader thread for every event.
    ///   - onClose: called once on the reader thread when QEMU closes the socket.
    /// - Throws: `QMPError` when the socket does not answer in time or negotiation fails.
    public init(path: String, timeout: Double = 10, onEvent: @escaping @Sendable (QMPEvent) -> Void = { _ in },
                onClose: @escaping @Sendable () -> Void = {}) throws {
        self.onEvent = onEvent
        self.onClose = onClose
        let deadline = Date().addingTimeInterval(timeout)
        var fd: Int32 = -1
        while true {
            do { fd = try UnixSocket.connect(path: path); break } catch {
                // A path that cannot be a socket address never will be: no point retrying.
                guard case .system(_, _, let e) = error else { throw QMPError(error.description) }
                if Date() >= deadline { throw QMPError("\(path): \(String(cString: strerror(e)))") }
            }
            usleep(20_000)
        }
        self.fd = fd
        // Greeting: {"QMP": {"version": {...}, "capabilities": [...]}}
        guard let greeting = try? readLineBlocking(timeout: max(1, deadline.timeIntervalSinceNow)),
              let v = QMPMessage.greetingVersion(greeting) else {
            Glibc.close(fd)
            throw QMPError("\(path): no QMP greeting")
        }
        version = v
        let t = Thread { self.readLoop() }   // holds self until the socket closes
        t.name = "qmp-reader"
        t.start()
        do { _ = try execute("qmp_capabilities") } catch { close(); throw error }
    }

    deinit { close() }

    /// Closes the session (QEMU keeps running).
    public func close() {
        lock.lock()
        let was = closed
        closed = true
        lock.broadcast()
        lock.unlock()
        if !was { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    /// Whether QEMU has closed the socket or `close()` was called.
    public var isClosed: Bool { lock.lock(); defer { lock.unlock() }; return closed }

    /// Runs one command and returns its `return` member.
    /// - Parameter passing: a descriptor sent with the command's bytes (SCM_RIGHTS), as
    ///   `getfd` and `add-fd` want; QEMU gets its own copy, the caller keeps this one.
    /// - Throws: `QMPError` with QEMU's `error.desc`, on timeout (seconds), or when closed.
    @discardableResult
    public func execute(_ command: String, _ arguments: [String: Any]? = nil, timeout: Double = 10,
                        passing passedFD: Int32? = nil) throws -> Any {
        sendLock.lock()
        defer { sendLock.unlock() }
        lock.lock()
        let id = nextID
        nextID += 1
        let isClosed = closed
        lock.unlock()
        if isClosed { throw QMPError("QMP connection closed") }
        var msg: [String: Any] = ["execute": command, "id": id]
        if let arguments { msg["arguments"] = arguments }
        var data = try JSONSerialization.data(withJSONObject: msg)
        data.append(10)
        let ok = data.withUnsafeBytes { p -> Bool in
            var off = 0
            if let passedFD {
                // The descriptor rides on the first bytes of the command (QEMU attaches it to
                // the monitor that reads them).
                let n = QMPClient.sendWithDescriptor(fd, p, passedFD)
                if n <= 0 { return false }
                off = n
            }
            while off < p.count {
                let n = send(fd, p.baseAddress! + off, p.count - off, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                off += n
            }
            return true
        }
        if !ok { throw QMPError("QMP \(command): \(String(cString: strerror(errno)))") }
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        while replies[id] == nil {
            if closed {
                // `quit` is answered and then the socket closes; either order is success.
                if command == "quit" { return [String: Any]() }
                throw QMPError("QMP \(command): connection closed")
            }
            if !lock.wait(until: deadline) { throw QMPError("QMP \(command): no reply within \(Int(timeout)) s") }
        }
        return try replies.removeValue(forKey: id)!.get()
    }

    // MARK: Typed commands (QEMU qapi schema names).

    /// `stop`: pauses all vCPUs.
    public func stop() throws { try execute("stop") }
    /// `cont`: resumes all vCPUs.
    public func cont() throws { try execute("cont") }
    /// `system_powerdown`: presses the ACPI power button.
    public func systemPowerdown() throws { try execute("system_powerdown") }
    /// `system_reset`: resets the machine (with `-no-reboot` QEMU reports SHUTDOWN guest-reset
    /// only for guest-initiated resets; a host reset restarts the guest in place).
    public func systemReset() throws { try execute("system_reset") }
    /// `quit`: QEMU exits at once.
    public func quit() throws { try execute("quit") }
    /// `query-status`: (`status`, `running`). Status values: `running`, `paused`,
    /// `shutdown`, `guest-panicked`, `prelaunch`, `internal-error`, ...
    public func queryStatus() throws -> (status: String, running: Bool) {
        QMPMessage.status(try execute("query-status"))
    }
    /// `query-cpus-fast`: vCPU indexes and host thread ids.
    public func queryCPUs() throws -> [QMPCPU] {
        QMPMessage.cpus(try execute("query-cpus-fast"))
    }
    /// `balloon`: sets the balloon target, bytes of guest RAM.
    public func balloon(bytes: UInt64) throws { try execute("balloon", ["value": bytes]) }
    /// `query-balloon`: the guest's current RAM as the balloon driver reports it, bytes.
    public func queryBalloon() throws -> UInt64 {
        QMPMessage.balloonActual(try execute("query-balloon"))
    }

    // MARK: Socket plumbing.

    /// One sendmsg(2) of `bytes` on `socket` carrying `passed` as SCM_RIGHTS; the bytes
    /// sent (≤ 0 on failure, errno set). EINTR is retried.
    static func sendWithDescriptor(_ socket: Int32, _ bytes: UnsafeRawBufferPointer, _ passed: Int32) -> Int {
        let space = Int(CMSG_SPACE_INT)
        let control = UnsafeMutableRawPointer.allocate(byteCount: space, alignment: MemoryLayout<cmsghdr>.alignment)
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0, count: space)
        let h = control.assumingMemoryBound(to: cmsghdr.self)
        h.pointee.cmsg_len = Int(CMSG_LEN_INT)
        h.pointee.cmsg_level = SOL_SOCKET
        h.pointee.cmsg_type = Int32(SCM_RIGHTS)
        (control + MemoryLayout<cmsghdr>.size).storeBytes(of: passed, as: Int32.self)
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        return withUnsafeMutablePointer(to: &iov) { iovp in
            var msg = msghdr()
            msg.msg_iov = iovp
            msg.msg_iovlen = 1
            msg.msg_control = control
            msg.msg_controllen = space
            while true {
                let n = sendmsg(socket, &msg, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                return n
            }
        }
    }

    /// CMSG_SPACE(sizeof(int)) and CMSG_LEN(sizeof(int)) on Linux x86-64 (the macros do not
    /// import): a 16-byte header, the int padded to 8.
    static let CMSG_LEN_INT = MemoryLayout<cmsghdr>.size + MemoryLayout<Int32>.size
    static let CMSG_SPACE_INT = MemoryLayout<cmsghdr>.size + 8

    private var buffer: [UInt8] = []

    /// Reads one `\n`-terminated line (without it); nil at end of file.
    private func readLine(timeoutMs: Int32) throws -> Data? {
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = Data(buffer[..<nl])
                buffer.removeSubrange(...nl)
                return line
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, timeoutMs)
            if r < 0 && errno == EINTR { continue }
            if r == 0 { throw QMPError("timeout") }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            buffer += chunk[..<n]
            if buffer.count > 16 << 20 { return nil }   // a runaway reply: treat as closed
        }
    }

    private func readLineBlocking(timeout: Double) throws -> Data? {
        try readLine(timeoutMs: Int32(timeout * 1000))
    }

    private func readLoop() {
        while true {
            guard let line = try? readLine(timeoutMs: -1) else { break }
            let id: Int, result: Result<Any, QMPError>
            switch QMPMessage.decode(line) {
            case nil: continue
            case .event(let event): onEvent(event); continue
            case .reply(let i, let r): id = i; result = r
            }
            lock.lock()
            replies[id] = result
            lock.broadcast()
            lock.unlock()
        }
        lock.lock()
        closed = true
        lock.broadcast()
        lock.unlock()
        Glibc.close(fd)
        onClose()
    }
}

/// One line QEMU sent on the QMP socket after the greeting, decoded (QMP specification,
/// docs/interop/qmp-spec: "Server responses", "Asynchronous events"). Anything else QEMU
/// could send (a line that is not a JSON object, a reply without an integer `id`) is
/// ignored by the client, so it decodes to nil here.
public enum QMPMessage {
    /// `{"event": name, "data": {...}}`.
    case event(QMPEvent)
    /// `{"return": value, "id": n}` (success) or `{"error": {"desc": ...}, "id": n}`.
    case reply(id: Int, Result<Any, QMPError>)

    /// Decodes one line (without its newline); nil for what the client ignores.
    public static func decode(_ line: Data) -> QMPMessage? {
        guard let obj = (try? JSONSerialization.jsonObject(with: line)) as? [String: Any] else { return nil }
        if let name = obj["event"] as? String {
            return .event(QMPEvent(name: name, data: obj["data"] as? [String: Any] ?? [:]))
        }
        guard let id = obj["id"] as? Int else { return nil }
        if let err = obj["error"] as? [String: Any] {
            return .reply(id: id, .failure(QMPError(err["desc"] as? String ?? "QMP error")))
        }
        return .reply(id: id, .success(obj["return"] ?? [String: Any]()))
    }

    /// The QEMU version of a greeting line `{"QMP": {"version": {"qemu": {"major": ..,
    /// "minor": .., "micro": ..}}, ...}}` as `major.minor.micro` ("" when the greeting names
    /// none); nil when the line is not a greeting.
    public static func greetingVersion(_ line: Data) -> String? {
        guard let obj = (try? JSONSerialization.jsonObject(with: line)) as? [String: Any],
              let qmp = obj["QMP"] as? [String: Any] else { return nil }
        guard let v = (qmp["version"] as? [String: Any])?["qemu"] as? [String: Any] else { return "" }
        return "\(v["major"] ?? 0).\(v["minor"] ?? 0).\(v["micro"] ?? 0)"
    }

    /// `query-status`'s return: (`status`, `running`); "unknown"/false for missing members.
    public static func status(_ r: Any) -> (status: String, running: Bool) {
        let r = r as? [String: Any] ?? [:]
        return (r["status"] as? String ?? "unknown", r["running"] as? Bool ?? false)
    }

    /// `query-cpus-fast`'s return: one ``QMPCPU`` per entry; a missing member, or a thread
    /// id that is no Linux thread id (outside 1...Int32.max), reads as 0.
    public static func cpus(_ r: Any) -> [QMPCPU] {
        let r = r as? [[String: Any]] ?? []
        return r.map { QMPCPU(index: $0["cpu-index"] as? Int ?? 0, threadID: Int32(exactly: $0["thread-id"] as? Int ?? 0) ?? 0) }
    }

    /// `query-balloon`'s `actual`: bytes of guest RAM (0 when missing or not a byte count).
    public static func balloonActual(_ r: Any) -> UInt64 {
        let r = r as? [String: Any] ?? [:]
        guard let n = r["actual"] as? NSNumber, n.int64Value >= 0 || n.uint64Value > UInt64(Int64.max) else { return 0 }
        return n.uint64Value
    }
}
