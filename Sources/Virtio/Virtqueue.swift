import GuestMemory
import Synchronization

/// The device side of one split virtqueue (virtio 1.2 §2.7) in guest memory.
///
/// Ring areas are checked once, when the queue is created: each must be aligned (§2.7:
/// descriptor table 16, avail ring 2, used ring 4) and lie inside one guest-memory region.
/// After that every guest-controlled value read from the rings (avail index, head and
/// `next` indices, indirect tables, buffer addresses) is checked before use; a bad value
/// throws ``VirtioError`` and never touches memory outside the regions.
///
/// Not thread-safe: one thread serves one queue. The queue keeps `memory` alive.
public final class Virtqueue: @unchecked Sendable {
    /// Number of descriptors (power of two, 1...32768).
    public let size: UInt16
    /// Guest memory holding the rings and buffers.
    public let memory: GuestMemory
    /// Guest-physical addresses of the descriptor table, avail ring and used ring.
    public let descTable: UInt64, availRing: UInt64, usedRing: UInt64
    /// VIRTIO_F_RING_INDIRECT_DESC negotiated.
    public let indirect: Bool
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    public let eventIdx: Bool
    /// Free-running index of the next avail-ring entry to take (vhost-user "vring base").
    public private(set) var lastAvailIdx: UInt16
    /// Free-running index of the next used-ring entry to fill (not yet published).
    public private(set) var nextUsedIdx: UInt16
    /// `nextUsedIdx` at the last notification decision (for event idx).
    private var signalledUsedIdx: UInt16
    private var signalledValid = false

    private let desc: UnsafeMutableRawPointer
    private let avail: UnsafeMutableRawPointer
    private let used: UnsafeMutableRawPointer

