// The qemu engine behind xend's DomainEngineDriver (DESIGN.md "Two engines, one
// toolstack"): xend opens the images, picks the VNC display, builds the command line with
// QemuEngine and keeps one QMP session per domain.
import CLinux
import DomainConfig
import Foundation
import QemuEngine
#if canImport(Glibc)
import Glibc
#endif

/// `qemu-system-x86_64` domains. `EngineProcess.controlPath` is the QMP socket; QEMU's
/// pidfile is `controlPath + ".pid"`, the VNC address (`127.0.0.1:5901`) is written to
/// `controlPath + ".vnc"` for xm to show.
public final class QemuEngineDriver: DomainEngineDriver, @unchecked Sendable {
    public let name = "qemu"
    /// Path or name (looked up on PATH) of the QEMU binary.
    public let binary: String
    public let accelerator: QemuAccelerator
    /// The unprivileged user QEMU switches to after start-up (`-runas`) when domains do
    /// not get a uid of their own (``uidBase`` nil); nil: none.
    public let runAs: String?
    /// That user's uid and gid (the owner xend gives the vhost-user sockets QEMU
    /// reconnects to after it dropped privileges).
    public let runAsIDs: (uid: uid_t, gid: gid_t)?
    /// First uid of the per-domain range (xend-config `qemu-uid-base`): domain D's QEMU
    /// runs as uid and gid `uidBase + D` (no account needed), so that a compromised QEMU
    /// cannot connect to another domain's back-end sockets (0600, owned by that uid).
    /// nil: every QEMU runs as ``runAs`` (or xend's user).
    public let uidBase: uid_t?
    /// Where QEMU makes shared guest RAM files (xend-config `qemu-ram-directory`, prepared
    /// by `GuestRAMDirectory`); nil: a memfd per domain.
    public let ramDirectory: String?
    private let lock = NSLock()
    private var sessions: [Int32: QemuDomain] = [:]
    /// Size of each running QEMU's log when it started (its own lines start there).
    private var logStarts: [Int32: Int] = [:]

    /// - Parameters:
    ///   - binary: `qemu-system-x86_64` by default.
    ///   - runAs: xend-config's `qemu-user`; used only when xend runs as root and the user
    ///     exists (see ``resolveUser(_:)``), and `uidBase` is nil.
    ///   - uidBase: xend-config's `qemu-uid-base`; used only when xend runs as root.
    ///   - ramDirectory: a mounted directory for guest RAM files (`QemuLaunchInputs.ramDirectory`).
    public init(binary: String = "qemu-system-x86_64", accelerator: QemuAccelerator? = nil, runAs: String? = nil,
                uidBase: UInt32? = nil, ramDirectory: String? = nil) {
        self.binary = binary
        self.ramDirectory = ramDirectory
        self.accelerator = accelerator ?? QemuAccelerator.detect { FileManager.default.fileExists(atPath: $0) }
        self.uidBase = geteuid() == 0 ? uidBase.map { uid_t($0) } : nil
        let ids = self.uidBase == nil ? runAs.flatMap(QemuEngineDriver.resolveUser) : nil
        self.runAs = ids == nil ? nil : runAs
        self.runAsIDs = ids
    }

    /// The uid and gid domain `domid`'s QEMU runs as after start-up: its own
    /// (`uidBase + domid`), the shared ``runAs`` user's, or nil (xend's user).
    public func identity(domid: Int) -> (uid: uid_t, gid: gid_t)? {
        if let b = uidBase { let u = b &+ uid_t(truncatingIfNeeded: domid); return (u, u) }
        return runAsIDs
    }

    /// QEMU's `-runas` argument for domain `domid`: `UID:GID` for a per-domain uid.
    /// - Throws: `EngineError` when that uid belongs to an account of this host (a range
    ///   that overlaps real users would let QEMU act as one of them).
    func runAsArgument(domid: Int) throws -> String? {
        guard uidBase != nil, let id = identity(domid: domid) else { return runAs }
        if let pw = getpwuid(id.uid) {
            throw EngineError("xend-config qemu-uid-base: uid \(id.uid) for domain \(domid) belongs to the account '\(String(cString: pw.pointee.pw_name))'; choose a base whose range (base + domid) no account uses")
        }
        return "\(id.uid):\(id.gid)"
    }

