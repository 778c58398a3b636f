import Foundation
import Testing
@testable import XenStore
import UnixSocket

/// Lines the store logged.
final class LogLines: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ l: String) { lock.lock(); lines.append(l); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}

/// A temporary store directory, removed at the end.
private final class StoreDir {
    let path: String
    let log = LogLines()
    init() {
        var template = Array("/tmp/xsd-store-test-XXXXXX".utf8CString)
        path = String(cString: template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }!)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    var journal: String { path + "/journal" }
    var snapshot: String { path + "/snapshot" }

    /// Opens the store as xenstored does (load, then compact unless `compact` is false).
    func open(compact: Bool = true) throws -> (XenStoreCore, XenStorePersistentStore) {
        let store = XenStorePersistentStore(directory: path, log: { [log] l in log.append(l) })
        let core = XenStoreCore()
        if let state = try store.open() { core.restore(state) }
        if compact { try store.compact(core.stateAsChanges()) }
        core.recordsChanges = true
        return (core, store)
    }

    func bytes(_ p: String) -> [UInt8] { Array(FileManager.default.contents(atPath: p) ?? Data()) }
    func put(_ p: String, _ b: [UInt8]) { FileManager.default.createFile(atPath: p, contents: Data(b)) }
}

/// Writes through a session and journals each request as the server does.
private func journaled(_ core: XenStoreCore, _ store: XenStorePersistentStore, _ body: (inout Session) -> Void) {
    var s = Session(core)
    body(&s)
    store.append(core.takeChanges())
    store.sync()
}

@Suite struct PersistenceTests {
    @Test func contentsPermissionsAndIntroducedDomainsSurviveAReload() throws {
        let dir = StoreDir()
        do {
            let (core, store) = try dir.open()
            journaled(core, store) { s in
                _ = s.write("/local/domain/7/name", "guest")
                _ = s.ask(.setPerms, ["/local/domain/7/name", "n0", "r7"])
                _ = s.ask(.introduce, ["7", "0", "0"])
            }
            journaled(core, store) { s in _ = s.write("/vm/bin", "\u{1}\u{2}") }
            journaled(core, store) { s in _ = s.ask(.rm, ["/vm/bin"]) }
        }
        let (core, _) = try dir.open()
        var s = Session(core)
        #expect(s.ask(.read, ["/local/domain/7/name"]) == ["guest"])
        #expect(s.ask(.getPerms, ["/local/domain/7/name"]) == ["n0", "r7"])
        #expect(s.ask(.read, ["/local/domain/0/name"]) == ["Domain-0"])
        #expect(s.ask(.read, ["/vm/bin"]) == ["ERR", "ENOENT"])
        #expect(core.isIntroduced(7))
        #expect(s.ask(.directory, ["/local/domain"]) == ["0", "7"])
    }

    @Test func onlyCommittedTransactionsPersist() throws {
        let dir = StoreDir()
        do {
            let (core, store) = try dir.open()
            var s = Session(core)
            let t1 = UInt32(s.ask(.transactionStart, [""])[0])!
            _ = s.write("/tool/kept", "1", tx: t1)
            let t2 = UInt32(s.ask(.transactionStart, [""])[0])!
            _ = s.write("/tool/aborted", "1", tx: t2)
            #expect(core.takeChanges().isEmpty)  // nothing before a commit
            _ = s.ask(.transactionEnd, ["F"], tx: t2)
            #expect(core.takeChanges().isEmpty)
            _ = s.ask(.transactionEnd, ["T"], tx: t1)
            let changes = core.takeChanges()
            #expect(!changes.isEmpty)
            store.append(changes)
            store.sync()
        }
        let (core, _) = try dir.open()
        var s = Session(core)
        #expect(s.ask(.read, ["/tool/kept"]) == ["1"])
        #expect(s.ask(.read, ["/tool/aborted"]) == ["ERR", "ENOENT"])
    }

