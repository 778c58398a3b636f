// /etc/xen/xend-config.sxp: xend's settings, typed, with Xen 3.x defaults.

/// The settings xend reads from `xend-config.sxp` (Xen 3.x `XendRoot` and the
/// `xend-config.sxp(5)` manual page), plus Xenith's `domain-engine`.
///
/// The file is a sequence of `(key value)` forms. A key given twice keeps its first
/// value (as Xen's `sxp.child_value` did) and draws a warning. A key this type does not
/// know draws a warning and is kept in `unknown`. A bad value is an error naming file,
/// line and key. Booleans accept `yes y 1 on true t` / `no n 0 off false f` (any case).
public struct XendConfig: Sendable, Equatable {
    /// Where xend looks for the file (`XEND_CONFIG` overrides it in Xen).
    public static let defaultPath = "/etc/xen/xend-config.sxp"

    /// Log levels accepted by `loglevel`.
    public enum LogLevel: String, Sendable, CaseIterable {
        case debug = "DEBUG", info = "INFO", warning = "WARNING", error = "ERROR", critical = "CRITICAL"
    }

    /// `xend-unix-server`: serve the management API on a Unix socket. Default `yes`.
    public var unixServer = true
    /// `xend-unix-path`: that socket's path. Default `/var/lib/xend/xend-socket`.
    public var unixPath = "/var/lib/xend/xend-socket"
    /// `xend-http-server`: serve the management API on TCP. Default `no`.
    public var httpServer = false
    /// `xend-port`: TCP port of the HTTP server (1...65535). Default 8000.
    public var port = 8000
    /// `xend-address`: address the HTTP server binds; `""` means all. Default `''`.
    public var address = ""
    /// `xend-relocation-server`: accept migrations. Default `no`.
    public var relocationServer = false
    /// `xend-relocation-port`: TCP port of the relocation server. Default 8002.
    public var relocationPort = 8002
    /// `xend-relocation-address`: address the relocation server binds; `""` means all.
    public var relocationAddress = ""
    /// `xend-relocation-hosts-allow`: space-separated regular expressions matched against
    /// a connecting host's name or address; empty (the default) allows every host.
    public var relocationHostsAllow: [String] = []
    /// `xend-relocation-paths-allow`: space-separated absolute directories; when set, every
    /// host path an incoming domain (a migration peer's or a save file's configuration)
    /// names must lie under one of them once symbolic links are resolved. Each kept
    /// without a trailing `/`. Default `''`: none (only the target's other path checks).
    public var relocationPathsAllow: [String] = []
    /// `xend-relocation-ssl`: TLS on the relocation connection, both when serving and when
    /// migrating out (mutual: each side checks the other's certificate against
    /// `xend-relocation-ssl-ca-file`). Needs the three files below. Default `no`.
    public var relocationSSL = false
    /// `xend-relocation-ssl-key-file`: this host's private key, PEM. Default `''` (none).
    public var relocationSSLKeyFile = ""
    /// `xend-relocation-ssl-cert-file`: this host's certificate (chain), PEM, presented to
    /// the peer both as server and as client. Default `''` (none).
    public var relocationSSLCertFile = ""
    /// `xend-relocation-ssl-ca-file`: the CA certificates a peer's certificate must chain
    /// to, PEM. Default `''` (none).
    public var relocationSSLCAFile = ""
    /// `network-script`: script in /etc/xen/scripts run (with its arguments) when xend
    /// starts and stops, e.g. `network-bridge netdev=eth1`. Default: none.
    public var networkScript: String? = nil
    /// `vif-script`: script run for each vif unless the vif names one. Default `vif-bridge`.
    public var vifScript = "vif-bridge"
    /// `dom0-min-mem`: MiB Domain-0 may be ballooned down to; 0 disables ballooning. Default 0.
    public var dom0MinMem = 0
    /// `dom0-cpus`: CPUs Domain-0 may use; 0 means all. Default 0.
    public var dom0CPUs = 0
    /// `logfile`. Default `/var/log/xen/xend.log`.
    public var logfile = "/var/log/xen/xend.log"
    /// `loglevel`. Default `DEBUG`.
    public var loglevel = LogLevel.debug
    /// `enable-dump`: save a core dump of a crashed domain. Default `no`.
    public var enableDump = false
    /// `console-limit`: per-domain console buffer limit in KiB. Default 1024.
    public var consoleLimit = 1024
    /// `domain-engine` (Xenith): engine for domains that do not ask for one. Default `auto`.
    public var domainEngine = DomainEngine.auto
    /// `blkback-cache` (Xenith): how blkback reaches a disk image that does not ask for a
    /// cache mode itself (`cache=` in its disk spec): `writeback` through the host's page
    /// cache, or `direct` with O_DIRECT (xend opens the image so; a file system that
    /// refuses it, such as ramfs (tmpfs before Linux 6.6), fails the create naming the disk). Default `writeback`.
    public var blkbackCache = DiskSpec.CacheMode.writeback
    /// `blkback-aio` (Xenith): how blkback submits a raw image's I/O: `threads` (its
    /// I/O-thread pool) or `io_uring` (an io_uring confined to the image, set up before the
    /// sandbox; the service then runs under `blkback-io_uring.manifest`, which adds
    /// io_uring_enter). qcow2 images always use the threads. Default `threads`.
    public var blkbackAIO = BlkbackAIO.threads
    /// `qemu-user` (Xenith): the unprivileged user QEMU switches to after start-up
    /// (`-runas`), for qemu-engine domains. Default `xenith-qemu`, used when xend runs as
    /// root and the user exists (create it with `useradd --system xenith-qemu`); `none`
    /// (or `''`) keeps QEMU running as xend's user.
    public var qemuUser = "xenith-qemu"
    /// `qemu-uid-base` (Xenith): when xend runs as root, domain D's QEMU runs as uid and gid
    /// `base + D` (no account needed; D ≤ 32751, Xen's highest domid), so one domain's
    /// QEMU cannot connect to another domain's back-end sockets. Default 2147418112
    /// (0x7FFF0000, far above the ranges accounts and subordinate ids use); `none` (nil)
    /// gives every QEMU the shared `qemu-user`.
    public var qemuUIDBase: UInt32? = XendConfig.defaultQemuUIDBase
    /// `qemu-ram-directory` (Xenith): where qemu-engine domains' shared guest RAM lives: a
    /// directory on a tmpfs with `huge=advise`, so the RAM can sit in 2 MiB transparent
    /// huge pages (restore and an incoming migration write it about 2x faster than into a
    /// memfd's 4 KiB pages). xend mounts such a tmpfs on an empty directory there (no size
    /// limit, as a memfd's); a tmpfs already mounted there is used as it is. QEMU makes each
    /// domain's file there and unlinks it at once. A host path, not under XENITH_ROOT.
    /// Default `/run/xenith/guest-ram`; `none` (nil) keeps a memfd per domain.
    public var qemuRAMDirectory: String? = XendConfig.defaultQemuRAMDirectory
    /// The default of ``qemuRAMDirectory``.
    public static let defaultQemuRAMDirectory = "/run/xenith/guest-ram"
    /// The default of ``qemuUIDBase``.
    public static let defaultQemuUIDBase: UInt32 = 0x7FFF_0000
    /// Highest domid a per-domain uid is made for (Xen's DOMID_FIRST_RESERVED − 1).
    public static let highestDomid = 32751
    /// `vnet-port` (Xenith): UDP port of the VXLAN devices carrying vnets (1...65535).
    /// Default 4789, the IANA VXLAN port; every host of a vnet must use the same.
    public var vnetPort = 4789
    /// `vnet-group` (Xenith): IPv4 multicast group (224.0.0.0/4) the VXLAN devices send
    /// broadcast, unknown-unicast and multicast frames to when `vnet-peers` is empty.
    /// Default `239.1.1.1`.
    public var vnetGroup = "239.1.1.1"
    /// `vnet-peers` (Xenith): the other hosts' IPv4 addresses, separated by spaces; when
    /// given, frames are sent to each of them by unicast instead of to `vnet-group`
    /// (for networks without multicast). Default: none.
    public var vnetPeers: [String] = []
    /// `vnet-device` (Xenith): the host interface VXLAN traffic leaves by; `''` (the
    /// default) takes the device of the route to the first peer, or of the default route.
    public var vnetDevice = ""

