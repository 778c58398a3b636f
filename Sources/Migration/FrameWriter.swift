// Writing the stream (README.md §1): envelope and header, data frames, end or abort frame.
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Writes a stream onto a handed descriptor (the save file or the peer socket), paced
/// when given a `Pacer`, counting what it wrote.
public struct FrameWriter {
    /// Where the frames go.
    public let output: Descriptor
    /// The pacer for the bytes written, if any.
    public var pacer: Pacer?
    /// Bytes written to `output` so far (envelope, header and frames).
    public private(set) var wireBytes: UInt64 = 0
    /// Engine-stream bytes and data frames written so far, and the CRC-32C of those bytes.
    public private(set) var dataBytes: UInt64 = 0
    public private(set) var dataFrames: UInt64 = 0
    public private(set) var dataChecksum: UInt32 = 0

    /// Bytes after which the writer starts the file's writeback of what it wrote so far
    /// (sync_file_range SYNC_FILE_RANGE_WRITE, not waiting), so the final fdatasync has
    /// only the tail left: the disk writes while the engine still streams. 0: never (a
    /// socket, or a caller that does not sync).
    public var writeBehindBytes: UInt64 = 0
    /// Bytes of `output` whose writeback was started.
    private(set) var writebackStarted: UInt64 = 0

    /// A writer onto `output`, paced by `pacer` when given.
    public init(output: Descriptor, pacer: Pacer? = nil) { self.output = output; self.pacer = pacer }

    /// Starts the writeback of what was written since the last start, once that is at least
    /// ``writeBehindBytes``. Failure is ignored: the final fdatasync reports any error.
    private mutating func writeBehind() {
        guard writeBehindBytes > 0, wireBytes - writebackStarted >= writeBehindBytes else { return }
        _ = clinux_start_writeback(output.fd, Int64(writebackStarted), Int64(wireBytes - writebackStarted))
        writebackStarted = wireBytes
    }

    /// Writes the envelope (signature, length, `config`) and the stream header.
    /// - Throws: `MigrationError` for a config that cannot be enveloped, or a write error.
    public mutating func writeStart(config: String) throws(MigrationError) {
        let envelope = try SaveEnvelope.encode(config: config)
        let header = StreamFormat.header(configCRC: CRC32C.checksum(config.utf8))
        try put(envelope + header)
    }

    /// Writes raw bytes (the envelope and header), paced and counted.
    mutating func put(_ bytes: [UInt8]) throws(MigrationError) {
        pacer?.consume(bytes.count)
        try output.writeAll(bytes)
        wireBytes += UInt64(bytes.count)
    }

    /// Writes `count` engine-stream bytes at `bytes` as data frames of at most 1 MiB each.
    /// - Throws: `MigrationError.io`.
    public mutating func writeData(_ bytes: UnsafeRawPointer, _ count: Int) throws(MigrationError) {
        var done = 0
        while done < count {
            let n = min(count - done, StreamFormat.maxPayload)
            let payload = UnsafeRawBufferPointer(start: bytes + done, count: n)
            let payloadCRC = try writeFrame(.data, payload)
            dataChecksum = CRC32C.combine(dataChecksum, payloadCRC, lengthB: n)
            dataBytes += UInt64(n); dataFrames += 1
            done += n
        }
    }

    /// Writes the end frame for what was written and returns it.
    /// - Throws: `MigrationError.io`.
    @discardableResult
    public mutating func writeEnd() throws(MigrationError) -> EndRecord {
        let end = EndRecord(bytes: dataBytes, frames: dataFrames, checksum: dataChecksum)
        try withBytes(end.encoded) { (p) throws(MigrationError) in try writeFrame(.end, p) }
        return end
    }

    /// Writes an abort frame carrying `reason` (cut to 4096 bytes at a character boundary).
    /// - Throws: `MigrationError.io`.
    public mutating func writeAbort(reason: String) throws(MigrationError) {
        let bytes = Array(truncatedUTF8(reason, to: StreamFormat.maxReason).utf8)
        try withBytes(bytes) { (p) throws(MigrationError) in try writeFrame(.abort, p) }
    }

    /// Writes an ack frame for `end` (receiver → sender).
    /// - Throws: `MigrationError.io`.
    public mutating func writeAck(_ end: EndRecord) throws(MigrationError) {
        try withBytes(end.encoded) { (p) throws(MigrationError) in try writeFrame(.ack, p) }
    }

    /// One frame: type and length, payload, CRC-32C of the three, in one writev. Each
    /// payload byte is read once: its CRC is combined with the header's.
    /// - Returns: the CRC-32C of the payload alone.
    @discardableResult
    mutating func writeFrame(_ type: FrameType, _ payload: UnsafeRawBufferPointer) throws(MigrationError) -> UInt32 {
        precondition(type.allowedLengths.contains(payload.count))
        var head: [UInt8] = []
        BigEndian.append(type.rawValue, to: &head)
        BigEndian.append(UInt32(payload.count), to: &head)
        let payloadCRC = CRC32C.checksum(payload)
        var tail: [UInt8] = []
        BigEndian.append(CRC32C.combine(CRC32C.checksum(head), payloadCRC, lengthB: payload.count), to: &tail)
        let total = head.count + payload.count + tail.count
        pacer?.consume(total)
        try withBytes(head) { (h) throws(MigrationError) in
            try withBytes(tail) { (t) throws(MigrationError) in
                try writeVectored([h, payload, t])
            }
        }
        wireBytes += UInt64(total)
        writeBehind()
        return payloadCRC
    }

    /// writev of `parts` until every byte is out (short writes continue where they stopped).
    private func writeVectored(_ parts: [UnsafeRawBufferPointer]) throws(MigrationError) {
        var rest = parts.filter { $0.count > 0 }
        while !rest.isEmpty {
            var iov = rest.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
            let n = writev(output.fd, &iov, Int32(iov.count))
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(operation: "writing the \(output.role)", errno: errno)
            }
            var left = n
            while left > 0, let first = rest.first {
                if left >= first.count { left -= first.count; rest.removeFirst() }
                else { rest[0] = UnsafeRawBufferPointer(rebasing: first[left...]); left = 0 }
            }
        }
    }
}

/// `s` cut to at most `limit` UTF-8 bytes without splitting a character.
func truncatedUTF8(_ s: String, to limit: Int) -> String {
    if s.utf8.count <= limit { return s }
    var out = ""
    for ch in s {
        if out.utf8.count + String(ch).utf8.count > limit { break }
        out.append(ch)
    }
    return out
}
