// The Python subset of xm/xl domain configuration files: values and the lexer.
//
// Xen 3.0's `xm create` ran a config file as Python (tools/examples/xmexample2 uses `def`,
// `if`, `raise` and `xm_vars`). Xenith reads the part of Python 2 such files use, with its
// own bounded evaluator (ConfigScriptInterpreter.swift); nothing is imported, nothing is
// read or written, and every loop, call and value is bounded.
//
// Statements: `NAME = EXPR` and `A, B = EXPR`, calls standing alone (`xm_vars.check()`,
// `disk.append(...)`) and strings standing alone (docstrings), `def` with
// positional parameters, defaults and `return`, `if`/`elif`/`else`, `for NAME in EXPR`,
// `while`, `break`, `continue`, `pass`, `global`, `raise E`, `raise E(msg)`, `raise E, msg`;
// one per logical line or `;`-separated, blocks by indentation (tabs to multiples of 8,
// as Python 2). Expressions: integers (decimal, 0x, 0o, Python 2 leading-0 octal), floats,
// strings ('...', "...", triple-quoted, r/u prefixes, adjacent literals concatenated),
// True/False/None, names, lists `[...]`, tuples, unary `-`/`+`, binary `+ - * / // %`
// (`str % args` is printf-style formatting), comparisons `== != < <= > >= in not in is
// is not` (chained), `and`/`or`/`not`, calls with keyword arguments, subscripts and
// slices, and the methods and built-in functions of ConfigScriptBuiltins.swift.
// Where this differs from Python 2 on purpose: lists are values (`b = a; b.append(x)`
// leaves `a` as it was), and ordering unlike types (`'3' < 0`, which Python 2 answered
// silently) is an error.
// A UTF-8 byte order mark at the start is skipped. Anything else (`import`, `class`,
// `lambda`, dictionaries, `try`, conditional expressions, augmented assignment) is refused
// as "unsupported Python: ...".

/// A value computed by a configuration script.
enum PyValue: Equatable, Sendable {
    case int(Int)
    case float(Double)
    case string(String)
    case bool(Bool)
    case none
    case list([PyValue])
    case tuple([PyValue])
    /// A function the file defined with `def`.
    case function(PyFunction)
    /// A built-in function or object (`int`, `range`, `ValueError`, `xm_vars`), by name.
    case builtin(String)
    /// An exception instance: `ValueError("bad vmid")`, ready for `raise`.
    case exception(String, String)

    var typeName: String {
        switch self {
        case .int: return "int"
        case .float: return "float"
        case .string: return "str"
        case .bool: return "bool"
        case .none: return "NoneType"
        case .list: return "list"
        case .tuple: return "tuple"
        case .function: return "function"
        case .builtin(let n): return n == "xm_vars" ? "Vars" : "builtin_function_or_method"
        case .exception(let k, _): return k
        }
    }

    /// Whether this is data a domain configuration key can hold (not a function or exception).
    var isData: Bool {
        switch self {
        case .function, .builtin, .exception: return false
        default: return true
        }
    }

    /// Python's `str()`, or nil when it would be longer than `limit` bytes.
    func str(limit: Int) -> String? {
        let s: String
        switch self {
        case .int(let i): s = String(i)
        case .float(let d): s = String(d)
        case .string(let t): s = t
        case .bool(let b): s = b ? "True" : "False"
        case .none: s = "None"
        case .list, .tuple: return repr(limit: limit)
        case .function(let f): s = "<function \(f.name)>"
        case .builtin(let n): s = "<built-in \(n)>"
        case .exception(_, let m): s = m
        }
        return s.utf8.count <= limit ? s : nil
    }

    /// Python's `repr()`, or nil when it would be longer than `limit` bytes: a list of
    /// 65536 copies of one 16 MiB string is small to hold but a terabyte to print.
    func repr(limit: Int) -> String? {
        var out = ""
        return write(repr: &out, limit: limit) ? out : nil
    }

    /// `repr()` for messages: at most about 200 bytes, `...` where cut.
    var shortRepr: String {
        var out = ""
        if write(repr: &out, limit: 200) { return out }
        return String(decoding: out.utf8.prefix(200), as: UTF8.self) + "..."
    }

    /// `str()` for messages (`raise ValueError("...")`): up to 4096 bytes, else `shortRepr`.
    var messageText: String { str(limit: 4096) ?? shortRepr }

