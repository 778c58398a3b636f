import Synchronization
import Testing
@testable import XenStore

/// Drives a XenStoreCore in-process like a client would.
struct Session {
    let core: XenStoreCore
    let id: XenStoreConnectionID
    var nextID: UInt32 = 1

    init(_ core: XenStoreCore, domid: UInt32 = 0) {
        self.core = core
        id = core.connect(domid: domid)
    }

    /// Sends a request; returns (reply, every output including events for other connections).
    mutating func send(_ type: XenStoreMessageType, _ strings: [String], tx: UInt32 = 0) -> (reply: XenStoreMessage, all: [XenStoreOutput]) {
        let m = XenStoreMessage(type, requestID: nextID, transactionID: tx, strings: strings)
        nextID += 1
        let out = core.handle(m, from: id)
        return (out[0].message, out)
    }

    mutating func raw(_ type: UInt32, _ payload: [UInt8], tx: UInt32 = 0) -> XenStoreMessage {
        core.handle(XenStoreMessage(type: type, requestID: 99, transactionID: tx, payload: payload), from: id)[0].message
    }

    /// The reply payload as strings, or "E..." for an error reply.
    mutating func ask(_ type: XenStoreMessageType, _ strings: [String], tx: UInt32 = 0) -> [String] {
        let r = send(type, strings, tx: tx).reply
        if r.type == XenStoreMessageType.error.rawValue { return ["ERR", String(decoding: r.payload.dropLast(), as: UTF8.self)] }
        if type == .read { return [String(decoding: r.payload, as: UTF8.self)] }
        return r.strings().strings
    }

    mutating func write(_ path: String, _ value: String, tx: UInt32 = 0) -> [String] {
        var p = Array(path.utf8) + [0]
        p.append(contentsOf: value.utf8)
        let r = core.handle(XenStoreMessage(.write, requestID: 7, transactionID: tx, payload: p), from: id)[0].message
        if r.type == XenStoreMessageType.error.rawValue { return ["ERR", String(decoding: r.payload.dropLast(), as: UTF8.self)] }
        return r.strings().strings
    }
}

func events(_ outs: [XenStoreOutput], for id: XenStoreConnectionID) -> [[String]] {
    outs.filter { $0.connection == id && $0.message.type == XenStoreMessageType.watchEvent.rawValue }
        .map { $0.message.strings().strings }
}

@Suite struct TreeTests {
    @Test func initialLayout() {
        var s = Session(XenStoreCore())
        #expect(s.ask(.read, ["/local/domain/0/name"]) == ["Domain-0"])
        #expect(s.ask(.read, ["/local/domain/0/domid"]) == ["0"])
        #expect(Set(s.ask(.directory, ["/"])) == ["local", "tool", "vm"])
        #expect(s.ask(.getPerms, ["/"]) == ["n0"])
    }

    @Test func writeCreatesParentsAndRmRemovesSubtree() {
        var s = Session(XenStoreCore())
        #expect(s.write("/a/b/c", "v") == ["OK"])
        #expect(s.ask(.read, ["/a/b"]) == [""])
        #expect(s.ask(.read, ["/a/b/c"]) == ["v"])
        #expect(s.ask(.directory, ["/a"]) == ["b"])
        #expect(s.ask(.rm, ["/a"]) == ["OK"])
        #expect(s.ask(.read, ["/a/b/c"]) == ["ERR", "ENOENT"])
        #expect(s.core.node(at: "/a/b") == nil)
        #expect(!s.ask(.directory, ["/"]).contains("a"))
        // rm of an absent node is fine, of a node whose parent is absent is ENOENT.
        #expect(s.ask(.rm, ["/tool/nothing"]) == ["OK"])
        #expect(s.ask(.rm, ["/nothing/here"]) == ["ERR", "ENOENT"])
        #expect(s.ask(.rm, ["/"]) == ["ERR", "EINVAL"])
    }

    @Test func mkdirKeepsValues() {
        var s = Session(XenStoreCore())
        _ = s.write("/x/y", "keep")
        #expect(s.ask(.mkdir, ["/x/y"]) == ["OK"])
        #expect(s.ask(.read, ["/x/y"]) == ["keep"])
        #expect(s.ask(.mkdir, ["/x/z/w"]) == ["OK"])
        #expect(s.ask(.directory, ["/x"]) == ["y", "z"])
    }

