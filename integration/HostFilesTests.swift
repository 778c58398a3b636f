// What a host gets besides the binaries, checked against the code it describes: the README's
// two commands against the Makefile and .ci/run, the man pages against xm's own help and
// the configuration parsers' key tables (a page that drifts from the code fails here), and
// `make install-tree` (what `make install` runs after its build) laying everything out.
import DomainConfig
import Foundation
import Testing

private func text(_ rel: String) throws -> String {
    try String(contentsOf: Env.root.appendingPathComponent(rel), encoding: .utf8)
}

/// A man page's source with troff's escaped minus (`\-`) and font changes removed.
private func plain(_ s: some StringProtocol) -> String {
    var t = String(s).replacingOccurrences(of: "\\-", with: "-").replacingOccurrences(of: "\\e", with: "\\")
    for f in ["\\fB", "\\fI", "\\fR", "\\fP"] { t = t.replacingOccurrences(of: f, with: "") }
    return t
}

/// The entries of a man page: for each `.TP` whose tag line is `.B TEXT`, in a section whose
/// title satisfies `section`, the tag's text (escapes removed, quotes stripped).
private func entries(_ page: String, inSections section: (String) -> Bool) -> [String] {
    var out: [String] = []
    var current = ""
    let lines = page.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    for (i, l) in lines.enumerated() {
        if l.hasPrefix(".SH ") { current = plain(l.dropFirst(4)).trimmingCharacters(in: CharacterSet(charsetIn: "\" ")) }
        guard l == ".TP", i + 1 < lines.count, lines[i + 1].hasPrefix(".B "), section(current) else { continue }
        var tag = plain(lines[i + 1].dropFirst(3)).trimmingCharacters(in: .whitespaces)
        if tag.hasPrefix("\""), tag.hasSuffix("\""), tag.count > 1 { tag = String(tag.dropFirst().dropLast()) }
        out.append(tag)
    }
    return out
}

private extension CharacterSet {
    init(charsetIn s: String) { self.init(charactersIn: s) }
}

/// The body of section `title` (up to the next `.SH`).
private func section(_ page: String, _ title: String) -> String {
    guard let r = page.range(of: "\n.SH \(title)\n") else { return "" }
    let rest = page[r.upperBound...]
    return String(rest[..<(rest.range(of: "\n.SH ")?.lowerBound ?? rest.endIndex)])
}

/// `man -l` on a page: nil when man-db is missing (then the test skips).
private func manRender(_ path: String) throws -> RunResult? {
    guard FileManager.default.isExecutableFile(atPath: "/usr/bin/man") else { return nil }
    setenv("MANWIDTH", "80", 1)
    defer { unsetenv("MANWIDTH") }
    return try run("/usr/bin/man", ["-l", path], timeout: 30)
}

