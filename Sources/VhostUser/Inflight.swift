import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The shared in-flight I/O tracking region (vhost-user.rst "Inflight I/O tracking", split
/// virtqueue layout), which lets a restarted back-end resubmit requests it had taken from
/// the avail ring but not completed.
///
/// Layout, per queue, at stride ``queueStride(queueSize:)`` (64-byte aligned):
/// `u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;`
/// then `desc_num` entries of `u8 inflight; u8 pad[5]; u16 next; u64 counter;` (16 bytes).
/// The back-end allocates it (GET_INFLIGHT_FD); the front-end keeps the fd and hands it to
/// the next back-end instance (SET_INFLIGHT_FD).
public final class InflightRegion: @unchecked Sendable {
    /// The memfd holding the region (owned; closed on deinit).
    public let fd: Int32
    /// Bytes mapped.
    public let mmapSize: UInt64
    public let numQueues: UInt16
    public let queueSize: UInt16
    let base: UnsafeMutableRawPointer

    /// Bytes one queue's part takes: header (16) + 16 per descriptor, rounded up to 64.
    public static func queueStride(queueSize: UInt16) -> Int {
        (16 + 16 * Int(queueSize) + 63) & ~63
    }

    /// Allocates a zeroed region in a new memfd (GET_INFLIGHT_FD).
    public static func create(numQueues: UInt16, queueSize: UInt16) throws(VhostUserError) -> InflightRegion {
        guard numQueues > 0, queueSize > 0 else { throw .protocolViolation("inflight region for \(numQueues) queues of \(queueSize)") }
        let size = UInt64(Int(numQueues) * queueStride(queueSize: queueSize))
        let fd = clinux_memfd_create("vhost-inflight", CLINUX_MFD_CLOEXEC | CLINUX_MFD_ALLOW_SEALING)
        if fd < 0 { throw .errno("memfd_create") }
        if ftruncate(fd, off_t(size)) != 0 { let e = VhostUserError.errno("ftruncate"); close(fd); throw e }
        do { return try InflightRegion(fd: fd, mmapSize: size, mmapOffset: 0, numQueues: numQueues, queueSize: queueSize) }
        catch { close(fd); throw error }
    }

    /// Maps a region received with SET_INFLIGHT_FD; takes ownership of `fd` on success.
    /// - Throws: ``VhostUserError/protocolViolation(_:)`` when `mmapSize` is too small for
    ///   `numQueues` × `queueSize`, or `mmapOffset` is unaligned or past 2^46 (it becomes an
    ///   off_t: a front-end's 2^63 or more trapped the conversion, found by fuzz-vhost-user); ``VhostUserError/system(_:_:)`` when mmap fails.
    public init(fd: Int32, mmapSize: UInt64, mmapOffset: UInt64, numQueues: UInt16, queueSize: UInt16) throws(VhostUserError) {
        let need = UInt64(Int(numQueues) * Self.queueStride(queueSize: queueSize))
        guard numQueues > 0, queueSize > 0, mmapSize >= need, mmapSize < 1 << 32, mmapOffset < 1 << 46,
              mmapOffset % 4096 == 0 else {
            throw .protocolViolation("inflight region of \(mmapSize) bytes for \(numQueues) queues of \(queueSize)")
        }
        let p = mmap(nil, Int(mmapSize), PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(mmapOffset))
        if p == MAP_FAILED || p == nil { throw .errno("mmap(inflight)") }
        self.fd = fd; self.mmapSize = mmapSize; self.numQueues = numQueues; self.queueSize = queueSize
        self.base = p!
    }

    deinit {
        munmap(base, Int(mmapSize))
        close(fd)
    }

    /// The part of the region for queue `index` (< numQueues).
    public func queue(_ index: Int) -> InflightQueue? {
        guard index >= 0, index < Int(numQueues) else { return nil }
        return InflightQueue(p: base + index * Self.queueStride(queueSize: queueSize), size: queueSize, owner: self)
    }
}

/// One queue's in-flight records. Steps follow vhost-user.rst "Inflight I/O tracking".
public struct InflightQueue {
    let p: UnsafeMutableRawPointer
    /// Descriptor count of the region part.
    public let size: UInt16
    let owner: InflightRegion

    @inline(__always) func field16(_ o: Int) -> UInt16 { UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    @inline(__always) func set16(_ o: Int, _ v: UInt16) { p.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt16.self) }
    @inline(__always) func descOff(_ h: UInt16) -> Int { 16 + 16 * Int(h) }

    public var version: UInt16 { field16(8) }
    public var lastBatchHead: UInt16 { field16(12) }
    public var usedIdx: UInt16 { field16(14) }

    /// Initialises a fresh (all-zero) part: version 1, desc_num = size.
    public func initializeIfFresh() {
        if field16(8) == 0 { set16(8, 1); set16(10, size) }
    }

    /// Whether descriptor `head` is recorded as in flight.
    public func isInflight(_ head: UInt16) -> Bool { head < size && p.load(fromByteOffset: descOff(head), as: UInt8.self) != 0 }

    /// Step "receiving available buffers": record `head` as in flight with `counter`.
    public func begin(head: UInt16, counter: UInt64) {
        guard head < size else { return }
        p.storeBytes(of: counter.littleEndian, toByteOffset: descOff(head) + 8, as: UInt64.self)
        atomicMemoryFence(ordering: .releasing)
        p.storeBytes(of: UInt8(1), toByteOffset: descOff(head), as: UInt8.self)
    }

    /// Forgets `head` without completing it (a request that broke the queue).
    public func drop(head: UInt16) {
        guard head < size else { return }
        p.storeBytes(of: UInt8(0), toByteOffset: descOff(head), as: UInt8.self)
    }

    /// Clears every record (the ring was stopped or reset; nothing is in flight).
    public func clear(usedIdx: UInt16) {
        for h in 0..<size { p.storeBytes(of: UInt8(0), toByteOffset: descOff(h), as: UInt8.self) }
        set16(12, 0)
        set16(14, usedIdx)
    }

    /// Step "supplying used buffers" 1–3: link `head` into the last-batch list.
    public func linkUsed(head: UInt16) {
        guard head < size else { return }
        set16(descOff(head) + 6, lastBatchHead)
        atomicMemoryFence(ordering: .releasing)
        set16(12, head)
    }

    /// Steps 6–7, after used->idx was published: clear the batch's in-flight flags and
    /// record the used index.
    public func endBatch(heads: some Sequence<UInt16>, usedIdx: UInt16) {
        atomicMemoryFence(ordering: .releasing)
        for h in heads where h < size { p.storeBytes(of: UInt8(0), toByteOffset: descOff(h), as: UInt8.self) }
        atomicMemoryFence(ordering: .releasing)
        set16(14, usedIdx)
    }

    /// Reconnect procedure: repairs the last batch if the back-end died between publishing
    /// used->idx and clearing the flags, then returns the heads still in flight in
    /// submission order (by counter) and the largest counter seen.
    /// - Parameter usedRingIdx: used->idx as found in guest memory.
    public func recover(usedRingIdx: UInt16) -> (heads: [UInt16], maxCounter: UInt64) {
        let recorded = usedIdx
        if recorded != usedRingIdx {
            let batch = min(Int(usedRingIdx &- recorded), Int(size))
            var h = lastBatchHead
            for _ in 0..<batch {
                guard h < size else { break }
                p.storeBytes(of: UInt8(0), toByteOffset: descOff(h), as: UInt8.self)
                h = field16(descOff(h) + 6)
            }
            set16(14, usedRingIdx)
        }
        var list: [(UInt64, UInt16)] = []
        var maxC: UInt64 = 0
        for h in 0..<size {
            let c = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: descOff(h) + 8, as: UInt64.self))
            maxC = max(maxC, c)
            if p.load(fromByteOffset: descOff(h), as: UInt8.self) != 0 { list.append((c, h)) }
        }
        list.sort { $0.0 < $1.0 }
        return (list.map { $0.1 }, maxC)
    }
}
