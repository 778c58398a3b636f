// Byte-level reader for SXP text (see `SXP.parseForms`).

struct SXPParser {
    /// Deepest list nesting accepted. Parsing is iterative, but an `SXP` value is a tree
    /// that is compared, printed, converted and freed recursively, so a deeper one could
    /// exhaust the stack. Real xend SXP nests under ten levels.
    static let maxDepth = 100

    let bytes: [UInt8]
    let file: String
    var pos = 0
    var line = 1

    init(bytes: [UInt8], file: String) {
        self.bytes = bytes
        self.file = file
        // A UTF-8 byte order mark at the very start is an encoding mark, not text.
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { pos = 3 }
    }

    func error(_ message: String, line: Int? = nil) -> ConfigError {
        ConfigError(file: file, line: line ?? self.line, message: message)
    }

    static func isSpace(_ c: UInt8) -> Bool {
        c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0B || c == 0x0C || c == 0x0D
    }

    /// Skips blank space and comments.
    mutating func skipBlank() {
        while pos < bytes.count {
            let c = bytes[pos]
            if c == UInt8(ascii: "\n") {
                line += 1
                pos += 1
            } else if SXPParser.isSpace(c) {
                pos += 1
            } else if c == UInt8(ascii: "#") {
                while pos < bytes.count && bytes[pos] != UInt8(ascii: "\n") { pos += 1 }
            } else if c == 4 {
                // Ctrl-D (EOT) ends the input, as in Xen's parser.
                pos = bytes.count
            } else {
                return
            }
        }
    }

    mutating func parseAll() throws(ConfigError) -> [SXPForm] {
        var forms: [SXPForm] = []
        while true {
            skipBlank()
            if pos >= bytes.count { return forms }
            let startLine = line
            let value = try parseValue()
            forms.append(SXPForm(value: value, line: startLine))
        }
    }

    /// Parses one value starting at a non-blank byte.
    mutating func parseValue() throws(ConfigError) -> SXP {
        // Explicit stack instead of recursion: deep nesting cannot overflow the stack.
        var stack: [(items: [SXP], line: Int)] = []
        while true {
            skipBlank()
            guard pos < bytes.count else {
                let open = stack.last?.line ?? line
                throw error("unterminated list: '(' opened at line \(open) is never closed", line: open)
            }
            let c = bytes[pos]
            var value: SXP
            if c == UInt8(ascii: "(") {
                guard stack.count < SXPParser.maxDepth else {
                    // The key is the outermost list's name, as in `(xend-port ...)`.
                    var key: String?
                    if case .atom(let name)? = stack.first?.items.first { key = name }
                    throw ConfigError(file: file, line: line, key: key,
                                      message: "nesting too deep (more than \(SXPParser.maxDepth) levels of lists)")
                }
                stack.append(([], line))
                pos += 1
                continue
            } else if c == UInt8(ascii: ")") {
                guard let top = stack.popLast() else { throw error("unexpected ')'") }
                pos += 1
                value = .list(top.items)
            } else if c == UInt8(ascii: "'") || c == UInt8(ascii: "\"") {
                value = .string(try parseString())
            } else if c < 0x20 || c == 0x7F {
                throw error("invalid character: code \(c)")
            } else {
                value = .atom(parseAtom())
            }
            if stack.isEmpty { return value }
            stack[stack.count - 1].items.append(value)
        }
    }

    mutating func parseAtom() -> String {
        let start = pos
        while pos < bytes.count {
            let c = bytes[pos]
            if SXPParser.isSpace(c) || c == UInt8(ascii: "(") || c == UInt8(ascii: ")")
                || c == UInt8(ascii: "#") || c < 0x20 || c == 0x7F {
                break
            }
            pos += 1
        }
        return String(decoding: bytes[start..<pos], as: UTF8.self)
    }

    static func hexValue(_ c: UInt8) -> Int? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return Int(c - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return Int(c - UInt8(ascii: "a")) + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return Int(c - UInt8(ascii: "A")) + 10
        default: return nil
        }
    }

    mutating func parseString() throws(ConfigError) -> String {
        let quote = bytes[pos]
        let startLine = line
        pos += 1
        var out: [UInt8] = []
        while true {
            guard pos < bytes.count else {
                throw error("unterminated string: quote opened at line \(startLine) is never closed",
                            line: startLine)
            }
            let c = bytes[pos]
            pos += 1
            if c == quote { break }
            if c == UInt8(ascii: "\n") { line += 1 }
            if c != UInt8(ascii: "\\") {
                out.append(c)
                continue
            }
            guard pos < bytes.count else { continue }
            let e = bytes[pos]
            pos += 1
            switch e {
            case UInt8(ascii: "a"): out.append(0x07)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "v"): out.append(0x0B)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "\\"), UInt8(ascii: "'"), UInt8(ascii: "\""): out.append(e)
            case UInt8(ascii: "x"):
                var v = 0, n = 0
                while n < 2, pos < bytes.count, let d = SXPParser.hexValue(bytes[pos]) {
                    v = v * 16 + d; n += 1; pos += 1
                }
                if n == 0 { out.append(contentsOf: [UInt8(ascii: "\\"), e]) } else { out.append(UInt8(v)) }
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                var v = Int(e - UInt8(ascii: "0")), n = 1
                while n < 3, pos < bytes.count, bytes[pos] >= UInt8(ascii: "0"), bytes[pos] <= UInt8(ascii: "7") {
                    v = v * 8 + Int(bytes[pos] - UInt8(ascii: "0")); n += 1; pos += 1
                }
                guard v <= 0xFF else { throw error("invalid octal escape: out of range") }
                out.append(UInt8(v))
            default:
                if e == UInt8(ascii: "\n") { line += 1 }
                out.append(contentsOf: [UInt8(ascii: "\\"), e])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
