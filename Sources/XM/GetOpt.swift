// Python getopt.gnu_getopt semantics, as Xen 3.x xm parsed its arguments.

/// An option error in Python getopt's words ("option -x not recognized").
public struct GetOptError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// Splits `args` into options and positional parameters, GNU style (options may follow
/// parameters; `--` ends options). `short` is getopt's string ("lv", "f:" takes a value);
/// `long` names end with `=` when they take a value; long options match unique prefixes.
public func gnuGetopt(_ args: [String], short: String, long: [String]) throws(GetOptError) -> (options: [(String, String)], params: [String]) {
    var opts: [(String, String)] = []
    var params: [String] = []
    var i = 0
    let shortChars = Array(short)
    func takesValue(_ c: Character) -> Bool? {
        guard let k = shortChars.firstIndex(of: c) else { return nil }
        return k + 1 < shortChars.count && shortChars[k + 1] == ":"
    }
    while i < args.count {
        let a = args[i]
        if a == "--" { params += args[(i + 1)...]; break }
        if a.hasPrefix("--") {
            let body = a.dropFirst(2)
            let name = String(body.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)[0])
            let inline: String? = body.contains("=") ? String(body[body.index(after: body.firstIndex(of: "=")!)...]) : nil
            let exact = long.filter { $0 == name || $0 == name + "=" }
            let matches = exact.isEmpty ? long.filter { $0.hasPrefix(name) } : exact
            guard !matches.isEmpty else { throw GetOptError(description: "option --\(name) not recognized") }
            guard matches.count == 1 else { throw GetOptError(description: "option --\(name) not a unique prefix") }
            let m = matches[0]
            if m.hasSuffix("=") {
                let full = String(m.dropLast())
                if let v = inline { opts.append(("--" + full, v)) }
                else if i + 1 < args.count { i += 1; opts.append(("--" + full, args[i])) }
                else { throw GetOptError(description: "option --\(full) requires argument") }
            } else {
                if inline != nil { throw GetOptError(description: "option --\(m) must not have an argument") }
                opts.append(("--" + m, ""))
            }
        } else if a.hasPrefix("-") && a.count > 1 {
            var chars = Array(a.dropFirst())
            while !chars.isEmpty {
                let c = chars.removeFirst()
                guard let tv = takesValue(c) else { throw GetOptError(description: "option -\(c) not recognized") }
                if tv {
                    if !chars.isEmpty { opts.append(("-\(c)", String(chars))); chars = [] }
                    else if i + 1 < args.count { i += 1; opts.append(("-\(c)", args[i])) }
                    else { throw GetOptError(description: "option -\(c) requires argument") }
                } else {
                    opts.append(("-\(c)", ""))
                }
            }
        } else {
            params.append(a)
        }
        i += 1
    }
    return (opts, params)
}
