import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A dedicated POSIX thread (vCPU loops and epoll loops never run on Dispatch or the
/// concurrency pool: PLATFORM.md).
public final class DedicatedThread: @unchecked Sendable {
    private var thread = pthread_t()
    private final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }

    /// Starts `body` on a new thread named `name` (at most 15 bytes are kept by Linux).
    public init(name: String, _ body: @escaping () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let r = pthread_create(&thread, nil, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.body()
            return nil
        }, box)
        precondition(r == 0, "pthread_create failed: \(r)")
        _ = clinux_pthread_setname(UInt(thread), String(name.prefix(15)))
    }

    /// The pthread_t as an opaque integer, for signal kicks.
    public var handle: UInt { UInt(thread) }

    /// Waits for the thread to finish.
    public func join() { pthread_join(thread, nil) }
}

/// Creates a non-blocking, close-on-exec eventfd.
/// - Throws: ``CoreError/system(_:_:)``.
public func makeEventFD(_ initial: UInt32 = 0) throws(CoreError) -> Int32 {
    let fd = eventfd(initial, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
    if fd < 0 { throw CoreError.system("eventfd", errno) }
    return fd
}

/// Adds 1 to an eventfd counter (an event-channel notify).
@inline(__always)
public func signalEventFD(_ fd: Int32) {
    var one: UInt64 = 1
    _ = write(fd, &one, 8)
}

/// Reads and resets an eventfd counter; 0 when nothing was pending.
@inline(__always)
public func drainEventFD(_ fd: Int32) -> UInt64 {
    var v: UInt64 = 0
    return read(fd, &v, 8) == 8 ? v : 0
}
