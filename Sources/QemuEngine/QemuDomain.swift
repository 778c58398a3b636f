// One QEMU domain process: spawned detached, driven through QMP, its stop reason recorded
// in a status file, re-adoptable after xend restarts.
import Foundation
import Spawn
#if canImport(Glibc)
import Glibc
#endif

/// Files of one QEMU domain.
public struct QemuDomainPaths: Sendable, Hashable, Codable {
    /// QMP socket QEMU listens on.
    public var qmpSocket: String
    /// QEMU's `-pidfile`.
    public var pidfile: String
    /// Why the domain stopped, one line in the core's format: `poweroff`, `reboot REASON`,
    /// `crash REASON`, `destroyed`.
    public var statusFile: String
    /// QEMU's stdout and stderr (appended).
    public var stderrLog: String

    public init(qmpSocket: String, pidfile: String, statusFile: String, stderrLog: String) {
        self.qmpSocket = qmpSocket
        self.pidfile = pidfile
        self.statusFile = statusFile
        self.stderrLog = stderrLog
    }

    /// `ROOT/run/xenith/qemu-DOMID.{qmp,pid,status}` and `ROOT/var/log/xen/qemu-dm-NAME.log`
    /// (the log name Xen's qemu-dm used). `root` is `$XENITH_ROOT` (`/` by default).
    public static func under(root: String, domid: Int, name: String) -> QemuDomainPaths {
        let r = root.hasSuffix("/") ? String(root.dropLast()) : root
        let run = "\(r)/run/xenith/qemu-\(domid)"
        return QemuDomainPaths(qmpSocket: run + ".qmp", pidfile: run + ".pid", statusFile: run + ".status",
                               stderrLog: "\(r)/var/log/xen/qemu-dm-\(name).log")
    }
}

/// Why a QEMU domain stopped.
public enum QemuStop: Sendable, Equatable {
    case poweroff
    /// A guest reset (`guest-reset`) or `xm reboot` (`host-qmp-system-reset`).
    case reboot(String)
    /// The guest panicked, or QEMU died on its own (the reason then holds its last stderr lines).
    case crash(String)
    case destroyed
}

/// QEMU's run state as `query-status` reports it, reduced to what xm shows.
public enum QemuRunState: String, Sendable, Equatable {
    case running, paused, shutdown, crashed, other
}

/// Errors of starting or driving a QEMU domain; `message` is shown to the user as is.
public struct QemuEngineError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ m: String) { message = m }
    public var description: String { message }
}

/// One running `qemu-system-x86_64` and its QMP session.
///
/// Lifecycle: `launch` or `adopt` → commands → the guest stops (SHUTDOWN, GUEST_PANICKED:
/// the status file is written, then QEMU is told to `quit`) or `destroy` → `wait` →
/// `stopReason` → `removeFiles`.
public final class QemuDomain: @unchecked Sendable {
    public let pid: pid_t
    /// Start time of `pid` (field 22 of /proc/PID/stat, clock ticks): tells a reused pid apart.
    public let startTicks: UInt64
    public let paths: QemuDomainPaths
    /// The QMP session (events go to `onEvent` given at launch/adopt).
    public let qmp: QMPClient
    /// Whether this process spawned QEMU (and so must reap it unless told otherwise).
    public let isChild: Bool
    private let exitStatus = Mutex<Int32?>(nil)

    private init(pid: pid_t, paths: QemuDomainPaths, qmp: QMPClient, isChild: Bool) {
        self.pid = pid
        self.paths = paths
        self.qmp = qmp
        self.isChild = isChild
        self.startTicks = QemuDomain.startTicks(pid) ?? 0
    }

