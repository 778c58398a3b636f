// Passed-through PCI devices (issue 18): xend takes each function from its host driver onto
// vfio-pci (PciBack.PciHiding, through sysfs), starts the domain's sandboxed `pciback`
// (PciBackends.swift), which resets them through VFIO on the container and group descriptors
// xend opened and then watches them for the domain's life, makes each IOMMU group node
// (`/dev/vfio/N`) the engine's for as long as the domain runs, writes the `backend/pci`
// entries, and undoes all of it when the domain ends (pciback resets again, node back to
// root, the original driver bound again). What was taken, and the pciback's pid, are kept in
// `var/lib/xend/pci.json`, so an xend restarted meanwhile re-adopts the pciback and still
// gives every device back to the right driver.
import DomainConfig
import Foundation
import Logging
import PciBack
import Spawn
import XenStore
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

/// The PCI functions xend holds for domains and for `pci-hide`.
public final class PciSupervisor: @unchecked Sendable {
    /// One function xend took from the host.
    struct Entry: Codable, Equatable {
        /// `DDDD:BB:SS.F`.
        var address: String
        /// The driver to give it back to (nil: it was unbound).
        var originalDriver: String?
        var iommuGroup: Int
        /// The domain it is assigned to, nil while only hidden.
        var domid: Int?
        /// Taken for `pci-hide` at xend start: stays on vfio-pci when its domain ends.
        var configured: Bool
        /// Why pciback reported it unfit for the guest (unbound behind xend's back, removed,
        /// not answering), nil while it is fine. Cleared when its domain ends.
        var broken: String? = nil
    }

    /// What `pci.json` holds (an older xend wrote the bare entry list).
    struct State: Codable {
        var entries: [Entry]
        var backends: [PciBackRecord]
    }

    let sysfs: PciSysfs
    /// `/sys` (tests: `XENITH_SYSFS_ROOT`): pciback is handed descriptors under it.
    let sysfsRoot: String
    /// Where `vfio/vfio` and `vfio/N` are (`/dev`).
    let devRoot: String
    let binary: String
    let manifest: String?
    let logPath: String
    let statePath: String
    let xenstore: XenStoreClient?
    let log: Logger
    let hide: [PciAddress]
    let hideOnCreate: Bool
    /// Paths, sandbox arguments and restart budget shared with the other back-ends.
    let backHost: BackendHost
    let lock = NSRecursiveLock()
    var entries: [String: Entry] = [:]
    /// The running pciback of each domain with PCI functions.
    var backends: [Int: PciBackend] = [:]
    /// pciback records read from `pci.json` at start, for re-adoption.
    var records: [Int: PciBackRecord] = [:]

    /// - Parameters:
    ///   - sysfsRoot: `/sys`; `XENITH_SYSFS_ROOT` (tests) replaces it.
    ///   - devRoot: `/dev`; `XENITH_DEV_ROOT` (tests) replaces it.
    public init(paths: XenithPaths, binary: String, manifest: String?, xenstore: XenStoreClient?, config: XendConfig,
                logger: Logger, sysfsRoot: String? = nil, devRoot: String? = nil) {
        let env = ProcessInfo.processInfo.environment
        self.sysfsRoot = sysfsRoot ?? env["XENITH_SYSFS_ROOT"] ?? "/sys"
        sysfs = PciSysfs(HostSysfs(root: self.sysfsRoot))
        backHost = BackendHost(paths: paths, binary: binary, manifest: manifest, xenstore: xenstore, log: logger)
        self.devRoot = devRoot ?? env["XENITH_DEV_ROOT"] ?? "/dev"
        self.binary = binary
        self.manifest = manifest
        self.logPath = paths.logDir + "/pciback.log"
        self.statePath = paths.xendLib + "/pci.json"
        self.xenstore = xenstore
        self.log = logger
        self.hide = config.pciHide
        self.hideOnCreate = config.pciHideOnCreate
        if let d = try? Data(contentsOf: URL(fileURLWithPath: statePath)) {
            if let st = try? JSONDecoder().decode(State.self, from: d) {
                for e in st.entries { entries[e.address] = e }
                for r in st.backends { records[r.domid] = r }
            } else if let list = try? JSONDecoder().decode([Entry].self, from: d) {
                for e in list { entries[e.address] = e }
            }
        }
    }

