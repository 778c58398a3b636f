// The launcher's end of a readiness channel: a pipe whose write end a service inherits at
// a fixed descriptor number (its manifest's `fd N readiness optional` line, `--ready-fd N`),
// and a bounded wait for the one message of ReadinessMessage.swift.
#if canImport(Glibc)
import Glibc
#endif

@_silgen_name("pidfd_open")
private func spawnPidfdOpen(_ pid: pid_t, _ flags: UInt32) -> Int32
@_silgen_name("pipe2")
private func spawnPipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32

/// How a service's start-up ended, as its launcher sees it (`ReadinessChannel.wait`).
public enum ReadinessResult: Sendable, Equatable, CustomStringConvertible {
    /// The service said `ready`; `detail` is its note ("" when none).
    case ready(detail: String)
    /// The service said `failed: <reason>`, or its message was malformed (the reason then
    /// says so), or it closed the descriptor without a message and kept running.
    case failed(String)
    /// The service ended before saying anything; `status` is its raw wait status
    /// (waitpid(2) encoding: WIFEXITED/WTERMSIG apply). It is not reaped.
    case exited(status: Int32)
    /// Nothing within the timeout; the service still runs (the caller decides its fate).
    case timedOut

    /// E.g. `ready`, `failed: image /x: No such file or directory`, `exited with status 1`,
    /// `killed by signal 9`, `timed out`.
    public var description: String {
        switch self {
        case .ready(let d): d.isEmpty ? "ready" : "ready (\(d))"
        case .failed(let r): "failed: \(r)"
        case .exited(let s):
            s & 0x7f == 0 ? "exited with status \((s >> 8) & 0xff)" : "killed by signal \(s & 0x7f)"
        case .timedOut: "timed out"
        }
    }
}

/// A pipe for one service's readiness message. Typical use:
///
///     let ready = try ReadinessChannel.make()
///     let pid = try spawnProcess(argv + ["--ready-fd", "5"],
///                                SpawnOptions(descriptors: [ready.handOver(at: 5)]))
///     switch ready.wait(pid: pid, timeout: .seconds(10)) { … }
///
/// Both ends are close-on-exec in the launcher, so no other child inherits the write end
/// (which would keep the pipe from reporting end of file). Not for use by several threads
/// at once. Each channel serves one start-up; make a new one for a restart.
public final class ReadinessChannel {
    /// The end the launcher reads (close-on-exec, non-blocking).
    public let readEnd: Int32
    /// The end the service inherits (close-on-exec here); -1 once `wait` closed it.
    public private(set) var writeEnd: Int32

    private init(readEnd: Int32, writeEnd: Int32) {
        self.readEnd = readEnd
        self.writeEnd = writeEnd
    }

    /// Makes the pipe (pipe2 with O_CLOEXEC; the read end O_NONBLOCK).
    /// - Throws: `SpawnError` with strerror text (e.g. EMFILE).
    public static func make() throws(SpawnError) -> ReadinessChannel {
        var fds: [Int32] = [-1, -1]
        guard spawnPipe2(&fds, O_CLOEXEC) == 0 else {
            throw SpawnError(message: "readiness pipe: \(String(cString: strerror(errno)))")
        }
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        return ReadinessChannel(readEnd: fds[0], writeEnd: fds[1])
    }

    /// The write end handed to a child at descriptor `target` (for `SpawnOptions.descriptors`).
    public func handOver(at target: Int32) -> (source: Int32, target: Int32) {
        precondition(writeEnd >= 0, "ReadinessChannel: the write end is closed already")
        return (writeEnd, target)
    }

    /// Closes the launcher's copy of the write end (`wait` does it first); call it
    /// yourself right after spawning when the wait happens later.
    public func closeWriteEnd() {
        if writeEnd >= 0 { close(writeEnd); writeEnd = -1 }
    }

    deinit {
        closeWriteEnd()
        close(readEnd)
    }

