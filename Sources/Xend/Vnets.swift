// Virtual networks (`xm vnet-create`, `vnet-list`, `vnet-delete`; Xen 3.0's XendVnet) on
// Linux VXLAN: each vnet is a bridge plus a VXLAN device whose VNI is the vnet id, kept in
// xenstore under /vnet/ID and re-made when xend starts.
import DomainConfig
import Foundation
import Logging
import XendAPI
import XenStore

/// The vnets of this host: checks, making and removing their bridges and VXLAN devices
/// (`VxlanLinks`), and their xenstore records (`/vnet/ID/config` holds the SXP;
/// `bridge`, `vnetif`, `security` are there for people and tools).
public final class VnetManager: @unchecked Sendable {
    /// xenstore directory of the vnets (Xen 3.0's `VNET_PATH`).
    public static let xenstoreRoot = "/vnet"

    let config: XendConfig
    let xenstore: XenStoreClient?
    let log: Logger
    private let lock = NSLock()

    /// - Parameters:
    ///   - config: xend-config's `vnet-port`, `vnet-group`, `vnet-peers`, `vnet-device`.
    ///   - xenstore: where vnets are recorded; nil refuses vnet-create.
    public init(config: XendConfig, xenstore: XenStoreClient?, logger: Logger) {
        self.config = config
        self.xenstore = xenstore
        self.log = logger
    }

    /// The vnets recorded in xenstore, by id (unreadable records are logged and skipped).
    func recorded() -> [VnetConfig] {
        guard let xs = xenstore, let ids = try? xs.directory(Self.xenstoreRoot) else { return [] }
        return ids.compactMap { id -> VnetConfig? in
            guard let text = try? xs.readIfPresent("\(Self.xenstoreRoot)/\(id)/config") else { return nil }
            do { return try VnetConfig(parsing: text, file: "xenstore \(Self.xenstoreRoot)/\(id)/config") }
            catch { log.error("vnet \(id): unreadable record: \(error)"); return nil }
        }.sorted { $0.id < $1.id }
    }

    func info(_ v: VnetConfig) -> VnetInfo {
        let present = VxlanLinks.exists(v.vnetif)
        let dev = present ? VxlanLinks.json(["-d", "link", "show", "dev", v.vnetif]).first
            .flatMap { ($0["linkinfo"] as? [String: Any])?["info_data"] as? [String: Any] }?["link"] as? String : nil
        return VnetInfo(id: v.id, bridge: v.bridge, vnetif: v.vnetif, security: v.security, sxp: v.toSXP().description,
                        mtu: present ? VxlanLinks.mtu(v.vnetif) : nil, device: dev)
    }

    /// `xm vnet-list`: every vnet, by id.
    public func list() -> [VnetInfo] { recorded().map(info) }

    /// One vnet by its id (decimal).
    /// - Throws: `XendError` (bad request) when there is no such vnet.
    public func get(_ id: String) throws(XendError) -> VnetInfo {
        guard let v = recorded().first(where: { String($0.id) == id }) else { throw XendError(.badRequest, "vnet \(id) does not exist") }
        return info(v)
    }

    /// Where and how the VXLAN devices send: xend-config's settings, the underlay device
    /// (`vnet-device`, else the route to the first peer, else the default route) and its MTU.
    /// - Throws: `XendError` (unavailable) when no device can be found.
    func underlay() throws(XendError) -> VxlanUnderlay {
        let dev: String
        if !config.vnetDevice.isEmpty {
            guard VxlanLinks.exists(config.vnetDevice) else {
                throw XendError(.unavailable, "vnet-device \(config.vnetDevice) (xend-config.sxp) does not exist on this host")
            }
            dev = config.vnetDevice
        } else if let d = VxlanLinks.routeDevice(to: config.vnetPeers.first) {
            dev = d
        } else {
            throw XendError(.unavailable, config.vnetPeers.isEmpty
                ? "no default route to carry vnets: set vnet-device or vnet-peers in xend-config.sxp"
                : "no route to vnet peer \(config.vnetPeers[0]) (vnet-peers in xend-config.sxp)")
        }
        guard let m = VxlanLinks.mtu(dev), m - VxlanLinks.overhead >= 68 else {
            throw XendError(.unavailable, "the MTU of \(dev) leaves no room for VXLAN's \(VxlanLinks.overhead) bytes")
        }
        return VxlanUnderlay(port: config.vnetPort, group: config.vnetGroup, peers: config.vnetPeers, device: dev,
                             mtu: m - VxlanLinks.overhead)
    }

