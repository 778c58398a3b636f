// The qemu-system-x86_64 command line of one domain, built from its configuration.
// Pure: no file is opened and no process started here, so every argument is unit-tested.
import DomainConfig

/// The accelerator QEMU runs the guest with.
public enum QemuAccelerator: String, Sendable, Hashable {
    /// Hardware virtualization through /dev/kvm (kvm_intel / kvm_amd loaded).
    case kvm
    /// QEMU's software translator, one host thread per vCPU (`-accel tcg,thread=multi`).
    case tcg

    /// `kvm` when /dev/kvm is usable and hardware-backed (`/sys/module/kvm_intel` or
    /// `/sys/module/kvm_amd` exists), `tcg` otherwise (PLATFORM.md: `kvm_pvm` emulates guest
    /// kernel code instruction by instruction, slower than TCG).
    /// - Parameter exists: file-existence probe (tests pass a fake).
    public static func detect(exists: (String) -> Bool) -> QemuAccelerator {
        guard exists("/dev/kvm") else { return .tcg }
        return exists("/sys/module/kvm_intel") || exists("/sys/module/kvm_amd") ? .kvm : .tcg
    }
}

/// Where the guest's first serial port (ttyS0, the Xen console) goes.
public enum QemuSerial: Sendable, Hashable {
    /// A connected stream socket inherited by QEMU as descriptor N (one end of a
    /// socketpair whose other end xend bridges to xenconsoled).
    case socketFD(Int32)
    /// Appended to a file (the domain's console log, as the core's stdout is).
    case file(String)
    /// No serial port.
    case none
}

/// How one disk of the configuration reaches QEMU.
public enum QemuDiskBackend: Sendable, Hashable {
    /// Served by blkback over vhost-user at this Unix socket path (`vhost-user-blk-pci`).
    case vhostUser(socket: String)
    /// An image or device xend opened (read-only or read-write as the disk's access says)
    /// and hands to QEMU as inherited descriptor N (`-add-fd`, `/dev/fdset/SET`).
    case fd(Int32)
    /// Several descriptors of the same image in one fdset: QEMU picks the one whose access
    /// mode matches each open it makes (a writable raw image needs an O_RDWR one and an
    /// O_RDONLY one: QEMU's file locking opens it read-only too).
    case fds([Int32])
    /// QEMU opens this path itself (tests; outside a jail only).
    case path(String)
}

/// How one vif reaches the host.
public enum QemuNetBackend: Sendable, Hashable {
    /// An open tap device as descriptor N (`-netdev tap,fd=N`).
    case tapFD(Int32)
    /// netback over vhost-user at this socket (`-netdev vhost-user`).
    case vhostUser(socket: String)
    /// The NIC exists in the guest with no link (no host side configured).
    case unconnected
}

