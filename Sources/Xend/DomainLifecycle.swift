// Supervision of running domains (Xen's XendDomainInfo refreshShutdown): one thread per
// engine process waits for its end, and the domain's on_poweroff / on_reboot / on_crash
// action is applied — destroy, preserve, restart (with Xen's restart-loop guard) or
// rename-restart.
import DomainConfig
import Foundation
import XenStore
#if canImport(Glibc)
import Glibc
#endif

extension DomainManager {
    /// Watches the engine process with a pidfd; on exit, applies the domain's on_* action.
    func watch(_ domid: Int, _ p: EngineProcess) {
        let t = Thread { [self] in
            waitForExit(pid: p.pid, startTicks: p.startTicks)
            var status: Int32 = 0
            var ws: Int32? = nil
            if isChild(p.pid) && waitpid(p.pid, &status, 0) == p.pid { ws = status }
            exited(domid, p, waitStatus: ws)
        }
        t.name = "watch-\(domid)"
        t.start()
    }

    /// The engine process `p` of `domid` ended: its devices go, and its on_* action applies.
    func exited(_ domid: Int, _ p: EngineProcess, waitStatus: Int32?) {
        lifecycle.lock(); defer { lifecycle.unlock() }
        forgetChild(p.pid)
        guard var r = registry[domid], r.process == p, let engine = engines[r.engine] else { return }
        var why = engine.stopReason(p, waitStatus: waitStatus)
        if rebootRequested.remove(domid) != nil, why == .poweroff { why = .reboot("xm reboot") }
        unlink(p.controlPath); unlink(p.statusFile)
        releaseDevices(domid)
        let cfg = r.config
        var action: LifecycleAction
        switch why {
        case .poweroff: action = cfg.onPoweroff; dmesg("Domain \(r.name) (\(domid)) has shut down (poweroff)")
        case .reboot(let s): action = cfg.onReboot; dmesg("Domain \(r.name) (\(domid)) has shut down (reboot: \(s))")
        case .crash(let s):
            action = cfg.onCrash
            // One line with where to look: the console log outlives the domain.
            dmesg("Domain \(r.name) (\(domid)) has crashed: \(s); console log: \(r.consoleLog)")
        case .destroyed: action = .destroy; dmesg("Domain \(r.name) (\(domid)) destroyed")
        }
        // A domain whose restore failed (its engine refused the state) is removed, never restarted.
        if transfers.isRestoring(domid) { action = .destroy }
        // `xm reset`: started again as it was (a hard reset is asked for, not a loop).
        if resetRequested.remove(domid) != nil, why != .destroyed {
            if case .crash = why {} else { action = .restart; r.previousRestartTime = nil }
        }
        r.process = nil
        registry.store(r, persisting: false)
        switch action {
        case .destroy:
            cleanup(domid)
        case .preserve:
            if case .crash = why { r.stoppedState = "c" } else { r.stoppedState = "s" }
            registry.store(r)
        case .restart, .renameRestart:
            let now = Date().timeIntervalSince1970
            if let prev = r.previousRestartTime, now - prev < minimumRestartTime {
                log.error("VM \(r.name) restarting too fast (\(String(format: "%f", now - prev)) seconds since the last restart).  Refusing to restart to avoid loops.")
                dmesg("Domain \(r.name): restarting too fast; not restarted; console log: \(r.consoleLog)")
                cleanup(domid)
                return
            }
            var next = r
            if action == .renameRestart {
                r.stoppedState = (why == .poweroff || { if case .reboot = why { return true }; return false }()) ? "s" : "c"
                r.name = "Domain-\(r.uuid)"
                r.uuid = UUID().uuidString.lowercased()
                registry.store(r)
            } else {
                // The stopped record stays listed until its successor is (`xm reboot -w` and
                // `xm list` never see the domain missing in between); it holds no devices.
                cleanup(domid, keepingRecord: true)
            }
            next.restartCount += 1
            next.previousRestartTime = now
            do { _ = try launch(next, engine: engine) } catch {
                log.error("Failed to restart domain \(next.name): \(error.message)")
            }
            if action != .renameRestart { registry.remove(domid) }
        }
    }

    /// Forgets a domain: registry file, xenstore entries, devices, run files.
    /// - Parameter keepingRecord: leave its (stopped) record in the registry, for the caller
    ///   to remove once a successor is stored.
    func cleanup(_ domid: Int, keepingRecord: Bool = false) {
        lifecycle.lock(); defer { lifecycle.unlock() }
        guard let r = keepingRecord ? registry[domid] : registry.remove(domid) else { return }
        if keepingRecord { registry.removeFile(domid) }   // a restarted xend must not find it
        releaseDevices(domid)
        statuses[domid] = nil
        if let p = r.process { unlink(p.controlPath); unlink(p.statusFile) }
        if let xs = xenstore { try? xs.removeDomain(UInt32(domid)) }
    }
}
