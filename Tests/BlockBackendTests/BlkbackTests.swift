import Testing
import Foundation
import GuestMemory
import VhostUser
import VhostUserTesting
import Virtio
@testable import BlockBackend

/// Directory of the built executables (next to the test bundle).
let binDir: URL = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
    .deletingLastPathComponent()
let blkback = binDir.appendingPathComponent("blkback").path
let frontendTool = binDir.appendingPathComponent("vhost-user-frontend").path
/// These tests exercise the device logic with blkback started by Foundation's Process,
/// whose child monitor blocks in wait4 on a sandboxed blkback (its PID-namespace reaper)
/// and then never notices other children exit; the sandboxed blkback is tested through
/// xend in integration/BackendSupervisionTests.swift.
let noSandbox = ["--no-sandbox"]

/// A scratch directory with a 64 MiB sparse image, removed at the end.
final class Scratch {
    let dir: String
    var image: String { dir + "/disk.img" }
    var socket: String { dir + "/blk.sock" }
    init() throws {
        dir = NSTemporaryDirectory() + "blkback-test-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: image, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: image))
        try h.truncate(atOffset: 64 << 20); try h.close()
    }
    deinit { try? FileManager.default.removeItem(atPath: dir) }
}

struct Run { let status: Int32; let out: String; let err: String }

func run(_ path: String, _ args: [String], timeout: Double = 120) throws -> Run {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let o = Pipe(), e = Pipe()
    p.standardOutput = o; p.standardError = e
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(10_000) }
    if p.isRunning { p.terminate() }
    p.waitUntilExit()
    return Run(status: p.terminationStatus,
               out: String(decoding: o.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
               err: String(decoding: e.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
}

/// Starts blkback and waits until it listens.
func startBlkback(_ args: [String], socket: String) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: blkback)
    p.arguments = noSandbox + args
    p.standardError = FileHandle.nullDevice
    try p.run()
    for _ in 0..<500 where !unixSocketIsLive(path: socket) {
        if !p.isRunning { break }
        usleep(10_000)
    }
    return p
}

func stop(_ p: Process) {
    if p.isRunning { p.terminate() }
    for _ in 0..<300 where p.isRunning { usleep(10_000) }
    if p.isRunning { kill(p.processIdentifier, SIGKILL) }
    p.waitUntilExit()
}

@Suite(.serialized) struct BlkbackTests {
    @Test func writeReadVerifyFlushDiscardWriteZeroes() throws {
        let s = try Scratch()
        let b = try startBlkback(["--socket", s.socket, "--image", "file:" + s.image], socket: s.socket)
        defer { stop(b) }
        let r = try run(frontendTool, ["verify", "--socket", s.socket])
        #expect(r.status == 0, "\(r.out)\(r.err)")
        #expect(r.out.contains("verify: passed"))
        // The back-end takes the next front-end after this one left.
        let again = try run(frontendTool, ["verify", "--socket", s.socket])
        #expect(again.status == 0)
    }

    @Test func ioThreadsServeLargeRequests() throws {
        let s = try Scratch()
        let b = try startBlkback(["--socket", s.socket, "--image", s.image, "--io-threads", "4"], socket: s.socket)
        defer { stop(b) }
        let r = try run(frontendTool, ["verify", "--socket", s.socket])
        #expect(r.status == 0, "\(r.out)\(r.err)")
        #expect(r.out.contains("ok read back 1 MiB"))
    }

    @Test func readOnlyRefusesWrites() throws {
        let s = try Scratch()
        let b = try startBlkback(["--socket", s.socket, "--image", s.image, "--read-only"], socket: s.socket)
        defer { stop(b) }
        let r = try run(frontendTool, ["verify", "--socket", s.socket, "--read-only"])
        #expect(r.status == 0, "\(r.out)\(r.err)")
    }

    @Test func malformedChainsNeverKillTheBackend() throws {
        let s = try Scratch()
        let b = try startBlkback(["--socket", s.socket, "--image", s.image], socket: s.socket)
        defer { stop(b) }
        let r = try run(frontendTool, ["malformed", "--socket", s.socket])
        #expect(r.status == 0, "\(r.out)\(r.err)")
        #expect(r.out.contains(", 0 failed"))
        #expect(b.isRunning)
    }

