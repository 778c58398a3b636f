import Foundation
import Testing
@testable import XenStore
import UnixSocket

/// An in-process daemon on a temporary socket (domain 0) plus a domain socket for domain 5.
final class TestDaemon {
    let dir: String
    let socket: String
    let domainSocket: String
    let server = XenStoreServer()

    init() throws {
        var template = Array("/tmp/xenstore-test-XXXXXX".utf8CString)
        let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        dir = String(cString: p!)
        socket = dir + "/run/xenstored/socket"
        domainSocket = dir + "/dom5"
        try server.listen(path: socket)
        try server.listen(path: domainSocket, domid: 5)
        server.start()
    }

    deinit {
        server.stop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    func client() throws -> XenStoreClient { try XenStoreClient(path: socket) }
}

/// Runs one of Debian's xenstore-utils against `socket`: (exit status, stdout, stderr).
@discardableResult
func util(_ name: String, _ args: [String], socket: String) throws -> (status: Int32, out: String, err: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/" + name)
    p.arguments = args
    p.environment = ["XENSTORED_PATH": socket, "PATH": "/usr/bin:/bin"]
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

/// Whether the xenstore-utils are installed; prints SKIP otherwise.
func haveUtils(_ test: String) -> Bool {
    let tools = ["xenstore-read", "xenstore-write", "xenstore-ls", "xenstore-list", "xenstore-rm",
                 "xenstore-chmod", "xenstore-watch"]
    let missing = tools.filter { !FileManager.default.isExecutableFile(atPath: "/usr/bin/" + $0) }
    if !missing.isEmpty { print("SKIP: \(test): xenstore-utils missing (\(missing.joined(separator: " ")))") }
    return missing.isEmpty
}

@Suite(.serialized) struct ClientServerTests {
    @Test func clientBasics() throws {
        let d = try TestDaemon()
        let c = try d.client()
        try c.write("/a/b", "hello")
        #expect(try c.readString("/a/b") == "hello")
        #expect(try c.directory("/a") == ["b"])
        try c.mkdir("/a/c")
        #expect(try c.directory("/a") == ["b", "c"])
        #expect(try c.permissions("/a/b") == [XenStorePermission(domid: 0, access: .none)])
        try c.setPermissions("/a/b", [XenStorePermission(domid: 0, access: .read), XenStorePermission(domid: 5, access: .both)])
        #expect(try c.permissions("/a/b").map(\.description) == ["r0", "b5"])
        try c.rm("/a")
        #expect(try c.readIfPresent("/a/b") == nil)
        #expect(throws: XenStoreError.reply(.ENOENT)) { try c.read("/a/b") }
        #expect(try c.exists("/tool"))
        #expect(try c.domainPath(3) == "/local/domain/3")
        #expect(try c.control("help").contains("print"))
        // Relative paths are under /local/domain/0 for dom0.
        try c.write("mine", "1")
        #expect(try c.readString("/local/domain/0/mine") == "1")
    }

    @Test func watchesBlockingAndHandler() throws {
        let d = try TestDaemon()
        let c = try d.client()
        let w = try d.client()
        // The handler below captures `w`, which keeps it (and its threads) alive until close():
        // without this the client leaked (LeakSanitizer, `make sanitize`).
        defer { w.close() }
        try w.watch("/w", token: "t1")
        #expect(try w.waitForWatchEvent(timeoutMilliseconds: 2000) == XenStoreWatchEvent(path: "/w", token: "t1"))
        try c.write("/w/x", "1")
        try c.write("/other", "1")
        try c.write("/w/y", "2")
        #expect(try w.waitForWatchEvent(timeoutMilliseconds: 2000)?.path == "/w/x")
        #expect(try w.waitForWatchEvent(timeoutMilliseconds: 2000)?.path == "/w/y")
        #expect(try w.waitForWatchEvent(timeoutMilliseconds: 100) == nil)

        let seen = XSCondition()
        nonisolated(unsafe) var paths: [String] = []
        try w.watch("@introduceDomain", token: "intro") { ev in
            seen.withLock { paths.append(ev.path); seen.broadcast() }
            // Handlers may call the client.
            _ = try? w.isDomainIntroduced(9)
        }
        try c.introduceDomain(9)
        seen.withLock {
            let deadline = xsMonotonicNanoseconds() + 2_000_000_000
            while paths.count < 2 && seen.wait(until: deadline) {}
        }
        #expect(seen.withLock { paths } == ["@introduceDomain", "@introduceDomain"])
        #expect(try c.isDomainIntroduced(9))
        try w.unwatch("/w", token: "t1")
        try c.write("/w/z", "3")
        #expect(try w.waitForWatchEvent(timeoutMilliseconds: 100) == nil)
    }

    @Test func transactionConflictAndRetry() throws {
        let d = try TestDaemon()
        let a = try d.client()
        let b = try d.client()
        try a.write("/counter", "0")
        let tx = try a.startTransaction()
        #expect(try a.readString("/counter", transaction: tx) == "0")
        try b.write("/counter", "10")
        try a.write("/counter", "1", transaction: tx)
        #expect(throws: XenStoreError.reply(.EAGAIN)) { try a.endTransaction(tx) }
        #expect(try a.readString("/counter") == "10")

        // The retrying helper re-runs the body after a conflict.
        var attempts = 0
        try a.transaction { t in
            attempts += 1
            let v = Int(try t.readString("/counter"))!
            if attempts == 1 { try b.write("/counter", "20") }
            try t.write("/counter", String(v + 1))
        }
        #expect(attempts == 2)
        #expect(try a.readString("/counter") == "21")

        // Two threads incrementing concurrently lose no update.
        let n = 200
        let done = XSCondition()
        nonisolated(unsafe) var finished = 0
        nonisolated(unsafe) var failed = 0
        var threads: [pthread_t] = []
        for _ in 0..<2 {
            let c = try d.client()
            // Joined below: a finished thread never joined keeps its stack (ThreadSanitizer).
            threads += xsStartThread {
                var failures = 0
                for _ in 0..<n {
                    do {
                        try c.transaction { t in
                            let v = Int(try t.readString("/counter"))!
                            try t.write("/counter", String(v + 1))
                        }
                    } catch { failures += 1 }
                }
                done.withLock { finished += 1; failed += failures; done.broadcast() }
            }.map { [$0] } ?? []
        }
        done.withLock { while finished < 2 { done.wait(until: nil) } }
        for t in threads { pthread_join(t, nil) }
        #expect(failed == 0)
        #expect(try a.readString("/counter") == String(21 + 2 * n))
    }

    @Test func restrictedClientIsRefused() throws {
        let d = try TestDaemon()
        let admin = try d.client()
        try admin.write("/local/domain/7/secret", "x")
        let guest = try d.client()
        try guest.restrict(to: 5)
        #expect(throws: XenStoreError.reply(.EACCES)) { try guest.read("/local/domain/7/secret") }
        #expect(throws: XenStoreError.reply(.EACCES)) { try guest.introduceDomain(3) }
        // The domain socket gives the same identity.
        let viaSocket = try XenStoreClient(path: d.domainSocket)
        #expect(throws: XenStoreError.reply(.EACCES)) { try viaSocket.read("/local/domain/7/secret") }
    }

    @Test func malformedClientsDoNotHurtTheDaemon() throws {
        let d = try TestDaemon()
        // Oversized len: the daemon closes that connection.
        let fd = try XSSocket.connect(d.socket)
        var header = XenStoreMessage(.read).encoded()
        header[12] = 0xff; header[13] = 0xff
        #expect(XSSocket.sendAll(fd, header))
        #expect(XSSocket.receiveExactly(fd, 1) == nil)
        close(fd)
        // Unknown type and a path without NUL: error replies on a live connection.
        let fd2 = try XSSocket.connect(d.socket)
        #expect(XSSocket.sendAll(fd2, XenStoreMessage(type: 1234, requestID: 1, payload: [1]).encoded()
                                    + XenStoreMessage(.read, requestID: 2, payload: Array("/tool".utf8)).encoded()
                                    + XenStoreMessage(.read, requestID: 3, payload: Array("//".utf8) + [0]).encoded()))
        for (id, err) in [(UInt32(1), "ENOSYS"), (2, "EINVAL"), (3, "EINVAL")] {
            let h = XenStoreMessage.decodeHeader(XSSocket.receiveExactly(fd2, 16)!)
            let p = XSSocket.receiveExactly(fd2, Int(h.length))!
            #expect(h.type == XenStoreMessageType.error.rawValue && h.requestID == id)
            #expect(String(decoding: p.dropLast(), as: UTF8.self) == err)
        }
        // Half a message then hang up.
        #expect(XSSocket.sendAll(fd2, Array(XenStoreMessage(.read, strings: ["/tool"]).encoded().prefix(20))))
        close(fd2)
        let c = try d.client()
        #expect(try c.readString("/local/domain/0/name") == "Domain-0")
    }

