// The per-domain pciback process (issue 18, item 2): started when a domain's PCI functions
// are on vfio-pci, it resets them for assignment, stays up for the domain's life watching
// each function's binding, and resets them again at release; supervised like blkback and
// netback (BackendProcess: restart with back-off, give up after a burst, re-adoption after an
// xend restart from the pid and start time kept in var/lib/xend/pci.json).
//
// What xend hands it: the listening socket `$ROOT/run/xenith/pciback-DOMID.sock` (fd 3, kept
// here so that a restarted pciback gets the same socket), and per function its sysfs
// directory (O_PATH) and `config` (fds 6+2i, 7+2i). The VFIO container and group go over the
// socket with each reset request, because QEMU 7.2 opens /dev/vfio/N itself and a VFIO group
// has a single opener: nothing may hold it while the guest runs. A pciback restarted while
// the domain runs gets `--adopt` and is never asked to reset for assignment (and refuses it).
import DomainConfig
import Foundation
import Logging
import PciBack
import Spawn
import UnixSocket
import XendAPI
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A domain's pciback as `pci.json` keeps it.
struct PciBackRecord: Codable, Equatable {
    var domid: Int
    /// The process (its sandbox reaper) and its start time in clock ticks; 0 when none runs.
    var pid: Int32
    var startTicks: UInt64
    var socket: String
}

/// One domain's pciback: its process, the descriptors xend holds for it.
final class PciBackend: @unchecked Sendable {
    let domid: Int
    /// Its functions, in the order of their descriptors (grows and shrinks with
    /// `xm pci-attach`/`pci-detach`, so a restarted pciback is handed the current set).
    var devices: [PciAddress]
    let socket: String
    var listenFD: Int32 = -1
    /// Per function: sysfs directory (O_PATH) and `config`.
    var deviceFDs: [(directory: Int32, config: Int32)] = []
    let proc: BackendProcess
    /// Set when pciback kept dying and xend gave up on it.
    var gaveUp = false

    init(domid: Int, devices: [PciAddress], socket: String, logPath: String, lock: NSRecursiveLock, budget: RestartBudget) {
        self.domid = domid; self.devices = devices; self.socket = socket
        proc = BackendProcess(service: "pciback", device: "pci", label: "domain \(domid) pci", logPath: logPath, lock: lock, budget: budget)
    }

    /// O_PATH (<fcntl.h>, x86-64 and arm64), which Swift's Glibc does not export: a
    /// descriptor that names the directory without opening it for reading.
    static let openPath: Int32 = 0o10000000

    var record: PciBackRecord { PciBackRecord(domid: domid, pid: proc.pid, startTicks: proc.startTicks, socket: socket) }

    func closeDescriptors() {
        for (d, c) in deviceFDs { close(d); close(c) }
        deviceFDs = []
        if listenFD >= 0 { close(listenFD); listenFD = -1 }
    }
}

/// A request pciback could not be asked (no answer, no connection): the caller falls back
/// to a one-shot reset. A `failed:` answer is a `PciRefusal` instead.
struct PciBackUnreachable: Error, CustomStringConvertible { var description: String }

extension PciSupervisor {
    // MARK: the process

    /// Opens what pciback is handed: the listener (bound when not held), and each function's
    /// sysfs directory and config.
    /// - Throws: `PciRefusal` naming the path.
    /// - Parameter bind: false for an adopted pciback, which still holds the old listener.
    func openDescriptors(_ b: PciBackend, bind: Bool = true) throws(PciRefusal) {
        if bind && b.listenFD < 0 {
            XenithPaths.makeDirectories(backHost.runDir)
            do { b.listenFD = try backHost.listen(b.socket) } catch { throw PciRefusal("pciback socket \(b.socket): \(error)") }
        }
        guard b.deviceFDs.isEmpty else { return }
        for a in b.devices {
            do { b.deviceFDs.append(try functionDescriptors(a)) } catch { b.closeDescriptors(); throw error }
        }
    }

