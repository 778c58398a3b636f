// Wire types of the vnet routes (`xm vnet-create`, `vnet-list`, `vnet-delete`).

/// One virtual network as xend keeps it: a bridge and a VXLAN device (VNI = `id`).
public struct VnetInfo: Codable, Sendable, Equatable {
    /// The vnet id, 1...16777215 (the VXLAN network identifier).
    public var id: Int
    /// The Linux bridge domains join (`vif = ['bridge=NAME']`).
    public var bridge: String
    /// The VXLAN device, a port of `bridge`.
    public var vnetif: String
    /// Always `none`.
    public var security: String
    /// `(vnet (id N) (bridge BR) (vnetif IF) (security none))`, as `xm vnet-list -l` prints it.
    public var sxp: String
    /// MTU of the VXLAN device and the bridge in bytes (the underlay's less 50); nil when
    /// the device is missing (e.g. it could not be re-made at xend start).
    public var mtu: Int?
    /// The underlay interface the VXLAN device sends by; nil when the device is missing.
    public var device: String?

    public init(id: Int, bridge: String, vnetif: String, security: String, sxp: String, mtu: Int? = nil, device: String? = nil) {
        self.id = id; self.bridge = bridge; self.vnetif = vnetif; self.security = security; self.sxp = sxp
        self.mtu = mtu; self.device = device
    }
}

/// `GET /api/v1/vnets`: every vnet, by id.
public struct VnetList: Codable, Sendable, Equatable {
    public var vnets: [VnetInfo]
    public init(vnets: [VnetInfo]) { self.vnets = vnets }
}

/// `POST /api/v1/vnets` body: the text of a vnet configuration file (one `(vnet ...)` form).
public struct VnetCreateRequest: Codable, Sendable, Equatable {
    /// The file's text.
    public var config: String
    /// The file's name, used in error messages.
    public var file: String
    public init(config: String, file: String) { self.config = config; self.file = file }
}
