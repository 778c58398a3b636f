import Testing
import Foundation
import Synchronization
import GuestMemory
import VhostUser
import VhostUserTesting
import Virtio
@testable import NetBackend

/// Sends `frame` out of interface `ifindex` through an AF_PACKET socket: the tap hands it
/// to its reader (netback) as a frame for the guest. Returns false when that fails.
func sendOnInterface(_ ifindex: Int32, _ frame: [UInt8]) -> Bool {
    let s = socket(AF_PACKET, Int32(SOCK_RAW.rawValue), 0)
    guard s >= 0 else { return false }
    defer { close(s) }
    // struct sockaddr_ll: family u16, protocol be16, ifindex i32, hatype u16, pkttype u8,
    // halen u8, addr[8].
    var sll = [UInt8](repeating: 0, count: 20)
    sll[0] = UInt8(AF_PACKET & 0xff); sll[1] = UInt8(AF_PACKET >> 8)
    withUnsafeBytes(of: ifindex) { for i in 0..<4 { sll[4 + i] = $0[i] } }
    sll[11] = 6
    for i in 0..<6 { sll[12 + i] = frame[i] }
    let n = sll.withUnsafeBytes { a in
        frame.withUnsafeBytes { f in
            sendto(s, f.baseAddress, f.count, 0, a.baseAddress!.assumingMemoryBound(to: sockaddr.self), 20)
        }
    }
    return n == frame.count
}

/// DESIGN.md "Back-ends during migration": while VHOST_F_LOG_ALL is negotiated, netback marks
/// the receive buffer a frame went into and the used ring in the SET_LOG_BASE bitmap.
@Test func receivedFrameMarksItsBufferAndTheUsedRing() throws {
    guard getuid() == 0, access("/dev/net/tun", R_OK | W_OK) == 0 else { print("SKIP: needs root and /dev/net/tun"); return }
    let name = "xdl\(getpid() % 100_000)"
    let tap: TapDevice
    do { tap = try TapDevice.open(name: name) } catch { print("SKIP: tap \(name): \(error)"); return }
    // No IPv6 on the tap (no router or neighbour solicitations): the test's frame is the only one.
    try? "1".write(toFile: "/proc/sys/net/ipv6/conf/\(name)/disable_ipv6", atomically: false, encoding: .utf8)
    let ip = Process()
    ip.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
    ip.arguments = ["link", "set", "dev", name, "up"]
    do { try ip.run(); ip.waitUntilExit() } catch { print("SKIP: ip link: \(error)"); return }
    guard ip.terminationStatus == 0,
          let idx = (try? String(contentsOfFile: "/sys/class/net/\(name)/ifindex", encoding: .utf8))
            .flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
        print("SKIP: cannot bring \(name) up"); return
    }

    let mac: [UInt8] = [0x02, 0x16, 0x3e, 0x00, 0x00, 0x42]
    let dev = try VirtioNetDevice(tap: tap, mac: mac, offloads: false)
    let path = "/tmp/xenith-netlog-\(getpid()).sock"
    let backend = try VhostUserBackend(device: dev, listenFd: try vhostUserListen(path: path))
    try dev.attach(to: backend)
    let done = Mutex(false)
    spawnThread { try? backend.run(); done.withLock { $0 = true } }
    defer {
        backend.stop()
        for _ in 0..<200 where !done.withLock({ $0 }) { usleep(5000) }
        unlink(path)
    }
    let c = try VirtioNetClient(socketPath: path, queueSize: 64)
    try c.connect()
    let log = try DirtyBitmap(size: 4096)
    try c.frontend.setLogBase(fd: log.fd, size: UInt64(log.size))
    try c.frontend.setDirtyLogging(true)
    #expect(log.markedPages.isEmpty)

    let usedBefore: UInt16 = try c.memory.load(at: c.rx.usedRing + 2)
    let frame = mac + [0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5] + (0..<200).map { UInt8(truncatingIfNeeded: $0) }
    #expect(sendOnInterface(idx, frame))
    var got: [(header: [UInt8], frame: [UInt8])] = []
    for _ in 0..<30 where got.isEmpty { got = try c.receive(timeoutMs: 100) }
    #expect(got.count == 1 && got.first?.frame == frame)

    // What the back-end wrote: the used chain's first `len` bytes (header + frame) and, in
    // the used ring, the element, used->idx and avail_event.
    let slot = UInt64(usedBefore % c.queueSize)
    let id: UInt32 = try c.memory.load(at: c.rx.usedRing + 4 + 8 * slot)
    let len: UInt32 = try c.memory.load(at: c.rx.usedRing + 8 + 8 * slot)
    let addr: UInt64 = try c.memory.load(at: c.rx.descTable + 16 * UInt64(id))
    #expect(Int(len) == c.headerLength + frame.count)
    let u = c.rx.usedRing
    let expected = DirtyBitmap.pages(addr, UInt64(len))
        .union(DirtyBitmap.pages(u + 4 + 8 * slot, 8)).union(DirtyBitmap.pages(u + 2, 2))
        .union(DirtyBitmap.pages(u + 4 + 8 * UInt64(c.queueSize), 2))
    #expect(Set(log.markedPages) == expected)
    #expect(backend.unloggedWrites == 0)
}
