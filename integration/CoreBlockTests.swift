import Foundation
import Testing

/// The core with blkback over vhost-user: the PVH fixture's virtio-blk driver writes,
/// reads back and compares sector 1 through the core's virtio-pci transport, while the
/// test plays supervisor and SIGKILLs blkback mid-I/O.
@Suite(.serialized) struct CoreBlockTests {
    let core = Env.binary("xenith-core")
    let blkback = Env.binary("blkback")

    func tempDir() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("xenith-blk-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        return d
    }

    /// `--no-sandbox`: Foundation's Process cannot wait for a sandboxed service (the sandbox
    /// forks a PID-namespace child and closes the descriptor Process watches). The sandboxed
    /// path is covered by BackendSupervisionTests, where xend spawns blkback itself.
    func startBlkback(_ sock: String, _ image: String) throws -> Running {
        let b = try Running(blkback, ["--socket", sock, "--image", image, "--no-sandbox"])
        let deadline = Date().addingTimeInterval(10)
        while access(sock, F_OK) != 0 && Date() < deadline { usleep(10_000) }
        return b
    }

    @Test func oneRoundThenPoweroff() throws {
        if skip(Env.kvmUnavailable) { return }
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = dir.appendingPathComponent("disk.img").path
        FileManager.default.createFile(atPath: image, contents: Data(count: 1 << 20))
        let sock = dir.appendingPathComponent("blk.sock").path
        let b = try startBlkback(sock, image)
        defer { kill(b.process.processIdentifier, SIGTERM); _ = b.wait(timeout: 5) }
        let r = try run(core, ["--kernel", Env.fixture("pvh.elf"), "--extra", "b", "--memory", "32", "--no-input",
                               "--vhost-user-blk", sock], timeout: 60)
        #expect(r.stdout.contains("xenith-fixture: virtio id 10421AF4"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("xenith-fixture: blk round ok 00000000"))
        #expect(r.status == 0)
        // Round 0 writes zeros; the image keeps its size (no stray growth).
        let attrs = try FileManager.default.attributesOfItem(atPath: image)
        #expect(attrs[.size] as? Int == 1 << 20)
    }

    @Test func blkbackKilledMidIOThreeTimes() throws {
        if skip(Env.kvmUnavailable) { return }
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = dir.appendingPathComponent("disk.img").path
        FileManager.default.createFile(atPath: image, contents: Data(count: 1 << 20))
        let sock = dir.appendingPathComponent("blk.sock").path
        let ctl = dir.appendingPathComponent("core.sock").path
        var b = try startBlkback(sock, image)
        let c = try Running(core, ["--kernel", Env.fixture("pvh.elf"), "--extra", "B", "--memory", "32", "--no-input",
                                   "--vhost-user-blk", sock, "--control", ctl])
        #expect(c.waitFor("blk round ok 00000010", timeout: 30))
        var recoveries: [Double] = []
        for _ in 0..<3 {
            let before = c.output.get().components(separatedBy: "round ok").count
            kill(b.process.processIdentifier, SIGKILL)
            _ = b.wait(timeout: 5)
            let t0 = Date()
            b = try startBlkback(sock, image)
            // Progress resumes: more rounds complete after the restart.
            var resumed = false
            while Date().timeIntervalSince(t0) < 20 {
                if c.output.get().components(separatedBy: "round ok").count > before + 5 { resumed = true; break }
                usleep(5_000)
            }
            #expect(resumed, "guest I/O resumed after blkback restart")
            recoveries.append(Date().timeIntervalSince(t0))
        }
        print("blkback restart → 5 more rounds: \(recoveries.map { String(format: "%.0f ms", $0 * 1000) })")
        #expect(!c.output.get().contains("round bad"), "every round verified")
        #expect(try control(ctl, "query").hasPrefix("ok state=running"), "the guest never stopped")
        #expect(c.errors.get().components(separatedBy: "reconnected").count - 1 == 3)
        _ = try control(ctl, "destroy")
        #expect(c.wait() == 4)
        // The last completed round's pattern is on disk: sector 1 holds that round number.
        let data = try Data(contentsOf: URL(fileURLWithPath: image))
        let word = data.subdata(in: 512..<516).withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        #expect(word > 10, "sector 1 holds a late round's pattern (\(word))")
        kill(b.process.processIdentifier, SIGTERM)
        _ = b.wait(timeout: 5)
        #expect(access(sock, F_OK) != 0, "blkback removed its socket")
    }

    @Test func missingBackendIsAClearError() throws {
        if skip(Env.kvmUnavailable) { return }
        let r = try run(core, ["--kernel", Env.fixture("pvh.elf"), "--no-input", "--vhost-user-blk", "/nonexistent/blk.sock"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("/nonexistent/blk.sock"))
        #expect(r.stderr.split(separator: "\n").count == 1)
    }
}
