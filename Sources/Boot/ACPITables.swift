import GuestMemory

/// ACPI tables for the platform of ``PlatformLayout`` (ACPI 6.x, chapter 5): RSDP
/// (revision 2), RSDT, XSDT, FADT (revision 6, full hardware model: PM1a event/control
/// blocks, no PM timer, SMI_CMD 0 so ACPI is always enabled), FACS, MADT and a DSDT in AML.
///
/// DSDT contents: `\_S5_` = Package {s5SleepType, s5SleepType, 0, 0};
/// `\_SB_.PCI0` (PNP0A03, _BBN 0, _SEG 0, _CRS: bus 0-0, I/O 0xCF8/8, I/O window
/// 0x0D00-0xFFFF, memory window pciMMIOBase/pciMMIOSize; _PRT: slots 1-31, pins A-D →
/// GSI ``PlatformLayout/pciIntxGSI(slot:pin:)``, i.e. pin p of slot s uses pin A's GSI of
/// slot s+p); `\_SB_.COM1` (PNP0501, I/O 0x3F8/8, IRQ 4); `\_SB_.PEVT` (pvpanic,
/// _HID "QEMU0001", I/O pvpanicPort/1, _STA 0x0F).
///
/// MADT: local APIC address lapicBase, PCAT_COMPAT; one enabled Processor Local APIC per
/// vCPU (ACPI processor UID = APIC ID = index); one IOAPIC (ID
/// ``PlatformLayout/ioapicID(vcpus:)``, address ioapicBase, GSI base 0); interrupt source
/// overrides ISA IRQ 0 → GSI 2 (edge, active high) and IRQ 9 → GSI 9 (level, active high,
/// the SCI); Local APIC NMI on LINT1 for all processors.
public struct ACPITables: Sendable, Equatable {
    /// All tables, to be copied to ``base``.
    public let bytes: [UInt8]
    /// Guest-physical address of the first byte (the RSDP).
    public let base: UInt64
    /// Guest-physical addresses of each table.
    public let rsdp, rsdt, xsdt, facs, fadt, madt, dsdt: UInt64

    public static let oemID = "XENITH"
    /// FADT flags (ACPI 6.x Table 5.10): WBINVD (0), PROC_C1 (2), SLP_BUTTON (5: no fixed
    /// sleep button), FIX_RTC (6: no RTC wake status), RESET_REG_SUP (10). PWR_BUTTON (4)
    /// is clear: the power button is a fixed feature (PM1 PWRBTN_STS/EN).
    public static let fadtFlags: UInt32 = (1 << 0) | (1 << 2) | (1 << 5) | (1 << 6) | (1 << 10)
    /// FADT IAPC_BOOT_ARCH: LEGACY_DEVICES (0) and 8042 (1).
    public static let iapcBootArch: UInt16 = 0x3

    /// Builds the tables for `vcpus` processors at `base` (default ``PlatformLayout/acpiTablesBase``).
    public init(vcpus: Int, base: UInt64 = PlatformLayout.acpiTablesBase) {
        var w = ByteWriter()
        func place(_ table: [UInt8], align: Int = 16) -> UInt64 {
            w.align(to: align)
            let at = base + UInt64(w.count)
            w.append(bytes: table)
            return at
        }
        let dsdtBytes = Self.dsdt()
        let madtBytes = Self.madt(vcpus: vcpus)
        // Fixed order: RSDP, RSDT, XSDT, FACS, FADT, MADT, DSDT. Sizes of the first ones are
        // fixed, so compute addresses up front.
        let rsdpAt = base
        let rsdtAt = base + 0x30
        let xsdtAt = rsdtAt + 0x30
        let facsAt = base + 0xC0
        let fadtAt = facsAt + 0x40
        let madtAt = fadtAt + 0x120
        let dsdtAt = alignUp(madtAt + UInt64(madtBytes.count), 16)!
        let fadtBytes = Self.fadt(facs: facsAt, dsdt: dsdtAt)
        let rsdtBytes = Self.sdt("RSDT", revision: 1, body: AML.le(fadtAt, 4) + AML.le(madtAt, 4))
        let xsdtBytes = Self.sdt("XSDT", revision: 1, body: AML.le(fadtAt, 8) + AML.le(madtAt, 8))
        var r = ByteWriter(count: 36)
        r.put(ascii: "RSD PTR ", at: 0, width: 8)
        r.put(ascii: Self.oemID, at: 9, width: 6)
        r.put(UInt8(2), at: 15)
        r.put(UInt32(rsdtAt), at: 16)
        r.put(UInt32(36), at: 20)
        r.put(xsdtAt, at: 24)
        r.put(checksumByte(r.bytes[0..<20]), at: 8)
        r.put(checksumByte(r.bytes), at: 32)
        _ = place(r.bytes)
        precondition(place(rsdtBytes) == rsdtAt && place(xsdtBytes) == xsdtAt)
        precondition(place(Self.facs(), align: 64) == facsAt)
        precondition(place(fadtBytes) == fadtAt && place(madtBytes) == madtAt && place(dsdtBytes) == dsdtAt)
        self.bytes = w.bytes
        self.base = base
        (rsdp, rsdt, xsdt, facs, fadt, madt, dsdt) = (rsdpAt, rsdtAt, xsdtAt, facsAt, fadtAt, madtAt, dsdtAt)
    }

