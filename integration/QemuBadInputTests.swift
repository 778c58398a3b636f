// Bad input for the qemu engine (issue 5, "Bad input"), through xend and xm: each case is
// reported in one clear line, and leaves no process, socket, run file, registry file or
// xenstore entry behind.
import Foundation
import QemuEngine
import Testing

/// One xend in a scratch XENITH_ROOT, driven through xm from the repository root.
final class BadInputHost: @unchecked Sendable {
    let root: String
    /// Extra environment for `xend start` (e.g. a PATH without QEMU).
    let xendEnv: [String: String]

    init(_ tag: String, xendEnv: [String: String] = [:]) {
        root = QemuEnv.scratch("bad-\(tag)")
        self.xendEnv = xendEnv
        try? FileManager.default.createDirectory(atPath: root + "/etc/xen", withIntermediateDirectories: true)
        // The qemu engine for every domain, whatever KVM this host has.
        try? "(domain-engine qemu)\n".write(toFile: root + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8)
    }

    func tool(_ name: String, _ args: [String], env: [String: String] = [:], timeout: Double = 60) throws -> RunResult {
        setenv("XENITH_ROOT", root, 1)
        var saved: [String: String?] = [:]
        for (k, v) in env { saved[k] = ProcessInfo.processInfo.environment[k]; setenv(k, v, 1) }
        let cwd = FileManager.default.currentDirectoryPath
        FileManager.default.changeCurrentDirectoryPath(Env.root.path)
        defer {
            FileManager.default.changeCurrentDirectoryPath(cwd)
            for (k, v) in saved { if let v { setenv(k, v, 1) } else { unsetenv(k) } }
        }
        return try run(toolPath(name), args, timeout: timeout)
    }

    func xm(_ args: String...) throws -> RunResult { try tool("xm", args) }

    func start() throws -> Bool {
        let r = try tool("xend", ["start"], env: xendEnv)
        if r.status != 0 { Issue.record("xend start: \(r.stderr)") }
        return r.status == 0
    }

