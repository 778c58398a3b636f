// The interface xend will use, end to end with Debian's QEMU 7.2 (TCG, no guest needed):
// QEMU's `migrate fd:` feeds the service's engine pipe, a restore or receive feeds
// `migrate-incoming fd:` on a QEMU started with `-incoming defer`. Descriptors reach QEMU
// over QMP (`getfd`, SCM_RIGHTS), as PLATFORM.md says for QEMU 7.2.
import Testing
import Foundation
import Glibc
import CLinux
import Migration
import Spawn

let qemuBinary = "/usr/bin/qemu-system-x86_64"

/// A QEMU with no guest (the firmware runs under TCG) and its QMP socket, killed on `stop()`.
final class TestQemu {
    let pid: pid_t
    let qmpFd: Int32
    private var pending: [UInt8] = []

    init(socketPath: String, extra: [String]) throws {
        unlink(socketPath)
        pid = try spawnProcess([qemuBinary, "-machine", "q35,accel=tcg", "-m", "64", "-display", "none", "-nodefaults",
                                "-qmp", "unix:\(socketPath),server=on,wait=off"] + extra,
                               SpawnOptions(newSession: false))
        var fd: Int32 = -1
        for _ in 0..<500 {
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in socketPath.utf8.enumerated() { raw[i] = b } }
            let ok = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if ok == 0 { break }
            close(fd); fd = -1
            usleep(10_000)
        }
        guard fd >= 0 else { kill(pid, SIGKILL); throw QemuTestError("QMP socket \(socketPath) never answered") }
        qmpFd = fd
        _ = try line()                                        // greeting
        _ = try execute("qmp_capabilities")
    }

    /// One command (with `fd` attached by SCM_RIGHTS when given); events are skipped.
    @discardableResult
    func execute(_ command: String, _ arguments: [String: Any] = [:], passing fd: Int32? = nil) throws -> [String: Any] {
        var data = try JSONSerialization.data(withJSONObject: ["execute": command, "arguments": arguments])
        data.append(10)
        let sent = data.withUnsafeBytes { p -> Int in
            if let fd {
                var fds = [fd]
                return clinux_send_with_fds(qmpFd, p.baseAddress, p.count, &fds, 1)
            }
            return send(qmpFd, p.baseAddress, p.count, 0)
        }
        guard sent == data.count else { throw QemuTestError("QMP \(command): send failed") }
        while true {
            let reply = try line()
            if let error = reply["error"] { throw QemuTestError("QMP \(command): \(error)") }
            if reply["return"] != nil { return reply }
        }
    }

    private func line() throws -> [String: Any] {
        while true {
            if let nl = pending.firstIndex(of: 10) {
                let l = Array(pending[..<nl]); pending.removeFirst(nl + 1)
                return (try JSONSerialization.jsonObject(with: Data(l))) as? [String: Any] ?? [:]
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { read(qmpFd, $0.baseAddress, $0.count) }
            guard n > 0 else { throw QemuTestError("QMP closed") }
            pending += chunk[0..<n]
        }
    }

    /// `query-migrate`'s status once it is final (completed, failed, cancelled), polled.
    func migrationOutcome() throws -> String {
        for _ in 0..<1000 {
            let s = ((try execute("query-migrate"))["return"] as? [String: Any])?["status"] as? String ?? "none"
            if ["completed", "failed", "cancelled"].contains(s) { return s }
            usleep(10_000)
        }
        return "timeout"
    }

    func runState() throws -> String {
        ((try execute("query-status"))["return"] as? [String: Any])?["status"] as? String ?? "?"
    }

    func stop() {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        close(qmpFd)
    }
}

struct QemuTestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Plays the target host's xend on a receive or restore status channel: at `config` it
/// starts QEMU with `-incoming defer`, hands it the pipe's read end and starts the incoming
/// migration; it collects every message.
func targetXend(status: Int32, engineRead: Int32, socketPath: String) throws -> (TestQemu?, [StatusMessage]) {
    let ch = StatusChannel(Descriptor(status, role: "xend end"))
    var qemu: TestQemu?
    var got: [StatusMessage] = []
    while let m = try ch.receive() {
        got.append(m)
        if case .config = m {
            let q = try TestQemu(socketPath: socketPath, extra: ["-incoming", "defer"])
            qemu = q
            try q.execute("getfd", ["fdname": "migfd"], passing: engineRead)
            close(engineRead)
            try q.execute("migrate-incoming", ["uri": "fd:migfd"])
        }
    }
    return (qemu, got)
}

@Suite(.serialized) struct QemuStreamTests {
    func available() -> Bool {
        guard access(qemuBinary, X_OK) == 0 else { print("SKIP: no \(qemuBinary)"); return false }
        guard migrationBinary() != nil else { print("SKIP: migration not built next to the tests"); return false }
        return true
    }

