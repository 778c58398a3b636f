// Virtual block devices of core-engine domains: one sandboxed blkback per disk, served to the
// core over vhost-user (DESIGN.md "Processes", "Supervision").
//
// xend checks and opens the image itself (exists, not a directory, not in use read-write by
// another domain unless `w!`, a `phy:` device not mounted read-write here; the flock on
// xend's open file description is the lock), binds the listening socket
// `$ROOT/run/xenith/blkback-DOMID-VDEV.sock`, and hands both to blkback at the numbers
// manifests/blkback.manifest names (listener 3, image 4). xend keeps both descriptors while
// the domain runs, so a restarted blkback gets the very same socket (the core reconnects by
// itself, the back-end replays in-flight requests) and the lock never lapses. After an xend
// restart the running blkbacks are re-adopted (pid + start time from the registry); if one
// of them dies later, xend opens the image and binds the socket again.
//
// A qcow2 disk (`tap:qcow2:`, `format=qcow2`) is served the same way (`--format qcow2`);
// its backing files, which blkback's sandbox cannot open, are opened here too (read-only,
// shared lock, the whole chain: loops, missing files and chains deeper than 16 refused by
// name) and handed over at 6, 7, ... (BlockBackend/Qcow2Chain.swift).
import enum BlockBackend.Qcow2Chain
import struct BlockBackend.Qcow2Header
import DomainConfig
import Foundation
import Logging
import Sandbox
import XendAPI
import XenStore
#if canImport(Glibc)
import Glibc
#endif

/// One vbd's back-end as the registry stores it (`DomainRecord.disks`).
public struct DiskRecord: Codable, Sendable, Equatable {
    /// Guest device name (`xvda`) and Xen's `uname` (`file:/img`, `phy:/dev/x`).
    public var vdev: String
    public var uname: String
    /// `r`, `w` or `w!`.
    public var mode: String
    /// The vhost-user socket the core connects to.
    public var socket: String
    /// The blkback process (its sandbox reaper) and its start time in clock ticks; pid 0
    /// when none runs.
    public var pid: Int32
    public var startTicks: UInt64
    /// blkback's stderr log.
    public var log: String
    /// Set when blkback kept dying and xend gave up on it (the domain runs on without it).
    public var broken: Bool
    /// Owner (uid, gid) given to the socket file: an unprivileged QEMU (`-runas`) reconnects
    /// to it after a blkback restart. Nil: root's, mode 0600.
    public var socketOwner: SocketOwner? = nil
}

/// Starts, supervises and stops blkback processes.
public final class BlockSupervisor: @unchecked Sendable {

    /// One vbd: its disk, the descriptors xend holds for it, its blkback process.
    final class Backend: @unchecked Sendable {
        let domid: Int
        let domainName: String
        let spec: DiskSpec
        let socket: String
        let numQueues: Int
        var imageFD: Int32 = -1
        var listenFD: Int32 = -1
        /// A qcow2 disk's backing files, nearest first (read-only, share-locked).
        var backingFDs: [Int32] = []
        var broken = false
        /// The image is open but not locked yet: the target of a live migration on a host
        /// that shares the file with the source, until switch-over (DiskLockHandover.swift).
        var lockDeferred = false
        /// Owner of the socket file (the unprivileged QEMU user), nil for root.
        var socketOwner: (uid: uid_t, gid: gid_t)?
        let proc: BackendProcess
        init(domid: Int, domainName: String, spec: DiskSpec, socket: String, logPath: String, numQueues: Int,
             socketOwner: (uid: uid_t, gid: gid_t)? = nil, lock: NSRecursiveLock, budget: RestartBudget) {
            self.domid = domid; self.domainName = domainName; self.spec = spec; self.socket = socket
            self.numQueues = numQueues; self.socketOwner = socketOwner
            proc = BackendProcess(service: "blkback", device: "vbd", label: "domain \(domainName) (\(domid)) vbd \(spec.vdev)",
                                  logPath: logPath, lock: lock, budget: budget)
        }
        var logPath: String { proc.logPath }
        var label: String { proc.label }
        var mode: String { spec.access.rawValue }
        var record: DiskRecord {
            DiskRecord(vdev: spec.vdev, uname: spec.uname, mode: mode, socket: socket, pid: proc.pid, startTicks: proc.startTicks,
                       log: logPath, broken: broken, socketOwner: socketOwner.map(SocketOwner.init))
        }
    }