    /// Writes `pci.json` (under the lock).
    func persist() {
        let st = State(entries: entries.values.sorted { $0.address < $1.address },
                       backends: backends.values.map(\.record).sorted { $0.domid < $1.domid })
        guard let d = try? JSONEncoder().encode(st) else { return }
        XenithPaths.makeDirectories((statePath as NSString).deletingLastPathComponent)
        let tmp = statePath + ".new"
        if FileManager.default.createFile(atPath: tmp, contents: d) { rename(tmp, statePath) }
    }

    func persistLocked() { lock.lock(); persist(); lock.unlock() }

    func policy(for domid: Int) -> PciHostPolicy {
        var assigned: [PciAddress: Int] = [:]
        for e in entries.values { if let d = e.domid, let a = try? PciAddress(parsing: e.address) { assigned[a] = d } }
        return PciHostPolicy(hidden: Set(hide), hideOnCreate: hideOnCreate, assigned: assigned)
    }

    /// `pci-hide`: takes each listed function onto vfio-pci at xend start. A function that
    /// cannot be taken is logged, naming it, and left where it is.
    public func hideConfigured() {
        lock.lock(); defer { lock.unlock() }
        for a in hide where entries[a.description] == nil {
            do throws(PciRefusal) {
                let devs = try PciHiding.check([a], domid: -1, sysfs: sysfs,
                                               policy: PciHostPolicy(hidden: Set(hide), hideOnCreate: true))
                for t in try PciHiding.take(devs, sysfs: sysfs) {
                    entries[a.description] = Entry(address: a.description, originalDriver: t.originalDriver,
                                                   iommuGroup: t.iommuGroup, domid: nil, configured: true)
                    log.info("pci-hide: \(a) taken from \(t.originalDriver ?? "no driver") onto vfio-pci")
                }
            } catch { log.error("pci-hide: \(error.message)") }
        }
        persist()
    }

    /// Gives `domid` its PCI functions: checks all of them first, takes them onto vfio-pci,
    /// resets each (pciback), hands each group node to `owner` (the engine's uid and gid),
    /// writes `backend/pci/DOMID/0`. Any failure undoes every step before it throws.
    /// - Throws: `XendError` bad request naming the device for a refusal, 500 otherwise.
    func assign(domid: Int, specs: [PciSpec], owner: (uid: uid_t, gid: gid_t)?) throws(XendError) {
        lock.lock(); defer { lock.unlock() }
        let addrs = specs.map(\.address)
        let devs: [PciHostDevice]
        do { devs = try PciHiding.check(addrs, domid: domid, sysfs: sysfs, policy: policy(for: domid)) }
        catch { throw XendError(.badRequest, "pci: \(error.message)") }
        let undo = Rollback()
        defer { undo.finish() }
        let taken: [PciTaken]
        do { taken = try PciHiding.take(devs, sysfs: sysfs) } catch { throw XendError(.badRequest, "pci: \(error.message)") }
        // Undone last (steps run in reverse): pci.json then holds the entries as restored.
        undo.add { [self] in persist() }
        for t in taken {
            let key = t.address.description
            let before = entries[key]
            entries[key] = Entry(address: key, originalDriver: before?.originalDriver ?? t.originalDriver, iommuGroup: t.iommuGroup,
                                 domid: domid, configured: before?.configured ?? false)
            undo.add { [self] in
                entries[key] = before
                if before == nil { giveBack(t.address, t.originalDriver) }
            }
        }
        persist()
        // The domain's pciback: it resets each group for assignment, then stays up.
        let b = PciBackend(domid: domid, devices: taken.map(\.address), socket: backHost.socketPath("pciback", domid: domid, device: "pci"),
                           logPath: logPath, lock: lock, budget: backHost.restartBudget())
        undo.add { [self] in stopBackend(b) }
        do { try spawnBackend(b, adopt: false) } catch { throw XendError(.internalError, "pci: cannot start pciback \(binary): \(error)") }
        // Recorded at once: an xend that dies before the create ends finds this pciback in
        // pci.json and stops it when it undoes the create.
        backends[domid] = b
        persist()
        undo.add { [self] in backends[domid] = nil }
        do { try b.proc.waitReady(timeout: .seconds(20)) } catch {
            throw XendError(error.refused ? .badRequest : .internalError, "pci: pciback: \(error.message)")
        }
        let groups = Dictionary(grouping: taken, by: \.iommuGroup)
        for (g, members) in groups.sorted(by: { $0.key < $1.key }) {
            do { try backendReset(b, group: g, members.map(\.address), .assign) }
            catch let e as PciRefusal { throw XendError(.badRequest, "pci: \(e.message)") }
            catch { throw XendError(.internalError, "pci: \(error)") }
            if let o = owner {
                let node = devRoot + "/vfio/\(g)"
                guard chown(node, o.uid, o.gid) == 0 else {
                    throw XendError(.internalError, "pci: chown \(node) to \(o.uid):\(o.gid): \(String(cString: strerror(errno)))")
                }
                undo.add { chown(node, 0, 0) }
            }
        }
        if let xs = xenstore {
            let dev = XenStoreDevice.pci(domid: UInt32(domid), devices: specs.map { ($0.address.description, $0.guestSlot) })
            do { try xs.writeDevice(dev); try xs.setState(dev.backendPath, .connected) }
            catch { throw XendError(.internalError, "pci: xenstore: \(error)") }
            undo.add { try? xs.removeDevice(dev) }
        }
        undo.commit()
        persist()
        superviseBackend(b)
        log.info("domain \(domid): PCI \(addrs.map(\.description).joined(separator: " ")) assigned, pciback pid \(b.proc.pid)")
    }

