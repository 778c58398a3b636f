import Testing
import Foundation
import Synchronization
import GuestMemory
import VhostUser
import VhostUserTesting
import Virtio
@testable import NetBackend

/// The receive path reads frames from the tap straight into the guest's mergeable buffers
/// (several chains per frame, num_buffers in the header), and a frame that did not fit the
/// buffers posted when it was read waits in the bounce buffer until the guest posts more;
/// frames arrive whole and in order either way.
/// A netback device on a fresh tap (MTU 9000, no IPv6 chatter) served on its own
/// vhost-user socket and event-loop thread; `stop()` ends both.
final class RxRig: @unchecked Sendable {
    let idx: Int32
    let dev: VirtioNetDevice
    let backend: VhostUserBackend
    let path: String
    let done = Mutex(false)
    let mac: [UInt8] = [0x02, 0x16, 0x3e, 0x00, 0x00, 0x43]

    /// nil (after printing SKIP) without root, /dev/net/tun or `ip`.
    static func make(_ tag: String, configMTU: UInt16) throws -> RxRig? {
        guard getuid() == 0, access("/dev/net/tun", R_OK | W_OK) == 0 else { print("SKIP: needs root and /dev/net/tun"); return nil }
        let name = "xrx\(getpid() % 100_000)\(tag)"
        let tap: TapDevice
        do { tap = try TapDevice.open(name: name) } catch { print("SKIP: tap \(name): \(error)"); return nil }
        try? "1".write(toFile: "/proc/sys/net/ipv6/conf/\(name)/disable_ipv6", atomically: false, encoding: .utf8)
        let ip = Process()
        ip.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        ip.arguments = ["link", "set", "dev", name, "mtu", "9000", "up"]
        do { try ip.run(); ip.waitUntilExit() } catch { print("SKIP: ip link: \(error)"); return nil }
        guard ip.terminationStatus == 0,
              let idx = (try? String(contentsOfFile: "/sys/class/net/\(name)/ifindex", encoding: .utf8))
                .flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
            print("SKIP: cannot bring \(name) up"); return nil
        }
        return try RxRig(tap: tap, idx: idx, tag: tag, configMTU: configMTU)
    }

    init(tap: TapDevice, idx: Int32, tag: String, configMTU: UInt16) throws {
        self.idx = idx
        dev = try VirtioNetDevice(tap: tap, mac: mac, offloads: false)
        dev.config.mtu = configMTU
        path = "/tmp/xenith-netrx-\(getpid())-\(tag).sock"
        backend = try VhostUserBackend(device: dev, listenFd: try vhostUserListen(path: path))
        try dev.attach(to: backend)
        let me = self
        spawnThread { try? me.backend.run(); me.done.withLock { $0 = true } }
    }

    func stop() {
        backend.stop()
        for _ in 0..<200 where !done.withLock({ $0 }) { usleep(5000) }
        unlink(path)
    }

    /// An Ethernet frame of `n` bytes to the guest's MAC, its payload derived from `seed`.
    func frame(_ n: Int, _ seed: UInt8) -> [UInt8] {
        mac + [0x02, 0, 0, 0, 0, seed, 0x88, 0xb5] + (0..<(n - 14)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }
    }

    /// Sends `frames` into the tap and returns what the driver received (up to ~5 s).
    func roundTrip(_ c: VirtioNetClient, _ frames: [[UInt8]]) throws -> [[UInt8]] {
        for f in frames { #expect(sendOnInterface(idx, f)) }
        var got: [[UInt8]] = []
        for _ in 0..<50 where got.count < frames.count { got += try c.receive(timeoutMs: 100).map(\.frame) }
        return got
    }
}

/// The receive path reads frames from the tap straight into the guest's mergeable buffers
/// (several chains per frame, num_buffers in the header), and a frame that did not fit the
/// buffers posted when it was read waits in the bounce buffer until the guest posts more;
/// frames arrive whole and in order either way.
@Test(arguments: [UInt16(9000), UInt16(1500)])
func framesSpanningChainsArriveWholeAndInOrder(configMTU: UInt16) throws {
    // With a 9000-byte MTU in config space netback lines up 9 KiB of buffers before each
    // read (jumbo frames land in place); with 1500 a jumbo frame overflows into the bounce
    // buffer and is copied.
    guard let r = try RxRig.make(configMTU == 9000 ? "j" : "s", configMTU: configMTU) else { return }
    defer { r.stop() }
    // 8 buffers of 2 KiB: a 9000-byte frame takes 5, so the second one finds only 3 and
    // must wait until the driver has taken the first and posted its buffers again.
    let c = try VirtioNetClient(socketPath: r.path, queueSize: 8, rxBufferBytes: 2048)
    try c.connect()
    let sent = [r.frame(60, 1), r.frame(9000, 2), r.frame(9000, 3), r.frame(3000, 4), r.frame(1514, 5)]
    let got = try r.roundTrip(c, sent)
    #expect(got.count == sent.count)
    for (i, (g, s)) in zip(got, sent).enumerated() { #expect(g == s, "frame \(i): \(g.count) bytes, sent \(s.count)") }
    #expect(r.dev.stats.rxFrames == UInt64(sent.count) && r.dev.stats.rxDropped == 0 && r.dev.stats.rxMalformed == 0)
    #expect(!c.needsReset())
}

/// Receive chains a hostile driver posts — a device-readable buffer, a buffer outside guest
/// memory, an empty buffer — come back unused (length 0) and counted, whether they lead the
/// avail ring or follow chains netback already took for a frame that needs more room (those
/// then come back empty too); the frames around them arrive whole and the queue keeps working.
@Test func hostileReceiveChainsAreReturnedEmpty() throws {
    guard let r = try RxRig.make("h", configMTU: 9000) else { return }
    defer { r.stop() }
    let c = try VirtioNetClient(socketPath: r.path, queueSize: 16, rxBufferBytes: 2048)
    // Published before connect(): they lead the ring and take three descriptors, so
    // connect() posts 13 good buffers behind them.
    let hostile = [[ChainBuffer(address: c.rxBase, length: 2048, writable: false)],
                   [ChainBuffer(address: 0x7fff_0000_0000, length: 2048, writable: true)],
                   [ChainBuffer(address: c.rxBase, length: 0, writable: true)]]
    for h in hostile { try c.rx.publish(try #require(try c.rx.add(h))) }
    try c.connect()
    let first = [r.frame(60, 1), r.frame(9000, 2), r.frame(1514, 3)]
    let got1 = try r.roundTrip(c, first)
    let same1 = got1 == first
    #expect(same1, "got \(got1.map(\.count)), sent \(first.map(\.count))")
    #expect(r.dev.stats.rxMalformed == 3)
    // Two more behind the buffers the driver just posted again (and behind chains netback
    // holds for the next frame): they wait their turn, then come back empty.
    for h in hostile.prefix(2) { try c.rx.publish(try #require(try c.rx.add(h))) }
    c.kick(c.rxKick)
    let second = (0..<6).map { r.frame(9000, UInt8(10 + $0)) }
    let got2 = try r.roundTrip(c, second)
    let same2 = got2 == second
    #expect(same2, "got \(got2.map(\.count)), sent \(second.map(\.count))")
    #expect(r.dev.stats.rxMalformed == 5)
    #expect(r.dev.stats.rxFrames == 9, "\(r.dev.stats.line)")
    #expect(r.dev.stats.rxDropped == 0)
    #expect(!c.needsReset())
}