    @Test func socketOwnership() throws {
        let d = try TestDaemon()
        let other = XenStoreServer()
        #expect(throws: XenStoreServerError.self) { try other.listen(path: d.socket) }
        // A stale socket (nobody accepting) is replaced.
        let stale = d.dir + "/stale"
        close(try UnixSocket.listen(path: stale))   // its file stays; nobody listens
        try other.listen(path: stale)
        other.start()
        #expect(try XenStoreClient(path: stale).readString("/local/domain/0/domid") == "0")
        other.stop()
    }

    @Test func domainEntries() throws {
        let d = try TestDaemon()
        let c = try d.client()
        let uuid = "6e5d1a8c-0d3f-4c55-9a51-3f6e0b7f2a11"
        try c.writeDomain(XenStoreDomainInfo(domid: 5, name: "guest", uuid: uuid, memoryTargetKiB: 262_144, vcpus: 2,
                                             consolePort: 2, consoleRingRef: 1234))
        #expect(try c.readString("/local/domain/5/name") == "guest")
        #expect(try c.readString("/local/domain/5/vm") == "/vm/" + uuid)
        #expect(try c.readString("/local/domain/5/memory/target") == "262144")
        #expect(try c.readString("/local/domain/5/cpu/1/availability") == "online")
        #expect(try c.readString("/local/domain/5/console/ring-ref") == "1234")
        #expect(try c.readString("/vm/\(uuid)/name") == "guest")
        let vbd = try #require(XenStoreDevice.vbd(domid: 5, dev: "xvda", params: "/img/disk.raw"))
        #expect(vbd.devid == 51712)
        try c.writeDevice(vbd)
        try c.writeDevice(XenStoreDevice.vif(domid: 5, devid: 0, mac: "00:16:3e:00:00:01", bridge: "xenbr0"))
        #expect(try c.readString("/local/domain/0/backend/vbd/5/51712/params") == "/img/disk.raw")
        #expect(try c.readString("/local/domain/5/device/vbd/51712/backend") == "/local/domain/0/backend/vbd/5/51712")
        #expect(try c.state("/local/domain/0/backend/vif/5/0") == .initialising)
        #expect(XenStoreLayout.virtualDeviceNumber("hda") == 768)
        #expect(XenStoreLayout.virtualDeviceNumber("sdb") == 2064)
        #expect(XenStoreLayout.virtualDeviceNumber("xvdb1") == 51729)

        // The guest (domain 5 via its socket) reads its home, writes its frontend state,
        // cannot touch the backend or dom0's data.
        let guest = try XenStoreClient(path: d.domainSocket)
        #expect(try guest.readString("name") == "guest")
        #expect(throws: XenStoreError.reply(.EACCES)) { try guest.write("name", "evil") }
        try guest.setState("device/vbd/51712", .initialised)
        #expect(try c.state(vbd.frontendPath) == .initialised)
        #expect(try guest.readString(vbd.backendPath + "/params") == "/img/disk.raw")
        #expect(throws: XenStoreError.reply(.EACCES)) { try guest.setState(vbd.backendPath, .connected) }
        #expect(throws: XenStoreError.reply(.EACCES)) { try guest.read("/local/domain/0/name") }

        try c.removeDomain(5)
        #expect(try c.readIfPresent("/local/domain/5/name") == nil)
        #expect(try c.readIfPresent("/vm/\(uuid)/name") == nil)
        #expect(try c.readIfPresent(vbd.backendPath + "/params") == nil)
    }

