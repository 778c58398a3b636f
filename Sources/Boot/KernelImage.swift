// Kernel image detection and parsing: Linux bzImage (boot.rst) and PVH ELF (Xen pvh.pandoc).

/// A parsed Linux bzImage (Linux Documentation/arch/x86/boot.rst, "The real-mode kernel
/// header"). Only what the 64-bit boot protocol needs is kept; ``setupHeader`` is copied
/// verbatim into the zero page.
public struct BzImage: Sendable, Equatable {
    /// Boot protocol version, `major << 8 | minor` (header field `version` at 0x206).
    public let protocolVersion: UInt16
    /// Number of 512-byte setup sectors after the boot sector (0 in the file means 4).
    public let setupSects: Int
    /// Size of the protected-mode code in 16-byte paragraphs (field at 0x1f4).
    public let syssize: UInt32
    /// `loadflags` (0x211): LOADED_HIGH bit 0, KASLR_FLAG bit 1, CAN_USE_HEAP bit 7.
    public let loadflags: UInt8
    /// `xloadflags` (0x236, protocol 2.12+): XLF_KERNEL_64 bit 0, XLF_CAN_BE_LOADED_ABOVE_4G bit 1.
    public let xloadflags: UInt16
    /// Physical alignment required for a relocatable kernel, bytes (0x230).
    public let kernelAlignment: UInt32
    /// Whether the protected-mode kernel may be loaded at any `kernelAlignment` address (0x234).
    public let relocatable: Bool
    /// Longest command line the kernel accepts, bytes without the NUL (0x238, 2.06+).
    public let cmdlineSize: UInt32
    /// Highest address the initrd may occupy (its last byte), 0x22c.
    public let initrdAddrMax: UInt32
    /// Preferred load address, where the kernel decompresses itself (0x258, 2.10+).
    public let prefAddress: UInt64
    /// Bytes of linear memory the kernel needs from its run address on (0x260, 2.10+).
    public let initSize: UInt32
    /// The setup header: file bytes `[0x1f1, 0x202 + byte at 0x201)`.
    public let setupHeader: [UInt8]
    /// The protected-mode kernel: file bytes from `(setupSects + 1) * 512` to the end.
    public let protectedModeKernel: [UInt8]

    /// Protocol major version (2).
    public var protocolMajor: UInt8 { UInt8(protocolVersion >> 8) }
    /// Protocol minor version.
    public var protocolMinor: UInt8 { UInt8(protocolVersion & 0xff) }

    /// Offset of the 64-bit entry point from the load address (boot.rst "64-bit boot protocol").
    public static let entry64Offset: UInt64 = 0x200

    /// Parses a bzImage. See ``Kernel/load(bytes:)`` for the errors.
    public init(bytes: [UInt8]) throws(BootError) {
        let r = ByteReader(bytes)
        guard r.slice(0x202, 4).map(Array.init) == Array("HdrS".utf8) else { throw .notAKernel }
        func need<T>(_ v: T?, _ what: String) throws(BootError) -> T {
            guard let v else { throw .truncated("\(what) lies beyond the end of the \(bytes.count)-byte file") }
            return v
        }
        let version = try need(r.u16(0x206), "setup header field version (0x206)")
        guard version >= 0x0206 else { throw .protocolTooOld(major: UInt8(version >> 8), minor: UInt8(version & 0xff)) }
        let headerEnd = 0x202 + UInt64(try need(r.u8(0x201), "setup header length byte (0x201)"))
        guard headerEnd >= 0x23c else {
            throw .truncated("setup header ends at \(hex(headerEnd)), before cmdline_size (0x238) of protocol \(version >> 8).\(String(format2: version & 0xff))")
        }
        setupHeader = Array(try need(r.slice(0x1f1, headerEnd - 0x1f1), "setup header (0x1f1..\(hex(headerEnd)))"))
        protocolVersion = version
        let sects = try need(r.u8(0x1f1), "setup_sects (0x1f1)")
        setupSects = sects == 0 ? 4 : Int(sects)
        syssize = try need(r.u32(0x1f4), "syssize (0x1f4)")
        loadflags = try need(r.u8(0x211), "loadflags (0x211)")
        initrdAddrMax = try need(r.u32(0x22c), "initrd_addr_max (0x22c)")
        kernelAlignment = try need(r.u32(0x230), "kernel_alignment (0x230)")
        relocatable = try need(r.u8(0x234), "relocatable_kernel (0x234)") != 0
        cmdlineSize = try need(r.u32(0x238), "cmdline_size (0x238)")
        guard version >= 0x020C, headerEnd >= 0x238 else {
            throw .no64BitEntry("boot protocol \(version >> 8).\(String(format2: version & 0xff)) predates xloadflags (2.12)")
        }
        xloadflags = try need(r.u16(0x236), "xloadflags (0x236)")
        guard xloadflags & 1 != 0 else { throw .no64BitEntry("XLF_KERNEL_64 is not set in xloadflags") }
        guard loadflags & 1 != 0 else { throw .no64BitEntry("LOADED_HIGH is not set (a zImage, not a bzImage)") }
        if headerEnd >= 0x264 {
            prefAddress = try need(r.u64(0x258), "pref_address (0x258)")
            initSize = try need(r.u32(0x260), "init_size (0x260)")
        } else {
            prefAddress = PlatformLayout.kernelLoadAddress
            initSize = 0
        }
        let setupBytes = UInt64(setupSects + 1) * 512
        guard UInt64(bytes.count) > setupBytes else {
            throw .truncated("file is \(bytes.count) bytes but its \(setupSects) setup sectors end at \(setupBytes)")
        }
        let pm = UInt64(bytes.count) - setupBytes
        guard UInt64(syssize) * 16 <= pm else {
            throw .truncated("protected-mode kernel is \(pm) bytes but syssize says \(UInt64(syssize) * 16)")
        }
        protectedModeKernel = Array(bytes[Int(setupBytes)...])
    }
}

