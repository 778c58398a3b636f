// Reading a domain configuration file into `DomainConfiguration`.

extension DomainConfiguration {
    /// The name errors use for values given on the command line.
    public static let commandLineFile = "<command line>"

    /// Splits command-line `KEY=VALUE` arguments (`vmid=1`, `memory=512`) at the first `=`.
    ///
    /// - Throws: `ConfigError` (file `<command line>`, line = 1-based argument position)
    ///   for an argument without `=` or with an empty or non-identifier key.
    public static func parseArguments(_ args: [String]) throws(ConfigError) -> [(key: String, value: String)] {
        var out: [(key: String, value: String)] = []
        for (i, a) in args.enumerated() {
            guard let eq = a.firstIndex(of: "=") else {
                throw ConfigError(file: commandLineFile, line: i + 1, message: "expected KEY=VALUE, found '\(a)'")
            }
            let k = String(a[..<eq]).trimmingSpace()
            let v = String(a[a.index(after: eq)...]).trimmingSpace()
            guard let f = k.first, f == "_" || (f.isASCII && f.isLetter),
                  k.allSatisfy({ $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }) else {
                throw ConfigError(file: commandLineFile, line: i + 1, message: "bad variable name '\(k)' in '\(a)'")
            }
            out.append((k, v))
        }
        return out
    }

    /// Reads a domain configuration file's text: runs it as Python (the subset of
    /// ConfigScript.swift, bounded by ConfigScriptLimits.swift) and reads the keys it set.
    ///
    /// `arguments` are command-line `KEY=VALUE` settings (`["vmid=1"]`), bound before the
    /// file runs. A variable the file declares with `xm_vars.var` gets the text given (as
    /// Xen's xm did; its check function converts it); any other name gets an integer for
    /// digits and a string otherwise; a known key is converted like the file's text would
    /// be (`memory=512` → 512 MiB). A command-line value wins over the file's own
    /// module-level assignments to that name when they do not read it (`vmid = 1` is a
    /// default and is skipped; `vmid = int(vmid)` runs). `xm_vars.check()` calls each
    /// declared variable's check function with its name and value (None when not given)
    /// and binds what it returns.
    ///
    /// A module-level name the file binds to data that is neither a known key, nor a key
    /// xm accepted (`ignoredKeys`, warned about by name), nor read by any expression, nor a
    /// `for` loop variable, is an unknown key. Functions the file defines are not keys.
    ///
    /// - Parameters:
    ///   - file: the name used in errors and warnings.
    ///   - rng: source of random MAC addresses for vifs that give none.
    /// - Throws: `ConfigError` naming file, line and (where one applies) key: syntax errors
    ///   (unterminated string, bad indentation, `;;`...), "nesting too deep" past 100 levels
    ///   of brackets, unary operators or nested lists, or 20 nested blocks, a `%` format
    ///   width or precision above 4096, "unsupported Python: ..." (imports, `open()`,
    ///   classes, lambdas, dictionaries...), undefined names, Python's errors
    ///   (`ValueError: ...`, `TypeError: ...`, from `raise` or a built-in; inside a check
    ///   function the key is the variable), a `while` loop past 100000 iterations, more than
    ///   50 nested calls, 2000000 steps, 5 seconds or 256 MiB built in all, a string above
    ///   16 MiB or a list above 65536 elements, unknown keys, bad values (memory as text,
    ///   bad disk or vif spec, duplicate vdev, bad MAC, vcpus < 1...), and missing `name`
    ///   or (for the linux builder without a bootloader) `kernel`.
    public init<G: RandomNumberGenerator>(parsing text: String, file: String = "<config>",
                                          arguments: [String] = [], using rng: inout G) throws(ConfigError) {
        let args = try DomainConfiguration.parseArguments(arguments)
        var reader = DomainConfigReader(file: file)
        self = try reader.read(text: text, arguments: args, rng: &rng)
    }