    @Test func readThroughput() throws {
        let d = try TestDaemon()
        let c = try d.client()
        try c.write("/bench/key", "value")
        let n = 20_000
        let t0 = xsMonotonicNanoseconds()
        for _ in 0..<n { _ = try c.read("/bench/key") }
        let dt = Double(xsMonotonicNanoseconds() - t0) / 1e9
        print("xenstore read round trips: \(n) in \(String(format: "%.3f", dt)) s = \(Int(Double(n) / dt))/s")
        #expect(dt < 30)
    }
}

@Suite(.serialized) struct DaemonTests {
    /// The built `xenstored` next to the test bundle (swift test builds every product).
    static var binary: String? {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let path = URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("xenstored").path
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }

    @Test func daemonizesRefusesSecondAndCleansUp() throws {
        guard let bin = Self.binary else { print("SKIP: xenstored binary not found next to the tests"); return }
        var template = Array("/tmp/xenstored-test-XXXXXX".utf8CString)
        let dir = String(cString: template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }!)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sock = dir + "/run/xenstored/socket", pidFile = dir + "/xenstored.pid"
        func run(_ args: [String]) throws -> (Int32, String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: bin)
            p.arguments = args
            let err = Pipe()
            p.standardError = err
            try p.run()
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
        }
        // Without -N it returns once the socket accepts.
        #expect(try run(["--socket", sock, "--pid-file", pidFile]).0 == 0)
        #expect(XenStoreServer.isListening(sock))
        let pid = pid_t(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))!
        #expect(try XenStoreClient(path: sock).readString("/local/domain/0/name") == "Domain-0")
        // A second daemon is refused with one line naming the path.
        for args in [["--socket", sock], ["-N", "--socket", sock]] {
            let (status, err) = try run(args)
            #expect(status == 1)
            #expect(err.contains(sock) && err.split(separator: "\n").count == 1)
        }
        // SIGTERM: the daemon removes its socket and pid file.
        kill(pid, SIGTERM)
        var gone = false
        for _ in 0..<200 where !gone { usleep(10_000); gone = !FileManager.default.fileExists(atPath: sock) }
        #expect(gone)
        #expect(!FileManager.default.fileExists(atPath: pidFile))
    }
}

