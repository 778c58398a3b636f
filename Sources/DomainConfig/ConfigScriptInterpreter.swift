// Running a configuration script (ConfigScriptParser.swift's tree), within the bounds of
// ConfigScriptLimits.swift. Built-in functions and methods: ConfigScriptBuiltins.swift.
#if canImport(Glibc)
import Glibc
#endif

/// What a block did when it stopped: ran to its end, or left by `break`, `continue` or `return`.
enum PyFlow {
    case next
    case breakLoop
    case continueLoop
    case returned(PyValue)
}

/// A variable a configuration file declares with `xm_vars.var(NAME, use=TEXT, check=F)`
/// (Xen 3.0 tools/python/xen/xm/help.py `Vars`), as `xm create --help_config` lists it.
public struct ConfigVariable: Sendable, Hashable {
    /// The variable's name (`vmid`): set it as `NAME=VALUE` on the `xm create` command line.
    public var name: String
    /// What the variable means (`use=`), empty when not given.
    public var use: String
    /// 1-based line of the `xm_vars.var` call.
    public var line: Int

    /// A declared variable: its name, its `use` text (empty for none), its 1-based line.
    public init(name: String, use: String, line: Int) {
        self.name = name
        self.use = use
        self.line = line
    }
}

struct PyInterpreter {
    let file: String
    /// Module-level names.
    var globals: [String: PyValue] = [:]
    /// Line of the statement that last bound each module-level name.
    var lines: [String: Int] = [:]
    /// For a module-level list made by a list display or grown by `append`, each element's line.
    var elementLines: [String: [Int]] = [:]
    /// Names some expression reads (so they are variables, not unknown keys).
    var referenced: Set<String> = []
    /// Module-level names bound by `for`: loop variables, never configuration keys.
    var loopVariables: Set<String> = []
    /// Names given on the command line, with the text given.
    var commandLine: [String: String] = [:]
    /// Module-level names the file itself bound.
    var boundByFile: Set<String> = []
    /// Variables declared with `xm_vars.var`, with their check functions.
    var declared: [(variable: ConfigVariable, check: PyValue)] = []
    /// `xm create --help_config`: `xm_vars.check()` checks nothing (Xen's `xm_help`).
    var helpMode = false

    var steps = 0
    var allocated = 0
    var callDepth = 0
    /// CPU time of the evaluating thread (ns) at which `pyMaxEvaluationTime` is spent: CPU,
    /// not wall time, so a loaded host does not fail a config that a quiet one accepts.
    let deadline: Int64
    /// The configuration key errors name: the current module-level assignment's, or the
    /// variable `xm_vars.check()` is checking.
    var key: String?

    struct Frame {
        var function: PyFunction
        var locals: [String: PyValue]
    }
    var frames: [Frame] = []

    init(file: String) {
        self.file = file
        let (s, atto) = pyMaxEvaluationTime.components
        deadline = Self.threadCPUNanoseconds() + s * 1_000_000_000 + atto / 1_000_000_000
    }

    /// The calling thread's CPU time, nanoseconds (CLOCK_THREAD_CPUTIME_ID).
    static func threadCPUNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    func fail(_ message: String, _ line: Int) -> ConfigError {
        ConfigError(file: file, line: line, key: key, message: message)
    }

    // MARK: budgets

    /// Counts `n` steps of work; throws past `pyMaxSteps` or `pyMaxEvaluationTime`.
    mutating func step(_ line: Int, _ n: Int = 1) throws(ConfigError) {
        let before = steps
        steps += n
        if steps > pyMaxSteps {
            throw fail("evaluation did not finish within \(pyMaxSteps) steps (a loop that never ends?)", line)
        }
        if before >> 10 != steps >> 10, Self.threadCPUNanoseconds() > deadline {
            throw fail("evaluation took longer than \(pyMaxEvaluationTime) (a loop that never ends?)", line)
        }
    }

    /// Counts the bytes of a string or list just built against `pyMaxAllocation`.
    mutating func charge(_ v: PyValue, _ line: Int) throws(ConfigError) {
        switch v {
        case .string(let s): allocated += s.utf8.count
        case .list(let a), .tuple(let a): allocated += 16 * a.count
        default: return
        }
        if allocated > pyMaxAllocation {
            throw fail("the file built more than \(pyMaxAllocation >> 20) MiB of strings and lists in all", line)
        }
    }

