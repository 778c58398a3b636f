import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Why KVM_RUN returned (kvm api.rst §5, "The kvm_run structure").
public enum VCPUExit {
    /// Port I/O. For `out`, `data` holds `size * count` bytes written by the guest; for
    /// `in`, the handler fills `data`. `data` points into the kvm_run mapping.
    case io(port: UInt16, size: Int, count: Int, isWrite: Bool, data: UnsafeMutableRawPointer)
    /// MMIO. For reads the handler fills `data` (up to 8 bytes).
    case mmio(address: UInt64, length: Int, isWrite: Bool, data: UnsafeMutableRawPointer)
    case hlt
    /// Triple fault or similar: the CPU shut down.
    case shutdown
    /// KVM_EXIT_SYSTEM_EVENT with its type (shutdown, reset, crash).
    case systemEvent(type: UInt32)
    /// KVM_RUN was interrupted by a signal (pause/stop requests).
    case interrupted
    /// KVM could not emulate or enter the guest.
    case internalError(suberror: UInt32)
    case failEntry(reason: UInt64)
    case exception(UInt32)
    case unknown(reason: UInt32)
}

/// One virtual CPU: its registers and the shared `kvm_run` page.
public final class VCPU: @unchecked Sendable {
    /// The index, also the initial APIC ID.
    public let id: Int
    public let fd: Int32
    /// The mmapped `struct kvm_run`.
    public let run: UnsafeMutablePointer<kvm_run>
    private let runSize: Int