    /// Function `a`'s sysfs directory (O_PATH) and `config`, close-on-exec.
    /// - Throws: `PciRefusal` naming the path.
    func functionDescriptors(_ a: PciAddress) throws(PciRefusal) -> (directory: Int32, config: Int32) {
        let dir = sysfsRoot + "/bus/pci/devices/\(a)"
        return try Self.openBoth((dir, PciBackend.openPath | O_DIRECTORY | O_CLOEXEC), (dir + "/config", O_RDONLY | O_CLOEXEC),
                                 naming: "PCI device \(a)")
    }

    /// Opens `first`, then `second` (paths and open flags); the first is closed again when
    /// the second fails. - Throws: `PciRefusal` "`naming`: PATH: reason".
    static func openBoth(_ first: (String, Int32), _ second: (String, Int32), naming: String) throws(PciRefusal) -> (Int32, Int32) {
        let a = open(first.0, first.1)
        guard a >= 0 else { throw PciRefusal("\(naming): \(first.0): \(String(cString: strerror(errno)))") }
        let b = open(second.0, second.1)
        guard b >= 0 else {
            let e = String(cString: strerror(errno)); close(a)
            throw PciRefusal("\(naming): \(second.0): \(e)")
        }
        return (a, b)
    }

    /// Starts pciback for `b` (`--adopt`: under a running guest, no reset for assignment).
    /// Does not wait for its readiness.
    func spawnBackend(_ b: PciBackend, adopt: Bool) throws {
        do throws(PciRefusal) { try openDescriptors(b) } catch { throw EngineError(error.message) }
        var argv = [binary, "--domain", String(b.domid)] + b.devices.flatMap { ["--device", $0.description] }
        if adopt { argv.append("--adopt") }
        var fds: [(Int32, Int32)] = [(b.listenFD, 3)]
        for (i, f) in b.deviceFDs.enumerated() {
            let (d, c) = PciBackOptions.deviceFDs(i)
            fds += [(f.directory, d), (f.config, c)]
        }
        try b.proc.spawn(argv + backHost.sandboxArguments, descriptors: fds)
    }

    /// Asks `b`'s pciback `request`, handing `fds` along; returns its `ok` answer.
    /// - Throws: `PciRefusal` with pciback's reason for a `failed:` answer;
    ///   `PciBackUnreachable` when it cannot be asked or does not answer within 30 s.
    func ask(_ b: PciBackend, _ request: PciBackRequest, fds: [Int32] = []) throws -> String {
        let s: Int32
        do { s = try UnixSocket.connect(path: b.socket) } catch { throw PciBackUnreachable(description: "pciback \(b.socket): \(error)") }
        defer { close(s) }
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let line = Array((request.line + "\n").utf8)
        let sent = line.withUnsafeBytes { buf in fds.withUnsafeBufferPointer { clinux_send_with_fds(s, buf.baseAddress, buf.count, $0.baseAddress, Int32(fds.count)) } }
        guard sent == line.count else { throw PciBackUnreachable(description: "pciback \(b.socket): send: \(String(cString: strerror(errno)))") }
        guard let answer = Self.readLine(s) else { throw PciBackUnreachable(description: "pciback \(b.socket): no answer") }
        if answer.hasPrefix("failed: ") { throw PciRefusal(String(answer.dropFirst(8))) }
        return answer
    }

