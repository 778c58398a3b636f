// save and send (README.md §2): the engine's stream → frames → the file or the peer.

/// The sending side: `save` (onto a file) and `send` (onto a connected peer socket).
public enum Sender {
    /// A save file's writeback is started every this many bytes (see ``FrameWriter/writeBehindBytes``).
    public static let writeBehindBytes: UInt64 = 8 << 20

    /// Runs a save or a send to completion.
    ///
    /// Order: receive `config` from xend; write the envelope and header; copy the engine
    /// stream (read to EOF) into data frames, reporting `progress`; report `drained`; on
    /// xend's `commit` write the end frame (and fdatasync a file); with `expectAck`, wait
    /// for the receiver's ack of exactly that end frame. Any failure after the header
    /// writes an abort frame (best effort) before it is thrown.
    /// - Parameters:
    ///   - engine: the engine's state stream (fd 3, a pipe from QEMU's `migrate fd:`).
    ///   - output: the save file or the connected peer socket (fd 4).
    ///   - status: the status channel to xend (fd 5).
    ///   - pacer: paces every byte written to `output`, if given.
    ///   - expectAck: wait for the receiver's ack (send) or not (save).
    ///   - progressInterval: nanoseconds between progress messages (0: none).
    /// - Returns: the final figures, also what the caller sends as `done`.
    /// - Throws: `MigrationError`: `.statusProtocol` (no config, no commit), `.abandoned`
    ///   (xend's abort), `.notAcknowledged`, `.io` on any descriptor.
    public static func run(engine: Descriptor, output: Descriptor, status: StatusChannel, pacer: Pacer?,
                           expectAck: Bool, progressInterval: UInt64 = 250_000_000) throws(MigrationError) -> Summary {
        guard let first = try status.receive() else {
            throw .statusProtocol("xend closed the channel before sending the domain configuration")
        }
        guard case .config(let config) = first else {
            throw .statusProtocol("expected the domain configuration first, got a \(first.kind) message")
        }
        var writer = FrameWriter(output: output, pacer: pacer)
        // A save file is fdatasynced before done: have the disk write it as it comes.
        if !expectAck, output.isRegularFile { writer.writeBehindBytes = Self.writeBehindBytes }
        try writer.writeStart(config: config)
        var progress = ProgressReporter(status: status, intervalNanoseconds: progressInterval)
        do throws(MigrationError) {
            let buffer = PayloadBuffer(StreamFormat.maxPayload)
            while true {
                let n = try engine.readSome(buffer.storage.baseAddress!, buffer.storage.count)
                if n == 0 { break }
                try writer.writeData(buffer.storage.baseAddress!, n)
                try progress.update(bytes: writer.dataBytes)
            }
            try status.send(.drained(bytes: writer.dataBytes, checksum: writer.dataChecksum))
            switch try status.receive() {
            case .commit?: break
            case .abort(let reason)?: throw MigrationError.abandoned(reason: reason)
            case nil: throw MigrationError.statusProtocol("xend closed the channel instead of sending commit or abort")
            case let other?: throw MigrationError.statusProtocol("expected commit or abort, got a \(other.kind) message")
            }
        } catch {
            try? writer.writeAbort(reason: error.description)
            throw explainPeerFailure(error, output: output, expectAck: expectAck)
        }
        let end: EndRecord
        do throws(MigrationError) {
            end = try writer.writeEnd()
            try output.syncIfFile()
        } catch { throw explainPeerFailure(error, output: output, expectAck: expectAck) }
        if expectAck {
            var reader = FrameReader(input: output)
            let answer: Frame
            do { answer = try reader.next() } catch {
                if case .missingEnd = error { throw .notAcknowledged("the connection closed") }
                throw .notAcknowledged(error.description)
            }
            switch answer {
            case .ack(let acked) where acked == end: break
            case .ack: throw .notAcknowledged("its ack is for a different stream")
            case .abort(let reason): throw .notAcknowledged(reason)
            case .data, .end: throw .notAcknowledged("it answered with a data or end frame")
            }
        }
        return Summary(bytes: writer.dataBytes, wireBytes: writer.wireBytes, frames: writer.dataFrames,
                       microseconds: progress.elapsedMicroseconds, checksum: writer.dataChecksum)
    }

    /// A write to the peer failed: if the receiver said why before it went away (an abort
    /// frame waiting on the socket), that reason is the better message.
    private static func explainPeerFailure(_ error: MigrationError, output: Descriptor, expectAck: Bool) -> MigrationError {
        guard expectAck, case .io(let op, _) = error, op.hasPrefix("writing") else { return error }
        var reader = FrameReader(input: output)
        if case .abort(let reason)? = try? reader.next() { return .notAcknowledged(reason) }
        return error
    }
}
