// Engines run domains (DESIGN.md "Two engines, one toolstack"). xend talks to them only
// through `DomainEngineDriver`, so the qemu engine can plug in beside the core.
import CLinux
import DomainConfig
import Foundation
import Spawn
#if canImport(Glibc)
import Glibc
#endif

/// What an engine needs to start one domain.
public struct EngineLaunch: Sendable {
    public var domid: Int
    public var name: String
    public var uuid: String
    public var config: DomainConfiguration
    /// The kernel command line (`DomainConfiguration.kernelCommandLine`).
    public var commandLine: String
    /// Control socket path, stop-status file path, console log, engine's own stderr log.
    public var controlPath: String
    public var statusFile: String
    public var consoleLog: String
    public var engineLog: String
    /// The console ring the engine puts the guest's serial console on (ring memfd,
    /// outEvent, inEvent; see ConsoleBackend.ConsoleRingChannel), nil for none.
    public var consoleFDs: [Int32]? = nil
    /// vhost-user-blk sockets (one blkback each), in the order of the config's disks.
    public var blockSockets: [String] = []
    /// vhost-user-net sockets (one netback each), in the order of the config's vifs; the
    /// MAC is in netback's config space (and on QEMU's device line from the config).
    public var netSockets: [String] = []
    /// Per vif, xend's tap descriptor when the engine emulates the NIC on the tap itself
    /// (qemu: rtl8139, ne2k_pci, …; the socket is "" then), nil for a netback vif.
    public var netTapFDs: [Int32?] = []
    /// qemu engine: blkback's vhost-user socket per disk it serves, by vdev (the other
    /// disks stay QEMU's own drives).
    public var diskSockets: [String: String] = [:]
    /// qemu engine: QEMU's end of the serial socketpair whose other end xenconsoled serves
    /// (`ConsoleSupervisor.createStream`); nil puts the serial line in `consoleLog`.
    public var serialFD: Int32? = nil
}

/// A running engine process, as the registry keeps it (enough to re-adopt it).
public struct EngineProcess: Codable, Sendable, Equatable {
    public var pid: Int32
    /// Field 22 of /proc/PID/stat (start time in clock ticks): tells a reused pid apart.
    public var startTicks: UInt64
    public var controlPath: String
    public var statusFile: String
    /// Size of the engine's stderr log when this process started: its own lines follow
    /// (nil in records of older xends, and for the core).
    public var logOffset: Int? = nil
}

/// Why an engine process ended (the core's status file / exit status).
public enum EngineStop: Sendable, Equatable {
    case poweroff
    case reboot(String)
    case crash(String)
    case destroyed
}

/// A live domain's run state and CPU use.
public struct EngineStatus: Sendable, Equatable {
    public var paused: Bool
    /// Total vCPU time in nanoseconds.
    public var cpuTimeNs: UInt64
}

/// Errors engines raise; `message` is shown to the user as is.
public struct EngineError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// Whether the request was at fault (a missing file, a port in use: 400) rather than
    /// the engine (500).
    public var isBadRequest = false
    public init(_ m: String, badRequest: Bool = false) { message = m; isBadRequest = badRequest }
    public var description: String { message }
}

/// One engine: starts domain processes and drives them. Implementations must be
/// thread-safe; every call may block briefly (a control-socket round trip).
public protocol DomainEngineDriver: Sendable {
    /// `core` or `qemu`.
    var name: String { get }
    /// Starts the domain running (detached: own session and process group).
    /// - Throws: `EngineError` with the engine's own message when it fails to start;
    ///   nothing is left behind then.
    func start(_ launch: EngineLaunch) throws -> EngineProcess
    func pause(_ p: EngineProcess) throws
    func unpause(_ p: EngineProcess) throws
    /// Asks the guest to power off (ACPI power button).
    func requestShutdown(_ p: EngineProcess) throws
    func reboot(_ p: EngineProcess) throws
    /// Stops the domain at once.
    func destroy(_ p: EngineProcess) throws
    func query(_ p: EngineProcess) throws -> EngineStatus
    /// True when `p` is still the process xend started and answers its control socket.
    func adopt(_ p: EngineProcess) -> Bool
    /// Why `p` stopped, after it exited (`waitStatus` is the wait(2) status when xend
    /// was its parent).
    func stopReason(_ p: EngineProcess, waitStatus: Int32?) -> EngineStop
    /// Sets the guest's memory target (`xm mem-set`): the balloon driver in the guest gives
    /// back or takes up RAM until it has `mib` MiB.
    /// - Throws: `EngineError` when the engine has no balloon device (the default).
    func setMemoryTarget(_ p: EngineProcess, mib: Int) throws
}

