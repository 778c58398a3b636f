// CRC-32C (Castagnoli), the checksum of every frame and of the whole stream (README.md §1).
// Table-driven, slicing-by-8: eight 256-entry tables let one step fold eight input bytes.

/// A running CRC-32C (iSCSI/Castagnoli: reflected polynomial 0x82F63B78, initial value
/// and final XOR 0xFFFF_FFFF). Check value: the nine bytes "123456789" give 0xE3069283.
///
/// Feed bytes with `update`, in order, in pieces of any size; read `value` at any time.
public struct CRC32C: Sendable, Equatable {
    private var state: UInt32 = 0xFFFF_FFFF

    /// An empty CRC (the CRC of no bytes is 0).
    public init() {}

    /// The CRC-32C of all bytes fed so far.
    public var value: UInt32 { ~state }

    /// Feeds `bytes`.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard var p = bytes.baseAddress, bytes.count > 0 else { return }
        var n = bytes.count
        var crc = state
        CRC32C.tables.withUnsafeBufferPointer { t in
            // Single bytes until p is 8-byte aligned, then 8 at a time, then the tail.
            while n > 0 && UInt(bitPattern: p) & 7 != 0 {
                crc = t[Int((crc ^ UInt32(p.load(as: UInt8.self))) & 0xFF)] ^ (crc >> 8)
                p += 1; n -= 1
            }
            while n >= 8 {
                // Little-endian load: byte 0 of the input is the low byte (reflected CRC).
                let word = UInt64(littleEndian: p.load(as: UInt64.self)) ^ UInt64(crc)
                let lo = UInt32(truncatingIfNeeded: word), hi = UInt32(truncatingIfNeeded: word >> 32)
                crc = t[7 * 256 + Int(lo & 0xFF)] ^ t[6 * 256 + Int((lo >> 8) & 0xFF)]
                    ^ t[5 * 256 + Int((lo >> 16) & 0xFF)] ^ t[4 * 256 + Int(lo >> 24)]
                    ^ t[3 * 256 + Int(hi & 0xFF)] ^ t[2 * 256 + Int((hi >> 8) & 0xFF)]
                    ^ t[1 * 256 + Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
                p += 8; n -= 8
            }
            while n > 0 {
                crc = t[Int((crc ^ UInt32(p.load(as: UInt8.self))) & 0xFF)] ^ (crc >> 8)
                p += 1; n -= 1
            }
        }
        state = crc
    }

    /// Feeds `bytes`.
    public mutating func update(_ bytes: some Sequence<UInt8>) {
        if bytes.withContiguousStorageIfAvailable({ update(UnsafeRawBufferPointer($0)) }) == nil {
            let copy = Array(bytes)
            copy.withUnsafeBytes { update($0) }
        }
    }

    /// The CRC-32C of `bytes`.
    public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var c = CRC32C(); c.update(bytes); return c.value
    }

    /// The CRC-32C of `bytes`.
    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c = CRC32C(); c.update(bytes); return c.value
    }

    /// Eight tables of 256 entries: table k maps a byte to its CRC after k more zero bytes.
    private static let tables: [UInt32] = {
        var t = [UInt32](repeating: 0, count: 8 * 256)
        for i in 0..<256 {
            var c = UInt32(i)
            for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            t[i] = c
        }
        for k in 1..<8 {
            for i in 0..<256 {
                let prev = t[(k - 1) * 256 + i]
                t[k * 256 + i] = t[Int(prev & 0xFF)] ^ (prev >> 8)
            }
        }
        return t
    }()
}