    /// The uid and gid of `user` when this process is root and the user exists; nil
    /// otherwise (QEMU then runs as xend's user).
    public static func resolveUser(_ user: String) -> (uid: uid_t, gid: gid_t)? {
        guard !user.isEmpty, geteuid() == 0, let pw = getpwnam(user) else { return nil }
        return (pw.pointee.pw_uid, pw.pointee.pw_gid)
    }

    /// Whether xend-config's `(domain-engine auto)` means qemu on this host: KVM is not
    /// hardware-backed (PLATFORM.md), so the core cannot boot real guests at speed.
    public static var preferredForAuto: Bool {
        QemuAccelerator.detect { FileManager.default.fileExists(atPath: $0) } == .tcg
    }

    public var capabilities: EngineCapabilities { [.balloon, .netHotplug, .blockHotplug, .save, .liveMigrate, .vcpuHotplug, .sysrq, .dumpCore, .pciPassthrough, .pciHotplug] }

    /// A qemu domain's services (DESIGN.md "Two engines"): its `file:`/`phy:` raw disks and
    /// its qcow2 disks (`tap:qcow2:`, `format=qcow2`) on blkback over vhost-user (one queue: QEMU's vhost-user-blk-pci asks for one), the
    /// socket files owned by the domain's QEMU uid (``identity(domid:)``) so that it reconnects after a blkback
    /// restart; its serial line on xenconsoled as a stream. Left to QEMU: `ioemu:` disks,
    /// CD-ROMs, other image formats (qcow, vhd, qed) and, for HVM domains, the IDE disks hda...hdd (the
    /// emulated controller of Xen's qemu-dm), and NIC models other than virtio-net
    /// (HVM's rtl8139 or ne2000, or `model=`), emulated on the tap.
    public func devicePlan(for c: DomainConfiguration, domid: Int) -> DevicePlan {
        let served = c.disks.filter { d in
            !d.ioemu && d.deviceType == .disk && d.path != nil && BlockSupervisor.servedFormats.contains(d.format)
                && !(c.builder == .hvm && QemuCommandLine.ideSlot(d.vdev) != nil)
        }
        let emulated = Set(c.vifs.indices.filter { QemuCommandLine.nicModel(c.vifs[$0], in: c) != "virtio-net-pci" })
        return DevicePlan(servedDisks: served, diskQueues: 1, emulatedVifs: emulated, socketOwner: identity(domid: domid), console: .stream)
    }

    /// The QMP socket and QEMU's pid file.
    public func runFiles(controlPath: String) -> [String] {
        [controlPath, controlPath + ".pid", controlPath + ".vnc", controlPath + ".unplugged"]
    }

    public func displayAddress(_ p: EngineProcess) -> String? { QemuEngineDriver.vncAddress(p) }

    static func paths(_ control: String, status: String, log: String) -> QemuDomainPaths {
        QemuDomainPaths(qmpSocket: control, pidfile: control + ".pid", statusFile: status, stderrLog: log)
    }