extension DomainEngineDriver {
    public func setMemoryTarget(_ p: EngineProcess, mib: Int) throws {
        throw EngineError("the \(name) engine has no balloon device: a domain's memory is set when it is created")
    }
}

/// An engine that can add and remove a vhost-user NIC in a running domain.
public protocol NetHotplugDriver: DomainEngineDriver {
    /// Adds a virtio-net device with `mac` served at `socket`, id derived from `devid`.
    func attachNet(_ p: EngineProcess, devid: Int, socket: String, mac: String) throws
    /// Removes the device `attachNet` added.
    func detachNet(_ p: EngineProcess, devid: Int) throws
}


/// Process helpers shared by engines.
public enum ProcessInfo2 {
    /// Start time (clock ticks since boot) of `pid`, nil when it does not exist.
    public static func startTicks(_ pid: Int32) -> UInt64? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        let fields = s[s.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); start time is field 22.
        guard fields.count > 19, let t = UInt64(fields[19]) else { return nil }
        if fields[0] == "Z" { return nil }
        return t
    }

    /// Sends one line to a Unix-socket control server and returns the reply line.
    public static func control(_ path: String, _ command: String, timeoutMs: Int32 = 2000) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw EngineError("socket: \(String(cString: strerror(errno)))") }
        defer { Glibc.close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() where i < p.count - 1 { p[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw EngineError("\(path): \(String(cString: strerror(errno)))") }
        let line = command + "\n"
        _ = line.withCString { write(fd, $0, strlen($0)) }
        var reply: [UInt8] = []
        var c: UInt8 = 0
        while reply.count < 4096 {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeoutMs) > 0 else { throw EngineError("\(path): no reply to \(command)") }
            let n = read(fd, &c, 1)
            if n <= 0 { break }
            if c == 10 { break }
            reply.append(c)
        }
        return String(decoding: reply, as: UTF8.self)
    }
}

/// The core engine: one `xenith-core` process per domain.
public struct CoreEngine: DomainEngineDriver {
    public let name = "core"
    /// Path of the xenith-core binary.
    public let binary: String

    public init(binary: String) { self.binary = binary }