    /// One line from `fd` (without the newline), nil at end of file, error or timeout.
    static func readLine(_ fd: Int32) -> String? {
        var bytes: [UInt8] = []
        var c: UInt8 = 0
        while bytes.count < 4096 {
            let n = read(fd, &c, 1)
            if n < 0 && errno == EINTR { continue }
            guard n == 1 else { return nil }
            if c == 0x0A { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(c)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Has `b`'s pciback reset `members` of IOMMU group `g` for `phase`, on a container and
    /// group opened here and handed over with the request.
    func backendReset(_ b: PciBackend, group g: Int, _ members: [PciAddress], _ phase: PciBackLifecycle.Phase) throws {
        let (container, group) = try openGroup(g, members)
        defer { close(container); close(group) }
        _ = try ask(b, .reset(phase, members.map(\.description)), fds: [container, group])
    }

    /// Opens the VFIO container and group `g` (close-on-exec).
    /// - Throws: `PciRefusal` naming the devices and the node.
    func openGroup(_ g: Int, _ members: [PciAddress]) throws(PciRefusal) -> (Int32, Int32) {
        let names = members.map(\.description).joined(separator: " ")
        return try Self.openBoth((devRoot + "/vfio/vfio", O_RDWR | O_CLOEXEC), (devRoot + "/vfio/\(g)", O_RDWR | O_CLOEXEC),
                                 naming: "PCI \(names)")
    }

    // MARK: supervision

    /// Supervises `b` (restart with `--adopt` after each death within the budget; every
    /// function marked broken when it keeps dying) and listens to its `broken` reports.
    func superviseBackend(_ b: PciBackend) {
        b.proc.watch(log: log, restart: { [self] _ in
            try spawnBackend(b, adopt: true)
        }, giveUp: { [self] why in
            lock.lock(); b.gaveUp = true; lock.unlock()
            for a in b.devices { markBroken(domid: b.domid, a.description, "pciback gave up: \(why)") }
        }, restarted: { [self] in
            persistLocked()
            listen(b)
        })
        listen(b)
    }

    /// A thread that holds a `watch` connection to `b`'s pciback and marks each function it
    /// reports broken; it ends with the process (the supervisor starts a new one).
    func listen(_ b: PciBackend) {
        let t = Thread { [self] in
            guard let s = try? UnixSocket.connect(path: b.socket) else { return }
            defer { close(s) }
            var l = Array("watch\n".utf8)
            guard write(s, &l, l.count) == l.count, let first = Self.readLine(s), first.hasPrefix("ok") else { return }
            while let line = Self.readLine(s) {
                let w = line.split(separator: " ", maxSplits: 2).map(String.init)
                if w.count == 3 && w[0] == "broken" { markBroken(domid: b.domid, w[1], w[2]) }
            }
        }
        t.name = "pciback-watch-\(b.domid)"
        t.start()
    }

    /// Marks function `bdf` of `domid` broken with pciback's reason (logged once, shown by
    /// `xm pci-list`). The domain keeps running.
    func markBroken(domid: Int, _ bdf: String, _ why: String) {
        lock.lock()
        guard let e = entries[bdf], e.domid == domid, e.broken != why else { lock.unlock(); return }
        entries[bdf]?.broken = why
        persist()
        lock.unlock()
        log.error("domain \(domid): PCI \(bdf) marked broken: \(why)")
    }

    /// Stops `b`'s pciback and closes what xend held for it; removes its socket file.
    func stopBackend(_ b: PciBackend) {
        b.proc.halt()
        lock.lock(); b.closeDescriptors(); lock.unlock()
        unlink(b.socket)
    }

    // MARK: re-adoption

    /// After an xend restart: takes over `domid`'s pciback from `pci.json` — watched when it
    /// still runs (same pid and start time), else started again with `--adopt` (no reset
    /// under the running guest).
    public func adopt(domid: Int) {
        lock.lock(); defer { lock.unlock() }
        let mine = entries.values.filter { $0.domid == domid }.compactMap { try? PciAddress(parsing: $0.address) }.sorted { $0.description < $1.description }
        guard !mine.isEmpty, backends[domid] == nil else { return }
        let rec = records[domid]
        let b = PciBackend(domid: domid, devices: mine, socket: backHost.socketPath("pciback", domid: domid, device: "pci"),
                           logPath: logPath, lock: lock, budget: backHost.restartBudget())
        if let r = rec, r.pid > 0, ProcessInfo2.startTicks(r.pid) == r.startTicks {
            b.proc.adoptRunning(pid: r.pid, startTicks: r.startTicks)
            do throws(PciRefusal) { try openDescriptors(b, bind: false) } catch { log.error("domain \(domid): \(error.message)") }
            log.info("domain \(domid): re-adopted pciback, pid \(r.pid)")
        } else {
            do { try spawnBackend(b, adopt: true); log.info("domain \(domid): pciback was gone; started a new one (--adopt, no reset), pid \(b.proc.pid)") }
            catch { log.error("domain \(domid): cannot restart pciback: \(error)"); b.gaveUp = true }
        }
        backends[domid] = b
        persist()
        if b.proc.pid > 0 { superviseBackend(b) }
    }
}
