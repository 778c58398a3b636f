import CLinux
import CoreControl
import Synchronization
import UnixSocket
#if canImport(Glibc)
import Glibc
#endif

/// The core's control socket: a Unix stream socket speaking one command per line, one
/// reply line per command. xend drives domains through it.
///
/// Commands and replies:
/// - `pause`, `unpause`, `shutdown` (ACPI power button), `reboot` (reset), `destroy` → `ok`
/// - `query` → `ok state=running|paused|stopped vcpus=N vcpu_time_ns=T0,T1,... uptime_ns=U pid=P vcpu_tids=I0,I1,...`
/// - `save`, `save-live R B D`, `restore` with the stream's descriptor attached (SCM_RIGHTS)
///   → ``CoreStateReply/line`` once the stream is complete (CoreControl's ``CoreStateCommand``);
///   run on their own thread, one at a time; the descriptor is closed when done
/// - anything else → `error unknown command: ...`
public final class ControlServer: @unchecked Sendable {
    public let path: String
    private let listenFD: Int32
    private unowned let machine: Machine
    private var buffers: [Int32: [UInt8]] = [:]
    /// Descriptors a client sent (SCM_RIGHTS) that no command has taken yet.
    private var passed: [Int32: [Int32]] = [:]
    /// The save or restore under way, if any (its thread replies on the connection).
    private var stateThread: DedicatedThread?
    private let stateBusy = Mutex(false)
    private var restored = false
    /// Held open so that, when the process runs out of descriptors, one can be freed to
    /// accept and drop the waiting client instead of spinning on it (level-triggered).
    private var reserveFD: Int32 = open("/dev/null", O_RDONLY | O_CLOEXEC)
    /// Clients served at once; more are accepted and closed at once.
    public static let maxConnections = 16

    /// Binds and listens at `path`, refusing a path that a live listener holds and
    /// replacing a stale socket file.
    /// - Throws: ``CoreError/badArgument(_:)`` naming the path.
    public init(path: String, machine: Machine) throws(CoreError) {
        self.path = path
        self.machine = machine
        listenFD = try bindUnixSocket(path: path)
        let fd = listenFD
        do {
            try machine.loop.add(fd) { [weak self] _ in self?.accept() }
        } catch {
            close(fd); unlink(path)
            throw error
        }
    }

    deinit {
        machine.loop.remove(listenFD)
        close(listenFD)
        unlink(path)
        for fd in buffers.keys { close(fd) }
        for fds in passed.values { for fd in fds { close(fd) } }
        stateThread?.join()
        if reserveFD >= 0 { close(reserveFD) }
    }