    @Test func binaryValuesAndRelativePaths() {
        var s = Session(XenStoreCore())
        let value: [UInt8] = [0, 1, 2, 0, 255]
        let r = s.raw(XenStoreMessageType.write.rawValue, Array("/bin".utf8) + [0] + value)
        #expect(r.strings().strings == ["OK"])
        #expect(s.raw(XenStoreMessageType.read.rawValue, Array("/bin".utf8) + [0]).payload == value)
        // Relative paths resolve under the connection's home.
        #expect(s.write("rel/x", "1") == ["OK"])
        #expect(s.ask(.read, ["/local/domain/0/rel/x"]) == ["1"])
    }

    @Test func malformedInputGetsErrors() {
        var s = Session(XenStoreCore())
        for bad in ["//", "/a//b", "/a/", "", "/a b", "/a.b", "/é"] {
            #expect(s.ask(.read, [bad]) == ["ERR", "EINVAL"], "path \(bad)")
        }
        #expect(s.raw(XenStoreMessageType.read.rawValue, Array("/tool".utf8)).type == XenStoreMessageType.error.rawValue)
        #expect(s.raw(XenStoreMessageType.read.rawValue, []).type == XenStoreMessageType.error.rawValue)
        #expect(s.raw(XenStoreMessageType.write.rawValue, Array("/nonul".utf8)).type == XenStoreMessageType.error.rawValue)
        #expect(s.raw(999, [1, 2, 3]).payload == Array("ENOSYS".utf8) + [0])
        #expect(s.raw(XenStoreMessageType.watchEvent.rawValue, [0]).type == XenStoreMessageType.error.rawValue)
        #expect(s.raw(XenStoreMessageType.read.rawValue, Array("/tool".utf8) + [0], tx: 42).payload == Array("ENOENT".utf8) + [0])
        let long = "/" + String(repeating: "a", count: 3100)
        #expect(s.ask(.read, [long]) == ["ERR", "EINVAL"])
        #expect(s.ask(.getDomainPath, ["x"]) == ["ERR", "EINVAL"])
        #expect(s.ask(.setPerms, ["/tool", "q1"]) == ["ERR", "EINVAL"])
    }

    @Test func decoderRejectsOversizedLength() throws {
        var d = XenStoreMessageDecoder()
        var m = XenStoreMessage(.read, requestID: 5, strings: ["/a"]).encoded()
        d.feed(Array(m[0..<10]))
        #expect(try d.next() == nil)
        d.feed(Array(m[10...]))
        #expect(try d.next()?.requestID == 5)
        m = XenStoreMessage(.read).encoded()
        m[12] = 0x01; m[13] = 0x10  // len 4097
        d.feed(m)
        #expect(throws: XenStoreMessageDecoder.OversizedPayload.self) { try d.next() }
    }
}

@Suite struct PermissionTests {
    @Test func domainCannotReadOthers() {
        let core = XenStoreCore()
        var dom0 = Session(core)
        var dom5 = Session(core, domid: 5)
        _ = dom0.write("/local/domain/7/secret", "x")
        #expect(dom5.ask(.read, ["/local/domain/7/secret"]) == ["ERR", "EACCES"])
        #expect(dom5.ask(.directory, ["/local/domain/7"]) == ["ERR", "EACCES"])
        #expect(dom5.write("/local/domain/7/secret", "y") == ["ERR", "EACCES"])
        // Absent below an unreadable node: EACCES, not ENOENT (no existence probing).
        #expect(dom5.ask(.read, ["/local/domain/7/none"]) == ["ERR", "EACCES"])
        // Grant read to 5.
        #expect(dom0.ask(.setPerms, ["/local/domain/7/secret", "n0", "r5"]) == ["OK"])
        #expect(dom5.ask(.read, ["/local/domain/7/secret"]) == ["x"])
        #expect(dom5.write("/local/domain/7/secret", "y") == ["ERR", "EACCES"])
        #expect(dom0.ask(.getPerms, ["/local/domain/7/secret"]) == ["n0", "r5"])
    }

