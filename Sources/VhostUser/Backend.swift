// The back-end (service side) of vhost-user: its state and construction. The rest of it
// lives beside: EventLoop.swift (epoll thread), MessageHandler.swift (one message at a
// time), Vrings.swift (per-queue state), Requests.swift (serving and completing
// requests), DirtyLog.swift (migration dirty logging), Offload.swift and IOPool.swift (requests
// served off the loop's call), MemoryTable.swift.
import CLinux
import GuestMemory
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// The order in which a batch of completed requests is put in the used ring.
public enum CompletionOrder: Sendable {
    /// Submission order.
    case inOrder
    /// Each batch reversed: out-of-order completion, to exercise in-flight tracking.
    case reversedBatches
}

/// Serves one ``VhostUserDevice`` to one vhost-user front-end at a time (vhost-user.rst),
/// from an epoll loop on the calling thread (``run()``): the listening socket, the
/// connection and every kick eventfd. Memory regions are mapped from SET_MEM_TABLE fds and
/// unmapped on a new table or disconnect; call eventfds are written after used-ring updates
/// when the driver wants them; in-flight requests are tracked in the shared region of
/// GET/SET_INFLIGHT_FD and resubmitted when a ring starts. While the front-end negotiates
/// VHOST_F_LOG_ALL (a live migration), every page the back-end or its device writes is marked
/// in the SET_LOG_BASE bitmap (DirtyLog.swift). After a disconnect the back-end listens again.
public final class VhostUserBackend: @unchecked Sendable {
    public let device: any VhostUserDevice
    /// Protocol features offered.
    public static let supportedProtocolFeatures: UInt64 = VhostUserProtocolFeature.mq | VhostUserProtocolFeature.replyAck
        | VhostUserProtocolFeature.config | VhostUserProtocolFeature.inflightShmfd
        | VhostUserProtocolFeature.resetDevice | VhostUserProtocolFeature.status
        | VhostUserProtocolFeature.logShmfd

    /// Test hook: order of completions within a batch.
    public var completionOrder: CompletionOrder = .inOrder
    /// Largest number of requests completed together (one used->idx update, one call).
    public var batchLimit = 32
    /// A batch is also completed once its requests moved this many bytes, so large
    /// requests reach the driver at once and its pipeline stays full.
    public var batchBytesLimit: UInt64 = 128 << 10
    /// Threads that serve requests moving ≥ ``offloadBytes`` concurrently (set before
    /// ``run()``); 0 serves every request on the event-loop thread. Completions may then
    /// come out of order; the in-flight region covers that.
    public var ioThreads = 0
    /// Request size (data bytes) from which requests go to the I/O threads.
    public var offloadBytes: UInt64 = 256 << 10
    /// Called with one line per notable event (connects, broken queues); default: nothing.
    public var log: (String) -> Void = { _ in }
    /// Called once the first request after a (re)connect has completed (for restart timing).
    public var onFirstCompletion: (() -> Void)?
    /// Guest-memory writes made while VHOST_F_LOG_ALL was negotiated that the dirty log
    /// could not record: no SET_LOG_BASE yet, or an address past the end of the log the
    /// front-end sized (vhost-user.rst "Migration"). Each is a page the migration may miss.
    public internal(set) var unloggedWrites: UInt64 = 0

    let listenFd: Int32
    let epfd: Int32
    let stopFd: Int32
    var conn: Int32 = -1
    var mem: MappedMemoryTable?
    var inflight: InflightRegion?
    var acked: UInt64 = 0
    var protocolAcked: UInt64 = 0
    var status: UInt64 = 0
    var vrings: [Vring]
    var completedSinceConnect = false
    /// The dirty log of the last SET_LOG_BASE. Kept when the front-end reconnects (it
    /// restarts rings before it sends the log again, and keeps its own log), replaced by
    /// the next SET_LOG_BASE.
    var dirtyLog: DirtyLog?
    /// The eventfd of SET_LOG_FD, written after logging (-1: none); kept like ``dirtyLog``.
    var logFd: Int32 = -1
    var unloggedWriteReported = false
    var loggedSinceSignal = false

    static let tagListen: UInt64 = 1 << 40, tagConn: UInt64 = 1 << 41, tagStop: UInt64 = 1 << 42, tagDone: UInt64 = 1 << 43
    /// Where requests of at least ``offloadBytes`` go: the I/O threads ``run()`` starts
    /// when ``ioThreads`` > 0, or an offload given with ``useOffload(_:)``.
    var pool: (any VhostUserOffload)?
    /// Requests handed to the pool and not yet completed, per queue.
    var outstanding: [Int] = []
    /// Bumped whenever a ring stops, so late completions for an old ring are dropped.
    var generation: [UInt64] = []
    /// Rings handed to a ``VhostUserDrivenDevice`` (nil: not usable).
    var drivenRings: [VhostUserRing?] = []
    var driven: (any VhostUserDrivenDevice)? { device as? any VhostUserDrivenDevice }
    /// Extra descriptors watched by the loop (``watch(fd:_:)``), by tag offset.
    var watched: [(fd: Int32, handler: () -> Void)] = []
    static let tagWatched: UInt64 = 1 << 44

    /// Serves on an already listening Unix socket (for example one handed over by a
    /// supervisor). Takes ownership of `listenFd`.
    public init(device: any VhostUserDevice, listenFd: Int32) throws(VhostUserError) {
        self.device = device
        self.listenFd = listenFd
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        if epfd < 0 { throw .errno("epoll_create1") }
        stopFd = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
        if stopFd < 0 { throw .errno("eventfd") }
        vrings = Array(repeating: Vring(), count: max(device.numQueues, 1))
        outstanding = Array(repeating: 0, count: vrings.count)
        generation = Array(repeating: 0, count: vrings.count)
        drivenRings = Array(repeating: nil, count: vrings.count)
        _ = fcntl(listenFd, F_SETFL, fcntl(listenFd, F_GETFL) | O_NONBLOCK)
        try add(listenFd, Self.tagListen)
        try add(stopFd, Self.tagStop)
    }

    /// Serves requests moving ≥ ``offloadBytes`` through `offload` (for example a device's
    /// own asynchronous submission) instead of I/O threads. Call before ``run()``.
    /// - Throws: ``VhostUserError`` when its ``VhostUserOffload/doneFd`` cannot be watched.
    public func useOffload(_ offload: any VhostUserOffload) throws(VhostUserError) {
        try add(offload.doneFd, Self.tagDone)
        pool = offload
    }

    deinit {
        teardownConnection()
        close(listenFd); close(epfd); close(stopFd)
        if logFd >= 0 { close(logFd) }
    }
}
