// The migration service from xend's side (Sources/Migration/README.md): one sandboxed
// `migration` process per save or restore, handed every descriptor (fd 3 the engine's
// stream, fd 4 the save file, fd 5 xend's status channel), and a reader of that channel.
import CLinux
import Foundation
import Migration
import Sandbox
import Spawn
#if canImport(Glibc)
import Glibc
#endif

/// Where the `migration` binary and its manifest are, and how xend starts one run of it.
public struct MigrationService: Sendable {
    /// The `migration` executable (beside xend's).
    public let binary: String
    /// `migration.manifest`; nil runs the service with `--no-sandbox` (logged by the daemon).
    public let manifest: String?
    /// The service's stderr, appended (`$ROOT/var/log/xen/migration.log`).
    public let logPath: String

    public init(binary: String, manifest: String?, logPath: String) {
        self.binary = binary; self.manifest = manifest; self.logPath = logPath
    }

    /// The service's modes xend uses.
    public enum Mode: String, Sendable { case save, restore, verify, send, receive }

    /// Starts one run. The caller's descriptors stay the caller's (the child gets copies at
    /// 3 and 4); xend's end of the status channel is in the returned run.
    /// - Parameters:
    ///   - engine: the pipe end the service reads (save) or writes (restore); nil for verify.
    ///   - file: the save file, open for writing (save) or reading (restore, verify).
    /// - Throws: `XendError` 500 when the process or the channel cannot be made.
    ///   - rate: send: pace the peer connection to this many Mbit/s (`xm migrate -r`).
    func start(_ mode: Mode, engine: Int32?, file: Int32, rate: Int? = nil) throws(XendError) -> MigrationRun {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw XendError(.internalError, "migration status channel: \(String(cString: strerror(errno)))")
        }
        defer { close(pair[1]) }
        var argv = [binary, "--mode", mode.rawValue]
        if let rate { argv += ["--rate", String(rate)] }
        if let m = manifest { argv += ["--manifest", m] } else { argv.append("--no-sandbox") }
        var fds: [(Int32, Int32)] = [(file, 4), (pair[1], 5)]
        if let engine { fds.append((engine, 3)) }
        let pid: pid_t
        do { pid = try spawnDetached(argv, log: logPath, fds: fds) } catch {
            close(pair[0])
            throw XendError(.internalError, "cannot start the migration service \(binary): \(error)")
        }
        return MigrationRun(pid: pid, channel: pair[0], mode: mode, logPath: logPath)
    }
}

/// Makes the pipe of an engine's state stream, both ends close-on-exec (glibc's pipe2 does
/// not import; Spawn hands a child only the descriptors it names anyway).
/// - Parameter capacity: bytes the pipe should hold (F_SETPIPE_SZ; capped by
///   fs.pipe-max-size, a refusal keeps the kernel's 64 KiB); nil: the default.
/// - Returns: false with errno set when the pipe cannot be made.
func streamPipe(_ fds: inout [Int32], capacity: Int? = nil) -> Bool {
    guard pipe(&fds) == 0 else { return false }
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    if let capacity { _ = clinux_set_pipe_size(fds[1], Int32(capacity)) }
    return true
}

/// One running `migration` process and xend's end of its status channel. A reader thread
/// takes every message: `progress` updates ``progress``, the others queue for ``next(timeout:)``.
/// ``finish(timeout:)`` or ``kill()`` must end every run (the process is reaped there).
final class MigrationRun: @unchecked Sendable {
    let pid: pid_t
    let mode: MigrationService.Mode
    private let channel: StatusChannel
    private let fd: Int32
    private let cond = NSCondition()
    private var queue: [StatusMessage] = []
    private var closed: String? = nil
    private var reaped = false
    /// The service's stderr log, whose tail names a syscall seccomp refused.
    private let logPath: String?
    /// The wait(2) status once the process was reaped (by `next` or `finish`).
    private var exitStatus: Int32?
    /// Engine-stream bytes so far and the last rate (bytes per second) the service reported.
    private(set) var progress: (bytes: UInt64, bytesPerSecond: UInt64) = (0, 0)
    /// Called on the reader thread with each progress message.
    var onProgress: (@Sendable (UInt64, UInt64) -> Void)?

