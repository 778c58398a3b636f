// The xenstore wire protocol: message header, type numbers and error strings.
// Spec: Xen docs/misc/xenstore.txt and xen/include/public/io/xs_wire.h.

/// Message types of the xenstore wire protocol (`enum xsd_sockmsg_type`, xs_wire.h).
/// The numbers are the wire values of the header's `type` field.
public enum XenStoreMessageType: UInt32, Sendable, CaseIterable {
    /// `XS_CONTROL` (formerly `XS_DEBUG`): implementation-specific daemon commands.
    case control = 0
    case directory = 1
    case read = 2
    case getPerms = 3
    case watch = 4
    case unwatch = 5
    case transactionStart = 6
    case transactionEnd = 7
    case introduce = 8
    case release = 9
    case getDomainPath = 10
    case write = 11
    case mkdir = 12
    case rm = 13
    case setPerms = 14
    /// Unsolicited event `<epath>|<token>|`, `req_id` and `tx_id` 0.
    case watchEvent = 15
    /// Error reply: payload is the errno name, e.g. `ENOENT|`.
    case error = 16
    case isDomainIntroduced = 17
    case resume = 18
    case setTarget = 19
    /// `XS_RESTRICT <domid>|`: the connection from now on acts as that (unprivileged) domain.
    case restrict = 20
    case resetWatches = 21
    case directoryPart = 22
}

/// The error names a daemon may send in an `XS_ERROR` reply (`xsd_errors`, xs_wire.h).
/// The name, not the number, is transmitted. A client maps an unknown name to `EINVAL`,
/// as libxenstore does.
public enum XenStoreErrorCode: String, Sendable, CaseIterable, Error {
    case EINVAL, EACCES, EEXIST, EISDIR, ENOENT, ENOMEM, ENOSPC, EIO, ENOTEMPTY
    case ENOSYS, EROFS, EBUSY, EAGAIN, EISCONN, E2BIG
    /// oxenstored's quota error; this daemon sends `ENOSPC` for quotas (the name C clients know),
    /// clients accept both.
    case EQUOTA

    /// Parses an error payload (`E<name>` with or without its NUL); unknown names are `EINVAL`.
    public init(payload: some Collection<UInt8>) {
        var name = String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self)
        if name.isEmpty { name = "EINVAL" }
        self = XenStoreErrorCode(rawValue: name) ?? .EINVAL
    }
}

/// Protocol limits (xs_wire.h).
public enum XenStoreLimits {
    /// `XENSTORE_PAYLOAD_MAX`: bytes of payload after the 16-byte header, both directions.
    public static let payloadMax = 4096
    /// `XENSTORE_ABS_PATH_MAX`: bytes of an absolute path.
    public static let absolutePathMax = 3072
    /// `XENSTORE_REL_PATH_MAX`: bytes of a relative path as sent by a domain.
    public static let relativePathMax = 2048
    /// Size of `struct xsd_sockmsg` in bytes.
    public static let headerSize = 16
}

/// One protocol message: `struct xsd_sockmsg` (four little-endian `uint32_t`: type, req_id,
/// tx_id, len) followed by `len` payload bytes.
public struct XenStoreMessage: Sendable, Equatable {
    /// Raw type; see `XenStoreMessageType` for the known values.
    public var type: UInt32
    /// Request identifier, echoed in the reply.
    public var requestID: UInt32
    /// Transaction id, 0 outside a transaction.
    public var transactionID: UInt32
    /// Payload bytes (at most `XenStoreLimits.payloadMax`).
    public var payload: [UInt8]

    public init(type: UInt32, requestID: UInt32 = 0, transactionID: UInt32 = 0, payload: [UInt8] = []) {
        self.type = type
        self.requestID = requestID
        self.transactionID = transactionID
        self.payload = payload
    }

    public init(_ type: XenStoreMessageType, requestID: UInt32 = 0, transactionID: UInt32 = 0, payload: [UInt8] = []) {
        self.init(type: type.rawValue, requestID: requestID, transactionID: transactionID, payload: payload)
    }

