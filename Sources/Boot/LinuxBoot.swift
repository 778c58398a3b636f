import GuestMemory

/// The GDT written at ``PlatformLayout/gdtAddress`` for 64-bit and PVH entry, and the
/// segment registers matching each of its descriptors.
///
/// | selector | descriptor                                        |
/// |----------|---------------------------------------------------|
/// | 0x00     | null                                              |
/// | 0x08     | flat 4 GiB 32-bit code (PVH `cs`)                 |
/// | 0x10     | 64-bit code, L=1 (Linux `__BOOT_CS`)              |
/// | 0x18     | flat 4 GiB read/write data (Linux `__BOOT_DS`)    |
/// | 0x20     | busy TSS, base 0, limit 0x67 (16 bytes, `tr`)     |
public enum BootGDT {
    public static let code32Selector: UInt16 = 0x08
    public static let code64Selector: UInt16 = 0x10
    public static let dataSelector: UInt16 = 0x18
    public static let tssSelector: UInt16 = 0x20
    /// GDT size in bytes (the GDTR limit is this minus 1).
    public static let size = 0x30

    public static let code32 = SegmentRegister(base: 0, limit: 0xFFFF_FFFF, selector: code32Selector, type: 0xB, db: true, g: true)
    public static let code64 = SegmentRegister(base: 0, limit: 0xFFFF_FFFF, selector: code64Selector, type: 0xB, db: false, l: true, g: true)
    public static let data = SegmentRegister(base: 0, limit: 0xFFFF_FFFF, selector: dataSelector, type: 0x3, db: true, g: true)
    public static let tss = SegmentRegister(base: 0, limit: 0x67, selector: tssSelector, type: 0xB, db: false, s: false, g: false)
    /// No LDT: selector 0, marked unusable.
    public static let ldt = SegmentRegister(base: 0, limit: 0, selector: 0, type: 0x2, present: false, db: false, s: false, g: false, unusable: true)

    /// The GDT bytes (little-endian descriptors).
    public static var bytes: [UInt8] {
        var w = ByteWriter(count: size)
        w.put(code32.descriptor, at: 0x08)
        w.put(code64.descriptor, at: 0x10)
        w.put(data.descriptor, at: 0x18)
        w.put(tss.descriptor, at: 0x20) // upper 8 bytes (base 63:32) stay 0
        return w.bytes
    }

    static func write(to memory: GuestMemory) throws(BootError) {
        try mem { () throws(GuestMemoryError) in try memory.write(bytes, at: PlatformLayout.gdtAddress) }
    }

    static var gdtr: DescriptorTableRegister { DescriptorTableRegister(base: PlatformLayout.gdtAddress, limit: UInt16(size - 1)) }
}

/// Offsets in `struct boot_params` (the zero page), Linux arch/x86/include/uapi/asm/bootparam.h
/// and boot.rst "The real-mode kernel header" (header offsets are file offsets, equal to
/// zero-page offsets).
enum ZeroPage {
    static let size = 4096
    static let acpiRsdpAddr = 0x070
    static let extRamdiskImage = 0x0C0
    static let extRamdiskSize = 0x0C4
    static let extCmdLinePtr = 0x0C8
    static let e820Entries = 0x1E8
    static let setupHeader = 0x1F1
    static let typeOfLoader = 0x210
    static let loadflags = 0x211
    static let ramdiskImage = 0x218
    static let ramdiskSize = 0x21C
    static let heapEndPtr = 0x224
    static let cmdLinePtr = 0x228
    static let e820Table = 0x2D0
    static let e820Max = 128
    /// Setup header bytes that may be copied: up to edd_mbr_sig_buffer (0x290).
    static let setupHeaderLimit = 0x290
}

/// Linux x86 64-bit boot protocol (boot.rst "64-bit boot protocol").
enum LinuxBoot {
    static let canUseHeap: UInt8 = 0x80

