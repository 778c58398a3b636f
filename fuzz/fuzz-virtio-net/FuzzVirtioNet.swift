// libFuzzer target: netback's device logic (NetBackend/VirtioNetDevice.swift and
// VirtioNetReceive.swift, virtio 1.2 §5.1.6) — receive chains filled straight from the
// "tap" (readv into guest buffers, mergeable buffers and num_buffers, the bounce buffer),
// transmit chain checks, and the rate limiter — on rings in a guest-memory image the input
// fills. The tap is one end of a SOCK_SEQPACKET socket pair (TapDevice(socket:)): the
// harness sends fuzzed frames (virtio-net header in front) on the other end and reads back
// what the device transmitted. No root, no /dev/net/tun.
//
// Input: byte 0 feature bits (1 INDIRECT_DESC, 2 EVENT_IDX, 4 MRG_RXBUF, 8 VERSION_1,
// 0x10 guest checksum/TSO, 0x20 host checksum/TSO, 0x40 a rate limit, 0x80 MTU 9000
// instead of 1500); byte 1 queue sizes (bits 0-2 receive, 3-5 transmit: 1 << n, at most
// 64) and bits 6-7 the rate; byte 2 bits 0-2 the number of frames, bits 3-7 where transmit
// kicks go between them; byte 3 how the driver posts buffers: 0 all at once, else avail->idx
// of both rings (as the image has it) less that many entries per kick still to come, so
// buffers appear between kicks (a bounced frame then finds room); then per frame a u16 length L, a byte C (bit 7 adds 100 to L,
// bits 0-6 the pattern length) and C & 0x7f pattern bytes repeated to L bytes; the rest
// fills guest memory (two 32 KiB regions with a hole). Receive ring at 0x0/0x400/0x500,
// transmit ring at 0x800/0xc00/0xd00, so rings and buffers fit in the first 20000 bytes
// (run.sh's -max_len).
//
// Checks beyond no crash: the used length of every receive chain never exceeds its
// device-writable bytes (entries the device's own frame writes may have overwritten, where
// the driver points receive buffers at the used ring, are not checked); num_buffers in a delivered frame's header is the number of chains
// it used; nothing shorter than a header + Ethernet header, longer than header + 64 KiB
// (GSO), or a non-GSO frame longer than the MTU + 18 reaches the tap, and as many frames
// reach it as the device counted.
import FuzzSupport
import CLinux
import GuestMemory
@testable import NetBackend
@testable import VhostUser
import Virtio
#if canImport(Glibc)
import Glibc
#endif

let regionSize: UInt64 = 0x8000
let layout: [(base: UInt64, size: UInt64)] = [(0, regionSize), (0x10000, regionSize)]
let memory: GuestMemory = {
    do { return try GuestMemory.memfd(name: "fuzz-net", layout: layout) } catch { fatalError("guest memory: \(error)") }
}()
/// A copy of guest memory plus a page for rings of our own, to walk every head's chain.
let shadowRings: UInt64 = 0x40000
let shadow: GuestMemory = {
    do { return try GuestMemory.memfd(name: "fuzz-net-shadow", layout: layout + [(shadowRings, 0x1000)]) }
    catch { fatalError("shadow memory: \(error)") }
}()

/// [0]: the device's "tap"; [1]: the host side the harness sends and receives frames on.
let pair: [Int32] = {
    var p: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &p) == 0 else { fatalError("socketpair") }
    var big: Int32 = 4 << 20
    for f in p { _ = setsockopt(f, SOL_SOCKET, SO_SNDBUF, &big, 4); _ = setsockopt(f, SOL_SOCKET, SO_RCVBUF, &big, 4) }
    _ = fcntl(p[1], F_SETFL, fcntl(p[1], F_GETFL) | O_NONBLOCK)
    return p
}()
let device: VirtioNetDevice = {
    do { return try VirtioNetDevice(tap: TapDevice(socket: pair[0]), mac: [2, 0x16, 0x3e, 0, 0, 1]) }
    catch { fatalError("device: \(error)") }
}()
let backend: VhostUserBackend = {
    do { return try VhostUserBackend(device: device, listenFd: socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)) }
    catch { fatalError("backend: \(error)") }
}()
nonisolated(unsafe) var frameBuf = [UInt8](repeating: 0, count: 1 << 17)