    @Test func inheritanceAndOwnership() {
        let core = XenStoreCore()
        var dom0 = Session(core)
        var dom3 = Session(core, domid: 3)
        _ = dom0.ask(.mkdir, ["/local/domain/3/data"])
        _ = dom0.ask(.setPerms, ["/local/domain/3/data", "n3"])
        // Relative paths of domain 3 land under its home; it owns what it creates.
        #expect(dom3.write("data/k/v", "1") == ["OK"])
        #expect(dom0.ask(.getPerms, ["/local/domain/3/data/k/v"]) == ["n3"])
        _ = dom0.ask(.setPerms, ["/local/domain/3/data", "n3", "r0", "b4"])
        #expect(dom3.write("data/n", "2") == ["OK"])
        #expect(dom0.ask(.getPerms, ["/local/domain/3/data/n"]) == ["n3", "r0", "b4"])
        // dom0 creating under it keeps the parent's owner.
        _ = dom0.write("/local/domain/3/data/by0", "z")
        #expect(dom0.ask(.getPerms, ["/local/domain/3/data/by0"]) == ["n3", "r0", "b4"])
        // Owner can chmod but not give away; others cannot chmod.
        #expect(dom3.ask(.setPerms, ["data/n", "r3"]) == ["OK"])
        #expect(dom3.ask(.setPerms, ["data/n", "b9"]) == ["ERR", "EACCES"])
        var dom4 = Session(core, domid: 4)
        #expect(dom4.ask(.setPerms, ["/local/domain/3/data/by0", "b4"]) == ["ERR", "EACCES"])
        #expect(dom4.write("/local/domain/3/data/by0", "w") == ["OK"])
        // Unprivileged domains cannot manage domains or control the daemon.
        #expect(dom4.ask(.introduce, ["9", "0", "0"]) == ["ERR", "EACCES"])
        #expect(dom4.ask(.control, ["help"]) == ["ERR", "EACCES"])
        #expect(dom4.ask(.restrict, ["0"]) == ["ERR", "EACCES"])
    }

    @Test func restrictMakesConnectionUnprivileged() {
        let core = XenStoreCore()
        var s = Session(core)
        #expect(s.ask(.restrict, ["6"]) == ["OK"])
        #expect(s.ask(.read, ["/local/domain/0/name"]) == ["ERR", "EACCES"])
        #expect(core.domid(of: s.id) == 6)
    }

    @Test func quota() {
        let core = XenStoreCore()
        core.nodeQuota = 5
        var dom0 = Session(core)
        var d = Session(core, domid: 2)
        _ = dom0.ask(.mkdir, ["/local/domain/2"])
        _ = dom0.ask(.setPerms, ["/local/domain/2", "n2"])  // dom2 owns 1
        #expect(d.write("a/b/c/d", "x") == ["OK"])  // +4 = 5
        #expect(d.write("e", "x") == ["ERR", "ENOSPC"])
    }
}

@Suite struct WatchTests {
    @Test func firesOnRegistrationNodeAndDescendants() {
        let core = XenStoreCore()
        var w = Session(core)
        var c = Session(core)
        let reg = w.send(.watch, ["/local/domain/1", "tok"])
        #expect(reg.reply.strings().strings == ["OK"])
        #expect(events(reg.all, for: w.id) == [["/local/domain/1", "tok"]])
        #expect(events(c.send(.write, ["/local/domain/1/x"]).all, for: w.id) == [["/local/domain/1/x", "tok"]])
        #expect(events(c.send(.write, ["/local/domain/10"]).all, for: w.id) == [])
        #expect(events(c.send(.write, ["/local/domain/1"]).all, for: w.id) == [["/local/domain/1", "tok"]])
        // Removing a parent fires with the watch's own path.
        #expect(events(c.send(.rm, ["/local/domain"]).all, for: w.id) == [["/local/domain/1", "tok"]])
        #expect(w.ask(.watch, ["/local/domain/1", "tok"]) == ["ERR", "EEXIST"])
        #expect(w.ask(.unwatch, ["/local/domain/1", "tok"]) == ["OK"])
        #expect(w.ask(.unwatch, ["/local/domain/1", "tok"]) == ["ERR", "ENOENT"])
        #expect(events(c.send(.write, ["/local/domain/1/y"]).all, for: w.id) == [])
    }

