// The xenstore database and request semantics, free of I/O: a tree of nodes keyed by
// absolute path, permissions, watches, transactions and introduced domains.
// Spec: Xen docs/misc/xenstore.txt; semantics follow Xen's C xenstored where the spec is silent.

/// One node of the tree.
public struct XenStoreNode: Sendable, Equatable {
    /// The value: arbitrary bytes, conventionally 7-bit text without a trailing NUL.
    public var value: [UInt8]
    /// Permission list: first entry is the owner and the default for unlisted domains.
    public var permissions: [XenStorePermission]
    /// Leaf names of the immediate children, in creation order.
    public var children: [String]
    /// Changes whenever the node's value, permissions or children change (conflict detection).
    public var generation: UInt64

    public init(value: [UInt8] = [], permissions: [XenStorePermission], children: [String] = [], generation: UInt64 = 0) {
        self.value = value
        self.permissions = permissions
        self.children = children
        self.generation = generation
    }

    var owner: UInt32 { permissions.first?.domid ?? 0 }
}

/// Identifies a client connection of a `XenStoreCore`.
public struct XenStoreConnectionID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public var description: String { "conn\(rawValue)" }
}

/// A message the core wants sent to one connection (a reply or a watch event).
public struct XenStoreOutput: Sendable, Equatable {
    public var connection: XenStoreConnectionID
    public var message: XenStoreMessage
}

/// A change to report to watchers once it is visible (immediately, or at commit).
struct XenStoreEvent {
    /// Absolute path of the changed node, or `@introduceDomain` / `@releaseDomain`.
    var path: String
    /// Removal of a subtree: watches below `path` fire too, with their own path.
    var recurse: Bool
    /// Permissions of the node at the time of the change (who may learn of it).
    var permissions: [XenStorePermission]
}

final class XenStoreTransaction {
    let id: UInt32
    var overlay: [String: XenStoreNode] = [:]
    var deleted: Set<String> = []
    /// Generation of every base node the transaction looked at or changed; 0 = absent.
    var accessed: [String: UInt64] = [:]
    var events: [XenStoreEvent] = []
    init(id: UInt32) { self.id = id }
}

struct XenStoreWatch {
    /// The path as the client gave it (echoed in the first event).
    var given: String
    /// Canonical absolute path, or the `@special` name.
    var path: String
    var token: String
    /// Prefix to strip from event paths (`/local/domain/<domid>/`) for a relative watch.
    var relativePrefix: String?
}

final class XenStoreConnectionState {
    let id: XenStoreConnectionID
    var domid: UInt32
    var watches: [XenStoreWatch] = []
    var transactions: [UInt32: XenStoreTransaction] = [:]
    var nextTransactionID: UInt32 = 1
    init(id: XenStoreConnectionID, domid: UInt32) {
        self.id = id
        self.domid = domid
    }
    /// Domain 0 is privileged (Xen: a socket connection, or dom0's ring).
    var privileged: Bool { domid == 0 }
}

/// The xenstore daemon's state machine: feed it requests, get replies and watch events.
///
/// Not thread-safe: `XenStoreServer` drives one from its event-loop thread. Unit tests use it
/// directly. Socket connections are domain 0 (privileged); `connect(domid:)` with another
/// domid, or an `XS_RESTRICT <domid>|` request, makes a connection act as that domain.
public final class XenStoreCore {
    private(set) var nodes: [String: XenStoreNode] = [:]
    private var generationCounter: UInt64 = 0
    private var connections: [XenStoreConnectionID: XenStoreConnectionState] = [:]
    private var nextConnection = 1
    private var introduced: Set<UInt32> = []
    private var targets: [UInt32: UInt32] = [:]
    private var ownerCounts: [UInt32: Int] = [:]
    /// Committed changes not yet taken by `takeChanges()`, when `recordsChanges` is on.
    private var pendingChanges: [XenStoreChange] = []

    /// Whether committed changes are kept for `takeChanges()` (the journal's feed). Off by
    /// default: a core without persistence keeps nothing.
    public var recordsChanges = false

