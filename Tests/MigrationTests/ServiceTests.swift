// The real `migration` executable, under its manifest when run as root: every mode with
// pipes and socketpairs as xend will hand them, pacing, refusals, and the seccomp hook.
import Testing
import Glibc
import Migration
import Spawn
import Synchronization

/// The migration executable, built into the same directory as this test bundle (or above it).
func migrationBinary() -> String? {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    var candidates: [String] = []
    if n > 0 { candidates.append(String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)) }
    candidates.append(CommandLine.arguments[0])
    for exe in candidates {
        guard let slash = exe.lastIndex(of: "/") else { continue }
        var dir = String(exe[..<slash])
        for _ in 0..<4 {
            if access(dir + "/migration", X_OK) == 0 { return dir + "/migration" }
            guard let up = dir.lastIndex(of: "/") else { break }
            dir = String(dir[..<up])
        }
    }
    return nil
}

/// Sandboxed when root (the manifest needs namespaces and pivot_root), else --no-sandbox.
let sandboxed = getuid() == 0
let sandboxArgs = sandboxed ? [] : ["--no-sandbox"]

struct NotBuilt: Error {}

/// A running migration process and where its stderr goes.
struct Service {
    let pid: pid_t
    let stderrFd: Int32

    /// Starts `migration --mode MODE ARGS` with `fds` (our descriptor → number in the child).
    init(_ mode: String, _ args: [String] = [], fds: [(Int32, Int32)], environment: [String: String] = [:]) throws {
        guard let bin = migrationBinary() else { throw NotBuilt() }
        stderrFd = scratchFile()
        var o = SpawnOptions(stderr: .descriptor(stderrFd),
                             descriptors: fds.map { (source: $0.0, target: $0.1) },
                             environment: ["SWIFT_BACKTRACE": "enable=no"].merging(environment) { $1 })
        o.newSession = false
        pid = try spawnProcess([bin, "--mode", mode] + sandboxArgs + args, o)
    }

    /// Waits for the process: its wait status and stderr.
    func wait() -> (status: Int32, stderr: String) {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let err = String(decoding: fileContents(stderrFd), as: UTF8.self)
        close(stderrFd)
        return (status, err)
    }
}

func exitCode(_ status: Int32) -> Int32? { status & 0x7F == 0 ? (status >> 8) & 0xFF : nil }
func signalNumber(_ status: Int32) -> Int32? { status & 0x7F != 0 && status & 0x7F != 0x7F ? status & 0x7F : nil }

/// Runs `body` on its own thread; `join` waits for it.
final class Worker: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: () -> Void
    init(_ body: @escaping @Sendable () -> Void) {
        self.body = body
        let box = Unmanaged.passRetained(self)
        precondition(pthread_create(&thread, nil, { arg in
            let w = Unmanaged<Worker>.fromOpaque(arg!).takeRetainedValue()
            w.body()
            return nil
        }, box.toOpaque()) == 0)
    }
    func join() { pthread_join(thread, nil) }
}

/// Feeds `bytes` into `fd` on a thread and closes it.
func feed(_ fd: Int32, _ bytes: [UInt8]) -> Worker { Worker { writeAll(fd, bytes); close(fd) } }

/// A thread-safe slot for what a worker read.
final class Slot<T: Sendable>: Sendable {
    private let m = Mutex<T?>(nil)
    var value: T? {
        get { m.withLock { $0 } }
        set { m.withLock { $0 = newValue } }
    }
}

/// Drains `fd` to EOF on a thread into the returned slot.
func drain(_ fd: Int32) -> (Worker, Slot<[UInt8]>) {
    let slot = Slot<[UInt8]>()
    let w = Worker { slot.value = readToEOF(fd); close(fd) }
    return (w, slot)
}