    init(pid: pid_t, channel: Int32, mode: MigrationService.Mode, logPath: String? = nil) {
        self.pid = pid
        self.logPath = logPath
        self.fd = channel
        self.mode = mode
        self.channel = StatusChannel(Descriptor(channel, role: "migration status channel"))
        let t = Thread { [self] in readLoop() }
        t.name = "migration-\(pid)"
        t.start()
    }

    private func readLoop() {
        while true {
            let m: StatusMessage?
            do { m = try channel.receive() } catch {
                cond.lock(); closed = "the migration service broke its status channel: \(error)"; cond.broadcast(); cond.unlock()
                return
            }
            guard let m else {
                cond.lock(); closed = closed ?? "the migration service ended without a final message"; cond.broadcast(); cond.unlock()
                return
            }
            if case .progress(let bytes, let rate) = m {
                cond.lock(); progress = (bytes, rate); cond.unlock()
                onProgress?(bytes, rate)
                continue
            }
            cond.lock(); queue.append(m); cond.broadcast(); cond.unlock()
        }
    }

    /// Whether the service's end of the channel closed (the process ended or is ending).
    var channelClosed: Bool { cond.lock(); defer { cond.unlock() }; return closed != nil }

    /// Sends `m` to the service.
    /// - Throws: `XendError` 500 when the service is gone.
    func send(_ m: StatusMessage) throws(XendError) {
        do { try channel.send(m) } catch { throw XendError(.internalError, "the migration service is gone: \(error)") }
    }

    /// The next message other than progress, waiting at most `timeout` seconds.
    /// - Throws: `XendError` 500 on timeout or when the channel closed first (with the
    ///   service's own last stderr line when it left one).
    func next(timeout: Double) throws(XendError) -> StatusMessage {
        let deadline = Date().addingTimeInterval(timeout)
        cond.lock(); defer { cond.unlock() }
        while queue.isEmpty {
            if let c = closed {
                // Say how the process ended (a seccomp kill names the syscall), not only that
                // its channel closed.
                cond.unlock()
                let death = deathDescription()
                cond.lock()
                throw XendError(.internalError, death.map { "\(c) (\($0))" } ?? c)
            }
            if !cond.wait(until: deadline) {
                if queue.isEmpty { throw XendError(.internalError, "the migration service sent nothing for \(Int(timeout)) s") }
            }
        }
        return queue.removeFirst()
    }

    /// How the process ended when it exited within a second ("migration killed by SIGSYS:
    /// blocked syscall NAME (NR)", "migration exited with status 1"); nil while it runs.
    private func deathDescription() -> String? {
        let deadline = Date().addingTimeInterval(1)
        while exitStatus == nil && Date() < deadline {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { exitStatus = status; break }
            if r < 0 && errno != EINTR { break }
            usleep(10_000)
        }
        guard let status = exitStatus else { return nil }
        return Sandbox.describeDeath(service: "migration", status: status, stderr: logPath.map { fileTail($0) })
    }

    /// Waits up to `timeout` seconds for the process to exit (SIGKILL after that), reaps it
    /// and closes the channel; returns the wait(2) status.
    @discardableResult
    func finish(timeout: Double) -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = exitStatus ?? 0
        while exitStatus == nil {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid || (r < 0 && errno != EINTR) { break }
            if Date() >= deadline { Glibc.kill(pid, SIGKILL); while waitpid(pid, &status, 0) < 0 && errno == EINTR {}; break }
            usleep(10_000)
        }
        // The reader thread leaves at the channel's end; only then is the descriptor closed
        // (a number closed under a blocked read could be reused by another open).
        cond.lock()
        let first = !reaped
        reaped = true
        if first {
            shutdown(fd, Int32(SHUT_RDWR))
            let until = Date().addingTimeInterval(5)
            while closed == nil && cond.wait(until: until) {}
        }
        cond.unlock()
        if first { close(fd) }
        return status
    }

    /// Ends the run at once (SIGKILL, reaped).
    func kill() {
        Glibc.kill(pid, SIGKILL)
        finish(timeout: 5)
    }
}
