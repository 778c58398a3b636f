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
}
