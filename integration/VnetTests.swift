// Vnets end to end: two hosts (two network namespaces joined by a veth pair, each with its
// own xend and $XENITH_ROOT), the same vnet created on both with xm, a test guest on each
// host on the vnet's bridge; they reach each other only through VXLAN over the veth.
import Foundation
import Testing

/// One "host": a network namespace with one end of the underlay veth, and an xend in it.
final class VnetHost {
    let ns: String
    let root: String
    let address: String

    /// Makes the namespace and root; the underlay link is added by `VnetHosts`.
    init(tag: String, address: String) throws {
        ns = "vnet-\(tag)-\(getpid())"
        root = "/tmp/vnet-host-\(tag)-\(getpid())"
        self.address = address
        _ = try? run("/usr/sbin/ip", ["netns", "del", ns])
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root + "/etc/xen", withIntermediateDirectories: true)
        try sh("ip netns add \(ns) && ip -n \(ns) link set lo up")
    }

    /// Runs a shell command in the namespace (status not checked).
    @discardableResult
    func exec(_ cmd: String, timeout: Double = 30) throws -> RunResult {
        try run("/usr/sbin/ip", ["netns", "exec", ns, "sh", "-c", cmd], timeout: timeout)
    }

    /// Runs a Xenith tool (`xm`, `xend`) in the namespace against this root.
    func tool(_ name: String, _ args: [String], timeout: Double = 120) throws -> RunResult {
        try run("/usr/sbin/ip", ["netns", "exec", ns, "env", "XENITH_ROOT=\(root)", Env.binary(name)] + args, timeout: timeout)
    }
    func xm(_ args: String...) throws -> RunResult { try tool("xm", args) }

    func startXend(_ config: String) throws {
        try config.write(toFile: root + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8)
        let s = try tool("xend", ["start"], timeout: 60)
        if s.status != 0 { throw NetbackTestError("xend start in \(ns): \(s.stderr)") }
    }

    func linkExists(_ name: String) -> Bool { (try? exec("ip link show dev \(name)"))?.status == 0 }

    /// `ip -d link show dev NAME` (empty when missing).
    func link(_ name: String) -> String { (try? exec("ip -d link show dev \(name)"))?.stdout ?? "" }

    func xsList(_ path: String) -> [String] {
        guard let r = try? run("/usr/bin/env", ["XENSTORED_PATH=\(root)/run/xenstored/socket", "/usr/bin/xenstore-list", path]),
              r.status == 0 else { return [] }
        return r.stdout.split(whereSeparator: \.isNewline).map(String.init)
    }

    func write(_ name: String, _ text: String) throws -> String {
        let p = root + "/" + name
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    func consoleLog(_ name: String) -> String {
        readText(root + "/var/log/xen/console/guest-\(name).log")
    }

    /// Domains destroyed, xend stopped, its xenstored and xenconsoled ended, namespace and root removed.
    func teardown() {
        if let l = try? tool("xm", ["list"]) {
            for line in l.stdout.split(separator: "\n").dropFirst() {
                let name = String(line.split(separator: " ").first ?? "")
                if !name.isEmpty && name != "Domain-0" { _ = try? tool("xm", ["destroy", name]) }
            }
        }
        _ = try? tool("xend", ["stop"])
        for f in ["/run/xenstored/xenstored.pid", "/run/xenconsoled/xenconsoled.pid"] {
            if let p = try? String(contentsOfFile: root + f, encoding: .utf8),
               let pid = Int32(p.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGTERM) }
        }
        usleep(200_000)
        _ = try? run("/usr/sbin/ip", ["netns", "del", ns])
        try? FileManager.default.removeItem(atPath: root)
    }
}

@Suite(.serialized) struct VnetTests {
    static let vnetFile = "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))\n"

    /// Two hosts joined by a veth pair with MTU 1550 (so the vnet, 50 bytes less, carries 1500).
    static func twoHosts() throws -> (VnetHost, VnetHost) {
        let a = try VnetHost(tag: "a", address: "192.168.197.1"), b = try VnetHost(tag: "b", address: "192.168.197.2")
        try sh("ip link add vnet-ua-\(getpid() % 10000) netns \(a.ns) type veth peer name vnet-ub-\(getpid() % 10000) netns \(b.ns)")
        for (h, dev) in [(a, "vnet-ua-\(getpid() % 10000)"), (b, "vnet-ub-\(getpid() % 10000)")] {
            let r = try h.exec("ip link set dev \(dev) mtu 1550 up && ip addr add \(h.address)/24 dev \(dev)")
            if r.status != 0 { throw NetbackTestError("underlay in \(h.ns): \(r.stderr)") }
        }
        return (a, b)
    }

    static var unavailable: String? {
        if let u = NetbackNamespace.unavailable { return u }
        let ns = "vnet-probe-\(getpid())"
        defer { _ = try? run("/usr/sbin/ip", ["netns", "del", ns]) }
        guard (try? sh("ip netns add \(ns) && ip -n \(ns) link add vnet-probe type vxlan id 1 dstport 4789 local 127.0.0.1")) != nil else {
            return "cannot create VXLAN devices (kernel module vxlan)"
        }
        return nil
    }

