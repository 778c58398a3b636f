import Foundation
import Testing

/// Where the repository and the built products are, and what this machine can do.
enum Env {
    /// The package root (this file is integration/Support.swift).
    static let root: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()

    /// Directory of the build products: the test bundle runs from it.
    static let binDir: URL = {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return exe.deletingLastPathComponent()
    }()

    static func binary(_ name: String) -> String { binDir.appendingPathComponent(name).path }

    static func fixture(_ name: String) -> String {
        let path = root.appendingPathComponent("build/fixtures/\(name)").path
        if !FileManager.default.fileExists(atPath: path) {
            _ = try? run("/usr/bin/make", ["-C", root.path, "fixtures"], timeout: 60)
        }
        return path
    }

    /// nil when /dev/kvm can be used, else the reason to skip.
    static var kvmUnavailable: String? {
        if access("/dev/kvm", R_OK | W_OK) != 0 { return "/dev/kvm is not accessible" }
        return nil
    }

    /// nil when KVM is hardware-backed (real Linux boots at speed), else the reason.
    static var hardwareVirtUnavailable: String? {
        if let k = kvmUnavailable { return k }
        let fm = FileManager.default
        if fm.fileExists(atPath: "/sys/module/kvm_intel") || fm.fileExists(atPath: "/sys/module/kvm_amd") { return nil }
        return "KVM here is not hardware-backed (kvm_pvm, no kvm_intel/kvm_amd): real Linux cannot boot in the core"
    }
}

/// Prints the SKIP line the brief asks for and reports whether the test should stop.
func skip(_ reason: String?, _ test: String = #function) -> Bool {
    guard let r = reason else { return false }
    print("SKIP: \(test): \(r)")
    return true
}

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program to completion (killing it after `timeout` seconds).
@discardableResult
/// A file as text, "" when it cannot be read. Bytes that are not UTF-8 (a console log cut
/// mid-character when xenconsoled was killed, a guest's binary output) become U+FFFD instead
/// of making the whole file read as "" and every wait on it time out.
func readText(_ path: String) -> String {
    FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) } ?? ""
}

func run(_ path: String, _ args: [String], timeout: Double = 30, stdin: String? = nil) throws -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    let inPipe = Pipe()
    p.standardInput = inPipe
    try p.run()
    if let s = stdin { inPipe.fileHandleForWriting.write(s.data(using: .utf8)!) }
    try? inPipe.fileHandleForWriting.close()
    let outData = Locked(Data()), errData = Locked(Data())
    let g = DispatchGroup()
    g.enter(); DispatchQueue.global().async { outData.set(out.fileHandleForReading.readDataToEndOfFile()); g.leave() }
    g.enter(); DispatchQueue.global().async { errData.set(err.fileHandleForReading.readDataToEndOfFile()); g.leave() }
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(10_000) }
    if p.isRunning { kill(p.processIdentifier, SIGKILL) }
    p.waitUntilExit()
    // A daemon the program started may hold the pipes open: don't wait for EOF forever.
    _ = g.wait(timeout: .now() + 10)
    return RunResult(status: p.terminationStatus,
                     stdout: String(decoding: outData.get(), as: UTF8.self),
                     stderr: String(decoding: errData.get(), as: UTF8.self))
}

final class Locked<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ v: T) { value = v }
    func get() -> T { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
    func update(_ f: (inout T) -> Void) { lock.lock(); f(&value); lock.unlock() }
}

/// Scratch directories (test `$XENITH_ROOT`s) the tests made: removed when the test process
/// exits, so a run leaves nothing under /tmp; while it runs they are there to look at.
enum Scratch {
    static let directories = Locked<[String]>([])
    private static let removeAtExit: Void = {
        atexit { for d in Scratch.directories.get() { try? FileManager.default.removeItem(atPath: d) } }
    }()

    /// Removes `path` when the test process exits; returns it.
    @discardableResult
    static func track(_ path: String) -> String {
        _ = removeAtExit
        directories.update { $0.append(path) }
        return path
    }

    /// A new directory `/tmp/PREFIX-XXXXXX` (mkdtemp), tracked.
    static func make(_ prefix: String) -> String {
        var t = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        return track(t.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) })
    }
}

