// vifs end to end through xend and xm: xend runs inside a network namespace the test makes
// (`ip netns exec`), so its taps, bridge ports, vif scripts and netbacks live and die there.
import Foundation
import Testing

/// xend (and the xenstored it starts) in a scratch `$XENITH_ROOT`, inside `ns`.
final class NamespacedXend {
    let ns: NetbackNamespace
    let root: String

    init(_ ns: NetbackNamespace, tag: String, xendConfig: String? = nil) throws {
        self.ns = ns
        root = Scratch.track("/tmp/xenith-vif-\(tag)-\(getpid())")
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root + "/etc/xen", withIntermediateDirectories: true)
        if let c = xendConfig { try c.write(toFile: root + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8) }
        try ns.exec("env XENITH_ROOT=\(root) \(Env.binary("xend")) start", timeout: 60)
    }

    /// Runs xm against this xend (from outside the namespace: the API is a Unix socket).
    func xm(_ args: [String], timeout: Double = 120) throws -> RunResult {
        try run("/usr/bin/env", ["XENITH_ROOT=\(root)", Env.binary("xm")] + args, timeout: timeout)
    }

    /// `xenstore-read PATH` against this root's xenstored; nil when the node is missing.
    func xsRead(_ path: String) -> String? {
        guard let r = try? run("/usr/bin/env", ["XENSTORED_PATH=\(root)/run/xenstored/socket", "/usr/bin/xenstore-read", path]),
              r.status == 0 else { return nil }
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// `xenstore-list PATH`: the children's names (empty when the node is missing).
    func xsList(_ path: String) -> [String] {
        guard let r = try? run("/usr/bin/env", ["XENSTORED_PATH=\(root)/run/xenstored/socket", "/usr/bin/xenstore-list", path]),
              r.status == 0 else { return [] }
        return r.stdout.split(whereSeparator: \.isNewline).map(String.init)
    }

    func consoleLog(_ name: String) -> String {
        readText(root + "/var/log/xen/console/guest-\(name).log")
    }

    /// Whether interface `name` exists in the namespace.
    func linkExists(_ name: String) -> Bool { (try? ns.exec("ip link show dev \(name)")) != nil }

    /// The bridge ports of xenbr0.
    func bridgePorts() -> String { (try? ns.exec("ip -o link show master xenbr0").stdout) ?? "" }

    /// Pids of the netbacks xend started for this root (the sandbox reapers, not the
    /// services inside their PID namespaces).
    func netbackPids() -> [Int32] { backendPids("netback") }

    /// Pids of the back-ends named `service` (`netback`, `blkback`) xend started for this
    /// root (the sandbox reapers).
    func backendPids(_ service: String) -> [Int32] {
        let all = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        let mine = all.compactMap { Int32($0) }.filter { pid in
            guard let c = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
                  c.contains(service), c.contains("--listen-fd"),
                  let st = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), !st.contains(") Z ") else { return false }
            return (try? String(contentsOfFile: "/proc/\(pid)/environ", encoding: .utf8))?.contains("XENITH_ROOT=\(root)") == true
        }
        func ppid(_ p: Int32) -> Int32? {
            guard let s = try? String(contentsOfFile: "/proc/\(p)/stat", encoding: .utf8), let c = s.lastIndex(of: ")") else { return nil }
            return Int32(s[s.index(after: c)...].split(separator: " ")[1])
        }
        return mine.filter { p in ppid(p).map { !mine.contains($0) } ?? true }
    }

    func write(_ name: String, _ text: String) throws -> String {
        let p = root + "/" + name
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    func shutdown() {
        if let l = try? xm(["list"]) {
            for line in l.stdout.split(separator: "\n").dropFirst() {
                let name = String(line.split(separator: " ").first ?? "")
                if !name.isEmpty && name != "Domain-0" { _ = try? xm(["destroy", name]) }
            }
        }
        _ = try? run("/usr/bin/env", ["XENITH_ROOT=\(root)", Env.binary("xend"), "stop"])
        // xenstored and xenconsoled outlive xend, as in Xen.
        for f in ["/run/xenstored/xenstored.pid", "/run/xenconsoled/xenconsoled.pid"] {
            if let p = try? String(contentsOfFile: root + f, encoding: .utf8),
               let pid = Int32(p.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGTERM) }
        }
        usleep(200_000)
    }

    static func waitUntil(_ timeout: Double, _ cond: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if try cond() { return true }; usleep(200_000) }
        return try cond()
    }
}

