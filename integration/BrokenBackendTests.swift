// A back-end xend gives up on (it died 5 times in 30 s) must not take its domain with it:
// the domain runs on without that device, and QMP, the console and `xm` keep working.
import Foundation
import Testing

@Suite(.serialized) struct BrokenBackendTests {
    @Test func aBrokenVifLeavesTheQemuDomainRunning() throws {
        if skip(NetbackNamespace.unavailable ?? QemuEnv.unavailable) { return }
        let ns = try NetbackNamespace("vifb")
        let x = try NamespacedXend(ns, tag: "broken")
        defer { x.shutdown() }
        let g = QemuEnv.guestDir
        let script = "i=0;%20while%20true;%20do%20i=$((i+1));%20echo%20XENITH-TICK%20$i;%20sleep%200.5;%20done"
        let cfg = try x.write("b1.cfg", """
            kernel = "\(g)/vmlinuz"
            ramdisk = "\(g)/initrd.img"
            memory = 256
            name = "b1"
            engine = "qemu"
            vif = ['mac=00:16:3e:0e:00:01, bridge=xenbr0']
            extra = "quiet cryptomgr.notests panic=-1 \(QemuEnv.tscFlag)xenith.run=\(script)"
            """)
        let c = try x.xm(["create", cfg])
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        #expect(NamespacedXend.waitUntil(120) { x.consoleLog("b1").contains("XENITH-TICK 3") })
        // Kill netback whenever it is back, until xend gives up on it.
        let xendLog = { readText(x.root + "/var/log/xen/xend.log") }
        var kills = 0
        _ = NamespacedXend.waitUntil(60) {
            if xendLog().contains("vif marked broken") { return true }
            for p in x.netbackPids() { kill(p, SIGKILL); kills += 1 }
            return false
        }
        #expect(xendLog().contains("vif marked broken"), "after \(kills) kills: \(xendLog().suffix(800))")
        let domid = try x.xm(["domid", "b1"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!FileManager.default.fileExists(atPath: x.root + "/run/xenith/netback-\(domid)-0.sock"), "the unserved socket is removed")
        // QEMU keeps answering (its reconnect finds no socket instead of an unserved queue),
        // and the guest keeps running.
        sleep(3)
        let p = try x.xm(["pause", "b1"], timeout: 20)
        #expect(p.status == 0, "\(p.stderr)")
        #expect(try x.xm(["list", "b1"]).stdout.contains("--p---"))
        #expect(try x.xm(["unpause", "b1"], timeout: 20).status == 0)
        let ticks = x.consoleLog("b1").components(separatedBy: "XENITH-TICK").count
        #expect(NamespacedXend.waitUntil(20) { x.consoleLog("b1").components(separatedBy: "XENITH-TICK").count > ticks + 3 },
                "the guest runs on: \(x.consoleLog("b1").suffix(300))")
        #expect(try x.xm(["destroy", "b1"], timeout: 30).status == 0)
        #expect(!x.linkExists("vif\(domid).0"))
    }

    /// A vbd whose blkback xend gave up on must not leave the guest's I/O hanging: an error
    /// server takes the socket and the guest's outstanding and later requests fail with I/O
    /// errors; `xm list` names the broken device, `xm block-list` shows it Closed (6), and
    /// the image lock is released.
    @Test func aBrokenVbdFailsTheGuestsIOInsteadOfHanging() throws {
        if skip(NetbackNamespace.unavailable ?? QemuEnv.unavailable) { return }
        let ns = try NetbackNamespace("blkhp-b")
        let x = try NamespacedXend(ns, tag: "blkhp-broken")
        defer { x.shutdown(); try? FileManager.default.removeItem(atPath: x.root) }
        let img = x.root + "/b.img"
        _ = FileManager.default.createFile(atPath: img, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: img)); try h.truncate(atOffset: 4 << 20); try h.close()
        let g = QemuEnv.guestDir
        let script = "i=0; while true; do i=$((i+1)); if dd if=/dev/zero of=/dev/vda bs=4096 count=1 seek=$((i % 64)) conv=fsync 2>/dev/null; "
            + "then echo XENITH-IO-OK $i; else echo XENITH-IO-ERR $i; fi; sleep 0.2; done"
        let cfg = try x.write("bb.cfg", """
            kernel = "\(g)/vmlinuz"
            ramdisk = "\(g)/initrd.img"
            memory = 192
            name = "bb"
            engine = "qemu"
            disk = ['file:\(img),xvda,w']
            extra = "quiet cryptomgr.notests panic=-1 \(QemuEnv.tscFlag)xenith.run=\(script.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)"
            """)
        let c = try x.xm(["create", cfg])
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        #expect(NamespacedXend.waitUntil(60) { x.consoleLog("bb").contains("XENITH-IO-OK 3") }, "\(x.consoleLog("bb").suffix(800))")
        let xendLog = { readText(x.root + "/var/log/xen/xend.log") }
        // Kill blkback whenever it is back (never its error server), until xend gives up on it.
        let isErrorServer = { (p: Int32) in (try? String(contentsOfFile: "/proc/\(p)/cmdline", encoding: .utf8))?.contains("--fail-io") == true }
        var kills = 0
        _ = NamespacedXend.waitUntil(60) {
            if xendLog().contains("vbd marked broken") { return true }
            for p in x.backendPids("blkback") where !isErrorServer(p) { kill(p, SIGKILL); kills += 1 }
            return false
        }
        #expect(xendLog().contains("vbd marked broken"), "after \(kills) kills: \(xendLog().suffix(800))")
        let t0 = Date()
        let errors = { x.consoleLog("bb").components(separatedBy: "XENITH-IO-ERR").count - 1 }
        #expect(NamespacedXend.waitUntil(30) { errors() >= 3 }, "the guest sees I/O errors: \(x.consoleLog("bb").suffix(600))")
        print("broken vbd: \(kills) kills; guest saw its third I/O error \(String(format: "%.1f", Date().timeIntervalSince(t0))) s after xend gave up")
        #expect(x.backendPids("blkback").filter(isErrorServer).count == 1, "the error server runs")
        let lockFD = open(img, O_RDONLY | O_CLOEXEC)
        #expect(lockFD >= 0 && flock(lockFD, LOCK_EX | LOCK_NB) == 0, "the image lock is released")
        close(lockFD)
        let l = try x.xm(["list"])
        #expect(l.status == 0 && l.stderr.contains("Warning: domain bb (") && l.stderr.contains("has broken devices: vbd 51712 (xvda)"), "\(l.stderr)")
        #expect(l.stdout.contains("bb"), "\(l.stdout)")
        let domid = try x.xm(["domid", "bb"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let bl = try x.xm(["block-list", "bb"]).stdout
        #expect(bl.contains("51712    0    0     6      -1     -1    /local/domain/0/backend/vbd/\(domid)/51712"), "\(bl)")
        #expect(try x.xm(["block-list", "-l", "bb"]).stdout.contains("(broken 1)"))
        #expect(x.xsRead("/local/domain/0/backend/vbd/\(domid)/51712/state") == "6")
        #expect(try x.xm(["destroy", "bb"], timeout: 30).status == 0)
        #expect(NamespacedXend.waitUntil(5) { x.backendPids("blkback").isEmpty }, "the error server is stopped with the domain")
    }
}
