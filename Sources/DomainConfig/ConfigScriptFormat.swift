// Python's `str % args` (printf-style formatting) for configuration scripts.

struct FormatError: Error { var message: String }


/// Python's `fmt % args` for the conversions `d i u s r x X o c %`, with flags `-+ 0#`,
/// a width (digits, or `*` taking an int argument; negative means left-justified) and a
/// precision, each at most `pyFormatFieldMax`.
func pyFormat(_ fmt: String, _ args: [PyValue]) throws(FormatError) -> String {
    var out = ""
    var argIndex = 0
    let chars = Array(fmt)
    var k = 0
    func nextArg() throws(FormatError) -> PyValue {
        guard argIndex < args.count else { throw FormatError(message: "not enough arguments for format string") }
        defer { argIndex += 1 }
        return args[argIndex]
    }
    while k < chars.count {
        let c = chars[k]
        k += 1
        if c != "%" { out.append(c); continue }
        var flags = Set<Character>()
        while k < chars.count, "-+ 0#".contains(chars[k]) { flags.insert(chars[k]); k += 1 }
        let tooWide = FormatError(message: "format width or precision larger than \(pyFormatFieldMax)")
        var width = 0
        if k < chars.count, chars[k] == "*" {
            guard case .int(let w) = try nextArg() else { throw FormatError(message: "* wants int") }
            guard w.magnitude <= UInt(pyFormatFieldMax) else { throw tooWide }
            if w < 0 { flags.insert("-") }
            width = abs(w); k += 1
        }
        // Each step checks the bound first, so `width * 10 + d` stays far from overflow.
        while k < chars.count, let d = chars[k].wholeNumberValue, chars[k].isASCII {
            width = width * 10 + d; k += 1
            guard width <= pyFormatFieldMax else { throw tooWide }
        }
        var precision: Int?
        if k < chars.count, chars[k] == "." {
            k += 1
            var p = 0
            while k < chars.count, let d = chars[k].wholeNumberValue, chars[k].isASCII {
                p = p * 10 + d; k += 1
                guard p <= pyFormatFieldMax else { throw tooWide }
            }
            precision = p
        }
        while k < chars.count, "hlL".contains(chars[k]) { k += 1 }
        guard k < chars.count else { throw FormatError(message: "incomplete format") }
        let conv = chars[k]
        k += 1
        var body: String
        var numeric = false
        switch conv {
        case "%": out.append("%"); continue
        case "s", "r":
            let v = try nextArg()
            guard let t = conv == "s" ? v.str(limit: pyMaxStringBytes) : v.repr(limit: pyMaxStringBytes) else {
                throw FormatError(message: "%\(conv) of this \(v.typeName) would be more than \(pyMaxStringBytes) bytes")
            }
            body = t
            if let p = precision { body = String(body.prefix(p)) }
        case "c":
            let v = try nextArg()
            switch v {
            case .string(let s) where s.count == 1: body = s
            case .int(let i): guard let u = Unicode.Scalar(UInt32(truncatingIfNeeded: i)), i >= 0 else {
                throw FormatError(message: "%c arg not in range") }
                body = String(Character(u))
            default: throw FormatError(message: "%c requires int or char")
            }
        case "d", "i", "u", "x", "X", "o":
            let v = try nextArg()
            let n: Int
            switch v {
            case .int(let i): n = i
            case .bool(let b): n = b ? 1 : 0
            case .float(let f) where conv == "d" || conv == "i" || conv == "u":
                guard f.isFinite, abs(f) < 9e18 else { throw FormatError(message: "float out of range") }
                n = Int(f)
            default: throw FormatError(message: "%\(conv) format: a number is required, not \(v.typeName)")
            }
            numeric = true
            let radix = conv == "x" || conv == "X" ? 16 : conv == "o" ? 8 : 10
            var digits = String(n.magnitude, radix: radix, uppercase: conv == "X")
            if let p = precision, digits.count < p { digits = String(repeating: "0", count: p - digits.count) + digits }
            if flags.contains("#") && radix != 10 { digits = (radix == 16 ? (conv == "X" ? "0X" : "0x") : "0o") + digits }
            let sign = n < 0 ? "-" : flags.contains("+") ? "+" : flags.contains(" ") ? " " : ""
            if flags.contains("0") && !flags.contains("-") && sign.count + digits.count < width {
                digits = String(repeating: "0", count: width - sign.count - digits.count) + digits
            }
            body = sign + digits
        default:
            throw FormatError(message: "unsupported format character '\(conv)'")
        }
        _ = numeric
        if body.count < width {
            let pad = String(repeating: " ", count: width - body.count)
            body = flags.contains("-") ? body + pad : pad + body
        }
        out += body
    }
    if argIndex < args.count { throw FormatError(message: "not all arguments converted during string formatting") }
    return out
}