    /// Two records after the snapshot; returns the journal's bytes and the second record's offset.
    private func twoRecords(_ dir: StoreDir) throws -> ([UInt8], Int) {
        let (core, store) = try dir.open()
        journaled(core, store) { s in _ = s.write("/tool/a", "first") }
        let mid = store.journalSize
        journaled(core, store) { s in _ = s.write("/tool/b", "second") }
        return (dir.bytes(dir.journal), mid)
    }

    @Test(arguments: [1, 5, 9, 20])
    func aTornTailIsTruncatedAtTheLastGoodRecordAndLogged(cut: Int) throws {
        let dir = StoreDir()
        let (j, mid) = try twoRecords(dir)
        dir.put(dir.journal, Array(j[0..<(mid + cut)]))
        let (core, store) = try dir.open(compact: false)
        var s = Session(core)
        #expect(s.ask(.read, ["/tool/a"]) == ["first"])
        #expect(s.ask(.read, ["/tool/b"]) == ["ERR", "ENOENT"])
        #expect(dir.bytes(dir.journal).count == mid)
        #expect(store.journalSize == mid)
        let logged = dir.log.all
        #expect(logged.count == 1 && logged[0].contains(dir.journal) && logged[0].contains("truncated to \(mid) bytes"))
    }

    @Test func aFlippedByteEndsTheJournalThere() throws {
        let dir = StoreDir()
        var (j, mid) = try twoRecords(dir)
        j[mid - 3] ^= 0x40  // inside the first record's payload
        dir.put(dir.journal, j)
        let (core, _) = try dir.open(compact: false)
        var s = Session(core)
        #expect(s.ask(.read, ["/tool/a"]) == ["ERR", "ENOENT"])
        #expect(s.ask(.read, ["/tool/b"]) == ["ERR", "ENOENT"])
        #expect(dir.bytes(dir.journal).count == 8)
        #expect(dir.log.all.first?.contains("CRC-32C") ?? false)
    }

    @Test func hostileRecordsWithGoodChecksumsAreCutOff() throws {
        // Each payload is framed with a correct CRC, so only the decoder stands in the way.
        var hostile: [[UInt8]] = []
        var p: [UInt8] = [UInt8(ascii: "P")]
        XenStoreRecords.appendU16(9, &p); p += Array("/../etc/x".utf8)
        hostile.append(p)                                   // not a xenstore path
        hostile.append([UInt8(ascii: "Z"), 1, 2, 3])        // unknown tag
        hostile.append([UInt8(ascii: "I"), 0, 0, 1, 0])     // domid 65536
        var q: [UInt8] = [UInt8(ascii: "P")]
        XenStoreRecords.appendU16(2, &q); q += Array("/x".utf8)
        XenStoreRecords.appendU32(0xFFFF_FFF0, &q)          // value length far past the payload
        hostile.append(q)
        for payload in hostile {
            let dir = StoreDir()
            _ = try dir.open()
            var rec: [UInt8] = []
            XenStoreRecords.appendU32(UInt32(payload.count), &rec)
            XenStoreRecords.appendU32(XenStoreRecords.crc32c(payload), &rec)
            dir.put(dir.journal, dir.bytes(dir.journal) + rec + payload)
            let (core, _) = try dir.open(compact: false)
            #expect(core.node(at: "/x") == nil)
            #expect(dir.bytes(dir.journal).count == 8)
            #expect(dir.log.all.count == 1)
        }
        // A length field claiming 4 GiB.
        let dir = StoreDir()
        _ = try dir.open()
        dir.put(dir.journal, dir.bytes(dir.journal) + [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0])
        _ = try dir.open(compact: false)
        #expect(dir.log.all.first?.contains("out of range") ?? false)
    }