    @Test func relativeWatchAndPermissionFilter() {
        let core = XenStoreCore()
        var dom0 = Session(core)
        _ = dom0.ask(.mkdir, ["/local/domain/4/device"])
        _ = dom0.ask(.setPerms, ["/local/domain/4/device", "n4"])
        var d4 = Session(core, domid: 4)
        #expect(d4.ask(.watch, ["device", "t"]) == ["OK"])
        #expect(events(dom0.send(.write, ["/local/domain/4/device/vbd"]).all, for: d4.id) == [["device/vbd", "t"]])
        // A watch on / by dom4 does not see nodes it cannot read.
        var d4b = Session(core, domid: 4)
        _ = d4b.send(.watch, ["/", "root"])
        #expect(events(dom0.send(.write, ["/tool/hidden"]).all, for: d4b.id) == [])
        #expect(events(dom0.send(.write, ["/local/domain/4/device/x"]).all, for: d4b.id) == [["/local/domain/4/device/x", "root"]])
    }

    @Test func specialWatches() {
        let core = XenStoreCore()
        var s = Session(core)
        _ = s.send(.watch, ["@introduceDomain", "i"])
        _ = s.send(.watch, ["@releaseDomain", "r"])
        #expect(events(s.send(.introduce, ["3", "0", "0"]).all, for: s.id) == [["@introduceDomain", "i"]])
        #expect(s.ask(.isDomainIntroduced, ["3"]) == ["T"])
        #expect(s.ask(.isDomainIntroduced, ["4"]) == ["F"])
        #expect(s.ask(.getDomainPath, ["3"]) == ["/local/domain/3"])
        #expect(events(s.send(.release, ["3"]).all, for: s.id) == [["@releaseDomain", "r"]])
        #expect(s.ask(.release, ["3"]) == ["ERR", "ENOENT"])
        #expect(s.ask(.introduce, ["0", "0", "0"]) == ["ERR", "EINVAL"])
    }

    @Test func watchEventsNeverExceedThePayloadMaximum() {
        let core = XenStoreCore()
        var w = Session(core)
        var c = Session(core)
        func largest(_ outs: [XenStoreOutput]) -> Int { outs.map(\.message.payload.count).max() ?? 0 }
        // A 4000-byte token with a 3000-byte path would make a 7003-byte event: refused.
        let huge = w.send(.watch, ["/", String(repeating: "t", count: 4000)])
        #expect(huge.reply.type == XenStoreMessageType.error.rawValue)
        #expect(huge.reply.strings().strings == ["E2BIG"] && huge.all.count == 1)
        let long = "/" + String(repeating: "p", count: 2999)
        #expect(events(c.send(.write, [long]).all, for: w.id) == [])
        // The longest token that fits with the longest path: 4096 - 3072 - 2 bytes.
        #expect(XenStoreCore.watchTokenMax == 1022)
        let tooLong = String(repeating: "u", count: 1023)
        #expect(w.ask(.watch, ["/", tooLong]) == ["ERR", "E2BIG"])
        let token = String(repeating: "k", count: 1022)
        #expect(w.ask(.watch, ["/", token]) == ["OK"])
        let longest = "/" + String(repeating: "q", count: 3071)
        let out = c.send(.write, [longest]).all
        #expect(events(out, for: w.id) == [[longest, token]])
        #expect(largest(out) == XenStoreLimits.payloadMax)
    }

    @Test func oversizedEventIsDroppedAndLogged() {
        final class Log: Sendable { let lines = Mutex<[String]>([]) }
        let log = Log()
        let core = XenStoreCore()
        core.log = { line in log.lines.withLock { $0.append(line) } }
        #expect(core.watchEvent(path: "/a", token: String(repeating: "t", count: 4093)) == nil)
        #expect(log.lines.withLock { $0 } == ["dropped a 4097-byte watch event (more than 4096)"])
        #expect(core.watchEvent(path: "/a", token: String(repeating: "t", count: 4092))?.payload.count == 4096)
    }

