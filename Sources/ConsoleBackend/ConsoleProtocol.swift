import CLinux
import UnixSocket
#if canImport(Glibc)
import Glibc
#endif

// The xenconsoled socket protocol (a Unix stream socket). A client sends one command
// line at a time and reads one reply line, `ok[ TEXT]` or `error TEXT`:
//
//   logdir                     → ok DIR             where xenconsoled wants guest logs
//   register DOMID NAME        → ok                 with 3 or 4 fds (SCM_RIGHTS) on the line:
//                                                   ring memfd, outEvent, inEvent[, log]
//   register-stream DOMID NAME → ok                 with 1 or 2 fds on the line: a connected
//                                                   stream socket whose peer is the guest's
//                                                   serial line (QEMU's chardev), [, log]
//   stream-fd DOMID            → ok                 with a copy of that stream socket on the
//                                                   reply (an xend that restarted takes it back)
//   unregister DOMID           → ok | error ...
//   list                       → ok [DOMID:NAME ...]
//   attach DOMID               → ok, then raw bytes both ways until either side closes
//
// A registration of a DOMID already registered replaces it (attached clients move over).

/// Default paths under `$XENITH_ROOT` (default "/").
public enum ConsolePaths {
    /// `$XENITH_ROOT`, without a trailing slash ("" for "/").
    public static var root: String {
        var r = getenv("XENITH_ROOT").map { String(cString: $0) } ?? "/"
        while r.hasSuffix("/") { r.removeLast() }
        return r
    }
    /// `$XENITH_ROOT/run/xenconsoled/socket`.
    public static var defaultSocket: String { root + "/run/xenconsoled/socket" }
    /// `$XENITH_ROOT/var/log/xen/console` (Xen's xenconsoled log directory).
    public static var defaultLogDirectory: String { root + "/var/log/xen/console" }
    /// `guest-NAME.log`, the file name of a domain's console log.
    public static func logFileName(domainName: String) -> String { "guest-\(domainName).log" }
}

/// A domain name usable in a log file name and a protocol line: 1...64 bytes of printable
/// ASCII without blanks or "/", not "." or "..".
public func isValidConsoleDomainName(_ name: String) -> Bool {
    let u = Array(name.utf8)
    guard !u.isEmpty, u.count <= 64, name != ".", name != ".." else { return false }
    return u.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "/") }
}

/// Creates every missing directory of `path` (mode 0755).
func makeDirectories(_ path: String) {
    var cur = ""
    for part in path.split(separator: "/", omittingEmptySubsequences: true) {
        cur += "/" + part
        _ = mkdir(cur, 0o755)
    }
}

/// A `UnixSocketError` as a `ConsoleError.system`: the call and path, or the whole
/// description when no call failed (a path too long, not a socket), with its errno.
func consoleError(_ e: UnixSocketError) -> ConsoleError {
    if case .system(let op, let path, let code) = e { return .system("\(op) \(path)", code) }
    return .system(e.description, e.errno)
}

/// Binds and listens on a Unix stream socket at `path` (any socket file there is replaced,
/// missing directories created, mode 0600, backlog 64). Returns the close-on-exec
/// listening fd.
/// - Throws: ``ConsoleError/system(_:_:)`` naming the path (also when something that is
///   not a socket is in the way, or the path is longer than 107 bytes).
public func bindConsoleSocket(path: String) throws(ConsoleError) -> Int32 {
    if let slash = path.lastIndex(of: "/"), slash != path.startIndex { makeDirectories(String(path[..<slash])) }
    do { return try UnixSocket.listen(path: path, backlog: 64, permissions: 0o600, existing: .replace) }
    catch { throw consoleError(error) }
}

/// Connects to xenconsoled; the fd is blocking with 5 s send/receive timeouts so a wedged
/// daemon cannot hang the caller.
func connectConsoleSocket(_ path: String) throws(ConsoleError) -> Int32 {
    let fd: Int32
    do { fd = try UnixSocket.connect(path: path) } catch { throw consoleError(error) }
    setTimeouts(fd, seconds: 5)
    return fd
}

func setTimeouts(_ fd: Int32, seconds: Int) {
    var tv = timeval(tv_sec: seconds, tv_usec: 0)
    _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
}

/// Writes all of `bytes` to a blocking fd (retrying EINTR). False on error.
@discardableResult
func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var off = 0
    while off < bytes.count {
        let n = write(fd, bytes.baseAddress! + off, bytes.count - off)
        if n < 0 { if errno == EINTR { continue }; return false }
        off += n
    }
    return true
}

/// Sends all of `bytes` on a blocking socket without raising SIGPIPE. False on error.
@discardableResult
func sendAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var off = 0
    while off < bytes.count {
        let n = send(fd, bytes.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL))
        if n < 0 { if errno == EINTR { continue }; return false }
        off += n
    }
    return true
}

@discardableResult
func writeAll(_ fd: Int32, _ s: String) -> Bool {
    var s = s
    return s.withUTF8 { writeAll(fd, UnsafeRawBufferPointer($0)) }
}

/// Reads reply lines from a connection, keeping bytes that follow a line.
struct LineReader {
    let fd: Int32
    var pending: [UInt8] = []

    /// The next line without its newline; nil at EOF, error or timeout.
    mutating func readLine(max: Int = 4096) -> String? {
        while true {
            if let nl = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeSubrange(...nl)
                return line
            }
            if pending.count > max { return nil }
            var buf = [UInt8](repeating: 0, count: 1024)
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, 1024) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            pending += buf[0..<n]
        }
    }
}
