// The target's side of a migration (Xen 3.0's relocate.py op_receive → XendCheckpoint.restore
// on the socket), once the relocation server answered `(ready receive)`: a `migration`
// service in receive mode takes the connected socket; at the configuration it reports,
// xend checks the domain (name free, memory available, disk images present), creates it
// with its back-ends and an engine waiting for the state (`-incoming defer`), the disk
// images opened but not locked; the state streams in; at `(switchover)` xend takes the
// locks, resumes the guest and answers `(running DOMID)`.
//
// Any failure removes everything made here and tells the source why: an abort frame while
// the stream runs (the source's service reports it), `(err REASON)` after it.
import DomainConfig
import Foundation
import Migration
#if canImport(Glibc)
import Glibc
#endif

extension DomainManager {
    /// Seconds the target waits for the domain's configuration once it answered ready.
    static let receiveConfigTimeout = 30.0

    /// Runs one incoming migration on `sock` (connected, handshake done); returns when the
    /// guest runs here or everything made was removed. Never throws: the peer is told.
    func receiveMigration(_ sock: Int32, peer: String) {
        guard let service = migration else { return }
        var phases = PhaseClock()
        let key = "receive:\(peer):\(sock):\(Date().timeIntervalSince1970)"
        var stream: [Int32] = [-1, -1]
        guard streamPipe(&stream) else { refuse(sock, peer, "pipe: \(String(cString: strerror(errno)))"); return }
        var readEnd: Int32? = stream[0]
        defer { if let fd = readEnd { close(fd) } }
        let run: MigrationRun
        do { run = try service.start(.receive, engine: stream[1], file: sock) } catch {
            close(stream[1]); refuse(sock, peer, error.message); return
        }
        close(stream[1])
        var finished = false
        defer { if !finished { run.kill() } }
        guard transfers.begin(kind: "receive", file: key, domain: "", domid: nil) else { return }
        defer { transfers.end(file: key) }
        run.onProgress = { [transfers] bytes, rate in transfers.progress(file: key, bytes: bytes, bytesPerSecond: rate) }

        // 1. The configuration, checked before anything is made.
        let cfg: DomainConfiguration
        let engine: any DomainEngineDriver
        do throws(XendError) {
            let first = try run.next(timeout: Self.receiveConfigTimeout)
            guard case .config(let sxpText) = first else { throw XendError(.badRequest, Self.describe(first)) }
            phases.mark("config")
            (cfg, engine) = try checkIncoming(sxpText)
            phases.mark("check")
        } catch {
            run.kill(); finished = true
            refuse(sock, peer, error.message)
            return
        }

        // 2. The domain, its back-ends (disk locks deferred) and an engine waiting for the state.
        lifecycle.lock()
        let r: DomainRecord
        do throws(XendError) {
            defer { lifecycle.unlock() }
            if let other = registry.named(cfg.name) {
                throw XendError(.conflict, "VM name '\(cfg.name)' already exists on the target as domain \(other.domid)")
            }
            let base = DomainRecord(domid: 0, name: cfg.name, uuid: cfg.uuid ?? UUID().uuidString.lowercased(), config: cfg,
                                    engine: engine.name, process: nil, startTime: 0, restartCount: 0, previousRestartTime: nil,
                                    stoppedState: nil, consoleLog: paths.consoleLogDir + "/guest-\(cfg.name).log")
            r = try launch(base, engine: engine, incoming: true, deferDiskLocks: true)
            transfers.attach(file: key, domid: r.domid, domain: cfg.name)
        } catch {
            run.kill(); finished = true
            dmesg("Relocation from \(peer): domain \(cfg.name) not created: \(error.message)")
            refuse(sock, peer, error.message)
            return
        }
        defer { transfers.detach(domid: r.domid) }
        phases.mark("start")
        dmesg("Domain \(cfg.name) (\(r.domid)): receiving from \(peer)")

        // 3. The state, the service's last word (it acknowledged every byte), switch-over.
        var streamOver = false
        do throws(XendError) {
            guard let p = r.process else { throw XendError(.internalError, "the domain has no engine process") }
            do { try engine.restoreState(p, from: readEnd!) { _ in } } catch {
                // The service's reason (a bad frame, the source's abort, the engine gone:
                // its next write into the stream fails once xend's copy of the read end is
                // closed too) explains it better.
                close(readEnd!); readEnd = nil
                throw XendError(.internalError, Self.serviceReason(run) ?? "\(error)")
            }
            close(readEnd!); readEnd = nil
            phases.mark("state")
            let last = try run.next(timeout: Self.serviceFinishTimeout)
            guard case .done = last else { throw XendError(.internalError, Self.describe(last)) }
            streamOver = true
            phases.mark("ack")
            let request = try RelocationWire.readLine(sock, timeout: RelocationWire.switchoverTimeout, peer: "the source \(peer)")
            guard request == RelocationWire.switchover else {
                throw XendError(.internalError, request == nil ? "the source closed the connection before switch-over"
                                                                : "unexpected request '\(request!.prefix(80))' at switch-over")
            }
            phases.mark("switchover")
            try blocks?.takeLocks(r.domid)
            registry.clearIncoming(r.domid)
            do { try engine.unpause(p) } catch { throw XendError(.internalError, "resume: \(error)") }
            try RelocationWire.write(sock, "(running \(r.domid))", peer: "the source \(peer)")
            phases.mark("resume")
            // The service, done, is reaped once the guest runs.
            run.finish(timeout: 5)
            finished = true
        } catch {
            if let fd = readEnd { close(fd); readEnd = nil }
            if !finished { if streamOver { run.finish(timeout: 5) } else { run.kill() }; finished = true }
            if streamOver { try? RelocationWire.write(sock, RelocationWire.err(error.message), peer: peer) }
            else { refuse(sock, peer, error.message) }
            _ = try? destroy(String(r.domid))
            dmesg("Domain \(cfg.name): migration from \(peer) failed: \(error.message)")
            return
        }
        statuses[r.domid] = nil
        dmesg("Domain \(cfg.name) (\(r.domid)) migrated in from \(peer)")
        dmesg("Domain \(cfg.name): migration target phases: \(phases.summary)")
    }

