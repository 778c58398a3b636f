// What xend's supervisors (engines, back-ends, xenconsoled) share: waiting for a process to
// end, and the restart budget of a back-end that keeps dying.
import Foundation
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
