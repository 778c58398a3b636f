// `xm pci-list`, `pci-list-assignable-devices`, `pci-attach` and `pci-detach`. An attached
// function joins the domain's stored configuration (with the hot-plug slot it went into, so
// a reboot puts it back there); a detached one leaves it.
import DomainConfig
import Foundation
import XendAPI

extension DomainManager {
    /// `xm pci-list DOM`: the PCI functions of a running domain's configuration.
    /// - Throws: `XendError` no such domain (404), not running (409).
    public func pciList(_ dom: String) throws(XendError) -> PciList {
        let (r, _, _) = try live(dom, for: "list the PCI devices of")
        return pciList(r)
    }

    func pciList(_ r: DomainRecord) -> PciList {
        PciList(devices: r.config.pciDevices.map {
            PciDeviceInfo(domain: $0.address.domain, bus: $0.address.bus, slot: $0.address.slot,
                          func: $0.address.function, vslot: $0.guestSlot, broken: pcis?.brokenReason($0.address.description))
        })
    }

    /// `xm pci-list-assignable-devices`: functions on vfio-pci that no domain holds (none
    /// without pciback).
    public func pciAssignable() -> PciAssignableList {
        PciAssignableList(devices: pcis?.assignable() ?? [])
    }

    /// How long `pci-detach` waits for the guest to release a function, in seconds.
    static let pciDetachTimeout = 30.0

    /// `xm pci-attach DOM BDF [VSLOT]`: host function `bdf` given to a running domain. The
    /// engine must hot-plug PCI devices (checked before anything is done); then the checks
    /// and the move onto vfio-pci of a create, the domain's pciback, the engine's hot-plug
    /// and `backend/pci`, all undone when a step fails (PciSupervisor.hotAttach).
    /// - Parameters:
    ///   - bdf: `[DDDD:]BB:SS.F`.
    ///   - vslot: the guest device number (1...0x1f), nil: the engine picks.
    /// - Returns: the domain's PCI devices afterwards.
    /// - Throws: `XendError`: malformed BDF or slot, refusals naming the device (400), the
    ///   engine cannot hot-plug PCI (400, naming the engine), no pciback (503), the engine
    ///   failed (500).
    public func pciAttach(_ dom: String, bdf: String, vslot: Int?) throws(XendError) -> PciList {
        let (r, p, e) = try live(dom, for: "attach a PCI device to")
        let spec: PciSpec
        do throws(PciSpecError) {
            var s = try PciSpec(parsing: bdf)
            if let v = vslot {
                guard s.guestSlot == nil else { throw PciSpecError("give the guest slot once: '\(bdf)' has one and \(v) was given too") }
                guard (1...0x1f).contains(v) else { throw PciSpecError("bad virtual slot 0x\(String(v, radix: 16)) (expected hex 1 to 1f)") }
                s.guestSlot = v
            }
            spec = s
        } catch { throw XendError(.badRequest, "pci-attach: \(error.message)") }
        guard e.capabilities.contains(.pciHotplug) else {
            throw XendError(.badRequest, "pci-attach: Domain \(r.name) runs on the \(e.name) engine, which cannot hot-plug PCI devices: use engine = 'qemu'")
        }
        guard let pcis else { throw XendError(.unavailable, "pci-attach: PCI passthrough is not available (no pciback)") }
        if let s = spec.guestSlot, r.config.pciDevices.contains(where: { $0.guestSlot == s }) {
            throw XendError(.badRequest, "pci-attach: guest slot 0x\(String(s, radix: 16)) is taken by another PCI device of domain \(r.name)")
        }
        let memlock = UInt64(max(r.config.memory, r.config.maxmem ?? 0) + 1024) << 20
        let port = try pcis.hotAttach(domid: r.domid, spec: spec, current: r.config.pciDevices,
                                      owner: e.devicePlan(for: r.config, domid: r.domid).socketOwner) { () throws(XendError) -> String? in
            do { return try e.attachPci(p, address: spec.address, guestSlot: spec.guestSlot, memlockBytes: memlock) }
            catch let x as EngineError { throw XendError(x.isBadRequest ? .badRequest : .internalError, "pci-attach: \(x.message)") }
            catch { throw XendError(.internalError, "pci-attach: PCI device \(spec.address): \(error)") }
        }
        var kept = spec
        kept.hotplugPort = port
        let updated = registry.update(r.domid, onlyLive: true) {
            $0.config.pciDevices.append(kept)
            if port == nil { $0.hotplugged = ($0.hotplugged ?? []) + ["pci \(spec.address)"] }
        }
        dmesg("Domain \(r.name) (\(r.domid)): PCI \(spec.address) attached")
        return pciList(updated ?? r)
    }

    /// `xm pci-detach DOM BDF`: the engine removes the function and waits (30 s at most)
    /// for the guest to release it; then the host side is undone (PciSupervisor.hotDetach)
    /// and the function leaves the stored configuration.
    /// - Returns: the domain's PCI devices afterwards.
    /// - Throws: `XendError`: malformed BDF or a function the domain does not have (400),
    ///   the engine cannot hot-unplug PCI (400), the guest did not release it in time or the
    ///   engine refused (500; the function stays attached).
    public func pciDetach(_ dom: String, bdf: String) throws(XendError) -> PciList {
        let (r, p, e) = try live(dom, for: "detach a PCI device from")
        let a: PciAddress
        do { a = try PciAddress(parsing: bdf) } catch { throw XendError(.badRequest, "pci-detach: \(error.message)") }
        guard r.config.pciDevices.contains(where: { $0.address == a }) else {
            throw XendError(.badRequest, "pci-detach: PCI device \(a) is not assigned to domain \(r.name)")
        }
        guard e.capabilities.contains(.pciHotplug) else {
            throw XendError(.badRequest, "pci-detach: Domain \(r.name) runs on the \(e.name) engine, which cannot hot-unplug PCI devices")
        }
        guard let pcis else { throw XendError(.unavailable, "pci-detach: PCI passthrough is not available (no pciback)") }
        do { try e.detachPci(p, address: a, timeout: Self.pciDetachTimeout) } catch {
            let bad = (error as? EngineError)?.isBadRequest == true || "\(error)".contains("root PCI bus")
            throw XendError(bad ? .badRequest : .internalError, "pci-detach: \(error); PCI device \(a) stays attached to domain \(r.name)")
        }
        let remaining = r.config.pciDevices.filter { $0.address != a }
        try pcis.hotDetach(domid: r.domid, address: a, remaining: remaining)
        let updated = registry.update(r.domid, onlyLive: true) { rec in
            rec.config.pciDevices.removeAll { $0.address == a }
            rec.hotplugged?.removeAll { $0 == "pci \(a)" }
            if rec.hotplugged?.isEmpty == true { rec.hotplugged = nil }
        }
        dmesg("Domain \(r.name) (\(r.domid)): PCI \(a) detached")
        return pciList(updated ?? r)
    }
}
