// verify, restore and receive (README.md §2): the file or the peer → checked frames → the engine.

/// The receiving side: `verify` and `restore` (from a save file) and `receive` (from a peer).
public enum Receiver {
    /// Reads and checks one whole stream.
    ///
    /// Order: the envelope and header (then `config` to xend when `reportConfig`); frames
    /// until the end frame, each data frame's bytes written to `engine` (if any) with
    /// `progress`; with `requireEOF` nothing may follow the end frame; with `acknowledge`
    /// an ack frame goes back on `input`, or, on a failure, an abort frame (best effort).
    /// - Parameters:
    ///   - input: the save file or the connected peer socket (fd 4).
    ///   - engine: the engine's state stream (fd 3, a pipe into QEMU's `migrate-incoming
    ///     fd:`); nil checks only.
    ///   - status: the status channel (fd 5), if any.
    ///   - reportConfig: send `config` once the envelope is checked.
    ///   - acknowledge: answer on `input` (receive).
    ///   - requireEOF: refuse bytes after the end frame (a file).
    ///   - progressInterval: nanoseconds between progress messages (0: none).
    /// - Returns: the domain's SXP and the final figures.
    /// - Throws: every stream defect of `FrameReader` (README.md §1), `.aborted` for an
    ///   abort frame, `.unexpectedFrame`, `.io`.
    public static func run(input: Descriptor, engine: Descriptor?, status: StatusChannel?, reportConfig: Bool,
                           acknowledge: Bool, requireEOF: Bool,
                           progressInterval: UInt64 = 250_000_000) throws(MigrationError) -> (config: String, summary: Summary) {
        var reader = FrameReader(input: input)
        do throws(MigrationError) {
            let config = try reader.readStart()
            if reportConfig { try status?.send(.config(config)) }
            var progress = ProgressReporter(status: status, intervalNanoseconds: progressInterval)
            let end: EndRecord
            loop: while true {
                switch try reader.next() {
                case .data(let bytes):
                    do { try engine?.writeAll(bytes.baseAddress!, bytes.count) } catch {
                        // The engine's end of the pipe closed: it exited or refused the stream.
                        if case .io(_, let e) = error, e == 32 /* EPIPE */ {
                            throw MigrationError.invalidArgument("the engine stopped taking the stream (it exited or refused it) after \(reader.dataBytes) bytes")
                        }
                        throw error
                    }
                    try progress.update(bytes: reader.dataBytes)
                case .end(let e): end = e; break loop
                case .abort(let reason): throw MigrationError.aborted(reason: reason)
                case .ack: throw MigrationError.unexpectedFrame(type: "ack", frame: reader.framesRead, offset: reader.offset)
                }
            }
            if requireEOF { try reader.expectEOF() }
            if acknowledge {
                var writer = FrameWriter(output: input)
                try writer.writeAck(end)
            }
            return (config, Summary(bytes: reader.dataBytes, wireBytes: reader.offset, frames: reader.dataFrames,
                                    microseconds: progress.elapsedMicroseconds, checksum: reader.dataChecksum))
        } catch {
            if acknowledge {
                // The sender shows this reason: say it comes from this side.
                var writer = FrameWriter(output: input)
                try? writer.writeAbort(reason: "target: " + error.description)
            }
            throw error
        }
    }

    /// `verify`: checks the whole save file from its first byte (README.md §1), writing
    /// nothing anywhere; reports `config` only once the whole file checked out.
    /// - Parameters:
    ///   - file: the save file (fd 4), seekable.
    /// - Throws: as `run`; `.io` when the file cannot seek.
    public static func verify(file: Descriptor, status: StatusChannel?) throws(MigrationError) -> (config: String, summary: Summary) {
        try file.seek(to: 0)
        let checked = try run(input: file, engine: nil, status: nil, reportConfig: false, acknowledge: false,
                              requireEOF: true, progressInterval: 0)
        try status?.send(.config(checked.config))
        return checked
    }

    /// `restore`: checks the whole file first (nothing reaches the engine before every
    /// frame and the end frame check out), reports `config`, then seeks back to the start
    /// and streams the data into `engine`, checking every frame again.
    /// - Parameters:
    ///   - file: the save file (fd 4), seekable.
    ///   - engine: the engine's state stream (fd 3).
    /// - Throws: as `run`; `.io` when the file cannot seek; `.statusProtocol` is not
    ///   thrown. A file that changed between the passes fails the second pass.
    public static func restore(file: Descriptor, engine: Descriptor, status: StatusChannel?,
                               progressInterval: UInt64 = 250_000_000) throws(MigrationError) -> (config: String, summary: Summary) {
        try file.seek(to: 0)
        let checked = try run(input: file, engine: nil, status: nil, reportConfig: false, acknowledge: false,
                              requireEOF: true, progressInterval: 0)
        try status?.send(.config(checked.config))
        try file.seek(to: 0)
        let done = try run(input: file, engine: engine, status: status, reportConfig: false, acknowledge: false,
                           requireEOF: true, progressInterval: progressInterval)
        guard done.config == checked.config, done.summary.checksum == checked.summary.checksum else {
            throw .invalidArgument("the save file changed while it was being restored")
        }
        return done
    }
}
