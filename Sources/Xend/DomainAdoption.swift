// After an xend restart (Xen's XendDomain recreation from xenstore): the registry's records
// are read back; each running domain's engine, back-ends and console are re-adopted; a
// domain whose engine ended meanwhile has its on_* action applied; and a domain whose
// creation xend did not finish (its record still marked `creating`) is undone entirely —
// processes, taps, sockets, image locks, xenstore entries — so its config creates again.
import ConsoleBackend
import DomainConfig
import Foundation
import XenStore
#if canImport(Glibc)
import Glibc
#endif

extension DomainManager {
    /// Re-adopts domains from the registry after a restart of xend.
    public func adopt() {
        lifecycle.lock(); defer { lifecycle.unlock() }
        let listed = consoles?.listed() ?? []
        for r in registry.loadFiles() {
            if r.creating == true || registry.isIncoming(r.domid) { undoUnfinishedCreate(r, listed: listed); continue }
            registry.store(r, persisting: false)
            guard let p = r.process else {
                // No engine (destroyed while xend was stopping, between marking it and
                // releasing its devices): PCI functions still assigned to it go back now.
                pcis?.release(domid: r.domid, groupWait: 0)
                continue
            }
            let cfg = r.config
            guard let engine = engines[r.engine] else { continue }
            let plan = engine.devicePlan(for: cfg, domid: r.domid)
            if engine.adopt(p) {
                dmesg("Domain \(r.name) (\(r.domid)) re-adopted, pid \(p.pid)")
                if let vifs = r.vifs { nets?.adopt(domid: r.domid, name: r.name, records: vifs) }
                switch plan.console {
                case .ring: _ = consoles?.adopt(domid: r.domid, name: r.name, pid: p.pid, listed: listed)
                case .stream: _ = consoles?.adoptStream(domid: r.domid, name: r.name, listed: listed)
                }
                if !cfg.pciDevices.isEmpty { pcis?.adopt(domid: r.domid) }
                if let disks = r.disks {
                    blocks?.adopt(domid: r.domid, name: r.name, disks: cfg.disks, records: disks, vcpus: plan.diskQueues)
                }
                // A xenstored that died while xend was away starts empty: write the domain's
                // entries and its devices' again.
                if let xs = xenstore, (try? xs.exists("/local/domain/\(r.domid)")) != true {
                    try? xs.writeDomain(Self.xenstoreInfo(r, cfg, startTime: r.startTime))
                    blocks?.republish(domid: r.domid)
                    nets?.republish(domid: r.domid)
                    dmesg("Domain \(r.name) (\(r.domid)): xenstore entries written again (xenstored had lost them)")
                }
                watch(r.domid, p)
            } else {
                // The engine ended while xend was away: its back-ends go too.
                for d in r.disks ?? [] where d.pid > 0 && ProcessInfo2.startTicks(d.pid) == d.startTicks {
                    kill(d.pid, SIGKILL)
                }
                for d in r.disks ?? [] { unlink(d.socket) }
                if let vifs = r.vifs { nets?.release(domid: r.domid, name: r.name, records: vifs) }
                if listed.contains(r.domid), let c = consoles { try? unregisterConsole(socketPath: c.socketPath, domid: r.domid) }
                exited(r.domid, p, waitStatus: nil)
            }
        }
    }

    /// Undoes a creation that xend did not finish, from its intent record: every process
    /// holding one of the domain's sockets (engine, blkbacks, netbacks — their pids may never
    /// have been recorded), its PCI functions and pciback, its taps and vif scripts, socket and
    /// run files, console registration, xenstore entries, and the record itself.
    func undoUnfinishedCreate(_ r: DomainRecord, listed: Set<Int>) {
        let domid = r.domid, cfg = r.config
        let engine = engines[r.engine]
        var sockets = engine?.runFiles(controlPath: controlPath(domid)) ?? [controlPath(domid)]
        let diskSockets = cfg.disks.compactMap { d in blocks?.socketPath(domid: domid, vdev: d.vdev) }
        let vifSockets = cfg.vifs.indices.compactMap { i in nets?.socketPath(domid: domid, devid: i) }
        sockets += diskSockets + vifSockets
        for d in r.disks ?? [] where d.pid > 0 && ProcessInfo2.startTicks(d.pid) == d.startTicks { kill(d.pid, SIGKILL) }
        for v in r.vifs ?? [] where v.pid > 0 && ProcessInfo2.startTicks(v.pid) == v.startTicks { kill(v.pid, SIGKILL) }
        let killed = OrphanSweep.killHolders(ofSocketsAt: sockets, orNaming: controlPath(domid))
        // PCI functions it took (and its pciback, recorded in pci.json once started) go back,
        // after its engine is gone.
        // Its engine was just killed and may still hold a group: a short wait, as xend start
        // itself waits only seconds for its API.
        pcis?.release(domid: domid, groupWait: 3)
        nets?.releaseUnfinished(domid: domid, name: r.name, vifs: cfg.vifs.enumerated().map { ($0.offset, $0.element) },
                                records: r.vifs ?? [], planned: r.plannedTaps ?? [])
        for s in sockets + [statusFile(domid)] { unlink(s) }
        if listed.contains(domid), let c = consoles { try? unregisterConsole(socketPath: c.socketPath, domid: domid) }
        if let xs = xenstore {
            try? xs.removeDomain(UInt32(domid))
            for t in ["vbd", "vif"] {
                let base = "/local/domain/0/backend/\(t)"
                if (try? xs.directory(base))?.isEmpty == true { try? xs.rm(base) }
            }
            if (try? xs.directory("/local/domain/0/backend"))?.isEmpty == true { try? xs.rm("/local/domain/0/backend") }
        }
        registry.remove(domid)
        let what = r.creating == true ? "its creation" : "the transfer of its state (restore or migration)"
        dmesg("Domain \(r.name) (\(domid)): \(what) was interrupted (xend stopped); undone"
              + (killed.isEmpty ? "" : " (stopped pids \(killed.map(String.init).joined(separator: " ")))"))
    }
}
