// The save-file format in-process: round trip, and every kind of bad file refused by name.
import Testing
import Glibc
@testable import Migration

@Suite struct StreamTests {
    let stream = randomBytes(3 << 20 + 12345)

    @Test func saveVerifyRestoreRoundTrip() throws {
        let file = makeSaveFile(stream)
        #expect(Array(file[0..<16]) == Array("LinuxGuestRecord".utf8))
        #expect(BigEndian.u32(file, 16) == UInt32(sampleConfig.utf8.count))
        #expect(String(decoding: file[20..<headerOffset()], as: UTF8.self) == sampleConfig)

        let checked = try verify(file)
        #expect(checked.config == sampleConfig)
        #expect(checked.summary.bytes == UInt64(stream.count))
        #expect(checked.summary.checksum == CRC32C.checksum(stream))
        #expect(checked.summary.wireBytes == UInt64(file.count))

        let saved = scratchFile(file), engine = scratchFile()
        let (xend, service) = socketPair()
        defer { close(saved); close(engine); close(xend); close(service) }
        let restored = try Receiver.restore(file: Descriptor(saved, role: "save file"), engine: Descriptor(engine, role: "engine"),
                                            status: StatusChannel(Descriptor(service, role: "status")), progressInterval: 0)
        #expect(restored.config == sampleConfig)
        #expect(fileContents(engine) == stream)
        // xend hears the configuration before any byte reaches the engine.
        #expect(try StatusChannel(Descriptor(xend, role: "xend")).receive() == .config(sampleConfig))
    }

    @Test func emptyEngineStreamIsAValidSave() throws {
        let file = makeSaveFile([])
        let checked = try verify(file)
        #expect(checked.summary.bytes == 0 && checked.summary.frames == 0)
    }

    @Test func wrongSignatureIsNotAGuestStateFile() {
        var file = makeSaveFile(stream)
        file[0] = UInt8(ascii: "X")
        let e = verifyError(file)
        #expect(e?.description == "not a valid guest state file: found 'XinuxGuestRecord' where 'LinuxGuestRecord' belongs")
        #expect(verifyError(Array("short".utf8))?.description.hasPrefix("not a valid guest state file") == true)
        #expect(verifyError([])?.description.hasPrefix("not a valid guest state file") == true)
    }

    @Test func oversizedConfigLengthIsRefusedBeforeReadingIt() {
        let file = patched(makeSaveFile(stream), at: 16, u32: 0x7FFF_FFFF)
        #expect(verifyError(file) == .configLength(0x7FFF_FFFF))
        #expect(verifyError(file)?.description.contains("configuration length 2147483647 is outside 1...1048576") == true)
        #expect(verifyError(patched(file, at: 16, u32: 0)) == .configLength(0))
    }

    @Test func newerFormatVersionIsRefusedByName() {
        let file = patched(makeSaveFile(stream), at: headerOffset() + 8, u32: 2)
        #expect(verifyError(file) == .newerVersion(2))
        #expect(verifyError(file)?.description.contains("stream format version 2 is newer than this xenith supports (version 1)") == true)
    }

    @Test func wrongStreamMagicIsRefused() {
        var file = makeSaveFile(stream)
        file[headerOffset()] = UInt8(ascii: "Q")
        #expect(verifyError(file) == .notAStream(found: "QNTHSTRM"))
    }

    @Test func oversizedFrameLengthIsRefusedBeforeReadingIt() {
        let first = headerOffset() + StreamFormat.headerSize
        let file = patched(makeSaveFile(stream), at: first + 4, u32: 0xFFFF_FFF0)
        #expect(verifyError(file) == .frameTooLarge(length: 0xFFFF_FFF0, limit: 1 << 20, frame: 1, offset: UInt64(first)))
        #expect(verifyError(file)?.description.contains("frame 1 at byte \(first) is 4294967280 bytes long, more than the limit of 1048576") == true)
    }

