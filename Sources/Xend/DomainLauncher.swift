// Creating a domain (Xen's XendDomainInfo.create): check the request, write down the intent,
// make the devices the engine's plan asks for, start the engine, record the result. One
// rollback guard undoes whatever was made when a step fails; a record marked `creating`
// lets a restarted xend undo a creation that xend itself did not live to finish
// (DomainAdoption.swift).
import ConsoleBackend
import DomainConfig
import Foundation
import XenStore
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

extension DomainManager {
    /// Xen 3.0's VM name characters without `/`: xend names files after the domain
    /// (console and engine logs), so a `/` would reach outside their directories.
    static let nameRegex = try! NSRegularExpression(pattern: "^[A-Za-z0-9_\\-\\.\\:\\+]+$")

    /// Creates and starts a domain from its `(vm ...)` SXP.
    /// - Throws: `XendError`: bad config (400), duplicate name (409), not enough memory,
    ///   an unavailable engine (503), the engine failing to start (500). Nothing is left
    ///   behind on failure.
    public func create(sxpText: String, paused: Bool) throws(XendError) -> DomainInfo {
        var cfg: DomainConfiguration
        do { cfg = try DomainConfiguration(sxp: SXP.parse(sxpText, file: "<request>"), file: "<request>") }
        catch { throw XendError(.badRequest, error.description) }
        let name = cfg.name
        if Self.nameRegex.firstMatch(in: name, range: NSRange(name.startIndex..., in: name)) == nil || name.count > 64 {
            throw XendError(.badRequest, "Invalid VM Name '\(name)': use at most 64 of A-Z a-z 0-9 _ - . : + (no '/')")
        }
        if name == "." || name == ".." {
            // Files are named after the domain (guest-NAME.log): these name directories.
            throw XendError(.badRequest, "Invalid VM Name '\(name)': '.' and '..' name directories")
        }
        try refuseUnstartable(cfg)
        let engine = try engines.choose(for: cfg, configured: xendConfig.domainEngine)
        lifecycle.lock(); defer { lifecycle.unlock() }
        if name == "Domain-0" { throw XendError(.conflict, "VM name 'Domain-0' already exists as domain 0") }
        if let other = registry.named(name) {
            throw XendError(.conflict, "VM name '\(name)' already exists as domain \(other.domid)")
        }
        try HostMemory.check(needMiB: cfg.memory, freeKiB: HostFacts.freeKiB(), dom0MinMemMiB: xendConfig.dom0MinMem)
        if cfg.uuid == nil { cfg.uuid = UUID().uuidString.lowercased() }
        let record = DomainRecord(domid: 0, name: name, uuid: cfg.uuid!, config: cfg, engine: engine.name,
                                  process: nil, startTime: 0, restartCount: 0, previousRestartTime: nil,
                                  stoppedState: nil, consoleLog: paths.consoleLogDir + "/guest-\(name).log")
        let r: DomainRecord
        do { r = try launch(record, engine: engine) } catch {
            // xend.log and `xm dmesg` say why a create failed, as they say why a domain ended.
            dmesg("Domain \(name): not created: \(error.message)")
            throw error
        }
        if paused, let p = r.process { try? engine.pause(p) }
        return info(r, long: false)
    }

    /// The engine's control socket and stop-status file of domain `domid`.
    func controlPath(_ domid: Int) -> String { paths.domainRunDir + "/\(domid).control" }
    func statusFile(_ domid: Int) -> String { paths.domainRunDir + "/\(domid).status" }

    /// What no domain may start with, whoever brings the configuration (`xm create`, a save
    /// file): a block script, a qcow version 1 image, `cpus` or `cpu_cap` this host cannot
    /// honour.
    /// - Throws: `XendError` 400 in Xen's words where Xen has them.
    func refuseUnstartable(_ cfg: DomainConfiguration) throws(XendError) {
        if let d = cfg.disks.first(where: { $0.script != nil }) {
            throw XendError(.badRequest, "Device \(d.vdev) (vbd) could not be connected. Block script \(d.script!) is not supported here: use file: or phy: (disk '\(d.uname),\(d.dev),\(d.access.rawValue)')")
        }
        for d in cfg.disks { try DiskImageChecks.refuseOldQcow(d) }
        try checkCPUSettings(cfg)
    }