    func stop() {
        _ = try? tool("xend", ["stop"])
        for rel in ["/run/xenstored/xenstored.pid", "/run/xenconsoled/xenconsoled.pid"] {
            if let p = try? String(contentsOfFile: root + rel, encoding: .utf8),
               let pid = Int32(p.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGTERM) }
        }
    }

    func read(_ rel: String) -> String { readText(root + rel) }
    var xendLog: String { read("/var/log/xen/xend.log") }

    /// A config file in the scratch root; returns its path.
    func config(_ name: String, _ text: String) throws -> String {
        let p = root + "/\(name).cfg"
        try text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    /// The test guest's config lines (absolute paths), without name and on_crash.
    static func testGuest(ramdisk: String = QemuEnv.guestDir + "/initrd.img", run: String? = nil) -> String {
        var extra = "quiet cryptomgr.notests initcall_blacklist=ftrace_check_for_weak_functions \(QemuEnv.tscFlag)"
        if let run { extra += "xenith.run=" + run.addingPercentEncoding(withAllowedCharacters: .alphanumerics)! }
        return "kernel = '\(QemuEnv.guestDir)/vmlinuz'\nramdisk = '\(ramdisk)'\nmemory = 256\nvcpus = 2\nextra = '\(extra)'\n"
    }

    /// The registry record of domain `name` (JSON), nil when there is none.
    func record(_ name: String) -> [String: Any]? {
        let dir = root + "/var/lib/xend/domains"
        for f in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where f.hasSuffix(".json") {
            if let d = FileManager.default.contents(atPath: dir + "/" + f),
               let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any], o["name"] as? String == name { return o }
        }
        return nil
    }

    func pid(_ name: String) -> Int32? {
        ((record(name)?["process"] as? [String: Any])?["pid"] as? NSNumber).map { Int32(truncating: $0) }
    }

    func waitUntil(_ timeout: Double, _ cond: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if try cond() { return true }; usleep(200_000) }
        return try cond()
    }

    /// Processes (other than xend's own daemons) whose command line names this root.
    func strayProcesses() -> [String] {
        let services = Set(["/run/xenstored/xenstored.pid", "/run/xenconsoled/xenconsoled.pid"].compactMap {
            Int32(read($0).trimmingCharacters(in: .whitespacesAndNewlines))
        })
        // xend's children are the domains' processes: only xend itself is excluded.
        let daemons = services.union([Int32(read("/run/xend.pid").trimmingCharacters(in: .whitespacesAndNewlines))].compactMap { $0 })
        var out: [String] = []
        for e in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            // A sandboxed daemon is a waiter plus its child in a PID namespace: both are the daemon.
            guard let pid = Int32(e), pid != getpid(), !daemons.contains(pid), !services.contains(Self.parent(pid) ?? -1),
                  let d = FileManager.default.contents(atPath: "/proc/\(e)/cmdline") else { continue }
            let argv = String(decoding: d, as: UTF8.self).replacingOccurrences(of: "\0", with: " ")
            // Named in its command line, or holding a file of this root open (a back-end
            // handed its image and socket as descriptors).
            let fdDir = "/proc/\(e)/fd"
            let holds = ((try? FileManager.default.contentsOfDirectory(atPath: fdDir)) ?? []).contains {
                ((try? FileManager.default.destinationOfSymbolicLink(atPath: fdDir + "/" + $0)) ?? "").hasPrefix(root + "/")
            }
            let isXend = argv.split(separator: " ").first.map { ($0 as Substring).hasSuffix("/xend") || $0 == "xend" } ?? false
            if (argv.contains(root + "/") || holds) && !isXend && QemuDomain.startTicks(pid) != nil {
                out.append("\(pid): \(argv.prefix(160))")
            }
        }
        return out
    }

    /// The parent pid of `pid` (field 4 of /proc/PID/stat).
    static func parent(_ pid: Int32) -> Int32? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let c = s.lastIndex(of: ")") else { return nil }
        let f = s[s.index(after: c)...].split(separator: " ")
        return f.count > 1 ? Int32(f[1]) : nil
    }

    /// Everything a failed or ended domain could leave behind, empty when nothing is.
    func leftovers() throws -> [String] {
        var out = strayProcesses()
        let fm = FileManager.default
        for dir in ["/run/xend/domains", "/run/xenith", "/var/lib/xend/domains"] {
            for f in (try? fm.contentsOfDirectory(atPath: root + dir)) ?? [] { out.append(dir + "/" + f) }
        }
        if fm.fileExists(atPath: "/usr/bin/xenstore-list") {
            let ls = try tool("/usr/bin/xenstore-list", ["/local/domain"], env: ["XENSTORED_PATH": root + "/run/xenstored/socket"])
            let ids = ls.stdout.split(separator: "\n").filter { $0 != "0" }
            if ls.status != 0 { out.append("xenstore-list: \(ls.stderr)") }
            out += ids.map { "xenstore /local/domain/\($0)" }
            let be = try tool("/usr/bin/xenstore-ls", ["/local/domain/0/backend"], env: ["XENSTORED_PATH": root + "/run/xenstored/socket"])
            if !be.stdout.isEmpty { out.append("xenstore backend: \(be.stdout.prefix(200))") }
        }
        return out
    }

    func expectNothingLeft(sourceLocation: SourceLocation = #_sourceLocation) throws {
        let left = try leftovers()
        #expect(left.isEmpty, "left behind: \(left)", sourceLocation: sourceLocation)
    }

    /// Asserts that `r` failed with exactly one line on stderr, `Error: …` containing `expect`.
    func expectOneLineError(_ r: RunResult, _ expect: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: true).filter { !$0.hasPrefix("Warning:") }
        #expect(r.status != 0, "xm succeeded: \(r.stdout)", sourceLocation: sourceLocation)
        #expect(lines.count == 1 && lines[0].hasPrefix("Error: ") && lines[0].contains(expect),
                "stderr: \(r.stderr)", sourceLocation: sourceLocation)
        print("bad input → \(lines.first ?? "")")
    }
}

/// `xm`'s binary-name helper: `Env.binary` for our tools, an absolute path as is.
private func toolPath(_ name: String) -> String { name.hasPrefix("/") ? name : Env.binary(name) }

@Suite(.serialized) struct QemuBadInputTests {
    /// No QEMU on xend's PATH: xm create fails with one line naming the package, nothing stays.
    @Test func qemuMissing() throws {
        if skip(QemuEnv.unavailable) { return }
        let empty = QemuEnv.scratch("nopath")
        let h = BadInputHost("noqemu", xendEnv: ["PATH": empty])
        defer { h.stop() }
        guard try h.start() else { return }
        let cfg = try h.config("g", BadInputHost.testGuest() + "name = 'noqemu'\n")
        h.expectOneLineError(try h.xm("create", cfg), "qemu-system-x86_64 not found")
        try h.expectNothingLeft()
        #expect(!(try h.xm("list").stdout.contains("noqemu")))
    }

