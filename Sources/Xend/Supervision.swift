// What xend's supervisors (engines, back-ends, xenconsoled) share: waiting for a process to
// end, and the restart budget of a back-end that keeps dying.
import Foundation
import Logging
import Sandbox
#if canImport(Glibc)
import Glibc
#endif

/// Blocks until process `pid` has ended: a pidfd poll, or (no pidfd, e.g. an adopted
/// process in another namespace) polling its start time every 100 ms until it changes or
/// the process is gone. Does not reap it.
/// - Parameter startTicks: the process's start time (`ProcessInfo2.startTicks`); nil
///   takes the current one.
func waitForExit(pid: Int32, startTicks: UInt64? = nil) {
    let fd = pidfdOpen(pid, 0)
    if fd >= 0 {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while poll(&pfd, 1, -1) < 0 && errno == EINTR {}
        close(fd)
        return
    }
    let ticks = startTicks ?? ProcessInfo2.startTicks(pid)
    while ticks != nil && ProcessInfo2.startTicks(pid) == ticks { usleep(100_000) }
}

/// A back-end's restart budget: restarted with exponential back-off (0.1 s doubling to
/// 5 s) until it dies `limit` times within `window` seconds; then it is given up on
/// (marked broken, the domain runs on without that device).
struct RestartBudget {
    let limit: Int
    let window: Double
    private(set) var deaths: [Double] = []

    init(limit: Int, window: Double) { self.limit = limit; self.window = window }

    enum Decision: Equatable {
        /// Restart after this many seconds.
        case restart(after: Double)
        /// `count` deaths within the window: stop restarting.
        case giveUp(count: Int)
    }

    /// Records a death at `now` (seconds) and decides.
    mutating func died(at now: Double = Date().timeIntervalSince1970) -> Decision {
        deaths = deaths.filter { now - $0 < window } + [now]
        let n = deaths.count
        if n >= limit { return .giveUp(count: n) }
        return .restart(after: min(0.1 * pow(2, Double(n - 1)), 5))
    }
}

/// A back-end process a supervisor restarts (blkback per vbd, netback per vif). Every
/// property is read and written under the supervisor's lock.
protocol RestartableBackend: AnyObject {
    var pid: Int32 { get set }
    var startTicks: UInt64 { get }
    /// Whether this xend started it (and so can reap it and read its wait status).
    var isChild: Bool { get }
    /// Set when xend stops it on purpose: its death is then not a failure.
    var stopping: Bool { get }
    var budget: RestartBudget { get set }
    /// `domain NAME (ID) vbd xvda`, for log lines.
    var label: String { get }
}

/// The loop a back-end's supervision thread runs: wait for the process to end, describe its
/// death (`Sandbox.describeDeath`, or "re-adopted … ended" when xend is not its parent), and
/// restart it after the budget's back-off, or give the device up.
/// - Parameters:
///   - service: `blkback`, `netback`; `device`: `vbd`, `vif` (log lines).
///   - stderr: the back-end's log since its start, for the death's description.
///   - restart: reopens what the back-end needs and spawns it (under the lock).
///   - giveUp: marks the device broken (without the lock), with the reason.
///   - restarted: after a restart (without the lock): persist the new pid.
func superviseRestarts<B: RestartableBackend>(_ b: B, service: String, device: String, lock: NSRecursiveLock, log: Logger,
                                              stderr: (B) -> String, restart: (B) throws -> Void,
                                              giveUp: (B, String) -> Void, restarted: (B) -> Void) {
    while true {
        lock.lock(); let pid = b.pid, child = b.isChild, ticks = b.startTicks; lock.unlock()
        guard pid > 0 else { return }
        waitForExit(pid: pid, startTicks: ticks)
        var status: Int32 = 0
        let reaped = child && waitpid(pid, &status, 0) == pid
        lock.lock()
        if b.stopping { lock.unlock(); return }
        b.pid = 0
        let how = reaped ? Sandbox.describeDeath(service: service, status: status, stderr: stderr(b))
                         : "\(service) (pid \(pid), re-adopted) ended"
        let decision = b.budget.died()
        lock.unlock()
        guard case .restart(let delay) = decision else {
            let n = b.budget.deaths.count, w = Int(b.budget.window)
            log.error("\(b.label): \(how); it died \(n) times in \(w) s: \(device) marked broken, not restarted (the domain keeps running)")
            giveUp(b, "\(service) died \(n) times in \(w) s; last: \(how)")
            return
        }
        log.error("\(b.label): \(how); restarting it in \(String(format: "%.1f", delay)) s")
        usleep(UInt32(delay * 1_000_000))
        lock.lock()
        if b.stopping { lock.unlock(); return }
        do {
            try restart(b)
            lock.unlock()
            log.info("\(b.label): \(service) restarted, pid \(b.pid)")
            restarted(b)
        } catch {
            lock.unlock()
            log.error("\(b.label): cannot restart \(service): \(error); \(device) marked broken")
            giveUp(b, "cannot restart \(service): \(error)")
            return
        }
    }
}
