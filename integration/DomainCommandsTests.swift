import Foundation
import Testing

/// `xm rename`, `sysrq`, `dump-core`, `reset`, `top` and xend's `/metrics` (issue 14, item 4)
/// through a real xend: the test guest under the qemu engine (TCG here), and the PVH
/// fixture in the core where /dev/kvm works. Each test makes its own `$XENITH_ROOT` and
/// removes it, with its xend, xenstored and xenconsoled.
@Suite(.serialized) struct DomainCommandsTests {
    let root = QemuEnv.scratch("rest-cmds")

    func tool(_ name: String, _ args: [String], timeout: Double = 60) throws -> RunResult {
        try runInRoot(root, name, args, timeout: timeout)
    }
    func xm(_ args: String..., timeout: Double = 60) throws -> RunResult { try tool("xm", args, timeout: timeout) }

    func consoleLog(_ name: String) -> String {
        readText(root + "/var/log/xen/console/guest-\(name).log")
    }
    func waitUntil(_ timeout: Double, _ cond: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if try cond() { return true }; usleep(250_000) }
        return try cond()
    }
    /// QEMU processes of this test's root (their QMP socket is under it).
    func qemus() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }.filter { pid in
            let s = String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data(), as: UTF8.self)
            return s.contains("qemu-system") && s.contains(root + "/")
        }
    }
    /// Stops this root's xend and the daemons it started, and removes the root.
    func tearDown(_ domains: [String]) {
        for d in domains { _ = try? xm("destroy", d) }
        _ = try? tool("xend", ["stop"])
        for f in ["/run/xenstored/xenstored.pid", "/run/xenconsoled/xenconsoled.pid"] {
            if let p = try? String(contentsOfFile: root + f, encoding: .utf8),
               let pid = Int32(p.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGTERM) }
        }
        try? FileManager.default.removeItem(atPath: root)
    }
    func startXend(engine: String) throws {
        try FileManager.default.createDirectory(atPath: root + "/etc/xen", withIntermediateDirectories: true)
        try "(domain-engine \(engine))\n".write(toFile: root + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8)
        #expect(try tool("xend", ["start"]).status == 0)
    }
    /// A test-guest config whose guest runs `script` (the init's `xenith.run=`).
    func guestConfig(_ name: String, script: String, memory: Int = 128, disk: String? = nil) throws -> String {
        let encoded = script.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let cfg = root + "/\(name).cfg"
        try """
            kernel = "\(QemuEnv.guestDir)/vmlinuz"
            ramdisk = "\(QemuEnv.guestDir)/initrd.img"
            memory = \(memory)
            vcpus = 1
            name = "\(name)"
            \(disk.map { "disk = ['file:\($0),xvda,w']" } ?? "")
            extra = "quiet cryptomgr.notests \(QemuEnv.tscFlag)xenith.run=\(encoded)"
            on_crash = "destroy"
            """.write(toFile: cfg, atomically: true, encoding: .utf8)
        return cfg
    }
    /// Sizes (bytes) of the PT_LOAD segments and the count of PT_NOTE ones `readelf -lW` lists.
    func programHeaders(_ file: String) throws -> (type: String, loads: [UInt64], notes: Int) {
        let r = try run("/usr/bin/readelf", ["-lW", file], timeout: 30)
        let lines = r.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let type = lines.first { $0.hasPrefix("Elf file type is") } ?? r.stderr
        let loads = lines.filter { $0.hasPrefix("LOAD ") }.compactMap { l -> UInt64? in
            let f = l.split(separator: " ")
            return f.count > 4 ? UInt64(f[4].dropFirst(2), radix: 16) : nil
        }
        return (type, loads, lines.filter { $0.hasPrefix("NOTE ") }.count)
    }

    /// rename, sysrq, dump-core and reset on the test guest under the qemu engine.
    @Test func renameSysrqDumpCoreAndResetAQemuGuest() throws {
        if skip(QemuEnv.unavailable) { return }
        if getuid() != 0 { print("SKIP: \(#function): needs root (xend's back-ends)"); return }
        defer { tearDown(["dc", "dc2"]) }
        try startXend(engine: "qemu")
        let cfg = try guestConfig("dc", script: "i=0; while true; do echo alive=$i; i=$((i+1)); sleep 0.5; done")
        let c = try xm("create", cfg)
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        #expect(waitUntil(60) { consoleLog("dc").contains("alive=2") }, "\(consoleLog("dc").suffix(600))")

        // rename: silent; the new name answers, the old one is gone; names in use and bad names refused.
        let rn = try xm("rename", "dc", "dc2")
        #expect(rn.status == 0 && rn.stdout.isEmpty && rn.stderr.isEmpty, "\(rn.stdout)\(rn.stderr)")
        let domid = try xm("domid", "dc2").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(Int(domid) != nil)
        #expect(try xm("list", "dc").stderr == "Error: Domain 'dc' does not exist.\n")
        #expect(try xm("rename", "dc2", "Domain-0").stderr == "Error: VM name 'Domain-0' already exists as domain 0\n")
        #expect(try xm("rename", "dc2", "a/b").stderr
                == "Error: Invalid VM Name 'a/b': use at most 64 of A-Z a-z 0-9 _ - . : + (no '/')\n")
        #expect(try xm("rename", "0", "x").stderr == "Error: Cannot rename privileged domain 0\n")
        #expect(try xm("rename", "nosuch", "x").stderr == "Error: Domain 'nosuch' does not exist.\n")

        // sysrq h: the guest kernel's SysRq handler prints its help on the console.
        let sq = try xm("sysrq", "dc2", "h")
        #expect(sq.status == 0 && sq.stderr.isEmpty, "\(sq.stderr)")
        // The console log keeps its first name: files are not renamed.
        #expect(waitUntil(20) { consoleLog("dc").contains("sysrq: HELP") }, "\(consoleLog("dc").suffix(600))")
        #expect(try xm("sysrq", "dc2", "!").stderr == "Error: Invalid SysRq key '!': one of a-z or 0-9\n")

        // dump-core: an ELF core whose PT_LOAD segments hold the guest's 128 MiB of RAM.
        let file = root + "/dc2.core"
        let t0 = Date()
        let d = try xm("dump-core", "dc2", file, timeout: 120)
        print("xm dump-core: \(String(format: "%.2f", Date().timeIntervalSince(t0))) s")
        #expect(d.status == 0, "\(d.stderr)")
        #expect(d.stdout == "Dumping core of domain: dc2 ...\n\(file)\n", "\(d.stdout)")
        let ph = try programHeaders(file)
        #expect(ph.type.hasPrefix("Elf file type is CORE"), "\(ph.type)")
        #expect(ph.loads.reduce(0, +) >= 128 << 20, "PT_LOAD sizes \(ph.loads)")
        #expect(ph.notes >= 1)
        #expect((try? FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int) == 0o600)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).filter { $0.contains(".partial") }.isEmpty)
        try? FileManager.default.removeItem(atPath: file)
        // Without a file name: Xen's /var/xen/dump/DATE-NAME.DOMID.core under the root.
        let dd = try xm("dump-core", "dc2", timeout: 120)
        #expect(dd.status == 0, "\(dd.stderr)")
        let dumped = dd.stdout.split(separator: "\n").last.map(String.init) ?? ""
        #expect(dumped.hasPrefix(root + "/var/xen/dump/") && dumped.hasSuffix("-dc2.\(domid).core"), "\(dumped)")
        #expect(FileManager.default.fileExists(atPath: dumped))
        try? FileManager.default.removeItem(atPath: dumped)
        #expect(try xm("dump-core", "dc2", "/nonexistent-dir/x.core").stderr.hasPrefix(
            "Error: Cannot dump core of domain dc2 to /nonexistent-dir/x.core: No such file or directory"))
        // The guest runs on after its dumps.
        let before = consoleLog("dc").components(separatedBy: "alive=").count
        #expect(waitUntil(10) { consoleLog("dc").components(separatedBy: "alive=").count > before + 2 })

        // reset: the guest boots again at once (its counter starts over), same name, on_reboot aside.
        let rs = try xm("reset", "dc2")
        #expect(rs.status == 0 && rs.stdout.isEmpty && rs.stderr.isEmpty, "\(rs.stderr)")
        // xenconsoled may log the new boot under either name: count boots in both logs.
        func boots() -> Int {
            (consoleLog("dc") + consoleLog("dc2")).components(separatedBy: "alive=").dropFirst().filter { $0.prefix(while: \.isNumber) == "1" }.count
        }
        #expect(waitUntil(60) { boots() >= 2 }, "\(consoleLog("dc").suffix(300))\n\(consoleLog("dc2").suffix(300))")
        let l = try xm("list", "dc2")
        #expect(l.status == 0 && l.stdout.contains("r-----"), "\(l.stdout)\(l.stderr)")
        #expect(qemus().count == 1, "QEMUs of this root: \(qemus())")
        #expect(try xm("reset", "Domain-0").stderr == "Error: Cannot reset privileged domain 0\n")
    }

    /// `xm top -b -i 2`, `xm top` under tmux, and `/metrics` parsed by prometheus_client,
    /// with a qemu guest reading its blkback disk.
    @Test func topAndMetricsShowTheDomains() throws {
        if skip(QemuEnv.unavailable) { return }
        if getuid() != 0 { print("SKIP: \(#function): needs root (blkback's sandbox)"); return }
        defer {
            _ = try? run("/usr/bin/tmux", ["-L", "rest-top-\(getpid())", "kill-server"])
            tearDown(["tm"])
        }
        try startXend(engine: "qemu")
        let img = root + "/tm.img"
        _ = FileManager.default.createFile(atPath: img, contents: Data(repeating: 0x5A, count: 4 << 20))
        let cfg = try guestConfig("tm", script: "while true; do echo 3 > /proc/sys/vm/drop_caches; "
                                  + "head -c 1048576 /dev/vda | wc -c | sed s/^/read=/; sleep 0.5; done", disk: img)
        let c = try xm("create", cfg)
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        #expect(waitUntil(60) { consoleLog("tm").contains("read=1048576") }, "\(consoleLog("tm").suffix(600))")

        // Batch mode: two frames, each with the header, Domain-0 and tm; tm has its vbd and reads.
        let t = try xm("top", "-b", "-i", "2", "-d", "1")
        #expect(t.status == 0, "\(t.stderr)")
        let lines = t.stdout.split(separator: "\n").map(String.init)
        let header = "      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_RD   VBD_WR"
        #expect(lines.filter { $0 == header }.count == 2, "\(t.stdout)")
        let rows = lines.filter { $0.split(separator: " ").first == "tm" }.map { $0.split(separator: " ").map(String.init) }
        #expect(rows.count == 2, "\(t.stdout)")
        #expect(lines.filter { $0.split(separator: " ").first == "Domain-0" }.count == 2)
        if let r = rows.last, r.count == 14 {
            #expect(r[4] == "131072" && r[7] == "1" && r[11] == "1", "\(r)")
            #expect((Int(r[12]) ?? 0) > 0, "VBD_RD \(r[12])")
            #expect((Double(r[3]) ?? -1) >= 0)
        }
        #expect(try xm("top", "-i", "0").stderr == "Error: Invalid iterations '0': a positive number\n")

        // /metrics on xend's Unix socket, parsed by Prometheus's own Python parser.
        let sock = root + "/var/lib/xend/xend-socket"
        let m = try run("/usr/bin/curl", ["-s", "-f", "--unix-socket", sock, "http://xend/metrics"], timeout: 20)
        #expect(m.status == 0, "\(m.stderr)")
        let textFile = root + "/metrics.txt"
        try m.stdout.write(toFile: textFile, atomically: true, encoding: .utf8)
        let parse = """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
                for s in fam.samples:
                    print(fam.type, s.name, s.labels.get("name", ""), s.labels.get("domid", ""), s.value)
            """
        // The python3 on PATH: the one `make deps` installs the module for.
        let p = try run("/usr/bin/env", ["python3", "-c", parse, textFile], timeout: 30)
        if p.stderr.contains("No module named 'prometheus_client'") {
            print("SKIP: \(#function): /metrics parse: python3 module prometheus_client missing (make deps)")
        } else {
            #expect(p.status == 0, "\(p.stderr)\n\(m.stdout.prefix(2000))")
            let samples = p.stdout.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
            func value(_ name: String, _ dom: String) -> Double? {
                samples.first { $0.count == 5 && $0[1] == name && $0[2] == dom }.flatMap { Double($0[4]) }
            }
            #expect(value("xenith_domain_cpu_seconds_total", "tm").map { $0 > 0 } == true, "\(p.stdout)")
            #expect(value("xenith_domain_memory_bytes", "tm") == Double(128 << 20))
            #expect(value("xenith_domain_vbds", "tm") == 1)
            #expect(value("xenith_domain_vbd_read_bytes_total", "tm").map { $0 > Double(1 << 20) } == true)
            #expect(value("xenith_domain_running", "Domain-0") == 1)
            #expect(samples.contains { $0.first == "counter" && $0[1] == "xenith_domain_net_transmit_bytes_total" })
        }

        // Interactive under tmux: it redraws each second with the domains, and q quits.
        let tmux = ["-L", "rest-top-\(getpid())"]
        // The tmux server outlives this call: started with posix_spawn and waited for here,
        // with no pipes of ours (Foundation's Process never saw this client's exit).
        let started = spawnAndWait(["/usr/bin/tmux"] + tmux + ["new-session", "-d", "-s", "top", "-x", "160", "-y", "30",
                                                                "env XENITH_ROOT=\(root) \(Env.binary("xm")) top"])
        #expect(started == 0)
        func pane() throws -> String { try run("/usr/bin/tmux", tmux + ["capture-pane", "-p", "-t", "top"]).stdout }
        #expect(try waitUntil(10) { let t = try pane(); return t.contains(header) && t.contains("Domain-0") && t.contains(" tm ") },
                "\((try? pane()) ?? "")")
        let first = try pane().split(separator: "\n").first.map(String.init) ?? ""
        #expect(try waitUntil(5) { (try pane().split(separator: "\n").first.map(String.init) ?? "") != first },
                "no refresh: \(first)")
        _ = try run("/usr/bin/tmux", tmux + ["send-keys", "-t", "top", "q"])
        #expect(try waitUntil(5) { try run("/usr/bin/tmux", tmux + ["has-session", "-t", "top"]).status != 0 }, "q did not quit")
    }

    /// In the core (/dev/kvm): the PVH fixture's balloon driver follows `xm mem-set` and the
    /// core reports its `actual`; `dump-core` is written by the core; `sysrq` is sent (a break
    /// and the key on COM1: the fixture does not read it, Linux does); `rename` and `reset`.
    @Test func coreFixtureBalloonDumpCoreSysrqRenameReset() throws {
        if skip(Env.kvmUnavailable) { return }
        if getuid() != 0 { print("SKIP: \(#function): needs root (xend's back-ends)"); return }
        defer { tearDown(["cb", "cb2"]) }
        try startXend(engine: "core")
        let cfg = root + "/cb.cfg"
        try "kernel = '\(Env.fixture("pvh.elf"))'\nmemory = 64\nname = 'cb'\nextra = 'm'\nengine = 'core'\non_reboot = 'destroy'\n"
            .write(toFile: cfg, atomically: true, encoding: .utf8)
        let c = try xm("create", cfg)
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        #expect(waitUntil(20) { consoleLog("cb").contains("virtio id 10451AF4") }, "\(consoleLog("cb").suffix(600))")
        let domid = try xm("domid", "cb").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let controlPath = root + "/run/xend/domains/\(domid).control"
        func balloonActual() -> String? {
            ((try? control(controlPath, "query")) ?? "").split(separator: " ").first { $0.hasPrefix("balloon_actual_kib=") }
                .map { String($0.dropFirst("balloon_actual_kib=".count)) }
        }
        #expect(balloonActual() == "65536")
        // Down to 32 MiB: the driver inflates by 8192 pages (0x2000) and says so.
        let m = try xm("mem-set", "cb", "32")
        #expect(m.status == 0, "\(m.stderr)")
        #expect(waitUntil(30) { consoleLog("cb").contains("balloon actual 00002000") }, "\(consoleLog("cb").suffix(600))")
        #expect(waitUntil(5) { balloonActual() == "32768" }, "\(String(describing: balloonActual()))")
        #expect(try xm("list", "cb").stdout.contains("   32 "))
        // Up to 48 MiB: the balloon gives 4096 pages back.
        #expect(try xm("mem-set", "cb", "48").status == 0)
        #expect(waitUntil(30) { consoleLog("cb").contains("balloon actual 00001000") }, "\(consoleLog("cb").suffix(600))")
        #expect(waitUntil(5) { balloonActual() == "49152" })

        // dump-core: the core writes the ELF into the file xend opened.
        let file = root + "/cb.core"
        let d = try xm("dump-core", "cb", file)
        #expect(d.status == 0, "\(d.stderr)")
        let ph = try programHeaders(file)
        #expect(ph.type.hasPrefix("Elf file type is CORE"), "\(ph.type)")
        #expect(ph.loads.reduce(0, +) == 64 << 20, "PT_LOAD sizes \(ph.loads)")
        #expect(ph.notes == 1)
        let notes = try run("/usr/bin/readelf", ["-n", file]).stdout
        #expect(notes.contains("XENITH"), "\(notes)")
        #expect(notes.contains("NT_PRSTATUS"), "a CORE note with the vCPU's registers: \(notes)")
        // gdb reads the vCPU's registers: it was stopped in the fixture's code (its PT_LOAD at
        // 1 MiB, 0x19b4 bytes), in 64-bit mode (cs 0x8 or 0x10 of the fixture's GDT).
        let g = try run("/usr/bin/gdb", ["-batch", "-nx", "-ex", "info registers rip cs", "-c", file], timeout: 60)
        let fields = g.stdout.split(whereSeparator: \.isWhitespace)
        let rip = fields.firstIndex(of: "rip").flatMap { i in i + 1 < fields.count ? UInt64(fields[i + 1].dropFirst(2), radix: 16) : nil }
        #expect(rip.map { (0x10_0000..<0x10_19b4).contains($0) } == true, "gdb: \(g.stdout) \(g.stderr)")
        // The guest's bytes are in it: the fixture's greeting sits in its RAM.
        let core = try Data(contentsOf: URL(fileURLWithPath: file))
        #expect(core.range(of: Data("xenith-fixture: balloon actual ".utf8)) != nil)

        // sysrq: accepted by the core (a break and the key on COM1); bad keys refused.
        let sq = try xm("sysrq", "cb", "h")
        #expect(sq.status == 0 && sq.stderr.isEmpty, "\(sq.stderr)")
        #expect(try xm("sysrq", "cb", "hh").stderr == "Error: Invalid SysRq key 'hh': one of a-z or 0-9\n")

        // rename, then reset: on_reboot is destroy, yet reset starts it again.
        #expect(try xm("rename", "cb", "cb2").status == 0)
        let before = consoleLog("cb").components(separatedBy: "pvh entry").count
        let rs = try xm("reset", "cb2")
        #expect(rs.status == 0, "\(rs.stderr)")
        #expect(waitUntil(20) { (consoleLog("cb") + consoleLog("cb2")).components(separatedBy: "pvh entry").count > before },
                "\(consoleLog("cb").suffix(400))")
        #expect(waitUntil(10) { (try? xm("list", "cb2").stdout.contains("r-----")) == true })
    }
}

/// Runs `argv` with posix_spawn (standard streams on /dev/null) and returns its exit status
/// (-1 when it could not start or did not end within 10 s, when it is killed).
func spawnAndWait(_ argv: [String]) -> Int32 {
    var pid: pid_t = 0
    var args: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    defer { for a in args { free(a) } }
    var fa = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&fa)
    defer { posix_spawn_file_actions_destroy(&fa) }
    for fd in Int32(0)...2 { posix_spawn_file_actions_addopen(&fa, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0) }
    guard posix_spawn(&pid, argv[0], &fa, nil, &args, environ) == 0 else { return -1 }
    var status: Int32 = 0
    for _ in 0..<1000 {
        if waitpid(pid, &status, WNOHANG) == pid { return (status >> 8) & 0xff }
        usleep(10_000)
    }
    kill(pid, SIGKILL); waitpid(pid, &status, 0)
    return -1
}
