// Requests on one running domain (Xen's XendDomainInfo control methods): pause, unpause,
// shutdown and reboot, destroy, memory target and maximum.
import DomainConfig
import Foundation
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

extension DomainManager {
    /// The running domain `dom`: its record, engine process and engine.
    /// - Parameter operation: what is asked (`pause`, `shut down`, ...), for the refusal of
    ///   Domain-0 in Xen's words ("Cannot pause privileged domain 0").
    /// - Throws: `XendError` 400 for Domain-0, 404 no such domain, 409 not running or being
    ///   saved or migrated away (an unpause in the switch-over window would run the guest on
    ///   both hosts; `xm destroy` stays allowed).
    func live(_ dom: String, for operation: String) throws(XendError) -> (DomainRecord, EngineProcess, any DomainEngineDriver) {
        if dom == "0" || dom == "Domain-0" { throw XendError(.badRequest, "Cannot \(operation) privileged domain 0") }
        guard let r = find(dom) else { throw .noDomain(dom) }
        if let kind = transfers.outgoing(r.domid) {
            throw XendError(.conflict, "Cannot \(operation) domain \(r.name): it is being \(kind == "save" ? "saved" : "migrated"); try again when that is over.")
        }
        guard let p = r.process, let e = engines[r.engine] else { throw XendError(.conflict, "Domain '\(dom)' is not running.") }
        return (r, p, e)
    }

    /// Runs a request on domain `r`'s engine `p`; `operation` names it in errors.
    /// - Throws: `XendError` 409 when the engine process ended meanwhile (the domain is
    ///   going: a shutdown or crash being handled), else 500 with the engine's error.
    func engineCall(_ r: DomainRecord, _ p: EngineProcess, _ operation: String, _ f: () throws -> Void) throws(XendError) {
        do { try f() } catch {
            if p.hasExited {
                throw XendError(.conflict, "Cannot \(operation) domain \(r.name): it has just ended (its engine exited)")
            }
            throw XendError(.internalError, "\(error)")
        }
    }

    public func pause(_ dom: String) throws(XendError) -> DomainInfo {
        let (r, p, e) = try live(dom, for: "pause")
        try engineCall(r, p, "pause") { try e.pause(p) }
        statuses.setPaused(r.domid, true)
        return info(r, long: false)
    }

    public func unpause(_ dom: String) throws(XendError) -> DomainInfo {
        let (r, p, e) = try live(dom, for: "unpause")
        try engineCall(r, p, "unpause") { try e.unpause(p) }
        statuses.setPaused(r.domid, false)
        return info(r, long: false)
    }

    /// `xm mem-set`: sets a running domain's memory target to `mib` MiB (balloon), keeps it
    /// in the domain's configuration (a restart boots with it, and with the RAM it has now as
    /// maxmem) and in xenstore (`memory/target`).
    /// - Throws: `XendError` 400 below 16 MiB or above what the domain was started with
    ///   (or its maxmem), 503 when its engine has no balloon device, 404 no such domain.
    public func memSet(_ dom: String, mib: Int) throws(XendError) -> DomainInfo {
        let (r, p, e) = try live(dom, for: "set the memory of")
        var cfg = r.config
        let booted = r.bootMemory ?? max(cfg.memory, cfg.maxmem ?? 0)
        let ceiling = min(booted, cfg.maxmem ?? booted)
        guard mib >= 16 else { throw XendError(.badRequest, "Invalid memory target \(mib) MiB for domain \(r.name): at least 16 MiB") }
        guard mib <= ceiling else {
            throw XendError(.badRequest, "Invalid memory target \(mib) MiB for domain \(r.name): its maximum is \(ceiling) MiB"
                            + (ceiling == booted ? " (the RAM it was started with; raise maxmem and restart it for more)" : " (maxmem; see xm mem-max)"))
        }
        do { try e.setMemoryTarget(p, mib: mib) } catch {
            throw XendError(e.capabilities.contains(.balloon) ? .internalError : .unavailable, "Cannot set the memory of domain \(r.name): \(error)")
        }
        cfg.maxmem = cfg.maxmem ?? booted
        cfg.memory = mib
        registry.update(r.domid) { $0.config = cfg }
        try? xenstore?.write("/local/domain/\(r.domid)/memory/target", String(mib * 1024))
        dmesg("Domain \(r.name) (\(r.domid)): memory target set to \(mib) MiB")
        return try get(String(r.domid), long: false)
    }

