import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An epoll loop on a dedicated thread: device kicks (ioeventfds), the console input and
/// the control socket are served here, never on Dispatch.
public final class EventLoop: @unchecked Sendable {
    private let epfd: Int32
    private let wakeFD: Int32
    private let handlers = Mutex<[Int32: @Sendable (UInt32) -> Void]>([:])
    private let stopping = Atomic<Bool>(false)
    private var thread: DedicatedThread?

    public init() throws(CoreError) {
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        if epfd < 0 { throw .system("epoll_create1", errno) }
        wakeFD = try makeEventFD()
        try add(wakeFD) { _ in }
    }

    deinit {
        close(epfd)
        close(wakeFD)
    }

    /// Calls `handler` with the epoll event mask whenever `fd` is readable (or hung up).
    public func add(_ fd: Int32, events: UInt32 = EPOLLIN.rawValue, _ handler: @escaping @Sendable (UInt32) -> Void) throws(CoreError) {
        handlers.withLock { $0[fd] = handler }
        var ev = epoll_event(events: events, data: epoll_data_t(fd: fd))
        if epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0 {
            handlers.withLock { _ = $0.removeValue(forKey: fd) }
            throw .system("epoll_ctl add", errno)
        }
    }

    /// Stops watching `fd` (does not close it).
    public func remove(_ fd: Int32) {
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil)
        handlers.withLock { _ = $0.removeValue(forKey: fd) }
    }

    /// Starts the loop thread.
    public func start(name: String = "event-loop") {
        thread = DedicatedThread(name: name) { [self] in run() }
    }

    /// Stops the loop thread and waits for it.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        signalEventFD(wakeFD)
        thread?.join()
        thread = nil
    }

    private func run() {
        var events = [epoll_event](repeating: epoll_event(), count: 16)
        while !stopping.load(ordering: .acquiring) {
            let n = events.withUnsafeMutableBufferPointer { epoll_wait(epfd, $0.baseAddress, 16, -1) }
            if n < 0 { if errno == EINTR { continue }; return }
            for i in 0..<Int(n) {
                let fd = events[i].data.fd
                if fd == wakeFD { _ = drainEventFD(wakeFD); continue }
                let h = handlers.withLock { $0[fd] }
                h?(events[i].events)
            }
        }
    }
}