@Suite(.serialized) struct XenstoreUtilsTests {
    @Test func writeReadListRemove() throws {
        guard haveUtils("writeReadListRemove") else { return }
        let d = try TestDaemon()
        #expect(try util("xenstore-write", ["/t/a", "hello", "/t/b/c", "two words"], socket: d.socket).status == 0)
        #expect(try util("xenstore-read", ["/t/a"], socket: d.socket).out == "hello\n")
        #expect(try util("xenstore-read", ["/t/b/c"], socket: d.socket).out == "two words\n")
        #expect(try util("xenstore-list", ["/t"], socket: d.socket).out == "a\nb\n")
        let ls = try util("xenstore-ls", ["/t"], socket: d.socket).out
        #expect(ls == "a = \"hello\"\nb = \"\"\n c = \"two words\"\n")
        #expect(try util("xenstore-ls", ["-p", "/t"], socket: d.socket).out.contains("(n0)"))
        #expect(try util("xenstore-rm", ["/t/b"], socket: d.socket).status == 0)
        #expect(try util("xenstore-read", ["/t/b/c"], socket: d.socket).status != 0)
        #expect(try util("xenstore-list", ["/t"], socket: d.socket).out == "a\n")
        let c = try d.client()
        #expect(try c.readString("/t/a") == "hello")
    }

