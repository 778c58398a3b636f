import Testing
import Glibc
@testable import Spawn

@Suite struct ReadinessMessageTests {
    @Test func encodesAndDecodesBothKinds() {
        #expect(ReadinessMessage.ready(detail: "").encoded() == Array("ready\n".utf8))
        #expect(ReadinessMessage.ready(detail: "pid 42").encoded() == Array("ready pid 42\n".utf8))
        #expect(ReadinessMessage.failed(reason: "image /x: No such file").encoded() == Array("failed: image /x: No such file\n".utf8))
        for m in [ReadinessMessage.ready(detail: ""), .ready(detail: "serving é"), .failed(reason: "bad")] {
            let e = m.encoded()
            #expect(ReadinessMessage.decode(e.dropLast()) == m)
        }
    }

    @Test func controlCharactersBecomeBlanksAndLongTextIsCut() {
        #expect(ReadinessMessage.failed(reason: "two\nlines\t").encoded() == Array("failed: two lines \n".utf8))
        let long = ReadinessMessage.failed(reason: String(repeating: "é", count: 400)).encoded()
        #expect(long.count <= ReadinessMessage.maxBytes)
        #expect(long.last == 10)
        // Cut at a character boundary: still UTF-8, still decodes.
        guard case .failed(let r)? = ReadinessMessage.decode(long.dropLast()) else { Issue.record("no decode"); return }
        #expect(r.allSatisfy { $0 == "é" })
    }

    @Test func refusesWhatIsNotAMessage() {
        for bad in ["", "readyish", "READY", "failed", "failed:x", "ready\u{7f}", "ok"] {
            #expect(ReadinessMessage.decode(Array(bad.utf8)) == nil, "\(bad)")
        }
        #expect(ReadinessMessage.decode([0x72, 0x65, 0x61, 0x64, 0x79, 0x20, 0xff]) == nil)   // not UTF-8
        #expect(ReadinessMessage.decode(Array(("ready " + String(repeating: "a", count: 600)).utf8)) == nil)
    }
}

/// Runs `/bin/sh -c script` with a readiness channel's write end at fd 5.
private func start(_ script: String) throws -> (ReadinessChannel, pid_t) {
    let channel = try ReadinessChannel.make()
    let pid = try spawnProcess(["/bin/sh", "-c", script], SpawnOptions(descriptors: [channel.handOver(at: 5)], newSession: false))
    return (channel, pid)
}

/// Reaps `pid` (killing it first when `kill` is set); returns the wait status.
@discardableResult
private func reap(_ pid: pid_t, kill k: Bool = false) -> Int32 {
    if k { kill(pid, SIGKILL) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return status
}

@Suite struct ReadinessChannelTests {
    @Test func readyWithDetail() throws {
        let (c, pid) = try start("printf 'ready serving x\\n' >&5; exec 5>&-; sleep 5")
        #expect(c.wait(pid: pid, timeout: .seconds(10)) == .ready(detail: "serving x"))
        #expect(c.writeEnd == -1)
        reap(pid, kill: true)
    }

    @Test func messageInPieces() throws {
        let (c, pid) = try start("printf 'rea' >&5; sleep 0.2; printf 'dy\\n' >&5; sleep 5")
        #expect(c.wait(pid: pid, timeout: .seconds(10)) == .ready(detail: ""))
        reap(pid, kill: true)
    }

    @Test func failedWithReasonThenExit() throws {
        let (c, pid) = try start("printf 'failed: image /nope: No such file or directory\\n' >&5; exit 1")
        #expect(c.wait(pid: pid, timeout: .seconds(10)) == .failed("image /nope: No such file or directory"))
        #expect((reap(pid) >> 8) & 0xff == 1)
    }

    @Test func exitWithoutMessageIsExitedAndNotReaped() throws {
        let (c, pid) = try start("exit 3")
        let r = c.wait(pid: pid, timeout: .seconds(10))
        #expect(r == .exited(status: 3 << 8), "\(r)")
        #expect(r.description == "exited with status 3")
        // Still the caller's to reap.
        #expect((reap(pid) >> 8) & 0xff == 3)
    }

    @Test func killedBeforeReadyIsExitedBySignal() throws {
        let (c, pid) = try start("sleep 5")
        let killer = Thread2 { usleep(200_000); kill(pid, SIGKILL) }
        let r = c.wait(pid: pid, timeout: .seconds(10))
        killer.join()
        #expect(r == .exited(status: SIGKILL), "\(r)")
        #expect(reap(pid) & 0x7f == SIGKILL)
    }

    @Test func silenceIsTimedOut() throws {
        let (c, pid) = try start("sleep 5")
        let clock = ContinuousClock()
        let t0 = clock.now
        #expect(c.wait(pid: pid, timeout: .milliseconds(300)) == .timedOut)
        let took = t0.duration(to: clock.now)
        #expect(took >= .milliseconds(300) && took < .seconds(3), "\(took)")
        reap(pid, kill: true)
    }

    @Test func closedWithoutMessageWhileRunningIsFailed() throws {
        let (c, pid) = try start("exec 5>&-; sleep 5")
        let r = c.wait(pid: pid, timeout: .seconds(10))
        #expect(r == .failed("closed its readiness descriptor without a message"), "\(r)")
        reap(pid, kill: true)
    }

    @Test func malformedMessageIsFailedNamingIt() throws {
        let (c, pid) = try start("printf 'hello\\n' >&5; sleep 5")
        #expect(c.wait(pid: pid, timeout: .seconds(10)) == .failed("malformed readiness message: hello"))
        reap(pid, kill: true)
    }

    @Test func endlessLineIsFailed() throws {
        let (c, pid) = try start("head -c 2000 /dev/zero | tr '\\000' r >&5; sleep 5")
        let r = c.wait(pid: pid, timeout: .seconds(10))
        #expect(r == .failed("malformed readiness message: no end of line within 512 bytes"), "\(r)")
        reap(pid, kill: true)
    }
}

/// A joinable pthread running `body`.
final class Thread2 {
    private var thread = pthread_t()
    init(_ body: @escaping @Sendable () -> Void) {
        final class Box { let f: @Sendable () -> Void; init(_ f: @escaping @Sendable () -> Void) { self.f = f } }
        let arg = Unmanaged.passRetained(Box(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { p in
            Unmanaged<Box>.fromOpaque(p!).takeRetainedValue().f()
            return nil
        }, arg)
        precondition(rc == 0)
    }
    func join() { pthread_join(thread, nil) }
}
