// XenStoreClient: a xenstore client over a Unix socket (docs/misc/xenstore.txt), the
// library xend and the services use. Glibc only (no Foundation): it runs under seccomp.
#if canImport(Glibc)
import Glibc
#endif

/// A watch event: the changed path (relative if the watch was) and the watch's token.
public struct XenStoreWatchEvent: Sendable, Equatable, Hashable {
    public var path: String
    public var token: String
    public init(path: String, token: String) {
        self.path = path
        self.token = token
    }
}

/// Errors of `XenStoreClient`.
public enum XenStoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The daemon answered `XS_ERROR` with this error name (EAGAIN on a conflicting commit).
    case reply(XenStoreErrorCode)
    /// socket()/connect() failed for the path.
    case connect(path: String, errno: Int32)
    /// The connection is closed (by `close()`, the daemon, or an I/O error).
    case disconnected
    /// The daemon sent something that is not the protocol (oversized or mistyped reply).
    case protocolViolation(String)
    /// A reconnecting client lost its connection while this request (one that is not safe
    /// to repeat) was in flight: it may or may not have taken effect.
    case connectionLost(request: XenStoreMessageType)
    /// A reconnecting client's daemon did not come back within its reconnection time.
    case notAnswering(path: String)

    public var description: String {
        switch self {
        case .reply(let c): return "xenstore: \(c.rawValue)"
        case .connect(let p, let e): return "xenstore: cannot connect to \(p): \(String(cString: strerror(e)))"
        case .disconnected: return "xenstore: connection closed"
        case .protocolViolation(let s): return "xenstore: protocol violation: \(s)"
        case .connectionLost(let t): return "xenstore: xenstored restarted while \(t) was in flight; it may or may not have taken effect (a transaction is abandoned: start it again)"
        case .notAnswering(let p): return "xenstore: xenstored does not answer on \(p) (it is restarting or down)"
        }
    }
}

/// Where the daemon listens by default.
public enum XenStoreDefaults {
    /// `$XENITH_ROOT/run/xenstored/socket` (`$XENITH_ROOT` defaults to `/`).
    public static func socketPath(root: String? = nil) -> String {
        var r = root ?? (getenv("XENITH_ROOT").map { String(cString: $0) } ?? "/")
        if r.isEmpty { r = "/" }
        while r.count > 1 && r.hasSuffix("/") { r.removeLast() }
        return (r == "/" ? "" : r) + "/run/xenstored/socket"
    }

    /// `$XENSTORED_PATH` if set (as libxenstore honours it), else `socketPath()`.
    public static var clientSocketPath: String {
        if let p = getenv("XENSTORED_PATH"), p.pointee != 0 { return String(cString: p) }
        return socketPath()
    }
}

/// A connection to xenstored. Thread-safe: requests from several threads are matched to
/// their replies by `req_id`. A reader thread receives replies and watch events; events for
/// watches registered with a handler run on a separate callback thread (handlers may call
/// the client), the others queue for `waitForWatchEvent`.
public final class XenStoreClient: @unchecked Sendable {
    private final class Shared: @unchecked Sendable {
        /// The current connection's socket; replaced (under `writeLock` and `cond`) on reconnect.
        var fd: Int32
        let path: String
        /// How long a request waits for xenstored to come back (ms); nil: no reconnection.
        let reconnectTimeout: Int?
        let cond = XSCondition()
        let writeLock = XSCondition()
        var nextRequestID: UInt32 = 1
        var replies: [UInt32: XenStoreMessage] = [:]
        var events: [XenStoreWatchEvent] = []
        var callbackQueue: [(XenStoreWatchEvent, @Sendable (XenStoreWatchEvent) -> Void)] = []
        var handlers: [String: @Sendable (XenStoreWatchEvent) -> Void] = [:]
        /// Watches registered on the daemon, (path, token) in order: registered again after
        /// a reconnection.
        var watches: [(path: String, token: String)] = []
        /// Request ids whose replies nobody waits for (watches registered again).
        var unclaimed: Set<UInt32> = []
        /// Counts connections: a request sent on an earlier one lost its reply.
        var epoch = 0
        var connected = true
        var closed = false
        var failure: XenStoreError?
        var onReconnect: (@Sendable (Int) -> Void)?
        var onDisconnect: (@Sendable () -> Void)?
        init(fd: Int32, path: String, reconnectTimeout: Int?) {
            self.fd = fd
            self.path = path
            self.reconnectTimeout = reconnectTimeout
        }
        /// Wakes every waiter; the caller holds `cond`.
        func broadcastLocked() { cond.broadcast() }
        func takeRequestID() -> UInt32 {
            let id = nextRequestID
            nextRequestID = nextRequestID &+ 1
            return id
        }
    }

