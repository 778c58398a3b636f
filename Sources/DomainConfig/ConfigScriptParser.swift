// Syntax tree and parser for the configuration-script subset (see ConfigScript.swift).

struct PyExpr: Sendable {
    indirect enum Kind: Sendable {
        case literal(PyValue)
        case name(String)
        case list([PyExpr])
        case tuple([PyExpr])
        case unary(String, PyExpr)
        /// A left-associative chain of one precedence level, `first op1 x1 op2 x2 …`, kept
        /// flat so a long `1+1+…+1` neither builds nor walks a tree as deep as it is long.
        case chain(PyExpr, [PyOperation])
        /// `a and b and c` / `a or b or c`, flat, evaluated left to right with short circuit.
        case boolean(String, [PyExpr])
        case not(PyExpr)
        /// `a < b <= c`: each `op operand` compares with the operand before it.
        case compare(PyExpr, [PyOperation])
        /// `f(args, key=value)`.
        case call(PyExpr, [PyExpr], [(String, PyExpr)])
        /// `x.name`; only a call's callee (`s.upper()`, `xm_vars.var(...)`).
        case attribute(PyExpr, String)
        /// `x[i]`.
        case index(PyExpr, PyExpr)
        /// `x[a:b]`, `x[a:b:c]`.
        case slice(PyExpr, PyExpr?, PyExpr?, PyExpr?)
    }
    var kind: Kind
    var line: Int
}

/// One `op operand` step of a `PyExpr.Kind.chain` or `.compare`; `line` is the operator's line.
struct PyOperation: Sendable {
    var op: String
    var operand: PyExpr
    var line: Int
}

/// A statement at `line`. `key` is the configuration key an assignment sets (errors in it
/// name that key).
struct PyStatement: Sendable {
    indirect enum Kind: Sendable {
        /// `NAME = EXPR`, or `A, B = EXPR` (several targets unpack a list or tuple).
        case assign([String], PyExpr)
        /// A call made for its effect: `xm_vars.check()`, `disk.append('...')`.
        case expression(PyExpr)
        case def(PyFunctionDefinition)
        /// `if`/`elif` branches in order, then the `else` block (empty when absent).
        case conditional([(PyExpr, [PyStatement])], [PyStatement])
        case forLoop([String], PyExpr, [PyStatement])
        case whileLoop(PyExpr, [PyStatement])
        case returnValue(PyExpr?)
        /// `raise`, `raise E`, `raise E(msg)`, `raise E, msg`.
        case raise(PyExpr?, PyExpr?)
        case pass
        case breakLoop
        case continueLoop
        case global([String])
    }
    var kind: Kind
    var line: Int
    var key: String?
}

/// `def NAME(PARAMS): BODY` as written; the interpreter makes a `PyFunction` of it.
struct PyFunctionDefinition: Sendable {
    var name: String
    var parameters: [String]
    /// Default values of the last `defaults.count` parameters.
    var defaults: [PyExpr]
    var body: [PyStatement]
    var line: Int
}

/// A function a configuration script defined: its code and the values of its defaults.
/// Two functions are equal only when they are the same definition run.
final class PyFunction: Sendable, Equatable {
    let name: String
    let parameters: [String]
    let defaults: [PyValue]
    let body: [PyStatement]
    let line: Int
    /// Names the body assigns (its locals, as Python decides at compile time), less `global` ones.
    let locals: Set<String>

    init(_ d: PyFunctionDefinition, defaults: [PyValue]) {
        name = d.name
        parameters = d.parameters
        self.defaults = defaults
        body = d.body
        line = d.line
        var assigned = Set(d.parameters)
        var globals = Set<String>()
        PyFunction.collect(d.body, &assigned, &globals)
        locals = assigned.subtracting(globals)
    }

