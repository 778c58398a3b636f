// PCI hot-plug for qemu-engine domains (`xm pci-attach` / `pci-detach`) over QMP: the
// engine's RLIMIT_MEMLOCK raised (vfio-pci pins all guest RAM), then device_add vfio-pci
// (id from the host BDF, `QemuCommandLine.pciDeviceID`) into a free hot-plug root port on q35
// (QemuHotplugSlots.swift) or onto pci.0 at the guest slot asked for on i440fx; removal is
// device_del and waiting until QEMU dropped it (the guest's pciehp or ACPI released it).
import CLinux
import DomainConfig
import Foundation
import QemuEngine
#if canImport(Glibc)
import Glibc
#endif

extension QemuEngineDriver {
    /// - Throws: `EngineError`: a guest slot asked for on q35 (a hot-plugged device is at
    ///   slot 0 of its root port's bus, bad request), QEMU's memory-lock limit cannot be
    ///   raised, no free slot, or QEMU's own reason (it cannot open or map the group);
    ///   nothing is left added then.
    public func attachPci(_ p: EngineProcess, address: PciAddress, guestSlot: Int?, memlockBytes: UInt64) throws -> String? {
        var device: [String: Any] = ["driver": "vfio-pci", "host": address.description, "id": QemuCommandLine.pciDeviceID(address)]
        if let s = guestSlot {
            guard try rootPorts(p).isEmpty else {
                throw EngineError("PCI device \(address): guest slot 0x\(String(s, radix: 16)) cannot be had on this domain's q35 machine: a hot-plugged device goes into a PCIe root port, at slot 0 of that port's bus; leave the virtual slot out", badRequest: true)
            }
            device["addr"] = "0x" + String(s, radix: 16)
        }
        // vfio-pci pins and maps all guest RAM, charged to QEMU's RLIMIT_MEMLOCK (it runs
        // without CAP_IPC_LOCK); a domain started without PCI devices has the default limit.
        if clinux_raise_memlock(p.pid, memlockBytes) != 0 {
            throw EngineError("PCI device \(address): cannot raise QEMU's (pid \(p.pid)) memory-lock limit to \(memlockBytes >> 20) MiB: \(String(cString: strerror(errno)))")
        }
        // QEMU answers device_add only once vfio-pci mapped guest RAM: slow under an
        // emulated IOMMU (as the 120 s of a start with PCI devices).
        return try plugIntoFreeSlot(p, device, timeout: 120)
    }

    /// - Throws: `EngineError` when the device is on the root complex (a device a q35
    ///   domain was started with) or the guest did not release it within `timeout` s (it
    ///   stays attached then). A device QEMU no longer has (an earlier detach the guest
    ///   answered late) counts as removed.
    public func detachPci(_ p: EngineProcess, address: PciAddress, timeout: Double) throws {
        let id = QemuCommandLine.pciDeviceID(address)
        guard try hasDevice(p, id) else { return }
        try unplug(p, id: id, what: "PCI device \(address)", rootBus: "PCI device \(address) cannot be detached: it is on the domain's root PCI bus (a device the domain was started with); only devices added with pci-attach can be removed while the domain runs", timeout: timeout)
    }
}