    /// `init(parsing:file:arguments:using:)` with the system random generator.
    public init(parsing text: String, file: String = "<config>", arguments: [String] = []) throws(ConfigError) {
        var g = SystemRandomNumberGenerator()
        try self.init(parsing: text, file: file, arguments: arguments, using: &g)
    }

    /// As `init(parsing:file:arguments:)`, with the command-line settings as a dictionary
    /// (errors about them report line 0).
    public init(parsing text: String, file: String = "<config>", overrides: [String: String]) throws(ConfigError) {
        var g = SystemRandomNumberGenerator()
        var reader = DomainConfigReader(file: file)
        let args = overrides.keys.sorted().map { (key: $0, value: overrides[$0]!) }
        self = try reader.read(text: text, arguments: args, rng: &g, lineOffset: -1)
    }

    /// The variables a configuration file declares with `xm_vars.var(NAME, use=TEXT,
    /// check=F)`, in order: what `xm create --help_config FILE` lists (Xen 3.0
    /// tools/python/xen/xm/help.py).
    ///
    /// The file runs as for Xen's help: `xm_vars.check()` checks nothing, and a runtime
    /// error (a variable the file needs is not given) ends the run quietly with what was
    /// declared so far. `arguments` are command-line `KEY=VALUE` settings, as for
    /// `init(parsing:file:arguments:)`.
    ///
    /// - Throws: `ConfigError` for syntax errors and malformed `arguments` only.
    public static func declaredVariables(parsing text: String, file: String = "<config>",
                                         arguments: [String] = []) throws(ConfigError) -> [ConfigVariable] {
        let args = try parseArguments(arguments)
        return try DomainConfigReader(file: file).declaredVariables(text: text, arguments: args)
    }

    /// Reads a domain configuration file from disk.
    ///
    /// - Throws: `ConfigError` when the file cannot be read, or as `init(parsing:...)`.
    public init(contentsOfFile path: String, arguments: [String] = []) throws(ConfigError) {
        try self.init(parsing: readTextFile(path), file: path, arguments: arguments)
    }
}

struct DomainConfigReader {
    let file: String

    struct Binding {
        var value: PyValue
        var line: Int
        var elementLines: [Int]
        var file: String
        var fromCommandLine: Bool
    }

    init(file: String) { self.file = file }

    /// The file's statements.
    static func parse(_ text: String, file: String) throws(ConfigError) -> [PyStatement] {
        var lexer = PyLexer(text, file: file)
        let tokens = try lexer.run()
        var parser = PyParser(tokens: tokens, file: file)
        return try parser.program()
    }

    /// An interpreter with the command-line settings bound, and their bindings.
    func start(_ arguments: [(key: String, value: String)], lineOffset: Int) -> (PyInterpreter, [String: Binding]) {
        var interpreter = PyInterpreter(file: file)
        var bindings: [String: Binding] = [:]
        for (i, a) in arguments.enumerated() {
            let v: PyValue
            if DomainConfiguration.knownKeys.contains(a.key) || DomainConfiguration.ignoredKeys.contains(a.key) {
                v = .string(a.value)
            } else if let n = Int(a.value) {
                v = .int(n)
            } else {
                v = .string(a.value)
            }
            interpreter.globals[a.key] = v
            interpreter.commandLine[a.key] = a.value
            let line = lineOffset < 0 ? 0 : i + 1
            bindings[a.key] = Binding(value: v, line: line, elementLines: [], file: DomainConfiguration.commandLineFile,
                                      fromCommandLine: true)
        }
        return (interpreter, bindings)
    }

    /// Runs the file for `xm create --help_config`: the variables it declares.
    func declaredVariables(text: String, arguments: [(key: String, value: String)]) throws(ConfigError) -> [ConfigVariable] {
        let statements = try DomainConfigReader.parse(text, file: file)
        var (interpreter, _) = start(arguments, lineOffset: 0)
        interpreter.helpMode = true
        // As Xen's help run: the file may stop early (a variable it needs is not given);
        // what it declared before that is the answer.
        do { try interpreter.run(program: statements) } catch {}
        return interpreter.declared.map(\.variable)
    }

