import GuestMemory
import Synchronization

/// The driver side of one split virtqueue (virtio 1.2 §2.7.13), for synthetic frontends and
/// tests: it plays the guest. Zeroes the rings on creation. Not thread-safe.
public final class VirtqueueDriver: @unchecked Sendable {
    public let memory: GuestMemory
    /// Queue size (power of two).
    public let size: UInt16
    /// Guest-physical ring addresses.
    public let descTable: UInt64, availRing: UInt64, usedRing: UInt64
    /// Free-running avail index (next slot the driver fills).
    public private(set) var availIdx: UInt16 = 0
    /// Free-running index of the next used element the driver will read.
    public private(set) var lastUsedIdx: UInt16 = 0
    private var freeList: [UInt16]
    private var chainDescs: [[UInt16]]

    /// Bytes of guest memory the three rings of a queue of `size` need, laid out as
    /// descriptor table, avail ring, used ring (each aligned to 16/2/4; used starts 4 KiB aligned).
    public static func ringBytes(size: UInt16) -> (desc: UInt64, avail: UInt64, used: UInt64, total: UInt64) {
        let n = UInt64(size)
        let d = 16 * n
        let a = 6 + 2 * n
        let usedOff = (d + a + 4095) & ~4095
        return (0, d, usedOff, usedOff + 6 + 8 * n)
    }

    /// Lays the rings out at `base` (4 KiB aligned) with ``ringBytes(size:)``.
    /// - Throws: ``VirtioError/badRingAddress(_:_:)`` when they do not fit in guest memory.
    public init(memory: GuestMemory, size: UInt16, base: UInt64) throws(VirtioError) {
        let l = Self.ringBytes(size: size)
        self.memory = memory
        self.size = size
        self.descTable = base + l.desc; self.availRing = base + l.avail; self.usedRing = base + l.used
        do { try memory.zero(at: base, count: Int(l.total)) } catch { throw .badRingAddress("rings", base) }
        freeList = (0..<size).reversed().map { $0 }
        chainDescs = Array(repeating: [], count: Int(size))
    }

    /// Descriptors not in use.
    public var freeDescriptors: Int { freeList.count }

    /// Writes raw descriptor `index` (for building malformed chains in tests).
    public func writeDescriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) throws {
        let o = descTable + 16 * UInt64(index)
        try memory.store(address, at: o)
        try memory.store(length, at: o + 8)
        try memory.store(flags, at: o + 12)
        try memory.store(next, at: o + 14)
    }

    /// Builds a chain of direct descriptors for `buffers` and returns its head, or nil when
    /// there are not enough free descriptors. Does not publish it.
    public func add(_ buffers: [ChainBuffer]) throws -> UInt16? {
        guard !buffers.isEmpty, buffers.count <= freeList.count else { return nil }
        var ids: [UInt16] = []
        for _ in buffers { ids.append(freeList.removeLast()) }
        for (k, b) in buffers.enumerated() {
            let last = k == buffers.count - 1
            let flags = (b.writable ? VirtqDescFlag.write : 0) | (last ? 0 : VirtqDescFlag.next)
            try writeDescriptor(ids[k], address: b.address, length: b.length, flags: flags, next: last ? 0 : ids[k + 1])
        }
        chainDescs[Int(ids[0])] = ids
        return ids[0]
    }

    /// Builds a one-descriptor chain pointing at an indirect table written at `table`
    /// (16 bytes per buffer) (§2.7.5.3).
    public func addIndirect(_ buffers: [ChainBuffer], table: UInt64) throws -> UInt16? {
        guard !buffers.isEmpty, let id = freeList.popLast() else { return nil }
        for (k, b) in buffers.enumerated() {
            let last = k == buffers.count - 1
            let o = table + 16 * UInt64(k)
            try memory.store(b.address, at: o)
            try memory.store(b.length, at: o + 8)
            try memory.store((b.writable ? VirtqDescFlag.write : 0) | (last ? 0 : VirtqDescFlag.next), at: o + 12)
            try memory.store(UInt16(last ? 0 : k + 1), at: o + 14)
        }
        try writeDescriptor(id, address: table, length: UInt32(16 * buffers.count), flags: VirtqDescFlag.indirect, next: 0)
        chainDescs[Int(id)] = [id]
        return id
    }

    /// Takes a descriptor out of the free list for hand-built chains; returned by ``pollUsed()``
    /// when the device completes `head` (pass every index of the chain as `chain`).
    public func reserve(_ chain: [UInt16]) {
        freeList.removeAll { chain.contains($0) }
        chainDescs[Int(chain[0] % size)] = chain
    }

    /// Puts `head` in the avail ring and publishes avail->idx (release ordering).
    public func publish(_ head: UInt16) throws {
        try memory.store(head, at: availRing + 4 + 2 * UInt64(availIdx % size))
        availIdx &+= 1
        atomicMemoryFence(ordering: .releasing)
        try memory.store(availIdx, at: availRing + 2)
    }

    /// Overwrites avail->idx with an arbitrary value (malformed-ring tests).
    public func forceAvailIdx(_ v: UInt16) throws {
        availIdx = v
        try memory.store(v, at: availRing + 2)
    }

    /// Sets used_event (asks for a notification once the device has used entry `v`).
    public func setUsedEvent(_ v: UInt16) throws {
        try memory.store(v, at: availRing + 4 + 2 * UInt64(size))
    }

    /// used->idx as the device published it.
    public func usedIdx() throws -> UInt16 {
        let v: UInt16 = try memory.load(at: usedRing + 2)
        atomicMemoryFence(ordering: .acquiring)
        return v
    }

    /// Next used element (id, bytes written), freeing its descriptors; nil if none.
    public func pollUsed() throws -> (id: UInt16, length: UInt32)? {
        guard try usedIdx() != lastUsedIdx else { return nil }
        let o = usedRing + 4 + 8 * UInt64(lastUsedIdx % size)
        let id: UInt32 = try memory.load(at: o)
        let len: UInt32 = try memory.load(at: o + 4)
        lastUsedIdx &+= 1
        if id < UInt32(size) {
            let h = Int(id)
            freeList.append(contentsOf: chainDescs[h])
            chainDescs[h] = []
        }
        return (UInt16(truncatingIfNeeded: id), len)
    }

    /// Forgets every in-flight chain and restarts the indices from what the device
    /// published (used after a device reset in tests).
    public func resync() throws {
        lastUsedIdx = try usedIdx()
    }
}
