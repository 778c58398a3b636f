// A tiny AML encoder: just what our DSDT needs (ACPI 6.x §20.2 "AML Grammar Definition").

enum AML {
    /// PkgLength (§20.2.4): encodes `body + own size` in 1 to 4 bytes.
    static func pkgLength(_ body: Int) -> [UInt8] {
        if body + 1 <= 0x3F { return [UInt8(body + 1)] }
        for n in 2...4 {
            let total = body + n
            if total < 1 << (4 + 8 * (n - 1)) {
                var out: [UInt8] = [UInt8((n - 1) << 6) | UInt8(total & 0xF)]
                for k in 0..<(n - 1) { out.append(UInt8((total >> (4 + 8 * k)) & 0xFF)) }
                return out
            }
        }
        preconditionFailure("AML package longer than 2^28 bytes")
    }

    /// NameString (§20.2.2): optional leading "\" (root), segments separated by ".",
    /// each padded with "_" to 4 characters.
    static func nameString(_ path: String) -> [UInt8] {
        var out: [UInt8] = []
        var p = Substring(path)
        if p.hasPrefix("\\") { out.append(0x5C); p = p.dropFirst() }
        let segs = p.split(separator: ".").map { seg -> [UInt8] in
            var b = Array(seg.utf8.prefix(4))
            while b.count < 4 { b.append(UInt8(ascii: "_")) }
            return b
        }
        switch segs.count {
        case 0: out.append(0x00) // NullName
        case 1: out += segs[0]
        case 2: out.append(0x2E); out += segs[0] + segs[1]
        default: out.append(0x2F); out.append(UInt8(segs.count)); out += segs.flatMap { $0 }
        }
        return out
    }

    /// Integer constant: ZeroOp, OneOp, ByteConst, WordConst, DWordConst or QWordConst.
    static func integer(_ v: UInt64) -> [UInt8] {
        switch v {
        case 0: return [0x00]
        case 1: return [0x01]
        case ...0xFF: return [0x0A, UInt8(v)]
        case ...0xFFFF: return [0x0B] + le(v, 2)
        case ...0xFFFF_FFFF: return [0x0C] + le(v, 4)
        default: return [0x0E] + le(v, 8)
        }
    }

    /// String (§20.2.3): StringPrefix, ASCII, NUL.
    static func string(_ s: String) -> [UInt8] { [0x0D] + Array(s.utf8) + [0] }

    /// EISA ID ("PNP0A03") compressed into a DWordConst, as the EISAID() macro does.
    static func eisaID(_ id: String) -> [UInt8] {
        let c = Array(id.utf8)
        precondition(c.count == 7)
        func hexDigit(_ b: UInt8) -> UInt32 { UInt32(b <= 0x39 ? b - 0x30 : (b | 0x20) - 0x61 + 10) }
        let mfg = (UInt32(c[0] - 0x40) << 10) | (UInt32(c[1] - 0x40) << 5) | UInt32(c[2] - 0x40)
        let prod = (hexDigit(c[3]) << 12) | (hexDigit(c[4]) << 8) | (hexDigit(c[5]) << 4) | hexDigit(c[6])
        // Stored big-endian: manufacturer bytes first, then product.
        return [0x0C, UInt8(mfg >> 8), UInt8(mfg & 0xFF), UInt8(prod >> 8), UInt8(prod & 0xFF)]
    }

    /// DefName: Name(name, value).
    static func name(_ n: String, _ value: [UInt8]) -> [UInt8] { [0x08] + nameString(n) + value }

    /// DefPackage with up to 255 elements.
    static func package(_ elements: [[UInt8]]) -> [UInt8] {
        let body = [UInt8(elements.count)] + elements.flatMap { $0 }
        return [0x12] + pkgLength(body.count) + body
    }

    /// DefScope.
    static func scope(_ n: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(n) + terms.flatMap { $0 }
        return [0x10] + pkgLength(body.count) + body
    }

    /// DefDevice.
    static func device(_ n: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(n) + terms.flatMap { $0 }
        return [0x5B, 0x82] + pkgLength(body.count) + body
    }

    /// DefMethod with `args` arguments, not serialized.
    static func method(_ n: String, args: Int = 0, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(n) + [UInt8(args & 7)] + terms.flatMap { $0 }
        return [0x14] + pkgLength(body.count) + body
    }

    /// DefReturn.
    static func `return`(_ value: [UInt8]) -> [UInt8] { [0xA4] + value }

    /// DefBuffer holding `bytes`.
    static func buffer(_ bytes: [UInt8]) -> [UInt8] {
        let body = integer(UInt64(bytes.count)) + bytes
        return [0x11] + pkgLength(body.count) + body
    }

    /// ResourceTemplate: a buffer of resource descriptors closed by an End Tag (checksum 0).
    static func resourceTemplate(_ descriptors: [[UInt8]]) -> [UInt8] {
        buffer(descriptors.flatMap { $0 } + [0x79, 0x00])
    }

    // MARK: Resource descriptors (ACPI 6.x §6.4)

    /// I/O Port Descriptor, 16-bit decode, fixed at `base` (§6.4.2.5).
    static func io(base: UInt16, length: UInt8) -> [UInt8] {
        [0x47, 0x01] + le(UInt64(base), 2) + le(UInt64(base), 2) + [1, length]
    }

    /// IRQ Descriptor without flags (edge, active high) for ISA `irq` (§6.4.2.1).
    static func irq(_ irq: Int) -> [UInt8] { [0x22] + le(UInt64(1) << irq, 2) }

    /// Word Address Space Descriptor, producer, min/max fixed (§6.4.3.5.3).
    /// `resourceType`: 1 I/O (range flags: entire range), 2 bus number.
    static func wordSpace(resourceType: UInt8, min: UInt16, max: UInt16) -> [UInt8] {
        let typeFlags: UInt8 = resourceType == 1 ? 0x03 : 0x00
        let len = UInt64(max) - UInt64(min) + 1
        return [0x88, 0x0D, 0x00, resourceType, 0x0C, typeFlags] + le(0, 2) + le(UInt64(min), 2)
            + le(UInt64(max), 2) + le(0, 2) + le(len, 2)
    }

    /// DWord Address Space Descriptor for memory, producer, min/max fixed, non-cacheable,
    /// read/write (§6.4.3.5.2).
    static func dwordMemory(base: UInt32, size: UInt32) -> [UInt8] {
        [0x87, 0x17, 0x00, 0x00, 0x0C, 0x01] + le(0, 4) + le(UInt64(base), 4)
            + le(UInt64(base) + UInt64(size) - 1, 4) + le(0, 4) + le(UInt64(size), 4)
    }

    static func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
}
