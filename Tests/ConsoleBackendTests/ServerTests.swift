import CLinux
import ConsoleBackend
import Glibc
import Testing

// MARK: helpers

func makeTempDir() -> String {
    var template = Array("/tmp/xenith-console-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
}

func removeTree(_ path: String) {
    // Test scratch space only: a few files and one level of directories.
    if let d = opendir(path) {
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name == "." || name == ".." { continue }
            let p = path + "/" + name
            if unlink(p) != 0 { removeTree(p) }
        }
        closedir(d)
    }
    rmdir(path)
}

func readWholeFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &buf, buf.count)
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

/// Polls `cond` every 10 ms for up to `timeout` seconds.
func eventually(_ timeout: Double = 10, _ cond: () -> Bool) -> Bool {
    var waited = 0.0
    while waited < timeout {
        if cond() { return true }
        usleep(10_000)
        waited += 0.01
    }
    return cond()
}

/// Runs a blocking closure on its own pthread (never on the concurrency pool).
final class Background<T>: @unchecked Sendable {
    final class Job: @unchecked Sendable {
        let body: () -> T
        var result: T?
        init(_ b: @escaping () -> T) { body = b }
    }
    private var thread = pthread_t()
    private let job: Job

    init(_ body: @escaping () -> T) {
        job = Job(body)
        let ptr = Unmanaged.passRetained(job).toOpaque()
        pthread_create(&thread, nil, { arg in
            let j = Unmanaged<AnyObject>.fromOpaque(arg!).takeRetainedValue()
            (j as! Runnable).runJob()
            return nil
        }, ptr)
    }

    func wait() -> T { pthread_join(thread, nil); return job.result! }
}

protocol Runnable: AnyObject { func runJob() }
extension Background.Job: Runnable { func runJob() { result = body() } }

/// A pipe whose read end is non-blocking; `text` accumulates what arrived.
final class TestPipe {
    let r: Int32, w: Int32
    private var got: [UInt8] = []
    init() {
        var fds: [Int32] = [0, 0]
        _ = pipe(&fds)
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        r = fds[0]; w = fds[1]
        _ = clinux_fcntl_int(r, F_SETFL, O_NONBLOCK)
    }
    deinit { close(r); close(w) }
    var text: String {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(r, &buf, buf.count)
            if n <= 0 { break }
            got += buf[0..<n]
        }
        return String(decoding: got, as: UTF8.self)
    }
    func send(_ s: String) { _ = s.withCString { write(w, $0, strlen($0)) } }
    func send(_ b: [UInt8]) { _ = b.withUnsafeBytes { write(w, $0.baseAddress, $0.count) } }
}

/// An in-process xenconsoled on a socket in a fresh directory.
final class TestDaemon {
    let dir = makeTempDir()
    var socket: String { dir + "/sock" }
    var logDir: String { dir + "/log" }
    let listener: Int32
    let server: ConsoleServer
    init() throws {
        listener = try bindConsoleSocket(path: dir + "/sock")
        server = try ConsoleServer(listenFD: listener, logDirectory: dir + "/log", log: { _ in })
        server.start()
    }
    deinit { server.stop(); close(listener); removeTree(dir) }
    func log(_ name: String) -> String { readWholeFile(logDir + "/guest-\(name).log") }
}

extension ConsoleFrontend {
    func say(_ s: String) { Array(s.utf8).withUnsafeBytes { guestOutput($0) } }
}

/// Sends one raw protocol line with fds; returns the reply line.
func rawCommand(_ path: String, _ line: String, fds: [Int32] = []) -> String {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
    let msg = Array((line + "\n").utf8)
    _ = msg.withUnsafeBytes { b in fds.withUnsafeBufferPointer { clinux_send_with_fds(fd, b.baseAddress, b.count, $0.baseAddress, Int32(fds.count)) } }
    var reply: [UInt8] = []
    var c: UInt8 = 0
    while read(fd, &c, 1) == 1 && c != 10 { reply.append(c) }
    return String(decoding: reply, as: UTF8.self)
}