    /// `pci-hide` (Xenith; Linux's `pciback.hide` list): PCI functions taken from the host's
    /// drivers and bound to `vfio-pci` when xend starts, to be passed through to domains:
    /// `(pci-hide (0000:00:04.0) (01:00.0))`. Default: none.
    public var pciHide: [PciAddress] = []
    /// `pci-hide-on-create` (Xenith): whether a device a domain's `pci` names that is not
    /// in `pci-hide` may be taken from its host driver when the domain starts (and given
    /// back when it ends). With `no`, such a device bound to a host driver is refused.
    /// Default `yes`.
    public var pciHideOnCreate = true

    /// Keys this type does not know, with their whole `(key ...)` form, kept as read.
    public var unknown: [String: SXP] = [:]
    /// Remarks made while reading (unknown keys, duplicates).
    public var warnings: [ConfigWarning] = []

    /// Every key this type knows, in the order the shipped file lists them.
    public static let knownKeys: [String] = [
        "logfile", "loglevel", "xend-unix-server", "xend-unix-path", "xend-http-server",
        "xend-port", "xend-address", "xend-relocation-server", "xend-relocation-port",
        "xend-relocation-address", "xend-relocation-hosts-allow", "xend-relocation-paths-allow", "xend-relocation-ssl",
        "xend-relocation-ssl-key-file", "xend-relocation-ssl-cert-file", "xend-relocation-ssl-ca-file", "network-script",
        "vif-script", "dom0-min-mem", "dom0-cpus", "enable-dump", "console-limit",
        "domain-engine", "blkback-cache", "blkback-aio", "qemu-user", "qemu-uid-base", "qemu-ram-directory", "vnet-port", "vnet-group", "vnet-peers", "vnet-device",
        "pci-hide", "pci-hide-on-create",
    ]

