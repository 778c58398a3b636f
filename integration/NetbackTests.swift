import Foundation
import Testing

/// A network namespace made by a test, with the host scripts' bridge xenbr0 holding
/// 10.77.0.1/24 and persistent taps (what xend will create as vifDOMID.DEVID) on it.
/// Everything lives inside the namespace and goes away with it.
final class NetbackNamespace {
    let name: String
    let scripts = Env.root.appendingPathComponent("services/scripts").path
    static let bridgeIP = "10.77.0.1"

    init(_ tag: String) throws {
        name = "xnb-\(tag)-\(getpid())"
        _ = try? run("/usr/sbin/ip", ["netns", "del", name])
        try sh("ip netns add \(name)")
        try sh("ip -n \(name) link set lo up")
        try exec("\(scripts)/network-bridge start bridge=xenbr0 netdev=none")
        try exec("ip addr add \(Self.bridgeIP)/24 dev xenbr0")
    }

    deinit { _ = try? run("/usr/sbin/ip", ["netns", "del", name]) }

    /// A persistent tap with a virtio-net header, plugged into xenbr0 by vif-bridge.
    func addVif(_ vif: String, mac: String) throws {
        try exec("ip tuntap add dev \(vif) mode tap vnet_hdr")
        try exec("\(scripts)/vif-bridge online vif=\(vif) mac=\(mac)")
    }

    /// Runs a shell command inside the namespace; throws unless it exits 0.
    @discardableResult
    func exec(_ cmd: String, timeout: Double = 30) throws -> RunResult {
        try sh("ip netns exec \(name) sh -c '\(cmd.replacingOccurrences(of: "'", with: "'\\''"))'", timeout: timeout)
    }

    /// Starts a long-running program inside the namespace.
    func spawn(_ args: [String]) throws -> Running {
        try Running("/usr/sbin/ip", ["netns", "exec", name] + args)
    }

    static var unavailable: String? {
        if getuid() != 0 { return "needs root (network namespaces, taps)" }
        if access("/usr/sbin/ip", X_OK) != 0 { return "iproute2 (ip) is not installed" }
        if access("/dev/net/tun", R_OK | W_OK) != 0 { return "/dev/net/tun is not accessible" }
        if (try? run("/usr/sbin/ip", ["netns", "list"]))?.status != 0 { return "network namespaces unavailable" }
        return nil
    }
}

@discardableResult
func sh(_ cmd: String, timeout: Double = 30) throws -> RunResult {
    let r = try run("/bin/sh", ["-c", cmd], timeout: timeout)
    if r.status != 0 { throw NetbackTestError("\(cmd): status \(r.status): \(r.stderr)\(r.stdout)") }
    return r
}

struct NetbackTestError: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}

/// A netback started by a test. It runs under a `sh` that waits for it: the sandbox closes
/// every descriptor it does not need, including the socket Foundation's Process watches to
/// learn that a child exited, and Process would then block in waitpid for a live child.
/// `pid` is netback's own (its sandbox reaper, which forwards signals to the service).
struct NetbackProcess {
    let shell: Running
    let pid: pid_t
    func kill(_ sig: Int32) { _ = Glibc.kill(pid, sig) }
    /// SIGTERM, waits, returns netback's stderr (its last line is the stats line).
    func stop() -> String {
        kill(SIGTERM)
        _ = shell.wait(timeout: 10)
        return shell.errors.get()
    }
}

func netbackCommand(_ ns: NetbackNamespace, vif: String, sock: String, mac: String?, extra: [String] = []) -> String {
    ([Env.binary("netback"), "--socket", sock, "--tap", vif] + (mac.map { ["--mac", $0] } ?? [])
        + ["--manifest", Env.root.appendingPathComponent("manifests/netback.manifest").path] + extra).joined(separator: " ")
}

