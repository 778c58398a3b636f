// Parser and evaluator for the configuration-script subset (see ConfigScript.swift).

struct PyExpr {
    indirect enum Kind {
        case literal(PyValue)
        case name(String)
        case list([PyExpr])
        case tuple([PyExpr])
        case unary(String, PyExpr)
        /// A left-associative chain of one precedence level, `first op1 x1 op2 x2 …`, kept
        /// flat so a long `1+1+…+1` neither builds nor walks a tree as deep as it is long.
        case chain(PyExpr, [PyOperation])
    }
    var kind: Kind
    var line: Int
}

/// One `op operand` step of a `PyExpr.Kind.chain`; `line` is the operator's line.
struct PyOperation {
    var op: String
    var operand: PyExpr
    var line: Int
}

/// `NAME = EXPR` at `line`.
struct PyAssignment {
    var name: String
    var value: PyExpr
    var line: Int
}

let pythonKeywords: Set<String> = [
    "and", "as", "assert", "break", "class", "continue", "def", "del", "elif", "else", "except",
    "exec", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
    "not", "or", "pass", "print", "raise", "return", "try", "while", "with", "yield", "async", "await",
]

/// Deepest nesting of brackets, parentheses and unary operators one expression may have.
/// The parser recurses once per level, so the limit keeps hostile input from exhausting
/// the stack (Python 2's own parser gives up at about the same depth).
let pyMaxNestingDepth = 100

struct PyParser {
    var tokens: [PyToken]
    let file: String
    var i = 0
    var currentKey: String?
    /// Current nesting level of `(`, `[` and unary operators.
    var depth = 0

    init(tokens: [PyToken], file: String) {
        self.tokens = tokens
        self.file = file
    }

    var tok: PyToken { tokens[i] }

    func fail(_ message: String, line: Int? = nil) -> ConfigError {
        ConfigError(file: file, line: line ?? tok.line, key: currentKey, message: message)
    }
    func unsupported(_ what: String, line: Int? = nil) -> ConfigError {
        fail("unsupported Python: \(what) (only KEY = VALUE assignments are allowed)", line: line)
    }

    func isOp(_ o: String) -> Bool { tok.kind == .op(o) }

    mutating func program() throws(ConfigError) -> [PyAssignment] {
        var out: [PyAssignment] = []
        while tok.kind != .eof {
            if tok.kind == .newline { i += 1; continue }
            if tok.kind == .indent { throw fail("syntax error: unexpected indent (a statement must start in column 1)") }
            // As Python: `;` ends a statement; it never stands alone (`;;`, a leading `;`).
            if isOp(";") { throw fail("syntax error: ';' with no statement before it") }
            out.append(try statement())
            currentKey = nil
            if isOp(";") { i += 1 }
        }
        return out
    }

    mutating func statement() throws(ConfigError) -> PyAssignment {
        let line = tok.line
        guard case .name(let name) = tok.kind else {
            if isOp("@") { throw unsupported("decorator") }
            throw unsupported("expression statement")
        }
        if pythonKeywords.contains(name) {
            throw unsupported("'\(name)' statement")
        }
        i += 1
        if !isOp("=") {
            switch tok.kind {
            case .op("("): throw unsupported("function call \(name)(...)")
            case .op("."): throw unsupported("attribute access \(name).…")
            case .op("["): throw unsupported("subscript assignment")
            case .op(","): throw unsupported("tuple assignment")
            case .op(let o) where o.count >= 2 && o.hasSuffix("="): throw unsupported("augmented assignment '\(o)'")
            case .newline: throw unsupported("bare expression '\(name)'")
            default: throw unsupported("expected '=' after '\(name)'")
            }
        }
        i += 1
        currentKey = name
        let value = try expression()
        if isOp("=") { throw unsupported("chained assignment") }
        guard tok.kind == .newline || isOp(";") else {
            throw trailingError()
        }
        return PyAssignment(name: name, value: value, line: line)
    }

    func trailingError() -> ConfigError {
        switch tok.kind {
        case .name(let n) where pythonKeywords.contains(n): return unsupported("'\(n)' in an expression")
        case .name, .int, .float, .string: return fail("syntax error: missing operator or comma")
        case .op(let o): return unsupported("operator '\(o)'")
        default: return fail("syntax error")
        }
    }