    /// Most nodes an unprivileged domain may own (Xen's default `quota-nb-entry-per-domain`).
    public var nodeQuota = 1000
    /// Most watches of one unprivileged connection (exceeding it: `E2BIG`, as Xen).
    public var watchQuota = 128
    /// Most open transactions of one connection (exceeding it: `ENOSPC`, as Xen).
    public var transactionQuota = 10
    /// Receives `CONTROL print|<text>` lines and diagnostics.
    public var log: (@Sendable (String) -> Void)?

    /// A tree with Xen's initial layout: `/`, `/local/domain/0` (`name` = `Domain-0`,
    /// `domid` = `0`), `/tool`, `/vm`; every node owned by domain 0, no access for others.
    public init() {
        let perms = XenStorePermission.owner(0)
        putBase("/", XenStoreNode(permissions: perms))
        for path in ["/local", "/local/domain", "/local/domain/0", "/local/domain/0/name",
                     "/local/domain/0/domid", "/tool", "/vm"] {
            _ = try? createChain(path, conn: nil, tx: nil)
        }
        setBase("/local/domain/0/name", value: Array("Domain-0".utf8))
        setBase("/local/domain/0/domid", value: Array("0".utf8))
    }

    // MARK: persistence

    /// Every change to the committed tree (and to the introduced domains) since the last
    /// call, in order: one request's worth after each `handle` (a transaction's only at its
    /// commit, so an aborted or conflicting one leaves nothing). Empty unless `recordsChanges`.
    public func takeChanges() -> [XenStoreChange] {
        let c = pendingChanges
        pendingChanges.removeAll(keepingCapacity: true)
        return c
    }

    /// The whole committed state as changes that rebuild it from nothing (parents before
    /// children): what a snapshot holds.
    public func stateAsChanges() -> [XenStoreChange] {
        var out: [XenStoreChange] = []
        out.reserveCapacity(nodes.count + introduced.count)
        var stack = ["/"]
        while let p = stack.popLast() {
            guard let n = nodes[p] else { continue }
            out.append(.put(path: p, node: n))
            for c in n.children.reversed() { stack.append(XenStorePath.child(p, c)) }
        }
        for d in introduced.sorted() { out.append(.introduce(d)) }
        return out
    }

    /// Replaces the committed tree and the introduced domains with `state` (loaded from
    /// disk and checked by `XenStoreStoreState`). Connections are kept; nothing is recorded.
    public func restore(_ state: XenStoreStoreState) {
        nodes.removeAll()
        ownerCounts.removeAll()
        for (path, node) in state.nodes { putBase(path, node) }
        introduced = state.introduced
        pendingChanges.removeAll()
    }

    // MARK: connections

    /// Registers a client connection acting as `domid` (0: privileged).
    public func connect(domid: UInt32 = 0) -> XenStoreConnectionID {
        let id = XenStoreConnectionID(rawValue: nextConnection)
        nextConnection += 1
        connections[id] = XenStoreConnectionState(id: id, domid: domid)
        return id
    }

    /// Forgets a connection: its watches and open transactions are dropped.
    public func disconnect(_ id: XenStoreConnectionID) {
        connections[id] = nil
    }

    /// The domain a connection acts as, nil if unknown.
    public func domid(of id: XenStoreConnectionID) -> UInt32? { connections[id]?.domid }

    /// Number of nodes in the committed tree.
    public var nodeCount: Int { nodes.count }

    /// The committed node at an absolute path (no permission check), for tests and tools.
    public func node(at path: String) -> XenStoreNode? { nodes[path] }

    /// Whether a domain has been introduced (domain 0 always is).
    public func isIntroduced(_ domid: UInt32) -> Bool { domid == 0 || introduced.contains(domid) }

    // MARK: requests

