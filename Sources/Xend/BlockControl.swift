// `xm block-list`, `block-attach`, `block-detach` on a running domain: the disk's host side
// from BlockSupervisor (checks, image lock, blkback), the guest's device from the engine
// (when it can hot-plug: EngineCapabilities.blockHotplug). An attached disk joins the
// domain's stored configuration, so a reboot (and a save's configuration) keeps it; a
// detached one leaves it.
import DomainConfig
import Foundation
import XenStore
import XendAPI

extension DomainManager {
    /// The vbds of `r` as `xm block-list` shows them: every disk of its configuration with a
    /// device number, state from the backend's xenstore node (Closed for a broken one).
    func vbdInfos(_ r: DomainRecord) -> [VbdInfo] {
        let served = Dictionary((blocks?.records(r.domid) ?? r.disks ?? []).map { ($0.vdev, $0) }, uniquingKeysWith: { a, _ in a })
        return r.config.disks.compactMap { d in
            guard let n = XenStoreLayout.virtualDeviceNumber(d.vdev) else { return nil }
            let be = XenStoreLayout.backend(type: "vbd", domid: UInt32(r.domid), devid: n)
            let rec = served[d.vdev]
            let broken = rec?.broken ?? false
            let st = broken ? XenbusState.closed.rawValue
                : (try? xenstore?.readIfPresent(be + "/state")).flatMap { $0 }.flatMap { Int($0) } ?? XenbusState.connected.rawValue
            return VbdInfo(vdev: n, dev: d.vdev, state: st, bePath: be, uname: d.uname, mode: d.access.rawValue,
                           deviceType: d.deviceType.rawValue, socket: rec?.socket,
                           pid: rec.flatMap { $0.pid > 0 ? Int($0.pid) : nil }, broken: broken)
        }
    }

    /// `xm block-list`: the vbds of a running domain.
    /// - Throws: `XendError` no such domain (404), not running (409).
    public func blockList(_ dom: String) throws(XendError) -> [VbdInfo] {
        let (r, _, _) = try live(dom, for: "list the block devices of")
        return vbdInfos(r)
    }

    /// `xm block-attach DOM BACKDEV FRONTDEV MODE`: a new disk on a running domain, checked
    /// as at create (the same spec parser and image checks), then served by a new blkback
    /// and hot-plugged by the engine; finally added to the stored configuration.
    /// - Parameters:
    ///   - backdev: `file:/img` or `phy:/dev/x`; `frontdev`: `xvdb`, `sdb`, ...; `mode`: `r`, `w`, `w!`.
    /// - Throws: `XendError`: bad spec, a device name in use, an image another domain
    ///   writes, a missing file (400); an engine without disk hot-plug (503); the engine
    ///   refusing (500). Nothing is left behind then.
    public func blockAttach(_ dom: String, backdev: String, frontdev: String, mode: String) throws(XendError) -> VbdInfo {
        lifecycle.lock(); defer { lifecycle.unlock() }
        let (r, p, e) = try live(dom, for: "attach a block device to")
        let d: DiskSpec
        do { d = try DiskSpec(parsing: "\(backdev),\(frontdev),\(mode)") }
        catch { throw XendError(.badRequest, "bad block device '\(backdev) \(frontdev) \(mode)': \(error.message)") }
        guard d.kind == .file || d.kind == .phy, d.script == nil, d.path != nil else {
            throw BlockSupervisor.refuse(d, "Give the image as file:PATH or phy:DEVICE.")
        }
        try DiskImageChecks.refuseOldQcow(d)
        if d.ioemu || d.deviceType != .disk { throw BlockSupervisor.refuse(d, "Only disks can be attached (no ioemu: devices, no CD-ROMs).") }
        guard let n = XenStoreLayout.virtualDeviceNumber(d.vdev) else { throw BlockSupervisor.refuse(d, "\(d.vdev) is not a device name Xen knows.") }
        if let other = r.config.disks.first(where: { $0.vdev == d.vdev || XenStoreLayout.virtualDeviceNumber($0.vdev) == n }) {
            throw BlockSupervisor.refuse(d, "Device \(d.vdev) (\(n)) is already connected as \(other.uname),\(other.dev).")
        }
        guard e.capabilities.contains(.blockHotplug) else {
            throw XendError(.unavailable, "Domain \(r.name) runs on the \(e.name) engine: the \(e.name) engine cannot hot-plug block devices; add the disk to its configuration and create the domain again.")
        }
        var grown = r.config
        grown.disks.append(d)
        let plan = e.devicePlan(for: grown, domid: r.domid)
        guard plan.servedDisks.contains(where: { $0.vdev == d.vdev }) else {
            throw BlockSupervisor.refuse(d, "\(d.vdev) would be an emulated disk of the \(e.name) engine, which cannot be hot-plugged; use an xvd name.")
        }
        guard let blocks else { throw XendError(.unavailable, "disks are not available without blkback") }
        let rec = try blocks.attach(domid: r.domid, name: r.name, disk: d, queues: plan.diskQueues,
                                    inUse: registry.disksInUse(except: -1), socketOwner: plan.socketOwner)
        var kept = d
        do { kept.hotplugPort = try e.attachBlock(p, vdev: d.vdev, socket: rec.socket) } catch {
            try? blocks.detach(domid: r.domid, vdev: d.vdev)
            throw XendError(.internalError, "Device \(d.vdev) (vbd) could not be connected. \(error)")
        }
        // Kept with its slot: a reboot, restore or migration puts it back there. Without a
        // slot the engine could not (hotplugged: save and migrate refuse the domain).
        registry.update(r.domid, onlyLive: true) {
            $0.config.disks.append(kept)
            if kept.hotplugPort == nil { $0.hotplugged = ($0.hotplugged ?? []) + ["vbd \(d.vdev)"] }
        }
        dmesg("Domain \(r.name) (\(r.domid)): vbd \(n) (\(d.uname),\(d.vdev),\(d.access.rawValue)) attached")
        let now = registry[r.domid] ?? r
        return vbdInfos(now).first { $0.dev == d.vdev }!
    }

