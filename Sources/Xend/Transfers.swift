// The saves and restores under way: what `xm list` shows for them (`migrating-NAME` while a
// domain is being saved, as Xen's XendCheckpoint renamed it) and the progress `xm save` and
// `xm restore` print on a terminal (`GET /api/v1/transfers`).
import Foundation
import XendAPI

/// Thread-safe table of the transfers in progress, keyed by the save file's path.
final class TransferTable: @unchecked Sendable {
    private let lock = NSLock()
    private var byFile: [String: TransferInfo] = [:]
    /// Domains being restored: their engine's exit is a failed restore, not a crash to act on.
    private var restoring: Set<Int> = []
    /// Domains being restored that `xm destroy` ended: the restore's failure says so.
    private var destroyedWhileRestoring: Set<Int> = []

    /// Registers a transfer of `kind` (`save`, `restore`) on `file`.
    /// - Returns: false when the file or (for a save) the domain is already in a transfer.
    func begin(kind: String, file: String, domain: String, domid: Int?) -> Bool {
        lock.lock(); defer { lock.unlock() }
        if byFile[file] != nil { return false }
        if let domid, byFile.values.contains(where: { $0.domid == domid }) { return false }
        byFile[file] = TransferInfo(kind: kind, file: file, domain: domain, domid: domid, bytes: 0, bytesPerSecond: 0,
                                    startTime: Date().timeIntervalSince1970)
        return true
    }

    /// Records progress: engine-stream bytes so far and the current rate (bytes per second).
    func progress(file: String, bytes: UInt64, bytesPerSecond: UInt64) {
        lock.lock(); defer { lock.unlock() }
        byFile[file]?.bytes = bytes
        byFile[file]?.bytesPerSecond = bytesPerSecond
    }

    /// Sets the domid and name of a restore once its domain exists, and marks it as restoring.
    func attach(file: String, domid: Int, domain: String) {
        lock.lock(); defer { lock.unlock() }
        byFile[file]?.domid = domid
        byFile[file]?.domain = domain
        restoring.insert(domid)
    }

    /// The restore of `domid` is over (done or undone).
    func detach(domid: Int) {
        lock.lock(); restoring.remove(domid); destroyedWhileRestoring.remove(domid); lock.unlock()
    }

    /// Notes that `xm destroy` ends domain `domid` (kept only while it is being restored).
    func noteDestroyed(_ domid: Int) {
        lock.lock(); if restoring.contains(domid) { destroyedWhileRestoring.insert(domid) }; lock.unlock()
    }

    /// Whether `xm destroy` ended domain `domid` while it was being restored.
    func wasDestroyed(_ domid: Int) -> Bool { lock.lock(); defer { lock.unlock() }; return destroyedWhileRestoring.contains(domid) }

    func end(file: String) { lock.lock(); byFile[file] = nil; lock.unlock() }

    /// The kind (`save`, `migrate`) of a transfer taking `domid` away, nil when none is.
    func outgoing(_ domid: Int) -> String? {
        lock.lock(); defer { lock.unlock() }
        return byFile.values.first { $0.domid == domid && ($0.kind == "save" || $0.kind == "migrate") }?.kind
    }

    /// Whether `domid` is being restored.
    func isRestoring(_ domid: Int) -> Bool { lock.lock(); defer { lock.unlock() }; return restoring.contains(domid) }

    /// The name `xm list` shows for domain `domid` named `name`: `migrating-NAME` while it
    /// is being saved or migrated away.
    func listedName(_ domid: Int, _ name: String) -> String {
        lock.lock(); defer { lock.unlock() }
        return byFile.values.contains { $0.domid == domid && ($0.kind == "save" || $0.kind == "migrate") } ? "migrating-" + name : name
    }

    /// Every transfer, oldest first.
    var all: [TransferInfo] { lock.lock(); defer { lock.unlock() }; return byFile.values.sorted { $0.startTime < $1.startTime } }
}