    @Test func unknownFrameTypeIsRefused() {
        let first = headerOffset() + StreamFormat.headerSize
        let file = patched(makeSaveFile(stream), at: first, u32: 99)
        #expect(verifyError(file) == .unknownFrameType(99, frame: 1, offset: UInt64(first)))
    }

    @Test func flippedPayloadByteFailsItsFrameCRC() {
        var file = makeSaveFile(stream)
        let at = file.count / 2
        file[at] ^= 0x10
        guard case .frameChecksum(let frame, _)? = verifyError(file) else {
            Issue.record("expected a frame CRC failure, got \(String(describing: verifyError(file)))"); return
        }
        #expect(frame > 1)
        #expect(verifyError(file)?.description.contains("fails its CRC-32C check") == true)
    }

    @Test func flippedConfigByteFailsTheConfigCRC() {
        var file = makeSaveFile(stream)
        file[25] ^= 0x01
        #expect(verifyError(file) == .configChecksum)
    }

    @Test func everySingleByteFlipIsCaught() {
        // Small stream, so each of the many verifications is quick.
        let file = makeSaveFile(randomBytes(200_000))
        var positions = Array(0..<80)                                   // envelope, header, first frame
        positions += (0..<150).map { _ in Int.random(in: 0..<file.count) }
        positions += (file.count - 40)..<file.count                       // last frame, end frame
        for at in positions {
            var bad = file
            bad[at] ^= UInt8(1 << Int.random(in: 0..<8))
            #expect(verifyError(bad) != nil, "a flipped bit at byte \(at) went unnoticed")
        }
    }

    @Test func truncationAnywhereIsRefused() {
        let file = makeSaveFile(randomBytes(300_000))
        let first = headerOffset() + StreamFormat.headerSize
        #expect(verifyError(Array(file[0..<30])) == .truncated(what: "the configuration (\(sampleConfig.utf8.count) bytes)", offset: 30))
        #expect(verifyError(Array(file[0..<(first - 3)])) == .truncated(what: "the stream header", offset: UInt64(first - 3)))
        #expect(verifyError(Array(file[0..<(first + 100)])) == .truncated(what: "frame 1 (its 300000-byte payload)", offset: UInt64(first + 100)))
        #expect(verifyError(Array(file.dropLast(1)))?.description.hasPrefix("truncated stream: it ends inside frame") == true)
        // Cut exactly before the end frame (4 + 4 + 20 + 4 bytes): a clean boundary, still refused.
        let beforeEnd = file.count - 32
        #expect(verifyError(Array(file[0..<beforeEnd])) == .missingEnd(offset: UInt64(beforeEnd)))
        #expect(verifyError(Array(file[0..<beforeEnd]))?.description == "truncated stream: it ends at byte \(beforeEnd) without an end frame")
        for _ in 0..<100 {
            let cut = Int.random(in: 0..<file.count)
            #expect(verifyError(Array(file[0..<cut])) != nil, "cut at \(cut) went unnoticed")
        }
    }

    @Test func bytesAfterTheEndFrameAreRefused() {
        let file = makeSaveFile(stream)
        #expect(verifyError(file + [0]) == .trailingData(offset: UInt64(file.count)))
    }

    @Test func anAbortedSaveIsRefusedWithItsReason() {
        let file = makeSaveFile(stream, answer: .abort("QEMU reported the migration failed"))
        #expect(verifyError(file) == .aborted(reason: "abandoned by xend: QEMU reported the migration failed"))
    }

