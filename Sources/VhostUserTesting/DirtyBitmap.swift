// The front-end's side of migration dirty logging, for tests: a bitmap in a memfd to hand
// over with SET_LOG_BASE and read back.
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A dirty-page log as a front-end allocates it for SET_LOG_BASE (vhost-user.rst
/// "Migration"): `size` bytes in a memfd, one bit per 4 KiB guest-physical page (bit
/// `page % 8` of byte `page / 8`), mapped here as well so a test can see what the back-end
/// marked. Owns the memfd and the mapping.
public final class DirtyBitmap: @unchecked Sendable {
    /// Bytes covered by one bit (VHOST_LOG_PAGE).
    public static let pageSize: UInt64 = 0x1000
    /// The memfd to pass to ``VhostUser/VhostUserFrontend/setLogBase(fd:size:offset:)``.
    public let fd: Int32
    /// Bytes of bitmap (covers `size × 8` pages).
    public let size: Int
    let base: UnsafeMutableRawPointer
    let mappedBytes: Int

    /// - Parameters:
    ///   - size: bytes of bitmap to hand over (≥ 1).
    ///   - fileSize: bytes the memfd really has (default `size`); smaller makes a log the
    ///     back-end must refuse.
    /// - Throws: ``SyntheticDriverError`` when memfd_create, ftruncate or mmap fails.
    public init(size: Int, fileSize: Int? = nil) throws {
        let f = clinux_memfd_create("dirty-log", CLINUX_MFD_CLOEXEC)
        guard f >= 0 else { throw SyntheticDriverError("memfd_create: errno \(errno)") }
        let real = max(fileSize ?? size, 1)
        guard ftruncate(f, off_t(real)) == 0 else { close(f); throw SyntheticDriverError("ftruncate: errno \(errno)") }
        let p = mmap(nil, real, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0)
        guard p != MAP_FAILED, let p else { close(f); throw SyntheticDriverError("mmap: errno \(errno)") }
        fd = f; self.size = size; base = p
        mappedBytes = real
    }

    deinit { munmap(base, mappedBytes); close(fd) }

    /// Page numbers (guest-physical address / 4096) whose bit is set, ascending.
    public var markedPages: [UInt64] {
        var out: [UInt64] = []
        for i in 0..<min(size, mappedBytes) {
            let b = base.load(fromByteOffset: i, as: UInt8.self)
            if b == 0 { continue }
            for bit in 0..<8 where b & (1 << bit) != 0 { out.append(UInt64(i * 8 + bit)) }
        }
        return out
    }

    /// Clears every bit (as the front-end does after syncing).
    public func clear() { base.initializeMemory(as: UInt8.self, repeating: 0, count: min(size, mappedBytes)) }

    /// The page numbers [address, address + length) touches.
    public static func pages(_ address: UInt64, _ length: UInt64) -> Set<UInt64> {
        guard length > 0 else { return [] }
        return Set(address / pageSize...(address + length - 1) / pageSize)
    }
}

/// A failure of the synthetic drivers' own setup (not of the back-end under test).
public struct SyntheticDriverError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ s: String) { description = s }
}
