// Net modes of vhost-user-frontend: the tool plays a guest with a virtio-net driver behind
// a vhost-user-net back-end (netback) whose tap sits on a bridge that has the peer address.
import CLinux
import GuestMemory
import NetBackend
import VhostUser
import VhostUserTesting
import Virtio
#if canImport(Glibc)
import Glibc
#endif

let netUsage = """
net modes (the back-end's tap is on a bridge holding --peer; defaults 10.77.0.2 / 10.77.0.1):
  net-ping       ARP for the peer, ICMP echo of 56 and 1400 bytes, every reply checked
  net-malformed  malformed transmit chains (writable buffers, outside guest memory, short,
                 oversized, bad header), each completed while pings keep working; then a
                 descriptor loop (queue broken) and a fresh connection that pings again
  net-bench      64-byte frames to an absent MAC for --seconds N (default 3): tx_pps
  net-restart    --backend-cmd 'CMD' [--kills N]: frames in flight, SIGKILL + restart of
                 CMD, reconnect; pings must work after every restart
options: --socket PATH --ip A.B.C.D --peer A.B.C.D --mac MAC
"""

@MainActor var netSocket: String { opts["--socket"] ?? "" }

func ipv4(_ s: String) -> [UInt8]? {
    let p = s.split(separator: ".").compactMap { UInt8($0) }
    return p.count == 4 ? p : nil
}

@MainActor struct NetOptions {
    var ip = ipv4(opts["--ip"] ?? "10.77.0.2") ?? []
    var peer = ipv4(opts["--peer"] ?? "10.77.0.1") ?? []
    var mac = parseMAC(opts["--mac"] ?? "02:16:3e:00:00:02") ?? []
}

@MainActor func netConnect() -> VirtioNetClient {
    do {
        let c = try VirtioNetClient(socketPath: netSocket)
        try c.connect()
        return c
    } catch { fail("connect \(netSocket): \(error)") }
}

/// Resolves the peer's MAC with ARP (retrying), or nil.
@MainActor func arp(_ c: VirtioNetClient, _ o: NetOptions, timeoutMs: Int = 5000) throws -> [UInt8]? {
    let t0 = now()
    while now() - t0 < Double(timeoutMs) / 1000 {
        try c.send(Frames.arpRequest(senderMAC: o.mac, senderIP: o.ip, target: o.peer))
        let until = now() + 0.3
        while now() < until {
            for f in try c.receive(timeoutMs: 50) { if let m = Frames.arpReplyMAC(f.frame, from: o.peer) { return m } }
        }
    }
    return nil
}

/// One echo request with `size` data bytes; true when the matching reply came back intact.
@MainActor func ping(_ c: VirtioNetClient, _ o: NetOptions, peerMAC: [UInt8], seq: UInt16, size: Int, timeoutMs: Int = 2000) throws -> Bool {
    let data = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seq)) }
    let icmp = Frames.icmpEcho(id: 0x4e42, seq: seq, data: data)
    try c.send(Frames.ethernet(dst: peerMAC, src: o.mac, type: 0x0800, Frames.ipv4(src: o.ip, dst: o.peer, proto: 1, id: seq, icmp)))
    let until = now() + Double(timeoutMs) / 1000
    while now() < until {
        for f in try c.receive(timeoutMs: 50) {
            if let r = Frames.echoReply(f.frame, from: o.peer), r.id == 0x4e42, r.seq == seq { return r.data == data }
        }
    }
    return false
}

@MainActor func netPing() throws {
    let o = NetOptions()
    let c = netConnect()
    var failures = 0
    func check(_ ok: Bool, _ what: String) { print("\(ok ? "ok" : "FAIL") \(what)"); if !ok { failures += 1 } }
    if let cfg = c.config {
        check(cfg.status & VirtioNetStatus.linkUp != 0, "config space: link up, mac \(cfg.mac.map { String($0, radix: 16) }.joined(separator: ":"))")
    }
    guard let peerMAC = try arp(c, o) else { fail("no ARP reply from the peer") }
    check(true, "ARP reply from the peer")
    let n = intOpt("--count", 5)
    var good = 0
    for s in 0..<n { if try ping(c, o, peerMAC: peerMAC, seq: UInt16(s + 1), size: s % 2 == 0 ? 56 : 1400) { good += 1 } }
    check(good == n, "\(good)/\(n) echo replies intact (56 and 1400 bytes)")
    print("net-ping: \(failures == 0 ? "passed" : "\(failures) failures")")
    if failures > 0 { exit(1) }
}

