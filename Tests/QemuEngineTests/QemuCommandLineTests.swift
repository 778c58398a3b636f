import DomainConfig
import Foundation
import Testing
@testable import QemuEngine

/// Index of `flag` followed by `value` in `a`, nil when that pair is absent.
func pair(_ a: [String], _ flag: String, _ value: String) -> Bool {
    zip(a, a.dropFirst()).contains { $0 == flag && $1 == value }
}

func values(_ a: [String], _ flag: String) -> [String] {
    zip(a, a.dropFirst()).filter { $0.0 == flag }.map(\.1)
}

let inputs = QemuLaunchInputs(accelerator: .tcg, qmpSocket: "/r/run/xenith/qemu-3.qmp", pidfile: "/r/run/xenith/qemu-3.pid",
                              serial: .socketFD(7))

@Suite struct QemuCommandLineTests {
    @Test func pvStyleDirectKernelBoot() throws {
        let c = try DomainConfiguration(parsing: """
            name = "tg"
            kernel = "/g/vmlinuz"
            ramdisk = "/g/initrd.img"
            extra = "quiet xenith.run=true"
            memory = 256
            vcpus = 2
            uuid = "12345678-1234-1234-1234-123456789abc"
            """)
        let a = try QemuCommandLine.arguments(for: c, inputs)
        #expect(pair(a, "-name", "guest=tg,debug-threads=on"))
        #expect(pair(a, "-uuid", "12345678-1234-1234-1234-123456789abc"))
        #expect(a.contains("-nodefaults") && a.contains("-no-user-config"))
        #expect(pair(a, "-machine", "q35"))
        #expect(pair(a, "-accel", "tcg,thread=multi"))
        #expect(pair(a, "-cpu", "max"))
        #expect(pair(a, "-m", "256M"))
        // vCPU 0 from -smp, vCPU 1 a CPU device that vcpu-set can unplug.
        #expect(pair(a, "-smp", "1,sockets=2,cores=1,threads=1,maxcpus=2"))
        #expect(pair(a, "-device", "max-x86_64-cpu,id=vcpu1,socket-id=1,core-id=0,thread-id=0"))
        #expect(a.contains("-no-reboot") && a.contains("-no-shutdown"))
        #expect(pair(a, "-action", "panic=pause") && pair(a, "-device", "pvpanic"))
        #expect(pair(a, "-qmp", "unix:/r/run/xenith/qemu-3.qmp,server=on,wait=off"))
        #expect(pair(a, "-pidfile", "/r/run/xenith/qemu-3.pid"))
        #expect(values(a, "-sandbox").first?.hasPrefix("on,") == true)
        #expect(values(a, "-sandbox").first?.contains("elevateprivileges=deny") == true && !a.contains("-runas"))
        #expect(pair(a, "-kernel", "/g/vmlinuz") && pair(a, "-initrd", "/g/initrd.img"))
        #expect(pair(a, "-append", "quiet xenith.run=true console=ttyS0"))
        #expect(pair(a, "-chardev", "socket,id=serial0,fd=7") && pair(a, "-serial", "chardev:serial0"))
        #expect(pair(a, "-display", "none") && pair(a, "-vga", "none"))
        #expect(!a.contains("-vnc") && !a.contains("-boot"))
        #expect(pair(a, "-rtc", "base=utc"))
        #expect(pair(a, "-device", "virtio-balloon-pci,id=balloon0"))
        #expect(!a.contains { $0.contains("memory-backend") })
    }

