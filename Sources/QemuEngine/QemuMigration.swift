// QEMU's own migration stream over a descriptor (PLATFORM.md, QEMU 7.2 facts): the pipe end
// is handed to QEMU with QMP `getfd` and named in `migrate uri=fd:NAME` (save) or
// `migrate-incoming uri=fd:NAME` on a QEMU started with `-incoming defer` (restore).
// `exec:` would run a shell, which `-sandbox spawn=deny` forbids; `file:` came in 8.2.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One `query-migrate` answer, reduced to what xend acts on.
public struct QemuMigrationInfo: Sendable, Equatable {
    /// `none`, `setup`, `active`, `device`, `completed`, `failed`, `cancelling`,
    /// `cancelled`, `pre-switchover`, ... (QEMU's MigrationStatus).
    public var status: String
    /// Bytes of RAM sent or received so far (`ram.transferred`), 0 when not reported.
    public var transferred: UInt64
    /// QEMU's reason for `failed` (`error-desc`), nil otherwise.
    public var error: String?
    public init(status: String, transferred: UInt64 = 0, error: String? = nil) {
        self.status = status; self.transferred = transferred; self.error = error
    }
}

extension QMPClient {
    /// `getfd`: hands `fd` to QEMU under `name` (QEMU keeps its own copy; ours stays open).
    public func getfd(_ name: String, fd: Int32) throws { try execute("getfd", ["fdname": name], passing: fd) }
    /// `closefd`: drops the descriptor named `name` that no command consumed.
    public func closefd(_ name: String) throws { try execute("closefd", ["fdname": name]) }
    /// `migrate-set-parameters` with `parameters` (QEMU's MigrateSetParameters members).
    public func migrateSetParameters(_ parameters: [String: Any]) throws { try execute("migrate-set-parameters", parameters) }
    /// `migrate`: starts an outgoing migration to `uri` (here always `fd:NAME`).
    public func migrate(uri: String) throws { try execute("migrate", ["uri": uri]) }
    /// `migrate-incoming`: starts taking the stream at `uri` (a QEMU run with `-incoming defer`).
    public func migrateIncoming(uri: String) throws { try execute("migrate-incoming", ["uri": uri]) }
    /// `migrate_cancel`: abandons an outgoing migration (the guest stays where it was).
    public func migrateCancel() throws { try execute("migrate_cancel") }
    /// `query-migrate`: the state of the current (or last) migration, either direction.
    public func queryMigrate() throws -> QemuMigrationInfo {
        let r = try execute("query-migrate") as? [String: Any] ?? [:]
        let ram = r["ram"] as? [String: Any] ?? [:]
        return QemuMigrationInfo(status: r["status"] as? String ?? "none",
                                 transferred: (ram["transferred"] as? NSNumber)?.uint64Value ?? 0,
                                 error: r["error-desc"] as? String)
    }
}

extension QemuDomain {
    /// The name the stream's descriptor has inside QEMU (not all digits: QEMU would read
    /// digits as a descriptor number of its own).
    public static let migrationFDName = "xenith-stream"

    /// Writes the guest's whole state into `fd` (the write end of a pipe) as QEMU's
    /// migration stream, non-live as Xen 3.0's `xm save`: the vCPUs are stopped first.
    ///
    /// On success QEMU has closed its copy of `fd` and the guest is left stopped
    /// (`postmigrate`): the caller destroys the domain or resumes it with ``unpause()``.
    ///
    /// - Parameters:
    ///   - stallTimeout: seconds without a byte of progress after which the save is
    ///     abandoned (a reader that stopped reading, a QEMU that hangs).
    ///   - onProgress: called about every 100 ms with the RAM bytes QEMU sent so far.
    /// - Returns: whether the guest was running before (it is resumed on failure only then).
    /// - Throws: `QemuEngineError` naming QEMU's reason or the stall; the migration is
    ///   cancelled and the guest is running again (if it was) before this throws.
    @discardableResult
    public func saveState(into fd: Int32, stallTimeout: Double = 30,
                          onProgress: (UInt64) -> Void = { _ in }) throws -> Bool {
        let wasRunning = (try? qmp.queryStatus().running) ?? false
        var handedOver = false
        do {
            if wasRunning { try qmp.stop() }
            // QEMU 7.2 caps a migration at 32 MiB/s by default (max-bandwidth): lift it,
            // a save is bounded by the disk and the migration service's pacing, not QEMU.
            try qmp.migrateSetParameters(["max-bandwidth": Int64(1) << 40])
            try qmp.getfd(QemuDomain.migrationFDName, fd: fd)
            handedOver = true
            try qmp.migrate(uri: "fd:" + QemuDomain.migrationFDName)
            try waitForMigration(stallTimeout: stallTimeout, onProgress: onProgress)
            return wasRunning
        } catch {
            abandonOutgoingMigration(handedOver: handedOver, resume: wasRunning)
            throw (error as? QemuEngineError) ?? QemuEngineError("\(error)")
        }
    }