/// Starts netback inside `ns` on tap `vif`, listening on `sock`, sandboxed.
func startNetback(_ ns: NetbackNamespace, vif: String, sock: String, mac: String?, extra: [String] = []) throws -> NetbackProcess {
    unlink(sock)
    let cmd = netbackCommand(ns, vif: vif, sock: sock, mac: mac, extra: extra)
    let sh = try ns.spawn(["/bin/sh", "-c", "\(cmd) & echo netback-pid=$!; wait $!"])
    guard sh.waitFor("netback-pid=", timeout: 10) else { throw NetbackTestError("netback did not start: \(sh.errors.get())") }
    usleep(20_000)
    let line = sh.output.get().split(separator: "\n").first { $0.hasPrefix("netback-pid=") } ?? ""
    guard let pid = pid_t(line.dropFirst("netback-pid=".count)) else { throw NetbackTestError("no netback pid in \(sh.output.get())") }
    let deadline = Date().addingTimeInterval(10)
    while access(sock, F_OK) != 0 && Date() < deadline { usleep(10_000) }
    return NetbackProcess(shell: sh, pid: pid)
}

@Suite(.serialized) struct NetbackTests {
    let frontend = Env.binary("vhost-user-frontend")

    @Test func hostScriptsInANamespace() throws {
        if skip(NetbackNamespace.unavailable) { return }
        let ns = try NetbackNamespace("scripts")
        let s = ns.scripts
        // network-bridge moves a netdev's address and default route onto the bridge and back.
        try ns.exec("ip link add veth0 type veth peer name veth1 && ip addr add 10.88.0.5/24 dev veth0 && ip link set veth0 up && ip link set veth1 up && ip route add default via 10.88.0.1")
        try ns.exec("\(s)/network-bridge start bridge=xenbr1 netdev=veth0")
        #expect(try ns.exec("ip -4 -o addr show dev xenbr1").stdout.contains("10.88.0.5/24"))
        #expect(try ns.exec("ip route show default").stdout.contains("dev xenbr1"))
        try ns.addVif("vif7.0", mac: "00:16:3e:00:00:07")
        try ns.exec("\(s)/vif-bridge online vif=vif7.0 bridge=xenbr1")
        let ports = try ns.exec("\(s)/network-bridge status bridge=xenbr1").stdout
        #expect(ports.contains("veth0") && ports.contains("vif7.0"), "\(ports)")
        #expect(try ns.exec("ip -o link show dev vif7.0").stdout.contains("fe:ff:ff:ff:ff:ff"))
        try ns.exec("\(s)/vif-bridge offline vif=vif7.0")
        #expect(!(try ns.exec("ip -o link show dev vif7.0").stdout.contains("master")))
        try ns.exec("\(s)/network-bridge stop bridge=xenbr1 netdev=veth0")
        #expect(try ns.exec("ip -4 -o addr show dev veth0").stdout.contains("10.88.0.5/24"))
        #expect((try? ns.exec("ip link show dev xenbr1")) == nil, "empty bridge removed")
        // vif-bridge defaults to xenbr0 and refuses a missing bridge or vif.
        try ns.exec("\(s)/vif-bridge online vif=vif7.0")
        #expect(try ns.exec("ip -o link show dev vif7.0").stdout.contains("master xenbr0"))
        #expect((try? ns.exec("\(s)/vif-bridge online vif=vif7.0 bridge=nosuchbr")) == nil)
        #expect((try? ns.exec("\(s)/vif-bridge online vif=nosuch0")) == nil)
        #expect((try? ns.exec("\(s)/vif-bridge online")) == nil)
        try ns.exec("\(s)/vif-bridge offline vif=vif7.0")
        // Routed: the vif borrows veth0's address, host routes to the guest's addresses.
        try ns.exec("\(s)/network-route start netdev=veth0")
        #expect(try ns.exec("cat /proc/sys/net/ipv4/ip_forward").stdout.hasPrefix("1"))
        try ns.exec("\(s)/vif-route online vif=vif7.0 ip=\"10.88.0.50 10.88.0.51\" netdev=veth0")
        let routes = try ns.exec("ip route").stdout
        #expect(routes.contains("10.88.0.50 dev vif7.0") && routes.contains("10.88.0.51 dev vif7.0"), "\(routes)")
        #expect(try ns.exec("cat /proc/sys/net/ipv4/conf/vif7.0/proxy_arp").stdout.hasPrefix("1"))
        try ns.exec("\(s)/vif-route offline vif=vif7.0 ip=\"10.88.0.50 10.88.0.51\" netdev=veth0")
        #expect(!(try ns.exec("ip route").stdout.contains("vif7.0")))
        try ns.exec("\(s)/network-route stop netdev=veth0")
        // NAT: the vif takes guest+127 as router address; masquerade on netdev.
        try ns.exec("\(s)/network-nat start netdev=veth0")
        if access("/usr/sbin/iptables", X_OK) == 0 {
            #expect(try ns.exec("iptables -t nat -S POSTROUTING").stdout.contains("-o veth0 -j MASQUERADE"))
        }
        try ns.exec("\(s)/vif-nat online vif=vif7.0 ip=10.0.7.1")
        #expect(try ns.exec("ip -4 -o addr show dev vif7.0").stdout.contains("10.0.7.128/32"))
        #expect(try ns.exec("ip route").stdout.contains("10.0.7.1 dev vif7.0"))
        try ns.exec("\(s)/vif-nat offline vif=vif7.0 ip=10.0.7.1")
        try ns.exec("\(s)/network-nat stop netdev=veth0")
        if access("/usr/sbin/iptables", X_OK) == 0 {
            #expect(!(try ns.exec("iptables -t nat -S POSTROUTING").stdout.contains("MASQUERADE")))
        }
    }

