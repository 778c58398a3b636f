// The built-in functions and the string and list methods a configuration script may call
// (Python 2 semantics; Python's own names for errors: "ValueError: invalid literal...").
// Every result is bounded like the operators' (`pyMaxStringBytes`, `pyMaxListElements`).

/// Functions every script sees without defining them.
let pyBuiltinFunctions: Set<String> = [
    "int", "str", "repr", "float", "bool", "len", "range", "xrange", "list", "tuple", "min", "max", "abs",
    "hex", "oct", "ord", "chr",
]

/// Exception classes for `raise` (`raise ValueError`, `raise ValueError("bad vmid")`).
let pyExceptionNames: Set<String> = [
    "Exception", "StandardError", "ValueError", "TypeError", "KeyError", "IndexError", "RuntimeError",
    "NameError", "AssertionError", "ArithmeticError", "LookupError", "OverflowError", "ZeroDivisionError",
]

/// Python built-ins that reach outside the script; refused by name.
let pyRefusedBuiltins: Set<String> = [
    "open", "file", "eval", "exec", "execfile", "compile", "__import__", "reload", "input", "raw_input",
    "getattr", "setattr", "delattr", "hasattr", "globals", "locals", "vars", "dir", "exit", "quit", "help",
]

extension PyInterpreter {
    func string(_ v: PyValue, _ what: String, _ line: Int) throws(ConfigError) -> String {
        guard case .string(let s) = v else { throw fail("TypeError: \(what) must be a string, not \(v.typeName)", line) }
        return s
    }

    func integer(_ v: PyValue, _ what: String, _ line: Int) throws(ConfigError) -> Int {
        switch v {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        default: throw fail("TypeError: \(what) must be an integer, not \(v.typeName)", line)
        }
    }

    func checkString(_ bytes: Int, _ line: Int) throws(ConfigError) {
        if bytes > pyMaxStringBytes {
            throw fail("string of \(bytes) bytes is too large (limit \(pyMaxStringBytes))", line)
        }
    }

    func checkList(_ count: Int, _ line: Int) throws(ConfigError) {
        if count > pyMaxListElements {
            throw fail("list of \(count) elements is too large (limit \(pyMaxListElements))", line)
        }
    }