/// One PT_LOAD segment of an ELF kernel, to be copied to guest-physical `paddr`.
public struct ELFSegment: Sendable, Equatable {
    /// Guest-physical load address (`p_paddr`).
    public let paddr: UInt64
    /// File contents (`p_filesz` bytes).
    public let data: [UInt8]
    /// Size in memory, bytes (`p_memsz` >= `p_filesz`; the rest is zeroed bss).
    public let memsz: UInt64
}

/// A parsed ELF kernel that supports PVH entry (Xen docs/misc/pvh.pandoc): 32- or 64-bit,
/// little-endian, EM_386 or EM_X86_64, with a "Xen" note XEN_ELFNOTE_PHYS32_ENTRY.
public struct ELFKernel: Sendable, Equatable {
    /// ELFCLASS64 (true) or ELFCLASS32.
    public let is64Bit: Bool
    /// 32-bit physical PVH entry point from the XEN_ELFNOTE_PHYS32_ENTRY note.
    public let pvhEntry: UInt32
    /// Loadable segments in program-header order (only those with `p_memsz > 0`).
    public let segments: [ELFSegment]

    /// Xen note type of the 32-bit PVH entry point (xen/include/public/elfnote.h).
    public static let xenElfnotePhys32Entry: UInt32 = 18

    /// Parses an ELF kernel. See ``Kernel/load(bytes:)`` for the errors.
    public init(bytes: [UInt8]) throws(BootError) {
        let r = ByteReader(bytes)
        guard r.slice(0, 4).map(Array.init) == [0x7F, 0x45, 0x4C, 0x46] else { throw .notAKernel }
        guard bytes.count >= 20 else { throw .truncated("ELF identification is \(bytes.count) of 20 bytes") }
        let cls = bytes[4]
        guard cls == 1 || cls == 2 else { throw .badELF("EI_CLASS \(cls) is neither ELFCLASS32 nor ELFCLASS64") }
        guard bytes[5] == 1 else { throw .badELF("EI_DATA \(bytes[5]) is not little-endian") }
        let is64 = cls == 2
        let ehsize = is64 ? 64 : 52
        guard bytes.count >= ehsize else { throw .truncated("ELF header is \(bytes.count) of \(ehsize) bytes") }
        let machine = r.u16(18)!
        guard machine == 3 || machine == 62 else { throw .badELF("e_machine \(machine) is neither EM_386 nor EM_X86_64") }
        let phoff = is64 ? r.u64(0x20)! : UInt64(r.u32(0x1C)!)
        let shoff = is64 ? r.u64(0x28)! : UInt64(r.u32(0x20)!)
        let phentsize = UInt64(r.u16(is64 ? 0x36 : 0x2A)!)
        let phnum = UInt64(r.u16(is64 ? 0x38 : 0x2C)!)
        let shentsize = UInt64(r.u16(is64 ? 0x3A : 0x2E)!)
        let shnum = UInt64(r.u16(is64 ? 0x3C : 0x30)!)
        let minPh: UInt64 = is64 ? 56 : 32
        guard phnum > 0 else { throw .badELF("no program headers") }
        guard phentsize >= minPh else { throw .badELF("e_phentsize \(phentsize) is smaller than \(minPh)") }
        guard r.contains(phoff, phentsize * phnum) else {
            throw .truncated("program headers at \(hex(phoff)) (\(phnum) x \(phentsize) bytes) lie beyond the \(bytes.count)-byte file")
        }
        var segments: [ELFSegment] = []
        var entry: UInt32?
        for i in 0..<phnum {
            let h = phoff + i * phentsize
            let type = r.u32(h)!
            let offset, paddr, filesz, memsz: UInt64
            if is64 {
                offset = r.u64(h + 8)!; paddr = r.u64(h + 24)!; filesz = r.u64(h + 32)!; memsz = r.u64(h + 40)!
            } else {
                offset = UInt64(r.u32(h + 4)!); paddr = UInt64(r.u32(h + 12)!)
                filesz = UInt64(r.u32(h + 16)!); memsz = UInt64(r.u32(h + 20)!)
            }
            switch type {
            case 1: // PT_LOAD
                guard memsz > 0 else { continue }
                guard filesz <= memsz else { throw .badELF("segment \(i) has p_filesz \(filesz) > p_memsz \(memsz)") }
                guard paddr.addingReportingOverflow(memsz).overflow == false else {
                    throw .badELF("segment \(i) at \(hex(paddr)) + \(memsz) bytes wraps the address space")
                }
                guard let data = r.slice(offset, filesz) else {
                    throw .truncated("segment \(i) data at \(hex(offset)) + \(filesz) bytes lies beyond the \(bytes.count)-byte file")
                }
                segments.append(ELFSegment(paddr: paddr, data: Array(data), memsz: memsz))
            case 4: // PT_NOTE
                if entry == nil, let notes = r.slice(offset, filesz) {
                    entry = try Self.findPVHEntry(in: ByteReader(Array(notes)))
                }
            default: break
            }
        }
        if entry == nil, shnum > 0, shentsize >= (is64 ? 64 : 40), r.contains(shoff, shentsize * shnum) {
            for i in 0..<shnum where entry == nil {
                let h = shoff + i * shentsize
                guard r.u32(h + 4)! == 7 else { continue } // SHT_NOTE
                let offset = is64 ? r.u64(h + 24)! : UInt64(r.u32(h + 16)!)
                let size = is64 ? r.u64(h + 32)! : UInt64(r.u32(h + 20)!)
                if let notes = r.slice(offset, size) { entry = try Self.findPVHEntry(in: ByteReader(Array(notes))) }
            }
        }
        guard let entry else { throw .noPVHNote }
        guard !segments.isEmpty else { throw .badELF("no PT_LOAD segment") }
        self.is64Bit = is64
        self.pvhEntry = entry
        self.segments = segments
    }