    @Test func resetWatches() {
        let core = XenStoreCore()
        var s = Session(core)
        _ = s.send(.watch, ["/tool", "t"])
        #expect(s.ask(.resetWatches, [""]) == ["OK"])
        #expect(events(s.send(.write, ["/tool/a"]).all, for: s.id) == [])
    }
}

@Suite struct TransactionTests {
    @Test func isolatedUntilCommitThenEvents() {
        let core = XenStoreCore()
        var a = Session(core)
        var b = Session(core)
        _ = b.send(.watch, ["/t", "w"])
        let tx = UInt32(a.ask(.transactionStart, [""])[0])!
        #expect(a.write("/t/x", "1", tx: tx) == ["OK"])
        #expect(a.ask(.read, ["/t/x"], tx: tx) == ["1"])
        #expect(b.ask(.read, ["/t/x"]) == ["ERR", "ENOENT"])
        let end = a.send(.transactionEnd, ["T"], tx: tx)
        #expect(end.reply.strings().strings == ["OK"])
        #expect(events(end.all, for: b.id) == [["/t/x", "w"]])
        #expect(b.ask(.read, ["/t/x"]) == ["1"])
        #expect(a.ask(.transactionEnd, ["T"], tx: tx) == ["ERR", "ENOENT"])
    }

    @Test func conflictGivesEAGAIN() {
        let core = XenStoreCore()
        var a = Session(core)
        var b = Session(core)
        _ = a.write("/c/n", "0")
        let tx = UInt32(a.ask(.transactionStart, [""])[0])!
        #expect(a.ask(.read, ["/c/n"], tx: tx) == ["0"])
        _ = b.write("/c/n", "5")
        #expect(a.write("/c/n", "1", tx: tx) == ["OK"])
        #expect(a.ask(.transactionEnd, ["T"], tx: tx) == ["ERR", "EAGAIN"])
        #expect(a.ask(.read, ["/c/n"]) == ["5"])
        // Unrelated changes do not conflict.
        let tx2 = UInt32(a.ask(.transactionStart, [""])[0])!
        _ = a.ask(.read, ["/c/n"], tx: tx2)
        _ = b.write("/other", "x")
        #expect(a.write("/c/n", "6", tx: tx2) == ["OK"])
        #expect(a.ask(.transactionEnd, ["T"], tx: tx2) == ["OK"])
        #expect(a.ask(.read, ["/c/n"]) == ["6"])
        // A new child in a listed directory conflicts.
        let tx3 = UInt32(a.ask(.transactionStart, [""])[0])!
        _ = a.ask(.directory, ["/c"], tx: tx3)
        _ = b.write("/c/new", "x")
        _ = a.write("/c/m", "1", tx: tx3)
        #expect(a.ask(.transactionEnd, ["T"], tx: tx3) == ["ERR", "EAGAIN"])
        #expect(core.node(at: "/c/m") == nil)
    }

    @Test func rmAndAbortInTransaction() {
        let core = XenStoreCore()
        var a = Session(core)
        _ = a.write("/r/a/b", "1")
        let tx = UInt32(a.ask(.transactionStart, [""])[0])!
        #expect(a.ask(.rm, ["/r/a"], tx: tx) == ["OK"])
        #expect(a.ask(.read, ["/r/a/b"], tx: tx) == ["ERR", "ENOENT"])
        #expect(a.ask(.directory, ["/r"], tx: tx) == [])
        #expect(a.ask(.transactionEnd, ["F"], tx: tx) == ["OK"])
        #expect(a.ask(.read, ["/r/a/b"]) == ["1"])
        let tx2 = UInt32(a.ask(.transactionStart, [""])[0])!
        _ = a.ask(.rm, ["/r/a"], tx: tx2)
        #expect(a.ask(.transactionEnd, ["T"], tx: tx2) == ["OK"])
        #expect(core.node(at: "/r/a/b") == nil)
        #expect(a.ask(.directory, ["/r"]) == [])
        #expect(a.ask(.transactionEnd, ["X"], tx: tx2) == ["ERR", "ENOENT"])
        #expect(a.ask(.transactionStart, [""], tx: 5) == ["ERR", "EBUSY"])
    }
}

