import Foundation
import Testing

/// xend supervising the back-ends of a core domain: a sandboxed blkback per disk and
/// xenconsoled, in a temporary XENITH_ROOT (xm create with a disk, xm console, SIGKILL and
/// SIGSYS deaths of blkback, SIGKILL and SIGSYS deaths of xenconsoled, xm destroy leaves nothing).
@Suite(.serialized) struct BackendSupervisionTests {
    let root = Scratch.make("xenith-bs")

    func env() {
        setenv("XENITH_ROOT", root, 1)
        // One-shot: a blkback started while this file exists makes one forbidden syscall.
        setenv("XENITH_BLKBACK_TEST_FORBIDDEN", root + "/sigsys-once", 1)
        setenv("XENITH_XENCONSOLED_TEST_FORBIDDEN", root + "/sigsys-console-once", 1)
    }
    func xm(_ args: String...) throws -> RunResult { env(); return try run(Env.binary("xm"), args, timeout: 60) }
    func xend(_ arg: String) throws -> RunResult { env(); return try run(Env.binary("xend"), [arg], timeout: 60) }
    func pidFile(_ rel: String) -> Int32? {
        (try? String(contentsOfFile: root + rel, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
    func teardown() {
        _ = try? xend("stop")
        for f in ["/run/xenconsoled/xenconsoled.pid", "/run/xenstored/xenstored.pid"] { if let p = pidFile(f) { kill(p, SIGTERM) } }
        unsetenv("XENITH_BLKBACK_TEST_FORBIDDEN")
        unsetenv("XENITH_XENCONSOLED_TEST_FORBIDDEN")
    }
    func read(_ rel: String) -> String { readText(root + rel) }
    /// Pids matching `pattern` that belong to this test's root (other xends may run here).
    func pgrep(_ pattern: String) -> [Int32] { processes(matching: pattern, root: root) }
    func waitUntil(_ seconds: Double, _ cond: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end { if cond() { return true }; usleep(50_000) }
        return cond()
    }
    /// Highest "blk round ok N" (hex) in a text.
    func lastRound(_ text: String) -> Int { lastBlkRound(text) }

    /// `xm console DOM` for `seconds` with its stdin held open; returns what it printed.
    func console(_ dom: String, seconds: Double) throws -> (status: Int32, output: String) {
        env()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Env.binary("xm"))
        p.arguments = ["console", dom]
        let out = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardInput = inp
        p.standardError = out
        try p.run()
        let data = Locked(Data())
        out.fileHandleForReading.readabilityHandler = { h in let d = h.availableData; data.update { $0.append(d) } }
        usleep(UInt32(seconds * 1_000_000))
        try? inp.fileHandleForWriting.write(contentsOf: [0x1d])   // Ctrl-] detaches
        let end = Date().addingTimeInterval(5)
        while p.isRunning && Date() < end { usleep(20_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        out.fileHandleForReading.readabilityHandler = nil
        return (p.terminationStatus, String(decoding: data.get(), as: UTF8.self))
    }

    @Test func blkbackAndXenconsoledAreSupervised() throws {
        if skip(Env.kvmUnavailable) { return }
        if getuid() != 0 { print("SKIP: blkbackAndXenconsoledAreSupervised: needs root (sandbox namespaces, pidfd_getfd)"); return }
        let kernel = Env.fixture("pvh.elf")
        defer { teardown() }
        let img = root + "/disk.img"
        #expect(FileManager.default.createFile(atPath: img, contents: Data(count: 1 << 20)))
        let cfg = root + "/d.cfg"
        try "kernel = '\(kernel)'\nmemory = 32\nname = 'd1'\nextra = 'B'\nengine = 'core'\ndisk = ['file:\(img),xvda,w']\n"
            .write(toFile: cfg, atomically: true, encoding: .utf8)
        #expect(try xend("start").status == 0)
        let c = try xm("create", cfg)
        #expect(c.status == 0 && c.stdout.contains("Started domain d1"), "\(c.stderr) \(read("/var/log/xen/xend.log").suffix(800))")
        let log = "/var/log/xen/console/guest-d1.log"
        #expect(waitUntil(10) { lastRound(read(log)) >= 3 }, "\(read(log).suffix(300))")

        // blkback runs sandboxed: its log carries the sandbox line.
        #expect(read("/var/log/xen/blkback-1-xvda.log").contains("sandbox: blkback applied manifest"))
        #expect(FileManager.default.fileExists(atPath: root + "/run/xenith/blkback-1-xvda.sock"))
        let xsPath = root + "/run/xenstored/socket"
        if FileManager.default.fileExists(atPath: "/usr/bin/xenstore-read") {
            setenv("XENSTORED_PATH", xsPath, 1)
            defer { unsetenv("XENSTORED_PATH") }   // later suites' xend and tools must not inherit it
            let st = try run("/usr/bin/xenstore-read", ["/local/domain/0/backend/vbd/1/51712/state"], timeout: 10)
            #expect(st.stdout == "4\n", "vbd backend state: \(st.stdout)\(st.stderr)")
        }

        // xm console shows the rounds.
        let con = try console("d1", seconds: 1.5)
        #expect(con.status == 0)
        #expect(con.output.contains("xenith-fixture: blk round ok"), "\(con.output.suffix(300))")

        // A second domain may not take the same image read-write.
        let dup = try xm("create", cfg, "name=d2")
        #expect(dup.status != 0 && dup.stderr.contains("xvda") && dup.stderr.contains("in use") && dup.stderr.contains(img), "\(dup.stderr)")

        // SIGKILL the blkback 3 times: restarted each time, rounds continue, never "bad".
        func restarts() -> Int { read("/var/log/xen/xend.log").components(separatedBy: "blkback restarted").count - 1 }
        for i in 0..<3 {
            #expect(waitUntil(10) { !pgrep("blkback --listen-fd 3 --image-fd 4").isEmpty }, "kill \(i): no blkback")
            let n = restarts()
            for p in pgrep("blkback --listen-fd 3 --image-fd 4") { kill(p, SIGKILL) }
            #expect(waitUntil(10) { restarts() > n }, "kill \(i): not restarted; \(read("/var/log/xen/xend.log").suffix(600))")
            let r = lastRound(read(log))
            #expect(waitUntil(10) { lastRound(read(log)) > r + 5 }, "kill \(i): rounds stopped at \(lastRound(read(log)))")
        }
        let xlog = read("/var/log/xen/xend.log")
        #expect(xlog.components(separatedBy: "blkback killed by SIGKILL").count - 1 >= 3, "\(xlog.suffix(1500))")
        #expect(!read(log).contains("blk round bad"))

        // SIGSYS: the next blkback makes a syscall outside its manifest; xend names it and
        // starts another, which serves.
        // (On a second domain: d1's blkback has died 3 times within 30 s, and 5 mark it broken.)
        let img2 = root + "/disk2.img"
        #expect(FileManager.default.createFile(atPath: img2, contents: Data(count: 1 << 20)))
        #expect(try xm("create", cfg, "name=s1", "disk=file:\(img2),xvda,w").status == 0)
        let log2 = "/var/log/xen/console/guest-s1.log"
        #expect(waitUntil(10) { lastRound(read(log2)) >= 3 })
        FileManager.default.createFile(atPath: root + "/sigsys-once", contents: nil)
        let n = restarts()
        for p in pgrep("blkback --listen-fd 3 --image-fd 4") {
            // Only s1's blkback: its image fd is disk2.img.
            if (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(p)/fd/4")) == img2 { kill(p, SIGKILL) }
        }
        #expect(waitUntil(10) { read("/var/log/xen/xend.log").contains("blkback killed by SIGSYS: blocked syscall getppid") },
                "\(read("/var/log/xen/xend.log").suffix(1500))")
        #expect(waitUntil(10) { restarts() >= n + 2 }, "not restarted after SIGSYS")
        let afterSys = lastRound(read(log2))
        #expect(waitUntil(15) { lastRound(read(log2)) > afterSys + 5 }, "rounds after SIGSYS: \(lastRound(read(log2)))")
        #expect(!read(log2).contains("blk round bad"))
        #expect(try xm("destroy", "s1").status == 0)
        #expect(!read(log).contains("blk round bad"))
        #expect(!FileManager.default.fileExists(atPath: root + "/sigsys-once"))

        // SIGKILL xenconsoled: restarted, the console log continues, xm console attaches again.
        if let p = pidFile("/run/xenconsoled/xenconsoled.pid") { kill(p, SIGKILL) }
        usleep(300_000)
        let r0 = lastRound(read(log))
        #expect(waitUntil(10) { lastRound(read(log)) > r0 + 5 }, "console log after xenconsoled restart: \(read(log).suffix(200))")
        #expect(read("/var/log/xen/xend.log").contains("xenconsoled killed by SIGKILL"))
        let con2 = try console("d1", seconds: 1.5)
        #expect(con2.output.contains("blk round ok"), "\(con2.output.suffix(300))")

        // SIGSYS of xenconsoled: the next daemon makes a syscall outside its manifest right
        // after its sandbox is applied; xend names it, starts another, and the log continues.
        FileManager.default.createFile(atPath: root + "/sigsys-console-once", contents: nil)
        if let p = pidFile("/run/xenconsoled/xenconsoled.pid") { kill(p, SIGKILL) }
        #expect(waitUntil(15) { read("/var/log/xen/xend.log").contains("xenconsoled killed by SIGSYS: blocked syscall getppid") },
                "\(read("/var/log/xen/xend.log").suffix(1500))")
        #expect(!FileManager.default.fileExists(atPath: root + "/sigsys-console-once"))
        let r1 = lastRound(read(log))
        #expect(waitUntil(15) { lastRound(read(log)) > r1 + 5 }, "console log after the SIGSYS restart: \(read(log).suffix(200))")
        let con3 = try console("d1", seconds: 1.5)
        #expect(con3.output.contains("blk round ok"), "\(con3.output.suffix(300))")

        // xm destroy leaves no process, socket or xenstore entry.
        #expect(try xm("destroy", "d1").status == 0)
        #expect(pgrep("blkback --listen-fd 3 --image-fd 4").isEmpty)
        #expect(pgrep("xenith-core.*--name d1 ").isEmpty)
        let runXenith = (try? FileManager.default.contentsOfDirectory(atPath: root + "/run/xenith")) ?? []
        #expect(runXenith.isEmpty, "\(runXenith)")
        let domains = (try? FileManager.default.contentsOfDirectory(atPath: root + "/run/xend/domains")) ?? []
        #expect(domains.isEmpty, "\(domains)")
        if FileManager.default.fileExists(atPath: "/usr/bin/xenstore-ls") {
            setenv("XENSTORED_PATH", xsPath, 1)
            defer { unsetenv("XENSTORED_PATH") }   // later suites' xend and tools must not inherit it
            let ls = try run("/usr/bin/xenstore-ls", ["/local/domain"], timeout: 10)
            #expect(!ls.stdout.contains("vbd") && !ls.stdout.contains("d1") && !ls.stdout.contains("1 = "), "\(ls.stdout)")
        }
    }
}