    private let shared: Shared
    private var reader: pthread_t?
    private var callbackThread: pthread_t?
    private let lifecycle = XSCondition()

    /// The socket path this client connected to.
    public let path: String

    /// Connects to the daemon's Unix socket.
    /// - Parameters:
    ///   - path: socket path; default `$XENSTORED_PATH` or `$XENITH_ROOT/run/xenstored/socket`.
    ///   - reconnectMilliseconds: when set, a lost connection (xenstored died) is made again
    ///     in the background and every watch of this client registered again; a request
    ///     meanwhile waits up to this long for it. Requests that are safe to repeat (outside
    ///     a transaction: read, write, mkdir, rm, directory, permissions, watch, unwatch,
    ///     domain queries, introduce) are sent again; the others (transaction start/end,
    ///     anything inside a transaction, release, restrict, control) fail with
    ///     `.connectionLost`. Nil (the default): a lost connection stays lost.
    ///     When set, a daemon that is not up yet is waited for in the same way.
    /// - Throws: `XenStoreError.connect` when the socket cannot be reached (only without
    ///   `reconnectMilliseconds`).
    public init(path: String = XenStoreDefaults.clientSocketPath, reconnectMilliseconds: Int? = nil) throws(XenStoreError) {
        self.path = path
        var fd: Int32 = -1
        do { fd = try XSSocket.connect(path) } catch {
            // A reconnecting client also waits for a daemon that is not up yet.
            if reconnectMilliseconds == nil { throw .connect(path: path, errno: error.errno) }
        }
        shared = Shared(fd: fd, path: path, reconnectTimeout: reconnectMilliseconds)
        shared.connected = fd >= 0
        let s = shared
        reader = xsStartThread { Self.readLoop(s) }
        if reader == nil {
            if fd >= 0 { Glibc.close(fd) }
            throw .connect(path: path, errno: EAGAIN)
        }
    }

    deinit { close() }

    /// Observers of a reconnecting client (`reconnectMilliseconds`): `lost` when the
    /// connection drops, `reconnected` with the number of watches registered again.
    /// Both run on the client's reader thread and must not call the client.
    public func observeConnection(lost: @escaping @Sendable () -> Void, reconnected: @escaping @Sendable (Int) -> Void) {
        shared.cond.withLock { shared.onDisconnect = lost; shared.onReconnect = reconnected }
    }

    /// Closes the connection; pending and later requests fail with `.disconnected`.
    public func close() {
        lifecycle.lock()
        defer { lifecycle.unlock() }
        guard let r = reader else { return }
        let fd = shared.cond.withLock { shared.closed = true; shared.broadcastLocked(); return shared.fd }
        shutdown(fd, Int32(SHUT_RDWR))
        pthread_join(r, nil)
        reader = nil
        if let c = callbackThread {
            if pthread_equal(c, pthread_self()) != 0 { pthread_detach(c) } else { pthread_join(c, nil) }
            callbackThread = nil
        }
        shared.writeLock.withLock { Glibc.close(shared.fd); shared.fd = -1 }
        // Handlers often capture the client; dropping them breaks that cycle.
        shared.cond.withLock { shared.handlers.removeAll(); shared.callbackQueue.removeAll() }
    }