    @Test func syntheticFrontendThroughNetback() throws {
        if skip(NetbackNamespace.unavailable) { return }
        let ns = try NetbackNamespace("synth")
        try ns.addVif("vif1.0", mac: "02:16:3e:00:00:02")
        let sock = "/tmp/xnb-synth-\(getpid()).sock"
        let b = try startNetback(ns, vif: "vif1.0", sock: sock, mac: "02:16:3e:00:00:02")
        let ping = try run(frontend, ["net-ping", "--socket", sock], timeout: 60)
        #expect(ping.status == 0 && ping.stdout.contains("net-ping: passed"), "\(ping.stdout)\(ping.stderr)")
        let bad = try run(frontend, ["net-malformed", "--socket", sock], timeout: 120)
        #expect(bad.status == 0 && bad.stdout.contains("net-malformed: passed"), "\(bad.stdout)\(bad.stderr)")
        #expect(Glibc.kill(b.pid, 0) == 0, "netback survived every malformed chain")
        let log = b.stop()
        let stats = log.split(separator: "\n").last { $0.contains("netback: stats") } ?? ""
        #expect(stats.contains("tx_malformed=11") && stats.contains("tx_oversized=3"), "drops counted: \(log)")
        #expect(!log.contains("blocked syscall"), "\(log)")
        // SIGKILL + restart on the same tap and socket, frames in flight each time.
        let cmd = "ip netns exec \(ns.name) " + netbackCommand(ns, vif: "vif1.0", sock: sock, mac: nil, extra: ["--quiet"])
        let r = try run(frontend, ["net-restart", "--socket", sock, "--kills", "3", "--backend-cmd", cmd], timeout: 120)
        #expect(r.status == 0 && r.stdout.contains("net-restart: passed"), "\(r.stdout)\(r.stderr)")
        unlink(sock)
    }

    /// The core takes netback as a virtio-net device (deviceType 1): it connects, reads the
    /// config space and runs the guest; a socket nobody serves is refused in one line.
    @Test func coreAttachesNetback() throws {
        if skip(NetbackNamespace.unavailable ?? Env.kvmUnavailable) { return }
        let ns = try NetbackNamespace("core")
        try ns.addVif("vif5.0", mac: "00:16:3e:00:05:01")
        let sock = "/tmp/xnb-core-\(getpid()).sock"
        let b = try startNetback(ns, vif: "vif5.0", sock: sock, mac: "00:16:3e:00:05:01")
        let core = Env.binary("xenith-core")
        let r = try run(core, ["--kernel", Env.fixture("pvh.elf"), "--extra", "t", "--memory", "32", "--no-input",
                               "--vhost-user-net", sock, "--control", sock + ".ctl"], timeout: 5)
        #expect(r.stdout.contains("xenith-fixture: tick"), "guest ran with the NIC: \(r.stderr)")
        #expect(!r.stderr.contains("vhost-user back-end"), "\(r.stderr)")
        let log = b.stop()
        #expect(log.contains("front-end connected"), "\(log)")
        let bad = try run(core, ["--kernel", Env.fixture("pvh.elf"), "--no-input", "--vhost-user-net", "/nonexistent/net.sock"])
        #expect(bad.status == 1 && bad.stderr.contains("/nonexistent/net.sock"), "\(bad.stderr)")
        unlink(sock); unlink(sock + ".ctl")
    }
}

