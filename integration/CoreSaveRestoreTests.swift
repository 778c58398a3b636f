import Foundation
import Testing

/// `xm save`, `xm save -c` and `xm restore` of a core-engine domain through xend and the
/// migration service (issue 13 item 3): the fixture counts in RAM (pvh.S mode `c`), so a
/// restored guest that goes on above its last value proves RAM, registers and devices came
/// back; the checkpoint is the live pre-copy path (KVM's dirty log) and keeps it running.
@Suite(.serialized) struct CoreSaveRestoreTests {
    let root = Scratch.make("coresave-it")

    func tool(_ name: String, _ args: [String], timeout: Double = 60) throws -> RunResult {
        setenv("XENITH_ROOT", root, 1)
        return try run(Env.binary(name), args, timeout: timeout)
    }
    func xm(_ args: String...) throws -> RunResult { try tool("xm", args) }

    /// The counter values the fixture printed ("count XXXXXXXX", hex), in order.
    func counts(_ name: String) -> [Int] {
        let log = readText(root + "/var/log/xen/console/guest-\(name).log")
        return completeValues(log, after: "xenith-fixture: count ").compactMap { Int($0.prefix(8), radix: 16) }
    }
    func waitUntil(_ timeout: Double, _ cond: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if try cond() { return true }; usleep(100_000) }
        return try cond()
    }
    /// xenith-core processes whose control socket is under this test's root.
    func cores() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }.filter { pid in
            let c = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
            let s = String(decoding: c, as: UTF8.self)
            return s.contains("xenith-core") && s.contains(root + "/")
        }
    }
    func names() throws -> [String] {
        try xm("list").stdout.split(separator: "\n").dropFirst(2).map { String($0.split(separator: " ").first ?? "") }
    }

    @Test func coreGuestCountsOnAcrossSaveAndRestore() throws {
        if skip(Env.kvmUnavailable) { return }
        if getuid() != 0 { print("SKIP: \(#function): needs root (xend)"); return }
        defer {
            _ = try? xm("destroy", "cs")
            _ = try? xm("destroy", "cs-evil")   // only if a crafted restore got through
            _ = try? tool("xend", ["stop"])
            for f in ["/run/xenstored/xenstored.pid", "/run/xenconsoled/xenconsoled.pid"] {
                if let p = try? String(contentsOfFile: root + f, encoding: .utf8),
                   let pid = Int32(p.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGTERM) }
            }
            try? FileManager.default.removeItem(atPath: root)
        }
        let cfg = root + "/cs.cfg"
        try "kernel = '\(Env.fixture("pvh.elf"))'\nmemory = 32\nname = 'cs'\nextra = 'c'\nengine = 'core'\n"
            .write(toFile: cfg, atomically: true, encoding: .utf8)
        // Incoming domains may use only the fixtures' directory (resolved: build/ may be a link).
        let fixtures = URL(fileURLWithPath: Env.fixture("pvh.elf")).resolvingSymlinksInPath().deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: root + "/etc/xen", withIntermediateDirectories: true)
        try "(xend-relocation-paths-allow '\(fixtures)')\n".write(toFile: root + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8)
        // One later run of the migration service makes a syscall outside its manifest.
        setenv("XENITH_MIGRATION_TEST_FORBIDDEN", root + "/sigsys-once", 1)
        defer { unsetenv("XENITH_MIGRATION_TEST_FORBIDDEN") }
        #expect(try tool("xend", ["start"]).status == 0)
        let c = try xm("create", cfg)
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        #expect(waitUntil(30) { counts("cs").count >= 3 })

        // Checkpoint: pre-copy while it runs; it keeps counting; the file is Xen's envelope.
        let chk = root + "/cs-live.chk"
        let cp = try xm("save", "-c", "cs", chk)
        #expect(cp.status == 0 && cp.stdout.isEmpty && cp.stderr.isEmpty, "\(cp.stdout)\(cp.stderr)")
        let atCheckpoint = counts("cs").last ?? 0
        #expect(waitUntil(20) { (counts("cs").last ?? 0) > atCheckpoint + 20000 }, "the guest did not run on after save -c")
        #expect(try xm("list", "cs").stdout.contains("r-----"))
        #expect((try? Data(contentsOf: URL(fileURLWithPath: chk)))?.prefix(16) == Data("LinuxGuestRecord".utf8))

        // The service killed by seccomp: the error names the syscall; the guest runs on here.
        FileManager.default.createFile(atPath: root + "/sigsys-once", contents: nil)
        let k = try xm("save", "cs", root + "/cs-killed.chk")
        #expect(k.status != 0 && k.stderr.contains("migration killed by SIGSYS: blocked syscall getppid"), "\(k.stderr)")
        let atKill = counts("cs").last ?? 0
        #expect(waitUntil(20) { (counts("cs").last ?? 0) > atKill + 20000 }, "the guest did not run on after the failed save")
        #expect(try xm("list", "cs").stdout.contains("r-----"))
        #expect(!FileManager.default.fileExists(atPath: root + "/cs-killed.chk"))

        // mem-set first: the stored configuration then says memory 16, maxmem 32 (the RAM);
        // the restore must still get the 32 MiB its saved state holds.
        #expect(try xm("mem-set", "cs", "16").status == 0)
        // and mem-max above the RAM it runs with: for its next fresh start, not for the restore.
        #expect(try xm("mem-max", "cs", "64").status == 0)

        // Save: silent, the domain and its core are gone, the file carries the SXP.
        let file = root + "/cs.chk"
        let s = try xm("save", "cs", file)
        #expect(s.status == 0 && s.stdout.isEmpty && s.stderr.isEmpty, "\(s.stdout)\(s.stderr)")
        guard s.status == 0 else { return }
        let lastBefore = counts("cs").last ?? -1
        #expect(try !names().contains("cs"))
        #expect(waitUntil(5) { cores().isEmpty }, "xenith-core still running: \(cores())")
        let saved = try Data(contentsOf: URL(fileURLWithPath: file))
        #expect(saved.prefix(16) == Data("LinuxGuestRecord".utf8))
        let len = saved.count > 20 ? Int(saved[16]) << 24 | Int(saved[17]) << 16 | Int(saved[18]) << 8 | Int(saved[19]) : 0
        let sxp = saved.count >= 20 + len ? String(decoding: saved[20..<(20 + len)], as: UTF8.self) : ""
        #expect(sxp.contains("(name cs)") && sxp.contains("(engine core)") && sxp.contains("(memory 16)") && sxp.contains("(maxmem 32)"),
                "\(sxp.prefix(300))")

        // A save file is untrusted input: one whose configuration names a ramdisk outside
        // xend-relocation-paths-allow, or a kernel that leads into /proc, is refused by key,
        // path and reason; no domain, no core.
        func crafted(_ edit: (String) -> String, _ expected: String...) throws {
            let text = edit(sxp.replacingOccurrences(of: "(name cs)", with: "(name cs-evil)"))
            let body = Array(text.utf8)
            var out = Array(saved.prefix(16))
            for k in 0..<4 { out.append(UInt8(truncatingIfNeeded: body.count >> (24 - 8 * k))) }
            var rest = Array(saved[(20 + len)...])
            for (at, crc) in [(12, crc32c(body)), (16, UInt32(0))] {
                let v = at == 16 ? crc32c(Array(rest[0..<16])) : crc
                for k in 0..<4 { rest[at + k] = UInt8(truncatingIfNeeded: v >> (24 - 8 * k)) }
            }
            out += body + rest
            let path = root + "/cs-evil.chk"
            try Data(out).write(to: URL(fileURLWithPath: path))
            let e = try xm("restore", path)
            #expect(e.status == 1 && e.stderr.hasPrefix("Error: Restore failed: \(path): \(expected[0])")
                    && expected.allSatisfy { e.stderr.contains($0) }, "\(e.stderr)")
            #expect(try !names().contains("cs-evil"))
            #expect(cores().isEmpty, "xenith-core started: \(cores())")
        }
        let kernel = "(kernel \(Env.fixture("pvh.elf")))"
        #expect(sxp.contains(kernel), "\(sxp.prefix(300))")
        if sxp.contains(kernel) {
            try crafted({ $0.replacingOccurrences(of: kernel, with: kernel + " (ramdisk /etc/shadow)") },
                        "ramdisk: /etc/shadow is not under xend-relocation-paths-allow (\(fixtures))")
            symlink("/proc/self/environ", root + "/k")
            try crafted({ $0.replacingOccurrences(of: kernel, with: "(kernel \(root)/k)") },
                        "kernel: \(root)/k (→ /proc/", "/environ) is under /proc, which an incoming domain may not use")
        }

        // Restore: it counts on from above its last value (RAM and registers came back).
        let r = try xm("restore", file)
        #expect(r.status == 0 && r.stdout.isEmpty && r.stderr.isEmpty, "\(r.stdout)\(r.stderr)")
        #expect(try xm("list", "cs").stdout.contains("r-----"))
        #expect(waitUntil(20) { (counts("cs").last ?? 0) >= lastBefore + 30000 }, "\(counts("cs").suffix(5))")
        let all = counts("cs")
        if let i = all.lastIndex(of: lastBefore), i + 1 < all.count {
            #expect(all[i + 1] == lastBefore + 10000, "the counter did not go on from \(lastBefore): \(all[i...].prefix(5))")
        } else {
            Issue.record("the last count before the save, \(lastBefore), is not in the log")
        }
        // Its own checkpoint names a domain that runs: refused, nothing started.
        let again = try xm("restore", chk)
        #expect(again.status == 1 && again.stderr.contains("already exists"), "\(again.stderr)")
        #expect(cores().count == 1)
    }
}
