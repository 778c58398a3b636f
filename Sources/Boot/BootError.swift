import GuestMemory

/// Why an image could not be loaded or the boot structures could not be written.
/// Each case renders as one line naming the problem (``description``).
public enum BootError: Error, Equatable, CustomStringConvertible {
    /// Neither a bzImage ("HdrS" at 0x202) nor an ELF file.
    case notAKernel
    /// The image ends before a structure it declares; the string names what was cut off.
    case truncated(String)
    /// bzImage protocol version below 2.06 (`major`, `minor`).
    case protocolTooOld(major: UInt8, minor: UInt8)
    /// bzImage without XLF_KERNEL_64 (no 64-bit entry point at load address + 0x200).
    case no64BitEntry(String)
    /// An ELF header or program header is unusable; the string says which and why.
    case badELF(String)
    /// ELF file without a Xen XEN_ELFNOTE_PHYS32_ENTRY note.
    case noPVHNote
    /// The kernel (or one of its ELF segments) does not fit in guest RAM where it must go.
    case kernelDoesNotFit(String)
    /// Command line longer (`length` bytes, without NUL) than the kernel accepts (`max`).
    case cmdlineTooLong(length: Int, max: Int)
    /// No page-aligned place for an initrd of `size` bytes below `limit` above the kernel.
    case initrdDoesNotFit(size: Int, limit: UInt64)
    /// Firmware image empty or larger than ``Firmware/maxSize``.
    case badFirmwareSize(Int)
    /// Guest RAM size unusable (not page aligned, or too small for the layout).
    case badRAMSize(UInt64)
    /// vCPU count outside 1...``BootLoader/maxVCPUs``.
    case badVCPUCount(Int)
    /// A table does not fit in the space PlatformLayout gives it.
    case tableTooLarge(String)
    /// Writing guest memory failed (the memory does not cover the platform layout).
    case memory(GuestMemoryError)

    public var description: String {
        switch self {
        case .notAKernel: return "not a bzImage or ELF kernel"
        case let .truncated(what): return "kernel image truncated: \(what)"
        case let .protocolTooOld(ma, mi):
            return "bzImage boot protocol \(ma).\(mi < 10 ? "0" : "")\(mi) is older than 2.06"
        case let .no64BitEntry(why): return "bzImage has no 64-bit entry point: \(why)"
        case let .badELF(why): return "bad ELF kernel: \(why)"
        case .noPVHNote: return "ELF kernel has no XEN_ELFNOTE_PHYS32_ENTRY note (not a PVH kernel)"
        case let .kernelDoesNotFit(why): return "kernel does not fit: \(why)"
        case let .cmdlineTooLong(l, m): return "kernel command line is \(l) bytes, longer than the \(m) the kernel accepts"
        case let .initrdDoesNotFit(s, limit): return "initrd (\(s) bytes) does not fit below \(hex(limit))"
        case let .badFirmwareSize(s): return "firmware image is \(s) bytes; it must be 1 to \(Firmware.maxSize) bytes"
        case let .badRAMSize(s): return "guest RAM size \(s) bytes is not a multiple of 4096 of at least 2 MiB"
        case let .badVCPUCount(n): return "vCPU count \(n) is outside 1...\(BootLoader.maxVCPUs)"
        case let .tableTooLarge(what): return "\(what) does not fit in its reserved area"
        case let .memory(e): return "writing boot structures: \(e)"
        }
    }
}

/// Runs a guest-memory write and maps its error into ``BootError/memory(_:)``.
@inline(__always)
func mem<T>(_ body: () throws(GuestMemoryError) -> T) throws(BootError) -> T {
    do { return try body() } catch { throw .memory(error) }
}
