// xm block-attach / block-detach / block-list end to end on the qemu engine (the test guest
// reports what its kernel sees on the console), the core engine's refusal, and a reboot
// keeping what block-attach and network-attach added.
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized) struct BlockHotplugTests {
    /// A sparse image of `mib` MiB, its first bytes `mark` (when given).
    static func image(_ path: String, mib: Int, mark: String? = nil) throws {
        _ = FileManager.default.createFile(atPath: path, contents: mark.map { Data($0.utf8) })
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try h.truncate(atOffset: UInt64(mib) << 20)
        try h.close()
    }

    static func config(_ x: NamespacedXend, _ name: String, disk: String, script: String, paused: Bool = false) throws -> String {
        try x.write("\(name).cfg", """
            kernel = "\(QemuEnv.guestDir)/vmlinuz"
            ramdisk = "\(QemuEnv.guestDir)/initrd.img"
            memory = \(paused ? 64 : 192)
            vcpus = 1
            name = "\(name)"
            engine = "qemu"
            disk = ['file:\(disk),xvda,w']
            extra = "quiet cryptomgr.notests panic=-1 \(QemuEnv.tscFlag)xenith.run=\(script.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)"
            on_poweroff = "destroy"
            """)
    }

    /// Whether `path` can be locked exclusively (no blkback holds it).
    static func unlocked(_ path: String) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return flock(fd, LOCK_EX | LOCK_NB) == 0
    }

    /// Attach a file image as xvdb: the guest sees /dev/vdb and writes to it, the bytes land
    /// in the image, block-list shows it in Xen's format; bad input is refused with nothing
    /// left; detach takes it out of the guest, stops its blkback and frees the image.
    @Test func attachWriteListDetachAndBadInput() throws {
        if skip(NetbackNamespace.unavailable ?? QemuEnv.unavailable) { return }
        let ns = try NetbackNamespace("blkhp-a")
        let x = try NamespacedXend(ns, tag: "blkhp-a")
        defer { x.shutdown(); try? FileManager.default.removeItem(atPath: x.root) }
        let img0 = x.root + "/d0.img", img1 = x.root + "/d1.img", imgO = x.root + "/o.img"
        try Self.image(img0, mib: 8); try Self.image(img1, mib: 4); try Self.image(imgO, mib: 4)
        // The other domain, writing imgO (paused: it only has to hold the image).
        let o = try x.xm(["create", "-p", try Self.config(x, "blkhp-o", disk: imgO, script: "sleep 600", paused: true)])
        #expect(o.status == 0, "\(o.stderr)")
        let script = "echo XENITH-UP; until [ -b /dev/vdb ]; do sleep 0.2; done; echo XENITH-VDB-SEEN $(cat /sys/block/vdb/size); "
            + "printf XENITH-BLOCK-DATA-42 > /tmp/m; dd if=/tmp/m of=/dev/vdb conv=fsync 2>/dev/null && echo XENITH-VDB-WRITTEN; "
            + "while [ -b /dev/vdb ]; do sleep 0.2; done; echo XENITH-VDB-GONE; sleep 600"
        let c = try x.xm(["create", try Self.config(x, "blkhp-d", disk: img0, script: script)])
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 && o.status == 0 else { return }
        let domid = try x.xm(["domid", "blkhp-d"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(NamespacedXend.waitUntil(60) { x.consoleLog("blkhp-d").contains("XENITH-UP") }, "\(x.consoleLog("blkhp-d").suffix(800))")
        #expect(x.backendPids("blkback").count == 2)

        let t0 = Date()
        let a = try x.xm(["block-attach", "blkhp-d", "file:\(img1)", "xvdb", "w"])
        #expect(a.status == 0 && a.stdout.isEmpty, "\(a.stdout)\(a.stderr)")
        #expect(NamespacedXend.waitUntil(30) { x.consoleLog("blkhp-d").contains("XENITH-VDB-WRITTEN") }, "\(x.consoleLog("blkhp-d").suffix(800))")
        print("block-attach to guest write: \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        #expect(x.consoleLog("blkhp-d").contains("XENITH-VDB-SEEN 8192"), "4 MiB = 8192 sectors: \(x.consoleLog("blkhp-d").suffix(400))")
        let head = (try? Data(contentsOf: URL(fileURLWithPath: img1)))?.prefix(20)
        #expect(head.map { String(decoding: $0, as: UTF8.self) } == "XENITH-BLOCK-DATA-42", "the guest's bytes are in the image")
        #expect(x.backendPids("blkback").count == 3)
        #expect(!Self.unlocked(img1), "blkback holds the image lock")

        let be = "/local/domain/0/backend/vbd/\(domid)"
        let l = try x.xm(["block-list", "blkhp-d"])
        let rows = l.stdout.split(separator: "\n").map(String.init)
        #expect(rows.first == "Vdev  BE handle state evt-ch ring-ref BE-path", "\(l.stdout)\(l.stderr)")
        #expect(rows.count == 3 && rows[1] == "51712    0    0     4      -1     -1    \(be)/51712  ", "\(rows)")
        #expect(rows.count == 3 && rows[2] == "51728    0    0     4      -1     -1    \(be)/51728  ", "\(rows)")
        let ll = try x.xm(["block-list", "-l", "blkhp-d"]).stdout
        #expect(ll.contains("(51728\n    (vbd") && ll.contains("(uname file:\(img1))") && ll.contains("(mode w)"), "\(ll)")
        #expect(x.xsRead(be + "/51728/state") == "4" && x.xsRead(be + "/51728/params") == img1)
        let stored = try x.xm(["list", "-l", "blkhp-d"]).stdout
        #expect(stored.contains(img1) && stored.contains("(hotplug-port hpnet0)"), "the disk is in the stored configuration, with its slot: \(stored)")

        // Bad input: refused, naming the reason; no blkback, socket or xenstore entry left.
        func refused(_ args: [String], _ text: String) throws {
            let r = try x.xm(["block-attach", "blkhp-d"] + args)
            #expect(r.status != 0 && r.stderr.contains(text), "\(args): \(r.stderr)")
            #expect(x.backendPids("blkback").count == 3, "\(args): no blkback left")
            let socks = (try? FileManager.default.contentsOfDirectory(atPath: x.root + "/run/xenith")) ?? []
            #expect(socks.filter { $0.hasPrefix("blkback-\(domid)-") }.sorted() == ["blkback-\(domid)-xvda.sock", "blkback-\(domid)-xvdb.sock"], "\(socks)")
            #expect(x.xsList(be).sorted() == ["51712", "51728"], "\(x.xsList(be))")
        }
        try refused(["file:\(imgO)", "xvdc", "w"], "\(imgO) is already in use by domain blkhp-o (read-write)")
        try refused(["file:\(img0)", "xvdc", "r"], "\(img0) is already in use by domain blkhp-d (read-write)")
        try refused(["file:\(x.root)/d2.img", "xvda", "w"], "Device xvda (51712) is already connected")
        try refused(["file:\(x.root)/missing.img", "xvdc", "w"], "\(x.root)/missing.img: No such file or directory")
        try refused(["file:\(x.root)", "xvdc", "w"], "is a directory")
        try refused(["file:\(img1)", "xvdc", "x"], "Invalid mode 'x'")

        // Detach: out of the guest, blkback gone, image free, xenstore and configuration clean.
        let t1 = Date()
        let d = try x.xm(["block-detach", "blkhp-d", "51728"], timeout: 40)
        #expect(d.status == 0, "\(d.stderr)")
        print("block-detach: \(String(format: "%.1f", Date().timeIntervalSince(t1))) s")
        #expect(NamespacedXend.waitUntil(10) { x.consoleLog("blkhp-d").contains("XENITH-VDB-GONE") }, "\(x.consoleLog("blkhp-d").suffix(600))")
        #expect(NamespacedXend.waitUntil(5) { x.backendPids("blkback").count == 2 }, "its blkback exited")
        #expect(!FileManager.default.fileExists(atPath: x.root + "/run/xenith/blkback-\(domid)-xvdb.sock"))
        #expect(Self.unlocked(img1), "the image lock is released")
        #expect(x.xsList(be) == ["51712"], "\(x.xsList(be))")
        #expect(!(try x.xm(["block-list", "blkhp-d"]).stdout.contains("51728")))
        #expect(!(try x.xm(["list", "-l", "blkhp-d"]).stdout.contains(img1)))
        // -f: no wait for the guest; blkback, lock and entries go all the same.
        #expect(try x.xm(["block-attach", "blkhp-d", "file:\(img1)", "xvdc", "r"]).status == 0)
        #expect(x.backendPids("blkback").count == 3 && x.xsList(be).sorted() == ["51712", "51744"])
        let f = try x.xm(["block-detach", "-f", "blkhp-d", "xvdc"], timeout: 40)
        #expect(f.status == 0, "\(f.stderr)")
        #expect(NamespacedXend.waitUntil(5) { x.backendPids("blkback").count == 2 } && x.xsList(be) == ["51712"] && Self.unlocked(img1))
        let again = try x.xm(["block-detach", "blkhp-d", "xvdb"])
        #expect(again.status != 0 && again.stderr.contains("Device xvdb not connected"), "\(again.stderr)")
        // A disk the domain was started with sits on the root bus: refused, still served.
        let root = try x.xm(["block-detach", "blkhp-d", "xvda"], timeout: 40)
        #expect(root.status != 0 && root.stderr.contains("root PCI bus"), "\(root.stderr)")
        #expect(x.backendPids("blkback").count == 2)
        #expect(try x.xm(["destroy", "blkhp-d"], timeout: 30).status == 0)
        #expect(try x.xm(["destroy", "blkhp-o"], timeout: 30).status == 0)
        #expect(NamespacedXend.waitUntil(5) { x.backendPids("blkback").isEmpty })
    }

    /// What block-attach and network-attach added stays in the domain's configuration: after
    /// a reboot (a new QEMU started from the stored configuration) the guest has both again,
    /// in the root ports they went into; save and restore keep them there (the guest's state
    /// loads and it runs on), and they can still be detached.
    @Test func rebootKeepsAttachedDiskAndNic() throws {
        if skip(NetbackNamespace.unavailable ?? QemuEnv.unavailable) { return }
        let ns = try NetbackNamespace("blkhp-r")
        let x = try NamespacedXend(ns, tag: "blkhp-r")
        defer { x.shutdown(); try? FileManager.default.removeItem(atPath: x.root) }
        let img0 = x.root + "/r0.img", img1 = x.root + "/r1.img"
        try Self.image(img0, mib: 8); try Self.image(img1, mib: 4, mark: "XENITH-R1-MARK")
        // Each boot reports the disk's first bytes and eth0's MAC once both are there; the
        // first boot then marks xvda and reboots (QEMU ends, xend starts the domain again
        // from its stored configuration: on_reboot = restart); the second stays up.
        let script = "echo XENITH-BOOT; until [ -b /dev/vdb ] && [ -e /sys/class/net/eth0 ]; do sleep 0.2; done; "
            + "echo XENITH-VDB $(head -c 14 /dev/vdb); echo XENITH-ETH0 $(cat /sys/class/net/eth0/address); "
            + "if [ \"$(head -c 6 /dev/vda)\" != BOOTED ]; then printf BOOTED > /tmp/b; dd if=/tmp/b of=/dev/vda conv=fsync 2>/dev/null; "
            + "echo XENITH-REBOOTING; reboot -f; fi; "
            + "i=0; while true; do echo 3 > /proc/sys/vm/drop_caches; echo XENITH-TICK $i $(head -c 14 /dev/vdb 2>/dev/null); i=$((i+1)); sleep 1; done"
        let c = try x.xm(["create", try Self.config(x, "blkhp-r", disk: img0, script: script)])
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        let log = { x.consoleLog("blkhp-r") }
        func count(_ s: String) -> Int { log().components(separatedBy: s).count - 1 }
        #expect(NamespacedXend.waitUntil(60) { count("XENITH-BOOT") == 1 }, "\(log().suffix(600))")
        #expect(try x.xm(["block-attach", "blkhp-r", "phy:\(img1)", "xvdb", "r"]).stderr.contains("not a block device"))
        let a = try x.xm(["block-attach", "blkhp-r", "file:\(img1)", "xvdb", "r"])
        #expect(a.status == 0, "\(a.stderr)")
        let n = try x.xm(["network-attach", "blkhp-r", "mac=00:16:3e:bb:00:01", "bridge=xenbr0"])
        #expect(n.status == 0, "\(n.stderr)")
        let id1 = try x.xm(["domid", "blkhp-r"]).stdout
        let t0 = Date()
        #expect(NamespacedXend.waitUntil(30) { count("XENITH-REBOOTING") == 1 }, "\(log().suffix(600))")
        #expect(count("XENITH-VDB XENITH-R1-MARK") == 1 && count("XENITH-ETH0 00:16:3e:bb:00:01") == 1, "\(log().suffix(600))")
        #expect(NamespacedXend.waitUntil(60) { count("XENITH-VDB XENITH-R1-MARK") == 2 && count("XENITH-ETH0 00:16:3e:bb:00:01") == 2 },
                "after the reboot: \(log().suffix(800))")
        print("reboot to both devices back: \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        #expect(try x.xm(["domid", "blkhp-r"]).stdout != id1, "a new domain")
        #expect(try x.xm(["dmesg"]).stdout.contains("has shut down (reboot"))
        #expect(count("XENITH-BOOT") == 2)
        #expect(try x.xm(["block-list", "blkhp-r"]).stdout.contains("51728"))
        #expect(try x.xm(["network-list", "blkhp-r"]).stdout.contains("00:16:3e:bb:00:01"))
        #expect(x.backendPids("blkback").count == 2 && x.netbackPids().count == 1)

        // Save and restore: the new QEMU has both devices in the ports the state expects.
        let chk = x.root + "/r.chk"
        let sv = try x.xm(["save", "blkhp-r", chk], timeout: 120)
        #expect(sv.status == 0, "\(sv.stderr)")
        guard sv.status == 0 else { return }
        let rs = try x.xm(["restore", chk], timeout: 120)
        #expect(rs.status == 0, "\(rs.stderr)")
        let st = try x.xm(["list", "blkhp-r"]).stdout
        #expect(st.contains("r-----") || st.contains("-b----"), "running again: \(st)")
        // The guest runs on (no third boot), reading the attached disk through the new blkback.
        func ticks() -> [(Int, String)] {
            completeValues(log(), after: "XENITH-TICK ").map { v in
                let f = v.split(separator: " ", maxSplits: 1)
                return (Int(f.first ?? "") ?? -1, f.count > 1 ? String(f[1]) : "")
            }
        }
        let lastBefore = ticks().last?.0 ?? -1
        #expect(NamespacedXend.waitUntil(30) { ticks().contains { $0.0 > lastBefore + 2 && $0.1 == "XENITH-R1-MARK" } },
                "after the restore: \(log().suffix(600))")
        #expect(count("XENITH-BOOT") == 2, "no new boot")
        #expect(x.backendPids("blkback").count == 2 && x.netbackPids().count == 1)
        // Detached after the restore (in its root port, not on the root complex).
        let dd = try x.xm(["block-detach", "blkhp-r", "xvdb"], timeout: 40)
        #expect(dd.status == 0, "\(dd.stderr)")
        let nd = try x.xm(["network-detach", "blkhp-r", "0"], timeout: 40)
        #expect(nd.status == 0, "\(nd.stderr)")
        #expect(NamespacedXend.waitUntil(5) { x.backendPids("blkback").count == 1 && x.netbackPids().isEmpty })
        #expect(!(try x.xm(["list", "-l", "blkhp-r"]).stdout.contains("hotplug-port")))
        #expect(try x.xm(["destroy", "blkhp-r"], timeout: 30).status == 0)
    }

    /// The core engine cannot hot-plug disks: refused before anything is made.
    @Test func coreEngineRefuses() throws {
        if skip(NetbackNamespace.unavailable ?? Env.kvmUnavailable) { return }
        let ns = try NetbackNamespace("blkhp-c")
        let x = try NamespacedXend(ns, tag: "blkhp-c")
        defer { x.shutdown(); try? FileManager.default.removeItem(atPath: x.root) }
        let img = x.root + "/c.img"
        try Self.image(img, mib: 1)
        let cfg = try x.write("c.cfg", "kernel = \"\(Env.fixture("pvh.elf"))\"\nmemory = 32\nname = \"blkhp-c\"\nextra = \"t\"\nengine = \"core\"\n")
        let c = try x.xm(["create", cfg])
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        let a = try x.xm(["block-attach", "blkhp-c", "file:\(img)", "xvdb", "w"])
        #expect(a.status != 0 && a.stderr.contains("the core engine cannot hot-plug block devices"), "\(a.stderr)")
        #expect(x.backendPids("blkback").isEmpty && Self.unlocked(img))
        let d = try x.xm(["block-detach", "blkhp-c", "xvdb"])
        #expect(d.status != 0 && d.stderr.contains("Device xvdb not connected"), "\(d.stderr)")
        #expect(try x.xm(["destroy", "blkhp-c"], timeout: 30).status == 0)
    }
}
