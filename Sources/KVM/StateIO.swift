import CLinux
import GuestMemory
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

// Raw access to the register and chip state KVM exposes for save and restore (kvm api.rst
// §4: KVM_GET/SET_REGS, SREGS, FPU, XSAVE, XCRS, LAPIC, MP_STATE, VCPU_EVENTS, DEBUGREGS,
// MSRS; on the VM: IRQCHIP, PIT2, CLOCK). Each state is handed out as the bytes of its
// kernel structure, so the caller can store it without knowing its fields; setting checks
// the length is exactly the structure's size before the ioctl sees it.

/// One kind of vCPU state, as the stream names it.
public enum VCPUStateKind: UInt32, Sendable, CaseIterable {
    case regs = 1, sregs, fpu, xsave, xcrs, lapic, mpState, events, debugRegs, msrs

    /// Size in bytes of the kernel structure (MSRs: variable, 12 bytes an entry).
    public var structSize: Int? {
        switch self {
        case .regs: MemoryLayout<kvm_regs>.size
        case .sregs: MemoryLayout<kvm_sregs>.size
        case .fpu: MemoryLayout<kvm_fpu>.size
        case .xsave: MemoryLayout<kvm_xsave>.size
        case .xcrs: MemoryLayout<kvm_xcrs>.size
        case .lapic: MemoryLayout<kvm_lapic_state>.size
        case .mpState: MemoryLayout<kvm_mp_state>.size
        case .events: MemoryLayout<kvm_vcpu_events>.size
        case .debugRegs: MemoryLayout<kvm_debugregs>.size
        case .msrs: nil
        }
    }
}

/// One kind of VM-wide state: the in-kernel PIC pair and IOAPIC, the PIT, kvmclock.
public enum VMStateKind: UInt32, Sendable, CaseIterable {
    case picMaster = 1, picSlave, ioapic, pit2, clock

    /// Size in bytes of the kernel structure.
    public var structSize: Int {
        switch self {
        case .picMaster, .picSlave, .ioapic: MemoryLayout<kvm_irqchip>.size
        case .pit2: MemoryLayout<kvm_pit_state2>.size
        case .clock: MemoryLayout<kvm_clock_data>.size
        }
    }
}

@inline(__always)
private func bytes<T>(of value: inout T) -> [UInt8] { withUnsafeBytes(of: &value) { [UInt8]($0) } }

/// Copies `data` over a zeroed `T`; the caller has checked the length.
private func load<T>(_ data: [UInt8], into value: inout T) {
    withUnsafeMutableBytes(of: &value) { dst in
        data.withUnsafeBytes { dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(dst.count))) }
    }
}

extension VCPU {
    private func get<T>(_ req: UInt, _ name: String, _ v: T) throws(KVMError) -> [UInt8] {
        var v = v
        _ = try check(name) { clinux_ioctl_ptr(fd, req, &v) }
        return bytes(of: &v)
    }

    private func set<T>(_ req: UInt, _ name: String, _ v: T, _ data: [UInt8]) throws(KVMError) {
        guard data.count == MemoryLayout<T>.size else { throw KVMError("\(name): \(data.count) bytes, not \(MemoryLayout<T>.size)", .invalidArgument) }
        var v = v
        load(data, into: &v)
        _ = try check(name) { clinux_ioctl_ptr(fd, req, &v) }
    }

