// The framed stream after the envelope (README.md §1): header, then frames of type, length,
// payload and CRC-32C. Pure encoding and decoding of fixed-size parts; no I/O.

/// Constants and fixed-size parts of the Xenith stream, format version 1.
public enum StreamFormat {
    /// The stream header's magic, 8 ASCII bytes.
    public static let magic: [UInt8] = Array("XNTHSTRM".utf8)
    /// The format version this code writes and the newest it reads.
    public static let version: UInt32 = 1
    /// Stream header size in bytes: magic, version, config CRC, header CRC.
    public static let headerSize = 20
    /// Frame header size (type, length) and trailer size (CRC), in bytes.
    public static let frameHeaderSize = 8, frameTrailerSize = 4
    /// The largest payload of any frame, in bytes (1 MiB).
    public static let maxPayload = 1 << 20
    /// The largest abort reason, in bytes.
    public static let maxReason = 4096
    /// The end frame's (and ack frame's) payload size: u64 bytes, u64 frames, u32 CRC.
    public static let endPayloadSize = 20

    /// The stream header for a config whose CRC-32C is `configCRC`.
    public static func header(configCRC: UInt32) -> [UInt8] {
        var out = magic
        BigEndian.append(version, to: &out)
        BigEndian.append(configCRC, to: &out)
        BigEndian.append(CRC32C.checksum(out), to: &out)
        return out
    }

    /// Checks a 20-byte stream header against the config's CRC, in this order: magic,
    /// version (a newer one is refused by name), header CRC, config CRC.
    /// - Throws: `.notAStream`, `.newerVersion`, `.badVersion`, `.headerChecksum`, `.configChecksum`.
    public static func checkHeader(_ h: [UInt8], configCRC: UInt32) throws(MigrationError) {
        precondition(h.count == headerSize)
        guard Array(h[0..<8]) == magic else { throw .notAStream(found: SaveEnvelope.printable(h[0..<8])) }
        let v = BigEndian.u32(h, 8)
        guard v <= version else { throw .newerVersion(v) }
        guard v >= 1 else { throw .badVersion(v) }
        guard BigEndian.u32(h, 16) == CRC32C.checksum(h[0..<16]) else { throw .headerChecksum }
        guard BigEndian.u32(h, 12) == configCRC else { throw .configChecksum }
    }
}

/// A frame's type (README.md §1, "Frame types").
public enum FrameType: UInt32, Sendable {
    /// The next 1...1 MiB bytes of the engine stream.
    case data = 1
    /// The last frame: `EndRecord`.
    case end = 2
    /// The writer gave up: a UTF-8 reason of at most 4096 bytes.
    case abort = 3
    /// Receiver → sender: the `EndRecord` it acknowledges.
    case ack = 4

    /// The payload lengths this type allows, in bytes.
    var allowedLengths: ClosedRange<Int> {
        switch self {
        case .data: return 1...StreamFormat.maxPayload
        case .end, .ack: return StreamFormat.endPayloadSize...StreamFormat.endPayloadSize
        case .abort: return 0...StreamFormat.maxReason
        }
    }

    var name: String {
        switch self { case .data: "data"; case .end: "end"; case .abort: "abort"; case .ack: "ack" }
    }
}

/// The end frame's payload: what the reader must have seen (README.md §1).
public struct EndRecord: Sendable, Equatable {
    /// Engine-stream bytes in all data frames.
    public var bytes: UInt64
    /// Number of data frames.
    public var frames: UInt64
    /// CRC-32C of all data bytes in order.
    public var checksum: UInt32

    /// The record for `bytes` engine-stream bytes in `frames` data frames with CRC-32C `checksum`.
    public init(bytes: UInt64, frames: UInt64, checksum: UInt32) {
        self.bytes = bytes; self.frames = frames; self.checksum = checksum
    }

    /// The 20-byte payload.
    public var encoded: [UInt8] {
        var out: [UInt8] = []
        BigEndian.append(bytes, to: &out); BigEndian.append(frames, to: &out); BigEndian.append(checksum, to: &out)
        return out
    }

    /// Decodes a 20-byte payload (the caller has checked the length).
    init(_ p: UnsafeRawBufferPointer) {
        bytes = BigEndian.u64(p, 0); frames = BigEndian.u64(p, 8); checksum = BigEndian.u32(p, 16)
    }
}