    /// Enters one more level of nesting; throws "nesting too deep" past `pyMaxNestingDepth`.
    /// Every `enter()` is paired with a `depth -= 1` when the level is left.
    mutating func enter() throws(ConfigError) {
        depth += 1
        if depth > pyMaxNestingDepth {
            throw fail("nesting too deep (more than \(pyMaxNestingDepth) levels of brackets or unary operators)")
        }
    }

    mutating func expression() throws(ConfigError) -> PyExpr {
        let first = try term()
        var rest: [PyOperation] = []
        while case .op(let o) = tok.kind, o == "+" || o == "-" {
            let line = tok.line
            i += 1
            rest.append(PyOperation(op: o, operand: try term(), line: line))
        }
        return rest.isEmpty ? first : PyExpr(kind: .chain(first, rest), line: first.line)
    }

    mutating func term() throws(ConfigError) -> PyExpr {
        let first = try unary()
        var rest: [PyOperation] = []
        while case .op(let o) = tok.kind, ["*", "/", "//", "%"].contains(o) {
            let line = tok.line
            i += 1
            rest.append(PyOperation(op: o, operand: try unary(), line: line))
        }
        return rest.isEmpty ? first : PyExpr(kind: .chain(first, rest), line: first.line)
    }

    mutating func unary() throws(ConfigError) -> PyExpr {
        if case .op(let o) = tok.kind, o == "-" || o == "+" {
            let line = tok.line
            i += 1
            try enter()
            defer { depth -= 1 }
            return PyExpr(kind: .unary(o, try unary()), line: line)
        }
        if case .op("~") = tok.kind { throw unsupported("operator '~'") }
        let e = try primary()
        switch tok.kind {
        case .op("("): throw unsupported("function call")
        case .op("."): throw unsupported("attribute access")
        case .op("["): throw unsupported("subscript")
        case .op("**"): throw unsupported("operator '**'")
        default: return e
        }
    }

    mutating func primary() throws(ConfigError) -> PyExpr {
        let t = tok
        switch t.kind {
        case .int(let v): i += 1; return PyExpr(kind: .literal(.int(v)), line: t.line)
        case .float(let v): i += 1; return PyExpr(kind: .literal(.float(v)), line: t.line)
        case .string(let v): i += 1; return PyExpr(kind: .literal(.string(v)), line: t.line)
        case .name(let n):
            switch n {
            case "True": i += 1; return PyExpr(kind: .literal(.bool(true)), line: t.line)
            case "False": i += 1; return PyExpr(kind: .literal(.bool(false)), line: t.line)
            case "None": i += 1; return PyExpr(kind: .literal(.none), line: t.line)
            default:
                if pythonKeywords.contains(n) { throw unsupported("'\(n)' in an expression") }
                i += 1
                return PyExpr(kind: .name(n), line: t.line)
            }
        case .op("["):
            try enter()
            defer { depth -= 1 }
            i += 1
            var items: [PyExpr] = []
            while !isOp("]") {
                items.append(try expression())
                if isOp(",") { i += 1; continue }
                if isOp("]") { break }
                if case .name("for") = tok.kind { throw unsupported("list comprehension") }
                throw fail("syntax error in list: expected ',' or ']'")
            }
            i += 1
            return PyExpr(kind: .list(items), line: t.line)
        case .op("("):
            try enter()
            defer { depth -= 1 }
            i += 1
            var items: [PyExpr] = []
            var sawComma = false
            while !isOp(")") {
                items.append(try expression())
                if isOp(",") { i += 1; sawComma = true; continue }
                if isOp(")") { break }
                if case .name("for") = tok.kind { throw unsupported("generator expression") }
                throw trailingError()
            }
            i += 1
            if items.count == 1 && !sawComma { return items[0] }
            return PyExpr(kind: .tuple(items), line: t.line)
        case .op("{"): throw unsupported("dictionary or set")
        case .op("`"): throw unsupported("backquote")
        case .newline, .eof, .indent: throw fail("syntax error: missing value")
        case .op(let o): throw unsupported("operator '\(o)'")
        }
    }
}