    /// How deeply `v` nests lists and tuples (0 for anything else), walking its containers.
    mutating func nestingDepth(_ v: PyValue, _ line: Int) throws(ConfigError) -> Int {
        guard case .list(let a) = v else {
            guard case .tuple(let t) = v else { return 0 }
            return try nestingDepth(of: t, line)
        }
        return try nestingDepth(of: a, line)
    }

    mutating func nestingDepth(of items: [PyValue], _ line: Int) throws(ConfigError) -> Int {
        try step(line, 1 + items.count / 64)
        var d = 0
        for x in items {
            switch x {
            case .list, .tuple: d = max(d, try nestingDepth(x, line))
            default: continue
            }
        }
        return d + 1
    }

    /// Counts a substring search before it runs: a plain search can compare every byte
    /// of `needle` at every place in `haystack`, so one `'a'*8000000+'b' in s` could
    /// otherwise run for hours inside a single step.
    mutating func chargeSearch(_ haystack: String, _ needle: String, _ line: Int) throws(ConfigError) {
        let (h, n) = (haystack.utf8.count, needle.utf8.count)
        let (pairs, overflow) = h.multipliedReportingOverflow(by: max(1, n))
        if overflow || pairs / 64 > pyMaxSteps - steps {
            throw fail("searching \(h) bytes for a string of \(n) bytes is too much work for a config file", line)
        }
        try step(line, pairs / 64)
    }

    /// Refuses a container deeper than `pyMaxNestingDepth`.
    mutating func checkNesting(_ items: [PyValue], _ line: Int) throws(ConfigError) {
        if try nestingDepth(of: items, line) > pyMaxNestingDepth {
            throw fail("nesting too deep (more than \(pyMaxNestingDepth) levels of lists or tuples)", line)
        }
    }

    // MARK: names

    /// Reads `n`: the current function's locals, then module names, then built-ins.
    mutating func lookup(_ n: String, _ line: Int) throws(ConfigError) -> PyValue {
        referenced.insert(n)
        if let f = frames.last, f.function.locals.contains(n) {
            guard let v = f.locals[n] else {
                throw fail("local variable '\(n)' referenced before assignment", line)
            }
            return v
        }
        if let v = globals[n] { return v }
        switch n {
        case "xm_vars": return .builtin(n)
        case "xm_file": return .string(file)
        case "xm_help": return .int(helpMode ? 1 : 0)
        default: break
        }
        if pyBuiltinFunctions.contains(n) || pyExceptionNames.contains(n) { return .builtin(n) }
        if pyRefusedBuiltins.contains(n) {
            throw fail("unsupported Python: \(n)() (a config file cannot read files, run code or inspect the interpreter)", line)
        }
        if ["os", "sys", "re", "string", "socket", "commands", "subprocess"].contains(n) {
            throw fail("unsupported Python: module '\(n)' (a config file cannot import modules)", line)
        }
        throw fail("name '\(n)' is not defined (set it earlier in the file or as \(n)=VALUE on the command line)", line)
    }

    /// Binds `n` where Python would: the function's local, or a module name.
    mutating func bind(_ n: String, _ v: PyValue, line: Int, elements: [Int] = []) {
        if let k = frames.indices.last, frames[k].function.locals.contains(n) {
            frames[k].locals[n] = v
            return
        }
        globals[n] = v
        lines[n] = line
        elementLines[n] = elements
        boundByFile.insert(n)
    }

    // MARK: statements

    /// Runs the whole file.
    mutating func run(program: [PyStatement]) throws(ConfigError) {
        _ = try run(program)
    }

