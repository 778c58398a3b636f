// QEMU's live migration over a descriptor (`migrate fd:`), bounded as Xen 3.0's pre-copy:
// QEMU iterates over its dirty log and stops the guest by itself once the rest fits in
// `downtime-limit`; after the allowed rounds or bytes the limit is raised so that the next
// pass is the last one (stop-and-copy), as Xen's xc_linux_save does after 29 rounds or
// 3× the guest's memory. QEMU 7.2 facts: `ram.dirty-sync-count` counts passes over the
// dirty bitmap; `downtime` (ms) is set once the migration completed.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The figures of one finished live migration, as QEMU reported them.
public struct QemuLiveMigrationResult: Sendable, Equatable {
    /// Passes over the dirty bitmap (`ram.dirty-sync-count`).
    public var rounds: Int
    /// Milliseconds the guest was stopped on this side (`downtime`).
    public var downtimeMs: Int
    /// Bytes QEMU sent (`ram.transferred`).
    public var transferred: UInt64
}

extension QemuDomain {
    /// QEMU's largest `downtime-limit` (ms): set to force the last pass.
    static let forcedDowntimeLimitMs = 2_000_000

    /// Sends the running guest's state into `fd` (the write end of a pipe), live.
    ///
    /// On success QEMU has closed its copy of `fd` and the guest is stopped
    /// (`postmigrate`): the caller destroys the domain once the target runs it, or resumes
    /// it with ``unpause()``.
    /// - Parameters:
    ///   - maxRounds: passes over memory before the guest is stopped for the last one.
    ///   - maxBytes: bytes sent before the guest is stopped for the last pass.
    ///   - downtimeLimitMs: QEMU's `downtime-limit` until then (milliseconds).
    ///   - maxBandwidth: QEMU's `max-bandwidth` (bytes per second); it estimates the
    ///     downtime from the rate it achieved, so give the link's pace.
    ///   - stallTimeout: seconds without progress after which the migration is abandoned.
    ///   - onProgress: RAM bytes QEMU sent so far, about every 100 ms.
    /// - Throws: `QemuEngineError` with QEMU's reason or the stall; the migration is
    ///   cancelled and the guest runs again (if it ran) before this throws.
    public func sendLive(into fd: Int32, maxRounds: Int, maxBytes: UInt64, downtimeLimitMs: Int,
                         maxBandwidth: Int64 = Int64(1) << 40, stallTimeout: Double = 30,
                         onProgress: (UInt64) -> Void = { _ in }) throws -> QemuLiveMigrationResult {
        let wasRunning = (try? qmp.queryStatus().running) ?? false
        var handedOver = false
        do {
            try qmp.migrateSetParameters(["max-bandwidth": maxBandwidth,
                                          "downtime-limit": max(1, min(downtimeLimitMs, Self.forcedDowntimeLimitMs))])
            try qmp.getfd(QemuDomain.migrationFDName, fd: fd)
            handedOver = true
            try qmp.migrate(uri: "fd:" + QemuDomain.migrationFDName)
            var forced = false
            var lastBytes: UInt64 = 0
            var lastStatus = ""
            var lastChange = Date()
            while true {
                let r: [String: Any]
                do { r = try qmp.execute("query-migrate") as? [String: Any] ?? [:] } catch {
                    throw QemuEngineError("QEMU stopped answering during the migration (\(error))")
                }
                let status = r["status"] as? String ?? "none"
                let ram = r["ram"] as? [String: Any] ?? [:]
                let sent = (ram["transferred"] as? NSNumber)?.uint64Value ?? 0
                let rounds = (ram["dirty-sync-count"] as? NSNumber)?.intValue ?? 0
                switch status {
                case "completed":
                    onProgress(sent)
                    return QemuLiveMigrationResult(rounds: rounds, downtimeMs: (r["downtime"] as? NSNumber)?.intValue ?? 0,
                                                   transferred: sent)
                case "failed":
                    let why = r["error-desc"] as? String ?? stderrTail(1).first.map(QemuDomain.stripTimestamp) ?? "no reason given"
                    throw QemuEngineError("QEMU's migration failed: \(why)")
                case "cancelled", "cancelling":
                    throw QemuEngineError("QEMU's migration was cancelled")
                default: break
                }
                if !forced && (rounds >= maxRounds || sent >= maxBytes) {
                    // Xen's bound reached: the next pass is the last, with the guest stopped.
                    try qmp.migrateSetParameters(["downtime-limit": Self.forcedDowntimeLimitMs])
                    forced = true
                }
                if sent != lastBytes || status != lastStatus { lastBytes = sent; lastStatus = status; lastChange = Date(); onProgress(sent) }
                if Date().timeIntervalSince(lastChange) > stallTimeout {
                    throw QemuEngineError("QEMU's migration made no progress for \(Int(stallTimeout)) s (status \(status), \(sent) bytes)")
                }
                usleep(20_000)
            }
        } catch {
            abandonOutgoingMigration(handedOver: handedOver, resume: wasRunning)
            throw (error as? QemuEngineError) ?? QemuEngineError("\(error)")
        }
    }
}
