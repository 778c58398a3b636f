// A Debian guest through xend and xm on the qemu engine whose disk is a qcow2 overlay
// (`tap:qcow2:`) over the raw Debian image: blkback serves it (the backing file opened by
// xend and handed over), the guest writes a file, is destroyed and created again, reads it
// back; `qemu-img check` finds no error after each run and the base image is untouched.
// A missing backing file is refused at `xm create`, naming the file, with nothing started.
import Foundation
import Testing

@Suite(.serialized) struct Qcow2DiskTests {
    let root: String = {
        let d = Scratch.make("xenith-qcow2")
        chmod(d, 0o755)   // QEMU, as its own uid, reconnects to run/xenith/*.sock
        return d
    }()

    func env() { setenv("XENITH_ROOT", root, 1) }
    func xm(_ args: String..., timeout: Double = 60) throws -> RunResult { env(); return try run(Env.binary("xm"), args, timeout: timeout) }
    func xend(_ arg: String) throws -> RunResult { env(); return try run(Env.binary("xend"), [arg], timeout: 60) }
    func read(_ rel: String) -> String { readText(root + rel) }
    func pidFile(_ path: String) -> Int32? {
        (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
    func waitUntil(_ seconds: Double, _ cond: () throws -> Bool) rethrows -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end { if try cond() { return true }; usleep(100_000) }
        return try cond()
    }

    func config(_ name: String, disk: String) throws -> String {
        let cfg = root + "/\(name).cfg"
        try """
            kernel = "\(QemuEnv.guestDir)/debian-vmlinuz"
            ramdisk = "\(QemuEnv.guestDir)/debian-initrd.img"
            memory = 512
            vcpus = 2
            name = "\(name)"
            disk = ['\(disk),xvda,w']
            root = "/dev/vda"
            extra = "quiet cryptomgr.notests \(QemuEnv.tscFlag)"
            on_poweroff = "destroy"
            """.write(toFile: cfg, atomically: true, encoding: .utf8)
        return cfg
    }

    /// Boots `cfg`, logs in on the console, runs `command`, waits for `expect`, powers off.
    func bootAndRun(_ cfg: String, _ name: String, _ command: String, expect: String) throws {
        let log = "/var/log/xen/console/guest-\(name).log"
        let seen = read(log).utf8.count    // the log of an earlier run of this domain stays
        let t0 = Date()
        let c = try xm("create", cfg)
        #expect(c.status == 0, "\(c.stdout)\(c.stderr)")
        guard c.status == 0 else { return }
        #expect(waitUntil(150) { String(decoding: read(log).utf8.dropFirst(seen), as: UTF8.self).contains("login:") },
                "console log: \(read(log).suffix(800))")
        print("qcow2 disk: xm create → login: \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        let con = try ConsoleSession(xm: Env.binary("xm"), domain: name)
        defer { _ = con.detach() }
        con.type("root\n")
        #expect(con.waitFor("root@", timeout: 60), "console: \(con.output.get().suffix(600))")
        con.type(command + "\n")
        #expect(con.waitFor(expect, timeout: 60), "console: \(con.output.get().suffix(800))")
        con.type("poweroff\n")
        #expect(try waitUntil(90) { try !xm("list").stdout.contains("\(name) ") }, "\((try? xm("list"))?.stdout ?? "")")
    }

    @Test func debianOnQcow2OverlayKeepsItsWrites() throws {
        if skip(QemuEnv.debianUnavailable) { return }
        if getuid() != 0 { print("SKIP: debianOnQcow2OverlayKeepsItsWrites: needs root (sandboxed blkback, -runas)"); return }
        if access("/usr/bin/qemu-img", X_OK) != 0 { print("SKIP: debianOnQcow2OverlayKeepsItsWrites: qemu-img not installed (Debian package qemu-utils)"); return }
        defer {
            _ = try? xm("destroy", "q2deb")
            _ = try? xend("stop")
            for f in ["/run/xenconsoled/xenconsoled.pid", "/run/xenstored/xenstored.pid"] {
                if let p = pidFile(root + f) { kill(p, SIGTERM) }
            }
            try? FileManager.default.removeItem(atPath: root)
        }
        try FileManager.default.createDirectory(atPath: root + "/etc/xen", withIntermediateDirectories: true)
        try "(domain-engine qemu)\n".write(toFile: root + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8)
        let base = QemuEnv.guestDir + "/debian.img"
        var before = stat()
        #expect(stat(base, &before) == 0)
        let overlay = root + "/debian.qcow2"
        let mk = try run("/usr/bin/qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", overlay])
        #expect(mk.status == 0, "\(mk.stderr)")
        #expect(try xend("start").status == 0)

        // A missing backing file: refused by name, nothing left running.
        let broken = root + "/broken.qcow2"
        _ = try run("/usr/bin/qemu-img", ["create", "-q", "-f", "qcow2", "-u", "-b", root + "/gone.raw", "-F", "raw", broken, "1G"])
        let bad = try xm("create", try config("q2bad", disk: "tap:qcow2:\(broken)"))
        #expect(bad.status != 0 && (bad.stdout + bad.stderr).contains("backing file \(root)/gone.raw"), "\(bad.stdout)\(bad.stderr)")
        #expect(try !xm("list").stdout.contains("q2bad"))

        let cfg = try config("q2deb", disk: "tap:qcow2:\(overlay)")
        let token = "Q2-\(UInt32.random(in: 1_000_000...9_999_999))"
        try bootAndRun(cfg, "q2deb", "echo \(token) > /root/q2mark; dd if=/dev/urandom of=/root/big bs=1M count=16 2>/dev/null; sha256sum /root/big > /root/big.sum; sync; echo WROTE-$((40+2))", expect: "WROTE-42")
        let check1 = try run("/usr/bin/qemu-img", ["check", overlay])
        #expect(check1.status == 0 && check1.stdout.contains("No errors were found"), "qemu-img check after the first run: \(check1.stdout)\(check1.stderr)")
        // Again from the same overlay: the guest's writes are there.
        try bootAndRun(cfg, "q2deb", "cat /root/q2mark; sha256sum -c /root/big.sum && echo READ-$((50+5))", expect: "READ-55")
        let log = read("/var/log/xen/console/guest-q2deb.log")
        #expect(log.contains(token), "the file written in the first run was not read back")
        let check2 = try run("/usr/bin/qemu-img", ["check", overlay])
        #expect(check2.status == 0 && check2.stdout.contains("No errors were found"), "qemu-img check after the second run: \(check2.stdout)\(check2.stderr)")
        var after = stat()
        #expect(stat(base, &after) == 0 && after.st_mtim.tv_sec == before.st_mtim.tv_sec && after.st_size == before.st_size, "the backing image changed")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: root + "/run/xenith"))?.filter { $0.hasPrefix("blkback-") } ?? []
        #expect(left.isEmpty, "left behind: \(left)")
    }
}