    private static func readLoop(_ s: Shared) {
        if s.cond.withLock({ s.fd < 0 }) {
            guard reconnect(s) else { return }
        }
        while true {
            let fd = s.cond.withLock { s.fd }
            serve(s, fd)
            let (closed, lost) = s.cond.withLock { () -> (Bool, (@Sendable () -> Void)?) in
                if s.closed || s.reconnectTimeout == nil {
                    s.closed = true
                    s.broadcastLocked()
                    return (true, nil)
                }
                s.connected = false
                s.epoch += 1
                s.failure = nil
                s.broadcastLocked()
                return (false, s.onDisconnect)
            }
            if closed { return }
            lost?()
            guard reconnect(s) else { return }
        }
    }

    /// Makes the connection again (every 20 ms until it works or the client is closed) and
    /// registers every watch again. False when the client was closed meanwhile.
    private static func reconnect(_ s: Shared) -> Bool {
        var newFD: Int32 = -1
        while newFD < 0 {
            if s.cond.withLock({ s.closed }) { return false }
            if let fd = try? XSSocket.connect(s.path) { newFD = fd } else { usleep(20_000) }
        }
        s.writeLock.withLock {
            if s.fd >= 0 { Glibc.close(s.fd) }
            s.cond.withLock { s.fd = newFD }
        }
        let (watches, ids): ([(path: String, token: String)], [UInt32]) = s.cond.withLock {
            let ids = s.watches.map { _ in s.takeRequestID() }
            s.unclaimed.formUnion(ids)
            return (s.watches, ids)
        }
        // Sent before any waiting request can go out (they wait for `connected`).
        s.writeLock.withLock {
            for (w, id) in zip(watches, ids) {
                _ = XSSocket.sendAll(newFD, XenStoreMessage(.watch, requestID: id, strings: [w.path, w.token]).encoded())
            }
        }
        let observer = s.cond.withLock { () -> (@Sendable (Int) -> Void)? in
            s.connected = true
            s.broadcastLocked()
            return s.onReconnect
        }
        observer?(watches.count)
        return true
    }

    /// Reads replies and events from `fd` until it ends (EOF, error, protocol violation).
    private static func serve(_ s: Shared, _ fd: Int32) {
        while true {
            guard let header = XSSocket.receiveExactly(fd, XenStoreLimits.headerSize) else { break }
            let h = XenStoreMessage.decodeHeader(header)
            guard h.length <= UInt32(XenStoreLimits.payloadMax) else {
                s.cond.withLock { s.failure = .protocolViolation("reply of \(h.length) bytes") }
                break
            }
            var payload: [UInt8] = []
            if h.length > 0 {
                guard let p = XSSocket.receiveExactly(fd, Int(h.length)) else { break }
                payload = p
            }
            let m = XenStoreMessage(type: h.type, requestID: h.requestID, transactionID: h.transactionID, payload: payload)
            s.cond.withLock {
                if m.type == XenStoreMessageType.watchEvent.rawValue {
                    let strs = m.strings().strings
                    guard strs.count >= 2 else { return }
                    let ev = XenStoreWatchEvent(path: strs[0], token: strs[1])
                    if let h = s.handlers[ev.token] { s.callbackQueue.append((ev, h)) } else { s.events.append(ev) }
                } else if s.unclaimed.remove(m.requestID) == nil {
                    s.replies[m.requestID] = m
                }
                s.broadcastLocked()
            }
        }
    }

    // MARK: raw requests