/// Everything outside the configuration that the command line names.
public struct QemuLaunchInputs: Sendable, Hashable {
    public var accelerator: QemuAccelerator
    /// QMP socket path (`$XENITH_ROOT/run/xenith/qemu-DOMID.qmp`); QEMU listens there.
    public var qmpSocket: String
    /// QEMU writes its pid here (adoption after an xend restart).
    public var pidfile: String
    public var serial: QemuSerial
    /// One entry per `config.disks` element (same order); nil: the disk is left out
    /// (an empty CD-ROM drive is still created).
    public var disks: [QemuDiskBackend?]
    /// The `cdrom=` image (HVM) as an inherited descriptor or a path.
    public var cdrom: QemuDiskBackend?
    /// One entry per `config.vifs` element; missing entries mean `.unconnected`.
    public var vifs: [QemuNetBackend]
    /// VNC display number (TCP port 5900 + N) chosen by xend; nil: no VNC server.
    public var vncDisplay: Int?
    /// The kernel command line for direct kernel boot (`config.kernelCommandLine`).
    public var kernelCommandLine: String?
    /// Unprivileged user QEMU switches to after start-up (`-runas`: a name, or `UID:GID`); nil: stays as started.
    public var runAs: String?
    /// Resolved kernel/ramdisk paths (default: the configuration's).
    public var kernel: String?
    public var ramdisk: String?
    /// Empty PCIe root ports (`hpnet0`...) for NICs added later over QMP (`device_add`),
    /// on q35 only; any value above 0 also makes guest RAM shared (vhost-user; see ``ramDirectory``).
    public var netHotplugSlots: Int = 0
    /// Start as the target of a restore or migration: `-incoming defer` (the stream is
    /// named later with QMP `migrate-incoming`, PLATFORM.md) and `-S`, so the guest stays
    /// stopped after its state arrived until xend says `cont`.
    public var incoming: Bool = false
    /// A directory on a tmpfs mounted with `huge=advise` (xend-config `qemu-ram-directory`)
    /// where QEMU makes the guest's shared RAM file and unlinks it at once
    /// (`memory-backend-file,mem-path=DIR,align=2M`): the 2 MiB alignment and QEMU's
    /// `MADV_HUGEPAGE` let the RAM sit in transparent huge pages, which a memfd cannot
    /// unless the host's `shmem_enabled` allows it. nil: a memfd, as before.
    public var ramDirectory: String?

    public init(accelerator: QemuAccelerator, qmpSocket: String, pidfile: String, serial: QemuSerial,
                disks: [QemuDiskBackend?] = [], cdrom: QemuDiskBackend? = nil, vifs: [QemuNetBackend] = [],
                vncDisplay: Int? = nil, kernelCommandLine: String? = nil, runAs: String? = nil,
                kernel: String? = nil, ramdisk: String? = nil) {
        self.accelerator = accelerator
        self.qmpSocket = qmpSocket
        self.pidfile = pidfile
        self.serial = serial
        self.disks = disks
        self.cdrom = cdrom
        self.vifs = vifs
        self.vncDisplay = vncDisplay
        self.kernelCommandLine = kernelCommandLine
        self.runAs = runAs
        self.kernel = kernel
        self.ramdisk = ramdisk
    }
}

/// Why a configuration cannot run under QEMU; `message` is shown to the user as is.
public struct QemuConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ m: String) { message = m }
    public var description: String { message }
}

