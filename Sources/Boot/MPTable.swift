import GuestMemory

/// Intel MultiProcessor Specification 1.4 tables: the MP floating pointer structure
/// ("_MP_", 16 bytes) at ``base`` and the configuration table ("PCMP") right after it.
///
/// Entries, in the spec's type order: one processor per vCPU (APIC ID = index, enabled,
/// BSP flag on 0); buses 0 "PCI" and 1 "ISA"; the IOAPIC (ID
/// ``PlatformLayout/ioapicID(vcpus:)``); I/O interrupt assignments for ISA IRQs 0-15 except
/// 2 (IRQ 0 → pin 2, others identity; IRQ 9, the SCI, level/active high; the rest conform
/// to ISA) and for PCI slots 1-31 pins A-D (source IRQ `slot << 2 | pin`, level/active low)
/// → ``PlatformLayout/pciIntxGSI(slot:pin:)``; local interrupts ExtINT → LINT0 and
/// NMI → LINT1 on all local APICs.
public struct MPTable: Sendable, Equatable {
    /// Floating pointer followed by the configuration table, to be copied to ``base``.
    public let bytes: [UInt8]
    /// Guest-physical address of the floating pointer.
    public let base: UInt64
    /// Guest-physical address of the configuration table (base + 16).
    public var configTable: UInt64 { base + 16 }

    public static let pciBusID: UInt8 = 0
    public static let isaBusID: UInt8 = 1

    /// Builds the tables for `vcpus` processors at `base` (default ``PlatformLayout/mpTableBase``).
    public init(vcpus: Int, base: UInt64 = PlatformLayout.mpTableBase) {
        let ioapic = PlatformLayout.ioapicID(vcpus: vcpus)
        var e = ByteWriter()
        var count = 0
        for i in 0..<vcpus { // processor entries, 20 bytes
            e.append(bytes: [0, UInt8(i), 0x14, i == 0 ? 0x03 : 0x01])
            e.append(UInt32(0x600))   // CPU signature: family 6
            e.append(UInt32(0x201))   // features: FPU, APIC
            e.append(UInt64(0))
            count += 1
        }
        for (id, name) in [(Self.pciBusID, "PCI"), (Self.isaBusID, "ISA")] { // bus entries, 8 bytes
            var w = ByteWriter(count: 2)
            w.put(UInt8(1), at: 0); w.put(id, at: 1)
            w.put(ascii: name, at: 2, width: 6)
            e.append(bytes: w.bytes)
            count += 1
        }
        e.append(bytes: [2, ioapic, 0x11, 0x01]) // IOAPIC, version 0x11, enabled
        e.append(UInt32(PlatformLayout.ioapicBase))
        count += 1
        func intr(_ entryType: UInt8, _ intType: UInt8, flags: UInt16, bus: UInt8, irq: UInt8, dest: UInt8, pin: UInt8) {
            e.append(bytes: [entryType, intType]); e.append(flags)
            e.append(bytes: [bus, irq, dest, pin])
            count += 1
        }
        for irq in 0..<16 where irq != 2 {
            let flags: UInt16 = UInt32(irq) == PlatformLayout.sciIRQ ? 0x0D : 0x00
            intr(3, 0, flags: flags, bus: Self.isaBusID, irq: UInt8(irq), dest: ioapic, pin: irq == 0 ? 2 : UInt8(irq))
        }
        for slot in 1...31 {
            for pin in 0...3 {
                intr(3, 0, flags: 0x0F, bus: Self.pciBusID, irq: UInt8(slot << 2 | pin), dest: ioapic,
                     pin: UInt8(PlatformLayout.pciIntxGSI(slot: slot, pin: pin)))
            }
        }
        intr(4, 3, flags: 0, bus: Self.isaBusID, irq: 0, dest: 0xFF, pin: 0) // ExtINT → LINT0
        intr(4, 1, flags: 0, bus: Self.isaBusID, irq: 0, dest: 0xFF, pin: 1) // NMI → LINT1

        var c = ByteWriter(count: 44)
        c.put(ascii: "PCMP", at: 0, width: 4)
        c.put(UInt16(44 + e.count), at: 4)
        c.put(UInt8(4), at: 6)                  // spec revision 1.4
        c.put(ascii: "XENITH", at: 8, width: 8)
        c.put(ascii: "XENITH PC", at: 16, width: 12)
        c.put(UInt16(count), at: 34)
        c.put(UInt32(PlatformLayout.lapicBase), at: 36)
        c.append(bytes: e.bytes)
        c.put(checksumByte(c.bytes), at: 7)

        var f = ByteWriter(count: 16)
        f.put(ascii: "_MP_", at: 0, width: 4)
        f.put(UInt32(base + 16), at: 4)
        f.put(UInt8(1), at: 8)                  // length in 16-byte units
        f.put(UInt8(4), at: 9)                  // spec revision 1.4
        // feature byte 1 = 0: configuration table present; byte 2 bit 7 = 0: virtual wire mode.
        f.put(checksumByte(f.bytes), at: 10)
        self.bytes = f.bytes + c.bytes
        self.base = base
    }

    /// Copies the tables into guest memory.
    /// - Throws: ``BootError/tableTooLarge(_:)`` when they pass the firmware end (1 MiB),
    ///   ``BootError/memory(_:)``.
    public func write(to memory: GuestMemory) throws(BootError) {
        if base == PlatformLayout.mpTableBase, base + UInt64(bytes.count) > PlatformLayout.firmwareEnd {
            throw .tableTooLarge("MP table (\(bytes.count) bytes)")
        }
        try mem { () throws(GuestMemoryError) in try memory.write(bytes, at: base) }
    }
}