    let host: BackendHost
    var paths: XenithPaths { host.paths }
    var xenstore: XenStoreClient? { host.xenstore }
    var log: Logger { host.log }
    private let lock = NSRecursiveLock()
    private var backends: [Int: [Backend]] = [:]
    /// Guest device names being attached, by domid (reserved until made or refused).
    private var attaching: [Int: Set<String>] = [:]
    /// Called (without locks held) when a domain's disk records change: persist them.
    var onChange: (@Sendable (Int, [DiskRecord]) -> Void)?

    /// - Parameters:
    ///   - binary: the blkback executable (beside xend's).
    ///   - manifest: `blkback.manifest`; nil runs blkback with `--no-sandbox` (logged).
    ///   - defaultCache: xend-config's `blkback-cache`, for disks that do not choose.
    ///   - aio: xend-config's `blkback-aio`; with `io_uring`, raw disks are served through
    ///     blkback's io_uring under `blkback-io_uring.manifest` (beside `manifest`).
    public init(paths: XenithPaths, binary: String, manifest: String?, xenstore: XenStoreClient?, logger: Logger,
                defaultCache: DiskSpec.CacheMode = .writeback, aio: BlkbackAIO = .threads) {
        host = BackendHost(paths: paths, binary: binary, manifest: manifest, xenstore: xenstore, log: logger)
        self.defaultCache = defaultCache
        self.aio = aio
    }

    /// xend-config's `blkback-aio`.
    let aio: BlkbackAIO

    /// xend-config's `blkback-cache`: the cache mode of a disk that does not choose one.
    let defaultCache: DiskSpec.CacheMode

    /// The cache mode disk `d` is served with: a qcow2 image always through the page cache
    /// (its metadata I/O is not aligned for O_DIRECT; an explicit `cache=direct` on one is
    /// refused when it is opened).
    func cacheMode(_ d: DiskSpec) -> DiskSpec.CacheMode { d.format == "qcow2" ? .writeback : (d.cache ?? defaultCache) }

    /// The socket path of domain `domid`'s disk `vdev`.
    public func socketPath(domid: Int, vdev: String) -> String { host.socketPath("blkback", domid: domid, device: vdev) }

    /// A domain's vbds (DiskLockHandover.swift).
    func backendList(_ domid: Int) -> [Backend] {
        lock.lock(); defer { lock.unlock() }
        return backends[domid] ?? []
    }

    /// The records of a domain's disks (for the registry).
    func records(_ domid: Int) -> [DiskRecord] {
        lock.lock(); defer { lock.unlock() }
        return (backends[domid] ?? []).map(\.record)
    }

    func changed(_ domid: Int) {
        let r = records(domid)
        onChange?(domid, r)
    }

    // MARK: start

    /// open(2)'s O_DIRECT (hidden from Swift's Glibc without _GNU_SOURCE).
    #if arch(x86_64)
    static let openDirect: Int32 = 0o40000
    #else
    static let openDirect: Int32 = 0o200000
    #endif

    /// Why a disk cannot be connected, in Xen's words, naming the disk.
    static func refuse(_ d: DiskSpec, _ why: String) -> XendError {
        XendError(.badRequest, "Device \(d.vdev) (vbd) could not be connected. \(why) (disk '\(d.uname),\(d.dev),\(d.access.rawValue)')")
    }

    /// Checks every disk of a new domain, opens the images, binds the sockets and starts one
    /// blkback per disk; writes the vbd entries (backend state Connected).
    /// - Parameters:
    ///   - inUse: the disks of the other live domains, by domain name.
    ///   - vcpus: queues per disk (1...64; QEMU's vhost-user-blk-pci asks for 1).
    ///   - socketOwner: uid and gid the socket files are given (an unprivileged QEMU must
    ///     reconnect to them); nil keeps them root's.
    /// - Returns: the vhost-user sockets in disk order (empty CD-ROMs left out), for the
    ///   core's `--vhost-user-blk` or QEMU's `vhost-user-blk-pci`.
    /// - Throws: `XendError` (400) naming the disk spec when a disk is refused, 500 when a
    ///   blkback does not come up; nothing is left behind then.
    public func start(domid: Int, name: String, disks: [DiskSpec], vcpus: Int,
                      inUse: [(domain: String, disk: DiskSpec)],
                      socketOwner: (uid: uid_t, gid: gid_t)? = nil, deferLocks: Bool = false) throws(XendError) -> [String] {
        var started: [Backend] = []
        do throws(XendError) {
            for d in disks {
                guard let path = d.path, d.deviceType == .disk || d.target != nil else { continue }   // empty CD-ROM
                if started.contains(where: { $0.spec.vdev == d.vdev }) { throw Self.refuse(d, "Device name \(d.vdev) is used twice.") }
                try Self.check(d, path: path, inUse: inUse)
                let b = Backend(domid: domid, domainName: name, spec: d, socket: socketPath(domid: domid, vdev: d.vdev),
                                logPath: paths.logDir + "/blkback-\(domid)-\(d.vdev).log", numQueues: max(1, min(vcpus, 64)),
                                socketOwner: socketOwner, lock: lock, budget: host.restartBudget())
                b.lockDeferred = deferLocks
                try open(b)
                started.append(b)
                do { try spawn(b) } catch { throw XendError(.internalError, "Device \(d.vdev) (vbd) could not be connected. \(error)") }
                try waitReady(b)
                writeXenstore(b)
                FaultInjection.crashPoint("vbd-\(d.vdev)")
            }
        } catch {
            for b in started { halt(b) }
            throw error
        }
        lock.lock(); backends[domid] = started; lock.unlock()
        for b in started { watch(b) }
        return started.map(\.socket)
    }