    /// Calls the built-in function `name`.
    mutating func callBuiltin(_ name: String, _ args: [PyValue], _ keywords: [(String, PyValue)],
                              _ line: Int) throws(ConfigError) -> PyValue {
        func arity(_ lo: Int, _ hi: Int) throws(ConfigError) {
            guard keywords.isEmpty || name == "int" else {
                throw fail("TypeError: \(name)() takes no keyword arguments", line)
            }
            guard args.count >= lo && args.count <= hi else {
                let n = lo == hi ? "exactly \(lo)" : args.count < lo ? "at least \(lo)" : "at most \(hi)"
                throw fail("TypeError: \(name)() takes \(n) argument\(lo == 1 && hi == 1 ? "" : "s") (\(args.count) given)", line)
            }
        }
        switch name {
        case "int":
            var all = args
            for (k, v) in keywords {
                guard k == "base", all.count == 1 else { throw fail("TypeError: int() got an unexpected keyword argument '\(k)'", line) }
                all.append(v)
            }
            guard (0...2).contains(all.count) else { throw fail("TypeError: int() takes at most 2 arguments (\(all.count) given)", line) }
            guard let v = all.first else { return .int(0) }
            if all.count == 2 {
                let base = try integer(all[1], "int() base", line)
                guard (2...36).contains(base) else { throw fail("ValueError: int() base must be >= 2 and <= 36", line) }
                guard case .string(let s) = v else { throw fail("TypeError: int() can't convert non-string with explicit base", line) }
                return try parseInt(s, base, line)
            }
            switch v {
            case .int: return v
            case .bool(let b): return .int(b ? 1 : 0)
            case .float(let d):
                guard d.isFinite, abs(d) < 9.2e18 else { throw fail("OverflowError: cannot convert float \(d) to integer", line) }
                return .int(Int(d))
            case .string(let s): return try parseInt(s, 10, line)
            default: throw fail("TypeError: int() argument must be a string or a number, not '\(v.typeName)'", line)
            }
        case "float":
            try arity(0, 1)
            guard let v = args.first else { return .float(0) }
            switch v {
            case .int(let i): return .float(Double(i))
            case .bool(let b): return .float(b ? 1 : 0)
            case .float: return v
            case .string(let s):
                guard let d = Double(s.trimmingSpace()) else { throw fail("ValueError: invalid literal for float(): \(s)", line) }
                return .float(d)
            default: throw fail("TypeError: float() argument must be a string or a number, not '\(v.typeName)'", line)
            }
        case "str":
            try arity(0, 1)
            guard let v = args.first else { return .string("") }
            guard let t = v.str(limit: pyMaxStringBytes) else { throw fail("str() of this \(v.typeName) would be more than \(pyMaxStringBytes) bytes", line) }
            return .string(t)
        case "repr":
            try arity(1, 1)
            guard let t = args[0].repr(limit: pyMaxStringBytes) else {
                throw fail("repr() of this \(args[0].typeName) would be more than \(pyMaxStringBytes) bytes", line)
            }
            return .string(t)
        case "bool":
            try arity(0, 1)
            return .bool(args.first.map(truthy) ?? false)
        case "len":
            try arity(1, 1)
            switch args[0] {
            case .string(let s): return .int(s.unicodeScalars.count)
            case .list(let a), .tuple(let a): return .int(a.count)
            case let v: throw fail("TypeError: object of type '\(v.typeName)' has no len()", line)
            }
        case "range", "xrange":
            try arity(1, 3)
            var ints: [Int] = []
            for a in args { ints.append(try integer(a, "\(name)() argument", line)) }
            let (start, stop) = ints.count == 1 ? (0, ints[0]) : (ints[0], ints[1])
            let stride = ints.count == 3 ? ints[2] : 1
            guard stride != 0 else { throw fail("ValueError: \(name)() step argument must not be zero", line) }
            // Count first, in a wider type, so `range(-2**62, 2**62)` is refused before it is built.
            let span = stride > 0 ? Int128(stop) - Int128(start) : Int128(start) - Int128(stop)
            let stepSize = Int128(stride.magnitude)
            let count = span <= 0 ? 0 : (span + stepSize - 1) / stepSize
            if count > Int128(pyMaxListElements) {
                throw fail("\(name)() of \(count) elements is too large (limit \(pyMaxListElements))", line)
            }
            try step(line, Int(count) / 64)
            return .list((0..<Int(count)).map { .int(start + $0 * stride) })
        case "list", "tuple":
            try arity(0, 1)
            let items = try args.first.map { (v) throws(ConfigError) in try iterate(v, line) } ?? []
            return name == "list" ? .list(items) : .tuple(items)
        case "min", "max":
            guard keywords.isEmpty else { throw fail("TypeError: \(name)() takes no keyword arguments", line) }
            let items = args.count == 1 ? try iterate(args[0], line) : args
            guard var best = items.first else { throw fail("ValueError: \(name)() arg is an empty sequence", line) }
            try step(line, items.count / 64)
            for x in items.dropFirst() {
                let c = try order(x, best, name == "min" ? "<" : ">", line)
                if name == "min" ? c < 0 : c > 0 { best = x }
            }
            return best
        case "abs":
            try arity(1, 1)
            switch args[0] {
            case .int(let i):
                guard i != Int.min else { throw fail("integer overflow", line) }
                return .int(abs(i))
            case .bool(let b): return .int(b ? 1 : 0)
            case .float(let d): return .float(abs(d))
            case let v: throw fail("TypeError: bad operand type for abs(): '\(v.typeName)'", line)
            }
        case "hex", "oct":
            try arity(1, 1)
            let n = try integer(args[0], "\(name)() argument", line)
            let digits = String(n.magnitude, radix: name == "hex" ? 16 : 8)
            let prefix = name == "hex" ? "0x" : (n == 0 ? "" : "0")
            return .string((n < 0 ? "-" : "") + prefix + digits)
        case "ord":
            try arity(1, 1)
            let s = try string(args[0], "ord() argument", line)
            guard s.unicodeScalars.count == 1, let u = s.unicodeScalars.first else {
                throw fail("TypeError: ord() expected a character, but string of length \(s.unicodeScalars.count) found", line)
            }
            return .int(Int(u.value))
        case "chr":
            try arity(1, 1)
            let n = try integer(args[0], "chr() argument", line)
            guard n >= 0, n <= 0x10FFFF, let u = Unicode.Scalar(UInt32(n)) else {
                throw fail("ValueError: chr() arg not in range", line)
            }
            return .string(String(Character(u)))
        default:
            throw fail("TypeError: '\(name)' is not callable", line)
        }
    }