    /// Allocates a domid, records the intent, writes xenstore, makes the devices of the
    /// engine's plan, starts the engine, registers and watches it.
    /// - Parameter incoming: start the engine waiting for a restored state (`xm restore`).
    /// - Throws: `XendError`; everything made is undone first.
    /// - Parameter deferDiskLocks: open the disk images without locking them (the target of
    ///   a live migration; `BlockSupervisor.takeLocks` at switch-over).
    /// - Parameter cpuSettingsInBackground: apply `cpus`, `cpu_weight` and `cpu_cap` on a
    ///   background thread (an incoming engine whose guest stays stopped; the caller waits
    ///   with `cpuPlacements.wait` before it resumes the guest).
    func launch(_ base: DomainRecord, engine: any DomainEngineDriver, incoming: Bool = false,
                deferDiskLocks: Bool = false, cpuSettingsInBackground: Bool = false) throws(XendError) -> DomainRecord {
        lifecycle.lock(); defer { lifecycle.unlock() }
        var r = base
        r.domid = registry.allocateDomid()
        r.stoppedState = nil
        r.process = nil; r.disks = nil; r.vifs = nil; r.hotplugged = nil
        r.creating = true
        let domid = r.domid, cfg = r.config
        let plan = engine.devicePlan(for: cfg, domid: domid)
        if !cfg.pciDevices.isEmpty {
            // Refused before anything is made.
            guard engine.capabilities.contains(.pciPassthrough) else {
                throw XendError(.badRequest, "pci: the \(engine.name) engine cannot pass PCI devices through (VFIO DMA mapping of guest RAM is not implemented in it): use engine = 'qemu'")
            }
            guard pcis != nil else { throw XendError(.unavailable, "pci: PCI passthrough is not available (no pciback)") }
        }
        let undo = Rollback()
        defer { undo.finish() }

        // The intent, before anything is made: a restarted xend undoes what this finds.
        registry.persist(r)
        undo.add { [registry] in registry.remove(domid) }
        FaultInjection.crashPoint("intent")

        var launch = EngineLaunch(domid: domid, name: r.name, uuid: r.uuid, config: cfg,
                                  commandLine: cfg.kernelCommandLine, controlPath: controlPath(domid),
                                  statusFile: statusFile(domid), consoleLog: r.consoleLog,
                                  engineLog: paths.logDir + "/\(engine.name)-\(r.name).log")
        launch.incoming = incoming
        if let xs = xenstore {
            undo.add { try? xs.removeDomain(UInt32(domid)) }
            do { try xs.writeDomain(Self.xenstoreInfo(r, cfg, startTime: Date().timeIntervalSince1970)) }
            catch { throw XendError(.internalError, "xenstore: \(error)") }
        }
        FaultInjection.crashPoint("xenstore")
        undo.add { [self] in releaseDevices(domid) }
        if let pcis, !cfg.pciDevices.isEmpty {
            try pcis.assign(domid: domid, specs: cfg.pciDevices, owner: plan.socketOwner)
        }

        if !cfg.vifs.isEmpty {
            guard let nets else { throw XendError(.unavailable, "network interfaces are not available without netback") }
            launch.netSockets = try nets.start(domid: domid, name: r.name, vifs: cfg.vifs.enumerated().map { ($0.offset, $0.element) },
                                               inUse: registry.vifsInUse(except: domid), emulated: plan.emulatedVifs,
                                               socketOwner: plan.socketOwner,
                                               planned: { names in r.plannedTaps = names; registry.persist(r) })
            launch.netTapFDs = cfg.vifs.indices.map { plan.emulatedVifs.contains($0) ? nets.tapDescriptor(domid: domid, devid: $0) : nil }
            r.vifs = nets.records(domid)
            registry.persist(r)
        }
        if !plan.servedDisks.isEmpty {
            guard let blocks else { throw XendError(.unavailable, "disks are not available without blkback") }
            launch.blockSockets = try blocks.start(domid: domid, name: r.name, disks: plan.servedDisks, vcpus: plan.diskQueues,
                                                   inUse: registry.disksInUse(except: domid), socketOwner: plan.socketOwner,
                                                   deferLocks: deferDiskLocks)
            r.disks = blocks.records(domid)
            for d in r.disks ?? [] { launch.diskSockets[d.vdev] = d.socket }
            registry.persist(r)
            if let ids = plan.socketOwner, let s = launch.blockSockets.first, let dir = Self.unsearchableAncestor(s, uid: ids.uid) {
                log.warning("\(dir) is not searchable by the engine's user (uid \(ids.uid)): it cannot reconnect to \(s) after a blkback restart")
            }
        }
        if let consoles {
            switch plan.console {
            case .ring:
                do {
                    let ch = try consoles.create(domid: domid, name: r.name)
                    launch.consoleFDs = [ch.ringFD, ch.outEventFD, ch.inEventFD]
                } catch { throw XendError(.internalError, "console ring: \(error)") }
            case .stream:
                do { launch.serialFD = try consoles.createStream(domid: domid, name: r.name) }
                catch { throw XendError(.internalError, "console: \(error)") }
            }
        }
        FaultInjection.crashPoint("console")
        defer { if let fd = launch.serialFD { close(fd) } }   // the engine holds its own copy

        let process: EngineProcess
        // Outside Domain-0's CPUs (dom0-cpus): the engine's threads may use every CPU.
        do { process = try ThreadCPU.withAllCPUs { try engine.start(launch) } } catch {
            throw XendError((error as? EngineError)?.isBadRequest == true ? .badRequest : .internalError, "\(error)")
        }
        adoptChild(process.pid)
        FaultInjection.crashPoint("engine")
        r.process = process
        r.creating = nil
        r.plannedTaps = nil
        r.startTime = Date().timeIntervalSince1970
        r.bootMemory = max(cfg.memory, cfg.maxmem ?? 0)
        // Before the record can be found: an `xm sched-credit` or `vcpu-pin` that finds the
        // domain then comes after its start-time settings (or waits for them), never before.
        if cpuSettingsInBackground { applyCPUSettingsInBackground(r, process, engine) }
        else { applyCPUSettings(r, process, engine) }
        if incoming { registry.markIncoming(domid) }
        registry.store(r)
        undo.commit()
        dmesg("Domain \(r.name) (\(domid)) started on the \(engine.name) engine, pid \(process.pid)")
        watch(domid, process)
        return r
    }

