// Little-endian byte helpers for building tables and for reading untrusted images.

/// A growable little-endian byte buffer for building guest structures.
struct ByteWriter {
    var bytes: [UInt8]

    init(count: Int = 0) { bytes = [UInt8](repeating: 0, count: count) }

    var count: Int { bytes.count }

    /// Stores `value` little-endian at `offset`, growing the buffer with zeros if needed.
    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        let size = MemoryLayout<T>.size
        if offset + size > bytes.count { bytes += [UInt8](repeating: 0, count: offset + size - bytes.count) }
        var v = value.littleEndian
        withUnsafeBytes(of: &v) { raw in
            for i in 0..<size { bytes[offset + i] = raw[i] }
        }
    }

    /// Copies `data` to `offset`, growing the buffer with zeros if needed.
    mutating func put<C: Collection>(bytes data: C, at offset: Int) where C.Element == UInt8 {
        if offset + data.count > bytes.count { bytes += [UInt8](repeating: 0, count: offset + data.count - bytes.count) }
        var i = offset
        for b in data { bytes[i] = b; i += 1 }
    }

    /// Stores ASCII `text` at `offset`, padded with `pad` (or truncated) to `width` bytes.
    mutating func put(ascii text: String, at offset: Int, width: Int, pad: UInt8 = 0x20) {
        var field = Array(text.utf8.prefix(width))
        while field.count < width { field.append(pad) }
        put(bytes: field, at: offset)
    }

    mutating func append<T: FixedWidthInteger>(_ value: T) { put(value, at: bytes.count) }
    mutating func append<C: Collection>(bytes data: C) where C.Element == UInt8 { bytes.append(contentsOf: data) }

    /// Pads with zeros to a multiple of `alignment`.
    mutating func align(to alignment: Int) {
        while bytes.count % alignment != 0 { bytes.append(0) }
    }
}

/// Bounds-checked little-endian reads from an untrusted image. Every read returns nil
/// instead of trapping when `[offset, offset+size)` is not inside the bytes.
struct ByteReader {
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var count: Int { bytes.count }

    /// Whether `[offset, offset+length)` lies inside the bytes (no overflow).
    func contains(_ offset: UInt64, _ length: UInt64) -> Bool {
        offset <= UInt64(bytes.count) && length <= UInt64(bytes.count) - offset
    }

    func int<T: FixedWidthInteger>(_ type: T.Type, at offset: UInt64) -> T? {
        let size = MemoryLayout<T>.size
        guard contains(offset, UInt64(size)) else { return nil }
        let o = Int(offset)
        var v: T = 0
        for i in 0..<size { v |= T(truncatingIfNeeded: bytes[o + i]) << (8 * i) }
        return v
    }

    func u8(_ offset: UInt64) -> UInt8? { int(UInt8.self, at: offset) }
    func u16(_ offset: UInt64) -> UInt16? { int(UInt16.self, at: offset) }
    func u32(_ offset: UInt64) -> UInt32? { int(UInt32.self, at: offset) }
    func u64(_ offset: UInt64) -> UInt64? { int(UInt64.self, at: offset) }

    /// `bytes[offset..<offset+length]` or nil when out of range.
    func slice(_ offset: UInt64, _ length: UInt64) -> ArraySlice<UInt8>? {
        guard contains(offset, length) else { return nil }
        return bytes[Int(offset)..<Int(offset + length)]
    }
}

/// 8-bit checksum byte that makes `bytes` sum to zero (ACPI, MP spec).
func checksumByte<C: Collection>(_ bytes: C) -> UInt8 where C.Element == UInt8 {
    var sum: UInt8 = 0
    for b in bytes { sum &+= b }
    return 0 &- sum
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

/// `value` rounded up to a multiple of `alignment` (a power of two), or nil on overflow.
func alignUp(_ value: UInt64, _ alignment: UInt64) -> UInt64? {
    let (s, o) = value.addingReportingOverflow(alignment - 1)
    return o ? nil : s & ~(alignment - 1)
}
