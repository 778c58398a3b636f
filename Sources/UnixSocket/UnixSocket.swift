// Connecting to and listening on Unix stream sockets in the file system (unix(7)): every
// descriptor is close-on-exec, every failure a `UnixSocketError` naming the path.
// Glibc only (no Foundation), so sandboxed services can use it before their sandbox.
#if canImport(Glibc)
import Glibc
#endif

/// Unix stream sockets by path.
public enum UnixSocket {
    /// What `listen` does with a socket file already at the path (anything that is not a
    /// socket is always refused with `UnixSocketError.notASocket`).
    public enum Existing: Sendable {
        /// A socket file nobody accepts on is removed; a live one is refused (`.inUse`).
        case replaceStale
        /// Any socket file is removed, live or not (its listener keeps its descriptor but
        /// can no longer be reached by path).
        case replace
    }

    /// Connects a new stream socket to `path`.
    /// - Parameter nonBlocking: the descriptor is O_NONBLOCK (connect then fails with
    ///   EAGAIN instead of waiting when the listener's backlog is full).
    /// - Returns: the connected descriptor, close-on-exec; the caller closes it.
    /// - Throws: `UnixSocketError` (`.pathTooLong`, `.invalidPath`, `.system` for
    ///   `socket` or `connect`, e.g. ENOENT, ECONNREFUSED); nothing is left open then.
    public static func connect(path: String, nonBlocking: Bool = false) throws(UnixSocketError) -> Int32 {
        let address = try UnixSocketAddress(path: path)
        let fd = try streamSocket(path, nonBlocking: nonBlocking)
        do {
            _ = try address.withSockaddr { (a, n) throws(UnixSocketError) in
                try systemCall("connect", path) { Glibc.connect(fd, a, n) }
            }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Whether some process accepts connections on the socket at `path` right now.
    public static func isLive(path: String) -> Bool {
        guard let fd = try? connect(path: path) else { return false }
        close(fd)
        return true
    }

    /// Binds a new stream socket to `path` and listens on it. In order: the existing file
    /// is dealt with as `existing` says, bind(2), chmod to `permissions`, chown to `owner`,
    /// listen(2) — so nobody can connect before the file has its final mode and owner.
    /// - Parameters:
    ///   - backlog: listen(2)'s backlog (pending connections).
    ///   - nonBlocking: the listening descriptor is O_NONBLOCK (accept fails with EAGAIN).
    ///   - permissions: the socket file's mode (e.g. 0o600); nil keeps what the umask gives.
    ///   - owner: uid and gid to give the socket file (e.g. an unprivileged QEMU's).
    ///   - existing: what to do with a socket file already at `path`.
    /// - Returns: the listening descriptor, close-on-exec; the caller closes it and
    ///   removes the file when done.
    /// - Throws: `UnixSocketError`: `.pathTooLong`, `.invalidPath`, `.notASocket`,
    ///   `.inUse` (a live listener, with `.replaceStale`), `.system` for `socket`, `bind`
    ///   (e.g. ENOENT for a missing directory, EADDRINUSE for a racing listener), `chmod`,
    ///   `chown`, `listen`. Nothing is left behind then: the descriptor is closed and a
    ///   file this call bound is removed.
    public static func listen(path: String, backlog: Int32 = 16, nonBlocking: Bool = false,
                              permissions: mode_t? = nil, owner: (uid: uid_t, gid: gid_t)? = nil,
                              existing: Existing = .replaceStale) throws(UnixSocketError) -> Int32 {
        let address = try UnixSocketAddress(path: path)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw .notASocket(path: path) }
            if existing == .replaceStale && isLive(path: path) { throw .inUse(path: path) }
            unlink(path)
        }
        let fd = try streamSocket(path, nonBlocking: nonBlocking)
        var bound = false
        do {
            _ = try address.withSockaddr { (a, n) throws(UnixSocketError) in
                try systemCall("bind", path) { Glibc.bind(fd, a, n) }
            }
            bound = true
            if let permissions { _ = try systemCall("chmod", path) { chmod(path, permissions) } }
            if let owner { _ = try systemCall("chown", path) { chown(path, owner.uid, owner.gid) } }
            _ = try systemCall("listen", path) { Glibc.listen(fd, backlog) }
        } catch {
            close(fd)
            if bound { unlink(path) }
            throw error
        }
        return fd
    }
}