    /// Image formats blkback serves.
    static let servedFormats: Set<String> = ["raw", "qcow2"]

    /// The checks of a disk against the other domains' disks: a raw or qcow2 image, not
    /// written by another domain (nor written here while another domain has it) unless `w!`.
    /// - Throws: `XendError` (400) naming the disk.
    static func check(_ d: DiskSpec, path: String, inUse: [(domain: String, disk: DiskSpec)]) throws(XendError) {
        if !servedFormats.contains(d.format) { throw Self.refuse(d, "Image format \(d.format) is not supported (raw and qcow2 images only).") }
        if d.format == "qcow2" && d.access == .readWriteShared {
            throw Self.refuse(d, "Mode w! cannot share a qcow2 image: two back-ends allocating clusters in it would corrupt it; use a raw image, or an overlay of its own for each domain.")
        }
        let real = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        guard d.access != .readWriteShared else { return }
        for (other, od) in inUse {
            guard let op = od.path, URL(fileURLWithPath: op).resolvingSymlinksInPath().path == real else { continue }
            if od.writable || d.writable {
                throw Self.refuse(d, "\(path) is already in use by domain \(other) (\(od.writable ? "read-write" : "read-only")); use mode w! to share it read-write.")
            }
        }
    }

    /// Adds one disk to a running domain (`xm block-attach`): the checks of ``start``,
    /// image lock, socket, a blkback (waited for), the vbd's xenstore entries.
    /// - Parameters:
    ///   - inUse: the disks of the running domains, this one's included (its own disks
    ///     count: the same image twice read-write in one guest is refused too).
    ///   - queues: request queues (1...64).
    /// - Returns: the new disk's record (its socket for the engine).
    /// - Throws: `XendError` 400 naming the disk (refused), 500 (blkback did not come up);
    ///   nothing is left behind then.
    public func attach(domid: Int, name: String, disk d: DiskSpec, queues: Int, inUse: [(domain: String, disk: DiskSpec)],
                       socketOwner: (uid: uid_t, gid: gid_t)? = nil) throws(XendError) -> DiskRecord {
        guard let path = d.path, d.deviceType == .disk else { throw Self.refuse(d, "Only disks with an image can be attached (no CD-ROMs).") }
        lock.lock()
        if (backends[domid] ?? []).contains(where: { $0.spec.vdev == d.vdev }) || attaching[domid, default: []].contains(d.vdev) {
            lock.unlock()
            throw Self.refuse(d, "Device name \(d.vdev) is already in use by this domain.")
        }
        attaching[domid, default: []].insert(d.vdev)
        lock.unlock()
        defer { lock.lock(); attaching[domid]?.remove(d.vdev); lock.unlock() }
        try Self.check(d, path: path, inUse: inUse)
        let b = Backend(domid: domid, domainName: name, spec: d, socket: socketPath(domid: domid, vdev: d.vdev),
                        logPath: paths.logDir + "/blkback-\(domid)-\(d.vdev).log", numQueues: max(1, min(queues, 64)),
                        socketOwner: socketOwner, lock: lock, budget: host.restartBudget())
        try open(b)
        do throws(XendError) {
            do { try spawn(b) } catch { throw XendError(.internalError, "Device \(d.vdev) (vbd) could not be connected. \(error)") }
            try waitReady(b)
        } catch {
            halt(b)
            throw error
        }
        writeXenstore(b)
        lock.lock(); backends[domid, default: []].append(b); lock.unlock()
        watch(b)
        changed(domid)
        return b.record
    }