    /// Appends `repr()` to `out`; false, with `out` holding at least a prefix, once `out`
    /// passes `limit` bytes. The work done is about `limit`, whatever the value's size.
    func write(repr out: inout String, limit: Int) -> Bool {
        switch self {
        case .string(let s):
            let q: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
            let fits = out.utf8.count + s.utf8.count + 2 <= limit
            out.append(q)
            for ch in fits ? s.unicodeScalars[...] : s.unicodeScalars.prefix(max(0, limit - out.utf8.count)) {
                switch ch {
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\t": out += "\\t"
                case "\r": out += "\\r"
                default:
                    if Character(ch) == q { out += "\\" + String(q) } else { out.unicodeScalars.append(ch) }
                }
            }
            guard fits else { return false }
            out.append(q)
        case .exception(let k, let m):
            out += k + "("
            guard PyValue.string(m).write(repr: &out, limit: limit) else { return false }
            out += ")"
        case .list(let items), .tuple(let items):
            let isList = if case .list = self { true } else { false }
            out += isList ? "[" : "("
            for (i, x) in items.enumerated() {
                if i > 0 { out += ", " }
                guard x.write(repr: &out, limit: limit) else { return false }
            }
            out += isList ? "]" : items.count == 1 ? ",)" : ")"
        default:
            out += str(limit: limit) ?? ""
        }
        return out.utf8.count <= limit
    }
}

// MARK: Tokens

struct PyToken: Equatable {
    enum Kind: Equatable {
        case name(String)
        case int(Int)
        case float(Double)
        case string(String)
        case op(String)
        /// A line indented deeper than the one before: a block starts.
        case indent
        /// A line indented less: a block ends (one per block).
        case dedent
        case newline
        case eof
    }
    var kind: Kind
    var line: Int
}

struct PyLexer {
    let s: [UInt8]
    let file: String
    var pos = 0
    var line = 1
    var depth = 0
    var openLines: [Int] = []
    var openChars: [Character] = []
    var tokens: [PyToken] = []

    /// True at the start of a logical line, where Python allows no indentation.
    var atLineStart = true

    init(_ text: String, file: String) {
        var bytes = Array(text.utf8)
        // A UTF-8 byte order mark at the very start is an encoding mark, not text.
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
        s = bytes
        self.file = file
    }

    /// Indentation columns of the open blocks; the module level is 0.
    var indents: [Int] = [0]

    /// At the start of a logical line: emits `.indent` when the statement is indented
    /// deeper than the enclosing block and one `.dedent` per block it leaves (blank and
    /// comment-only lines do not count). Tabs advance to the next multiple of 8 (Python 2).
    ///
    /// - Throws: "unindent does not match any outer indentation level".
    mutating func checkIndentation() throws(ConfigError) {
        atLineStart = false
        var p = pos
        var column = 0
        while p < s.count {
            switch s[p] {
            case UInt8(ascii: " "): column += 1
            case UInt8(ascii: "\t"): column = (column / 8 + 1) * 8
            case 0x0C: column = 0
            default: break
            }
            guard s[p] == UInt8(ascii: " ") || s[p] == UInt8(ascii: "\t") || s[p] == 0x0C else { break }
            p += 1
        }
        guard p < s.count else { return }
        let c = s[p]
        if c == UInt8(ascii: "\n") || c == UInt8(ascii: "\r") || c == UInt8(ascii: "#") { return }
        if column > indents[indents.count - 1] {
            indents.append(column)
            emit(.indent)
            return
        }
        while column < indents[indents.count - 1] {
            indents.removeLast()
            emit(.dedent)
        }
        if column != indents[indents.count - 1] {
            throw fail("syntax error: unindent does not match any outer indentation level")
        }
    }

    /// The key of the statement being read: `NAME` when the tokens since the last
    /// newline start with `NAME =`.
    var currentKey: String? {
        var start = tokens.count
        while start > 0 && tokens[start - 1].kind != .newline { start -= 1 }
        while start < tokens.count, tokens[start].kind == .indent || tokens[start].kind == .dedent { start += 1 }
        guard start + 1 < tokens.count, case .name(let n) = tokens[start].kind,
              tokens[start + 1].kind == .op("=") else { return nil }
        return n
    }

