// `xm migrate [-l] [-p PORT] [-r MBIT] DOM HOST`, the source's side (Xen 3.0's
// XendDomain.domain_migrate and XendCheckpoint.save onto a socket). xend connects to the
// target's relocation server (Relocation.swift), does Xen's `receive` / `(ready receive)`
// exchange, hands the connected socket to a `migration` service in send mode (framing,
// checksums, pacing) and has the engine write its state stream into the service: live
// pre-copy (bounded as Xen's: 29 rounds or 3× memory, then stop-and-copy) with `-l`, a
// stopped copy without. After the target acknowledged every byte, the disk locks switch
// over (DiskLockHandover.swift) and the target resumes the guest; only then is the source
// domain destroyed.
//
// Nothing lost: until the target says `(running DOMID)` the source keeps the guest; any
// failure (refusal, resolution, connection, the target's engine or checks, a bad stream)
// takes the locks back and resumes the guest where it was, and the error carries the
// target's reason. Every wait is bounded (README.md "Live migration").
import CLinux
import DomainConfig
import Foundation
import Migration
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

extension DomainManager {
    /// Xen 3.0's pre-copy bounds (xc_linux_save: MAX_MBIT_RATE aside): passes over memory,
    /// and bytes sent as a multiple of the guest's memory, before the last pass.
    static let migrationMaxRounds = 29
    static let migrationMaxFactor: UInt64 = 3
    /// The downtime QEMU aims at during pre-copy (its default), milliseconds.
    static let migrationDowntimeLimitMs = 300