/// Builds the `qemu-system-x86_64` argument vector (without argv[0]) of one domain.
///
/// Shape, in order: identity (`-name`, `-uuid`), platform (`-machine`, `-accel`, `-cpu`,
/// `-m`, `-smp`, memory backend), lifecycle (`-no-reboot`, `-no-shutdown`, pvpanic,
/// `-action panic=pause`), control (`-qmp`, `-pidfile`, `-sandbox`, `-runas`, `-incoming defer -S`), boot
/// (`-kernel/-initrd/-append` or `-boot order=`), console, disks, CD-ROM, NICs, display,
/// clock, USB. Xen HVM semantics (manual, "HVM guest domains"; xm create.py) map as
/// documented on each helper below.
public enum QemuCommandLine {
    /// - Throws: `QemuConfigError` for a configuration QEMU cannot run (no kernel and not HVM,
    ///   unsupported vdev for an emulated disk, disks/inputs mismatch, bad boot order).
    public static func arguments(for c: DomainConfiguration, _ i: QemuLaunchInputs) throws(QemuConfigError) -> [String] {
        var a: [String] = []
        let hvm = c.builder == .hvm
        let directKernel = (i.kernel ?? c.kernel) != nil
        if !hvm && !directKernel { throw QemuConfigError("No kernel specified") }
        if i.disks.count != c.disks.count {
            throw QemuConfigError("internal: \(i.disks.count) disk backends for \(c.disks.count) disks")
        }
        let vhostUser = i.disks.contains { if case .vhostUser = $0 { return true } else { return false } }
            || i.vifs.contains { if case .vhostUser = $0 { return true } else { return false } } || i.netHotplugSlots > 0

        // Identity: the name shows in `ps` and QEMU's messages; debug-threads names vCPU
        // threads "CPU n/TCG" or "CPU n/KVM" (query-cpus-fast gives their thread ids).
        a += ["-name", "guest=\(escape(c.name)),debug-threads=on"]
        if let u = c.uuid { a += ["-uuid", u] }
        // Nothing implicit: no default NIC, serial, parallel, floppy, CD-ROM or VGA, no
        // /etc/qemu config files: every device below is one we chose.
        a += ["-nodefaults", "-no-user-config"]

        // Platform. HVM: i440fx (`pc`), the chipset of Xen's qemu-dm (IDE hda..hdd, ISA
        // NE2000). Direct kernel boot: q35, the fastest PCI machine under TCG (PLATFORM.md).
        var machine = [hvm ? "pc" : "q35"]
        if !c.hvm.acpi && hvm { machine.append("acpi=off") }
        if vhostUser {
            // vhost-user back-ends map guest RAM: it must be a shareable file (a memfd, or
            // one on the RAM directory's tmpfs).
            machine.append("memory-backend=ram0")
        }
        a += ["-machine", machine.joined(separator: ",")]
        switch i.accelerator {
        case .kvm: a += ["-accel", "kvm"]
        // One host thread per vCPU instead of one round-robin thread (PLATFORM.md).
        case .tcg: a += ["-accel", "tcg,thread=multi"]
        }
        // CPU model: the host's on KVM; under TCG `max` (every feature TCG emulates).
        // HVM `apic=0`/`pae=0` take the feature out of CPUID.
        var cpu = [i.accelerator == .kvm ? "host" : "max"]
        if hvm && !c.hvm.apic { cpu.append("-apic") }
        if hvm && !c.hvm.pae { cpu.append("-pae") }
        a += ["-cpu", cpu.joined(separator: ",")]
        // RAM: `maxmem` when larger (the balloon starts at `memory`; xend sets the target
        // through QMP `balloon`), in MiB.
        let ram = max(c.memory, c.maxmem ?? 0)
        a += ["-m", "\(ram)M"]
        if vhostUser {
            if let dir = i.ramDirectory {
                a += ["-object", "memory-backend-file,id=ram0,size=\(ram)M,share=on,mem-path=\(escape(dir)),align=2M"]
            } else {
                a += ["-object", "memory-backend-memfd,id=ram0,size=\(ram)M,share=on"]
            }
        }
        // vCPUs: with more than one possible, only vCPU 0 comes from -smp and the others are
        // CPU devices (`vcpuK`, socket K), so that `xm vcpu-set` can unplug them (QEMU cannot
        // unplug the CPUs -smp makes) and plug them back up to maxvcpus (QemuCPUs.swift).
        let maxVcpus = max(1, c.vcpus, c.maxvcpus ?? 0)
        if maxVcpus == 1 {
            a += ["-smp", "1"]
        } else {
            a += ["-smp", "1,sockets=\(maxVcpus),cores=1,threads=1,maxcpus=\(maxVcpus)"]
            for k in 1..<max(1, min(c.vcpus, maxVcpus)) {
                a += ["-device", QemuCommandLine.cpuDevice(k, i.accelerator)]
            }
        }

        // Lifecycle: QEMU never restarts or ends a guest by itself. A guest reset becomes a
        // shutdown (-no-reboot), a shutdown stops emulation but keeps QEMU (-no-shutdown) so
        // xend reads the reason (QMP SHUTDOWN) and applies on_reboot/on_poweroff; a panic
        // reported through pvpanic pauses it (GUEST_PANICKED) and xend applies on_crash.
        a += ["-no-reboot", "-no-shutdown", "-action", "panic=pause", "-device", "pvpanic"]

        // Control: QMP for xend (server, never waiting for a client so QEMU starts alone).
        a += ["-qmp", "unix:\(escape(i.qmpSocket)),server=on,wait=off"]
        a += ["-pidfile", i.pidfile]
        // QEMU's own seccomp filter: no obsolete syscalls, no setuid after start-up, no
        // fork/exec, no scheduler/affinity changes. With `-runas` the setuid family must
        // stay allowed: QEMU (7.2) loads the filter before it switches user, and a denied
        // setgid/setuid kills it. It cannot regain privileges afterwards all the same: it
        // holds no capabilities once it runs as the unprivileged user, and exec (the only
        // way to a setuid binary) stays denied.
        let privileges = i.runAs == nil ? "deny" : "allow"
        a += ["-sandbox", "on,obsolete=deny,elevateprivileges=\(privileges),spawn=deny,resourcecontrol=deny"]
        if let u = i.runAs { a += ["-runas", u] }
        // Timestamps on QEMU's own messages (its stderr goes to the per-domain log).
        a += ["-msg", "timestamp=on"]
        if i.incoming { a += ["-incoming", "defer", "-S"] }

        // Boot.
        if let k = i.kernel ?? c.kernel {
            // PV-style domain under QEMU: direct kernel boot, as the core does.
            a += ["-kernel", k]
            if let r = i.ramdisk ?? c.ramdisk { a += ["-initrd", r] }
            a += ["-append", i.kernelCommandLine ?? c.kernelCommandLine]
        } else {
            let order = c.hvm.boot.lowercased()
            guard !order.isEmpty, order.allSatisfy({ "acdn".contains($0) }) else {
                throw QemuConfigError("boot='\(c.hvm.boot)': use a (floppy), c (hard disk), d (CD-ROM), n (network)")
            }
            a += ["-boot", "order=\(order)"]
        }

        // Console: COM1 (ttyS0), the Xen console.
        switch i.serial {
        case .socketFD(let fd):
            a += ["-chardev", "socket,id=serial0,fd=\(fd)", "-serial", "chardev:serial0"]
        case .file(let p):
            a += ["-chardev", "file,id=serial0,path=\(escape(p)),append=on", "-serial", "chardev:serial0"]
        case .none:
            break
        }

        // Devices attached while the domain ran go back into their root ports, after those
        // (the root complex keeps the order it had when the domain was created).
        var intoPorts: [String] = []
        var portsTaken = Set<String>()

        // PCI passthrough (`pci = [...]`): QEMU's vfio-pci opens /dev/vfio/N itself, which
        // xend made this domain's QEMU user's. First among the PCI devices, so that a slot
        // the configuration asks for (`@SLOT`, QEMU's `addr=`) is still free. One added with
        // `xm pci-attach` goes back into its root port.
        for p in c.pciDevices {
            var d = "vfio-pci,host=\(p.address),id=\(pciDeviceID(p.address))"
            if let port = p.hotplugPort {
                let bus = try hotplugBus(port, "PCI device \(p.address)", hvm: hvm, slots: i.netHotplugSlots, taken: &portsTaken)
                intoPorts += ["-device", d + ",bus=\(bus)"]
                continue
            }
            if let s = p.guestSlot { d += ",addr=0x\(String(s, radix: 16))" }
            a += ["-device", d]
        }

        // Disks and CD-ROMs.
        var fdset = 0
        var ide = Set<Int>()
        for (n, (disk, backend)) in zip(c.disks, i.disks).enumerated() {
            guard let backend else {
                if disk.deviceType == .cdrom, let slot = ideSlot(disk.vdev) {
                    a += ["-device", "ide-cd,bus=ide.\(slot / 2),unit=\(slot % 2),id=\(disk.vdev)"]
                    ide.insert(slot)
                }
                continue
            }
            let id = "vbd\(n)"
            if case .vhostUser(let sock) = backend {
                // Served by blkback; reconnect=1: QEMU reconnects within a second when
                // blkback restarts (PLATFORM.md). num-queues=1: blkback's default queue
                // count (QEMU's default, one per vCPU, exceeds it).
                if let port = disk.hotplugPort {
                    // The names block-attach gives (QemuBlockHotplug), so block-detach finds them.
                    let bus = try hotplugBus(port, "disk \(disk.vdev)", hvm: hvm, slots: i.netHotplugSlots, taken: &portsTaken)
                    intoPorts += ["-chardev", "socket,id=\(disk.vdev)chr,path=\(escape(sock)),reconnect=1",
                                  "-device", "vhost-user-blk-pci,chardev=\(disk.vdev)chr,num-queues=1,id=\(disk.vdev),bus=\(bus)"]
                    continue
                }
                a += ["-chardev", "socket,id=\(id),path=\(escape(sock)),reconnect=1"]
                a += ["-device", "vhost-user-blk-pci,chardev=\(id),num-queues=1,id=\(disk.vdev)" + bootIndex(disk, c)]
                continue
            }
            if let port = disk.hotplugPort {
                throw QemuConfigError("disk \(disk.vdev): hotplug-port \(port): only disks served by blkback go into hot-plug slots")
            }
            let file = try driveFile(backend, set: &fdset, readOnly: !disk.writable || disk.deviceType == .cdrom, a: &a)
            var drive = "file=\(escape(file)),if=none,id=\(id),format=\(disk.format == "raw" ? "raw" : disk.format)"
            if !disk.writable || disk.deviceType == .cdrom { drive += ",readonly=on" }
            if disk.deviceType == .cdrom { drive += ",media=cdrom" }
            a += ["-drive", drive]
            if (disk.ioemu || hvm || disk.deviceType == .cdrom), let slot = ideSlot(disk.vdev) {
                // hda/hdb/hdc/hdd on the two IDE channels, as Xen's qemu-dm placed them.
                guard hvm else {
                    throw QemuConfigError("disk \(disk.vdev): emulated IDE disks need builder='hvm'")
                }
                let kind = disk.deviceType == .cdrom ? "ide-cd" : "ide-hd"
                a += ["-device", "\(kind),drive=\(id),bus=ide.\(slot / 2),unit=\(slot % 2),id=\(disk.vdev)" + bootIndex(disk, c)]
                ide.insert(slot)
            } else if disk.ioemu || disk.deviceType == .cdrom {
                throw QemuConfigError("disk \(disk.vdev): emulated disks are hda, hdb, hdc or hdd")
            } else {
                // Paravirtual disk without blkback: QEMU's own virtio-blk.
                a += ["-device", "virtio-blk-pci,drive=\(id),id=\(disk.vdev)" + bootIndex(disk, c)]
            }
        }
        if let cd = i.cdrom {
            guard hvm else { throw QemuConfigError("cdrom= needs builder='hvm'") }
            // The manual's `cdrom=`: the image on hdc (secondary master) unless a disk took it.
            guard let slot = [2, 3, 1].first(where: { !ide.contains($0) }) else {
                throw QemuConfigError("cdrom: no free IDE slot (hdb, hdc, hdd are all disks)")
            }
            let file = try driveFile(cd, set: &fdset, readOnly: true, a: &a)
            a += ["-drive", "file=\(escape(file)),if=none,id=cdrom,format=raw,readonly=on,media=cdrom"]
            let boot = c.hvm.boot.lowercased().firstIndex(of: "d").map {
                ",bootindex=\(c.hvm.boot.lowercased().distance(from: c.hvm.boot.lowercased().startIndex, to: $0))"
            } ?? ""
            a += ["-device", "ide-cd,drive=cdrom,bus=ide.\(slot / 2),unit=\(slot % 2),id=cdrom" + (c.kernel == nil ? boot : "")]
        }

        // NICs: HVM defaults to the manual's rtl8139 (ne2000=1: NE2000 PCI), a vif's
        // `model=` wins; direct-kernel domains get virtio-net.
        for (n, vif) in c.vifs.enumerated() {
            let id = "vif\(n)"
            let backend = n < i.vifs.count ? i.vifs[n] : .unconnected
            let model = nicModel(vif, in: c)
            var device = "\(model),mac=\(vif.mac),id=\(id)"
            switch backend {
            case .tapFD(let fd):
                a += ["-netdev", "tap,id=\(id)net,fd=\(fd)"]
                device += ",netdev=\(id)net"
            case .vhostUser(let sock):
                a += ["-chardev", "socket,id=\(id)chr,path=\(escape(sock)),reconnect=1",
                      "-netdev", "vhost-user,id=\(id)net,chardev=\(id)chr"]
                device += ",netdev=\(id)net"
                // Debian's QEMU 7.2 segfaults in vhost_net_start → msix_set_vector_notifiers
                // for a vhost-user virtio-net-pci with MSI-X under TCG: use INTx.
                if model == "virtio-net-pci" { device += ",vectors=0" }
            case .unconnected:
                break
            }
            if let port = vif.hotplugPort {
                let bus = try hotplugBus(port, "vif \(n)", hvm: hvm, slots: i.netHotplugSlots, taken: &portsTaken)
                // The netdev and chardev were added above; the device goes into its port below.
                intoPorts += ["-device", device + ",bus=\(bus)"]
                continue
            }
            a += ["-device", device]
        }
        // q35's root complex cannot take hot-plugged devices: empty root ports can.
        if !hvm {
            for n in 0..<i.netHotplugSlots { a += ["-device", "pcie-root-port,id=hpnet\(n),chassis=\(n + 1)"] }
        }
        a += intoPorts

        // Display. VNC (on by default in the manual) is bound to vnclisten, else localhost;
        // SDL opens a window; nographic or neither: no display at all.
        let vnc = hvm ? (c.hvm.vnc && !c.hvm.nographic) : i.vncDisplay != nil
        if vnc, let d = i.vncDisplay {
            var v = "\(c.hvm.vnclisten ?? "127.0.0.1"):\(d)"
            if c.hvm.vncpasswd != nil { v += ",password=on" }
            a += ["-vnc", v]
        }
        if hvm && c.hvm.sdl && !c.hvm.nographic {
            a += ["-display", "sdl"]
        } else if !(vnc && i.vncDisplay != nil) {
            a += ["-display", "none"]
        }
        if hvm && !c.hvm.nographic {
            // stdvga=1: Bochs VBE "std"; default the Cirrus Logic card of Xen's qemu-dm.
            a += ["-vga", c.hvm.stdvga ? "std" : "cirrus"]
        } else {
            a += ["-vga", "none"]
        }
        if let k = c.hvm.keymap { a += ["-k", k] }

        // Clock: RTC in UTC unless localtime=1.
        a += ["-rtc", "base=\(c.hvm.localtime ? "localtime" : "utc")"]

        // Balloon (xm mem-set → QMP balloon).
        a += ["-device", "virtio-balloon-pci,id=balloon0"]

        // USB: usb=1 or a usbdevice adds a controller; `tablet`/`mouse` add that device.
        if hvm && (c.hvm.usb || c.hvm.usbdevice != nil) {
            a += ["-usb"]
            switch c.hvm.usbdevice {
            case "tablet": a += ["-device", "usb-tablet"]
            case "mouse": a += ["-device", "usb-mouse"]
            default: break
            }
        }
        return a
    }

