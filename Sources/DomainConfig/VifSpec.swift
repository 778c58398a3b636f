// One entry of a domain configuration's `vif = [...]` list.

/// An Ethernet MAC address (6 octets).
public struct MACAddress: Sendable, Hashable, CustomStringConvertible {
    /// The six octets, most significant first.
    public let octets: [UInt8]

    /// Parses `xx:xx:xx:xx:xx:xx` (or `-` separated), two hex digits per octet, any case.
    /// Returns nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let fields = parts.count == 6 ? parts : text.split(separator: "-", omittingEmptySubsequences: false)
        guard fields.count == 6 else { return nil }
        var out: [UInt8] = []
        for f in fields {
            guard f.count == 2, f.allSatisfy(\.isHexDigit), let b = UInt8(f, radix: 16) else { return nil }
            out.append(b)
        }
        octets = out
    }

    /// An address from six octets.
    public init(octets: [UInt8]) {
        precondition(octets.count == 6, "a MAC address has 6 octets")
        self.octets = octets
    }

    /// A random address in Xen's range 00:16:3e:xx:xx:xx (OUI 00-16-3E, which XenSource
    /// allowed every Xen user to draw from), with the first random octet below 0x80 as
    /// xend's `randomMAC` did.
    public static func random<G: RandomNumberGenerator>(using g: inout G) -> MACAddress {
        MACAddress(octets: [0x00, 0x16, 0x3e, UInt8.random(in: 0...0x7f, using: &g),
                            UInt8.random(in: 0...0xff, using: &g), UInt8.random(in: 0...0xff, using: &g)])
    }

    /// `random(using:)` with the system generator.
    public static func random() -> MACAddress {
        var g = SystemRandomNumberGenerator()
        return random(using: &g)
    }

    /// Group bit clear: an address one interface may own.
    public var isUnicast: Bool { octets[0] & 1 == 0 }
    /// The locally-administered bit.
    public var isLocallyAdministered: Bool { octets[0] & 2 != 0 }

    /// Lower-case `xx:xx:xx:xx:xx:xx`, as xend writes it.
    public var description: String {
        let hex = Array("0123456789abcdef")
        return octets.map { String([hex[Int($0 >> 4)], hex[Int($0 & 15)]]) }.joined(separator: ":")
    }
}

/// A vif credit-based rate limit (Xen 3.0.2+ `rate=`): `RATE[@INTERVAL]` where RATE is
/// `N[G|M|K]B/s` (bytes) or `N[G|M|K]b/s` (bits), decimal multipliers, and INTERVAL is
/// `N[m|u]s` (default 50 ms). `1Mb/s` → 6250 bytes per 50000 µs;
/// `10MB/s@20ms` → 200000 bytes per 20000 µs.
public struct VifRate: Sendable, Hashable, CustomStringConvertible {
    /// Bytes the vif may send in each interval.
    public var bytesPerInterval: UInt64
    /// The credit interval in microseconds.
    public var intervalMicroseconds: UInt64
    /// The text as given (`10MB/s@20ms`).
    public var text: String

    public var description: String { text }

    /// Parses a rate; nil when malformed, zero, or beyond 2^32-1 bytes or µs (xend's limits).
    public init?(_ text: String) {
        var s = Substring(text)
        func number() -> UInt64? {
            let d = s.prefix { $0.isASCII && $0.isNumber }
            guard !d.isEmpty, d.count <= 18, let v = UInt64(d) else { return nil }
            s = s.dropFirst(d.count)
            return v
        }
        guard var perSecond = number() else { return nil }
        var mult: UInt64 = 1
        if let c = s.first, "GMK".contains(c) {
            mult = c == "G" ? 1_000_000_000 : c == "M" ? 1_000_000 : 1000
            s = s.dropFirst()
        }
        let (p, o) = perSecond.multipliedReportingOverflow(by: mult)
        guard !o else { return nil }
        perSecond = p
        guard let unit = s.first, unit == "B" || unit == "b" else { return nil }
        s = s.dropFirst()
        if unit == "b" { perSecond /= 8 }
        guard s.hasPrefix("/s") else { return nil }
        s = s.dropFirst(2)
        var interval: UInt64 = 50_000
        if s.hasPrefix("@") {
            s = s.dropFirst()
            guard let n = number() else { return nil }
            var scale: UInt64 = 1_000_000
            if s.hasPrefix("ms") { scale = 1000; s = s.dropFirst(2) }
            else if s.hasPrefix("us") { scale = 1; s = s.dropFirst(2) }
            else if s.hasPrefix("s") { s = s.dropFirst() }
            else { return nil }
            let (v, o2) = n.multipliedReportingOverflow(by: scale)
            guard !o2 else { return nil }
            interval = v
        }
        guard s.isEmpty else { return nil }
        let (product, o3) = perSecond.multipliedReportingOverflow(by: interval)
        guard !o3 else { return nil }
        let bytes = product / 1_000_000
        guard bytes > 0, bytes <= 0xffff_ffff, interval > 0, interval <= 0xffff_ffff else { return nil }
        bytesPerInterval = bytes
        intervalMicroseconds = interval
        self.text = text
    }
}