    /// Identity map of the first 4 GiB with 2 MiB pages: PML4[0] → PDPT, PDPT[0..3] → 4 PDs.
    static func writePageTables(to memory: GuestMemory) throws(BootError) {
        let flags = X86.ptePresent | X86.pteWritable
        var pml4 = ByteWriter(count: 4096)
        pml4.put(PlatformLayout.pdptAddress | flags, at: 0)
        var pdpt = ByteWriter(count: 4096)
        for i in 0..<4 { pdpt.put((PlatformLayout.pdAddress + UInt64(i) * 4096) | flags, at: i * 8) }
        var pd = ByteWriter(count: 4 * 4096)
        for j in 0..<2048 { pd.put((UInt64(j) << 21) | flags | X86.ptePageSize, at: j * 8) }
        try mem { () throws(GuestMemoryError) in
            try memory.write(pml4.bytes, at: PlatformLayout.pml4Address)
            try memory.write(pdpt.bytes, at: PlatformLayout.pdptAddress)
            try memory.write(pd.bytes, at: PlatformLayout.pdAddress)
        }
    }

    /// Writes `cmdline` NUL-terminated at ``PlatformLayout/cmdlineAddress``.
    /// - Throws: ``BootError/cmdlineTooLong(length:max:)`` when longer than `max` bytes.
    static func writeCmdline(_ cmdline: String, max: Int, to memory: GuestMemory) throws(BootError) -> Int {
        let bytes = Array(cmdline.utf8)
        let limit = Swift.min(max, PlatformLayout.cmdlineMax - 1)
        guard bytes.count <= limit else { throw .cmdlineTooLong(length: bytes.count, max: limit) }
        try mem { () throws(GuestMemoryError) in try memory.write(bytes + [0], at: PlatformLayout.cmdlineAddress) }
        return bytes.count
    }

    /// Highest 4 KiB-aligned address `a` with `a + size <= limit` and `a >= lowest`.
    /// - Throws: ``BootError/initrdDoesNotFit(size:limit:)``.
    static func placeInitrd(size: Int, lowest: UInt64, limit: UInt64) throws(BootError) -> UInt64 {
        let s = UInt64(size)
        guard s <= limit else { throw .initrdDoesNotFit(size: size, limit: limit) }
        let a = (limit - s) & ~0xFFF
        guard a >= lowest else { throw .initrdDoesNotFit(size: size, limit: limit) }
        return a
    }

    /// End of the memory a bzImage loaded at ``PlatformLayout/kernelLoadAddress`` uses
    /// while it decompresses: its file bytes, and `init_size` bytes from its run address
    /// (`max(align_up(load, kernel_alignment), pref_address)` when relocatable, else
    /// `pref_address`).
    static func footprintEnd(_ bz: BzImage) -> UInt64 {
        let load = PlatformLayout.kernelLoadAddress
        let fileEnd = load + UInt64(bz.protectedModeKernel.count)
        var run = bz.prefAddress
        if bz.relocatable {
            let a = UInt64(bz.kernelAlignment)
            let aligned = (a != 0 && a & (a - 1) == 0) ? (alignUp(load, a) ?? load) : load
            run = Swift.max(aligned, bz.prefAddress)
        }
        let (initEnd, o) = run.addingReportingOverflow(UInt64(bz.initSize))
        return o ? UInt64.max : Swift.max(fileEnd, initEnd)
    }

