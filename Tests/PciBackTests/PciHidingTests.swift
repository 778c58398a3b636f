import DomainConfig
import Foundation
import Synchronization
import Testing
@testable import PciBack

/// A sysfs tree in a temporary directory, and the kernel's part played on it: writes to
/// `unbind`, `bind` and `drivers_probe` move the device's `driver` link as Linux would
/// (`driver_override` honoured). A unit-test double only: the real thing is proven by the
/// nested VFIO test (integration/README.md).
final class FakeKernelSysfs: SysfsAccess, @unchecked Sendable {
    let host: HostSysfs
    let root: String
    /// Drivers that refuse to bind (a module that is not loaded).
    let missing: Set<String>
    let writes = Mutex<[String]>([])

    init(missing: Set<String> = []) {
        root = NSTemporaryDirectory() + "pci-sysfs-\(UUID().uuidString)"
        host = HostSysfs(root: root)
        self.missing = missing
        try! FileManager.default.createDirectory(atPath: root + "/bus/pci/drivers", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: root + "/bus/pci/drivers_probe", contents: nil)
        for d in ["vfio-pci", "e1000e", "ahci", "pcieport"] { driver(d) }
    }
    deinit { try? FileManager.default.removeItem(atPath: root) }

    func driver(_ name: String) {
        let dir = root + "/bus/pci/drivers/" + name
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for f in ["bind", "unbind"] { FileManager.default.createFile(atPath: dir + "/" + f, contents: nil) }
    }

    /// A function `bdf` in IOMMU group `group` (nil: no IOMMU), bound to `driver`.
    func device(_ bdf: String, group: Int?, driver: String?) {
        let dir = root + "/bus/pci/devices/" + bdf
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: dir + "/driver_override", contents: Data("(null)\n".utf8))
        if let g = group {
            let gdir = root + "/kernel/iommu_groups/\(g)/devices"
            try! FileManager.default.createDirectory(atPath: gdir, withIntermediateDirectories: true)
            try! FileManager.default.createSymbolicLink(atPath: gdir + "/" + bdf, withDestinationPath: dir)
            try! FileManager.default.createSymbolicLink(atPath: dir + "/iommu_group", withDestinationPath: root + "/kernel/iommu_groups/\(g)")
        }
        if let driver { bind(bdf, driver) }
    }

    func bind(_ bdf: String, _ driver: String) {
        let link = root + "/bus/pci/devices/\(bdf)/driver"
        try? FileManager.default.removeItem(atPath: link)
        try! FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: "../../../bus/pci/drivers/" + driver)
    }

    func currentDriver(_ bdf: String) -> String? { host.linkName("bus/pci/devices/\(bdf)/driver") }
    func override(_ bdf: String) -> String {
        (try? String(contentsOfFile: root + "/bus/pci/devices/\(bdf)/driver_override", encoding: .utf8)) ?? ""
    }

    func exists(_ path: String) -> Bool { host.exists(path) }
    func linkName(_ path: String) -> String? { host.linkName(path) }
    func list(_ path: String) -> [String] { host.list(path) }

    func write(_ path: String, _ value: String) throws(SysfsError) {
        writes.withLock { $0.append("\(path) <- \(value)") }
        let parts = path.split(separator: "/").map(String.init)
        let bdf = value.trimmingCharacters(in: .whitespacesAndNewlines)
        if path == "bus/pci/drivers_probe" {
            // The kernel's probe: driver_override wins, else the device's own host driver
            // (tests: e1000e for devices whose name ends in 0, else none).
            guard currentDriver(bdf) == nil else { return }
            let o = override(bdf).trimmingCharacters(in: .whitespacesAndNewlines)
            let d = o.isEmpty || o == "(null)" ? nil : o
            if let d, !missing.contains(d) { bind(bdf, d) }
            return
        }
        if parts.count == 5, parts[2] == "drivers" {
            let drv = parts[3]
            switch parts[4] {
            case "unbind":
                guard currentDriver(bdf) == drv else { throw SysfsError("\(path): No such device") }
                try? FileManager.default.removeItem(atPath: root + "/bus/pci/devices/\(bdf)/driver")
            case "bind":
                guard currentDriver(bdf) == nil, !missing.contains(drv) else { throw SysfsError("\(path): No such device") }
                bind(bdf, drv)
            default: break
            }
            return
        }
        try host.write(path, value)
    }
}

