// The domain manager: xend's XendDomain. It holds the parts each concern lives in — the
// registry (DomainRegistry.swift), the engines (EngineSelection.swift), the back-end
// supervisors (BlockDevices.swift, NetDevices.swift, Consoles.swift), the status cache
// and the dmesg ring — and answers the queries; creation is in DomainLauncher.swift,
// supervision in DomainLifecycle.swift, re-adoption in DomainAdoption.swift, control
// requests in DomainControl.swift and NetworkControl.swift (see README.md here).
import DomainConfig
import Foundation
import Logging
import XenStore
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

/// glibc's pidfd_open(2) wrapper (glibc ≥ 2.36): an fd readable once the process exits.
@_silgen_name("pidfd_open")
func pidfdOpen(_ pid: Int32, _ flags: UInt32) -> Int32

/// Xen's MINIMUM_RESTART_TIME: a domain restarted again sooner is not restarted.
let minimumRestartTime = 20.0

/// Holds the domains, persists them, starts and supervises engine processes.
public final class DomainManager: @unchecked Sendable {
    let paths: XenithPaths
    let xendConfig: XendConfig
    let engines: EngineRegistry
    let xenstore: XenStoreClient?
    let log: Logger
    /// Console rings and xenconsoled (nil: the core's console goes to the log file).
    let consoles: ConsoleSupervisor?
    /// blkback processes (nil: domains whose engine wants disks served are refused).
    let blocks: BlockSupervisor?
    /// Taps, vif scripts and netback processes (nil: domains with vifs are refused).
    let nets: NetSupervisor?
    /// Passed-through PCI functions (PciDevices.swift; nil: domains with `pci` are refused).
    let pcis: PciSupervisor?
    let registry: DomainRegistry
    let dmesgRing: DmesgRing
    let statuses = StatusCache()
    /// The domains' CPU control groups (`cpu_weight`, `cpu_cap`; CPUGroups.swift), nil
    /// where the host has no cpu controller or xend is not root.
    let cpuGroups: CPUGroups?
    /// CPU settings being applied in the background (a restore's; CPUPlacements.swift).
    let cpuPlacements = CPUPlacements()
    /// Saves and restores under way (DomainSave.swift, Transfers.swift).
    let transfers = TransferTable()
    /// The migration service for `xm save`/`restore` (nil: both are refused).
    let migration: MigrationService?
    /// `xend-relocation-ssl` (RelocationTLS.swift): nil inside when off; a failure when it is
    /// on but its files are unusable, which refuses relocation both ways rather than fall
    /// back to plaintext. Set once by the daemon before the relocation server starts.
    var relocationTLS: Result<RelocationTLS?, XendError> = .success(nil)
    /// Serialises lifecycle changes: create, launch, exit handling, destroy, re-adoption.
    let lifecycle = NSRecursiveLock()
    /// Domains `xm reboot` asked to shut down: their poweroff is a reboot (under `lifecycle`).
    var rebootRequested: Set<Int> = []
    /// Domains `xm reset` reset: started again whatever their on_reboot (under `lifecycle`).
    var resetRequested: Set<Int> = []
    /// Pids xend spawned itself (it must reap them).
    private var children: Set<Int32> = []
    private let childLock = NSLock()

    /// - Parameters:
    ///   - engines: by name (`core`, `qemu`).
    ///   - autoPrefersQemu: whether `domain-engine auto` picks the qemu engine here.
    ///   - xenstore: nil runs without xenstore entries (tests).
    ///   - consoles: xenconsoled's supervisor; nil puts core consoles in the log file directly.
    ///   - blocks: blkback's supervisor; nil refuses domains whose engine wants disks served.
    ///   - nets: netback's supervisor; nil refuses domains with vifs.
    ///   - migration: the migration service; nil refuses `xm save` and `xm restore`.
    ///   - pcis: PCI passthrough; nil refuses domains with `pci`.
    public init(paths: XenithPaths, xendConfig: XendConfig, engines: [String: any DomainEngineDriver],
                autoPrefersQemu: Bool = false,
                xenstore: XenStoreClient?, logger: Logger, consoles: ConsoleSupervisor? = nil,
                blocks: BlockSupervisor? = nil, nets: NetSupervisor? = nil, migration: MigrationService? = nil,
                pcis: PciSupervisor? = nil) {
        self.migration = migration
        self.pcis = pcis
        self.nets = nets
        self.consoles = consoles
        self.blocks = blocks
        self.paths = paths
        self.xendConfig = xendConfig
        self.engines = EngineRegistry(engines: engines, autoPrefersQemu: autoPrefersQemu)
        self.xenstore = xenstore
        self.log = logger
        self.registry = DomainRegistry(paths: paths)
        self.cpuGroups = CPUGroups.detect(root: paths.root)
        self.dmesgRing = DmesgRing(logger: logger)
        for d in [paths.registryDir, paths.domainRunDir, paths.consoleLogDir, paths.logDir] { XenithPaths.makeDirectories(d) }
        if let xs = xenstore {
            try? xs.write([XenStoreEntry("/local/domain/0/name", "Domain-0"), XenStoreEntry("/local/domain/0/domid", "0")])
        }
        let registry = self.registry
        blocks?.onChange = { domid, disks in registry.update(domid, onlyLive: true) { $0.disks = disks } }
        nets?.onChange = { domid, vifs in registry.update(domid, onlyLive: true) { $0.vifs = vifs } }
    }

