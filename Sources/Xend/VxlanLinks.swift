// The Linux side of a vnet: a bridge and a VXLAN device made, queried and removed with
// iproute2 (`ip`, `bridge`; queries in their JSON output, `-j`). Vnets.swift decides what
// to make; this file only knows how.
import CLinux
import Foundation
import Spawn
#if canImport(Glibc)
import Glibc
#endif

/// How one vnet's VXLAN device reaches the other hosts.
struct VxlanUnderlay: Sendable, Equatable {
    /// UDP destination (and source) port.
    var port: Int
    /// Multicast group, used when `peers` is empty.
    var group: String
    /// Unicast peers (head-end replication through all-zero FDB entries).
    var peers: [String]
    /// The host interface the VXLAN traffic leaves by.
    var device: String
    /// The VXLAN device's (and bridge's) MTU: `device`'s less `VxlanLinks.overhead`.
    var mtu: Int
}

/// iproute2 operations on bridges and VXLAN devices in xend's network namespace.
enum VxlanLinks {
    /// Bytes VXLAN adds to each frame on an IPv4 underlay: outer Ethernet 14, IPv4 20,
    /// UDP 8, VXLAN 8 (RFC 7348 §5).
    static let overhead = 50

    /// One finished `ip`/`bridge` run.
    struct Result { var status: Int32; var stdout: String; var stderr: String }

    /// The first of /usr/sbin, /sbin, /usr/bin, /bin holding `tool`.
    static func tool(_ name: String) -> String {
        for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] where access(d + "/" + name, X_OK) == 0 { return d + "/" + name }
        return "/usr/sbin/" + name
    }

    /// Runs `ip ARGS` (or `bridge ARGS`) to completion and collects both streams.
    static func run(_ program: String, _ args: [String]) -> Result {
        var out: [Int32] = [0, 0], err: [Int32] = [0, 0]
        guard pipe(&out) == 0 else { return Result(status: 127, stdout: "", stderr: "pipe failed") }
        guard pipe(&err) == 0 else { close(out[0]); close(out[1]); return Result(status: 127, stdout: "", stderr: "pipe failed") }
        for fd in out + err { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let pid: pid_t
        do {
            pid = try spawnProcess([tool(program)] + args,
                                   SpawnOptions(stdout: .descriptor(out[1]), stderr: .descriptor(err[1]), newSession: false))
        } catch {
            for fd in out + err { close(fd) }
            return Result(status: 127, stdout: "", stderr: error.message)
        }
        close(out[1]); close(err[1])
        func drain(_ fd: Int32) -> String {
            var bytes: [UInt8] = [], buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(fd, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                if bytes.count < 1 << 20 { bytes += buf[..<n] }
            }
            close(fd)
            return String(decoding: bytes, as: UTF8.self)
        }
        // Small outputs (one JSON array, one error line): the stderr pipe cannot fill first.
        let o = drain(out[0]), e = drain(err[0])
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        let status: Int32 = st & 0x7f == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f)
        return Result(status: status, stdout: o, stderr: e.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Runs `ip ARGS`; throws its error line unless it exits 0.
    static func ip(_ args: String...) throws(XendError) { try check("ip", args) }

    static func check(_ program: String, _ args: [String]) throws(XendError) {
        let r = run(program, args)
        guard r.status == 0 else {
            throw XendError(.internalError, "\(program) \(args.joined(separator: " ")): \(r.stderr.isEmpty ? "status \(r.status)" : r.stderr)")
        }
    }

    /// `ip -j ARGS` parsed as a JSON array of objects (empty on any failure).
    static func json(_ args: [String]) -> [[String: Any]] {
        let r = run("ip", ["-j"] + args)
        guard r.status == 0, let v = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] else { return [] }
        return v
    }

    /// Whether interface `name` exists.
    static func exists(_ name: String) -> Bool { if_nametoindex(name) != 0 }

    /// The MTU of `name` (from /sys/class/net), or nil.
    static func mtu(_ name: String) -> Int? {
        (try? String(contentsOfFile: "/sys/class/net/\(name)/mtu", encoding: .utf8))
            .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// The ports of bridge `name` (/sys/class/net/NAME/brif).
    static func bridgePorts(_ name: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/net/\(name)/brif")) ?? []).sorted()
    }

    /// Whether `name` is a VXLAN device.
    static func isVxlan(_ name: String) -> Bool {
        json(["-d", "link", "show", "dev", name]).contains { (($0["linkinfo"] as? [String: Any])?["info_kind"] as? String) == "vxlan" }
    }

    /// Every VXLAN device of the host: name, network identifier, UDP port.
    static func vxlanDevices() -> [(name: String, vni: Int, port: Int)] {
        json(["-d", "link", "show", "type", "vxlan"]).compactMap { l in
            guard let name = l["ifname"] as? String, let info = (l["linkinfo"] as? [String: Any])?["info_data"] as? [String: Any],
                  let vni = info["id"] as? Int else { return nil }
            return (name, vni, info["port"] as? Int ?? 0)
        }
    }

    /// The device of the route to `address`, or of the IPv4 default route when nil.
    static func routeDevice(to address: String?) -> String? {
        let routes = address.map { json(["route", "get", $0]) } ?? json(["-4", "route", "show", "default"])
        return routes.first?["dev"] as? String
    }

    /// Whether another program holds UDP `port` on the wildcard address (a VXLAN device's
    /// own socket also does: callers ask only when no VXLAN device uses the port).
    static func udpPortTaken(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        a.sin_addr.s_addr = 0
        let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        return r != 0 && errno == EADDRINUSE
    }

    /// Makes bridge `bridge` (spanning tree off, no forwarding delay) and VXLAN device
    /// `vxlan` (VNI `vni`) as its port, both with `u.mtu`, and brings both up. Each step
    /// made registers its undo with `rollback`.
    /// - Throws: `XendError` with the failing command's error.
    static func make(bridge: String, vxlan: String, vni: Int, _ u: VxlanUnderlay, rollback: Rollback) throws(XendError) {
        try ip("link", "add", "name", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        rollback.add { _ = run("ip", ["link", "del", "dev", bridge]) }
        var args = ["link", "add", "name", vxlan, "type", "vxlan", "id", String(vni), "dstport", String(u.port), "dev", u.device]
        if u.peers.isEmpty { args += ["group", u.group] }
        try check("ip", args)
        rollback.add { _ = run("ip", ["link", "del", "dev", vxlan]) }
        for p in u.peers {
            try check("bridge", ["fdb", "append", "00:00:00:00:00:00", "dev", vxlan, "dst", p])
        }
        try ip("link", "set", "dev", vxlan, "mtu", String(u.mtu))
        try ip("link", "set", "dev", vxlan, "master", bridge)
        try ip("link", "set", "dev", bridge, "mtu", String(u.mtu))
        try ip("link", "set", "dev", vxlan, "up")
        try ip("link", "set", "dev", bridge, "up")
    }

    /// Removes VXLAN device `vxlan` and bridge `bridge` (each only if present).
    static func remove(bridge: String, vxlan: String) throws(XendError) {
        if exists(vxlan) { try ip("link", "del", "dev", vxlan) }
        if exists(bridge) { try ip("link", "del", "dev", bridge) }
    }
}
