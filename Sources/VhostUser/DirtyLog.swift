// Dirty-page logging for live migration (vhost-user.rst "Migration"): the shared bitmap of
// SET_LOG_BASE, and the back-end's marking of every guest-memory write it makes while the
// front-end has VHOST_F_LOG_ALL negotiated.
import CLinux
import GuestMemory
import Synchronization
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// VHOST_F_LOG_ALL: feature bit 26 of GET/SET_FEATURES. Set by the front-end (SET_FEATURES)
/// while a migration runs; the back-end then logs every guest-memory write it makes.
public let vhostFLogAll: UInt64 = 1 << 26

/// VHOST_VRING_F_LOG: bit 0 of a vring address description's flags (SET_VRING_ADDR). While
/// set, writes to that ring's used ring are logged at `log_guest_addr` + offset.
public let vhostVringFLog: UInt32 = 1 << 0

/// The dirty-page bitmap handed over with SET_LOG_BASE (VHOST_USER_PROTOCOL_F_LOG_SHMFD):
/// one bit per 4 KiB guest-physical page, bit `page % 8` of byte `page / 8`, set with an
/// atomic OR because the front-end clears bits concurrently.
///
/// The bitmap is `size` bytes at `offset` in the front-end's fd; it covers guest-physical
/// addresses [0, size × 8 × 4096). The mapping is released on deinit.
final class DirtyLog: @unchecked Sendable {
    /// VHOST_LOG_PAGE: bytes covered by one bit.
    static let pageSize: UInt64 = 0x1000
    /// Largest bitmap accepted: 1 TiB of bitmap covers 32 PiB of guest memory.
    static let maxSize: UInt64 = 1 << 40

    /// Bytes of bitmap (the log description's `mmap_size`).
    let size: UInt64
    private let mapping: UnsafeMutableRawPointer
    private let mappingLength: Int
    private let bitmap: UnsafeMutablePointer<Atomic<UInt8>>

    /// Maps the bitmap from `fd` (the caller keeps ownership of `fd`).
    /// - Parameters:
    ///   - size: bytes of bitmap (`mmap_size`), 1...1 TiB.
    ///   - offset: where the bitmap starts in `fd` (`mmap_offset`, where guest address 0 is logged).
    /// - Throws: ``VhostUserError/protocolViolation(_:)`` when the size is out of range or
    ///   `fd` is shorter than `offset + size` (touching past its end would raise SIGBUS);
    ///   ``VhostUserError/system(_:_:)`` when fstat or mmap fails.
    init(fd: Int32, size: UInt64, offset: UInt64) throws(VhostUserError) {
        guard size > 0, size <= Self.maxSize, offset <= Self.maxSize else {
            throw .protocolViolation("dirty log of \(size) bytes at offset \(offset)")
        }
        var st = stat()
        if fstat(fd, &st) != 0 { throw .errno("fstat(dirty log)") }
        guard st.st_size >= 0, UInt64(st.st_size) >= offset + size else {
            throw .protocolViolation("dirty log of \(size) bytes at offset \(offset) in a file of \(st.st_size) bytes")
        }
        // Mapped from 0 so an offset need not be page-aligned.
        let length = Int(offset + size)
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED || p == nil { throw .errno("mmap(dirty log)") }
        mapping = p!
        mappingLength = length
        // SAFETY: Atomic<UInt8> has the size and alignment of UInt8; the bytes are only
        // accessed through atomics from here on (the front-end uses atomics too).
        bitmap = (p! + Int(offset)).bindMemory(to: Atomic<UInt8>.self, capacity: Int(size))
        self.size = size
    }

    deinit { munmap(mapping, mappingLength) }

    /// Marks every 4 KiB page touched by [address, address + length) dirty.
    /// - Returns: false when some of the range lies past the bitmap (or wraps past 2^64);
    ///   the pages inside the bitmap are marked all the same.
    @discardableResult
    func mark(_ address: UInt64, _ length: UInt64) -> Bool {
        guard length > 0 else { return true }
        let (last, wrapped) = address.addingReportingOverflow(length - 1)
        let first = address / Self.pageSize
        let end = (wrapped ? UInt64.max : last) / Self.pageSize
        let pages = size * 8
        guard first < pages else { return false }
        var page = first
        while page <= min(end, pages - 1) {
            bitmap[Int(page / 8)].bitwiseOr(UInt8(1) << (page % 8), ordering: .releasing)
            page += 1
        }
        return !wrapped && end < pages
    }