    mutating func run(_ block: [PyStatement]) throws(ConfigError) -> PyFlow {
        for st in block {
            try step(st.line)
            if frames.isEmpty { key = st.key }
            switch st.kind {
            case .assign(let names, let expr):
                if frames.isEmpty, names.count == 1, commandLine[names[0]] != nil, !PyInterpreter.reads(expr, names[0]) {
                    // The command line's value wins over the file's default for the name.
                    continue
                }
                let v = try eval(expr)
                if names.count == 1 {
                    var elements: [Int] = []
                    if case .list(let items) = expr.kind { elements = items.map(\.line) }
                    bind(names[0], v, line: st.line, elements: elements)
                } else {
                    try unpack(names, v, st.line)
                }
            case .expression(let e):
                _ = try eval(e)
            case .def(let d):
                var defaults: [PyValue] = []
                for x in d.defaults { defaults.append(try eval(x)) }
                bind(d.name, .function(PyFunction(d, defaults: defaults)), line: st.line)
            case .conditional(let branches, let other):
                var chosen = other
                for (cond, body) in branches {
                    if frames.isEmpty { key = st.key }
                    let v = try eval(cond)
                    if truthy(v) { chosen = body; break }
                }
                let flow = try run(chosen)
                if frames.isEmpty { key = st.key }
                if case .next = flow { continue }
                return flow
            case .forLoop(let names, let iterable, let body):
                let items = try iterate(try eval(iterable), iterable.line)
                if frames.isEmpty { loopVariables.formUnion(names) }
                for item in items {
                    try step(st.line)
                    if names.count == 1 { bind(names[0], item, line: st.line) } else { try unpack(names, item, st.line) }
                    let flow = try run(body)
                    if frames.isEmpty { key = st.key }
                    switch flow {
                    case .next, .continueLoop: continue
                    case .breakLoop: break
                    case .returned(let v): return .returned(v)
                    }
                    break
                }
            case .whileLoop(let cond, let body):
                var iterations = 0
                loop: while true {
                    let c = try eval(cond)
                    if !truthy(c) { break }
                    iterations += 1
                    if iterations > pyMaxLoopIterations {
                        throw fail("'while' loop still running after \(pyMaxLoopIterations) iterations (a config file must finish)", st.line)
                    }
                    try step(st.line)
                    let flow = try run(body)
                    if frames.isEmpty { key = st.key }
                    switch flow {
                    case .next, .continueLoop: continue loop
                    case .breakLoop: break loop
                    case .returned(let v): return .returned(v)
                    }
                }
            case .returnValue(let e):
                guard let e else { return .returned(.none) }
                return .returned(try eval(e))
            case .raise(let e, let message):
                throw try raise(e, message, st.line)
            case .pass, .global:
                continue
            case .breakLoop:
                return .breakLoop
            case .continueLoop:
                return .continueLoop
            }
        }
        return .next
    }

    mutating func unpack(_ names: [String], _ v: PyValue, _ line: Int) throws(ConfigError) {
        let items: [PyValue]
        switch v {
        case .list(let a), .tuple(let a): items = a
        default: throw fail("cannot unpack \(v.typeName) into \(names.count) names", line)
        }
        guard items.count == names.count else {
            throw fail("need \(names.count) values to unpack, found \(items.count)", line)
        }
        for (n, x) in zip(names, items) { bind(n, x, line: line) }
    }

    /// The error `raise E`, `raise E(msg)`, `raise E, msg` or `raise "text"` ends the file with.
    mutating func raise(_ e: PyExpr?, _ message: PyExpr?, _ line: Int) throws(ConfigError) -> ConfigError {
        guard let e else { return fail("raise: no exception to raise again", line) }
        var kind: String
        var text = ""
        switch try eval(e) {
        case .builtin(let n) where pyExceptionNames.contains(n): kind = n
        case .exception(let k, let m): kind = k; text = m
        case .string(let s): kind = "error"; text = s
        case let v: return fail("TypeError: exceptions must be classes or instances, not \(v.typeName)", line)
        }
        if let message { text = try eval(message).messageText }
        return fail(text.isEmpty ? kind : "\(kind): \(text)", line)
    }

    /// Whether `e` reads the name `n` (`vmid = int(vmid)` does; `vmid = 1` does not).
    static func reads(_ e: PyExpr, _ n: String) -> Bool {
        switch e.kind {
        case .literal: return false
        case .name(let m): return m == n
        case .list(let a), .tuple(let a), .boolean(_, let a): return a.contains { reads($0, n) }
        case .unary(_, let x), .not(let x), .attribute(let x, _): return reads(x, n)
        case .chain(let x, let ops), .compare(let x, let ops): return reads(x, n) || ops.contains { reads($0.operand, n) }
        case .call(let f, let args, let kw): return reads(f, n) || args.contains { reads($0, n) } || kw.contains { reads($0.1, n) }
        case .index(let x, let i): return reads(x, n) || reads(i, n)
        case .slice(let x, let a, let b, let c): return [x, a, b, c].contains { $0.map { reads($0, n) } ?? false }
        }
    }