    /// Handles one request from `connection`. Returns the reply (first) followed by any watch
    /// events it caused, each addressed to its connection. Never traps on malformed input:
    /// errors become `XS_ERROR` replies.
    public func handle(_ request: XenStoreMessage, from connection: XenStoreConnectionID) -> [XenStoreOutput] {
        guard let conn = connections[connection] else { return [] }
        var out: [XenStoreOutput] = []
        var events: [XenStoreEvent] = []
        var after: [XenStoreOutput] = []
        var replyType = request.type
        var payload: [UInt8]
        do throws(XenStoreErrorCode) {
            payload = try dispatch(request, conn, &events, &after)
            if payload.count > XenStoreLimits.payloadMax { throw XenStoreErrorCode.E2BIG }
        } catch {
            payload = Array(error.rawValue.utf8) + [0]
            replyType = XenStoreMessageType.error.rawValue
        }
        out.append(XenStoreOutput(connection: connection,
                                  message: XenStoreMessage(type: replyType, requestID: request.requestID,
                                                           transactionID: request.transactionID, payload: payload)))
        out.append(contentsOf: after)
        for e in events { fire(e, into: &out) }
        return out
    }

    private static let ok: [UInt8] = Array("OK".utf8) + [0]

    private func dispatch(_ m: XenStoreMessage, _ conn: XenStoreConnectionState,
                          _ events: inout [XenStoreEvent], _ after: inout [XenStoreOutput]) throws(XenStoreErrorCode) -> [UInt8] {
        guard let type = m.knownType else { throw .ENOSYS }
        // Transactional requests name an open transaction in tx_id.
        var tx: XenStoreTransaction?
        switch type {
        case .read, .write, .mkdir, .rm, .directory, .directoryPart, .getPerms, .setPerms, .transactionEnd:
            if m.transactionID != 0 {
                guard let t = conn.transactions[m.transactionID] else { throw .ENOENT }
                tx = t
            }
        default:
            break
        }
        func record(_ e: XenStoreEvent) {
            if let tx { tx.events.append(e) } else { events.append(e) }
        }

        switch type {
        case .read:
            let path = try onePath(m, conn)
            return try readable(path, conn, tx, need: .read).value

        case .write:
            guard let nul = m.payload.firstIndex(of: 0) else { throw .EINVAL }
            let given = String(decoding: m.payload[..<nul], as: UTF8.self)
            guard let path = XenStorePath.canonical(given, domid: conn.domid) else { throw .EINVAL }
            let value = Array(m.payload[(nul + 1)...])
            if var node = lookup(path, tx) {
                guard rights(conn, node.permissions).contains(.write) else { throw .EACCES }
                node.value = value
                store(path, node, tx)
                record(XenStoreEvent(path: path, recurse: false, permissions: node.permissions))
            } else {
                try checkParents(path, conn, tx, need: .write)
                var node = try createChain(path, conn: conn, tx: tx)
                node.value = value
                store(path, node, tx)
                record(XenStoreEvent(path: path, recurse: false, permissions: node.permissions))
            }
            return Self.ok

        case .mkdir:
            let path = try onePath(m, conn)
            if let node = lookup(path, tx) {
                guard rights(conn, node.permissions).contains(.write) else { throw .EACCES }
                return Self.ok
            }
            try checkParents(path, conn, tx, need: .write)
            let node = try createChain(path, conn: conn, tx: tx)
            record(XenStoreEvent(path: path, recurse: false, permissions: node.permissions))
            return Self.ok

        case .rm:
            let path = try onePath(m, conn)
            guard path != "/" else { throw .EINVAL }
            guard let node = lookup(path, tx) else {
                try checkParents(path, conn, tx, need: .write)
                // Absent is fine; an absent parent is not (xenstore.txt "RM").
                if let parent = XenStorePath.parent(path), lookup(parent, tx) != nil { return Self.ok }
                throw .ENOENT
            }
            guard rights(conn, node.permissions).contains(.write) else { throw .EACCES }
            removeSubtree(path, tx)
            if let parentPath = XenStorePath.parent(path), var parent = lookup(parentPath, tx) {
                let leaf = XenStorePath.leaf(path)
                parent.children.removeAll { $0 == leaf }
                store(parentPath, parent, tx)
            }
            record(XenStoreEvent(path: path, recurse: true, permissions: node.permissions))
            return Self.ok

        case .directory:
            let path = try onePath(m, conn)
            let node = try readable(path, conn, tx, need: .read)
            var out: [UInt8] = []
            for c in node.children { out.append(contentsOf: c.utf8); out.append(0) }
            return out

        case .directoryPart:
            let (args, _) = m.strings()
            guard args.count >= 2, let path = XenStorePath.canonical(args[0], domid: conn.domid),
                  let offset = Int(args[1]), offset >= 0 else { throw .EINVAL }
            let node = try readable(path, conn, tx, need: .read)
            var all: [UInt8] = []
            for c in node.children { all.append(contentsOf: c.utf8); all.append(0) }
            guard offset <= all.count else { throw .EINVAL }
            var out = Array(String(node.generation).utf8) + [0]
            let room = XenStoreLimits.payloadMax - out.count - 1
            if all.count - offset <= room {
                out.append(contentsOf: all[offset...])
                out.append(0)  // an empty string marks the end of the list
            } else {
                // Cut at a name boundary so each chunk holds whole names.
                var end = offset
                var i = offset
                while i < all.count && i - offset < room {
                    if all[i] == 0 { end = i + 1 }
                    i += 1
                }
                guard end > offset else { throw .E2BIG }
                out.append(contentsOf: all[offset..<end])
            }
            return out

        case .getPerms:
            let path = try onePath(m, conn)
            let node = try readable(path, conn, tx, need: .read)
            var out: [UInt8] = []
            for p in node.permissions { out.append(contentsOf: p.description.utf8); out.append(0) }
            return out

        case .setPerms:
            let (args, _) = m.strings()
            guard args.count >= 2, let path = XenStorePath.canonical(args[0], domid: conn.domid) else { throw .EINVAL }
            var perms: [XenStorePermission] = []
            for s in args.dropFirst() {
                if s.isEmpty { continue }
                guard let p = XenStorePermission(s) else { throw .EINVAL }
                perms.append(p)
            }
            guard !perms.isEmpty else { throw .EINVAL }
            var node = try readable(path, conn, tx, need: [.write, .owner])
            // Unprivileged domains may not give their nodes away.
            if !conn.privileged && perms[0].domid != node.owner { throw .EACCES }
            node.permissions = perms
            store(path, node, tx)
            record(XenStoreEvent(path: path, recurse: false, permissions: perms))
            return Self.ok

        case .watch:
            let (args, _) = m.strings()
            guard args.count >= 2 else { throw .EINVAL }
            let (given, token) = (args[0], args[1])
            let w = try makeWatch(given, token, conn)
            // Every event of this watch must fit one message, whatever path it reports.
            guard token.utf8.count <= Self.watchTokenMax else { throw .E2BIG }
            if !conn.privileged && conn.watches.count >= watchQuota { throw .E2BIG }
            if conn.watches.contains(where: { $0.path == w.path && $0.token == token }) { throw .EEXIST }
            conn.watches.append(w)
            // A new watch fires once straight away with its own path.
            if let event = watchEvent(path: given, token: token) {
                after.append(XenStoreOutput(connection: conn.id, message: event))
            }
            return Self.ok

        case .unwatch:
            let (args, _) = m.strings()
            guard args.count >= 2 else { throw .EINVAL }
            let w = try makeWatch(args[0], args[1], conn)
            guard let i = conn.watches.firstIndex(where: { $0.path == w.path && $0.token == w.token }) else { throw .ENOENT }
            conn.watches.remove(at: i)
            return Self.ok

        case .transactionStart:
            guard m.transactionID == 0 else { throw .EBUSY }
            guard conn.transactions.count < transactionQuota else { throw .ENOSPC }
            var id = conn.nextTransactionID
            while id == 0 || conn.transactions[id] != nil { id &+= 1 }
            conn.nextTransactionID = id &+ 1
            conn.transactions[id] = XenStoreTransaction(id: id)
            return Array(String(id).utf8) + [0]

        case .transactionEnd:
            guard let tx else { throw .ENOENT }
            let arg = try oneArg(m)
            guard arg == "T" || arg == "F" else { throw .EINVAL }
            conn.transactions[tx.id] = nil
            if arg == "T" {
                try commit(tx)
                events.append(contentsOf: tx.events)
            }
            return Self.ok

        case .introduce:
            guard conn.privileged else { throw .EACCES }
            let (args, _) = m.strings()
            guard args.count >= 3, let domid = Self.parseDomid(args[0]), domid != 0 else { throw .EINVAL }
            if !introduced.contains(domid) {
                introduced.insert(domid)
                if recordsChanges { pendingChanges.append(.introduce(domid)) }
                events.append(XenStoreEvent(path: "@introduceDomain", recurse: false, permissions: []))
            }
            return Self.ok

        case .release:
            guard conn.privileged else { throw .EACCES }
            guard let domid = Self.parseDomid(try oneArg(m)), domid != 0 else { throw .EINVAL }
            guard introduced.remove(domid) != nil else { throw .ENOENT }
            if recordsChanges { pendingChanges.append(.release(domid)) }
            targets[domid] = nil
            events.append(XenStoreEvent(path: "@releaseDomain", recurse: false, permissions: []))
            return Self.ok

        case .resume:
            guard conn.privileged else { throw .EACCES }
            guard let domid = Self.parseDomid(try oneArg(m)) else { throw .EINVAL }
            guard isIntroduced(domid) else { throw .ENOENT }
            return Self.ok

        case .getDomainPath:
            guard let domid = Self.parseDomid(try oneArg(m)) else { throw .EINVAL }
            return Array(XenStorePath.home(domid).utf8) + [0]

        case .isDomainIntroduced:
            guard let domid = Self.parseDomid(try oneArg(m)) else { throw .EINVAL }
            return Array((isIntroduced(domid) ? "T" : "F").utf8) + [0]

        case .setTarget:
            guard conn.privileged else { throw .EACCES }
            let (args, _) = m.strings()
            guard args.count >= 2, let d = Self.parseDomid(args[0]), let t = Self.parseDomid(args[1]), d != 0 else { throw .EINVAL }
            targets[d] = t
            return Self.ok

        case .restrict:
            guard conn.privileged else { throw .EACCES }
            guard let domid = Self.parseDomid(try oneArg(m)) else { throw .EINVAL }
            conn.domid = domid
            return Self.ok

        case .resetWatches:
            conn.watches.removeAll()
            conn.transactions.removeAll()
            return Self.ok

        case .control:
            guard conn.privileged else { throw .EACCES }
            let (args, _) = m.strings()
            guard let command = args.first else { throw .EINVAL }
            switch command {
            case "help":
                return Array("check\nhelp\nlog\nprint\nquota\n".utf8) + [0]
            case "check", "log":
                return Self.ok
            case "print":
                log?(args.dropFirst().joined(separator: " "))
                return Self.ok
            case "quota":
                let text = "nodes \(nodeQuota) watches \(watchQuota) transactions \(transactionQuota)\n"
                return Array(text.utf8) + [0]
            default:
                throw .EINVAL
            }

        case .watchEvent, .error:
            throw .EINVAL
        }
    }

