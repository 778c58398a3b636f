// The status channel between xend and the migration service (README.md §3): typed,
// length-prefixed messages on a connected stream socket, never log text.

/// The final figures of a successful run (README.md §3, `done`).
public struct Summary: Sendable, Equatable {
    /// Engine-stream bytes moved (QEMU's migration stream).
    public var bytes: UInt64
    /// Bytes written to or read from fd 4 (envelope, header and frames included).
    public var wireBytes: UInt64
    /// Data frames.
    public var frames: UInt64
    /// Wall time of the run, in microseconds (from the first byte to the end frame).
    public var microseconds: UInt64
    /// CRC-32C of the engine stream.
    public var checksum: UInt32

    /// The figures as named above.
    public init(bytes: UInt64, wireBytes: UInt64, frames: UInt64, microseconds: UInt64, checksum: UInt32) {
        self.bytes = bytes; self.wireBytes = wireBytes; self.frames = frames
        self.microseconds = microseconds; self.checksum = checksum
    }
}

/// One status message. Direction and order per mode are in README.md §2–3.
public enum StatusMessage: Sendable, Equatable {
    /// The domain's SXP: xend → service for save and send (first message); service → xend
    /// for verify, restore and receive, once the envelope is checked.
    case config(String)
    /// Engine-stream bytes so far and the rate over the last interval (bytes per second).
    case progress(bytes: UInt64, bytesPerSecond: UInt64)
    /// Save/send: the engine closed its stream after `bytes` bytes with CRC-32C `checksum`;
    /// the service now waits for `commit` or `abort`.
    case drained(bytes: UInt64, checksum: UInt32)
    /// xend → service: QEMU reported the migration completed; write the end frame.
    case commit
    /// xend → service: do not commit; write an abort frame with this reason and fail.
    case abort(String)
    /// The last message of a successful run.
    case done(Summary)
    /// The last message of a failed run: the reason.
    case failed(String)

    /// The wire type numbers (README.md §3).
    public enum Kind: UInt32, Sendable {
        case config = 1, progress = 2, drained = 3, commit = 4, abort = 5, done = 6, failed = 7
    }

    /// The largest payload of any message, in bytes (a 1 MiB config plus room).
    public static let maxPayload = SaveEnvelope.maxConfigBytes + 64

    /// The message's wire type.
    public var kind: Kind {
        switch self {
        case .config: .config; case .progress: .progress; case .drained: .drained; case .commit: .commit
        case .abort: .abort; case .done: .done; case .failed: .failed
        }
    }

    /// The message on the wire: u32 type, u32 payload length, payload (all big-endian).
    public var encoded: [UInt8] {
        var p: [UInt8] = []
        switch self {
        case .config(let sxp): p = Array(sxp.utf8)
        case .progress(let bytes, let rate): BigEndian.append(bytes, to: &p); BigEndian.append(rate, to: &p)
        case .drained(let bytes, let crc): BigEndian.append(bytes, to: &p); BigEndian.append(crc, to: &p)
        case .commit: break
        case .abort(let reason), .failed(let reason): p = Array(truncatedUTF8(reason, to: StreamFormat.maxReason).utf8)
        case .done(let s):
            BigEndian.append(s.bytes, to: &p); BigEndian.append(s.wireBytes, to: &p); BigEndian.append(s.frames, to: &p)
            BigEndian.append(s.microseconds, to: &p); BigEndian.append(s.checksum, to: &p)
        }
        var out: [UInt8] = []
        BigEndian.append(kind.rawValue, to: &out)
        BigEndian.append(UInt32(p.count), to: &out)
        return out + p
    }

    /// Decodes one message's payload of type `type`.
    /// - Throws: `MigrationError.statusProtocol` for an unknown type or a wrong payload size.
    public static func decode(type: UInt32, payload p: [UInt8]) throws(MigrationError) -> StatusMessage {
        guard let kind = Kind(rawValue: type) else { throw .statusProtocol("unknown message type \(type)") }
        func need(_ n: Int) throws(MigrationError) {
            guard p.count == n else { throw .statusProtocol("\(kind) message of \(p.count) bytes, expected \(n)") }
        }
        switch kind {
        case .config:
            guard let s = try? SaveEnvelope.decodeConfig(p) else { throw .statusProtocol("config message is not UTF-8 text without NUL") }
            return .config(s)
        case .progress: try need(16); return .progress(bytes: BigEndian.u64(p, 0), bytesPerSecond: BigEndian.u64(p, 8))
        case .drained: try need(12); return .drained(bytes: BigEndian.u64(p, 0), checksum: BigEndian.u32(p, 8))
        case .commit: try need(0); return .commit
        case .abort: return .abort(String(decoding: p, as: UTF8.self))
        case .failed: return .failed(String(decoding: p, as: UTF8.self))
        case .done:
            try need(36)
            return .done(Summary(bytes: BigEndian.u64(p, 0), wireBytes: BigEndian.u64(p, 8), frames: BigEndian.u64(p, 16),
                                 microseconds: BigEndian.u64(p, 24), checksum: BigEndian.u32(p, 32)))
        }
    }
}

/// The status channel (fd 5): sends and receives `StatusMessage`s, one blocking call each.
/// xend can use the same type on its end of the socketpair.
public struct StatusChannel: Sendable {
    /// The channel's descriptor.
    public let channel: Descriptor

    /// The channel on `channel` (fd 5 in the service; xend's end of the socketpair in xend).
    public init(_ channel: Descriptor) { self.channel = channel }

    /// Sends `message`.
    /// - Throws: `MigrationError.io` (EPIPE when the other end is gone).
    public func send(_ message: StatusMessage) throws(MigrationError) {
        try channel.writeAll(message.encoded)
    }

    /// Receives the next message; nil at EOF on a message boundary.
    /// - Throws: `.statusProtocol` for a truncated, oversized or malformed message, `.io`.
    public func receive() throws(MigrationError) -> StatusMessage? {
        var head = [UInt8](repeating: 0, count: 8)
        let got = try withMutableBytes(&head) { (p) throws(MigrationError) in try channel.readFull(p.baseAddress!, 8) }
        if got == 0 { return nil }
        guard got == 8 else { throw .statusProtocol("the channel closed inside a message header") }
        let type = BigEndian.u32(head, 0), length = BigEndian.u32(head, 4)
        guard Int(length) <= StatusMessage.maxPayload else {
            throw .statusProtocol("message of \(length) bytes, more than the limit of \(StatusMessage.maxPayload)")
        }
        var payload = [UInt8](repeating: 0, count: Int(length))
        let n = try withMutableBytes(&payload) { (p) throws(MigrationError) in
            length == 0 ? 0 : try channel.readFull(p.baseAddress!, p.count)
        }
        guard n == Int(length) else { throw .statusProtocol("the channel closed inside a message of \(length) bytes") }
        return try StatusMessage.decode(type: type, payload: payload)
    }
}
