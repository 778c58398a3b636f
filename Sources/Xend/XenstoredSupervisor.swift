// xenstored under xend's supervision, as the back-ends and xenconsoled are.
//
// xenstored runs in its own session (it outlives xend, as in Xen) with its store in
// `$XENITH_ROOT/var/lib/xenstored` (snapshot + write-ahead journal, XenStore/StoreFiles.swift),
// so a restarted daemon serves every domain's entries again. xend adopts a running one
// (pid file + its socket answering) or starts one and waits for its readiness message
// (Spawn.ReadinessChannel at fd 3). A thread waits for it to end; it is started again at
// once on the same socket path (then after 0.1 s doubling to 5 s while it keeps dying,
// back to at once after 30 s of good health). xenstored is never given up on: nothing works
// without it. xend's own client (XenStoreClient with reconnection) makes its connection
// again and registers its watches again by itself.
import Foundation
import Logging
import Sandbox
import Spawn
import XenStore
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

/// Runs xenstored for one `$XENITH_ROOT` and restarts it when it dies.
final class XenstoredSupervisor: @unchecked Sendable {
    let paths: XenithPaths
    let binary: String
    let log: Logger
    private let lock = NSLock()
    private var pid: pid_t = 0
    private var isChild = false

    /// The descriptor xenstored's readiness pipe is handed at (`--ready-fd 3`).
    static let readyFD: Int32 = 3
    /// How long xend's client waits for a restarting xenstored before a request fails (ms).
    static let clientReconnectMilliseconds = 5000

    var socketPath: String { paths.xenstoredSocket }
    var pidFile: String { paths.xenstoredPidFile }
    /// `$XENITH_ROOT/var/lib/xenstored`: the store's snapshot and journal.
    var storeDirectory: String { paths.resolve("/var/lib/xenstored") }
    var logPath: String { paths.logDir + "/xenstored.log" }

    /// - Parameter binary: the xenstored executable (beside xend's).
    init(paths: XenithPaths, binary: String, logger: Logger) {
        self.paths = paths
        self.binary = binary
        self.log = logger
    }

    /// The running daemon's pid (0 while it is down).
    var daemonPid: pid_t { lock.lock(); defer { lock.unlock() }; return pid }

    /// Adopts this root's running xenstored or starts one, then supervises it on a thread.
    /// - Returns: false when none runs and none could be started (the thread keeps trying).
    @discardableResult
    func start() -> Bool {
        var up = true
        if let t = try? String(contentsOfFile: pidFile, encoding: .utf8),
           let p = Int32(t.trimmingCharacters(in: .whitespacesAndNewlines)), p > 0, kill(p, 0) == 0,
           XenStoreServer.isListening(socketPath) {
            lock.lock(); pid = p; isChild = false; lock.unlock()
            log.info("re-adopted xenstored, pid \(p)")
        } else if XenStoreServer.isListening(socketPath) {
            // Answers but its pid file is gone: serve with it, unsupervised (logged).
            log.error("a xenstored answers on \(socketPath) but \(pidFile) names no live process: it is not supervised")
            return true
        } else if !spawn() {
            log.error("xenstored could not be started; retrying in the background")
            up = false
        }
        let t = Thread { [self] in supervise() }
        t.name = "xenstored"
        t.start()
        return up
    }

    /// Starts xenstored and waits (up to 10 s) for its readiness message. False on failure.
    private func spawn() -> Bool {
        XenithPaths.makeDirectories((socketPath as NSString).deletingLastPathComponent)
        XenithPaths.makeDirectories(paths.logDir)
        let argv = [binary, "-N", "--socket", socketPath, "--pid-file", pidFile, "--store-dir", storeDirectory,
                    "--ready-fd", String(Self.readyFD)]
        let p: pid_t
        let ready: ReadinessChannel
        do {
            ready = try ReadinessChannel.make()
            p = try spawnDetached(argv, log: logPath, fds: [ready.handOver(at: Self.readyFD)])
            ready.closeWriteEnd()
        } catch {
            log.error("cannot start xenstored: \(error)")
            return false
        }
        lock.lock(); pid = p; isChild = true; lock.unlock()
        switch ready.wait(pid: p, timeout: .seconds(10)) {
        case .ready:
            log.info("started xenstored, pid \(p), socket \(socketPath), store \(storeDirectory)")
            return true
        case .failed(let why):
            log.error("xenstored did not start: \(why)")
        case .exited:
            log.error("xenstored did not start: \(lastLine())")
        case .timedOut:
            // Killed: the supervising loop reaps it and starts another.
            log.error("xenstored did not say it was ready within 10 s; killing it; see \(logPath)")
            kill(p, SIGKILL)
        }
        return false
    }

    private func lastLine() -> String {
        fileTail(logPath, limit: 2048).split(separator: "\n").last.map(String.init) ?? "no message; see \(logPath)"
    }

    /// Waits for the daemon to end and starts it again (see the top of this file).
    private func supervise() {
        var backoff = 0.0
        while true {
            lock.lock(); let p = pid, child = isChild; lock.unlock()
            if p > 0 {
                let up = Date()
                waitForExit(pid: p)
                var status: Int32 = 0
                let how = child && waitpid(p, &status, 0) == p
                    ? Sandbox.describeDeath(service: "xenstored", status: status, stderr: fileTail(logPath))
                    : "xenstored (pid \(p), re-adopted) ended"
                if Date().timeIntervalSince(up) > 30 { backoff = 0 }
                log.error("\(how); restarting it on \(socketPath)\(backoff > 0 ? String(format: " in %.1f s", backoff) : "")")
            }
            lock.lock(); pid = 0; lock.unlock()
            if backoff > 0 { usleep(UInt32(backoff * 1_000_000)) }
            backoff = backoff == 0 ? 0.1 : min(backoff * 2, 5)
            if spawn() {
                log.info("xenstored restarted with the stored entries")
            }
        }
    }
}