    public func start(_ l: EngineLaunch) throws -> EngineProcess {
        guard let kernel = l.config.kernel else { throw EngineError("No kernel specified", badRequest: true) }
        guard access(kernel, R_OK) == 0 else { throw EngineError("Kernel image does not exist: \(kernel)", badRequest: true) }
        if let r = l.config.ramdisk, access(r, R_OK) != 0 { throw EngineError("Kernel ramdisk does not exist: \(r)", badRequest: true) }
        guard access(binary, X_OK) == 0 else { throw EngineError("\(binary): the core engine binary is missing") }
        unlink(l.controlPath); unlink(l.statusFile)
        var args = [binary, "--kernel", kernel]
        if let r = l.config.ramdisk { args += ["--ramdisk", r] }
        args += ["--extra", l.commandLine, "--memory", String(l.config.memory), "--vcpus", String(l.config.vcpus),
                 "--name", l.name, "--control", l.controlPath, "--status-file", l.statusFile, "--no-input"]
        for sock in l.blockSockets { args += ["--vhost-user-blk", sock] }
        for sock in l.netSockets where !sock.isEmpty { args += ["--vhost-user-net", sock] }
        if l.consoleFDs != nil {
            args += ["--console-ring-fd", String(coreConsoleFDs.ring), "--console-out-fd", String(coreConsoleFDs.out),
                     "--console-in-fd", String(coreConsoleFDs.input)]
        }
        // Own session and process group, so the domain outlives xend; the console ring at
        // fixed numbers (coreConsoleFDs); COM1 to the console log when there is no ring.
        var o = SpawnOptions(stdout: l.consoleFDs == nil ? .file(l.consoleLog) : .devNull,
                             stderr: .file(l.engineLog, append: false))
        if let fds = l.consoleFDs {
            o.descriptors = zip(fds.prefix(3), [coreConsoleFDs.ring, coreConsoleFDs.out, coreConsoleFDs.input])
                .map { (source: $0.0, target: $0.1) }
        }
        let pid: pid_t
        do { pid = try spawnProcess(args, o) } catch { throw EngineError(error.message) }
        // Wait until the control socket answers, or the core gives up.
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            var st: Int32 = 0
            if waitpid(pid, &st, WNOHANG) == pid {
                // The guest already stopped (e.g. panicked at once): a started domain whose
                // supervisor will apply on_* from the status file.
                if let s = try? String(contentsOfFile: l.statusFile, encoding: .utf8), !s.isEmpty {
                    return EngineProcess(pid: pid, startTicks: 0, controlPath: l.controlPath, statusFile: l.statusFile)
                }
                unlink(l.controlPath); unlink(l.statusFile)
                let text = (try? String(contentsOfFile: l.engineLog, encoding: .utf8)) ?? ""
                let msg = text.split(separator: "\n").last(where: { !$0.contains("stopped:") }).map(String.init)
                    ?? "the core exited during start-up (status \(st >> 8))"
                throw EngineError(msg.hasPrefix("xenith-core: ") ? String(msg.dropFirst(13)) : msg)
            }
            if let r = try? ProcessInfo2.control(l.controlPath, "query", timeoutMs: 200), r.hasPrefix("ok") {
                return EngineProcess(pid: pid, startTicks: ProcessInfo2.startTicks(pid) ?? 0,
                                     controlPath: l.controlPath, statusFile: l.statusFile)
            }
            usleep(10_000)
        }
        kill(pid, SIGKILL)
        var st: Int32 = 0
        waitpid(pid, &st, 0)
        unlink(l.controlPath); unlink(l.statusFile)
        throw EngineError("the core did not answer on \(l.controlPath) within 10 s")
    }

    func command(_ p: EngineProcess, _ c: String) throws {
        let r = try ProcessInfo2.control(p.controlPath, c)
        guard r.hasPrefix("ok") else { throw EngineError("core: \(c): \(r)") }
    }

    public func pause(_ p: EngineProcess) throws { try command(p, "pause") }
    public func unpause(_ p: EngineProcess) throws { try command(p, "unpause") }
    public func requestShutdown(_ p: EngineProcess) throws { try command(p, "shutdown") }
    public func reboot(_ p: EngineProcess) throws { try command(p, "reboot") }
    public func destroy(_ p: EngineProcess) throws {
        if (try? command(p, "destroy")) == nil { kill(p.pid, SIGTERM) }
    }

    public func query(_ p: EngineProcess) throws -> EngineStatus {
        let r = try ProcessInfo2.control(p.controlPath, "query")
        guard r.hasPrefix("ok") else { throw EngineError("core: query: \(r)") }
        var st = EngineStatus(paused: false, cpuTimeNs: 0)
        for w in r.split(separator: " ") {
            if w == "state=paused" { st.paused = true }
            if w.hasPrefix("vcpu_time_ns=") {
                st.cpuTimeNs = w.dropFirst(13).split(separator: ",").compactMap { UInt64($0) }.reduce(0, +)
            }
        }
        return st
    }

    public func adopt(_ p: EngineProcess) -> Bool {
        guard let t = ProcessInfo2.startTicks(p.pid), t == p.startTicks else { return false }
        return (try? ProcessInfo2.control(p.controlPath, "query", timeoutMs: 1000))?.hasPrefix("ok") == true
    }

    public func stopReason(_ p: EngineProcess, waitStatus: Int32?) -> EngineStop {
        if let line = try? String(contentsOfFile: p.statusFile, encoding: .utf8) {
            let t = line.trimmingCharacters(in: .whitespacesAndNewlines)
            let rest = t.split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
            if t == "poweroff" { return .poweroff }
            if t.hasPrefix("reboot") { return .reboot(rest) }
            if t.hasPrefix("crash") { return .crash(rest) }
            if t == "destroyed" { return .destroyed }
        }
        if let s = waitStatus, s & 0x7f == 0 {
            switch (s >> 8) & 0xff {
            case 0: return .poweroff
            case 2: return .reboot("exit status 2")
            case 4: return .destroyed
            default: return .crash("exit status \((s >> 8) & 0xff)")
            }
        }
        return .crash("the core process died")
    }
}