    /// Python's `int(s, base)`: surrounding blanks and one sign allowed.
    func parseInt(_ s: String, _ base: Int, _ line: Int) throws(ConfigError) -> PyValue {
        var t = Substring(s.trimmingSpace())
        var negative = false
        if t.hasPrefix("-") || t.hasPrefix("+") { negative = t.hasPrefix("-"); t = t.dropFirst() }
        if base == 16, t.lowercased().hasPrefix("0x") { t = t.dropFirst(2) }
        guard !t.isEmpty, t.first != "-", t.first != "+", let m = UInt(t, radix: base),
              m <= UInt(Int.max) + (negative ? 1 : 0) else {
            throw fail("ValueError: invalid literal for int() with base \(base): \(PyValue.string(s).shortRepr)", line)
        }
        return .int(negative ? Int(truncatingIfNeeded: 0 &- m) : Int(m))
    }

    /// `append`, `extend` or `insert` on `items`.
    mutating func growList(_ items: inout [PyValue], _ method: String, _ args: [PyValue],
                           _ keywords: [(String, PyValue)], _ line: Int) throws(ConfigError) {
        guard keywords.isEmpty else { throw fail("TypeError: \(method)() takes no keyword arguments", line) }
        let before = items.count
        switch method {
        case "append":
            guard args.count == 1 else { throw fail("TypeError: append() takes exactly one argument (\(args.count) given)", line) }
            try checkList(items.count + 1, line)
            try checkNesting([args[0]], line)
            items.append(args[0])
        case "insert":
            guard args.count == 2 else { throw fail("TypeError: insert() takes exactly 2 arguments (\(args.count) given)", line) }
            var at = try integer(args[0], "insert() index", line)
            if at < 0 { at = max(0, items.count + at) }
            try checkList(items.count + 1, line)
            try checkNesting([args[1]], line)
            items.insert(args[1], at: min(at, items.count))
        default: // extend
            guard args.count == 1 else { throw fail("TypeError: extend() takes exactly one argument (\(args.count) given)", line) }
            let more = try iterate(args[0], line)
            try checkList(items.count + more.count, line)
            items.append(contentsOf: more)
        }
        // Growing in place costs the new elements only.
        allocated += 16 * max(1, items.count - before)
        if allocated > pyMaxAllocation {
            throw fail("the file built more than \(pyMaxAllocation >> 20) MiB of strings and lists in all", line)
        }
    }

    /// Calls `value.method(args)` for the string and list methods configs use.
    mutating func callMethod(_ value: PyValue, _ method: String, _ args: [PyValue], _ keywords: [(String, PyValue)],
                             _ line: Int) throws(ConfigError) -> PyValue {
        guard keywords.isEmpty else { throw fail("TypeError: \(method)() takes no keyword arguments", line) }
        func arity(_ lo: Int, _ hi: Int) throws(ConfigError) {
            guard args.count >= lo && args.count <= hi else {
                throw fail("TypeError: \(method)() takes \(lo == hi ? "exactly \(lo)" : "\(lo) to \(hi)") arguments (\(args.count) given)", line)
            }
        }
        switch value {
        case .string(let s):
            return try stringMethod(s, method, args, line)
        case .list(let items), .tuple(let items):
            switch method {
            case "index":
                try arity(1, 1)
                var found: Int? = nil
                for (k, x) in items.enumerated() where try equal(x, args[0], line) { found = k; break }
                guard let k = found else {
                    throw fail("ValueError: \(args[0].shortRepr) is not in \(value.typeName)", line)
                }
                return .int(k)
            case "count":
                try arity(1, 1)
                var n = 0
                for x in items where try equal(x, args[0], line) { n += 1 }
                return .int(n)
            default: break
            }
        default: break
        }
        throw fail("unsupported Python: method \(method)() of \(value.typeName)", line)
    }

