/// The fixed x86 PC layout the core presents to every guest: where RAM, firmware tables,
/// boot structures and emulated devices live. Boot writes tables that describe these
/// addresses and ports; the core's device models answer at them. One place, so the two
/// cannot disagree.
public enum PlatformLayout {
    // MARK: Guest-physical memory map
    /// End of conventional memory below 1 MiB (start of the EBDA we reserve), bytes.
    public static let lowMemoryEnd: UInt64 = 0x9_FC00
    /// Start of the reserved BIOS area holding ACPI and MP tables.
    public static let biosAreaStart: UInt64 = 0xE_0000
    /// ACPI tables (RSDP first, 16-byte aligned, inside the range Linux scans for it).
    public static let acpiTablesBase: UInt64 = 0xE_0000
    /// MP floating pointer and configuration table (Intel MP spec 1.4).
    public static let mpTableBase: UInt64 = 0xF_0000
    /// Firmware images for real-mode guests end at 1 MiB; the reset vector is at 0xFFFF0.
    public static let firmwareEnd: UInt64 = 0x10_0000
    /// Where protected-mode kernels are loaded (Linux boot.rst: 0x100000).
    public static let kernelLoadAddress: UInt64 = 0x10_0000
    /// Start of the 32-bit PCI/MMIO hole; low RAM ends at or below this.
    public static let mmioHoleStart: UInt64 = 0xC000_0000
    /// First address of high RAM, above the hole.
    public static let highMemoryBase: UInt64 = 0x1_0000_0000
    /// IOAPIC registers (IOREGSEL/IOWIN).
    public static let ioapicBase: UInt64 = 0xFEC0_0000
    /// Local APIC registers.
    public static let lapicBase: UInt64 = 0xFEE0_0000
    /// Window for 32-bit PCI memory BARs the core assigns.
    public static let pciMMIOBase: UInt64 = 0xD000_0000
    public static let pciMMIOSize: UInt64 = 0x1000_0000

    // MARK: Boot structures (all below 1 MiB, inside RAM)
    /// GDT used for 64-bit and PVH entry.
    public static let gdtAddress: UInt64 = 0x500
    /// hvm_start_info for PVH (Xen arch-x86/hvm/start_info.h), followed by its memmap.
    public static let pvhStartInfoAddress: UInt64 = 0x6000
    /// PVH module list (hvm_modlist_entry, 32 bytes each; one entry: the initrd).
    public static let pvhModlistAddress: UInt64 = 0x6040
    /// PVH memory map (hvm_memmap_table_entry, 24 bytes each), up to the zero page.
    public static let pvhMemmapAddress: UInt64 = 0x6080
    /// Linux zero page (struct boot_params).
    public static let zeroPageAddress: UInt64 = 0x7000
    /// Identity-mapped page tables for 64-bit entry: PML4, PDPT, then 4 PDs (4 GiB, 2 MiB pages).
    public static let pml4Address: UInt64 = 0x9000
    public static let pdptAddress: UInt64 = 0xA000
    public static let pdAddress: UInt64 = 0xB000
    /// Kernel command line, NUL-terminated.
    public static let cmdlineAddress: UInt64 = 0x2_0000
    /// Longest command line we place, bytes including the NUL.
    public static let cmdlineMax: Int = 0x1_0000

    // MARK: I/O ports
    public static let com1Port: UInt16 = 0x3F8
    public static let com1IRQ: UInt32 = 4
    public static let i8042DataPort: UInt16 = 0x60
    public static let i8042CommandPort: UInt16 = 0x64
    /// QEMU-compatible pvpanic ISA port (ACPI _HID "QEMU0001").
    public static let pvpanicPort: UInt16 = 0x505
    /// ACPI PM1a event block: PM1_STS (2 bytes) then PM1_EN (2 bytes).
    public static let pm1aEventPort: UInt16 = 0x600
    /// ACPI PM1a control block (2 bytes): SLP_TYP bits 10-12, SLP_EN bit 13.
    public static let pm1aControlPort: UInt16 = 0x604
    /// ACPI reset register (FADT RESET_REG, system I/O) and the value that resets.
    public static let resetPort: UInt16 = 0xCF9
    public static let resetValue: UInt8 = 0x06
    /// SLP_TYP value of \_S5 (soft off) in our DSDT.
    public static let s5SleepType: UInt16 = 5
    /// System control interrupt (ISA IRQ 9, level, active high).
    public static let sciIRQ: UInt32 = 9
    /// PCI configuration mechanism #1 address and data ports.
    public static let pciConfigAddressPort: UInt16 = 0xCF8
    public static let pciConfigDataPort: UInt16 = 0xCFC
    /// GSI used for INTx of PCI device slot `slot` (pin A): IOAPIC pins 16...23.
    public static func pciIntxGSI(slot: Int) -> UInt32 { 16 + UInt32(slot % 8) }
    /// GSI for INTx pin `pin` (0 = INTA ... 3 = INTD) of PCI slot `slot`: the usual swizzle,
    /// pin B of slot s shares pin A's GSI of slot s+1 (ACPI _PRT and MP table agree).
    public static func pciIntxGSI(slot: Int, pin: Int) -> UInt32 { pciIntxGSI(slot: slot + pin) }
    /// APIC ID of the IOAPIC in the MADT and MP table: the first ID after the vCPUs'
    /// local APIC IDs 0..<vcpus (MP spec: IDs unique on the APIC bus).
    public static func ioapicID(vcpus: Int) -> UInt8 { UInt8(truncatingIfNeeded: vcpus) }
    /// IOAPIC pin count we advertise.
    public static let ioapicPins: UInt32 = 24
}
