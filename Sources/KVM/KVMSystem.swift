import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The `/dev/kvm` system handle (kvm api.rst §4, "system ioctls").
public final class KVMSystem: @unchecked Sendable {
    /// The open `/dev/kvm` descriptor.
    public let fd: Int32

    /// Opens `/dev/kvm` and checks the stable API version (12).
    /// - Throws: ``KVMError`` when the device is missing, inaccessible or reports another API.
    public init(path: String = "/dev/kvm") throws(KVMError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 { throw KVMError("open \(path)", Errno(rawValue: errno)) }
        let v = ioctl(fd, CLINUX_KVM_GET_API_VERSION)
        if v != 12 {
            close(fd)
            throw KVMError("KVM_GET_API_VERSION returned \(v), expected 12", .notSupported)
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// KVM_CHECK_EXTENSION: 0 when absent, otherwise a capability-specific positive value.
    public func checkExtension(_ cap: Int32) -> Int32 {
        max(0, clinux_ioctl_int(fd, CLINUX_KVM_CHECK_EXTENSION, UInt(cap)))
    }

    /// Bytes to mmap for each vCPU's `struct kvm_run` (KVM_GET_VCPU_MMAP_SIZE).
    public func vcpuMmapSize() throws(KVMError) -> Int {
        Int(try check("KVM_GET_VCPU_MMAP_SIZE") { ioctl(fd, CLINUX_KVM_GET_VCPU_MMAP_SIZE) })
    }

    /// Largest vCPU count KVM allows for one VM (KVM_CAP_MAX_VCPUS, else KVM_CAP_NR_VCPUS).
    public var maxVCPUs: Int {
        let m = checkExtension(Int32(KVM_CAP_MAX_VCPUS))
        if m > 0 { return Int(m) }
        let n = checkExtension(Int32(KVM_CAP_NR_VCPUS))
        return n > 0 ? Int(n) : 4
    }

    /// Whether KVM runs on hardware virtualization (kvm_intel or kvm_amd), as opposed to
    /// a paravirtual or emulating module such as kvm_pvm (PLATFORM.md).
    public static var isHardwareBacked: Bool {
        access("/sys/module/kvm_intel", F_OK) == 0 || access("/sys/module/kvm_amd", F_OK) == 0
    }

    /// The CPUID entries KVM can expose (KVM_GET_SUPPORTED_CPUID).
    public func supportedCPUID() throws(KVMError) -> [kvm_cpuid_entry2] {
        var n: UInt32 = 64
        while true {
            guard let buf = clinux_cpuid2_alloc(n) else { throw KVMError("calloc", .noMemory) }
            defer { free(buf) }
            let r = clinux_ioctl_ptr(fd, CLINUX_KVM_GET_SUPPORTED_CPUID, buf)
            if r < 0 {
                if errno == E2BIG && n < 4096 { n *= 2; continue }
                throw KVMError("KVM_GET_SUPPORTED_CPUID", Errno(rawValue: errno))
            }
            return (0..<buf.pointee.nent).map { clinux_cpuid2_entry(buf, $0).pointee }
        }
    }
}
