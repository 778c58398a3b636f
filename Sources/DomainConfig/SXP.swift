// SXP: Xen's S-expressions (xend-config.sxp, `xm list -l`, `xm create -n`, migration).

/// One S-expression value as Xen's `sxp` module reads and writes it.
///
/// A value is a bare symbol (`domain`, `8000`, `/dev/sda1`), a quoted string
/// (`'root=/dev/sda1 ro'`), or a list `( ... )`. Once read, Xen makes no difference
/// between a bare symbol and a quoted string; so here `==` and hashing compare their
/// text only (`.atom("x") == .string("x")`), and the case only records how the value
/// was written. The printer decides quoting from the text, as Xen's `sxp.show` did.
///
/// An *element* is a list whose first item is a symbol naming it: `(vbd (uname phy:sda1)
/// (dev sda1) (mode w))` is the element `vbd` with children `uname`, `dev`, `mode`.
public enum SXP: Sendable, Hashable, CustomStringConvertible,
                 ExpressibleByStringLiteral, ExpressibleByArrayLiteral, ExpressibleByIntegerLiteral {
    /// A bare symbol such as `domain`, `8000` or `phy:/dev/sda1`.
    case atom(String)
    /// A string that was quoted in the input (or must be quoted on output).
    case string(String)
    /// A parenthesised list.
    case list([SXP])

    public init(stringLiteral value: String) { self = .atom(value) }
    public init(arrayLiteral elements: SXP...) { self = .list(elements) }
    public init(integerLiteral value: Int) { self = .atom(String(value)) }

    /// A symbol holding the decimal form of `value`.
    public static func int(_ value: Int) -> SXP { .atom(String(value)) }

    /// The element `(name child...)`.
    public static func element(_ name: String, _ children: [SXP]) -> SXP {
        .list([.atom(name)] + children)
    }

    /// The element `(name value)`.
    public static func pair(_ name: String, _ value: SXP) -> SXP {
        .list([.atom(name), value])
    }

    // MARK: Equality on text

    public static func == (lhs: SXP, rhs: SXP) -> Bool {
        switch (lhs, rhs) {
        case (.list(let a), .list(let b)): return a == b
        case (.list, _), (_, .list): return false
        default: return lhs.text == rhs.text
        }
    }

    public func hash(into hasher: inout Hasher) {
        switch self {
        case .list(let items):
            hasher.combine(1)
            hasher.combine(items)
        case .atom(let s), .string(let s):
            hasher.combine(0)
            hasher.combine(s)
        }
    }

    // MARK: Accessors

    /// The text of a symbol or string; nil for a list.
    public var text: String? {
        switch self {
        case .atom(let s), .string(let s): return s
        case .list: return nil
        }
    }

    /// The items of a list; nil for a symbol or string.
    public var items: [SXP]? {
        if case .list(let items) = self { return items }
        return nil
    }

    /// Whether this is a list.
    public var isList: Bool { items != nil }

    /// The decimal integer a symbol or string holds (`"8000"` → 8000), else nil.
    public var intValue: Int? { text.flatMap { Int($0) } }

    /// The element name: the text of a list's first item; nil when this is not an
    /// element (Xen `sxp.name`).
    public var name: String? { items?.first?.text }

    /// The items after the element name (Xen `sxp.children`); empty for non-lists.
    public var children: [SXP] {
        guard let items, !items.isEmpty else { return [] }
        return Array(items.dropFirst())
    }

    /// The first child element named `name` (Xen `sxp.child`): `(vm (name a))`
    /// `.child("name")` is `(name a)`.
    public func child(_ name: String) -> SXP? {
        children.first { $0.name == name }
    }

    /// Every child element named `name`, in order (for repeated `(device ...)`).
    public func children(named name: String) -> [SXP] {
        children.filter { $0.name == name }
    }

    /// The value of the first child element named `name` (Xen `sxp.child_value`): the
    /// second item of that child. `(vm (memory 128))` `.childValue("memory")` is `128`.
    public func childValue(_ name: String) -> SXP? {
        guard let c = child(name)?.items, c.count >= 2 else { return nil }
        return c[1]
    }

    /// `childValue(name)?.text`.
    public func childText(_ name: String) -> String? { childValue(name)?.text }

    /// `childValue(name)?.intValue`.
    public func childInt(_ name: String) -> Int? { childValue(name)?.intValue }

    // MARK: Output

    /// The one-line form, as Xen's `sxp.show` writes it: `(vm (name foo) (memory 128))`.
    public var description: String {
        var out = ""
        SXPPrinter.show(self, into: &out)
        return out
    }

    /// The multi-line form that `xm list -l` and `xm create -n` printed (Xen's
    /// `PrettyPrint.prettyprint`, 80 columns): a list that fits in the remaining width is
    /// printed on one line; otherwise its name follows `(`, every further item goes on its
    /// own line indented four columns past the `(`, and `)` closes on a line of its own
    /// at the column of the `(`. No trailing newline.
    public func prettyPrinted(width: Int = 80) -> String {
        var out = ""
        SXPPrinter.pretty(self, column: 0, width: width, into: &out)
        return out
    }
}

/// One top-level form of an SXP file and the 1-based line it starts on.
public struct SXPForm: Sendable, Hashable {
    public var value: SXP
    public var line: Int
    public init(value: SXP, line: Int) {
        self.value = value
        self.line = line
    }
}

extension SXP {
    /// Parses text holding exactly one S-expression (surrounding comments and blank
    /// space allowed).
    ///
    /// - Throws: `ConfigError` (naming `file` and the line) for an unterminated string or
    ///   list, an unexpected `)`, a control character, lists nested more than 100 deep
    ///   (also naming the outermost list's name as the key), no value, or more than one value.
    public static func parse(_ text: String, file: String = "<sxp>") throws(ConfigError) -> SXP {
        let forms = try parseForms(text, file: file)
        guard let first = forms.first else {
            throw ConfigError(file: file, line: 1, message: "no S-expression found")
        }
        if forms.count > 1 {
            throw ConfigError(file: file, line: forms[1].line,
                              message: "more than one S-expression (expected one)")
        }
        return first.value
    }

    /// Parses a sequence of S-expressions, as in `xend-config.sxp`.
    ///
    /// Syntax (Xen `sxp.Parser`): `#` starts a comment to end of line; `(`/`)` delimit
    /// lists; `'...'` and `"..."` are strings with the escapes `\a \b \t \n \v \f \r \\
    /// \' \"`, `\xHH` and `\OOO` (an unknown escape keeps its backslash); anything else
    /// up to blank space, a parenthesis or `#` is a bare symbol.
    ///
    /// - Throws: `ConfigError` as for `parse(_:file:)`.
    public static func parseForms(_ text: String, file: String = "<sxp>") throws(ConfigError) -> [SXPForm] {
        var parser = SXPParser(bytes: Array(text.utf8), file: file)
        return try parser.parseAll()
    }

    /// Reads and parses a file of S-expressions.
    ///
    /// - Throws: `ConfigError` when the file cannot be read or does not parse.
    public static func parseFile(_ path: String) throws(ConfigError) -> [SXPForm] {
        try parseForms(readTextFile(path), file: path)
    }
}