    public func start(_ l: EngineLaunch) throws -> EngineProcess {
        let qemu: String
        do { qemu = try QemuDomain.findBinary(binary) } catch { throw EngineError("\(error)") }
        let c = l.config
        if let k = c.kernel { try EngineError.checkBootFile(k, "Kernel image") }
        if let r = c.ramdisk { try EngineError.checkBootFile(r, "Kernel ramdisk") }
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        func open1(_ path: String, _ flags: Int32, _ what: String) throws -> Int32 {
            // Only a regular file or a block device: opening a FIFO would wait for a writer,
            // holding up every create behind this one.
            var st = stat()
            if stat(path, &st) == 0, st.st_mode & S_IFMT != S_IFREG, st.st_mode & S_IFMT != S_IFBLK {
                throw EngineError("\(what) \(path) is neither a regular file nor a block device", badRequest: true)
            }
            let fd = open(path, flags | O_CLOEXEC)
            guard fd >= 0 else { throw EngineError("\(what) \(path): \(String(cString: strerror(errno)))") }
            fds.append(fd)
            return fd
        }
        // Disks: xend opens every image (QEMU may be jailed); a writable one is handed as
        // an O_RDWR and an O_RDONLY descriptor in one fdset (QEMU's lock probe opens it read-only).
        var disks: [QemuDiskBackend?] = []
        for d in c.disks {
            if let sock = l.diskSockets[d.vdev] { disks.append(.vhostUser(socket: sock)); continue }
            guard let p = d.path else { disks.append(nil); continue }
            if d.writable && d.deviceType == .disk {
                disks.append(.fds([try open1(p, O_RDWR, "disk"), try open1(p, O_RDONLY, "disk")]))
            } else {
                disks.append(.fd(try open1(p, O_RDONLY, "disk")))
            }
        }
        var cdrom: QemuDiskBackend?
        if c.builder == .hvm, let iso = c.hvm.cdrom, !iso.isEmpty {
            try EngineError.checkBootFile(iso, "CD-ROM image", blockDeviceAllowed: true)
            cdrom = .fd(try open1(iso, O_RDONLY, "cdrom"))
        }
        // VNC: HVM with vnc=1 (the manual's default), on localhost unless vnclisten says.
        var display: Int?
        if c.builder == .hvm && c.hvm.vnc && !c.hvm.nographic {
            let host = c.hvm.vnclisten ?? "127.0.0.1"
            if let n = c.hvm.vncdisplay, !(c.hvm.vncunused && !QemuEngineDriver.portFree(host, 5900 + n)) {
                guard QemuEngineDriver.portFree(host, 5900 + n) else {
                    throw EngineError("VNC display \(n) (port \(5900 + n)) is already in use", badRequest: true)
                }
                display = n
            } else {
                display = (0..<100).first { QemuEngineDriver.portFree(host, 5900 + $0) }
                if display == nil { throw EngineError("no free VNC display (ports 5900-5999 are in use)") }
            }
        }
        // NICs: netback over vhost-user, or (an emulated model) the tap itself, dup'd for QEMU.
        var vifs: [QemuNetBackend] = []
        for i in c.vifs.indices {
            if i < l.netTapFDs.count, let tap = l.netTapFDs[i] {
                let fd = fcntl(tap, F_DUPFD_CLOEXEC, 3)
                guard fd >= 0 else { throw EngineError("vif \(i): tap: \(String(cString: strerror(errno)))") }
                fds.append(fd)
                vifs.append(.tapFD(fd))
            } else if i < l.netSockets.count, !l.netSockets[i].isEmpty {
                vifs.append(.vhostUser(socket: l.netSockets[i]))
            } else {
                vifs.append(.unconnected)
            }
        }
        let paths = QemuEngineDriver.paths(l.controlPath, status: l.statusFile, log: l.engineLog)
        var inputs = QemuLaunchInputs(accelerator: accelerator, qmpSocket: paths.qmpSocket, pidfile: paths.pidfile,
                                      serial: l.serialFD.map { .socketFD($0) } ?? .file(l.consoleLog), disks: disks, cdrom: cdrom,
                                      vifs: vifs, vncDisplay: display,
                                      kernelCommandLine: c.kernel != nil ? l.commandLine : nil,
                                      runAs: try runAsArgument(domid: l.domid))
        inputs.netHotplugSlots = QemuEngineDriver.netHotplugSlots
        inputs.incoming = l.incoming
        // Checked again at each start: unmounted since xend started, it would put guest RAM
        // on the disk below; a memfd then, as with `none`.
        inputs.ramDirectory = ramDirectory.flatMap { GuestRAMDirectory.stillUsable($0) ? $0 : nil }
        let args: [String]
        do { args = try QemuCommandLine.arguments(for: c, inputs) } catch { throw EngineError(error.message) }
        let logStart = (try? FileManager.default.attributesOfItem(atPath: paths.stderrLog)[.size] as? Int) ?? 0
        let d: QemuDomain
        do {
            // With passed-through PCI devices VFIO pins all guest RAM, charged to QEMU's
            // RLIMIT_MEMLOCK once it runs without CAP_IPC_LOCK: RAM plus 1 GiB, as libvirt allows.
            let memlock: UInt64? = l.config.pciDevices.isEmpty ? nil
                : UInt64(max(l.config.memory, l.config.maxmem ?? 0) + 1024) << 20
            // QEMU answers QMP only after vfio-pci pinned and mapped all guest RAM: slow
            // under an emulated IOMMU, so such a start gets longer than the usual 15 s.
            d = try QemuDomain.launch(binary: qemu, arguments: args, passFDs: fds + (l.serialFD.map { [$0] } ?? []), paths: paths,
                                      memlockBytes: memlock, timeout: memlock == nil ? 15 : 120)
        } catch { throw EngineError("\(error)") }
        let vncFile = l.controlPath + ".vnc"
        if let display {
            try? "\(c.hvm.vnclisten ?? "127.0.0.1"):\(display)\n".write(toFile: vncFile, atomically: true, encoding: .utf8)
        } else {
            unlink(vncFile)
        }
        // RAM is max(memory, maxmem); the balloon takes the guest down to `memory` (the
        // target holds until the guest's virtio_balloon driver loads).
        // A restored guest brings its balloon target in its state.
        if let mx = c.maxmem, mx > c.memory, !l.incoming { try? d.setMemory(mib: c.memory) }
        lock.lock(); sessions[d.pid] = d; logStarts[d.pid] = logStart; lock.unlock()
        return EngineProcess(pid: d.pid, startTicks: d.startTicks, controlPath: l.controlPath, statusFile: l.statusFile,
                             logOffset: logStart)
    }