    static func collect(_ block: [PyStatement], _ assigned: inout Set<String>, _ globals: inout Set<String>) {
        for st in block {
            switch st.kind {
            case .assign(let names, _): assigned.formUnion(names)
            case .forLoop(let names, _, let body): assigned.formUnion(names); collect(body, &assigned, &globals)
            case .whileLoop(_, let body): collect(body, &assigned, &globals)
            case .conditional(let branches, let other):
                for (_, b) in branches { collect(b, &assigned, &globals) }
                collect(other, &assigned, &globals)
            case .global(let names): globals.formUnion(names)
            case .def(let d): assigned.insert(d.name)
            default: break
            }
        }
    }

    static func == (a: PyFunction, b: PyFunction) -> Bool { a === b }
}

let pythonKeywords: Set<String> = [
    "and", "as", "assert", "break", "class", "continue", "def", "del", "elif", "else", "except",
    "exec", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
    "not", "or", "pass", "print", "raise", "return", "try", "while", "with", "yield", "async", "await",
]

struct PyParser {
    var tokens: [PyToken]
    let file: String
    var i = 0
    var currentKey: String?
    /// Current nesting level of `(`, `[`, unary operators and trailers.
    var depth = 0
    /// Current nesting level of blocks.
    var blockDepth = 0
    /// Inside a `def` body (where `return` and `global` belong).
    var inFunction = false
    /// Inside a loop body (where `break` and `continue` belong).
    var inLoop = false

    init(tokens: [PyToken], file: String) {
        self.tokens = tokens
        self.file = file
    }

    var tok: PyToken { tokens[i] }

    func fail(_ message: String, line: Int? = nil) -> ConfigError {
        ConfigError(file: file, line: line ?? tok.line, key: currentKey, message: message)
    }
    func unsupported(_ what: String, line: Int? = nil) -> ConfigError {
        fail("unsupported Python: \(what)", line: line)
    }

    func isOp(_ o: String) -> Bool { tok.kind == .op(o) }
    func isName(_ n: String) -> Bool { tok.kind == .name(n) }

    mutating func expectOp(_ o: String, _ context: String) throws(ConfigError) {
        guard isOp(o) else { throw fail("syntax error: expected '\(o)' \(context)") }
        i += 1
    }

    mutating func identifier(_ context: String) throws(ConfigError) -> String {
        guard case .name(let n) = tok.kind, !pythonKeywords.contains(n), !["True", "False", "None"].contains(n) else {
            throw fail("syntax error: expected a name \(context)")
        }
        i += 1
        return n
    }

    /// The whole file.
    mutating func program() throws(ConfigError) -> [PyStatement] {
        var out: [PyStatement] = []
        while tok.kind != .eof {
            if tok.kind == .newline { i += 1; continue }
            if tok.kind == .indent { throw fail("syntax error: unexpected indent (a statement must start in column 1)") }
            try statement(into: &out)
        }
        return out
    }

    /// One statement: a compound statement, or simple statements separated by `;` up to
    /// the end of the line.
    mutating func statement(into out: inout [PyStatement]) throws(ConfigError) {
        if case .name(let n) = tok.kind, ["def", "if", "for", "while"].contains(n) {
            out.append(try compound(n))
            return
        }
        while true {
            // As Python: `;` ends a statement; it never stands alone (`;;`, a leading `;`).
            if isOp(";") { throw fail("syntax error: ';' with no statement before it") }
            out.append(try simple())
            if isOp(";") {
                currentKey = nil
                i += 1
                if tok.kind == .newline { break }
                continue
            }
            guard tok.kind == .newline else { throw trailingError() }
            currentKey = nil
            break
        }
        i += 1
    }

