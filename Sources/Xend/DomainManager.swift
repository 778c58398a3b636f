// The domain registry and supervisor: xend's XendDomain.
import CLinux
import DomainConfig
import Foundation
import QemuEngine
import ConsoleBackend
import Logging
import QemuEngine
import XM
import XenStore
#if canImport(Glibc)
import Glibc
#endif

/// A failed request, mapped onto an HTTP status by the server.
public struct XendError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable { case noSuchDomain = "no_such_domain", badRequest = "bad_request",
                                         conflict, unavailable, internalError = "internal" }
    public var kind: Kind
    public var message: String
    public var domain: String?
    public init(_ kind: Kind, _ message: String, domain: String? = nil) { self.kind = kind; self.message = message; self.domain = domain }
    public var description: String { message }
    static func noDomain(_ d: String) -> XendError { XendError(.noSuchDomain, "Domain '\(d)' does not exist.", domain: d) }
}

/// One domain as the registry stores it (`$ROOT/var/lib/xend/domains/DOMID.json`).
public struct DomainRecord: Codable, Sendable {
    public var domid: Int
    public var name: String
    public var uuid: String
    /// The `(vm ...)` configuration, SXP text.
    public var config: String
    public var engine: String
    public var process: EngineProcess?
    public var startTime: Double
    public var restartCount: Int
    /// Last restart time (Xen's `xend/previous_restart_time`).
    public var previousRestartTime: Double?
    /// For a stopped, preserved domain: `s` (shut down) or `c` (crashed).
    public var stoppedState: String?
    public var consoleLog: String
    /// The domain's vbd back-ends (core engine; nil in records of older xends).
    public var disks: [DiskRecord]? = nil
    /// The domain's vifs (taps + netbacks; nil in records of older xends).
    public var vifs: [VifRecord]? = nil
    /// MiB of RAM the running engine was given (max of memory and maxmem at start): the
    /// ceiling of `xm mem-set` until the next start. nil in records of older xends.
    public var bootMemory: Int? = nil
}

/// glibc's pidfd_open(2) wrapper (glibc ≥ 2.36): an fd readable once the process exits.
@_silgen_name("pidfd_open")
func pidfdOpen(_ pid: Int32, _ flags: UInt32) -> Int32

/// Xen's MINIMUM_RESTART_TIME: a domain restarted again sooner is not restarted.
let minimumRestartTime = 20.0

/// Holds the domains, persists them, starts and supervises engine processes.
public final class DomainManager: @unchecked Sendable {
    let paths: XenithPaths
    let xendConfig: XendConfig
    let engines: [String: any DomainEngineDriver]
    let xenstore: XenStoreClient?
    let log: Logger
    /// Console rings and xenconsoled (nil: the core's console goes to the log file).
    let consoles: ConsoleSupervisor?
    /// blkback processes (nil: disks are not served; tests without blkback).
    let blocks: BlockSupervisor?
    /// Taps, vif scripts and netback processes (nil: domains with vifs are refused).
    let nets: NetSupervisor?
    private let lock = NSRecursiveLock()
    /// Domains `xm reboot` asked to shut down: their poweroff is a reboot.
    private var rebootRequested: Set<Int> = []
    private var records: [Int: DomainRecord] = [:]
    private var dmesgLines: [String] = []
    /// Pids xend spawned itself (it must reap them).
    private var children: Set<Int32> = []
    /// Last engine status per domid, refreshed by a background thread once a second, so
    /// `list` never waits on busy engine processes.
    private var statusCache: [Int: EngineStatus] = [:]
    private let cacheLock = NSLock()

    /// - Parameters:
    ///   - engines: by name (`core`, later `qemu`).
    ///   - xenstore: nil runs without xenstore entries (tests).
    ///   - consoles: xenconsoled's supervisor; nil puts core consoles in the log file directly.
    ///   - blocks: blkback's supervisor; nil refuses domains with disks on the core engine.
    public init(paths: XenithPaths, xendConfig: XendConfig, engines: [String: any DomainEngineDriver],
                xenstore: XenStoreClient?, logger: Logger, consoles: ConsoleSupervisor? = nil,
                blocks: BlockSupervisor? = nil, nets: NetSupervisor? = nil) {
        self.nets = nets
        self.consoles = consoles
        self.blocks = blocks
        self.paths = paths
        self.xendConfig = xendConfig
        self.engines = engines
        self.xenstore = xenstore
        self.log = logger
        for d in [paths.registryDir, paths.domainRunDir, paths.consoleLogDir, paths.logDir] { XenithPaths.makeDirectories(d) }
        if let xs = xenstore {
            try? xs.write([XenStoreEntry("/local/domain/0/name", "Domain-0"), XenStoreEntry("/local/domain/0/domid", "0")])
        }
        blocks?.onChange = { [weak self] domid, disks in self?.updateDisks(domid, disks) }
        nets?.onChange = { [weak self] domid, vifs in self?.updateVifs(domid, vifs) }
    }

    /// Stores a domain's changed vif records (a netback restarted or broke, a vif came or went).
    func updateVifs(_ domid: Int, _ vifs: [VifRecord]) {
        lock.lock(); defer { lock.unlock() }
        guard var r = records[domid], r.process != nil else { return }
        r.vifs = vifs
        records[domid] = r
        persist(r)
    }