    /// Waits up to `timeout` for child `pid`'s readiness message, watching the pipe and the
    /// process (a pidfd) together. Closes the launcher's write end first. The child is
    /// never reaped here (its status is read with WNOWAIT), so the caller's own waitpid
    /// still sees it.
    /// - Parameters:
    ///   - pid: the service, a child of the caller (the process that inherited the write
    ///     end); for any other process the exit status cannot be read and reads as 0.
    ///   - timeout: how long start-up may take.
    /// - Returns: `.ready`/`.failed` as the message says (a malformed one is `.failed`
    ///   naming it); `.exited(status:)` when the pipe ended without a message and the
    ///   child is gone; `.failed` when it ended without a message but the child still runs
    ///   a second later; `.timedOut`.
    public func wait(pid: pid_t, timeout: Duration) -> ReadinessResult {
        closeWriteEnd()
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        let pidfd = spawnPidfdOpen(pid, 0)
        defer { if pidfd >= 0 { close(pidfd) } }
        var line: [UInt8] = []
        var endOfFile = false
        var quietSince: ContinuousClock.Instant? = nil

        while true {
            // Whatever is in the pipe first: a service writes its message, then exits.
            if !endOfFile {
                switch drain(into: &line) {
                case .message(let m): return m
                case .endOfFile: endOfFile = true; quietSince = clock.now
                case .wouldBlock: break
                }
            }
            if endOfFile, let status = exitStatus(pid) { return .exited(status: status) }
            var wait = clock.now.duration(to: deadline)
            if endOfFile, let since = quietSince {
                // A live process that closed its end without a word: give it a second to die.
                let grace = clock.now.duration(to: since.advanced(by: .seconds(1)))
                if grace <= .zero { return .failed("closed its readiness descriptor without a message") }
                wait = min(wait, grace)
            }
            if wait <= .zero { return .timedOut }
            // Without a pidfd (pid_t reused or pidfd_open refused), look every 10 ms.
            if pidfd < 0 { wait = min(wait, .milliseconds(10)) }
            var polls = [pollfd(fd: endOfFile ? -1 : readEnd, events: Int16(POLLIN), revents: 0),
                         pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)]
            let ms = Int32(clamping: (wait.components.seconds * 1000) + (wait.components.attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
            let r = poll(&polls, 2, max(ms, 1))
            if r < 0 && errno != EINTR { return .failed("poll on the readiness descriptor: \(String(cString: strerror(errno)))") }
            if polls[1].revents != 0, let status = exitStatus(pid) {
                // Gone: one last look at the pipe, since exit closes the write end too.
                if !endOfFile, case .message(let m) = drain(into: &line) { return m }
                return .exited(status: status)
            }
        }
    }

    private enum Drained { case message(ReadinessResult), endOfFile, wouldBlock }

    /// Reads what the pipe holds into `line`; a whole line (or too many bytes) is a message.
    private func drain(into line: inout [UInt8]) -> Drained {
        var chunk = [UInt8](repeating: 0, count: ReadinessMessage.maxBytes)
        while true {
            let n = read(readEnd, &chunk, chunk.count)
            if n < 0 {
                if errno == EINTR { continue }
                return errno == EAGAIN ? .wouldBlock : .endOfFile
            }
            if n == 0 { return .endOfFile }
            line += chunk[0..<n]
            if let nl = line.firstIndex(of: 10) {
                let text = line[..<nl]
                switch ReadinessMessage.decode(text) {
                case .ready(let d): return .message(.ready(detail: d))
                case .failed(let r): return .message(.failed(r))
                case nil: return .message(.failed("malformed readiness message: \(Self.shown(text))"))
                }
            }
            if line.count >= ReadinessMessage.maxBytes {
                return .message(.failed("malformed readiness message: no end of line within \(ReadinessMessage.maxBytes) bytes"))
            }
        }
    }

    /// The raw wait status of `pid` once it has ended, without reaping it (WNOWAIT).
    /// nil while it runs. A pid that is not our child (or was reaped already) counts as
    /// ended with status 0 once it no longer exists.
    private func exitStatus(_ pid: pid_t) -> Int32? {
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 {
            if errno == EINTR { continue }
            return kill(pid, 0) != 0 && errno == ESRCH ? 0 : nil
        }
        guard info._sifields._sigchld.si_pid == pid else { return nil }   // still running
        let status = info._sifields._sigchld.si_status
        switch info.si_code {
        case Int32(CLD_EXITED): return (status & 0xff) << 8
        case Int32(CLD_DUMPED): return (status & 0x7f) | 0x80
        default: return status & 0x7f
        }
    }

    /// A received line for a log: printable ASCII kept, the rest as `?`, at most 80 bytes.
    private static func shown(_ bytes: some Collection<UInt8>) -> String {
        String(decoding: bytes.prefix(80).map { $0 >= 0x20 && $0 < 0x7f ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
    }
}