    /// Walks ELF notes (namesz, descsz, type, name, desc; 4-byte padded) for "Xen" type 18.
    static func findPVHEntry(in r: ByteReader) throws(BootError) -> UInt32? {
        var pos: UInt64 = 0
        while r.contains(pos, 12) {
            let namesz = UInt64(r.u32(pos)!), descsz = UInt64(r.u32(pos + 4)!), type = r.u32(pos + 8)!
            let name = pos + 12
            let desc = name + ((namesz + 3) & ~3)
            let next = desc + ((descsz + 3) & ~3)
            guard let nameBytes = r.slice(name, namesz), r.contains(desc, descsz) else { return nil }
            var n = Array(nameBytes)
            if n.last == 0 { n.removeLast() }
            if n == Array("Xen".utf8), type == xenElfnotePhys32Entry {
                switch descsz {
                case 4: return r.u32(desc)!
                case 8:
                    let v = r.u64(desc)!
                    guard v <= UInt64(UInt32.max) else { throw .badELF("XEN_ELFNOTE_PHYS32_ENTRY \(hex(v)) is above 4 GiB") }
                    return UInt32(v)
                default: throw .badELF("XEN_ELFNOTE_PHYS32_ENTRY descriptor is \(descsz) bytes, not 4 or 8")
                }
            }
            pos = next
        }
        return nil
    }
}

/// A kernel image the boot loader knows how to start.
public enum KernelImage: Sendable, Equatable {
    /// Linux bzImage, started through the 64-bit boot protocol.
    case bzImage(BzImage)
    /// ELF kernel with a PVH entry point, started in 32-bit protected mode.
    case elf(ELFKernel)
}

/// Kernel image detection.
public enum Kernel {
    /// Detects and parses a kernel image: a bzImage ("HdrS" at 0x202) or an ELF file
    /// ("\x7FELF"). Never traps on malformed input.
    /// - Throws: ``BootError/notAKernel``, ``BootError/truncated(_:)``,
    ///   ``BootError/protocolTooOld(major:minor:)`` (bzImage protocol < 2.06),
    ///   ``BootError/no64BitEntry(_:)`` (no XLF_KERNEL_64), ``BootError/badELF(_:)``,
    ///   ``BootError/noPVHNote``.
    public static func load(bytes: [UInt8]) throws(BootError) -> KernelImage {
        if bytes.starts(with: [0x7F, 0x45, 0x4C, 0x46]) { return .elf(try ELFKernel(bytes: bytes)) }
        if bytes.count >= 0x206, bytes[0x202..<0x206].elementsEqual("HdrS".utf8) {
            return .bzImage(try BzImage(bytes: bytes))
        }
        throw .notAKernel
    }
}

extension String {
    /// Two-digit decimal, as in protocol minor versions ("2.06").
    init(format2 v: UInt16) { self = v < 10 ? "0\(v)" : "\(v)" }
}
