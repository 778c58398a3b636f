// The on-disk encoding of xenstored's persistent store (StoreFiles.swift writes the files):
// changes to the committed tree as byte strings, framed in CRC-32C-checked records, and
// the checks that turn loaded changes into a consistent tree. No I/O here.
//
// Record (journal and snapshot alike), little-endian:
//   u32 payload length (1 ... recordMax) | u32 CRC-32C (Castagnoli) of the payload | payload
// Payload: one or more changes, each a tag byte then its fields:
//   'P' put:       u16 path length, path, u32 value length, value,
//                  u16 permission count, each u16 length + `<letter><domid>` text,
//                  u32 child count, each u16 length + leaf name
//   'D' delete:    u16 path length, path
//   'I' introduce: u32 domid          'R' release: u32 domid
// A put carries the whole node (value, permissions, children), so replaying a record twice
// gives the same tree: what makes compaction crash-safe (StoreFiles.swift).

/// One change to the committed store, as the journal records it.
public enum XenStoreChange: Sendable, Equatable {
    /// The node at `path` is now `node` (created or replaced; `generation` is not kept).
    case put(path: String, node: XenStoreNode)
    /// The node at `path` is gone (its parent's `children` changes in a put of its own).
    case delete(path: String)
    /// INTRODUCE of a domain.
    case introduce(UInt32)
    /// RELEASE of a domain.
    case release(UInt32)
}

/// Why a store file cannot be read, with the byte offset it was found at.
public struct XenStoreRecordError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Offset in the file (or payload) where the problem is, in bytes.
    public var offset: Int
    /// What is wrong there, one line.
    public var reason: String
    public init(offset: Int, reason: String) { self.offset = offset; self.reason = reason }
    public var description: String { "at byte \(offset): \(reason)" }
}

/// Encoding and decoding of records and changes (format at the top of this file).
public enum XenStoreRecords {
    /// Largest payload of one record (64 MiB): a length above it is corruption, not data.
    public static let recordMax = 64 << 20
    /// Bytes before a record's payload (length + CRC).
    public static let headerSize = 8

    /// CRC-32C (Castagnoli, reflected, polynomial 0x82F63B78) of `bytes`.
    public static func crc32c<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    private static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    /// A framed record holding `changes`.
    public static func record(_ changes: [XenStoreChange]) -> [UInt8] {
        var payload: [UInt8] = []
        for c in changes { encode(c, into: &payload) }
        var out: [UInt8] = []
        out.reserveCapacity(payload.count + headerSize)
        appendU32(UInt32(payload.count), &out)
        appendU32(crc32c(payload), &out)
        out.append(contentsOf: payload)
        return out
    }

    /// `changes` framed as consecutive records, each payload at most `maxPayload` bytes (a
    /// change larger than that alone in its record: a single xenstore change is far smaller).
    /// A snapshot of a large store is several records, so none passes `recordMax`.
    public static func records(_ changes: [XenStoreChange], maxPayload: Int = recordMax) -> [UInt8] {
        var out: [UInt8] = []
        var payload: [UInt8] = []
        func flush() {
            guard !payload.isEmpty else { return }
            appendU32(UInt32(payload.count), &out)
            appendU32(crc32c(payload), &out)
            out.append(contentsOf: payload)
            payload.removeAll(keepingCapacity: true)
        }
        var one: [UInt8] = []
        for c in changes {
            one.removeAll(keepingCapacity: true)
            encode(c, into: &one)
            if !payload.isEmpty && payload.count + one.count > maxPayload { flush() }
            payload.append(contentsOf: one)
        }
        flush()
        return out
    }