    /// The vifs of the running domains (all of them, or all but `domid`), by domain name.
    func vifsInUse(except domid: Int? = nil) -> [(domain: String, vif: VifRecord)] {
        lock.lock(); defer { lock.unlock() }
        var out: [(domain: String, vif: VifRecord)] = []
        for r in records.values where r.domid != domid && r.process != nil {
            for v in r.vifs ?? [] { out.append((r.name, v)) }
        }
        return out
    }

    /// Stores a domain's changed vbd records (a blkback restarted or broke).
    func updateDisks(_ domid: Int, _ disks: [DiskRecord]) {
        lock.lock(); defer { lock.unlock() }
        guard var r = records[domid], r.process != nil else { return }
        r.disks = disks
        records[domid] = r
        persist(r)
    }

    /// Stops a domain's back-ends and drops its console (its engine process is gone).
    func releaseDevices(_ domid: Int) {
        nets?.stop(domid: domid)
        blocks?.stop(domid: domid)
        consoles?.remove(domid: domid)
    }

    /// The disks of the running domains other than `domid`, by domain name.
    func disksInUse(except domid: Int) -> [(domain: String, disk: DiskSpec)] {
        lock.lock(); defer { lock.unlock() }
        var out: [(domain: String, disk: DiskSpec)] = []
        for r in records.values where r.domid != domid && r.process != nil {
            guard let cfg = try? DomainConfiguration(sxp: SXP.parse(r.config)) else { continue }
            // Every disk but those whose blkback broke (the core's and QEMU's own alike).
            let broken = Set((r.disks ?? []).filter(\.broken).map(\.vdev))
            for d in cfg.disks where !broken.contains(d.vdev) { out.append((r.name, d)) }
        }
        return out
    }

    func dmesg(_ s: String) {
        lock.lock(); defer { lock.unlock() }
        var t = time(nil); var tmv = tm(); localtime_r(&t, &tmv)
        dmesgLines.append(String(format: "(XEN) [%02d:%02d:%02d] ", tmv.tm_hour, tmv.tm_min, tmv.tm_sec) + s)
        if dmesgLines.count > 1000 { dmesgLines.removeFirst(dmesgLines.count - 1000) }
        log.info("\(s)")
    }

    public func dmesgText() -> String { lock.lock(); defer { lock.unlock() }; return dmesgLines.joined(separator: "\n") }
    public func dmesgClear() { lock.lock(); dmesgLines.removeAll(); lock.unlock() }

    // MARK: registry files

    func recordPath(_ domid: Int) -> String { paths.registryDir + "/\(domid).json" }

    func persist(_ r: DomainRecord) {
        guard let data = try? XendClient.encoder.encode(r) else { return }
        let tmp = recordPath(r.domid) + ".tmp"
        if FileManager.default.createFile(atPath: tmp, contents: data) { rename(tmp, recordPath(r.domid)) }
    }

    func unpersist(_ domid: Int) { unlink(recordPath(domid)) }