@MainActor func netMalformed() throws {
    let o = NetOptions()
    var c = netConnect()
    guard let peerMAC = try arp(c, o) else { fail("no ARP reply from the peer") }
    var failures = 0
    func check(_ ok: Bool, _ what: String) { print("\(ok ? "ok" : "FAIL") \(what)"); if !ok { failures += 1 } }
    let hl = c.headerLength
    let m = c.memory
    let big = c.bigBase
    let good = Frames.ethernet(dst: peerMAC, src: o.mac, type: 0x0800,
                               Frames.ipv4(src: o.ip, dst: o.peer, proto: 17, Frames.udp(srcPort: 9, dstPort: 9, [1, 2, 3, 4])))
    func hdr(flags: UInt8 = 0, gso: UInt8 = 0, csumStart: UInt16 = 0, csumOffset: UInt16 = 0) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: hl)
        h[0] = flags; h[1] = gso
        h[6] = UInt8(csumStart & 0xff); h[7] = UInt8(csumStart >> 8); h[8] = UInt8(csumOffset & 0xff); h[9] = UInt8(csumOffset >> 8)
        return h
    }
    func put(_ bytes: [UInt8], at a: UInt64) throws { try m.slice(at: a, count: bytes.count).copyBytes(from: bytes) }
    let R = false, W = true
    try put(hdr() + good, at: big)
    try put(hdr() + [UInt8](repeating: 0xab, count: 2000), at: big + 8192)
    let cases: [(String, [ChainBuffer])] = [
        ("writable buffer in a transmit chain", [ChainBuffer(address: big, length: UInt32(hl + good.count), writable: W)]),
        ("readable after writable", [ChainBuffer(address: big, length: 8, writable: W), ChainBuffer(address: big + 8, length: 60, writable: R)]),
        ("buffer outside guest memory", [ChainBuffer(address: 0x7fff_0000_0000, length: 100, writable: R)]),
        ("buffer straddling the end of guest memory", [ChainBuffer(address: m.regions.last!.guestBase + m.regions.last!.size - 16, length: 64, writable: R)]),
        ("shorter than header + Ethernet header", [ChainBuffer(address: big, length: UInt32(hl + 10), writable: R)]),
        ("header only", [ChainBuffer(address: big, length: UInt32(hl), writable: R)]),
        ("non-GSO frame of 2000 bytes (MTU 1500)", [ChainBuffer(address: big + 8192, length: UInt32(hl + 2000), writable: R)]),
        ("frame of 200 KiB", [ChainBuffer(address: big, length: 200 << 10, writable: R)]),
        ("length wraps 4 GiB in two buffers", [ChainBuffer(address: big, length: 0xffff_fff0, writable: R), ChainBuffer(address: big, length: 64, writable: R)]),
    ]
    var seq: UInt16 = 100
    for (name, bufs) in cases {
        _ = try c.queueChain(bufs)
        c.kick(c.txKick)
        c.waitTx(timeoutMs: 500)
        seq += 1
        check(try ping(c, o, peerMAC: peerMAC, seq: seq, size: 56) && !c.needsReset(), "dropped: \(name); pings still answered")
    }
    // Headers the negotiated features forbid (no offloads were negotiated).
    let badHeaders: [(String, [UInt8])] = [
        ("NEEDS_CSUM without VIRTIO_NET_F_CSUM", hdr(flags: 1, csumStart: 34, csumOffset: 6)),
        ("TSO4 without VIRTIO_NET_F_HOST_TSO4", hdr(flags: 1, gso: 1, csumStart: 34, csumOffset: 16)),
        ("UFO gso_type", hdr(flags: 1, gso: 3, csumStart: 34, csumOffset: 6)),
        ("unknown gso_type 9", hdr(gso: 9)),
        ("unknown flags 0x80", hdr(flags: 0x80)),
    ]
    for (name, h) in badHeaders {
        try c.send(good, header: h)
        c.waitTx(timeoutMs: 500)
        seq += 1
        check(try ping(c, o, peerMAC: peerMAC, seq: seq, size: 56) && !c.needsReset(), "dropped: \(name); pings still answered")
    }
    // A descriptor loop breaks the ring (DEVICE_NEEDS_RESET); the back-end stays up.
    try c.tx.writeDescriptor(0, address: big, length: 64, flags: VirtqDescFlag.next, next: 1)
    try c.tx.writeDescriptor(1, address: big, length: 64, flags: VirtqDescFlag.next, next: 0)
    c.tx.reserve([0, 1]); try c.tx.publish(0)
    c.kick(c.txKick)
    var broken = false
    for _ in 0..<50 where !broken { usleep(20_000); broken = c.needsReset() }
    check(broken, "descriptor loop: transmit queue flagged DEVICE_NEEDS_RESET")
    c.frontend.disconnect()
    usleep(50_000)
    c = netConnect()
    seq += 1
    check(try ping(c, o, peerMAC: peerMAC, seq: seq, size: 56), "fresh connection after the broken ring: pings answered")
    print("net-malformed: \(failures == 0 ? "passed" : "\(failures) failures")")
    if failures > 0 { exit(1) }
}

