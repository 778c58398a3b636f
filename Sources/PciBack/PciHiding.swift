// Which host PCI functions may go to a domain, and taking them from (and giving them back
// to) the host's drivers, with nothing left half-bound (issue 18, item 1).
import DomainConfig

/// Why a device was refused; `message` names the device (`DDDD:BB:SS.F`).
public struct PciRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What xend knows beyond sysfs when it checks a request.
public struct PciHostPolicy: Sendable {
    /// xend-config.sxp's `pci-hide`.
    public var hidden: Set<PciAddress>
    /// `pci-hide-on-create`: a device held by a host driver may be taken when a domain starts.
    public var hideOnCreate: Bool
    /// Devices given to running domains, by domid.
    public var assigned: [PciAddress: Int]
    public init(hidden: Set<PciAddress> = [], hideOnCreate: Bool = true, assigned: [PciAddress: Int] = [:]) {
        self.hidden = hidden; self.hideOnCreate = hideOnCreate; self.assigned = assigned
    }
}

/// A function taken from the host for a domain: where it was before.
public struct PciTaken: Sendable, Equatable {
    public var address: PciAddress
    /// The driver it had (nil: unbound); vfio-pci when it was already hidden.
    public var originalDriver: String?
    public var iommuGroup: Int
    public init(address: PciAddress, originalDriver: String?, iommuGroup: Int) {
        self.address = address; self.originalDriver = originalDriver; self.iommuGroup = iommuGroup
    }
}

public enum PciHiding {
    /// Checks every device of a request before anything changes.
    ///
    /// Refused, each naming the BDF: a device that does not exist; one assigned to another
    /// domain (or named twice); one without an IOMMU group; one held by a host driver when it
    /// is not in `pci-hide` and `pci-hide-on-create` is no; one whose IOMMU group holds a
    /// function (not in this request) bound to a host driver other than vfio-pci, pci-stub or
    /// pcieport.
    /// - Returns: each device's present state, in request order.
    public static func check(_ addrs: [PciAddress], domid: Int, sysfs: PciSysfs,
                             policy: PciHostPolicy) throws(PciRefusal) -> [PciHostDevice] {
        var out: [PciHostDevice] = []
        let requested = Set(addrs)
        for a in addrs {
            guard let d = sysfs.device(a) else {
                throw PciRefusal("PCI device \(a) does not exist on this host (no /sys/bus/pci/devices/\(a))")
            }
            if let other = policy.assigned[a], other != domid {
                throw PciRefusal("PCI device \(a) is already assigned to domain \(other)")
            }
            if out.contains(where: { $0.address == a }) { throw PciRefusal("PCI device \(a) is named twice") }
            guard let group = d.iommuGroup else {
                throw PciRefusal("PCI device \(a) has no IOMMU group: VFIO needs an IOMMU (intel_iommu=on or amd_iommu=on)")
            }
            if let drv = d.driver, drv != PciSysfs.vfioDriver, !policy.hidden.contains(a), !policy.hideOnCreate {
                throw PciRefusal("PCI device \(a) is in use by host driver \(drv) and is not hidden (add it to pci-hide, or set pci-hide-on-create yes)")
            }
            for m in sysfs.groupMembers(group) where m != a && !requested.contains(m) {
                if let drv = sysfs.device(m)?.driver, !PciSysfs.groupSafeDrivers.contains(drv) {
                    throw PciRefusal("PCI device \(a) shares IOMMU group \(group) with \(m), which is bound to host driver \(drv)")
                }
            }
            out.append(d)
        }
        return out
    }

    /// Binds each checked device to vfio-pci; when one fails, the ones already taken are
    /// given back to their drivers first (nothing is left half-bound).
    /// - Returns: what was taken, with the original drivers to give them back to.
    /// - Throws: `PciRefusal` naming the device that could not be taken.
    public static func take(_ devices: [PciHostDevice], sysfs: PciSysfs) throws(PciRefusal) -> [PciTaken] {
        var taken: [PciTaken] = []
        for d in devices {
            do { try sysfs.bindToVfio(d.address) } catch {
                for t in taken.reversed() { try? sysfs.giveBack(t.address, to: t.originalDriver) }
                throw PciRefusal(error.message)
            }
            taken.append(PciTaken(address: d.address, originalDriver: d.driver, iommuGroup: d.iommuGroup ?? -1))
        }
        return taken
    }
}