    /// QEMU's stderr log of a running `p`: what its descriptor 2 points at.
    static func logPath(_ p: EngineProcess) -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/\(p.pid)/fd/2", &buf, buf.count - 1)
        return n > 0 ? String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "/dev/null"
    }

    /// The VNC address of a running domain (`127.0.0.1:1`), nil without VNC.
    public static func vncAddress(_ p: EngineProcess) -> String? {
        (try? String(contentsOfFile: p.controlPath + ".vnc", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func session(_ p: EngineProcess) throws -> QemuDomain {
        lock.lock(); defer { lock.unlock() }
        if let d = sessions[p.pid], !d.qmp.isClosed { return d }
        let log = QemuEngineDriver.logPath(p)
        do {
            let d = try QemuDomain.adopt(paths: QemuEngineDriver.paths(p.controlPath, status: p.statusFile, log: log),
                                         startTicks: p.startTicks)
            sessions[p.pid] = d
            return d
        } catch { throw EngineError("\(error)") }
    }

    public func pause(_ p: EngineProcess) throws { try call { try session(p).pause() } }
    public func unpause(_ p: EngineProcess) throws { try call { try session(p).unpause() } }
    public func requestShutdown(_ p: EngineProcess) throws { try call { try session(p).powerdown() } }
    public func reboot(_ p: EngineProcess) throws { try call { try session(p).reset() } }
    /// QMP `balloon` (virtio-balloon-pci `balloon0`, which every qemu domain has).
    public func setMemoryTarget(_ p: EngineProcess, mib: Int) throws { try call { try session(p).setMemory(mib: mib) } }

    public func destroy(_ p: EngineProcess) throws {
        unlink(p.controlPath + ".vnc"); unlink(p.controlPath + ".unplugged")
        if let d = try? session(p) {
            d.destroy(reap: false)
            unlink(d.paths.pidfile)
        } else {
            try? "destroyed\n".write(toFile: p.statusFile, atomically: true, encoding: .utf8)
            kill(p.pid, SIGKILL)
        }
    }

    public func query(_ p: EngineProcess) throws -> EngineStatus {
        let d = try session(p)
        let s: QemuRunState
        do { s = try d.state() } catch { throw EngineError("\(error)") }
        return EngineStatus(paused: s == .paused, cpuTimeNs: d.vcpuTimeNs())
    }

    /// QMP `query-cpus-fast`: each online vCPU's thread id.
    public func vcpuThreads(_ p: EngineProcess) throws -> [Int: Int32] {
        var out: [Int: Int32] = [:]
        try call { for c in try session(p).qmp.queryCPUs() { out[c.index] = c.threadID } }
        return out
    }

    /// The vCPU slots unplugged from `p`'s QEMU since it started (``setVcpuCount(_:count:config:)``
    /// keeps them in `controlPath + ".unplugged"`, across xend restarts).
    func unpluggedVcpus(_ p: EngineProcess) -> [Substring] {
        ((try? String(contentsOfFile: p.controlPath + ".unplugged", encoding: .utf8)) ?? "").split(separator: "\n")
    }

    /// QEMU 7.2 (Debian 12's) crashes in its migration thread (SIGSEGV, or SIGABRT on heap
    /// corruption) saving or migrating a guest a vCPU was unplugged from: the domain would
    /// be lost mid-save. Refused until the domain restarts (a reboot keeps its vCPU count).
    public func stateTransferRefusal(_ p: EngineProcess) -> String? {
        // QEMU leaves a guest that was paused when its state was sent in `postmigrate`, and
        // refuses another migration from there ("Can't migrate the vm that was paused due
        // to previous migration") until it has run.
        if (try? session(p).qmp.queryStatus().status) == "postmigrate" {
            return "it has stayed paused since its state was last saved (xm save -c of a paused domain), and QEMU saves or migrates such a guest again only once it has run: xm unpause it first"
        }
        let unplugged = unpluggedVcpus(p)
        guard !unplugged.isEmpty else { return nil }
        return "vCPU \(unplugged.joined(separator: ", ")) was unplugged from its QEMU (xm vcpu-set), and QEMU 7.2 crashes saving or migrating a guest after that, which would end the domain: reboot it first (it keeps its vCPU count)"
    }

    /// Unplugs the highest vCPUs (device_del, the guest acknowledging through ACPI) or plugs
    /// in the lowest missing ones (device_add) until vCPUs 0..<count are online.
    /// QEMU 7.2 (Debian 12's) aborts with heap corruption when a CPU is plugged back into a
    /// slot it unplugged, so the slots unplugged from a running QEMU are kept in
    /// `controlPath + ".unplugged"` (one index a line) and plugging them again is refused
    /// until the domain restarts; fresh slots up to maxvcpus plug in.
    public func setVcpuCount(_ p: EngineProcess, count: Int, config: DomainConfiguration) throws {
        let file = p.controlPath + ".unplugged"
        var gone = Set(unpluggedVcpus(p).compactMap { Int($0) })
        try call {
            let d = try session(p)
            let online = Set(try d.qmp.queryCPUs().map(\.index))
            let plug = (1..<max(1, count)).filter { !online.contains($0) }
            if let k = plug.first(where: gone.contains) {
                throw EngineError("vCPU \(k) was unplugged from this QEMU, which cannot plug a CPU back into a slot it unplugged (QEMU 7.2 aborts): reboot the domain to have \(count) vCPUs", badRequest: true)
            }
            for k in online.filter({ $0 >= count }).sorted(by: >) where k > 0 {
                try d.unplugVcpu(k)
                gone.insert(k)
                try? gone.sorted().map(String.init).joined(separator: "\n").write(toFile: file, atomically: true, encoding: .utf8)
            }
            for k in plug { try d.plugVcpu(k, accelerator: accelerator) }
        }
    }

    public func adopt(_ p: EngineProcess) -> Bool {
        (try? session(p)) != nil
    }

    public func stopReason(_ p: EngineProcess, waitStatus: Int32?) -> EngineStop {
        lock.lock()
        let d = sessions.removeValue(forKey: p.pid)
        let logStart = logStarts.removeValue(forKey: p.pid) ?? p.logOffset ?? 0
        lock.unlock()
        let paths = d?.paths ?? QemuEngineDriver.paths(p.controlPath, status: p.statusFile, log: QemuEngineDriver.logPath(p))
        d?.qmp.close()
        let why = QemuDomain.stopReason(paths: paths, logOffset: logStart)
        unlink(paths.pidfile); unlink(p.controlPath + ".vnc"); unlink(p.controlPath + ".unplugged")
        switch why {
        case .poweroff: return .poweroff
        case .reboot(let r): return .reboot(r)
        case .crash(let r): return .crash(QemuEngineDriver.describeDeath(r, waitStatus: waitStatus))
        case .destroyed: return .destroyed
        }
    }

    /// `qemu-system-x86_64 died…` → `qemu-system-x86_64 killed by signal 11 (Segmentation
    /// fault)…` or `… exited with status 1…` when xend reaped QEMU (`waitStatus` from wait(2));
    /// any other reason is returned as is.
    static func describeDeath(_ reason: String, waitStatus: Int32?) -> String {
        let died = "qemu-system-x86_64 died"
        guard reason.hasPrefix(died), let ws = waitStatus else { return reason }
        let sig = ws & 0x7f
        let how = sig != 0 && sig != 0x7f
            ? "killed by signal \(sig) (\(strsignal(sig).map { String(cString: $0) } ?? "?"))"
            : "exited with status \((ws >> 8) & 0xff)"
        return "qemu-system-x86_64 " + how + reason.dropFirst(died.count)
    }

    private func call(_ f: () throws -> Void) throws {
        do { try f() } catch let e as EngineError { throw e } catch { throw EngineError("qemu: \(error)") }
    }

    /// Whether nothing listens on `host:port` (TCP) — a bind probe.
    static func portFree(_ host: String, _ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host == "0.0.0.0" ? "0.0.0.0" : host, &addr.sin_addr) == 1 else { return false }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }
}
