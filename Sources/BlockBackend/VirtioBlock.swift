import GuestMemory
import Virtio
import VhostUser
#if canImport(Glibc)
import Glibc
#endif

/// virtio-blk constants (virtio 1.2 §5.2).
public enum VirtioBlk {
    // Feature bits (§5.2.3).
    public static let fSizeMax: UInt64 = 1 << 1
    public static let fSegMax: UInt64 = 1 << 2
    public static let fRO: UInt64 = 1 << 5
    public static let fBlkSize: UInt64 = 1 << 6
    public static let fFlush: UInt64 = 1 << 9
    public static let fMQ: UInt64 = 1 << 12
    public static let fDiscard: UInt64 = 1 << 13
    public static let fWriteZeroes: UInt64 = 1 << 14
    // Request types (§5.2.6).
    public static let tIn: UInt32 = 0
    public static let tOut: UInt32 = 1
    public static let tFlush: UInt32 = 4
    public static let tGetID: UInt32 = 8
    public static let tDiscard: UInt32 = 11
    public static let tWriteZeroes: UInt32 = 13
    // Status values.
    public static let sOK: UInt8 = 0
    public static let sIOErr: UInt8 = 1
    public static let sUnsupp: UInt8 = 2
    /// Length of the GET_ID answer.
    public static let idBytes = 20
    /// Size of `struct virtio_blk_config` (with the secure-erase fields).
    public static let configSize = 72
    /// Bytes of the request header: le32 type, le32 reserved, le64 sector.
    public static let headerSize = 16
    /// A discard / write-zeroes segment: le64 sector, le32 num_sectors, le32 flags.
    public static let segmentSize = 16
}

/// The virtio-blk device (virtio 1.2 §5.2) served over vhost-user: IN, OUT, FLUSH, GET_ID,
/// DISCARD, WRITE_ZEROES on a ``BlockStorage`` (a raw ``BlockImage`` or a ``Qcow2Image``).
///
/// Every request is checked: header and status placement, buffer direction, sector range
/// (in 512-byte sectors) against the capacity, sizes against the advertised limits, buffers
/// inside guest memory. A bad request gets VIRTIO_BLK_S_IOERR (or UNSUPP for unknown types
/// and flags); only a request whose status byte cannot be written breaks the queue.
/// Writes to a read-only device (VIRTIO_BLK_F_RO) get IOERR and write nothing (§5.2.6.2).
/// ``handle(_:queue:memory:)`` is safe to call from several threads at once.
public final class VirtioBlockDevice: VhostUserDevice, @unchecked Sendable {
    public let image: any BlockStorage
    public let numQueues: Int
    /// Serial number returned by GET_ID (at most 20 bytes used).
    public let serial: [UInt8]
    /// Largest single segment, in bytes (config size_max).
    public let sizeMax: UInt32 = 1 << 20
    /// Largest number of data segments per request (config seg_max). A chain, indirect
    /// table included, may not be longer than the queue (virtio 1.2 §2.7.5.3.1) and the
    /// config is read before the queue size is known: 126 fits QEMU's default of 128
    /// (header + data + status).
    public let segMax: UInt32 = 126
    /// Limit of one discard / write-zeroes segment, in 512-byte sectors.
    public let maxDiscardSectors: UInt32 = 1 << 22
    private var negotiated: UInt64 = 0
    private let iovCapacity = 1024

    /// - Parameters:
    ///   - numQueues: request queues offered (VIRTIO_BLK_F_MQ when > 1), 1...64.
    ///   - serial: GET_ID answer.
    public init(image: any BlockStorage, numQueues: Int = 1, serial: String = "xenith-blk") {
        self.image = image
        self.numQueues = max(1, min(numQueues, 64))
        self.serial = Array(serial.utf8.prefix(VirtioBlk.idBytes))
    }

    public var deviceFeatures: UInt64 {
        var f = VirtioFeature.version1 | VirtioFeature.ringIndirectDesc | VirtioFeature.ringEventIdx
            | VirtioBlk.fSizeMax | VirtioBlk.fSegMax | VirtioBlk.fBlkSize | VirtioBlk.fFlush
        if numQueues > 1 { f |= VirtioBlk.fMQ }
        if image.readOnly { f |= VirtioBlk.fRO } else { f |= VirtioBlk.fDiscard | VirtioBlk.fWriteZeroes }
        return f
    }