    private func accept() {
        let c = clinux_accept_nonblock(listenFD)
        guard c >= 0 else {
            if errno == EMFILE || errno == ENFILE, reserveFD >= 0 {
                close(reserveFD)
                let dropped = clinux_accept_nonblock(listenFD)
                if dropped >= 0 { close(dropped) }
                reserveFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
            }
            return
        }
        guard buffers.count < Self.maxConnections else {
            let msg = "error too many control connections\n"
            _ = msg.withCString { send(c, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
            close(c)
            return
        }
        buffers[c] = []
        do {
            try machine.loop.add(c) { [weak self] _ in self?.readable(c) }
        } catch { close(c); buffers[c] = nil }
    }

    private func readable(_ fd: Int32) {
        var chunk = [UInt8](repeating: 0, count: 512)
        var fds = [Int32](repeating: -1, count: 4)
        var nfds: Int32 = 0
        let n = chunk.withUnsafeMutableBytes { clinux_recv_with_fds(fd, $0.baseAddress, 512, &fds, 4, &nfds) }
        if nfds > 0 { passed[fd, default: []] += fds.prefix(Int(nfds)) }
        if n <= 0 {
            if n < 0 && errno == EAGAIN { return }
            drop(fd)
            return
        }
        var buf = (buffers[fd] ?? []) + chunk[0..<n]
        guard buf.count <= 4096 else { drop(fd); return }
        while let nl = buf.firstIndex(of: 10) {
            let line = String(decoding: buf[..<nl], as: UTF8.self)
            buf.removeSubrange(...nl)
            let command = line.trimmingCharacters(in: " \r\t")
            if command.isEmpty { continue }
            if let state = CoreStateCommand(parsing: command) {
                if let refusal = startState(state, client: fd) {
                    let reply = Array((CoreControlReply.error(refusal) + "\n").utf8)
                    _ = reply.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                }
                continue
            }
            // Replies are bytes, not C strings: a NUL in the command cannot cut them short.
            var fds = passed.removeValue(forKey: fd) ?? []
            let reply = Array((handle(command, fds: &fds) + "\n").utf8)
            for p in fds { close(p) }   // a descriptor no command took is not kept
            _ = reply.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        buffers[fd] = buf
    }

    private func drop(_ fd: Int32) {
        machine.loop.remove(fd); close(fd); buffers[fd] = nil
        for p in passed.removeValue(forKey: fd) ?? [] { close(p) }
    }

    /// Starts a save or restore on its own thread, which replies on `client` when done.
    /// - Returns: why it cannot start (the reply is then `error` at once), nil when started.
    private func startState(_ command: CoreStateCommand, client: Int32) -> String? {
        var sent = passed.removeValue(forKey: client) ?? []
        guard !sent.isEmpty else {
            return "\(command.line.split(separator: " ")[0].split(separator: "\n")[0]) needs the stream's descriptor (SCM_RIGHTS)"
        }
        let stream = sent.removeFirst()
        for extra in sent { close(extra) }   // one stream per command; the rest is not kept
        if command == .restore {
            guard machine.config.incoming, !restored else {
                close(stream)
                return "restore: this core was not started with --incoming, or has restored already"
            }
        }
        let claimed = stateBusy.withLock { busy -> Bool in
            if busy { return false }
            busy = true
            return true
        }
        guard claimed else { close(stream); return "a save or restore is already running" }
        if command == .restore { restored = true }
        stateThread?.join()
        // The client's socket stays open until the reply: a duplicate keeps it valid even
        // if the loop drops the connection meanwhile.
        let replyFD = dup(client)
        let m = machine
        stateThread = DedicatedThread(name: "state") { [self] in
            let reply: String
            do {
                switch command {
                case .save:
                    let r = try m.save(to: stream)
                    reply = CoreStateReply(bytes: r.bytes, rounds: r.rounds, downtimeMs: r.downtimeMs, wasRunning: r.wasRunning).line
                case let .saveLive(rounds, bytes, downtime):
                    let r = try m.saveLive(to: stream, limits: PrecopyLimits(maxRounds: rounds, maxBytes: bytes, downtimeLimitMs: downtime))
                    reply = CoreStateReply(bytes: r.bytes, rounds: r.rounds, downtimeMs: r.downtimeMs, wasRunning: r.wasRunning).line
                case .restore:
                    let reader = try m.restoreCounting(from: stream)
                    reply = CoreStateReply(bytes: reader, rounds: 0, downtimeMs: 0, wasRunning: false).line
                }
            } catch {
                m.log("\(command.line.dropLast()): \(error)")
                reply = CoreControlReply.error("\(error)")
            }
            close(stream)
            let bytes = Array((reply + "\n").utf8)
            if replyFD >= 0 {
                _ = bytes.withUnsafeBytes { send(replyFD, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(replyFD)
            }
            stateBusy.withLock { $0 = false }
        }
        return nil
    }

    func handle(_ command: String) -> String {
        var none: [Int32] = []
        return handle(command, fds: &none)
    }

    /// One command; `fds` are the descriptors sent with it (a command that uses one closes
    /// it and removes it from the list).
    func handle(_ command: String, fds: inout [Int32]) -> String {
        if let r = CoreControlRequest(line: command) { return handle(r, fds: &fds) }
        switch CoreControlCommand(rawValue: command) {
        case .pause: machine.pause(); return CoreControlReply.ok
        case .unpause: machine.unpause(); return CoreControlReply.ok
        case .shutdown: machine.requestShutdown(); return CoreControlReply.ok
        case .reboot: machine.stop(.reboot("requested")); return CoreControlReply.ok
        case .destroy: machine.stop(.destroyed); return CoreControlReply.ok
        case .query:
            let state = CoreControlStatus.RunState(rawValue: machine.state.rawValue) ?? .stopped
            var st = CoreControlStatus(state: state, vcpus: machine.config.vcpus, vcpuTimeNs: machine.vcpuTimes,
                                       uptimeNs: machine.uptimeNanoseconds, pid: getpid(),
                                       vcpuThreadIDs: machine.vcpuThreadIDs)
            if let b = machine.balloonKiB { st.balloonTargetKiB = b.target; st.balloonActualKiB = b.actual }
            return st.line
        case nil:
            // Echo only printable ASCII, so replies stay one clean line.
            let shown = String(String.UnicodeScalarView(command.unicodeScalars.prefix(64).map {
                $0.value >= 0x20 && $0.value < 0x7F ? $0 : "?"
            }))
            return CoreControlReply.error("unknown command: \(shown)")
        }
    }
}

extension ControlServer {
    func handle(_ r: CoreControlRequest, fds: inout [Int32]) -> String {
        do {
            switch r {
            case .balloon(let mib): try machine.setBalloonTarget(mib: mib); return CoreControlReply.ok
            case .sysrq(let key): try machine.sendSysrq(key); return CoreControlReply.ok
            case .dumpCore:
                guard !fds.isEmpty else { return CoreControlReply.error("dump-core needs a file descriptor (SCM_RIGHTS)") }
                let out = fds.removeFirst()
                defer { close(out) }
                var st = stat()
                guard fstat(out, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
                    return CoreControlReply.error("dump-core: the descriptor is not a regular file")
                }
                return CoreControlReply.ok + " \(try machine.dumpCore(into: out))"
            }
        } catch {
            return CoreControlReply.error("\(error)")
        }
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}

/// Creates a listening Unix stream socket at `path` (non-blocking, close-on-exec, backlog
/// 16). A socket file nobody listens on is removed first; one with a live listener is an
/// error naming the path.
/// - Throws: ``CoreError/badArgument(_:)`` naming the path; ``CoreError/system(_:_:)``
///   when no socket can be made.
public func bindUnixSocket(path: String) throws(CoreError) -> Int32 {
    do {
        return try UnixSocket.listen(path: path, backlog: 16, nonBlocking: true)
    } catch {
        switch error {
        case .inUse: throw .badArgument("socket path \(path) is in use by another process")
        case .notASocket: throw .badArgument("socket path \(path) exists and is not a socket")
        case .system("socket", _, let e): throw .system("socket", e)
        case .system(_, _, let e): throw .badArgument("cannot listen on \(path): \(String(cString: strerror(e)))")
        case .pathTooLong, .invalidPath: throw .badArgument(error.description)
        }
    }
}