    /// Removes disk `vdev` of `domid` (`xm block-detach`, after the guest let it go):
    /// stops its blkback, releases the image lock, removes the vbd's xenstore entries.
    /// - Throws: `XendError` (400) when the domain has no such disk served here.
    public func detach(domid: Int, vdev: String) throws(XendError) {
        lock.lock()
        guard let i = backends[domid]?.firstIndex(where: { $0.spec.vdev == vdev }) else {
            lock.unlock()
            throw XendError(.badRequest, "Device \(vdev) not connected")
        }
        let b = backends[domid]!.remove(at: i)
        lock.unlock()
        halt(b)
        if let xs = xenstore, let dev = device(b) { try? xs.removeDevice(dev) }
        changed(domid)
    }

    /// Opens, checks and locks the image and binds the socket (into `b.imageFD`, `b.listenFD`).
    private func open(_ b: Backend) throws(XendError) {
        let d = b.spec
        guard let path = d.path else { throw Self.refuse(d, "No image given.") }
        var st = stat()
        guard stat(path, &st) == 0 else { throw Self.refuse(d, "\(path): \(String(cString: strerror(errno))).") }
        let kind = st.st_mode & S_IFMT
        if kind == S_IFDIR { throw Self.refuse(d, "\(path) is a directory.") }
        guard kind == S_IFREG || kind == S_IFBLK else { throw Self.refuse(d, "\(path) is neither a regular file nor a block device.") }
        if d.kind == .phy && kind != S_IFBLK { throw Self.refuse(d, "\(path) is not a block device.") }
        if kind == S_IFBLK, d.writable, let m = Self.mountedReadWrite(rdev: st.st_rdev) {
            throw Self.refuse(d, "\(path) is mounted read-write on this host at \(m).")
        }
        if d.format == "qcow2" && d.cache == .direct {
            throw Self.refuse(d, "cache=direct is for raw images: blkback serves qcow2 images through the page cache; use cache=writeback.")
        }
        // Direct I/O is the open file description's O_DIRECT, set here (blkback's sandbox
        // opens nothing); a file system that refuses it says EINVAL now, before anything exists.
        let direct = cacheMode(d) == .direct
        let fd = Glibc.open(path, (d.writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | (direct ? Self.openDirect : 0))
        guard fd >= 0 else {
            if direct && errno == EINVAL {
                throw Self.refuse(d, "\(path): its file system refuses direct I/O (O_DIRECT, cache mode direct); use cache=writeback for this disk or (blkback-cache writeback).")
            }
            throw Self.refuse(d, "\(path): \(String(cString: strerror(errno))).")
        }
        if d.access != .readWriteShared && !b.lockDeferred && flock(fd, (d.writable ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0 {
            close(fd)
            throw Self.refuse(d, "\(path) is already in use by another back-end\(d.writable ? "" : " read-write"); use mode w! to share it read-write.")
        }
        var backing: [Int32] = []
        if d.format == "qcow2" {
            guard Qcow2Header.isQcow2(fd: fd) else { close(fd); throw Self.refuse(d, "\(path) is not a qcow2 image.") }
            do { backing = try Qcow2Chain.openBackingFiles(imagePath: path, fd: fd).map(\.fd) }
            catch { close(fd); throw Self.refuse(d, "\(error.description).") }
        }
        XenithPaths.makeDirectories(host.runDir)
        let l: Int32
        do { l = try host.listen(b.socket, owner: b.socketOwner) } catch {
            close(fd); for f in backing { close(f) }
            throw XendError(.internalError, "\(b.socket): \(error)")
        }
        b.imageFD = fd
        b.listenFD = l
        b.backingFDs = backing
    }

    /// Closes a vbd's image and backing descriptors (with the lock).
    private func closeImage(_ b: Backend) {
        if b.imageFD >= 0 { close(b.imageFD); b.imageFD = -1 }
        for f in b.backingFDs { close(f) }
        b.backingFDs = []
    }

    /// The mount point where block device `rdev` is mounted read-write, if any
    /// (/proc/self/mountinfo: field 3 major:minor, field 6 mount options).
    static func mountedReadWrite(rdev: dev_t) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
        let dev = UInt64(rdev)
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfff)
        let minor = (dev & 0xff) | ((dev >> 12) & ~0xff)
        let want = "\(major):\(minor)"
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 5, f[2] == want else { continue }
            if f[5].split(separator: ",").contains("rw") { return String(f[4]) }
        }
        return nil
    }