    /// Sends one request and waits for its reply payload.
    /// - Throws: `.reply(code)` for an `XS_ERROR` answer, `.disconnected`, `.protocolViolation`,
    ///   `.connectionLost` (a reconnecting client: the request may or may not have taken effect).
    public func request(_ type: XenStoreMessageType, payload: [UInt8], transaction: UInt32 = 0) throws(XenStoreError) -> [UInt8] {
        guard payload.count <= XenStoreLimits.payloadMax else { throw .reply(.E2BIG) }
        let s = shared
        let repeatable = transaction == 0 && Self.repeatable.contains(type)
        let deadline = s.reconnectTimeout.map { xsMonotonicNanoseconds() + UInt64(max(0, $0)) * 1_000_000 }
        var resent = false
        while true {
            // Wait for a connection (a reconnecting client whose daemon is coming back).
            s.cond.lock()
            while !s.connected && !s.closed {
                if let deadline, xsMonotonicNanoseconds() >= deadline { s.cond.unlock(); throw .notAnswering(path: s.path) }
                s.cond.wait(until: deadline)
            }
            if s.closed { s.cond.unlock(); throw s.failure ?? .disconnected }
            let id = s.takeRequestID(), epoch = s.epoch
            s.cond.unlock()
            let bytes = XenStoreMessage(type, requestID: id, transactionID: transaction, payload: payload).encoded()
            let sent = s.writeLock.withLock { s.fd >= 0 && XSSocket.sendAll(s.fd, bytes) }
            s.cond.lock()
            var lost = false
            while s.replies[id] == nil {
                if s.closed { s.cond.unlock(); throw s.failure ?? .disconnected }
                if s.epoch != epoch { lost = true; break }
                if !sent && s.reconnectTimeout == nil { s.cond.unlock(); throw .disconnected }
                s.cond.wait(until: nil)
            }
            if lost {
                // A reply that still comes (sent on the new connection) is dropped.
                s.unclaimed.insert(id)
                s.cond.unlock()
                guard repeatable else { throw .connectionLost(request: type) }
                resent = true
                continue
            }
            let reply = s.replies.removeValue(forKey: id)!
            s.cond.unlock()
            if reply.type == XenStoreMessageType.error.rawValue {
                let code = XenStoreErrorCode(payload: reply.payload)
                // A watch sent again: the reconnection registered it first.
                if resent && type == .watch && code == .EEXIST { return Array("OK".utf8) + [0] }
                throw .reply(code)
            }
            guard reply.type == type.rawValue else { throw .protocolViolation("reply type \(reply.type) to request \(type.rawValue)") }
            return reply.payload
        }
    }

    /// Requests a reconnecting client sends again after a lost connection: repeating them
    /// gives the same result (outside a transaction).
    static let repeatable: Set<XenStoreMessageType> = [.read, .write, .mkdir, .rm, .directory, .directoryPart, .getPerms,
                                                        .setPerms, .watch, .unwatch, .getDomainPath, .isDomainIntroduced,
                                                        .introduce, .setTarget]

    private func request(_ type: XenStoreMessageType, _ strings: [String], transaction: UInt32 = 0) throws(XenStoreError) -> [UInt8] {
        var p: [UInt8] = []
        for s in strings { p.append(contentsOf: s.utf8); p.append(0) }
        return try request(type, payload: p, transaction: transaction)
    }

    private static func splitStrings(_ payload: [UInt8]) -> [String] {
        XenStoreMessage(type: 0, payload: payload).strings().strings
    }