    /// All defaults: what xend uses when the file is absent.
    public init() {}

    /// Reads settings from the text of an xend-config.sxp file.
    ///
    /// - Parameter file: the name used in errors and warnings.
    /// - Throws: `ConfigError` for SXP syntax errors, a top-level form that is not
    ///   `(key value)`, and values of the wrong type or range (naming file, line, key).
    public init(parsing text: String, file: String = XendConfig.defaultPath) throws(ConfigError) {
        try self.init(forms: SXP.parseForms(text, file: file), file: file)
    }

    /// Reads settings from a file; a missing file is an error (callers wanting Xen's
    /// "absent file means defaults" check for it first).
    ///
    /// - Throws: `ConfigError` as for `init(parsing:file:)`, or when the file cannot be read.
    public init(contentsOfFile path: String) throws(ConfigError) {
        try self.init(parsing: readTextFile(path), file: path)
    }

    /// Reads settings from already-parsed forms.
    public init(forms: [SXPForm], file: String) throws(ConfigError) {
        var seen: [String: Int] = [:]
        for form in forms {
            guard let key = form.value.name else {
                throw ConfigError(file: file, line: form.line,
                                  message: "expected a (key value) form, found \(form.value)")
            }
            if let first = seen[key] {
                warnings.append(ConfigWarning(file: file, line: form.line, key: key,
                    message: "given again; the first value (line \(first)) is used"))
                continue
            }
            seen[key] = form.line
            guard XendConfig.knownKeys.contains(key) else {
                warnings.append(ConfigWarning(file: file, line: form.line, key: key,
                                              message: "unknown key, kept"))
                unknown[key] = form.value
                continue
            }
            try apply(key: key, form: form.value, line: form.line, file: file)
            if let w = unusedWarning(key, file: file, line: form.line) { warnings.append(w) }
        }
        if relocationSSL, let line = seen["xend-relocation-ssl"] {
            let missing = [("xend-relocation-ssl-key-file", relocationSSLKeyFile), ("xend-relocation-ssl-cert-file", relocationSSLCertFile),
                           ("xend-relocation-ssl-ca-file", relocationSSLCAFile)].filter { $0.1.isEmpty }.map(\.0)
            if !missing.isEmpty {
                throw ConfigError(file: file, line: line, key: "xend-relocation-ssl",
                                  message: "yes needs \(missing.joined(separator: ", ")) (TLS needs this host's key and certificate and the CA that signs its peers')")
            }
        }
    }

