// The last run state and CPU time of every live domain, refreshed by one thread once a
// second, so `xm list` never waits on busy engine processes.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

final class StatusCache: @unchecked Sendable {
    private let lock = NSLock()
    private var statuses: [Int: EngineStatus] = [:]

    subscript(domid: Int) -> EngineStatus? {
        get { lock.lock(); defer { lock.unlock() }; return statuses[domid] }
        set { lock.lock(); statuses[domid] = newValue; lock.unlock() }
    }

    func setPaused(_ domid: Int, _ paused: Bool) {
        lock.lock(); defer { lock.unlock() }
        if var st = statuses[domid] { st.paused = paused; statuses[domid] = st }
    }

    func replaceAll(_ fresh: [Int: EngineStatus]) { lock.lock(); statuses = fresh; lock.unlock() }

    /// Starts the thread that asks each live domain's engine every second.
    /// - Parameter live: the live domains: domid, engine process, its engine.
    func startRefreshing(_ live: @escaping @Sendable () -> [(Int, EngineProcess, any DomainEngineDriver)]) {
        let t = Thread { [self] in
            while true {
                var fresh: [Int: EngineStatus] = [:]
                for (id, p, e) in live() { if let st = try? e.query(p) { fresh[id] = st } }
                replaceAll(fresh)
                sleep(1)
            }
        }
        t.name = "status"
        t.start()
    }
}