    // MARK: argument parsing

    /// The single NUL-terminated string of a payload (`<arg>|`).
    private func oneArg(_ m: XenStoreMessage) throws(XenStoreErrorCode) -> String {
        guard let nul = m.payload.firstIndex(of: 0), nul == m.payload.count - 1 else { throw .EINVAL }
        return String(decoding: m.payload[..<nul], as: UTF8.self)
    }

    private func onePath(_ m: XenStoreMessage, _ conn: XenStoreConnectionState) throws(XenStoreErrorCode) -> String {
        guard let p = XenStorePath.canonical(try oneArg(m), domid: conn.domid) else { throw .EINVAL }
        return p
    }

    /// Decimal domid 0...65535 (DOMID_* specials above that are not real domains).
    static func parseDomid(_ s: String) -> UInt32? {
        guard !s.isEmpty, s.utf8.count <= 5, s.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              let v = UInt32(s), v <= 65535 else { return nil }
        return v
    }

    private func makeWatch(_ given: String, _ token: String, _ conn: XenStoreConnectionState) throws(XenStoreErrorCode) -> XenStoreWatch {
        if given.hasPrefix("@") {
            guard given.utf8.count <= XenStoreLimits.relativePathMax else { throw .EINVAL }
            return XenStoreWatch(given: given, path: given, token: token, relativePrefix: nil)
        }
        guard let path = XenStorePath.canonical(given, domid: conn.domid) else { throw .EINVAL }
        let relative = !given.hasPrefix("/")
        return XenStoreWatch(given: given, path: path, token: token,
                             relativePrefix: relative ? XenStorePath.home(conn.domid) + "/" : nil)
    }