    /// Builds a payload of NUL-terminated strings (`<a>|<b>|`).
    public init(_ type: XenStoreMessageType, requestID: UInt32 = 0, transactionID: UInt32 = 0, strings: [String]) {
        var p: [UInt8] = []
        for s in strings { p.append(contentsOf: s.utf8); p.append(0) }
        self.init(type, requestID: requestID, transactionID: transactionID, payload: p)
    }

    /// The known type, or nil for a number this protocol version does not define.
    public var knownType: XenStoreMessageType? { XenStoreMessageType(rawValue: type) }

    /// Wire bytes: 16-byte little-endian header followed by the payload.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(XenStoreLimits.headerSize + payload.count)
        for v in [type, requestID, transactionID, UInt32(payload.count)] {
            out.append(UInt8(truncatingIfNeeded: v))
            out.append(UInt8(truncatingIfNeeded: v >> 8))
            out.append(UInt8(truncatingIfNeeded: v >> 16))
            out.append(UInt8(truncatingIfNeeded: v >> 24))
        }
        out.append(contentsOf: payload)
        return out
    }

    /// A decoded header: (type, req_id, tx_id, len). `bytes` must hold at least 16 bytes
    /// starting at `offset`.
    public static func decodeHeader(_ bytes: [UInt8], at offset: Int = 0) -> (type: UInt32, requestID: UInt32, transactionID: UInt32, length: UInt32) {
        precondition(bytes.count - offset >= XenStoreLimits.headerSize)
        func u32(_ o: Int) -> UInt32 {
            UInt32(bytes[offset + o]) | UInt32(bytes[offset + o + 1]) << 8
                | UInt32(bytes[offset + o + 2]) << 16 | UInt32(bytes[offset + o + 3]) << 24
        }
        return (u32(0), u32(4), u32(8), u32(12))
    }

    /// The payload split at NUL bytes into strings. A final string without a terminating NUL
    /// is included as well; `terminated` tells whether the payload ended with a NUL.
    public func strings() -> (strings: [String], terminated: Bool) {
        var result: [String] = []
        var start = 0
        for i in payload.indices where payload[i] == 0 {
            result.append(String(decoding: payload[start..<i], as: UTF8.self))
            start = i + 1
        }
        let terminated = start == payload.count
        if !terminated { result.append(String(decoding: payload[start...], as: UTF8.self)) }
        return (result, terminated)
    }
}

/// An incremental decoder of a byte stream into messages. `feed` appends received bytes;
/// `next()` returns complete messages. A header announcing more than `payloadMax` bytes is a
/// protocol violation (Xen kills such a connection): `next()` then throws.
public struct XenStoreMessageDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0

    /// Thrown when a header's `len` exceeds `XenStoreLimits.payloadMax`.
    public struct OversizedPayload: Error, Sendable { public var length: UInt32 }

    public init() {}

    /// Appends received bytes.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        buffer.append(contentsOf: bytes)
    }
    public mutating func feed(_ bytes: [UInt8]) { buffer.append(contentsOf: bytes) }

    /// Bytes received but not yet returned as messages.
    public var pendingBytes: Int { buffer.count - start }

    /// The next complete message, or nil if more bytes are needed.
    /// - Throws: `OversizedPayload` for a header with `len > 4096`.
    public mutating func next() throws(OversizedPayload) -> XenStoreMessage? {
        guard buffer.count - start >= XenStoreLimits.headerSize else { compact(); return nil }
        let h = XenStoreMessage.decodeHeader(buffer, at: start)
        guard h.length <= UInt32(XenStoreLimits.payloadMax) else { throw OversizedPayload(length: h.length) }
        let total = XenStoreLimits.headerSize + Int(h.length)
        guard buffer.count - start >= total else { compact(); return nil }
        let p = Array(buffer[(start + XenStoreLimits.headerSize)..<(start + total)])
        start += total
        if start == buffer.count { buffer.removeAll(keepingCapacity: true); start = 0 }
        return XenStoreMessage(type: h.type, requestID: h.requestID, transactionID: h.transactionID, payload: p)
    }

    private mutating func compact() {
        if start > 0 && start >= 4096 {
            buffer.removeFirst(start)
            start = 0
        }
    }
}