    @Test func saveAndRestoreAQemuDomain() throws {
        guard available() else { return }
        let dir = NSTemporaryDirectory() + "mig-qemu-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = scratchFile()
        defer { close(file) }

        // xm save: pause, migrate into the service's pipe, commit once QEMU says completed.
        let source = try TestQemu(socketPath: dir + "/a.qmp", extra: [])
        defer { source.stop() }
        try source.execute("stop")
        let (engineR, engineW) = pipePair(), (xend, svc) = socketPair()
        let save = try Service("save", fds: [(engineR, 3), (file, 4), (svc, 5)])
        close(engineR); close(svc)
        let ch = StatusChannel(Descriptor(xend, role: "xend end"))
        try ch.send(.config(sampleConfig))
        try source.execute("getfd", ["fdname": "migfd"], passing: engineW)
        close(engineW)                                   // QEMU holds the only write end: its close is our EOF
        try source.execute("migrate", ["uri": "fd:migfd"])
        var saveMessages: [StatusMessage] = []
        while let m = try ch.receive() {
            saveMessages.append(m)
            if case .drained = m {
                let outcome = try source.migrationOutcome()
                try ch.send(outcome == "completed" ? .commit : .abort("QEMU: migration \(outcome)"))
            }
        }
        close(xend)
        let saved = save.wait()
        #expect(exitCode(saved.status) == 0, "\(saved.stderr)")
        let s = try #require(summary(saveMessages), "\(saveMessages)")
        #expect(s.bytes > 100_000)

        // xm restore: the service checks the whole file, then says config; xend starts QEMU.
        let (inR, inW) = pipePair(), (xend2, svc2) = socketPair()
        let restore = try Service("restore", fds: [(inW, 3), (file, 4), (svc2, 5)])
        close(inW); close(svc2)
        let (target, restoreMessages) = try targetXend(status: xend2, engineRead: inR, socketPath: dir + "/b.qmp")
        close(xend2)
        let restored = restore.wait()
        #expect(exitCode(restored.status) == 0, "\(restored.stderr)")
        #expect(restoreMessages.first == .config(sampleConfig))
        #expect(summary(restoreMessages)?.checksum == s.checksum)
        let q = try #require(target)
        defer { q.stop() }
        #expect(try q.migrationOutcome() == "completed")
        #expect(try q.runState() == "paused")
        try q.execute("cont")
        #expect(try q.runState() == "running")
    }

    @Test func liveMigrationThroughTwoServices() throws {
        guard available() else { return }
        let dir = NSTemporaryDirectory() + "mig-qemu-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let source = try TestQemu(socketPath: dir + "/a.qmp", extra: [])
        defer { source.stop() }
        #expect(try source.runState() == "running")

        let (peerA, peerB) = socketPair()                 // stands in for xend's relocation connection
        let (dstR, dstW) = pipePair(), (xendR, svcR) = socketPair()
        let receiver = try Service("receive", fds: [(dstW, 3), (peerB, 4), (svcR, 5)])
        let (srcR, srcW) = pipePair(), (xendS, svcS) = socketPair()
        let sender = try Service("send", ["--rate", "500"], fds: [(srcR, 3), (peerA, 4), (svcS, 5)])
        for fd in [peerA, peerB, dstW, svcR, srcR, svcS] { close(fd) }

        let targetResult = Slot<String>()
        let targetSide = Worker {
            do {
                let (q, messages) = try targetXend(status: xendR, engineRead: dstR, socketPath: dir + "/b.qmp")
                guard let q else { targetResult.value = "no config: \(messages)"; return }
                defer { q.stop() }
                let outcome = try q.migrationOutcome()
                try q.execute("cont")
                targetResult.value = "\(outcome) \(try q.runState()) \(summary(messages) != nil ? "done" : "\(messages)")"
            } catch { targetResult.value = "\(error)" }
        }
        let ch = StatusChannel(Descriptor(xendS, role: "xend end"))
        try ch.send(.config(sampleConfig))
        try source.execute("getfd", ["fdname": "migfd"], passing: srcW)
        close(srcW)
        try source.execute("migrate", ["uri": "fd:migfd"])
        var messages: [StatusMessage] = []
        while let m = try ch.receive() {
            messages.append(m)
            if case .drained = m {
                let outcome = try source.migrationOutcome()
                try ch.send(outcome == "completed" ? .commit : .abort("QEMU: migration \(outcome)"))
            }
        }
        targetSide.join()
        close(xendS); close(xendR)
        let s = sender.wait(), r = receiver.wait()
        #expect(exitCode(s.status) == 0, "\(s.stderr)")
        #expect(exitCode(r.status) == 0, "\(r.stderr)")
        #expect(summary(messages) != nil, "\(messages)")           // done: the receiver acknowledged
        #expect(targetResult.value == "completed running done")
        #expect(try source.runState() == "postmigrate")
    }
}
