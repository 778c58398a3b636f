// The core's saved-state stream (Sources/Core/README.md "State stream"): what `xenith-core`
// writes on `save`/`save-live` and reads in incoming mode. Host-local (both ends are cores
// of the same build on KVM), so integers are little-endian and register state is the
// kernel structures' bytes; but every value read is untrusted: lengths, counts, indices
// and addresses are checked before use, and no allocation is sized by an unchecked field.
//
//   header  8 bytes "XNTHCORE", u32 version (1), u64 RAM bytes, u32 vCPUs
//   records u32 tag, u32 length N (≤ maxRecord), N bytes payload:
//     1 ram     u64 guest-physical address (page-aligned), then k·4096 bytes (1 ≤ k ≤ 256)
//     2 zero    u64 address, u32 pages k (1 ≤ k ≤ 2^20): those pages are all zero
//     3 vcpu    u32 index (< vCPUs), u32 VCPUStateKind, the structure's bytes
//                 (MSRs: u32 count ≤ 1024, then count × (u32 index, u64 value))
//     4 vm      u32 VMStateKind, the structure's bytes
//     5 device  u32 device id (1 COM1, 2 ACPI/power, 3 PCI address latch, 0x100+slot a
//                 PCI device), the device's own encoding
//     6 end     u64 records before it: the stream is complete
#if canImport(Glibc)
import Glibc
#endif

/// Constants of the core's state stream.
public enum CoreStateFormat {
    /// First 8 bytes of every stream.
    public static let magic: [UInt8] = Array("XNTHCORE".utf8)
    /// The version this core writes and the newest it reads.
    public static let version: UInt32 = 1
    /// Header bytes: magic, version, RAM bytes, vCPUs.
    public static let headerSize = 24
    /// Pages in one `ram` record at most.
    public static let maxPagesPerRecord = 256
    /// Largest record payload a reader accepts (a full `ram` record).
    public static let maxRecord = 8 + maxPagesPerRecord * 4096
    /// Guest page size the stream counts in.
    public static let pageSize = 4096

    /// Record tags.
    public enum Tag: UInt32 { case ram = 1, zero, vcpu, vm, device, end }
    /// Device ids of `device` records.
    public static let deviceSerial: UInt32 = 1, devicePower: UInt32 = 2, devicePCIAddress: UInt32 = 3
    public static let devicePCIBase: UInt32 = 0x100
}

/// Appends little-endian fields to a byte buffer (one record's payload).
public struct StateEncoder {
    public private(set) var bytes: [UInt8] = []
    public init() {}
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    /// A u32 length, then the bytes.
    public mutating func blob(_ b: [UInt8]) { u32(UInt32(b.count)); bytes += b }
    public mutating func raw(_ b: [UInt8]) { bytes += b }
}

/// Reads little-endian fields from one record's payload; every read is bounds-checked.
public struct StateDecoder {
    private let bytes: [UInt8]
    private var at = 0
    /// Names the record in errors ("device 1").
    public let what: String
    public init(_ bytes: [UInt8], what: String) { self.bytes = bytes; self.what = what }

    public var remaining: Int { bytes.count - at }

    private mutating func take(_ n: Int) throws(CoreError) -> ArraySlice<UInt8> {
        guard n >= 0, n <= remaining else { throw .badStream("\(what): needs \(n) more bytes at offset \(at), has \(remaining)") }
        defer { at += n }
        return bytes[at..<(at + n)]
    }
    private mutating func int<T: FixedWidthInteger>(_: T.Type) throws(CoreError) -> T {
        let s = try take(MemoryLayout<T>.size)
        var v: T = 0
        for (i, b) in s.enumerated() { v |= T(b) << (8 * i) }
        return v
    }
    public mutating func u8() throws(CoreError) -> UInt8 { try int(UInt8.self) }
    public mutating func u16() throws(CoreError) -> UInt16 { try int(UInt16.self) }
    public mutating func u32() throws(CoreError) -> UInt32 { try int(UInt32.self) }
    public mutating func u64() throws(CoreError) -> UInt64 { try int(UInt64.self) }
    public mutating func bool() throws(CoreError) -> Bool {
        let v = try u8()
        guard v <= 1 else { throw .badStream("\(what): boolean \(v) at offset \(at - 1)") }
        return v == 1
    }
    /// A u32 length (at most `max`), then that many bytes.
    public mutating func blob(max: Int) throws(CoreError) -> [UInt8] {
        let n = try u32()
        guard n <= max else { throw .badStream("\(what): field of \(n) bytes exceeds \(max)") }
        return Array(try take(Int(n)))
    }
    public mutating func raw(_ n: Int) throws(CoreError) -> [UInt8] { Array(try take(n)) }
    public mutating func rest() -> [UInt8] { let r = Array(bytes[at...]); at = bytes.count; return r }
    /// Throws unless every byte was read (a record longer than its kind is refused).
    public func finish() throws(CoreError) {
        guard remaining == 0 else { throw .badStream("\(what): \(remaining) unexpected trailing bytes") }
    }
}

/// Writes records to a descriptor (a pipe to the migration service), counting bytes.
public final class StateWriter {
    private let fd: Int32
    public private(set) var bytesWritten: UInt64 = 0
    public private(set) var records: UInt64 = 0
    /// Called with the total after each write of at least 1 MiB since the last call.
    public var onProgress: ((UInt64) -> Void)?
    private var lastReport: UInt64 = 0

