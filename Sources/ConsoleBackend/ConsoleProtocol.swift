import CLinux
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

func fillSockaddr(_ path: String) throws(ConsoleError) -> sockaddr_un {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    let cap = MemoryLayout.size(ofValue: addr.sun_path)
    guard bytes.count < cap else { throw .badMessage("socket path too long: \(path)") }
    withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
    return addr
}

/// Binds and listens on a Unix stream socket at `path` (a stale socket file is replaced,
/// missing directories created, mode 0600). Returns the close-on-exec listening fd.
/// - Throws: ``ConsoleError/system(_:_:)``.
public func bindConsoleSocket(path: String) throws(ConsoleError) -> Int32 {
    var addr = try fillSockaddr(path)
    if let slash = path.lastIndex(of: "/"), slash != path.startIndex { makeDirectories(String(path[..<slash])) }
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    if fd < 0 { throw .system("socket", errno) }
    unlink(path)
    let r = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    if r != 0 { let e = errno; close(fd); throw .system("bind \(path)", e) }
    _ = chmod(path, 0o600)
    if listen(fd, 64) != 0 { let e = errno; close(fd); throw .system("listen", e) }
    return fd
}

/// Connects to xenconsoled; the fd is blocking with 5 s send/receive timeouts so a wedged
/// daemon cannot hang the caller.
func connectConsoleSocket(_ path: String) throws(ConsoleError) -> Int32 {
    var addr = try fillSockaddr(path)
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    if fd < 0 { throw .system("socket", errno) }
    let r = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    if r != 0 { let e = errno; close(fd); throw .system("connect \(path)", e) }
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