    public func setNegotiatedFeatures(_ features: UInt64) { negotiated = features }

    /// Capacity in 512-byte sectors.
    public var capacitySectors: UInt64 { image.size / 512 }

    /// `struct virtio_blk_config` (§5.2.4), little-endian.
    public var config: [UInt8] {
        var w = PayloadWriter()
        w.u64(capacitySectors)
        w.u32(sizeMax); w.u32(segMax)
        w.u16(0); w.u8(0); w.u8(0)                     // geometry
        w.u32(image.logicalBlockSize)                   // blk_size
        w.u8(0); w.u8(0); w.u16(1); w.u32(0)            // topology
        w.u8(0); w.u8(0)                                // writeback, unused0
        w.u16(UInt16(numQueues))
        w.u32(maxDiscardSectors); w.u32(1); w.u32(image.logicalBlockSize / 512)
        w.u32(maxDiscardSectors); w.u32(1); w.u8(1); w.u8(0); w.u8(0); w.u8(0)
        w.u32(0); w.u32(0); w.u32(0)                    // secure erase: not offered
        return w.bytes
    }

    public func readConfig(offset: Int, count: Int) -> [UInt8] {
        let c = config
        guard offset >= 0, count >= 0, offset < c.count else { return [] }
        return Array(c[offset..<min(c.count, offset + count)])
    }

