// A virtual network's configuration file (`xm vnet-create FILE`, Xen 3.0 manual §
// "Virtual networks"): one `(vnet (id N) (bridge BR) (vnetif IF) (security none))` form.

/// One vnet as its file describes it. Xenith carries a vnet on a Linux VXLAN device, so
/// `id` is the VXLAN network identifier (24 bits) and must be decimal.
public struct VnetConfig: Sendable, Equatable, Codable {
    /// Largest VXLAN network identifier (24 bits).
    public static let maxID = (1 << 24) - 1
    /// Keys a `(vnet ...)` form may hold.
    public static let knownKeys = ["id", "bridge", "vnetif", "security"]

    /// The vnet id, 1...16777215 (the VXLAN VNI).
    public var id: Int
    /// The Linux bridge domains join with `vif = ['bridge=NAME']`; default `vnet<id>`.
    public var bridge: String
    /// The VXLAN device, a port of `bridge`; default `vnif<id>`.
    public var vnetif: String
    /// Xen's `none`, `auth` or `conf`; only `none` is supported (VXLAN has no
    /// authentication or encryption of its own).
    public var security: String

    public init(id: Int, bridge: String? = nil, vnetif: String? = nil, security: String = "none") {
        self.id = id
        self.bridge = bridge ?? "vnet\(id)"
        self.vnetif = vnetif ?? "vnif\(id)"
        self.security = security
    }

    /// Whether `name` can be a Linux interface name: 1...15 bytes of letters, digits,
    /// `-`, `_`, `.`, not `.` or `..`.
    public static func validInterfaceName(_ name: String) -> Bool {
        let u = Array(name.utf8)
        guard (1...15).contains(u.count), name != ".", name != ".." else { return false }
        return u.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A)
            || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E }
    }

    /// Reads a vnet file's text: exactly one `(vnet ...)` form.
    ///
    /// - Parameter file: the name used in errors.
    /// - Throws: `ConfigError` naming file, line and key for SXP syntax errors, a form
    ///   other than `vnet`, an unknown, repeated or missing key, an id that is not a
    ///   decimal integer in 1...16777215, a bad interface name, a `security` other than `none`.
    public init(parsing text: String, file: String = "<vnet>") throws(ConfigError) {
        let forms = try SXP.parseForms(text, file: file)
        guard let form = forms.first else { throw ConfigError(file: file, line: 1, message: "no (vnet ...) form") }
        if forms.count > 1 {
            throw ConfigError(file: file, line: forms[1].line, message: "expected one (vnet ...) form, found \(forms.count)")
        }
        try self.init(sxp: form.value, file: file, line: form.line)
    }

    /// Reads a parsed `(vnet ...)` element (`line` is where it starts, for errors).
    public init(sxp: SXP, file: String, line: Int) throws(ConfigError) {
        guard sxp.name == "vnet" else {
            throw ConfigError(file: file, line: line, message: "expected a (vnet ...) form, found \(sxp.name.map { "(\($0) ...)" } ?? "\(sxp)")")
        }
        var values: [String: String] = [:]
        for c in sxp.children {
            guard let key = c.name else { throw ConfigError(file: file, line: line, message: "expected (key value) inside (vnet ...), found \(c)") }
            func fail(_ m: String) -> ConfigError { ConfigError(file: file, line: line, key: key, message: m) }
            guard VnetConfig.knownKeys.contains(key) else {
                throw fail("unknown key (known: \(VnetConfig.knownKeys.joined(separator: ", ")))")
            }
            guard values[key] == nil else { throw fail("given twice") }
            guard c.children.count == 1, let v = c.children[0].text else { throw fail("expected one value, found \(c)") }
            values[key] = v
        }
        func fail(_ key: String, _ m: String) -> ConfigError { ConfigError(file: file, line: line, key: key, message: m) }
        guard let idText = values["id"] else { throw fail("id", "missing: every vnet needs (id N), N in 1...\(VnetConfig.maxID)") }
        guard let id = Int(idText), idText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            throw fail("id", "expected a decimal integer, found '\(idText)'")
        }
        guard (1...VnetConfig.maxID).contains(id) else {
            throw fail("id", "\(id) out of range 1...\(VnetConfig.maxID) (the VXLAN network identifier has 24 bits)")
        }
        self.init(id: id, bridge: values["bridge"], vnetif: values["vnetif"], security: values["security"] ?? "none")
        for (key, name) in [("bridge", bridge), ("vnetif", vnetif)] where !VnetConfig.validInterfaceName(name) {
            throw fail(key, "'\(name)' is not an interface name (1 to 15 letters, digits, '-', '_', '.')")
        }
        guard bridge != vnetif else { throw fail("vnetif", "'\(vnetif)' is also the bridge's name") }
        guard security == "none" else {
            throw fail("security", "'\(security)' is not supported: only none (VXLAN neither authenticates nor encrypts)")
        }
    }

    /// The `(vnet (id N) (bridge BR) (vnetif IF) (security none))` form (`xm vnet-list -l`).
    public func toSXP() -> SXP {
        .element("vnet", [.pair("id", .int(id)), .pair("bridge", .atom(bridge)), .pair("vnetif", .atom(vnetif)),
                          .pair("security", .atom(security))])
    }
}