    /// Every name any expression of `block` reads, functions' bodies included.
    static func namesRead(_ block: [PyStatement], into out: inout Set<String>) {
        func expr(_ e: PyExpr) {
            switch e.kind {
            case .literal: break
            case .name(let m): out.insert(m)
            case .list(let a), .tuple(let a), .boolean(_, let a): a.forEach(expr)
            case .unary(_, let x), .not(let x), .attribute(let x, _): expr(x)
            case .chain(let x, let ops), .compare(let x, let ops): expr(x); ops.forEach { expr($0.operand) }
            case .call(let f, let args, let kw): expr(f); args.forEach(expr); kw.forEach { expr($0.1) }
            case .index(let x, let i): expr(x); expr(i)
            case .slice(let x, let a, let b, let c): expr(x); [a, b, c].forEach { $0.map(expr) }
            }
        }
        for st in block {
            switch st.kind {
            case .assign(_, let e), .expression(let e): expr(e)
            case .def(let d): d.defaults.forEach(expr); namesRead(d.body, into: &out)
            case .conditional(let branches, let other):
                for (c, b) in branches { expr(c); namesRead(b, into: &out) }
                namesRead(other, into: &out)
            case .forLoop(_, let e, let b), .whileLoop(let e, let b): expr(e); namesRead(b, into: &out)
            case .returnValue(let e): e.map(expr)
            case .raise(let a, let b): a.map(expr); b.map(expr)
            case .pass, .breakLoop, .continueLoop, .global: break
            }
        }
    }

    // MARK: expressions