    @Test func endFrameMustMatchTheData() throws {
        // A well-formed end frame (good CRC) whose byte count lies.
        let engine = scratchFile(Array(stream[0..<1000])), out = scratchFile()
        defer { close(engine); close(out) }
        var w = FrameWriter(output: Descriptor(out, role: "file"))
        try w.writeStart(config: sampleConfig)
        try stream.withUnsafeBytes { p in try w.writeData(p.baseAddress!, 1000) }
        try EndRecord(bytes: 999, frames: 1, checksum: CRC32C.checksum(stream[0..<1000])).encoded.withUnsafeBytes {
            try w.writeFrame(.end, $0)
        }
        #expect(verifyError(fileContents(out)) == .endMismatch(what: "byte count", expected: 999, found: 1000))
    }

    @Test func writeBehindStartsTheFilesWritebackAsItGoesAndKeepsTheBytes() throws {
        // A save file's writeback is started every writeBehindBytes (the final fdatasync
        // then waits only for the tail); the bytes on disk are the same as without it.
        let big = randomBytes(9 << 20 + 777)
        let out = scratchFile()
        defer { close(out) }
        var w = FrameWriter(output: Descriptor(out, role: "file"))
        w.writeBehindBytes = 2 << 20
        try w.writeStart(config: sampleConfig)
        try big.withUnsafeBytes { p in try w.writeData(p.baseAddress!, big.count) }
        try w.writeEnd()
        #expect(w.writebackStarted >= 8 << 20 && w.writebackStarted <= w.wireBytes)
        #expect(w.wireBytes - w.writebackStarted < 2 << 20 + 64)
        let file = fileContents(out)
        let checked = try verify(file)
        #expect(checked.summary.bytes == UInt64(big.count))
        #expect(checked.summary.checksum == CRC32C.checksum(big))
        // Off (a socket, or a caller that does not sync): nothing started.
        var quiet = FrameWriter(output: Descriptor(scratchFile(), role: "file"))
        defer { close(quiet.output.fd) }
        try big.withUnsafeBytes { p in try quiet.writeData(p.baseAddress!, big.count) }
        #expect(quiet.writebackStarted == 0)
    }

    @Test func configMustBeText() {
        #expect(throws: MigrationError.configNotText) { try SaveEnvelope.encode(config: "a\u{0}b") }
        #expect(throws: MigrationError.configLength(0)) { try SaveEnvelope.encode(config: "") }
        #expect(throws: MigrationError.configLength(UInt32(1 << 20) + 1)) {
            try SaveEnvelope.encode(config: String(repeating: "x", count: (1 << 20) + 1))
        }
    }
}

@Suite struct StatusMessageTests {
    @Test func everyMessageRoundTrips() throws {
        let messages: [StatusMessage] = [
            .config(sampleConfig), .progress(bytes: 1 << 40, bytesPerSecond: 5_000_000),
            .drained(bytes: 12345, checksum: 0xDEADBEEF), .commit, .abort("stop"),
            .done(Summary(bytes: 1, wireBytes: 2, frames: 3, microseconds: 4, checksum: 5)), .failed("bad frame"),
        ]
        let (a, b) = socketPair()
        defer { close(a); close(b) }
        let tx = StatusChannel(Descriptor(a, role: "a")), rx = StatusChannel(Descriptor(b, role: "b"))
        for m in messages { try tx.send(m) }
        for m in messages { #expect(try rx.receive() == m) }
        shutdown(a, Int32(SHUT_WR))
        #expect(try rx.receive() == nil)
    }

    @Test func malformedMessagesAreRefused() {
        let (a, b) = socketPair()
        defer { close(a); close(b) }
        let rx = StatusChannel(Descriptor(b, role: "b"))
        writeAll(a, patched([0, 0, 0, 1, 0, 0, 0, 0], at: 4, u32: 0x7000_0000))    // oversized config
        #expect(throws: MigrationError.self) { _ = try rx.receive() }
        let (c, d) = socketPair()
        defer { close(c); close(d) }
        writeAll(c, [0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3])                            // progress of 3 bytes
        #expect(throws: MigrationError.statusProtocol("progress message of 3 bytes, expected 16")) {
            _ = try StatusChannel(Descriptor(d, role: "d")).receive()
        }
    }
}