    @Test func runAsKeepsTheSandboxAndAllowsTheSwitchOfUser() throws {
        var c = DomainConfiguration(name: "r")
        c.kernel = "/g/vmlinuz"
        var i = inputs
        i.runAs = "xenith-qemu"
        let a = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(a, "-runas", "xenith-qemu"))
        // QEMU 7.2 loads its filter before it switches user: setuid must stay allowed, exec denied.
        #expect(pair(a, "-sandbox", "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"))
    }

    /// A restore's target waits for its state (`-incoming defer`, the stream named later
    /// over QMP) and stays stopped after it (`-S`) until xend resumes it; no `exec:` or
    /// `file:` anywhere (PLATFORM.md), and QEMU's sandbox stays on.
    @Test func incomingTargetWaitsStopped() throws {
        var c = DomainConfiguration(name: "r")
        c.kernel = "/g/vmlinuz"
        #expect(!(try QemuCommandLine.arguments(for: c, inputs)).contains("-incoming"))
        var i = inputs
        i.incoming = true
        let a = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(a, "-incoming", "defer") && a.contains("-S"))
        #expect(values(a, "-sandbox").first?.contains("spawn=deny") == true)
    }

    @Test func kvmWhenHardwareBacked() throws {
        var c = DomainConfiguration(name: "k")
        c.kernel = "/k"
        var i = inputs
        i.accelerator = .kvm
        let a = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(a, "-accel", "kvm") && pair(a, "-cpu", "host"))
        #expect(QemuAccelerator.detect { ["/dev/kvm", "/sys/module/kvm_intel"].contains($0) } == .kvm)
        #expect(QemuAccelerator.detect { ["/dev/kvm", "/sys/module/kvm_amd"].contains($0) } == .kvm)
        #expect(QemuAccelerator.detect { ["/dev/kvm", "/sys/module/kvm_pvm"].contains($0) } == .tcg)
        #expect(QemuAccelerator.detect { _ in false } == .tcg)
    }

    @Test func vhostUserDisksShareGuestRAM() throws {
        let c = try DomainConfiguration(parsing: """
            name = "deb"
            kernel = "/g/k"
            memory = 512
            maxmem = 1024
            disk = ['file:/g/debian.img,xvda,w', 'file:/g/data.img,xvdb,r']
            root = "/dev/vda"
            """)
        var i = inputs
        i.disks = [.vhostUser(socket: "/r/run/xenith/blkback-3-xvda.sock"), .path("/g/data.img")]
        let a = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(a, "-machine", "q35,memory-backend=ram0"))
        #expect(pair(a, "-object", "memory-backend-memfd,id=ram0,size=1024M,share=on"))
        #expect(pair(a, "-m", "1024M"))
        #expect(pair(a, "-chardev", "socket,id=vbd0,path=/r/run/xenith/blkback-3-xvda.sock,reconnect=1"))
        #expect(pair(a, "-device", "vhost-user-blk-pci,chardev=vbd0,num-queues=1,id=xvda"))
        #expect(pair(a, "-drive", "file=/g/data.img,if=none,id=vbd1,format=raw,readonly=on"))
        #expect(pair(a, "-device", "virtio-blk-pci,drive=vbd1,id=xvdb"))
        #expect(pair(a, "-append", "root=/dev/vda console=ttyS0"))
    }

    /// With a RAM directory (xend-config `qemu-ram-directory`), shared RAM is a file QEMU
    /// makes there, 2 MiB-aligned so that it can sit in transparent huge pages; a comma in
    /// the path is doubled (QEMU's option syntax).
    @Test func sharedGuestRAMInTheRAMDirectory() throws {
        let c = try DomainConfiguration(parsing: "name = \"deb\"\nkernel = \"/g/k\"\nmemory = 256\n")
        var i = inputs
        i.netHotplugSlots = 4
        i.ramDirectory = "/run/xenith/guest-ram"
        var a = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(a, "-machine", "q35,memory-backend=ram0"))
        #expect(pair(a, "-object", "memory-backend-file,id=ram0,size=256M,share=on,mem-path=/run/xenith/guest-ram,align=2M"))
        i.ramDirectory = "/r,am"
        a = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(a, "-object", "memory-backend-file,id=ram0,size=256M,share=on,mem-path=/r,,am,align=2M"))
        i.ramDirectory = nil
        a = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(a, "-object", "memory-backend-memfd,id=ram0,size=256M,share=on"))
    }

    /// Devices attached while the domain ran (hotplug-port kept in the configuration) go
    /// back into their root ports, after the ports; the root complex keeps its order.
    @Test func attachedDevicesGoBackIntoTheirRootPorts() throws {
        var c = try DomainConfiguration(parsing: """
            name = "hp"
            kernel = "/g/k"
            memory = 256
            disk = ['file:/g/a.img,xvda,w', 'file:/g/b.img,xvdb,w']
            vif = ['mac=00:16:3e:00:00:01', 'mac=00:16:3e:00:00:02']
            """)
        c.disks[1].hotplugPort = "hpnet1"
        c.vifs[1].hotplugPort = "hpnet0"
        // Through SXP, as the registry, save files and migration carry it.
        let back = try DomainConfiguration(sxp: SXP.parse(c.toSXP().description, file: "t"), file: "t")
        #expect(back.disks.map(\.hotplugPort) == [nil, "hpnet1"] && back.vifs.map(\.hotplugPort) == [nil, "hpnet0"])
        var i = inputs
        i.disks = [.vhostUser(socket: "/s/a.sock"), .vhostUser(socket: "/s/b.sock")]
        i.vifs = [.vhostUser(socket: "/s/v0.sock"), .vhostUser(socket: "/s/v1.sock")]
        i.netHotplugSlots = 4
        let a = try QemuCommandLine.arguments(for: back, i)
        let devices = values(a, "-device")
        let rootPort = devices.firstIndex(of: "pcie-root-port,id=hpnet3,chassis=4") ?? -1
        let disk = devices.firstIndex(of: "vhost-user-blk-pci,chardev=xvdbchr,num-queues=1,id=xvdb,bus=hpnet1") ?? -1
        let nic = devices.firstIndex(of: "virtio-net-pci,mac=00:16:3e:00:00:02,id=vif1,netdev=vif1net,vectors=0,bus=hpnet0") ?? -1
        #expect(rootPort >= 0 && disk > rootPort && nic > rootPort, "\(devices)")
        #expect(pair(a, "-chardev", "socket,id=xvdbchr,path=/s/b.sock,reconnect=1"))
        #expect(devices.contains("vhost-user-blk-pci,chardev=vbd0,num-queues=1,id=xvda"))
        #expect(devices.contains("virtio-net-pci,mac=00:16:3e:00:00:01,id=vif0,netdev=vif0net,vectors=0"))
        // From a stored configuration, a save file or a peer: checked.
        for (port, why) in [("hpnet4", "is not one of the domain's 4 hot-plug root ports"), ("hpnet01", "is not one of"),
                            ("pcie.0", "is not one of"), ("hpnet0", "hpnet0 is taken by another device")] {
            var bad = back
            bad.disks[1].hotplugPort = port
            #expect(throws: QemuConfigError.self) { try QemuCommandLine.arguments(for: bad, i) }
            do { _ = try QemuCommandLine.arguments(for: bad, i) } catch { #expect(error.message.contains(why), "\(port): \(error.message)") }
        }
        var hvm = back
        hvm.builder = .hvm
        do { _ = try QemuCommandLine.arguments(for: hvm, i); Issue.record("HVM accepted a hotplug-port") }
        catch { #expect(error.message.contains("HVM domains have no hot-plug root ports"), "\(error.message)") }
    }

    @Test func hvmCdromBootWithVNC() throws {
        let c = try DomainConfiguration(parsing: """
            name = "hvm"
            builder = "hvm"
            memory = 256
            boot = "dc"
            cdrom = "/g/test.iso"
            disk = ['file:/g/disk.img,ioemu:hda,w']
            vif = ['mac=00:16:3e:00:00:01']
            localtime = 1
            usbdevice = "tablet"
            """)
        var i = inputs
        i.disks = [.fd(9)]
        i.cdrom = .fd(10)
        i.vifs = [.unconnected]
        i.vncDisplay = 4
        let a = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(a, "-machine", "pc"))
        #expect(pair(a, "-boot", "order=dc"))
        #expect(!a.contains("-kernel"))
        #expect(pair(a, "-add-fd", "fd=9,set=1") && pair(a, "-add-fd", "fd=10,set=2"))
        #expect(pair(a, "-drive", "file=/dev/fdset/1,if=none,id=vbd0,format=raw"))
        #expect(pair(a, "-device", "ide-hd,drive=vbd0,bus=ide.0,unit=0,id=hda,bootindex=1"))
        #expect(pair(a, "-drive", "file=/dev/fdset/2,if=none,id=cdrom,format=raw,readonly=on,media=cdrom"))
        #expect(pair(a, "-device", "ide-cd,drive=cdrom,bus=ide.1,unit=0,id=cdrom,bootindex=0"))
        #expect(pair(a, "-device", "rtl8139,mac=00:16:3e:00:00:01,id=vif0"))
        #expect(pair(a, "-vnc", "127.0.0.1:4"))
        #expect(pair(a, "-vga", "cirrus"))
        #expect(!a.contains("-display"))
        #expect(pair(a, "-rtc", "base=localtime"))
        #expect(a.contains("-usb") && pair(a, "-device", "usb-tablet"))
    }

    @Test func hvmKeys() throws {
        let c = try DomainConfiguration(parsing: """
            name = "h2"
            builder = "hvm"
            acpi = 0
            apic = 0
            ne2000 = 1
            stdvga = 1
            nographic = 1
            vif = ['mac=00:16:3e:00:00:02', 'mac=00:16:3e:00:00:03,model=e1000']
            """)
        var i = inputs
        i.vncDisplay = 1
        i.vifs = [.tapFD(11)]
        let a = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(a, "-machine", "pc,acpi=off"))
        #expect(pair(a, "-cpu", "max,-apic"))
        #expect(pair(a, "-netdev", "tap,id=vif0net,fd=11"))
        #expect(pair(a, "-device", "ne2k_pci,mac=00:16:3e:00:00:02,id=vif0,netdev=vif0net"))
        #expect(pair(a, "-device", "e1000,mac=00:16:3e:00:00:03,id=vif1"))
        #expect(!a.contains("-vnc"))
        #expect(pair(a, "-display", "none") && pair(a, "-vga", "none"))
        #expect(pair(a, "-boot", "order=c"))
    }

    @Test func sdlAndVNCListen() throws {
        var c = DomainConfiguration(name: "s")
        c.builder = .hvm
        c.hvm.sdl = true
        c.hvm.vnclisten = "0.0.0.0"
        var i = inputs
        i.vncDisplay = 2
        let a = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(a, "-vnc", "0.0.0.0:2") && pair(a, "-display", "sdl"))
        i.serial = .file("/r/var/log/xen/console/guest-s.log")
        let b = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(b, "-chardev", "file,id=serial0,path=/r/var/log/xen/console/guest-s.log,append=on"))
    }

    @Test func refusals() throws {
        let noKernel = DomainConfiguration(name: "x")
        #expect(throws: QemuConfigError("No kernel specified")) { try QemuCommandLine.arguments(for: noKernel, inputs) }
        var c = DomainConfiguration(name: "x")
        c.builder = .hvm
        c.hvm.boot = "z"
        #expect(throws: QemuConfigError.self) { try QemuCommandLine.arguments(for: c, inputs) }
        c.hvm.boot = "c"
        c.disks = [try DiskSpec(parsing: "file:/a.img,ioemu:sda,w")]
        var i = inputs
        i.disks = [.fd(3)]
        #expect(throws: QemuConfigError("disk sda: emulated disks are hda, hdb, hdc or hdd")) {
            try QemuCommandLine.arguments(for: c, i)
        }
        i.disks = []
        #expect(throws: QemuConfigError.self) { try QemuCommandLine.arguments(for: c, i) }
        var pv = DomainConfiguration(name: "p")
        pv.kernel = "/k"
        var j = inputs
        j.cdrom = .path("/x.iso")
        #expect(throws: QemuConfigError("cdrom= needs builder='hvm'")) { try QemuCommandLine.arguments(for: pv, j) }
    }

    @Test func commasInPathsAreEscaped() throws {
        var c = DomainConfiguration(name: "a,b")
        c.kernel = "/k"
        var i = inputs
        i.qmpSocket = "/r/q,1.sock"
        let a = try QemuCommandLine.arguments(for: c, i)
        #expect(pair(a, "-name", "guest=a,,b,debug-threads=on"))
        #expect(pair(a, "-qmp", "unix:/r/q,,1.sock,server=on,wait=off"))
    }

    @Test func pathsUnderRoot() {
        let p = QemuDomainPaths.under(root: "/tmp/x/", domid: 5, name: "deb")
        #expect(p.qmpSocket == "/tmp/x/run/xenith/qemu-5.qmp")
        #expect(p.pidfile == "/tmp/x/run/xenith/qemu-5.pid")
        #expect(p.statusFile == "/tmp/x/run/xenith/qemu-5.status")
        #expect(p.stderrLog == "/tmp/x/var/log/xen/qemu-dm-deb.log")
    }

    @Test func stopReasonFromFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qemu-unit-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = QemuDomainPaths.under(root: dir, domid: 1, name: "n")
        try FileManager.default.createDirectory(atPath: dir + "/var/log/xen", withIntermediateDirectories: true)
        try "2026-11-30T03:00:00.000001Z qemu-system-x86_64: terminating on signal 9\nqemu: fatal: oops\n"
            .write(toFile: p.stderrLog, atomically: true, encoding: .utf8)
        #expect(QemuDomain.stopReason(paths: p, tailLines: 2)
                == .crash("qemu-system-x86_64 died: terminating on signal 9 | fatal: oops"))
        try FileManager.default.createDirectory(atPath: dir + "/run/xenith", withIntermediateDirectories: true)
        for (text, want) in [("poweroff", QemuStop.poweroff), ("reboot guest-reset", .reboot("guest-reset")),
                             ("crash guest panicked", .crash("guest panicked")), ("destroyed", .destroyed)] {
            try (text + "\n").write(toFile: p.statusFile, atomically: true, encoding: .utf8)
            #expect(QemuDomain.stopReason(paths: p) == want)
        }
        // QEMU ended by a signal: its own last lines come along; lines before logOffset
        // (an earlier QEMU of the same domain name) do not.
        try "crash qemu-system-x86_64 was terminated by a signal\n".write(toFile: p.statusFile, atomically: true, encoding: .utf8)
        let old = try String(contentsOfFile: p.stderrLog, encoding: .utf8)
        try (old + "2026-11-30T03:00:01.000001Z qemu-system-x86_64: terminating on signal 15 from pid 7 (xend)\n")
            .write(toFile: p.stderrLog, atomically: true, encoding: .utf8)
        #expect(QemuDomain.stopReason(paths: p, logOffset: old.utf8.count)
                == .crash("qemu-system-x86_64 was terminated by a signal: terminating on signal 15 from pid 7 (xend)"))
        unlink(p.statusFile)
        #expect(QemuDomain.stopReason(paths: p, logOffset: old.utf8.count + 1000) == .crash("qemu-system-x86_64 died"))
    }

    @Test func missingBinary() {
        #expect(throws: QemuEngineError.self) { try QemuDomain.findBinary("qemu-system-x86_64", path: "/nonexistent") }
        #expect(throws: QemuEngineError.self) { try QemuDomain.findBinary("/nonexistent/qemu") }
    }
}