    /// IDE position 0...3 of `hda`...`hdd` (channel = slot / 2, unit = slot % 2), nil otherwise.
    /// The root port `port` names (`hpnetN`, one of the domain's `slots`), checked: the
    /// value comes from a stored configuration, a save file or a migration peer.
    /// - Throws: `QemuConfigError` naming `what`: an HVM domain (no root ports), a name
    ///   that is not one of the ports, or a port another device already takes.
    static func hotplugBus(_ port: String, _ what: String, hvm: Bool, slots: Int, taken: inout Set<String>) throws(QemuConfigError) -> String {
        guard !hvm else { throw QemuConfigError("\(what): hotplug-port \(port): HVM domains have no hot-plug root ports") }
        guard port.hasPrefix("hpnet"), let n = Int(port.dropFirst(5)), n >= 0, n < slots, port == "hpnet\(n)" else {
            throw QemuConfigError("\(what): hotplug-port '\(port)' is not one of the domain's \(slots) hot-plug root ports (hpnet0...)")
        }
        guard taken.insert(port).inserted else { throw QemuConfigError("\(what): hotplug-port \(port) is taken by another device") }
        return port
    }

    /// QEMU's id of the vfio-pci device of host function `a` (`pci-0000-01-00.0`: QEMU ids
    /// take no `:`), the same at start and for `xm pci-attach`, so `pci-detach` finds it.
    public static func pciDeviceID(_ a: PciAddress) -> String {
        "pci-" + a.description.split(separator: ":").joined(separator: "-")
    }

