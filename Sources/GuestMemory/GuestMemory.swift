import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Errors from guest-memory access. Every guest-provided address and length goes through
/// ``GuestMemory/slice(at:count:)``, which throws one of these instead of touching memory
/// outside the regions.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible {
    /// `[address, address+length)` is not inside any one region (includes wrap-around).
    case outOfRange(address: UInt64, length: UInt64)
    /// The layout given to a constructor overlaps itself or has a zero-sized region.
    case badLayout(String)
    /// A system call failed while creating or mapping memory.
    case system(String, Errno)

    public var description: String {
        switch self {
        case let .outOfRange(a, l):
            return "guest address range 0x\(String(a, radix: 16))+\(l) is outside guest memory"
        case let .badLayout(s): return "bad guest memory layout: \(s)"
        case let .system(call, e): return "\(call): \(e)"
        }
    }
}

/// One contiguous range of guest-physical memory and where it lives in this process.
///
/// `fd`/`fdOffset` name the memfd (or other shareable file) backing it, so the region can be
/// handed to another process (vhost-user "SET_MEM_TABLE"); `fd` is -1 for private memory.
public struct MemoryRegion: @unchecked Sendable {
    /// Guest-physical address of the first byte.
    public let guestBase: UInt64
    /// Size in bytes.
    public let size: UInt64
    /// Host virtual address of the first byte.
    public let host: UnsafeMutableRawPointer
    /// Backing file descriptor or -1.
    public let fd: Int32
    /// Offset of `guestBase` within `fd`, in bytes.
    public let fdOffset: UInt64

    public init(guestBase: UInt64, size: UInt64, host: UnsafeMutableRawPointer, fd: Int32, fdOffset: UInt64) {
        self.guestBase = guestBase
        self.size = size
        self.host = host
        self.fd = fd
        self.fdOffset = fdOffset
    }

    /// Whether `[address, address+length)` lies entirely in this region (no overflow).
    @inlinable
    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        guard address >= guestBase else { return false }
        let off = address - guestBase
        return off <= size && length <= size - off
    }
}

/// Guest-physical memory as a set of non-overlapping regions, with bounds-checked access.
///
/// Used by the core (which creates it from a memfd and registers it with KVM) and by
/// backends (which map the regions a vhost-user frontend sends). The guest can change
/// this memory at any time: readers copy values out before checking them.
public final class GuestMemory: @unchecked Sendable {
    /// Regions sorted by `guestBase`.
    public let regions: [MemoryRegion]
    private let unmapOnDeinit: Bool
    private let closeFdOnDeinit: Bool

    /// Wraps existing mappings. Throws ``GuestMemoryError/badLayout(_:)`` on overlap.
    /// - Parameters:
    ///   - ownsMappings: unmap each region (and close distinct fds) when released.
    public init(regions: [MemoryRegion], ownsMappings: Bool) throws {
        let sorted = regions.sorted { $0.guestBase < $1.guestBase }
        for (i, r) in sorted.enumerated() {
            if r.size == 0 { throw GuestMemoryError.badLayout("zero-sized region at 0x\(String(r.guestBase, radix: 16))") }
            if r.guestBase &+ r.size < r.guestBase { throw GuestMemoryError.badLayout("region wraps the address space") }
            if i > 0 {
                let p = sorted[i - 1]
                if p.guestBase + p.size > r.guestBase { throw GuestMemoryError.badLayout("regions overlap at 0x\(String(r.guestBase, radix: 16))") }
            }
        }
        self.regions = sorted
        self.unmapOnDeinit = ownsMappings
        self.closeFdOnDeinit = ownsMappings
    }

