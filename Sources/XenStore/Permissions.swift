// Node permissions (docs/misc/xenstore.txt "GET_PERMS/SET_PERMS", XenBus "Permissions").

/// What a domain may do with a node: the letter of `<perm-as-string>`.
public enum XenStoreAccess: Character, Sendable, CaseIterable {
    /// `n`: no access.
    case none = "n"
    /// `r`: read only.
    case read = "r"
    /// `w`: write only.
    case write = "w"
    /// `b`: both read and write.
    case both = "b"

    public var canRead: Bool { self == .read || self == .both }
    public var canWrite: Bool { self == .write || self == .both }
}

/// One entry of a node's permission list, e.g. `r5` (domain 5 may read).
/// In a list, the first entry names the owner (who always has full access) and gives the
/// access of every domain not listed later.
public struct XenStorePermission: Sendable, Equatable, Hashable, CustomStringConvertible {
    /// Domain id, 0...65535 on the wire (Xen's DOMID_* specials are also plain integers).
    public var domid: UInt32
    public var access: XenStoreAccess

    public init(domid: UInt32, access: XenStoreAccess) {
        self.domid = domid
        self.access = access
    }

    /// Parses `<letter><domid>` (`r5`, `b0`, `n12`); nil when malformed.
    public init?(_ text: String) {
        guard let first = text.first, let a = XenStoreAccess(rawValue: first) else { return nil }
        let digits = text.dropFirst()
        guard !digits.isEmpty, digits.count <= 10, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
              let d = UInt32(digits) else { return nil }
        self.init(domid: d, access: a)
    }

    /// `<letter><domid>`, as sent in GET_PERMS replies.
    public var description: String { "\(access.rawValue)\(domid)" }

    /// Owner `domid`, everyone else `access` (the common single-entry list).
    public static func owner(_ domid: UInt32, others access: XenStoreAccess = .none) -> [XenStorePermission] {
        [XenStorePermission(domid: domid, access: access)]
    }
}

/// The rights a connection has on one node (Xen's `perm_for_conn`).
struct XenStoreRights: OptionSet, Sendable {
    let rawValue: UInt8
    static let read = XenStoreRights(rawValue: 1)
    static let write = XenStoreRights(rawValue: 2)
    static let owner = XenStoreRights(rawValue: 4)
    static let all: XenStoreRights = [.read, .write, .owner]

    /// Rights of domain `domid` (with optional target domain, see SET_TARGET) on a node with
    /// permission list `perms`. `privileged` (domain 0) has every right.
    static func of(domid: UInt32, target: UInt32?, privileged: Bool, on perms: [XenStorePermission]) -> XenStoreRights {
        if privileged { return .all }
        guard let owner = perms.first else { return [] }
        if owner.domid == domid || (target != nil && owner.domid == target) { return .all }
        for p in perms.dropFirst() where p.domid == domid || (target != nil && p.domid == target) {
            return rights(p.access)
        }
        return rights(owner.access)
    }

    private static func rights(_ a: XenStoreAccess) -> XenStoreRights {
        var r: XenStoreRights = []
        if a.canRead { r.insert(.read) }
        if a.canWrite { r.insert(.write) }
        return r
    }
}

/// Path syntax (docs/misc/xenstore.txt): `/`-separated, starting with `/`, characters
/// `[A-Za-z0-9-/_@]`, no doubled or trailing slash (except the root `/`), at most 3072 bytes
/// absolute. A relative path (no leading `/`) is relative to `/local/domain/<domid>`.
public enum XenStorePath {
    /// The home path of a domain: `/local/domain/<domid>`.
    public static func home(_ domid: UInt32) -> String { "/local/domain/\(domid)" }

    /// Whether `path` is a valid absolute path.
    public static func isValidAbsolute(_ path: String) -> Bool {
        let u = path.utf8
        guard u.first == UInt8(ascii: "/"), u.count <= XenStoreLimits.absolutePathMax else { return false }
        if u.count == 1 { return true }
        var prevSlash = false
        for c in u {
            let slash = c == UInt8(ascii: "/")
            if slash && prevSlash { return false }
            prevSlash = slash
            guard isPathByte(c) else { return false }
        }
        return !prevSlash
    }

    /// Resolves a path sent by domain `domid`: absolute paths stay, relative ones get the
    /// domain's home prefix. Nil if invalid (syntax, empty, too long).
    public static func canonical(_ path: String, domid: UInt32) -> String? {
        if path.utf8.first == UInt8(ascii: "/") {
            return isValidAbsolute(path) ? path : nil
        }
        guard !path.isEmpty, path.utf8.count <= XenStoreLimits.relativePathMax else { return nil }
        let full = home(domid) + "/" + path
        return isValidAbsolute(full) ? full : nil
    }

    /// The parent of an absolute path (`/a/b` → `/a`, `/a` → `/`); nil for `/`.
    public static func parent(_ path: String) -> String? {
        guard path != "/" else { return nil }
        guard let i = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return nil }
        if i == path.utf8.startIndex { return "/" }
        return String(path[path.startIndex..<i])
    }

    /// The last component of an absolute path (`/a/b` → `b`).
    public static func leaf(_ path: String) -> String {
        guard let i = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return path }
        return String(path[path.index(after: i)...])
    }

    /// `parent + "/" + name` with the root handled.
    public static func child(_ parent: String, _ name: String) -> String {
        parent == "/" ? "/" + name : parent + "/" + name
    }

    /// Whether `path` is `ancestor` or below it (xenstore.txt: "<child> of <parent>").
    public static func isChild(_ path: String, of ancestor: String) -> Bool {
        if ancestor == "/" { return path.utf8.first == UInt8(ascii: "/") }
        if path == ancestor { return true }
        return path.utf8.count > ancestor.utf8.count && path.hasPrefix(ancestor)
            && path.utf8[path.utf8.index(path.utf8.startIndex, offsetBy: ancestor.utf8.count)] == UInt8(ascii: "/")
    }

    private static func isPathByte(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "/"), UInt8(ascii: "_"), UInt8(ascii: "@"):
            return true
        default:
            return false
        }
    }
}