    mutating func read<G: RandomNumberGenerator>(text: String, arguments: [(key: String, value: String)],
                                                rng: inout G, lineOffset: Int = 0) throws(ConfigError) -> DomainConfiguration {
        let statements = try DomainConfigReader.parse(text, file: file)
        var (eval, bindings) = start(arguments, lineOffset: lineOffset)
        try eval.run(program: statements)
        var referenced = eval.referenced
        PyInterpreter.namesRead(statements, into: &referenced)
        for (name, value) in eval.globals where value.isData {
            if eval.boundByFile.contains(name) {
                bindings[name] = Binding(value: value, line: eval.lines[name] ?? 1, elementLines: eval.elementLines[name] ?? [],
                                         file: file, fromCommandLine: false)
            } else {
                bindings[name]?.value = value
            }
        }
        for (name, value) in eval.globals where !value.isData && eval.boundByFile.contains(name) {
            bindings[name] = nil
        }

        var cfg = DomainConfiguration(name: "")
        var sawName = false
        var conv = Converter(file: file)
        let ordered = bindings.sorted { a, b in
            if a.value.fromCommandLine != b.value.fromCommandLine { return a.value.fromCommandLine }
            return (a.value.line, a.key) < (b.value.line, b.key)
        }
        // Unknown keys first: they are the likeliest typo.
        for (key, b) in ordered where !b.fromCommandLine {
            if DomainConfiguration.knownKeys.contains(key) || referenced.contains(key) || eval.loopVariables.contains(key) { continue }
            if DomainConfiguration.ignoredKeys.contains(key) {
                cfg.warnings.append(ConfigWarning(file: b.file, line: b.line, key: key,
                                                  message: "accepted by xm, ignored by Xenith"))
                continue
            }
            throw ConfigError(file: b.file, line: b.line, key: key, message: "unknown key")
        }
        for (key, b) in ordered {
            if DomainConfiguration.knownKeys.contains(key) {
                if key == "name" { sawName = true }
                try conv.apply(key: key, binding: b, to: &cfg, rng: &rng)
                if let w = cfg.unusedWarning(key, file: b.file, line: b.line) { cfg.warnings.append(w) }
            } else if b.fromCommandLine && !referenced.contains(key) {
                cfg.warnings.append(ConfigWarning(file: b.file, line: b.line, key: key,
                    message: DomainConfiguration.ignoredKeys.contains(key)
                        ? "accepted by xm, ignored by Xenith" : "set on the command line but not used by the file"))
            }
        }
        try conv.finish(&cfg, bindings: bindings, sawName: sawName, rng: &rng)
        return cfg
    }
}

struct Converter {
    let file: String
    var vdevLines: [String: Int] = [:]
    var nics: Int?

    init(file: String) { self.file = file }

    typealias Binding = DomainConfigReader.Binding

    func fail(_ b: Binding, _ key: String, _ message: String, line: Int? = nil) -> ConfigError {
        ConfigError(file: b.file, line: line ?? b.line, key: key, message: message)
    }

    func describe(_ v: PyValue) -> String {
        switch v {
        case .string(let s): return "'\(s)'"
        default: return "\(v.typeName) \(v.shortRepr)"
        }
    }

    func string(_ b: Binding, _ key: String) throws(ConfigError) -> String? {
        switch b.value {
        case .string(let s): return s.isEmpty ? nil : s
        case .none: return nil
        default: throw fail(b, key, "expected a string, found \(describe(b.value))")
        }
    }