/// Real Linux guests (Debian's kernel, virtio_net, the test initramfs of `make guest`) under
/// QEMU TCG with netback as their vhost-user-net back-end, on taps in a test namespace.
///
/// QEMU 7.2 (Debian 12) segfaults in vhost_net_start → msix_set_vector_notifiers when a
/// vhost-user virtio-net-pci device uses MSI-X under TCG (its control queue has no vhost
/// peer), so these guests use INTx (`vectors=0`).
@Suite(.serialized) struct NetbackQemuTests {
    let guest = Env.root.appendingPathComponent("build/guest")

    var unavailable: String? {
        if let n = NetbackNamespace.unavailable { return n }
        if access("/usr/bin/qemu-system-x86_64", X_OK) != 0 { return "qemu-system-x86_64 is not installed" }
        if access(guest.appendingPathComponent("vmlinuz").path, R_OK) != 0 { return "build/guest/vmlinuz missing (run make guest)" }
        if access("/usr/bin/python3", X_OK) != 0 { return "python3 is not installed" }
        return nil
    }

    /// Escapes a shell script for `xenith.run=` (URL-style, guest/README.md).
    func escape(_ script: String) -> String {
        var out = ""
        for b in script.utf8 {
            if (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2F || b == 0x2D || b == 0x2E || b == 0x5F {
                out.append(Character(UnicodeScalar(b)))
            } else {
                out += String(format: "%%%02X", b)
            }
        }
        return out
    }

    /// A guest whose NIC is served by netback at `sock`; `ip` on 10.77.0.0/24.
    func qemu(sock: String, mac: String, ip: String, _ script: String) throws -> Running {
        try Running("/usr/bin/qemu-system-x86_64", [
            "-accel", "tcg,thread=multi", "-M", "q35", "-smp", "1", "-m", "256M", "-nodefaults", "-no-user-config",
            "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
            "-chardev", "socket,id=n0,path=\(sock),reconnect=1",
            "-netdev", "vhost-user,id=net0,chardev=n0",
            "-device", "virtio-net-pci,netdev=net0,mac=\(mac),vectors=0",
            "-kernel", guest.appendingPathComponent("vmlinuz").path,
            "-initrd", guest.appendingPathComponent("initrd.img").path,
            "-append", "console=ttyS0 quiet cryptomgr.notests panic=-1 ip=\(ip)::\(NetbackNamespace.bridgeIP):255.255.255.0:g:eth0:off xenith.run=\(escape(script))",
        ])
    }

    /// A TCP peer in the namespace (python3): `recv PORT N` takes N bytes and prints
    /// `XENITH-RECV bytes=N seconds=S rate=R`; `send PORT N CHUNK DELAY` sends N
    /// pseudo-random bytes in CHUNK-byte writes DELAY seconds apart and prints their MD5.
    static let peerScript = """
    import hashlib, socket, sys, time
    mode, port = sys.argv[1], int(sys.argv[2])
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.77.0.1", port)); s.listen(1)
    print("XENITH-LISTENING", flush=True)
    c, _ = s.accept()
    if mode == "recv":
        n = int(sys.argv[3]); got = 0; t0 = None
        while got < n:
            d = c.recv(65536)
            if not d: break
            if t0 is None: t0 = time.monotonic()
            got += len(d)
        t = time.monotonic() - t0
        print("XENITH-RECV bytes=%d seconds=%.3f rate=%d" % (got, t, got / t), flush=True)
    else:
        n, chunk, delay = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        h = hashlib.md5(); sent = 0; seed = 1
        while sent < n:
            seed = (seed * 6364136223846793005 + 1442695040888963407) % (1 << 64)
            b = seed.to_bytes(8, "little") * (min(chunk, n - sent) // 8)
            c.sendall(b); h.update(b); sent += len(b)
            time.sleep(delay)
        print("XENITH-SENT md5=%s" % h.hexdigest(), flush=True)
    c.close()
    """

    func peer(_ ns: NetbackNamespace, _ dir: URL, _ args: [String]) throws -> Running {
        let path = dir.appendingPathComponent("peer.py").path
        try Self.peerScript.write(toFile: path, atomically: true, encoding: .utf8)
        let p = try ns.spawn(["/usr/bin/python3", path] + args)
        #expect(p.waitFor("XENITH-LISTENING", timeout: 10))
        return p
    }

    func tempDir(_ tag: String) throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("xnb-\(tag)-\(getpid())")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        return d
    }

