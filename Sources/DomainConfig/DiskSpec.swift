// One entry of a domain configuration's `disk = [...]` list.

/// A virtual block device (vbd): what the host provides and what the guest sees.
///
/// Two syntaxes are read (xl-disk-configuration(5); Xen 3 `xm create`):
/// - Xen 3: `[PREFIX:]TARGET,VDEV[:cdrom],MODE[,BACKEND]`, e.g. `phy:/dev/vg/g,xvda,w`,
///   `file:/img/g.img,hda1,r`, `tap:aio:/img/g.img,xvdb,w` (read as `file:`; every type
///   Xen users write is mapped or refused by name, see `DiskSpecParser.stripPrefixes`),
///   `file:/x.img,ioemu:hda,w`, `,hdc:cdrom,r` (empty CD-ROM). MODE is `r`, `w` or `w!`
///   (read-write even when the device is in use elsewhere).
/// - xl: positional `TARGET,FORMAT,VDEV,ACCESS` and/or `key=value` (`target=` last,
///   taking the rest of the string), `format=`, `vdev=`, `access=` (`r ro w rw`),
///   `devtype=cdrom` or the flag `cdrom`, `backend=`, `backendtype=`, `script=`,
///   `cache=direct|none|writeback` (Xenith; also after a Xen 3 spec) or the flag
///   `direct-io-safe` (direct I/O, as xl's qdisk back-end takes it).
public struct DiskSpec: Sendable, Hashable {
    /// How the host provides the disk.
    public enum Kind: String, Sendable, Hashable {
        /// A host block device (`phy:`); `path` is under /dev.
        case phy
        /// An image file (`file:`, and `tap:aio:`/`tap:FORMAT:` read as file).
        case file
    }
    /// Guest access.
    public enum Access: String, Sendable, Hashable {
        /// `r`: read-only.
        case readOnly = "r"
        /// `w`: read-write; refused when the device is already writable by another domain.
        case readWrite = "w"
        /// `w!`: read-write even if another domain has it (the manual's "if you are certain").
        case readWriteShared = "w!"
    }
    /// What the guest sees.
    public enum DeviceType: String, Sendable, Hashable { case disk, cdrom }
    /// How blkback reaches the image (xend-config `blkback-cache`, or per disk `cache=`).
    public enum CacheMode: String, Sendable, Hashable, CaseIterable {
        /// Through the host's page cache (preadv/pwritev on a plain descriptor).
        case writeback
        /// Direct I/O (O_DIRECT): the page cache is bypassed; QEMU's `cache=none`.
        case direct
    }

    public var kind: Kind
    /// The target as written (`sda7`, `/dev/vg/g`, `/img/g.img`); nil for an empty CD-ROM.
    public var target: String?
    /// Image format: `raw` (default), `qcow`, `qcow2`, `vhd`, `qed`.
    public var format: String
    /// Guest device name without prefix or suffix: `xvda`, `hda1`, `sda`, `hdc`.
    public var vdev: String
    /// Whether the vdev carried Xen 3's `ioemu:` prefix (an emulated device for HVM).
    public var ioemu: Bool
    public var access: Access
    public var deviceType: DeviceType
    /// Backend domain (name or id) serving the device; nil for the host.
    public var backend: String?
    /// xl `backendtype=` (phy, qdisk, tap, standalone), kept as given.
    public var backendType: String?
    /// Cache mode asked for by this disk: `cache=direct` (or `none`), `cache=writeback`, or
    /// xl's flag `direct-io-safe` (direct, as xl's qdisk back-end reads it); nil takes
    /// xend-config's `blkback-cache`.
    public var cache: CacheMode?
    /// Block script (xl's `script=`; xend refuses every block script). The `nbd:`, `iscsi:`,
    /// `enbd:`, `drbd:` types that would name one are refused when the spec is parsed.
    public var script: String?
    /// The hot-plug slot a disk added with `xm block-attach` went into (an engine's name for
    /// it, e.g. QEMU's root port `hpnet1`), so that a reboot, restore or migration puts it
    /// back there; nil for a disk of the configuration as written. Kept in the stored
    /// configuration as `(hotplug-port NAME)`, never written by users.
    public var hotplugPort: String?

    public init(kind: Kind, target: String?, format: String = "raw", vdev: String, ioemu: Bool = false,
                access: Access = .readWrite, deviceType: DeviceType = .disk, backend: String? = nil,
                backendType: String? = nil, script: String? = nil, cache: CacheMode? = nil) {
        self.cache = cache
        self.kind = kind
        self.target = target
        self.format = format
        self.vdev = vdev
        self.ioemu = ioemu
        self.access = access
        self.deviceType = deviceType
        self.backend = backend
        self.backendType = backendType
        self.script = script
    }