/// Attaches a client on a background thread and waits until guest output reaches it.
func attachAndSync(_ d: TestDaemon, domid: Int, core: ConsoleFrontend, input: TestPipe, output: TestPipe) -> Background<Int32>? {
    let client = Background { attachConsole(socketPath: d.socket, domid: domid, quiet: true, input: input.r, output: output.w) }
    var i = 0
    let ok = eventually {
        i += 1
        core.say("sync \(i)\n")
        usleep(20_000)
        return output.text.contains("sync ")
    }
    return ok ? client : nil
}

// MARK: tests

@Suite(.serialized) struct ServerTests {
    @Test func logsGuestOutputAndServesAttachedClients() throws {
        let d = try TestDaemon()
        let ch = try ConsoleRingChannel.create(name: "g7")
        let core = ConsoleFrontend(channel: ch)
        core.say("early boot line\n")          // before registration: waits in the ring
        try registerConsole(socketPath: d.socket, domid: 7, name: "guest7", channel: ch)
        #expect(eventually { d.log("guest7").contains("early boot line\n") })
        #expect(try listConsoles(socketPath: d.socket).map(\.domid) == [7])

        let input = TestPipe(), output = TestPipe()
        let client = try #require(attachAndSync(d, domid: 7, core: core, input: input, output: output))
        core.say("live output\n")
        #expect(eventually { output.text.contains("live output") })

        // Keystrokes reach the in ring, in order.
        input.send("ls -l\r")
        var typed: [UInt8] = []
        #expect(eventually { core.pumpInput(room: 4096) { typed += $0 }; return typed == Array("ls -l\r".utf8) })

        // A second client sees the same output.
        let input2 = TestPipe(), output2 = TestPipe()
        let client2 = try #require(attachAndSync(d, domid: 7, core: core, input: input2, output: output2))
        core.say("to both\n")
        #expect(eventually { output.text.contains("to both") && output2.text.contains("to both") })

        // Ctrl-] detaches (bytes before it are still delivered).
        input.send([UInt8(ascii: "q"), 0x1d, UInt8(ascii: "z")])
        #expect(client.wait() == 0)
        typed = []
        #expect(eventually { core.pumpInput(room: 4096) { typed += $0 }; return typed == [UInt8(ascii: "q")] })
        input2.send([0x1d])
        #expect(client2.wait() == 0)
        #expect(d.log("guest7").contains("live output\n"))
    }

    @Test func attachingToADomainWithoutConsoleFails() throws {
        let d = try TestDaemon()
        let input = TestPipe(), output = TestPipe()
        #expect(attachConsole(socketPath: d.socket, domid: 42, quiet: true, input: input.r, output: output.w) == 1)
        #expect(attachConsole(socketPath: d.dir + "/nothing", domid: 42, quiet: true, input: input.r, output: output.w) == 1)
        #expect(throws: ConsoleError.self) { try unregisterConsole(socketPath: d.socket, domid: 42) }
    }

    @Test func unregisterDisconnectsClientsAndReregisterReplaces() throws {
        let d = try TestDaemon()
        let ch = try ConsoleRingChannel.create(name: "g3")
        let core = ConsoleFrontend(channel: ch)
        try registerConsole(socketPath: d.socket, domid: 3, name: "web", channel: ch)
        core.say("first life\n")
        #expect(eventually { d.log("web").contains("first life") })

        // Registering the same domid again replaces the registration; clients stay.
        let input = TestPipe(), output = TestPipe()
        let client = try #require(attachAndSync(d, domid: 3, core: core, input: input, output: output))
        try registerConsole(socketPath: d.socket, domid: 3, name: "web", channel: ch)
        core.say("second life\n")
        #expect(eventually { d.log("web").contains("second life") })
        #expect(eventually { output.text.contains("second life") })
        #expect(d.log("web").contains("first life"), "the log is appended to, never truncated")

        try unregisterConsole(socketPath: d.socket, domid: 3)
        #expect(client.wait() == 0, "the attached client is told (EOF) and returns")
        #expect(attachConsole(socketPath: d.socket, domid: 3, quiet: true, input: input.r, output: output.w) == 1)
        #expect(try listConsoles(socketPath: d.socket).isEmpty)
    }