    /// An indented block after `:`, or simple statements on the same line.
    mutating func suite() throws(ConfigError) -> [PyStatement] {
        try expectOp(":", "before the block")
        blockDepth += 1
        defer { blockDepth -= 1 }
        if blockDepth > pyMaxBlockDepth {
            throw fail("nesting too deep (more than \(pyMaxBlockDepth) nested blocks)")
        }
        var body: [PyStatement] = []
        if tok.kind != .newline {
            try statement(into: &body)
            return body
        }
        i += 1
        while tok.kind == .newline { i += 1 }
        guard tok.kind == .indent else { throw fail("syntax error: expected an indented block") }
        i += 1
        while tok.kind != .dedent && tok.kind != .eof {
            if tok.kind == .newline { i += 1; continue }
            if tok.kind == .indent { throw fail("syntax error: unexpected indent") }
            try statement(into: &body)
        }
        if tok.kind == .dedent { i += 1 }
        return body
    }

    mutating func compound(_ keyword: String) throws(ConfigError) -> PyStatement {
        let line = tok.line
        i += 1
        switch keyword {
        case "def":
            if inFunction { throw unsupported("'def' inside a function") }
            let name = try identifier("after 'def'")
            try expectOp("(", "after the function name")
            var params: [String] = []
            var defaults: [PyExpr] = []
            while !isOp(")") {
                if isOp("*") || isOp("**") { throw unsupported("*args or **kwargs parameters") }
                let p = try identifier("in the parameter list")
                if params.contains(p) { throw fail("syntax error: duplicate parameter '\(p)'") }
                params.append(p)
                if isOp("=") {
                    i += 1
                    defaults.append(try test())
                } else if !defaults.isEmpty {
                    throw fail("syntax error: non-default parameter '\(p)' follows a default one")
                }
                if isOp(",") { i += 1; continue }
                guard isOp(")") else { throw fail("syntax error: expected ',' or ')' in the parameter list") }
            }
            i += 1
            let (savedFunction, savedLoop) = (inFunction, inLoop)
            inFunction = true
            inLoop = false
            defer { inFunction = savedFunction; inLoop = savedLoop }
            let body = try suite()
            let d = PyFunctionDefinition(name: name, parameters: params, defaults: defaults, body: body, line: line)
            return PyStatement(kind: .def(d), line: line)
        case "if":
            var branches: [(PyExpr, [PyStatement])] = []
            branches.append((try test(), try suite()))
            var other: [PyStatement] = []
            while true {
                if isName("elif") {
                    i += 1
                    branches.append((try test(), try suite()))
                } else if isName("else") {
                    i += 1
                    other = try suite()
                    break
                } else {
                    break
                }
            }
            return PyStatement(kind: .conditional(branches, other), line: line)
        case "for":
            var names = [try identifier("after 'for'")]
            while isOp(",") { i += 1; names.append(try identifier("after ','")) }
            guard isName("in") else { throw fail("syntax error: expected 'in' after the loop variable") }
            i += 1
            let iterable = try testList()
            let saved = inLoop
            inLoop = true
            defer { inLoop = saved }
            let body = try suite()
            if isName("else") { throw unsupported("'else' after a loop") }
            return PyStatement(kind: .forLoop(names, iterable, body), line: line)
        default: // while
            let cond = try test()
            let saved = inLoop
            inLoop = true
            defer { inLoop = saved }
            let body = try suite()
            if isName("else") { throw unsupported("'else' after a loop") }
            return PyStatement(kind: .whileLoop(cond, body), line: line)
        }
    }

