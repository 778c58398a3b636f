// The core engine's side of `xm save`, `xm save -c` and `xm restore`: the core writes or
// reads its own state stream (Sources/Core/StateStream.swift) on a descriptor xend hands it
// over the control socket (SCM_RIGHTS), with the commands of CoreControl's CoreStateCommand.
import CLinux
import CoreControl
import Foundation
import UnixSocket
#if canImport(Glibc)
import Glibc
#endif

extension CoreEngine {
    /// Seconds a save or restore may take before xend gives up on the core's reply.
    static let stateTimeout: Int32 = 600
    /// Pre-copy bounds of a save (Xen 3.x: 29 rounds, 3 × RAM; QEMU's default downtime).
    static let saveRounds = 30, saveDowntimeMs = 300

    /// Sends `command` with `fd` attached and waits for the one reply line.
    /// - Throws: `EngineError` when the core cannot be reached, closes the connection (it
    ///   died), takes longer than ``stateTimeout``, or replies `error TEXT` (the text).
    func stateRoundTrip(_ p: EngineProcess, _ command: CoreStateCommand, fd: Int32) throws -> CoreStateReply {
        let sock: Int32
        do { sock = try UnixSocket.connect(path: p.controlPath) } catch {
            throw EngineError("core: \(p.controlPath): \(error)")
        }
        defer { close(sock) }
        let line = Array(command.line.utf8)
        var fds = [fd]
        let sent = line.withUnsafeBytes { clinux_send_with_fds(sock, $0.baseAddress, $0.count, &fds, 1) }
        guard sent == line.count else { throw EngineError("core: cannot send \(command.line.dropLast()): \(String(cString: strerror(errno)))") }
        var reply: [UInt8] = []
        let deadline = Date().addingTimeInterval(Double(Self.stateTimeout))
        var c: UInt8 = 0
        while reply.count < 4096 {
            var pfd = pollfd(fd: sock, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, 1000)
            if r < 0 && errno == EINTR { continue }
            if r == 0 {
                if Date() > deadline { throw EngineError("core: no reply to \(command.line.dropLast()) within \(Self.stateTimeout) s") }
                continue
            }
            let n = read(sock, &c, 1)
            if n <= 0 { throw EngineError("core: the engine closed its control connection during \(command.line.dropLast()) (it stopped)") }
            if c == 10 { break }
            reply.append(c)
        }
        let text = String(decoding: reply, as: UTF8.self)
        guard let parsed = CoreStateReply(parsing: text) else {
            throw EngineError(text.hasPrefix("error ") ? "core: " + String(text.dropFirst(6)) : "core: unexpected reply: \(text)")
        }
        return parsed
    }

    /// `xm save` (and `-c`): a live save (``sendLive(_:into:maxRounds:maxBytes:downtimeLimitMs:onProgress:)``
    /// with Xen's bounds), so a checkpoint stops the guest only for the last dirty pages and
    /// the registers. The guest is stopped on return.
    public func saveState(_ p: EngineProcess, into fd: Int32, onProgress: @escaping (UInt64) -> Void) throws -> Bool {
        let r = try stateRoundTrip(p, .saveLive(maxRounds: Self.saveRounds, maxBytes: 0, downtimeLimitMs: Self.saveDowntimeMs), fd: fd)
        onProgress(r.bytes)
        return r.wasRunning
    }

    /// Pre-copy over KVM's dirty log into `fd`: RAM is streamed while the guest runs and
    /// re-sent per round until what is dirty fits `downtimeLimitMs` at the measured rate or
    /// `maxRounds` / `maxBytes` (0: 3 × RAM) are reached; then the guest stops and the rest
    /// and the vCPU and device state follow. The guest is stopped on return; the stream is
    /// the one ``restoreState(_:from:onProgress:)`` reads.
    /// - Returns: RAM rounds (the stopped one included) and the milliseconds the guest was stopped.
    /// - Throws: `EngineError` with the core's reason; the guest then runs again (if it did).
    public func sendLive(_ p: EngineProcess, into fd: Int32, maxRounds: Int, maxBytes: UInt64, downtimeLimitMs: Int,
                         onProgress: @escaping (UInt64) -> Void) throws -> (rounds: Int, downtimeMs: Int) {
        guard maxRounds >= 1, maxRounds <= 1000, downtimeLimitMs >= 0, downtimeLimitMs <= 3_600_000 else {
            throw EngineError("core: pre-copy bounds out of range (rounds \(maxRounds), downtime \(downtimeLimitMs) ms)", badRequest: true)
        }
        let r = try stateRoundTrip(p, .saveLive(maxRounds: maxRounds, maxBytes: maxBytes, downtimeLimitMs: downtimeLimitMs), fd: fd)
        onProgress(r.bytes)
        return (r.rounds, r.downtimeMs)
    }

    /// `xm restore`: the core (started with `--incoming`) loads the stream from `fd`,
    /// checking every record; the guest stays stopped until `unpause`.
    public func restoreState(_ p: EngineProcess, from fd: Int32, onProgress: @escaping (UInt64) -> Void) throws {
        let r = try stateRoundTrip(p, .restore, fd: fd)
        onProgress(r.bytes)
    }
}