    /// The path of `qemu-system-x86_64` on `PATH` (or `name` itself when it has a `/`).
    /// - Throws: `QemuEngineError("qemu-system-x86_64 not found ...")`.
    public static func findBinary(_ name: String = "qemu-system-x86_64", path: String? = nil) throws -> String {
        if name.contains("/") {
            guard access(name, X_OK) == 0 else { throw QemuEngineError("\(name): not found (install the Debian package qemu-system-x86)") }
            return name
        }
        let dirs = (path ?? ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        for d in dirs where access("\(d)/\(name)", X_OK) == 0 { return "\(d)/\(name)" }
        throw QemuEngineError("\(name) not found on PATH (install the Debian package qemu-system-x86)")
    }

    /// Spawns QEMU detached (own session, so it outlives the caller), stdout and stderr
    /// appended to `paths.stderrLog`, descriptors `passFDs` inherited at the same numbers,
    /// then connects QMP.
    ///
    /// - Parameters:
    ///   - arguments: from `QemuCommandLine.arguments` (its `-qmp`/`-pidfile` must be `paths`').
    ///   - memlockBytes: RLIMIT_MEMLOCK for QEMU (VFIO pins guest RAM against it); nil: xend's.
    ///   - onEvent: every QMP event, on the QMP reader thread, after this type's own handling.
    /// - Throws: `QemuEngineError` with QEMU's last stderr line when it exits during start-up,
    ///   or when QMP does not answer within `timeout` seconds; QEMU is killed and the
    ///   socket, pidfile and status file are removed then.
    public static func launch(binary: String, arguments: [String], passFDs: [Int32] = [], paths: QemuDomainPaths,
                              memlockBytes: UInt64? = nil, timeout: Double = 15, onEvent: @escaping @Sendable (QMPEvent) -> Void = { _ in }) throws -> QemuDomain {
        for p in [paths.qmpSocket, paths.pidfile, paths.statusFile, paths.stderrLog] {
            let dir = (p as NSString).deletingLastPathComponent
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        unlink(paths.qmpSocket); unlink(paths.pidfile); unlink(paths.statusFile)
        let logStart = (try? FileManager.default.attributesOfItem(atPath: paths.stderrLog)[.size] as? Int) ?? 0

        // Own session; stdout and stderr appended to the log; exactly `passFDs` inherited, at
        // their own numbers (nothing else of ours leaks into QEMU: sockets held by QEMU
        // would outlive us).
        let pid: pid_t
        do {
            var options = SpawnOptions(stdout: .stderr, stderr: .file(paths.stderrLog, mode: 0o640),
                                       descriptors: passFDs.map { (source: $0, target: $0) })
            options.memlockBytes = memlockBytes
            pid = try spawnProcess([binary] + arguments, options)
        } catch { throw QemuEngineError(error.message) }

        let deadline = Date().addingTimeInterval(timeout)
        var lastError = "no QMP socket"
        while Date() < deadline {
            var st: Int32 = 0
            if waitpid(pid, &st, WNOHANG) == pid {
                cleanupFailed(paths)
                let tail = stderrLines(paths.stderrLog, from: logStart, last: 1).first ?? "exit status \(st >> 8)"
                throw QemuEngineError("qemu-system-x86_64 failed to start: \(stripTimestamp(tail))")
            }
            if access(paths.qmpSocket, F_OK) == 0 {
                let box = Box()
                do {
                    let qmp = try QMPClient(path: paths.qmpSocket, timeout: 2,
                                            onEvent: { ev in box.domain?.handle(ev); onEvent(ev) })
                    let d = QemuDomain(pid: pid, paths: paths, qmp: qmp, isChild: true)
                    box.domain = d
                    return d
                } catch {
                    lastError = "\(error)"
                }
            }
            usleep(5_000)
        }
        kill(pid, SIGKILL)
        var st: Int32 = 0
        waitpid(pid, &st, 0)
        cleanupFailed(paths)
        throw QemuEngineError("qemu-system-x86_64 did not answer QMP on \(paths.qmpSocket) within \(Int(timeout)) s (\(lastError))")
    }

    /// Re-attaches to a QEMU started earlier (by an xend that has since restarted).
    ///
    /// - Parameter startTicks: the recorded start time, when known: a pid reused by another
    ///   process is refused.
    /// - Throws: `QemuEngineError` when the pidfile's process is gone, is not QEMU on that QMP
    ///   socket, or QMP does not answer.
    public static func adopt(paths: QemuDomainPaths, startTicks: UInt64? = nil,
                             onEvent: @escaping @Sendable (QMPEvent) -> Void = { _ in }) throws -> QemuDomain {
        guard let text = try? String(contentsOfFile: paths.pidfile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw QemuEngineError("\(paths.pidfile): no pid")
        }
        guard let t = QemuDomain.startTicks(pid), startTicks == nil || startTicks == t else {
            throw QemuEngineError("qemu process \(pid) is gone")
        }
        let cmdline = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
        guard String(decoding: cmdline, as: UTF8.self).contains(paths.qmpSocket) else {
            throw QemuEngineError("process \(pid) is not the QEMU of \(paths.qmpSocket)")
        }
        let box = Box()
        let qmp = try QMPClient(path: paths.qmpSocket, timeout: 2, onEvent: { ev in box.domain?.handle(ev); onEvent(ev) })
        let d = QemuDomain(pid: pid, paths: paths, qmp: qmp, isChild: false)
        box.domain = d
        // A guest that stopped while nobody listened: record and finish it now.
        if let s = try? qmp.queryStatus() {
            switch s.status {
            case "shutdown": d.finish("poweroff")
            case "guest-panicked": d.finish("crash guest panicked")
            default: break
            }
        }
        return d
    }

    // MARK: Commands.

    /// Pauses every vCPU (QMP `stop`).
    public func pause() throws { try qmp.stop() }
    /// Resumes (QMP `cont`).
    public func unpause() throws { try qmp.cont() }
    /// Presses the ACPI power button (QMP `system_powerdown`); the guest decides.
    public func powerdown() throws { try qmp.systemPowerdown() }
    /// Resets the machine (QMP `system_reset`). With `-no-reboot` QEMU reports it as
    /// SHUTDOWN `host-qmp-system-reset`: the domain stops with `.reboot` and xend applies
    /// on_reboot, as `xm reboot` does.
    public func reset() throws { try qmp.systemReset() }
    /// Sets the balloon target, MiB.
    public func setMemory(mib: Int) throws { try qmp.balloon(bytes: UInt64(mib) << 20) }

    /// Run state (QMP `query-status`).
    public func state() throws -> QemuRunState {
        switch try qmp.queryStatus().status {
        case "running": .running
        case "paused", "suspended", "prelaunch", "inmigrate", "postmigrate", "finish-migrate", "save-vm", "restore-vm", "debug":
            .paused
        case "shutdown": .shutdown
        case "guest-panicked", "internal-error", "io-error": .crashed
        default: .other
        }
    }

    /// Host thread ids of the vCPUs (QMP `query-cpus-fast`), in vCPU order.
    public func vcpuThreads() throws -> [Int32] {
        try qmp.queryCPUs().sorted { $0.index < $1.index }.map(\.threadID)
    }

    /// Total CPU time of the vCPU threads, nanoseconds (from /proc/PID/task/TID/schedstat).
    public func vcpuTimeNs() -> UInt64 {
        guard let tids = try? vcpuThreads() else { return 0 }
        return tids.reduce(0) { sum, tid in
            let s = (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/schedstat", encoding: .utf8)) ?? ""
            return sum + (s.split(separator: " ").first.flatMap { UInt64($0) } ?? 0)
        }
    }

    /// Stops the domain at once: records `destroyed`, QMP `quit`, SIGKILL after `timeout`
    /// seconds if QEMU is still there, then waits for it (reaping it when `reap` and this
    /// process is its parent; pass false when another supervisor reaps it).
    public func destroy(timeout: Double = 5, reap: Bool = true) {
        writeStatus("destroyed", overwrite: false)
        try? qmp.execute("quit", timeout: timeout)
        if !wait(timeout: timeout, reap: reap) {
            kill(pid, SIGKILL)
            _ = wait(timeout: timeout, reap: reap)
        }
    }

    /// Waits up to `timeout` seconds for QEMU to exit (reaping it when this process is its
    /// parent and `reap` is true); true once it has.
    public func wait(timeout: Double, reap: Bool = true) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if hasExited(reap: reap) { return true }
            usleep(10_000)
        } while Date() < deadline
        return hasExited(reap: reap)
    }

    /// Whether QEMU has exited (non-blocking).
    public func hasExited(reap: Bool = true) -> Bool {
        if exitStatus.withLock({ $0 }) != nil { return true }
        if reap && isChild {
            var st: Int32 = 0
            let r = waitpid(pid, &st, WNOHANG)
            if r == pid { exitStatus.withLock { $0 = st }; return true }
            if r < 0 && errno == ECHILD { return QemuDomain.startTicks(pid) != startTicks }
            return false
        }
        return QemuDomain.startTicks(pid) != startTicks
    }

    /// Why the domain stopped (after it exited): the status file, else a crash carrying
    /// QEMU's last stderr lines.
    public func stopReason() -> QemuStop {
        QemuDomain.stopReason(paths: paths)
    }

    /// `stopReason` from the files alone (a domain nobody holds a `QemuDomain` for).
    ///
    /// A crash of QEMU itself (no status file, or QEMU ended by a signal) carries QEMU's
    /// last `tailLines` log lines after byte `logOffset` (the log's size when this QEMU
    /// started, so lines of an earlier QEMU of the same domain name are not blamed),
    /// joined with ` | `; a guest panic carries none.
    public static func stopReason(paths: QemuDomainPaths, tailLines: Int = 3, logOffset: Int = 0) -> QemuStop {
        let tail = { stderrLines(paths.stderrLog, from: logOffset, last: tailLines).map(stripTimestamp) }
        if let line = try? String(contentsOfFile: paths.statusFile, encoding: .utf8) {
            let t = line.trimmingCharacters(in: .whitespacesAndNewlines)
            let rest = t.split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
            if t == "poweroff" { return .poweroff }
            if t.hasPrefix("reboot") { return .reboot(rest) }
            if t.hasPrefix("crash") {
                let lines = rest == "guest panicked" ? [] : tail()
                return .crash(lines.isEmpty ? rest : rest + ": " + lines.joined(separator: " | "))
            }
            if t == "destroyed" { return .destroyed }
        }
        let lines = tail()
        return .crash(lines.isEmpty ? "qemu-system-x86_64 died" : "qemu-system-x86_64 died: " + lines.joined(separator: " | "))
    }

    /// The last `n` lines of QEMU's log.
    public func stderrTail(_ n: Int = 5) -> [String] { QemuDomain.stderrLines(paths.stderrLog, from: 0, last: n) }

    /// Removes the QMP socket, pidfile and status file (the log stays).
    public func removeFiles() {
        qmp.close()
        unlink(paths.qmpSocket); unlink(paths.pidfile); unlink(paths.statusFile)
    }

    // MARK: Events.

    /// SHUTDOWN and GUEST_PANICKED end the domain: the reason goes to the status file, then
    /// QEMU (kept alive by -no-shutdown / panic=pause until the reason is safe) is told to quit.
    func handle(_ ev: QMPEvent) {
        switch ev.name {
        case "SHUTDOWN":
            switch ev.reason ?? "" {
            case "guest-shutdown", "host-ui": finish("poweroff")
            case "host-signal": finish("crash qemu-system-x86_64 was terminated by a signal")
            case "host-qmp-quit": writeStatus("destroyed", overwrite: false)
            case "guest-panic": finish("crash guest panicked")
            case let r: finish(r.contains("reset") ? "reboot \(r)" : "poweroff")
            }
        case "GUEST_PANICKED":
            finish("crash guest panicked")
        default:
            break
        }
    }

    /// Records `status` (first writer wins) and tells QEMU to quit, off the reader thread.
    func finish(_ status: String) {
        writeStatus(status, overwrite: false)
        let q = qmp
        Thread.detachNewThread { try? q.execute("quit", timeout: 5) }
    }

    private let statusLock = NSLock()
    func writeStatus(_ s: String, overwrite: Bool) {
        statusLock.lock(); defer { statusLock.unlock() }
        if !overwrite && access(paths.statusFile, F_OK) == 0 { return }
        try? (s + "\n").write(toFile: paths.statusFile, atomically: true, encoding: .utf8)
    }

    // MARK: Helpers.

    final class Box: @unchecked Sendable { var domain: QemuDomain? }

    static func cleanupFailed(_ p: QemuDomainPaths) {
        unlink(p.qmpSocket); unlink(p.pidfile); unlink(p.statusFile)
    }

    /// Start time of `pid` in clock ticks, nil when gone or a zombie.
    public static func startTicks(_ pid: pid_t) -> UInt64? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        let f = s[s.index(after: close)...].split(separator: " ")
        guard f.count > 19, f[0] != "Z", let t = UInt64(f[19]) else { return nil }
        return t
    }

    static func stderrLines(_ path: String, from offset: Int, last n: Int) -> [String] {
        guard let data = FileManager.default.contents(atPath: path), data.count >= offset else { return [] }
        let text = String(decoding: data[offset...], as: UTF8.self)
        return Array(text.split(separator: "\n").map(String.init).filter { !$0.isEmpty }.suffix(n))
    }

    /// `2026-11-30T03:00:00.123456Z qemu-system-x86_64: msg` → `msg` (`-msg timestamp=on`).
    static func stripTimestamp(_ line: String) -> String {
        var s = Substring(line)
        if let sp = s.firstIndex(of: " "), s.first?.isNumber == true, s[..<sp].contains("T") {
            s = s[s.index(after: sp)...]
        }
        for p in ["qemu-system-x86_64: ", "qemu: "] where s.hasPrefix(p) { s = s.dropFirst(p.count) }
        return String(s)
    }
}

/// A value behind a lock.
final class Mutex<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ v: T) { value = v }
    func withLock<R>(_ f: (inout T) -> R) -> R { lock.lock(); defer { lock.unlock() }; return f(&value) }
}