@Suite(.serialized) struct VifTests {
    /// A site vif script that records its arguments and XENBUS_PATH, then plugs the vif
    /// into the bridge with the shipped vif-bridge (so the domain still has a link).
    static func recorder(_ x: NamespacedXend, log: String) throws -> String {
        let p = try x.write("rec-vif", """
            #!/bin/sh
            echo "$* XENBUS_PATH=$XENBUS_PATH" >> \(log)
            exec \(Env.root.appendingPathComponent("services/scripts/vif-bridge").path) "$@"
            """)
        chmod(p, 0o755)
        return p
    }

    /// The core engine (fixture guest: no Linux driver, but the core connects to netback
    /// and the whole host side is made and removed): taps, bridge ports, custom script,
    /// xenstore, netback restart, bad input, failing script, nothing left behind.
    @Test func vifHostSideThroughXendOnTheCore() throws {
        if skip(NetbackNamespace.unavailable ?? Env.kvmUnavailable) { return }
        let ns = try NetbackNamespace("vifc")
        let x = try NamespacedXend(ns, tag: "core", xendConfig: "(network-script 'network-bridge bridge=xenbr1 netdev=none')\n")
        #expect(x.linkExists("xenbr1"), "xend ran network-script at start")
        defer { x.shutdown() }
        let recLog = x.root + "/rec.log"
        let rec = try Self.recorder(x, log: recLog)
        let fixture = Env.fixture("pvh.elf")
        let cfg = try x.write("a.cfg", """
            kernel = "\(fixture)"
            memory = 32
            name = "a"
            extra = "t"
            engine = "core"
            vif = ['mac=00:16:3e:0a:00:01, bridge=xenbr0', 'mac=00:16:3e:0a:00:02, script=\(rec), ip=10.77.0.99']
            """)
        let c = try x.xm(["create", cfg])
        #expect(c.status == 0, "\(c.stdout)\(c.stderr)")
        let domid = try x.xm(["domid", "a"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let ports = x.bridgePorts()
        #expect(ports.contains("vif\(domid).0") && ports.contains("vif\(domid).1"), "both vifs on xenbr0: \(ports)")
        let recorded = readText(recLog)
        #expect(recorded.contains("online vif=vif\(domid).1 mac=00:16:3e:0a:00:02 ip=10.77.0.99 XENBUS_PATH=/local/domain/0/backend/vif/\(domid)/1"),
                "custom script arguments: \(recorded)")
        let be = "/local/domain/0/backend/vif/\(domid)/0"
        #expect(x.xsRead(be + "/mac") == "00:16:3e:0a:00:01")
        #expect(x.xsRead(be + "/bridge") == "xenbr0")
        #expect(x.xsRead(be + "/state") == "4")
        #expect(x.xsRead(be + "/hotplug-status") == "connected")
        #expect(x.xsRead("/local/domain/\(domid)/device/vif/0/backend") == be)
        #expect(x.xsRead("/local/domain/\(domid)/device/vif/1/mac") == "00:16:3e:0a:00:02")
        let list = try x.xm(["network-list", "a"])
        #expect(list.stdout.hasPrefix("Idx BE     MAC Addr.     handle state evt-ch tx-/rx-ring-ref BE-path\n0   0  00:16:3e:0a:00:01    0     4 "),
                "\(list.stdout)\(list.stderr)")
        #expect(list.stdout.contains(be) && list.stdout.contains("/local/domain/0/backend/vif/\(domid)/1"))
        let hot = try x.xm(["network-attach", "a", "mac=00:16:3e:0a:00:03"])
        #expect(hot.status != 0 && hot.stderr.contains("cannot hot-plug"), "\(hot.stderr)")

        // Bad input, refused before any device is made.
        var n = 0
        func refused(_ vif: String, _ text: String) throws {
            n += 1
            let bcfg = try x.write("b\(n).cfg", "kernel = \"\(fixture)\"\nmemory = 32\nname = \"b\(n)\"\nextra = \"t\"\nengine = \"core\"\nvif = ['\(vif)']\n")
            let r = try x.xm(["create", bcfg])
            #expect(r.status != 0 && r.stderr.contains(text), "\(vif): \(r.stderr)")
        }
        try refused("mac=00:16:3e:0b:00:01,bridge=nosuchbr", "Bridge nosuchbr does not exist")
        try refused("mac=01:16:3e:0b:00:01", "01:16:3e:0b:00:01")
        try refused("mac=00:16:3e:0b:zz:01", "00:16:3e:0b:zz:01")
        try refused("mac=00:16:3e:0b:00:01,vifname=averyveryverylongname", "averyveryverylongname")
        try refused("mac=00:16:3e:0a:00:01", "MAC address 00:16:3e:0a:00:01 is already used by domain a on bridge xenbr0")
        try refused("mac=00:16:3e:0b:00:01,vifname=vif\(domid).0", "Interface name vif\(domid).0 is already in use")
        // A failing script: its stderr in the error, nothing left behind.
        let bad = try x.write("bad-vif", "#!/bin/sh\necho \"bad-vif: the site refuses $2\" >&2\nexit 1\n")
        chmod(bad, 0o755)
        try refused("mac=00:16:3e:0b:00:01,vifname=vifbad0,script=\(bad)", "bad-vif: the site refuses vif=vifbad0")
        #expect(!x.linkExists("vifbad0"), "no tap left behind")
        #expect(!x.bridgePorts().contains("vifbad0"))
        #expect(try x.xm(["list"]).stdout.split(separator: "\n").count == 3, "only Domain-0 and a")
        let leftSocks = (try? FileManager.default.contentsOfDirectory(atPath: x.root + "/run/xenith")) ?? []
        #expect(leftSocks.filter { $0.hasPrefix("netback-") }.count == 2, "\(leftSocks)")
        #expect(x.netbackPids().count == 2, "no netback left behind")
        #expect(x.xsList("/local/domain/0/backend/vif") == [domid], "no xenstore entry left: \(x.xsList("/local/domain/0/backend/vif"))")

        // SIGKILL of a netback: xend starts it again on the same tap and socket.
        let pids = x.netbackPids()
        if let victim = pids.first {
            kill(victim, SIGKILL)
            #expect(NamespacedXend.waitUntil(10) { let now = x.netbackPids(); return now.count == 2 && !now.contains(victim) },
                    "netback restarted: \(x.netbackPids())")
        }

