// `xm network-list`, `network-attach`, `network-detach` on a running domain: the vif's host
// side from NetSupervisor, the guest's NIC from the engine (when it can hot-plug). An
// attached vif joins the domain's stored configuration (a reboot keeps it); a detached one
// leaves it (matched by MAC).
import DomainConfig
import Foundation
import XenStore
import XendAPI

extension DomainManager {
    /// A vif as `xm network-list` shows it; `state` from the backend's xenstore node.
    func vifInfo(_ domid: Int, _ v: VifRecord) -> VifInfo {
        let be = XenStoreLayout.backend(type: "vif", domid: UInt32(domid), devid: v.devid)
        let st = (try? xenstore?.readIfPresent(be + "/state")).flatMap { $0 }.flatMap { Int($0) }
            ?? (v.broken ? XenbusState.closed.rawValue : XenbusState.connected.rawValue)
        return VifInfo(idx: v.devid, backendId: 0, mac: v.mac, handle: v.devid, state: st, bePath: be, vifname: v.vifname,
                       bridge: v.bridge, ip: v.ip, script: v.script, rate: v.rate, socket: v.socket,
                       pid: v.pid > 0 ? Int(v.pid) : nil, broken: v.broken)
    }

    /// `xm network-list`: the vifs of a running domain, by devid.
    /// - Throws: `XendError` no such domain (404), not running (409).
    public func networkList(_ dom: String) throws(XendError) -> [VifInfo] {
        let (r, _, _) = try live(dom, for: "list the network devices of")
        let recs = nets?.records(r.domid) ?? r.vifs ?? []
        return recs.map { vifInfo(r.domid, $0) }
    }

    /// `xm network-attach DOM key=value...`: a new vif on a running domain. The spec is
    /// checked as at create (MAC, bridge, names); then the engine must be able to hot-plug
    /// a NIC, else the request fails before anything is made.
    /// - Parameter spec: the vif spec (`mac=..,bridge=..,script=..,ip=..,vifname=..,rate=..`).
    /// - Throws: `XendError`: bad spec (400), engine without hot-plug (503), script failure (400).
    public func networkAttach(_ dom: String, spec: String) throws(XendError) -> VifInfo {
        let (r, p, e) = try live(dom, for: "attach a network device to")
        let v: VifSpec
        do { v = try VifSpec(parsing: spec) } catch { throw XendError(.badRequest, "bad vif spec: \(error.message)") }
        guard let nets else { throw XendError(.unavailable, "network interfaces are not available without netback") }
        guard e.capabilities.contains(.netHotplug) else {
            throw XendError(.unavailable, "Domain \(r.name) runs on the \(e.name) engine, which cannot hot-plug network devices; add the vif to its configuration and create the domain again.")
        }
        let rec = try nets.attach(domid: r.domid, name: r.name, spec: v, inUse: registry.vifsInUse(),
                                  socketOwner: e.devicePlan(for: r.config, domid: r.domid).socketOwner)
        let port: String?
        do { port = try e.attachNet(p, devid: rec.devid, socket: rec.socket, mac: rec.mac) } catch {
            try? nets.detach(domid: r.domid, devid: rec.devid)
            throw XendError(.internalError, "Device \(rec.devid) (vif) could not be connected. \(error)")
        }
        // Kept in the stored configuration (with the MAC it got and its slot): a reboot,
        // restore or migration brings it back there (see blockAttach).
        var kept = v
        kept.macGenerated = false
        kept.hotplugPort = port
        registry.update(r.domid, onlyLive: true) {
            $0.config.vifs.append(kept)
            if port == nil { $0.hotplugged = ($0.hotplugged ?? []) + ["vif \(rec.devid)"] }
        }
        dmesg("Domain \(r.name) (\(r.domid)): vif \(rec.devid) (\(rec.vifname)) attached")
        return vifInfo(r.domid, rec)
    }

    /// `xm network-detach DOM DEVID`.
    /// - Throws: `XendError`: no such vif (400), engine without hot-unplug (503).
    public func networkDetach(_ dom: String, devid: Int) throws(XendError) -> [VifInfo] {
        let (r, p, e) = try live(dom, for: "detach a network device from")
        guard let nets, nets.records(r.domid).contains(where: { $0.devid == devid }) else {
            throw XendError(.badRequest, "Device \(devid) not connected")
        }
        guard e.capabilities.contains(.netHotplug) else {
            throw XendError(.unavailable, "Domain \(r.name) runs on the \(e.name) engine, which cannot hot-unplug network devices; its vifs go when the domain ends.")
        }
        let mac = nets.records(r.domid).first { $0.devid == devid }?.mac
        do { try e.detachNet(p, devid: devid) } catch { throw XendError(.internalError, "\(error)") }
        try nets.detach(domid: r.domid, devid: devid)
        registry.update(r.domid, onlyLive: true) { rec in
            if let mac { rec.config.vifs.removeAll { $0.mac.description == mac } }
            rec.hotplugged?.removeAll { $0 == "vif \(devid)" }
            if rec.hotplugged?.isEmpty == true { rec.hotplugged = nil }
        }
        dmesg("Domain \(r.name) (\(r.domid)): vif \(devid) detached")
        return nets.records(r.domid).map { vifInfo(r.domid, $0) }
    }
}
