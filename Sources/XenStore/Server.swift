// XenStoreServer: serves a XenStoreCore on Unix stream sockets from one epoll loop on a
// dedicated thread (never Dispatch). Each listening socket has a domid: connections on the
// main socket are domain 0 (privileged), connections on a domain socket act as that domain.
#if canImport(Glibc)
import Glibc
#endif
import CLinux
import UnixSocket

/// Errors of `XenStoreServer.listen`, each a one-line message naming the path.
public enum XenStoreServerError: Error, Sendable, CustomStringConvertible {
    /// A live daemon accepts connections on the path.
    case alreadyListening(path: String)
    /// The path exists and is not a socket; it is left alone.
    case notASocket(path: String)
    case system(XenStoreSystemError)

    public var description: String {
        switch self {
        case .alreadyListening(let p): return "\(p): another xenstored is already listening on this socket"
        case .notASocket(let p): return "\(p): exists and is not a socket; refusing to remove it"
        case .system(let e): return e.description
        }
    }
}

/// The xenstore daemon's transport: Unix stream sockets served by one epoll loop thread.
///
/// `listen(path:domid:)` for each socket, then `start()`; `stop()` closes everything and
/// removes the socket files. Messages follow xenstore.txt: a header whose `len` exceeds
/// 4096 closes that client; any other malformed request gets an `XS_ERROR` reply.
/// All state (the core and every connection) is behind one lock.
public final class XenStoreServer: @unchecked Sendable {
    private struct Listener {
        var path: String
        var domid: UInt32
    }

    private final class Connection {
        let fd: Int32
        let id: XenStoreConnectionID
        var decoder = XenStoreMessageDecoder()
        var output: [UInt8] = []
        var outputOffset = 0
        var interest: UInt32 = 0
        init(fd: Int32, id: XenStoreConnectionID) {
            self.fd = fd
            self.id = id
        }
        var pending: Int { output.count - outputOffset }
    }

    /// Output queued for one client beyond which watch events are dropped (Xen also drops
    /// events for clients that do not read) and its requests are no longer read.
    public static let outputLimit = 1 << 20

    private let core: XenStoreCore
    private let lock = XSCondition()
    private var listeners: [Int32: Listener] = [:]
    private var connections: [Int32: Connection] = [:]
    private var byID: [XenStoreConnectionID: Connection] = [:]
    private let epfd: Int32
    private let wakefd: Int32
    private var thread: pthread_t?
    private var stopping = false

    /// The store's files, when the contents persist (StoreFiles.swift).
    private let store: XenStorePersistentStore?

    /// A server over `core` (default: a fresh tree with Xen's initial layout).
    /// - Parameter store: an opened persistent store (`XenStorePersistentStore.open()` already
    ///   loaded into `core`): every change is journaled and made durable before its reply.
    public init(core: XenStoreCore = XenStoreCore(), store: XenStorePersistentStore? = nil) {
        self.core = core
        self.store = store
        if store != nil { core.recordsChanges = true }
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakefd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        addToEpoll(wakefd, events: UInt32(EPOLLIN.rawValue))
    }

    deinit {
        stop()
        Glibc.close(epfd)
        Glibc.close(wakefd)
    }

