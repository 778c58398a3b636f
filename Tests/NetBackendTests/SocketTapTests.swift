import Testing
import Foundation
import GuestMemory
@testable import VhostUser
import Virtio
@testable import NetBackend

/// netback driven in-process over the socket stand-in for a tap (`TapDevice(socket:)`, as
/// fuzz/fuzz-virtio-net uses it): no root, no /dev/net/tun. Rings are laid out by hand in
/// one 64 KiB region: receive at 0x0/0x400/0x500, transmit at 0x800/0xc00/0xd00.
final class SocketRig {
    let peer: Int32
    let dev: VirtioNetDevice
    let memory: GuestMemory
    let backend: VhostUserBackend
    let rx: Virtqueue, tx: Virtqueue
    var rxDescs = 0, txDescs = 0

    init(features: UInt64) throws {
        var p: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &p) == 0)
        peer = p[1]
        dev = try VirtioNetDevice(tap: TapDevice(socket: p[0], owns: true), mac: [2, 0, 0, 0, 0, 1], offloads: false)
        dev.setNegotiatedFeatures(features)
        memory = try GuestMemory.memfd(name: "socket-tap", layout: [(0, 0x10000)])
        rx = try Virtqueue(memory: memory, size: 8, descTable: 0, availRing: 0x400, usedRing: 0x500, features: 0)
        tx = try Virtqueue(memory: memory, size: 8, descTable: 0x800, availRing: 0xc00, usedRing: 0xd00, features: 0)
        backend = try VhostUserBackend(device: dev, listenFd: socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0))
        dev.queueReady(0, ring: VhostUserRing(queue: rx, backend: backend, index: 0))
        dev.queueReady(1, ring: VhostUserRing(queue: tx, backend: backend, index: 1))
    }
    deinit { close(peer) }

    /// Posts a one-buffer chain at `address` on the receive (`writable`) or transmit ring.
    func post(_ address: UInt64, _ length: UInt32, writable: Bool) throws {
        let (desc, avail, i) = writable ? (UInt64(0), UInt64(0x400), rxDescs) : (UInt64(0x800), UInt64(0xc00), txDescs)
        try memory.store(address, at: desc + 16 * UInt64(i))
        try memory.store(length, at: desc + 16 * UInt64(i) + 8)
        try memory.store(UInt16(writable ? 2 : 0), at: desc + 16 * UInt64(i) + 12)
        try memory.store(UInt16(i), at: avail + 4 + 2 * UInt64(i % 8))
        try memory.store(UInt16(i + 1), at: avail + 2)
        if writable { rxDescs += 1 } else { txDescs += 1 }
    }
}

@Suite struct SocketTapTests {
    /// A frame sent on the peer end lands in the receive chain with num_buffers 1; a
    /// transmit chain comes out on the peer end whole; the header size is recorded.
    @Test func socketStandInCarriesFramesBothWays() throws {
        let r = try SocketRig(features: VirtioFeature.version1 | VirtioNetFeature.mrgRxbuf)
        #expect(r.dev.tap.vnetHeaderSize == 12)
        let frame: [UInt8] = [UInt8](repeating: 0, count: 12) + [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xb5] + (0..<46).map { UInt8($0) }
        try r.post(0x1000, 2048, writable: true)
        #expect(send(r.peer, frame, frame.count, 0) == frame.count)
        try r.dev.kicked(0)
        #expect(r.rx.nextUsedIdx == 1)
        #expect(try r.memory.load(UInt32.self, at: 0x500 + 8) == UInt32(frame.count))
        var expected = frame; expected[10] = 1
        #expect(try r.memory.read(at: 0x1000, count: frame.count) == expected)

        try r.memory.write(frame, at: 0x2000)
        try r.post(0x2000, UInt32(frame.count), writable: false)
        try r.dev.kicked(1)
        var got = [UInt8](repeating: 0, count: 4096)
        let n = recv(r.peer, &got, got.count, Int32(MSG_DONTWAIT))
        #expect(n == frame.count && Array(got.prefix(max(n, 0))) == frame)
        #expect(r.dev.stats.txFrames == 1 && r.dev.stats.rxFrames == 1)
    }
}