@Suite struct RobustnessTests {
    /// Random requests (types, tx ids, payloads built from path-like fragments and raw
    /// bytes) from privileged and unprivileged connections: every one gets exactly one reply.
    @Test func randomRequestsNeverTrap() {
        let core = XenStoreCore()
        let ids = [core.connect(domid: 0), core.connect(domid: 3), core.connect(domid: 0)]
        var rng = SystemRandomNumberGenerator()
        let fragments = ["/", "//", "a", "/a", "/a/b", "local/domain", "/local/domain/3", "@introduceDomain", "T", "F",
                         "r3", "b0", "n", "3", "65536", "-1", "", "tok", "x y", "data/k"]
        for i in 0..<30_000 {
            var payload: [UInt8] = []
            for _ in 0..<Int.random(in: 0...4, using: &rng) {
                if Bool.random(using: &rng) {
                    payload += Array(fragments.randomElement(using: &rng)!.utf8)
                } else {
                    payload += (0..<Int.random(in: 0...6, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                }
                if Int.random(in: 0..<4, using: &rng) != 0 { payload.append(0) }
            }
            let type = Int.random(in: 0..<10, using: &rng) == 0 ? UInt32.random(in: 0...0xffff, using: &rng)
                                                                 : UInt32.random(in: 0...22, using: &rng)
            let tx = Int.random(in: 0..<5, using: &rng) == 0 ? UInt32.random(in: 0...3, using: &rng) : 0
            let id = ids.randomElement(using: &rng)!
            let out = core.handle(XenStoreMessage(type: type, requestID: UInt32(i), transactionID: tx, payload: payload), from: id)
            let replies = out.filter { $0.connection == id && $0.message.requestID == UInt32(i) && $0.message.type != XenStoreMessageType.watchEvent.rawValue }
            #expect(replies.count == 1)
            if replies.count != 1 { break }
        }
        // The tree still answers: a fresh node reads back what was written. (A random
        // privileged RM may have removed any seeded node, e.g. "/" + "local/domain", so
        // those are not asked for.)
        var s = Session(core)
        #expect(s.write("/after-fuzz/k", "v") == ["OK"])
        #expect(s.ask(.read, ["/after-fuzz/k"]) == ["v"])
        #expect(s.ask(.directory, ["/after-fuzz"]) == ["k"])
    }

    @Test func inProcessReadRate() {
        let core = XenStoreCore()
        var s = Session(core)
        for i in 0..<10_000 { _ = s.write("/local/domain/\(i % 100)/device/vbd/\(i)/state", "4") }
        let req = XenStoreMessage(.read, requestID: 1, strings: ["/local/domain/42/device/vbd/5042/state"])
        let n = 200_000
        let t0 = xsMonotonicNanoseconds()
        var bytes = 0
        for _ in 0..<n { bytes += core.handle(req, from: s.id)[0].message.payload.count }
        let dt = Double(xsMonotonicNanoseconds() - t0) / 1e9
        print("xenstore core READ with \(core.nodeCount) nodes: \(Int(Double(n) / dt))/s")
        #expect(bytes == n)
    }
}

/// The pci back-end entries as Xen's xend wrote them (issue 18, item 4).
@Suite struct PciDeviceEntriesTests {
    @Test func devNAndNumDevs() {
        let d = XenStoreDevice.pci(domid: 7, devices: [("0000:01:00.0", nil), ("0000:00:04.1", 5)])
        let e = Dictionary(uniqueKeysWithValues: d.entries().map { ($0.path, $0.value) })
        let be = "/local/domain/0/backend/pci/7/0"
        #expect(e[be + "/dev-0"] == "0000:01:00.0")
        #expect(e[be + "/dev-1"] == "0000:00:04.1")
        #expect(e[be + "/num_devs"] == "2")
        #expect(e[be + "/vdevfn-0"] == nil)
        #expect(e[be + "/vdevfn-1"] == "0x29")
        #expect(e[be + "/frontend"] == "/local/domain/7/device/pci/0")
        #expect(e["/local/domain/7/device/pci/0/backend"] == be)
        #expect(e[be + "/state"] == "1")
    }
}
