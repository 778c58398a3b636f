// NIC hot-plug for qemu-engine domains (`xm network-attach` / `network-detach`) over QMP:
// chardev-add (a reconnecting socket to netback) → netdev_add vhost-user → device_add
// virtio-net-pci into a free root port (q35) or onto pci.0 (i440fx); removal backwards,
// after the guest released the device (PCIe native hot-plug: the guest's pciehp answers
// the attention button after about 5 s).
import Foundation
import QemuEngine

extension QemuEngineDriver: NetHotplugDriver {
    /// Empty root ports each q35 domain gets (QemuLaunchInputs.netHotplugSlots).
    public static let netHotplugSlots = 2

    func qmp(_ p: EngineProcess, _ command: String, _ args: [String: Any]) throws {
        do { _ = try session(p).qmp.execute(command, args) }
        catch let e as EngineError { throw e }
        catch { throw EngineError("qemu: \(command): \(error)") }
    }

    /// - Throws: `EngineError` with QEMU's reason (no free slot, the back-end refused...);
    ///   whatever was added before the failing step is removed again.
    public func attachNet(_ p: EngineProcess, devid: Int, socket: String, mac: String) throws {
        let id = "vif\(devid)"
        try qmp(p, "chardev-add", ["id": id + "chr", "backend": ["type": "socket", "data": [
            "addr": ["type": "unix", "data": ["path": socket]], "server": false, "reconnect": 1]]])
        do {
            try qmp(p, "netdev_add", ["type": "vhost-user", "id": id + "net", "chardev": id + "chr"])
        } catch {
            try? qmp(p, "chardev-remove", ["id": id + "chr"])
            throw error
        }
        // vectors=0: QEMU 7.2 under TCG crashes in vhost_net_start with MSI-X (see QemuCommandLine).
        let device: [String: Any] = ["driver": "virtio-net-pci", "id": id, "netdev": id + "net", "mac": mac, "vectors": 0]
        var errors: [String] = []
        let buses: [String?] = (0..<Self.netHotplugSlots).map { "hpnet\($0)" } + [nil]
        for bus in buses {
            var d = device
            if let bus { d["bus"] = bus }
            do { try qmp(p, "device_add", d); return } catch { errors.append("\(bus ?? "default bus"): \(error)") }
        }
        try? qmp(p, "netdev_del", ["id": id + "net"])
        try? qmp(p, "chardev-remove", ["id": id + "chr"])
        throw EngineError("no free hot-plug slot for NIC \(id) (\(Self.netHotplugSlots) root ports per domain): \(errors.joined(separator: "; "))")
    }

    /// - Throws: `EngineError` when QEMU refuses (a NIC on the root complex cannot be
    ///   unplugged) or the guest does not release it within 15 s.
    public func detachNet(_ p: EngineProcess, devid: Int) throws {
        let id = "vif\(devid)"
        try qmp(p, "device_del", ["id": id])
        let deadline = Date().addingTimeInterval(15)
        while true {
            let gone: Bool
            do {
                let r = try session(p).qmp.execute("qom-list", ["path": "/machine/peripheral"]) as? [[String: Any]] ?? []
                gone = !r.contains { $0["name"] as? String == id }
            } catch { throw EngineError("qemu: qom-list: \(error)") }
            if gone { break }
            if Date() > deadline { throw EngineError("the guest did not release NIC \(id) within 15 s") }
            usleep(200_000)
        }
        try? qmp(p, "netdev_del", ["id": id + "net"])
        try? qmp(p, "chardev-remove", ["id": id + "chr"])
    }
}
