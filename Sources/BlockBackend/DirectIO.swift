// Direct I/O (O_DIRECT) on a disk image: the alignment rules and the bounce buffer.
//
// With O_DIRECT the kernel moves data between the device and the caller's buffers itself,
// and refuses (EINVAL) a transfer whose file offset or length is not a multiple of the file
// system's logical block size, or whose buffer addresses or segment lengths are not aligned
// as the device's DMA needs (statx(2) STATX_DIOALIGN: stx_dio_offset_align,
// stx_dio_mem_align). A guest's virtio-blk requests are in 512-byte sectors and its buffers
// anywhere in its memory, so a request that breaks a rule goes through an aligned bounce
// buffer here: reads read the covering aligned range and copy out; writes copy into it and
// write the covering range, reading the partial first and last blocks first
// (read-modify-write, serialized so two writes sharing a block never undo each other).
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// open(2)'s O_DIRECT on x86-64 and arm64's asm-generic value differ; Glibc hides both
/// from Swift (they need _GNU_SOURCE).
#if arch(x86_64)
public let directIOOpenFlag: Int32 = 0o40000
#else
public let directIOOpenFlag: Int32 = 0o200000
#endif

/// The alignment rules of direct I/O on one open image.
public struct DirectIOAlignment: Sendable, Equatable {
    /// File offsets and lengths must be multiples of this (bytes, a power of two ≥ 512).
    public let offset: Int
    /// Buffer addresses must be multiples of this (bytes, a power of two ≥ 1).
    public let memory: Int

    /// - Precondition: both are powers of two, `offset` ≥ 512.
    public init(offset: Int, memory: Int) {
        precondition(offset >= 512 && offset & (offset - 1) == 0 && memory >= 1 && memory & (memory - 1) == 0)
        self.offset = offset
        self.memory = memory
    }

    /// What statx(2) says of `fd` (STATX_DIOALIGN, Linux 6.1); nil when the kernel or the
    /// file system does not say (or says direct I/O is not supported on it).
    public static func query(fd: Int32) -> DirectIOAlignment? {
        guard let statx = statxFn else { return nil }
        // struct statx (<linux/stat.h>): 256 bytes; stx_mask at 0, stx_dio_mem_align at
        // 0x98, stx_dio_offset_align at 0x9c.
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 8)
        defer { buf.deallocate() }
        memset(buf, 0, 256)
        let statxDioAlign: UInt32 = 0x2000, atEmptyPath: Int32 = 0x1000
        guard statx(fd, "", atEmptyPath, statxDioAlign, buf) == 0 else { return nil }
        let mask = buf.load(fromByteOffset: 0, as: UInt32.self)
        let mem = Int(buf.load(fromByteOffset: 0x98, as: UInt32.self))
        let off = Int(buf.load(fromByteOffset: 0x9c, as: UInt32.self))
        guard mask & statxDioAlign != 0, off >= 512, off & (off - 1) == 0, mem >= 1, mem & (mem - 1) == 0 else { return nil }
        return DirectIOAlignment(offset: off, memory: mem)
    }

    /// Whether a transfer of `iov` (`count` entries) at byte `offset` can go straight to the
    /// kernel: the offset, every segment's address and length aligned.
    public func allows(_ iov: UnsafePointer<iovec>, count: Int, offset off: UInt64) -> Bool {
        guard off & UInt64(offset - 1) == 0 else { return false }
        for i in 0..<count {
            let v = iov[i]
            guard UInt(bitPattern: v.iov_base) & UInt(memory - 1) == 0, v.iov_len & (offset - 1) == 0 else { return false }
        }
        return true
    }
}

/// glibc's statx, looked up once (hidden from Swift without _GNU_SOURCE).
let statxFn: (@convention(c) (Int32, UnsafePointer<CChar>, Int32, UInt32, UnsafeMutableRawPointer) -> Int32)? = {
    guard let p = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "statx") else { return nil }
    return unsafeBitCast(p, to: (@convention(c) (Int32, UnsafePointer<CChar>, Int32, UInt32, UnsafeMutableRawPointer) -> Int32).self)
}()

/// Positional transfers of whole aligned blocks: what ``BouncedTransfer`` is built on (the
/// image's descriptor in blkback, a model in the unit tests). Each returns bytes moved,
/// 0 at the end of the file, or -1 with errno set.
public protocol AlignedBlockIO {
    func readBlocks(_ buf: UnsafeMutableRawPointer, _ length: Int, at offset: UInt64) -> Int
    func writeBlocks(_ buf: UnsafeRawPointer, _ length: Int, at offset: UInt64) -> Int
}

/// A request's transfer through an aligned bounce buffer, in chunks of at most
/// `chunkBytes`, for requests that ``DirectIOAlignment/allows(_:count:offset:)`` refuses.
public struct BouncedTransfer {
    public let alignment: DirectIOAlignment
    /// Largest bounce buffer (bytes, a multiple of `alignment.offset`).
    public let chunkBytes: Int
    /// Serializes read-modify-write cycles (shared by every thread serving one image).
    let rmwLock: UnsafeMutablePointer<pthread_mutex_t>

    /// - Parameter rmwLock: an initialized mutex that outlives the transfer.
    public init(alignment: DirectIOAlignment, chunkBytes: Int = 1 << 20, rmwLock: UnsafeMutablePointer<pthread_mutex_t>) {
        self.alignment = alignment
        self.chunkBytes = max(alignment.offset, chunkBytes / alignment.offset * alignment.offset)
        self.rmwLock = rmwLock
    }