    public init(fd: Int32) { self.fd = fd }

    /// Writes all of `bytes` (retrying short writes and EINTR).
    /// - Throws: ``CoreError/system(_:_:)`` (EPIPE when the reader went away).
    public func write(_ bytes: UnsafeRawBufferPointer) throws(CoreError) {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 { if errno == EINTR { continue }; throw .system("write state stream", errno) }
            done += n
        }
        bytesWritten += UInt64(bytes.count)
        if bytesWritten - lastReport >= 1 << 20 { lastReport = bytesWritten; onProgress?(bytesWritten) }
    }

    public func write(_ bytes: [UInt8]) throws(CoreError) {
        let r: Result<Void, CoreError> = bytes.withUnsafeBytes { b in Result { () throws(CoreError) in try write(b) } }
        try r.get()
    }

    public func header(ramBytes: UInt64, vcpus: Int) throws(CoreError) {
        var e = StateEncoder()
        e.raw(CoreStateFormat.magic); e.u32(CoreStateFormat.version); e.u64(ramBytes); e.u32(UInt32(vcpus))
        try write(e.bytes)
    }

    /// One record: tag, length, payload.
    public func record(_ tag: CoreStateFormat.Tag, _ payload: [UInt8]) throws(CoreError) {
        precondition(payload.count <= CoreStateFormat.maxRecord)
        var e = StateEncoder()
        e.u32(tag.rawValue); e.u32(UInt32(payload.count))
        try write(e.bytes)
        try write(payload)
        records += 1
    }

    /// A `ram` record of `pages` pages at `address`, straight from guest memory.
    public func ram(address: UInt64, from host: UnsafeRawPointer, pages: Int) throws(CoreError) {
        precondition(pages >= 1 && pages <= CoreStateFormat.maxPagesPerRecord)
        var e = StateEncoder()
        e.u32(CoreStateFormat.Tag.ram.rawValue); e.u32(UInt32(8 + pages * CoreStateFormat.pageSize)); e.u64(address)
        try write(e.bytes)
        try write(UnsafeRawBufferPointer(start: host, count: pages * CoreStateFormat.pageSize))
        records += 1
    }

    public func end() throws(CoreError) {
        var e = StateEncoder()
        e.u64(records)
        try record(.end, e.bytes)
    }
}

/// Reads records from a descriptor, refusing anything malformed before acting on it.
public final class StateReader {
    private let fd: Int32
    public private(set) var bytesRead: UInt64 = 0
    public private(set) var records: UInt64 = 0
    /// Called with the total after each 1 MiB read.
    public var onProgress: ((UInt64) -> Void)?
    private var lastReport: UInt64 = 0

    public init(fd: Int32) { self.fd = fd }

    /// Reads exactly `count` bytes into `dst`.
    /// - Throws: ``CoreError/badStream(_:)`` when the stream ends first, naming `what`.
    public func read(into dst: UnsafeMutableRawBufferPointer, what: String) throws(CoreError) {
        var done = 0
        while done < dst.count {
            let n = Glibc.read(fd, dst.baseAddress! + done, dst.count - done)
            if n < 0 { if errno == EINTR { continue }; throw .system("read state stream", errno) }
            if n == 0 { throw .badStream("truncated: the stream ends in \(what) at byte \(bytesRead + UInt64(done))") }
            done += n
        }
        bytesRead += UInt64(dst.count)
        if bytesRead - lastReport >= 1 << 20 { lastReport = bytesRead; onProgress?(bytesRead) }
    }

    public func read(_ count: Int, what: String) throws(CoreError) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: count)
        let r: Result<Void, CoreError> = b.withUnsafeMutableBytes { p in Result { () throws(CoreError) in try read(into: p, what: what) } }
        try r.get()
        return b
    }

    /// The header's RAM size and vCPU count, after checking magic and version.
    public func header() throws(CoreError) -> (ramBytes: UInt64, vcpus: Int) {
        let h = try read(CoreStateFormat.headerSize, what: "the header")
        guard Array(h[0..<8]) == CoreStateFormat.magic else { throw .badStream("wrong magic (not a state stream of the core engine)") }
        var d = StateDecoder(Array(h[8...]), what: "header")
        let v = try d.u32()
        guard v >= 1 else { throw .badStream("version 0") }
        guard v <= CoreStateFormat.version else {
            throw .badStream("version \(v) is newer than this core's \(CoreStateFormat.version)")
        }
        let ram = try d.u64(), n = try d.u32()
        return (ram, Int(n))
    }

    /// The next record's tag and length (length checked against ``CoreStateFormat/maxRecord``).
    public func next() throws(CoreError) -> (tag: CoreStateFormat.Tag, length: Int) {
        let h = try read(8, what: "record \(records + 1)'s header")
        var d = StateDecoder(h, what: "record \(records + 1)")
        let t = try d.u32(), n = try d.u32()
        guard let tag = CoreStateFormat.Tag(rawValue: t) else {
            throw .badStream("record \(records + 1) at byte \(bytesRead - 8): unknown tag \(t)")
        }
        guard n <= UInt32(CoreStateFormat.maxRecord) else {
            throw .badStream("record \(records + 1) at byte \(bytesRead - 8): length \(n) exceeds \(CoreStateFormat.maxRecord)")
        }
        records += 1
        return (tag, Int(n))
    }
}