/// Evaluates expressions against the variables bound so far.
struct PyEvaluator {
    let file: String
    var env: [String: PyValue] = [:]
    /// Names read by some expression (so they are variables, not unknown keys).
    var referenced: Set<String> = []
    /// Upper bound of the list/tuple nesting of each bound name's value.
    var nesting: [String: Int] = [:]

    init(file: String) { self.file = file }

    func fail(_ message: String, _ line: Int, _ key: String?) -> ConfigError {
        ConfigError(file: file, line: line, key: key, message: message)
    }

    /// An upper bound of how deeply the value of `e` nests lists and tuples, given the
    /// bounds in `nesting`. `a = [a]` repeated would otherwise build a value deeper than the
    /// parser's limit, one statement at a time.
    func nestingBound(_ e: PyExpr) -> Int {
        switch e.kind {
        case .literal, .unary: return 0
        case .name(let n): return nesting[n] ?? 0
        case .list(let items), .tuple(let items): return 1 + (items.map(nestingBound).max() ?? 0)
        case .chain(let first, let rest): return rest.map { nestingBound($0.operand) }.reduce(nestingBound(first), max)
        }
    }

    /// Evaluates the statement `a` and binds its name.
    ///
    /// - Throws: `ConfigError` as `eval`, or "nesting too deep" when the value could nest
    ///   lists/tuples more than `pyMaxNestingDepth` levels.
    mutating func assign(_ a: PyAssignment) throws(ConfigError) -> PyValue {
        let depth = nestingBound(a.value)
        guard depth <= pyMaxNestingDepth else {
            throw fail("nesting too deep (more than \(pyMaxNestingDepth) levels of lists or tuples)", a.line, a.name)
        }
        let v = try eval(a.value, key: a.name)
        env[a.name] = v
        nesting[a.name] = depth
        return v
    }

    mutating func eval(_ e: PyExpr, key: String?) throws(ConfigError) -> PyValue {
        switch e.kind {
        case .literal(let v): return v
        case .name(let n):
            referenced.insert(n)
            guard let v = env[n] else {
                throw fail("name '\(n)' is not defined (set it earlier in the file or as \(n)=VALUE on the command line)", e.line, key)
            }
            return v
        case .list(let items):
            var out: [PyValue] = []
            for x in items { out.append(try eval(x, key: key)) }
            return .list(out)
        case .tuple(let items):
            var out: [PyValue] = []
            for x in items { out.append(try eval(x, key: key)) }
            return .tuple(out)
        case .unary(let op, let x):
            let v = try eval(x, key: key)
            switch v {
            case .int(let i):
                if op == "+" { return .int(i) }
                guard i != Int.min else { throw fail("integer overflow", e.line, key) }
                return .int(-i)
            case .float(let d): return .float(op == "-" ? -d : d)
            case .bool(let b): return .int(op == "-" ? -(b ? 1 : 0) : (b ? 1 : 0))
            default: throw fail("bad operand type for unary \(op): '\(v.typeName)'", e.line, key)
            }
        case .chain(let first, let rest):
            var a = try eval(first, key: key)
            for step in rest {
                let b = try eval(step.operand, key: key)
                a = try binary(step.op, a, b, line: step.line, key: key)
            }
            return a
        }
    }

