import Foundation
import Testing

/// xend + xm + xenstored + xenith-core end to end, in a temporary XENITH_ROOT.
@Suite(.serialized) struct ControlPlaneTests {
    let root = Scratch.make("xenith-cp")

    func xm(_ args: String...) throws -> RunResult {
        setenv("XENITH_ROOT", root, 1)
        return try run(Env.binary("xm"), args, timeout: 60)
    }
    func xend(_ arg: String) throws -> RunResult {
        setenv("XENITH_ROOT", root, 1)
        return try run(Env.binary("xend"), [arg], timeout: 60)
    }
    func teardown() {
        _ = try? xend("stop")
        // xenconsoled outlives xend (it holds the consoles of running domains): stop it too.
        for f in ["/run/xenstored/xenstored.pid", "/run/xenconsoled/xenconsoled.pid"] {
            if let p = try? String(contentsOfFile: root + f, encoding: .utf8), let pid = Int32(p.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGTERM) }
        }
    }

    @Test func lifecycleThroughXm() throws {
        if skip(Env.kvmUnavailable) { return }
        if getuid() != 0 { print("SKIP: lifecycleThroughXm: needs root"); return }
        let kernel = Env.fixture("pvh.elf")
        defer { teardown() }
        #expect(try xm("list").stderr == "Error: Unable to connect to xend: No such file or directory. Is xend running?\n")
        #expect(try xend("status").status == 3)
        #expect(try xend("start").status == 0)
        #expect(try xend("status").status == 0)
        let cfg = root + "/f.cfg"
        try "kernel = '\(kernel)'\nmemory = 32\nname = 'f1'\nextra = 't'\nengine = 'core'\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        let c = try xm("create", cfg)
        #expect(c.status == 0 && c.stdout.contains("Started domain f1"), "\(c.stderr)")
        var l = try xm("list")
        #expect(l.stdout.hasPrefix("Name                                      ID   Mem VCPUs      State   Time(s)\nDomain-0 "))
        #expect(l.stdout.contains("\nf1                                         1    32     1     r-----"))
        #expect(try xm("pause", "f1").status == 0)
        #expect(try xm("list", "f1").stdout.contains("--p---"))
        #expect(try xm("unpause", "1").status == 0)
        #expect(try xm("list", "f1").stdout.contains("r-----"))
        // Bad input.
        for cmd in ["destroy", "pause", "unpause", "shutdown", "reboot", "domid", "list", "uptime", "console"] {
            let r = try xm(cmd, "nosuch")
            #expect(r.status != 0 && r.stderr == "Error: Domain 'nosuch' does not exist.\n", "\(cmd): \(r.stderr)")
        }
        #expect(try xm("create", cfg).stderr == "Error: VM name 'f1' already exists as domain 1\n")
        let big = try xm("create", cfg, "name=big", "memory=4000000")
        #expect(big.stderr.hasPrefix("Error: Not enough free memory"), "\(big.stderr)")
        // A block script disk (nbd:, iscsi:, ...) is refused by xm naming the type, rather than read as a file.
        let nbd = try xm("create", cfg, "name=n1", "disk=nbd:/tmp/x.img,xvda,w")
        #expect(nbd.status != 0 && nbd.stderr.contains("key 'disk'") && nbd.stderr.contains("disk type 'nbd:' is refused")
                && nbd.stderr.contains("block-nbd"), "\(nbd.stderr)")
        // A name xend would put in a file path with a '/' is refused, and nothing is made.
        let trav = try xm("create", cfg, "name=../../../tmp/x")
        #expect(trav.stderr == "Error: Invalid VM Name '../../../tmp/x': use at most 64 of A-Z a-z 0-9 _ - . : + (no '/')\n", "\(trav.stderr)")
        #expect(!FileManager.default.fileExists(atPath: root + "/var/log/xen/console/guest-../../../tmp/x.log"))
        let dots = try xm("create", cfg, "name=..")
        #expect(dots.stderr == "Error: Invalid VM Name '..': '.' and '..' name directories\n", "\(dots.stderr)")
        // SIGKILL xend: the domain keeps running and is re-adopted.
        let pid = Int32(try String(contentsOfFile: root + "/run/xend.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))!
        kill(pid, SIGKILL)
        // xenstored dies too: the next xend starts a new, empty one and writes f1's entries again.
        if let xs = try? String(contentsOfFile: root + "/run/xenstored/xenstored.pid", encoding: .utf8),
           let xsPid = Int32(xs.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(xsPid, SIGKILL) }
        usleep(200_000)
        #expect(try xm("list").stderr.hasPrefix("Error: Unable to connect to xend"))
        #expect(try xend("start").status == 0)
        #expect(try xm("list", "f1").stdout.contains("r-----"))
        if FileManager.default.fileExists(atPath: "/usr/bin/xenstore-read") {
            setenv("XENSTORED_PATH", root + "/run/xenstored/socket", 1)
            #expect(try run("/usr/bin/xenstore-read", ["/local/domain/1/name"]).stdout == "f1\n")
            unsetenv("XENSTORED_PATH")
        }
        #expect(try xm("pause", "f1").status == 0)
        #expect(try xm("unpause", "f1").status == 0)
        // xend stop leaves the domain running.
        #expect(try xend("stop").status == 0)
        let corePid = Int32(try String(contentsOfFile: root + "/var/lib/xend/domains/1.json", encoding: .utf8)
            .components(separatedBy: "\"pid\":")[1].prefix(while: { $0.isNumber }))!
        #expect(kill(corePid, 0) == 0)
        #expect(try xend("start").status == 0)
        // Shutdown -w with a guest that waits for the power button.
        #expect(try xm("create", cfg, "name=w1", "extra=w").status == 0)
        let s = try xm("shutdown", "-w", "w1")
        #expect(s.status == 0 && s.stdout.contains("Domain w1 terminated"))
        // on_crash = restart: restarted once with a new domid, then refused (too fast).
        #expect(try xm("create", cfg, "name=p1", "extra=p", "on_crash=restart").status == 0)
        usleep(1_500_000)
        #expect(try xm("dmesg").stdout.contains("Domain p1 (4) started"))
        // Destroy leaves nothing behind.
        #expect(try xm("destroy", "f1").status == 0)
        // Gone, or a zombie waiting for its (non-xend) parent to reap it.
        let st = readText("/proc/\(corePid)/stat")
        #expect(st.isEmpty || st.contains(") Z "), "\(st)")
        l = try xm("list")
        #expect(!l.stdout.contains("f1"))
        #expect(!FileManager.default.fileExists(atPath: root + "/run/xend/domains/1.control"))
        #expect(!FileManager.default.fileExists(atPath: root + "/var/lib/xend/domains/1.json"))
    }
}
