import GuestMemory
#if canImport(Glibc)
import Glibc
#endif

/// An ELF64 core file of a domain's RAM (System V gABI "ELF header", "Program header";
/// the layout gdb and crash read): one PT_NOTE holding a `CORE` NT_PRSTATUS note per vCPU
/// (Linux's `struct elf_prstatus` for x86-64, 336 bytes: `pr_pid` = vCPU index + 1, its
/// general registers in `user_regs_struct` order) and a `XENITH` note naming the domain,
/// then one PT_LOAD per guest RAM region with `p_paddr` = `p_vaddr` = its guest-physical
/// address, file offsets page-aligned.
public enum ElfCore {
    /// Note type of the `XENITH` note: the text `name=NAME vcpus=N memory_mib=M`.
    public static let noteType: UInt32 = 1
    /// NT_PRSTATUS (the `CORE` note of a thread's registers).
    public static let prstatusType: UInt32 = 1
    /// Registers of `user_regs_struct` (x86-64), in its order: r15 r14 r13 r12 rbp rbx r11
    /// r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs.
    public static let registerCount = 27
    /// Size of `struct elf_prstatus` on x86-64, bytes; `pr_reg` starts at byte 112.
    static let prstatusSize = 336, prRegOffset = 112

    /// One vCPU's NT_PRSTATUS descriptor: `registers` (`registerCount` values, shorter
    /// lists padded with 0) at `pr_reg`, `pr_pid` = `index` + 1, the rest 0.
    static func prstatus(index: Int, registers: [UInt64]) -> [UInt8] {
        var d = [UInt8](repeating: 0, count: prstatusSize)
        withUnsafeBytes(of: Int32(index + 1).littleEndian) { d.replaceSubrange(32..<36, with: $0) }
        for (i, r) in registers.prefix(registerCount).enumerated() {
            withUnsafeBytes(of: r.littleEndian) { d.replaceSubrange(prRegOffset + 8 * i ..< prRegOffset + 8 * i + 8, with: $0) }
        }
        return d
    }

    /// The headers and notes for `regions` (guest-physical base, bytes) and `cpus` (each
    /// vCPU's registers, see `registerCount`): the bytes to write at offset 0, and each
    /// region's file offset.
    public static func layout(regions: [(base: UInt64, size: UInt64)], cpus: [[UInt64]] = [], note text: String) -> (header: [UInt8], offsets: [UInt64]) {
        var out: [UInt8] = []
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        let phnum = 1 + regions.count
        func pad4(_ n: Int) -> Int { (n + 3) & ~3 }
        var notes: [UInt8] = []
        func note(_ name: String, _ type: UInt32, _ desc: [UInt8]) {
            let n = Array(name.utf8) + [0]
            for v in [UInt32(n.count), UInt32(desc.count), type] { withUnsafeBytes(of: v.littleEndian) { notes += $0 } }
            notes += n + [UInt8](repeating: 0, count: pad4(n.count) - n.count)
            notes += desc + [UInt8](repeating: 0, count: pad4(desc.count) - desc.count)
        }
        for (i, regs) in cpus.enumerated() { note("CORE", prstatusType, prstatus(index: i, registers: regs)) }
        note("XENITH", noteType, Array(text.utf8) + [0])
        let noteSize = notes.count
        let noteOffset = 64 + 56 * phnum
        var dataOffset = UInt64(noteOffset + noteSize)
        dataOffset = (dataOffset + 4095) & ~4095
        var offsets: [UInt64] = []
        var o = dataOffset
        for r in regions { offsets.append(o); o += (r.size + 4095) & ~4095 }
        // ELF header (Elf64_Ehdr).
        out += [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        put(UInt16(4))        // e_type ET_CORE
        put(UInt16(62))       // e_machine EM_X86_64
        put(UInt32(1))        // e_version
        put(UInt64(0))        // e_entry
        put(UInt64(64))       // e_phoff
        put(UInt64(0))        // e_shoff
        put(UInt32(0))        // e_flags
        put(UInt16(64))       // e_ehsize
        put(UInt16(56))       // e_phentsize
        put(UInt16(phnum))    // e_phnum
        put(UInt16(0)); put(UInt16(0)); put(UInt16(0))   // shentsize, shnum, shstrndx
        // PT_NOTE.
        put(UInt32(4)); put(UInt32(0)); put(UInt64(noteOffset)); put(UInt64(0)); put(UInt64(0))
        put(UInt64(noteSize)); put(UInt64(0)); put(UInt64(4))
        // PT_LOAD per region: RWX, page-aligned.
        for (i, r) in regions.enumerated() {
            put(UInt32(1)); put(UInt32(7)); put(offsets[i]); put(r.base); put(r.base)
            put(r.size); put(r.size); put(UInt64(4096))
        }
        out += notes
        return (out, offsets)
    }

    /// Writes the core of `memory`, with `cpus`' registers (see `layout`), into `fd` (from
    /// offset 0; the file is truncated first).
    /// - Returns: the bytes the file holds.
    /// - Throws: the errno of a failed write, as `CoreError.system`.
    public static func write(_ memory: GuestMemory, cpus: [[UInt64]] = [], note: String, to fd: Int32) throws(CoreError) -> UInt64 {
        let regions = memory.regions.map { (base: $0.guestBase, size: $0.size) }
        let (header, offsets) = layout(regions: regions, cpus: cpus, note: note)
        guard ftruncate(fd, 0) == 0 else { throw .system("ftruncate", errno) }
        var e = header.withUnsafeBytes { writeAll(fd, $0, at: 0) }
        if e != 0 { throw .system("write", e) }
        for (i, r) in memory.regions.enumerated() {
            e = writeAll(fd, UnsafeRawBufferPointer(start: r.host, count: Int(r.size)), at: offsets[i])
            if e != 0 { throw .system("write", e) }
        }
        let end = zip(regions, offsets).map { $1 + (($0.size + 4095) & ~4095) }.max() ?? UInt64(header.count)
        guard ftruncate(fd, off_t(end)) == 0 else { throw .system("ftruncate", errno) }
        return end
    }

    /// pwrite(2)s all of `p` at `offset`; 0, or the errno that stopped it.
    private static func writeAll(_ fd: Int32, _ p: UnsafeRawBufferPointer, at offset: UInt64) -> Int32 {
        var done = 0
        while done < p.count {
            let n = pwrite(fd, p.baseAddress! + done, min(p.count - done, 1 << 24), off_t(offset) + off_t(done))
            if n < 0 { if errno == EINTR { continue }; return errno }
            if n == 0 { return EIO }
            done += n
        }
        return 0
    }
}