    // MARK: children

    func adoptChild(_ pid: Int32) { childLock.lock(); children.insert(pid); childLock.unlock() }
    func isChild(_ pid: Int32) -> Bool { childLock.lock(); defer { childLock.unlock() }; return children.contains(pid) }
    func forgetChild(_ pid: Int32) { childLock.lock(); children.remove(pid); childLock.unlock() }

    // MARK: devices

    /// Stops a domain's back-ends and drops its console (its engine process is gone).
    func releaseDevices(_ domid: Int) {
        nets?.stop(domid: domid)
        blocks?.stop(domid: domid)
        consoles?.remove(domid: domid)
        cpuPlacements.wait(domid)
        cpuGroups?.remove(domid)
        pcis?.release(domid: domid)
    }

    // MARK: dmesg

    func dmesg(_ s: String) { dmesgRing.append(s) }
    public func dmesgText() -> String { dmesgRing.text }
    public func dmesgClear() { dmesgRing.clear() }

    // MARK: queries

    /// Finds a live or preserved domain by name or decimal id.
    func find(_ dom: String) -> DomainRecord? { registry.find(dom) }

    func info(_ r: DomainRecord, long: Bool) -> DomainInfo {
        let cfg = r.config
        var state = "------"
        var cpu = 0.0
        let engine = engines[r.engine]
        if let p = r.process, let e = engine {
            let cached = statuses[r.domid]
            if let st = cached ?? (try? e.query(p)) {
                if cached == nil { statuses[r.domid] = st }
                state = st.paused ? "--p---" : "r-----"
                cpu = Double(st.cpuTimeNs) / 1e9
            } else {
                state = "-----d"
            }
        } else if r.stoppedState == "c" { state = "----c-" } else { state = "---s--" }
        var sxp: String? = nil
        if long {
            var vm = cfg.toSXP()
            if case .list(var items) = vm {
                items[0] = .atom("domain")
                items.insert(contentsOf: [.pair("domid", .int(r.domid)),
                                          .pair("state", .atom(state)), .pair("cpu_time", .atom(String(format: "%.3f", cpu))),
                                          .pair("start_time", .atom(String(format: "%.2f", r.startTime))),
                                          .pair("restart_count", .int(r.restartCount))], at: 1)
                vm = .list(items)
            }
            sxp = vm.prettyPrinted()
        }
        var out = DomainInfo(domid: r.domid, name: transfers.listedName(r.domid, r.name), uuid: r.uuid, memory: cfg.memory,
                          maxmem: cfg.maxmem ?? cfg.memory, vcpus: cfg.vcpus,
                          onlineVcpus: r.process == nil ? 0 : cfg.vcpus, state: state, cpuTime: cpu,
                          startTime: r.startTime, restartCount: r.restartCount, engine: r.engine,
                          pid: r.process.map { Int($0.pid) }, consoleLog: r.consoleLog, sxp: sxp,
                          vnc: r.process.flatMap { p in engine?.displayAddress(p) })
        if r.isLive { out.brokenDevices = brokenDevices(r) }
        return out
    }

    /// All domains, Domain-0 first, then by domid. Live domains are queried in parallel.
    public func list(long: Bool) -> [DomainInfo] {
        let rs = registry.all
        let out = UnsafeMutableBufferPointer<DomainInfo?>.allocate(capacity: rs.count)
        out.initialize(repeating: nil)
        defer { out.deallocate() }
        nonisolated(unsafe) let o = out
        DispatchQueue.concurrentPerform(iterations: rs.count) { i in o[i] = self.info(rs[i], long: long) }
        return [HostFacts.dom0Info()] + out.compactMap { $0 }
    }

    /// Starts the thread that refreshes the status cache every second.
    public func startStatusRefresher() {
        let registry = self.registry, engines = self.engines
        statuses.startRefreshing {
            registry.all.compactMap { r in r.process.flatMap { p in engines[r.engine].map { (r.domid, p, $0) } } }
        }
    }

    /// One domain by name or id (0 / Domain-0 is the host).
    public func get(_ dom: String, long: Bool) throws(XendError) -> DomainInfo {
        if dom == "0" || dom == "Domain-0" { return HostFacts.dom0Info() }
        guard let r = find(dom) else { throw .noDomain(dom) }
        return info(r, long: long)
    }

    /// `xm info`'s pairs (Xen 3.0 XendNode.info order).
    public func hostInfo() -> HostInfo { HostFacts.hostInfo(domainEngine: xendConfig.domainEngine) }
}