    func int(_ b: Binding, _ key: String, _ range: ClosedRange<Int>, _ unit: String) throws(ConfigError) -> Int? {
        let n: Int
        switch b.value {
        case .int(let i): n = i
        case .none: return nil
        case .string(let s):
            guard let i = Int(s.trimmingSpace()) else {
                throw fail(b, key, "expected an integer (\(unit)), found text '\(s)'")
            }
            n = i
        default: throw fail(b, key, "expected an integer (\(unit)), found \(describe(b.value))")
        }
        guard range.contains(n) else {
            throw fail(b, key, "\(n) is out of range \(range.lowerBound)...\(range.upperBound) (\(unit))")
        }
        return n
    }

    func bool(_ b: Binding, _ key: String) throws(ConfigError) -> Bool? {
        switch b.value {
        case .int(let i): return i != 0
        case .bool(let v): return v
        case .none: return nil
        case .string(let s):
            if let v = XendConfig.parseBool(s) { return v }
            throw fail(b, key, "expected 0 or 1, found '\(s)'")
        default: throw fail(b, key, "expected 0 or 1, found \(describe(b.value))")
        }
    }

    func stringList(_ b: Binding, _ key: String) throws(ConfigError) -> [(String, Int)] {
        var items: [PyValue]
        switch b.value {
        case .list(let l), .tuple(let l): items = l
        case .string(let s): items = s.isEmpty ? [] : [.string(s)]
        case .none: items = []
        default: throw fail(b, key, "expected a list of strings, found \(describe(b.value))")
        }
        var out: [(String, Int)] = []
        for (i, v) in items.enumerated() {
            let line = i < b.elementLines.count ? b.elementLines[i] : b.line
            guard case .string(let s) = v else {
                throw fail(b, key, "expected a string in the list, found \(describe(v))", line: line)
            }
            out.append((s, line))
        }
        return out
    }

    func choice<T: RawRepresentable>(_ b: Binding, _ key: String, _ type: T.Type, _ allowed: [String])
        throws(ConfigError) -> T? where T.RawValue == String {
        guard let s = try string(b, key) else { return nil }
        guard let v = T(rawValue: s) else {
            throw fail(b, key, "expected one of \(allowed.joined(separator: ", ")), found '\(s)'")
        }
        return v
    }

    static func validCPUList(_ s: String) -> Bool {
        for item in s.split(separator: ",", omittingEmptySubsequences: false) {
            var t = Substring(String(item).trimmingSpace())
            if t.hasPrefix("^") { t = t.dropFirst() }
            let ends = t.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(ends.count) else { return false }
            let nums = ends.compactMap { Int($0) }
            guard nums.count == ends.count, nums.allSatisfy({ (0...4095).contains($0) }) else { return false }
            if nums.count == 2 && nums[0] > nums[1] { return false }
        }
        return true
    }

    static func canonicalUUID(_ s: String) -> String? {
        let lower = s.lowercased()
        let groups = lower.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.map(\.count) == [8, 4, 4, 4, 12],
              groups.allSatisfy({ $0.allSatisfy(\.isHexDigit) }) else { return nil }
        return lower
    }