/// maxvcpus: room for vCPUs up to it, devices only for the ones online at start.
@Test func vcpusUpToMaxvcpusAreCPUDevices() throws {
    let c = try DomainConfiguration(parsing: "name = 'm'\nkernel = '/k'\nvcpus = 2\nmaxvcpus = 4\n")
    let i = QemuLaunchInputs(accelerator: .kvm, qmpSocket: "/q", pidfile: "/p", serial: .file("/c"), disks: [], cdrom: nil,
                             vifs: [], vncDisplay: nil, kernelCommandLine: nil, runAs: nil)
    let a = try QemuCommandLine.arguments(for: c, i)
    let smp = a.firstIndex(of: "-smp").map { a[$0 + 1] }
    #expect(smp == "1,sockets=4,cores=1,threads=1,maxcpus=4")
    #expect(a.filter { $0.contains("-x86_64-cpu,") } == ["host-x86_64-cpu,id=vcpu1,socket-id=1,core-id=0,thread-id=0"])
    let one = try QemuCommandLine.arguments(for: DomainConfiguration(parsing: "name = 'o'\nkernel = '/k'\n"), i)
    #expect(one.firstIndex(of: "-smp").map { one[$0 + 1] } == "1")
}

/// `pci = [...]` becomes QEMU's vfio-pci devices (issue 18, item 3).
@Suite struct QemuPciPassthroughTests {
    @Test func vfioDevicesAtTheSlotsAskedFor() throws {
        let c = try DomainConfiguration(parsing: """
            name = "p"
            kernel = "/g/vmlinuz"
            disk = ['file:/g/d.img,xvda,w']
            pci = ['01:00.0', '0000:00:04.1@1a']
            """)
        let a = try QemuCommandLine.arguments(for: c, QemuLaunchInputs(accelerator: .tcg, qmpSocket: "/q", pidfile: "/p",
                                                                        serial: .none, disks: [.path("/g/d.img")]))
        let devices = values(a, "-device")
        #expect(devices.contains("vfio-pci,host=0000:01:00.0,id=pci-0000-01-00.0"))
        #expect(devices.contains("vfio-pci,host=0000:00:04.1,id=pci-0000-00-04.1,addr=0x1a"))
        // Before every other PCI device, so that an asked-for slot is still free.
        let first = try #require(devices.firstIndex { $0.hasPrefix("vfio-pci") })
        let disk = try #require(devices.firstIndex { $0.hasPrefix("virtio-blk-pci") })
        #expect(first < disk)
    }

