// BlockBackend: virtio-blk device logic (virtio 1.2 §5.2) over a raw image file or a host
// block device, served through VhostUser. No Foundation: it runs under seccomp.
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A one-line, user-facing error of the block back-end.
public struct BlockBackendError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ s: String) { description = s }
    static func errno(_ what: String) -> BlockBackendError {
        BlockBackendError("\(what): \(String(cString: strerror(Glibc.errno)))")
    }
}

/// fallocate(2) mode bits (<linux/falloc.h>).
enum Falloc {
    static let keepSize: Int32 = 0x01
    static let punchHole: Int32 = 0x02
    static let zeroRange: Int32 = 0x10
}

/// glibc's fallocate, looked up once (it is hidden from Swift without _GNU_SOURCE).
let fallocateFn: (@convention(c) (Int32, Int32, Int, Int) -> Int32)? = {
    guard let p = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "fallocate") else { return nil }
    return unsafeBitCast(p, to: (@convention(c) (Int32, Int32, Int, Int) -> Int32).self)
}()

/// BLKZEROOUT = _IO(0x12, 127) (<linux/fs.h>): zero a byte range of a block device.
let blkZeroOut: UInt = 0x127f

/// The disk behind a virtio-blk device: a raw image file (`file:`) or a host block device
/// (`phy:`), accessed with preadv/pwritev at byte offsets.
public final class BlockImage: @unchecked Sendable {
    /// Open descriptor (owned).
    public let fd: Int32
    /// Size in bytes.
    public let size: UInt64
    /// Logical block size in bytes (512 for files, BLKSSZGET for devices).
    public let logicalBlockSize: UInt32
    public let isBlockDevice: Bool
    public let readOnly: Bool
    /// The alignment rules when the descriptor is open with O_DIRECT (direct I/O, the
    /// `direct` cache mode); nil for the page cache (`writeback`).
    public let direct: DirectIOAlignment?
    /// Serializes direct-I/O read-modify-write cycles (DirectIO.swift).
    private let rmwLock: UnsafeMutablePointer<pthread_mutex_t>