    /// The checks of an incoming domain before anything is made: a valid configuration and
    /// name, an engine that restores, the name free, the memory there, every host path it
    /// names present and allowed (`IncomingPaths`).
    /// - Throws: `XendError` with the reason the source is given.
    func checkIncoming(_ sxpText: String) throws(XendError) -> (DomainConfiguration, any DomainEngineDriver) {
        var cfg: DomainConfiguration
        do { cfg = try DomainConfiguration(sxp: SXP.parse(sxpText, file: "<migration>"), file: "<migration>") }
        catch { throw XendError(.badRequest, "the domain configuration does not parse on the target: \(error)") }
        let name = cfg.name
        if Self.nameRegex.firstMatch(in: name, range: NSRange(name.startIndex..., in: name)) == nil || name.count > 64
            || name == "." || name == ".." || name == "Domain-0" {
            throw XendError(.badRequest, "invalid VM name '\(name)'")
        }
        // The same checks as xm create (DomainLauncher), and more: the peer chose this
        // configuration, so a vif script must be one of this host's (no path).
        if let d = cfg.disks.first(where: { $0.script != nil }) {
            throw XendError(.badRequest, "Device \(d.vdev) (vbd): block script \(d.script!) is not supported here")
        }
        try IncomingPaths.checkVifScripts(cfg)
        // A peer must not make this host hand it one of its PCI devices (pci-hide-on-create
        // would take it from its host driver), and no engine carries a passed-through
        // device's state anyway.
        if let p = cfg.pciDevices.first {
            throw XendError(.badRequest, "PCI device \(p.address): a domain with passed-through PCI devices cannot be migrated in")
        }
        try Self.refuseWritableQcow2(cfg)
        try checkCPUSettings(cfg)
        let engine = try engines.choose(for: cfg, configured: xendConfig.domainEngine)
        guard engine.capabilities.contains(.save) else {
            throw XendError(.unavailable, "the target's \(engine.name) engine cannot take a domain's state")
        }
        if let other = registry.named(name) {
            throw XendError(.conflict, "VM name '\(name)' already exists on the target as domain \(other.domid)")
        }
        let needKiB = max(cfg.memory, cfg.maxmem ?? 0) * 1024
        let free = HostFacts.freeKiB()
        if needKiB > free {
            throw XendError(.unavailable, "not enough free memory on the target: the domain needs \(needKiB) KiB, the target has \(free) KiB")
        }
        try HostMemory.check(needMiB: max(cfg.memory, cfg.maxmem ?? 0), freeKiB: free, dom0MinMemMiB: xendConfig.dom0MinMem)
        // Every host path it names: present, and one an incoming domain may use here.
        try IncomingPaths(allow: xendConfig.relocationPathsAllow).check(cfg)
        if cfg.uuid == nil { cfg.uuid = UUID().uuidString.lowercased() }
        return (cfg, engine)
    }

    /// A writable qcow2 disk cannot move yet: the target's blkback reads the image's L1 and
    /// refcount tables when it starts, before the source has stopped allocating clusters,
    /// and would then work from stale metadata (lost or overwritten guest data).
    /// - Throws: `XendError` 400 naming the disk.
    static func refuseWritableQcow2(_ cfg: DomainConfiguration) throws(XendError) {
        if let d = cfg.disks.first(where: { $0.format == "qcow2" && $0.writable }) {
            throw XendError(.badRequest, "disk \(d.vdev): a writable qcow2 disk cannot be migrated (the target would read its metadata while the source still changes it)")
        }
    }

    /// Tells the source why, while its stream may still be coming: an abort frame with the
    /// reason, the write side closed, the rest drained for `RelocationWire.refusalDrain`
    /// seconds (closing with unread bytes would reset the connection before the reason is read).
    func refuse(_ sock: Int32, _ peer: String, _ why: String) {
        log.warning("Relocation from \(peer) failed: \(why)")
        var writer = FrameWriter(output: Descriptor(sock, role: "relocation peer \(peer)"))
        try? writer.writeAbort(reason: "target: " + why)
        Glibc.shutdown(sock, Int32(SHUT_WR))
        var buf = [UInt8](repeating: 0, count: 65536)
        let deadline = Date().addingTimeInterval(RelocationWire.refusalDrain)
        while Date() < deadline {
            var p = pollfd(fd: sock, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) >= 0 else { break }
            if p.revents != 0 && recv(sock, &buf, buf.count, Int32(MSG_DONTWAIT)) == 0 { break }
        }
    }
}
