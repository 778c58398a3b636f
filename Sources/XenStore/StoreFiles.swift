// xenstored's persistent store on disk: a snapshot plus a write-ahead journal in one
// directory (`$XENITH_ROOT/var/lib/xenstored` when xend starts it). Record format in
// StoreRecords.swift. Glibc only (xenstored keeps Foundation out).
//
//   snapshot   "XSSNAPS1" + one record: the whole committed store (parents first)
//   journal    "XSJOURN1" + records: one per request that changed the committed store
//              (a transaction's changes are one record, written at its commit)
//
// Durability: each record is written with write(2) when its request is handled, and the
// journal is fdatasync(2)ed before the reply to that request is sent, so an acknowledged
// change survives a crash of xenstored and of the host. Compaction (at start and whenever
// the journal passes `compactThreshold`): the whole store to `snapshot.tmp`, fsync, rename
// over `snapshot`, fsync the directory, then the journal is truncated to its header. A
// crash in between leaves the new snapshot and the old journal: replaying the journal over
// it gives the same store, as every put carries the whole node.
//
// Loading: a journal that ends in a torn or damaged record (short, bad length, CRC
// mismatch, undecodable) is truncated after its last good record and that is logged (the
// unacknowledged tail of a crash). A snapshot that is damaged in any way, a file that is
// not ours, or a store that is not a tree after replay is refused: xenstored does not start
// and says which file and why (move it aside to start with an empty store).
#if canImport(Glibc)
import Glibc
#endif

/// Why the persistent store cannot be opened or written; one line naming the file.
public struct XenStorePersistenceError: Error, Sendable, CustomStringConvertible {
    /// The file or directory at fault.
    public var path: String
    /// What is wrong and what to do, one line.
    public var reason: String
    public init(path: String, reason: String) { self.path = path; self.reason = reason }
    public var description: String { "\(path): \(reason)" }
}

/// The snapshot and journal of one store directory. Not thread-safe: `XenStoreServer` uses
/// it under its lock.
public final class XenStorePersistentStore {
    static let journalMagic: [UInt8] = Array("XSJOURN1".utf8)
    static let snapshotMagic: [UInt8] = Array("XSSNAPS1".utf8)

    /// The directory holding `snapshot` and `journal` (created mode 0700).
    public let directory: String
    /// `DIR/journal`: the write-ahead journal.
    public var journalPath: String { directory + "/journal" }
    /// `DIR/snapshot`: the last compaction's whole store.
    public var snapshotPath: String { directory + "/snapshot" }
    /// Journal size (bytes) beyond which the server compacts it into the snapshot.
    public var compactThreshold = 4 << 20
    /// Receives what loading repaired (a truncated journal tail) and write failures.
    public var log: (String) -> Void

    private var journalFD: Int32 = -1
    /// Current journal size in bytes.
    public private(set) var journalSize = 0
    private var unsynced = false
    private var writeFailing = false

    /// - Parameters:
    ///   - directory: where the files live; created (0700, parents 0755) when absent.
    ///   - log: one line per repair or failure.
    public init(directory: String, log: @escaping (String) -> Void) {
        self.directory = directory
        self.log = log
    }

    deinit { if journalFD >= 0 { Glibc.close(journalFD) } }

