import CLinux
import ConsoleBackend
import Foundation
import Testing

/// The console path end to end: xenconsoled as a sandboxed process (SIGKILL, restart,
/// re-register: the log continues and `xm console` attaches again) and the real core on
/// /dev/kvm writing its COM1 into a console ring made by the test.
@Suite(.serialized) struct ConsoleTests {
    let daemon = Env.binary("xenconsoled")
    let core = Env.binary("xenith-core")
    let manifest = Env.root.appendingPathComponent("manifests/xenconsoled.manifest").path

    /// A scratch directory with the daemon's socket and log directory.
    final class Scratch {
        let dir: String
        var socket: String { dir + "/run/xenconsoled/socket" }
        var logDir: String { dir + "/var/log/xen/console" }
        init() {
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("xenith-console-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        deinit { try? FileManager.default.removeItem(atPath: dir) }
        func log(_ name: String) -> String {
            readText(logDir + "/guest-\(name).log")
        }
    }

    /// Starts `xenconsoled -N` under its manifest and waits until it answers.
    func startDaemon(_ s: Scratch) throws -> Running {
        let d = try Running(daemon, ["-N", "--socket", s.socket, "--log-dir", s.logDir, "--manifest", manifest])
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if (try? listConsoles(socketPath: s.socket)) != nil { return d }
            usleep(20_000)
        }
        Issue.record("xenconsoled did not answer: \(d.errors.get())")
        return d
    }

    func waitUntil(_ timeout: Double = 20, _ cond: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if cond() { return true }; usleep(20_000) }
        return cond()
    }

    /// A pipe pair for attachConsole's input and output, with the output collected.
    final class Terminal: @unchecked Sendable {
        let input = Pipe(), output = Pipe()
        let text = Locked("")
        init() {
            output.fileHandleForReading.readabilityHandler = { [text] h in
                let d = h.availableData
                text.update { $0 += String(decoding: d, as: UTF8.self) }
            }
        }
        func type(_ bytes: [UInt8]) { input.fileHandleForWriting.write(Data(bytes)) }
    }

    /// Runs attachConsole (what `xm console` calls) on its own thread.
    final class Attached: @unchecked Sendable {
        let status = Locked<Int32?>(nil)
        let thread: Thread
        init(socket: String, domid: Int, terminal: Terminal) {
            let st = status
            let inFD = terminal.input.fileHandleForReading.fileDescriptor
            let outFD = terminal.output.fileHandleForWriting.fileDescriptor
            thread = Thread { st.set(attachConsole(socketPath: socket, domid: domid, quiet: false, input: inFD, output: outFD)) }
            thread.start()
        }
        func wait(_ timeout: Double = 10) -> Int32? {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline { if let s = status.get() { return s }; usleep(10_000) }
            return status.get()
        }
    }