    /// Copies `n` bytes starting `skip` bytes into the readable buffers.
    private func gather(_ chain: DescriptorChain, memory: GuestMemory, skip: Int, count n: Int) throws(VirtioError) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(n)
        var skip = skip
        for b in chain.readable {
            if out.count == n { break }
            let s = try memory.slice(b)
            if skip >= s.count { skip -= s.count; continue }
            let take = min(s.count - skip, n - out.count)
            out += UnsafeRawBufferPointer(rebasing: s[skip..<skip + take])
            skip = 0
        }
        return out.count == n ? out : nil
    }

    /// Fills `iov` with guest buffers `bufs`, skipping `skip` bytes and keeping `length`.
    private func fillIOV(_ iov: UnsafeMutablePointer<iovec>, _ bufs: ArraySlice<ChainBuffer>, memory: GuestMemory, skip: Int, length: Int) throws(VirtioError) -> Int? {
        var n = 0, skip = skip, left = length
        for b in bufs {
            if left == 0 { break }
            let s = try memory.slice(b)
            if skip >= s.count { skip -= s.count; continue }
            let take = min(s.count - skip, left)
            guard n < min(iovCapacity, bufs.count), b.length <= sizeMax else { return nil }
            if take > 0 {
                iov[n] = iovec(iov_base: s.baseAddress! + skip, iov_len: take)
                n += 1
            }
            left -= take
            skip = 0
        }
        return left == 0 ? n : nil
    }

    public func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) throws(VirtioError) -> UInt32 {
        let r = try plan(chain, memory: memory)
        switch r.plan {
        case .answered(let status, let written):
            return r.finish(status: status, written: written)
        case .read(let offset, let length, var iov):
            let ok = iov.withUnsafeMutableBufferPointer { image.readv($0.baseAddress!, count: $0.count, offset: offset, total: length) }
            return ok ? r.finish(status: VirtioBlk.sOK, written: UInt32(length)) : r.finish(status: VirtioBlk.sIOErr, written: 0)
        case .write(let offset, let length, var iov):
            let ok = iov.withUnsafeMutableBufferPointer { image.writev($0.baseAddress!, count: $0.count, offset: offset, total: length) }
            return r.finish(status: ok ? VirtioBlk.sOK : VirtioBlk.sIOErr, written: 0)
        case .flush:
            return r.finish(status: image.flush() ? VirtioBlk.sOK : VirtioBlk.sIOErr, written: 0)
        }
    }

    /// Checks request `chain` and says what it asks of the disk, doing at once whatever
    /// needs no image data transfer (GET_ID, DISCARD, WRITE_ZEROES, refusals). The caller
    /// performs a `.read`, `.write` or `.flush` plan (synchronously, as ``handle(_:queue:memory:)``
    /// does, or through an asynchronous submission such as io_uring) and then calls
    /// ``PlannedBlockRequest/finish(status:written:)``. Safe from several threads at once.
    /// - Throws: ``VirtioError`` only when the status byte cannot be written (the queue is
    ///   then broken); every other fault is a status in the plan.
    public func plan(_ chain: DescriptorChain, memory: GuestMemory) throws(VirtioError) -> PlannedBlockRequest {
        // The status byte is the last byte of the last buffer, which must be device-writable.
        guard let last = chain.buffers.last, last.writable, last.length >= 1 else {
            throw .memory("request \(chain.head) has no device-writable status byte")
        }
        let statusAddr = last.address &+ (UInt64(last.length) - 1)   // length >= 1; the address is the guest's, so wrap and let slice refuse it
        let statusPtr: UnsafeMutableRawBufferPointer
        do { statusPtr = try memory.slice(at: statusAddr, count: 1) }
        catch { throw .memory("request \(chain.head): status byte outside guest memory") }
        var written: UInt32 = 0
        let plan = serve(chain, memory: memory, written: &written)
        return PlannedBlockRequest(statusByte: statusPtr, plan: plan)
    }

    /// Guest buffers `bufs` as iovecs, skipping `skip` bytes and keeping `length`; nil when
    /// they do not hold that much or break a limit (segments, size_max).
    private func iovecs(_ bufs: ArraySlice<ChainBuffer>, memory: GuestMemory, skip: Int, length: Int) -> [iovec]? {
        let n = min(bufs.count, iovCapacity)
        var out = [iovec](repeating: iovec(), count: n)
        let used: Int? = out.withUnsafeMutableBufferPointer { try? fillIOV($0.baseAddress!, bufs, memory: memory, skip: skip, length: length) }
        guard let used else { return nil }
        out.removeLast(n - used)
        return out
    }

    private func serve(_ chain: DescriptorChain, memory: GuestMemory, written: inout UInt32) -> BlockRequestPlan {
        func answer(_ status: UInt8) -> BlockRequestPlan { .answered(status: status, written: written) }
        guard chain.wellOrdered else { return answer(VirtioBlk.sIOErr) }
        let readLen = chain.readableLength
        let writeLen = chain.writableLength - 1       // minus status
        guard readLen >= UInt64(VirtioBlk.headerSize),
              let hdr = try? gather(chain, memory: memory, skip: 0, count: VirtioBlk.headerSize) else { return answer(VirtioBlk.sIOErr) }
        let type = UInt32(hdr[0]) | UInt32(hdr[1]) << 8 | UInt32(hdr[2]) << 16 | UInt32(hdr[3]) << 24
        var sector: UInt64 = 0
        for i in 0..<8 { sector |= UInt64(hdr[8 + i]) << (8 * i) }
        let dataOut = readLen - UInt64(VirtioBlk.headerSize)
        let maxBytes = UInt64(sizeMax) * UInt64(segMax)
        switch type {
        case VirtioBlk.tIn:
            guard dataOut == 0, writeLen % 512 == 0, writeLen <= maxBytes, inRange(sector, writeLen) else { return answer(VirtioBlk.sIOErr) }
            if writeLen == 0 { return answer(VirtioBlk.sOK) }
            guard let iov = iovecs(chain.writable, memory: memory, skip: 0, length: Int(writeLen)) else { return answer(VirtioBlk.sIOErr) }
            return .read(offset: sector * 512, length: Int(writeLen), iov: iov)
        case VirtioBlk.tOut:
            guard !image.readOnly else { return answer(VirtioBlk.sIOErr) }
            guard writeLen == 0, dataOut % 512 == 0, dataOut <= maxBytes, inRange(sector, dataOut) else { return answer(VirtioBlk.sIOErr) }
            if dataOut == 0 { return answer(VirtioBlk.sOK) }
            guard let iov = iovecs(chain.readable, memory: memory, skip: VirtioBlk.headerSize, length: Int(dataOut)) else { return answer(VirtioBlk.sIOErr) }
            return .write(offset: sector * 512, length: Int(dataOut), iov: iov)
        case VirtioBlk.tFlush:
            return image.readOnly ? answer(VirtioBlk.sOK) : .flush
        case VirtioBlk.tGetID:
            guard dataOut == 0, writeLen >= 1 else { return answer(VirtioBlk.sIOErr) }
            var id = serial + [UInt8](repeating: 0, count: VirtioBlk.idBytes - serial.count)
            id = Array(id.prefix(Int(min(writeLen, UInt64(VirtioBlk.idBytes)))))
            var off = 0
            for b in chain.writable where off < id.count {
                guard let s = try? memory.slice(b) else { return answer(VirtioBlk.sIOErr) }
                let take = min(s.count, id.count - off)
                s.copyBytes(from: id[off..<off + take])
                off += take
            }
            written = UInt32(id.count)
            return answer(VirtioBlk.sOK)
        case VirtioBlk.tDiscard, VirtioBlk.tWriteZeroes:
            let isDiscard = type == VirtioBlk.tDiscard
            guard negotiated & (isDiscard ? VirtioBlk.fDiscard : VirtioBlk.fWriteZeroes) != 0 else { return answer(VirtioBlk.sUnsupp) }
            guard !image.readOnly else { return answer(VirtioBlk.sIOErr) }
            guard writeLen == 0, dataOut == UInt64(VirtioBlk.segmentSize),     // max_*_seg = 1
                  let seg = try? gather(chain, memory: memory, skip: VirtioBlk.headerSize, count: VirtioBlk.segmentSize) else { return answer(VirtioBlk.sIOErr) }
            var s: UInt64 = 0
            for i in 0..<8 { s |= UInt64(seg[i]) << (8 * i) }
            let num = UInt32(seg[8]) | UInt32(seg[9]) << 8 | UInt32(seg[10]) << 16 | UInt32(seg[11]) << 24
            let flags = UInt32(seg[12]) | UInt32(seg[13]) << 8 | UInt32(seg[14]) << 16 | UInt32(seg[15]) << 24
            // §5.2.6.2: unmap is only defined for write-zeroes; other flag bits are reserved.
            if flags & ~1 != 0 || (isDiscard && flags != 0) { return answer(VirtioBlk.sUnsupp) }
            guard num <= maxDiscardSectors, inRange(s, UInt64(num) * 512) else { return answer(VirtioBlk.sIOErr) }
            if num == 0 { return answer(VirtioBlk.sOK) }
            let ok = isDiscard ? image.discard(offset: s * 512, length: UInt64(num) * 512)
                               : image.writeZeroes(offset: s * 512, length: UInt64(num) * 512, unmap: flags & 1 != 0)
            return answer(ok ? VirtioBlk.sOK : VirtioBlk.sIOErr)
        default:
            return answer(VirtioBlk.sUnsupp)
        }
    }

    private func inRange(_ sector: UInt64, _ bytes: UInt64) -> Bool {
        let cap = capacitySectors
        guard sector <= cap else { return false }
        return (bytes + 511) / 512 <= cap - sector
    }
}

