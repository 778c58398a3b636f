import GuestMemory

/// What to start the boot vCPU with.
public enum BootTarget: Sendable, Equatable {
    /// A kernel from ``Kernel/load(bytes:)``: bzImage via the Linux 64-bit boot protocol,
    /// ELF via PVH.
    case kernel(KernelImage)
    /// A flat real-mode firmware image ending at 1 MiB (see ``Firmware/load(bytes:into:)``).
    case firmware([UInt8])
}

/// Result of ``BootLoader/prepare(memory:ramBytes:vcpus:target:initrd:cmdline:)``.
public struct BootSetup: Sendable, Equatable {
    /// Initial state of the boot vCPU (APIC ID 0).
    public let vcpu: InitialVCPUState
    /// The memory map the guest was told about (e820 / PVH memmap).
    public let memoryMap: MemoryMap
    /// Guest-physical address of the initrd, when one was loaded.
    public let initrdAddress: UInt64?
    /// Guest-physical address of the ACPI RSDP (nil for firmware boot).
    public let rsdpAddress: UInt64?
    /// Guest-physical address of the MP floating pointer (nil for firmware boot).
    public let mpFloatingPointerAddress: UInt64?
}

/// The one entry point the core calls to fill guest memory before the first KVM_RUN.
public enum BootLoader {
    /// Most vCPUs: 8-bit xAPIC IDs, the IOAPIC taking the ID after the last vCPU.
    public static let maxVCPUs = 254

    /// Writes everything the guest reads at boot into `memory` and returns the BSP state.
    ///
    /// Kernel targets get the ACPI tables (``ACPITables``, RSDP at acpiTablesBase), the MP
    /// table (``MPTable``), the GDT, the command line at cmdlineAddress and the initrd at the
    /// highest page-aligned address below the kernel's limit; then a bzImage gets the zero
    /// page and identity page tables and starts in long mode at load address + 0x200 with
    /// RSI = zero page (boot.rst "64-bit boot protocol"), and a PVH ELF gets hvm_start_info
    /// and starts in 32-bit protected mode at its PHYS32 entry with EBX = start info.
    /// A firmware target gets only its image (it owns 0xE0000-0xFFFFF and builds its own
    /// tables); `initrd` and `cmdline` are ignored.
    ///
    /// - Parameters:
    ///   - memory: guest RAM laid out as ``MemoryMap/forRAM(bytes:)`` `.layout` says.
    ///   - ramBytes: total guest RAM, bytes (multiple of 4096, at least 2 MiB).
    ///   - vcpus: number of vCPUs, 1...``maxVCPUs``.
    /// - Throws: ``BootError`` — ``BootError/badVCPUCount(_:)``, ``BootError/badRAMSize(_:)``,
    ///   ``BootError/kernelDoesNotFit(_:)``, ``BootError/cmdlineTooLong(length:max:)``,
    ///   ``BootError/initrdDoesNotFit(size:limit:)``, ``BootError/badFirmwareSize(_:)``,
    ///   ``BootError/memory(_:)`` when `memory` does not cover the layout.
    public static func prepare(memory: GuestMemory, ramBytes: UInt64, vcpus: Int, target: BootTarget,
                               initrd: [UInt8]?, cmdline: String) throws(BootError) -> BootSetup {
        guard (1...maxVCPUs).contains(vcpus) else { throw .badVCPUCount(vcpus) }
        let map = try MemoryMap.forRAM(bytes: ramBytes)
        switch target {
        case let .firmware(bytes):
            let s = try Firmware.load(bytes: bytes, into: memory)
            return BootSetup(vcpu: s, memoryMap: map, initrdAddress: nil, rsdpAddress: nil, mpFloatingPointerAddress: nil)
        case let .kernel(image):
            let acpi = ACPITables(vcpus: vcpus)
            try acpi.write(to: memory)
            let mp = MPTable(vcpus: vcpus)
            try mp.write(to: memory)
            let (s, initrdAt): (InitialVCPUState, UInt64?)
            switch image {
            case let .bzImage(bz):
                (s, initrdAt) = try LinuxBoot.prepare(bz, memory: memory, map: map, initrd: initrd,
                                                      cmdline: cmdline, rsdpAddress: acpi.rsdp)
            case let .elf(elf):
                (s, initrdAt) = try PVHBoot.prepare(elf, memory: memory, map: map, initrd: initrd,
                                                    cmdline: cmdline, rsdpAddress: acpi.rsdp)
            }
            return BootSetup(vcpu: s, memoryMap: map, initrdAddress: initrdAt, rsdpAddress: acpi.rsdp,
                             mpFloatingPointerAddress: mp.base)
        }
    }
}