    /// A test guest on each host on bridge=vnet97: ping across the vnet and 512 KiB over
    /// TCP whose MD5 matches; vnet-delete is refused while a vif is on the bridge, and
    /// afterwards removes bridge, VXLAN device and record.
    @Test func guestsOnTwoHostsShareAVnet() throws {
        if skip(Self.unavailable ?? QemuEnv.unavailable) { return }
        let (a, b) = try Self.twoHosts()
        defer { a.teardown(); b.teardown() }
        try a.startXend("(vnet-peers \(b.address))\n")
        try b.startXend("(vnet-peers \(a.address))\n")
        for h in [a, b] {
            let c = try h.xm("vnet-create", try h.write("vnet97.sxp", Self.vnetFile))
            #expect(c.status == 0, "vnet-create in \(h.ns): \(c.stderr)")
            let l = h.link("vnif97")
            #expect(l.contains("vxlan id 97") && l.contains("dstport 4789") && l.contains("master vnet97") && l.contains("mtu 1500"),
                    "VXLAN device, MTU 1550 - 50: \(l)")
            #expect(h.link("vnet97").contains("mtu 1500"))
            #expect(try h.xm("vnet-list").stdout == "97\n")
        }
        let g = QemuEnv.guestDir
        func cfg(_ h: VnetHost, _ name: String, mac: String, ip: String, _ script: String) throws -> String {
            try h.write("\(name).cfg", """
                kernel = "\(g)/vmlinuz"
                ramdisk = "\(g)/initrd.img"
                memory = 256
                name = "\(name)"
                engine = "qemu"
                vif = ['mac=\(mac), bridge=vnet97']
                ip = "\(ip)"
                netmask = "255.255.255.0"
                extra = "quiet cryptomgr.notests panic=-1 \(QemuEnv.tscFlag)xenith.run=\(NetbackQemuTests().escape(script))"
                on_poweroff = "destroy"
                """)
        }
        let server = """
        mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/f bs=1k count=512 2>/dev/null && \
        echo XENITH-MD5 $(md5sum < /tmp/www/f) && httpd -p 80 -h /tmp/www && echo XENITH-SERVING; sleep 600
        """
        let client = """
        i=0; until ping -c 1 -W 1 10.97.0.2 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 40 ] && break; done; \
        ping -c 3 10.97.0.2 && echo XENITH-PING-OK; \
        for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O /tmp/f http://10.97.0.2/f && break; sleep 1; done; \
        echo XENITH-GOT $(md5sum < /tmp/f); sleep 600
        """
        let cb = try b.xm("create", try cfg(b, "vserver", mac: "00:16:3e:97:00:02", ip: "10.97.0.2", server))
        #expect(cb.status == 0, "\(cb.stderr)")
        let ca = try a.xm("create", try cfg(a, "vclient", mac: "00:16:3e:97:00:01", ip: "10.97.0.1", client))
        #expect(ca.status == 0, "\(ca.stderr)")
        guard ca.status == 0 && cb.status == 0 else { return }
        #expect(NamespacedXend.waitUntil(60) { b.consoleLog("vserver").contains("XENITH-SERVING") }, "\(b.consoleLog("vserver").suffix(1500))")
        let got = waitForMarkedValue(70, "XENITH-GOT") { a.consoleLog("vclient") }.map { String($0.prefix(32)) }
        #expect(got != nil, "\(a.consoleLog("vclient").suffix(1500))")
        let out = a.consoleLog("vclient")
        #expect(out.contains("XENITH-PING-OK"), "ping across the vnet: \(out.suffix(1500))")
        let sent = markedValue(b.consoleLog("vserver"), "XENITH-MD5").map { String($0.prefix(32)) }
        #expect(sent != nil && sent == got, "512 KiB over TCP across the vnet: sent \(sent ?? "-") got \(got ?? "-")")