/// What a checked virtio-blk request asks of the disk (virtio 1.2 §5.2.6).
public enum BlockRequestPlan {
    /// Nothing left to do: the status to write and the bytes written into the request's
    /// device-writable buffers before it (GET_ID's answer; 0 otherwise).
    case answered(status: UInt8, written: UInt32)
    /// VIRTIO_BLK_T_IN: read `length` bytes at byte `offset` of the disk into `iov`, the
    /// request's guest buffers (checked to lie in guest memory and to hold `length` bytes).
    case read(offset: UInt64, length: Int, iov: [iovec])
    /// VIRTIO_BLK_T_OUT: write `length` bytes from `iov` at byte `offset`.
    case write(offset: UInt64, length: Int, iov: [iovec])
    /// VIRTIO_BLK_T_FLUSH on a writable disk: make every completed write durable.
    case flush
}

/// A virtio-blk request once checked (``VirtioBlockDevice/plan(_:memory:)``): its plan,
/// and where its status byte goes.
public struct PlannedBlockRequest: @unchecked Sendable {
    /// The request's status byte in guest memory (checked to lie there).
    let statusByte: UnsafeMutableRawBufferPointer
    public let plan: BlockRequestPlan
    /// Writes `status` into the request and returns its used length: `written` plus the
    /// status byte.
    public func finish(status: UInt8, written: UInt32) -> UInt32 {
        statusByte.storeBytes(of: status, as: UInt8.self)
        return written + 1
    }
}