    /// Creates the device view of a queue the driver has set up.
    /// - Parameters:
    ///   - size: queue size (power of two, 1...32768).
    ///   - descTable, availRing, usedRing: guest-physical addresses.
    ///   - features: negotiated feature bits (only ring bits are looked at).
    ///   - lastAvailIdx: where to resume taking avail entries (0 for a fresh queue).
    ///   The next used index is read from the used ring, so a queue resumed after a device
    ///   restart continues where the published used index stands.
    /// - Throws: ``VirtioError/badQueueSize(_:)``, ``VirtioError/badRingAddress(_:_:)``.
    public init(memory: GuestMemory, size: UInt16, descTable: UInt64, availRing: UInt64,
                usedRing: UInt64, features: UInt64, lastAvailIdx: UInt16 = 0) throws(VirtioError) {
        guard size > 0, size & (size &- 1) == 0, size <= 32768 else { throw .badQueueSize(size) }
        let n = Int(size)
        guard descTable % 16 == 0 else { throw .badRingAddress("descriptor table", descTable) }
        guard availRing % 2 == 0 else { throw .badRingAddress("avail ring", availRing) }
        guard usedRing % 4 == 0 else { throw .badRingAddress("used ring", usedRing) }
        do { desc = try memory.slice(at: descTable, count: 16 * n).baseAddress! }
        catch { throw .badRingAddress("descriptor table", descTable) }
        do { avail = try memory.slice(at: availRing, count: 6 + 2 * n).baseAddress! }
        catch { throw .badRingAddress("avail ring", availRing) }
        do { used = try memory.slice(at: usedRing, count: 6 + 8 * n).baseAddress! }
        catch { throw .badRingAddress("used ring", usedRing) }
        self.memory = memory
        self.size = size
        self.descTable = descTable; self.availRing = availRing; self.usedRing = usedRing
        self.indirect = features & VirtioFeature.ringIndirectDesc != 0
        self.eventIdx = features & VirtioFeature.ringEventIdx != 0
        self.lastAvailIdx = lastAvailIdx
        let u = UInt16(littleEndian: used.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        self.nextUsedIdx = u
        self.signalledUsedIdx = u
    }

    // MARK: ring fields

    /// avail->idx, read with acquire ordering.
    @inline(__always) public var availIdx: UInt16 {
        let v = UInt16(littleEndian: avail.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        atomicMemoryFence(ordering: .acquiring)
        return v
    }
    /// used->idx as published in guest memory.
    public var publishedUsedIdx: UInt16 {
        UInt16(littleEndian: used.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
    }

    /// Moves the avail cursor (vhost-user SET_VRING_BASE, in-flight replay).
    public func setLastAvailIdx(_ v: UInt16) { lastAvailIdx = v }

    /// Number of avail entries not yet taken.
    /// - Throws: ``VirtioError/availIndexJump(lastSeen:now:)`` when the driver moved
    ///   avail->idx more than `size` past the last entry taken (§2.7.6): the device is broken.
    public func pending() throws(VirtioError) -> UInt16 {
        let now = availIdx
        let n = now &- lastAvailIdx
        guard n <= size else { throw .availIndexJump(lastSeen: lastAvailIdx, now: now) }
        return n
    }

    /// Takes the next available descriptor chain, or nil when the avail ring is empty.
    /// With event idx, publishes avail_event before returning nil and re-checks, so no
    /// kick is missed.
    /// - Throws: ``VirtioError``; every case but `.memory`/`.readAfterWrite` breaks the device.
    public func pop() throws(VirtioError) -> DescriptorChain? {
        var n = try pending()
        if n == 0 {
            guard eventIdx else { return nil }
            used.storeBytes(of: lastAvailIdx.littleEndian, toByteOffset: 4 + 8 * Int(size), as: UInt16.self)
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            n = try pending()
            if n == 0 { return nil }
        }
        let slot = Int(lastAvailIdx % size)
        let head = UInt16(littleEndian: avail.loadUnaligned(fromByteOffset: 4 + 2 * slot, as: UInt16.self))
        lastAvailIdx &+= 1
        return try chain(head: head)
    }

    /// Reads one descriptor of the table; `i` must be < size.
    @inline(__always)
    private func descriptor(_ i: UInt16) -> (addr: UInt64, len: UInt32, flags: UInt16, next: UInt16) {
        let o = 16 * Int(i)
        return (UInt64(littleEndian: desc.loadUnaligned(fromByteOffset: o, as: UInt64.self)),
                UInt32(littleEndian: desc.loadUnaligned(fromByteOffset: o + 8, as: UInt32.self)),
                UInt16(littleEndian: desc.loadUnaligned(fromByteOffset: o + 12, as: UInt16.self)),
                UInt16(littleEndian: desc.loadUnaligned(fromByteOffset: o + 14, as: UInt16.self)))
    }

    /// Walks the chain starting at descriptor `head` (virtio 1.2 §2.7.5), expanding an
    /// indirect table (§2.7.5.3). Used by ``pop()`` and to replay in-flight requests.
    /// - Throws: ``VirtioError/descriptorIndexOutOfRange(_:)``, ``VirtioError/chainLoop(head:)``,
    ///   ``VirtioError/badIndirect(head:_:)``, ``VirtioError/indirectNotNegotiated(head:)``.
    public func chain(head: UInt16) throws(VirtioError) -> DescriptorChain {
        guard head < size else { throw .descriptorIndexOutOfRange(head) }
        var buffers: [ChainBuffer] = []
        buffers.reserveCapacity(4)
        var i = head
        var count = 0
        while true {
            count += 1
            guard count <= Int(size) else { throw .chainLoop(head: head) }
            let d = descriptor(i)
            if d.flags & VirtqDescFlag.indirect != 0 {
                guard indirect else { throw .indirectNotNegotiated(head: head) }
                guard d.flags & VirtqDescFlag.next == 0 else { throw .badIndirect(head: head, "INDIRECT with NEXT") }
                guard d.len > 0, d.len % 16 == 0 else { throw .badIndirect(head: head, "table length \(d.len)") }
                let entries = Int(d.len / 16)
                guard entries + buffers.count <= Int(size) else { throw .badIndirect(head: head, "table of \(entries) entries exceeds queue size") }
                let table: UnsafeMutableRawBufferPointer
                do { table = try memory.slice(at: d.addr, count: Int(d.len)) }
                catch { throw .badIndirect(head: head, "table outside guest memory") }
                var j = 0
                var seen = 0
                while true {
                    seen += 1
                    guard seen <= entries else { throw .badIndirect(head: head, "loop in table") }
                    let o = 16 * j
                    let a = UInt64(littleEndian: table.loadUnaligned(fromByteOffset: o, as: UInt64.self))
                    let l = UInt32(littleEndian: table.loadUnaligned(fromByteOffset: o + 8, as: UInt32.self))
                    let f = UInt16(littleEndian: table.loadUnaligned(fromByteOffset: o + 12, as: UInt16.self))
                    let nx = UInt16(littleEndian: table.loadUnaligned(fromByteOffset: o + 14, as: UInt16.self))
                    guard f & VirtqDescFlag.indirect == 0 else { throw .badIndirect(head: head, "nested indirect") }
                    buffers.append(ChainBuffer(address: a, length: l, writable: f & VirtqDescFlag.write != 0))
                    if f & VirtqDescFlag.next == 0 { break }
                    guard Int(nx) < entries else { throw .badIndirect(head: head, "next \(nx) out of table") }
                    j = Int(nx)
                }
                break  // an indirect descriptor ends the chain (NEXT was refused above)
            }
            buffers.append(ChainBuffer(address: d.addr, length: d.len, writable: d.flags & VirtqDescFlag.write != 0))
            if d.flags & VirtqDescFlag.next == 0 { break }
            guard d.next < size else { throw .descriptorIndexOutOfRange(d.next) }
            i = d.next
        }
        return DescriptorChain(head: head, buffers: buffers)
    }

    /// Writes one used-ring element (id = `head`, `length` bytes written into the chain's
    /// device-writable buffers) without publishing it. Call ``publishUsed()`` after a batch.
    public func addUsed(head: UInt16, length: UInt32) {
        let o = 4 + 8 * Int(nextUsedIdx % size)
        used.storeBytes(of: UInt32(head).littleEndian, toByteOffset: o, as: UInt32.self)
        used.storeBytes(of: length.littleEndian, toByteOffset: o + 4, as: UInt32.self)
        nextUsedIdx &+= 1
    }

    /// Publishes used->idx (release ordering after the elements) (§2.7.8).
    public func publishUsed() {
        atomicMemoryFence(ordering: .releasing)
        used.storeBytes(of: nextUsedIdx.littleEndian, toByteOffset: 2, as: UInt16.self)
    }

    /// Whether the driver wants a used-buffer notification for what was published since
    /// the last call (§2.7.7: avail flags NO_INTERRUPT, or used_event with event idx).
    public func needsNotification() -> Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let new = nextUsedIdx
        let old = signalledUsedIdx
        let wasValid = signalledValid
        signalledUsedIdx = new
        signalledValid = true
        if eventIdx {
            if !wasValid { return true }
            let usedEvent = UInt16(littleEndian: avail.loadUnaligned(fromByteOffset: 4 + 2 * Int(size), as: UInt16.self))
            // vring_need_event: notify if used_event lies in [old, new).
            return (new &- usedEvent &- 1) < (new &- old)
        }
        let flags = UInt16(littleEndian: avail.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
        return flags & 1 == 0
    }
}
