// A filesystem path as a `sockaddr_un` (unix(7)), checked once.
#if canImport(Glibc)
import Glibc
#endif

/// The address of a Unix socket in the file system: a path that fits `sun_path`.
public struct UnixSocketAddress: Sendable {
    /// The longest path that fits: `sun_path` is 108 bytes and keeps a terminating NUL.
    public static let maxPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    /// The path as given.
    public let path: String
    private let storage: sockaddr_un

    /// Builds the address of `path` (relative paths are relative to the working directory
    /// at the time of the call that uses it).
    /// - Throws: `UnixSocketError.pathTooLong` (more than 107 bytes of UTF-8) or
    ///   `.invalidPath` (empty, or holding a NUL byte).
    public init(path: String) throws(UnixSocketError) {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, !bytes.contains(0) else { throw .invalidPath(path: path) }
        guard bytes.count <= Self.maxPathBytes else { throw .pathTooLong(path: path, bytes: bytes.count) }
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { p in
            p.copyBytes(from: bytes)
            p[bytes.count] = 0
        }
        self.path = path
        storage = a
    }

    /// Calls `body` with the address as a `sockaddr` pointer and its length in bytes
    /// (the whole `sockaddr_un`), for bind(2), connect(2) and the like.
    public func withSockaddr<R, E: Error>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(E) -> R) throws(E) -> R {
        var a = storage
        return try withUnsafePointer(to: &a) { (p) throws(E) -> R in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (s) throws(E) -> R in
                try body(s, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }
}
