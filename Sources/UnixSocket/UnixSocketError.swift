// What can go wrong when making a Unix stream socket: the one error type of UnixSocket.
#if canImport(Glibc)
import Glibc
#endif

/// A Unix socket that could not be made, connected or bound. Every case names the path.
public enum UnixSocketError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The path does not fit `sockaddr_un.sun_path` (108 bytes with the NUL, unix(7)):
    /// `bytes` is its UTF-8 length, more than `UnixSocketAddress.maxPathBytes` (107).
    case pathTooLong(path: String, bytes: Int)
    /// The path is empty or holds a NUL byte (it would name another socket).
    case invalidPath(path: String)
    /// `listen`: a process accepts connections on the socket file at `path` already.
    case inUse(path: String)
    /// `listen`: something that is not a socket exists at `path` (it is never removed).
    case notASocket(path: String)
    /// A system call failed: `operation` is its name (`socket`, `connect`, `bind`,
    /// `chmod`, `chown`, `listen`), `errno` its error number.
    case system(operation: String, path: String, errno: Int32)

    /// The socket path the error is about.
    public var path: String {
        switch self {
        case .pathTooLong(let p, _), .invalidPath(let p), .inUse(let p), .notASocket(let p), .system(_, let p, _): p
        }
    }

    /// The closest errno, for callers whose own errors carry one: ENAMETOOLONG, EINVAL,
    /// EADDRINUSE, ENOTSOCK, or the failed call's.
    public var errno: Int32 {
        switch self {
        case .pathTooLong: ENAMETOOLONG
        case .invalidPath: EINVAL
        case .inUse: EADDRINUSE
        case .notASocket: ENOTSOCK
        case .system(_, _, let e): e
        }
    }

    /// One line naming the path, e.g. `connect /run/x.sock: Connection refused (errno 111)`
    /// or `socket path /very/long/… is 131 bytes; a Unix socket path holds at most 107`.
    public var description: String {
        switch self {
        case .pathTooLong(let p, let n):
            "socket path \(p) is \(n) bytes; a Unix socket path holds at most \(UnixSocketAddress.maxPathBytes)"
        case .invalidPath(let p):
            p.isEmpty ? "empty socket path" : "socket path \(p) holds a NUL byte"
        case .inUse(let p): "\(p) is in use by a live listener"
        case .notASocket(let p): "\(p) exists and is not a socket"
        case .system(let op, let p, let e): "\(op) \(p): \(String(cString: strerror(e))) (errno \(e))"
        }
    }
}
