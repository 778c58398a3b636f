// The one place where UnixSocket turns errno into a thrown error and retries EINTR.
#if canImport(Glibc)
import Glibc
#endif

/// Runs `call` (a system call returning -1 and setting errno on failure) until it is not
/// interrupted by a signal (EINTR is retried here and nowhere else).
/// - Returns: the call's non-negative result.
/// - Throws: `UnixSocketError.system(operation:path:errno:)` with the call's errno.
@inline(__always)
func systemCall(_ operation: String, _ path: String, _ call: () -> Int32) throws(UnixSocketError) -> Int32 {
    while true {
        let r = call()
        if r >= 0 { return r }
        let e = errno
        if e == EINTR { continue }
        throw .system(operation: operation, path: path, errno: e)
    }
}

/// A new close-on-exec Unix stream socket (non-blocking when asked).
func streamSocket(_ path: String, nonBlocking: Bool) throws(UnixSocketError) -> Int32 {
    let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
    return try systemCall("socket", path) { socket(AF_UNIX, type, 0) }
}