    /// The host path: for `phy` a target not starting with `/` is under `/dev/`
    /// (`sda7` → `/dev/sda7`); for `file` the target itself. Nil for an empty CD-ROM.
    public var path: String? {
        guard let target, !target.isEmpty else { return nil }
        if kind == .phy && !target.hasPrefix("/") { return "/dev/" + target }
        return target
    }

    /// Xen's `uname`: `phy:TARGET`, `file:TARGET`, or `tap:FORMAT:TARGET` for a non-raw
    /// image; `""` for an empty CD-ROM.
    public var uname: String {
        guard let target else { return "" }
        if format != "raw" { return "tap:\(format):\(target)" }
        return "\(kind.rawValue):\(target)"
    }

    /// Xen's `dev`: `[ioemu:]VDEV[:cdrom]`.
    public var dev: String {
        (ioemu ? "ioemu:" : "") + vdev + (deviceType == .cdrom ? ":cdrom" : "")
    }

    /// Whether the guest may write.
    public var writable: Bool { access != .readOnly }

    /// Parses one disk specification.
    ///
    /// - Throws: `DiskSpecError` with a message naming what is wrong (the caller adds
    ///   file, line and key).
    public init(parsing spec: String) throws(DiskSpecError) {
        self = try DiskSpecParser.parse(spec)
    }
}

/// Why a disk specification was refused.
public struct DiskSpecError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

enum DiskSpecParser {
    static let formats: Set<String> = ["raw", "qcow", "qcow2", "vhd", "qed"]
    static let flags: Set<String> = ["cdrom", "discard", "no-discard", "trusted", "untrusted", "direct-io-safe"]
    static let keys: Set<String> = ["target", "format", "vdev", "access", "devtype", "backend",
                                    "backendtype", "script", "specification", "cache"]

    /// `hda`, `hda1`, `sdb`, `xvda`, `xvdaa15`, `vda`, or a decimal device number.
    static func validVdev(_ v: String) -> Bool {
        if !v.isEmpty && v.allSatisfy({ $0.isASCII && $0.isNumber }) { return v.count <= 10 }
        let prefixes = ["xvd", "hd", "sd", "vd"]
        guard let p = prefixes.first(where: { v.hasPrefix($0) }) else { return false }
        let rest = v.dropFirst(p.count)
        let letters = rest.prefix { $0 >= "a" && $0 <= "z" }
        let digits = rest.dropFirst(letters.count)
        return (1...3).contains(letters.count) && digits.count <= 3
            && digits.allSatisfy { $0.isASCII && $0.isNumber }
    }

    static func access(_ s: String) -> DiskSpec.Access? {
        switch s {
        case "r", "ro": return .readOnly
        case "w", "rw": return .readWrite
        case "w!", "rw!": return .readWriteShared
        default: return nil
        }
    }

    /// Disk types that need one of Xen's block scripts (`block-nbd`, ...), which Xenith does
    /// not ship: refused by name.
    static let scriptTypes: Set<String> = ["nbd", "enbd", "iscsi", "drbd"]
    /// blktap subtypes Xen knew that Xenith does not serve, with the reason.
    static let refusedTapSubtypes: [String: String] = [
        "vmdk": "VMware images are not supported: convert the image with 'qemu-img convert -O raw' (or -O qcow2)",
        "ram": "blktap's RAM disk is not supported",
        "remus": "Remus replication is not supported",
    ]

    /// Whether `p` (the text before a colon) is a disk type word: `[A-Za-z][A-Za-z0-9_-]*`.
    /// `/srv/a:b.img` or `disk.img:1` start with a path instead.
    static func isTypeWord(_ p: String) -> Bool {
        guard let f = p.unicodeScalars.first, f.isASCII, f.properties.isAlphabetic else { return false }
        return p.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-" || $0 == "_") }
    }

