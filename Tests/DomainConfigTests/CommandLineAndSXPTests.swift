import Testing
@testable import DomainConfig

@Suite struct KernelCommandLineTests {
    func cfg(_ body: String) throws -> DomainConfiguration {
        try DomainConfiguration(parsing: "name = 'k'\nkernel = '/k'\n" + body, file: "k.cfg")
    }

    @Test func orderIsRootThenIpThenExtra() throws {
        let c = try cfg("root = '/dev/xvda1 ro'\nextra = 'quiet'\nip = '10.0.0.2'\ngateway = '10.0.0.1'\nnetmask = '255.0.0.0'\nhostname = 'h'")
        #expect(c.kernelCommandLine == "root=/dev/xvda1 ro ip=10.0.0.2::10.0.0.1:255.0.0.0:h:eth0:off quiet console=ttyS0")
    }

    @Test func nothingSetGivesOnlyTheConsole() throws {
        #expect(try cfg("").kernelCommandLine == "console=ttyS0")
        #expect(try cfg("").ipSetting == nil)
    }

    @Test func dhcpForms() throws {
        #expect(try cfg("dhcp = 'dhcp'").kernelCommandLine == "ip=dhcp console=ttyS0")
        #expect(try cfg("dhcp = 'dhcp'\nhostname = 'h'").ipSetting == "ip=::::h:eth0:dhcp")
    }

    @Test func extraNamingRootOrIpOrConsoleWins() throws {
        let c = try cfg("root = '/dev/xvda1'\nip = '10.0.0.2'\nextra = 'root=/dev/sdb ip=off console=hvc0'")
        #expect(c.kernelCommandLine == "root=/dev/sdb ip=off console=hvc0")
    }

    @Test func rootPrefixIsStrippedAndCmdlineReplacesAll() throws {
        #expect(try cfg("root = 'root=/dev/xvda'").kernelCommandLine == "root=/dev/xvda console=ttyS0")
        let c = try cfg("root = '/dev/xvda'\nextra = 'x'\ndhcp = 'dhcp'\ncmdline = 'init=/bin/sh'")
        #expect(c.kernelCommandLine == "init=/bin/sh console=ttyS0")
    }

    @Test func nfsRoot() throws {
        let c = try cfg("nfs_server = '192.0.2.9'\nnfs_root = '/exports/g'\nroot = '/dev/nfs'\nextra = 'rw'")
        #expect(c.kernelCommandLine == "root=/dev/nfs nfsroot=192.0.2.9:/exports/g rw console=ttyS0")
        #expect(throws: ConfigError(file: "k.cfg", line: 3, key: "nfs_root", message: "nfs_root needs nfs_server")) {
            _ = try cfg("nfs_root = '/exports/g'")
        }
    }
}

@Suite struct DeviceSpecTests {
    @Test func diskForms() throws {
        let a = try DiskSpec(parsing: "phy:/dev/vg/g,xvda,w")
        #expect(a == DiskSpec(kind: .phy, target: "/dev/vg/g", vdev: "xvda", access: .readWrite))
        let b = try DiskSpec(parsing: ",hdc:cdrom,r")
        #expect(b.target == nil && b.deviceType == .cdrom && b.uname == "" && b.path == nil)
        let c = try DiskSpec(parsing: "/root/image.iso,raw,hdc,devtype=cdrom")
        #expect(c.deviceType == .cdrom && c.access == .readOnly && c.kind == .file)
        let d = try DiskSpec(parsing: "raw:/root/image.iso,hdc:cdrom,ro")
        #expect(d == c)
        let e = try DiskSpec(parsing: "/dev/vg/guest-volume,,hda")
        #expect(e == (try DiskSpec(parsing: "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume")))
        for bad in ["phy:/dev/x,xvda,q", "phy:/dev/x,floppy,w", "phy:/dev/x", "vdev=xvda,access=rw", "a,b,c,d,e",
                    "phy:/dev/x,xvda:tape,w", "format=vmdk,vdev=xvda,target=/x", "bogus=1,vdev=xvda,target=/x"] {
            #expect(throws: DiskSpecError.self, "\(bad)") { _ = try DiskSpec(parsing: bad) }
        }
    }