    /// Reads the record starting at `offset` of `bytes`.
    /// - Returns: its changes and the offset after it; nil at the exact end of `bytes`.
    /// - Throws: `XenStoreRecordError` for a short header or payload (a torn write), a length
    ///   out of range, a CRC mismatch, or a payload that does not decode.
    public static func readRecord(_ bytes: [UInt8], at offset: Int) throws(XenStoreRecordError) -> ([XenStoreChange], Int)? {
        if offset == bytes.count { return nil }
        guard bytes.count - offset >= headerSize else {
            throw XenStoreRecordError(offset: offset, reason: "record header cut short (\(bytes.count - offset) of \(headerSize) bytes)")
        }
        let length = Int(u32(bytes, offset)), crc = u32(bytes, offset + 4)
        guard length >= 1, length <= recordMax else {
            throw XenStoreRecordError(offset: offset, reason: "record length \(length) out of range 1...\(recordMax)")
        }
        let start = offset + headerSize
        guard bytes.count - start >= length else {
            throw XenStoreRecordError(offset: offset, reason: "record of \(length) bytes cut short at \(bytes.count - start)")
        }
        let payload = bytes[start..<(start + length)]
        let actual = crc32c(payload)
        guard actual == crc else {
            throw XenStoreRecordError(offset: offset, reason: "record CRC-32C \(hex(actual)) does not match \(hex(crc))")
        }
        var changes: [XenStoreChange] = []
        var p = start
        while p < start + length {
            do { changes.append(try decode(bytes, &p, end: start + length)) } catch {
                throw XenStoreRecordError(offset: error.offset, reason: error.reason)
            }
        }
        return (changes, start + length)
    }

    // MARK: changes

    static func encode(_ c: XenStoreChange, into out: inout [UInt8]) {
        switch c {
        case .put(let path, let node):
            out.append(UInt8(ascii: "P"))
            appendString16(path, &out)
            appendU32(UInt32(node.value.count), &out)
            out.append(contentsOf: node.value)
            appendU16(UInt16(node.permissions.count), &out)
            for perm in node.permissions { appendString16(perm.description, &out) }
            appendU32(UInt32(node.children.count), &out)
            for child in node.children { appendString16(child, &out) }
        case .delete(let path):
            out.append(UInt8(ascii: "D"))
            appendString16(path, &out)
        case .introduce(let d):
            out.append(UInt8(ascii: "I"))
            appendU32(d, &out)
        case .release(let d):
            out.append(UInt8(ascii: "R"))
            appendU32(d, &out)
        }
    }

    static func decode(_ b: [UInt8], _ p: inout Int, end: Int) throws(XenStoreRecordError) -> XenStoreChange {
        let at = p
        let tagSlice = try take(b, &p, 1, end: end)
        let tag = tagSlice[tagSlice.startIndex]
        switch tag {
        case UInt8(ascii: "P"):
            let path = try path16(b, &p, end: end)
            let vlen = Int(try u32At(b, &p, end: end))
            guard vlen <= XenStoreLimits.payloadMax else {
                throw XenStoreRecordError(offset: at, reason: "value of \(path) is \(vlen) bytes (most \(XenStoreLimits.payloadMax))")
            }
            let value = Array(try take(b, &p, vlen, end: end))
            let np = Int(try u16At(b, &p, end: end))
            var perms: [XenStorePermission] = []
            for _ in 0..<np {
                let text = try string16(b, &p, end: end)
                guard let perm = XenStorePermission(text) else {
                    throw XenStoreRecordError(offset: at, reason: "permission \"\(text)\" of \(path) is not <n|r|w|b><domid>")
                }
                perms.append(perm)
            }
            guard !perms.isEmpty else { throw XenStoreRecordError(offset: at, reason: "node \(path) has no owner permission") }
            let nc = Int(try u32At(b, &p, end: end))
            var children: [String] = []
            for _ in 0..<nc {
                let leaf = try string16(b, &p, end: end)
                guard !leaf.isEmpty, XenStorePath.isValidAbsolute(XenStorePath.child(path, leaf)),
                      XenStorePath.leaf(XenStorePath.child(path, leaf)) == leaf else {
                    throw XenStoreRecordError(offset: at, reason: "child name \"\(leaf)\" of \(path) is not a path element")
                }
                children.append(leaf)
            }
            return .put(path: path, node: XenStoreNode(value: value, permissions: perms, children: children))
        case UInt8(ascii: "D"):
            let path = try path16(b, &p, end: end)
            guard path != "/" else { throw XenStoreRecordError(offset: at, reason: "deletes the root node") }
            return .delete(path: path)
        case UInt8(ascii: "I"), UInt8(ascii: "R"):
            let d = try u32At(b, &p, end: end)
            guard d != 0, d <= 65535 else { throw XenStoreRecordError(offset: at, reason: "domid \(d) out of range 1...65535") }
            return tag == UInt8(ascii: "I") ? .introduce(d) : .release(d)
        default:
            throw XenStoreRecordError(offset: at, reason: "unknown change tag 0x\(String(tag, radix: 16))")
        }
    }