    /// When `domid` has ended (its engine gone): waits, outside the lock and for at most
    /// `groupWait` seconds, until its IOMMU groups are let go (a QEMU may still be closing
    /// them: one that is killed unpins all guest RAM first, which under an emulated IOMMU
    /// outlasts xend's wait for the process); then has its pciback reset its functions (a
    /// one-shot pciback, the domain's pciback stopped first, when that one does not answer),
    /// stops that pciback, gives the group nodes back to root, and gives each function back
    /// to its original driver (those of `pci-hide` stay on vfio-pci, assignable). Failures are
    /// logged, naming the device; the rest goes on.
    func release(domid: Int, groupWait: Double = PciSupervisor.releaseGroupWait) {
        let groups: Set<Int> = { lock.lock(); defer { lock.unlock() }
                                 return Set(entries.values.filter { $0.domid == domid }.map(\.iommuGroup)) }()
        for g in groups.sorted() { waitUntilLetGo(group: g, seconds: groupWait, domid: domid) }
        lock.lock(); defer { lock.unlock() }
        var b = backends.removeValue(forKey: domid)
        if b == nil, let r = records[domid], r.pid > 0, ProcessInfo2.startTicks(r.pid) == r.startTicks {
            kill(r.pid, SIGKILL)   // an earlier xend's pciback of a domain that ended meanwhile
        }
        records[domid] = nil
        let mine = entries.values.filter { $0.domid == domid }
        guard !mine.isEmpty else {
            if let b { stopBackend(b) }
            persist(); return
        }
        for (g, members) in Dictionary(grouping: mine, by: \.iommuGroup) {
            let addrs = members.compactMap { try? PciAddress(parsing: $0.address) }
            var done = false
            if let pb = b, pb.proc.pid > 0, !pb.gaveUp {
                do { try backendReset(pb, group: g, addrs, .release); done = true }
                catch let e as PciRefusal { log.error("domain \(domid): \(e.message)"); done = true }
                catch {
                    log.error("domain \(domid): pciback did not answer (\(error)); resetting with a one-shot pciback")
                    // It may hold the group it was handed: stopped first, so the one-shot can open it.
                    stopBackend(pb)
                    b = nil
                }
            }
            if !done {
                do { try reset(group: g, addrs) } catch { log.error("domain \(domid): \(error.message)") }
            }
            chown(devRoot + "/vfio/\(g)", 0, 0)
        }
        if let b { stopBackend(b) }
        for e in mine {
            if e.configured {
                entries[e.address]?.domid = nil
                entries[e.address]?.broken = nil
            } else {
                if let a = try? PciAddress(parsing: e.address) { giveBack(a, e.originalDriver) }
                entries[e.address] = nil
            }
        }
        persist()
        if let xs = xenstore {
            try? xs.rm(XenStoreLayout.backend(type: "pci", domid: UInt32(domid), devid: 0))
        }
        log.info("domain \(domid): PCI \(mine.map(\.address).sorted().joined(separator: " ")) released")
    }

