// SXP output: Xen's `sxp.show` (one line) and `PrettyPrint.prettyprint` (80 columns).

enum SXPPrinter {
    /// Whether Xen's `sxp.atomp` would print `s` bare: non-empty, and either all ASCII
    /// letters/digits, or `@`, or only letters, digits and `.-_:/~`.
    static func isBare(_ s: String) -> Bool {
        if s.isEmpty { return false }
        if s == "@" { return true }
        for c in s.utf8 {
            switch c {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: ":"),
                 UInt8(ascii: "/"), UInt8(ascii: "~"):
                continue
            default:
                return false
            }
        }
        return true
    }

    /// Quotes `s` the way Python 2's `repr(str)` does: single quotes unless the text has
    /// a `'` and no `"`; `\\`, the quote, `\t \n \r` escaped; other bytes outside
    /// 0x20...0x7E as `\xhh`. The SXP reader reads every such escape back.
    static func quote(_ s: String) -> String {
        let bytes = Array(s.utf8)
        let useDouble = bytes.contains(UInt8(ascii: "'")) && !bytes.contains(UInt8(ascii: "\""))
        let q: UInt8 = useDouble ? UInt8(ascii: "\"") : UInt8(ascii: "'")
        var out: [UInt8] = [q]
        let hex = Array("0123456789abcdef".utf8)
        for b in bytes {
            switch b {
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), b]
            case q: out += [UInt8(ascii: "\\"), b]
            case 0x09: out += Array("\\t".utf8)
            case 0x0A: out += Array("\\n".utf8)
            case 0x0D: out += Array("\\r".utf8)
            case 0x20...0x7E: out.append(b)
            default: out += [UInt8(ascii: "\\"), UInt8(ascii: "x"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            }
        }
        out.append(q)
        return String(decoding: out, as: UTF8.self)
    }

    static func show(_ v: SXP, into out: inout String) {
        switch v {
        case .atom(let s), .string(let s):
            out += isBare(s) ? s : quote(s)
        case .list(let items):
            out += "("
            for (i, x) in items.enumerated() {
                if i > 0 { out += " " }
                show(x, into: &out)
            }
            out += ")"
        }
    }

    /// Oppen-style layout as Xen's SXPPrettyPrinter does it: a list block that fits in
    /// the rest of the line is printed flat; a block that does not fit breaks at every
    /// item boundary (indent +4 from its `(`) and before its `)` (indent +0).
    static func pretty(_ v: SXP, column: Int, width: Int, into out: inout String) {
        var flat = ""
        show(v, into: &flat)
        guard case .list(let items) = v, column + flat.utf8.count > width else {
            out += flat
            return
        }
        out += "("
        for (i, x) in items.enumerated() {
            if i == 0 {
                pretty(x, column: column + 1, width: width, into: &out)
            } else {
                out += "\n" + String(repeating: " ", count: column + 4)
                pretty(x, column: column + 4, width: width, into: &out)
            }
        }
        out += "\n" + String(repeating: " ", count: column) + ")"
    }
}
