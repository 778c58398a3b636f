import Testing
import Foundation
import VhostUser

/// blkback --aio io_uring (issue 17 item 2) with the synthetic front-end: the device checks
/// of `verify`, `unaligned` checked against the image file (page cache, and direct I/O where
/// the bounce-buffer requests are served beside the ring), malformed chains, SIGKILL and
/// restart mid-I/O, and the refusals. Each run also reads the ring's counters from
/// /proc/PID/fdinfo, so a blkback that quietly served everything without the ring fails.
@Suite(.serialized) struct BlkbackUringTests {
    /// Why io_uring cannot be tested here, or nil.
    static let unavailable: String? = {
        if let v = try? String(contentsOfFile: "/proc/sys/kernel/io_uring_disabled", encoding: .utf8),
           v.trimmingCharacters(in: .whitespacesAndNewlines) != "0" {
            return "io_uring is disabled (kernel.io_uring_disabled = \(v.trimmingCharacters(in: .whitespacesAndNewlines)))"
        }
        return nil
    }()

    /// The completion-queue tail of blkback `pid`'s io_uring (completions the ring posted),
    /// nil when it holds no io_uring.
    static func ringCompletions(_ pid: Int32) -> Int? {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        for fd in fds {
            guard (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) == "anon_inode:[io_uring]",
                  let info = try? String(contentsOfFile: "/proc/\(pid)/fdinfo/\(fd)", encoding: .utf8) else { continue }
            for line in info.split(separator: "\n") where line.hasPrefix("CqTail:") {
                return Int(line.dropFirst("CqTail:".count).trimmingCharacters(in: .whitespaces))
            }
        }
        return nil
    }

    @Test func verifyThroughTheRing() throws {
        if let why = Self.unavailable { print("SKIP: verifyThroughTheRing: \(why)"); return }
        let s = try Scratch()
        let b = try startBlkback(["--socket", s.socket, "--image", "file:" + s.image, "--aio", "io_uring"], socket: s.socket)
        defer { stop(b) }
        #expect(b.isRunning, "blkback --aio io_uring did not start")
        let r = try run(frontendTool, ["verify", "--socket", s.socket])
        #expect(r.status == 0 && r.out.contains("verify: passed"), "\(r.out)\(r.err)")
        #expect(r.out.contains("ok read back 1 MiB"), "\(r.out)")
        let done = Self.ringCompletions(b.processIdentifier)
        #expect((done ?? 0) > 10, "the ring posted \(done.map(String.init) ?? "no") completions: requests did not go through io_uring")
        // The next front-end is served through the same ring.
        let again = try run(frontendTool, ["verify", "--socket", s.socket])
        #expect(again.status == 0, "\(again.out)\(again.err)")
        #expect((Self.ringCompletions(b.processIdentifier) ?? 0) > (done ?? 0))
    }

    /// Odd buffer addresses and lengths, sectors off 4 KiB: the bytes land in the file.
    @Test(arguments: ["writeback", "direct"]) func unalignedRequestsReachTheFile(cache: String) throws {
        if let why = Self.unavailable { print("SKIP: unalignedRequestsReachTheFile: \(why)"); return }
        // Direct I/O needs a disk file system (/var/tmp), not tmpfs.
        let dir = "/var/tmp/blkback-uring-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var g = SystemRandomNumberGenerator()
        let bytes = (0..<(4 << 20) / 8).flatMap { _ in withUnsafeBytes(of: g.next()) { Array($0) } }
        FileManager.default.createFile(atPath: dir + "/d.img", contents: Data(bytes))
        var args = ["--socket", dir + "/s", "--image", "file:\(dir)/d.img", "--aio", "io_uring", "--cache", cache]
        if cache == "direct" { args += ["--test-dio-align", "4096"] }
        let b = try startBlkback(args, socket: dir + "/s")
        defer { stop(b) }
        #expect(b.isRunning, "blkback --aio io_uring --cache \(cache) did not start")
        let u = try run(frontendTool, ["unaligned", "--socket", dir + "/s", "--image", dir + "/d.img"])
        #expect(u.status == 0 && u.out.contains("file checked: passed"), "\(u.out)\(u.err)")
        let v = try run(frontendTool, ["verify", "--socket", dir + "/s"])
        #expect(v.status == 0, "\(v.out)\(v.err)")
        #expect((Self.ringCompletions(b.processIdentifier) ?? 0) > 0, "nothing went through the ring")
    }