    /// A function added with `xm pci-attach` is kept with its root port (`(hotplug-port
    /// hpnetN)` in the stored configuration) and goes back there at the next start, with
    /// the id `pci-detach` looks for; a port named twice is refused.
    @Test func hotAttachedFunctionGoesBackIntoItsRootPort() throws {
        var c = try DomainConfiguration(parsing: """
            name = "p"
            kernel = "/g/vmlinuz"
            """)
        c.pciDevices = [PciSpec(address: PciAddress(bus: 0, slot: 4, function: 0), hotplugPort: "hpnet2")]
        let again = try DomainConfiguration(sxp: c.toSXP())
        #expect(again.pciDevices == c.pciDevices)
        var inputs = QemuLaunchInputs(accelerator: .tcg, qmpSocket: "/q", pidfile: "/p", serial: .none)
        inputs.netHotplugSlots = 4
        let devices = values(try QemuCommandLine.arguments(for: again, inputs), "-device")
        let dev = try #require(devices.firstIndex(of: "vfio-pci,host=0000:00:04.0,id=pci-0000-00-04.0,bus=hpnet2"))
        let port = try #require(devices.firstIndex(of: "pcie-root-port,id=hpnet2,chassis=3"))
        #expect(port < dev)
        c.pciDevices.append(PciSpec(address: PciAddress(bus: 0, slot: 5, function: 0), hotplugPort: "hpnet2"))
        #expect(throws: QemuConfigError.self) { try QemuCommandLine.arguments(for: c, inputs) }
    }
}