    func fail(_ message: String, line: Int? = nil) -> ConfigError {
        ConfigError(file: file, line: line ?? self.line, key: currentKey, message: message)
    }

    static func isNameStart(_ c: UInt8) -> Bool {
        (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || c == 0x5F || c >= 0x80
    }
    static func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

    mutating func emit(_ k: PyToken.Kind, line: Int? = nil) {
        tokens.append(PyToken(kind: k, line: line ?? self.line))
        lastTokenWasString = false
    }

    mutating func run() throws(ConfigError) -> [PyToken] {
        while pos < s.count {
            if atLineStart { try checkIndentation() }
            let c = s[pos]
            switch c {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), 0x0C, UInt8(ascii: "\r"):
                pos += 1
            case UInt8(ascii: "#"):
                while pos < s.count && s[pos] != UInt8(ascii: "\n") { pos += 1 }
            case UInt8(ascii: "\n"):
                if depth == 0 { emit(.newline); atLineStart = true }
                line += 1
                pos += 1
            case UInt8(ascii: "\\"):
                // Explicit line joining.
                if pos + 1 < s.count && s[pos + 1] == UInt8(ascii: "\n") {
                    pos += 2
                    line += 1
                } else if pos + 2 < s.count && s[pos + 1] == UInt8(ascii: "\r") && s[pos + 2] == UInt8(ascii: "\n") {
                    pos += 3
                    line += 1
                } else {
                    throw fail("unsupported Python: stray '\\'")
                }
            case UInt8(ascii: "'"), UInt8(ascii: "\""):
                try lexString(raw: false)
            default:
                if PyLexer.isDigit(c) || (c == UInt8(ascii: ".") && pos + 1 < s.count && PyLexer.isDigit(s[pos + 1])) {
                    try lexNumber()
                } else if PyLexer.isNameStart(c) {
                    let start = pos
                    while pos < s.count && (PyLexer.isNameStart(s[pos]) || PyLexer.isDigit(s[pos])) { pos += 1 }
                    let word = String(decoding: s[start..<pos], as: UTF8.self)
                    let lower = word.lowercased()
                    if pos < s.count, s[pos] == UInt8(ascii: "'") || s[pos] == UInt8(ascii: "\""),
                       ["r", "u", "b", "ur", "br", "rb"].contains(lower) {
                        try lexString(raw: lower.contains("r"))
                    } else {
                        emit(.name(word))
                    }
                } else {
                    try lexOperator()
                }
            }
        }
        if let open = openLines.last {
            throw fail("'\(openChars.last!)' opened at line \(open) is never closed", line: open)
        }
        emit(.newline)
        while indents.count > 1 { indents.removeLast(); emit(.dedent) }
        emit(.eof)
        return tokens
    }

    mutating func lexOperator() throws(ConfigError) {
        let three = ["**=", "//=", ">>=", "<<="]
        let two = ["==", "!=", "<=", ">=", "+=", "-=", "*=", "/=", "%=", "**", "//", "<<", ">>", "&=", "|=", "^=", "->"]
        func peek(_ n: Int) -> String? {
            guard pos + n <= s.count else { return nil }
            return String(decoding: s[pos..<(pos + n)], as: UTF8.self)
        }
        for (n, set) in [(3, three), (2, two)] {
            if let p = peek(n), set.contains(p) {
                emit(.op(p))
                pos += n
                return
            }
        }
        let c = s[pos]
        let single = "()[]{},:.;@=+-*/%<>&|^~`!"
        guard c < 0x80, single.utf8.contains(c) else {
            throw fail("unsupported Python: unexpected character '\(String(decoding: [c], as: UTF8.self))'")
        }
        if c == UInt8(ascii: "(") || c == UInt8(ascii: "[") || c == UInt8(ascii: "{") {
            depth += 1
            openLines.append(line)
            openChars.append(Character(Unicode.Scalar(c)))
        }
        if c == UInt8(ascii: ")") || c == UInt8(ascii: "]") || c == UInt8(ascii: "}") {
            depth -= 1
            if depth < 0 { throw fail("unbalanced '\(String(decoding: [c], as: UTF8.self))'") }
            openLines.removeLast()
            openChars.removeLast()
        }
        emit(.op(String(decoding: [c], as: UTF8.self)))
        pos += 1
    }