    /// Listens on a Unix socket at `path`; its connections act as `domid` (0: privileged).
    /// Creates the parent directory (mode 0755). A stale socket file (nobody accepting) is
    /// replaced; a live one is refused. May be called before or after `start()`.
    /// - Throws: `XenStoreServerError` (`alreadyListening`, `notASocket`, `system`).
    public func listen(path: String, domid: UInt32 = 0) throws(XenStoreServerError) {
        if let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")), slash != path.utf8.startIndex {
            try Self.makeDirectories(String(path[path.startIndex..<slash]))
        }
        let fd: Int32
        do { fd = try UnixSocket.listen(path: path, backlog: 128, nonBlocking: true) } catch {
            switch error {
            case .notASocket: throw .notASocket(path: path)
            case .inUse, .system(_, _, EADDRINUSE): throw .alreadyListening(path: path)
            case .system("socket", _, let e): throw .system(XenStoreSystemError(operation: "socket", path: path, errno: e))
            default: throw .system(XenStoreSystemError(operation: "bind", path: path, errno: error.errno))
            }
        }
        lock.withLock { listeners[fd] = Listener(path: path, domid: domid) }
        addToEpoll(fd, events: UInt32(EPOLLIN.rawValue))
    }

    /// Whether a daemon accepts connections on the Unix socket at `path` right now.
    public static func isListening(_ path: String) -> Bool { XSSocket.isLive(path) }

    /// Starts the event loop thread. Idempotent.
    public func start() {
        lock.lock()
        defer { lock.unlock() }
        guard thread == nil, !stopping else { return }
        thread = xsStartThread { [self] in self.loop() }
    }

    /// Stops the loop, closes every connection and removes the socket files it created.
    public func stop() {
        lock.lock()
        stopping = true
        let t = thread
        thread = nil
        lock.unlock()
        var one: UInt64 = 1
        _ = Glibc.write(wakefd, &one, 8)
        if let t { pthread_join(t, nil) }
        lock.withLock {
            for (fd, l) in listeners {
                Glibc.close(fd)
                unlink(l.path)
            }
            listeners.removeAll()
            for c in connections.values { closeLocked(c) }
        }
    }

    /// Number of connected clients.
    public var connectionCount: Int { lock.withLock { connections.count } }

    /// Runs `body` with the core on the caller's thread, under the server lock, and sends
    /// whatever outputs it returns (e.g. events of a change made in-process).
    public func withCore<T>(_ body: (XenStoreCore) -> (T, [XenStoreOutput])) -> T {
        lock.lock()
        let (value, outputs) = body(core)
        persistChanges()
        store?.sync()
        for o in outputs { enqueue(o) }
        for c in connections.values where c.pending > 0 { flush(c) }
        lock.unlock()
        return value
    }

    // MARK: loop

    private func addToEpoll(_ fd: Int32, events: UInt32) {
        var ev = epoll_event()
        ev.events = events
        ev.data.fd = fd
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)
    }

    private func loop() {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            let n = events.withUnsafeMutableBufferPointer { epoll_wait(epfd, $0.baseAddress, 64, -1) }
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            lock.lock()
            if stopping { lock.unlock(); return }
            for i in 0..<Int(n) {
                let fd = events[i].data.fd
                let flags = events[i].events
                if fd == wakefd {
                    var v: UInt64 = 0
                    _ = Glibc.read(wakefd, &v, 8)
                } else if let l = listeners[fd] {
                    acceptAll(fd, domid: l.domid)
                } else if let c = connections[fd] {
                    if flags & UInt32(EPOLLOUT.rawValue) != 0 { flush(c) }
                    if flags & (UInt32(EPOLLIN.rawValue) | UInt32(EPOLLHUP.rawValue) | UInt32(EPOLLERR.rawValue)) != 0 {
                        readFrom(c)
                    }
                }
            }
            for c in connections.values where c.pending > 0 { flush(c) }
            lock.unlock()
        }
    }

    private func acceptAll(_ lfd: Int32, domid: UInt32) {
        while true {
            let fd = accept(lfd, nil, nil)
            if fd < 0 {
                if errno == EINTR { continue }
                return
            }
            _ = clinux_fcntl_int(fd, F_SETFD, FD_CLOEXEC)
            _ = clinux_fcntl_int(fd, F_SETFL, clinux_fcntl_int(fd, F_GETFL, 0) | O_NONBLOCK)
            let c = Connection(fd: fd, id: core.connect(domid: domid))
            connections[fd] = c
            byID[c.id] = c
            c.interest = UInt32(EPOLLIN.rawValue)
            addToEpoll(fd, events: c.interest)
        }
    }

    private var readBuffer = [UInt8](repeating: 0, count: 65536)

    private func readFrom(_ c: Connection) {
        while connections[c.fd] === c, c.pending < Self.outputLimit {
            let n = readBuffer.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                closeLocked(c)
                return
            }
            if n == 0 {
                closeLocked(c)
                return
            }
            readBuffer.withUnsafeBytes { c.decoder.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            while connections[c.fd] === c {
                let message: XenStoreMessage?
                do { message = try c.decoder.next() } catch {
                    // Oversized len: Xen kills the connection (xenstore.txt).
                    closeLocked(c)
                    return
                }
                guard let m = message else { break }
                let outputs = core.handle(m, from: c.id)
                persistChanges()
                for o in outputs { enqueue(o) }
            }
            // Write-ahead: what this chunk of requests changed is on disk before any of
            // their replies can be sent.
            store?.sync()
        }
    }

    /// Appends the core's changes of the request just handled to the journal (one record)
    /// and compacts the journal into the snapshot once it has grown large.
    private func persistChanges() {
        guard let store else { return }
        let changes = core.takeChanges()
        guard !changes.isEmpty else { return }
        store.append(changes)
        if store.wantsCompaction {
            do { try store.compact(core.stateAsChanges()) } catch { store.log("compaction failed: \(error)") }
        }
    }

    private func enqueue(_ o: XenStoreOutput) {
        guard let c = byID[o.connection] else { return }
        if o.message.type == XenStoreMessageType.watchEvent.rawValue && c.pending >= Self.outputLimit { return }
        if c.outputOffset > 0 && c.outputOffset == c.output.count {
            c.output.removeAll(keepingCapacity: true)
            c.outputOffset = 0
        }
        c.output.append(contentsOf: o.message.encoded())
    }

    private func flush(_ c: Connection) {
        while c.pending > 0 {
            let n = c.output.withUnsafeBytes { raw in
                send(c.fd, raw.baseAddress! + c.outputOffset, c.pending, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { break }
                closeLocked(c)
                return
            }
            c.outputOffset += n
        }
        if c.pending == 0 {
            c.output.removeAll(keepingCapacity: c.output.count <= 65536)
            c.outputOffset = 0
        }
        var want: UInt32 = 0
        if c.pending > 0 { want |= UInt32(EPOLLOUT.rawValue) }
        if c.pending < Self.outputLimit { want |= UInt32(EPOLLIN.rawValue) }
        if want != c.interest {
            c.interest = want
            var ev = epoll_event()
            ev.events = want
            ev.data.fd = c.fd
            epoll_ctl(epfd, EPOLL_CTL_MOD, c.fd, &ev)
        }
    }

    private func closeLocked(_ c: Connection) {
        guard connections[c.fd] === c else { return }
        epoll_ctl(epfd, EPOLL_CTL_DEL, c.fd, nil)
        Glibc.close(c.fd)
        connections[c.fd] = nil
        byID[c.id] = nil
        core.disconnect(c.id)
    }

    private static func makeDirectories(_ path: String) throws(XenStoreServerError) {
        var cur = path.hasPrefix("/") ? "" : "."
        for comp in path.split(separator: "/", omittingEmptySubsequences: true) {
            cur += "/" + comp
            if mkdir(cur, 0o755) != 0 && errno != EEXIST {
                throw .system(XenStoreSystemError(operation: "mkdir", path: cur, errno: errno))
            }
        }
    }
}