    /// Strips Xen 3 / xend / xl prefixes from a positional target and maps each disk type
    /// Xen users write:
    /// - `phy:` (kind phy; `phy:vg/lv` is `/dev/vg/lv`), `file:` (kind file);
    /// - `tap:`/`tap2:` [`tapdisk:`] followed by a blktap subtype: `aio:`, `sync:` (raw file),
    ///   `qcow:`, `qcow2:` (format qcow2: Xen 3's `tap:qcow:` images are mostly qcow2 today;
    ///   xend reads the header and refuses a qcow version 1 image by name), `vhd:` (format vhd);
    ///   `vmdk:`, `ram:`, `remus:` or any other subtype are refused naming it;
    /// - xl's deprecated prefixes `aio:`, `ioemu:`, `tapdisk:`, and the formats `raw:`,
    ///   `qcow:`, `qcow2:`, `vhd:`, `qed:`;
    /// - `nbd:`, `enbd:`, `iscsi:`, `drbd:` need Xen's block scripts: refused naming the type.
    ///
    /// Any other type word before the first colon (`foo:/x`) is refused naming it; after a
    /// `file:`/`phy:` prefix the rest is the path, colons included.
    /// - Throws: `DiskSpecError` naming the refused type.
    static func stripPrefixes(_ s: String, kind: inout DiskSpec.Kind?, format: inout String?) throws(DiskSpecError) -> String {
        var t = Substring(s)
        var tap: String?            // the `tap:`/`tap2:` prefix seen, awaiting its subtype
        while let colon = t.firstIndex(of: ":") {
            let p = String(t[..<colon])
            guard isTypeWord(p) else { break }
            if let tp = tap {
                switch p {
                case "tapdisk": break
                case "aio", "sync": format = "raw"; tap = nil
                case "qcow", "qcow2": format = "qcow2"; tap = nil
                case "vhd": format = "vhd"; tap = nil
                default:
                    if let why = refusedTapSubtypes[p] { throw DiskSpecError("disk type '\(tp):\(p):' is refused: \(why)") }
                    throw DiskSpecError("unknown \(tp): subtype '\(p)' in '\(s)' (expected \(tp):aio:, \(tp):sync:, \(tp):qcow:, \(tp):qcow2: or \(tp):vhd:)")
                }
            } else {
                switch p {
                case "phy": kind = .phy
                case "file": kind = .file
                case "tap", "tap2", "tapdisk": kind = .file; tap = p
                case "aio", "ioemu": kind = kind ?? .file
                case "raw", "qcow", "qcow2", "vhd", "qed":
                    format = p
                    kind = kind ?? .file
                default:
                    if scriptTypes.contains(p) {
                        throw DiskSpecError("disk type '\(p):' is refused: it needs Xen's block-\(p) script, which Xenith does not ship (use file: or phy:)")
                    }
                    // After file:/phy: the rest is a path that may hold colons.
                    if kind != nil { return String(t) }
                    throw DiskSpecError("unknown disk type '\(p):' in '\(s)' (expected phy:, file:, tap:aio:, tap:sync:, tap:qcow2: ...; write file:PATH for a path holding a colon)")
                }
            }
            t = t[t.index(after: colon)...]
        }
        return String(t)
    }