        // xend restarts: the running netbacks are re-adopted (same pids) and still cleaned up.
        // (A netback being restarted is briefly invisible to netbackPids: take two equal reads.)
        var before = Set(x.netbackPids())
        _ = NamespacedXend.waitUntil(10) {
            usleep(300_000)
            let again = Set(x.netbackPids())
            defer { before = again }
            return again == before && again.count == 2
        }
        _ = try run("/usr/bin/env", ["XENITH_ROOT=\(x.root)", Env.binary("xend"), "stop"])
        try ns.exec("env XENITH_ROOT=\(x.root) \(Env.binary("xend")) start", timeout: 60)
        #expect(Set(x.netbackPids()) == before, "re-adopted, not restarted")
        #expect(try x.xm(["network-list", "a"]).stdout.split(separator: "\n").count == 3)

        // Destroy: script offline, taps gone, xenstore entries gone, netbacks stopped.
        #expect(try x.xm(["destroy", "a"]).status == 0)
        #expect(!x.linkExists("vif\(domid).0") && !x.linkExists("vif\(domid).1"))
        #expect(x.netbackPids().isEmpty)
        #expect(x.xsRead(be) == nil && x.xsRead("/local/domain/0/backend/vif/\(domid)") == nil)
        let after = readText(recLog)
        #expect(after.contains("offline vif=vif\(domid).1"), "\(after)")
        let socks = (try? FileManager.default.contentsOfDirectory(atPath: x.root + "/run/xenith")) ?? []
        #expect(socks.filter { $0.hasPrefix("netback-") }.isEmpty, "\(socks)")
    }

    /// Two test guests on the qemu engine, created with xm on xenbr0: they ping each other
    /// and fetch a file over TCP; a transfer from the namespace to a guest survives SIGKILL
    /// of the guest's netback.
    @Test func twoQemuGuestsThroughXendPingAndFetch() throws {
        if skip(NetbackNamespace.unavailable ?? QemuEnv.unavailable) { return }
        if access("/usr/bin/python3", X_OK) != 0 { print("SKIP: twoQemuGuestsThroughXendPingAndFetch: python3 is not installed"); return }
        let ns = try NetbackNamespace("vifq")
        let x = try NamespacedXend(ns, tag: "qemu")
        defer { x.shutdown() }
        let g = QemuEnv.guestDir
        func cfg(_ name: String, mac: String, ip: String, _ script: String) throws -> String {
            try x.write("\(name).cfg", """
                kernel = "\(g)/vmlinuz"
                ramdisk = "\(g)/initrd.img"
                memory = 256
                vcpus = 1
                name = "\(name)"
                engine = "qemu"
                vif = ['mac=\(mac), bridge=xenbr0']
                ip = "\(ip)"
                netmask = "255.255.255.0"
                gateway = "\(NetbackNamespace.bridgeIP)"
                extra = "quiet cryptomgr.notests panic=-1 \(QemuEnv.tscFlag)xenith.run=\(NetbackQemuTests().escape(script))"
                on_poweroff = "destroy"
                """)
        }
        // 6 MiB from the namespace to guest 1 in 64 KiB pieces 50 ms apart (~5 s).
        let peer = try NetbackQemuTests().peer(ns, URL(fileURLWithPath: x.root), ["send", "5003", "\(6 << 20)", "65536", "0.05"])
        defer { if peer.process.isRunning { kill(peer.process.processIdentifier, SIGKILL) }; _ = peer.wait(timeout: 2) }
        // g2 also waits for a hot-plugged eth1 (xm network-attach) and pings the bridge through it.
        let server = """
        (until [ -e /sys/class/net/eth2 ]; do sleep 0.5; done; echo XENITH-ETH2 $(cat /sys/class/net/eth2/address)) & \
        (until [ -e /sys/class/net/eth1 ]; do sleep 0.5; done; ip addr add 10.77.0.32/24 dev eth1; ip link set eth1 up; \
        echo XENITH-ETH1 $(cat /sys/class/net/eth1/address); \
        for i in 1 2 3 4 5 6 7 8 9 10; do ping -c 1 -W 1 -I eth1 10.77.0.1 >/dev/null 2>&1 && echo XENITH-ETH1-PING-OK && break; done) & \
        mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/f bs=1k count=512 2>/dev/null && \
        echo XENITH-MD5 $(md5sum < /tmp/www/f) && httpd -p 80 -h /tmp/www && echo XENITH-SERVING; sleep 600
        """
        let client = """
        i=0; until ping -c 1 -W 1 10.77.0.22 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 90 ] && break; done; \
        ping -c 3 10.77.0.22 && echo XENITH-PING-OK; \
        for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do wget -q -O /tmp/f http://10.77.0.22/f && break; sleep 2; done; \
        echo XENITH-GOT $(md5sum < /tmp/f); \
        echo XENITH-START; echo XENITH-STREAM $(nc 10.77.0.1 5003 | md5sum); sleep 600
        """
        let c2 = try x.xm(["create", try cfg("g2", mac: "00:16:3e:0c:00:02", ip: "10.77.0.22", server)])
        #expect(c2.status == 0, "\(c2.stderr)")
        let c1 = try x.xm(["create", try cfg("g1", mac: "00:16:3e:0c:00:01", ip: "10.77.0.21", client)])
        #expect(c1.status == 0, "\(c1.stderr)")
        guard c1.status == 0 && c2.status == 0 else { return }
        #expect(NamespacedXend.waitUntil(180) { x.consoleLog("g2").contains("XENITH-SERVING") }, "g2: \(x.consoleLog("g2").suffix(1500))")
        #expect(NamespacedXend.waitUntil(300) { x.consoleLog("g1").contains("XENITH-START") }, "g1: \(x.consoleLog("g1").suffix(2000))")
        let out1 = x.consoleLog("g1"), out2 = x.consoleLog("g2")
        #expect(out1.contains("XENITH-PING-OK"), "g1 pings g2: \(out1.suffix(1500))")
        func md5(_ s: String, _ tag: String) -> String? { markedValue(s, tag).map { String($0.prefix(32)) } }
        let sent = md5(out2, "XENITH-MD5"), got = md5(out1, "XENITH-GOT")
        #expect(sent != nil && sent == got, "512 KiB over TCP guest to guest: sent \(sent ?? "-") got \(got ?? "-")")

        // SIGKILL g1's netback two seconds into the stream; xend restarts it.
        let list = try x.xm(["network-list", "-l", "g1"]).stdout
        let pid = list.split(whereSeparator: \.isNewline).first { $0.contains("(netback-pid") }
            .flatMap { Int32($0.split(separator: " ").last?.dropLast() ?? "") }
        #expect(pid != nil, "netback pid in network-list -l: \(list)")
        usleep(2_000_000)
        if let pid { kill(pid, SIGKILL) }
        let streamSent = peer.waitForLine("XENITH-SENT md5=", timeout: 120)
        #expect(streamSent != nil, "peer: \(peer.output.get())")
        let streamGot = waitForMarkedValue(120, "XENITH-STREAM") { x.consoleLog("g1") }.map { String($0.prefix(32)) }
        #expect(streamGot != nil, "\(x.consoleLog("g1").suffix(1500))")
        #expect(streamSent != nil && streamSent == streamGot, "stream across the SIGKILL: sent \(streamSent ?? "-") got \(streamGot ?? "-")")
        let after = try x.xm(["network-list", "-l", "g1"]).stdout
        #expect(!after.contains("(netback-pid \(pid ?? 0))") && after.contains("(netback-pid"), "restarted: \(after)")

        // Hot-plug on the qemu engine: a second NIC for g2, used, then removed.
        let att = try x.xm(["network-attach", "g2", "mac=00:16:3e:0c:00:12", "bridge=xenbr0"])
        #expect(att.status == 0, "\(att.stderr)")
        let g2id = try x.xm(["domid", "g2"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(NamespacedXend.waitUntil(60) { x.consoleLog("g2").contains("XENITH-ETH1-PING-OK") }, "\(x.consoleLog("g2").suffix(1500))")
        #expect(x.consoleLog("g2").contains("XENITH-ETH1 00:16:3e:0c:00:12"))
        #expect(x.bridgePorts().contains("vif\(g2id).1"))
        #expect(try x.xm(["network-list", "g2"]).stdout.split(separator: "\n").count == 3)
        // A second one takes the second root port, two disks (block-attach: NICs and disks
        // share the ports) the other two; a third NIC finds none and says so.
        #expect(try x.xm(["network-attach", "g2", "mac=00:16:3e:0c:00:13", "bridge=xenbr0"]).status == 0)
        #expect(NamespacedXend.waitUntil(60) { x.consoleLog("g2").contains("XENITH-ETH2 00:16:3e:0c:00:13") }, "\(x.consoleLog("g2").suffix(800))")
        for dev in ["xvdb", "xvdc"] {
            let img = x.root + "/\(dev).img"
            #expect(FileManager.default.createFile(atPath: img, contents: Data(count: 1 << 20)))
            let b = try x.xm(["block-attach", "g2", "file:\(img)", dev, "w"])
            #expect(b.status == 0, "\(b.stderr)")
        }
        let third = try x.xm(["network-attach", "g2", "mac=00:16:3e:0c:00:14", "bridge=xenbr0"])
        #expect(third.status != 0 && third.stderr.contains("no free hot-plug slot: the domain's 4 PCIe root ports are in use"), "\(third.stderr)")
        #expect(!x.linkExists("vif\(g2id).3"), "the refused NIC's tap is removed")
        #expect(try x.xm(["network-list", "g2"]).stdout.split(separator: "\n").count == 4)
        for dev in ["xvdb", "xvdc"] { #expect(try x.xm(["block-detach", "g2", dev], timeout: 60).status == 0) }
        #expect(try x.xm(["network-detach", "g2", "2"], timeout: 60).status == 0)
        let cold = try x.xm(["network-detach", "g2", "0"])
        #expect(cold.status != 0 && cold.stderr.contains("only NICs added with network-attach can be removed"), "a NIC on the root complex stays: \(cold.stderr)")
        let det = try x.xm(["network-detach", "g2", "1"], timeout: 60)
        #expect(det.status == 0, "\(det.stderr)")
        #expect(!x.linkExists("vif\(g2id).1") && x.xsRead("/local/domain/0/backend/vif/\(g2id)/1") == nil)
        #expect(try x.xm(["network-list", "g2"]).stdout.split(separator: "\n").count == 2)

        #expect(try x.xm(["destroy", "g1"]).status == 0)
        #expect(try x.xm(["destroy", "g2"]).status == 0)
        #expect(!x.bridgePorts().contains("vif"), "\(x.bridgePorts())")
        #expect(x.netbackPids().isEmpty)
    }
}
