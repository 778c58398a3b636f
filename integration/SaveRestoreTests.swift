import Foundation
import Testing

/// `xm save` / `xm restore` through xend on the qemu engine (DESIGN.md "Save, restore and
/// migration (round 2)"): the test guest counts on its console and reads its blkback disk
/// (page cache dropped, so every read reaches the disk); the save file carries Xen's
/// envelope; the restored guest counts on from where it was and reads what it wrote; bad
/// files and a name in use are refused by name with nothing started and nothing left.
@Suite(.serialized) struct SaveRestoreTests {
    let root = QemuEnv.scratch("save")

    func tool(_ name: String, _ args: [String], timeout: Double = 120) throws -> RunResult {
        setenv("XENITH_ROOT", root, 1)
        return try run(Env.binary(name), args, timeout: timeout)
    }
    func xm(_ args: String..., timeout: Double = 120) throws -> RunResult { try tool("xm", args, timeout: timeout) }

    func consoleLog(_ name: String) -> String {
        readText(root + "/var/log/xen/console/guest-\(name).log")
    }
    /// The counter values the guest printed, in order.
    func counts(_ name: String) -> [Int] {
        completeValues(consoleLog(name), after: "count=").compactMap { Int($0.prefix(while: { $0.isNumber })) }
    }
    /// The disk contents the guest read, line by line.
    func diskReads(_ name: String) -> [String] {
        completeValues(consoleLog(name), after: "disk=")
    }
    func waitUntil(_ timeout: Double, _ cond: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if try cond() { return true }; usleep(250_000) }
        return try cond()
    }
    /// Pids of processes running `binary` (by /proc/PID/exe).
    func processes(_ binary: String) -> [Int32] {
        let want = URL(fileURLWithPath: binary).resolvingSymlinksInPath().path
        return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }.filter { pid in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) == want
        }
    }
    /// QEMU processes of this test's root (their QMP socket is under it).
    func qemus() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }.filter { pid in
            let c = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
            let s = String(decoding: c, as: UTF8.self)
            return s.hasPrefix("qemu-system") || s.contains("/qemu-system") ? s.contains(root + "/") : false
        }
    }
    func domainNames() throws -> [String] {
        try xm("list").stdout.split(separator: "\n").dropFirst(2).map { String($0.split(separator: " ").first ?? "") }
    }

    @Test func saveAndRestoreAQemuGuest() throws {
        if skip(QemuEnv.unavailable) { return }
        if getuid() != 0 { print("SKIP: \(#function): needs root (xend, blkback's sandbox)"); return }
        defer {
            _ = try? xm("destroy", "sr")
            _ = try? tool("xend", ["stop"])
            for f in ["/run/xenstored/xenstored.pid", "/run/xenconsoled/xenconsoled.pid"] {
                if let p = try? String(contentsOfFile: root + f, encoding: .utf8),
                   let pid = Int32(p.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGTERM) }
            }
            try? FileManager.default.removeItem(atPath: root)
        }
        try FileManager.default.createDirectory(atPath: root + "/etc/xen", withIntermediateDirectories: true)
        try "(domain-engine qemu)\n".write(toFile: root + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8)
        let img = root + "/disk.img"
        _ = FileManager.default.createFile(atPath: img, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: img)); try h.truncate(atOffset: 16 << 20); try h.close()
        // The guest writes a mark on its disk, then every 0.5 s prints a counter and the
        // first 16 bytes of the disk, read past the page cache.
        let script = "printf XENITH-DISK-MARK > /tmp/m; dd if=/tmp/m of=/dev/vda conv=fsync 2>/dev/null; i=0; "
            + "while true; do echo 3 > /proc/sys/vm/drop_caches; echo count=$i disk=$(head -c 16 /dev/vda); i=$((i+1)); sleep 0.5; done"
        let encoded = script.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let cfg = root + "/sr.cfg"
        try """
            kernel = "\(QemuEnv.guestDir)/vmlinuz"
            ramdisk = "\(QemuEnv.guestDir)/initrd.img"
            memory = 160
            vcpus = 1
            name = "sr"
            disk = ['file:\(img),xvda,w']
            extra = "quiet cryptomgr.notests \(QemuEnv.tscFlag)xenith.run=\(encoded)"
            on_crash = "destroy"
            """.write(toFile: cfg, atomically: true, encoding: .utf8)
        #expect(try tool("xend", ["start"]).status == 0)
        let c = try xm("create", cfg)
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        #expect(waitUntil(180) { counts("sr").count >= 4 }, "\(consoleLog("sr").suffix(800))")
        #expect(diskReads("sr").last == "XENITH-DISK-MARK", "\(diskReads("sr").suffix(3))")
        // blkback wrote the mark through to the host's file.
        #expect(((try? Data(contentsOf: URL(fileURLWithPath: img)))?.prefix(16)).map { String(decoding: $0, as: UTF8.self) } == "XENITH-DISK-MARK")

        // Save: silent, the domain is gone with its QEMU and blkback, the file is Xen's envelope.
        let file = root + "/sr.chk"
        let t0 = Date()
        let s = try xm("save", "sr", file)
        let saveSeconds = Date().timeIntervalSince(t0)
        #expect(s.status == 0 && s.stdout.isEmpty && s.stderr.isEmpty, "\(s.stdout)\(s.stderr)")
        guard s.status == 0 else { print(String((readText(root + "/var/log/xen/xend.log")).suffix(3000))); return }
        print("xm save: \(String(format: "%.2f", saveSeconds)) s, \(((try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? 0) ?? 0) bytes")
        let lastBefore = counts("sr").last ?? -1
        #expect(!(try domainNames()).contains { $0.hasSuffix("sr") })
        #expect(qemus().isEmpty, "QEMU still running: \(qemus())")
        #expect(processes(Env.binary("migration")).isEmpty)
        #expect(waitUntil(5) { processes(Env.binary("blkback")).isEmpty })
        let saved = try Data(contentsOf: URL(fileURLWithPath: file))
        #expect(saved.prefix(16) == Data("LinuxGuestRecord".utf8))
        let len = saved.count > 20 ? Int(saved[16]) << 24 | Int(saved[17]) << 16 | Int(saved[18]) << 8 | Int(saved[19]) : 0
        let sxp = saved.count >= 20 + len ? String(decoding: saved[20..<20 + len], as: UTF8.self) : ""
        #expect(sxp.hasPrefix("(vm") && sxp.contains("(name sr)") && sxp.contains("(engine qemu)"), "\(sxp.prefix(300))")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: root).filter { $0.contains(".partial") }
        #expect(leftovers.isEmpty, "\(leftovers)")
        #expect((try? FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int) == 0o600)
        usleep(1_500_000)
        #expect(counts("sr").last == lastBefore, "the guest ran on after the save")

        // Restore: the counter goes on from where it was; the disk reads back the mark.
        let t1 = Date()
        let r = try xm("restore", file)
        let restoreSeconds = Date().timeIntervalSince(t1)
        #expect(r.status == 0 && r.stdout.isEmpty && r.stderr.isEmpty, "\(r.stdout)\(r.stderr)")
        print("xm restore: \(String(format: "%.2f", restoreSeconds)) s")
        #expect(try xm("list", "sr").stdout.contains("r-----"))
        #expect(waitUntil(60) { (counts("sr").last ?? -1) >= lastBefore + 3 }, "\(consoleLog("sr").suffix(600))")
        let all = counts("sr")
        #expect(all.filter { $0 == 0 }.count == 1, "the counter started again: \(all.suffix(20))")
        if let i = all.lastIndex(of: lastBefore), i + 1 < all.count {
            #expect(all[i + 1] == lastBefore + 1, "\(all.suffix(20))")
        }
        #expect(diskReads("sr").last == "XENITH-DISK-MARK", "\(diskReads("sr").suffix(3))")
        #expect(processes(Env.binary("migration")).isEmpty)

        // Bad input: each refused by name; nothing started, nothing left.
        func refused(_ path: String, _ what: String, _ expected: String) throws {
            let before = try domainNames(), q = qemus().count
            let b = try xm("restore", path)
            #expect(b.status == 1 && b.stderr.hasPrefix("Error: ") && b.stderr.contains(expected), "\(what): \(b.stderr)")
            #expect(try domainNames() == before, "\(what)")
            #expect(qemus().count == q, "\(what): QEMU started")
            #expect(waitUntil(5) { processes(Env.binary("migration")).isEmpty }, "\(what): migration service left")
        }
        try Data("hello, not a save file\n".utf8).write(to: URL(fileURLWithPath: root + "/junk"))
        try refused(root + "/junk", "junk", "not a valid guest state file")
        try saved.prefix(saved.count / 2).write(to: URL(fileURLWithPath: root + "/half"))
        try refused(root + "/half", "truncated", root + "/half")
        var flipped = saved
        flipped[saved.count * 2 / 3] ^= 0x40
        try flipped.write(to: URL(fileURLWithPath: root + "/flipped"))
        try refused(root + "/flipped", "corrupted", "CRC")
        var newer = saved
        let header = 20 + len
        newer[header + 11] = 2                       // version 1 → 2
        let crc = crc32c(Array(newer[header..<header + 16]))
        for k in 0..<4 { newer[header + 16 + k] = UInt8(truncatingIfNeeded: crc >> (24 - 8 * k)) }
        try newer.write(to: URL(fileURLWithPath: root + "/newer"))
        try refused(root + "/newer", "newer format", "version")
        // sr runs again: its own save file names a domain that exists.
        try refused(file, "name in use", "already exists")

        // Checkpoint: the domain keeps running, the file is complete.
        let file2 = root + "/sr2.chk"
        let cp = try xm("save", "-c", "sr", file2)
        #expect(cp.status == 0 && cp.stderr.isEmpty, "\(cp.stderr)")
        let atCheckpoint = counts("sr").last ?? 0
        #expect(waitUntil(30) { (counts("sr").last ?? 0) >= atCheckpoint + 2 }, "the guest did not run on after save -c")
        #expect(try xm("list", "sr").stdout.contains("r-----"))
        #expect((try? Data(contentsOf: URL(fileURLWithPath: file2)))?.prefix(16) == Data("LinuxGuestRecord".utf8))

        // While a save runs xm list shows the domain as migrating-sr, as Xen renamed it.
        let bg = Process()
        bg.executableURL = URL(fileURLWithPath: Env.binary("xm"))
        bg.arguments = ["save", "-c", "sr", root + "/sr3.chk"]
        try bg.run()
        var listed: Set<String> = []
        while bg.isRunning { listed.formUnion(try domainNames()); usleep(50_000) }
        bg.waitUntilExit()
        #expect(bg.terminationStatus == 0)
        #expect(listed.contains("migrating-sr"), "\(listed)")
        #expect(try domainNames().contains("sr"))

        // A save that fails (no space left) leaves the guest running where it was and no file.
        let small = root + "/small"
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        if try run("/bin/mount", ["-t", "tmpfs", "-o", "size=8m", "tmpfs", small]).status == 0 {
            defer { _ = try? run("/bin/umount", [small]) }
            let full = try xm("save", "sr", small + "/sr.chk")
            #expect(full.status == 1 && full.stderr.hasPrefix("Error: Save failed on domain sr: ")
                    && full.stderr.contains("No space left on device"), "\(full.stderr)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: small).isEmpty)
            #expect(try xm("list", "sr").stdout.contains("r-----"))
            let atFailure = counts("sr").last ?? 0
            #expect(waitUntil(30) { (counts("sr").last ?? 0) >= atFailure + 2 }, "the guest did not run on after a failed save")
            #expect(processes(Env.binary("migration")).isEmpty)
        } else {
            print("SKIP: \(#function): failed-save part: cannot mount a tmpfs")
        }

        // A paused domain saved with -c stays paused, and QEMU 7.2 will not save it again
        // until it has run: refused in xend's words, the domain kept as it was, no file.
        #expect(try xm("pause", "sr").status == 0)
        #expect(try xm("save", "-c", "sr", root + "/p1.chk").status == 0)
        let again2 = try xm("save", "-c", "sr", root + "/p2.chk")
        #expect(again2.stderr == "Error: Cannot save domain sr: it has stayed paused since its state was last saved (xm save -c of a paused domain), and QEMU saves or migrates such a guest again only once it has run: xm unpause it first\n", "\(again2.stderr)")
        #expect(!FileManager.default.fileExists(atPath: root + "/p2.chk"))
        let pausedRow = try xm("list", "sr").stdout
        #expect(pausedRow.contains("--p---"), "\(pausedRow)")
        #expect(try xm("unpause", "sr").status == 0)
        #expect(try xm("save", "-c", "sr", root + "/p2.chk").status == 0)

        // xend killed in a restore after QEMU loaded the state, before the guest ran: the
        // restarted xend undoes that domain (nothing of it runs, its disk is free), and the
        // file restores again, the counter going on from the checkpoint.
        #expect(try xm("destroy", "sr").status == 0)
        #expect(try tool("xend", ["stop"]).status == 0)
        setenv("XENITH_TEST_CRASH_AT", "restore-loaded", 1)
        let crashStart = try tool("xend", ["start"])
        unsetenv("XENITH_TEST_CRASH_AT")
        #expect(crashStart.status == 0, "\(crashStart.stderr)")
        let logMark = consoleLog("sr").utf8.count
        func countsSinceMark() -> [Int] {
            let text = String(decoding: Array(consoleLog("sr").utf8.dropFirst(logMark)), as: UTF8.self)
            return completeValues(text, after: "count=").compactMap { Int($0.prefix(while: { $0.isNumber })) }
        }
        let k = try xm("restore", file2)
        #expect(k.status != 0, "xend should have died in the restore: \(k.stdout)")
        #expect(waitUntil(10) { processes(Env.binary("xend")).allSatisfy { pid in
            !String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))) ?? Data(), as: UTF8.self).contains("XENITH_ROOT=\(root)")
        } }, "the crashing xend still runs")
        #expect(try tool("xend", ["start"]).status == 0)
        #expect(!(try domainNames()).contains("sr"), "the half-restored domain was kept")
        #expect(waitUntil(10) { qemus().isEmpty }, "its QEMU still runs: \(qemus())")
        #expect(waitUntil(10) { processes(Env.binary("blkback")).isEmpty })
        #expect(try xm("dmesg").stdout.contains("the transfer of its state (restore or migration) was interrupted (xend stopped); undone"))
        #expect(countsSinceMark().isEmpty, "the half-restored guest ran: \(countsSinceMark())")
        let again = try xm("restore", file2)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(waitUntil(30) { countsSinceMark().count >= 2 }, "\(consoleLog("sr").suffix(300))")
        // On from the checkpoint (the last count printed before `save -c` returned, or the next).
        #expect(countsSinceMark().first.map { $0 >= atCheckpoint && $0 <= atCheckpoint + 2 } == true,
                "\(countsSinceMark().prefix(3)) after a checkpoint at \(atCheckpoint)")

        // The core engine's save and restore: CoreSaveRestoreTests.
    }
}

/// CRC-32C (Castagnoli, reflected 0x82F63B78), as the save file's header uses.
func crc32c(_ bytes: [UInt8]) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        c ^= UInt32(b)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
    }
    return c ^ 0xFFFF_FFFF
}