    mutating func apply<G: RandomNumberGenerator>(key: String, binding b: Binding, to c: inout DomainConfiguration,
                                                  rng: inout G) throws(ConfigError) {
        let lifecycle = LifecycleAction.allCases.map(\.rawValue)
        switch key {
        case "name":
            guard let n = try string(b, key) else { throw fail(b, key, "empty name") }
            guard !n.contains(where: { $0.isNewline || $0 == "\0" }), n.utf8.count <= 255 else {
                throw fail(b, key, "a name is one line of at most 255 bytes")
            }
            c.name = n
        case "uuid":
            guard let s = try string(b, key) else { return }
            guard let u = Converter.canonicalUUID(s) else {
                throw fail(b, key, "bad UUID '\(s)' (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
            }
            c.uuid = u
        case "memory": if let v = try int(b, key, 1...(1 << 22), "MiB") { c.memory = v }
        case "maxmem": c.maxmem = try int(b, key, 1...(1 << 22), "MiB")
        case "vcpus":
            if case .int(let v) = b.value, v < 1 { throw fail(b, key, "vcpus must be at least 1, found \(v)") }
            if let v = try int(b, key, 1...255, "vCPU count") { c.vcpus = v }
        case "maxvcpus": c.maxvcpus = try int(b, key, 1...255, "vCPU count")
        case "cpu_weight": c.cpuWeight = try int(b, key, 1...65535, "credit-scheduler weight")
        case "cpu_cap": c.cpuCap = try int(b, key, 0...25500, "percent of one CPU")
        case "cpus":
            var text: String?
            switch b.value {
            case .int(let i): text = String(i)
            case .list(let l), .tuple(let l):
                var parts: [String] = []
                for v in l {
                    switch v {
                    case .int(let i): parts.append(String(i))
                    case .string(let s): parts.append(s)
                    default: throw fail(b, key, "bad CPU list element \(describe(v))")
                    }
                }
                text = parts.joined(separator: ",")
            default: text = try string(b, key)
            }
            if let t = text {
                guard Converter.validCPUList(t) else {
                    throw fail(b, key, "bad CPU list '\(t)' (expected e.g. \"0-3,5,^1\")")
                }
                c.cpus = t
            }
        case "builder":
            guard let s = try string(b, key) else { return }
            switch s {
            case "linux": c.builder = .linux
            case "hvm", "vmx": c.builder = .hvm
            default: throw fail(b, key, "expected linux or hvm, found '\(s)'")
            }
        case "kernel": c.kernel = try string(b, key)
        case "ramdisk": c.ramdisk = try string(b, key)
        case "extra": c.extra = try string(b, key)
        case "root": c.root = try string(b, key)
        case "cmdline": c.cmdline = try string(b, key)
        case "bootloader": c.bootloader = try string(b, key)
        case "bootargs": c.bootloaderArgs = try string(b, key)
        case "ip": c.ip = try string(b, key)
        case "netmask": c.netmask = try string(b, key)
        case "gateway": c.gateway = try string(b, key)
        case "hostname": c.hostname = try string(b, key)
        case "interface": c.interface = try string(b, key) ?? "eth0"
        case "nfs_server": c.nfsServer = try string(b, key)
        case "nfs_root": c.nfsRoot = try string(b, key)
        case "dhcp":
            switch b.value {
            case .string("dhcp"): c.dhcp = true
            case .string("off"), .string(""), .none: c.dhcp = false
            default: throw fail(b, key, "expected 'dhcp' or 'off', found \(describe(b.value))")
            }
        case "on_poweroff": if let v = try choice(b, key, LifecycleAction.self, lifecycle) { c.onPoweroff = v }
        case "on_reboot": if let v = try choice(b, key, LifecycleAction.self, lifecycle) { c.onReboot = v }
        case "on_crash": if let v = try choice(b, key, LifecycleAction.self, lifecycle) { c.onCrash = v }
        case "engine":
            if let v = try choice(b, key, DomainEngine.self, DomainEngine.allCases.map(\.rawValue)) { c.engine = v }
        case "disk":
            for (spec, line) in try stringList(b, key) {
                let d: DiskSpec
                do { d = try DiskSpec(parsing: spec) } catch {
                    throw fail(b, key, "bad disk spec: \(error.message)", line: line)
                }
                if let first = vdevLines[d.vdev] {
                    throw fail(b, key, "duplicate vdev '\(d.vdev)' (already used at line \(first))", line: line)
                }
                vdevLines[d.vdev] = line
                c.disks.append(d)
            }
        case "vif":
            for (spec, line) in try stringList(b, key) {
                let v: VifSpec
                do { v = try VifSpec(parsing: spec, using: &rng) } catch {
                    throw fail(b, key, "bad vif spec: \(error.message)", line: line)
                }
                if !v.macGenerated, c.vifs.contains(where: { $0.mac == v.mac }) {
                    throw fail(b, key, "duplicate MAC address \(v.mac)", line: line)
                }
                c.vifs.append(v)
            }
        case "pci":
            for (spec, line) in try stringList(b, key) {
                let p: PciSpec
                do { p = try PciSpec(parsing: spec) } catch {
                    throw fail(b, key, "bad pci spec: \(error.message)", line: line)
                }
                if c.pciDevices.contains(where: { $0.address == p.address }) {
                    throw fail(b, key, "PCI device \(p.address) given twice", line: line)
                }
                if let s = p.guestSlot, c.pciDevices.contains(where: { $0.guestSlot == s }) {
                    throw fail(b, key, "guest slot \(s) given twice", line: line)
                }
                c.pciDevices.append(p)
            }
        case "nics": nics = try int(b, key, 0...64, "interface count")
        case "boot":
            guard let s = try string(b, key) else { return }
            guard s.allSatisfy({ "acdn".contains($0) }) else {
                throw fail(b, key, "expected boot devices from a (floppy), c (disk), d (CD-ROM), n (network), found '\(s)'")
            }
            c.hvm.boot = s
        case "cdrom": c.hvm.cdrom = try string(b, key)
        case "vnc": if let v = try bool(b, key) { c.hvm.vnc = v }
        case "vncdisplay": c.hvm.vncdisplay = try int(b, key, 0...59635, "display number")
        case "vncunused": if let v = try bool(b, key) { c.hvm.vncunused = v }
        case "vnclisten": c.hvm.vnclisten = try string(b, key)
        case "vncpasswd": c.hvm.vncpasswd = try string(b, key)
        case "vncviewer", "vncconsole": if let v = try bool(b, key) { c.hvm.vncviewer = c.hvm.vncviewer || v }
        case "sdl": if let v = try bool(b, key) { c.hvm.sdl = v }
        case "serial": c.hvm.serial = try string(b, key)
        case "acpi": if let v = try bool(b, key) { c.hvm.acpi = v }
        case "apic": if let v = try bool(b, key) { c.hvm.apic = v }
        case "pae": if let v = try bool(b, key) { c.hvm.pae = v }
        case "localtime": if let v = try bool(b, key) { c.hvm.localtime = v }
        case "nographic": if let v = try bool(b, key) { c.hvm.nographic = v }
        case "device_model": c.hvm.deviceModel = try string(b, key)
        case "ne2000": if let v = try bool(b, key) { c.hvm.ne2000 = v }
        case "stdvga": if let v = try bool(b, key) { c.hvm.stdvga = v }
        case "usb": if let v = try bool(b, key) { c.hvm.usb = v }
        case "usbdevice": c.hvm.usbdevice = try string(b, key); if c.hvm.usbdevice != nil { c.hvm.usb = true }
        case "soundhw": c.hvm.soundhw = try string(b, key)
        case "keymap": c.hvm.keymap = try string(b, key)
        default: break
        }
    }

    mutating func finish<G: RandomNumberGenerator>(_ c: inout DomainConfiguration, bindings: [String: Binding],
                                                   sawName: Bool, rng: inout G) throws(ConfigError) {
        if let n = nics {
            while c.vifs.count < n { c.vifs.append(try! VifSpec(parsing: "", using: &rng)) }
        }
        if !sawName || c.name.isEmpty {
            throw ConfigError(file: file, line: 1, key: "name", message: "missing: a domain needs a name")
        }
        if c.builder == .linux && c.kernel == nil && c.bootloader == nil {
            let b = bindings["builder"]
            throw ConfigError(file: b?.file ?? file, line: b?.line ?? 1, key: "kernel",
                              message: "missing: the linux builder needs a kernel (or a bootloader)")
        }
        if let m = c.maxmem, m < c.memory, let b = bindings["maxmem"] {
            throw fail(b, "maxmem", "maxmem (\(m) MiB) is less than memory (\(c.memory) MiB)")
        }
        if c.nfsRoot != nil && c.nfsServer == nil, let b = bindings["nfs_root"] {
            throw fail(b, "nfs_root", "nfs_root needs nfs_server")
        }
    }
}