    @Test func twoGuestsOnOneBridgePingAndFetch() throws {
        if skip(unavailable) { return }
        let ns = try NetbackNamespace("pair")
        let dir = try tempDir("pair")
        defer { try? FileManager.default.removeItem(at: dir) }
        try ns.addVif("vif1.0", mac: "00:16:3e:00:01:01")
        try ns.addVif("vif2.0", mac: "00:16:3e:00:02:01")
        let s1 = dir.appendingPathComponent("vif1.0.sock").path, s2 = dir.appendingPathComponent("vif2.0.sock").path
        let b1 = try startNetback(ns, vif: "vif1.0", sock: s1, mac: "00:16:3e:00:01:01")
        let b2 = try startNetback(ns, vif: "vif2.0", sock: s2, mac: "00:16:3e:00:02:01")
        // A web server in the namespace, reached through the bridge.
        let www = dir.appendingPathComponent("www")
        try FileManager.default.createDirectory(at: www, withIntermediateDirectories: true)
        try "HELLO-FROM-THE-NAMESPACE\n".write(to: www.appendingPathComponent("hello.txt"), atomically: true, encoding: .utf8)
        let web = try ns.spawn(["/usr/bin/python3", "-m", "http.server", "--bind", NetbackNamespace.bridgeIP, "--directory", www.path, "8000"])
        defer { kill(web.process.processIdentifier, SIGTERM); _ = web.wait(timeout: 5) }
        let server = """
        mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/f bs=1k count=512 2>/dev/null && \
        echo XENITH-MD5 $(md5sum < /tmp/www/f) && httpd -p 80 -h /tmp/www && echo XENITH-SERVING; sleep 300; poweroff -f
        """
        let client = """
        i=0; until ping -c 1 -W 1 10.77.0.12 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 90 ] && break; done; \
        ping -c 3 10.77.0.12 && echo XENITH-PING-OK; \
        for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do wget -q -O /tmp/f http://10.77.0.12/f && break; sleep 2; done; \
        echo XENITH-GOT $(md5sum < /tmp/f); \
        echo XENITH-NS $(wget -q -O - http://10.77.0.1:8000/hello.txt); poweroff -f
        """
        let g2 = try qemu(sock: s2, mac: "00:16:3e:00:02:01", ip: "10.77.0.12", server)
        defer { if g2.process.isRunning { kill(g2.process.processIdentifier, SIGKILL) }; _ = g2.wait(timeout: 5) }
        let g1 = try qemu(sock: s1, mac: "00:16:3e:00:01:01", ip: "10.77.0.11", client)
        defer { if g1.process.isRunning { kill(g1.process.processIdentifier, SIGKILL) }; _ = g1.wait(timeout: 5) }
        #expect(g2.waitFor("XENITH-SERVING", timeout: 180), "server guest: \(g2.output.get().suffix(1500))")
        let fromNamespace = g1.waitForLine("XENITH-NS", timeout: 300)
        #expect(fromNamespace != nil, "client guest: \(g1.output.get().suffix(2000))")
        let out1 = g1.output.get(), out2 = g2.output.get()
        #expect(out1.contains("XENITH-PING-OK"), "guest 1 pings guest 2: \(out1.suffix(1500))")
        let sent = markedValue(out2, "XENITH-MD5").map { String($0.prefix(32)) }
        let got = markedValue(out1, "XENITH-GOT").map { String($0.prefix(32)) }
        #expect(sent != nil && sent == got, "512 KiB over TCP guest to guest: sent \(sent ?? "-") got \(got ?? "-")")
        #expect(fromNamespace?.contains("HELLO-FROM-THE-NAMESPACE") == true, "guest reaches a server in the namespace through the bridge: \(fromNamespace ?? "-")")
        _ = g1.wait(timeout: 30)
        let l1 = b1.stop(), l2 = b2.stop()
        #expect(!l1.contains("blocked syscall") && !l2.contains("blocked syscall"), "\(l1)\(l2)")
        print("netback vif1.0: \(l1.split(separator: "\n").last ?? "")")
    }