    mutating func simple() throws(ConfigError) -> PyStatement {
        let line = tok.line
        if isOp("@") { throw unsupported("decorator") }
        if case .name(let n) = tok.kind, pythonKeywords.contains(n) {
            switch n {
            case "pass": i += 1; return PyStatement(kind: .pass, line: line)
            case "break", "continue":
                guard inLoop else { throw fail("syntax error: '\(n)' outside a loop") }
                i += 1
                return PyStatement(kind: n == "break" ? .breakLoop : .continueLoop, line: line)
            case "return":
                guard inFunction else { throw fail("syntax error: 'return' outside a function") }
                i += 1
                if tok.kind == .newline || isOp(";") { return PyStatement(kind: .returnValue(nil), line: line) }
                return PyStatement(kind: .returnValue(try testList()), line: line)
            case "raise":
                i += 1
                if tok.kind == .newline || isOp(";") { return PyStatement(kind: .raise(nil, nil), line: line) }
                let e = try test()
                var message: PyExpr?
                if isOp(",") { i += 1; message = try test() }
                return PyStatement(kind: .raise(e, message), line: line)
            case "global":
                guard inFunction else { throw unsupported("'global' outside a function") }
                i += 1
                var names = [try identifier("after 'global'")]
                while isOp(",") { i += 1; names.append(try identifier("after ','")) }
                return PyStatement(kind: .global(names), line: line)
            case "elif", "else": throw fail("syntax error: '\(n)' without 'if'")
            case "import", "from": throw unsupported("'\(n)' statement (a config file cannot import modules)")
            case "print": throw unsupported("'print' statement (a config file has no output)")
            case "not", "lambda": break // an expression statement
            default: throw unsupported("'\(n)' statement")
            }
        }
        // Assignment targets: NAME, or NAME, NAME... before '='.
        var names: [String] = []
        var j = i
        while case .name(let n) = tokens[j].kind, !pythonKeywords.contains(n) {
            names.append(n)
            j += 1
            if tokens[j].kind == .op(",") { j += 1; continue }
            break
        }
        if !names.isEmpty, tokens[j].kind == .op("=") {
            i = j + 1
            currentKey = names.count == 1 ? names[0] : nil
            let value = try testList()
            if isOp("=") { throw unsupported("chained assignment") }
            return PyStatement(kind: .assign(names, value), line: line, key: currentKey)
        }
        let e = try testList()
        switch tok.kind {
        case .op("="):
            switch e.kind {
            case .index, .slice: throw unsupported("subscript assignment")
            case .attribute: throw unsupported("attribute assignment")
            default: throw fail("syntax error: cannot assign to an expression")
            }
        case .op(let o) where o.count >= 2 && o.hasSuffix("=") && !["==", "!=", "<=", ">="].contains(o):
            throw unsupported("augmented assignment '\(o)'")
        default: break
        }
        // A string on its own is a docstring or a comment.
        if case .literal(.string) = e.kind { return PyStatement(kind: .pass, line: line) }
        guard case .call = e.kind else {
            if case .name(let n) = e.kind { throw unsupported("bare expression '\(n)'") }
            throw unsupported("expression statement (only calls may stand alone)")
        }
        return PyStatement(kind: .expression(e), line: line)
    }

