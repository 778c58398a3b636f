// NIC hot-plug for qemu-engine domains (`xm network-attach` / `network-detach`) over QMP:
// chardev-add (a reconnecting socket to netback) → netdev_add vhost-user → device_add
// virtio-net-pci into a free hot-plug slot (QemuHotplugSlots.swift); removal backwards,
// after the guest released the device.
import Foundation
import QemuEngine

extension QemuEngineDriver {
    /// - Throws: `EngineError` with QEMU's reason (no free slot, the back-end refused...);
    ///   whatever was added before the failing step is removed again.
    public func attachNet(_ p: EngineProcess, devid: Int, socket: String, mac: String) throws -> String? {
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
        do {
            return try plugIntoFreeSlot(p, ["driver": "virtio-net-pci", "id": id, "netdev": id + "net", "mac": mac, "vectors": 0])
        } catch {
            try? qmp(p, "netdev_del", ["id": id + "net"])
            try? qmp(p, "chardev-remove", ["id": id + "chr"])
            throw error
        }
    }

    /// - Throws: `EngineError` when QEMU refuses (a NIC on the root complex cannot be
    ///   unplugged) or the guest does not release it within 15 s.
    public func detachNet(_ p: EngineProcess, devid: Int) throws {
        let id = "vif\(devid)"
        try unplug(p, id: id, what: "NIC \(id)",
                   rootBus: "Device \(devid) (vif) cannot be detached: it is on the domain's root PCI bus (a NIC from the configuration); only NICs added with network-attach can be removed while the domain runs")
        try? qmp(p, "netdev_del", ["id": id + "net"])
        try? qmp(p, "chardev-remove", ["id": id + "chr"])
    }
}
