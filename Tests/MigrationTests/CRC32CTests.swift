import Testing
@testable import Migration

/// The bit-at-a-time definition, to check the slicing-by-8 tables against.
func referenceCRC32C(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        crc ^= UInt32(b)
        for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
    }
    return ~crc
}

@Suite struct CRC32CTests {
    @Test func checkValues() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8]()) == 0)
        // RFC 3720 B.4: 32 bytes of zeros, of 0xFF.
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
    }

    /// Both paths (the SSE4.2 instruction where the CPU has it, and the slicing-by-8 tables).
    @Test func slicingMatchesTheDefinitionAtEveryAlignmentAndLength() {
        let data = randomBytes(4096)
        for start in 0..<9 {
            for length in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4000] where start + length <= data.count {
                let slice = Array(data[start..<(start + length)])
                #expect(CRC32C.checksum(slice) == referenceCRC32C(slice), "start \(start) length \(length)")
                #expect(CRC32C.softwareChecksum(slice) == referenceCRC32C(slice), "tables: start \(start) length \(length)")
            }
        }
    }

    /// The instruction path runs three lanes of 8 KiB at once from 24 KiB on and joins them
    /// with a table-driven shift: lengths and alignments around those boundaries.
    @Test func threeLaneInterleavingMatchesTheTables() {
        let data = randomBytes(3 * 24576 + 4096)
        for start in [0, 1, 3, 8] {
            for length in [24575, 24576, 24577, 24584, 49151, 49152, 49160, 73728, 73729, 3 * 24576 + 4000] where start + length <= data.count {
                let slice = Array(data[start..<(start + length)])
                #expect(CRC32C.checksum(slice) == CRC32C.softwareChecksum(slice), "start \(start) length \(length)")
            }
        }
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 1 << 20)) == referenceCRC32C([UInt8](repeating: 0, count: 1 << 20)))
    }

    @Test func piecewiseUpdatesEqualOneUpdate() {
        let data = randomBytes(100_003)
        var c = CRC32C()
        var i = 0, step = 1
        while i < data.count {
            let j = min(data.count, i + step)
            c.update(data[i..<j])
            i = j; step = step * 3 % 9973 + 1
        }
        #expect(c.value == CRC32C.checksum(data))
    }

    @Test func combineEqualsTheCRCOfTheConcatenation() {
        let data = randomBytes(1 << 20 + 3)
        let whole = CRC32C.checksum(data)
        for cut in [0, 1, 5, 8, 4096, 65535, 1 << 19, data.count - 1, data.count] + (0..<20).map({ _ in Int.random(in: 0...data.count) }) {
            let a = CRC32C.checksum(data[0..<cut]), b = CRC32C.checksum(data[cut...])
            #expect(CRC32C.combine(a, b, lengthB: data.count - cut) == whole, "cut \(cut)")
        }
        #expect(CRC32C.combine(0, 0xE306_9283, lengthB: 9) == 0xE306_9283)
        #expect(CRC32C.combine(CRC32C.checksum(Array("1234".utf8)), CRC32C.checksum(Array("56789".utf8)), lengthB: 5) == 0xE306_9283)
    }
}