    /// The first directory above `path` that user `uid` (no supplementary groups
    /// considered) cannot search, nil when every one can.
    static func unsearchableAncestor(_ path: String, uid: uid_t) -> String? {
        var dir = (path as NSString).deletingLastPathComponent
        while dir.count > 1 {
            var st = stat()
            if stat(dir, &st) == 0 {
                let ok = st.st_uid == uid ? st.st_mode & S_IXUSR != 0 : st.st_mode & S_IXOTH != 0
                if !ok { return dir }
            }
            dir = (dir as NSString).deletingLastPathComponent
        }
        return nil
    }

    /// A domain's `/local/domain/DOMID` and `/vm/UUID` entries.
    static func xenstoreInfo(_ r: DomainRecord, _ cfg: DomainConfiguration, startTime: Double) -> XenStoreDomainInfo {
        XenStoreDomainInfo(domid: UInt32(r.domid), name: r.name, uuid: r.uuid,
                           memoryTargetKiB: UInt64(cfg.memory) * 1024,
                           memoryStaticMaxKiB: UInt64(cfg.maxmem ?? cfg.memory) * 1024, vcpus: cfg.vcpus,
                           vmExtra: ["on_poweroff": cfg.onPoweroff.rawValue, "on_reboot": cfg.onReboot.rawValue,
                                     "on_crash": cfg.onCrash.rawValue, "start_time": String(startTime)])
    }
}
