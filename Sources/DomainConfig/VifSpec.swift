// One entry of a domain configuration's `vif = [...]` list.

// MACAddress and VifRate live in NetworkTypes (netback uses them without the rest of
// DomainConfig); re-exported so users of DomainConfig see them as before.
@_exported import NetworkTypes

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
    /// The hot-plug slot a vif added with `xm network-attach` went into (see
    /// `DiskSpec.hotplugPort`); nil for a vif of the configuration as written.
    public var hotplugPort: String?

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