    /// Files that do not exist: an ISO, a kernel, a ramdisk, a disk image.
    @Test func missingFiles() throws {
        if skip(QemuEnv.unavailable) { return }
        let h = BadInputHost("files")
        defer { h.stop() }
        guard try h.start() else { return }
        let iso = try h.config("iso", "builder = 'hvm'\nname = 'iso'\nmemory = 64\nboot = 'd'\ncdrom = '/nonexistent/x.iso'\nvnc = 0\n")
        h.expectOneLineError(try h.xm("create", iso), "CD-ROM image does not exist: /nonexistent/x.iso")
        let kernel = try h.config("k", "kernel = '/nonexistent/vmlinuz'\nname = 'k'\nmemory = 64\n")
        h.expectOneLineError(try h.xm("create", kernel), "/nonexistent/vmlinuz")
        let rd = try h.config("rd", BadInputHost.testGuest(ramdisk: "/nonexistent/initrd.img") + "name = 'rd'\n")
        h.expectOneLineError(try h.xm("create", rd), "/nonexistent/initrd.img")
        let disk = try h.config("disk", BadInputHost.testGuest() + "name = 'disk'\ndisk = ['file:/nonexistent/d.img,xvda,w']\n")
        h.expectOneLineError(try h.xm("create", disk), "/nonexistent/d.img")
        try h.expectNothingLeft()
    }

