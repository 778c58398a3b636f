// Disk hot-plug for qemu-engine domains (`xm block-attach` / `block-detach`) over QMP:
// chardev-add (a reconnecting socket to the disk's blkback) → device_add
// vhost-user-blk-pci (id = the guest device name, one queue like the configuration's disks)
// into a free hot-plug slot (QemuHotplugSlots.swift); removal backwards, after the guest
// released the device.
import Foundation
import QemuEngine

extension QemuEngineDriver {
    /// - Throws: `EngineError` with QEMU's reason (no free slot, blkback refused the
    ///   connection...); the chardev is removed again then.
    public func attachBlock(_ p: EngineProcess, vdev: String, socket: String) throws -> String? {
        let chr = vdev + "chr"
        try qmp(p, "chardev-add", ["id": chr, "backend": ["type": "socket", "data": [
            "addr": ["type": "unix", "data": ["path": socket]], "server": false, "reconnect": 1]]])
        do {
            return try plugIntoFreeSlot(p, ["driver": "vhost-user-blk-pci", "id": vdev, "chardev": chr, "num-queues": 1])
        } catch {
            try? qmp(p, "chardev-remove", ["id": chr])
            throw error
        }
    }

    /// - Throws: `EngineError` when the disk is on the root complex (a disk the domain was
    ///   started with) or the guest does not release it within 15 s; with `force` QEMU is
    ///   not waited for beyond 3 s and the chardev goes regardless.
    public func detachBlock(_ p: EngineProcess, vdev: String, force: Bool) throws {
        let rootBus = "Device \(vdev) (vbd) cannot be detached: it is on the domain's root PCI bus (a disk the domain was started with); only disks added with block-attach can be removed while the domain runs"
        do {
            try unplug(p, id: vdev, what: "disk \(vdev)", rootBus: rootBus, timeout: force ? 3 : 15)
        } catch {
            guard force, !"\(error)".contains("root PCI bus") else { throw error }
        }
        try? qmp(p, "chardev-remove", ["id": vdev + "chr"])
    }
}
