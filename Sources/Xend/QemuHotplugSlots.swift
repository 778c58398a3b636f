// The hot-plug slots of qemu-engine domains, shared by NICs (`xm network-attach`,
// QemuNetHotplug.swift) and disks (`xm block-attach`, QemuBlockHotplug.swift): q35's root
// complex takes no hot-plugged device, so every q35 domain gets empty PCIe root ports
// (`hpnetN`, QemuLaunchInputs.netHotplugSlots) and a device goes into the first empty one
// (i440fx HVM domains hot-plug onto pci.0 through ACPI). Removal is QMP device_del, then
// waiting until QEMU dropped the device (it emits DEVICE_DELETED and removes it from
// /machine/peripheral once the guest's pciehp answered the attention button, about 5 s).
import Foundation
import QemuEngine

extension QemuEngineDriver {
    /// Empty root ports each q35 domain gets (QemuLaunchInputs.netHotplugSlots), for NICs
    /// and disks together.
    public static let netHotplugSlots = 4

    /// - Parameter timeout: seconds to wait for QEMU's answer.
    func qmp(_ p: EngineProcess, _ command: String, _ args: [String: Any], timeout: Double = 10) throws {
        do { _ = try session(p).qmp.execute(command, args, timeout: timeout) }
        catch let e as EngineError { throw e }
        catch { throw EngineError("qemu: \(command): \(error)") }
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

    /// `device_add`s `device` (its `id` set) into the first empty root port (q35) or onto
    /// the machine's hot-plug bus (i440fx), and checks QEMU put it there.
    /// - Returns: the root port (`hpnetN`), which a later command line can name again; nil
    ///   on i440fx, where QEMU picked the slot.
    /// - Throws: `EngineError` when a vCPU was unplugged from this QEMU (it would crash),
    ///   no root port is free (naming how many there are) or QEMU refused; nothing is left
    ///   added then.
    /// - Parameter timeout: seconds QEMU may take to answer device_add (vfio-pci pins and
    ///   maps all guest RAM first).
    @discardableResult
    func plugIntoFreeSlot(_ p: EngineProcess, _ device: [String: Any], timeout: Double = 10) throws -> String? {
        var device = device
        let id = device["id"] as? String ?? "?"
        // QEMU 7.2 (Debian 12's) crashes (SIGSEGV, or SIGABRT on heap corruption) on any PCI
        // device_add once a CPU was unplugged from it; the slots setVcpuCount unplugged are
        // in `.unplugged` (QemuEngineAdapter), kept across xend restarts.
        let unplugged = unpluggedVcpus(p)
        if !unplugged.isEmpty {
            throw EngineError("vCPU \(unplugged.joined(separator: ", ")) was unplugged from this domain's QEMU (xm vcpu-set), and QEMU 7.2 crashes adding a device after that, which would end the domain: reboot it first (it keeps its vCPU count), then attach", badRequest: true)
        }
        let ports = try rootPorts(p)
        if !ports.isEmpty {
            guard let free = ports.keys.sorted().first(where: { ports[$0] == 0 }) else {
                throw EngineError("no free hot-plug slot: the domain's \(ports.count) PCIe root ports are in use (detach a device added with network-attach, block-attach or pci-attach first)")
            }
            device["bus"] = free
        }
        try qmp(p, "device_add", device, timeout: timeout)
        if let bus = device["bus"] as? String, try rootPorts(p)[bus] != 1 {
            try? qmp(p, "device_del", ["id": id])
            throw EngineError("QEMU did not place device \(id) on root port \(bus)")
        }
        return device["bus"] as? String
    }

    /// Whether QEMU still has device `id` (`/machine/peripheral`).
    func hasDevice(_ p: EngineProcess, _ id: String) throws -> Bool {
        do {
            let r = try session(p).qmp.execute("qom-list", ["path": "/machine/peripheral"]) as? [[String: Any]] ?? []
            return r.contains { $0["name"] as? String == id }
        } catch { throw EngineError("qemu: qom-list: \(error)") }
    }

    /// `device_del` of `id`, then waits up to `timeout` seconds until QEMU dropped it
    /// (after the guest released it); `wait: false` returns right after the request.
    /// - Parameter what: `NIC vif1`, `disk xvdb`, for messages.
    /// - Throws: `EngineError`: the device is on a bus without hot-plug (`rootBus` says
    ///   why that matters), QEMU refused, or the guest did not release it in time.
    func unplug(_ p: EngineProcess, id: String, what: String, rootBus: String, timeout: Double = 15, wait: Bool = true) throws {
        do { try qmp(p, "device_del", ["id": id]) } catch {
            if "\(error)".contains("does not support hotplugging") { throw EngineError(rootBus) }
            throw error
        }
        guard wait else { return }
        let deadline = Date().addingTimeInterval(timeout)
        while try hasDevice(p, id) {
            if Date() > deadline { throw EngineError("the guest did not release \(what) within \(Int(timeout)) s") }
            usleep(200_000)
        }
    }
}
