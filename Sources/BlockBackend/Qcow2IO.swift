// Positional I/O for the qcow2 code with the two syscalls blkback's manifest allows on its
// image (preadv, pwritev: manifests/blkback.manifest), retried on EINTR and short counts.
#if canImport(Glibc)
import Glibc
#endif

enum Qcow2IO {
    /// Reads up to `buf.count` bytes at `at`; the count read (short at end of file), -1 on error.
    static func read(_ fd: Int32, _ buf: inout [UInt8], at: UInt64) -> Int {
        buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, count: $0.count, at: at) }
    }

    /// Reads up to `count` bytes into `p` at `at`; the count read, -1 on error.
    static func read(_ fd: Int32, _ p: UnsafeMutableRawPointer, count: Int, at: UInt64) -> Int {
        var done = 0
        while done < count {
            var iov = iovec(iov_base: p + done, iov_len: count - done)
            let n = preadv(fd, &iov, 1, off_t(at + UInt64(done)))
            if n < 0 { if errno == EINTR { continue }; return -1 }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes all of `[p, p+count)` at `at`; false on error.
    static func write(_ fd: Int32, _ p: UnsafeRawPointer, count: Int, at: UInt64) -> Bool {
        var done = 0
        while done < count {
            var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: p) + done, iov_len: count - done)
            let n = pwritev(fd, &iov, 1, off_t(at + UInt64(done)))
            if n < 0 { if errno == EINTR { continue }; return false }
            if n == 0 { return false }
            done += n
        }
        return true
    }

    static func write(_ fd: Int32, _ bytes: [UInt8], at: UInt64) -> Bool {
        bytes.withUnsafeBytes { write(fd, $0.baseAddress!, count: $0.count, at: at) }
    }

    /// Big-endian bytes of `v`.
    static func be64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64($0))) } }
    static func be32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * UInt32($0))) } }
    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
}

/// A list of guest buffers (iovecs) from which byte ranges are cut for each cluster.
struct IOVList {
    let v: [iovec]
    init(_ iov: UnsafeMutablePointer<iovec>, count: Int) { v = Array(UnsafeBufferPointer(start: iov, count: count)) }

    /// The iovecs covering request bytes `[from, from+length)`.
    func slice(from: Int, length: Int) -> [iovec] {
        var out: [iovec] = []
        var skip = from, left = length
        for e in v where left > 0 {
            if skip >= e.iov_len { skip -= e.iov_len; continue }
            let take = min(e.iov_len - skip, left)
            out.append(iovec(iov_base: e.iov_base! + skip, iov_len: take))
            left -= take; skip = 0
        }
        return out
    }

    /// Zeroes request bytes `[from, from+length)`.
    func zero(from: Int, length: Int) {
        for e in slice(from: from, length: length) { memset(e.iov_base, 0, e.iov_len) }
    }

    /// Copies request bytes `[from, from+length)` to `dst`.
    func copyOut(from: Int, length: Int, to dst: UnsafeMutableRawPointer) {
        var o = 0
        for e in slice(from: from, length: length) { memcpy(dst + o, e.iov_base, e.iov_len); o += e.iov_len }
    }
}
