// CRC-32C (Castagnoli), the checksum of every frame and of the whole stream (README.md §1).
// SSE4.2's CRC32 instruction where the CPU has it (CLinux), else table-driven,
// slicing-by-8: eight 256-entry tables let one step fold eight input bytes.
import CLinux

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
        if CRC32C.hardware {
            state = clinux_crc32c_update(state, p, bytes.count)
        } else {
            softwareUpdate(bytes)
        }
    }

    /// Slicing-by-8 over the tables.
    private mutating func softwareUpdate(_ bytes: UnsafeRawBufferPointer) {
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

    /// Whether the CRC32 instruction is used (SSE4.2); the tables serve otherwise.
    static let hardware = clinux_crc32c_hardware() != 0

    /// The CRC-32C of `bytes` by the tables alone (tests compare it with the instruction's).
    public static func softwareChecksum(_ bytes: [UInt8]) -> UInt32 {
        var c = CRC32C()
        bytes.withUnsafeBytes { c.softwareUpdate($0) }
        return c.value
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

    /// The CRC-32C of A followed by B, from `crcA` = CRC-32C(A), `crcB` = CRC-32C(B) and
    /// B's length in bytes, without reading either again (zlib's crc32_combine method:
    /// appending n zero bytes is a linear map on the CRC; its powers of two are precomputed).
    /// A frame's CRC and the whole stream's CRC are built this way from one pass over each
    /// payload. Cost: at most one 32×32 bit-matrix product per set bit of `lengthB`.
    public static func combine(_ crcA: UInt32, _ crcB: UInt32, lengthB: Int) -> UInt32 {
        precondition(lengthB >= 0 && lengthB < 1 << 32)
        var v = crcA
        var n = lengthB, k = 0
        zeroOperators.withUnsafeBufferPointer { ops in
            while n != 0 {
                if n & 1 != 0 { v = times(ops, row: k * 32, v) }
                n >>= 1; k += 1
            }
        }
        return v ^ crcB
    }

    /// The 32×32 bit matrix at `ops[row..<row+32]` (column i = image of bit i) times `vector`.
    private static func times(_ ops: UnsafeBufferPointer<UInt32>, row: Int, _ vector: UInt32) -> UInt32 {
        var sum: UInt32 = 0, vec = vector, i = row
        while vec != 0 {
            if vec & 1 != 0 { sum ^= ops[i] }
            vec >>= 1; i += 1
        }
        return sum
    }

    /// 32 matrices: matrix k appends 2^k zero bytes to the message behind a CRC.
    private static let zeroOperators: [UInt32] = {
        func square(_ m: [UInt32]) -> [UInt32] {
            m.withUnsafeBufferPointer { mp in (0..<32).map { times(mp, row: 0, m[$0]) } }
        }
        // One zero bit: shift right, folding the polynomial in when bit 0 falls out.
        var op = [UInt32](repeating: 0, count: 32)
        op[0] = 0x82F6_3B78
        for n in 1..<32 { op[n] = 1 << (n - 1) }
        op = square(square(square(op)))                // 8 bits: one zero byte
        var all: [UInt32] = []
        for _ in 0..<32 { all += op; op = square(op) }
        return all
    }()

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
