// KVM-agnostic initial register state of the boot vCPU.

/// One segment register as the CPU caches it (base, limit, attributes), field for field
/// what `struct kvm_segment` holds.
public struct SegmentRegister: Sendable, Equatable {
    /// Linear base address.
    public var base: UInt64
    /// Effective limit in bytes (already scaled by `g`: 0xFFFFFFFF for a flat 4 GiB segment).
    public var limit: UInt32
    /// Selector (GDT index << 3 | TI | RPL).
    public var selector: UInt16
    /// Descriptor type nibble (e.g. 0xB execute/read accessed code, 0x3 read/write accessed
    /// data; for system segments 0xB busy 32/64-bit TSS, 0x2 LDT).
    public var type: UInt8
    public var present: Bool
    /// Descriptor privilege level 0...3.
    public var dpl: UInt8
    /// D/B: 32-bit default operand size.
    public var db: Bool
    /// S: code/data (true) or system (false) descriptor.
    public var s: Bool
    /// L: 64-bit code segment.
    public var l: Bool
    /// G: limit granularity 4 KiB.
    public var g: Bool
    /// Marked unusable (null selector in protected mode).
    public var unusable: Bool

    public init(base: UInt64, limit: UInt32, selector: UInt16, type: UInt8, present: Bool = true,
                dpl: UInt8 = 0, db: Bool, s: Bool = true, l: Bool = false, g: Bool, unusable: Bool = false) {
        self.base = base; self.limit = limit; self.selector = selector; self.type = type
        self.present = present; self.dpl = dpl; self.db = db; self.s = s; self.l = l; self.g = g
        self.unusable = unusable
    }

    /// The 8-byte GDT descriptor encoding this segment (Intel SDM Vol. 3 §3.4.5);
    /// for a 64-bit system segment (TSS) the second 8 bytes are the high base (here 0).
    public var descriptor: UInt64 {
        let rawLimit = g ? UInt64(limit >> 12) : UInt64(limit)
        var d: UInt64 = rawLimit & 0xFFFF
        d |= (base & 0xFF_FFFF) << 16
        d |= UInt64(type & 0xF) << 40
        if s { d |= 1 << 44 }
        d |= UInt64(dpl & 3) << 45
        if present { d |= 1 << 47 }
        d |= ((rawLimit >> 16) & 0xF) << 48
        if l { d |= 1 << 53 }
        if db { d |= 1 << 54 }
        if g { d |= 1 << 55 }
        d |= ((base >> 24) & 0xFF) << 56
        return d
    }
}

/// A descriptor-table register (GDTR/IDTR): linear base and limit (size in bytes - 1).
public struct DescriptorTableRegister: Sendable, Equatable {
    public var base: UInt64
    public var limit: UInt16
    public init(base: UInt64, limit: UInt16) { self.base = base; self.limit = limit }
}

/// The CPU mode a boot path starts the vCPU in.
public enum CPUMode: Sendable, Equatable {
    /// Real mode (firmware reset state).
    case real
    /// 32-bit protected mode, paging off (PVH entry).
    case protected32
    /// 64-bit long mode with identity paging (Linux 64-bit boot protocol).
    case long64
}

/// Initial state of the boot vCPU (BSP), independent of KVM: the core maps it onto
/// `kvm_regs`/`kvm_sregs` (and EFER into `kvm_sregs.efer`). Application processors are
/// not described: they wait for INIT/SIPI from the guest (APIC IDs 0..<vcpus, BSP = 0).
public struct InitialVCPUState: Sendable, Equatable {
    public var mode: CPUMode
    // General-purpose registers (64-bit; the upper halves are 0 outside long mode).
    public var rip: UInt64 = 0
    public var rsp: UInt64 = 0
    /// RFLAGS; bit 1 is always set, IF clear.
    public var rflags: UInt64 = 0x2
    public var rax: UInt64 = 0
    public var rbx: UInt64 = 0
    public var rcx: UInt64 = 0
    public var rdx: UInt64 = 0
    public var rsi: UInt64 = 0
    public var rdi: UInt64 = 0
    public var rbp: UInt64 = 0
    // Segment, system and descriptor-table registers.
    public var cs: SegmentRegister
    public var ds: SegmentRegister
    public var es: SegmentRegister
    public var fs: SegmentRegister
    public var gs: SegmentRegister
    public var ss: SegmentRegister
    public var tr: SegmentRegister
    public var ldt: SegmentRegister
    public var gdt: DescriptorTableRegister
    public var idt: DescriptorTableRegister
    // Control registers and EFER.
    public var cr0: UInt64
    public var cr3: UInt64 = 0
    public var cr4: UInt64 = 0
    public var efer: UInt64 = 0

    public init(mode: CPUMode, cs: SegmentRegister, ds: SegmentRegister, es: SegmentRegister,
                fs: SegmentRegister, gs: SegmentRegister, ss: SegmentRegister, tr: SegmentRegister,
                ldt: SegmentRegister, gdt: DescriptorTableRegister, idt: DescriptorTableRegister, cr0: UInt64) {
        self.mode = mode; self.cs = cs; self.ds = ds; self.es = es; self.fs = fs; self.gs = gs
        self.ss = ss; self.tr = tr; self.ldt = ldt; self.gdt = gdt; self.idt = idt; self.cr0 = cr0
    }
}

/// Architectural bits used in ``InitialVCPUState`` (Intel SDM Vol. 3 §2.5, §2.2.1).
public enum X86 {
    public static let cr0PE: UInt64 = 1 << 0
    public static let cr0ET: UInt64 = 1 << 4
    public static let cr0NE: UInt64 = 1 << 5
    public static let cr0NW: UInt64 = 1 << 29
    public static let cr0CD: UInt64 = 1 << 30
    public static let cr0PG: UInt64 = 1 << 31
    public static let cr4PAE: UInt64 = 1 << 5
    public static let eferLME: UInt64 = 1 << 8
    public static let eferLMA: UInt64 = 1 << 10
    /// Page-table entry bits: present, writable, page size (2 MiB in a PD entry).
    public static let ptePresent: UInt64 = 1 << 0
    public static let pteWritable: UInt64 = 1 << 1
    public static let ptePageSize: UInt64 = 1 << 7
}