/// A virtual network interface: `'mac=00:16:3e:00:00:11, bridge=xenbr0, rate=10MB/s'`.
///
/// Keys (xl-network-configuration(5), Xen 3 xm): `mac`, `bridge`, `ip`, `script`,
/// `vifname`, `rate`, `backend`, `model`, `type`, `be_mac`. An empty string is a vif with
/// every default. A MAC not given is drawn at random from 00:16:3e:xx:xx:xx.
public struct VifSpec: Sendable, Hashable {
    public var mac: MACAddress
    /// True when `mac` was drawn at random because the entry gave none.
    public var macGenerated: Bool
    /// Bridge to attach the backend interface to; nil: the vif script picks.
    public var bridge: String?
    /// Guest IP address(es), space-separated, for vif-route/vif-nat and antispoofing.
    public var ip: String?
    /// Hotplug script (in /etc/xen/scripts); nil: xend-config.sxp's `vif-script`.
    public var script: String?
    /// Host-side interface name; nil: `vifDOMID.DEVID`.
    public var vifname: String?
    public var rate: VifRate?
    /// Backend domain (name or id); nil for the host.
    public var backend: String?
    /// Emulated NIC model for HVM (`rtl8139`, `e1000`, `virtio`...).
    public var model: String?
    /// `ioemu` (emulated NIC) or `vif`/`netfront` (paravirtual).
    public var type: String?
    /// Xen 3.0's backend-side MAC (`be_mac`).
    public var backendMAC: MACAddress?

    public init(mac: MACAddress, macGenerated: Bool = false, bridge: String? = nil, ip: String? = nil,
                script: String? = nil, vifname: String? = nil, rate: VifRate? = nil, backend: String? = nil,
                model: String? = nil, type: String? = nil, backendMAC: MACAddress? = nil) {
        self.mac = mac
        self.macGenerated = macGenerated
        self.bridge = bridge
        self.ip = ip
        self.script = script
        self.vifname = vifname
        self.rate = rate
        self.backend = backend
        self.model = model
        self.type = type
        self.backendMAC = backendMAC
    }

    /// Whether `s` is a dotted-quad IPv4 address, optionally with a `/PREFIX` (0-32).
    static func isIPv4(_ s: Substring) -> Bool {
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { return false }
        if parts.count == 2 { guard let p = Int(parts[1]), (0...32).contains(p), parts[1].count <= 2 else { return false } }
        let octets = parts[0].split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets.allSatisfy { o in
            !o.isEmpty && o.count <= 3 && o.allSatisfy(\.isASCII) && o.allSatisfy(\.isNumber) && Int(o)! <= 255
        }
    }

    public static let keys: [String] = ["mac", "bridge", "ip", "script", "vifname", "rate", "backend",
                                        "model", "type", "be_mac"]

    /// Parses one vif specification.
    ///
    /// - Throws: `VifSpecError` for an entry that is not `key=value`, an unknown key, a
    ///   key given twice, a malformed or multicast MAC, a bad rate or interface name.
    public init<G: RandomNumberGenerator>(parsing spec: String, using g: inout G) throws(VifSpecError) {
        var d: [String: String] = [:]
        for raw in spec.split(separator: ",", omittingEmptySubsequences: false) {
            let part = String(raw).trimmingSpace()
            if part.isEmpty { continue }
            guard let eq = part.firstIndex(of: "=") else {
                throw VifSpecError("expected key=value, found '\(part)' in '\(spec)'")
            }
            let k = String(part[..<eq]).trimmingSpace()
            let v = String(part[part.index(after: eq)...]).trimmingSpace()
            guard VifSpec.keys.contains(k) else {
                throw VifSpecError("unknown vif parameter '\(k)' in '\(spec)' (known: \(VifSpec.keys.joined(separator: ", ")))")
            }
            guard d[k] == nil else { throw VifSpecError("'\(k)' given twice in '\(spec)'") }
            d[k] = v
        }
        func parseMAC(_ k: String) throws(VifSpecError) -> MACAddress? {
            guard let t = d[k], !t.isEmpty else { return nil }
            guard let m = MACAddress(t) else {
                throw VifSpecError("bad MAC address '\(t)' (expected 6 hex octets like 00:16:3e:01:02:03)")
            }
            guard m.isUnicast else { throw VifSpecError("MAC address '\(t)' is multicast (first octet must be even)") }
            guard m.octets != [0, 0, 0, 0, 0, 0] else { throw VifSpecError("MAC address '\(t)' is all zeros") }
            return m
        }
        let given = try parseMAC("mac")
        mac = given ?? MACAddress.random(using: &g)
        macGenerated = given == nil
        backendMAC = try parseMAC("be_mac")
        func opt(_ k: String) -> String? { d[k].flatMap { $0.isEmpty ? nil : $0 } }
        bridge = opt("bridge")
        ip = opt("ip")
        for a in (ip ?? "").split(separator: " ") where !VifSpec.isIPv4(a) {
            throw VifSpecError("bad ip '\(a)' (expected IPv4 addresses like 10.0.0.2 or 10.0.0.0/24, space-separated)")
        }
        script = opt("script")
        vifname = opt("vifname")
        if let n = vifname {
            guard n.utf8.count <= 15, !n.contains("/"), !n.contains(" "), n != ".", n != ".." else {
                throw VifSpecError("bad vifname '\(n)' (an interface name of at most 15 characters)")
            }
        }
        if let r = opt("rate") {
            guard let rate = VifRate(r) else {
                throw VifSpecError("bad rate '\(r)' (expected e.g. 10MB/s, 1Mb/s or 10MB/s@20ms)")
            }
            self.rate = rate
        } else {
            rate = nil
        }
        backend = opt("backend")
        model = opt("model")
        type = opt("type")
    }

    /// `init(parsing:using:)` with the system random generator.
    public init(parsing spec: String) throws(VifSpecError) {
        var g = SystemRandomNumberGenerator()
        try self.init(parsing: spec, using: &g)
    }
}

/// Why a vif specification was refused.
public struct VifSpecError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