    /// `pci-hide` devices when xend stops are left on vfio-pci (as Linux's pciback.hide).
    func giveBack(_ a: PciAddress, _ driver: String?) {
        do { try sysfs.giveBack(a, to: driver); log.info("PCI \(a) given back to \(driver ?? "no driver")") }
        catch { log.error("PCI \(a): giving it back to \(driver ?? "no driver") failed: \(error.message)") }
    }

    /// Why pciback reported function `bdf` broken, nil while it is fine.
    func brokenReason(_ bdf: String) -> String? {
        lock.lock(); defer { lock.unlock() }
        return entries[bdf]?.broken
    }

    /// The pid of `domid`'s pciback, nil when none runs (tests, diagnostics).
    public func backendPid(domid: Int) -> Int32? {
        lock.lock(); defer { lock.unlock() }
        return backends[domid].map(\.proc.pid).flatMap { $0 > 0 ? $0 : nil }
    }

    /// The functions of `domid` xend holds.
    func assigned(domid: Int) -> [String] {
        lock.lock(); defer { lock.unlock() }
        return entries.values.filter { $0.domid == domid }.map(\.address).sorted()
    }

    /// `xm pci-list-assignable-devices`: functions bound to vfio-pci that no domain has.
    func assignable() -> [String] {
        lock.lock(); defer { lock.unlock() }
        let busy = Set(entries.values.compactMap { $0.domid == nil ? nil : $0.address })
        return sysfs.fs.list("bus/pci/devices").filter { bdf in
            !busy.contains(bdf) && sysfs.fs.linkName("bus/pci/devices/\(bdf)/driver") == PciSysfs.vfioDriver
        }
    }

    /// How long a release waits for a domain's IOMMU groups to be let go (seconds).
    static let releaseGroupWait = 30.0

    /// Waits up to `seconds` while IOMMU group `g` is busy (EBUSY: a VFIO group has one
    /// opener at a time, here the exiting engine), probing with an open that is closed at
    /// once. Logs how long it waited when it had to.
    func waitUntilLetGo(group g: Int, seconds: Double, domid: Int) {
        let node = devRoot + "/vfio/\(g)"
        var waited = 0.0
        while true {
            let fd = open(node, O_RDWR | O_CLOEXEC)
            if fd >= 0 { close(fd); break }
            guard errno == EBUSY, waited < seconds else { break }
            usleep(100_000); waited += 0.1
        }
        if waited > 0 { log.info("domain \(domid): waited \(String(format: "%.1f", waited)) s for IOMMU group \(g) to be let go") }
    }

    /// Runs pciback once on group `g` to reset `members`, on descriptors opened here: the
    /// fallback of `release` when the domain's pciback does not answer.
    /// - Throws: `PciRefusal` naming the devices and pciback's reason.
    func reset(group g: Int, _ members: [PciAddress]) throws(PciRefusal) {
        let names = members.map(\.description).joined(separator: " ")
        let (container, group) = try openGroup(g, members)
        defer { close(container); close(group) }
        let ready: ReadinessChannel
        do { ready = try ReadinessChannel.make() } catch { throw PciRefusal("PCI \(names): \(error.message)") }
        var argv = [binary] + members.flatMap { ["--reset", $0.description] } + ["--ready-fd", "5"]
        if let m = manifest { argv += ["--manifest", m] } else { argv.append("--no-sandbox") }
        let pid: pid_t
        do { pid = try spawnDetached(argv, log: logPath, fds: [(container, 3), (group, 4), ready.handOver(at: 5)]) }
        catch { throw PciRefusal("PCI \(names): cannot start pciback \(binary): \(error)") }
        let r = ready.wait(pid: pid, timeout: .seconds(20))
        if case .timedOut = r { Glibc.kill(pid, SIGKILL) }
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        guard case .ready = r else {
            if case .failed(let why) = r { throw PciRefusal(why) }
            throw PciRefusal("PCI \(names): pciback \(r)")
        }
    }
}