    @Test func aTreeThatIsNotATreeIsRefused() throws {
        let dir = StoreDir()
        _ = try dir.open()
        // A well-formed record that gives /local a child that does not exist.
        let bad = XenStoreRecords.record([.put(path: "/local", node: XenStoreNode(permissions: XenStorePermission.owner(0),
                                                                                  children: ["domain", "ghost"]))])
        dir.put(dir.journal, dir.bytes(dir.journal) + bad)
        #expect { _ = try dir.open() } throws: { e in
            "\(e)".contains("inconsistent") && "\(e)".contains("ghost")
        }
    }

    @Test func aDamagedSnapshotIsRefusedNamingTheFile() throws {
        let dir = StoreDir()
        _ = try dir.open()
        let good = dir.bytes(dir.snapshot)
        for damage in [{ (b: inout [UInt8]) in b[b.count / 2] ^= 1 },
                       { (b: inout [UInt8]) in b.removeLast(3) },
                       { (b: inout [UInt8]) in b[0] = UInt8(ascii: "Y") },
                       { (b: inout [UInt8]) in b += [0] }] {
            var b = good
            damage(&b)
            dir.put(dir.snapshot, b)
            #expect { _ = try dir.open() } throws: { e in
                "\(e)".hasPrefix(dir.snapshot) && "\(e)".contains("refusing to start")
            }
        }
        // The journal is left alone by a refusal.
        #expect(dir.bytes(dir.journal).count == 8)
    }

    @Test func aJournalThatIsNotOursIsRefused() throws {
        let dir = StoreDir()
        _ = try dir.open()
        dir.put(dir.journal, Array("#!/bin/sh\nrm -rf /\n".utf8))
        #expect { _ = try dir.open() } throws: { e in "\(e)".hasPrefix(dir.journal) && "\(e)".contains("not a xenstored journal") }
    }

    @Test func compactionKeepsEverythingAndShrinksTheJournal() throws {
        let dir = StoreDir()
        do {
            let (core, store) = try dir.open()
            store.compactThreshold = 4096
            let server = XenStoreServer(core: core, store: store)
            for i in 0..<300 {
                server.withCore { c -> ((), [XenStoreOutput]) in
                    var s = Session(c)
                    _ = s.write("/tool/n\(i % 40)", String(repeating: "v", count: i))
                    return ((), [])
                }
            }
            #expect(store.journalSize <= 4096 + 1024)
            server.stop()
        }
        let (core, _) = try dir.open()
        var s = Session(core)
        for i in 260..<300 { #expect(s.ask(.read, ["/tool/n\(i % 40)"]) == [String(repeating: "v", count: i)]) }
    }

    /// A store larger than one record may hold is snapshotted as several records (each at
    /// most the bound; here 4 KiB stands for the 64 MiB one) and all of them load again.
    @Test func aSnapshotLargerThanOneRecordIsSplitAndLoadsWhole() throws {
        let dir = StoreDir()
        do {
            let (core, store) = try dir.open()
            journaled(core, store) { s in for i in 0..<200 { _ = s.write("/tool/big/n\(i)", String(repeating: "x", count: 100 + i)) } }
            store.snapshotRecordBytes = 4096
            try store.compact(core.stateAsChanges())
        }
        let snap = dir.bytes(dir.snapshot)
        var offset = 8, records = 0
        while let (_, next) = try XenStoreRecords.readRecord(snap, at: offset) {
            #expect(next - offset - XenStoreRecords.headerSize <= 4096 + 512, "a record of \(next - offset) bytes")
            offset = next; records += 1
        }
        #expect(records > 5, "\(records) records for ~40 KiB of store")
        let (core, _) = try dir.open(compact: false)
        var s = Session(core)
        for i in [0, 99, 199] { #expect(s.ask(.read, ["/tool/big/n\(i)"]) == [String(repeating: "x", count: 100 + i)]) }
    }

    @Test func aServerJournalsBeforeItRepliesAndAReloadServesIt() throws {
        let dir = StoreDir()
        let sock = dir.path + "/sock"
        do {
            let (core, store) = try dir.open()
            let server = XenStoreServer(core: core, store: store)
            try server.listen(path: sock)
            server.start()
            let c = try XenStoreClient(path: sock)
            try c.write("/local/domain/3/device/vif/0/mac", "00:16:3e:00:00:01")
            try c.transaction { t in try t.write("/local/domain/3/name", "three") }
            // The reply arrived: the journal already holds both requests.
            let j = dir.bytes(dir.journal)
            #expect(j.count > 8)
            c.close()
            server.stop()
        }
        let (core, _) = try dir.open()
        var s = Session(core)
        #expect(s.ask(.read, ["/local/domain/3/device/vif/0/mac"]) == ["00:16:3e:00:00:01"])
        #expect(s.ask(.read, ["/local/domain/3/name"]) == ["three"])
    }
}

/// An in-memory daemon started later from another thread. `server` is set by that thread
/// and read by the test's, so it is behind a lock (ThreadSanitizer found it unguarded, and
/// the client's reply can arrive before the starter stored it, leaving the server unstopped).
private final class LateServer: @unchecked Sendable {
    private let cond = XSCondition()
    private var started: XenStoreServer?
    func start(_ sock: String) {
        let s = XenStoreServer()
        try! s.listen(path: sock)
        s.start()
        cond.withLock { started = s; cond.broadcast() }
    }
    /// The server once `start` has stored it (waiting up to 5 s), else nil.
    var server: XenStoreServer? {
        cond.withLock {
            let deadline = xsMonotonicNanoseconds() + 5_000_000_000
            while started == nil && cond.wait(until: deadline) {}
            return started
        }
    }
}

/// An in-process daemon with a persistent store that can be stopped and started again.
private final class RestartableDaemon: @unchecked Sendable {
    let dir = StoreDir()
    var sock: String { dir.path + "/sock" }
    var server: XenStoreServer!
    init() throws { try start() }
    func start() throws {
        let (core, store) = try dir.open()
        server = XenStoreServer(core: core, store: store)
        try server.listen(path: sock)
        server.start()
    }
}

@Suite struct ReconnectTests {
    @Test func aReconnectingClientWaitsForADaemonThatIsNotUpYet() throws {
        let dir = StoreDir()
        let sock = dir.path + "/late.sock"
        let c = try XenStoreClient(path: sock, reconnectMilliseconds: 3000)
        defer { c.close() }
        let holder = LateServer()
        let starter = Thread { usleep(300_000); holder.start(sock) }
        starter.start()
        #expect(try c.readString("/local/domain/0/name") == "Domain-0")
        holder.server?.stop()
    }

    @Test func aReconnectingClientCarriesOnWithItsWatchesAcrossADaemonRestart() throws {
        let d = try RestartableDaemon()
        let sock = d.sock
        let c = try XenStoreClient(path: sock, reconnectMilliseconds: 3000)
        defer { c.close() }
        let events = LogLines()
        let reconnected = LogLines()
        c.observeConnection(lost: { reconnected.append("lost") }, reconnected: { n in reconnected.append("back \(n)") })
        try c.watch("/local/domain/4", token: "dom4") { ev in events.append(ev.path) }
        try c.write("/local/domain/4/name", "four")
        d.server.stop()
        // While it is down a request waits; the daemon comes back with the store.
        let restarter = Thread { usleep(200_000); try! d.start() }
        restarter.start()
        #expect(try c.readString("/local/domain/4/name") == "four")
        #expect(reconnected.all == ["lost", "back 1"])
        // The watch was registered again: a change made by another client fires it.
        let other = try XenStoreClient(path: sock)
        try other.write("/local/domain/4/memory/target", "65536")
        other.close()
        let deadline = Date().addingTimeInterval(3)
        while !events.all.contains("/local/domain/4/memory/target") && Date() < deadline { usleep(10_000) }
        #expect(events.all.contains("/local/domain/4/memory/target"), "\(events.all)")
        // A transaction cannot survive: its end fails with a clear error (or ENOENT from the
        // new daemon when the end is sent after the restart).
        let tx = try c.startTransaction()
        d.server.stop()
        try d.start()
        #expect(throws: XenStoreError.self) { try c.endTransaction(tx) }
        d.server.stop()
        // Without the daemon the request fails after the reconnection time, naming the socket.
        let t0 = Date()
        #expect { _ = try c.read("/local/domain/4/name") } throws: { e in "\(e)".contains("does not answer on \(sock)") }
        #expect(Date().timeIntervalSince(t0) >= 2.5)
    }
}

@Suite struct BootTests {
    @Test func aStoreOfAnotherBootIsDiscardedAndTheSameBootKeepsIt() throws {
        let dir = StoreDir()
        let store = XenStorePersistentStore(directory: dir.path, log: { _ in })
        #expect(!store.discardIfFromAnotherBoot("boot-a"))
        do {
            let (core, s) = try dir.open()
            journaled(core, s) { x in _ = x.write("/local/domain/9/name", "nine") }
        }
        #expect(!store.discardIfFromAnotherBoot("boot-a"))
        #expect(try dir.open().0.node(at: "/local/domain/9/name") != nil)
        #expect(store.discardIfFromAnotherBoot("boot-b"))
        #expect(try dir.open().0.node(at: "/local/domain/9/name") == nil)
        #expect(XenStorePersistentStore.currentBootID()?.count == 36)
    }
}

/// A daemon that dies (closes the connection) after reading the first request, then on the
/// next connection answers every request with `reply`: an in-flight request at a crash.
private final class DyingDaemon: @unchecked Sendable {
    let path: String
    let lfd: Int32
    init(path: String) throws {
        self.path = path
        lfd = try UnixSocket.listen(path: path, backlog: 4)
        let l = lfd
        Thread {
            let first = accept(l, nil, nil)
            _ = Self.readMessage(first)
            close(first)
            let second = accept(l, nil, nil)
            while let m = Self.readMessage(second) {
                let payload: [UInt8] = m.type == XenStoreMessageType.read.rawValue ? Array("again".utf8) : Array("OK".utf8) + [0]
                let r = XenStoreMessage(type: m.type, requestID: m.requestID, transactionID: m.transactionID, payload: payload).encoded()
                _ = r.withUnsafeBytes { send(second, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            }
            close(second)
        }.start()
    }
    deinit { close(lfd); unlink(path) }

    static func readMessage(_ fd: Int32) -> XenStoreMessage? {
        func exactly(_ n: Int) -> [UInt8]? {
            var b = [UInt8](repeating: 0, count: n), got = 0
            while got < n {
                let r = b.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, n - got, 0) }
                if r <= 0 { return nil }
                got += r
            }
            return b
        }
        guard let h = exactly(XenStoreLimits.headerSize) else { return nil }
        let d = XenStoreMessage.decodeHeader(h)
        guard let p = d.length == 0 ? [] : exactly(Int(d.length)) else { return nil }
        return XenStoreMessage(type: d.type, requestID: d.requestID, transactionID: d.transactionID, payload: p)
    }
}

@Suite struct InFlightTests {
    @Test func aReadInFlightAtACrashIsSentAgain() throws {
        let dir = StoreDir()
        let d = try DyingDaemon(path: dir.path + "/dying.sock")
        let c = try XenStoreClient(path: d.path, reconnectMilliseconds: 3000)
        defer { c.close() }
        #expect(try c.readString("/local/domain/0/name") == "again")
    }

    @Test func aTransactionEndInFlightAtACrashFailsSayingSo() throws {
        let dir = StoreDir()
        let d = try DyingDaemon(path: dir.path + "/dying.sock")
        let c = try XenStoreClient(path: d.path, reconnectMilliseconds: 3000)
        defer { c.close() }
        #expect { try c.endTransaction(7) } throws: { e in
            (e as? XenStoreError) == .connectionLost(request: .transactionEnd)
                && "\(e)".contains("may or may not have taken effect")
        }
        // The client carries on on the new connection.
        #expect(try c.readString("/x") == "again")
    }
}