    /// The bytes of one kind of state (not MSRs: ``msrValues(_:)``).
    /// - Throws: ``KVMError`` when KVM refuses (XSAVE or XCRS where the host lacks them).
    public func state(_ kind: VCPUStateKind) throws(KVMError) -> [UInt8] {
        switch kind {
        case .regs: try get(CLINUX_KVM_GET_REGS, "KVM_GET_REGS", kvm_regs())
        case .sregs: try get(CLINUX_KVM_GET_SREGS, "KVM_GET_SREGS", kvm_sregs())
        case .fpu: try get(CLINUX_KVM_GET_FPU, "KVM_GET_FPU", kvm_fpu())
        case .xsave: try get(CLINUX_KVM_GET_XSAVE, "KVM_GET_XSAVE", kvm_xsave())
        case .xcrs: try get(CLINUX_KVM_GET_XCRS, "KVM_GET_XCRS", kvm_xcrs())
        case .lapic: try get(CLINUX_KVM_GET_LAPIC, "KVM_GET_LAPIC", kvm_lapic_state())
        case .mpState: try get(CLINUX_KVM_GET_MP_STATE, "KVM_GET_MP_STATE", kvm_mp_state())
        case .events: try get(CLINUX_KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", kvm_vcpu_events())
        case .debugRegs: try get(CLINUX_KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", kvm_debugregs())
        case .msrs: throw KVMError("MSRs are read with msrValues", .invalidArgument)
        }
    }

    /// Sets one kind of state from the bytes ``state(_:)`` returned.
    /// - Throws: ``KVMError`` (EINVAL) when `data` is not exactly the structure's size, or
    ///   when KVM refuses the values (a reserved bit, an invalid segment).
    public func setState(_ kind: VCPUStateKind, _ data: [UInt8]) throws(KVMError) {
        switch kind {
        case .regs: try set(CLINUX_KVM_SET_REGS, "KVM_SET_REGS", kvm_regs(), data)
        case .sregs: try set(CLINUX_KVM_SET_SREGS, "KVM_SET_SREGS", kvm_sregs(), data)
        case .fpu: try set(CLINUX_KVM_SET_FPU, "KVM_SET_FPU", kvm_fpu(), data)
        case .xsave: try set(CLINUX_KVM_SET_XSAVE, "KVM_SET_XSAVE", kvm_xsave(), data)
        case .xcrs: try set(CLINUX_KVM_SET_XCRS, "KVM_SET_XCRS", kvm_xcrs(), data)
        case .lapic: try set(CLINUX_KVM_SET_LAPIC, "KVM_SET_LAPIC", kvm_lapic_state(), data)
        case .mpState: try set(CLINUX_KVM_SET_MP_STATE, "KVM_SET_MP_STATE", kvm_mp_state(), data)
        case .events: try set(CLINUX_KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", kvm_vcpu_events(), data)
        case .debugRegs: try set(CLINUX_KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", kvm_debugregs(), data)
        case .msrs: throw KVMError("MSRs are set with setMSRs", .invalidArgument)
        }
    }

    /// KVM_GET_MSRS for each of `indices` that KVM can read (one at a time: the batch call
    /// stops at the first MSR it cannot read).
    public func msrValues(_ indices: [UInt32]) -> [(index: UInt32, value: UInt64)] {
        guard let buf = clinux_msrs_alloc(1) else { return [] }
        defer { free(buf) }
        var out: [(index: UInt32, value: UInt64)] = []
        for i in indices {
            let e = clinux_msrs_entry(buf, 0)!
            e.pointee.index = i
            e.pointee.data = 0
            if clinux_ioctl_ptr(fd, CLINUX_KVM_GET_MSRS, buf) == 1 { out.append((i, e.pointee.data)) }
        }
        return out
    }
}

extension VirtualMachine {
    /// The bytes of one kind of VM-wide state.
    /// - Throws: ``KVMError`` when KVM refuses (no in-kernel irqchip or PIT).
    public func state(_ kind: VMStateKind) throws(KVMError) -> [UInt8] {
        switch kind {
        case .picMaster, .picSlave, .ioapic:
            var c = kvm_irqchip()
            c.chip_id = kind == .picMaster ? 0 : kind == .picSlave ? 1 : 2
            _ = try check("KVM_GET_IRQCHIP \(c.chip_id)") { clinux_ioctl_ptr(fd, CLINUX_KVM_GET_IRQCHIP, &c) }
            return bytes(of: &c)
        case .pit2:
            var p = kvm_pit_state2()
            _ = try check("KVM_GET_PIT2") { clinux_ioctl_ptr(fd, CLINUX_KVM_GET_PIT2, &p) }
            return bytes(of: &p)
        case .clock:
            var c = kvm_clock_data()
            _ = try check("KVM_GET_CLOCK") { clinux_ioctl_ptr(fd, CLINUX_KVM_GET_CLOCK, &c) }
            return bytes(of: &c)
        }
    }

    /// Sets one kind of VM-wide state from the bytes ``state(_:)`` returned.
    /// - Throws: ``KVMError`` (EINVAL) when `data` is not exactly the structure's size or
    ///   names another chip than `kind`; KVM's own refusal otherwise.
    public func setState(_ kind: VMStateKind, _ data: [UInt8]) throws(KVMError) {
        guard data.count == kind.structSize else {
            throw KVMError("VM state \(kind): \(data.count) bytes, not \(kind.structSize)", .invalidArgument)
        }
        switch kind {
        case .picMaster, .picSlave, .ioapic:
            var c = kvm_irqchip()
            load(data, into: &c)
            let want: UInt32 = kind == .picMaster ? 0 : kind == .picSlave ? 1 : 2
            guard c.chip_id == want else { throw KVMError("irqchip state names chip \(c.chip_id), not \(want)", .invalidArgument) }
            _ = try check("KVM_SET_IRQCHIP \(want)") { clinux_ioctl_ptr(fd, CLINUX_KVM_SET_IRQCHIP, &c) }
        case .pit2:
            var p = kvm_pit_state2()
            load(data, into: &p)
            _ = try check("KVM_SET_PIT2") { clinux_ioctl_ptr(fd, CLINUX_KVM_SET_PIT2, &p) }
        case .clock:
            var c = kvm_clock_data()
            load(data, into: &c)
            c.flags = 0   // KVM_SET_CLOCK takes the clock value only (no realtime pairing)
            _ = try check("KVM_SET_CLOCK") { clinux_ioctl_ptr(fd, CLINUX_KVM_SET_CLOCK, &c) }
        }
    }

    /// Turns KVM's dirty-page log on or off for every slot `map` registered for `memory`
    /// (KVM_SET_USER_MEMORY_REGION again with the flag changed; api.rst §4.35).
    public func setDirtyLogging(_ memory: GuestMemory, firstSlot: UInt32 = 0, on: Bool) throws(KVMError) {
        try map(memory, firstSlot: firstSlot, dirtyLogging: on)
    }
}

extension KVMSystem {
    /// KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a guest.
    public func msrIndexList() -> [UInt32] {
        var head: [UInt32] = [0]
        _ = head.withUnsafeMutableBytes { clinux_ioctl_ptr(fd, CLINUX_KVM_GET_MSR_INDEX_LIST, $0.baseAddress) }
        let n = Int(head[0])
        guard n > 0, n < 4096 else { return [] }
        var buf = [UInt32](repeating: 0, count: n + 1)
        buf[0] = UInt32(n)
        let r = buf.withUnsafeMutableBytes { clinux_ioctl_ptr(fd, CLINUX_KVM_GET_MSR_INDEX_LIST, $0.baseAddress) }
        guard r >= 0 else { return [] }
        return Array(buf[1...min(n, Int(buf[0]))])
    }
}