    // MARK: tree access (through a transaction's view when given)

    private func rights(_ conn: XenStoreConnectionState, _ perms: [XenStorePermission]) -> XenStoreRights {
        XenStoreRights.of(domid: conn.domid, target: targets[conn.domid], privileged: conn.privileged, on: perms)
    }

    private func lookup(_ path: String, _ tx: XenStoreTransaction?) -> XenStoreNode? {
        guard let tx else { return nodes[path] }
        if let n = tx.overlay[path] { return n }
        if tx.deleted.contains(path) { return nil }
        let n = nodes[path]
        if tx.accessed[path] == nil { tx.accessed[path] = n?.generation ?? 0 }
        return n
    }

    private func noteAccess(_ path: String, _ tx: XenStoreTransaction) {
        if tx.accessed[path] == nil { tx.accessed[path] = nodes[path]?.generation ?? 0 }
    }

    private func store(_ path: String, _ node: XenStoreNode, _ tx: XenStoreTransaction?) {
        if let tx {
            noteAccess(path, tx)
            tx.deleted.remove(path)
            tx.overlay[path] = node
        } else {
            putBase(path, node)
        }
    }

    private func delete(_ path: String, _ tx: XenStoreTransaction?) {
        if let tx {
            noteAccess(path, tx)
            tx.overlay[path] = nil
            tx.deleted.insert(path)
        } else {
            removeBase(path)
        }
    }

