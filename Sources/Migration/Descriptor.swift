// Blocking I/O on a handed descriptor: whole reads and writes, EINTR retried here and only
// here, errno turned into MigrationError.io naming the descriptor's role.
#if canImport(Glibc)
import Glibc
#endif

/// strerror text of `code` (no Foundation).
func errnoText(_ code: Int32) -> String { String(cString: strerror(code)) }

/// One descriptor the service was handed (the engine stream, the file or peer, the status
/// channel), with its role for messages ("engine stream (fd 3)"). It does not own the fd.
public struct Descriptor: Sendable {
    /// The descriptor number.
    public let fd: Int32
    /// What it is, for error messages, e.g. "save file (fd 4)".
    public let role: String

    /// Wraps handed descriptor `fd`; `role` names it in error messages.
    public init(_ fd: Int32, role: String) { self.fd = fd; self.role = role }

    /// Reads up to `count` bytes into `buffer`, retrying EINTR.
    /// - Returns: the bytes read (0 at EOF).
    /// - Throws: `MigrationError.io`.
    public func readSome(_ buffer: UnsafeMutableRawPointer, _ count: Int) throws(MigrationError) -> Int {
        while true {
            let n = read(fd, buffer, count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw .io(operation: "reading the \(role)", errno: errno)
        }
    }

    /// Reads exactly `count` bytes unless EOF comes first.
    /// - Returns: the bytes read: `count`, or fewer at EOF.
    /// - Throws: `MigrationError.io`.
    public func readFull(_ buffer: UnsafeMutableRawPointer, _ count: Int) throws(MigrationError) -> Int {
        var done = 0
        while done < count {
            let n = try readSome(buffer + done, count - done)
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes all `count` bytes, retrying EINTR and short writes.
    /// - Throws: `MigrationError.io` (EPIPE when the reader went away).
    public func writeAll(_ buffer: UnsafeRawPointer, _ count: Int) throws(MigrationError) {
        var done = 0
        while done < count {
            let n = write(fd, buffer + done, count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(operation: "writing the \(role)", errno: errno)
            }
            done += n
        }
    }

    /// Writes all of `bytes`.
    public func writeAll(_ bytes: [UInt8]) throws(MigrationError) {
        try withBytes(bytes) { (b) throws(MigrationError) in
            if let base = b.baseAddress { try writeAll(base, b.count) }
        }
    }

    /// Moves the file offset to `offset` from the start (a seekable file only).
    /// - Throws: `MigrationError.io` (ESPIPE for a pipe or socket).
    public func seek(to offset: Int64) throws(MigrationError) {
        guard lseek(fd, off_t(offset), SEEK_SET) >= 0 else {
            throw .io(operation: "seeking in the \(role)", errno: errno)
        }
    }

    /// Whether the descriptor is a regular file (fstat).
    public var isRegularFile: Bool {
        var st = stat()
        return fstat(fd, &st) == 0 && st.st_mode & S_IFMT == S_IFREG
    }

    /// Flushes a regular file's data to disk; does nothing for pipes and sockets.
    /// - Throws: `MigrationError.io`.
    public func syncIfFile() throws(MigrationError) {
        guard isRegularFile else { return }
        while fdatasync(fd) != 0 {
            if errno == EINTR { continue }
            throw .io(operation: "fdatasync of the \(role)", errno: errno)
        }
    }
}

/// Big-endian encoding helpers for the stream and status formats.
enum BigEndian {
    static func append(_ v: UInt32, to out: inout [UInt8]) {
        out.append(UInt8(truncatingIfNeeded: v >> 24)); out.append(UInt8(truncatingIfNeeded: v >> 16))
        out.append(UInt8(truncatingIfNeeded: v >> 8)); out.append(UInt8(truncatingIfNeeded: v))
    }
    static func append(_ v: UInt64, to out: inout [UInt8]) {
        append(UInt32(truncatingIfNeeded: v >> 32), to: &out); append(UInt32(truncatingIfNeeded: v), to: &out)
    }
    /// The u32 at `at` in `bytes`; the caller has checked `at + 4 <= bytes.count`.
    static func u32(_ bytes: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8 | UInt32(bytes[at + 3])
    }
    /// The u64 at `at` in `bytes`; the caller has checked `at + 8 <= bytes.count`.
    static func u64(_ bytes: UnsafeRawBufferPointer, _ at: Int) -> UInt64 {
        UInt64(u32(bytes, at)) << 32 | UInt64(u32(bytes, at + 4))
    }
    static func u32(_ bytes: [UInt8], _ at: Int) -> UInt32 { bytes.withUnsafeBytes { u32($0, at) } }
    static func u64(_ bytes: [UInt8], _ at: Int) -> UInt64 { bytes.withUnsafeBytes { u64($0, at) } }
}

/// Monotonic time in nanoseconds (CLOCK_MONOTONIC).
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Sleeps `nanoseconds` (clock_nanosleep, EINTR resumed).
func sleepNanoseconds(_ nanoseconds: UInt64) {
    var req = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    var rem = timespec()
    while clock_nanosleep(CLOCK_MONOTONIC, 0, &req, &rem) == EINTR { req = rem }
}

/// `array.withUnsafeBytes(body)` for a body with typed throws (Array's own method only
/// rethrows untyped errors).
func withBytes<R>(_ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(MigrationError) -> R) throws(MigrationError) -> R {
    try array.withUnsafeBytes { p in Result { () throws(MigrationError) in try body(p) } }.get()
}

/// `array.withUnsafeMutableBytes(body)` for a body with typed throws.
func withMutableBytes<R>(_ array: inout [UInt8], _ body: (UnsafeMutableRawBufferPointer) throws(MigrationError) -> R) throws(MigrationError) -> R {
    try array.withUnsafeMutableBytes { p in Result { () throws(MigrationError) in try body(p) } }.get()
}
