// Reading and checking the stream (README.md §1): every length is checked before anything
// is read or allocated by it; the one payload buffer is 1 MiB, allocated once.

/// One frame as read and checked by `FrameReader.next()`.
public enum Frame {
    /// Engine-stream bytes; the buffer is valid until the next `next()` call.
    case data(UnsafeRawBufferPointer)
    /// The end frame, already checked against the data read (count, bytes, CRC).
    case end(EndRecord)
    /// An ack frame (receiver → sender).
    case ack(EndRecord)
    /// An abort frame and its reason.
    case abort(String)
}

/// The payload buffer, one per reader.
final class PayloadBuffer {
    let storage: UnsafeMutableRawBufferPointer
    init(_ size: Int) { storage = .allocate(byteCount: size, alignment: 16) }
    deinit { storage.deallocate() }
}

/// Reads a stream from a handed descriptor (the save file or the peer socket) and checks it.
public struct FrameReader {
    /// Where the stream comes from.
    public let input: Descriptor
    /// Bytes read from `input` so far: the byte offset of the stream reached.
    public private(set) var offset: UInt64 = 0
    /// Frames read so far, of every type.
    public private(set) var framesRead: UInt64 = 0
    /// Engine-stream bytes and data frames read so far, and the CRC-32C of those bytes.
    public private(set) var dataBytes: UInt64 = 0
    public private(set) var dataFrames: UInt64 = 0
    public private(set) var dataChecksum: UInt32 = 0
    private let buffer = PayloadBuffer(StreamFormat.maxPayload)

    /// A reader at the current offset of `input`; its one 1 MiB payload buffer is allocated here.
    public init(input: Descriptor) { self.input = input }

    /// Reads exactly `count` bytes into `to`, or throws `.truncated(what)` at EOF.
    private mutating func readExactly(_ to: UnsafeMutableRawPointer, _ count: Int, _ what: @autoclosure () -> String) throws(MigrationError) {
        let n = try input.readFull(to, count)
        offset += UInt64(n)
        guard n == count else { throw .truncated(what: what(), offset: offset) }
    }

    private mutating func readBytes(_ count: Int, _ what: @autoclosure () -> String) throws(MigrationError) -> [UInt8] {
        precondition(count <= StreamFormat.maxPayload + 64)   // callers check before
        var out = [UInt8](repeating: 0, count: count)
        try withMutableBytes(&out) { (p) throws(MigrationError) in
            if count > 0 { try readExactly(p.baseAddress!, count, what()) }
        }
        return out
    }

    /// Reads and checks the envelope and the stream header (README.md §1, offsets 0...40+L).
    /// - Returns: the domain's SXP configuration text.
    /// - Throws: `.notAGuestStateFile`, `.configLength`, `.configNotText`, `.truncated`,
    ///   `.notAStream`, `.newerVersion`, `.badVersion`, `.headerChecksum`, `.configChecksum`, `.io`.
    public mutating func readStart() throws(MigrationError) -> String {
        var sig = [UInt8](repeating: 0, count: SaveEnvelope.signature.count)
        let got = try withMutableBytes(&sig) { (p) throws(MigrationError) in try input.readFull(p.baseAddress!, p.count) }
        offset += UInt64(got)
        guard got == sig.count, sig == SaveEnvelope.signature else {
            throw .notAGuestStateFile(found: SaveEnvelope.printable(sig[0..<got]))
        }
        let lengthBytes = try readBytes(4, "the configuration length")
        let length = BigEndian.u32(lengthBytes, 0)
        try SaveEnvelope.check(configLength: length)
        let text = try readBytes(Int(length), "the configuration (\(length) bytes)")
        let config = try SaveEnvelope.decodeConfig(text)
        let header = try readBytes(StreamFormat.headerSize, "the stream header")
        try StreamFormat.checkHeader(header, configCRC: CRC32C.checksum(text))
        return config
    }

    /// Reads and checks the next frame. A data frame's bytes join the running count and CRC;
    /// an end frame is checked against them.
    /// - Throws: `.missingEnd` (EOF between frames), `.truncated`, `.unknownFrameType`,
    ///   `.frameTooLarge`, `.frameLength`, `.frameChecksum`, `.endMismatch`, `.io`.
    public mutating func next() throws(MigrationError) -> Frame {
        let start = offset
        let number = framesRead + 1
        var head = (UInt64(0))   // 8 bytes: type, length
        let got = try withUnsafeMutableBytes(of: &head) { (p) throws(MigrationError) in try input.readFull(p.baseAddress!, 8) }
        offset += UInt64(got)
        if got == 0 { throw .missingEnd(offset: offset) }
        guard got == 8 else { throw .truncated(what: "frame \(number) (its header)", offset: offset) }
        let (rawType, length) = withUnsafeBytes(of: &head) { (BigEndian.u32($0, 0), BigEndian.u32($0, 4)) }
        guard let type = FrameType(rawValue: rawType) else {
            throw .unknownFrameType(rawType, frame: number, offset: start)
        }
        // The length is checked before it sizes any read: no allocation follows a header field.
        guard Int(length) <= StreamFormat.maxPayload else {
            throw .frameTooLarge(length: length, limit: StreamFormat.maxPayload, frame: number, offset: start)
        }
        guard type.allowedLengths.contains(Int(length)) else {
            throw .frameLength(type: type.name, length: length, frame: number, offset: start)
        }
        let payload = UnsafeRawBufferPointer(rebasing: buffer.storage[0..<Int(length)])
        if length > 0 {
            try readExactly(buffer.storage.baseAddress!, Int(length), "frame \(number) (its \(length)-byte payload)")
        }
        var trailer = UInt32(0)
        try withUnsafeMutableBytes(of: &trailer) { (p) throws(MigrationError) in
            try readExactly(p.baseAddress!, 4, "frame \(number) (its CRC)")
        }
        // Each payload byte is read once: its CRC serves the frame check and the stream's.
        let payloadCRC = CRC32C.checksum(payload)
        let headCRC = withUnsafeBytes(of: &head) { CRC32C.checksum($0) }
        guard CRC32C.combine(headCRC, payloadCRC, lengthB: Int(length)) == UInt32(bigEndian: trailer) else {
            throw .frameChecksum(frame: number, offset: start)
        }
        framesRead = number

        switch type {
        case .data:
            dataChecksum = CRC32C.combine(dataChecksum, payloadCRC, lengthB: Int(length))
            dataBytes += UInt64(length); dataFrames += 1
            return .data(payload)
        case .end:
            let end = EndRecord(payload)
            guard end.frames == dataFrames else { throw .endMismatch(what: "data frame count", expected: end.frames, found: dataFrames) }
            guard end.bytes == dataBytes else { throw .endMismatch(what: "byte count", expected: end.bytes, found: dataBytes) }
            guard end.checksum == dataChecksum else {
                throw .endMismatch(what: "stream CRC-32C", expected: UInt64(end.checksum), found: UInt64(dataChecksum))
            }
            return .end(end)
        case .ack:
            return .ack(EndRecord(payload))
        case .abort:
            return .abort(String(decoding: payload, as: UTF8.self))
        }
    }

    /// Checks that `input` holds nothing after the end frame (a file).
    /// - Throws: `.trailingData`, `.io`.
    public mutating func expectEOF() throws(MigrationError) {
        var byte: UInt8 = 0
        if try input.readSome(&byte, 1) != 0 { throw .trailingData(offset: offset) }
    }
}