/// Plays xend on a status channel for save/send: sends the config, answers `drained` with
/// `answer`, and collects every message until the service closes the channel.
func xendSide(_ fd: Int32, config: String?, answer: StatusMessage = .commit) throws -> [StatusMessage] {
    let ch = StatusChannel(Descriptor(fd, role: "xend end"))
    if let config { try ch.send(.config(config)) }
    var got: [StatusMessage] = []
    while let m = try ch.receive() {
        got.append(m)
        if case .drained = m { try ch.send(answer) }
    }
    return got
}

func summary(_ messages: [StatusMessage]) -> Summary? {
    if case .done(let s)? = messages.last { return s }
    return nil
}

func failure(_ messages: [StatusMessage]) -> String? {
    if case .failed(let r)? = messages.last { return r }
    return nil
}

@Suite(.serialized) struct ServiceTests {
    @Test func saveVerifyRestoreAsProcesses() throws {
        guard migrationBinary() != nil else { print("SKIP: migration not built next to the tests"); return }
        let stream = randomBytes(4 << 20 + 777)
        let file = scratchFile()
        defer { close(file) }

        // save: engine pipe → file; xend sends the config, commits after drained.
        let (engineR, engineW) = pipePair(), (xend, svc) = socketPair()
        let save = try Service("save", ["--progress-ms", "10"], fds: [(engineR, 3), (file, 4), (svc, 5)])
        close(engineR); close(svc)
        let feeder = feed(engineW, stream)
        let saveMessages = try xendSide(xend, config: sampleConfig)
        feeder.join(); close(xend)
        let saved = save.wait()
        #expect(exitCode(saved.status) == 0, "status \(saved.status): \(saved.stderr)")
        #expect(signalNumber(saved.status) == nil, "\(saved.stderr)")
        if sandboxed { #expect(saved.stderr.contains("sandbox: migration applied manifest")) }
        #expect(saveMessages.contains(.drained(bytes: UInt64(stream.count), checksum: CRC32C.checksum(stream))))
        #expect(summary(saveMessages)?.bytes == UInt64(stream.count))
        #expect(summary(saveMessages)?.checksum == CRC32C.checksum(stream))
        #expect(summary(saveMessages)?.wireBytes == UInt64(fileContents(file).count))

        // verify: the file only.
        let (xend2, svc2) = socketPair()
        let ver = try Service("verify", fds: [(file, 4), (svc2, 5)])
        close(svc2)
        let verMessages = try xendSide(xend2, config: nil)
        close(xend2)
        let verified = ver.wait()
        #expect(exitCode(verified.status) == 0, "\(verified.stderr)")
        #expect(verMessages.first == .config(sampleConfig))
        #expect(summary(verMessages)?.checksum == CRC32C.checksum(stream))

        // restore: file → engine pipe, config first.
        let (inR, inW) = pipePair(), (xend3, svc3) = socketPair()
        let res = try Service("restore", fds: [(inW, 3), (file, 4), (svc3, 5)])
        close(inW); close(svc3)
        let (drainer, restored) = drain(inR)
        let resMessages = try xendSide(xend3, config: nil)
        drainer.join(); close(xend3)
        let r = res.wait()
        #expect(exitCode(r.status) == 0, "\(r.stderr)")
        #expect(resMessages.first == .config(sampleConfig))
        #expect(summary(resMessages)?.bytes == UInt64(stream.count))
        #expect(restored.value == stream)
    }

    @Test func sendAndReceiveOverASocketPairPaced() throws {
        guard migrationBinary() != nil else { print("SKIP: migration not built next to the tests"); return }
        let stream = randomBytes(5 << 20)
        let (peerA, peerB) = socketPair()
        let (srcR, srcW) = pipePair(), (dstR, dstW) = pipePair()
        let (xendS, svcS) = socketPair(), (xendR, svcR) = socketPair()
        let receiver = try Service("receive", fds: [(dstW, 3), (peerB, 4), (svcR, 5)])
        let sender = try Service("send", ["--rate", "40"], fds: [(srcR, 3), (peerA, 4), (svcS, 5)])
        for fd in [peerA, peerB, srcR, dstW, svcS, svcR] { close(fd) }
        let started = monotonicSeconds()
        let feeder = feed(srcW, stream)
        let (drainer, received) = drain(dstR)
        let receiverMessages = Slot<[StatusMessage]>()
        let receiverSide = Worker { receiverMessages.value = (try? xendSide(xendR, config: nil)) ?? [] }
        let senderMessages = try xendSide(xendS, config: sampleConfig)
        let wall = monotonicSeconds() - started
        feeder.join(); drainer.join(); receiverSide.join()
        close(xendS); close(xendR)
        let s = sender.wait(), r = receiver.wait()
        #expect(exitCode(s.status) == 0, "sender \(s.status): \(s.stderr)")
        #expect(exitCode(r.status) == 0, "receiver \(r.status): \(r.stderr)")
        #expect(received.value == stream)
        #expect(receiverMessages.value?.first == .config(sampleConfig))
        let sent = try #require(summary(senderMessages))
        #expect(summary(receiverMessages.value ?? [])?.checksum == sent.checksum)
        #expect(sent.checksum == CRC32C.checksum(stream))
        // 5 MiB plus framing at 40 Mbit/s: about 1.05 s. Never faster than the rate allows
        // (-20 % for the clocks); slower only by scheduler stalls longer than the 64 KiB
        // burst, which the pacer does not credit back, so a loaded CI host gets +50 %.
        let expected = Double(sent.wireBytes) * 8 / 40e6
        let measured = Double(sent.microseconds) / 1e6
        #expect(measured > expected * 0.8 && measured < expected * 1.5, "took \(measured) s, expected \(expected) s")
        #expect(wall > expected * 0.8 && wall < expected * 1.5 + 1.0, "wall \(wall) s, expected \(expected) s")
        // Progress about every 250 ms, engine bytes rising, at about the paced rate (5 MB/s).
        let progress = senderMessages.compactMap { m -> (UInt64, UInt64)? in
            if case .progress(let b, let r) = m { (b, r) } else { nil }
        }
        #expect(progress.count >= 2 && progress.count <= 8, "\(progress)")
        #expect(zip(progress, progress.dropFirst()).allSatisfy { $0.0 < $1.0 })
        // Never above the rate; at it in the typical interval (one stalled interval of a
        // loaded host may fall below).
        let rates = progress.dropFirst().map(\.1).sorted()
        #expect(rates.allSatisfy { $0 < 7_000_000 }, "\(progress)")
        #expect(rates.isEmpty || rates[rates.count / 2] > 3_000_000, "\(progress)")
        print("paced send: \(sent.wireBytes) bytes in \(measured) s (expected \(expected) s), wall \(wall) s")
    }

    @Test func receiverRefusesACorruptStreamAndTellsTheSender() throws {
        guard migrationBinary() != nil else { print("SKIP: migration not built next to the tests"); return }
        var bad = makeSaveFile(randomBytes(1 << 20))
        bad[bad.count / 2] ^= 0x40
        let (peerA, peerB) = socketPair(), (dstR, dstW) = pipePair(), (xendR, svcR) = socketPair()
        let receiver = try Service("receive", fds: [(dstW, 3), (peerB, 4), (svcR, 5)])
        close(peerB); close(dstW); close(svcR)
        let (drainer, _) = drain(dstR)
        writeAll(peerA, bad)
        let messages = try xendSide(xendR, config: nil)
        drainer.join(); close(xendR)
        let r = receiver.wait()
        #expect(exitCode(r.status) == 3, "\(r.status): \(r.stderr)")
        #expect(signalNumber(r.status) == nil)
        #expect(failure(messages)?.contains("fails its CRC-32C check") == true, "\(messages)")
        #expect(r.stderr.contains("migration: receive: corrupt stream: frame"))
        // The sender's side of the connection gets the reason as an abort frame.
        var reader = FrameReader(input: Descriptor(peerA, role: "peer"))
        if case .abort(let reason) = try reader.next() { #expect(reason.contains("CRC-32C")) } else { Issue.record("no abort frame") }
        close(peerA)
    }

    @Test func theSenderReportsTheReceiversReason() throws {
        guard migrationBinary() != nil else { print("SKIP: migration not built next to the tests"); return }
        // sender ⇄ relay (flips one byte on the way) ⇄ receiver
        let (senderPeer, relayA) = socketPair(), (relayB, receiverPeer) = socketPair()
        let (srcR, srcW) = pipePair(), (dstR, dstW) = pipePair()
        let (xendS, svcS) = socketPair(), (xendR, svcR) = socketPair()
        let receiver = try Service("receive", fds: [(dstW, 3), (receiverPeer, 4), (svcR, 5)])
        let sender = try Service("send", fds: [(srcR, 3), (senderPeer, 4), (svcS, 5)])
        for fd in [senderPeer, receiverPeer, srcR, dstW, svcS, svcR] { close(fd) }
        let back = Worker {                               // receiver → sender: its abort frame
            writeAll(relayA, readToEOF(relayB)); shutdown(relayA, Int32(SHUT_WR))
        }
        let forth = Worker {
            var seen = 0
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = chunk.withUnsafeMutableBytes { read(relayA, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                if seen <= 100_000 && seen + n > 100_000 { chunk[100_000 - seen] ^= 0x01 }
                seen += n
                let ok = chunk.withUnsafeBytes { send(relayB, $0.baseAddress, n, Int32(MSG_NOSIGNAL)) } == n
                if !ok { break }
            }
            back.join()                                   // the abort frame is through first
            shutdown(relayA, Int32(SHUT_RDWR))
        }
        let feeder = feed(srcW, randomBytes(4 << 20))
        let (drainer, _) = drain(dstR)
        let receiverMessages = Slot<[StatusMessage]>()
        let receiverSide = Worker { receiverMessages.value = (try? xendSide(xendR, config: nil)) ?? [] }
        let senderMessages = try xendSide(xendS, config: sampleConfig)
        forth.join(); feeder.join(); drainer.join(); receiverSide.join()
        for fd in [relayA, relayB, xendS, xendR] { close(fd) }
        let s = sender.wait(), r = receiver.wait()
        #expect(exitCode(r.status) == 3 && exitCode(s.status) == 3, "\(r.stderr) \(s.stderr)")
        let theirs = try #require(failure(receiverMessages.value ?? []))
        #expect(theirs.contains("fails its CRC-32C check"))
        #expect(failure(senderMessages) == "the receiver did not acknowledge the stream: target: \(theirs)", "\(senderMessages)")
    }

    @Test func badSaveFilesFailWithTheirReason() throws {
        guard migrationBinary() != nil else { print("SKIP: migration not built next to the tests"); return }
        let good = makeSaveFile(randomBytes(100_000))
        let cases: [(String, [UInt8])] = [
            ("not a valid guest state file", Array("NotAGuestRecord!".utf8) + good[16...]),
            ("stream format version 7 is newer", patched(good, at: headerOffset() + 8, u32: 7)),
            ("truncated stream", Array(good.dropLast(10))),
            ("configuration length 16777216", patched(good, at: 16, u32: 1 << 24)),
            ("more than the limit of 1048576", patched(good, at: headerOffset() + 20 + 4, u32: 1 << 30)),
        ]
        for (expected, bytes) in cases {
            for mode in ["verify", "restore"] {
                let file = scratchFile(bytes), (xend, svc) = socketPair(), (engR, engW) = pipePair()
                var fds: [(Int32, Int32)] = [(file, 4), (svc, 5)]
                if mode == "restore" { fds.append((engW, 3)) }
                let p = try Service(mode, fds: fds)
                close(svc); close(engW)
                let (drainer, engine) = drain(engR)
                let messages = try xendSide(xend, config: nil)
                drainer.join(); close(xend); close(file)
                let r = p.wait()
                #expect(exitCode(r.status) == 3, "\(mode) \(expected): status \(r.status) \(r.stderr)")
                #expect(failure(messages)?.contains(expected) == true, "\(mode): \(messages)")
                // Verification comes first: nothing reached the engine, no config was reported.
                #expect(engine.value == [], "\(mode) \(expected)")
                #expect(!messages.contains { if case .config = $0 { true } else { false } })
            }
        }
    }

    @Test func xendAbortLeavesAFileThatIsRefused() throws {
        guard migrationBinary() != nil else { print("SKIP: migration not built next to the tests"); return }
        let file = scratchFile()
        defer { close(file) }
        let (engineR, engineW) = pipePair(), (xend, svc) = socketPair()
        let save = try Service("save", fds: [(engineR, 3), (file, 4), (svc, 5)])
        close(engineR); close(svc)
        let feeder = feed(engineW, randomBytes(300_000))
        let messages = try xendSide(xend, config: sampleConfig, answer: .abort("QEMU: migration failed"))
        feeder.join(); close(xend)
        let r = save.wait()
        #expect(exitCode(r.status) == 3)
        #expect(failure(messages) == "abandoned by xend: QEMU: migration failed")
        #expect(verifyError(fileContents(file)) == .aborted(reason: "abandoned by xend: QEMU: migration failed"))
    }

    @Test func sigtermCancelsAndTheHalfFileIsRefused() throws {
        guard migrationBinary() != nil else { print("SKIP: migration not built next to the tests"); return }
        let file = scratchFile()
        defer { close(file) }
        let (engineR, engineW) = pipePair(), (xend, svc) = socketPair()
        let save = try Service("save", fds: [(engineR, 3), (file, 4), (svc, 5)])
        close(engineR); close(svc)
        try StatusChannel(Descriptor(xend, role: "xend")).send(.config(sampleConfig))
        writeAll(engineW, randomBytes(100_000))          // the engine stalls: no EOF
        var waited = 0
        while fileContents(file).count < 100_000 && waited < 500 { usleep(10_000); waited += 1 }
        kill(save.pid, SIGTERM)
        let r = save.wait()
        close(engineW); close(xend)
        #expect(exitCode(r.status) == 143, "status \(r.status): \(r.stderr)")
        #expect(verifyError(fileContents(file))?.description.hasPrefix("truncated stream") == true)
    }

    @Test func usageErrors() throws {
        guard migrationBinary() != nil else { print("SKIP: migration not built next to the tests"); return }
        let (a, b) = socketPair(), (r, w) = pipePair(), f = scratchFile()
        defer { for fd in [a, b, r, w, f] { close(fd) } }
        for (args, expected) in [(["--rate", "0"], "--rate 0: expected a rate in Mbit/s in 1...1000000"),
                                 (["--rate", "-3"], "--rate -3"),
                                 (["--bogus"], "unknown argument --bogus")] {
            let p = try Service("send", args, fds: [(r, 3), (a, 4), (b, 5)])
            let res = p.wait()
            #expect(exitCode(res.status) == 1)
            #expect(res.stderr.contains(expected), "\(res.stderr)")
        }
        let p = try Service("save", fds: [(r, 3), (b, 5)])          // no fd 4
        let res = p.wait()
        #expect(exitCode(res.status) == 1)
        #expect(res.stderr.contains("the save file (fd 4) was not handed to this process"), "\(res.stderr)")
    }

    @Test func aForbiddenSyscallKillsTheSandboxedServiceBySIGSYS() throws {
        guard migrationBinary() != nil else { print("SKIP: migration not built next to the tests"); return }
        guard sandboxed else { print("SKIP: needs root for the sandbox"); return }
        let (a, b) = socketPair(), f = scratchFile(makeSaveFile([1, 2, 3]))
        defer { close(a); close(f) }
        let p = try Service("verify", fds: [(f, 4), (b, 5)], environment: ["XENITH_MIGRATION_TEST_FORBIDDEN": "1"])
        close(b)
        let r = p.wait()
        #expect(signalNumber(r.status) == SIGSYS, "status \(r.status): \(r.stderr)")
        #expect(r.stderr.contains("sandbox: migration: blocked syscall getppid"), "\(r.stderr)")
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
