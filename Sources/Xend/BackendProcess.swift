// One back-end service process — blkback for a vbd, netback for a vif (pciback and the
// migration service next) — and the lifecycle every kind shares: spawn on the descriptors
// xend hands over, wait for the typed readiness message on its readiness pipe
// (Spawn.ReadinessChannel; the service's manifest declares the descriptor), supervise it
// (restart with back-off, give the device up after a burst of deaths), stop it, re-adopt
// it after an xend restart. The kinds (BlockDevices.swift, NetDevices.swift) differ only in
// what they hand over and what they write to xenstore.
import Foundation
import Logging
import Sandbox
import Spawn
#if canImport(Glibc)
import Glibc
#endif

/// Why a back-end did not come up (`BackendProcess.waitReady`).
struct BackendStartFailure: Error, CustomStringConvertible {
    /// The service said why (`failed: …`) or died during start-up: the request's fault
    /// (a missing image, a bad manifest line) as far as xend can tell.
    var refused: Bool
    var message: String
    var description: String { message }
}

final class BackendProcess: RestartableBackend, @unchecked Sendable {
    /// The descriptor number a back-end's readiness pipe is handed at (its manifest's
    /// `fd 5 readiness optional`), given to it with `--ready-fd 5`.
    static let readyFD: Int32 = 5

    /// `blkback`, `netback`: the executable's name, for messages.
    let service: String
    /// `vbd`, `vif`: the device kind, for messages.
    let device: String
    /// `domain NAME (ID) vbd xvda`, for log lines.
    let label: String
    /// The service's stderr log (appended to across restarts).
    let logPath: String
    /// The owning supervisor's lock: every property below is read and written under it.
    let lock: NSRecursiveLock
    var pid: Int32 = 0
    var startTicks: UInt64 = 0
    var isChild = false
    /// Size of the log when the current process started: its own lines follow.
    var logOffset: UInt64 = 0
    var budget: RestartBudget
    var stopping = false
    /// The readiness pipe of the latest start, kept until the next one so that a service
    /// restarted without a wait still has a reader for its message.
    private var readiness: ReadinessChannel?

    init(service: String, device: String, label: String, logPath: String, lock: NSRecursiveLock, budget: RestartBudget) {
        self.service = service; self.device = device; self.label = label; self.logPath = logPath
        self.lock = lock; self.budget = budget
    }

    /// Starts the service: `argv` plus `--ready-fd 5`, detached (own session), stderr
    /// appended to the log, `descriptors` (source, target) and the readiness pipe inherited.
    /// - Throws: `EngineError` with strerror text when the process cannot be started.
    func spawn(_ argv: [String], descriptors: [(Int32, Int32)]) throws {
        let ready: ReadinessChannel
        do { ready = try ReadinessChannel.make() } catch { throw EngineError(error.message) }
        var st = stat()
        logOffset = stat(logPath, &st) == 0 ? UInt64(st.st_size) : 0
        let p = try spawnDetached(argv + ["--ready-fd", String(Self.readyFD)], log: logPath,
                                  fds: descriptors + [ready.handOver(at: Self.readyFD)])
        ready.closeWriteEnd()
        readiness = ready
        pid = p
        isChild = true
        startTicks = ProcessInfo2.startTicks(p) ?? 0
    }

    /// Takes over a running service of an earlier xend (not this xend's child).
    func adoptRunning(pid p: Int32, startTicks t: UInt64) {
        pid = p; startTicks = t; isChild = false
        var st = stat()
        logOffset = stat(logPath, &st) == 0 ? UInt64(st.st_size) : 0
    }

    /// Waits for the readiness message of the process `spawn` started.
    /// - Throws: `BackendStartFailure`: refused (the service said why, or died; the process
    ///   is reaped) or not (no word within `timeout`; the process is left to the caller).
    func waitReady(timeout: Duration = .seconds(10)) throws(BackendStartFailure) {
        guard let ready = readiness, pid > 0 else {
            throw BackendStartFailure(refused: false, message: "\(service) is not running")
        }
        switch ready.wait(pid: pid, timeout: timeout) {
        case .ready:
            return
        case .failed(let why):
            throw BackendStartFailure(refused: true, message: why)
        case .exited(let status):
            var st: Int32 = 0
            _ = waitpid(pid, &st, 0)
            pid = 0
            let text = recentLog()
            let prefix = service + ": "
            let last = text.split(separator: "\n").last(where: { !$0.isEmpty }).map(String.init)
                ?? Sandbox.describeDeath(service: service, status: status, stderr: text)
            throw BackendStartFailure(refused: true, message: last.hasPrefix(prefix) ? String(last.dropFirst(prefix.count)) : last)
        case .timedOut:
            throw BackendStartFailure(refused: false, message: "\(service) did not start within \(timeout); see \(logPath)")
        }
    }

    /// The service's log since its latest start (at most the last 16 KiB).
    func recentLog() -> String {
        guard let h = FileHandle(forReadingAtPath: logPath) else { return "" }
        defer { try? h.close() }
        try? h.seek(toOffset: logOffset)
        return String(decoding: h.readDataToEndOfFile().suffix(16384), as: UTF8.self)
    }

    /// Stops the service on purpose: SIGTERM, SIGKILL after 2 s; reaped when it is our child.
    func halt() {
        lock.lock(); stopping = true; let p = pid, child = isChild, ticks = startTicks; lock.unlock()
        defer { lock.lock(); pid = 0; readiness = nil; lock.unlock() }
        guard p > 0, ProcessInfo2.startTicks(p) == ticks else { return }
        kill(p, SIGTERM)
        var status: Int32 = 0
        for _ in 0..<200 {
            // The supervising thread may reap it first (its blocking waitpid): then ours
            // fails with ECHILD and the pid's start time is gone, which is "ended" too.
            if child, waitpid(p, &status, WNOHANG) == p { return }
            if ProcessInfo2.startTicks(p) != ticks { return }
            usleep(10_000)
        }
        kill(p, SIGKILL)
        if child { waitpid(p, &status, 0) }
    }

    /// Watches the process on a thread of its own (`superviseRestarts`): restarted with
    /// `restart` (called under the lock) after each death within the budget, `giveUp` with
    /// the reason otherwise; `restarted` after each successful restart.
    func watch(log: Logger, restart: @escaping @Sendable (BackendProcess) throws -> Void,
               giveUp: @escaping @Sendable (String) -> Void, restarted: @escaping @Sendable () -> Void) {
        let t = Thread { [self] in
            superviseRestarts(self, service: service, device: device, lock: lock, log: log, stderr: { $0.recentLog() },
                              restart: restart, giveUp: { _, why in giveUp(why) }, restarted: { _ in restarted() })
        }
        t.name = "\(service)-\(label)"
        t.start()
    }
}
