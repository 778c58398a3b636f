// The guest-physical memory map: e820 entries and the matching GuestMemory layout.

/// One BIOS e820 entry (`struct boot_e820_entry`: addr u64, size u64, type u32; 20 bytes packed).
public struct E820Entry: Sendable, Equatable {
    /// Usable RAM.
    public static let ram: UInt32 = 1
    /// Reserved (firmware, EBDA, BIOS area).
    public static let reserved: UInt32 = 2
    /// ACPI reclaimable tables.
    public static let acpi: UInt32 = 3

    /// Guest-physical base, bytes.
    public let addr: UInt64
    /// Length, bytes.
    public let size: UInt64
    /// E820 type (1 RAM, 2 reserved, 3 ACPI).
    public let type: UInt32

    public init(addr: UInt64, size: UInt64, type: UInt32) { self.addr = addr; self.size = size; self.type = type }
}

/// Where guest RAM lives for a given RAM size, per ``PlatformLayout``:
/// RAM `[0, lowMemoryEnd)`, reserved `[lowMemoryEnd, 0xA0000)`, reserved
/// `[biosAreaStart, 1 MiB)`, RAM `[1 MiB, min(ram, mmioHoleStart))`, and RAM from
/// `highMemoryBase` for whatever does not fit below the MMIO hole.
public struct MemoryMap: Sendable, Equatable {
    /// Total guest RAM, bytes.
    public let ramBytes: UInt64
    /// The e820 map, sorted by address.
    public let e820: [E820Entry]
    /// Regions for ``GuestMemory/memfd(name:layout:)``: `[0, lowRAMEnd)` (including the
    /// first MiB) and, when RAM exceeds the hole, `[highMemoryBase, highMemoryBase + rest)`.
    public let layout: [(base: UInt64, size: UInt64)]

    /// End of RAM below the MMIO hole: `min(ramBytes, mmioHoleStart)`.
    public var lowRAMEnd: UInt64 { min(ramBytes, PlatformLayout.mmioHoleStart) }

    /// Smallest RAM size accepted: the first MiB plus one MiB above it.
    public static let minimumRAM: UInt64 = 2 << 20

    /// The map for `bytes` of guest RAM.
    /// - Throws: ``BootError/badRAMSize(_:)`` unless `bytes` is a multiple of 4096 and at
    ///   least ``minimumRAM``.
    public static func forRAM(bytes: UInt64) throws(BootError) -> MemoryMap {
        guard bytes >= minimumRAM, bytes % 4096 == 0, bytes <= (1 << 52) else { throw .badRAMSize(bytes) }
        let low = min(bytes, PlatformLayout.mmioHoleStart)
        let oneMiB: UInt64 = 0x10_0000
        var e: [E820Entry] = [
            E820Entry(addr: 0, size: PlatformLayout.lowMemoryEnd, type: E820Entry.ram),
            E820Entry(addr: PlatformLayout.lowMemoryEnd, size: 0xA_0000 - PlatformLayout.lowMemoryEnd, type: E820Entry.reserved),
            E820Entry(addr: PlatformLayout.biosAreaStart, size: oneMiB - PlatformLayout.biosAreaStart, type: E820Entry.reserved),
            E820Entry(addr: oneMiB, size: low - oneMiB, type: E820Entry.ram),
        ]
        var layout: [(base: UInt64, size: UInt64)] = [(0, low)]
        if bytes > low {
            e.append(E820Entry(addr: PlatformLayout.highMemoryBase, size: bytes - low, type: E820Entry.ram))
            layout.append((PlatformLayout.highMemoryBase, bytes - low))
        }
        return MemoryMap(ramBytes: bytes, e820: e, layout: layout)
    }

    public static func == (a: MemoryMap, b: MemoryMap) -> Bool {
        a.ramBytes == b.ramBytes && a.e820 == b.e820
    }
}