    /// Wraps an open descriptor (handed over by a supervisor); takes ownership. A descriptor
    /// open with O_DIRECT is served with direct I/O: the alignment rules come from statx(2)
    /// (else the device's logical block size, 4096 for a file), `minDirectAlignment` raises
    /// the offset rule (tests: the read-modify-write path on a 512-byte file system).
    /// - Throws: ``BlockBackendError`` when `fd` is not a regular file or block device.
    public init(fd: Int32, readOnly: Bool, minDirectAlignment: Int = 512) throws(BlockBackendError) {
        rmwLock = .allocate(capacity: 1)
        pthread_mutex_init(rmwLock, nil)
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .errno("image fd \(fd)") }
        let fmt = st.st_mode & S_IFMT
        self.fd = fd
        self.readOnly = readOnly
        if fmt == S_IFBLK {
            var sz: UInt64 = 0
            guard clinux_ioctl_ptr(fd, CLINUX_BLKGETSIZE64, &sz) == 0 else { throw .errno("BLKGETSIZE64") }
            var bs: Int32 = 512
            _ = clinux_ioctl_ptr(fd, CLINUX_BLKSSZGET, &bs)
            size = sz; logicalBlockSize = UInt32(max(bs, 512)); isBlockDevice = true
        } else if fmt == S_IFREG {
            size = UInt64(st.st_size); logicalBlockSize = 512; isBlockDevice = false
        } else if fmt == S_IFDIR {
            throw BlockBackendError("image is a directory")
        } else {
            throw BlockBackendError("image is neither a regular file nor a block device")
        }
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 && flags & directIOOpenFlag != 0 {
            let q = DirectIOAlignment.query(fd: fd)
                ?? DirectIOAlignment(offset: isBlockDevice ? Int(logicalBlockSize) : 4096, memory: 4096)
            let m = max(512, minDirectAlignment)
            direct = DirectIOAlignment(offset: max(q.offset, m & (m - 1) == 0 ? m : 4096), memory: q.memory)
        } else {
            direct = nil
        }
    }

    deinit { close(fd); pthread_mutex_destroy(rmwLock); rmwLock.deallocate() }

    /// The image's descriptor as whole-block positional I/O (preadv/pwritev: the manifest's
    /// positional syscalls).
    struct FileBlockIO: AlignedBlockIO {
        let fd: Int32
        func readBlocks(_ buf: UnsafeMutableRawPointer, _ length: Int, at offset: UInt64) -> Int {
            var v = iovec(iov_base: buf, iov_len: length)
            return preadv(fd, &v, 1, off_t(offset))
        }
        func writeBlocks(_ buf: UnsafeRawPointer, _ length: Int, at offset: UInt64) -> Int {
            var v = iovec(iov_base: UnsafeMutableRawPointer(mutating: buf), iov_len: length)
            return pwritev(fd, &v, 1, off_t(offset))
        }
    }

    /// The bounce-buffer transfer for requests direct I/O cannot take as they are.
    private func bounced(_ a: DirectIOAlignment) -> BouncedTransfer { BouncedTransfer(alignment: a, rmwLock: rmwLock) }

    /// Opens `spec`: `file:PATH`, `phy:DEVICE` (a path under /dev is tried if not absolute),
    /// or a bare path. Locks it (exclusive for read-write unless `sharedWrite`, shared for
    /// read-only) and, for block devices, refuses one mounted read-write on this host.
    /// `direct` opens it with O_DIRECT (the `direct` cache mode).
    /// - Throws: ``BlockBackendError`` naming the image: missing, a directory, locked by
    ///   another back-end, mounted, or on a file system that refuses O_DIRECT.
    public static func open(_ spec: String, readOnly: Bool, sharedWrite: Bool, direct: Bool = false,
                            minDirectAlignment: Int = 512) throws(BlockBackendError) -> BlockImage {
        var path = spec
        if spec.hasPrefix("file:") { path = String(spec.dropFirst(5)) }
        else if spec.hasPrefix("phy:") {
            path = String(spec.dropFirst(4))
            if !path.hasPrefix("/") { path = "/dev/" + path }
        }
        guard !path.isEmpty else { throw BlockBackendError("image \(spec): empty path") }
        var st = stat()
        guard stat(path, &st) == 0 else { throw .errno("image \(path)") }
        if st.st_mode & S_IFMT == S_IFDIR { throw BlockBackendError("image \(path) is a directory") }
        let fd = clinux_open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (direct ? directIOOpenFlag : 0), 0)
        guard fd >= 0 else {
            if direct && errno == EINVAL { throw BlockBackendError("image \(path): its file system refuses direct I/O (O_DIRECT); use the writeback cache mode") }
            throw .errno("image \(path)")
        }
        let img: BlockImage
        do { img = try BlockImage(fd: fd, readOnly: readOnly, minDirectAlignment: minDirectAlignment) }
        catch { close(fd); throw BlockBackendError("image \(path): \(error.description)") }
        if !(sharedWrite && !readOnly) {
            if flock(fd, (readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0 {
                throw BlockBackendError("image \(path) is already in use by another back-end (\(readOnly ? "exported read-write" : "locked")); use --shared-write (w!) to share it")
            }
        }
        if img.isBlockDevice, !readOnly, let m = mountedReadWrite(rdev: st.st_rdev) {
            throw BlockBackendError("image \(path) is mounted read-write on this host at \(m)")
        }
        return img
    }

    /// The mount point where the block device `rdev` is mounted read-write, if any
    /// (from /proc/self/mountinfo: field 3 is major:minor, field 6 the mount options).
    static func mountedReadWrite(rdev: dev_t) -> String? {
        let fd = clinux_open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC, 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            data += buf[0..<n]
        }
        let dev = UInt64(rdev)
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfff)
        let minor = (dev & 0xff) | ((dev >> 12) & ~0xff)
        let want = "\(major):\(minor)"
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 5, f[2] == want else { continue }
            if f[5].split(separator: ",").contains("rw") { return String(f[4]) }
        }
        return nil
    }

    /// Reads into `iov` (`count` entries, `total` bytes) at byte `offset`; false on error
    /// or short read. May rewrite the iovec entries. Thread-safe.
    /// With direct I/O, a request the alignment rules refuse goes through a bounce buffer.
    public func readv(_ iov: UnsafeMutablePointer<iovec>, count: Int, offset: UInt64, total: Int) -> Bool {
        if let a = direct, !takesAsIs(iov, count: count, offset: offset, total: total) {
            return bounced(a).read(FileBlockIO(fd: fd), into: iov, count: count, offset: offset, total: total)
        }
        return Self.transferAll(fd: fd, iov, count: count, offset: offset, total: total, write: false)
    }

    /// Writes `iov` at byte `offset`; false on error, short write or a read-only image.
    /// With direct I/O, a request the alignment rules refuse goes through a bounce buffer
    /// (read-modify-write of partial blocks).
    public func writev(_ iov: UnsafeMutablePointer<iovec>, count: Int, offset: UInt64, total: Int) -> Bool {
        guard !readOnly else { return false }
        if let a = direct, !takesAsIs(iov, count: count, offset: offset, total: total) {
            return bounced(a).write(FileBlockIO(fd: fd), from: iov, count: count, offset: offset, total: total, fileSize: size)
        }
        return Self.transferAll(fd: fd, iov, count: count, offset: offset, total: total, write: true)
    }

    /// Whether a transfer of `iov` (`count` entries, `total` bytes) at byte `offset` can go
    /// to the kernel as it is: always through the page cache; with direct I/O when the
    /// alignment rules allow it (otherwise it goes through the bounce buffer).
    func takesAsIs(_ iov: UnsafePointer<iovec>, count: Int, offset: UInt64, total: Int) -> Bool {
        guard let a = direct else { return true }
        return a.allows(iov, count: count, offset: offset) && total & (a.offset - 1) == 0
    }

    static func transferAll(fd: Int32, _ iov: UnsafeMutablePointer<iovec>, count: Int, offset: UInt64, total: Int, write: Bool) -> Bool {
        var done = 0
        var iov = iov, count = count
        while done < total {
            let n = write ? pwritev(fd, iov, Int32(min(count, 1024)), off_t(offset + UInt64(done)))
                          : preadv(fd, iov, Int32(min(count, 1024)), off_t(offset + UInt64(done)))
            if n < 0 { if errno == EINTR { continue }; return false }
            if n == 0 { return false }
            done += n
            if done < total { advance(&iov, &count, by: n) }
        }
        return true
    }

    /// Moves `iov`/`count` past the first `n` bytes (a short transfer's remainder).
    static func advance(_ iov: inout UnsafeMutablePointer<iovec>, _ count: inout Int, by n: Int) {
        var n = n
        while n > 0 && count > 0 {
            if n >= iov.pointee.iov_len { n -= iov.pointee.iov_len; iov += 1; count -= 1 }
            else { iov.pointee.iov_base += n; iov.pointee.iov_len -= n; n = 0 }
        }
    }

    /// fdatasync; false on error.
    public func flush() -> Bool { fdatasync(fd) == 0 }

    /// Discards `[offset, offset+length)`: punch a hole in a file, BLKDISCARD on a device.
    /// Discard is a hint: failure of the file system to support it is not an error.
    public func discard(offset: UInt64, length: UInt64) -> Bool {
        guard !readOnly else { return false }
        let locked = lockIfPartialBlocks(offset: offset, length: length)
        defer { if locked { pthread_mutex_unlock(rmwLock) } }
        if isBlockDevice {
            var range: (UInt64, UInt64) = (offset, length)
            return clinux_ioctl_ptr(fd, CLINUX_BLKDISCARD, &range) == 0 || errno == EOPNOTSUPP
        }
        guard let fa = fallocateFn else { return true }
        return fa(fd, Falloc.punchHole | Falloc.keepSize, Int(offset), Int(length)) == 0 || errno == EOPNOTSUPP
    }

    /// Under direct I/O, takes the read-modify-write lock when `[offset, offset+length)`
    /// starts or ends inside a block: changing part of a block in place while a bounced
    /// write of its neighbouring bytes is between its read and its write would be undone by
    /// that write. Returns whether the lock was taken (the caller unlocks).
    private func lockIfPartialBlocks(offset: UInt64, length: UInt64) -> Bool {
        guard let a = direct, (offset | length) & UInt64(a.offset - 1) != 0 else { return false }
        pthread_mutex_lock(rmwLock)
        return true
    }

    /// Makes `[offset, offset+length)` read as zeros, deallocating if `unmap`.
    public func writeZeroes(offset: UInt64, length: UInt64, unmap: Bool) -> Bool {
        guard !readOnly else { return false }
        // The fast paths zero partial blocks in place; the fallback below goes through the
        // bounce buffer, which takes the lock itself (it is not recursive).
        let locked = lockIfPartialBlocks(offset: offset, length: length)
        var zeroed = false
        if isBlockDevice {
            var range: (UInt64, UInt64) = (offset, length)
            zeroed = clinux_ioctl_ptr(fd, blkZeroOut, &range) == 0
        } else if let fa = fallocateFn {
            let mode = unmap ? Falloc.punchHole | Falloc.keepSize : Falloc.zeroRange | Falloc.keepSize
            zeroed = fa(fd, mode, Int(offset), Int(length)) == 0
        }
        if locked { pthread_mutex_unlock(rmwLock) }
        if zeroed { return true }
        // Fallback: write zeros.
        let chunk = 1 << 20
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeros.deallocate() }
        memset(zeros, 0, chunk)
        var off = offset
        while off < offset + length {
            let n = Int(min(UInt64(chunk), offset + length - off))
            // pwritev, not pwrite: the manifest allows one positional-write syscall.
            var iov = iovec(iov_base: zeros, iov_len: n)
            if direct != nil {
                // Through the alignment rules (a bounce buffer when the range is not aligned).
                guard writev(&iov, count: 1, offset: off, total: n) else { return false }
                off += UInt64(n)
                continue
            }
            let w = pwritev(fd, &iov, 1, off_t(off))
            if w <= 0 { if w < 0 && errno == EINTR { continue }; return false }
            off += UInt64(w)
        }
        return true
    }
}