    private static func firstString(_ payload: [UInt8]) -> String {
        String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self)
    }

    // MARK: database operations (xenstore.txt "Database read, write and permissions")

    /// READ: the value at `path` (absolute, or relative to this domain's home).
    public func read(_ path: String, transaction: UInt32 = 0) throws(XenStoreError) -> [UInt8] {
        try request(.read, [path], transaction: transaction)
    }

    /// READ as UTF-8 text.
    public func readString(_ path: String, transaction: UInt32 = 0) throws(XenStoreError) -> String {
        String(decoding: try read(path, transaction: transaction), as: UTF8.self)
    }

    /// READ, nil when the node does not exist (ENOENT).
    public func readIfPresent(_ path: String, transaction: UInt32 = 0) throws(XenStoreError) -> String? {
        do { return try readString(path, transaction: transaction) } catch .reply(.ENOENT) { return nil }
    }

    /// Whether `path` exists and is readable.
    public func exists(_ path: String, transaction: UInt32 = 0) throws(XenStoreError) -> Bool {
        do { _ = try read(path, transaction: transaction); return true }
        catch .reply(.ENOENT) { return false }
        catch .reply(.EACCES) { return false }
    }

    /// WRITE: stores `value`, creating missing parents with empty values.
    public func write(_ path: String, _ value: [UInt8], transaction: UInt32 = 0) throws(XenStoreError) {
        var p = Array(path.utf8)
        p.append(0)
        p.append(contentsOf: value)
        _ = try request(.write, payload: p, transaction: transaction)
    }

    /// WRITE of UTF-8 text.
    public func write(_ path: String, _ value: String, transaction: UInt32 = 0) throws(XenStoreError) {
        try write(path, Array(value.utf8), transaction: transaction)
    }

    /// MKDIR: ensures `path` exists (missing parents are created, values kept).
    public func mkdir(_ path: String, transaction: UInt32 = 0) throws(XenStoreError) {
        _ = try request(.mkdir, [path], transaction: transaction)
    }

    /// RM: removes `path` and its subtree; absent is fine, an absent parent is `ENOENT`.
    public func rm(_ path: String, transaction: UInt32 = 0) throws(XenStoreError) {
        _ = try request(.rm, [path], transaction: transaction)
    }

    /// DIRECTORY: leaf names of the immediate children.
    public func directory(_ path: String, transaction: UInt32 = 0) throws(XenStoreError) -> [String] {
        Self.splitStrings(try request(.directory, [path], transaction: transaction))
    }

    /// GET_PERMS: the permission list (owner first).
    public func permissions(_ path: String, transaction: UInt32 = 0) throws(XenStoreError) -> [XenStorePermission] {
        Self.splitStrings(try request(.getPerms, [path], transaction: transaction)).compactMap { XenStorePermission($0) }
    }

    /// SET_PERMS: replaces the permission list (first entry: owner and default access).
    public func setPermissions(_ path: String, _ perms: [XenStorePermission], transaction: UInt32 = 0) throws(XenStoreError) {
        _ = try request(.setPerms, [path] + perms.map(\.description), transaction: transaction)
    }

    // MARK: watches

    /// WATCH with events queued for `waitForWatchEvent`. The daemon fires once at once.
    /// - Throws: `.reply(.EEXIST)` for a duplicate (path, token); `.reply(.E2BIG)` for a
    ///   token longer than `XenStoreCore.watchTokenMax` (1022) bytes.
    public func watch(_ path: String, token: String) throws(XenStoreError) {
        try registerWatch(path, token)
    }

    /// WATCH, remembered (before it is sent) so that a reconnection registers it again.
    private func registerWatch(_ path: String, _ token: String) throws(XenStoreError) {
        let s = shared
        s.cond.withLock { s.watches.append((path, token)) }
        do { _ = try request(.watch, [path, token]) } catch {
            s.cond.withLock {
                if let i = s.watches.lastIndex(where: { $0.path == path && $0.token == token }) { s.watches.remove(at: i) }
            }
            throw error
        }
    }

    /// WATCH with `handler` run on the client's callback thread for each event of `token`
    /// (including the initial one). Handlers may call the client; one that captures the
    /// client keeps it alive until `close()` (which drops every handler).
    public func watch(_ path: String, token: String, handler: @escaping @Sendable (XenStoreWatchEvent) -> Void) throws(XenStoreError) {
        let s = shared
        s.cond.withLock { s.handlers[token] = handler }
        startCallbackThread()
        do { try registerWatch(path, token) } catch {
            s.cond.withLock { s.handlers[token] = nil }
            throw error
        }
    }

    /// UNWATCH: removes the watch; its handler too.
    public func unwatch(_ path: String, token: String) throws(XenStoreError) {
        _ = try request(.unwatch, [path, token])
        let s = shared
        s.cond.withLock {
            s.handlers[token] = nil
            s.watches.removeAll { $0.path == path && $0.token == token }
        }
    }

    /// The next queued watch event, waiting up to `timeoutMilliseconds` (nil: forever).
    /// Returns nil on timeout. - Throws: `.disconnected` once closed and drained.
    public func waitForWatchEvent(timeoutMilliseconds: Int? = nil) throws(XenStoreError) -> XenStoreWatchEvent? {
        let s = shared
        let deadline = timeoutMilliseconds.map { xsMonotonicNanoseconds() + UInt64(max(0, $0)) * 1_000_000 }
        s.cond.lock()
        defer { s.cond.unlock() }
        while s.events.isEmpty {
            if s.closed { throw s.failure ?? .disconnected }
            if let deadline, xsMonotonicNanoseconds() >= deadline { return nil }
            s.cond.wait(until: deadline)
        }
        return s.events.removeFirst()
    }

    /// Removes and returns every queued watch event without waiting.
    public func drainWatchEvents() -> [XenStoreWatchEvent] {
        let s = shared
        return s.cond.withLock {
            let e = s.events
            s.events.removeAll()
            return e
        }
    }

    /// RESET_WATCHES: drops all watches and transactions of this connection.
    public func resetWatches() throws(XenStoreError) {
        _ = try request(.resetWatches, [""])
        let s = shared
        s.cond.withLock { s.handlers.removeAll(); s.watches.removeAll() }
    }

    private func startCallbackThread() {
        lifecycle.lock()
        defer { lifecycle.unlock() }
        guard callbackThread == nil, reader != nil else { return }
        let s = shared
        callbackThread = xsStartThread {
            while true {
                s.cond.lock()
                while s.callbackQueue.isEmpty && !s.closed { s.cond.wait(until: nil) }
                if s.callbackQueue.isEmpty { s.cond.unlock(); return }
                let (ev, h) = s.callbackQueue.removeFirst()
                s.cond.unlock()
                h(ev)
            }
        }
    }

    // MARK: transactions (xenstore.txt "Transactions")

    /// TRANSACTION_START: a new transaction id.
    public func startTransaction() throws(XenStoreError) -> UInt32 {
        let text = Self.firstString(try request(.transactionStart, [""]))
        guard let id = UInt32(text), id != 0 else { throw .protocolViolation("transaction id \(text)") }
        return id
    }

    /// TRANSACTION_END: commits (or with `commit: false` discards) the transaction.
    /// - Throws: `.reply(.EAGAIN)` when something it read or wrote changed meanwhile.
    public func endTransaction(_ id: UInt32, commit: Bool = true) throws(XenStoreError) {
        _ = try request(.transactionEnd, [commit ? "T" : "F"], transaction: id)
    }

    /// Runs `body` in a transaction and commits, retrying the whole body on `EAGAIN` up to
    /// `maxAttempts` times with a short growing back-off. A body that throws aborts the
    /// transaction and rethrows. - Throws: the body's error, or `.reply(.EAGAIN)` when
    /// every attempt conflicted.
    public func transaction<T>(maxAttempts: Int = 1000, _ body: (XenStoreTransactionContext) throws -> T) throws -> T {
        var attempt = 0
        while true {
            attempt += 1
            let id = try startTransaction()
            let result: T
            do {
                result = try body(XenStoreTransactionContext(client: self, id: id))
            } catch {
                try? endTransaction(id, commit: false)
                throw error
            }
            do {
                try endTransaction(id, commit: true)
                return result
            } catch {
                guard error == .reply(.EAGAIN) && attempt < maxAttempts else { throw error }
                // Back off a little (growing, jittered) so that a fast competitor cannot
                // starve this transaction.
                let jitter = UInt32(truncatingIfNeeded: xsMonotonicNanoseconds() / 1000) % 200
                usleep(UInt32(min(attempt, 100)) * 50 + jitter)
            }
        }
    }

    // MARK: domains (xenstore.txt "Domain management")

    /// INTRODUCE `<domid>|<mfn>|<evtchn>|`: fires `@introduceDomain` (dom0 only).
    public func introduceDomain(_ domid: UInt32, mfn: Int64 = 0, eventChannel: UInt32 = 0) throws(XenStoreError) {
        _ = try request(.introduce, [String(domid), String(mfn), String(eventChannel)])
    }

    /// RELEASE: forgets the domain and fires `@releaseDomain` (dom0 only).
    public func releaseDomain(_ domid: UInt32) throws(XenStoreError) {
        _ = try request(.release, [String(domid)])
    }

    /// IS_DOMAIN_INTRODUCED.
    public func isDomainIntroduced(_ domid: UInt32) throws(XenStoreError) -> Bool {
        Self.firstString(try request(.isDomainIntroduced, [String(domid)])) == "T"
    }

    /// GET_DOMAIN_PATH: `/local/domain/<domid>`.
    public func domainPath(_ domid: UInt32) throws(XenStoreError) -> String {
        Self.firstString(try request(.getDomainPath, [String(domid)]))
    }

    /// SET_TARGET: `domid` gets `target`'s rights (device models).
    public func setTarget(_ domid: UInt32, target: UInt32) throws(XenStoreError) {
        _ = try request(.setTarget, [String(domid), String(target)])
    }

    /// XS_RESTRICT: this connection acts as `domid` from now on (unprivileged unless 0);
    /// relative paths then resolve under `/local/domain/<domid>`. Irreversible.
    public func restrict(to domid: UInt32) throws(XenStoreError) {
        _ = try request(.restrict, [String(domid)])
    }

    /// CONTROL `<command>|<args>|...`: the reply text.
    public func control(_ command: String, _ arguments: [String] = []) throws(XenStoreError) -> String {
        Self.firstString(try request(.control, [command] + arguments))
    }
}

