// `xm pci-list` and `xm pci-list-assignable-devices`.
import XendAPI

extension DomainManager {
    /// `xm pci-list DOM`: the PCI functions of a running domain's configuration.
    /// - Throws: `XendError` no such domain (404), not running (409).
    public func pciList(_ dom: String) throws(XendError) -> PciList {
        let (r, _, _) = try live(dom, for: "list the PCI devices of")
        return PciList(devices: r.config.pciDevices.map {
            PciDeviceInfo(domain: $0.address.domain, bus: $0.address.bus, slot: $0.address.slot,
                          func: $0.address.function, vslot: $0.guestSlot, broken: pcis?.brokenReason($0.address.description))
        })
    }

    /// `xm pci-list-assignable-devices`: functions on vfio-pci that no domain holds (none
    /// without pciback).
    public func pciAssignable() -> PciAssignableList {
        PciAssignableList(devices: pcis?.assignable() ?? [])
    }
}