    /// Reads the snapshot and replays the journal, truncating a torn tail (logged), and
    /// opens the journal for appending.
    /// - Returns: the stored state, nil when the directory holds no store yet.
    /// - Throws: `XenStorePersistenceError` naming the file: unreadable, not ours, a
    ///   damaged snapshot, a journal without a snapshot, or a store that is not a tree.
    public func open() throws(XenStorePersistenceError) -> XenStoreStoreState? {
        try Self.makeDirectories(directory)
        unlink(snapshotPath + ".tmp")  // a compaction that did not finish
        var state = XenStoreStoreState()
        var found = false
        if let snap = try Self.readFile(snapshotPath) {
            found = true
            guard snap.count >= 8, Array(snap[0..<8]) == Self.snapshotMagic else {
                throw XenStorePersistenceError(path: snapshotPath, reason: "not a xenstored snapshot (no XSSNAPS1 header); refusing to start: move it aside to start with an empty store")
            }
            do {
                // One record, or several for a store larger than one record may hold.
                guard var (changes, end) = try XenStoreRecords.readRecord(snap, at: 8) else {
                    throw XenStoreRecordError(offset: 8, reason: "no record after the header")
                }
                state.apply(changes)
                while let (more, next) = try XenStoreRecords.readRecord(snap, at: end) {
                    state.apply(more)
                    (changes, end) = (more, next)
                }
            } catch {
                throw XenStorePersistenceError(path: snapshotPath, reason: "damaged snapshot \(error); refusing to start: move it aside to start with an empty store")
            }
        }
        if let j = try Self.readFile(journalPath) {
            var good = 0
            if j.count < 8 && Array(j) == Array(Self.journalMagic.prefix(j.count)) {
                if !j.isEmpty { log("\(journalPath): header cut short (\(j.count) bytes); journal reset") }
            } else {
                guard Array(j.prefix(8)) == Self.journalMagic else {
                    throw XenStorePersistenceError(path: journalPath, reason: "not a xenstored journal (no XSJOURN1 header); refusing to start: move it aside")
                }
                if !found && j.count > 8 {
                    throw XenStorePersistenceError(path: journalPath, reason: "a journal without \(snapshotPath); refusing to start: move it aside")
                }
                good = 8
                var records = 0
                while true {
                    do {
                        guard let (changes, next) = try XenStoreRecords.readRecord(j, at: good) else { break }
                        state.apply(changes)
                        good = next
                        records += 1
                    } catch {
                        log("\(journalPath): \(error.reason) at byte \(error.offset); truncated to \(good) bytes after \(records) good records (\(j.count - good) bytes dropped: a change never acknowledged)")
                        break
                    }
                }
            }
            if good < j.count || good == 0 {
                let fd = Glibc.open(journalPath, O_WRONLY | O_CLOEXEC)
                if fd >= 0 {
                    _ = ftruncate(fd, off_t(good))
                    _ = fsync(fd)
                    Glibc.close(fd)
                }
            }
        }
        if found, let why = state.inconsistency() {
            throw XenStorePersistenceError(path: directory, reason: "the stored tree is inconsistent (\(why)); refusing to start: move snapshot and journal aside")
        }
        try openJournal()
        return found ? state : nil
    }