    @Test func sigkillAndRestartMidIOReplaysEveryRequest() throws {
        let s = try Scratch()
        let cmd = "\(blkback) --no-sandbox --socket \(s.socket) --image \(s.image) --quiet --num-queues 2 --test-reorder --test-delay-us 50"
        let r = try run(frontendTool, ["restart", "--socket", s.socket, "--backend-cmd", cmd, "--kills", "3", "--queues", "2", "--blocks", "2048"])
        #expect(r.status == 0, "\(r.out)\(r.err)")
        #expect(r.out.contains("verified 2048 blocks after 3 SIGKILL+restart: 0 bad"))
    }

    @Test func badInputIsOneLineAndLeavesNothing() throws {
        let s = try Scratch()
        let missing = try run(blkback, noSandbox + ["--socket", s.socket, "--image", s.dir + "/nope.img"])
        #expect(missing.status != 0)
        #expect(missing.err.contains("nope.img") && missing.err.split(separator: "\n").count == 1)
        #expect(!FileManager.default.fileExists(atPath: s.socket))

        let dir = try run(blkback, noSandbox + ["--socket", s.socket, "--image", s.dir])
        #expect(dir.status != 0 && dir.err.contains("directory"))
        #expect(!FileManager.default.fileExists(atPath: s.socket))

        // A live listener keeps its socket; a stale socket file is replaced.
        let b = try startBlkback(["--socket", s.socket, "--image", s.image, "--shared-write"], socket: s.socket)
        let taken = try run(blkback, noSandbox + ["--socket", s.socket, "--image", s.image, "--shared-write"])
        #expect(taken.status != 0 && taken.err.contains(s.socket) && taken.err.contains("live listener"))
        #expect(unixSocketIsLive(path: s.socket))
        b.interrupt()
        for _ in 0..<300 where b.isRunning { usleep(10_000) }
        #expect(!b.isRunning)
        stop(b)
        #expect(!FileManager.default.fileExists(atPath: s.socket))   // removed on SIGINT

        let stale = try vhostUserListen(path: s.socket); close(stale)   // file left, nobody listening
        let b2 = try startBlkback(["--socket", s.socket, "--image", s.image], socket: s.socket)
        defer { stop(b2) }
        #expect(b2.isRunning && unixSocketIsLive(path: s.socket))
    }

    @Test func imageLocking() throws {
        let s = try Scratch()
        let b = try startBlkback(["--socket", s.socket, "--image", s.image], socket: s.socket)
        defer { stop(b) }
        let second = try run(blkback, noSandbox + ["--socket", s.dir + "/b.sock", "--image", s.image])
        #expect(second.status != 0 && second.err.contains("in use"))
        let ro = try run(blkback, noSandbox + ["--socket", s.dir + "/c.sock", "--image", s.image, "--read-only"])
        #expect(ro.status != 0)
        #expect(!FileManager.default.fileExists(atPath: s.dir + "/b.sock"))
        // w! (shared write) skips the lock.
        let w = try startBlkback(["--socket", s.dir + "/d.sock", "--image", s.image, "--shared-write"], socket: s.dir + "/d.sock")
        #expect(w.isRunning)
        stop(w)
    }

    /// Back-end and front-end libraries in one process: the back-end on its own thread.
    @Test func inProcessBackendServesClient() throws {
        let s = try Scratch()
        let img = try BlockImage.open(s.image, readOnly: false, sharedWrite: false)
        let dev = VirtioBlockDevice(image: img, numQueues: 2, serial: "unit")
        let backend = try VhostUserBackend(device: dev, listenFd: try vhostUserListen(path: s.socket))
        backend.completionOrder = .reversedBatches
        let done = Mutex(false)
        spawnThread { try? backend.run(); done.withLock { $0 = true } }
        let c = try VirtioBlockClient(socketPath: s.socket, numQueues: 2, queueSize: 64, depth: 16, maxRequestBytes: 65536)
        try c.connect()
        #expect(c.capacitySectors == (64 << 20) / 512)
        #expect(c.frontend.negotiatedFeatures & VirtioBlk.fMQ != 0)
        let data = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(try c.write(sector: 100, data, queue: 1) == VirtioBlk.sOK)
        #expect(try c.read(sector: 100, count: 8192, queue: 0) == data)
        // Config space: blk_size and num_queues.
        let cfg = try c.frontend.getConfig(offset: 0, count: UInt32(VirtioBlk.configSize))
        #expect(cfg[20] == 0 && cfg[21] == 2)     // blk_size 512 little-endian
        #expect(cfg[34] == 2)                      // num_queues
        #expect(try c.frontend.getStatus() & VirtioDeviceStatus.needsReset == 0)
        backend.stop()
        for _ in 0..<200 where !done.withLock({ $0 }) { usleep(5000) }
        #expect(done.withLock { $0 })
    }
}

import Synchronization
