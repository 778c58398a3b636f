// The shipped xend-config's network (services/scripts/network-nat-default) end to end: a
// namespace stands for a host whose uplink (a veth) leads to a second namespace playing
// the outside world; xend with the shipped settings gives a test guest an address by DHCP
// and the guest reaches a server on the far side only through NAT.
import Foundation
import Testing

@Suite(.serialized) struct DefaultNetworkTests {
    /// The rules and user chains of every table, as `iptables-save` prints them (built-in
    /// chains and empty tables left out: iptables-nft makes those on first use and keeps them).
    static func rules(_ ns: String) -> String {
        let r = (try? run("/usr/sbin/ip", ["netns", "exec", ns, "iptables-save"]))?.stdout ?? ""
        let builtin = [":INPUT ", ":FORWARD ", ":OUTPUT ", ":PREROUTING ", ":POSTROUTING "]
        return r.split(separator: "\n").filter { l in
            l.hasPrefix("-") || (l.hasPrefix(":") && !builtin.contains { l.hasPrefix($0) })
        }.map { $0.replacingOccurrences(of: #"\[\d+:\d+\]"#, with: "", options: .regularExpression) }.joined(separator: "\n")
    }

    static var unavailable: String? {
        if let u = NetbackNamespace.unavailable { return u }
        if access("/usr/sbin/dnsmasq", X_OK) != 0 { return "dnsmasq is not installed (Debian package dnsmasq-base)" }
        if access("/usr/sbin/iptables", X_OK) != 0 { return "iptables is not installed" }
        if access("/usr/bin/python3", X_OK) != 0 { return "python3 is not installed" }
        return nil
    }

    @Test func shippedConfigGivesGuestsDHCPAndNAT() throws {
        if skip(Self.unavailable ?? QemuEnv.unavailable) { return }
        let host = try VnetHost(tag: "dnh", address: "203.0.113.1")
        let world = "vnet-dnw-\(getpid())"
        _ = try? run("/usr/sbin/ip", ["netns", "del", world])
        defer { host.teardown(); _ = try? run("/usr/sbin/ip", ["netns", "del", world]) }
        let up = "vnet-up\(getpid() % 10000)"
        try sh("ip netns add \(world) && ip -n \(world) link set lo up")
        try sh("ip link add \(up) netns \(host.ns) type veth peer name vnet-wan netns \(world)")
        try sh("ip -n \(host.ns) link set \(up) up && ip -n \(host.ns) addr add 203.0.113.1/24 dev \(up)"
               + " && ip -n \(host.ns) route add default via 203.0.113.2")
        // The outside world has no route back to the guests' subnet: only NAT gets replies there.
        try sh("ip -n \(world) link set vnet-wan up && ip -n \(world) addr add 203.0.113.2/24 dev vnet-wan")
        let server = try Running("/usr/sbin/ip", ["netns", "exec", world, "python3", "-c", """
            import hashlib, os, socket
            data = os.urandom(256 * 1024)
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(('203.0.113.2', 8086)); s.listen(1)
            print('LISTENING', hashlib.md5(data).hexdigest(), flush=True)
            c, peer = s.accept()
            print('PEER', peer[0], flush=True)
            c.sendall(data); c.close()
            """])
        defer { kill(server.process.processIdentifier, SIGKILL); _ = server.wait(timeout: 2) }
        #expect(server.waitFor("LISTENING", timeout: 10))
        // A rule of the host's own in each table the script uses: it must survive start and stop.
        try sh("ip netns exec \(host.ns) iptables -A INPUT -i lo -j ACCEPT && ip netns exec \(host.ns) iptables -A FORWARD -i \(up) -o \(up) -j DROP"
               + " && ip netns exec \(host.ns) iptables -t nat -A POSTROUTING -o lo -j RETURN")
        let addrBefore = try host.exec("ip -4 addr show dev \(up)").stdout
        let routesBefore = try host.exec("ip -4 route show").stdout
        let uplinkRoutesBefore = try host.exec("ip -4 route show dev \(up)").stdout
        let rulesBefore = Self.rules(host.ns)
        let forwardBefore = try host.exec("cat /proc/sys/net/ipv4/ip_forward").stdout

        // xend with the shipped settings: network-nat-default runs at start.
        let shipped = try String(contentsOf: Env.root.appendingPathComponent("services/xend-config.sxp"), encoding: .utf8)
        #expect(shipped.contains("\n(network-script network-nat-default)\n"))
        try host.startXend(shipped)
        let script = Env.root.appendingPathComponent("services/scripts/network-nat-default").path
        let status = try host.exec("XENITH_ROOT=\(host.root) \(script) status")
        #expect(status.status == 0, "status after xend start: \(status.stdout) \(status.stderr)")
        #expect(host.link("xenbr0").contains("bridge"))
        // A second start changes nothing (idempotent).
        let rulesUp = Self.rules(host.ns)
        #expect(try host.exec("XENITH_ROOT=\(host.root) \(script) start").status == 0)
        #expect(Self.rules(host.ns) == rulesUp)

        let g = QemuEnv.guestDir
        let guestScript = """
        echo XENITH-ADDR $(ip -4 -o addr show dev eth0 | awk '{print $4}'); \
        echo XENITH-GOT $(nc 203.0.113.2 8086 | md5sum); sleep 600
        """
        let cfg = try host.write("dhcp.cfg", """
            kernel = "\(g)/vmlinuz"
            ramdisk = "\(g)/initrd.img"
            memory = 256
            name = "dhcpguest"
            engine = "qemu"
            vif = ['mac=00:16:3e:86:00:07, bridge=xenbr0']
            dhcp = "dhcp"
            extra = "quiet cryptomgr.notests panic=-1 \(QemuEnv.tscFlag)xenith.run=\(NetbackQemuTests().escape(guestScript))"
            on_poweroff = "destroy"
            """)
        let c = try host.xm("create", cfg)
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        let got = waitForMarkedValue(70, "XENITH-GOT") { host.consoleLog("dhcpguest") }.map { String($0.prefix(32)) }
        #expect(got != nil, "\(host.consoleLog("dhcpguest").suffix(1500))")
        let out = host.consoleLog("dhcpguest")
        let addr = out.split(whereSeparator: { $0.isNewline }).first { $0.hasPrefix("XENITH-ADDR") }.map(String.init) ?? ""
        #expect(addr.contains("XENITH-ADDR 10.86.0."), "a DHCP lease on 10.86.0.0/24: \(out.suffix(800))")
        let leases = readText(host.root + "/run/xen/network-nat-default/xenbr0/leases")
        #expect(leases.contains("00:16:3e:86:00:07"), "dnsmasq's lease: \(leases)")
        let sent = server.output.get().split(separator: "\n").first { $0.hasPrefix("LISTENING") }.map { String($0.dropFirst("LISTENING ".count)) }
        #expect(sent != nil && sent == got, "256 KiB from the outside server: sent \(sent ?? "-") got \(got ?? "-")")
        #expect(server.output.get().contains("PEER 203.0.113.1"), "the server saw the host's uplink address (NAT): \(server.output.get())")
        // The uplink is untouched while the network is up.
        #expect(try host.exec("ip -4 addr show dev \(up)").stdout == addrBefore)
        #expect(try host.exec("ip -4 route show dev \(up)").stdout == uplinkRoutesBefore)
        #expect(try host.exec("ip -4 route show").stdout.contains("default via 203.0.113.2 dev \(up)"))

        // Stop: the domain, xend, then the network; everything it made is gone.
        #expect(try host.xm("destroy", "dhcpguest").status == 0)
        #expect(try host.tool("xend", ["stop"]).status == 0)
        let dnsmasqPid = (try? String(contentsOfFile: host.root + "/run/xen/network-nat-default/xenbr0/dnsmasq.pid", encoding: .utf8))
            .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        #expect(dnsmasqPid != nil)
        let stop = try host.exec("XENITH_ROOT=\(host.root) \(script) stop")
        #expect(stop.status == 0, "\(stop.stderr)")
        #expect(!host.linkExists("xenbr0"))
        if let p = dnsmasqPid { #expect(kill(p, 0) != 0, "dnsmasq ended") }
        #expect(Self.rules(host.ns) == rulesBefore && rulesBefore.contains("-A FORWARD -i \(up) -o \(up) -j DROP"),
                "iptables as before: \(Self.rules(host.ns)) / \(rulesBefore)")
        #expect(try host.exec("ip -4 addr show dev \(up)").stdout == addrBefore)
        #expect(try host.exec("ip -4 route show").stdout == routesBefore)
        #expect(try host.exec("cat /proc/sys/net/ipv4/ip_forward").stdout == forwardBefore)
        #expect(!FileManager.default.fileExists(atPath: host.root + "/run/xen/network-nat-default"))
        #expect(try host.exec("XENITH_ROOT=\(host.root) \(script) status").status == 3)

        // A subnet the host already routes (the uplink's) is refused in one line, nothing made.
        let clash = try host.exec("XENITH_ROOT=\(host.root) \(script) start address=203.0.113.9/24")
        #expect(clash.status == 1 && clash.stderr.contains("203.0.113.0/24 overlaps the host's route '203.0.113.0/24 dev \(up)"),
                "\(clash.stderr)")
        #expect(!host.linkExists("xenbr0") && Self.rules(host.ns) == rulesBefore)

        // A start that fails late (dnsmasq refuses a malformed DHCP range, after the
        // bridge, address, forwarding and chains were made) takes all of them back.
        let late = try host.exec("XENITH_ROOT=\(host.root) \(script) start address=10.87.0.1/24 dhcp_range=10.87.0.300,10.87.0.20")
        #expect(late.status == 1 && late.stderr.contains("dnsmasq did not start on xenbr0"), "\(late.stderr)")
        #expect(!host.linkExists("xenbr0"), "bridge removed")
        #expect(Self.rules(host.ns) == rulesBefore, "iptables as before: \(Self.rules(host.ns))")
        #expect(try host.exec("cat /proc/sys/net/ipv4/ip_forward").stdout == forwardBefore)
        #expect(!FileManager.default.fileExists(atPath: host.root + "/run/xen/network-nat-default"))
        #expect(try host.exec("pgrep -f '[d]nsmasq.*\(host.root)'").stdout.isEmpty, "no dnsmasq left")
    }
}
