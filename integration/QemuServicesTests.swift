// Our services serving a qemu domain, through xend and xm (issue 5): the serial line on
// xenconsoled, the disk on blkback (vhost-user), QEMU as an unprivileged user.
import Foundation
import Testing

/// `xm console DOM` kept attached: what it prints is collected, `type` sends keystrokes.
final class ConsoleSession: @unchecked Sendable {
    let process = Process()
    let output = Locked("")
    private let input = Pipe()

    init(xm: String, domain: String) throws {
        // Typing into an xm console that has ended (xenconsoled killed, domain gone) must
        // be an EPIPE, not the death of the test process.
        signal(SIGPIPE, SIG_IGN)
        process.executableURL = URL(fileURLWithPath: xm)
        process.arguments = ["console", domain]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        process.standardInput = input
        out.fileHandleForReading.readabilityHandler = { [output] h in
            let d = h.availableData
            output.update { $0 += String(decoding: d, as: UTF8.self) }
        }
        try process.run()
    }

    func type(_ s: String) { try? input.fileHandleForWriting.write(contentsOf: Data(s.utf8)) }

    func waitFor(_ text: String, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if output.get().contains(text) { return true }
            usleep(50_000)
        }
        return output.get().contains(text)
    }

    /// Ctrl-] detaches; returns xm's exit status.
    func detach() -> Int32 {
        type("\u{1d}")
        let end = Date().addingTimeInterval(5)
        while process.isRunning && Date() < end { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

@Suite(.serialized) struct QemuServicesTests {
    let root: String = {
        let d = Scratch.make("xenith-qsvc")
        chmod(d, 0o755)   // as / is: QEMU, once it runs as its own uid, reconnects to run/xenith/*.sock
        return d
    }()

    func env() { setenv("XENITH_ROOT", root, 1) }
    func xm(_ args: String..., timeout: Double = 60) throws -> RunResult { env(); return try run(Env.binary("xm"), args, timeout: timeout) }
    func xend(_ arg: String) throws -> RunResult { env(); return try run(Env.binary("xend"), [arg], timeout: 60) }
    /// A file under the test root as text ("" when absent; bytes that are not UTF-8 do not
    /// make the whole file read as absent).
    func read(_ rel: String) -> String {
        (FileManager.default.contents(atPath: root + rel)).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }
    /// What a failed check should show: the end of xend's log and of xenstored's.
    func logs() -> String {
        "xend.log: \(read("/var/log/xen/xend.log").suffix(1500))\nxend-debug.log: \(read("/var/log/xen/xend-debug.log").suffix(500))"
            + "\nxenstored.log: \(read("/var/log/xen/xenstored.log").suffix(500))"
    }
    func pidFile(_ path: String) -> Int32? {
        (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
    func waitUntil(_ seconds: Double, _ cond: () throws -> Bool) rethrows -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end { if try cond() { return true }; usleep(100_000) }
        return try cond()
    }
    /// The blkback processes (sandbox reaper and service) serving `image`.
    func blkbacks(_ image: String) -> [Int32] {
        let all = ((try? run("/usr/bin/pgrep", ["-f", "--", "blkback --listen-fd 3 --image-fd 4"]))?.stdout ?? "")
            .split(separator: "\n").compactMap { Int32($0) }
        return all.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\($0)/fd/4")) == image }
    }
    /// A field of /proc/PID/status ("Uid" → "999\t999\t999\t999").
    func status(_ pid: Int32, _ field: String) -> String? {
        let text = readText("/proc/\(pid)/status")
        return text.split(separator: "\n").first { $0.hasPrefix(field + ":") }
            .map { $0.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces) }
    }

    @Test func debianThroughXmOnBlkbackAndXenconsoled() throws {
        if skip(QemuEnv.debianUnavailable) { return }
        if getuid() != 0 { print("SKIP: debianThroughXmOnBlkbackAndXenconsoled: needs root (sandboxed blkback, -runas)"); return }
        defer {
            _ = try? xm("destroy", "deb")
            _ = try? xend("stop")
            for f in ["/run/xenconsoled/xenconsoled.pid", "/run/xenstored/xenstored.pid"] {
                if let p = pidFile(root + f) { kill(p, SIGTERM) }
            }
            try? FileManager.default.removeItem(atPath: root)
        }
        // The qemu engine even where KVM is hardware-backed.
        try FileManager.default.createDirectory(atPath: root + "/etc/xen", withIntermediateDirectories: true)
        try "(domain-engine qemu)\n".write(toFile: root + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8)
        let img = root + "/debian.img"
        try FileManager.default.copyItem(atPath: QemuEnv.guestDir + "/debian.img", toPath: img)
        let cfg = root + "/debian.cfg"
        try """
            kernel = "\(QemuEnv.guestDir)/debian-vmlinuz"
            ramdisk = "\(QemuEnv.guestDir)/debian-initrd.img"
            memory = 512
            vcpus = 2
            name = "deb"
            disk = ['file:\(img),xvda,w']
            root = "/dev/vda"
            extra = "quiet cryptomgr.notests \(QemuEnv.tscFlag)"
            on_poweroff = "destroy"
            """.write(toFile: cfg, atomically: true, encoding: .utf8)

        #expect(try xend("start").status == 0)
        let t0 = Date()
        let c = try xm("create", cfg)
        #expect(c.status == 0 && c.stdout.contains("Started domain deb"), "\(c.stdout)\(c.stderr)")
        guard c.status == 0 else { print(read("/var/log/xen/xend.log").suffix(2000)); return }
        let domid = try xm("domid", "deb").stdout.trimmingCharacters(in: .whitespacesAndNewlines)

        // The disk is blkback's: a sandboxed process on our image, vbd Connected in xenstore.
        #expect(waitUntil(10) { !blkbacks(img).isEmpty }, "no blkback serves \(img)")
        let qemuPid = pidFile(root + "/run/xend/domains/\(domid).control.pid") ?? 0
        #expect(qemuPid > 0)
        let cmdline = readText("/proc/\(qemuPid)/cmdline")
        #expect(cmdline.contains("vhost-user-blk-pci") && cmdline.contains("socket,id=serial0,fd="), "\(cmdline)")
        // QEMU dropped root once it had started, to a uid of this domain's own
        // (qemu-uid-base + domid), which owns the domain's back-end sockets (0600): a process
        // with any other uid (another domain's QEMU) is refused at connect.
        let uid = UInt32(0x7FFF_0000) + UInt32(domid)!   // xend-config qemu-uid-base, default
        #expect(waitUntil(10) { status(qemuPid, "Uid")?.hasPrefix("\(uid)\t") == true },
                "QEMU Uid: \(status(qemuPid, "Uid") ?? "?")")
        print("qemu services: QEMU pid \(qemuPid) Uid \(status(qemuPid, "Uid") ?? "?")")
        let sockets = ((try? FileManager.default.contentsOfDirectory(atPath: root + "/run/xenith")) ?? [])
            .filter { $0.hasSuffix(".sock") }.map { root + "/run/xenith/" + $0 }
        #expect(!sockets.isEmpty, "no back-end socket in \(root)/run/xenith")
        for s in sockets {
            var st = stat()
            #expect(stat(s, &st) == 0 && st.st_uid == uid && st.st_mode & 0o777 == 0o600, "\(s): uid \(st.st_uid) mode \(String(st.st_mode & 0o777, radix: 8))")
            let other = try run("/usr/bin/setpriv", ["--reuid=\(uid + 1)", "--regid=\(uid + 1)", "--clear-groups",
                                                     "socat", "-u", "OPEN:/dev/null", "UNIX-CONNECT:\(s)"], timeout: 10)
            #expect(other.status != 0 && other.stderr.contains("Permission denied"), "uid \(uid + 1) connected to \(s): \(other.stderr)")
        }

        // The console through xenconsoled: systemd reaches the login prompt, root logs in.
        #expect(waitUntil(150) { read("/var/log/xen/console/guest-deb.log").contains("login:") },
                "console log: \(read("/var/log/xen/console/guest-deb.log").suffix(800))")
        print("qemu services: xm create → login: \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        if FileManager.default.fileExists(atPath: "/usr/bin/xenstore-read") {
            var vbd: RunResult?
            let connected = waitUntil(10) {
                vbd = try? run("/usr/bin/env", ["XENSTORED_PATH=\(root)/run/xenstored/socket", "/usr/bin/xenstore-read",
                                                "/local/domain/0/backend/vbd/\(domid)/51712/state"], timeout: 10)
                return vbd?.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "4"
            }
            #expect(connected, "vbd state: '\(vbd?.stdout ?? "")' \(vbd?.stderr ?? "") status \(vbd?.status ?? -1)\n\(logs())")
        }
        var con = try ConsoleSession(xm: Env.binary("xm"), domain: "deb")
        con.type("root\n")
        #expect(con.waitFor("root@", timeout: 60), "console: \(con.output.get().suffix(600))")
        con.type("cat /proc/cmdline; ls /dev/vda; echo MARK-$((6*7))\n")
        #expect(con.waitFor("MARK-42", timeout: 30), "console: \(con.output.get().suffix(600))")
        #expect(con.output.get().contains("root=/dev/vda") && con.output.get().contains("\n/dev/vda"), "\(con.output.get().suffix(600))")

        // SIGKILL blkback twice while the guest writes and verifies: xend restarts it, QEMU
        // (as the unprivileged user) reconnects, the guest sees no I/O error.
        con.type("for i in $(seq 24); do dd if=/dev/urandom of=/root/g bs=64k count=16 2>/dev/null; a=$(sha256sum < /root/g); sync; echo 3 > /proc/sys/vm/drop_caches; b=$(sha256sum < /root/g); [ \"$a\" = \"$b\" ] || echo SUM-MISMATCH-$i; echo ITER-$i.; done; echo ERRORS-$(dmesg | grep -ciE 'I/O error|blk_update_request|EXT4-fs error|Buffer I/O'). \n")
        for iter in [4, 12] {
            #expect(con.waitFor("ITER-\(iter).", timeout: 120), "console: \(con.output.get().suffix(400))")
            let before = blkbacks(img)
            for p in before { kill(p, SIGKILL) }
            #expect(waitUntil(15) { let now = blkbacks(img); return !now.isEmpty && Set(now).isDisjoint(with: before) },
                    "blkback not restarted: \(read("/var/log/xen/xend.log").suffix(600))")
        }
        #expect(con.waitFor("ITER-24.", timeout: 180), "console: \(con.output.get().suffix(600))")
        #expect(con.waitFor("ERRORS-0.", timeout: 20), "the guest's kernel log has I/O errors: \(con.output.get().suffix(800))")
        #expect(con.output.get().range(of: "SUM-MISMATCH-[0-9]", options: .regularExpression) == nil, "data verified")
        #expect(read("/var/log/xen/xend.log").components(separatedBy: "blkback killed by SIGKILL").count - 1 >= 2)

        // SIGKILL xenconsoled: attached consoles end; what the guest prints meanwhile waits
        // in the socket and reaches the log after the restart; xm console attaches again.
        con.type("sleep 2; echo AFTER-$((40+2))\n")
        usleep(300_000)
        let old = pidFile(root + "/run/xenconsoled/xenconsoled.pid") ?? 0
        #expect(old > 0)
        kill(old, SIGKILL)
        _ = con.detach()
        #expect(waitUntil(15) { let p = pidFile(root + "/run/xenconsoled/xenconsoled.pid") ?? 0; return p > 0 && p != old && kill(p, 0) == 0 })
        #expect(waitUntil(20) { read("/var/log/xen/console/guest-deb.log").contains("AFTER-42") },
                "log after xenconsoled restart: \(read("/var/log/xen/console/guest-deb.log").suffix(400))")
        #expect(waitUntil(10) { (try? xm("list"))?.stdout.contains("deb") == true })
        con = try ConsoleSession(xm: Env.binary("xm"), domain: "deb")
        var seen = false
        for _ in 0..<10 where !seen {
            con.type("echo AGAIN-$((50+5))\n")
            seen = con.waitFor("AGAIN-55", timeout: 3)
        }
        #expect(seen, "console after restart: \(con.output.get().suffix(400))")

        // xend restarts (QEMU, blkback and xenconsoled run on) and takes its end of the serial
        // socketpair back from xenconsoled; xenconsoled killed again still comes back with it.
        _ = con.detach()
        #expect(try xend("restart").status == 0)
        // xend's own account (xm dmesg, as Xen's): the domain re-adopted, under its domid.
        var dmesg = ""
        #expect(waitUntil(20) { dmesg = (try? xm("dmesg"))?.stdout ?? ""; return dmesg.contains("Domain deb (\(domid)) re-adopted") },
                "xm dmesg: \(dmesg.suffix(800))\n\(logs())")
        #expect(try xm("domid", "deb").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == domid)
        let second = pidFile(root + "/run/xenconsoled/xenconsoled.pid") ?? 0
        kill(second, SIGKILL)
        #expect(waitUntil(15) { let p = pidFile(root + "/run/xenconsoled/xenconsoled.pid") ?? 0; return p > 0 && p != second && kill(p, 0) == 0 })
        usleep(500_000)
        con = try ConsoleSession(xm: Env.binary("xm"), domain: "deb")
        seen = false
        for _ in 0..<10 where !seen {
            con.type("echo ADOPTED-$((60+6))\n")
            seen = con.waitFor("ADOPTED-66", timeout: 3)
        }
        #expect(seen, "console after xend and xenconsoled restarts: \(con.output.get().suffix(400)) \(read("/var/log/xen/xend.log").suffix(800))")

        // poweroff inside the guest ends the domain; nothing is left behind.
        con.type("poweroff\n")
        #expect(try waitUntil(90) { try !xm("list").stdout.contains("deb ") }, "\((try? xm("list"))?.stdout ?? "")")
        #expect(con.detach() == 0)
        #expect(waitUntil(10) { blkbacks(img).isEmpty })
        let left = (try? FileManager.default.contentsOfDirectory(atPath: root + "/run/xenith"))?.filter { $0.hasPrefix("blkback-") } ?? []
        #expect(left.isEmpty, "left behind: \(left)")
        #expect(read("/var/log/xen/console/guest-deb.log").contains("Power-Off") || read("/var/log/xen/console/guest-deb.log").contains("reboot: Power down"))
    }
}