    /// Whether the bit of the page holding `address` is set (tests).
    func isMarked(_ address: UInt64) -> Bool {
        let page = address / Self.pageSize
        guard page < size * 8 else { return false }
        return bitmap[Int(page / 8)].load(ordering: .acquiring) & (UInt8(1) << (page % 8)) != 0
    }
}

extension VhostUserBackend {
    /// Whether writes are being logged: VHOST_F_LOG_ALL negotiated (the log area itself
    /// may be missing; such writes are counted in ``unloggedWrites``).
    var loggingAll: Bool { acked & vhostFLogAll != 0 }

    /// Marks [address, address + length) in the dirty log; counts what could not be
    /// marked (no log, or past its end) and says so once per log.
    func logWrite(_ address: UInt64, _ length: UInt64) {
        guard length > 0 else { return }
        if let dirtyLog, dirtyLog.mark(address, length) { loggedSinceSignal = true; return }
        unloggedWrites &+= 1
        if !unloggedWriteReported {
            unloggedWriteReported = true
            log("vhost-user: dirty log \(dirtyLog.map { "of \($0.size) bytes" } ?? "missing") cannot record a write at 0x\(String(address, radix: 16)) (+\(length)); further ones only counted")
        }
    }

    /// Logs the first `bytes` bytes of a chain's device-writable buffers (what a device
    /// writes from the first writable buffer on, virtio 1.2 §2.7.8.2). Buffers outside
    /// guest memory are skipped: nothing can have been written there.
    func logWritable(_ buffers: ArraySlice<ChainBuffer>, bytes: UInt64, memory: GuestMemory) {
        guard loggingAll else { return }
        var left = bytes
        for b in buffers where left > 0 {
            let n = min(UInt64(b.length), left)
            left -= n
            guard (try? memory.slice(at: b.address, count: Int(n))) != nil else { continue }
            logWrite(b.address, n)
        }
    }

    /// Logs every device-writable buffer of a chain the device served through
    /// ``VhostUserDevice/handle(_:queue:memory:)``: the used length does not bound what a
    /// device may have written (virtio 1.2 §2.7.8.2 allows more), and virtio-blk's status
    /// byte sits at the very end of the chain.
    func logServed(_ chain: DescriptorChain, memory: GuestMemory) {
        guard loggingAll else { return }
        logWritable(chain.writable, bytes: chain.writableLength, memory: memory)
    }

    /// Logs a write of `length` bytes at `offset` into ring `q`'s used ring, when the ring
    /// asked for it (VHOST_VRING_F_LOG): at `log_guest_addr` + offset (vhost-user.rst
    /// "Migration"; the log address need not be inside the memory table).
    func logUsed(_ q: Int, offset: Int, length: Int) {
        guard loggingAll, vrings[q].flags & vhostVringFLog != 0 else { return }
        let (a, o) = vrings[q].logGuestAddr.addingReportingOverflow(UInt64(offset))
        if o { unloggedWrites &+= 1; return }
        logWrite(a, UInt64(length))
    }

    /// Logs the used-ring element at free-running index `usedIdx` of ring `q`.
    func logUsedElement(_ q: Int, _ queue: Virtqueue, usedIdx: UInt16) {
        logUsed(q, offset: 4 + 8 * Int(usedIdx % queue.size), length: 8)
    }

    /// Logs a publication of used->idx of ring `q`, and avail_event (which popping writes
    /// at the end of the used ring) when VIRTIO_F_EVENT_IDX is in use; then tells the
    /// front-end through the SET_LOG_FD eventfd, if it gave one, that the log changed.
    func logPublished(_ q: Int, _ queue: Virtqueue) {
        guard loggingAll else { return }
        logUsed(q, offset: 2, length: 2)
        if queue.eventIdx { logUsed(q, offset: 4 + 8 * Int(queue.size), length: 2) }
        if loggedSinceSignal, logFd >= 0 {
            loggedSinceSignal = false
            var one: UInt64 = 1
            _ = write(logFd, &one, 8)
        }
    }
}
