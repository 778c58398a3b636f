// The VFIO ioctls pciback makes (Linux <linux/vfio.h>, Documentation/driver-api/vfio.rst):
// container and group set-up, a device descriptor by name, and function-level reset.
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// VFIO ioctl request numbers: `_IO(VFIO_TYPE ';', VFIO_BASE 100 + n)`.
public enum VfioIoctl {
    public static let getAPIVersion: UInt = 0x3B64      // VFIO_GET_API_VERSION
    public static let checkExtension: UInt = 0x3B65     // VFIO_CHECK_EXTENSION
    public static let setIOMMU: UInt = 0x3B66           // VFIO_SET_IOMMU
    public static let groupGetStatus: UInt = 0x3B67     // VFIO_GROUP_GET_STATUS
    public static let groupSetContainer: UInt = 0x3B68  // VFIO_GROUP_SET_CONTAINER
    public static let groupGetDeviceFD: UInt = 0x3B6A   // VFIO_GROUP_GET_DEVICE_FD
    public static let deviceGetInfo: UInt = 0x3B6B      // VFIO_DEVICE_GET_INFO
    public static let deviceReset: UInt = 0x3B6F        // VFIO_DEVICE_RESET
    /// VFIO_API_VERSION.
    public static let apiVersion: Int32 = 0
    /// VFIO_TYPE1_IOMMU and VFIO_TYPE1v2_IOMMU.
    public static let type1IOMMU: UInt = 1, type1v2IOMMU: UInt = 3
    /// `vfio_group_status.flags`: VFIO_GROUP_FLAGS_VIABLE.
    public static let groupViable: UInt32 = 1 << 0
    /// `vfio_device_info.flags`: VFIO_DEVICE_FLAGS_RESET.
    public static let deviceCanReset: UInt32 = 1 << 0
}

/// A VFIO failure; `message` names the step, the device and the errno text.
public struct VfioError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One IOMMU group opened for a domain: the container (`/dev/vfio/vfio`) and the group
/// (`/dev/vfio/N`) descriptors, both opened by xend and handed over.
public struct VfioGroup: Sendable {
    public let container: Int32
    public let group: Int32
    public init(container: Int32, group: Int32) { self.container = container; self.group = group }

    static func errText() -> String { String(cString: strerror(errno)) }

    /// Checks the API version and that the group is viable (every function of it bound to
    /// vfio-pci or harmless), sets the container and a type-1 IOMMU on it.
    /// - Throws: `VfioError` naming the step.
    public func attach() throws(VfioError) {
        guard clinux_ioctl_int(container, VfioIoctl.getAPIVersion, 0) == VfioIoctl.apiVersion else {
            throw VfioError("VFIO container: unknown API version")
        }
        var status: (UInt32, UInt32) = (8, 0)
        guard withUnsafeMutablePointer(to: &status, { clinux_ioctl_ptr(group, VfioIoctl.groupGetStatus, $0) }) == 0 else {
            throw VfioError("VFIO group status: \(Self.errText())")
        }
        guard status.1 & VfioIoctl.groupViable != 0 else {
            throw VfioError("VFIO group not viable: a function of its IOMMU group is bound to a host driver")
        }
        var fd = container
        guard withUnsafeMutablePointer(to: &fd, { clinux_ioctl_ptr(group, VfioIoctl.groupSetContainer, $0) }) == 0 else {
            throw VfioError("VFIO group set container: \(Self.errText())")
        }
        let type = clinux_ioctl_int(container, VfioIoctl.checkExtension, VfioIoctl.type1v2IOMMU) == 1
            ? VfioIoctl.type1v2IOMMU : VfioIoctl.type1IOMMU
        guard clinux_ioctl_int(container, VfioIoctl.setIOMMU, type) == 0 else {
            throw VfioError("VFIO set IOMMU type \(type): \(Self.errText())")
        }
    }

    /// The device descriptor of function `name` (`0000:00:04.0`) in this group.
    /// - Throws: `VfioError` naming the device.
    public func device(_ name: String) throws(VfioError) -> Int32 {
        let fd = name.withCString { clinux_ioctl_ptr(group, VfioIoctl.groupGetDeviceFD, UnsafeMutableRawPointer(mutating: $0)) }
        guard fd >= 0 else { throw VfioError("PCI device \(name): VFIO device descriptor: \(Self.errText())") }
        return fd
    }

    /// Resets the function (`VFIO_DEVICE_RESET`: FLR, power-management or bus reset, as
    /// the kernel can) on its descriptor `fd`.
    /// - Throws: `VfioError` naming the device when it has no reset or the reset fails.
    public static func reset(_ fd: Int32, name: String) throws(VfioError) {
        // struct vfio_device_info { argsz, flags, num_regions, num_irqs, cap_offset, pad }
        var info: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) = (24, 0, 0, 0, 0, 0)
        guard withUnsafeMutablePointer(to: &info, { clinux_ioctl_ptr(fd, VfioIoctl.deviceGetInfo, $0) }) == 0 else {
            throw VfioError("PCI device \(name): VFIO device info: \(errText())")
        }
        guard info.1 & VfioIoctl.deviceCanReset != 0 else {
            throw VfioError("PCI device \(name) cannot be reset (no function-level, power-management or bus reset)")
        }
        guard clinux_ioctl_int(fd, VfioIoctl.deviceReset, 0) == 0 else {
            throw VfioError("PCI device \(name): reset failed: \(errText())")
        }
    }
}
