// Small Glibc wrappers shared by the client and the server: a mutex with a condition
// variable, plain pthreads, and Unix-domain stream sockets. No Foundation (the client runs
// inside seccomp-restricted services).
#if canImport(Glibc)
import Glibc
#endif
import CLinux
import UnixSocket

/// A pthread mutex with one condition variable (CLOCK_MONOTONIC for timed waits).
final class XSCondition: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    func broadcast() { pthread_cond_broadcast(cond) }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits (lock held) until signalled or `deadline` (monotonic ns) passes; false on timeout.
    @discardableResult
    func wait(until deadline: UInt64?) -> Bool {
        guard let deadline else {
            pthread_cond_wait(cond, mutex)
            return true
        }
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        return pthread_cond_timedwait(cond, mutex, &ts) != ETIMEDOUT
    }
}

/// Monotonic clock in nanoseconds.
func xsMonotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

private final class XSThreadBody {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Starts a joinable pthread running `body` (never a Dispatch or concurrency-pool thread).
func xsStartThread(_ body: @escaping @Sendable () -> Void) -> pthread_t? {
    let box = Unmanaged.passRetained(XSThreadBody(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { arg in
        guard let arg else { return nil }
        let b = Unmanaged<XSThreadBody>.fromOpaque(arg).takeRetainedValue()
        b.body()
        return nil
    }, box)
    if rc != 0 {
        Unmanaged<XSThreadBody>.fromOpaque(box).release()
        return nil
    }
    return thread
}

/// Errors of the socket helpers: the failing call and errno.
public struct XenStoreSystemError: Error, Sendable, CustomStringConvertible {
    public var operation: String
    public var path: String?
    public var errno: Int32
    public var description: String {
        let what = String(cString: strerror(errno))
        if let path { return "\(operation) \(path): \(what)" }
        return "\(operation): \(what)"
    }
}

enum XSSocket {
    /// A connected blocking (or non-blocking) close-on-exec stream socket to `path`.
    /// - Throws: `XenStoreSystemError` for `socket` or `connect` (ENAMETOOLONG or EINVAL
    ///   for a path that cannot be a socket address).
    static func connect(_ path: String, nonBlocking: Bool = false) throws(XenStoreSystemError) -> Int32 {
        do { return try UnixSocket.connect(path: path, nonBlocking: nonBlocking) } catch {
            if case .system("socket", _, let e) = error { throw XenStoreSystemError(operation: "socket", path: path, errno: e) }
            throw XenStoreSystemError(operation: "connect", path: path, errno: error.errno)
        }
    }

    /// Whether something accepts connections on `path` right now.
    static func isLive(_ path: String) -> Bool { UnixSocket.isLive(path: path) }

    /// Writes all of `bytes` (retrying EINTR and short writes). MSG_NOSIGNAL: no SIGPIPE.
    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            off += n
        }
        return true
    }

    /// Reads exactly `count` bytes; nil on EOF or error.
    static func receiveExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var off = 0
        while off < count {
            let n = out.withUnsafeMutableBytes { raw in
                recv(fd, raw.baseAddress! + off, count - off, 0)
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            off += n
        }
        return out
    }
}