    @Test func macAndRate() {
        #expect(MACAddress("00:16:3E:F6:BB:B3")?.description == "00:16:3e:f6:bb:b3")
        #expect(MACAddress("00-16-3e-00-00-01") != nil)
        for bad in ["00:16:3e:00:00", "00:16:3e:00:00:001", "0:16:3e:00:00:01", "00:16:3e:00:00:0g", ""] {
            #expect(MACAddress(bad) == nil, "\(bad)")
        }
        var g = SeededGenerator(state: 1)
        for _ in 0..<100 {
            let m = MACAddress.random(using: &g)
            #expect(m.isUnicast && m.octets[0...2] == [0, 0x16, 0x3e] && m.octets[3] < 0x80)
        }
        #expect(VifRate("1Mb/s").map { [$0.bytesPerInterval, $0.intervalMicroseconds] } == [6250, 50_000])
        #expect(VifRate("10MB/s@20ms").map { [$0.bytesPerInterval, $0.intervalMicroseconds] } == [200_000, 20_000])
        #expect(VifRate("100KB/s@1s").map { [$0.bytesPerInterval, $0.intervalMicroseconds] } == [100_000, 1_000_000])
        #expect(VifRate("8b/s@500us") == nil) // rounds to 0 bytes per interval
        #expect(VifRate("10MB/s@") == nil && VifRate("fast") == nil && VifRate("100GB/s@10s") == nil)
    }
}

@Suite struct DomainSXPTests {
    @Test func xmCreateDryRunShape() throws {
        var g = SeededGenerator(state: 7)
        let text = """
        name = "ExampleDomain"
        kernel = "/boot/vmlinuz"
        ramdisk = "/boot/initrd.img"
        memory = 64
        vcpus = 2
        root = "/dev/xvda1 ro"
        extra = "quiet"
        ip = "192.0.2.10"
        disk = ['phy:/dev/vg0/g,xvda1,w', 'file:/srv/d.img,xvdb,r']
        vif = ['mac=00:16:3e:00:00:01, bridge=xenbr0']
        """
        let c = try DomainConfiguration(parsing: text, file: "x.cfg", using: &g)
        let expected = """
        (vm
            (name ExampleDomain)
            (memory 64)
            (on_poweroff destroy)
            (on_reboot restart)
            (on_crash restart)
            (vcpus 2)
            (image
                (linux
                    (kernel /boot/vmlinuz)
                    (ramdisk /boot/initrd.img)
                    (ip 192.0.2.10:::::eth0:off)
                    (root '/dev/xvda1 ro')
                    (args quiet)
                )
            )
            (device (vbd (uname phy:/dev/vg0/g) (dev xvda1) (mode w)))
            (device (vbd (uname file:/srv/d.img) (dev xvdb) (mode r)))
            (device (vif (mac 00:16:3e:00:00:01) (bridge xenbr0)))
        )
        """
        #expect(c.toSXP().prettyPrinted() == expected)
    }

    @Test(arguments: ["example1.cfg", "myvmconf", "hvm.cfg", "allkeys.cfg", "xl-style.cfg", "pygrub.cfg", "xmvars.cfg",
                      "scripted.cfg"])
    func roundTripThroughSXP(_ file: String) throws {
        var g = SeededGenerator(state: 3)
        let c = try DomainConfiguration(parsing: Corpus.read(Corpus.root + "/good/" + file), file: file,
                                        arguments: ["myvmconf", "xmvars.cfg", "scripted.cfg"].contains(file) ? ["vmid=2"] : [],
                                        using: &g)
        let sxp = c.toSXP()
        let printed = sxp.prettyPrinted()
        let back = try DomainConfiguration(sxp: SXP.parse(printed))
        #expect(back.toSXP() == sxp, "\(printed)")
        #expect(back.kernelCommandLine == c.kernelCommandLine)
        #expect(back.disks == c.disks)
        #expect(back.vifs.map(\.mac) == c.vifs.map(\.mac))
    }
}

/// An SXP configuration reaches xend without xm's checks (the HTTP API): memory, maxmem and
/// vcpus out of xm's ranges are refused there too, naming the key (a negative memory used to
/// trap in xend's arithmetic).
@Test func sxpOutOfRangeNumbersAreRefused() {
    for (form, key) in [("(memory -5)", "memory"), ("(memory 32) (maxmem -1)", "maxmem"),
                        ("(memory 9223372036854775807)", "memory"), ("(memory 32) (vcpus 100000)", "vcpus"),
                        ("(memory 32) (vcpus 0)", "vcpus")] {
        do {
            _ = try DomainConfiguration(sxp: SXP.parse("(vm (name x) \(form))"))
            Issue.record("accepted \(form)")
        } catch {
            #expect(error.description.contains(key) && error.description.contains("out of range"), "\(form): \(error)")
        }
    }
}
