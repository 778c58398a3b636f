// NIC hot-plug for qemu-engine domains (`xm network-attach` / `network-detach`) over QMP:
// chardev-add (a reconnecting socket to netback) → netdev_add vhost-user → device_add
// virtio-net-pci into a free root port (q35; an error when none is left) or onto pci.0
// (i440fx); removal backwards,
// after the guest released the device (PCIe native hot-plug: the guest's pciehp answers
// the attention button after about 5 s).
import Foundation
import QemuEngine

extension QemuEngineDriver {
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
        var device: [String: Any] = ["driver": "virtio-net-pci", "id": id, "netdev": id + "net", "mac": mac, "vectors": 0]
        do {
            // q35's root complex takes no hot-plugged device: only an empty root port will do.
            // (HVM domains are i440fx, whose pci.0 hot-plugs through ACPI.)
            let ports = try rootPorts(p)
            if !ports.isEmpty {
                guard let free = ports.first(where: { $0.value == 0 })?.key else {
                    throw EngineError("no free hot-plug slot: the domain's \(ports.count) PCIe root ports are in use (detach a NIC added with network-attach first)")
                }
                device["bus"] = free
            }
            try qmp(p, "device_add", device)
            if let bus = device["bus"] as? String, try rootPorts(p)[bus] != 1 {
                try? qmp(p, "device_del", ["id": id])
                throw EngineError("QEMU did not place NIC \(id) on root port \(bus)")
            }
        } catch {
            try? qmp(p, "netdev_del", ["id": id + "net"])
            try? qmp(p, "chardev-remove", ["id": id + "chr"])
            throw error
        }
    }

    /// The domain's hot-plug root ports (`hpnetN`) and how many devices each holds, from
    /// QMP `query-pci`; empty for a machine without them.
    func rootPorts(_ p: EngineProcess) throws -> [String: Int] {
        let r: Any
        do { r = try session(p).qmp.execute("query-pci") } catch { throw EngineError("qemu: query-pci: \(error)") }
        var ports: [String: Int] = [:]
        func walk(_ devices: [[String: Any]]) {
            for d in devices {
                let bridge = d["pci_bridge"] as? [String: Any]
                let inner = bridge?["devices"] as? [[String: Any]] ?? []
                if let q = d["qdev_id"] as? String, q.hasPrefix("hpnet") { ports[q] = inner.count }
                walk(inner)
            }
        }
        for bus in r as? [[String: Any]] ?? [] { walk(bus["devices"] as? [[String: Any]] ?? []) }
        return ports
    }

    /// - Throws: `EngineError` when QEMU refuses (a NIC on the root complex cannot be
    ///   unplugged) or the guest does not release it within 15 s.
    public func detachNet(_ p: EngineProcess, devid: Int) throws {
        let id = "vif\(devid)"
        do { try qmp(p, "device_del", ["id": id]) } catch {
            if "\(error)".contains("does not support hotplugging") {
                throw EngineError("Device \(devid) (vif) cannot be detached: it is on the domain's root PCI bus (a NIC from the configuration); only NICs added with network-attach can be removed while the domain runs")
            }
            throw error
        }
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
