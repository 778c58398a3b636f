// CPU settings of domains being applied on background threads (CPUControl.swift,
// applyCPUSettingsInBackground): a restore moves its engine into the domain's CPU control
// group while the engine loads the state, and waits for the move before the guest runs.
import Dispatch
import Foundation

/// Background applications of a domain's CPU settings, one at most per domid, that the
/// steps depending on them wait for: resuming the guest, changing its weight, cap or
/// pinning, and removing its CPU control group.
final class CPUPlacements: @unchecked Sendable {
    private let lock = NSLock()
    private var pending: [Int: DispatchGroup] = [:]

    /// Runs `work` for domain `domid` on a background thread.
    func start(_ domid: Int, _ work: @escaping @Sendable () -> Void) {
        let group = DispatchGroup()
        group.enter()
        lock.lock(); pending[domid] = group; lock.unlock()
        Thread.detachNewThread {
            work()
            group.leave()
        }
    }

    /// Returns once domain `domid`'s background work (if any) has finished, or after
    /// `timeout` seconds (a cgroup write does not take longer unless the host is broken;
    /// the caller then goes on as if it had finished).
    func wait(_ domid: Int, timeout: Double = 10) {
        lock.lock(); let group = pending[domid]; lock.unlock()
        guard let group else { return }
        _ = group.wait(timeout: .now() + timeout)
        lock.lock()
        if pending[domid] === group { pending[domid] = nil }
        lock.unlock()
    }
}
