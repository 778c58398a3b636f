import Testing
import Glibc
import Spawn
import UnixSocket
@testable import Sandbox

/// Starts `program args` with a readiness channel's write end at fd 5 (`--ready-fd 5`
/// appended), stderr into `stderrPath`; returns the channel and the pid.
private func startWithReadiness(_ program: String, _ args: [String], stderrPath: String,
                                environment: [String: String] = [:]) throws -> (ReadinessChannel, pid_t) {
    let channel = try ReadinessChannel.make()
    var env = ["SWIFT_BACKTRACE": "enable=no"]
    env.merge(environment) { $1 }
    let pid = try spawnProcess([program] + args + ["--ready-fd", "5"],
                               SpawnOptions(stderr: .file(stderrPath, append: false), descriptors: [channel.handOver(at: 5)],
                                            environment: env, newSession: false))
    return (channel, pid)
}

@discardableResult
private func reap(_ pid: pid_t, signal sig: Int32 = 0) -> Int32 {
    if sig != 0 { kill(pid, sig) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return status
}

private func readFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// The probe's manifest with (or without) the readiness line, in `dir`.
private func probeManifest(_ dir: String, readiness: Bool = true) -> String {
    let path = "\(dir)/probe.manifest"
    writeFile(path, "service probe\n\(commonInclude)namespaces mount pid ipc net uts\n" + (readiness ? "fd 5 readiness optional\n" : ""))
    return path
}

/// Readiness over a descriptor with real sandboxed processes (sandbox-probe, blkback):
/// the message arrives only after the sandbox, start-up failures carry their reason, and a
/// death or silence is told apart from both.
@Suite(.serialized) struct ServiceReadinessTests {
    @Test func sandboxedProbeSaysReadyAfterItsSandbox() throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        let (c, pid) = try startWithReadiness(probe, ["ready", probeManifest(dir)], stderrPath: "\(dir)/err")
        let r = c.wait(pid: pid, timeout: .seconds(20))
        #expect(r == .ready(detail: "probe"), "\(r) \(readFile("\(dir)/err"))")
        #expect((reap(pid) >> 8) & 0xff == 0)
        // The sandbox line comes before the message could have been sent.
        #expect(readFile("\(dir)/err").contains("sandbox: probe applied manifest"))
    }

    @Test func missingManifestIsReportedAsFailedWithItsReason() throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        let (c, pid) = try startWithReadiness(probe, ["ready", "\(dir)/nonexistent.manifest"], stderrPath: "\(dir)/err")
        let r = c.wait(pid: pid, timeout: .seconds(20))
        guard case .failed(let reason) = r else { Issue.record("expected failed, got \(r)"); reap(pid, signal: SIGKILL); return }
        #expect(reason.hasPrefix("sandbox: \(dir)/nonexistent.manifest: cannot load manifest"), "\(reason)")
        #expect((reap(pid) >> 8) & 0xff == 70)
    }

    @Test func undeclaredReadinessDescriptorFailsTheApply() throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        let (c, pid) = try startWithReadiness(probe, ["ready", probeManifest(dir, readiness: false)], stderrPath: "\(dir)/err")
        let r = c.wait(pid: pid, timeout: .seconds(20))
        #expect(r == .failed("sandbox: probe: applying \(dir)/probe.manifest failed: readiness descriptor 5 is not declared in the manifest (fd 5 readiness optional)"), "\(r)")
        reap(pid)
    }

    @Test func killedBeforeReadyIsSeenAsExited() throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        let (c, pid) = try startWithReadiness(probe, ["hang", probeManifest(dir)], stderrPath: "\(dir)/err")
        // Let it get into its sandbox (and PID namespace) first, then kill the reaper: the
        // service dies with it (PDEATHSIG), the pipe ends, the status is SIGKILL.
        usleep(500_000)
        kill(pid, SIGKILL)
        let r = c.wait(pid: pid, timeout: .seconds(20))
        #expect(r == .exited(status: SIGKILL), "\(r)")
        #expect(reap(pid) & 0x7f == SIGKILL)
    }

    @Test func silentServiceIsTimedOut() throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        let (c, pid) = try startWithReadiness(probe, ["hang", probeManifest(dir)], stderrPath: "\(dir)/err")
        #expect(c.wait(pid: pid, timeout: .milliseconds(700)) == .timedOut)
        reap(pid, signal: SIGKILL)
    }

    @Test func blkbackOnATempImageSaysReadyAndABadImageSaysWhy() throws {
        guard getuid() == 0 else { print("SKIP: \(#function): needs root (blkback's sandbox)"); return }
        guard let probe = probePath() else { print("SKIP: \(#function): sandbox-probe not built"); return }
        let blkback = String(probe[..<probe.lastIndex(of: "/")!]) + "/blkback"
        guard access(blkback, X_OK) == 0 else { print("SKIP: \(#function): blkback not built next to the tests (swift build --product blkback)"); return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        let image = "\(dir)/disk.img"
        writeFile(image, String(repeating: "\0", count: 65536))
        let env = ["XENITH_MANIFESTS": manifestsDir]

        let (c, pid) = try startWithReadiness(blkback, ["--socket", "\(dir)/blk.sock", "--image", image], stderrPath: "\(dir)/err", environment: env)
        let r = c.wait(pid: pid, timeout: .seconds(20))
        #expect(r == .ready(detail: "serving \(image) (raw, 65536 bytes, page cache, I/O threads, 1 queue) on \(dir)/blk.sock"), "\(r) \(readFile("\(dir)/err"))")
        // Ready means serving: the socket accepts.
        #expect(UnixSocket.isLive(path: "\(dir)/blk.sock"))
        reap(pid, signal: SIGTERM)
        unlink("\(dir)/blk.sock")

        let (c2, pid2) = try startWithReadiness(blkback, ["--socket", "\(dir)/blk2.sock", "--image", "\(dir)/missing.img"], stderrPath: "\(dir)/err2", environment: env)
        let r2 = c2.wait(pid: pid2, timeout: .seconds(20))
        #expect(r2 == .failed("image \(dir)/missing.img: No such file or directory"), "\(r2)")
        #expect((reap(pid2) >> 8) & 0xff == 1)
    }
}