    /// `xm block-detach DOM DEV [-f]`: DEV is the device number (`51728`) or name (`xvdb`).
    /// The engine removes the device from the guest (waiting for the guest to release it
    /// unless `force`), then its blkback stops, the image lock goes, the xenstore entries
    /// go, and the disk leaves the stored configuration.
    /// - Throws: `XendError`: no such device (400), engine without hot-unplug (503), the
    ///   guest not releasing it or a disk the engine cannot unplug (500).
    public func blockDetach(_ dom: String, dev: String, force: Bool) throws(XendError) -> [VbdInfo] {
        lifecycle.lock(); defer { lifecycle.unlock() }
        let (r, p, e) = try live(dom, for: "detach a block device from")
        guard let d = r.config.disks.first(where: { $0.vdev == dev || XenStoreLayout.virtualDeviceNumber($0.vdev).map(String.init) == dev }) else {
            throw XendError(.badRequest, "Device \(dev) not connected")
        }
        guard e.capabilities.contains(.blockHotplug) else {
            throw XendError(.unavailable, "Domain \(r.name) runs on the \(e.name) engine: the \(e.name) engine cannot hot-unplug block devices; its disks go when the domain ends.")
        }
        guard let blocks, blocks.records(r.domid).contains(where: { $0.vdev == d.vdev }) else {
            throw XendError(.badRequest, "Device \(d.vdev) (vbd) cannot be detached: the \(e.name) engine emulates it itself (\(d.uname),\(d.dev))")
        }
        do { try e.detachBlock(p, vdev: d.vdev, force: force) } catch {
            throw XendError(.internalError, "\(error)")
        }
        try blocks.detach(domid: r.domid, vdev: d.vdev)
        registry.update(r.domid, onlyLive: true) { rec in
            rec.config.disks.removeAll { $0.vdev == d.vdev }
            rec.hotplugged?.removeAll { $0 == "vbd \(d.vdev)" }
            if rec.hotplugged?.isEmpty == true { rec.hotplugged = nil }
        }
        dmesg("Domain \(r.name) (\(r.domid)): vbd \(d.vdev) detached\(force ? " (forced)" : "")")
        return vbdInfos(registry[r.domid] ?? r)
    }

    /// The devices of `r` whose back-end was given up (`vbd 51728 (xvdb)`, `vif 0`), nil
    /// for none (DomainInfo.brokenDevices).
    func brokenDevices(_ r: DomainRecord) -> [String]? {
        let vbds = (r.disks ?? []).filter(\.broken).map { d in
            XenStoreLayout.virtualDeviceNumber(d.vdev).map { "vbd \($0) (\(d.vdev))" } ?? "vbd \(d.vdev)"
        }
        let all = vbds + (r.vifs ?? []).filter(\.broken).map { "vif \($0.devid)" }
        return all.isEmpty ? nil : all
    }

    /// `xm save` of a domain with devices added while it runs in slots the engine cannot
    /// name again (QEMU's i440fx HVM machine, where QEMU picked the slot) is refused: a
    /// restore starts the engine from the configuration, which would put them elsewhere, and
    /// the guest's state would not load (the guest would be gone with its save file
    /// unusable). Devices in q35 root ports are kept with their port (`hotplugPort`) and do
    /// not count. A reboot (or detaching them) makes it savable.
    /// The same holds for `xm migrate` (`operation` "migrated"): the target starts its engine
    /// from the configuration too.
    /// - Throws: `XendError` (409) naming the devices.
    public func refuseSaveWithHotpluggedDevices(_ dom: String, operation: String = "saved") throws(XendError) {
        guard let r = find(dom), r.isLive, let h = r.hotplugged, !h.isEmpty else { return }
        throw XendError(.conflict, "Domain \(r.name) cannot be \(operation): \(h.joined(separator: ", ")) \(h.count == 1 ? "was" : "were") attached while it runs, in hot-plug slots a restore would not recreate; detach \(h.count == 1 ? "it" : "them") or reboot the domain (which keeps \(h.count == 1 ? "it" : "them")) first.")
    }
}
