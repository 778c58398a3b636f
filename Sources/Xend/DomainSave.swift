// `xm save` and `xm restore` (Xen's XendCheckpoint.save/restore, DESIGN.md "Save, restore
// and migration (round 2)"). xend opens the file and makes every descriptor; the sandboxed
// migration service (MigrationService.swift) writes or checks Xen's envelope and Xenith's
// checksummed frames; the engine writes or reads its own state stream through a pipe.
//
// Nothing lost: a save that fails leaves the guest running where it was and no file (an
// existing file is replaced only by a complete one, by rename); a restore checks the
// whole file before anything starts and removes everything it made when a later step
// fails. Every wait is bounded (README.md "Save and restore").
import CLinux
import DomainConfig
import Foundation
import Migration
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

extension DomainManager {
    /// Seconds the migration service has, once the engine is done, for its last messages.
    static let serviceFinishTimeout = 30.0
    /// Save files up to this size restore through a memfd (the engine reads a file),
    /// larger ones through a pipe (bytes).
    static let memoryStateLimit: off_t = 1 << 30
    /// A save's engine pipe holds one frame's payload (bytes): QEMU, stopped and writing as
    /// fast as it can, and the service trade 1 MiB per wake-up instead of 64 KiB (save of
    /// 256 MiB: 0.12 s against 0.16 s, bench/save_restore.py). Live migration keeps the
    /// kernel's default: with 1 MiB its corrupt-frame failure case (LiveMigrationTests)
    /// waited out the 30 s stall timeout.
    static let saveStreamPipeBytes = 1 << 20

    /// `xm save [-c] DOM FILE`: writes the domain's state to `file`, then destroys the
    /// domain (or, with `checkpoint`, lets it run on).
    /// - Returns: the domain as it was before the save.
    /// - Throws: `XendError`: 404 no such domain; 409 not running, already being saved, or
    ///   its engine cannot save it now (``DomainEngineDriver/stateTransferRefusal(_:)``);
    ///   400 the file cannot be created; 503 the engine cannot save or the migration
    ///   service is missing; 500 the save failed (the domain keeps running, no file left).
    public func save(_ dom: String, file: String, checkpoint: Bool) throws(XendError) -> DomainInfo {
        let (r, p, engine) = try live(dom, for: "save")
        guard engine.capabilities.contains(.save) else {
            throw XendError(.unavailable, "Cannot save domain \(r.name): the \(engine.name) engine cannot save a domain's state")
        }
        if let why = engine.stateTransferRefusal(p) { throw XendError(.conflict, "Cannot save domain \(r.name): \(why)") }
        guard let service = migration else {
            throw XendError(.unavailable, "Cannot save domain \(r.name): the migration service is not installed beside xend")
        }
        guard file.hasPrefix("/") else { throw XendError(.badRequest, "xm save: the file must be an absolute path: \(file)") }
        let target = try ReplaceablePath.resolve(file, command: "xm save", kind: "a save file")
        let before = info(r, long: false)
        var phases = PhaseClock()
        let key = ReplaceablePath.transferKey(target)
        guard transfers.begin(kind: "save", file: key, domain: r.name, domid: r.domid) else {
            throw XendError(.conflict, "Domain \(r.name) is already being saved, or \(file) is in use by another save or restore")
        }
        defer { transfers.end(file: key) }
        // The cached run state would show the stopped vCPUs for up to a second afterwards.
        statuses[r.domid] = nil
        defer { statuses[r.domid] = nil }

        // The new file is written beside the old one and renamed over it when complete.
        let dir = (target as NSString).deletingLastPathComponent
        let partial = dir + "/." + (target as NSString).lastPathComponent + ".partial-\(r.domid)"
        let fileFD = open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fileFD >= 0 else {
            throw XendError(.badRequest, "xm save: Unable to create file \(file): \(String(cString: strerror(errno)))")
        }
        var kept = false
        defer { if !kept { unlink(partial) } }
        var stream: [Int32] = [-1, -1]
        guard streamPipe(&stream, capacity: Self.saveStreamPipeBytes) else {
            close(fileFD)
            throw XendError(.internalError, "Save failed on domain \(r.name): pipe: \(String(cString: strerror(errno)))")
        }
        let run: MigrationRun
        do { run = try service.start(.save, engine: stream[0], file: fileFD) } catch {
            close(fileFD); close(stream[0]); close(stream[1])
            throw error
        }
        close(fileFD); close(stream[0])
        run.onProgress = { [transfers] bytes, rate in transfers.progress(file: key, bytes: bytes, bytesPerSecond: rate) }
        dmesg("Domain \(r.name) (\(r.domid)): saving to \(file)")
        phases.mark("service")

        // The SXP names its engine, so the restore picks the same one.
        let cfg = Self.transferConfiguration(r, engine: engine.name)
        let wasRunning: Bool
        do throws(XendError) {
            try run.send(.config(cfg.toSXP().description))
            do { wasRunning = try engine.saveState(p, into: stream[1]) { _ in } }
            catch { throw XendError(.internalError, "\(error)") }
        } catch {
            close(stream[1])
            // A service that failed first (a full disk) knows the better reason.
            let why = Self.serviceReason(run) ?? error.message
            try? run.send(.abort("xend: \(error.message)"))
            run.finish(timeout: 5)
            dmesg("Domain \(r.name) (\(r.domid)): save failed: \(why)")
            throw XendError(.internalError, "Save failed on domain \(r.name): \(why)")
        }
        close(stream[1])
        phases.mark("engine")

        // The engine wrote everything: the service must have drained it; then commit.
        do throws(XendError) {
            let drained = try run.next(timeout: Self.serviceFinishTimeout)
            guard case .drained = drained else { throw XendError(.internalError, Self.describe(drained)) }
            try run.send(.commit)
            let last = try run.next(timeout: Self.serviceFinishTimeout)
            guard case .done(let summary) = last else { throw XendError(.internalError, Self.describe(last)) }
            run.finish(timeout: 5)
            guard rename(partial, target) == 0 else {
                throw XendError(.internalError, "rename to \(file): \(String(cString: strerror(errno)))")
            }
            kept = true
            phases.mark("commit")
            let secs = Double(summary.microseconds) / 1e6
            dmesg("Domain \(r.name) (\(r.domid)): saved to \(file): \(summary.wireBytes) bytes in \(String(format: "%.2f", secs)) s")
        } catch {
            try? run.send(.abort("xend: \(error.message)"))
            run.finish(timeout: 5)
            if wasRunning { try? engine.unpause(p) }
            dmesg("Domain \(r.name) (\(r.domid)): save failed: \(error.message)")
            throw XendError(.internalError, "Save failed on domain \(r.name): \(error.message)")
        }

        if checkpoint {
            if wasRunning {
                do { try engine.unpause(p) } catch {
                    throw XendError(.internalError, "Domain \(r.name) was saved to \(file) but could not be resumed: \(error)")
                }
            }
        } else {
            _ = try destroy(String(r.domid))
        }
        phases.mark(checkpoint ? "resume" : "destroy")
        dmesg("Domain \(r.name): save phases: \(phases.summary)")
        return before
    }

