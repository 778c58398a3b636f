// xend's registry of domains (Xen's XendDomain list): the records in memory, one JSON file
// per domain under `var/lib/xend/domains`, domid allocation and lookup. Thread-safe; the
// lifecycle code (launch, supervision, control) decides what to store.
import DomainConfig
import Foundation
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

final class DomainRegistry: @unchecked Sendable {
    let paths: XenithPaths
    private let lock = NSRecursiveLock()
    private var records: [Int: DomainRecord] = [:]

    init(paths: XenithPaths) {
        self.paths = paths
    }

    // MARK: files

    func recordPath(_ domid: Int) -> String { paths.registryDir + "/\(domid).json" }

    /// Writes `r` to its file (atomically: a temporary file renamed over it).
    func persist(_ r: DomainRecord) {
        guard let data = try? XendClient.encoder.encode(r) else { return }
        let tmp = recordPath(r.domid) + ".tmp"
        if FileManager.default.createFile(atPath: tmp, contents: data) { rename(tmp, recordPath(r.domid)) }
    }

    /// Deletes `domid`'s file, keeping its record in memory (a domain about to be replaced).
    func removeFile(_ domid: Int) { unlink(recordPath(domid)) }

    /// The mark of a domain whose engine waits for or loads a restored or migrated state
    /// (`xm restore`, the relocation server): made before its record is final, removed once
    /// the state is in and before the guest first runs. A mark xend finds at start belongs to
    /// a transfer it did not finish, whose guest never ran: that domain is undone
    /// (DomainAdoption). A file of its own, made and removed without rewriting the record:
    /// replacing a file by rename on ext4 waits for its data (1-7 ms), in the restore's path.
    func incomingMarkPath(_ domid: Int) -> String { paths.registryDir + "/\(domid).incoming" }
    func markIncoming(_ domid: Int) {
        let fd = open(incomingMarkPath(domid), O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        if fd >= 0 { close(fd) }
    }
    func clearIncoming(_ domid: Int) { unlink(incomingMarkPath(domid)) }
    func isIncoming(_ domid: Int) -> Bool { access(incomingMarkPath(domid), F_OK) == 0 }

    /// Reads every record file (after an xend restart); unreadable files are skipped.
    func loadFiles() -> [DomainRecord] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: paths.registryDir)) ?? []
        return files.filter { $0.hasSuffix(".json") }.compactMap { f in
            FileManager.default.contents(atPath: paths.registryDir + "/" + f)
                .flatMap { try? XendClient.decoder.decode(DomainRecord.self, from: $0) }
        }.sorted { $0.domid < $1.domid }
    }

    // MARK: records

    /// Runs `body` with the registry locked (a check and an update that must not interleave).
    func withLock<T>(_ body: () throws -> T) rethrows -> T { lock.lock(); defer { lock.unlock() }; return try body() }

    subscript(domid: Int) -> DomainRecord? { withLock { records[domid] } }

    /// Stores `r` in memory and, when `persisting`, in its file.
    func store(_ r: DomainRecord, persisting: Bool = true) {
        withLock { records[r.domid] = r }
        if persisting { persist(r) }
    }

    /// Changes the record of `domid` in place (nothing when there is none, or when `onlyLive`
    /// and it does not run), then persists it.
    /// - Returns: the record as changed, nil when there is none (or it is not live with `onlyLive`).
    @discardableResult
    func update(_ domid: Int, onlyLive: Bool = false, _ change: (inout DomainRecord) -> Void) -> DomainRecord? {
        let r: DomainRecord? = withLock {
            guard var r = records[domid], !onlyLive || r.isLive else { return nil }
            change(&r)
            records[domid] = r
            return r
        }
        if let r { persist(r) }
        return r
    }

    /// Forgets `domid`: removed from memory and its file deleted; returns what it was.
    @discardableResult
    func remove(_ domid: Int) -> DomainRecord? {
        let r = withLock { records.removeValue(forKey: domid) }
        unlink(recordPath(domid))
        clearIncoming(domid)
        return r
    }

    /// Every record, by domid.
    var all: [DomainRecord] { withLock { records.values.sorted { $0.domid < $1.domid } } }

    /// Finds a live or preserved domain by name or decimal id.
    func find(_ dom: String) -> DomainRecord? {
        withLock {
            if let id = Int(dom), let r = records[id] { return r }
            return records.values.first { $0.name == dom }
        }
    }

    /// The record named `name`, if any.
    func named(_ name: String) -> DomainRecord? { withLock { records.values.first { $0.name == name } } }

    /// Next domid: a counter kept in `var/lib/xend/next-domid`, never one in use.
    func allocateDomid() -> Int {
        withLock {
            let file = paths.xendLib + "/next-domid"
            var next = Int((try? String(contentsOfFile: file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 1
            if next < 1 { next = 1 }
            while records[next] != nil { next += 1 }
            try? String(next + 1).write(toFile: file, atomically: true, encoding: .utf8)
            return next
        }
    }

    // MARK: devices in use

    /// The disks of the running domains other than `domid`, by domain name: every disk of
    /// their configurations but those whose blkback broke.
    func disksInUse(except domid: Int) -> [(domain: String, disk: DiskSpec)] {
        withLock {
            var out: [(domain: String, disk: DiskSpec)] = []
            for r in records.values where r.domid != domid && r.isLive {
                let broken = Set((r.disks ?? []).filter(\.broken).map(\.vdev))
                for d in r.config.disks where !broken.contains(d.vdev) { out.append((r.name, d)) }
            }
            return out
        }
    }

    /// The vifs of the running domains (all of them, or all but `domid`), by domain name.
    func vifsInUse(except domid: Int? = nil) -> [(domain: String, vif: VifRecord)] {
        withLock {
            var out: [(domain: String, vif: VifRecord)] = []
            for r in records.values where r.domid != domid && r.isLive {
                for v in r.vifs ?? [] { out.append((r.name, v)) }
            }
            return out
        }
    }
}