    static func parse(_ spec: String) throws(DiskSpecError) -> DiskSpec {
        var positional: [String] = []
        var named: [String: String] = [:]
        var isCdromFlag = false
        var directFlag = false

        func set(_ k: String, _ v: String) throws(DiskSpecError) {
            if named[k] != nil { throw DiskSpecError("'\(k)' given twice in '\(spec)'") }
            named[k] = v
        }
        // Split on commas, except that `target=` takes the rest.
        var rest = Substring(spec)
        while true {
            let trimmed = rest.drop { $0 == " " || $0 == "\t" }
            if trimmed.hasPrefix("target=") {
                try set("target", String(trimmed.dropFirst("target=".count)))
                break
            }
            let end = trimmed.firstIndex(of: ",") ?? trimmed.endIndex
            let part = String(trimmed[..<end]).trimmingTrailingSpace()
            if let eq = part.firstIndex(of: "="), keys.contains(String(part[..<eq])) {
                try set(String(part[..<eq]), String(part[part.index(after: eq)...]))
            } else if flags.contains(part) {
                if part == "cdrom" { isCdromFlag = true }
                if part == "direct-io-safe" { directFlag = true }
            } else if part.contains("=") && !part.contains("/") && !part.contains(":") {
                throw DiskSpecError("unknown disk parameter '\(part)' in '\(spec)'")
            } else {
                positional.append(part)
            }
            if end == trimmed.endIndex { break }
            rest = trimmed[trimmed.index(after: end)...]
        }

        // Xen 3 style: TARGET,VDEV,MODE[,BACKEND] where MODE is an access mode.
        let prefixed = positional.first.map { p in
            ["phy:", "file:", "tap:", "tap2:", "tapdisk:", "aio:"].contains { p.hasPrefix($0) } } ?? false
        // `cache=` may follow a Xen 3 spec too (`file:/g.img,xvda,w,cache=direct`).
        let xen3 = named.keys.allSatisfy({ $0 == "cache" }) && !isCdromFlag &&
            ((positional.count == 3 && (access(positional[2]) != nil || prefixed)) ||
             (positional.count == 4 && access(positional[2]) != nil && access(positional[3]) == nil
              && !formats.contains(positional[1])))
        var kind: DiskSpec.Kind?
        var format: String?
        var script: String?
        var target: String?
        var vdevField: String
        var accessField: String?
        var backend: String?
        var devtype: String?

        if xen3 {
            let t = try stripPrefixes(positional[0], kind: &kind, format: &format)
            target = t.isEmpty ? nil : t
            vdevField = positional[1]
            accessField = positional[2]
            if positional.count == 4 && !positional[3].isEmpty { backend = positional[3] }
        } else {
            guard positional.count <= 4 else {
                throw DiskSpecError("too many fields in '\(spec)' (expected TARGET,FORMAT,VDEV,ACCESS)")
            }
            let names = ["target", "format", "vdev", "access"]
            var slot = 0
            for p in positional {
                while slot < names.count && named[names[slot]] != nil { slot += 1 }
                guard slot < names.count else { throw DiskSpecError("too many fields in '\(spec)'") }
                if !p.isEmpty {
                    if names[slot] == "target" {
                        let t = try stripPrefixes(p, kind: &kind, format: &format)
                        named["target"] = t
                    } else {
                        named[names[slot]] = p
                    }
                }
                slot += 1
            }
            if let t = named["target"], !t.isEmpty { target = t }
            if let f = named["format"], !f.isEmpty { format = f }
            guard let v = named["vdev"], !v.isEmpty else {
                let hint = named["target"].map { $0.contains("vdev=") ? " (target= takes the rest of the spec, so it must come last)" : "" } ?? ""
                throw DiskSpecError("no vdev in '\(spec)'\(hint)")
            }
            vdevField = v
            accessField = named["access"].flatMap { $0.isEmpty ? nil : $0 }
            backend = named["backend"].flatMap { $0.isEmpty ? nil : $0 }
            if let s = named["script"], !s.isEmpty { script = s }
            devtype = named["devtype"]
        }

        // VDEV: [ioemu:]name[:cdrom|:disk]
        var ioemu = false
        if vdevField.hasPrefix("ioemu:") { ioemu = true; vdevField.removeFirst("ioemu:".count) }
        if let colon = vdevField.firstIndex(of: ":") {
            let suffix = String(vdevField[vdevField.index(after: colon)...])
            guard suffix == "cdrom" || suffix == "disk" else {
                throw DiskSpecError("bad device type '\(suffix)' in vdev '\(vdevField)' (expected cdrom or disk)")
            }
            if devtype != nil && devtype != suffix { throw DiskSpecError("conflicting devtype in '\(spec)'") }
            devtype = suffix
            vdevField = String(vdevField[..<colon])
        }
        if isCdromFlag { devtype = "cdrom" }
        guard validVdev(vdevField) else {
            throw DiskSpecError("bad vdev '\(vdevField)' in '\(spec)' (expected e.g. xvda, hda1, sdb)")
        }
        let type: DiskSpec.DeviceType
        switch devtype ?? "disk" {
        case "disk": type = .disk
        case "cdrom": type = .cdrom
        default: throw DiskSpecError("bad devtype '\(devtype!)' in '\(spec)' (expected cdrom)")
        }
        var mode: DiskSpec.Access = type == .cdrom ? .readOnly : .readWrite
        if let a = accessField {
            guard let m = access(a) else {
                throw DiskSpecError("bad access mode '\(a)' in '\(spec)' (expected r, w or w!)")
            }
            mode = m
        }
        let fmt = format ?? "raw"
        guard formats.contains(fmt) else {
            throw DiskSpecError("bad format '\(fmt)' in '\(spec)' (expected raw, qcow, qcow2, vhd or qed)")
        }
        if target == nil && type != .cdrom {
            throw DiskSpecError("no target in '\(spec)' (only a CD-ROM may be empty)")
        }
        if let t = target, t.contains("\0") { throw DiskSpecError("NUL in target") }
        var cache: DiskSpec.CacheMode? = directFlag ? .direct : nil
        if let c = named["cache"] {
            let m: DiskSpec.CacheMode
            switch c {
            case "direct", "none": m = .direct
            case "writeback": m = .writeback
            default: throw DiskSpecError("bad cache mode '\(c)' in '\(spec)' (expected direct, none or writeback)")
            }
            if directFlag && m != .direct { throw DiskSpecError("cache=\(c) conflicts with direct-io-safe in '\(spec)'") }
            cache = m
        }
        let resolvedKind: DiskSpec.Kind
        if let kind { resolvedKind = kind }
        else if let t = target, t.hasPrefix("/dev/") || !t.hasPrefix("/") { resolvedKind = .phy }
        else { resolvedKind = .file }
        return DiskSpec(kind: resolvedKind, target: target, format: fmt, vdev: vdevField, ioemu: ioemu,
                        access: mode, deviceType: type, backend: backend,
                        backendType: named["backendtype"], script: script, cache: cache)
    }
}

extension String {
    func trimmingTrailingSpace() -> String {
        var s = Substring(self)
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
    func trimmingSpace() -> String {
        String(drop { $0 == " " || $0 == "\t" || $0 == "\n" }).trimmingTrailingSpace()
    }
}