    public static func ideSlot(_ vdev: String) -> Int? {
        switch vdev {
        case "hda": 0
        case "hdb": 1
        case "hdc": 2
        case "hdd": 3
        default: nil
        }
    }

    /// The `-drive file=` of a backend: `/dev/fdset/N` after an `-add-fd` for a descriptor.
    /// The QEMU NIC device of `vif` in domain `c`: the vif's `model=` (`virtio`/`virtio-net`
    /// → `virtio-net-pci`, `ne2000` → `ne2k_pci`), else the manual's HVM default `rtl8139`
    /// (`ne2k_pci` with `ne2000=1`), else `virtio-net-pci` (direct-kernel domains). Every model
    /// but `virtio-net-pci` is emulated by QEMU on a tap (no netback: vhost-user is virtio only).
    public static func nicModel(_ vif: VifSpec, in c: DomainConfiguration) -> String {
        var model = vif.model ?? (c.builder == .hvm ? (c.hvm.ne2000 ? "ne2k_pci" : "rtl8139") : "virtio-net-pci")
        if model == "virtio" || model == "virtio-net" { model = "virtio-net-pci" }
        if model == "ne2000" { model = "ne2k_pci" }
        return model
    }

    static func driveFile(_ b: QemuDiskBackend, set: inout Int, readOnly: Bool, a: inout [String]) throws(QemuConfigError) -> String {
        switch b {
        case .fd(let fd):
            set += 1
            a += ["-add-fd", "fd=\(fd),set=\(set)"]
            return "/dev/fdset/\(set)"
        case .fds(let fds):
            set += 1
            for fd in fds { a += ["-add-fd", "fd=\(fd),set=\(set)"] }
            return "/dev/fdset/\(set)"
        case .path(let p):
            return p
        case .vhostUser:
            throw QemuConfigError("a vhost-user disk cannot be an emulated drive")
        }
    }

    /// `,bootindex=N` for the first disk when an HVM domain boots from disk (`c`).
    static func bootIndex(_ d: DiskSpec, _ c: DomainConfiguration) -> String {
        guard c.builder == .hvm, c.kernel == nil, d.deviceType == .disk,
              let first = c.disks.first(where: { $0.deviceType == .disk }), first.vdev == d.vdev else { return "" }
        let order = c.hvm.boot.lowercased()
        guard let idx = order.firstIndex(of: "c") else { return "" }
        return ",bootindex=\(order.distance(from: order.startIndex, to: idx))"
    }

    /// Doubles commas: QEMU's option syntax reads `,,` as a literal comma.
    public static func escape(_ s: String) -> String {
        s.split(separator: ",", omittingEmptySubsequences: false).joined(separator: ",,")
    }
}