    /// Next domid: a counter kept in `var/lib/xend/next-domid`, never a live one.
    func allocateDomid() -> Int {
        let file = paths.xendLib + "/next-domid"
        var next = Int((try? String(contentsOfFile: file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 1
        if next < 1 { next = 1 }
        while records[next] != nil { next += 1 }
        let id = next
        try? String(id + 1).write(toFile: file, atomically: true, encoding: .utf8)
        return id
    }

    // MARK: lookup and info

    /// Finds a live or preserved domain by name or decimal id.
    func find(_ dom: String) -> DomainRecord? {
        lock.lock(); defer { lock.unlock() }
        if let id = Int(dom), let r = records[id] { return r }
        return records.values.first { $0.name == dom }
    }

    func dom0Info() -> DomainInfo {
        var memKiB = 0
        if let m = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) {
            for l in m.split(separator: "\n") where l.hasPrefix("MemTotal:") {
                memKiB = Int(l.split(separator: " ")[1]) ?? 0
            }
        }
        var cpu = 0.0
        if let s = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8), let c = s.lastIndex(of: ")") {
            let f = s[s.index(after: c)...].split(separator: " ")
            if f.count > 12 { cpu = Double((Int(f[11]) ?? 0) + (Int(f[12]) ?? 0)) / Double(sysconf(Int32(_SC_CLK_TCK))) }
        }
        let n = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let boot = Date().timeIntervalSince1970 - ((try? String(contentsOfFile: "/proc/uptime", encoding: .utf8))
            .flatMap { Double($0.split(separator: " ")[0]) } ?? 0)
        return DomainInfo(domid: 0, name: "Domain-0", uuid: "00000000-0000-0000-0000-000000000000", memory: memKiB / 1024,
                          maxmem: memKiB / 1024, vcpus: n, onlineVcpus: n, state: "r-----", cpuTime: cpu,
                          startTime: boot, restartCount: 0, engine: "")
    }

    func info(_ r: DomainRecord, long: Bool) -> DomainInfo {
        let cfg = try? DomainConfiguration(sxp: SXP.parse(r.config))
        var state = "------"
        var cpu = 0.0
        if let p = r.process, let e = engines[r.engine] {
            cacheLock.lock(); let cached = statusCache[r.domid]; cacheLock.unlock()
            if let st = cached ?? (try? e.query(p)) {
                if cached == nil { cacheLock.lock(); statusCache[r.domid] = st; cacheLock.unlock() }
                state = st.paused ? "--p---" : "r-----"
                cpu = Double(st.cpuTimeNs) / 1e9
            } else {
                state = "-----d"
            }
        } else if r.stoppedState == "c" { state = "----c-" } else { state = "---s--" }
        var sxp: String? = nil
        if long, var vm = try? SXP.parse(r.config) {
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
        return DomainInfo(domid: r.domid, name: r.name, uuid: r.uuid, memory: cfg?.memory ?? 0,
                          maxmem: cfg?.maxmem ?? cfg?.memory ?? 0, vcpus: cfg?.vcpus ?? 1,
                          onlineVcpus: r.process == nil ? 0 : (cfg?.vcpus ?? 1), state: state, cpuTime: cpu,
                          startTime: r.startTime, restartCount: r.restartCount, engine: r.engine,
                          pid: r.process.map { Int($0.pid) }, consoleLog: r.consoleLog, sxp: sxp,
                          vnc: r.process.flatMap { QemuEngineDriver.vncAddress($0) })
    }

    /// All domains, Domain-0 first, then by domid. Live domains are queried in parallel.
    public func list(long: Bool) -> [DomainInfo] {
        lock.lock()
        let rs = records.values.sorted { $0.domid < $1.domid }
        lock.unlock()
        let out = UnsafeMutableBufferPointer<DomainInfo?>.allocate(capacity: rs.count)
        out.initialize(repeating: nil)
        defer { out.deallocate() }
        nonisolated(unsafe) let o = out
        DispatchQueue.concurrentPerform(iterations: rs.count) { i in o[i] = self.info(rs[i], long: long) }
        return [dom0Info()] + out.compactMap { $0 }
    }

    /// Starts the thread that refreshes `statusCache` every second.
    public func startStatusRefresher() {
        let t = Thread { [self] in
            while true {
                lock.lock()
                let live = records.values.compactMap { r in r.process.map { (r.domid, $0, r.engine) } }
                lock.unlock()
                var fresh: [Int: EngineStatus] = [:]
                for (id, p, en) in live { if let st = try? engines[en]?.query(p) { fresh[id] = st } }
                cacheLock.lock(); statusCache = fresh; cacheLock.unlock()
                sleep(1)
            }
        }
        t.name = "status"
        t.start()
    }

    func setCachedPaused(_ domid: Int, _ paused: Bool) {
        cacheLock.lock(); defer { cacheLock.unlock() }
        if var st = statusCache[domid] { st.paused = paused; statusCache[domid] = st }
    }

    /// One domain by name or id (0 / Domain-0 is the host).
    public func get(_ dom: String, long: Bool) throws(XendError) -> DomainInfo {
        if dom == "0" || dom == "Domain-0" { return dom0Info() }
        guard let r = find(dom) else { throw .noDomain(dom) }
        return info(r, long: long)
    }

    // MARK: create

    /// Xen 3.0's VM name characters without `/`: xend names files after the domain
    /// (console and engine logs), so a `/` would reach outside their directories.
    static let nameRegex = try! NSRegularExpression(pattern: "^[A-Za-z0-9_\\-\\.\\:\\+]+$")

    func resolveEngine(_ c: DomainConfiguration) throws(XendError) -> any DomainEngineDriver {
        var e = c.engine == .auto ? xendConfig.domainEngine : c.engine
        if c.builder == .hvm && e == .auto { e = .qemu }
        if e == .auto { e = QemuEngineDriver.preferredForAuto && engines["qemu"] != nil ? .qemu : .core }
        guard let d = engines[e.rawValue] else {
            throw XendError(.unavailable, "engine \(e.rawValue) is not available yet")
        }
        if c.builder == .hvm && e == .core { throw XendError(.badRequest, "HVM domains need the qemu engine") }
        return d
    }

    /// KiB the host can give a new domain (MemAvailable).
    func freeKiB() -> Int {
        guard let m = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return Int.max }
        for l in m.split(separator: "\n") where l.hasPrefix("MemAvailable:") {
            return Int(l.split(separator: " ")[1]) ?? Int.max
        }
        return Int.max
    }

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
        if let d = cfg.disks.first(where: { $0.script != nil }) {
            throw XendError(.badRequest, "Device \(d.vdev) (vbd) could not be connected. Block script \(d.script!) is not supported here: use file: or phy: (disk '\(d.uname),\(d.dev),\(d.access.rawValue)')")
        }
        let engine = try resolveEngine(cfg)
        lock.lock(); defer { lock.unlock() }
        if name == "Domain-0" { throw XendError(.conflict, "VM name 'Domain-0' already exists as domain 0") }
        if let other = records.values.first(where: { $0.name == name }) {
            throw XendError(.conflict, "VM name '\(name)' already exists as domain \(other.domid)")
        }
        let needKiB = cfg.memory * 1024
        let free = freeKiB()
        if needKiB > free {
            throw XendError(.unavailable, "Not enough free memory and dom0_min_mem is 0, so I cannot release any more.  I need \(needKiB) KiB but only have \(free).")
        }
        if cfg.uuid == nil { cfg.uuid = UUID().uuidString.lowercased() }
        let uuid = cfg.uuid!
        let record = DomainRecord(domid: 0, name: name, uuid: uuid, config: cfg.toSXP().description, engine: engine.name,
                                  process: nil, startTime: 0, restartCount: 0, previousRestartTime: nil,
                                  stoppedState: nil, consoleLog: paths.consoleLogDir + "/guest-\(name).log")
        let r = try launch(record, cfg: cfg, engine: engine)
        if paused, let p = r.process { try? engine.pause(p) }
        return info(r, long: false)
    }