    /// Reads `total` bytes at byte `offset` into `iov`; bytes past the end of the file read
    /// as zeros. False on an I/O error.
    public func read(_ io: some AlignedBlockIO, into iov: UnsafePointer<iovec>, count: Int, offset: UInt64, total: Int) -> Bool {
        transfer(io, iov, count: count, offset: offset, total: total, write: false)
    }

    /// Writes `total` bytes from `iov` at byte `offset`; partial blocks at either end are
    /// read first and written back whole. False on an I/O error, or when the covering
    /// blocks reach past the end of the file (a direct write there would grow it).
    public func write(_ io: some AlignedBlockIO, from iov: UnsafePointer<iovec>, count: Int, offset: UInt64, total: Int,
                      fileSize: UInt64) -> Bool {
        transfer(io, iov, count: count, offset: offset, total: total, write: true, fileSize: fileSize)
    }

    private func transfer(_ io: some AlignedBlockIO, _ iov: UnsafePointer<iovec>, count: Int, offset: UInt64, total: Int,
                          write: Bool, fileSize: UInt64 = 0) -> Bool {
        guard total > 0 else { return true }
        let a = UInt64(alignment.offset)
        let end = offset + UInt64(total)
        let lo = offset / a * a, hi = (end + a - 1) / a * a
        if write && hi > fileSize { return false }
        let headPartial = lo < offset, tailPartial = hi > end
        let rmw = write && (headPartial || tailPartial)
        if rmw { pthread_mutex_lock(rmwLock) }
        defer { if rmw { pthread_mutex_unlock(rmwLock) } }
        let bounce = UnsafeMutableRawPointer.allocate(byteCount: Int(min(UInt64(chunkBytes), hi - lo)),
                                                      alignment: max(alignment.memory, 4096))
        defer { bounce.deallocate() }
        var cursor = IOVCursor(iov, count: count)
        var c0 = lo
        while c0 < hi {
            let c1 = min(hi, c0 + UInt64(chunkBytes))
            let len = Int(c1 - c0)
            // The part of this chunk that belongs to the request.
            let d0 = max(c0, offset), d1 = min(c1, end)
            let at = Int(d0 - c0), n = Int(d1 - d0)
            if write {
                if c0 < offset {            // partial first block
                    guard fill(io, bounce, Int(a), at: c0) else { return false }
                }
                if c1 > end && !(c0 < offset && c1 - a == c0) {   // partial last block, unless it is the first, read above
                    guard fill(io, bounce + len - Int(a), Int(a), at: c1 - a) else { return false }
                }
                cursor.copyOut(to: bounce + at, n)
                guard writeAll(io, bounce, len, at: c0) else { return false }
            } else {
                guard fill(io, bounce, len, at: c0) else { return false }
                cursor.copyIn(from: bounce + at, n)
            }
            c0 = c1
        }
        return true
    }

    /// Reads `len` bytes at `off` into `buf`, zero-filling past the end of the file. A
    /// short read that stops off a block boundary is the end of the file (a direct read may
    /// not go on from there).
    private func fill(_ io: some AlignedBlockIO, _ buf: UnsafeMutableRawPointer, _ len: Int, at off: UInt64) -> Bool {
        var done = 0
        while done < len {
            let r = io.readBlocks(buf + done, len - done, at: off + UInt64(done))
            if r < 0 { if errno == EINTR { continue }; return false }
            if r == 0 { memset(buf + done, 0, len - done); return true }
            done += r
            if done < len && done % alignment.offset != 0 { memset(buf + done, 0, len - done); return true }
        }
        return true
    }

    private func writeAll(_ io: some AlignedBlockIO, _ buf: UnsafeRawPointer, _ len: Int, at off: UInt64) -> Bool {
        var done = 0
        while done < len {
            let w = io.writeBlocks(buf + done, len - done, at: off + UInt64(done))
            if w < 0 { if errno == EINTR { continue }; return false }
            if w == 0 { return false }
            done += w
        }
        return true
    }
}

/// Walks a scatter list, copying bytes between it and a flat buffer in order.
struct IOVCursor {
    let iov: UnsafePointer<iovec>
    let count: Int
    var index = 0, skip = 0
    init(_ iov: UnsafePointer<iovec>, count: Int) { self.iov = iov; self.count = count }

    /// Copies the next `n` bytes of the scatter list into `dst`.
    mutating func copyOut(to dst: UnsafeMutableRawPointer, _ n: Int) { walk(n) { memcpy(dst + $0, $1, $2) } }
    /// Copies `n` bytes of `src` into the next bytes of the scatter list.
    mutating func copyIn(from src: UnsafeRawPointer, _ n: Int) { walk(n) { memcpy($1, src + $0, $2) } }

    private mutating func walk(_ n: Int, _ body: (Int, UnsafeMutableRawPointer, Int) -> Void) {
        var done = 0
        while done < n && index < count {
            let v = iov[index]
            let take = min(v.iov_len - skip, n - done)
            if take > 0, let base = v.iov_base { body(done, base + skip, take) }
            done += take
            skip += take
            if skip == v.iov_len { index += 1; skip = 0 }
        }
    }
}