    mutating func lexNumber() throws(ConfigError) {
        let start = pos
        let startLine = line
        while pos < s.count && (PyLexer.isNameStart(s[pos]) || PyLexer.isDigit(s[pos]) || s[pos] == UInt8(ascii: ".")) {
            // exponent sign
            pos += 1
            if pos < s.count && (s[pos] == UInt8(ascii: "+") || s[pos] == UInt8(ascii: "-")),
               s[pos - 1] == UInt8(ascii: "e") || s[pos - 1] == UInt8(ascii: "E"),
               !String(decoding: s[start..<pos], as: UTF8.self).lowercased().hasPrefix("0x") {
                pos += 1
            }
        }
        var text = String(decoding: s[start..<pos], as: UTF8.self).replacingUnderscores()
        if text.hasSuffix("L") || text.hasSuffix("l") { text.removeLast() }
        let lower = text.lowercased()
        var value: Int?
        if lower.hasPrefix("0x") { value = Int(lower.dropFirst(2), radix: 16) }
        else if lower.hasPrefix("0o") { value = Int(lower.dropFirst(2), radix: 8) }
        else if lower.hasPrefix("0b") { value = Int(lower.dropFirst(2), radix: 2) }
        else if lower.contains(".") || lower.contains("e") {
            if let d = Double(lower) { emit(.float(d), line: startLine); return }
        } else if lower.count > 1 && lower.hasPrefix("0") { value = Int(lower.dropFirst(), radix: 8) }
        else { value = Int(lower) }
        guard let v = value else { throw fail("invalid number '\(text)'") }
        emit(.int(v), line: startLine)
    }

    mutating func lexString(raw: Bool) throws(ConfigError) {
        let q = s[pos]
        let startLine = line
        let triple = pos + 2 < s.count && s[pos + 1] == q && s[pos + 2] == q
        pos += triple ? 3 : 1
        var out: [UInt8] = []
        while true {
            guard pos < s.count else {
                throw fail("unterminated string: quote opened at line \(startLine) is never closed", line: startLine)
            }
            let c = s[pos]
            if c == q {
                if !triple { pos += 1; break }
                if pos + 2 < s.count && s[pos + 1] == q && s[pos + 2] == q { pos += 3; break }
                out.append(c); pos += 1; continue
            }
            if c == UInt8(ascii: "\n") {
                if !triple {
                    throw fail("unterminated string: quote opened at line \(startLine) is never closed", line: startLine)
                }
                line += 1
                out.append(c); pos += 1; continue
            }
            if c != UInt8(ascii: "\\") { out.append(c); pos += 1; continue }
            // Escape.
            guard pos + 1 < s.count else { pos += 1; continue }
            let e = s[pos + 1]
            if raw {
                out.append(c); out.append(e)
                if e == UInt8(ascii: "\n") { line += 1 }
                pos += 2; continue
            }
            pos += 2
            switch e {
            case UInt8(ascii: "\n"): line += 1
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "a"): out.append(0x07)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "v"): out.append(0x0B)
            case UInt8(ascii: "\\"), UInt8(ascii: "'"), UInt8(ascii: "\""): out.append(e)
            case UInt8(ascii: "x"):
                var v = 0, n = 0
                while n < 2, pos < s.count, let d = SXPParser.hexValue(s[pos]) { v = v * 16 + d; n += 1; pos += 1 }
                guard n == 2 else { throw fail("invalid \\x escape in string") }
                out.append(UInt8(v))
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                var v = Int(e - 0x30), n = 1
                while n < 3, pos < s.count, s[pos] >= 0x30, s[pos] <= 0x37 { v = v * 8 + Int(s[pos] - 0x30); n += 1; pos += 1 }
                out.append(UInt8(v & 0xFF))
            default:
                out.append(c); out.append(e)
            }
        }
        let text = String(decoding: out, as: UTF8.self)
        // Adjacent literals concatenate: 'a' 'b' == 'ab'.
        if lastTokenWasString, case .string(let prev)? = tokens.last?.kind {
            tokens[tokens.count - 1].kind = .string(prev + text)
        } else {
            emit(.string(text), line: startLine)
        }
        lastTokenWasString = true
        return
    }

    var lastTokenWasString = false
}

extension String {
    func replacingUnderscores() -> String { String(self.filter { $0 != "_" }) }
}