/// The operations of one open transaction, handed to `XenStoreClient.transaction`'s body.
public struct XenStoreTransactionContext: Sendable {
    public let client: XenStoreClient
    /// The transaction id (`tx_id` of each request).
    public let id: UInt32

    public func read(_ path: String) throws(XenStoreError) -> [UInt8] { try client.read(path, transaction: id) }
    public func readString(_ path: String) throws(XenStoreError) -> String { try client.readString(path, transaction: id) }
    public func readIfPresent(_ path: String) throws(XenStoreError) -> String? { try client.readIfPresent(path, transaction: id) }
    public func exists(_ path: String) throws(XenStoreError) -> Bool { try client.exists(path, transaction: id) }
    public func write(_ path: String, _ value: String) throws(XenStoreError) { try client.write(path, value, transaction: id) }
    public func write(_ path: String, _ value: [UInt8]) throws(XenStoreError) { try client.write(path, value, transaction: id) }
    public func mkdir(_ path: String) throws(XenStoreError) { try client.mkdir(path, transaction: id) }
    public func rm(_ path: String) throws(XenStoreError) { try client.rm(path, transaction: id) }
    public func directory(_ path: String) throws(XenStoreError) -> [String] { try client.directory(path, transaction: id) }
    public func permissions(_ path: String) throws(XenStoreError) -> [XenStorePermission] { try client.permissions(path, transaction: id) }
    public func setPermissions(_ path: String, _ perms: [XenStorePermission]) throws(XenStoreError) {
        try client.setPermissions(path, perms, transaction: id)
    }
}