@MainActor func netBench() throws {
    let o = NetOptions()
    let c = netConnect()
    let secs = Double(intOpt("--seconds", 3))
    // 60-byte frame (64 on the wire with FCS) to a MAC nobody owns: the bridge floods or drops it.
    let frame = Frames.ethernet(dst: [0x02, 0, 0, 0, 0, 0x99], src: o.mac, type: 0x0800,
                                Frames.ipv4(src: o.ip, dst: [o.peer[0], o.peer[1], o.peer[2], 254], proto: 17, Frames.udp(srcPort: 9, dstPort: 9, [UInt8](repeating: 0, count: 18))))
    precondition(frame.count == 60)
    var sent = 0
    let t0 = now()
    var end = t0 + secs
    while true {
        var n = 0
        while n < 64, try c.queueFrame(frame) { n += 1 }
        sent += n
        c.kick(c.txKick)
        if n == 0 { c.waitTx(timeoutMs: 10) }
        if now() >= end { break }
    }
    while c.txInFlight > 0 && now() < end + 2 { c.waitTx(timeoutMs: 10) }
    end = now()
    let done = sent - c.txInFlight
    print("tx_64b_pps=\(Int(Double(done) / (end - t0)))")
}

@MainActor func netRestart() throws {
    guard let cmd = opts["--backend-cmd"] else { fail("--backend-cmd 'CMD' is required") }
    let o = NetOptions()
    let kills = intOpt("--kills", 3)
    func start() -> pid_t {
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup("exec " + cmd), nil]
        let r = posix_spawn(&pid, "/bin/sh", nil, nil, argv, environ)
        if r != 0 { fail("posix_spawn: \(r)") }
        return pid
    }
    childPid = start()
    var c: VirtioNetClient?
    for _ in 0..<500 where c == nil {
        if let cl = try? VirtioNetClient(socketPath: netSocket), (try? cl.connect()) != nil { c = cl } else { usleep(10_000) }
    }
    guard let c else { fail("back-end never came up") }
    guard let peerMAC = try arp(c, o) else { fail("no ARP reply from the peer") }
    var seq: UInt16 = 1
    var failures = 0
    for k in 1...max(kills, 1) {
        // Frames in flight when the back-end dies.
        for _ in 0..<200 { _ = try c.queueFrame(Frames.arpRequest(senderMAC: o.mac, senderIP: o.ip, target: o.peer)) }
        c.kick(c.txKick)
        kill(childPid, SIGKILL)
        var st: Int32 = 0
        waitpid(childPid, &st, 0)
        let t0 = now()
        childPid = start()
        try c.reconnect(timeoutMs: 10_000)
        c.kick(c.rxKick); c.kick(c.txKick)
        var ok = false
        for _ in 0..<10 where !ok { seq += 1; ok = try ping(c, o, peerMAC: peerMAC, seq: seq, size: 56, timeoutMs: 500) }
        print("\(ok ? "ok" : "FAIL") restart \(k): pings answered \(Int((now() - t0) * 1000)) ms after SIGKILL; tx in flight \(c.txInFlight)")
        if !ok { failures += 1 }
    }
    // Every transmit slot must come back: the ring did not wedge.
    let until = now() + 5
    while c.txInFlight > 0 && now() < until { c.kick(c.txKick); c.waitTx(timeoutMs: 50) }
    print("\(c.txInFlight == 0 ? "ok" : "FAIL") every transmit chain completed after the restarts (\(c.txInFlight) left)")
    if c.txInFlight != 0 { failures += 1 }
    kill(childPid, SIGTERM)
    var st: Int32 = 0
    waitpid(childPid, &st, 0)
    childPid = 0
    print("net-restart: \(failures == 0 ? "passed" : "\(failures) failures")")
    if failures > 0 { exit(1) }
}
