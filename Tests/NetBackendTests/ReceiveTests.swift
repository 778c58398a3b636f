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
@Test(arguments: [UInt16(9000), UInt16(1500)])
func framesSpanningChainsArriveWholeAndInOrder(configMTU: UInt16) throws {
    guard getuid() == 0, access("/dev/net/tun", R_OK | W_OK) == 0 else { print("SKIP: needs root and /dev/net/tun"); return }
    let name = "xrx\(getpid() % 100_000)\(configMTU == 9000 ? "j" : "s")"
    let tap: TapDevice
    do { tap = try TapDevice.open(name: name) } catch { print("SKIP: tap \(name): \(error)"); return }
    try? "1".write(toFile: "/proc/sys/net/ipv6/conf/\(name)/disable_ipv6", atomically: false, encoding: .utf8)
    let ip = Process()
    ip.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
    ip.arguments = ["link", "set", "dev", name, "mtu", "9000", "up"]
    do { try ip.run(); ip.waitUntilExit() } catch { print("SKIP: ip link: \(error)"); return }
    guard ip.terminationStatus == 0,
          let idx = (try? String(contentsOfFile: "/sys/class/net/\(name)/ifindex", encoding: .utf8))
            .flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
        print("SKIP: cannot bring \(name) up"); return
    }

    let mac: [UInt8] = [0x02, 0x16, 0x3e, 0x00, 0x00, 0x43]
    let dev = try VirtioNetDevice(tap: tap, mac: mac, offloads: false)
    // With a 9000-byte MTU in config space netback lines up 9 KiB of buffers before each
    // read (jumbo frames land in place); with 1500 a jumbo frame overflows into the bounce
    // buffer and is copied.
    dev.config.mtu = configMTU
    let path = "/tmp/xenith-netrx-\(getpid())-\(configMTU).sock"
    let backend = try VhostUserBackend(device: dev, listenFd: try vhostUserListen(path: path))
    try dev.attach(to: backend)
    let done = Mutex(false)
    spawnThread { try? backend.run(); done.withLock { $0 = true } }
    defer {
        backend.stop()
        for _ in 0..<200 where !done.withLock({ $0 }) { usleep(5000) }
        unlink(path)
    }
    // 8 buffers of 2 KiB: a 9000-byte frame takes 5, so the second one finds only 3 and
    // must wait until the driver has taken the first and posted its buffers again.
    let c = try VirtioNetClient(socketPath: path, queueSize: 8, rxBufferBytes: 2048)
    try c.connect()
    func frame(_ n: Int, _ seed: UInt8) -> [UInt8] {
        mac + [0x02, 0, 0, 0, 0, seed, 0x88, 0xb5] + (0..<(n - 14)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }
    }
    let sent = [frame(60, 1), frame(9000, 2), frame(9000, 3), frame(3000, 4), frame(1514, 5)]
    for f in sent { #expect(sendOnInterface(idx, f)) }
    var got: [[UInt8]] = []
    for _ in 0..<50 where got.count < sent.count { got += try c.receive(timeoutMs: 100).map(\.frame) }
    #expect(got.count == sent.count)
    for (i, (g, s)) in zip(got, sent).enumerated() { #expect(g == s, "frame \(i): \(g.count) bytes, sent \(s.count)") }
    #expect(dev.stats.rxFrames == UInt64(sent.count) && dev.stats.rxDropped == 0 && dev.stats.rxMalformed == 0)
    #expect(!c.needsReset())
}