    /// Writes kernel, command line, initrd, zero page, page tables and GDT; returns the
    /// BSP state and where the initrd went.
    static func prepare(_ bz: BzImage, memory: GuestMemory, map: MemoryMap, initrd: [UInt8]?,
                        cmdline: String, rsdpAddress: UInt64) throws(BootError) -> (InitialVCPUState, UInt64?) {
        let load = PlatformLayout.kernelLoadAddress
        // A kernel that cannot relocate itself runs at pref_address; we always load at 1 MiB
        // (boot.rst), so anything else would decompress over our boot structures or miss.
        guard bz.relocatable || bz.prefAddress == load else {
            throw .kernelDoesNotFit("bzImage is not relocatable and must run at \(hex(bz.prefAddress)), but kernels are loaded at \(hex(load))")
        }
        let end = footprintEnd(bz)
        guard end <= map.lowRAMEnd else {
            throw .kernelDoesNotFit("bzImage needs guest memory up to \(hex(end)) (init_size \(bz.initSize)) but RAM below the MMIO hole ends at \(hex(map.lowRAMEnd))")
        }
        _ = try writeCmdline(cmdline, max: Int(bz.cmdlineSize), to: memory)
        try mem { () throws(GuestMemoryError) in try memory.write(bz.protectedModeKernel, at: load) }

        var initrdAddress: UInt64?
        if let initrd, !initrd.isEmpty {
            let limit = Swift.min(UInt64(bz.initrdAddrMax) + 1, map.lowRAMEnd)
            let a = try placeInitrd(size: initrd.count, lowest: alignUp(end, 4096) ?? end, limit: limit)
            try mem { () throws(GuestMemoryError) in try memory.write(initrd, at: a) }
            initrdAddress = a
        }

        // Zero page.
        var zp = ByteWriter(count: ZeroPage.size)
        let headerEnd = Swift.min(ZeroPage.setupHeader + bz.setupHeader.count, ZeroPage.setupHeaderLimit)
        zp.put(bytes: bz.setupHeader.prefix(headerEnd - ZeroPage.setupHeader), at: ZeroPage.setupHeader)
        zp.put(UInt8(0xFF), at: ZeroPage.typeOfLoader)
        zp.put(bz.loadflags | canUseHeap, at: ZeroPage.loadflags)
        zp.put(UInt16(0xFE00 - 0x200), at: ZeroPage.heapEndPtr)
        zp.put(UInt32(truncatingIfNeeded: PlatformLayout.cmdlineAddress), at: ZeroPage.cmdLinePtr)
        zp.put(UInt32(truncatingIfNeeded: PlatformLayout.cmdlineAddress >> 32), at: ZeroPage.extCmdLinePtr)
        if let a = initrdAddress, let initrd {
            let size = UInt64(initrd.count)
            zp.put(UInt32(truncatingIfNeeded: a), at: ZeroPage.ramdiskImage)
            zp.put(UInt32(truncatingIfNeeded: size), at: ZeroPage.ramdiskSize)
            zp.put(UInt32(truncatingIfNeeded: a >> 32), at: ZeroPage.extRamdiskImage)
            zp.put(UInt32(truncatingIfNeeded: size >> 32), at: ZeroPage.extRamdiskSize)
        }
        let e820 = map.e820.prefix(ZeroPage.e820Max)
        zp.put(UInt8(e820.count), at: ZeroPage.e820Entries)
        for (i, e) in e820.enumerated() {
            let o = ZeroPage.e820Table + i * 20
            zp.put(e.addr, at: o); zp.put(e.size, at: o + 8); zp.put(e.type, at: o + 16)
        }
        if bz.protocolVersion >= 0x020E { zp.put(rsdpAddress, at: ZeroPage.acpiRsdpAddr) }
        try mem { () throws(GuestMemoryError) in try memory.write(zp.bytes, at: PlatformLayout.zeroPageAddress) }

        try writePageTables(to: memory)
        try BootGDT.write(to: memory)

        let d = BootGDT.data
        var s = InitialVCPUState(mode: .long64, cs: BootGDT.code64, ds: d, es: d, fs: d, gs: d, ss: d,
                                 tr: BootGDT.tss, ldt: BootGDT.ldt, gdt: BootGDT.gdtr,
                                 idt: DescriptorTableRegister(base: 0, limit: 0),
                                 cr0: X86.cr0PE | X86.cr0ET | X86.cr0PG)
        s.rip = load + BzImage.entry64Offset
        s.rsi = PlatformLayout.zeroPageAddress
        s.cr3 = PlatformLayout.pml4Address
        s.cr4 = X86.cr4PAE
        s.efer = X86.eferLME | X86.eferLMA
        return (s, initrdAddress)
    }
}