    mutating func stringMethod(_ s: String, _ method: String, _ args: [PyValue], _ line: Int) throws(ConfigError) -> PyValue {
        let failure = fail("TypeError: \(method)() takes a different number of arguments (\(args.count) given)", line)
        func arity(_ lo: Int, _ hi: Int) throws(ConfigError) {
            guard args.count >= lo && args.count <= hi else { throw failure }
        }
        func isBlank(_ u: Unicode.Scalar) -> Bool { u == " " || u == "\t" || u == "\n" || u == "\r" || u == "\u{0B}" || u == "\u{0C}" }
        func arg(_ i: Int, _ what: String) throws(ConfigError) -> String { try string(args[i], "\(method)() \(what)", line) }
        switch method {
        case "upper": try arity(0, 0); return .string(s.uppercased())
        case "lower": try arity(0, 0); return .string(s.lowercased())
        case "capitalize":
            try arity(0, 0)
            guard let f = s.first else { return .string(s) }
            return .string(String(f).uppercased() + s.dropFirst().lowercased())
        case "strip", "lstrip", "rstrip":
            try arity(0, 1)
            var chars: Set<Unicode.Scalar>?
            if args.count == 1, case .string(let c) = args[0] { chars = Set(c.unicodeScalars) }
            else if args.count == 1, args[0] != .none { throw fail("TypeError: \(method)() argument must be a string or None", line) }
            let drop = { (u: Unicode.Scalar) -> Bool in chars.map { $0.contains(u) } ?? isBlank(u) }
            var u = Substring(s).unicodeScalars
            if method != "rstrip" { while let f = u.first, drop(f) { u.removeFirst() } }
            if method != "lstrip" { while let l = u.last, drop(l) { u.removeLast() } }
            return .string(String(u))
        case "split":
            try arity(0, 2)
            var limit = Int.max
            if args.count == 2 { let m = try integer(args[1], "split() maxsplit", line); if m >= 0 { limit = m } }
            var parts: [PyValue] = []
            func add(_ p: Substring) throws(ConfigError) {
                parts.append(.string(String(p)))
                try checkList(parts.count, line)
            }
            if args.isEmpty || args[0] == .none {
                // Runs of blanks separate; leading and trailing blanks make no empty parts.
                var rest = Substring(s)
                while true {
                    rest = Substring(rest.unicodeScalars.drop(while: isBlank))
                    if rest.isEmpty { break }
                    if parts.count == limit { try add(rest); break }
                    let end = rest.unicodeScalars.firstIndex(where: isBlank) ?? rest.endIndex
                    try add(rest[..<end])
                    rest = rest[end...]
                }
            } else {
                let sep = try arg(0, "separator")
                guard !sep.isEmpty else { throw fail("ValueError: empty separator", line) }
                try chargeSearch(s, sep, line)
                var rest = Substring(s)
                while parts.count < limit, let r = rest.firstRange(of: sep) {
                    try add(rest[..<r.lowerBound])
                    rest = rest[r.upperBound...]
                }
                try add(rest)
            }
            try step(line, parts.count / 64)
            return .list(parts)
        case "join":
            try arity(1, 1)
            let items = try iterate(args[0], line)
            var total = s.utf8.count * max(0, items.count - 1)
            var texts: [String] = []
            for x in items {
                guard case .string(let t) = x else { throw fail("TypeError: join() expects strings, found \(x.typeName)", line) }
                total += t.utf8.count
                texts.append(t)
            }
            try checkString(total, line)
            try step(line, items.count / 64)
            return .string(texts.joined(separator: s))
        case "replace":
            try arity(2, 3)
            let old = try arg(0, "old"), new = try arg(1, "new")
            try chargeSearch(s, old, line)
            var limit = Int.max
            if args.count == 3 { let m = try integer(args[2], "replace() count", line); if m >= 0 { limit = m } }
            if old.isEmpty {
                // Python puts `new` before every character and at the end.
                let n = min(limit, s.unicodeScalars.count + 1)
                try checkString(s.utf8.count + n * new.utf8.count, line)
                var out = ""
                var k = 0
                for u in s.unicodeScalars {
                    if k < n { out += new; k += 1 }
                    out.unicodeScalars.append(u)
                }
                if k < n { out += new }
                return .string(out)
            }
            var out = ""
            var rest = Substring(s)
            var done = 0
            while done < limit, let r = rest.firstRange(of: old) {
                out += rest[..<r.lowerBound]
                out += new
                rest = rest[r.upperBound...]
                done += 1
                try checkString(out.utf8.count + rest.utf8.count, line)
            }
            out += rest
            return .string(out)
        case "startswith", "endswith":
            try arity(1, 1)
            var candidates: [String] = []
            switch args[0] {
            case .string(let p): candidates = [p]
            case .tuple(let t): for x in t { candidates.append(try string(x, "\(method)() prefix", line)) }
            case let v: throw fail("TypeError: \(method)() argument must be a string or a tuple of strings, not \(v.typeName)", line)
            }
            for c in candidates { try step(line, 1 + min(c.utf8.count, s.utf8.count) / 4096) }
            return .bool(candidates.contains { method == "startswith" ? s.hasPrefix($0) : s.hasSuffix($0) })
        case "find", "rfind", "index", "count":
            try arity(1, 1)
            let sub = try arg(0, "argument")
            try chargeSearch(s, sub, line)
            let scalars = Array(s.unicodeScalars), needle = Array(sub.unicodeScalars)
            var hits: [Int] = []
            if needle.count <= scalars.count {
                var k = 0
                while k + needle.count <= scalars.count {
                    if scalars[k..<(k + needle.count)].elementsEqual(needle) {
                        hits.append(k)
                        if method == "find" || method == "index" { break }
                        k += max(1, needle.count)
                    } else {
                        k += 1
                    }
                }
            }
            if method == "count" { return .int(hits.count) }
            guard let k = method == "rfind" ? hits.last : hits.first else {
                if method == "index" { throw fail("ValueError: substring not found", line) }
                return .int(-1)
            }
            return .int(k)
        case "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper":
            try arity(0, 0)
            let u = s.unicodeScalars
            guard !u.isEmpty else { return .bool(false) }
            func digit(_ c: Unicode.Scalar) -> Bool { c >= "0" && c <= "9" }
            func alpha(_ c: Unicode.Scalar) -> Bool { (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") }
            switch method {
            case "isdigit": return .bool(u.allSatisfy(digit))
            case "isalpha": return .bool(u.allSatisfy(alpha))
            case "isalnum": return .bool(u.allSatisfy { digit($0) || alpha($0) })
            case "isspace": return .bool(u.allSatisfy(isBlank))
            case "islower": return .bool(u.contains { $0 >= "a" && $0 <= "z" } && !u.contains { $0 >= "A" && $0 <= "Z" })
            default: return .bool(u.contains { $0 >= "A" && $0 <= "Z" } && !u.contains { $0 >= "a" && $0 <= "z" })
            }
        case "zfill", "ljust", "rjust", "center":
            try arity(1, method == "zfill" ? 1 : 2)
            let width = try integer(args[0], "\(method)() width", line)
            var fill: Unicode.Scalar = method == "zfill" ? "0" : " "
            if args.count == 2 {
                let f = try arg(1, "fill character")
                guard f.unicodeScalars.count == 1 else { throw fail("TypeError: \(method)() fill character must be exactly one character long", line) }
                fill = f.unicodeScalars.first!
            }
            let n = s.unicodeScalars.count
            guard width > n else { return .string(s) }
            let pad = width - n
            let f = String(Character(fill))
            try checkString(s.utf8.count + pad * f.utf8.count, line)
            switch method {
            case "ljust": return .string(s + String(repeating: f, count: pad))
            case "rjust": return .string(String(repeating: f, count: pad) + s)
            case "center":
                let left = pad / 2 + (pad & width & 1)
                return .string(String(repeating: f, count: left) + s + String(repeating: f, count: pad - left))
            default:
                if let sign = s.first, sign == "-" || sign == "+" {
                    return .string(String(sign) + String(repeating: f, count: pad) + s.dropFirst())
                }
                return .string(String(repeating: f, count: pad) + s)
            }
        default:
            throw fail("unsupported Python: method \(method)() of str", line)
        }
    }
}