/// Pids of the processes whose command line matches `pattern` (`pgrep -f`) and whose
/// environment names `root` as XENITH_ROOT: one test root's services, not another test's.
func processes(matching pattern: String, root: String) -> [Int32] {
    ((try? run("/usr/bin/pgrep", ["-f", "--", pattern]))?.stdout ?? "").split(separator: "\n").compactMap { Int32($0) }
        .filter { (readText("/proc/\($0)/environ")).contains("XENITH_ROOT=\(root)\u{0}") }
}

/// The highest "blk round ok N" (hex) the block fixture printed in `text`; -1 for none.
func lastBlkRound(_ text: String) -> Int {
    text.components(separatedBy: "blk round ok ").dropFirst().compactMap { Int($0.prefix(8), radix: 16) }.max() ?? -1
}

/// The text after `tag` and one space on the first complete line of `text` that starts
/// with `tag`; nil until such a line has arrived whole, ended by a
/// newline. A serial console delivers a line in pieces, so a marker can be seen before the
/// value that follows it: tests that read a value wait for this, never for the marker alone.
func markedValue(_ text: String, _ tag: String) -> String? {
    // `isNewline`, not "\n": a console's "\r\n" is one Character in Swift.
    let lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0.isNewline }).dropLast()
    guard let line = lines.first(where: { $0.hasPrefix(tag) }) else { return nil }
    return String(line.dropFirst(tag.count).drop { $0 == " " })
}

/// For each occurrence of `tag` in `text` whose line has arrived whole, what follows it up to
/// the end of that line; a line still arriving is left out (see `markedValue`).
func completeValues(_ text: String, after tag: String) -> [String] {
    text.components(separatedBy: tag).dropFirst().compactMap { rest in
        rest.firstIndex(where: { $0.isNewline }).map { String(rest[..<$0]) }
    }
}

/// Polls `text()` every 20 ms until `markedValue(text(), tag)` has a value (returned) or
/// `timeout` seconds pass (nil).
func waitForMarkedValue(_ timeout: Double, _ tag: String, in text: () -> String) -> String? {
    let deadline = Date().addingTimeInterval(timeout)
    repeat {
        if let v = markedValue(text(), tag) { return v }
        usleep(20_000)
    } while Date() < deadline
    return nil
}

/// A running process whose output is collected as it arrives.
final class Running: @unchecked Sendable {
    let process = Process()
    let output = Locked("")
    let errors = Locked("")

    init(_ path: String, _ args: [String]) throws {
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = args
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        out.fileHandleForReading.readabilityHandler = { [output] h in
            let d = h.availableData
            output.update { $0 += String(decoding: d, as: UTF8.self) }
        }
        err.fileHandleForReading.readabilityHandler = { [errors] h in
            let d = h.availableData
            errors.update { $0 += String(decoding: d, as: UTF8.self) }
        }
        try process.run()
    }

    /// Waits until `output` contains `text` (true) or `timeout` passes (false).
    func waitFor(_ text: String, timeout: Double = 20) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if output.get().contains(text) { return true }
            usleep(20_000)
        }
        return false
    }

    /// Waits until a whole line starting with `tag` has arrived; returns what follows the tag
    /// (see `markedValue`), or nil after `timeout` seconds.
    func waitForLine(_ tag: String, timeout: Double = 20) -> String? {
        waitForMarkedValue(timeout, tag) { output.get() }
    }

    /// Waits for exit; kills after `timeout`. Returns the exit status.
    func wait(timeout: Double = 20) -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        usleep(50_000)
        return process.terminationStatus
    }
}

/// Sends one line to a Unix control socket and returns the reply line.
func control(_ path: String, _ command: String) throws -> String {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
    let ok = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard ok == 0 else { throw POSIXError(.ECONNREFUSED) }
    let line = Array((command + "\n").utf8)
    _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    // Never wait forever for a reply.
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var reply = [UInt8]()
    var c: UInt8 = 0
    while read(fd, &c, 1) == 1 { if c == 10 { break }; reply.append(c) }
    return String(decoding: reply, as: UTF8.self)
}

/// Runs one of the project's binaries (`xm`, `xend`) against the scratch host `root`, from
/// the repository root (the shipped example configs name paths relative to it, as the
/// README runs them).
func runInRoot(_ root: String, _ name: String, _ args: [String], timeout: Double = 60) throws -> RunResult {
    setenv("XENITH_ROOT", root, 1)
    let cwd = FileManager.default.currentDirectoryPath
    FileManager.default.changeCurrentDirectoryPath(Env.root.path)
    defer { FileManager.default.changeCurrentDirectoryPath(cwd) }
    return try run(Env.binary(name), args, timeout: timeout)
}