    func trailingError() -> ConfigError {
        switch tok.kind {
        case .name("if"): return unsupported("conditional expression 'X if C else Y'")
        case .name(let n) where pythonKeywords.contains(n): return unsupported("'\(n)' in an expression")
        case .name, .int, .float, .string: return fail("syntax error: missing operator or comma")
        case .op(let o) where o.count >= 2 && o.hasSuffix("=") && !["==", "!=", "<=", ">="].contains(o):
            return unsupported("augmented assignment '\(o)'")
        case .op(let o): return unsupported("operator '\(o)'")
        case .indent: return fail("syntax error: unexpected indent")
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

    /// `test (',' test)* [',']`: a tuple when there is a comma (`x = 1, 2`, `return a, b`).
    mutating func testList() throws(ConfigError) -> PyExpr {
        let first = try test()
        guard isOp(",") else { return first }
        var items = [first]
        while isOp(",") {
            i += 1
            if tok.kind == .newline || isOp(";") || isOp("=") || isOp(":") { break }
            items.append(try test())
        }
        return PyExpr(kind: .tuple(items), line: first.line)
    }

    /// `or_test`; a conditional expression (`X if C else Y`, Python 2.5) is refused.
    mutating func test() throws(ConfigError) -> PyExpr {
        if isName("lambda") { throw unsupported("lambda") }
        return try boolean("or")
    }

    mutating func boolean(_ op: String) throws(ConfigError) -> PyExpr {
        let first = op == "or" ? try boolean("and") : try notTest()
        guard isName(op) else { return first }
        var items = [first]
        while isName(op) {
            i += 1
            items.append(op == "or" ? try boolean("and") : try notTest())
        }
        return PyExpr(kind: .boolean(op, items), line: first.line)
    }

    mutating func notTest() throws(ConfigError) -> PyExpr {
        guard isName("not") else { return try comparison() }
        let line = tok.line
        i += 1
        try enter()
        defer { depth -= 1 }
        return PyExpr(kind: .not(try notTest()), line: line)
    }

    mutating func comparison() throws(ConfigError) -> PyExpr {
        let first = try expression()
        var rest: [PyOperation] = []
        while true {
            let line = tok.line
            var op: String
            switch tok.kind {
            case .op(let o) where ["==", "!=", "<", "<=", ">", ">="].contains(o): op = o; i += 1
            case .name("in"): op = "in"; i += 1
            case .name("not") where tokens[i + 1].kind == .name("in"): op = "not in"; i += 2
            case .name("is"):
                i += 1
                op = "is"
                if isName("not") { i += 1; op = "is not" }
            default:
                return rest.isEmpty ? first : PyExpr(kind: .compare(first, rest), line: first.line)
            }
            rest.append(PyOperation(op: op, operand: try expression(), line: line))
        }
    }

    /// `arith_expr`: terms joined by `+` and `-`.
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
        let saved = depth
        defer { depth = saved }
        var e = try primary()
        // Trailers: calls, subscripts, attributes; each one a level of nesting.
        while true {
            let line = tok.line
            switch tok.kind {
            case .op("("):
                try enter()
                i += 1
                var args: [PyExpr] = []
                var keywords: [(String, PyExpr)] = []
                while !isOp(")") {
                    if isOp("*") || isOp("**") { throw unsupported("*args or **kwargs in a call") }
                    if case .name(let k) = tok.kind, tokens[i + 1].kind == .op("=") {
                        i += 2
                        if keywords.contains(where: { $0.0 == k }) { throw fail("syntax error: keyword argument '\(k)' repeated") }
                        keywords.append((k, try test()))
                    } else {
                        if !keywords.isEmpty { throw fail("syntax error: positional argument after a keyword argument") }
                        args.append(try test())
                    }
                    if isOp(",") { i += 1; continue }
                    if case .name("for") = tok.kind { throw unsupported("generator expression") }
                    guard isOp(")") else { throw fail("syntax error: expected ',' or ')' in the call") }
                }
                i += 1
                e = PyExpr(kind: .call(e, args, keywords), line: line)
            case .op("["):
                try enter()
                i += 1
                var parts: [PyExpr?] = [nil]
                var colons = 0
                while !isOp("]") {
                    if isOp(":") {
                        colons += 1
                        guard colons <= 2 else { throw fail("syntax error: too many ':' in a slice") }
                        parts.append(nil)
                        i += 1
                        continue
                    }
                    guard parts[parts.count - 1] == nil else { throw fail("syntax error: expected ']'") }
                    parts[parts.count - 1] = try test()
                }
                i += 1
                if colons == 0 {
                    guard let index = parts[0] else { throw fail("syntax error: empty subscript") }
                    e = PyExpr(kind: .index(e, index), line: line)
                } else {
                    e = PyExpr(kind: .slice(e, parts[0], parts[1], parts.count > 2 ? parts[2] : nil), line: line)
                }
            case .op("."):
                try enter()
                i += 1
                guard case .name(let n) = tok.kind else { throw fail("syntax error: expected a name after '.'") }
                i += 1
                e = PyExpr(kind: .attribute(e, n), line: line)
            case .op("**"): throw unsupported("operator '**'")
            default: return e
            }
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
            case "lambda": throw unsupported("lambda")
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
                items.append(try test())
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
                items.append(try test())
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
        case .newline, .eof, .indent, .dedent: throw fail("syntax error: missing value")
        case .op(let o): throw unsupported("operator '\(o)'")
        }
    }
}
