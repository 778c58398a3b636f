// PCI passthrough in the management API: `xm pci-list` and `xm pci-list-assignable-devices`.

/// One host PCI function given to a domain (`GET /api/v1/domains/{domain}/pci`).
public struct PciDeviceInfo: Codable, Sendable, Equatable {
    /// PCI domain (segment), bus, device (slot) and function of the host function.
    public var domain: Int
    public var bus: Int
    public var slot: Int
    public var `func`: Int
    /// Guest slot the configuration asked for (`@SLOT`); nil: the engine chose.
    public var vslot: Int?
    /// Why the function is unfit for the guest (pciback found it unbound from vfio-pci,
    /// removed, or not answering), nil while it is fine.
    public var broken: String?
    public init(domain: Int, bus: Int, slot: Int, func f: Int, vslot: Int?, broken: String? = nil) {
        self.domain = domain; self.bus = bus; self.slot = slot; self.func = f; self.vslot = vslot; self.broken = broken
    }
}

/// A domain's passed-through PCI functions, in configuration order.
public struct PciList: Codable, Sendable, Equatable {
    public var devices: [PciDeviceInfo]
    public init(devices: [PciDeviceInfo]) { self.devices = devices }
}

/// `GET /api/v1/pci/assignable`: functions bound to vfio-pci that no domain holds, as
/// `DDDD:BB:SS.F`, sorted.
public struct PciAssignableList: Codable, Sendable, Equatable {
    public var devices: [String]
    public init(devices: [String]) { self.devices = devices }
}

/// `POST /api/v1/domains/{domain}/pci` body (`xm pci-attach DOM BDF [VSLOT]`).
public struct PciAttachRequest: Codable, Sendable, Equatable {
    /// The host function in Xen's forms (`01:00.0`, `0000:02:01.7`).
    public var bdf: String
    /// The guest device number asked for (1...0x1f); nil: the engine picks.
    public var vslot: Int?
    public init(bdf: String, vslot: Int? = nil) { self.bdf = bdf; self.vslot = vslot }
}
