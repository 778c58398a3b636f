import GuestMemory

/// Flat binary firmware started in real mode from the x86 reset vector.
public enum Firmware {
    /// Largest firmware image, bytes (it occupies `[firmwareEnd - size, firmwareEnd)`).
    public static let maxSize = 128 * 1024

    /// Copies `bytes` so that it ends at ``PlatformLayout/firmwareEnd`` (1 MiB): the last 16
    /// bytes hold the reset vector at 0xFFFF0. Returns the reset state: real mode,
    /// CS selector 0xF000 base 0xF0000 limit 0xFFFF, IP 0xFFF0, other segments 0/0/0xFFFF,
    /// CR0 0x60000010 (the architectural reset value: ET, CD, NW).
    /// - Throws: ``BootError/badFirmwareSize(_:)`` (empty or over ``maxSize``),
    ///   ``BootError/memory(_:)`` when guest memory does not cover the image.
    public static func load(bytes: [UInt8], into memory: GuestMemory) throws(BootError) -> InitialVCPUState {
        guard !bytes.isEmpty, bytes.count <= maxSize else { throw .badFirmwareSize(bytes.count) }
        let base = PlatformLayout.firmwareEnd - UInt64(bytes.count)
        try mem { () throws(GuestMemoryError) in try memory.write(bytes, at: base) }
        return resetState
    }

    /// The x86 reset state with CS base 0xF0000 (see ``load(bytes:into:)``).
    public static var resetState: InitialVCPUState {
        let cs = SegmentRegister(base: 0xF_0000, limit: 0xFFFF, selector: 0xF000, type: 0xB, db: false, g: false)
        let d = SegmentRegister(base: 0, limit: 0xFFFF, selector: 0, type: 0x3, db: false, g: false)
        let tr = SegmentRegister(base: 0, limit: 0xFFFF, selector: 0, type: 0xB, db: false, s: false, g: false)
        let ldt = SegmentRegister(base: 0, limit: 0xFFFF, selector: 0, type: 0x2, db: false, s: false, g: false)
        var s = InitialVCPUState(mode: .real, cs: cs, ds: d, es: d, fs: d, gs: d, ss: d, tr: tr, ldt: ldt,
                                 gdt: DescriptorTableRegister(base: 0, limit: 0xFFFF),
                                 idt: DescriptorTableRegister(base: 0, limit: 0xFFFF),
                                 cr0: X86.cr0ET | X86.cr0NW | X86.cr0CD)
        s.rip = 0xFFF0
        return s
    }
}