    /// A VNC display whose port is taken: refused in one line when the config pins it
    /// (vncunused=0); with vncunused=1 (the manual's default) the next free one is used.
    @Test func vncPortInUse() throws {
        if skip(QemuEnv.unavailable) { return }
        let h = BadInputHost("vnc")
        defer { h.stop() }
        // Hold 127.0.0.1:5900+N.
        let n = 40 + Int(getpid() % 40)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(5900 + n).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if bound != 0 || listen(fd, 1) != 0 { print("SKIP: vncPortInUse: cannot bind port \(5900 + n)"); return }
        guard try h.start() else { return }
        let base = "builder = 'hvm'\nmemory = 64\nboot = 'c'\nvnc = 1\nvncdisplay = \(n)\n"
        let pinned = try h.config("pinned", base + "name = 'pinned'\nvncunused = 0\n")
        h.expectOneLineError(try h.xm("create", pinned), "VNC display \(n) (port \(5900 + n)) is already in use")
        try h.expectNothingLeft()

        let next = try h.config("next", base + "name = 'next'\nvncunused = 1\n")
        let r = try h.xm("create", next)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("VNC display 127.0.0.1:") && !r.stdout.contains("127.0.0.1:\(n) "), "\(r.stdout)")
        #expect(try h.xm("destroy", "next").status == 0)
        try h.expectNothingLeft()
    }

    /// A guest that never boots: its initrd is garbage, so the kernel panics before user
    /// space (before any pvpanic driver is loaded) and, with `panic=1`, resets the machine.
    /// xm create succeeds, as in Xen (the domain is built; the guest fails later). Each
    /// reset is a reboot: on_reboot = restart boots it again, and the second reset within
    /// 20 s (Xen's MINIMUM_RESTART_TIME) ends it for good, as Xen's restart-loop guard does.
    /// xend.log and `xm dmesg` say so in one line that names the console log; the console
    /// log keeps the panic; nothing else is left.
    @Test func guestThatNeverBoots() throws {
        if skip(QemuEnv.unavailable) { return }
        let h = BadInputHost("noboot")
        defer { h.stop() }
        guard try h.start() else { return }
        let junk = h.root + "/junk-initrd.img"
        var bytes = [UInt8](repeating: 0, count: 256 << 10)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: (i &* 2654435761) >> 13) }
        #expect(FileManager.default.createFile(atPath: junk, contents: Data(bytes)))
        let cfg = try h.config("nb", "kernel = '\(QemuEnv.guestDir)/vmlinuz'\nramdisk = '\(junk)'\nmemory = 256\nvcpus = 2\n"
                               + "extra = 'quiet panic=1 \(QemuEnv.tscFlag)'\nname = 'noboot'\non_reboot = 'restart'\n")
        let c = try h.xm("create", cfg)
        #expect(c.status == 0 && c.stdout.contains("Started domain noboot"), "\(c.stderr)")
        let consoleLog = h.root + "/var/log/xen/console/guest-noboot.log"
        #expect(try h.waitUntil(240) { try !h.xm("list").stdout.contains("noboot") },
                "console: \(h.read("/var/log/xen/console/guest-noboot.log").suffix(400))")
        let line = h.xendLog.split(separator: "\n").first { $0.contains("noboot") && $0.contains("restarting too fast") && $0.contains("console log") } ?? ""
        print("never boots → xend.log: \(line)")
        #expect(line.contains(consoleLog), "xend.log: \(h.xendLog.suffix(800))")
        #expect(try h.xm("dmesg").stdout.contains(consoleLog))
        #expect(h.read("/var/log/xen/console/guest-noboot.log").contains("Kernel panic"))
        #expect(FileManager.default.fileExists(atPath: consoleLog), "console log removed")
        try h.expectNothingLeft()
    }

    /// QEMU dies under a running guest (SIGSEGV here; a real crash, or the OOM killer): a
    /// crash, on_crash applies (preserve, then restart), xend.log carries the signal and
    /// QEMU's last stderr lines in one line; destroy leaves nothing.
    @Test func qemuCrashes() throws {
        if skip(QemuEnv.unavailable) { return }
        let h = BadInputHost("crash")
        defer { h.stop() }
        guard try h.start() else { return }
        let consoleLog = h.root + "/var/log/xen/console/guest-qc.log"
        // With a disk, so that its back-end (blkback where xend serves qemu disks) must go too.
        let img = h.root + "/qc.img"
        #expect(FileManager.default.createFile(atPath: img, contents: Data(count: 1 << 20)))
        let cfg = try h.config("qc", BadInputHost.testGuest() + "name = 'qc'\non_crash = 'preserve'\ndisk = ['file:\(img),xvda,w']\n")
        let c = try h.xm("create", cfg)
        #expect(c.status == 0, "\(c.stderr)")
        #expect(h.waitUntil(120) { h.read("/var/log/xen/console/guest-qc.log").contains("xenith-guest: ready") })
        guard let pid = h.pid("qc") else { Issue.record("no pid in the registry"); return }
        // The leftover check sees a live domain's processes (QEMU, and blkback when xend serves the disk).
        let live = try h.leftovers()
        #expect(live.contains { $0.contains("qemu-system-x86_64") }, "\(live)")
        if !((h.record("qc")?["disks"] as? [Any]) ?? []).isEmpty { #expect(live.contains { $0.contains("blkback") }, "\(live)") }
        kill(pid, SIGSEGV)
        #expect(try h.waitUntil(20) { try h.xm("list", "qc").stdout.contains("----c-") }, "\(h.xendLog.suffix(600))")
        let line = h.xendLog.split(separator: "\n").first { $0.contains("qc") && $0.contains("has crashed") } ?? ""
        print("QEMU crash → xend.log: \(line)")
        #expect(line.contains("qemu-system-x86_64") && line.contains("signal 11") && line.contains(consoleLog), "\(h.xendLog.suffix(600))")
        #expect(try h.xm("destroy", "qc").status == 0)
        try h.expectNothingLeft()

        // on_crash = restart: the domain comes back with a new QEMU.
        let rcfg = try h.config("qr", BadInputHost.testGuest() + "name = 'qr'\non_crash = 'restart'\n")
        #expect(try h.xm("create", rcfg).status == 0)
        guard let p1 = h.pid("qr") else { Issue.record("no pid for qr"); return }
        usleep(500_000)
        kill(p1, SIGKILL)
        #expect(h.waitUntil(30) { (h.pid("qr") ?? p1) != p1 }, "\(h.xendLog.suffix(600))")
        #expect(h.xendLog.contains("signal 9"))
        #expect(try h.xm("destroy", "qr").status == 0)
        try h.expectNothingLeft()

        // SIGTERM: QEMU says why on its stderr; that line comes along (on_crash = destroy).
        let tcfg = try h.config("qt", BadInputHost.testGuest() + "name = 'qt'\non_crash = 'destroy'\n")
        #expect(try h.xm("create", tcfg).status == 0)
        guard let p2 = h.pid("qt") else { Issue.record("no pid for qt"); return }
        kill(p2, SIGTERM)
        #expect(try h.waitUntil(20) { try !h.xm("list").stdout.contains("qt ") })
        let tline = h.xendLog.split(separator: "\n").first { $0.contains("qt (") && $0.contains("has crashed") } ?? ""
        print("QEMU SIGTERM → xend.log: \(tline)")
        #expect(tline.contains("terminating on signal 15"), "\(h.xendLog.suffix(600))")
        try h.expectNothingLeft()
    }
}