    @Test func typingFasterThanTheGuestReadsLosesNothing() throws {
        let d = try TestDaemon()
        let ch = try ConsoleRingChannel.create(name: "g1")
        let core = ConsoleFrontend(channel: ch)
        try registerConsole(socketPath: d.socket, domid: 1, name: "slow", channel: ch)
        let input = TestPipe(), output = TestPipe()
        let client = try #require(attachAndSync(d, domid: 1, core: core, input: input, output: output))
        let sent = (0..<10_000).map { UInt8(32 + $0 % 90) }   // never 0x1d
        input.send(sent)
        var got: [UInt8] = []
        // A slow UART: 100 bytes at a time.
        #expect(eventually(20) { core.pumpInput(room: 100) { got += $0 }; return got.count >= sent.count })
        #expect(got == sent)
        input.send([0x1d])
        #expect(client.wait() == 0)
    }

    @Test func slowOrVanishingClientsNeverStallTheGuest() throws {
        let d = try TestDaemon()
        let ch = try ConsoleRingChannel.create(name: "g2")
        let core = ConsoleFrontend(channel: ch)
        try registerConsole(socketPath: d.socket, domid: 2, name: "chatty", channel: ch)
        // A client that attaches and never reads.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in d.socket.utf8.enumerated() { p[i] = b } }
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        _ = "attach 2\n".withCString { write(fd, $0, 9) }
        let line = String(repeating: "x", count: 99) + "\n"
        for _ in 0..<20_000 { core.say(line) }   // 2 MB
        core.say("the end\n")
        // As the core does on inEvent: push the backlog as xenconsoled makes room.
        #expect(eventually(20) { core.flushBacklog(); return d.log("chatty").hasSuffix("the end\n") })
        #expect(d.log("chatty").utf8.count == 2_000_008 - Int(core.droppedBytes), "all but the counted drops")
        close(fd)
        #expect(try listConsoles(socketPath: d.socket).map(\.domid) == [2], "the daemon is still serving")
    }

    @Test func badRequestsAreRefused() throws {
        let d = try TestDaemon()
        #expect(rawCommand(d.socket, "bogus 1 2").hasPrefix("error"))
        #expect(rawCommand(d.socket, "register 1 ../../etc").hasPrefix("error"))
        #expect(rawCommand(d.socket, "register -4 x").hasPrefix("error"))
        #expect(rawCommand(d.socket, "register 1 x").hasPrefix("error"), "no descriptors")
        // An unsealed memfd could be shrunk under the daemon: refused.
        let fd = clinux_memfd_create("x", CLINUX_MFD_CLOEXEC)
        _ = ftruncate(fd, 4096)
        let e1 = eventfd(0, 0), e2 = eventfd(0, 0)
        let reply = rawCommand(d.socket, "register 1 x", fds: [fd, e1, e2])
        #expect(reply.contains("sealed"), "\(reply)")
        // A directory as the log: refused.
        let ch = try ConsoleRingChannel.create(name: "x")
        let dirfd = open(d.dir, O_RDONLY | O_DIRECTORY)
        #expect(rawCommand(d.socket, "register 1 x", fds: [ch.ringFD, ch.outEventFD, ch.inEventFD, dirfd]).hasPrefix("error"))
        close(fd); close(e1); close(e2); close(dirfd)
        #expect(rawCommand(d.socket, String(repeating: "A", count: 5000)).hasPrefix("error"))
        #expect(rawCommand(d.socket, "list") == "ok")
        #expect(throws: ConsoleError.self) { try registerConsole(socketPath: d.socket, domid: 1, name: "a/b", channel: ch) }
    }
}