    /// Starts blkback on the descriptors of `b` (listener at 3, image at 4, readiness at 5,
    /// a qcow2 image's backing files at 6, 7, ...).
    /// - Parameter failing: start it as the vbd's error server (`--fail-io`; a qcow2 image
    ///   is opened without its backing files, only its size is used).
    private func spawn(_ b: Backend, failing: Bool = false) throws {
        let backing = failing ? [] : b.backingFDs
        var argv: [String] = [host.binary, "--listen-fd", "3", "--image-fd", "4", "--num-queues", String(b.numQueues),
                              "--cache", failing ? "writeback" : cacheMode(b.spec).rawValue]   // an error server reads nothing
        var fds: [(Int32, Int32)] = [(b.listenFD, 3), (b.imageFD, 4)]
        if b.spec.format == "qcow2" { argv += ["--format", "qcow2"] }
        for (i, f) in backing.enumerated() {
            argv += ["--backing-fd", String(6 + i)]
            fds.append((f, Int32(6 + i)))
        }
        if !b.spec.writable { argv.append("--read-only") }
        if failing { argv.append("--fail-io") }
        var sandbox = host.sandboxArguments
        if aio == .ioUring && b.spec.format != "qcow2" && !failing {
            argv += ["--aio", "io_uring"]
            if let m = host.manifest {
                // The same manifest plus io_uring_enter, in the same directory.
                let dir = m.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
                sandbox = ["--manifest", (dir.isEmpty ? "" : dir + "/") + "blkback-io_uring.manifest"]
            }
        }
        try b.proc.spawn(argv + sandbox, descriptors: fds)
    }

    /// Waits (up to 10 s) for blkback's readiness message (sent once its sandbox is applied
    /// and it serves the socket).
    /// - Throws: `XendError` 400 naming the disk with blkback's reason when it refused or
    ///   died, 500 when it said nothing in time.
    private func waitReady(_ b: Backend) throws(XendError) {
        do { try b.proc.waitReady() } catch {
            if error.refused { throw Self.refuse(b.spec, error.message) }
            throw XendError(.internalError, "Device \(b.spec.vdev) (vbd) could not be connected. \(error.message)")
        }
    }

    /// Writes the vbd entries of a domain's working back-ends again (a new xenstored).
    public func republish(domid: Int) {
        lock.lock(); let bs = backends[domid] ?? []; lock.unlock()
        for b in bs where !b.broken { writeXenstore(b) }
    }

    private func writeXenstore(_ b: Backend) {
        guard let xs = xenstore, let path = b.spec.path,
              let dev = XenStoreDevice.vbd(domid: UInt32(b.domid), dev: b.spec.vdev, params: path, mode: b.mode,
                                           backendType: b.spec.kind.rawValue, deviceType: b.spec.deviceType.rawValue) else { return }
        do {
            try xs.writeDevice(dev)
            try xs.setState(dev.backendPath, .connected)
        } catch { log.error("\(b.label): xenstore: \(error)") }
    }

    private func device(_ b: Backend) -> XenStoreDevice? {
        XenStoreDevice.vbd(domid: UInt32(b.domid), dev: b.spec.vdev, params: b.spec.path ?? "", mode: b.mode,
                           backendType: b.spec.kind.rawValue)
    }

    // MARK: supervision

    /// Watches `b`'s process; restarts it with backoff when it dies, or marks the vbd
    /// broken after `burstDeaths` deaths within `burstWindow` seconds.
    private func watch(_ b: Backend) {
        b.proc.watch(log: log, restart: { [self] _ in
            if b.imageFD < 0 || b.listenFD < 0 {
                // Re-adopted after an xend restart: this xend holds no descriptors yet.
                closeImage(b)
                if b.listenFD >= 0 { close(b.listenFD); b.listenFD = -1 }
                do throws(XendError) { try open(b) } catch { throw EngineError(error.message) }
            }
            try spawn(b)
        }, giveUp: { [self] why in markBroken(b, why) }, restarted: { [self] in changed(b.domid) })
    }

