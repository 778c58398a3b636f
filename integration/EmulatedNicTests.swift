// An emulated NIC (the manual's HVM NICs: rtl8139, ne2000, …; here `model=vmxnet3`, the
// one emulated model Debian's cloud kernel drives) through xend on the qemu engine: xend
// makes the tap and runs the vif script as for any vif, but hands the tap itself to QEMU
// (vhost-user serves virtio only), so no netback runs; the guest reaches the bridge.
import Foundation
import Testing

@Suite(.serialized) struct EmulatedNicTests {
    @Test func emulatedNicOnTheTapThroughXend() throws {
        if skip(NetbackNamespace.unavailable ?? QemuEnv.unavailable) { return }
        let ns = try NetbackNamespace("vife")
        let x = try NamespacedXend(ns, tag: "emul")
        defer { x.shutdown() }
        let g = QemuEnv.guestDir
        let script = "for%20i%20in%20$(seq%2060);%20do%20ping%20-c%201%20-W%201%20\(NetbackNamespace.bridgeIP)%20>/dev/null%202>&1%20&&%20echo%20XENITH-PING-OK%20&&%20break;%20done;%20"
            + "echo%20XENITH-DRIVER%20$(basename%20$(readlink%20/sys/class/net/eth0/device/driver));%20sleep%20600"
        let cfg = try x.write("e1.cfg", """
            kernel = "\(g)/vmlinuz"
            ramdisk = "\(g)/initrd.img"
            memory = 256
            vcpus = 1
            name = "e1"
            engine = "qemu"
            vif = ['mac=00:16:3e:0d:00:01, bridge=xenbr0, model=vmxnet3']
            ip = "10.77.0.41"
            netmask = "255.255.255.0"
            extra = "quiet cryptomgr.notests panic=-1 \(QemuEnv.tscFlag)xenith.run=\(script)"
            """)
        let c = try x.xm(["create", cfg])
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        let domid = try x.xm(["domid", "e1"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(NamespacedXend.waitUntil(180) { x.consoleLog("e1").contains("XENITH-DRIVER") }, "\(x.consoleLog("e1").suffix(1500))")
        let out = x.consoleLog("e1")
        #expect(out.contains("XENITH-PING-OK"), "the guest pings the bridge: \(out.suffix(1500))")
        #expect(out.contains("XENITH-DRIVER vmxnet3"), "\(out.suffix(500))")
        // The host side is the same as a netback vif's; no netback, QEMU holds the tap.
        #expect(x.bridgePorts().contains("vif\(domid).0"))
        #expect(x.netbackPids().isEmpty)
        #expect(x.xsRead("/local/domain/0/backend/vif/\(domid)/0/state") == "4")
        // QEMU's pidfile is the QMP socket's path + ".pid".
        let qemuPid = (try? String(contentsOfFile: x.root + "/run/xend/domains/\(domid).control.pid", encoding: .utf8))
            .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        #expect(qemuPid != nil, "no QEMU pidfile")
        if let qemuPid {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(qemuPid)/fdinfo")) ?? []
            let holds = fds.contains { (readText("/proc/\(qemuPid)/fdinfo/\($0)")).contains("iff:\tvif\(domid).0") }
            #expect(holds, "QEMU (pid \(qemuPid)) holds tap vif\(domid).0")
        }
        #expect(try x.xm(["network-list", "e1"]).stdout.contains("00:16:3e:0d:00:01"))
        #expect(try x.xm(["destroy", "e1"]).status == 0)
        #expect(NamespacedXend.waitUntil(10) { !x.linkExists("vif\(domid).0") })
        #expect(x.xsRead("/local/domain/0/backend/vif/\(domid)/0") == nil)
    }
}