    /// `xm restore [-p] FILE`: checks the whole save file, creates the domain its SXP
    /// describes with its devices (the engine waiting for the state), streams the state in
    /// and resumes the guest (unless `paused`).
    /// - Throws: `XendError`: 400 unreadable or not a valid guest state file (nothing was
    ///   started), a configuration `create` would refuse, or a path `IncomingPaths` refuses; 409 a domain of that name
    ///   exists; 503 the engine cannot restore or the migration service is missing; 500 the
    ///   engine or the service failed (the new domain is removed).
    public func restore(file: String, paused: Bool) throws(XendError) -> DomainInfo {
        guard let service = migration else {
            throw XendError(.unavailable, "Cannot restore: the migration service is not installed beside xend")
        }
        guard file.hasPrefix("/") else { throw XendError(.badRequest, "xm restore: the file must be an absolute path: \(file)") }
        let fileFD = open(file, O_RDONLY | O_CLOEXEC)
        guard fileFD >= 0 else {
            throw XendError(.badRequest, "xm restore: Unable to read file \(file): \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard fstat(fileFD, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            close(fileFD)
            throw XendError(.badRequest, "xm restore: \(file) is not a regular file")
        }
        var phases = PhaseClock()
        // Keyed as a save to this file is, so a save and a restore of one file through
        // different links see each other.
        let key = ReplaceablePath.transferKey(file)
        guard transfers.begin(kind: "restore", file: key, domain: "", domid: nil) else {
            close(fileFD)
            throw XendError(.conflict, "\(file) is in use by another save or restore")
        }
        defer { transfers.end(file: key) }
        // A state that fits in memory goes through a memfd the service fills while the
        // engine starts, and which the engine then reads as a file (as raw QEMU's
        // `-incoming` from a file: no pipe hand-offs, which cost QEMU ~0.5 s per 100 MB);
        // a larger one streams through a pipe.
        let viaMemory = st.st_size <= Self.memoryStateLimit
        var stream: [Int32] = [-1, -1]
        if viaMemory {
            let m = clinux_memfd_create("xenith-restore", UInt32(CLINUX_MFD_CLOEXEC))
            let d = m >= 0 ? dup(m) : -1
            if d >= 0 { _ = fcntl(d, F_SETFD, FD_CLOEXEC) }
            guard m >= 0, d >= 0 else {
                if m >= 0 { close(m) }
                close(fileFD)
                throw XendError(.internalError, "Restore failed: memfd: \(String(cString: strerror(errno)))")
            }
            stream = [m, d]
        } else {
            guard streamPipe(&stream) else {
                close(fileFD)
                throw XendError(.internalError, "Restore failed: pipe: \(String(cString: strerror(errno)))")
            }
        }
        var readEnd: Int32? = stream[0]
        defer { if let fd = readEnd { close(fd) } }
        let run: MigrationRun
        do { run = try service.start(.restore, engine: stream[1], file: fileFD) } catch {
            close(fileFD); close(stream[1])
            throw error
        }
        close(fileFD); close(stream[1])
        var finished = false
        defer { if !finished { run.kill() } }
        run.onProgress = { [transfers] bytes, rate in transfers.progress(file: key, bytes: bytes, bytesPerSecond: rate) }

        // 1. The service checks every byte of the file before it reports the configuration.
        let verifyTimeout = 30 + Double(st.st_size) / 100e6
        let first = try run.next(timeout: verifyTimeout)
        guard case .config(let sxpText) = first else {
            let why = Self.describe(first)
            throw XendError(.badRequest, "Restore failed: \(file): \(why)")
        }
        phases.mark("check")
        var cfg: DomainConfiguration
        do { cfg = try DomainConfiguration(sxp: SXP.parse(sxpText, file: file), file: file) }
        catch { throw XendError(.badRequest, "Restore failed: \(file): not a valid guest state file: config parse: \(error)") }
        let name = cfg.name
        if Self.nameRegex.firstMatch(in: name, range: NSRange(name.startIndex..., in: name)) == nil || name.count > 64
            || name == "." || name == ".." {
            throw XendError(.badRequest, "Restore failed: \(file): not a valid guest state file: invalid VM name '\(name)'")
        }
        do { try refuseUnstartable(cfg) } catch { throw XendError(.badRequest, "Restore failed: \(file): \(error.message)") }
        // No save holds a passed-through device's state; a file naming one would only make
        // this host take the device from its driver.
        if let p = cfg.pciDevices.first {
            throw XendError(.badRequest, "Restore failed: \(file): PCI device \(p.address): a domain with passed-through PCI devices cannot be restored")
        }
        // The file chose every path the domain names, as a migration peer does: the same policy.
        do {
            try IncomingPaths.checkVifScripts(cfg)
            try IncomingPaths(allow: xendConfig.relocationPathsAllow).check(cfg)
        }
        catch { throw XendError(.badRequest, "Restore failed: \(file): \(error.message)") }
        let engine = try engines.choose(for: cfg, configured: xendConfig.domainEngine)
        guard engine.capabilities.contains(.save) else {
            throw XendError(.unavailable, "Cannot restore \(file): the \(engine.name) engine cannot restore a domain's state")
        }

        // 2. The domain, its devices and an engine waiting for the state. The name check and
        // the launch are one step under the lifecycle lock; the domain is marked restoring
        // before its watcher can act on an early exit (a refused stream ends QEMU).
        lifecycle.lock()
        let r: DomainRecord
        do {
            defer { lifecycle.unlock() }
            if name == "Domain-0" { throw XendError(.conflict, "Restore failed: \(file): VM name 'Domain-0' already exists as domain 0") }
            if let other = registry.named(name) {
                throw XendError(.conflict, "Restore failed: \(file): VM name '\(name)' already exists as domain \(other.domid)")
            }
            do { try HostMemory.check(needMiB: cfg.memory, freeKiB: HostFacts.freeKiB(), dom0MinMemMiB: xendConfig.dom0MinMem) }
            catch { throw XendError(error.kind, "Restore failed: \(file): \(error.message)") }
            if cfg.uuid == nil { cfg.uuid = UUID().uuidString.lowercased() }
            let base = DomainRecord(domid: 0, name: name, uuid: cfg.uuid!, config: cfg, engine: engine.name,
                                    process: nil, startTime: 0, restartCount: 0, previousRestartTime: nil,
                                    stoppedState: nil, consoleLog: paths.consoleLogDir + "/guest-\(name).log")
            // The guest stays stopped until the state is in: its CPU control group is set
            // up meanwhile, and waited for before it runs.
            r = try launch(base, engine: engine, incoming: true, cpuSettingsInBackground: true)
            transfers.attach(file: key, domid: r.domid, domain: name)
        }
        defer { transfers.detach(domid: r.domid) }
        phases.mark("start")
        dmesg("Domain \(name) (\(r.domid)): restoring from \(file)")

        // 3. The state, then the service's last word, then the guest runs.
        do throws(XendError) {
            guard let p = r.process else { throw XendError(.internalError, "the domain has no engine process") }
            if viaMemory {
                // The service's second pass (every frame checked again) has filled the memfd.
                let last = try run.next(timeout: verifyTimeout)
                guard case .done = last else { throw XendError(.internalError, Self.describe(last)) }
                run.finish(timeout: 5)
                finished = true
                phases.mark("fill")
                guard lseek(readEnd!, 0, SEEK_SET) == 0 else {
                    throw XendError(.internalError, "memfd: \(String(cString: strerror(errno)))")
                }
                do { try engine.restoreState(p, from: readEnd!) { _ in } }
                catch { throw XendError(.internalError, "\(error)") }
                // The last reference to the state's memfd: closing it frees its pages
                // (12-13 ms for 110 MB), which the guest need not wait for.
                let state = readEnd!
                readEnd = nil
                Thread.detachNewThread { close(state) }
                phases.mark("state")
            } else {
                do { try engine.restoreState(p, from: readEnd!) { _ in } }
                catch { throw XendError(.internalError, "\(error)") }
                close(readEnd!); readEnd = nil
                phases.mark("state")
                let last = try run.next(timeout: Self.serviceFinishTimeout)
                guard case .done = last else { throw XendError(.internalError, Self.describe(last)) }
                run.finish(timeout: 5)
                finished = true
            }
            cpuPlacements.wait(r.domid)
            FaultInjection.crashPoint("restore-loaded")
            // The state is in: from here an xend restart keeps the domain (paused if it
            // stopped before the next step) instead of undoing it.
            registry.clearIncoming(r.domid)
            if !paused { do { try engine.unpause(p) } catch { throw XendError(.internalError, "resume: \(error)") } }
        } catch {
            if let fd = readEnd { close(fd); readEnd = nil }
            run.kill(); finished = true
            // Destroyed meanwhile (`xm destroy`): say that, not what the engine's broken
            // session said. A QEMU that refused the stream and exited names its reason.
            let why = transfers.wasDestroyed(r.domid) ? "the domain was destroyed while it was being restored" : error.message
            _ = try? destroy(String(r.domid))
            dmesg("Domain \(name): restore from \(file) failed: \(why)")
            throw XendError(.internalError, "Restore failed: \(file): \(why)")
        }
        statuses[r.domid] = nil
        phases.mark("resume")
        dmesg("Domain \(name) (\(r.domid)) restored from \(file)")
        dmesg("Domain \(name): restore phases: \(phases.summary)")
        return info(registry[r.domid] ?? r, long: false)
    }

    /// The saves and restores under way.
    public func transferList() -> [TransferInfo] { transfers.all }

    /// The configuration a save file or a migration carries: its engine named (the restore
    /// picks the same one), and as much RAM as the domain runs with: `xm mem-max` above that
    /// takes effect at a fresh start, while the state holds the RAM it has, which a restore
    /// must give it exactly.
    static func transferConfiguration(_ r: DomainRecord, engine: String) -> DomainConfiguration {
        var cfg = r.config
        cfg.engine = DomainEngine(rawValue: engine) ?? cfg.engine
        if let boot = r.bootMemory, let mx = cfg.maxmem, mx > boot { cfg.maxmem = max(boot, cfg.memory) }
        return cfg
    }

    /// A message that should not have come, as a reason: the service's own failure text.
    static func describe(_ m: StatusMessage) -> String {
        switch m {
        case .failed(let why): why
        default: "the migration service sent an unexpected \(m.kind) message"
        }
    }

    /// The service's failure reason if it has already sent one (it explains an engine
    /// error better: the file system was full), waiting at most a second for it; or how it
    /// ended when it closed its channel without one.
    static func serviceReason(_ run: MigrationRun) -> String? {
        do {
            if case .failed(let why) = try run.next(timeout: 1) { return why }
            return nil
        } catch {
            // Gone without a word (killed: by seccomp, the error names the syscall).
            return run.channelClosed ? error.message : nil
        }
    }
}

/// Wall time of the named steps of a save or restore, for `xm dmesg` ("check 0.05 s,
/// start 0.21 s, …, total 0.40 s"): where the time of a slow save or restore went.
struct PhaseClock {
    private var last = Date()
    private let start = Date()
    private var steps: [(String, Double)] = []
    /// Ends the step called `name` now.
    mutating func mark(_ name: String) {
        let now = Date()
        steps.append((name, now.timeIntervalSince(last)))
        last = now
    }
    var summary: String {
        (steps.map { "\($0.0) \(String(format: "%.3f", $0.1)) s" } + ["total \(String(format: "%.3f", last.timeIntervalSince(start))) s"])
            .joined(separator: ", ")
    }
}
