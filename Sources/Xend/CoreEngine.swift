// The core engine behind DomainEngineDriver: one `xenith-core` process per domain, driven
// over its control socket (CoreControl's commands and status line).
import CoreControl
import DomainConfig
import Foundation
import Spawn
#if canImport(Glibc)
import Glibc
#endif

/// The core engine: one `xenith-core` process per domain.
public struct CoreEngine: DomainEngineDriver {
    public let name = "core"
    /// Path of the xenith-core binary.
    public let binary: String

    public init(binary: String) { self.binary = binary }

    /// Save, restore and live migration (CoreEngineState.swift: pre-copy over KVM's dirty log), the in-core virtio-balloon every core domain
    /// has (`--balloon`), SysRq and core dumps (CoreEngineCommands.swift).
    public var capabilities: EngineCapabilities { [.save, .liveMigrate, .balloon, .sysrq, .dumpCore] }

    public func start(_ l: EngineLaunch) throws -> EngineProcess {
        guard let kernel = l.config.kernel else { throw EngineError("No kernel specified", badRequest: true) }
        try EngineError.checkBootFile(kernel, "Kernel image")
        if let r = l.config.ramdisk { try EngineError.checkBootFile(r, "Kernel ramdisk") }
        guard access(binary, X_OK) == 0 else { throw EngineError("\(binary): the core engine binary is missing") }
        unlink(l.controlPath); unlink(l.statusFile)
        var args = [binary, "--kernel", kernel]
        if let r = l.config.ramdisk { args += ["--ramdisk", r] }
        // RAM is max(memory, maxmem), as on the qemu engine: after `xm mem-set` the stored
        // configuration has the target as `memory` and the RAM as `maxmem`, and a restore must
        // get the RAM its saved state holds. The balloon takes a new guest down to `memory`.
        let ram = max(l.config.memory, l.config.maxmem ?? 0)
        args += ["--extra", l.commandLine, "--memory", String(ram), "--vcpus", String(l.config.vcpus),
                 "--name", l.name, "--control", l.controlPath, "--status-file", l.statusFile, "--no-input", "--balloon"]
        if l.incoming { args.append("--incoming") }
        for sock in l.blockSockets { args += ["--vhost-user-blk", sock] }
        for sock in l.netSockets where !sock.isEmpty { args += ["--vhost-user-net", sock] }
        if l.consoleFDs != nil {
            args += ["--console-ring-fd", String(coreConsoleFDs.ring), "--console-out-fd", String(coreConsoleFDs.out),
                     "--console-in-fd", String(coreConsoleFDs.input)]
        }
        // Own session and process group, so the domain outlives xend; the console ring at
        // fixed numbers (coreConsoleFDs); COM1 to the console log when there is no ring.
        var o = SpawnOptions(stdout: l.consoleFDs == nil ? .file(l.consoleLog, mode: 0o640) : .devNull,
                             stderr: .file(l.engineLog, append: false))
        if let fds = l.consoleFDs {
            o.descriptors = zip(fds.prefix(3), [coreConsoleFDs.ring, coreConsoleFDs.out, coreConsoleFDs.input])
                .map { (source: $0.0, target: $0.1) }
        }
        let pid: pid_t
        do { pid = try spawnProcess(args, o) } catch { throw EngineError(error.message) }
        FaultInjection.crashPoint("engine-spawned")   // before the core binds its control socket
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
            if let r = try? ProcessInfo2.control(l.controlPath, CoreControlCommand.query.rawValue, timeoutMs: 200),
               CoreControlReply.isOK(r) {
                let p = EngineProcess(pid: pid, startTicks: ProcessInfo2.startTicks(pid) ?? 0,
                                      controlPath: l.controlPath, statusFile: l.statusFile)
                // A restored guest brings its balloon target in its state.
                if ram > l.config.memory && !l.incoming { try? setMemoryTarget(p, mib: l.config.memory) }
                return p
            }
            usleep(10_000)
        }
        kill(pid, SIGKILL)
        var st: Int32 = 0
        waitpid(pid, &st, 0)
        unlink(l.controlPath); unlink(l.statusFile)
        throw EngineError("the core did not answer on \(l.controlPath) within 10 s")
    }

    func command(_ p: EngineProcess, _ c: CoreControlCommand) throws {
        let r = try ProcessInfo2.control(p.controlPath, c.rawValue)
        guard CoreControlReply.isOK(r) else { throw EngineError("core: \(c.rawValue): \(r)") }
    }

    public func pause(_ p: EngineProcess) throws { try command(p, .pause) }
    public func unpause(_ p: EngineProcess) throws { try command(p, .unpause) }
    public func requestShutdown(_ p: EngineProcess) throws { try command(p, .shutdown) }
    public func reboot(_ p: EngineProcess) throws { try command(p, .reboot) }
    public func destroy(_ p: EngineProcess) throws {
        if (try? command(p, .destroy)) == nil { kill(p.pid, SIGTERM) }
    }

    public func query(_ p: EngineProcess) throws -> EngineStatus {
        let r = try ProcessInfo2.control(p.controlPath, CoreControlCommand.query.rawValue)
        guard let st = CoreControlStatus(parsing: r) else { throw EngineError("core: query: \(r)") }
        return EngineStatus(paused: st.state == .paused, cpuTimeNs: st.totalVcpuTimeNs)
    }

    /// From the `query` line's `vcpu_tids` (the core's vCPUs are all online; it has no
    /// vCPU hot-plug, so ``setVcpuCount(_:count:config:)`` keeps the refusal).
    public func vcpuThreads(_ p: EngineProcess) throws -> [Int: Int32] {
        let r = try ProcessInfo2.control(p.controlPath, CoreControlCommand.query.rawValue)
        guard let st = CoreControlStatus(parsing: r) else { throw EngineError("core: query: \(r)") }
        guard !st.vcpuThreadIDs.isEmpty else { throw EngineError("this core does not report its vCPU threads (restart the domain)") }
        var out: [Int: Int32] = [:]
        for (i, t) in st.vcpuThreadIDs.enumerated() where t > 0 { out[i] = t }
        return out
    }

    public func adopt(_ p: EngineProcess) -> Bool {
        guard let t = ProcessInfo2.startTicks(p.pid), t == p.startTicks else { return false }
        return (try? ProcessInfo2.control(p.controlPath, CoreControlCommand.query.rawValue, timeoutMs: 1000))
            .map(CoreControlReply.isOK) == true
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