    /// Allocates a domid, writes xenstore, starts the engine, registers and watches it.
    func launch(_ base: DomainRecord, cfg: DomainConfiguration, engine: any DomainEngineDriver) throws(XendError) -> DomainRecord {
        lock.lock(); defer { lock.unlock() }
        var r = base
        r.domid = allocateDomid()
        r.stoppedState = nil
        let run = paths.domainRunDir
        var launch = EngineLaunch(domid: r.domid, name: r.name, uuid: r.uuid, config: cfg,
                                  commandLine: cfg.kernelCommandLine, controlPath: run + "/\(r.domid).control",
                                  statusFile: run + "/\(r.domid).status", consoleLog: r.consoleLog,
                                  engineLog: paths.logDir + "/\(engine.name)-\(r.name).log")
        let xsInfo = Self.xenstoreInfo(r, cfg, startTime: Date().timeIntervalSince1970)
        if let xs = xenstore {
            do { try xs.writeDomain(xsInfo) } catch {
                try? xs.removeDomain(UInt32(r.domid))
                throw XendError(.internalError, "xenstore: \(error)")
            }
        }
        if !cfg.vifs.isEmpty {
            do throws(XendError) {
                guard let nets else { throw XendError(.unavailable, "network interfaces are not available without netback") }
                // On the qemu engine a NIC model other than virtio-net (HVM's rtl8139 or ne2000,
                // or model=) is QEMU's own on the tap: vhost-user serves virtio only.
                let emulated = engine.name == "qemu"
                    ? Set(cfg.vifs.indices.filter { QemuCommandLine.nicModel(cfg.vifs[$0], in: cfg) != "virtio-net-pci" }) : []
                launch.netSockets = try nets.start(domid: r.domid, name: r.name, vifs: cfg.vifs.enumerated().map { ($0.offset, $0.element) },
                                                   inUse: vifsInUse(except: r.domid), emulated: emulated,
                                                   socketOwner: (engine as? QemuEngineDriver)?.runAsIDs)
                launch.netTapFDs = cfg.vifs.indices.map { emulated.contains($0) ? nets.tapDescriptor(domid: r.domid, devid: $0) : nil }
                r.vifs = nets.records(r.domid)
            } catch {
                releaseDevices(r.domid)
                if let xs = xenstore { try? xs.removeDomain(UInt32(r.domid)) }
                throw error
            }
        }
        if engine.name == "core" {
            do throws(XendError) {
                if !cfg.disks.isEmpty {
                    guard let blocks else { throw XendError(.unavailable, "disks are not available without blkback") }
                    launch.blockSockets = try blocks.start(domid: r.domid, name: r.name, disks: cfg.disks, vcpus: cfg.vcpus,
                                                           inUse: disksInUse(except: r.domid))
                    r.disks = blocks.records(r.domid)
                }
                if let consoles {
                    let ch: ConsoleRingChannel
                    do { ch = try consoles.create(domid: r.domid, name: r.name) }
                    catch { throw XendError(.internalError, "console ring: \(error)") }
                    launch.consoleFDs = [ch.ringFD, ch.outEventFD, ch.inEventFD]
                }
            } catch {
                releaseDevices(r.domid)
                if let xs = xenstore { try? xs.removeDomain(UInt32(r.domid)) }
                throw error
            }
        } else if let qemu = engine as? QemuEngineDriver {
            do throws(XendError) { try prepareQemu(&r, &launch, cfg: cfg, qemu) } catch {
                releaseDevices(r.domid)
                if let xs = xenstore { try? xs.removeDomain(UInt32(r.domid)) }
                throw error
            }
        }
        defer { if let fd = launch.serialFD { close(fd) } }   // QEMU holds its own copy
        do {
            r.process = try engine.start(launch)
        } catch {
            releaseDevices(r.domid)
            if let xs = xenstore { try? xs.removeDomain(UInt32(r.domid)) }
            throw XendError((error as? EngineError)?.isBadRequest == true ? .badRequest : .internalError, "\(error)")
        }
        r.startTime = Date().timeIntervalSince1970
        r.bootMemory = max(cfg.memory, cfg.maxmem ?? 0)
        records[r.domid] = r
        children.insert(r.process!.pid)
        persist(r)
        dmesg("Domain \(r.name) (\(r.domid)) started on the \(engine.name) engine, pid \(r.process!.pid)")
        watch(r.domid, r.process!)
        return r
    }