    /// Creates guest RAM backed by one memfd (named `name`, sealed against shrinking) and
    /// maps it shared, one region per entry of `layout` (guest-physical base, bytes), laid
    /// out consecutively in the memfd. Sizes must be multiples of 4096.
    /// - Throws: ``GuestMemoryError/system(_:_:)`` when memfd_create, ftruncate or mmap fails
    ///   (for example memory larger than the host can give).
    public static func memfd(name: String, layout: [(base: UInt64, size: UInt64)]) throws -> GuestMemory {
        var total: UInt64 = 0
        for l in layout {
            guard l.size > 0, l.size % 4096 == 0, l.base % 4096 == 0 else {
                throw GuestMemoryError.badLayout("region 0x\(String(l.base, radix: 16))+\(l.size) is not page aligned")
            }
            total += l.size
        }
        let fd = clinux_memfd_create(name, CLINUX_MFD_CLOEXEC | CLINUX_MFD_ALLOW_SEALING)
        if fd < 0 { throw GuestMemoryError.system("memfd_create", Errno(rawValue: errno)) }
        if ftruncate(fd, off_t(total)) != 0 {
            let e = Errno(rawValue: errno); close(fd)
            throw GuestMemoryError.system("ftruncate(\(total) bytes)", e)
        }
        _ = clinux_fcntl_int(fd, CLINUX_F_ADD_SEALS, CLINUX_F_SEAL_SHRINK | CLINUX_F_SEAL_GROW)
        var regions: [MemoryRegion] = []
        var offset: UInt64 = 0
        for l in layout {
            // MAP_NORESERVE: RAM is committed as the guest touches it, like every VMM.
            let p = mmap(nil, Int(l.size), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, off_t(offset))
            if p == MAP_FAILED || p == nil {
                let e = Errno(rawValue: errno)
                for r in regions { munmap(r.host, Int(r.size)) }
                close(fd)
                throw GuestMemoryError.system("mmap(\(l.size) bytes)", e)
            }
            regions.append(MemoryRegion(guestBase: l.base, size: l.size, host: p!, fd: fd, fdOffset: offset))
            offset += l.size
        }
        return try GuestMemory(regions: regions, ownsMappings: true)
    }

    deinit {
        guard unmapOnDeinit else { return }
        var closed = Set<Int32>()
        for r in regions {
            munmap(r.host, Int(r.size))
            if closeFdOnDeinit, r.fd >= 0, closed.insert(r.fd).inserted { close(r.fd) }
        }
    }

    /// Total bytes of guest memory.
    public var totalSize: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// The region holding `[address, address+length)`, if one holds all of it.
    @inlinable
    public func region(containing address: UInt64, length: UInt64) -> MemoryRegion? {
        for r in regions where r.contains(address, length: length) { return r }
        return nil
    }

    /// Host memory for guest range `[address, address+count)`; the range must lie within
    /// one region. This is the one checked accessor every other access goes through.
    /// - Throws: ``GuestMemoryError/outOfRange(address:length:)``.
    @inlinable
    public func slice(at address: UInt64, count: Int) throws(GuestMemoryError) -> UnsafeMutableRawBufferPointer {
        guard count >= 0, let r = region(containing: address, length: UInt64(count)) else {
            throw .outOfRange(address: address, length: UInt64(max(count, 0)))
        }
        return UnsafeMutableRawBufferPointer(start: r.host + Int(address - r.guestBase), count: count)
    }

    /// Reads a little-endian integer at a guest-physical address.
    @inlinable
    public func load<T: FixedWidthInteger>(_ type: T.Type = T.self, at address: UInt64) throws(GuestMemoryError) -> T {
        let s = try slice(at: address, count: MemoryLayout<T>.size)
        return T(littleEndian: s.loadUnaligned(as: T.self))
    }

    /// Writes a little-endian integer at a guest-physical address.
    @inlinable
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        let s = try slice(at: address, count: MemoryLayout<T>.size)
        s.storeBytes(of: value.littleEndian, as: T.self)
    }

    /// Copies `count` bytes out of guest memory.
    public func read(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        let s = try slice(at: address, count: count)
        return [UInt8](UnsafeRawBufferPointer(s))
    }

    /// Copies `bytes` into guest memory.
    public func write<C: Collection>(_ bytes: C, at address: UInt64) throws(GuestMemoryError) where C.Element == UInt8 {
        let s = try slice(at: address, count: bytes.count)
        _ = s.initializeMemory(as: UInt8.self, from: bytes)
    }

    /// Fills `[address, address+count)` with zeros.
    public func zero(at address: UInt64, count: Int) throws(GuestMemoryError) {
        let s = try slice(at: address, count: count)
        if count > 0 { memset(s.baseAddress!, 0, count) }
    }
}