    /// Copies the tables into guest memory.
    /// - Throws: ``BootError/tableTooLarge(_:)`` when they overrun the MP table area,
    ///   ``BootError/memory(_:)``.
    public func write(to memory: GuestMemory) throws(BootError) {
        if base == PlatformLayout.acpiTablesBase, base + UInt64(bytes.count) > PlatformLayout.mpTableBase {
            throw .tableTooLarge("ACPI tables (\(bytes.count) bytes)")
        }
        try mem { () throws(GuestMemoryError) in try memory.write(bytes, at: base) }
    }

    /// A system description table: 36-byte header (ACPI 6.x §5.2.6) plus `body`, checksummed.
    static func sdt(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var w = ByteWriter(count: 36)
        w.put(ascii: signature, at: 0, width: 4)
        w.put(UInt32(36 + body.count), at: 4)
        w.put(revision, at: 8)
        w.put(ascii: oemID, at: 10, width: 6)
        w.put(ascii: "XENITH" + signature, at: 16, width: 8)
        w.put(UInt32(1), at: 24)          // OEM revision
        w.put(ascii: "XNTH", at: 28, width: 4) // creator ID
        w.put(UInt32(1), at: 32)          // creator revision
        w.append(bytes: body)
        w.put(checksumByte(w.bytes), at: 9)
        return w.bytes
    }

    /// Generic Address Structure for system I/O (ACPI 6.x §5.2.3.2), 12 bytes.
    static func gasIO(_ port: UInt16, bitWidth: UInt8, accessSize: UInt8) -> [UInt8] {
        [1, bitWidth, 0, accessSize] + AML.le(UInt64(port), 8)
    }

    /// FADT revision 6 (276 bytes, ACPI 6.x §5.2.9).
    static func fadt(facs: UInt64, dsdt: UInt64) -> [UInt8] {
        var b = ByteWriter(count: 276 - 36)
        func at(_ off: Int) -> Int { off - 36 }
        b.put(UInt32(facs), at: at(36))      // FIRMWARE_CTRL
        b.put(UInt32(dsdt), at: at(40))      // DSDT
        b.put(UInt8(0), at: at(45))          // Preferred_PM_Profile: unspecified
        b.put(UInt16(PlatformLayout.sciIRQ), at: at(46))
        b.put(UInt32(0), at: at(48))         // SMI_CMD 0: ACPI mode is always on
        b.put(UInt32(PlatformLayout.pm1aEventPort), at: at(56))
        b.put(UInt32(PlatformLayout.pm1aControlPort), at: at(64))
        b.put(UInt32(0), at: at(76))         // PM_TMR_BLK: none
        b.put(UInt8(4), at: at(88))          // PM1_EVT_LEN
        b.put(UInt8(2), at: at(89))          // PM1_CNT_LEN
        b.put(UInt16(101), at: at(96))       // P_LVL2_LAT > 100: C2 unsupported
        b.put(UInt16(1001), at: at(98))      // P_LVL3_LAT > 1000: C3 unsupported
        b.put(iapcBootArch, at: at(109))
        b.put(fadtFlags, at: at(112))
        b.put(bytes: gasIO(PlatformLayout.resetPort, bitWidth: 8, accessSize: 1), at: at(116))
        b.put(PlatformLayout.resetValue, at: at(128))
        b.put(UInt8(0), at: at(131))         // FADT minor version
        b.put(facs, at: at(132))             // X_FIRMWARE_CTRL
        b.put(dsdt, at: at(140))             // X_DSDT
        // X_PM1a_* left 0: OSPM uses the 32-bit block addresses and lengths above.
        return sdt("FACP", revision: 6, body: b.bytes)
    }

