// The host's PCI devices as Linux's sysfs shows them (Documentation/ABI/testing/sysfs-bus-pci),
// under a root that is `/sys` on a host and a temporary tree in unit tests.
import DomainConfig
#if canImport(Glibc)
import Glibc
#endif

/// Why a sysfs read or write failed; `message` names the path and the errno text.
public struct SysfsError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The file operations the PCI code makes on sysfs. `HostSysfs` does them on a directory
/// tree; unit tests wrap it to play the kernel's part (bind, unbind, probe).
public protocol SysfsAccess: Sendable {
    /// Whether `path` (relative to the root, e.g. `bus/pci/devices/0000:00:04.0`) exists.
    func exists(_ path: String) -> Bool
    /// The last component of the target of symbolic link `path`, nil when it is no link.
    func linkName(_ path: String) -> String?
    /// The entries of directory `path` (without `.` and `..`), sorted; empty when absent.
    func list(_ path: String) -> [String]
    /// Writes `value` to the attribute at `path` in one `write`.
    /// - Throws: `SysfsError` naming the path and errno.
    func write(_ path: String, _ value: String) throws(SysfsError)
}

/// `SysfsAccess` on the directory tree at `root` (`/sys`).
public struct HostSysfs: SysfsAccess {
    public let root: String
    public init(root: String = "/sys") { self.root = root }

    func full(_ p: String) -> String { root + "/" + p }

    public func exists(_ path: String) -> Bool { access(full(path), F_OK) == 0 }

    public func linkName(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(full(path), &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let target = String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return target.split(separator: "/").last.map(String.init)
    }

    public func list(_ path: String) -> [String] {
        guard let d = opendir(full(path)) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { out.append(name) }
        }
        return out.sorted()
    }

    public func write(_ path: String, _ value: String) throws(SysfsError) {
        let p = full(path)
        let fd = open(p, O_WRONLY | O_TRUNC | O_CLOEXEC)   // as a shell's `>` (sysfs ignores the truncation)
        guard fd >= 0 else { throw SysfsError("\(p): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var v = value
        let n = v.withUTF8 { Glibc.write(fd, $0.baseAddress, $0.count) }
        if n < 0 { throw SysfsError("write '\(value.filter { $0 != "\n" })' to \(p): \(String(cString: strerror(errno)))") }
    }
}

/// One PCI function's host state: its driver and IOMMU group.
public struct PciHostDevice: Sendable, Equatable {
    public var address: PciAddress
    /// The bound driver's name (`e1000e`, `vfio-pci`), nil when none is bound.
    public var driver: String?
    /// The IOMMU group number (`/dev/vfio/N`), nil without an IOMMU.
    public var iommuGroup: Int?
}

/// Reads and changes which driver holds a PCI function, through sysfs.
///
/// Paths: `bus/pci/devices/BDF/{driver,iommu_group,driver_override}`,
/// `bus/pci/drivers/NAME/{bind,unbind}`, `bus/pci/drivers_probe`,
/// `kernel/iommu_groups/N/devices/`.
public struct PciSysfs: Sendable {
    public let fs: any SysfsAccess
    public init(_ fs: any SysfsAccess) { self.fs = fs }

    /// The driver `vfio-pci` binds devices for VFIO.
    public static let vfioDriver = "vfio-pci"
    /// Drivers a group member may be bound to without making the group unusable for VFIO
    /// (vfio's viability rule: VFIO drivers, pci-stub, and PCIe port services of bridges).
    public static let groupSafeDrivers: Set<String> = ["vfio-pci", "pci-stub", "pcieport"]

    func dev(_ a: PciAddress) -> String { "bus/pci/devices/\(a)" }

    /// The device's state, nil when no such function exists.
    public func device(_ a: PciAddress) -> PciHostDevice? {
        guard fs.exists(dev(a)) else { return nil }
        return PciHostDevice(address: a, driver: fs.linkName(dev(a) + "/driver"),
                             iommuGroup: fs.linkName(dev(a) + "/iommu_group").flatMap { Int($0) })
    }

    /// The functions in IOMMU group `group`, sorted.
    public func groupMembers(_ group: Int) -> [PciAddress] {
        fs.list("kernel/iommu_groups/\(group)/devices").compactMap { try? PciAddress(parsing: $0) }.sorted()
    }

    /// Takes the function from its driver (if any) and binds it to `vfio-pci`:
    /// `driver_override` = vfio-pci, `unbind`, `drivers_probe`.
    /// - Throws: `SysfsError` naming the step; when vfio-pci does not take the device, the
    ///   override is cleared and the original driver bound again before throwing.
    public func bindToVfio(_ a: PciAddress) throws(SysfsError) {
        let original = fs.linkName(dev(a) + "/driver")
        if original == PciSysfs.vfioDriver { return }
        try fs.write(dev(a) + "/driver_override", PciSysfs.vfioDriver)
        if let d = original {
            do { try fs.write("bus/pci/drivers/\(d)/unbind", a.description) } catch {
                try? fs.write(dev(a) + "/driver_override", "\n")
                throw error
            }
        }
        try? fs.write("bus/pci/drivers_probe", a.description)
        if fs.linkName(dev(a) + "/driver") != PciSysfs.vfioDriver {
            try? fs.write(dev(a) + "/driver_override", "\n")
            if let d = original { try? fs.write("bus/pci/drivers/\(d)/bind", a.description) }
            throw SysfsError("PCI device \(a): vfio-pci did not bind it (is the vfio-pci module loaded? modprobe vfio-pci)")
        }
    }

    /// Gives the function back: clears `driver_override`, unbinds it from vfio-pci and binds
    /// `original` (none: the device stays unbound, as it was).
    /// - Throws: `SysfsError` naming the step that failed.
    public func giveBack(_ a: PciAddress, to original: String?) throws(SysfsError) {
        try fs.write(dev(a) + "/driver_override", "\n")
        if let cur = fs.linkName(dev(a) + "/driver"), cur == PciSysfs.vfioDriver {
            try fs.write("bus/pci/drivers/\(cur)/unbind", a.description)
        }
        guard let original, original != PciSysfs.vfioDriver else { return }
        do { try fs.write("bus/pci/drivers/\(original)/bind", a.description) } catch {
            try fs.write("bus/pci/drivers_probe", a.description)
        }
        if fs.linkName(dev(a) + "/driver") != original {
            throw SysfsError("PCI device \(a): host driver \(original) did not take it back")
        }
    }
}