    /// A qemu domain's services (DESIGN.md "Two engines"): its `file:`/`phy:` raw disks on
    /// blkback (vhost-user; the sockets owned by QEMU's unprivileged user so that it can
    /// reconnect after a blkback restart) and its serial line on xenconsoled (a stream).
    /// Left to QEMU: `ioemu:` disks, CD-ROMs, other image formats and, for HVM domains, the
    /// IDE disks hda...hdd (the emulated controller of Xen's qemu-dm).
    func prepareQemu(_ r: inout DomainRecord, _ launch: inout EngineLaunch, cfg: DomainConfiguration,
                     _ qemu: QemuEngineDriver) throws(XendError) {
        let served = cfg.disks.filter { d in
            !d.ioemu && d.deviceType == .disk && d.path != nil && d.format == "raw"
                && !(cfg.builder == .hvm && QemuCommandLine.ideSlot(d.vdev) != nil)
        }
        if !served.isEmpty, let blocks {
            let sockets = try blocks.start(domid: r.domid, name: r.name, disks: served, vcpus: 1,
                                           inUse: disksInUse(except: r.domid), socketOwner: qemu.runAsIDs)
            for (d, s) in zip(served, sockets) { launch.diskSockets[d.vdev] = s }
            if let ids = qemu.runAsIDs, let s = sockets.first, let dir = Self.unsearchableAncestor(s, uid: ids.uid) {
                log.warning("\(dir) is not searchable by QEMU's user (uid \(ids.uid)): QEMU cannot reconnect to \(s) after a blkback restart")
            }
            r.disks = blocks.records(r.domid)
        }
        if let consoles {
            do { launch.serialFD = try consoles.createStream(domid: r.domid, name: r.name) }
            catch { throw XendError(.internalError, "console: \(error)") }
        }
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

    // MARK: supervision

    /// Watches the engine process with a pidfd; on exit, applies the domain's on_* action.
    func watch(_ domid: Int, _ p: EngineProcess) {
        let t = Thread { [self] in
            waitForExit(pid: p.pid, startTicks: p.startTicks)
            var status: Int32 = 0
            var ws: Int32? = nil
            lock.lock()
            let mine = children.contains(p.pid)
            lock.unlock()
            if mine && waitpid(p.pid, &status, 0) == p.pid { ws = status }
            exited(domid, p, waitStatus: ws)
        }
        t.name = "watch-\(domid)"
        t.start()
    }

    func exited(_ domid: Int, _ p: EngineProcess, waitStatus: Int32?) {
        lock.lock(); defer { lock.unlock() }
        children.remove(p.pid)
        guard var r = records[domid], r.process == p, let engine = engines[r.engine] else { return }
        var why = engine.stopReason(p, waitStatus: waitStatus)
        if rebootRequested.remove(domid) != nil, why == .poweroff { why = .reboot("xm reboot") }
        unlink(p.controlPath); unlink(p.statusFile)
        releaseDevices(domid)
        let cfg = try? DomainConfiguration(sxp: SXP.parse(r.config))
        let action: LifecycleAction
        switch why {
        case .poweroff: action = cfg?.onPoweroff ?? .destroy; dmesg("Domain \(r.name) (\(domid)) has shut down (poweroff)")
        case .reboot(let s): action = cfg?.onReboot ?? .restart; dmesg("Domain \(r.name) (\(domid)) has shut down (reboot: \(s))")
        case .crash(let s):
            action = cfg?.onCrash ?? .restart
            // One line with where to look: the console log outlives the domain.
            dmesg("Domain \(r.name) (\(domid)) has crashed: \(s); console log: \(r.consoleLog)")
        case .destroyed: action = .destroy; dmesg("Domain \(r.name) (\(domid)) destroyed")
        }
        r.process = nil
        records[domid] = r
        switch action {
        case .destroy:
            cleanup(domid)
        case .preserve:
            if case .crash = why { r.stoppedState = "c" } else { r.stoppedState = "s" }
            records[domid] = r
            persist(r)
        case .restart, .renameRestart:
            let now = Date().timeIntervalSince1970
            if let prev = r.previousRestartTime, now - prev < minimumRestartTime {
                log.error("VM \(r.name) restarting too fast (\(String(format: "%f", now - prev)) seconds since the last restart).  Refusing to restart to avoid loops.")
                dmesg("Domain \(r.name): restarting too fast; not restarted; console log: \(r.consoleLog)")
                cleanup(domid)
                return
            }
            guard let cfg, let e = engines[r.engine] else { cleanup(domid); return }
            var next = r
            if action == .renameRestart {
                r.stoppedState = (why == .poweroff || { if case .reboot = why { return true }; return false }()) ? "s" : "c"
                r.name = "Domain-\(r.uuid)"
                r.uuid = UUID().uuidString.lowercased()
                records[domid] = r
                persist(r)
            } else {
                cleanup(domid)
            }
            next.restartCount += 1
            next.previousRestartTime = now
            do { _ = try launch(next, cfg: cfg, engine: e) } catch {
                log.error("Failed to restart domain \(next.name): \(error.message)")
            }
        }
    }

    /// Forgets a domain: registry file, xenstore entries, sockets.
    func cleanup(_ domid: Int) {
        lock.lock(); defer { lock.unlock() }
        guard let r = records.removeValue(forKey: domid) else { return }
        releaseDevices(domid)
        cacheLock.lock(); statusCache[domid] = nil; cacheLock.unlock()
        if let p = r.process { unlink(p.controlPath); unlink(p.statusFile) }
        unpersist(domid)
        if let xs = xenstore { try? xs.removeDomain(UInt32(domid)) }
    }

    /// A domain's `/local/domain/DOMID` and `/vm/UUID` entries.
    static func xenstoreInfo(_ r: DomainRecord, _ cfg: DomainConfiguration, startTime: Double) -> XenStoreDomainInfo {
        XenStoreDomainInfo(domid: UInt32(r.domid), name: r.name, uuid: r.uuid,
                           memoryTargetKiB: UInt64(cfg.memory) * 1024,
                           memoryStaticMaxKiB: UInt64(cfg.maxmem ?? cfg.memory) * 1024, vcpus: cfg.vcpus,
                           vmExtra: ["on_poweroff": cfg.onPoweroff.rawValue, "on_reboot": cfg.onReboot.rawValue,
                                     "on_crash": cfg.onCrash.rawValue, "start_time": String(startTime)])
    }

    /// Re-adopts domains from the registry after a restart of xend.
    public func adopt() {
        lock.lock(); defer { lock.unlock() }
        let files = (try? FileManager.default.contentsOfDirectory(atPath: paths.registryDir)) ?? []
        let listed = consoles?.listed() ?? []
        for f in files where f.hasSuffix(".json") {
            guard let data = FileManager.default.contents(atPath: paths.registryDir + "/" + f),
                  let r = try? XendClient.decoder.decode(DomainRecord.self, from: data) else { continue }
            records[r.domid] = r
            guard let p = r.process else { continue }
            let cfg = try? DomainConfiguration(sxp: SXP.parse(r.config))
            if let e = engines[r.engine], e.adopt(p) {
                dmesg("Domain \(r.name) (\(r.domid)) re-adopted, pid \(p.pid)")
                if let vifs = r.vifs { nets?.adopt(domid: r.domid, name: r.name, records: vifs) }
                if r.engine == "core" {
                    consoles?.adopt(domid: r.domid, name: r.name, pid: p.pid, listed: listed)
                } else if r.engine == "qemu" {
                    consoles?.adoptStream(domid: r.domid, name: r.name, listed: listed)
                }
                if let disks = r.disks, let cfg {
                    blocks?.adopt(domid: r.domid, name: r.name, disks: cfg.disks, records: disks,
                                  vcpus: r.engine == "core" ? cfg.vcpus : 1)
                }
                // A xenstored that died while xend was away starts empty: write the domain's
                // entries and its devices' again.
                if let xs = xenstore, let cfg, (try? xs.exists("/local/domain/\(r.domid)")) != true {
                    try? xs.writeDomain(Self.xenstoreInfo(r, cfg, startTime: r.startTime))
                    blocks?.republish(domid: r.domid)
                    nets?.republish(domid: r.domid)
                    dmesg("Domain \(r.name) (\(r.domid)): xenstore entries written again (xenstored had lost them)")
                }
                watch(r.domid, p)
            } else {
                // The core ended while xend was away: its back-ends go too.
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

    // MARK: control

    func live(_ dom: String) throws(XendError) -> (DomainRecord, EngineProcess, any DomainEngineDriver) {
        guard let r = find(dom) else { throw .noDomain(dom) }
        guard let p = r.process, let e = engines[r.engine] else { throw XendError(.conflict, "Domain '\(dom)' is not running.") }
        return (r, p, e)
    }

    func engineCall(_ f: () throws -> Void) throws(XendError) {
        do { try f() } catch { throw XendError(.internalError, "\(error)") }
    }

    public func pause(_ dom: String) throws(XendError) -> DomainInfo {
        let (r, p, e) = try live(dom)
        try engineCall { try e.pause(p) }
        setCachedPaused(r.domid, true)
        return info(r, long: false)
    }

    public func unpause(_ dom: String) throws(XendError) -> DomainInfo {
        let (r, p, e) = try live(dom)
        try engineCall { try e.unpause(p) }
        setCachedPaused(r.domid, false)
        return info(r, long: false)
    }

    /// `xm mem-set`: sets a running domain's memory target to `mib` MiB (balloon), keeps it
    /// in the domain's configuration (a restart boots with it, and with the RAM it has now as
    /// maxmem) and in xenstore (`memory/target`).
    /// - Throws: `XendError` 400 below 16 MiB or above what the domain was started with
    ///   (or its maxmem), 503 when its engine has no balloon device, 404 no such domain.
    public func memSet(_ dom: String, mib: Int) throws(XendError) -> DomainInfo {
        let (r, p, e) = try live(dom)
        guard var cfg = try? DomainConfiguration(sxp: SXP.parse(r.config)) else {
            throw XendError(.internalError, "domain \(r.name): stored configuration does not parse")
        }
        let booted = r.bootMemory ?? max(cfg.memory, cfg.maxmem ?? 0)
        let ceiling = min(booted, cfg.maxmem ?? booted)
        guard mib >= 16 else { throw XendError(.badRequest, "Invalid memory target \(mib) MiB for domain \(r.name): at least 16 MiB") }
        guard mib <= ceiling else {
            throw XendError(.badRequest, "Invalid memory target \(mib) MiB for domain \(r.name): its maximum is \(ceiling) MiB"
                            + (ceiling == booted ? " (the RAM it was started with; raise maxmem and restart it for more)" : " (maxmem; see xm mem-max)"))
        }
        do { try e.setMemoryTarget(p, mib: mib) } catch {
            throw XendError(e is QemuEngineDriver ? .internalError : .unavailable, "Cannot set the memory of domain \(r.name): \(error)")
        }
        cfg.maxmem = cfg.maxmem ?? booted
        cfg.memory = mib
        updateStoredConfig(r.domid, cfg)
        try? xenstore?.write("/local/domain/\(r.domid)/memory/target", String(mib * 1024))
        dmesg("Domain \(r.name) (\(r.domid)): memory target set to \(mib) MiB")
        return try get(String(r.domid), long: false)
    }

    /// `xm mem-max`: sets a domain's maximum memory to `mib` MiB: the ceiling of
    /// `mem-set` now (never above the RAM the engine was started with) and the RAM the
    /// next start gives it.
    /// - Throws: `XendError` 400 below the current target, 404 no such domain.
    public func memMax(_ dom: String, mib: Int) throws(XendError) -> DomainInfo {
        guard let r = find(dom) else { throw XendError.noDomain(dom) }
        guard var cfg = try? DomainConfiguration(sxp: SXP.parse(r.config)) else {
            throw XendError(.internalError, "domain \(r.name): stored configuration does not parse")
        }
        guard mib >= cfg.memory else {
            throw XendError(.badRequest, "Invalid maximum memory \(mib) MiB for domain \(r.name): below its current target of \(cfg.memory) MiB")
        }
        if r.process != nil && r.bootMemory == nil { setBootMemory(r.domid, max(cfg.memory, cfg.maxmem ?? 0)) }
        cfg.maxmem = mib
        updateStoredConfig(r.domid, cfg)
        try? xenstore?.write("/local/domain/\(r.domid)/memory/static-max", String(mib * 1024))
        dmesg("Domain \(r.name) (\(r.domid)): maximum memory set to \(mib) MiB" + (mib > (r.bootMemory ?? mib) ? " (above the \(r.bootMemory!) MiB it runs with: takes effect when it next starts)" : ""))
        return try get(String(r.domid), long: false)
    }

    func updateStoredConfig(_ domid: Int, _ cfg: DomainConfiguration) {
        lock.lock(); defer { lock.unlock() }
        guard var r = records[domid] else { return }
        r.config = cfg.toSXP().description
        records[domid] = r
        persist(r)
    }

    func setBootMemory(_ domid: Int, _ mib: Int) {
        lock.lock(); defer { lock.unlock() }
        guard var r = records[domid] else { return }
        r.bootMemory = mib
        records[domid] = r
        persist(r)
    }

    /// `mode`: poweroff or halt (ACPI power button), reboot.
    public func shutdown(_ dom: String, mode: String) throws(XendError) -> DomainInfo {
        guard ["poweroff", "halt", "reboot"].contains(mode) else { throw XendError(.badRequest, "Invalid shutdown mode: \(mode)") }
        let (r, p, e) = try live(dom)
        // Xen's xm reboot asks the guest to shut down with reason reboot, then xend applies
        // on_reboot. Here the guest gets the ACPI power button, and its poweroff counts as
        // a reboot (a hard reset would cut off what the guest had not written yet).
        lock.lock()
        if mode == "reboot" { rebootRequested.insert(r.domid) } else { rebootRequested.remove(r.domid) }
        lock.unlock()
        try engineCall { try e.requestShutdown(p) }
        return info(r, long: false)
    }

    /// Stops a domain at once and forgets it (also removes a preserved one).
    public func destroy(_ dom: String) throws(XendError) -> DomainInfo {
        if dom == "0" || dom == "Domain-0" { throw XendError(.badRequest, "Cannot destroy privileged domain 0") }
        guard let r = find(dom) else { throw .noDomain(dom) }
        let i = info(r, long: false)
        if let p = r.process, let e = engines[r.engine] {
            lock.lock()
            // Mark as destroyed first so the watcher does not apply on_* actions.
            var rr = r; rr.process = nil; records[r.domid] = rr
            lock.unlock()
            try? e.destroy(p)
            let deadline = Date().addingTimeInterval(5)
            while ProcessInfo2.startTicks(p.pid) == p.startTicks && Date() < deadline { usleep(10_000) }
            if ProcessInfo2.startTicks(p.pid) == p.startTicks { kill(p.pid, SIGKILL) }
            unlink(p.controlPath); unlink(p.statusFile)
            releaseDevices(r.domid)
            dmesg("Domain \(r.name) (\(r.domid)) destroyed")
        }
        cleanup(r.domid)
        return i
    }

    // MARK: network devices

    /// A vif as `xm network-list` shows it; `state` from the backend's xenstore node.
    func vifInfo(_ domid: Int, _ v: VifRecord) -> VifInfo {
        let be = XenStoreLayout.backend(type: "vif", domid: UInt32(domid), devid: v.devid)
        let st = (try? xenstore?.readIfPresent(be + "/state")).flatMap { $0 }.flatMap { Int($0) }
            ?? (v.broken ? XenbusState.closed.rawValue : XenbusState.connected.rawValue)
        return VifInfo(idx: v.devid, backendId: 0, mac: v.mac, handle: v.devid, state: st, bePath: be, vifname: v.vifname,
                       bridge: v.bridge, ip: v.ip, script: v.script, rate: v.rate, socket: v.socket,
                       pid: v.pid > 0 ? Int(v.pid) : nil, broken: v.broken)
    }

    /// `xm network-list`: the vifs of a running domain, by devid.
    /// - Throws: `XendError` no such domain (404), not running (409).
    public func networkList(_ dom: String) throws(XendError) -> [VifInfo] {
        let (r, _, _) = try live(dom)
        let recs = nets?.records(r.domid) ?? r.vifs ?? []
        return recs.map { vifInfo(r.domid, $0) }
    }

    /// `xm network-attach DOM key=value...`: a new vif on a running domain. The spec is
    /// checked as at create (MAC, bridge, names); then the engine must be able to hot-plug
    /// a NIC, else the request fails before anything is made.
    /// - Parameter spec: the vif spec (`mac=..,bridge=..,script=..,ip=..,vifname=..,rate=..`).
    /// - Throws: `XendError`: bad spec (400), engine without hot-plug (503), script failure (400).
    public func networkAttach(_ dom: String, spec: String) throws(XendError) -> VifInfo {
        let (r, p, e) = try live(dom)
        let v: VifSpec
        do { v = try VifSpec(parsing: spec) } catch { throw XendError(.badRequest, "bad vif spec: \(error.message)") }
        guard let nets else { throw XendError(.unavailable, "network interfaces are not available without netback") }
        guard let hot = e as? any NetHotplugDriver else {
            throw XendError(.unavailable, "Domain \(r.name) runs on the \(e.name) engine, which cannot hot-plug network devices; add the vif to its configuration and create the domain again.")
        }
        let rec = try nets.attach(domid: r.domid, name: r.name, spec: v, inUse: vifsInUse(),
                                  socketOwner: (engines[r.engine] as? QemuEngineDriver)?.runAsIDs)
        do { try hot.attachNet(p, devid: rec.devid, socket: rec.socket, mac: rec.mac) } catch {
            try? nets.detach(domid: r.domid, devid: rec.devid)
            throw XendError(.internalError, "Device \(rec.devid) (vif) could not be connected. \(error)")
        }
        dmesg("Domain \(r.name) (\(r.domid)): vif \(rec.devid) (\(rec.vifname)) attached")
        return vifInfo(r.domid, rec)
    }

    /// `xm network-detach DOM DEVID`.
    /// - Throws: `XendError`: no such vif (400), engine without hot-unplug (503).
    public func networkDetach(_ dom: String, devid: Int) throws(XendError) -> [VifInfo] {
        let (r, p, e) = try live(dom)
        guard let nets, nets.records(r.domid).contains(where: { $0.devid == devid }) else {
            throw XendError(.badRequest, "Device \(devid) not connected")
        }
        guard let hot = e as? any NetHotplugDriver else {
            throw XendError(.unavailable, "Domain \(r.name) runs on the \(e.name) engine, which cannot hot-unplug network devices; its vifs go when the domain ends.")
        }
        do { try hot.detachNet(p, devid: devid) } catch { throw XendError(.internalError, "\(error)") }
        try nets.detach(domid: r.domid, devid: devid)
        dmesg("Domain \(r.name) (\(r.domid)): vif \(devid) detached")
        return nets.records(r.domid).map { vifInfo(r.domid, $0) }
    }

    /// `xm info`'s pairs (Xen 3.0 XendNode.info order).
    public func hostInfo() -> HostInfo {
        var u = utsname(); uname(&u)
        func s<T>(_ t: T) -> String { withUnsafeBytes(of: t) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) } }
        var total = 0, free = 0
        if let m = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) {
            for l in m.split(separator: "\n") {
                let f = l.split(separator: " ")
                if l.hasPrefix("MemTotal:") { total = (Int(f[1]) ?? 0) / 1024 }
                if l.hasPrefix("MemAvailable:") { free = (Int(f[1]) ?? 0) / 1024 }
            }
        }
        var mhz = "0"
        if let c = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
           let l = c.split(separator: "\n").first(where: { $0.hasPrefix("cpu MHz") }) {
            mhz = String(Int(Double(l.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) ?? 0))
        }
        let n = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let kvm = FileManager.default.fileExists(atPath: "/sys/module/kvm_intel") ? "kvm_intel"
            : FileManager.default.fileExists(atPath: "/sys/module/kvm_amd") ? "kvm_amd"
            : FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") ? "kvm_pvm" : "none"
        return HostInfo(entries: [
            .init("host", s(u.nodename)), .init("release", s(u.release)), .init("version", s(u.version)),
            .init("machine", s(u.machine)), .init("nr_cpus", String(n)), .init("nr_nodes", "1"),
            .init("cpu_mhz", mhz), .init("total_memory", String(total)), .init("free_memory", String(free)),
            .init("xen_major", "3"), .init("xen_minor", "0"), .init("xen_extra", "-xenith"),
            .init("xen_caps", "hvm-3.0-x86_64 (" + kvm + ")"), .init("xen_pagesize", "4096"),
            .init("domain_engine", xendConfig.domainEngine.rawValue),
            .init("xend_config_format", "3"),
        ])
    }
}