    @Test func daemonSurvivesSigkillAndRestart() throws {
        let s = Scratch()
        var d = try startDaemon(s)
        #expect(d.errors.get().contains("sandbox: xenconsoled applied manifest"), "\(d.errors.get())")
        let ch = try ConsoleRingChannel.create(name: "console-vm1")
        let guest = ConsoleFrontend(channel: ch)
        func say(_ t: String) { Array(t.utf8).withUnsafeBytes { guest.guestOutput($0) } }
        try registerConsole(socketPath: s.socket, domid: 5, name: "vm1", channel: ch)
        say("line before the kill\n")
        #expect(waitUntil { s.log("vm1").contains("line before the kill") })

        let term = Terminal()
        let a = Attached(socket: s.socket, domid: 5, terminal: term)
        var n = 0
        #expect(waitUntil { n += 1; say("sync \(n)\n"); usleep(20_000); return term.text.get().contains("sync") })

        kill(d.process.processIdentifier, SIGKILL)
        _ = d.wait(timeout: 5)
        #expect(a.wait() == 0, "the attached client ends cleanly when xenconsoled dies")
        say("line while xenconsoled is down\n")    // stays in the ring

        d = try startDaemon(s)
        #expect(throws: ConsoleError.self) { try unregisterConsole(socketPath: s.socket, domid: 5) }  // no registrations after restart
        try registerConsole(socketPath: s.socket, domid: 5, name: "vm1", channel: ch)
        #expect(waitUntil { s.log("vm1").contains("line while xenconsoled is down\n") })
        let log = s.log("vm1")
        #expect(log.hasPrefix("line before the kill\n"), "appended, not truncated")

        let term2 = Terminal()
        let a2 = Attached(socket: s.socket, domid: 5, terminal: term2)
        #expect(waitUntil { n += 1; say("sync \(n)\n"); usleep(20_000); return term2.text.get().contains("sync") })
        term2.type(Array("hi".utf8) + [0x1d])
        #expect(a2.wait() == 0, "Ctrl-] detaches")
        var typed: [UInt8] = []
        #expect(waitUntil { guest.pumpInput(room: 4096) { typed += $0 }; return typed == Array("hi".utf8) })

        // An unknown domain: status 1.
        #expect(attachConsole(socketPath: s.socket, domid: 77, quiet: true, input: term2.input.fileHandleForReading.fileDescriptor,
                              output: term2.output.fileHandleForWriting.fileDescriptor) == 1)
        kill(d.process.processIdentifier, SIGTERM)
        #expect(d.wait(timeout: 10) == 0, "SIGTERM ends it cleanly: \(d.errors.get())")
    }

    @Test func daemonizes() throws {
        let s = Scratch()
        let pidFile = s.dir + "/xenconsoled.pid"
        let r = try run(daemon, ["--socket", s.socket, "--log-dir", s.logDir, "--manifest", manifest, "--pid-file", pidFile])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try listConsoles(socketPath: s.socket).isEmpty)
        let again = try run(daemon, ["-N", "--socket", s.socket, "--log-dir", s.logDir, "--manifest", manifest])
        #expect(again.status == 1 && again.stderr.contains("already listening"))
        if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(pid, SIGTERM)
            let ended = waitUntil(10) { (try? listConsoles(socketPath: s.socket)) == nil }
            #expect(ended, "SIGTERM ends the daemon")
            if !ended { kill(pid, SIGKILL) }   // never leave a daemon behind
        } else {
            Issue.record("no pid file")
        }
    }

    // MARK: the real core

    /// Spawns `path` with `fds[i]` at descriptor 3 + i (posix_spawn: Foundation's Process
    /// cannot hand descriptors over); stdout/stderr go to files.
    func spawn(_ path: String, _ args: [String], fds: [Int32], stdout: String, stderr: String) throws -> pid_t {
        // Move the sources out of 3...3+n first so no dup2 overwrites a later source.
        let high = fds.map { fcntl($0, F_DUPFD_CLOEXEC, 100) }
        defer { high.forEach { close($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        for (i, fd) in high.enumerated() { posix_spawn_file_actions_adddup2(&actions, fd, Int32(3 + i)) }
        // Nothing else leaks into the child (tests run in parallel; see XendAPITests).
        clinux_spawn_closefrom(&actions, Int32(3 + high.count))
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) }
        argv.append(nil)
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
        guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EINVAL) }
        return pid
    }

    /// Tick numbers in the order they appear in a log ("xenith-fixture: tick 0000002A").
    func ticks(_ log: String) -> [Int] {
        log.split(separator: "\n").compactMap { line in
            guard let r = line.range(of: "tick ") else { return nil }
            let hex = line[r.upperBound...].prefix(8)
            return hex.count == 8 ? Int(hex, radix: 16) : nil
        }
    }

    @Test func coreTicksReachTheLogAcrossADaemonKill() throws {
        if skip(Env.kvmUnavailable) { return }
        let s = Scratch()
        var d = try startDaemon(s)
        let ch = try ConsoleRingChannel.create(name: "console-ticker")
        let controlPath = s.dir + "/core.sock"
        let pid = try spawn(core, ["--kernel", Env.fixture("pvh.elf"), "--extra", "t", "--memory", "32", "--name", "ticker",
                                   "--control", controlPath,
                                   "--console-ring-fd", "3", "--console-out-fd", "4", "--console-in-fd", "5"],
                            fds: [ch.ringFD, ch.outEventFD, ch.inEventFD], stdout: s.dir + "/core.out", stderr: s.dir + "/core.err")
        defer { kill(pid, SIGKILL); var st: Int32 = 0; waitpid(pid, &st, 0) }
        try registerConsole(socketPath: s.socket, domid: 1, name: "ticker", channel: ch)
        #expect(waitUntil(30) { (ticks(s.log("ticker")).last ?? -1) >= 3 }, "\(s.log("ticker"))")
        #expect(s.log("ticker").contains("xenith-fixture: pvh entry"), "boot messages before registration were kept")

        kill(d.process.processIdentifier, SIGKILL)
        _ = d.wait(timeout: 5)
        let before = ticks(s.log("ticker")).last ?? 0
        // Long enough for the 2 KiB out ring to fill: the rest waits in the core's backlog.
        usleep(3_000_000)
        #expect(try control(controlPath, "query").hasPrefix("ok state=running"), "the core runs on without xenconsoled")

        d = try startDaemon(s)
        try registerConsole(socketPath: s.socket, domid: 1, name: "ticker", channel: ch)
        #expect(waitUntil(30) { (ticks(s.log("ticker")).last ?? -1) >= before + 150 }, "ticks continue after the restart")
        let all = ticks(s.log("ticker"))
        print("console: \(all.count) ticks logged, last \(all.last ?? -1); \(before) before the kill; log \(s.log("ticker").utf8.count) bytes")
        let gaps = zip(all, all.dropFirst()).filter { $1 != $0 + 1 }
        #expect(gaps.isEmpty, "no tick lost or repeated across the kill: \(gaps.prefix(5))")
        let out = readText(s.dir + "/core.out")
        #expect(!out.contains("tick"), "the console does not go to stdout")

        #expect(try control(controlPath, "destroy") == "ok")
        var st: Int32 = 0
        #expect(waitUntil(10) { waitpid(pid, &st, WNOHANG) == pid })
        #expect((st >> 8) & 0xff == 4, "destroyed: \(readText(s.dir + "/core.err"))")
        kill(d.process.processIdentifier, SIGTERM)
        _ = d.wait(timeout: 10)
    }
}
