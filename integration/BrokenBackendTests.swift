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
        let xendLog = { (try? String(contentsOfFile: x.root + "/var/log/xen/xend.log", encoding: .utf8)) ?? "" }
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
}