        // A vif on the bridge: delete refused, naming it; nothing removed.
        let busy = try a.xm("vnet-delete", "97")
        #expect(busy.status != 0 && busy.stderr.contains("still has vif"), "\(busy.stderr)")
        #expect(a.linkExists("vnif97") && a.linkExists("vnet97"))
        #expect(try a.xm("destroy", "vclient").status == 0)
        #expect(try b.xm("destroy", "vserver").status == 0)
        for h in [a, b] {
            let d = try h.xm("vnet-delete", "97")
            #expect(d.status == 0, "\(d.stderr)")
            #expect(!h.linkExists("vnif97") && !h.linkExists("vnet97"), "bridge and VXLAN device removed in \(h.ns)")
            #expect(try h.xsList("/vnet").isEmpty && h.xm("vnet-list").stdout.isEmpty)
        }
    }

    /// Bad input refused in one line with nothing made (bad file naming the key, id out of
    /// range, id in use, UDP port held by another program); a vnet removed behind xend's
    /// back is made again when xend starts.
    @Test func badVnetsRefusedAndRecordsRemadeAtStart() throws {
        if skip(Self.unavailable) { return }
        let (a, b) = try Self.twoHosts()
        defer { a.teardown(); b.teardown() }
        try a.startXend("(vnet-peers \(b.address))\n(vnet-port 4790)\n")
        func refused(_ text: String, _ words: String) throws {
            let r = try a.xm("vnet-create", try a.write("bad.sxp", text))
            #expect(r.status != 0 && r.stderr.contains(words) && r.stderr.split(separator: "\n").count == 1, "\(text): \(r.stderr)")
        }
        try refused("(vnet (id 98) (colour red))", "bad.sxp:1: key 'colour': unknown key")
        try refused("(vnet (id 16777216))", "key 'id': 16777216 out of range 1...16777215")
        try refused("(vnet (id 98) (security auth))", "key 'security'")
        try refused("(vnet (id 98) (bridge vnet-a-\(getpid())-long))", "key 'bridge'")
        // Another program holds the UDP port: refused, nothing made.
        let holder = try Running("/usr/sbin/ip", ["netns", "exec", a.ns, "python3", "-c",
            "import socket,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',4790)); print('bound',flush=True); time.sleep(60)"])
        #expect(holder.waitFor("bound", timeout: 10))
        try refused(Self.vnetFile, "UDP port 4790 (vnet-port in xend-config.sxp) is in use by another program")
        kill(holder.process.processIdentifier, SIGKILL); _ = holder.wait(timeout: 5)
        #expect(!a.linkExists("vnet98") && !a.linkExists("vnet97") && !a.linkExists("vnif97") && a.xsList("/vnet").isEmpty)

        #expect(try a.xm("vnet-create", try a.write("v.sxp", Self.vnetFile)).status == 0)
        try refused(Self.vnetFile, "vnet 97 already exists")
        try refused("(vnet (id 98) (bridge vnet97))", "clashes with vnet 97")
        #expect(!a.linkExists("vnet98") && !a.linkExists("vnif98") && a.xsList("/vnet") == ["97"])
        #expect(try a.xm("vnet-list", "-l").stdout == Self.vnetFile)
        #expect(a.link("vnif97").contains("dstport 4790"))

        // Removed behind xend's back, made again at the next start from xenstore.
        #expect(try a.tool("xend", ["stop"]).status == 0)
        try a.exec("ip link del dev vnif97; ip link del dev vnet97")
        #expect(try a.tool("xend", ["start"], timeout: 60).status == 0)
        #expect(a.link("vnif97").contains("vxlan id 97") && a.link("vnif97").contains("master vnet97"), "re-made: \(a.link("vnif97"))")
        #expect(try a.xm("vnet-delete", "97").status == 0)
        let gone = try a.xm("vnet-delete", "97")
        #expect(gone.status != 0 && gone.stderr.contains("vnet 97 does not exist"))
    }

    /// Multicast mode (no vnet-peers): both VXLAN devices in group 239.1.1.1 on the
    /// underlay named by vnet-device, MTU 1500 - 50; the two hosts' bridges reach each
    /// other. Without a device or a default route, vnet-create says what to set.
    @Test func multicastVnetWithoutPeers() throws {
        if skip(Self.unavailable) { return }
        if access("/bin/busybox", X_OK) != 0 { print("SKIP: multicastVnetWithoutPeers: busybox (ping) is not installed"); return }
        let (a, b) = try Self.twoHosts()
        defer { a.teardown(); b.teardown() }
        let file = "(vnet (id 4242))\n"
        try a.startXend("")
        let none = try a.xm("vnet-create", try a.write("v.sxp", file))
        #expect(none.status != 0 && none.stderr.contains("no default route to carry vnets: set vnet-device or vnet-peers"), "\(none.stderr)")
        #expect(!a.linkExists("vnet4242") && !a.linkExists("vnif4242") && a.xsList("/vnet").isEmpty)
        #expect(try a.tool("xend", ["stop"]).status == 0)
        for (h, dev, ip) in [(a, "vnet-ua-\(getpid() % 10000)", "10.42.0.1"), (b, "vnet-ub-\(getpid() % 10000)", "10.42.0.2")] {
            try h.startXend(h === a ? "(vnet-device \(dev))\n" : "(vnet-device \(dev)) (vnet-group 239.1.1.1)\n")
            let c = try h.xm("vnet-create", try h.write("v.sxp", file))
            #expect(c.status == 0, "\(c.stderr)")
            let l = h.link("vnif4242")
            #expect(l.contains("vxlan id 4242 group 239.1.1.1 dev \(dev)") && l.contains("master vnet4242") && l.contains("mtu 1500"), "\(l)")
            #expect(try h.exec("ip addr add \(ip)/24 dev vnet4242").status == 0)
        }
        let ping = try a.exec("busybox ping -c 3 -W 2 10.42.0.2")
        #expect(ping.status == 0 && ping.stdout.contains("3 packets received"), "\(ping.stdout) \(ping.stderr)")
        for h in [a, b] { #expect(try h.xm("vnet-delete", "4242").status == 0) }
    }
}