    /// `xm migrate`: moves running domain `dom` to the xend at `host`:`port`.
    /// - Parameters:
    ///   - live: pre-copy while the guest runs (`-l`); otherwise the guest is stopped first.
    ///   - resource: pace the connection to this many Mbit/s (`-r`, 1...1000000), nil unpaced.
    /// - Returns: the figures of the move.
    /// - Throws: `XendError`: 404 no such domain; 409 not running or already moving; 400 a
    ///   bad rate, a host that does not resolve, a port nobody listens on; 403-like refusals
    ///   and every target-side failure as 500 carrying the target's reason. The guest keeps
    ///   running on this host in every failure.
    public func migrate(_ dom: String, host: String, port: Int, live isLive: Bool, resource: Int?) throws(XendError) -> MigrateReply {
        let (r, p, engine) = try live(dom, for: "migrate")
        try refuseSaveWithHotpluggedDevices(dom, operation: "migrated")
        do throws(XendError) { try Self.refuseWritableQcow2(r.config) }
        catch { throw XendError(.conflict, "Cannot migrate domain \(r.name): \(error.message)") }
        if let resource, !(1...1_000_000).contains(resource) {
            throw XendError(.badRequest, "xm migrate: -r \(resource): the rate must be 1...1000000 Mbit/s (0 would never send anything)")
        }
        guard (1...65535).contains(port) else { throw XendError(.badRequest, "xm migrate: -p \(port): not a TCP port (1...65535)") }
        guard engine.capabilities.contains(isLive ? .liveMigrate : .save) else {
            throw XendError(.unavailable, "Cannot migrate domain \(r.name): the \(engine.name) engine cannot \(isLive ? "migrate a domain live" : "save a domain's state")")
        }
        if let why = engine.stateTransferRefusal(p) { throw XendError(.conflict, "Cannot migrate domain \(r.name): \(why)") }
        guard let service = migration else {
            throw XendError(.unavailable, "Cannot migrate domain \(r.name): the migration service is not installed beside xend")
        }
        let target = "\(host):\(port)"
        let started = Date()
        var phases = PhaseClock()
        let tls: RelocationTLS?
        do throws(XendError) { tls = try relocationTLS.get() } catch {
            throw XendError(.unavailable, "Cannot migrate domain \(r.name): \(error.message)")
        }
        let tcp = try Self.connect(host: host, port: port)
        defer { close(tcp) }
        let peer = "the relocation server at \(target)"
        var sock = tcp
        var tlsConnection: RelocationTLS.Connection?
        if let tls {
            do throws(XendError) {
                tlsConnection = try tls.wrap(tcp, role: .client(host: host), peer: peer)
                sock = tlsConnection!.fd
            } catch {
                throw XendError(.internalError, "Migration of \(r.name) to \(target) refused: \(error.message)")
            }
        }
        defer { if sock != tcp { close(sock) } }
        try RelocationWire.write(sock, RelocationWire.receive, peer: peer)
        guard let answer = try RelocationWire.readLine(sock, timeout: RelocationWire.handshakeTimeout, peer: peer) else {
            // Under TLS 1.3 a target refusing our certificate says so only by ending the connection.
            let why = tlsConnection?.failure.map { " (TLS: \($0))" } ?? ""
            throw XendError(.internalError, "Migration of \(r.name) to \(target) failed: \(peer) closed the connection\(why)")
        }
        if let why = RelocationWire.errReason(answer) {
            throw XendError(.internalError, "Migration of \(r.name) to \(target) refused by the target: \(why)")
        }
        guard answer == RelocationWire.ready else {
            throw XendError(.internalError, "Migration of \(r.name) to \(target) failed: unexpected answer '\(answer.prefix(80))'")
        }
        phases.mark("handshake")

        let key = "migrate:\(target):\(r.domid)"
        guard transfers.begin(kind: "migrate", file: key, domain: r.name, domid: r.domid) else {
            throw XendError(.conflict, "Domain \(r.name) is already being saved or migrated")
        }
        defer { transfers.end(file: key) }
        statuses[r.domid] = nil
        defer { statuses[r.domid] = nil }
        var stream: [Int32] = [-1, -1]
        guard streamPipe(&stream) else { throw XendError(.internalError, "Migration of \(r.name) failed: pipe: \(String(cString: strerror(errno)))") }
        let run: MigrationRun
        do { run = try service.start(.send, engine: stream[0], file: sock, rate: resource) } catch {
            close(stream[0]); close(stream[1]); throw error
        }
        close(stream[0])
        run.onProgress = { [transfers] bytes, rate in transfers.progress(file: key, bytes: bytes, bytesPerSecond: rate) }
        dmesg("Domain \(r.name) (\(r.domid)): migrating\(isLive ? " live" : "") to \(target)")
        phases.mark("service")

        // 1. The stream: the engine writes, the service frames and sends.
        let cfg = Self.transferConfiguration(r, engine: engine.name)
        let memBytes = UInt64(max(cfg.memory, cfg.maxmem ?? 0)) << 20
        var rounds = 1, engineDowntime = 0
        // A paused guest stays paused here if the migration fails (the target runs it).
        var wasRunning = (try? engine.query(p).paused).map { !$0 } ?? true
        do throws(XendError) {
            try run.send(.config(cfg.toSXP().description))
            do {
                if isLive {
                    (rounds, engineDowntime) = try engine.sendLive(p, into: stream[1], maxRounds: Self.migrationMaxRounds,
                                                                  maxBytes: Self.migrationMaxFactor * memBytes,
                                                                  downtimeLimitMs: Self.migrationDowntimeLimitMs) { _ in }
                } else {
                    wasRunning = try engine.saveState(p, into: stream[1]) { _ in }
                }
            } catch { throw XendError(.internalError, "\(error)") }
        } catch {
            close(stream[1])
            let why = Self.serviceReason(run) ?? error.message
            try? run.send(.abort("xend: \(error.message)"))
            run.finish(timeout: 5)
            dmesg("Domain \(r.name) (\(r.domid)): migration to \(target) failed: \(why)")
            throw XendError(.internalError, "Migration of \(r.name) to \(target) failed: \(why)")
        }
        close(stream[1])
        let stoppedAt = Date()
        phases.mark(isLive ? "precopy" : "copy")
        // The guest is stopped now: from here every failure resumes it.
        let resume: (String) -> XendError = { [self] why in
            // After the switch-over was asked for, the target may have taken the disks' locks
            // and run the guest even though its answer never came: a lock that cannot be taken
            // back means the guest must not run here too (both would write the same image).
            if let blocks {
                do throws(XendError) { try blocks.takeLocks(r.domid) } catch {
                    dmesg("Domain \(r.name) (\(r.domid)): migration to \(target) failed: \(why); its disks' locks could not be taken back (\(error.message)): left paused here, the target may be running it")
                    return XendError(.internalError, "Migration of \(r.name) to \(target) failed: \(why). Its disks' locks could not be taken back (\(error.message)), so the domain stays paused here: the target may be running it. Check there before xm unpause or xm destroy here.")
                }
            }
            if wasRunning { try? engine.unpause(p) }
            dmesg("Domain \(r.name) (\(r.domid)): migration to \(target) failed: \(why); running here again")
            return XendError(.internalError, "Migration of \(r.name) to \(target) failed: \(why)")
        }

        // 2. The service drained the engine; the end frame; the target's ack.
        let summary: Summary
        do throws(XendError) {
            let drained = try run.next(timeout: Self.serviceFinishTimeout)
            guard case .drained = drained else { throw XendError(.internalError, Self.describe(drained)) }
            try run.send(.commit)
            let last = try run.next(timeout: Self.serviceFinishTimeout)
            guard case .done(let s) = last else { throw XendError(.internalError, Self.describe(last)) }
            summary = s
            phases.mark("ack")
        } catch {
            try? run.send(.abort("xend: \(error.message)"))
            run.finish(timeout: 5)
            throw resume(error.message)
        }

        // 3. Switch-over: our locks go, the target takes them and runs the guest. (The
        // service, done, is reaped after it: the guest is stopped until then.)
        defer { run.finish(timeout: 5) }
        blocks?.releaseLocks(r.domid)
        let reply: String?
        do {
            try RelocationWire.write(sock, RelocationWire.switchover, peer: peer)
            reply = try RelocationWire.readLine(sock, timeout: RelocationWire.switchoverTimeout, peer: peer)
        } catch { throw resume(error.message) }
        guard let reply, reply.hasPrefix("(running") else {
            let why = reply.flatMap(RelocationWire.errReason).map { "the target: \($0)" }
                ?? (reply == nil ? "the target closed the connection at switch-over" : "unexpected answer '\(reply!.prefix(80))'")
            throw resume(why)
        }
        let downtimeMs = engineDowntime + Int(Date().timeIntervalSince(stoppedAt) * 1000)
        let seconds = Date().timeIntervalSince(started)
        phases.mark("switchover")
        dmesg("Domain \(r.name) (\(r.domid)): migrated to \(target): \(summary.bytes) bytes, \(rounds) rounds, downtime \(downtimeMs) ms, \(String(format: "%.2f", seconds)) s")
        _ = try? destroy(String(r.domid))
        phases.mark("destroy")
        dmesg("Domain \(r.name): migration source phases: \(phases.summary)")
        return MigrateReply(domain: r.name, host: host, port: port, bytes: summary.bytes, rounds: rounds,
                            downtimeMs: downtimeMs, seconds: seconds)
    }

    /// Resolves `host` and connects to `port` within `RelocationWire.handshakeTimeout`.
    /// - Throws: `XendError` 400 naming the host that does not resolve or the port nobody
    ///   answers on.
    static func connect(host: String, port: Int) throws(XendError) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, res != nil else {
            throw XendError(.badRequest, "xm migrate: host \(host) does not resolve: \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(res) }
        var lastError = "no address"
        var ai = res
        while let a = ai {
            ai = a.pointee.ai_next
            let fd = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            if fd < 0 { lastError = String(cString: strerror(errno)); continue }
            if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) != 0 && errno != EINPROGRESS {
                lastError = String(cString: strerror(errno)); close(fd); continue
            }
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            if poll(&p, 1, Int32(RelocationWire.handshakeTimeout * 1000)) <= 0 {
                lastError = "no answer in \(Int(RelocationWire.handshakeTimeout)) s"; close(fd); continue
            }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0 { lastError = String(cString: strerror(err)); close(fd); continue }
            // Blocking from here: the service and the handshake bound their own waits.
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            return fd
        }
        throw XendError(.badRequest, "xm migrate: cannot connect to \(host) port \(port): \(lastError) (is xend-relocation-server on there?)")
    }
}