    /// `xm mem-max`: sets a domain's maximum memory to `mib` MiB: the ceiling of
    /// `mem-set` now (never above the RAM the engine was started with) and the RAM the
    /// next start gives it.
    /// - Throws: `XendError` 400 below the current target, 404 no such domain.
    public func memMax(_ dom: String, mib: Int) throws(XendError) -> DomainInfo {
        if dom == "0" || dom == "Domain-0" { throw XendError(.badRequest, "Cannot set the maximum memory of privileged domain 0") }
        guard let r = find(dom) else { throw XendError.noDomain(dom) }
        var cfg = r.config
        guard mib >= cfg.memory else {
            throw XendError(.badRequest, "Invalid maximum memory \(mib) MiB for domain \(r.name): below its current target of \(cfg.memory) MiB")
        }
        let booted = r.bootMemory ?? (r.isLive ? max(cfg.memory, cfg.maxmem ?? 0) : nil)
        cfg.maxmem = mib
        registry.update(r.domid) { $0.config = cfg; $0.bootMemory = booted }
        try? xenstore?.write("/local/domain/\(r.domid)/memory/static-max", String(mib * 1024))
        dmesg("Domain \(r.name) (\(r.domid)): maximum memory set to \(mib) MiB" + (mib > (booted ?? mib) ? " (above the \(booted!) MiB it runs with: takes effect when it next starts)" : ""))
        return try get(String(r.domid), long: false)
    }

    /// `mode`: poweroff or halt (ACPI power button), reboot.
    public func shutdown(_ dom: String, mode: String) throws(XendError) -> DomainInfo {
        guard ["poweroff", "halt", "reboot"].contains(mode) else { throw XendError(.badRequest, "Invalid shutdown mode: \(mode)") }
        let (r, p, e) = try live(dom, for: mode == "reboot" ? "reboot" : "shut down")
        // Xen's xm reboot asks the guest to shut down with reason reboot, then xend applies
        // on_reboot. Here the guest gets the ACPI power button, and its poweroff counts as
        // a reboot (a hard reset would cut off what the guest had not written yet).
        lifecycle.lock()
        if mode == "reboot" { rebootRequested.insert(r.domid) } else { rebootRequested.remove(r.domid) }
        lifecycle.unlock()
        try engineCall(r, p, mode == "reboot" ? "reboot" : "shut down") { try e.requestShutdown(p) }
        return info(r, long: false)
    }

    /// Stops a domain at once and forgets it (also removes a preserved one).
    public func destroy(_ dom: String) throws(XendError) -> DomainInfo {
        if dom == "0" || dom == "Domain-0" { throw XendError(.badRequest, "Cannot destroy privileged domain 0") }
        guard let r = find(dom) else { throw .noDomain(dom) }
        let i = info(r, long: false)
        transfers.noteDestroyed(r.domid)
        if let p = r.process, let e = engines[r.engine] {
            // Mark as destroyed first so the watcher does not apply on_* actions.
            lifecycle.lock()
            registry.update(r.domid) { $0.process = nil }
            lifecycle.unlock()
            try? e.destroy(p)
            let deadline = Date().addingTimeInterval(5)
            while ProcessInfo2.startTicks(p.pid) == p.startTicks && Date() < deadline { usleep(10_000) }
            if ProcessInfo2.startTicks(p.pid) == p.startTicks { kill(p.pid, SIGKILL) }
            unlink(p.controlPath); unlink(p.statusFile)
            releaseDevices(r.domid)
            dmesg("Domain \(r.name) (\(r.domid)) destroyed")
        }
        cleanup(r.domid)
        return i
    }
}