    /// Refuses `v` when its id, bridge or device is taken on this host or the UDP port is
    /// held by another program.
    func checkFree(_ v: VnetConfig, recorded: [VnetConfig]) throws(XendError) {
        if recorded.contains(where: { $0.id == v.id }) { throw XendError(.conflict, "vnet \(v.id) already exists") }
        if let o = recorded.first(where: { [$0.bridge, $0.vnetif].contains(v.bridge) || [$0.bridge, $0.vnetif].contains(v.vnetif) }) {
            throw XendError(.conflict, "vnet \(v.id): \(v.bridge)/\(v.vnetif) clashes with vnet \(o.id) (\(o.bridge), \(o.vnetif))")
        }
        for (key, name) in [("bridge", v.bridge), ("vnetif", v.vnetif)] where VxlanLinks.exists(name) {
            throw XendError(.conflict, "vnet \(v.id): \(key) \(name) already exists on this host")
        }
        let devices = VxlanLinks.vxlanDevices()
        if let d = devices.first(where: { $0.vni == v.id }) {
            throw XendError(.conflict, "vnet \(v.id): VXLAN id \(v.id) is already used by \(d.name) on this host")
        }
        if !devices.contains(where: { $0.port == config.vnetPort }) && VxlanLinks.udpPortTaken(config.vnetPort) {
            throw XendError(.conflict, "vnet \(v.id): UDP port \(config.vnetPort) (vnet-port in xend-config.sxp) is in use by another program")
        }
    }

    /// `xm vnet-create`: parses the file's text, checks, makes the bridge and the VXLAN
    /// device and records the vnet; on any failure nothing is left.
    /// - Throws: `XendError`: bad request (the file, naming file, line and key), conflict
    ///   (id, names or port taken), unavailable (no xenstore, no underlay), internal (an
    ///   `ip` command failed, with its error).
    public func create(text: String, file: String) throws(XendError) -> VnetInfo {
        let v: VnetConfig
        do { v = try VnetConfig(parsing: text, file: file) } catch { throw XendError(.badRequest, error.description) }
        guard let xs = xenstore else { throw XendError(.unavailable, "xenstored is not running: vnets cannot be recorded") }
        lock.lock(); defer { lock.unlock() }
        try checkFree(v, recorded: recorded())
        let u = try underlay()
        let rollback = Rollback()
        defer { rollback.finish() }
        try VxlanLinks.make(bridge: v.bridge, vxlan: v.vnetif, vni: v.id, u, rollback: rollback)
        let dir = "\(Self.xenstoreRoot)/\(v.id)"
        rollback.add { try? xs.rm(dir) }
        do {
            try xs.write(dir + "/config", v.toSXP().description)
            try xs.write(dir + "/bridge", v.bridge)
            try xs.write(dir + "/vnetif", v.vnetif)
            try xs.write(dir + "/security", v.security)
        } catch { throw XendError(.internalError, "vnet \(v.id): cannot record it in xenstore: \(error)") }
        rollback.commit()
        let dest = u.peers.isEmpty ? "group \(u.group)" : "peers \(u.peers.joined(separator: " "))"
        log.info("vnet \(v.id): bridge \(v.bridge), VXLAN \(v.vnetif) on \(u.device) port \(u.port) \(dest), MTU \(u.mtu)")
        return info(v)
    }

    /// `xm vnet-delete ID`: removes the VXLAN device, the bridge and the record.
    /// - Throws: `XendError`: bad request (no such vnet), conflict (a domain's vif is
    ///   still on the bridge: named), internal (an `ip` command failed).
    public func delete(_ id: String) throws(XendError) {
        lock.lock(); defer { lock.unlock() }
        guard let v = recorded().first(where: { String($0.id) == id }) else { throw XendError(.badRequest, "vnet \(id) does not exist") }
        let others = VxlanLinks.bridgePorts(v.bridge).filter { $0 != v.vnetif }
        guard others.isEmpty else {
            throw XendError(.conflict, "vnet \(v.id): bridge \(v.bridge) still has \(others.joined(separator: ", ")); detach those vifs first")
        }
        if VxlanLinks.exists(v.vnetif) && !VxlanLinks.isVxlan(v.vnetif) {
            throw XendError(.conflict, "vnet \(v.id): \(v.vnetif) is no longer a VXLAN device; left alone")
        }
        try VxlanLinks.remove(bridge: v.bridge, vxlan: v.vnetif)
        do { try xenstore?.rm("\(Self.xenstoreRoot)/\(v.id)") }
        catch { throw XendError(.internalError, "vnet \(v.id): devices removed, but its xenstore record stays: \(error)") }
        log.info("vnet \(v.id): removed")
    }

    /// At xend start: re-makes every recorded vnet whose devices are missing (after a
    /// host restart, or removed by hand); one that cannot be made is logged, the others go on.
    public func restore() {
        lock.lock(); defer { lock.unlock() }
        for v in recorded() {
            if VxlanLinks.exists(v.bridge) && VxlanLinks.exists(v.vnetif) { log.info("vnet \(v.id): present"); continue }
            let ports = VxlanLinks.bridgePorts(v.bridge)
            guard ports.isEmpty else {
                log.error("vnet \(v.id): \(v.vnetif) is missing but bridge \(v.bridge) has \(ports.joined(separator: ", ")); not re-made")
                continue
            }
            do {
                let u = try underlay()
                let rollback = Rollback()
                defer { rollback.finish() }
                try VxlanLinks.remove(bridge: v.bridge, vxlan: v.vnetif)
                try VxlanLinks.make(bridge: v.bridge, vxlan: v.vnetif, vni: v.id, u, rollback: rollback)
                rollback.commit()
                log.info("vnet \(v.id): re-made (bridge \(v.bridge), VXLAN \(v.vnetif) on \(u.device))")
            } catch {
                log.error("vnet \(v.id): cannot re-make it: \(error)")
            }
        }
    }
}