    private func putBase(_ path: String, _ node: XenStoreNode) {
        var n = node
        generationCounter += 1
        n.generation = generationCounter
        if let old = nodes.updateValue(n, forKey: path) {
            if old.owner != n.owner {
                ownerCounts[old.owner, default: 1] -= 1
                ownerCounts[n.owner, default: 0] += 1
            }
        } else {
            ownerCounts[n.owner, default: 0] += 1
        }
        if recordsChanges { pendingChanges.append(.put(path: path, node: n)) }
    }

    private func removeBase(_ path: String) {
        if let old = nodes.removeValue(forKey: path) {
            ownerCounts[old.owner, default: 1] -= 1
            if recordsChanges { pendingChanges.append(.delete(path: path)) }
        }
    }

    private func setBase(_ path: String, value: [UInt8]) {
        if var n = nodes[path] { n.value = value; putBase(path, n) }
    }

    /// An existing node the connection has `need` rights on; otherwise `EACCES`, or for an
    /// absent node `ENOENT` (or `EACCES` when the nearest existing ancestor is unreadable).
    private func readable(_ path: String, _ conn: XenStoreConnectionState, _ tx: XenStoreTransaction?,
                          need: XenStoreRights) throws(XenStoreErrorCode) -> XenStoreNode {
        if let n = lookup(path, tx) {
            guard rights(conn, n.permissions).isSuperset(of: need) else { throw .EACCES }
            return n
        }
        try checkParents(path, conn, tx, need: need.intersection([.read, .write]))
        throw .ENOENT
    }

    /// For an absent node: the nearest existing ancestor must grant `need` (Xen's
    /// `errno_from_parents`), else `EACCES`.
    private func checkParents(_ path: String, _ conn: XenStoreConnectionState, _ tx: XenStoreTransaction?,
                              need: XenStoreRights) throws(XenStoreErrorCode) {
        var p = XenStorePath.parent(path)
        while let cur = p {
            if let n = lookup(cur, tx) {
                let have = rights(conn, n.permissions)
                if !have.isSuperset(of: need.isEmpty ? .read : need) { throw .EACCES }
                return
            }
            p = XenStorePath.parent(cur)
        }
    }