    @Test func watchFiresOncePerChange() throws {
        guard haveUtils("watchFiresOncePerChange") else { return }
        let d = try TestDaemon()
        let c = try d.client()
        try c.mkdir("/w")
        let outFile = d.dir + "/watch.out"
        #expect(FileManager.default.createFile(atPath: outFile, contents: nil))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/xenstore-watch")
        p.arguments = ["-n", "4", "/w"]
        p.environment = ["XENSTORED_PATH": d.socket]
        p.standardOutput = FileHandle(forWritingAtPath: outFile)
        try p.run()
        // The watch fires once on registration: wait for that line.
        let deadline = Date().addingTimeInterval(10)
        while (try? String(contentsOfFile: outFile, encoding: .utf8)) != "/w\n" && Date() < deadline { usleep(10_000) }
        try c.write("/w/a", "1")
        try c.write("/elsewhere", "1")
        try c.write("/w/a", "2")
        try c.rm("/w/a")
        while p.isRunning && Date() < deadline { usleep(10_000) }
        if p.isRunning { p.terminate() }
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(try String(contentsOfFile: outFile, encoding: .utf8) == "/w\n/w/a\n/w/a\n/w/a\n")
    }

    @Test func transactionConflictWithUtilsWriter() throws {
        guard haveUtils("transactionConflictWithUtilsWriter") else { return }
        let d = try TestDaemon()
        let c = try d.client()
        try c.write("/tx/value", "1")
        var attempts = 0
        try c.transaction { t in
            attempts += 1
            let v = Int(try t.readString("/tx/value"))!
            // A concurrent writer (Xen's own xenstore-write) commits in between, once.
            if attempts == 1 { try util("xenstore-write", ["/tx/value", "100"], socket: d.socket) }
            try t.write("/tx/value", String(v * 2))
        }
        #expect(attempts == 2)
        #expect(try util("xenstore-read", ["/tx/value"], socket: d.socket).out == "200\n")
    }

    @Test func permissionRefusal() throws {
        guard haveUtils("permissionRefusal") else { return }
        let d = try TestDaemon()
        #expect(try util("xenstore-write", ["/local/domain/7/secret", "s3cret"], socket: d.socket).status == 0)
        #expect(try util("xenstore-chmod", ["/local/domain/7/secret", "n0"], socket: d.socket).status == 0)
        // Domain 5 (the domain socket) is refused.
        let refused = try util("xenstore-read", ["/local/domain/7/secret"], socket: d.domainSocket)
        #expect(refused.status != 0)
        #expect(refused.out.isEmpty)
        #expect(try util("xenstore-write", ["/local/domain/7/secret", "x"], socket: d.domainSocket).status != 0)
        // Grant read to 5: now it may read, still not write.
        #expect(try util("xenstore-chmod", ["/local/domain/7/secret", "n0", "r5"], socket: d.socket).status == 0)
        #expect(try util("xenstore-read", ["/local/domain/7/secret"], socket: d.domainSocket).out == "s3cret\n")
        #expect(try util("xenstore-write", ["/local/domain/7/secret", "x"], socket: d.domainSocket).status != 0)
        #expect(try util("xenstore-ls", ["-p", "/local/domain/7"], socket: d.socket).out.contains("(n0,r5)"))
        #expect(try d.client().readString("/local/domain/7/secret") == "s3cret")
    }
}