    @Test func malformedChainsNeverKillTheBackend() throws {
        if let why = Self.unavailable { print("SKIP: malformedChainsNeverKillTheBackend: \(why)"); return }
        let s = try Scratch()
        let b = try startBlkback(["--socket", s.socket, "--image", s.image, "--aio", "io_uring"], socket: s.socket)
        defer { stop(b) }
        let r = try run(frontendTool, ["malformed", "--socket", s.socket])
        #expect(r.status == 0, "\(r.out)\(r.err)")
        #expect(r.out.contains(", 0 failed"), "\(r.out)")
        #expect(b.isRunning)
    }

    /// Requests out on the ring when blkback is SIGKILLed are replayed by the next one from
    /// the in-flight region, completed out of order.
    @Test func sigkillAndRestartMidIOReplaysEveryRequest() throws {
        if let why = Self.unavailable { print("SKIP: sigkillAndRestartMidIOReplaysEveryRequest: \(why)"); return }
        let s = try Scratch()
        let cmd = "\(blkback) --no-sandbox --socket \(s.socket) --image \(s.image) --quiet --num-queues 2 --test-reorder --aio io_uring"
        let r = try run(frontendTool, ["restart", "--socket", s.socket, "--backend-cmd", cmd, "--kills", "3", "--queues", "2", "--blocks", "2048"])
        #expect(r.status == 0, "\(r.out)\(r.err)")
        #expect(r.out.contains("verified 2048 blocks after 3 SIGKILL+restart: 0 bad"), "\(r.out)")
    }

    /// An exclusive blkback's ring holds its image with an OFD lock until the kernel frees it
    /// (after the process is gone and its direct-I/O writes are done). Standing in for such a
    /// dead ring, the test holds that lock itself: an exclusive blkback, with either --aio,
    /// waits for it (here 1 s), then refuses saying why and leaves no socket; a w! one does
    /// not wait; once the lock goes, the exclusive one starts.
    @Test func exclusiveBlkbacksWaitForAnEarlierRing() throws {
        if let why = Self.unavailable { print("SKIP: exclusiveBlkbacksWaitForAnEarlierRing: \(why)"); return }
        let s = try Scratch()
        let held = open(s.image, O_RDWR | O_CLOEXEC)
        #expect(held >= 0)
        var lk = flock()
        lk.l_type = Int16(F_WRLCK); lk.l_whence = Int16(SEEK_SET); lk.l_start = off_t(Int64.max - 1); lk.l_len = 1
        #expect(fcntl(held, 37 /* F_OFD_SETLK */, &lk) == 0)
        for aio in ["threads", "io_uring"] {
            let r = try run(blkback, noSandbox + ["--socket", s.socket, "--image", s.image, "--aio", aio, "--test-ring-lock-wait", "1"], timeout: 20)
            #expect(r.status != 0 && r.err.contains("another blkback's io_uring still holds this image"), "\(aio): \(r.err)")
            #expect(!FileManager.default.fileExists(atPath: s.socket), "\(aio): a refused start left its socket")
        }
        let shared = try startBlkback(["--socket", s.dir + "/w.sock", "--image", s.image, "--shared-write", "--aio", "io_uring",
                                       "--test-ring-lock-wait", "1"], socket: s.dir + "/w.sock")
        #expect(shared.isRunning && unixSocketIsLive(path: s.dir + "/w.sock"), "w! must not wait for the ring lock")
        stop(shared)
        close(held)
        let b = try startBlkback(["--socket", s.socket, "--image", s.image, "--aio", "io_uring", "--test-ring-lock-wait", "1"], socket: s.socket)
        defer { stop(b) }
        #expect(b.isRunning && unixSocketIsLive(path: s.socket), "the exclusive blkback did not start once the lock was gone")
        let v = try run(frontendTool, ["verify", "--socket", s.socket])
        #expect(v.status == 0, "\(v.out)\(v.err)")
    }

    @Test func refusals() throws {
        let s = try Scratch()
        let bad = try run(blkback, noSandbox + ["--socket", s.socket, "--image", s.image, "--aio", "posix"])
        #expect(bad.status != 0 && bad.err.contains("--aio posix: expected threads or io_uring"), "\(bad.err)")
        let q = try run(blkback, noSandbox + ["--socket", s.socket, "--image", s.image, "--format", "qcow2", "--aio", "io_uring"])
        #expect(q.status != 0 && q.err.contains("io_uring"), "\(q.err)")
        let f = try run(blkback, noSandbox + ["--socket", s.socket, "--image", s.image, "--fail-io", "--aio", "io_uring"])
        #expect(f.status != 0 && f.err.contains("--fail-io"), "\(f.err)")
        #expect(!FileManager.default.fileExists(atPath: s.socket), "nothing half-made: no socket")
    }
}
