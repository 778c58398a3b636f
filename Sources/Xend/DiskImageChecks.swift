// What xend learns from a disk image's own header before it serves the disk: a `tap:qcow:`
// disk (DiskSpec format qcow2) whose header says qcow version 1, Xen 3's blktap format, is
// refused by name (QEMU's docs/interop/qcow2.txt: magic "QFI\xfb", then a big-endian
// version; version 1 is the older qcow format, 2 and 3 are qcow2).
import DomainConfig
#if canImport(Glibc)
import Glibc
#endif

enum DiskImageChecks {
    /// The qcow version in the first 8 bytes of an image (`QFI\xfb` + big-endian u32), nil
    /// when the bytes are not a qcow header.
    static func qcowVersion(_ header: [UInt8]) -> UInt32? {
        guard header.count >= 8, header[0] == 0x51, header[1] == 0x46, header[2] == 0x49, header[3] == 0xfb else { return nil }
        return UInt32(header[4]) << 24 | UInt32(header[5]) << 16 | UInt32(header[6]) << 8 | UInt32(header[7])
    }

    /// Refuses a disk declared qcow2 (`tap:qcow:`, `tap:qcow2:`, `format=qcow2`) whose image
    /// header says qcow version 1. A missing or unreadable image is left to the checks that
    /// open it (they name the error).
    /// - Throws: `XendError` (400) naming the disk.
    static func refuseOldQcow(_ d: DiskSpec) throws(XendError) {
        guard d.format == "qcow2", let path = d.path else { return }
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var b = [UInt8](repeating: 0, count: 8)
        guard pread(fd, &b, 8, 0) == 8, let v = qcowVersion(b) else { return }
        if v == 1 {
            throw BlockSupervisor.refuse(d, "\(path) is a qcow version 1 image (Xen's old blktap qcow format), which is not supported: convert it with 'qemu-img convert -O qcow2'.")
        }
    }
}