    /// Gives up on a vbd: the image lock is released, and an error server (`blkback
    /// --fail-io`, on the same socket, the image open read-only and never read) answers the
    /// guest's outstanding requests (replayed from the in-flight region) and every later one
    /// with an I/O error, so the guest's I/O fails instead of hanging. When even that does
    /// not come up, the socket is closed and removed (a front-end must not connect into an
    /// unserved listen queue: QEMU would block on it). The domain runs on; `xm block-list`
    /// shows the vbd Closed, `xm list` names it.
    private func markBroken(_ b: Backend, _ why: String) {
        lock.lock()
        b.broken = true; b.proc.pid = 0
        closeImage(b)
        var serving = false
        if b.listenFD >= 0, let path = b.spec.path {
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
            if fd >= 0 {
                b.imageFD = fd
                do { try spawn(b, failing: true); serving = true } catch { log.error("\(b.label): cannot start its error server: \(error)") }
            }
        }
        lock.unlock()
        if serving {
            do { try b.proc.waitReady() } catch {
                log.error("\(b.label): its error server did not come up: \(error.message)")
                serving = false
            }
        }
        if serving {
            log.warning("\(b.label): the guest's I/O to it now fails (error server, pid \(b.proc.pid))")
        } else {
            b.proc.halt()
            lock.lock()
            if b.listenFD >= 0 { close(b.listenFD); b.listenFD = -1 }
            closeImage(b)
            unlink(b.socket)
            lock.unlock()
        }
        if let xs = xenstore, let dev = device(b) {
            do {
                try xs.write([XenStoreEntry(dev.backendPath + "/hotplug-status", "error"),
                              XenStoreEntry(dev.backendPath + "/hotplug-error", why)])
                try xs.setState(dev.backendPath, .closed)
            } catch { log.error("\(b.label): xenstore: \(error)") }
        }
        changed(b.domid)
    }

    // MARK: stop and adopt

    /// Stops one back-end: SIGTERM, SIGKILL after 2 s; closes its descriptors, removes its
    /// socket file.
    private func halt(_ b: Backend) {
        b.proc.halt()
        lock.lock()
        closeImage(b)
        if b.listenFD >= 0 { close(b.listenFD); b.listenFD = -1 }
        lock.unlock()
        unlink(b.socket)
    }

    /// Stops every blkback of `domid` and removes its vbd entries from xenstore.
    public func stop(domid: Int) {
        lock.lock(); let bs = backends.removeValue(forKey: domid) ?? []; lock.unlock()
        for b in bs {
            halt(b)
            if let xs = xenstore, let dev = device(b) { try? xs.removeDevice(dev) }
        }
        if !bs.isEmpty { host.pruneBackendDirectories(type: "vbd", domid: domid) }
    }

    /// After an xend restart: takes over a domain's blkbacks from its registry records.
    /// A live one (same pid and start time) is watched; a dead one is started again; a
    /// broken one stays broken.
    public func adopt(domid: Int, name: String, disks: [DiskSpec], records: [DiskRecord], vcpus: Int) {
        var bs: [Backend] = []
        for r in records {
            guard let spec = disks.first(where: { $0.vdev == r.vdev }) else { continue }
            let owner = r.socketOwner?.ids
            let b = Backend(domid: domid, domainName: name, spec: spec, socket: r.socket, logPath: r.log,
                            numQueues: max(1, min(vcpus, 64)), socketOwner: owner, lock: lock, budget: host.restartBudget())
            b.broken = r.broken
            if r.broken && r.pid > 0 && ProcessInfo2.startTicks(r.pid) == r.startTicks {
                // The error server of a broken vbd: kept (and stopped with the domain), not watched.
                b.proc.adoptRunning(pid: r.pid, startTicks: r.startTicks)
            } else if !r.broken && r.pid > 0 && ProcessInfo2.startTicks(r.pid) == r.startTicks {
                b.proc.adoptRunning(pid: r.pid, startTicks: r.startTicks)
                log.info("\(b.label): re-adopted blkback, pid \(r.pid)")
            } else if !r.broken {
                do {
                    try open(b)
                    try spawn(b)
                    log.info("\(b.label): blkback was gone; started a new one, pid \(b.proc.pid)")
                } catch {
                    log.error("\(b.label): cannot restart blkback: \(error)")
                    b.broken = true
                }
            }
            bs.append(b)
        }
        lock.lock(); backends[domid] = bs; lock.unlock()
        for b in bs where b.proc.pid > 0 && !b.broken { watch(b) }
        changed(domid)
    }

    /// The pids of a domain's running blkbacks (tests, diagnostics).
    public func pids(domid: Int) -> [Int32] {
        lock.lock(); defer { lock.unlock() }
        return (backends[domid] ?? []).map(\.proc.pid).filter { $0 > 0 }
    }
}