    /// FACS (64 bytes, no checksum, ACPI 6.x §5.2.10).
    static func facs() -> [UInt8] {
        var w = ByteWriter(count: 64)
        w.put(ascii: "FACS", at: 0, width: 4)
        w.put(UInt32(64), at: 4)
        w.put(UInt8(2), at: 32) // version
        return w.bytes
    }

    /// MADT revision 5 (ACPI 6.x §5.2.12).
    static func madt(vcpus: Int) -> [UInt8] {
        var b = ByteWriter()
        b.append(UInt32(PlatformLayout.lapicBase))
        b.append(UInt32(1)) // PCAT_COMPAT
        for i in 0..<vcpus {
            b.append(bytes: [0, 8, UInt8(i), UInt8(i)]); b.append(UInt32(1)) // enabled
        }
        b.append(bytes: [1, 12, PlatformLayout.ioapicID(vcpus: vcpus), 0])
        b.append(UInt32(PlatformLayout.ioapicBase)); b.append(UInt32(0))
        // Interrupt Source Overrides: bus 0 (ISA), source, GSI, flags (polarity bits 1:0, trigger 3:2).
        b.append(bytes: [2, 10, 0, 0]); b.append(UInt32(2)); b.append(UInt16(0x0005)) // edge, high
        b.append(bytes: [2, 10, 0, UInt8(PlatformLayout.sciIRQ)]); b.append(UInt32(PlatformLayout.sciIRQ))
        b.append(UInt16(0x000D)) // level, high
        // Local APIC NMI: all processors, flags 0 (conforms), LINT1.
        b.append(bytes: [4, 6, 0xFF, 0, 0, 1])
        return sdt("APIC", revision: 5, body: b.bytes)
    }

    /// The DSDT (revision 2: 64-bit AML integers).
    static func dsdt() -> [UInt8] {
        let s5 = UInt64(PlatformLayout.s5SleepType)
        var prt: [[UInt8]] = []
        for slot in 1...31 {
            for pin in 0...3 {
                prt.append(AML.package([
                    AML.integer(UInt64(slot) << 16 | 0xFFFF), AML.integer(UInt64(pin)), AML.integer(0),
                    AML.integer(UInt64(PlatformLayout.pciIntxGSI(slot: slot, pin: pin))),
                ]))
            }
        }
        let pci0 = AML.device("PCI0", [
            AML.name("_HID", AML.eisaID("PNP0A03")),
            AML.name("_UID", AML.integer(0)),
            AML.name("_ADR", AML.integer(0)),
            AML.name("_BBN", AML.integer(0)),
            AML.name("_SEG", AML.integer(0)),
            AML.name("_CRS", AML.resourceTemplate([
                AML.wordSpace(resourceType: 2, min: 0, max: 0),
                AML.io(base: PlatformLayout.pciConfigAddressPort, length: 8),
                AML.wordSpace(resourceType: 1, min: 0x0D00, max: 0xFFFF),
                AML.dwordMemory(base: UInt32(PlatformLayout.pciMMIOBase), size: UInt32(PlatformLayout.pciMMIOSize)),
            ])),
            AML.name("_PRT", AML.package(prt)), // 124 entries (NumElements is one byte)
        ])
        let com1 = AML.device("COM1", [
            AML.name("_HID", AML.eisaID("PNP0501")),
            AML.name("_UID", AML.integer(1)),
            AML.name("_CRS", AML.resourceTemplate([
                AML.io(base: PlatformLayout.com1Port, length: 8), AML.irq(Int(PlatformLayout.com1IRQ)),
            ])),
        ])
        let pvpanic = AML.device("PEVT", [
            AML.name("_HID", AML.string("QEMU0001")),
            AML.name("_CRS", AML.resourceTemplate([AML.io(base: PlatformLayout.pvpanicPort, length: 1)])),
            AML.method("_STA", [AML.return(AML.integer(0x0F))]),
        ])
        let body = AML.name("\\_S5_", AML.package([AML.integer(s5), AML.integer(s5), AML.integer(0), AML.integer(0)]))
            + AML.scope("\\_SB_", [pci0, com1, pvpanic])
        return sdt("DSDT", revision: 2, body: body)
    }
}