    /// Cancels an outgoing migration (save or live) that failed, closes the descriptor
    /// handed to QEMU when there was one, and resumes the guest when `resume` and QEMU left
    /// it stopped. Cancelling is asynchronous: the guest can only run once QEMU has left
    /// the migration (a bounded wait of 10 s; `cont` is refused before).
    func abandonOutgoingMigration(handedOver: Bool, resume: Bool) {
        try? qmp.migrateCancel()
        if handedOver { try? qmp.closefd(QemuDomain.migrationFDName) }
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, let s = try? qmp.queryMigrate().status, ["active", "cancelling", "setup", "device"].contains(s) {
            usleep(20_000)
        }
        if resume, (try? qmp.queryStatus().running) == false { try? qmp.cont() }
    }

    /// Takes the guest's state from `fd` (the read end of a pipe) into a QEMU started with
    /// `-incoming defer -S`; returns once QEMU has loaded all of it. The guest stays stopped
    /// until ``unpause()``.
    ///
    /// - Parameters:
    ///   - stallTimeout: seconds without a byte of progress after which the restore is
    ///     abandoned.
    ///   - onProgress: called about every 100 ms with the RAM bytes QEMU took so far.
    /// - Throws: `QemuEngineError` naming QEMU's reason (a stream it refused) or the
    ///   stall; the caller then destroys this QEMU (a half-loaded guest cannot run).
    public func loadState(from fd: Int32, stallTimeout: Double = 30, onProgress: (UInt64) -> Void = { _ in }) throws {
        do {
            try qmp.getfd(QemuDomain.migrationFDName, fd: fd)
            try qmp.migrateIncoming(uri: "fd:" + QemuDomain.migrationFDName)
            try waitForMigration(stallTimeout: stallTimeout, onProgress: onProgress)
        } catch let e as QemuEngineError {
            throw e
        } catch {
            // A QEMU that refuses the stream at once (a RAM size that does not match) exits
            // before it answers `migrate-incoming`: its last log line says why.
            let why = qmp.isClosed ? stderrTail(1).first.map(QemuDomain.stripTimestamp).map { ": " + $0 } ?? "" : ""
            throw QemuEngineError("\(error)\(why)")
        }
    }

    /// Polls `query-migrate` until `completed` (every 5 ms for the first 2 s, where a save
    /// or restore of a small guest ends and a 100 ms poll alone cost it ~50 ms on average;
    /// every 20 ms after that, which the switch-over of a live migration waits on); throws on `failed` or
    /// `cancelled`, when QEMU goes away, or after `stallTimeout` seconds in which neither
    /// the transferred bytes nor the status changed.
    func waitForMigration(stallTimeout: Double, onProgress: (UInt64) -> Void) throws {
        var last = QemuMigrationInfo(status: "")
        var lastChange = Date()
        let started = Date()
        while true {
            let info: QemuMigrationInfo
            do { info = try qmp.queryMigrate() } catch {
                // A target QEMU that refuses a stream exits: its last log line says why.
                let why = stderrTail(1).first.map(QemuDomain.stripTimestamp).map { ": " + $0 } ?? ""
                throw QemuEngineError("QEMU stopped answering during the migration (\(error))\(why)")
            }
            switch info.status {
            case "completed":
                onProgress(info.transferred)
                return
            case "failed":
                let why = info.error ?? stderrTail(1).first.map(QemuDomain.stripTimestamp) ?? "no reason given"
                throw QemuEngineError("QEMU's migration failed: \(why)")
            case "cancelled", "cancelling":
                throw QemuEngineError("QEMU's migration was cancelled")
            default:
                break
            }
            if info != last { last = info; lastChange = Date(); onProgress(info.transferred) }
            if Date().timeIntervalSince(lastChange) > stallTimeout {
                throw QemuEngineError("QEMU's migration made no progress for \(Int(stallTimeout)) s (status \(info.status), \(info.transferred) bytes)")
            }
            usleep(Date().timeIntervalSince(started) < 2 ? 5_000 : 20_000)   // the switch-over of a live migration waits on this
        }
    }
}