    /// Creates `path` and its missing ancestors with empty values. A new node inherits its
    /// parent's permissions; an unprivileged creator becomes the owner (Xen's rule).
    /// Returns the node at `path` (already stored).
    @discardableResult
    private func createChain(_ path: String, conn: XenStoreConnectionState?, tx: XenStoreTransaction?) throws(XenStoreErrorCode) -> XenStoreNode {
        var missing: [String] = []
        var cur = path
        var parentNode: XenStoreNode?
        while true {
            if let n = lookup(cur, tx) { parentNode = n; break }
            missing.append(cur)
            guard let p = XenStorePath.parent(cur) else { break }
            cur = p
        }
        guard var parent = parentNode else {
            // Only the root may be created without a parent (initial layout).
            let root = XenStoreNode(permissions: XenStorePermission.owner(0))
            store("/", root, tx)
            return root
        }
        if let conn, !conn.privileged, ownerCounts[conn.domid, default: 0] + missing.count > nodeQuota {
            throw .ENOSPC
        }
        var parentPath = cur
        var created = parent
        for p in missing.reversed() {
            parent.children.append(XenStorePath.leaf(p))
            store(parentPath, parent, tx)
            var perms = parent.permissions
            if let conn, !conn.privileged, !perms.isEmpty { perms[0].domid = conn.domid }
            created = XenStoreNode(permissions: perms)
            store(p, created, tx)
            parent = created
            parentPath = p
        }
        return created
    }

    private func removeSubtree(_ path: String, _ tx: XenStoreTransaction?) {
        var stack = [path]
        while let p = stack.popLast() {
            if let n = lookup(p, tx) {
                for c in n.children { stack.append(XenStorePath.child(p, c)) }
            }
            delete(p, tx)
        }
    }

    /// Commits a transaction: `EAGAIN` if any node it read or wrote changed since.
    private func commit(_ tx: XenStoreTransaction) throws(XenStoreErrorCode) {
        for (path, gen) in tx.accessed where (nodes[path]?.generation ?? 0) != gen {
            throw .EAGAIN
        }
        for path in tx.deleted { removeBase(path) }
        // Parents before children keeps ownership counts simple; order is otherwise free.
        for (path, node) in tx.overlay { putBase(path, node) }
    }

    // MARK: watches

    /// Longest watch token accepted, in bytes (1022): a `WATCH_EVENT` payload is
    /// `<path>\0<token>\0` and a path may be `XENSTORE_ABS_PATH_MAX` bytes long, so a
    /// longer token could make an event larger than `XENSTORE_PAYLOAD_MAX`. `WATCH` with
    /// a longer token fails with `E2BIG`.
    public static let watchTokenMax = XenStoreLimits.payloadMax - XenStoreLimits.absolutePathMax - 2

    /// A `WATCH_EVENT` for `path` and `token`, or nil (and a log line) when its payload
    /// would exceed `XENSTORE_PAYLOAD_MAX`: readers, ours and Linux xenbus alike, treat
    /// such a message as a protocol violation, so it is dropped, as Xen's C xenstored does.
    func watchEvent(path: String, token: String) -> XenStoreMessage? {
        let m = XenStoreMessage(.watchEvent, strings: [path, token])
        guard m.payload.count <= XenStoreLimits.payloadMax else {
            log?("dropped a \(m.payload.count)-byte watch event (more than \(XenStoreLimits.payloadMax))")
            return nil
        }
        return m
    }

    private func fire(_ e: XenStoreEvent, into out: inout [XenStoreOutput]) {
        let special = e.path.hasPrefix("@")
        for conn in connections.values {
            for w in conn.watches {
                var epath: String
                if XenStorePath.isChild(e.path, of: w.path) {
                    epath = e.path
                } else if e.recurse && XenStorePath.isChild(w.path, of: e.path) {
                    epath = w.path
                } else {
                    continue
                }
                if !special && !rights(conn, e.permissions).contains(.read) { continue }
                if let prefix = w.relativePrefix, epath.hasPrefix(prefix) {
                    epath = String(epath.dropFirst(prefix.count))
                }
                if let event = watchEvent(path: epath, token: w.token) {
                    out.append(XenStoreOutput(connection: conn.id, message: event))
                }
            }
        }
    }
}
