import Foundation
import Testing

/// blkback's `direct` cache mode through xend: `(blkback-cache direct)` in xend-config.sxp;
/// xend opens the image with O_DIRECT and blkback serves it so (the core domain's disk
/// rounds pass); a disk on a file system that refuses O_DIRECT (ramfs; tmpfs did before
/// Linux 6.6) fails `xm create` naming the disk and the reason, leaving no domain, blkback
/// or socket; the same disk with `cache=writeback` starts. And `(blkback-aio io_uring)`:
/// the sandboxed blkback serves the core domain's disk through its io_uring under
/// blkback-io_uring.manifest, survives SIGKILL and restart, and leaves nothing.
@Suite(.serialized) struct DirectDiskTests {
    let root = Scratch.make("xenith-disk-dio")
    /// A ramfs mount in the test's root: it refuses O_DIRECT.
    var ramfs: String { root + "/ramfs" }
    var shmImage: String { ramfs + "/disk.img" }

    func xm(_ args: String...) throws -> RunResult { setenv("XENITH_ROOT", root, 1); return try run(Env.binary("xm"), args, timeout: 60) }
    func xend(_ arg: String) throws -> RunResult { setenv("XENITH_ROOT", root, 1); return try run(Env.binary("xend"), [arg], timeout: 60) }
    func read(_ rel: String) -> String { readText(root + rel) }
    func pidFile(_ rel: String) -> Int32? {
        (try? String(contentsOfFile: root + rel, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
    /// blkback processes of this test's root.
    func blkbacks() -> [Int32] { processes(matching: "blkback --listen-fd 3 --image-fd 4", root: root) }
    func waitUntil(_ seconds: Double, _ cond: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end { if cond() { return true }; usleep(50_000) }
        return cond()
    }
    func lastRound(_ text: String) -> Int { lastBlkRound(text) }

    @Test func directDisksAndRefusal() throws {
        if skip(Env.kvmUnavailable) { return }
        if getuid() != 0 { print("SKIP: directDisksAndRefusal: needs root (blkback's sandbox)"); return }
        try FileManager.default.createDirectory(atPath: ramfs, withIntermediateDirectories: true)
        guard (try? run("/usr/bin/mount", ["-t", "ramfs", "xenith-disk-dio", ramfs]))?.status == 0 else {
            print("SKIP: directDisksAndRefusal: cannot mount a ramfs"); return
        }
        let kernel = Env.fixture("pvh.elf")
        defer {
            _ = try? xend("stop")
            for f in ["/run/xenconsoled/xenconsoled.pid", "/run/xenstored/xenstored.pid"] { if let p = pidFile(f) { kill(p, SIGTERM) } }
            _ = try? run("/usr/bin/umount", [ramfs])
            try? FileManager.default.removeItem(atPath: root)
        }
        try FileManager.default.createDirectory(atPath: root + "/etc/xen", withIntermediateDirectories: true)
        try "(blkback-cache direct)\n".write(toFile: root + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8)
        let img = root + "/disk.img"             // on the disk file system (ext4 here)
        #expect(FileManager.default.createFile(atPath: img, contents: Data(count: 1 << 20)))
        #expect(FileManager.default.createFile(atPath: shmImage, contents: Data(count: 1 << 20)))
        let cfg = root + "/d.cfg"
        try "kernel = '\(kernel)'\nmemory = 32\nname = 'd1'\nextra = 'B'\nengine = 'core'\ndisk = ['file:\(img),xvda,w']\n"
            .write(toFile: cfg, atomically: true, encoding: .utf8)
        #expect(try xend("start").status == 0)

        // ramfs: refused at create, naming the disk and the reason; nothing left.
        let bad = try xm("create", cfg, "name=t1", "disk=file:\(shmImage),xvda,w")
        #expect(bad.status != 0, "\(bad.stdout)")
        #expect(bad.stderr.contains("xvda") && bad.stderr.contains(shmImage) && bad.stderr.contains("refuses direct I/O"), "\(bad.stderr)")
        #expect(!(try xm("list").stdout.contains("t1")))
        #expect(blkbacks().isEmpty)
        let sockets = (try? FileManager.default.contentsOfDirectory(atPath: root + "/run/xenith")) ?? []
        #expect(!sockets.contains { $0.hasPrefix("blkback-") }, "\(sockets)")

        // The same ramfs disk asking for the page cache starts.
        let wb = try xm("create", cfg, "name=t2", "disk=file:\(shmImage),xvda,w,cache=writeback")
        #expect(wb.status == 0, "\(wb.stderr)")
        #expect(waitUntil(10) { lastRound(read("/var/log/xen/console/guest-t2.log")) >= 3 })
        #expect(try xm("destroy", "t2").status == 0)

        // ext4: served with O_DIRECT (the flags of blkback's image fd), the disk rounds pass.
        let ok = try xm("create", cfg)
        #expect(ok.status == 0, "\(ok.stderr) \(read("/var/log/xen/xend.log").suffix(600))")
        let log = "/var/log/xen/console/guest-d1.log"
        #expect(waitUntil(10) { lastRound(read(log)) >= 3 }, "\(read(log).suffix(300))")
        #expect(!read(log).contains("blk round bad"))
        // blkback's sandbox keeps a reaper beside the server: the one holding the image at fd 4.
        func inode(_ path: String) -> UInt64? {   // stat(2) follows /proc/PID/fd/N to the file
            var st = stat()
            return stat(path, &st) == 0 ? UInt64(st.st_ino) : nil
        }
        let procs = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
        let servers = procs.filter {
            (try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8)) == "blkback\n" && inode("/proc/\($0)/fd/4") == inode(img)
        }
        #expect(!servers.isEmpty, "no blkback holds \(img)")
        for p in servers {
            let info = readText("/proc/\(p)/fdinfo/4")
            let flags = info.split(separator: "\n").first { $0.hasPrefix("flags:") }.flatMap { Int($0.split(separator: "\t").last ?? "", radix: 8) } ?? 0
            #expect(flags & 0o40000 != 0, "blkback's image fd is not O_DIRECT: \(info)")
        }
        #expect(try xm("destroy", "d1").status == 0)
    }

    @Test func ioUringDisks() throws {
        if skip(Env.kvmUnavailable) { return }
        if getuid() != 0 { print("SKIP: ioUringDisks: needs root (blkback's sandbox)"); return }
        if readText("/proc/sys/kernel/io_uring_disabled").trimmingCharacters(in: .whitespacesAndNewlines) != "0" {
            print("SKIP: ioUringDisks: io_uring is disabled on this host (kernel.io_uring_disabled)"); return
        }
        let root = Scratch.make("xenith-disk-uring")
        func xm(_ args: String...) throws -> RunResult { setenv("XENITH_ROOT", root, 1); return try run(Env.binary("xm"), args, timeout: 60) }
        func xend(_ arg: String) throws -> RunResult { setenv("XENITH_ROOT", root, 1); return try run(Env.binary("xend"), [arg], timeout: 60) }
        func read(_ rel: String) -> String { readText(root + rel) }
        defer {
            _ = try? xend("stop")
            for f in ["/run/xenconsoled/xenconsoled.pid", "/run/xenstored/xenstored.pid"] {
                if let p = (try? String(contentsOfFile: root + f, encoding: .utf8)).flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) { kill(p, SIGTERM) }
            }
            try? FileManager.default.removeItem(atPath: root)
        }
        try FileManager.default.createDirectory(atPath: root + "/etc/xen", withIntermediateDirectories: true)
        try "(blkback-aio io_uring)\n".write(toFile: root + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8)
        let img = root + "/disk.img"
        #expect(FileManager.default.createFile(atPath: img, contents: Data(count: 1 << 20)))
        let cfg = root + "/d.cfg"
        try "kernel = '\(Env.fixture("pvh.elf"))'\nmemory = 32\nname = 'u1'\nextra = 'B'\nengine = 'core'\ndisk = ['file:\(img),xvda,w']\n"
            .write(toFile: cfg, atomically: true, encoding: .utf8)
        #expect(try xend("start").status == 0)
        let ok = try xm("create", cfg)
        #expect(ok.status == 0, "\(ok.stderr) \(read("/var/log/xen/xend.log").suffix(600))")
        let log = "/var/log/xen/console/guest-u1.log"
        #expect(waitUntil(10) { lastRound(read(log)) >= 3 }, "\(read(log).suffix(300))")

        // The server (not its sandbox's reaper) holds the image at fd 4 and a ring that has
        // completed requests; its manifest is the io_uring one, with 40 calls.
        func server() -> Int32? {
            processes(matching: "blkback --listen-fd 3 --image-fd 4", root: root).first { p in
                ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(p)/fd")) ?? []).contains {
                    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(p)/fd/\($0)")) == "anon_inode:[io_uring]"
                } && (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(p)/fd/4")) == img
            }
        }
        func completions(_ p: Int32) -> Int {
            for fd in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(p)/fd")) ?? []
            where (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(p)/fd/\(fd)")) == "anon_inode:[io_uring]" {
                for line in readText("/proc/\(p)/fdinfo/\(fd)").split(separator: "\n") where line.hasPrefix("CqTail:") {
                    return Int(line.dropFirst(7).trimmingCharacters(in: .whitespaces)) ?? 0
                }
            }
            return 0
        }
        let first = try #require(server(), "no blkback of \(root) holds an io_uring and \(img)")
        #expect(waitUntil(10) { completions(first) > 0 }, "the ring completed nothing")
        let cmdline = readText("/proc/\(first)/cmdline").replacingOccurrences(of: "\0", with: " ")
        #expect(cmdline.contains("--aio io_uring") && cmdline.contains("blkback-io_uring.manifest"), "\(cmdline)")
        let blog = "/var/log/xen/blkback-1-xvda.log"
        #expect(read(blog).contains("blkback-io_uring.manifest: 40 syscalls allowed"), "\(read(blog).suffix(600))")

        // SIGKILL: xend starts it again on the same socket and image, the rounds go on.
        let before = lastRound(read(log))
        kill(first, SIGKILL)
        #expect(waitUntil(15) { server().map { $0 != first } ?? false }, "blkback was not restarted: \(read(blog).suffix(600))")
        #expect(waitUntil(15) { lastRound(read(log)) >= before + 3 }, "\(read(log).suffix(300))")
        #expect(!read(log).contains("blk round bad"))
        #expect(!read(blog).contains("SIGSYS"), "\(read(blog).suffix(600))")

        // A setting that does not parse: `xend restart` says so and leaves the running xend
        // (and its domain) alone rather than stopping it and failing to start.
        let cfgPath = root + "/etc/xen/xend-config.sxp"
        try "(blkback-aio posix)\n".write(toFile: cfgPath, atomically: true, encoding: .utf8)
        let bad = try xend("restart")
        #expect(bad.status != 0 && bad.stderr.contains("blkback-aio") && bad.stderr.contains("not restarted"), "\(bad.stderr)")
        try "(blkback-aio io_uring)\n".write(toFile: cfgPath, atomically: true, encoding: .utf8)
        #expect(try xend("status").status == 0, "xend was stopped by a refused restart")
        #expect(try xm("list").stdout.contains("u1"))

        #expect(try xm("destroy", "u1").status == 0)
        #expect(waitUntil(10) { processes(matching: "blkback --listen-fd 3 --image-fd 4", root: root).isEmpty })
    }
}