    private func openJournal() throws(XenStorePersistenceError) {
        if journalFD >= 0 { Glibc.close(journalFD) }
        journalFD = Glibc.open(journalPath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard journalFD >= 0 else { throw Self.systemError(journalPath, "open") }
        var st = stat()
        fstat(journalFD, &st)
        journalSize = Int(st.st_size)
        if journalSize == 0 {
            guard Self.writeAll(journalFD, Self.journalMagic) else { throw Self.systemError(journalPath, "write") }
            journalSize = 8
            _ = fsync(journalFD)
        }
    }

    /// Appends one record of `changes` (write(2); `sync()` makes it durable).
    /// - Returns: false when it could not be written (logged once until writes work again).
    @discardableResult
    public func append(_ changes: [XenStoreChange]) -> Bool {
        guard !changes.isEmpty else { return true }
        let rec = XenStoreRecords.record(changes)
        guard journalFD >= 0, Self.writeAll(journalFD, rec) else {
            let why = String(cString: strerror(errno))
            if !writeFailing { log("\(journalPath): write failed (\(why)): changes are not persistent until it works again") }
            writeFailing = true
            // A partial record would end the journal; cut it off.
            if journalFD >= 0 { _ = ftruncate(journalFD, off_t(journalSize)) }
            return false
        }
        if writeFailing { log("\(journalPath): writes work again") }
        writeFailing = false
        journalSize += rec.count
        unsynced = true
        return true
    }

    /// fdatasync(2)s the journal when something was appended since the last call.
    public func sync() {
        guard unsynced, journalFD >= 0 else { return }
        unsynced = false
        while fdatasync(journalFD) != 0 && errno == EINTR {}
    }

    /// Whether the journal has outgrown `compactThreshold`.
    public var wantsCompaction: Bool { journalSize > compactThreshold }

    /// Largest payload of one snapshot record (`XenStoreRecords.recordMax`; smaller in tests).
    var snapshotRecordBytes = XenStoreRecords.recordMax

    /// Writes `state` (the whole store) as the new snapshot, in as many records as it needs
    /// (none above `snapshotRecordBytes`), and empties the journal.
    /// - Throws: `XenStorePersistenceError` when the snapshot cannot be written; the old
    ///   snapshot and journal then stay as they were.
    public func compact(_ state: [XenStoreChange]) throws(XenStorePersistenceError) {
        let tmp = snapshotPath + ".tmp"
        let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Self.systemError(tmp, "open") }
        let ok = Self.writeAll(fd, Self.snapshotMagic + XenStoreRecords.records(state, maxPayload: snapshotRecordBytes)) && fsync(fd) == 0
        let e = errno
        Glibc.close(fd)
        guard ok else { unlink(tmp); throw XenStorePersistenceError(path: tmp, reason: "write: \(String(cString: strerror(e)))") }
        guard rename(tmp, snapshotPath) == 0 else { let err = Self.systemError(snapshotPath, "rename"); unlink(tmp); throw err }
        let dfd = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); Glibc.close(dfd) }
        if journalFD >= 0, ftruncate(journalFD, 8) == 0 {
            _ = fsync(journalFD)
            journalSize = 8
            unsynced = false
        }
    }

    // MARK: boots

    /// `/proc/sys/kernel/random/boot_id`: changes with every boot of the host.
    public static func currentBootID() -> String? {
        // A /proc file has no size: read it directly.
        let fd = Glibc.open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var buf = [UInt8](repeating: 0, count: 128)
        let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        let s = String(decoding: buf[0..<n], as: UTF8.self).filter { !$0.isWhitespace }
        return s.isEmpty ? nil : s
    }

    /// A store is for one boot of the host, as Xen's (its init script removes the tdb at
    /// boot): no domain of an earlier boot runs any more, so their entries would be stale.
    /// Removes `snapshot` and `journal` when `boot-id` in the directory names another boot
    /// (logged), then records `bootID`. Call before `open()`.
    /// - Returns: whether a store was discarded.
    @discardableResult
    public func discardIfFromAnotherBoot(_ bootID: String) -> Bool {
        try? Self.makeDirectories(directory)
        let idPath = directory + "/boot-id"
        let stored = (try? Self.readFile(idPath)).flatMap { $0 }.map { String(decoding: $0, as: UTF8.self).filter { !$0.isWhitespace } }
        var discarded = false
        if stored != bootID {
            let had = access(snapshotPath, F_OK) == 0 || access(journalPath, F_OK) == 0
            if had {
                unlink(snapshotPath)
                unlink(journalPath)
                log("\(directory): store of an earlier boot (\(stored ?? "unknown")) discarded: its domains no longer run")
                discarded = true
            }
            let fd = Glibc.open(idPath + ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            if fd >= 0 {
                _ = Self.writeAll(fd, Array((bootID + "\n").utf8))
                _ = fsync(fd)
                Glibc.close(fd)
                rename(idPath + ".tmp", idPath)
            }
        }
        return discarded
    }

    // MARK: files

    private static func readFile(_ path: String) throws(XenStorePersistenceError) -> [UInt8]? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw systemError(path, "open")
        }
        defer { Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw systemError(path, "fstat") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw XenStorePersistenceError(path: path, reason: "not a regular file") }
        guard st.st_size <= off_t(XenStoreRecords.recordMax + 64) * 4 else {
            throw XenStorePersistenceError(path: path, reason: "\(st.st_size) bytes: larger than any store this daemon writes; refusing to start: move it aside")
        }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var got = 0
        while got < out.count {
            let n = out.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + got, $0.count - got) }
            if n < 0 { if errno == EINTR { continue }; throw systemError(path, "read") }
            if n == 0 { break }
            got += n
        }
        out.removeSubrange(got...)
        return out
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 { if errno == EINTR { continue }; return false }
            off += n
        }
        return true
    }

    private static func systemError(_ path: String, _ op: String) -> XenStorePersistenceError {
        XenStorePersistenceError(path: path, reason: "\(op): \(String(cString: strerror(errno)))")
    }

    private static func makeDirectories(_ path: String) throws(XenStorePersistenceError) {
        var cur = path.hasPrefix("/") ? "" : "."
        let comps = path.split(separator: "/", omittingEmptySubsequences: true)
        for (i, comp) in comps.enumerated() {
            cur += "/" + comp
            if mkdir(cur, i == comps.count - 1 ? 0o700 : 0o755) != 0 && errno != EEXIST {
                throw systemError(cur, "mkdir")
            }
        }
    }
}
