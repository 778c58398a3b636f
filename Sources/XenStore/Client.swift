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

    public var description: String {
        switch self {
        case .reply(let c): return "xenstore: \(c.rawValue)"
        case .connect(let p, let e): return "xenstore: cannot connect to \(p): \(String(cString: strerror(e)))"
        case .disconnected: return "xenstore: connection closed"
        case .protocolViolation(let s): return "xenstore: protocol violation: \(s)"
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
        let fd: Int32
        let cond = XSCondition()
        let writeLock = XSCondition()
        var nextRequestID: UInt32 = 1
        var replies: [UInt32: XenStoreMessage] = [:]
        var events: [XenStoreWatchEvent] = []
        var callbackQueue: [(XenStoreWatchEvent, @Sendable (XenStoreWatchEvent) -> Void)] = []
        var handlers: [String: @Sendable (XenStoreWatchEvent) -> Void] = [:]
        var closed = false
        var failure: XenStoreError?
        init(fd: Int32) { self.fd = fd }
        /// Wakes every waiter; the caller holds `cond`.
        func broadcastLocked() { cond.broadcast() }
    }

    private let shared: Shared
    private var reader: pthread_t?
    private var callbackThread: pthread_t?
    private let lifecycle = XSCondition()

    /// The socket path this client connected to.
    public let path: String

    /// Connects to the daemon's Unix socket.
    /// - Parameter path: socket path; default `$XENSTORED_PATH` or `$XENITH_ROOT/run/xenstored/socket`.
    /// - Throws: `XenStoreError.connect` when the socket cannot be reached.
    public init(path: String = XenStoreDefaults.clientSocketPath) throws(XenStoreError) {
        self.path = path
        let fd: Int32
        do { fd = try XSSocket.connect(path) } catch { throw .connect(path: path, errno: error.errno) }
        shared = Shared(fd: fd)
        let s = shared
        reader = xsStartThread { Self.readLoop(s) }
        if reader == nil {
            Glibc.close(fd)
            throw .connect(path: path, errno: EAGAIN)
        }
    }

    deinit { close() }

    /// Closes the connection; pending and later requests fail with `.disconnected`.
    public func close() {
        lifecycle.lock()
        defer { lifecycle.unlock() }
        guard let r = reader else { return }
        shared.cond.withLock { shared.closed = true; shared.broadcastLocked() }
        shutdown(shared.fd, Int32(SHUT_RDWR))
        pthread_join(r, nil)
        reader = nil
        if let c = callbackThread {
            if pthread_equal(c, pthread_self()) != 0 { pthread_detach(c) } else { pthread_join(c, nil) }
            callbackThread = nil
        }
        Glibc.close(shared.fd)
        // Handlers often capture the client; dropping them breaks that cycle.
        shared.cond.withLock { shared.handlers.removeAll(); shared.callbackQueue.removeAll() }
    }

    private static func readLoop(_ s: Shared) {
        while true {
            guard let header = XSSocket.receiveExactly(s.fd, XenStoreLimits.headerSize) else { break }
            let h = XenStoreMessage.decodeHeader(header)
            guard h.length <= UInt32(XenStoreLimits.payloadMax) else {
                s.cond.withLock { s.failure = .protocolViolation("reply of \(h.length) bytes") }
                break
            }
            var payload: [UInt8] = []
            if h.length > 0 {
                guard let p = XSSocket.receiveExactly(s.fd, Int(h.length)) else { break }
                payload = p
            }
            let m = XenStoreMessage(type: h.type, requestID: h.requestID, transactionID: h.transactionID, payload: payload)
            s.cond.withLock {
                if m.type == XenStoreMessageType.watchEvent.rawValue {
                    let strs = m.strings().strings
                    guard strs.count >= 2 else { return }
                    let ev = XenStoreWatchEvent(path: strs[0], token: strs[1])
                    if let h = s.handlers[ev.token] { s.callbackQueue.append((ev, h)) } else { s.events.append(ev) }
                } else {
                    s.replies[m.requestID] = m
                }
                s.broadcastLocked()
            }
        }
        s.cond.withLock { s.closed = true; s.broadcastLocked() }
    }

    // MARK: raw requests

    /// Sends one request and waits for its reply payload.
    /// - Throws: `.reply(code)` for an `XS_ERROR` answer, `.disconnected`, `.protocolViolation`.
    public func request(_ type: XenStoreMessageType, payload: [UInt8], transaction: UInt32 = 0) throws(XenStoreError) -> [UInt8] {
        guard payload.count <= XenStoreLimits.payloadMax else { throw .reply(.E2BIG) }
        let s = shared
        let id: UInt32 = s.cond.withLock {
            let id = s.nextRequestID
            s.nextRequestID = s.nextRequestID &+ 1
            return id
        }
        let bytes = XenStoreMessage(type, requestID: id, transactionID: transaction, payload: payload).encoded()
        let sent = s.writeLock.withLock { XSSocket.sendAll(s.fd, bytes) }
        if !sent { throw .disconnected }
        s.cond.lock()
        defer { s.cond.unlock() }
        while s.replies[id] == nil {
            if s.closed { throw s.failure ?? .disconnected }
            s.cond.wait(until: nil)
        }
        let reply = s.replies.removeValue(forKey: id)!
        if reply.type == XenStoreMessageType.error.rawValue { throw .reply(XenStoreErrorCode(payload: reply.payload)) }
        guard reply.type == type.rawValue else { throw .protocolViolation("reply type \(reply.type) to request \(type.rawValue)") }
        return reply.payload
    }

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
        _ = try request(.watch, [path, token])
    }

    /// WATCH with `handler` run on the client's callback thread for each event of `token`
    /// (including the initial one). Handlers may call the client; one that captures the
    /// client keeps it alive until `close()` (which drops every handler).
    public func watch(_ path: String, token: String, handler: @escaping @Sendable (XenStoreWatchEvent) -> Void) throws(XenStoreError) {
        let s = shared
        s.cond.withLock { s.handlers[token] = handler }
        startCallbackThread()
        do { _ = try request(.watch, [path, token]) } catch {
            s.cond.withLock { s.handlers[token] = nil }
            throw error
        }
    }

    /// UNWATCH: removes the watch; its handler too.
    public func unwatch(_ path: String, token: String) throws(XenStoreError) {
        _ = try request(.unwatch, [path, token])
        let s = shared
        s.cond.withLock { s.handlers[token] = nil }
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
        s.cond.withLock { s.handlers.removeAll() }
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
