import CLinux
import GuestMemory
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One KVM virtual machine (kvm api.rst §4, "vm ioctls"): memory slots, the in-kernel
/// irqchip and PIT, interrupt injection, ioeventfds and irqfds. Knows nothing of the
/// guest's memory layout or devices.
public final class VirtualMachine: @unchecked Sendable {
    public let system: KVMSystem
    /// The VM descriptor.
    public let fd: Int32

    /// KVM_CREATE_VM.
    /// - Throws: ``KVMError``.
    public init(system: KVMSystem) throws(KVMError) {
        self.system = system
        self.fd = try check("KVM_CREATE_VM") { clinux_ioctl_int(system.fd, CLINUX_KVM_CREATE_VM, 0) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    deinit { close(fd) }

    /// Registers every region of `memory` as a memory slot (slot numbers from `firstSlot`).
    /// - Parameter dirtyLogging: set KVM_MEM_LOG_DIRTY_PAGES on each slot.
    public func map(_ memory: GuestMemory, firstSlot: UInt32 = 0, dirtyLogging: Bool = false) throws(KVMError) {
        for (i, r) in memory.regions.enumerated() {
            var region = kvm_userspace_memory_region(
                slot: firstSlot + UInt32(i),
                flags: dirtyLogging ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0,
                guest_phys_addr: r.guestBase,
                memory_size: r.size,
                userspace_addr: UInt64(UInt(bitPattern: r.host)))
            _ = try check("KVM_SET_USER_MEMORY_REGION slot \(i)") {
                clinux_ioctl_ptr(fd, CLINUX_KVM_SET_USER_MEMORY_REGION, &region)
            }
        }
    }

    /// KVM_SET_TSS_ADDR and KVM_SET_IDENTITY_MAP_ADDR (Intel real-mode support pages, just
    /// below the BIOS at 4 GiB). Failures are ignored where the module does not need them.
    public func setRealModeSupportPages() {
        _ = clinux_ioctl_int(fd, CLINUX_KVM_SET_TSS_ADDR, 0xFFFB_D000)
        var identity: UInt64 = 0xFFFB_C000
        _ = clinux_ioctl_ptr(fd, CLINUX_KVM_SET_IDENTITY_MAP_ADDR, &identity)
    }

    /// KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and local APICs.
    public func createIRQChip() throws(KVMError) {
        _ = try check("KVM_CREATE_IRQCHIP") { ioctl(fd, CLINUX_KVM_CREATE_IRQCHIP) }
    }

    /// KVM_CREATE_PIT2: in-kernel i8254 timer (speaker port dummy enabled).
    public func createPIT2() throws(KVMError) {
        var cfg = kvm_pit_config()
        cfg.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        _ = try check("KVM_CREATE_PIT2") { clinux_ioctl_ptr(fd, CLINUX_KVM_CREATE_PIT2, &cfg) }
    }

    /// KVM_IRQ_LINE: sets the level of a GSI on the in-kernel irqchip.
    public func setIRQLine(gsi: UInt32, level: Bool) throws(KVMError) {
        var l = kvm_irq_level()
        l.irq = gsi
        l.level = level ? 1 : 0
        _ = try check("KVM_IRQ_LINE gsi \(gsi)") { clinux_ioctl_ptr(fd, CLINUX_KVM_IRQ_LINE, &l) }
    }

    /// KVM_IOEVENTFD: a guest write of `length` bytes (1, 2, 4 or 8) to `address` signals
    /// `eventfd` instead of exiting to userspace.
    /// - Parameters:
    ///   - pio: `address` is an I/O port rather than a guest-physical MMIO address.
    ///   - datamatch: only writes of this value match.
    ///   - deassign: remove a previous registration with the same arguments.
    public func ioeventfd(_ eventfd: Int32, address: UInt64, length: UInt32, pio: Bool = false,
                          datamatch: UInt64? = nil, deassign: Bool = false) throws(KVMError) {
        var e = kvm_ioeventfd()
        e.addr = address
        e.len = length
        e.fd = eventfd
        if let d = datamatch { e.datamatch = d; e.flags |= CLINUX_KVM_IOEVENTFD_FLAG_DATAMATCH }
        if pio { e.flags |= CLINUX_KVM_IOEVENTFD_FLAG_PIO }
        if deassign { e.flags |= CLINUX_KVM_IOEVENTFD_FLAG_DEASSIGN }
        _ = try check("KVM_IOEVENTFD 0x\(String(address, radix: 16))") { clinux_ioctl_ptr(fd, CLINUX_KVM_IOEVENTFD, &e) }
    }

    /// KVM_IRQFD: a write to `eventfd` injects `gsi` (an edge: raised and lowered).
    public func irqfd(_ eventfd: Int32, gsi: UInt32, deassign: Bool = false) throws(KVMError) {
        var i = kvm_irqfd()
        i.fd = UInt32(bitPattern: eventfd)
        i.gsi = gsi
        if deassign { i.flags = CLINUX_KVM_IRQFD_FLAG_DEASSIGN }
        _ = try check("KVM_IRQFD gsi \(gsi)") { clinux_ioctl_ptr(fd, CLINUX_KVM_IRQFD, &i) }
    }

    /// KVM_GET_DIRTY_LOG for one slot: a bitmap with one bit per 4 KiB page, cleared by the call.
    public func dirtyLog(slot: UInt32, pages: Int) throws(KVMError) -> [UInt64] {
        var bitmap = [UInt64](repeating: 0, count: (pages + 63) / 64)
        let r = bitmap.withUnsafeMutableBytes { b -> Int32 in
            var log = kvm_dirty_log()
            log.slot = slot
            log.dirty_bitmap = b.baseAddress
            return clinux_ioctl_ptr(fd, CLINUX_KVM_GET_DIRTY_LOG, &log)
        }
        if r < 0 { throw KVMError("KVM_GET_DIRTY_LOG", Errno(rawValue: errno)) }
        return bitmap
    }

    /// KVM_CREATE_VCPU with the given APIC ID / index.
    public func createVCPU(id: Int) throws(KVMError) -> VCPU {
        try VCPU(vm: self, id: id)
    }
}
