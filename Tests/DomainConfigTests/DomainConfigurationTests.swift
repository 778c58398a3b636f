import Testing
@testable import DomainConfig

@Suite struct DomainConfigurationTests {
    func load(_ name: String, _ args: [String] = []) throws -> DomainConfiguration {
        let path = Corpus.root + "/good/" + name
        var g = SeededGenerator(state: 42)
        return try DomainConfiguration(parsing: Corpus.read(path), file: name, arguments: args, using: &g)
    }

    @Test func example1() throws {
        let c = try load("example1.cfg")
        #expect(c.name == "ExampleDomain" && c.memory == 64 && c.vcpus == 2)
        #expect(c.kernel == "/boot/vmlinuz-2.6-xenU" && c.ramdisk == "/boot/initrd-2.6-xenU.img")
        #expect(c.builder == .linux && c.engine == .auto)
        #expect(c.vifs.count == 1 && c.vifs[0].mac.description == "00:16:3e:f6:bb:b3" && !c.vifs[0].macGenerated)
        #expect(c.vifs[0].bridge == "xenbr0")
        #expect(c.disks == [DiskSpec(kind: .phy, target: "hda1", vdev: "sda1", access: .readWrite)])
        #expect(c.disks[0].path == "/dev/hda1")
        #expect(c.onPoweroff == .destroy && c.onReboot == .restart && c.onCrash == .preserve)
        #expect(c.kernelCommandLine ==
            "root=/dev/sda1 ro ip=192.0.2.10::192.0.2.1:255.255.255.0:vm01:eth0:off 4 console=ttyS0")
        #expect(c.warnings.isEmpty)
    }

    @Test func myvmconfWithVmidFromTheCommandLine() throws {
        let c = try load("myvmconf", ["vmid=3"])
        #expect(c.name == "VM3" && c.memory == 64 && c.vcpus == 4)
        #expect(c.disks.map(\.uname) == ["phy:sda10", "phy:sda6"])
        #expect(c.disks.map(\.vdev) == ["sda1", "sda6"])
        #expect(c.disks.map(\.access) == [.readWrite, .readOnly])
        #expect(c.vifs[0].mac.description == "00:16:3e:00:00:03")
        #expect(c.dhcp)
        #expect(c.extra == "4 VMID=3 usr=/dev/sda6")
        #expect(c.kernelCommandLine == "root=/dev/sda1 ro ip=dhcp 4 VMID=3 usr=/dev/sda6 console=ttyS0")
        // Without vmid= the file's own default applies.
        #expect(try load("myvmconf").name == "VM1")
        // A known key on the command line wins over the file.
        let big = try load("myvmconf", ["vmid=2", "memory=512", "name=override"])
        #expect(big.memory == 512 && big.name == "override" && big.disks[0].uname == "phy:sda9")
    }

    @Test func hvmExample() throws {
        let c = try load("hvm.cfg")
        #expect(c.builder == .hvm && c.engine == .qemu && c.memory == 256)
        #expect(c.kernel == "/usr/lib/xen/boot/hvmloader")
        let h = c.hvm
        #expect(h.boot == "dc" && h.cdrom == "/dev/cdrom" && h.keymap == "en-us")
        #expect(h.vnc && !h.sdl && h.vncdisplay == 3 && !h.vncunused && h.vnclisten == "127.0.0.1" && !h.vncviewer)
        #expect(h.serial == "pty" && h.acpi && h.apic && h.pae && h.localtime && !h.nographic)
        #expect(!h.ne2000 && !h.stdvga && h.usb && h.usbdevice == "tablet")
        #expect(h.deviceModel == "/usr/lib/xen/bin/qemu-dm")
        #expect(c.disks.count == 3)
        #expect(c.disks[0] == DiskSpec(kind: .file, target: "/var/images/min-el3-i386.img", vdev: "hda", ioemu: true))
        #expect(c.disks[0].dev == "ioemu:hda")
        #expect(c.disks[1].kind == .phy && c.disks[1].vdev == "hdb1")
        #expect(c.disks[2].deviceType == .cdrom && c.disks[2].access == .readOnly && c.disks[2].dev == "hdc:cdrom")
        #expect(c.vifs[0].type == "ioemu" && c.vifs[0].model == "rtl8139" && c.vifs[0].macGenerated)
    }

    @Test func everyOtherKey() throws {
        let c = try load("allkeys.cfg")
        #expect(c.name == "guest-8")
        #expect(c.uuid == "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9")
        #expect(c.memory == 256 && c.maxmem == 512 && c.vcpus == 2 && c.cpus == "0-3,^1")
        #expect(c.root == "root=/dev/xvda1 ro" && c.extra == "quiet loglevel=3")
        #expect(c.interface == "eth1" && !c.dhcp && c.nfsServer == "192.0.2.2" && c.nfsRoot == "/export/root")
        #expect(c.onPoweroff == .preserve && c.onReboot == .renameRestart && c.onCrash == .destroy)
        #expect(c.engine == .core)
        #expect(c.kernelCommandLine == "root=/dev/xvda1 ro ip=192.0.2.20:192.0.2.2:192.0.2.1:255.255.255.0:allkeys:eth1:off "
                + "nfsroot=192.0.2.2:/export/root quiet loglevel=3 console=ttyS0")
        let d = c.disks
        #expect(d.count == 8)
        #expect(d[0].uname == "phy:/dev/vg0/root" && d[0].vdev == "xvda1")
        #expect(d[1].kind == .file && d[1].access == .readOnly)
        #expect(d[2].kind == .file && d[2].target == "/srv/aio.img" && d[2].access == .readWriteShared && d[2].uname == "file:/srv/aio.img")
        #expect(d[3].format == "qcow2" && d[3].uname == "tap:qcow2:/srv/q.qcow2")
        #expect(d[4].target == "/srv/with,comma.img" && d[4].vdev == "xvde" && d[4].access == .readOnly && d[4].kind == .file)
        #expect(d[5].kind == .phy && d[5].vdev == "xvdf" && d[5].access == .readWrite)
        #expect(d[6].deviceType == .cdrom && d[6].access == .readOnly && d[6].vdev == "hdc")
        #expect(d[7].backend == "driverdom")
        let v = c.vifs
        #expect(v.count == 3) // nics = 3 pads with a default vif
        #expect(v[0].mac.description == "00:16:3e:0a:0b:0c" && v[0].bridge == "xenbr1" && v[0].ip == "192.0.2.20")
        #expect(v[0].script == "vif-route" && v[0].vifname == "guest0")
        #expect(v[0].rate?.bytesPerInterval == 200_000 && v[0].rate?.intervalMicroseconds == 20_000)
        #expect(v[1].rate?.bytesPerInterval == 6250 && v[1].rate?.intervalMicroseconds == 50_000)
        #expect(v[1].backend == "netdom" && v[1].model == "virtio" && v[1].type == "vif" && v[1].macGenerated)
        for m in v.filter(\.macGenerated).map(\.mac) {
            #expect(Array(m.octets.prefix(3)) == [0x00, 0x16, 0x3e] && m.octets[3] < 0x80 && m.isUnicast)
        }
        #expect(c.cpuWeight == 256)
        #expect(c.warnings.map(\.description) == [
            "allkeys.cfg:45: warning: key 'ssidref': accepted by xm, ignored by Xenith",
        ])
    }

    @Test func xlStyle() throws {
        let c = try load("xl-style.cfg")
        #expect(c.kernelCommandLine == "root=/dev/xvda1 ro console=hvc0")
        #expect(c.disks[0] == DiskSpec(kind: .file, target: "/srv/xl.img", vdev: "xvda", access: .readWrite))
        #expect(c.disks[1].deviceType == .cdrom && c.disks[1].access == .readOnly && c.disks[1].target == "/srv/install.iso")
        #expect(c.vifs.count == 1 && c.vifs[0].macGenerated)
    }

    @Test func bootloaderNeedsNoKernel() throws {
        let c = try load("pygrub.cfg")
        #expect(c.kernel == nil && c.bootloader == "/usr/bin/pygrub" && c.bootloaderArgs == "--entry=1")
    }

    /// Every broken file, the exact message prefix it must produce.
    static let broken: [(file: String, expected: String)] = [
        ("unterminated-string.cfg", "unterminated-string.cfg:3: key 'name': unterminated string"),
        ("unknown-key.cfg", "unknown-key.cfg:4: key 'memroy': unknown key"),
        ("bad-disk.cfg", "bad-disk.cfg:5: key 'disk': bad disk spec: bad access mode 'x'"),
        ("duplicate-vdev.cfg", "duplicate-vdev.cfg:4: key 'disk': duplicate vdev 'xvda' (already used at line 3)"),
        ("bad-mac.cfg", "bad-mac.cfg:4: key 'vif': bad vif spec: bad MAC address '00:16:3e:zz:00:01'"),
        ("multicast-mac.cfg", "multicast-mac.cfg:3: key 'vif': bad vif spec: MAC address '01:16:3e:00:00:01' is multicast"),
        ("memory-text.cfg", "memory-text.cfg:3: key 'memory': expected an integer (MiB), found text '256MB'"),
        ("unsupported-import.cfg", "unsupported-import.cfg:2: unsupported Python: 'import' statement"),
        // `os` is never there: nothing can be imported.
        ("unsupported-attribute.cfg", "unsupported-attribute.cfg:2: key 'kernel': unsupported Python: module 'os'"),
        ("unsupported-call.cfg", "unsupported-call.cfg:3: key 'memory': unsupported Python: eval()"),
        ("unsupported-open.cfg", "unsupported-open.cfg:2: key 'kernel': unsupported Python: open()"),
        // Conditional expressions came with Python 2.5; Xen 3.0's configs never had them.
        ("unsupported-if.cfg", "unsupported-if.cfg:3: key 'memory': unsupported Python: conditional expression"),
        ("unsupported-lambda.cfg", "unsupported-lambda.cfg:1: key 'vmid_check': unsupported Python: lambda"),
        ("bad-indent.cfg", "bad-indent.cfg:4: syntax error: unindent does not match any outer indentation level"),
        ("check-fails.cfg", "check-fails.cfg:2: key 'vmid': TypeError: int() argument must be a string or a number, not 'NoneType' (vmid is not set"),
        ("while-forever.cfg", "while-forever.cfg:4: 'while' loop still running after 100000 iterations"),
        ("recursion.cfg", "recursion.cfg:4: key 'memory': recursion too deep: more than 50 nested calls (calling size())"),
        ("huge-loop.cfg", "huge-loop.cfg:6: key 'extra': the file built more than 256 MiB of strings and lists in all"),
        ("unsupported-augmented.cfg", "unsupported-augmented.cfg:4: unsupported Python: augmented assignment '+='"),
        ("missing-name.cfg", "missing-name.cfg:1: key 'name': missing"),
        ("missing-kernel.cfg", "missing-kernel.cfg:3: key 'kernel': missing: the linux builder needs a kernel"),
        ("vcpus-zero.cfg", "vcpus-zero.cfg:3: key 'vcpus': vcpus must be at least 1"),
        ("undefined-variable.cfg", "undefined-variable.cfg:1: key 'name': name 'vmid' is not defined"),
        ("bad-on-crash.cfg", "bad-on-crash.cfg:3: key 'on_crash': expected one of destroy, restart, preserve, rename-restart, found 'reboot'"),
        ("bad-rate.cfg", "bad-rate.cfg:3: key 'vif': bad vif spec: bad rate '10 MB/s'"),
        ("format-type.cfg", "format-type.cfg:3: key 'disk': %d format: a number is required, not str"),
        ("unclosed-list.cfg", "unclosed-list.cfg:3: key 'disk': '[' opened at line 3 is never closed"),
        ("bad-vif-key.cfg", "bad-vif-key.cfg:3: key 'vif': bad vif spec: unknown vif parameter 'brdge'"),
        ("bad-uuid.cfg", "bad-uuid.cfg:3: key 'uuid': bad UUID 'not-a-uuid'"),
        ("maxmem-below-memory.cfg", "maxmem-below-memory.cfg:4: key 'maxmem': maxmem (256 MiB) is less than memory (512 MiB)"),
    ]

    /// Broken files that loop or allocate until the evaluator's budget stops them.
    static let exhaustBudget: Set<String> = ["while-forever.cfg", "huge-loop.cfg"]

    @Test(arguments: DomainConfigurationTests.broken.map(\.file))
    func brokenFileIsRefusedWithFileLineAndKey(_ file: String) throws {
        let expected = Self.broken.first { $0.file == file }!.expected
        let text = try Corpus.read(Corpus.root + "/bad/" + file)
        do {
            let c = try DomainConfiguration(parsing: text, file: file)
            Issue.record("\(file) was accepted: \(c.name)")
        } catch {
            #expect(error.description.hasPrefix(expected), "got: \(error.description)")
        }
    }

    @Test func everyBrokenFileHasAnExpectation() {
        #expect(Corpus.list("bad") == Self.broken.map(\.file).sorted())
    }

    @Test func commandLineArgumentErrors() {
        #expect(throws: ConfigError(file: "<command line>", line: 2, message: "expected KEY=VALUE, found 'oops'")) {
            _ = try DomainConfiguration(parsing: "name='x'\nkernel='/k'", arguments: ["vmid=1", "oops"])
        }
        do {
            _ = try DomainConfiguration(parsing: "name='x'\nkernel='/k'", arguments: ["memory=lots"])
            Issue.record("accepted memory=lots")
        } catch {
            #expect(error.description == "<command line>:1: key 'memory': expected an integer (MiB), found text 'lots'")
        }
        let c = try? DomainConfiguration(parsing: "name='x'\nkernel='/k'", overrides: ["vmid": "4"])
        #expect(c?.warnings.map(\.message) == ["set on the command line but not used by the file"])
    }

    @Test func expressionSubset() throws {
        let text = """
        a = 6
        b = (a + 1) * 2 - 10 // 3 % 4      # 14 - 3 = 11
        name = "%s-%03d-%x-%-3s|%5s|%%" % ('n', b, 255, 'ab', "r")
        kernel = '/boot/' 'vmlinuz' + "-" + str_part if False else '/k'
        """
        // The conditional expression is refused...
        #expect(throws: ConfigError.self) { _ = try DomainConfiguration(parsing: text) }
        let ok = text.replacingOccurrences(of: " if False else '/k'", with: "") + "\nstr_part = 'x'\n"
        // ...and a name used before it is bound is undefined, as in Python.
        do { _ = try DomainConfiguration(parsing: ok, file: "e.cfg"); Issue.record("accepted") } catch {
            #expect(error.description == "e.cfg:4: key 'kernel': name 'str_part' is not defined (set it earlier in the file or as str_part=VALUE on the command line)")
        }
        let good = "str_part = 'x'\n" + text.replacingOccurrences(of: " if False else '/k'", with: "")
        let c = try DomainConfiguration(parsing: good)
        #expect(c.name == "n-011-ff-ab |    r|%")
        #expect(c.kernel == "/boot/vmlinuz-x")
    }

    @Test func measureCorpusParseTime() throws {
        let clock = ContinuousClock()
        var files = 0
        var good: [(String, String)] = []
        for f in Corpus.list("good") { good.append((f, try Corpus.read(Corpus.root + "/good/" + f))) }
        var bad: [(String, String)] = []
        // Files that run into the evaluation budget on purpose cost their budget (about half a
        // second each in a debug build) every round; brokenFileIsRefusedWithFileLineAndKey runs them.
        for f in Corpus.list("bad") where !Self.exhaustBudget.contains(f) {
            bad.append((f, try Corpus.read(Corpus.root + "/bad/" + f)))
        }
        let rounds = 50
        let elapsed = clock.measure {
            for _ in 0..<rounds {
                for (f, t) in good { _ = try? DomainConfiguration(parsing: t, file: f, arguments: ["vmid=1"]); files += 1 }
                for (f, t) in bad { _ = try? DomainConfiguration(parsing: t, file: f); files += 1 }
            }
        }
        print("corpus parse time: \(files) files (\(good.count) good + \(bad.count) broken, \(rounds) rounds) in \(elapsed); "
              + "\(elapsed / files) per file")
        #expect(files == rounds * (good.count + bad.count))
    }
}

extension String {
    func replacingOccurrences(of a: String, with b: String) -> String {
        var out = ""
        var rest = Substring(self)
        while let r = rest.firstRange(of: a) {
            out += rest[..<r.lowerBound] + b
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}