    @Test func rateLimitCapsGuestTransmit() throws {
        if skip(unavailable) { return }
        let ns = try NetbackNamespace("rate")
        let dir = try tempDir("rate")
        defer { try? FileManager.default.removeItem(at: dir) }
        try ns.addVif("vif3.0", mac: "00:16:3e:00:03:01")
        let sock = dir.appendingPathComponent("vif3.0.sock").path
        let b = try startNetback(ns, vif: "vif3.0", sock: sock, mac: "00:16:3e:00:03:01", extra: ["--rate", "1Mb/s"])
        let n = 1 << 20
        let p = try peer(ns, dir, ["recv", "5001", "\(n)"])
        defer { if p.process.isRunning { kill(p.process.processIdentifier, SIGKILL) }; _ = p.wait(timeout: 2) }
        let g = try qemu(sock: sock, mac: "00:16:3e:00:03:01", ip: "10.77.0.13",
                         "dd if=/dev/zero bs=1k count=1024 2>/dev/null | nc 10.77.0.1 5001; echo XENITH-SENT; poweroff -f")
        defer { if g.process.isRunning { kill(g.process.processIdentifier, SIGKILL) }; _ = g.wait(timeout: 5) }
        let line = p.waitForLine("XENITH-RECV", timeout: 240) ?? ""
        #expect(!line.isEmpty, "\(g.output.get().suffix(1500))")
        let rate = line.split(separator: " ").first { $0.hasPrefix("rate=") }.flatMap { Double($0.dropFirst(5)) } ?? 0
        // 1Mb/s = 125000 bytes/s of Ethernet frames; TCP payload is a few % less.
        print("rate=1Mb/s: TCP payload \(Int(rate)) B/s (\(line))")
        #expect(abs(rate - 125_000) / 125_000 <= 0.10, "\(line)")
        let log = b.stop()
        #expect(log.contains("tx_throttled="), "\(log)")
    }

    @Test func sigkillOfNetbackDuringATCPTransfer() throws {
        if skip(unavailable) { return }
        let ns = try NetbackNamespace("kill")
        let dir = try tempDir("kill")
        defer { try? FileManager.default.removeItem(at: dir) }
        try ns.addVif("vif4.0", mac: "00:16:3e:00:04:01")
        let sock = dir.appendingPathComponent("vif4.0.sock").path
        var b = try startNetback(ns, vif: "vif4.0", sock: sock, mac: "00:16:3e:00:04:01")
        // 6 MiB sent in 64 KiB pieces 50 ms apart (~5 s), checksummed on both ends.
        let p = try peer(ns, dir, ["send", "5002", "\(6 << 20)", "65536", "0.05"])
        defer { if p.process.isRunning { kill(p.process.processIdentifier, SIGKILL) }; _ = p.wait(timeout: 2) }
        let g = try qemu(sock: sock, mac: "00:16:3e:00:04:01", ip: "10.77.0.14",
                         "echo XENITH-START; echo XENITH-GOT $(nc 10.77.0.1 5002 | md5sum); poweroff -f")
        defer { if g.process.isRunning { kill(g.process.processIdentifier, SIGKILL) }; _ = g.wait(timeout: 5) }
        #expect(g.waitFor("XENITH-START", timeout: 180), "\(g.output.get().suffix(1500))")
        usleep(2_000_000)
        b.kill(SIGKILL)
        _ = b.shell.wait(timeout: 5)
        usleep(300_000)
        b = try startNetback(ns, vif: "vif4.0", sock: sock, mac: "00:16:3e:00:04:01")
        let sent = p.waitForLine("XENITH-SENT md5=", timeout: 120)
        #expect(sent != nil, "peer finished sending: \(p.output.get())")
        let got = g.waitForLine("XENITH-GOT", timeout: 120).map { String($0.prefix(32)) }
        #expect(got != nil, "\(g.output.get().suffix(1500))")
        #expect(sent != nil && sent == got, "transfer completed across the SIGKILL: sent \(sent ?? "-") got \(got ?? "-")")
        _ = g.wait(timeout: 30)
        _ = b.stop()
    }
}