@Suite struct PciHidingTests {
    let a = try! PciAddress(parsing: "0000:00:04.0")
    let b = try! PciAddress(parsing: "0000:00:05.0")

    @Test func takesFromTheHostDriverAndGivesBack() throws {
        let k = FakeKernelSysfs()
        k.device("0000:00:04.0", group: 3, driver: "e1000e")
        let s = PciSysfs(k)
        let checked = try PciHiding.check([a], domid: 1, sysfs: s, policy: PciHostPolicy())
        #expect(checked == [PciHostDevice(address: a, driver: "e1000e", iommuGroup: 3)])
        let taken = try PciHiding.take(checked, sysfs: s)
        #expect(taken == [PciTaken(address: a, originalDriver: "e1000e", iommuGroup: 3)])
        #expect(k.currentDriver("0000:00:04.0") == "vfio-pci")
        #expect(k.override("0000:00:04.0") == "vfio-pci")
        #expect(k.writes.withLock { $0 } == ["bus/pci/devices/0000:00:04.0/driver_override <- vfio-pci",
                                             "bus/pci/drivers/e1000e/unbind <- 0000:00:04.0",
                                             "bus/pci/drivers_probe <- 0000:00:04.0"])
        try s.giveBack(a, to: "e1000e")
        #expect(k.currentDriver("0000:00:04.0") == "e1000e")
        #expect(k.override("0000:00:04.0") == "\n")
    }

    @Test func anUnboundDeviceGoesBackToUnbound() throws {
        let k = FakeKernelSysfs()
        k.device("0000:00:04.0", group: 3, driver: nil)
        let s = PciSysfs(k)
        let taken = try PciHiding.take(try PciHiding.check([a], domid: 1, sysfs: s, policy: PciHostPolicy()), sysfs: s)
        #expect(k.currentDriver("0000:00:04.0") == "vfio-pci")
        try s.giveBack(a, to: taken[0].originalDriver)
        #expect(k.currentDriver("0000:00:04.0") == nil)
    }

    func refusal(_ k: FakeKernelSysfs, _ addrs: [PciAddress], _ policy: PciHostPolicy = PciHostPolicy()) -> String {
        do { _ = try PciHiding.check(addrs, domid: 2, sysfs: PciSysfs(k), policy: policy); return "accepted" }
        catch { return error.message }
    }

    @Test func refusalsNameTheDevice() {
        let k = FakeKernelSysfs()
        k.device("0000:00:04.0", group: 3, driver: "e1000e")
        k.device("0000:00:05.0", group: 3, driver: "ahci")
        k.device("0000:00:06.0", group: nil, driver: nil)
        k.device("0000:00:07.0", group: 4, driver: "vfio-pci")
        k.device("0000:00:07.1", group: 4, driver: "pcieport")
        let c = try! PciAddress(parsing: "0000:00:06.0"), d = try! PciAddress(parsing: "0000:00:07.0")
        let absent = try! PciAddress(parsing: "0000:09:00.0")
        #expect(refusal(k, [absent]) == "PCI device 0000:09:00.0 does not exist on this host (no /sys/bus/pci/devices/0000:09:00.0)")
        #expect(refusal(k, [a]) == "PCI device 0000:00:04.0 shares IOMMU group 3 with 0000:00:05.0, which is bound to host driver ahci")
        // Both functions of the group in one request: allowed.
        #expect(refusal(k, [a, b]) == "accepted")
        #expect(refusal(k, [c]) == "PCI device 0000:00:06.0 has no IOMMU group: VFIO needs an IOMMU (intel_iommu=on or amd_iommu=on)")
        #expect(refusal(k, [d], PciHostPolicy(assigned: [d: 1])) == "PCI device 0000:00:07.0 is already assigned to domain 1")
        #expect(refusal(k, [d], PciHostPolicy(hideOnCreate: false)) == "accepted")   // already on vfio-pci; the bridge is harmless
        #expect(refusal(k, [a, b], PciHostPolicy(hideOnCreate: false))
                == "PCI device 0000:00:04.0 is in use by host driver e1000e and is not hidden (add it to pci-hide, or set pci-hide-on-create yes)")
        #expect(refusal(k, [a, b], PciHostPolicy(hidden: [a, b], hideOnCreate: false)) == "accepted")
        #expect(refusal(k, [d, d]) == "PCI device 0000:00:07.0 is named twice")
    }

    @Test func nothingIsLeftHalfBound() {
        // vfio-pci missing: the first device is given back to its driver, the error names it.
        let k = FakeKernelSysfs(missing: ["vfio-pci"])
        k.device("0000:00:04.0", group: 3, driver: "e1000e")
        k.device("0000:00:05.0", group: 3, driver: nil)
        let s = PciSysfs(k)
        let checked = try! PciHiding.check([a, b], domid: 1, sysfs: s, policy: PciHostPolicy())
        #expect(throws: PciRefusal("PCI device 0000:00:04.0: vfio-pci did not bind it (is the vfio-pci module loaded? modprobe vfio-pci)")) {
            try PciHiding.take(checked, sysfs: s)
        }
        #expect(k.currentDriver("0000:00:04.0") == "e1000e")
        #expect(k.override("0000:00:04.0") == "\n")
        #expect(k.currentDriver("0000:00:05.0") == nil)
    }

    @Test func laterFailureGivesEarlierDevicesBack() {
        // The second device's host driver refuses to let go: the first goes back too.
        let k = FakeKernelSysfs()
        k.device("0000:00:04.0", group: 3, driver: "e1000e")
        k.device("0000:00:05.0", group: 3, driver: "ahci")
        try? FileManager.default.removeItem(atPath: k.root + "/bus/pci/drivers/ahci/unbind")
        let s = PciSysfs(HostBackedButBrokenUnbind(k))
        let checked = try! PciHiding.check([a, b], domid: 1, sysfs: s, policy: PciHostPolicy())
        #expect(throws: PciRefusal.self) { try PciHiding.take(checked, sysfs: s) }
        #expect(k.currentDriver("0000:00:04.0") == "e1000e")
        #expect(k.currentDriver("0000:00:05.0") == "ahci")
        #expect(k.override("0000:00:05.0") == "\n")
    }

    @Test func hostSysfsNamesPathAndErrno() {
        let s = HostSysfs(root: "/nonexistent-\(UUID().uuidString)")
        #expect(throws: SysfsError.self) { try s.write("bus/pci/drivers_probe", "0000:00:04.0") }
        #expect(s.list("bus/pci/devices").isEmpty)
        #expect(!s.exists("bus"))
    }
}

/// The fake kernel, with ahci's unbind failing (a driver that will not let go).
struct HostBackedButBrokenUnbind: SysfsAccess {
    let k: FakeKernelSysfs
    init(_ k: FakeKernelSysfs) { self.k = k }
    func exists(_ path: String) -> Bool { k.exists(path) }
    func linkName(_ path: String) -> String? { k.linkName(path) }
    func list(_ path: String) -> [String] { k.list(path) }
    func write(_ path: String, _ value: String) throws(SysfsError) {
        if path == "bus/pci/drivers/ahci/unbind" { throw SysfsError("\(path): Device or resource busy") }
        try k.write(path, value)
    }
}