    init(vm: VirtualMachine, id: Int) throws(KVMError) {
        self.id = id
        let size = try vm.system.vcpuMmapSize()
        let fd = try check("KVM_CREATE_VCPU \(id)") { clinux_ioctl_int(vm.fd, CLINUX_KVM_CREATE_VCPU, UInt(id)) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED || p == nil {
            let e = Errno(rawValue: errno)
            close(fd)
            throw KVMError("mmap kvm_run", e)
        }
        self.fd = fd
        self.runSize = size
        self.run = p!.bindMemory(to: kvm_run.self, capacity: 1)
    }

    deinit {
        munmap(run, runSize)
        close(fd)
    }

    /// KVM_GET_REGS.
    public func regs() throws(KVMError) -> kvm_regs {
        var r = kvm_regs()
        _ = try check("KVM_GET_REGS") { clinux_ioctl_ptr(fd, CLINUX_KVM_GET_REGS, &r) }
        return r
    }

    /// KVM_SET_REGS.
    public func setRegs(_ regs: kvm_regs) throws(KVMError) {
        var r = regs
        _ = try check("KVM_SET_REGS") { clinux_ioctl_ptr(fd, CLINUX_KVM_SET_REGS, &r) }
    }

    /// KVM_GET_SREGS.
    public func sregs() throws(KVMError) -> kvm_sregs {
        var r = kvm_sregs()
        _ = try check("KVM_GET_SREGS") { clinux_ioctl_ptr(fd, CLINUX_KVM_GET_SREGS, &r) }
        return r
    }

    /// KVM_SET_SREGS.
    public func setSregs(_ sregs: kvm_sregs) throws(KVMError) {
        var r = sregs
        _ = try check("KVM_SET_SREGS") { clinux_ioctl_ptr(fd, CLINUX_KVM_SET_SREGS, &r) }
    }

    /// KVM_SET_CPUID2 with the given entries.
    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(KVMError) {
        guard let buf = clinux_cpuid2_alloc(UInt32(entries.count)) else { throw KVMError("calloc", .noMemory) }
        defer { free(buf) }
        for (i, e) in entries.enumerated() { clinux_cpuid2_entry(buf, UInt32(i))!.pointee = e }
        _ = try check("KVM_SET_CPUID2") { clinux_ioctl_ptr(fd, CLINUX_KVM_SET_CPUID2, buf) }
    }

    /// KVM_SET_MSRS. Returns how many of `msrs` (index, value) KVM accepted, in order.
    @discardableResult
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws(KVMError) -> Int {
        guard let buf = clinux_msrs_alloc(UInt32(msrs.count)) else { throw KVMError("calloc", .noMemory) }
        defer { free(buf) }
        for (i, m) in msrs.enumerated() {
            let e = clinux_msrs_entry(buf, UInt32(i))!
            e.pointee.index = m.index
            e.pointee.data = m.value
        }
        return Int(try check("KVM_SET_MSRS") { clinux_ioctl_ptr(fd, CLINUX_KVM_SET_MSRS, buf) })
    }

    /// KVM_GET_LAPIC: the 1024-byte local APIC register page.
    public func lapic() throws(KVMError) -> [UInt8] {
        var s = kvm_lapic_state()
        _ = try check("KVM_GET_LAPIC") { clinux_ioctl_ptr(fd, CLINUX_KVM_GET_LAPIC, &s) }
        return withUnsafeBytes(of: &s.regs) { [UInt8]($0) }
    }

    /// KVM_SET_LAPIC from a 1024-byte register page.
    public func setLAPIC(_ regs: [UInt8]) throws(KVMError) {
        var s = kvm_lapic_state()
        withUnsafeMutableBytes(of: &s.regs) { dst in
            regs.withUnsafeBytes { src in dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src.prefix(dst.count))) }
        }
        _ = try check("KVM_SET_LAPIC") { clinux_ioctl_ptr(fd, CLINUX_KVM_SET_LAPIC, &s) }
    }

    /// Programs LINT0 as ExtINT and LINT1 as NMI, as a PC BIOS leaves them (MP spec §5.1).
    public func setupLocalInterrupts() throws(KVMError) {
        var regs = try lapic()
        func set(_ off: Int, _ mode: UInt32) {
            var v = regs.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: off, as: UInt32.self) }
            v = (v & ~0x700) | (mode << 8)
            regs.withUnsafeMutableBytes { $0.storeBytes(of: v, toByteOffset: off, as: UInt32.self) }
        }
        set(0x350, 7) // LVT LINT0: ExtINT
        set(0x360, 4) // LVT LINT1: NMI
        try setLAPIC(regs)
    }

    /// KVM_GET_MP_STATE.
    public func mpState() throws(KVMError) -> UInt32 {
        var s = kvm_mp_state()
        _ = try check("KVM_GET_MP_STATE") { clinux_ioctl_ptr(fd, CLINUX_KVM_GET_MP_STATE, &s) }
        return s.mp_state
    }

    /// Runs the vCPU until the next exit that needs userspace.
    /// - Returns: the exit; `.interrupted` when a signal (pause/stop kick) ended KVM_RUN.
    /// - Throws: ``KVMError`` for failures other than EINTR/EAGAIN.
    public func runOnce() throws(KVMError) -> VCPUExit {
        let r = ioctl(fd, CLINUX_KVM_RUN)
        if r < 0 {
            let e = errno
            if e == EINTR || e == EAGAIN { return .interrupted }
            throw KVMError("KVM_RUN", Errno(rawValue: e))
        }
        let run = self.run
        switch run.pointee.exit_reason {
        case CLINUX_KVM_EXIT_IO:
            let io = run.pointee.io
            return .io(port: io.port, size: Int(io.size), count: Int(io.count),
                       isWrite: io.direction == UInt8(KVM_EXIT_IO_OUT),
                       data: UnsafeMutableRawPointer(clinux_kvm_run_io_data(run)))
        case CLINUX_KVM_EXIT_MMIO:
            let addr = run.pointee.mmio.phys_addr
            let len = Int(run.pointee.mmio.len)
            let w = run.pointee.mmio.is_write != 0
            let data = UnsafeMutableRawPointer(clinux_kvm_run_mmio_data(run)!)
            return .mmio(address: addr, length: min(len, 8), isWrite: w, data: data)
        case CLINUX_KVM_EXIT_HLT: return .hlt
        case CLINUX_KVM_EXIT_SHUTDOWN: return .shutdown
        case CLINUX_KVM_EXIT_SYSTEM_EVENT: return .systemEvent(type: run.pointee.system_event.type)
        case CLINUX_KVM_EXIT_INTR: return .interrupted
        case CLINUX_KVM_EXIT_INTERNAL_ERROR: return .internalError(suberror: run.pointee.internal.suberror)
        case CLINUX_KVM_EXIT_FAIL_ENTRY: return .failEntry(reason: run.pointee.fail_entry.hardware_entry_failure_reason)
        case CLINUX_KVM_EXIT_EXCEPTION: return .exception(run.pointee.ex.exception)
        default: return .unknown(reason: run.pointee.exit_reason)
        }
    }

    /// Sets `kvm_run.immediate_exit`, making the next KVM_RUN return EINTR at once
    /// (used with a signal kick to stop or pause a vCPU without races).
    public func setImmediateExit(_ on: Bool) {
        run.pointee.immediate_exit = on ? 1 : 0
    }
}
