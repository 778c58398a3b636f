import GuestMemory

/// Layout of `struct hvm_start_info` and its tables (Xen xen/include/public/arch-x86/hvm/start_info.h,
/// docs/misc/pvh.pandoc), version 1.
public enum HVMStartInfo {
    /// `XEN_HVM_START_MAGIC_VALUE`.
    public static let magic: UInt32 = 0x336E_C578
    public static let version: UInt32 = 1
    /// Size of `struct hvm_start_info` version 1, bytes.
    public static let size = 0x38
    /// Size of `struct hvm_modlist_entry` {paddr, size, cmdline_paddr, reserved}, bytes.
    public static let modlistEntrySize = 32
    /// Size of `struct hvm_memmap_table_entry` {addr, size, type u32, reserved u32}, bytes.
    public static let memmapEntrySize = 24

    // Field offsets.
    public static let magicOffset = 0x00
    public static let versionOffset = 0x04
    public static let flagsOffset = 0x08
    public static let nrModulesOffset = 0x0C
    public static let modlistPaddrOffset = 0x10
    public static let cmdlinePaddrOffset = 0x18
    public static let rsdpPaddrOffset = 0x20
    public static let memmapPaddrOffset = 0x28
    public static let memmapEntriesOffset = 0x30
}

/// PVH entry (Xen docs/misc/pvh.pandoc "Initial state").
enum PVHBoot {
    /// Loads the segments, command line, initrd and hvm_start_info; returns the BSP state.
    static func prepare(_ elf: ELFKernel, memory: GuestMemory, map: MemoryMap, initrd: [UInt8]?,
                        cmdline: String, rsdpAddress: UInt64) throws(BootError) -> (InitialVCPUState, UInt64?) {
        let ram = map.e820.filter { $0.type == E820Entry.ram }
        var kernelEnd = PlatformLayout.kernelLoadAddress
        for (i, seg) in elf.segments.enumerated() {
            let end = seg.paddr + seg.memsz // overflow excluded by ELFKernel
            guard seg.paddr >= PlatformLayout.kernelLoadAddress else {
                throw .kernelDoesNotFit("ELF segment \(i) at \(hex(seg.paddr)) is below 1 MiB, where the boot structures live")
            }
            guard ram.contains(where: { seg.paddr >= $0.addr && end <= $0.addr + $0.size }) else {
                throw .kernelDoesNotFit("ELF segment \(i) at \(hex(seg.paddr))..\(hex(end)) lies outside guest RAM")
            }
            if end <= map.lowRAMEnd { kernelEnd = max(kernelEnd, end) }
        }
        _ = try LinuxBoot.writeCmdline(cmdline, max: PlatformLayout.cmdlineMax - 1, to: memory)
        for seg in elf.segments {
            try mem { () throws(GuestMemoryError) in
                try memory.write(seg.data, at: seg.paddr)
                // memsz - filesz fits in Int: the segment lies inside mapped guest RAM.
                try memory.zero(at: seg.paddr + UInt64(seg.data.count), count: Int(seg.memsz - UInt64(seg.data.count)))
            }
        }
        var initrdAddress: UInt64?
        if let initrd, !initrd.isEmpty {
            let a = try LinuxBoot.placeInitrd(size: initrd.count, lowest: alignUp(kernelEnd, 4096) ?? kernelEnd,
                                              limit: map.lowRAMEnd)
            try mem { () throws(GuestMemoryError) in try memory.write(initrd, at: a) }
            initrdAddress = a
        }

        let e820 = map.e820
        let memmapMax = Int(PlatformLayout.zeroPageAddress - PlatformLayout.pvhMemmapAddress) / HVMStartInfo.memmapEntrySize
        guard e820.count <= memmapMax else { throw .tableTooLarge("PVH memory map (\(e820.count) entries)") }
        var si = ByteWriter(count: HVMStartInfo.size)
        si.put(HVMStartInfo.magic, at: HVMStartInfo.magicOffset)
        si.put(HVMStartInfo.version, at: HVMStartInfo.versionOffset)
        si.put(UInt32(0), at: HVMStartInfo.flagsOffset)
        si.put(PlatformLayout.cmdlineAddress, at: HVMStartInfo.cmdlinePaddrOffset)
        si.put(rsdpAddress, at: HVMStartInfo.rsdpPaddrOffset)
        si.put(PlatformLayout.pvhMemmapAddress, at: HVMStartInfo.memmapPaddrOffset)
        si.put(UInt32(e820.count), at: HVMStartInfo.memmapEntriesOffset)
        var mods = ByteWriter()
        if let a = initrdAddress, let initrd {
            si.put(UInt32(1), at: HVMStartInfo.nrModulesOffset)
            si.put(PlatformLayout.pvhModlistAddress, at: HVMStartInfo.modlistPaddrOffset)
            mods.append(a); mods.append(UInt64(initrd.count)); mods.append(UInt64(0)); mods.append(UInt64(0))
        }
        var mm = ByteWriter()
        for e in e820 { mm.append(e.addr); mm.append(e.size); mm.append(e.type); mm.append(UInt32(0)) }
        try mem { () throws(GuestMemoryError) in
            try memory.zero(at: PlatformLayout.pvhStartInfoAddress, count: Int(PlatformLayout.zeroPageAddress - PlatformLayout.pvhStartInfoAddress))
            try memory.write(si.bytes, at: PlatformLayout.pvhStartInfoAddress)
            try memory.write(mods.bytes, at: PlatformLayout.pvhModlistAddress)
            try memory.write(mm.bytes, at: PlatformLayout.pvhMemmapAddress)
        }
        try BootGDT.write(to: memory)

        let d = BootGDT.data
        var s = InitialVCPUState(mode: .protected32, cs: BootGDT.code32, ds: d, es: d, fs: d, gs: d, ss: d,
                                 tr: BootGDT.tss, ldt: BootGDT.ldt, gdt: BootGDT.gdtr,
                                 idt: DescriptorTableRegister(base: 0, limit: 0), cr0: X86.cr0PE)
        s.rip = UInt64(elf.pvhEntry)
        s.rbx = PlatformLayout.pvhStartInfoAddress
        return (s, initrdAddress)
    }
}