    // MARK: primitives

    private static func take(_ b: [UInt8], _ p: inout Int, _ n: Int, end: Int) throws(XenStoreRecordError) -> ArraySlice<UInt8> {
        guard n >= 0, end - p >= n else { throw XenStoreRecordError(offset: p, reason: "change cut short (needs \(n) more bytes)") }
        defer { p += n }
        return b[p..<(p + n)]
    }

    private static func u16At(_ b: [UInt8], _ p: inout Int, end: Int) throws(XenStoreRecordError) -> UInt16 {
        let s = try take(b, &p, 2, end: end)
        return UInt16(s[s.startIndex]) | UInt16(s[s.startIndex + 1]) << 8
    }

    private static func u32At(_ b: [UInt8], _ p: inout Int, end: Int) throws(XenStoreRecordError) -> UInt32 {
        _ = try take(b, &p, 4, end: end)
        return u32(b, p - 4)
    }

    private static func string16(_ b: [UInt8], _ p: inout Int, end: Int) throws(XenStoreRecordError) -> String {
        let n = Int(try u16At(b, &p, end: end))
        let bytes = try take(b, &p, n, end: end)
        guard let s = String(validating: bytes, as: UTF8.self), !s.utf8.contains(0) else {
            throw XenStoreRecordError(offset: p - n, reason: "a name is not UTF-8 text")
        }
        return s
    }

    private static func path16(_ b: [UInt8], _ p: inout Int, end: Int) throws(XenStoreRecordError) -> String {
        let at = p
        let s = try string16(b, &p, end: end)
        guard s == "/" || XenStorePath.isValidAbsolute(s) else {
            throw XenStoreRecordError(offset: at, reason: "\"\(s.prefix(80))\" is not an absolute xenstore path")
        }
        return s
    }

    static func u32(_ b: [UInt8], _ o: Int) -> UInt32 {
        UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24
    }

    static func appendU16(_ v: UInt16, _ out: inout [UInt8]) {
        out.append(UInt8(v & 0xFF)); out.append(UInt8(v >> 8))
    }

    static func appendU32(_ v: UInt32, _ out: inout [UInt8]) {
        for s in stride(from: 0, to: 32, by: 8) { out.append(UInt8((v >> UInt32(s)) & 0xFF)) }
    }

    private static func appendString16(_ s: String, _ out: inout [UInt8]) {
        appendU16(UInt16(s.utf8.count), &out)
        out.append(contentsOf: s.utf8)
    }

    private static func hex(_ v: UInt32) -> String {
        let h = String(v, radix: 16)
        return "0x" + String(repeating: "0", count: 8 - h.count) + h
    }
}

/// A store rebuilt from changes, checked before a daemon serves it: every listed child
/// exists, every node but the root is listed by its parent, the root exists.
public struct XenStoreStoreState: Sendable {
    /// Nodes by absolute path.
    public var nodes: [String: XenStoreNode] = [:]
    /// Introduced domains.
    public var introduced: Set<UInt32> = []

    /// An empty state (no root: `inconsistency()` says so until a snapshot is applied).
    public init() {}

    /// Applies changes in order (a delete of an absent node, a release of an unknown domain
    /// are no-ops: replaying a record twice is harmless).
    public mutating func apply(_ changes: [XenStoreChange]) {
        for c in changes {
            switch c {
            case .put(let path, let node): nodes[path] = node
            case .delete(let path): nodes[path] = nil
            case .introduce(let d): introduced.insert(d)
            case .release(let d): introduced.remove(d)
            }
        }
    }

    /// The first inconsistency of the tree, or nil when it is a tree.
    public func inconsistency() -> String? {
        guard nodes["/"] != nil else { return "no root node" }
        for (path, node) in nodes {
            for c in node.children where nodes[XenStorePath.child(path, c)] == nil {
                return "\(path) lists child \(c), which does not exist"
            }
            if path != "/" {
                guard let parent = XenStorePath.parent(path), let pn = nodes[parent],
                      pn.children.contains(XenStorePath.leaf(path)) else {
                    return "\(path) is not listed by its parent"
                }
            }
        }
        return nil
    }
}