    func truthy(_ v: PyValue) -> Bool {
        switch v {
        case .int(let i): return i != 0
        case .float(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .bool(let b): return b
        case .none: return false
        case .list(let a), .tuple(let a): return !a.isEmpty
        case .function, .builtin, .exception: return true
        }
    }

    /// The elements a `for` loop (or `list()`, `join`...) walks: a list's or tuple's
    /// elements, a string's characters.
    func iterate(_ v: PyValue, _ line: Int) throws(ConfigError) -> [PyValue] {
        switch v {
        case .list(let a), .tuple(let a): return a
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        default: throw fail("TypeError: '\(v.typeName)' object is not iterable", line)
        }
    }

    mutating func eval(_ e: PyExpr) throws(ConfigError) -> PyValue {
        switch e.kind {
        case .literal(let v): return v
        case .name(let n): return try lookup(n, e.line)
        case .list(let items):
            var out: [PyValue] = []
            for x in items { out.append(try eval(x)) }
            try checkNesting(out, e.line)
            try charge(.list(out), e.line)
            return .list(out)
        case .tuple(let items):
            var out: [PyValue] = []
            for x in items { out.append(try eval(x)) }
            try checkNesting(out, e.line)
            try charge(.tuple(out), e.line)
            return .tuple(out)
        case .unary(let op, let x):
            let v = try eval(x)
            switch v {
            case .int(let i):
                if op == "+" { return .int(i) }
                guard i != Int.min else { throw fail("integer overflow", e.line) }
                return .int(-i)
            case .float(let d): return .float(op == "-" ? -d : d)
            case .bool(let b): return .int(op == "-" ? -(b ? 1 : 0) : (b ? 1 : 0))
            default: throw fail("bad operand type for unary \(op): '\(v.typeName)'", e.line)
            }
        case .chain(let first, let rest):
            var a = try eval(first)
            for step in rest {
                let b = try eval(step.operand)
                a = try binary(step.op, a, b, line: step.line)
                try charge(a, step.line)
            }
            return a
        case .boolean(let op, let items):
            var v = PyValue.none
            for x in items {
                v = try eval(x)
                if truthy(v) == (op == "or") { return v }
            }
            return v
        case .not(let x):
            let v = try eval(x)
            return .bool(!truthy(v))
        case .compare(let first, let rest):
            var a = try eval(first)
            for step in rest {
                let b = try eval(step.operand)
                if !(try compare(step.op, a, b, step.line)) { return .bool(false) }
                a = b
            }
            return .bool(true)
        case .call(let callee, let args, let keywords):
            return try call(callee, args, keywords, e.line)
        case .attribute(let x, let name):
            let v = try eval(x)
            throw fail("unsupported Python: attribute '\(name)' of \(v.typeName) outside a call", e.line)
        case .index(let x, let i):
            let v = try eval(x)
            let index = try eval(i)
            let r = try subscriptValue(v, index, e.line)
            try charge(r, e.line)
            return r
        case .slice(let x, let a, let b, let c):
            let v = try eval(x)
            var bounds: [Int?] = []
            for part in [a, b, c] {
                guard let part else { bounds.append(nil); continue }
                switch try eval(part) {
                case .int(let n): bounds.append(n)
                case .bool(let f): bounds.append(f ? 1 : 0)
                case .none: bounds.append(nil)
                case let o: throw fail("TypeError: slice indices must be integers or None, not \(o.typeName)", e.line)
                }
            }
            let r = try sliceValue(v, bounds[0], bounds[1], bounds[2], e.line)
            try charge(r, e.line)
            return r
        }
    }

    /// Python's `x[i]` for strings, lists and tuples (negative `i` counts from the end).
    func subscriptValue(_ v: PyValue, _ index: PyValue, _ line: Int) throws(ConfigError) -> PyValue {
        let i: Int
        switch index {
        case .int(let n): i = n
        case .bool(let b): i = b ? 1 : 0
        default: throw fail("TypeError: indices must be integers, not \(index.typeName)", line)
        }
        func at<T>(_ a: [T], _ what: String) throws(ConfigError) -> T {
            let k = i < 0 ? a.count + i : i
            guard k >= 0 && k < a.count else { throw fail("IndexError: \(what) index out of range", line) }
            return a[k]
        }
        switch v {
        case .list(let a): return try at(a, "list")
        case .tuple(let a): return try at(a, "tuple")
        case .string(let s):
            let u = s.unicodeScalars
            let k = i < 0 ? u.count + i : i
            guard k >= 0 && k < u.count else { throw fail("IndexError: string index out of range", line) }
            return .string(String(u[u.index(u.startIndex, offsetBy: k)]))
        default: throw fail("TypeError: '\(v.typeName)' object is not subscriptable", line)
        }
    }

    /// Python's `x[a:b:c]`.
    func sliceValue(_ v: PyValue, _ a: Int?, _ b: Int?, _ c: Int?, _ line: Int) throws(ConfigError) -> PyValue {
        let stride = c ?? 1
        guard stride != 0 else { throw fail("ValueError: slice step cannot be zero", line) }
        func pick<T>(_ items: [T]) -> [T] {
            let n = items.count
            func clamp(_ x: Int?, _ dflt: Int) -> Int {
                guard var x else { return dflt }
                if x < 0 { x = max(x + n, stride < 0 ? -1 : 0) }
                return min(x, stride < 0 ? n - 1 : n)
            }
            var out: [T] = []
            if stride > 0 {
                var k = clamp(a, 0)
                let end = clamp(b, n)
                while k < end { out.append(items[k]); k += stride }
            } else {
                var k = clamp(a, n - 1)
                let end = clamp(b, -1)
                while k > end { out.append(items[k]); k += stride }
            }
            return out
        }
        switch v {
        case .list(let x): return .list(pick(x))
        case .tuple(let x): return .tuple(pick(x))
        case .string(let s) where stride == 1:
            // The common case without an array of every character: `name[:8]`, `s[1:]`.
            let u = s.unicodeScalars
            let n = u.count
            func clamp(_ x: Int?, _ dflt: Int) -> Int {
                guard var x else { return dflt }
                if x < 0 { x = max(x + n, 0) }
                return min(x, n)
            }
            let lo = clamp(a, 0), hi = max(lo, clamp(b, n))
            let from = u.index(u.startIndex, offsetBy: lo)
            return .string(String(u[from..<u.index(from, offsetBy: hi - lo)]))
        case .string(let s):
            var out = String.UnicodeScalarView()
            out.append(contentsOf: pick(Array(s.unicodeScalars)))
            return .string(String(out))
        default: throw fail("TypeError: '\(v.typeName)' object is not subscriptable", line)
        }
    }

    // MARK: calls

    mutating func call(_ callee: PyExpr, _ argExprs: [PyExpr], _ kwExprs: [(String, PyExpr)],
                       _ line: Int) throws(ConfigError) -> PyValue {
        try step(line)
        if case .attribute(let receiver, let method) = callee.kind {
            // Methods that change a list change the variable holding it.
            if ["append", "extend", "insert"].contains(method), case .name(let n) = receiver.kind,
               case .list = try lookup(n, receiver.line) {
                let args = try evalArguments(argExprs, kwExprs, line)
                let local = frames.indices.last.flatMap { frames[$0].function.locals.contains(n) ? $0 : nil }
                // Take the list out of its variable so it is the only reference and grows in
                // place (amortized O(1) per element), not copied on every call.
                var held = local.map { frames[$0].locals.removeValue(forKey: n) } ?? globals.removeValue(forKey: n)
                guard case .list(var items)? = held else { return .none }
                held = nil
                let before = items.count
                try growList(&items, method, args.positional, args.keywords, line)
                if let k = local {
                    frames[k].locals[n] = .list(items)
                } else {
                    globals[n] = .list(items)
                    var elements = elementLines[n] ?? []
                    if method == "append" && elements.count == before { elements.append(line) } else { elements = [] }
                    elementLines[n] = elements
                }
                return .none
            }
            let value = try eval(receiver)
            let args = try evalArguments(argExprs, kwExprs, line)
            if case .builtin("xm_vars") = value {
                return try xmVars(method, args.positional, args.keywords, line)
            }
            if case .list = value, ["append", "extend", "insert"].contains(method) {
                throw fail("unsupported Python: \(method)() on a list that is not in a variable", line)
            }
            let r = try callMethod(value, method, args.positional, args.keywords, line)
            try charge(r, line)
            return r
        }
        let f = try eval(callee)
        let args = try evalArguments(argExprs, kwExprs, line)
        switch f {
        case .function(let fn):
            return try callFunction(fn, args.positional, args.keywords, line)
        case .builtin(let n) where pyExceptionNames.contains(n):
            guard args.keywords.isEmpty else { throw fail("TypeError: \(n)() takes no keyword arguments", line) }
            let text = args.positional.count == 1 ? args.positional[0].messageText
                : args.positional.isEmpty ? "" : PyValue.tuple(args.positional).messageText
            return .exception(n, text)
        case .builtin(let n) where n != "xm_vars":
            let r = try callBuiltin(n, args.positional, args.keywords, line)
            try charge(r, line)
            return r
        default:
            throw fail("TypeError: '\(f.typeName)' object is not callable", line)
        }
    }

    mutating func evalArguments(_ argExprs: [PyExpr], _ kwExprs: [(String, PyExpr)], _ line: Int)
        throws(ConfigError) -> (positional: [PyValue], keywords: [(String, PyValue)]) {
        var positional: [PyValue] = []
        for a in argExprs { positional.append(try eval(a)) }
        var keywords: [(String, PyValue)] = []
        for (k, a) in kwExprs { keywords.append((k, try eval(a))) }
        return (positional, keywords)
    }

    /// Calls a function the file defined, binding its parameters as Python does.
    mutating func callFunction(_ fn: PyFunction, _ args: [PyValue], _ keywords: [(String, PyValue)],
                               _ line: Int) throws(ConfigError) -> PyValue {
        guard callDepth < pyMaxCallDepth else {
            throw fail("recursion too deep: more than \(pyMaxCallDepth) nested calls (calling \(fn.name)())", line)
        }
        let params = fn.parameters
        guard args.count <= params.count else {
            throw fail("TypeError: \(fn.name)() takes at most \(params.count) arguments (\(args.count) given)", line)
        }
        var locals: [String: PyValue] = [:]
        for (p, v) in zip(params, args) { locals[p] = v }
        for (k, v) in keywords {
            guard params.contains(k) else { throw fail("TypeError: \(fn.name)() got an unexpected keyword argument '\(k)'", line) }
            guard locals[k] == nil else { throw fail("TypeError: \(fn.name)() got multiple values for argument '\(k)'", line) }
            locals[k] = v
        }
        let firstDefault = params.count - fn.defaults.count
        for (i, p) in params.enumerated() where locals[p] == nil {
            guard i >= firstDefault else {
                throw fail("TypeError: \(fn.name)() takes \(firstDefault == params.count ? "exactly" : "at least") \(firstDefault) arguments (\(args.count) given)", line)
            }
            locals[p] = fn.defaults[i - firstDefault]
        }
        callDepth += 1
        frames.append(Frame(function: fn, locals: locals))
        defer { frames.removeLast(); callDepth -= 1 }
        if case .returned(let v) = try run(fn.body) { return v }
        return .none
    }

    // MARK: xm_vars

    /// `xm_vars.var(NAME, use=TEXT, check=F)` and `xm_vars.check()` (Xen's help.py `Vars`).
    mutating func xmVars(_ method: String, _ args: [PyValue], _ keywords: [(String, PyValue)],
                         _ line: Int) throws(ConfigError) -> PyValue {
        switch method {
        case "var":
            var named: [String: PyValue] = [:]
            let order = ["name", "use", "check"]
            guard args.count <= 3 else { throw fail("TypeError: xm_vars.var() takes at most 3 arguments", line) }
            for (i, a) in args.enumerated() { named[order[i]] = a }
            for (k, v) in keywords {
                guard order.contains(k), named[k] == nil else {
                    throw fail("TypeError: xm_vars.var() got an unexpected or repeated argument '\(k)'", line)
                }
                named[k] = v
            }
            guard case .string(let name)? = named["name"], !name.isEmpty else {
                throw fail("xm_vars.var() needs the variable's name as a string", line)
            }
            var use = ""
            switch named["use"] ?? .none {
            case .none: break
            case .string(let s): use = s
            case let v: throw fail("xm_vars.var('\(name)'): use= must be a string, not \(v.typeName)", line)
            }
            let check = named["check"] ?? .none
            switch check {
            case .none, .function, .builtin: break
            default: throw fail("xm_vars.var('\(name)'): check= must be a function, not \(check.typeName)", line)
            }
            declared.append((ConfigVariable(name: name, use: use, line: line), check))
            // As Xen: a declared variable reaches the script as the text given on the command line.
            if let text = commandLine[name] { globals[name] = .string(text) }
            return .none
        case "check":
            guard args.isEmpty && keywords.isEmpty else { throw fail("TypeError: xm_vars.check() takes no arguments", line) }
            if helpMode { return .none }
            for (variable, check) in declared {
                if case .none = check { continue }
                let name = variable.name
                referenced.insert(name)
                let value = globals[name] ?? .none
                let savedKey = key
                key = name
                defer { key = savedKey }
                let context = value == .none
                    ? " (\(name) is not set: give \(name)=VALUE on the xm create command line; xm_vars.check() at line \(line))"
                    : " (checking \(name)=\(value.shortRepr) for xm_vars.check() at line \(line))"
                let result: PyValue
                do {
                    switch check {
                    case .function(let fn): result = try callFunction(fn, [.string(name), value], [], line)
                    case .builtin(let n): result = try callBuiltin(n, [.string(name), value], [], line)
                    default: continue
                    }
                } catch {
                    var e = error
                    e.key = name
                    e.message += context
                    throw e
                }
                globals[name] = result
                lines[name] = line
                elementLines[name] = []
                boundByFile.insert(name)
            }
            return .none
        default:
            throw fail("unsupported Python: xm_vars.\(method)() (xm_vars has var() and check())", line)
        }
    }

    // MARK: operators

    func binary(_ op: String, _ a: PyValue, _ b: PyValue, line: Int) throws(ConfigError) -> PyValue {
        func asInt(_ v: PyValue) -> Int? {
            switch v {
            case .int(let i): return i
            case .bool(let b): return b ? 1 : 0
            default: return nil
            }
        }
        func overflow() -> ConfigError { fail("integer overflow", line) }
        if op == "%", case .string(let fmt) = a {
            let args: [PyValue]
            if case .tuple(let t) = b { args = t } else { args = [b] }
            do { return .string(try pyFormat(fmt, args)) } catch { throw fail(error.message, line) }
        }
        if let x = asInt(a), let y = asInt(b) {
            switch op {
            case "+": let (r, o) = x.addingReportingOverflow(y); if o { throw overflow() }; return .int(r)
            case "-": let (r, o) = x.subtractingReportingOverflow(y); if o { throw overflow() }; return .int(r)
            case "*": let (r, o) = x.multipliedReportingOverflow(by: y); if o { throw overflow() }; return .int(r)
            case "/", "//", "%":
                guard y != 0 else { throw fail("integer division or modulo by zero", line) }
                guard !(x == Int.min && y == -1) else { throw overflow() }
                var q = x / y, m = x % y
                if m != 0 && ((m < 0) != (y < 0)) { q -= 1; m += y }
                return .int(op == "%" ? m : q)
            default: break
            }
        }
        // A config is at most 16 MiB of text; no value it computes may be larger (`'x' * 2**40`).
        func tooLarge(_ what: String, _ n: Int) -> ConfigError {
            fail("\(what) of \(n) \(what == "string" ? "bytes" : "elements") is too large (limit \(what == "string" ? pyMaxStringBytes : pyMaxListElements))", line)
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
        if case .float = a, op != "%" { return try floatOp(op, a, b, line: line) }
        if case .float = b, op != "%" { return try floatOp(op, a, b, line: line) }
        throw fail("unsupported operand types for \(op): '\(a.typeName)' and '\(b.typeName)'", line)
    }

    func floatOp(_ op: String, _ a: PyValue, _ b: PyValue, line: Int) throws(ConfigError) -> PyValue {
        func d(_ v: PyValue) -> Double? {
            switch v {
            case .int(let i): return Double(i)
            case .float(let f): return f
            case .bool(let b): return b ? 1 : 0
            default: return nil
            }
        }
        guard let x = d(a), let y = d(b) else {
            throw fail("unsupported operand types for \(op): '\(a.typeName)' and '\(b.typeName)'", line)
        }
        switch op {
        case "+": return .float(x + y)
        case "-": return .float(x - y)
        case "*": return .float(x * y)
        case "/": guard y != 0 else { throw fail("float division by zero", line) }; return .float(x / y)
        default: throw fail("unsupported operand types for \(op): '\(a.typeName)' and '\(b.typeName)'", line)
        }
    }

    /// `a OP b` for `== != < <= > >= in not in is is not`.
    mutating func compare(_ op: String, _ a: PyValue, _ b: PyValue, _ line: Int) throws(ConfigError) -> Bool {
        switch op {
        case "==": return try equal(a, b, line)
        case "!=": return !(try equal(a, b, line))
        case "is", "is not":
            var same: Bool
            switch (a, b) {
            case (.none, .none): same = true
            case (.bool(let x), .bool(let y)): same = x == y
            case (.int(let x), .int(let y)): same = x == y
            case (.string(let x), .string(let y)): same = x == y
            case (.function(let x), .function(let y)): same = x === y
            case (.builtin(let x), .builtin(let y)): same = x == y
            default: same = false
            }
            return op == "is" ? same : !same
        case "in", "not in":
            var found: Bool
            switch b {
            case .string(let s):
                guard case .string(let sub) = a else {
                    throw fail("TypeError: 'in <string>' requires a string on the left, not \(a.typeName)", line)
                }
                try chargeSearch(s, sub, line)
                found = sub.isEmpty || s.firstRange(of: sub) != nil
            case .list(let items), .tuple(let items):
                try step(line, items.count / 64)
                found = try contains(items, a, line)
            default: throw fail("TypeError: argument of type '\(b.typeName)' is not iterable", line)
            }
            return op == "in" ? found : !found
        default:
            let c = try order(a, b, op, line)
            switch op {
            case "<": return c < 0
            case "<=": return c <= 0
            case ">": return c > 0
            default: return c >= 0
            }
        }
    }

    /// `==` with its work counted: comparing containers walks them element by element, so
    /// two lists of 65536 lists of 65536 elements would otherwise be billions of comparisons
    /// inside one step (a config could hang `xm create`).
    mutating func equal(_ a: PyValue, _ b: PyValue, _ line: Int) throws(ConfigError) -> Bool {
        switch (a, b) {
        case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
            guard x.count == y.count else { return false }
            try step(line, 1 + x.count / 64)
            for (p, q) in zip(x, y) where !(try equal(p, q, line)) { return false }
            return true
        case (.string(let x), .string(let y)):
            try step(line, min(x.utf8.count, y.utf8.count) / 4096)
            return x == y
        default:
            return PyInterpreter.equal(a, b)
        }
    }

    /// Whether `items` holds a value equal to `v`, the comparisons counted.
    mutating func contains(_ items: [PyValue], _ v: PyValue, _ line: Int) throws(ConfigError) -> Bool {
        for x in items where try equal(x, v, line) { return true }
        return false
    }

    /// A number's value for comparisons across int, float and bool; nil for anything else.
    static func number(_ v: PyValue) -> Double? {
        switch v {
        case .int(let i): return Double(i)
        case .float(let f): return f
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    /// Python's `==`: numbers by value across int, float and bool; containers element-wise.
    static func equal(_ a: PyValue, _ b: PyValue) -> Bool {
        switch (a, b) {
        case (.int(let x), .int(let y)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case (.none, .none): return true
        case (.function(let x), .function(let y)): return x === y
        case (.builtin(let x), .builtin(let y)): return x == y
        default:
            if let x = Self.number(a), let y = Self.number(b) { return x == y }
            return false
        }
    }

    /// -1, 0 or 1 for `a` before, equal to or after `b`; refuses values of unlike types
    /// (Python 2 ordered `'3' < 0` silently, a classic bug with command-line values).
    mutating func order(_ a: PyValue, _ b: PyValue, _ op: String, _ line: Int) throws(ConfigError) -> Int {
        switch (a, b) {
        case (.int(let x), .int(let y)): return x < y ? -1 : x == y ? 0 : 1
        case (.string(let x), .string(let y)):
            if x == y { return 0 }
            return x.utf8.lexicographicallyPrecedes(y.utf8) ? -1 : 1
        case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
            for (p, q) in zip(x, y) where !(try equal(p, q, line)) { return try order(p, q, op, line) }
            return x.count < y.count ? -1 : x.count == y.count ? 0 : 1
        default:
            if let x = Self.number(a), let y = Self.number(b) { return x < y ? -1 : x == y ? 0 : 1 }
            throw fail("TypeError: cannot compare \(a.typeName) \(a.shortRepr) \(op) \(b.typeName) \(b.shortRepr) "
                       + "(convert with int() or str() first)", line)
        }
    }
}
