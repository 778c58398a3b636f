// The qemu engine's side of `xm save` and `xm restore`: QEMU's own migration stream over a
// pipe descriptor handed in with QMP `getfd` (QemuEngine/QemuMigration.swift; PLATFORM.md:
// `fd:`, since `exec:` conflicts with `-sandbox spawn=deny` and 7.2 has no `file:`).
import Foundation
import QemuEngine

extension QemuEngineDriver {
    /// Seconds a save or restore may go without a byte of progress before it is abandoned.
    static let migrationStallTimeout = 30.0

    /// Stops the vCPUs and has QEMU write its migration stream into `fd`
    /// (``QemuDomain/saveState(into:stallTimeout:onProgress:)``).
    public func saveState(_ p: EngineProcess, into fd: Int32, onProgress: @escaping (UInt64) -> Void) throws -> Bool {
        let d = try session(p)
        do { return try d.saveState(into: fd, stallTimeout: Self.migrationStallTimeout, onProgress: onProgress) }
        catch { throw EngineError("\(error)") }
    }

    /// Has a QEMU started with `-incoming defer -S` load the stream from `fd`
    /// (``QemuDomain/loadState(from:stallTimeout:onProgress:)``).
    public func restoreState(_ p: EngineProcess, from fd: Int32, onProgress: @escaping (UInt64) -> Void) throws {
        let d = try session(p)
        do { try d.loadState(from: fd, stallTimeout: Self.migrationStallTimeout, onProgress: onProgress) }
        catch { throw EngineError("\(error)") }
    }

    /// Live pre-copy into `fd` (``QemuDomain/sendLive(into:maxRounds:maxBytes:downtimeLimitMs:maxBandwidth:stallTimeout:onProgress:)``):
    /// QEMU's dirty log, its vhost-user back-ends' too (blkback and netback log their writes).
    public func sendLive(_ p: EngineProcess, into fd: Int32, maxRounds: Int, maxBytes: UInt64, downtimeLimitMs: Int,
                         onProgress: @escaping (UInt64) -> Void) throws -> (rounds: Int, downtimeMs: Int) {
        let d = try session(p)
        do {
            let r = try d.sendLive(into: fd, maxRounds: maxRounds, maxBytes: maxBytes, downtimeLimitMs: downtimeLimitMs,
                                   stallTimeout: Self.migrationStallTimeout, onProgress: onProgress)
            return (r.rounds, r.downtimeMs)
        } catch { throw EngineError("\(error)") }
    }
}