/// Empties a socket end; returns the length of every message on it (MSG_TRUNC: the real one).
@discardableResult func drain(_ fd: Int32) -> [(length: Int, gso: UInt8)] {
    var out: [(Int, UInt8)] = []
    while true {
        let n = frameBuf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_TRUNC)) }
        if n < 0 { return out }
        out.append((n, n > 1 ? frameBuf[1] : 0))
    }
}

/// Every head's chain (nil: not walkable) as the walker takes it from `memory` as it is now.
func walkAll(size: UInt16, descTable: UInt64, features: UInt64) -> [DescriptorChain?] {
    for (r, s) in zip(memory.regions, shadow.regions) { s.host.copyMemory(from: r.host, byteCount: Int(r.size)) }
    let page = shadow.regions[2]
    page.host.initializeMemory(as: UInt8.self, repeating: 0, count: Int(page.size))
    page.host.storeBytes(of: size.littleEndian, toByteOffset: 2, as: UInt16.self)
    for i in 0..<Int(size) { page.host.storeBytes(of: UInt16(i).littleEndian, toByteOffset: 4 + 2 * i, as: UInt16.self) }
    var out = [DescriptorChain?](repeating: nil, count: Int(size))
    guard let q = try? Virtqueue(memory: shadow, size: size, descTable: descTable, availRing: shadowRings,
                                 usedRing: shadowRings + 0x800, features: features) else { return out }
    for i in 0..<size {
        q.setLastAvailIdx(i)
        if let c = try? q.pop() { out[Int(c.head)] = c }
    }
    return out
}

/// Little-endian u16 at frame offset `o` of a chain's device-writable bytes (nil when they
/// are shorter, a buffer lies outside guest memory, or the bytes sit in the used ring
/// `used` that later entries overwrite).
func writableU16(_ c: DescriptorChain, at o: Int, usedRing used: Range<UInt64>) -> UInt16? {
    var bytes: [UInt8] = []
    var off = 0
    for b in c.writable where b.length > 0 && bytes.count < 2 {
        for i in 0..<Int(b.length) where off + i >= o && bytes.count < 2 {
            let a = b.address &+ UInt64(i)
            if used.contains(a) { return nil }
            guard let v = try? memory.load(UInt8.self, at: a) else { return nil }
            bytes.append(v)
        }
        off += Int(b.length)
    }
    return bytes.count == 2 ? UInt16(bytes[0]) | UInt16(bytes[1]) << 8 : nil
}