    static func parseBool(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "yes", "y", "1", "on", "true", "t": return true
        case "no", "n", "0", "off", "false", "f": return false
        default: return nil
        }
    }

    mutating func apply(key: String, form: SXP, line: Int, file: String) throws(ConfigError) {
        func fail(_ message: String) -> ConfigError {
            ConfigError(file: file, line: line, key: key, message: message)
        }
        let values = form.children
        if key == "pci-hide" {
            // A list of PCI addresses, each `(BDF)` as Linux's pciback.hide wrote them, or bare.
            var seen = Set<PciAddress>()
            pciHide = []
            for v in values {
                let t: String?
                if let items = v.items { t = items.count == 1 ? items[0].text : nil } else { t = v.text }
                guard let t else { throw fail("expected PCI addresses like (0000:00:04.0), found \(v)") }
                let a: PciAddress
                do { a = try PciAddress(parsing: t) } catch { throw fail(error.message) }
                guard seen.insert(a).inserted else { throw fail("PCI device \(a) given twice") }
                pciHide.append(a)
            }
            return
        }
        guard values.count == 1 else {
            throw fail(values.isEmpty ? "missing value"
                       : "expected one value, found \(values.count) (quote a value holding spaces)")
        }
        guard let s = values[0].text else { throw fail("expected a value, found a list \(values[0])") }
        func bool() throws(ConfigError) -> Bool {
            guard let b = XendConfig.parseBool(s) else { throw fail("expected yes or no, found '\(s)'") }
            return b
        }
        func int(_ range: ClosedRange<Int>, _ what: String) throws(ConfigError) -> Int {
            guard let v = Int(s) else { throw fail("expected an integer (\(what)), found '\(s)'") }
            guard range.contains(v) else {
                throw fail("\(v) out of range \(range.lowerBound)...\(range.upperBound) (\(what))")
            }
            return v
        }
        func path() throws(ConfigError) -> String {
            guard !s.isEmpty else { throw fail("expected a path, found ''") }
            return s
        }
        switch key {
        case "xend-unix-server": unixServer = try bool()
        case "xend-unix-path": unixPath = try path()
        case "xend-http-server": httpServer = try bool()
        case "xend-port": port = try int(1...65535, "TCP port")
        case "xend-address": address = s
        case "xend-relocation-server": relocationServer = try bool()
        case "xend-relocation-port": relocationPort = try int(1...65535, "TCP port")
        case "xend-relocation-address": relocationAddress = s
        case "xend-relocation-hosts-allow":
            relocationHostsAllow = s.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        case "xend-relocation-paths-allow":
            relocationPathsAllow = []
            for e in s.split(whereSeparator: { $0 == " " || $0 == "\t" }) {
                guard let d = XendConfig.allowedDirectory(String(e)) else {
                    throw fail("'\(e)' is not an absolute directory (each entry must start with / and have no . or .. component)")
                }
                relocationPathsAllow.append(d)
            }
        case "xend-relocation-ssl": relocationSSL = try bool()
        case "xend-relocation-ssl-key-file": relocationSSLKeyFile = s
        case "xend-relocation-ssl-cert-file": relocationSSLCertFile = s
        case "xend-relocation-ssl-ca-file": relocationSSLCAFile = s
        case "network-script": networkScript = s.isEmpty ? nil : s
        case "vif-script": vifScript = try path()
        case "dom0-min-mem": dom0MinMem = try int(0...(1 << 30), "MiB")
        case "dom0-cpus": dom0CPUs = try int(0...4096, "CPU count")
        case "logfile": logfile = try path()
        case "loglevel":
            guard let l = LogLevel(rawValue: s.uppercased()) else {
                throw fail("expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, found '\(s)'")
            }
            loglevel = l
        case "enable-dump": enableDump = try bool()
        case "console-limit": consoleLimit = try int(1...(1 << 20), "KiB")
        case "domain-engine":
            guard let e = DomainEngine(rawValue: s) else {
                throw fail("expected auto, core or qemu, found '\(s)'")
            }
            domainEngine = e
        case "blkback-cache":
            guard let m = DiskSpec.CacheMode(rawValue: s) else {
                throw fail("expected writeback or direct, found '\(s)'")
            }
            blkbackCache = m
        case "blkback-aio":
            guard let m = BlkbackAIO(rawValue: s) else {
                throw fail("expected threads or io_uring, found '\(s)'")
            }
            blkbackAIO = m
        case "qemu-user":
            guard s.isEmpty || s == "none" || (s.utf8.count <= 32 && s.utf8.allSatisfy({
                ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F || $0 == 0x2D || ($0 >= 0x41 && $0 <= 0x5A)
            }) && !s.hasPrefix("-")) else {
                throw fail("expected a user name (letters, digits, '_', '-'; at most 32) or none, found '\(s)'")
            }
            qemuUser = s == "none" ? "" : s
        case "qemu-ram-directory":
            if s == "none" { qemuRAMDirectory = nil; break }
            guard let d = XendConfig.allowedDirectory(s), d != "/" else {
                throw fail("expected an absolute directory other than / (no . or .. component) or none, found '\(s)'")
            }
            qemuRAMDirectory = d
        case "qemu-uid-base":
            if s == "none" { qemuUIDBase = nil; break }
            // uid_t is 32 bits and (uid_t)-1 means "no change": the range must end below it.
            let top = Int(UInt32.max) - 1 - XendConfig.highestDomid
            qemuUIDBase = UInt32(try int(1000...top, "first uid of the per-domain range, or none"))
        case "vnet-port": vnetPort = try int(1...65535, "UDP port")
        case "vnet-group":
            guard let q = XendConfig.ipv4(s), (224...239).contains(q[0]) else {
                throw fail("expected an IPv4 multicast address (224.0.0.0 to 239.255.255.255), found '\(s)'")
            }
            vnetGroup = s
        case "vnet-peers":
            let peers = s.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            for p in peers {
                guard let q = XendConfig.ipv4(p), q[0] != 0, q[0] < 224 else {
                    throw fail("expected IPv4 unicast addresses separated by spaces, found '\(p)'")
                }
            }
            vnetPeers = peers
        case "vnet-device":
            guard s.isEmpty || VnetConfig.validInterfaceName(s) else {
                throw fail("expected an interface name (1 to 15 letters, digits, '-', '_', '.') or '', found '\(s)'")
            }
            vnetDevice = s
        case "pci-hide-on-create": pciHideOnCreate = try bool()
        default:
            break
        }
    }

    /// The settings as SXP forms, one `(key value)` per known key, in `knownKeys` order,
    /// followed by the unknown forms kept (sorted by key). Reading them back with
    /// `init(forms:file:)` gives an equal value (warnings aside).
    public func toSXP() -> [SXP] {
        func b(_ v: Bool) -> SXP { .atom(v ? "yes" : "no") }
        var out: [SXP] = [
            .pair("logfile", .atom(logfile)),
            .pair("loglevel", .atom(loglevel.rawValue)),
            .pair("xend-unix-server", b(unixServer)),
            .pair("xend-unix-path", .atom(unixPath)),
            .pair("xend-http-server", b(httpServer)),
            .pair("xend-port", .int(port)),
            .pair("xend-address", .string(address)),
            .pair("xend-relocation-server", b(relocationServer)),
            .pair("xend-relocation-port", .int(relocationPort)),
            .pair("xend-relocation-address", .string(relocationAddress)),
            .pair("xend-relocation-hosts-allow", .string(relocationHostsAllow.joined(separator: " "))),
            .pair("xend-relocation-paths-allow", .string(relocationPathsAllow.joined(separator: " "))),
            .pair("xend-relocation-ssl", b(relocationSSL)),
            .pair("xend-relocation-ssl-key-file", .string(relocationSSLKeyFile)),
            .pair("xend-relocation-ssl-cert-file", .string(relocationSSLCertFile)),
            .pair("xend-relocation-ssl-ca-file", .string(relocationSSLCAFile)),
            .pair("network-script", .string(networkScript ?? "")),
            .pair("vif-script", .atom(vifScript)),
            .pair("dom0-min-mem", .int(dom0MinMem)),
            .pair("dom0-cpus", .int(dom0CPUs)),
            .pair("enable-dump", b(enableDump)),
            .pair("console-limit", .int(consoleLimit)),
            .pair("domain-engine", .atom(domainEngine.rawValue)),
            .pair("blkback-cache", .atom(blkbackCache.rawValue)),
            .pair("blkback-aio", .atom(blkbackAIO.rawValue)),
            .pair("qemu-user", .atom(qemuUser.isEmpty ? "none" : qemuUser)),
            .pair("qemu-uid-base", qemuUIDBase.map { .int(Int($0)) } ?? .atom("none")),
            .pair("qemu-ram-directory", .string(qemuRAMDirectory ?? "none")),
            .pair("vnet-port", .int(vnetPort)),
            .pair("vnet-group", .atom(vnetGroup)),
            .pair("vnet-peers", .string(vnetPeers.joined(separator: " "))),
            .pair("vnet-device", .string(vnetDevice)),
            .list([.atom("pci-hide")] + pciHide.map { .list([.atom($0.description)]) }),
            .pair("pci-hide-on-create", b(pciHideOnCreate)),
        ]
        out += unknown.keys.sorted().compactMap { unknown[$0] }
        return out
    }

    /// One entry of `xend-relocation-paths-allow` without repeated or trailing slashes (`/`
    /// stays `/`); nil when it is not an absolute directory free of `.` and `..` components.
    static func allowedDirectory(_ entry: String) -> String? {
        let parts = entry.split(separator: "/")
        guard entry.hasPrefix("/"), !parts.contains(where: { $0 == "." || $0 == ".." }) else { return nil }
        return "/" + parts.joined(separator: "/")
    }

    /// The four bytes of a dotted-quad IPv4 address, or nil.
    static func ipv4(_ s: String) -> [Int]? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        let q = parts.compactMap { p -> Int? in
            guard (1...3).contains(p.count), p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let v = Int(p), v <= 255 else { return nil }
            return v
        }
        return q.count == 4 ? q : nil
    }

    /// Equality ignores `warnings`.
    public static func == (a: XendConfig, b: XendConfig) -> Bool {
        a.toSXP() == b.toSXP()
    }
}

/// How blkback submits a raw image's I/O (xend-config `blkback-aio`, blkback `--aio`).
public enum BlkbackAIO: String, Sendable, Codable {
    /// preadv/pwritev/fdatasync from blkback's I/O-thread pool.
    case threads
    /// An io_uring, submitted from blkback's event loop (Linux 5.10+ for ring restrictions).
    case ioUring = "io_uring"
}