@Suite(.serialized) struct HostFilesTests {
    /// The README's first screen holds exactly two commands, `make run` and `make test`; the
    /// Makefile's run and test targets first run `deps`, and .ci/run runs `make deps` and then
    /// the README's test command, and no other make command.
    @Test func readmeCommandsAreTheOnesMakeAndCIUse() throws {
        let readme = try text("README.md").split(separator: "\n", omittingEmptySubsequences: false)
        let firstScreen = readme.prefix { !$0.hasPrefix("## ") }
        #expect(firstScreen.count <= 24, "the README's part before its first section is \(firstScreen.count) lines, more than a screen")
        let commands = firstScreen.filter { $0.hasPrefix("    ") }.map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(commands == ["make run", "make test"], "commands on the README's first screen: \(commands)")
        guard commands.count == 2 else { return }

        let makefile = try text("Makefile").split(separator: "\n").map(String.init)
        for cmd in commands {
            let target = String(cmd.dropFirst("make ".count))
            let rule = makefile.first { $0.hasPrefix(target + ":") }
            let prereqs = rule.map { $0.dropFirst(target.count + 1).split(separator: " ").map(String.init) } ?? []
            #expect(prereqs.first == "deps", "Makefile `\(target):` must run deps first; it reads: \(rule ?? "missing")")
        }
        #expect(makefile.contains { $0.hasPrefix("deps:") }, "the Makefile has no deps target")

        let ci = try text(".ci/run").split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.hasPrefix("#") && !$0.isEmpty }
        let makeLines = ci.filter { $0.hasPrefix("make ") }
        #expect(makeLines == ["make deps", commands[1]], ".ci/run's make commands: \(makeLines)")
    }

    /// `man -l` renders each page, and groff finds nothing to warn about.
    @Test func manPagesRender() throws {
        for page in ["xm.1", "xmdomain.cfg.5", "xend-config.sxp.5"] {
            let path = Env.root.appendingPathComponent("services/man/" + page).path
            guard let r = try manRender(path) else { _ = skip("man-db is not installed (make deps)"); return }
            #expect(r.status == 0, "man -l \(page): \(r.stderr)")
            #expect(r.stdout.contains("NAME") && r.stdout.contains("SEE ALSO"), "man -l \(page) printed: \(r.stdout.prefix(300))")
            #expect(r.stderr.isEmpty, "man -l \(page): \(r.stderr)")
            let g = try run("/usr/bin/groff", ["-man", "-ww", "-z", path])
            #expect(g.status == 0 && g.stderr.isEmpty, "groff warns about \(page): \(g.stderr)")
        }
    }

    /// xm(1) has one entry per subcommand of `xm help --long`, no other, and names every
    /// option of each subcommand's `xm help COMMAND`.
    @Test func xmPageMatchesXmHelp() throws {
        let help = try run(Env.binary("xm"), ["help", "--long"])
        #expect(help.status == 0)
        let commands = help.stdout.split(separator: "\n").filter { $0.hasPrefix(" ") && !$0.hasPrefix("  ") }
            .compactMap { $0.split(separator: " ").first.map(String.init) }
        #expect(commands.count > 10, "xm help --long: \(help.stdout)")
        let page = try text("services/man/xm.1")
        // Options are entries too (nested, tags starting with a minus).
        let documented = entries(page) { $0.hasSuffix("SUBCOMMANDS") }.compactMap { $0.split(separator: " ").first.map(String.init) }
            .filter { !$0.hasPrefix("-") }
        #expect(Set(commands).subtracting(documented).sorted() == [], "xm subcommands missing from xm.1")
        #expect(Set(documented).subtracting(commands).sorted() == [], "xm.1 documents subcommands xm does not have")
        #expect(documented.count == Set(documented).count, "xm.1 documents a subcommand twice: \(documented)")
        let body = plain(page)
        for c in commands {
            let usage = try run(Env.binary("xm"), ["help", c]).stdout
            let options = usage.split(separator: "\n").filter { $0.hasPrefix("  -") }.flatMap { line in
                line.split(separator: " ").map(String.init).filter { $0.hasPrefix("--") }.map {
                    String($0.prefix { $0 != "=" && $0 != "," })
                }
            }
            for o in options { #expect(body.contains(o), "xm.1 does not mention \(c)'s option \(o)") }
        }
    }

    /// xend-config.sxp(5) describes exactly the keys xend reads, each with the default that
    /// services/xend-config.sxp shows.
    @Test func xendConfigPageMatchesXendConfig() throws {
        let page = entries(try text("services/man/xend-config.sxp.5")) { _ in true }.filter { $0.hasPrefix("(") }
        func pairs(_ forms: [String]) -> [String: String] {
            Dictionary(forms.map { f -> (String, String) in
                let inner = f.dropFirst().dropLast()
                let key = inner.prefix { $0 != " " }
                return (String(key), String(inner.dropFirst(key.count)).trimmingCharacters(in: .whitespaces))
            }, uniquingKeysWith: { a, _ in a })
        }
        let documented = pairs(page)
        let sample = pairs(try text("services/xend-config.sxp").split(separator: "\n")
            .filter { $0.hasPrefix("#(") && $0.hasSuffix(")") }.map { String($0.dropFirst()) })
        let known = Set(XendConfig.knownKeys)
        #expect(known.subtracting(documented.keys).sorted() == [], "xend keys missing from xend-config.sxp.5")
        #expect(Set(documented.keys).subtracting(known).sorted() == [], "xend-config.sxp.5 documents keys xend does not read")
        #expect(known.subtracting(sample.keys).sorted() == [], "xend keys missing from services/xend-config.sxp")
        for (k, v) in sample where documented[k] != nil {
            #expect(documented[k] == v, "default of \(k): xend-config.sxp.5 says \(documented[k]!), services/xend-config.sxp says \(v)")
        }
    }

    /// xmdomain.cfg(5) has one entry per key the parser knows, and names every key it
    /// accepts and ignores.
    @Test func xmdomainPageMatchesParser() throws {
        let page = try text("services/man/xmdomain.cfg.5")
        let documented = entries(page) { $0.hasSuffix("KEYS") }
        let known = DomainConfiguration.knownKeys
        #expect(known.subtracting(documented).sorted() == [], "config keys missing from xmdomain.cfg.5")
        #expect(Set(documented).subtracting(known).sorted() == [], "xmdomain.cfg.5 documents keys the parser does not know")
        #expect(documented.count == Set(documented).count, "xmdomain.cfg.5 documents a key twice")
        let ignored = Set(section(page, "IGNORED").split(separator: "\n").filter { $0.hasPrefix(".BR ") }
            .compactMap { $0.split(separator: " ").dropFirst().first.map { plain($0) } })
        #expect(DomainConfiguration.ignoredKeys.subtracting(ignored).sorted() == [], "ignored keys missing from xmdomain.cfg.5")
        #expect(ignored.subtracting(DomainConfiguration.ignoredKeys).sorted() == [], "xmdomain.cfg.5 lists as ignored keys the parser does not ignore")
    }

    /// `make install-tree` (the second half of `make install`) lays out binaries, manifests,
    /// host scripts, init scripts with the install paths filled in, systemd units, settings
    /// and man pages under DESTDIR, keeps settings already there, and the pages render.
    @Test func installLaysOutEverything() throws {
        let dest = NSTemporaryDirectory() + "xenith-install-\(getpid())"
        try? FileManager.default.removeItem(atPath: dest)
        defer { try? FileManager.default.removeItem(atPath: dest) }
        // Run from `make test`, make's own variables (PREFIX=... on its command line) would
        // reach this make through MAKEFLAGS: leave them out.
        let make = ["-u", "MAKEFLAGS", "-u", "MFLAGS", "-u", "MAKELEVEL", "/usr/bin/make", "-C", Env.root.path,
                    "--no-print-directory", "install-tree", "BUILT=\(Env.binDir.path)", "DESTDIR=\(dest)", "PREFIX=/usr"]
        let r = try run("/usr/bin/env", make, timeout: 120)
        #expect(r.status == 0, "make install-tree: \(r.stderr)")
        let fm = FileManager.default
        func executable(_ p: String) -> Bool { fm.isExecutableFile(atPath: dest + p) }
        // Every executable product of Package.swift.
        let products = try text("Package.swift").split(separator: "\n").compactMap { l -> String? in
            guard let r = l.range(of: ".executable(name: \"") else { return nil }
            return String(l[r.upperBound...].prefix { $0 != "\"" })
        }
        #expect(products.contains("xm") && products.contains("xend"), "products: \(products)")
        for b in products {
            #expect(executable("/usr/bin/" + b), "missing /usr/bin/\(b)")
        }
        let manifests = (try? fm.contentsOfDirectory(atPath: dest + "/usr/share/xenith/manifests")) ?? []
        #expect(manifests.contains("blkback.manifest") && manifests.contains("netback.manifest"), "manifests: \(manifests)")
        for s in ["network-bridge", "vif-bridge", "vif-route", "vif-nat"] {
            #expect(executable("/usr/share/xenith/scripts/" + s), "missing script \(s)")
        }
        #expect(fm.fileExists(atPath: dest + "/usr/share/xenith/scripts/xen-network-common.sh"))
        for s in ["xend", "xendomains"] {
            #expect(executable("/etc/init.d/" + s), "missing /etc/init.d/\(s)")
            let body = readText(dest + "/etc/init.d/" + s)
            #expect(body.contains("XENITH_BINDIR=${XENITH_BINDIR:-/usr/bin}"), "/etc/init.d/\(s) does not point at /usr/bin")
            #expect(try run("/bin/sh", ["-n", dest + "/etc/init.d/" + s]).status == 0)
        }
        let xendUnit = readText(dest + "/usr/lib/systemd/system/xend.service")
        #expect(xendUnit.contains("ExecStart=/usr/bin/xend start") && !xendUnit.contains("@"), "xend.service: \(xendUnit)")
        let domUnit = readText(dest + "/usr/lib/systemd/system/xendomains.service")
        #expect(domUnit.contains("ExecStop=/etc/init.d/xendomains stop") && !domUnit.contains("@"), "xendomains.service: \(domUnit)")
        // systemd's own reading of the units: no unknown key or bad value (commands and man
        // pages that do not exist on this host, and the missing targets under --root, aside).
        if fm.isExecutableFile(atPath: "/usr/bin/systemd-analyze") {
            let v = try run("/usr/bin/systemd-analyze", ["verify", "--root=\(dest)", dest + "/usr/lib/systemd/system/xend.service",
                                                         dest + "/usr/lib/systemd/system/xendomains.service"])
            let bad = (v.stdout + v.stderr).split(separator: "\n").filter {
                $0.contains("Unknown") || $0.contains("nvalid") || $0.contains("bad unit file") || $0.contains("Failed to parse")
                    || $0.contains("Neither a valid")
            }
            #expect(bad.isEmpty, "systemd-analyze verify: \(bad)")
        }
        #expect(fm.fileExists(atPath: dest + "/etc/default/xendomains"))
        #expect(fm.fileExists(atPath: dest + "/etc/xen/xend-config.sxp"))
        var isDir: ObjCBool = false
        #expect(fm.fileExists(atPath: dest + "/etc/xen/auto", isDirectory: &isDir) && isDir.boolValue)
        let pages = ["/usr/share/man/man1/xm.1", "/usr/share/man/man5/xmdomain.cfg.5", "/usr/share/man/man5/xend-config.sxp.5"]
        for p in pages {
            #expect(fm.fileExists(atPath: dest + p), "missing \(p)")
            if let m = try manRender(dest + p) { #expect(m.status == 0 && m.stdout.contains("NAME"), "man -l \(p): \(m.stderr)") }
        }

        // A second install keeps the host's edited settings.
        try "(loglevel INFO)\n".write(toFile: dest + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8)
        let again = try run("/usr/bin/env", make, timeout: 120)
        #expect(again.status == 0, "make install-tree again: \(again.stderr)")
        #expect(again.stdout.contains("kept \(dest)/etc/xen/xend-config.sxp"), "\(again.stdout)")
        #expect((try? String(contentsOfFile: dest + "/etc/xen/xend-config.sxp", encoding: .utf8)) == "(loglevel INFO)\n")
    }
}