func fuzzVirtioNet(_ input: UnsafeBufferPointer<UInt8>) {
    guard input.count >= 4 else { return }
    let f0 = input[0], f1 = input[1], f2 = input[2], step = UInt16(input[3])
    var features: UInt64 = VirtioNetFeature.mac | VirtioNetFeature.status
    if f0 & 0x01 != 0 { features |= VirtioFeature.ringIndirectDesc }
    if f0 & 0x02 != 0 { features |= VirtioFeature.ringEventIdx }
    if f0 & 0x04 != 0 { features |= VirtioNetFeature.mrgRxbuf }
    if f0 & 0x08 != 0 { features |= VirtioFeature.version1 }
    if f0 & 0x10 != 0 { features |= VirtioNetFeature.guestCsum | VirtioNetFeature.guestTSO4 | VirtioNetFeature.guestTSO6 | VirtioNetFeature.guestECN }
    if f0 & 0x20 != 0 { features |= VirtioNetFeature.csum | VirtioNetFeature.hostTSO4 | VirtioNetFeature.hostTSO6 | VirtioNetFeature.hostECN }

    // The previous input's leftovers go; the device starts as after a reconnect.
    drain(pair[0]); drain(pair[1])
    device.queueReady(0, ring: nil); device.queueReady(1, ring: nil)
    backend.vrings[0].broken = false; backend.vrings[1].broken = false
    device.rxLen = 0
    device.txWaiting = false
    var off = itimerspec(); _ = timerfd_settime(device.timerFd, 0, &off, nil)
    device.limiter = f0 & 0x40 != 0
        ? RateLimiter(bytesPerInterval: [64, 1500, 9000, 70000][Int(f1 >> 6)], intervalMicroseconds: 1000, now: VirtioNetDevice.nowNs()) : nil
    device.config.mtu = f0 & 0x80 != 0 ? 9000 : 1500
    device.stats = NetStats()
    device.logged = [:]
    device.setNegotiatedFeatures(features)
    let hl = device.headerLength

    // Frames for the tap side.
    var p = 4
    var frames: [[UInt8]] = []
    for _ in 0..<Int(f2 & 7) {
        guard p + 3 <= input.count else { break }
        let c = Int(input[p + 2])
        let length = (Int(input[p]) | Int(input[p + 1]) << 8) + (c & 0x80 != 0 ? 100 : 0)
        p += 3
        let pattern = Array(input[p..<min(input.count, p + (c & 0x7f))])
        p += pattern.count
        frames.append(pattern.isEmpty ? [UInt8](repeating: 0, count: length) : (0..<length).map { pattern[$0 % pattern.count] })
    }
    fill(memory, with: UnsafeBufferPointer(rebasing: input[p...]))

    let rxSize = UInt16(1) << min(Int(f1 & 7), 6), txSize = UInt16(1) << min(Int((f1 >> 3) & 7), 6)
    let ringFeatures = features & (VirtioFeature.ringIndirectDesc | VirtioFeature.ringEventIdx)
    let rxQ: Virtqueue, txQ: Virtqueue
    do {
        rxQ = try Virtqueue(memory: memory, size: rxSize, descTable: 0, availRing: 0x400, usedRing: 0x500, features: ringFeatures)
        txQ = try Virtqueue(memory: memory, size: txSize, descTable: 0x800, availRing: 0xc00, usedRing: 0xd00, features: ringFeatures)
    } catch { fatalError("the fixed ring layout was refused: \(error)") }
    device.queueReady(0, ring: VhostUserRing(queue: rxQ, backend: backend, index: 0))
    device.queueReady(1, ring: VhostUserRing(queue: txQ, backend: backend, index: 1))
    let rxAvail = (try? memory.load(UInt16.self, at: 0x402)) ?? 0, txAvail = (try? memory.load(UInt16.self, at: 0xc02)) ?? 0
    let totalKicks = frames.count + 4 + (0..<frames.count).filter { f2 & (8 << min($0, 4)) != 0 }.count
    var kicks = 0
    /// The driver posts more buffers: avail->idx moves towards what the image says.
    func post() {
        let behind = Int(step) * max(0, totalKicks - kicks - 1)
        try? memory.store(rxAvail - UInt16(min(behind, Int(rxAvail))), at: 0x402)
        try? memory.store(txAvail - UInt16(min(behind, Int(txAvail))), at: 0xc02)
        kicks += 1
    }
    if step != 0 { post(); kicks = 0 }
    let usedRange = UInt64(0x500)..<UInt64(0x500 + 6 + 8 * Int(rxSize))

    // The chains as they were before each device call: the device took every chain it used
    // from one of these states (its own writes land between calls' walks).
    var walks = [walkAll(size: rxSize, descTable: 0, features: ringFeatures)]
    // Guest memory the device may write frames into: a used entry there may have been
    // overwritten by a later frame (a driver may point buffers at its own used ring).
    var writableRanges = Set<Range<UInt64>>()
    func noteWritable(_ w: [DescriptorChain?]) {
        for c in w.compactMap({ $0 }) {
            for b in c.writable where b.length > 0 {
                let (end, o) = b.address.addingReportingOverflow(UInt64(b.length))
                writableRanges.insert(b.address..<(o ? UInt64.max : end))
            }
        }
    }
    noteWritable(walks[0])
    var usedSeen = rxQ.nextUsedIdx   // the queue starts at the used index the image has
    var rxBroken = false, txBroken = false
    var txSent = 0

    func kickRx() {
        guard !rxBroken else { return }
        if step != 0 { post() }
        let framesBefore = device.stats.rxFrames
        do { try device.kicked(0) } catch { rxBroken = true; device.queueReady(0, ring: nil) }
        // Used entries added by this call: (head, length).
        var entries: [(UInt16, UInt32)] = []
        var clobbered = false
        while usedSeen != rxQ.nextUsedIdx {
            let o = 0x500 + 4 + 8 * UInt64(usedSeen % rxSize)
            usedSeen &+= 1
            if writableRanges.contains(where: { $0.overlaps(o..<(o + 8)) }) { clobbered = true; continue }
            let head = (try? memory.load(UInt32.self, at: o)) ?? 0, len = (try? memory.load(UInt32.self, at: o + 4)) ?? 0
            entries.append((UInt16(truncatingIfNeeded: head), len))
        }
        for (head, len) in entries where len > 0 {
            guard Int(head) < Int(rxSize) else { fatalError("used head \(head) outside a queue of \(rxSize)") }
            let room = walks.compactMap { $0[Int(head)]?.writableLength }.max() ?? 0
            if UInt64(len) > room { fatalError("used length \(len) exceeds chain \(head)'s \(room) writable bytes") }
        }
        let used = entries.filter { $0.1 > 0 }
        if hl == VirtioNetHeader.size, !clobbered, device.stats.rxFrames == framesBefore + 1, let first = used.first {
            // One frame delivered: its chains are the non-empty entries, its header in the first.
            let seen = walks.compactMap { w in w[Int(first.0)].flatMap { writableU16($0, at: VirtioNetHeader.numBuffersOffset, usedRing: usedRange) } }
            if !seen.isEmpty && !seen.contains(UInt16(truncatingIfNeeded: used.count)) {
                fatalError("num_buffers \(seen) for a frame delivered in \(used.count) chains")
            }
        }
        walks.append(walkAll(size: rxSize, descTable: 0, features: ringFeatures))
        noteWritable(walks[walks.count - 1])
    }
    func kickTx() {
        guard !txBroken else { return }
        if step != 0 { post() }
        let before = device.stats.txFrames
        do { try device.kicked(1) } catch { txBroken = true; device.queueReady(1, ring: nil) }
        if device.txWaiting {
            device.timerFired()   // what the timerfd would do, early; a throw there marks the ring broken
            if backend.vrings[1].broken { txBroken = true; device.queueReady(1, ring: nil) }
        }
        txSent += Int(device.stats.txFrames - before)
        let mtuFrame = Int(device.config.mtu) + 18
        let got = drain(pair[1])
        for m in got {
            if m.length < hl + 14 { fatalError("a \(m.length)-byte frame reached the tap (header \(hl))") }
            if m.length > hl + VirtioNetDevice.maxGSOFrame { fatalError("a \(m.length)-byte frame reached the tap") }
            if m.gso == VirtioNetHeader.gsoNone && m.length > hl + mtuFrame {
                fatalError("a non-GSO \(m.length - hl)-byte frame reached the tap (MTU \(device.config.mtu))")
            }
        }
        if got.count != Int(device.stats.txFrames - before) {
            fatalError("\(got.count) frames reached the tap, the device counted \(device.stats.txFrames - before)")
        }
        walks.append(walkAll(size: rxSize, descTable: 0, features: ringFeatures))
        noteWritable(walks[walks.count - 1])
    }

    kickRx()
    for (i, f) in frames.enumerated() {
        if f2 & (8 << min(i, 4)) != 0 { kickTx() }
        _ = f.withUnsafeBytes { send(pair[1], $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        kickRx()
    }
    kickTx()
    kickRx()
    kickTx()
    if verbose { print("features 0x\(String(device.features, radix: 16)) header \(hl) frames \(frames.map(\.count)): \(device.stats.line)") }
}

/// FUZZ_VERBOSE set: one line of device counters per input (to see what a seed reaches).
let verbose = getenv("FUZZ_VERBOSE") != nil

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzVirtioNet) }
}