    func binary(_ op: String, _ a: PyValue, _ b: PyValue, line: Int, key: String?) throws(ConfigError) -> PyValue {
        func asInt(_ v: PyValue) -> Int? {
            switch v {
            case .int(let i): return i
            case .bool(let b): return b ? 1 : 0
            default: return nil
            }
        }
        func overflow() -> ConfigError { fail("integer overflow", line, key) }
        if op == "%", case .string(let fmt) = a {
            let args: [PyValue]
            if case .tuple(let t) = b { args = t } else { args = [b] }
            do { return .string(try pyFormat(fmt, args)) } catch { throw fail(error.message, line, key) }
        }
        if let x = asInt(a), let y = asInt(b) {
            switch op {
            case "+": let (r, o) = x.addingReportingOverflow(y); if o { throw overflow() }; return .int(r)
            case "-": let (r, o) = x.subtractingReportingOverflow(y); if o { throw overflow() }; return .int(r)
            case "*": let (r, o) = x.multipliedReportingOverflow(by: y); if o { throw overflow() }; return .int(r)
            case "/", "//", "%":
                guard y != 0 else { throw fail("integer division or modulo by zero", line, key) }
                guard !(x == Int.min && y == -1) else { throw overflow() }
                var q = x / y, m = x % y
                if m != 0 && ((m < 0) != (y < 0)) { q -= 1; m += y }
                return .int(op == "%" ? m : q)
            default: break
            }
        }
        // A config is at most 16 MiB of text; no value it computes may be larger (`'x' * 2**40`).
        func tooLarge(_ what: String, _ n: Int) -> ConfigError {
            fail("\(what) of \(n) \(what == "string" ? "bytes" : "elements") is too large (limit \(what == "string" ? pyMaxStringBytes : pyMaxListElements))", line, key)
        }
        switch (op, a, b) {
        case ("+", .string(let x), .string(let y)):
            if x.utf8.count + y.utf8.count > pyMaxStringBytes { throw tooLarge("string", x.utf8.count + y.utf8.count) }
            return .string(x + y)
        case ("+", .list(let x), .list(let y)):
            if x.count + y.count > pyMaxListElements { throw tooLarge("list", x.count + y.count) }
            return .list(x + y)
        case ("+", .tuple(let x), .tuple(let y)):
            if x.count + y.count > pyMaxListElements { throw tooLarge("tuple", x.count + y.count) }
            return .tuple(x + y)
        case ("*", .string(let x), _) where asInt(b) != nil:
            let n = max(0, asInt(b)!)
            let (total, o) = x.utf8.count.multipliedReportingOverflow(by: n)
            if o || total > pyMaxStringBytes { throw tooLarge("string", o ? Int.max : total) }
            return .string(String(repeating: x, count: n))
        case ("*", .list(let x), _) where asInt(b) != nil:
            let n = max(0, asInt(b)!)
            let (total, o) = x.count.multipliedReportingOverflow(by: n)
            if o || total > pyMaxListElements { throw tooLarge("list", o ? Int.max : total) }
            return .list(Array(repeatElement(x, count: n).joined()))
        default: break
        }
        if case .float = a, op != "%" { return try floatOp(op, a, b, line: line, key: key) }
        if case .float = b, op != "%" { return try floatOp(op, a, b, line: line, key: key) }
        throw fail("unsupported operand types for \(op): '\(a.typeName)' and '\(b.typeName)'", line, key)
    }

    func floatOp(_ op: String, _ a: PyValue, _ b: PyValue, line: Int, key: String?) throws(ConfigError) -> PyValue {
        func d(_ v: PyValue) -> Double? {
            switch v {
            case .int(let i): return Double(i)
            case .float(let f): return f
            default: return nil
            }
        }
        guard let x = d(a), let y = d(b) else {
            throw fail("unsupported operand types for \(op): '\(a.typeName)' and '\(b.typeName)'", line, key)
        }
        switch op {
        case "+": return .float(x + y)
        case "-": return .float(x - y)
        case "*": return .float(x * y)
        case "/": guard y != 0 else { throw fail("float division by zero", line, key) }; return .float(x / y)
        default: throw fail("unsupported operand types for \(op): '\(a.typeName)' and '\(b.typeName)'", line, key)
        }
    }
}

struct FormatError: Error { var message: String }

/// Largest width or precision `pyFormat` accepts: enough for any real padding, small
/// enough that `"%999999999d"` cannot make a gigabyte string.
let pyFormatFieldMax = 4096
/// The largest string (bytes) and list or tuple (elements) a config may compute.
let pyMaxStringBytes = 16 << 20
let pyMaxListElements = 1 << 16

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
        case "s": body = try nextArg().str; if let p = precision { body = String(body.prefix(p)) }
        case "r": body = try nextArg().repr; if let p = precision { body = String(body.prefix(p)) }
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
