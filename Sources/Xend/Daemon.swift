// `xend start|stop|restart|status` (Xen 3.x tools/misc/xend, SrvDaemon: LSB exit codes)
// and the daemon itself.
import DomainConfig
import Foundation
import Spawn
import Hummingbird
import Logging
import ServiceLifecycle
import XendAPI
import XenStore
#if canImport(Glibc)
import Glibc
#endif

/// The xend daemon of one `$XENITH_ROOT`.
public struct XendDaemon {
    public let paths: XenithPaths
    /// Directory holding xend, xenstored and xenith-core.
    public let binDir: String

    public init(paths: XenithPaths = XenithPaths(), binDir: String? = nil) {
        self.paths = paths
        self.binDir = binDir ?? (URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().path)
    }

    func eprint(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

    /// Pid of the running xend of this root, or 0.
    public func runningPid() -> Int32 {
        guard let t = try? String(contentsOfFile: paths.xendPidFile, encoding: .utf8),
              let pid = Int32(t.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0, kill(pid, 0) == 0,
              let cmd = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8), cmd.contains("xend") else {
            return 0
        }
        return pid
    }

    /// `xend ARG`: start (0, or 1 on failure), stop (0), restart, status (0 running, 3 not).
    public func main(_ args: [String]) -> Int32 {
        switch args.first {
        case "start": return start()
        case "stop": return stop()
        case "restart":
            // The settings are read before the running xend is stopped: a file that does not
            // parse leaves it running (its domains stay managed) instead of leaving no xend.
            do { _ = try paths.xendConfig() } catch { eprint("Error: \(error); xend not restarted"); return 1 }
            _ = stop(); return start()
        case "status": return runningPid() > 0 ? 0 : 3
        case "run": return runForeground()
        case nil:
            print("usage: xend {start|stop|restart|status}")
            return 1
        default:
            print("not an option: \(args[0])")
            return 1
        }
    }

    /// Daemonizes (`xend run` in a new session) and waits until the API socket answers.
    func start() -> Int32 {
        if runningPid() > 0 { return 0 }
        let cfg: XendConfig
        do { cfg = try paths.xendConfig() } catch { eprint("Error: \(error)"); return 1 }
        XenithPaths.makeDirectories(paths.resolve("/run"))
        let errLog = paths.logDir + "/xend-debug.log"
        XenithPaths.makeDirectories(paths.logDir)
        let pid: pid_t
        do { pid = try spawnProcess([binDir + "/xend", "run"], SpawnOptions(stderr: .file(errLog))) }
        catch { eprint("Error: cannot start xend: \(error.message)"); return 1 }
        let client = XendClient(socketPath: paths.resolve(cfg.unixPath))
        for _ in 0..<600 {
            var st: Int32 = 0
            if waitpid(pid, &st, WNOHANG) == pid {
                let t = (try? String(contentsOfFile: errLog, encoding: .utf8)) ?? ""
                eprint("Error: xend exited during start-up: " + (t.split(separator: "\n").last.map(String.init) ?? "see \(errLog)"))
                return 1
            }
            if let r = try? client.send("GET", "/api/v1/info"), r.status == 200 { return 0 }
            usleep(20_000)
        }
        eprint("Error: xend did not start within 12 s; see \(errLog)")
        return 1
    }

    func stop() -> Int32 {
        let pid = runningPid()
        if pid == 0 { unlink(paths.xendPidFile); return 0 }
        kill(pid, SIGTERM)
        for _ in 0..<500 {
            if kill(pid, 0) != 0 { return 0 }
            usleep(10_000)
        }
        kill(pid, SIGKILL)
        unlink(paths.xendPidFile)
        return 0
    }

    /// Adopts or starts this root's xenstored under supervision (XenstoredSupervisor.swift)
    /// and connects a client that reconnects when it restarts.
    func ensureXenstored(_ log: Logger) -> XenStoreClient? {
        let supervisor = XenstoredSupervisor(paths: paths, binary: binDir + "/xenstored", logger: log)
        supervisor.start()
        do {
            let xs = try XenStoreClient(path: paths.xenstoredSocket, reconnectMilliseconds: XenstoredSupervisor.clientReconnectMilliseconds)
            xs.observeConnection(lost: { log.warning("xenstored went away; reconnecting") },
                                 reconnected: { n in log.info("reconnected to xenstored (\(n) watches registered again)") })
            return xs
        } catch { log.error("cannot connect to xenstored: \(error)"); return nil }
    }

    /// The daemon body (`xend run`): foreground, until SIGTERM/SIGINT.
    func runForeground() -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        let cfg: XendConfig
        do { cfg = try paths.xendConfig() } catch { eprint("Error: \(error)"); return 1 }
        let logPath = paths.resolve(cfg.logfile)
        var handler = FileLogHandler(label: "xend", path: logPath)
        handler.logLevel = { switch cfg.loglevel {
            case .debug: return .debug
            case .info: return .info
            case .warning: return .warning
            case .error: return .error
            case .critical: return .critical
        } }()
        let h = handler
        let log = Logger(label: "xend", factory: { h.with(label: $0) })
        for w in cfg.warnings { log.warning("\(w)") }
        log.info("Xend started, root \(paths.root.isEmpty ? "/" : paths.root)")
        if runningPid() > 0 && runningPid() != getpid() { eprint("Error: xend is already running"); return 1 }
        try? String(getpid()).write(toFile: paths.xendPidFile, atomically: true, encoding: .utf8)
        defer { unlink(paths.xendPidFile) }
        let xs = ensureXenstored(log)
        // dom0-cpus: xend (and every back-end it starts from now on), xenstored and
        // xenconsoled on the first N CPUs; engines are started outside (CPUControl.swift).
        let servicePids = [paths.xenstoredPidFile, paths.resolve("/run/xenconsoled/xenconsoled.pid")].compactMap {
            (try? String(contentsOfFile: $0, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        if let set = DomainManager.confineDom0(cfg.dom0CPUs, servicePids: servicePids) {
            log.info("dom0-cpus \(cfg.dom0CPUs): xend, xenstored, xenconsoled and back-ends on CPUs \(CPUList.ranges(set))")
        }
        let core = CoreEngine(binary: binDir + "/xenith-core")
        // Manifests: $XENITH_MANIFESTS, BINDIR/../share/xenith/manifests, the source tree.
        let manifests = resolveManifestDirectory(binDir: binDir)
        if let m = manifests { log.info("security manifests from \(m)") }
        else { log.error("no security manifests found (set XENITH_MANIFESTS): blkback and xenconsoled run without a sandbox") }
        let consoleManifest: String? = manifests.map { $0 + "/xenconsoled.manifest" }.flatMap { access($0, R_OK) == 0 ? $0 : nil }
        let consoles = ConsoleSupervisor(paths: paths, binary: binDir + "/xenconsoled", manifest: consoleManifest, logger: log)
        consoles.start()
        let blocks = BlockSupervisor(paths: paths, binary: binDir + "/blkback",
                                     manifest: manifests.map { $0 + "/blkback.manifest" }, xenstore: xs, logger: log,
                                     defaultCache: cfg.blkbackCache, aio: cfg.blkbackAIO)
        let nets = NetSupervisor(paths: paths, binary: binDir + "/netback",
                                 manifest: manifests.map { $0 + "/netback.manifest" }, xenstore: xs,
                                 defaultScript: cfg.vifScript, logger: log)
        if let ns = cfg.networkScript {
            if let e = NetSupervisor.runNetworkScript(ns, paths: paths, binDir: binDir) { log.error("\(e)") }
            else { log.info("network-script \(ns) start: done") }
        }
        // The migration service (xm save/restore), found and sandboxed as blkback is.
        let migrationManifest: String? = manifests.map { $0 + "/migration.manifest" }.flatMap { access($0, R_OK) == 0 ? $0 : nil }
        let migration = MigrationService(binary: binDir + "/migration", manifest: migrationManifest,
                                         logPath: paths.logDir + "/migration.log")
        if access(migration.binary, X_OK) != 0 { log.error("\(migration.binary) is missing: xm save and xm restore are refused") }
        // pciback (PCI passthrough), found and sandboxed as the migration service is.
        let pciManifest: String? = manifests.map { $0 + "/pciback.manifest" }.flatMap { access($0, R_OK) == 0 ? $0 : nil }
        let pcis = PciSupervisor(paths: paths, binary: binDir + "/pciback", manifest: pciManifest, xenstore: xs,
                                 config: cfg, logger: log)
        pcis.hideConfigured()
        let qemu = QemuEngineDriver(runAs: cfg.qemuUser, uidBase: cfg.qemuUIDBase,
                                    ramDirectory: cfg.qemuRAMDirectory.flatMap { GuestRAMDirectory.prepare($0, log: log) })
        if let b = qemu.uidBase { log.info("QEMU runs as a uid of its own per domain: \(b) + domid (-runas UID:GID)") }
        else if let u = qemu.runAs { log.info("QEMU runs as user \(u) (-runas)") }
        else if !cfg.qemuUser.isEmpty { log.info("QEMU runs as xend's user: qemu-user \(cfg.qemuUser) \(geteuid() == 0 ? "does not exist (useradd --system \(cfg.qemuUser))" : "needs xend to run as root")") }
        let manager = DomainManager(paths: paths, xendConfig: cfg, engines: [core.name: core, qemu.name: qemu],
                                    autoPrefersQemu: QemuEngineDriver.preferredForAuto, xenstore: xs, logger: log,
                                    consoles: consoles, blocks: blocks, nets: nets,
                                    migration: access(migration.binary, X_OK) == 0 ? migration : nil,
                                    pcis: access(pcis.binary, X_OK) == 0 ? pcis : nil)
        manager.adopt()
        manager.cpuGroups?.sweep(live: Set(manager.registry.all.filter { $0.process != nil }.map(\.domid)))
        manager.startStatusRefresher()
        do throws(XendError) { manager.relocationTLS = .success(try RelocationTLS.load(cfg)) } catch {
            manager.relocationTLS = .failure(error)
            log.error("xend-relocation-ssl: \(error.message): relocation is refused both ways until this is fixed")
        }
        if cfg.relocationServer {
            // Off by default as Xen's; a server that cannot listen is an error xend reports and lives with.
            do { try RelocationServer(manager: manager, config: cfg, log: log).start() }
            catch { log.error("Relocation server not started: \(error.message)") }
        }
        let vnets = VnetManager(config: cfg, xenstore: xs, logger: log)
        vnets.restore()
        let router = XendHTTP.router(manager, logPath: logPath, vnets: vnets)
        // The HTTP servers and their lifecycle log at info and above: their debug lines
        // ("Starting service") name nothing a user can act on.
        var serviceLog = log
        serviceLog.logLevel = max(log.logLevel, .info)
        var services: [any Service] = []
        if cfg.unixServer {
            let sock = paths.resolve(cfg.unixPath)
            XenithPaths.makeDirectories((sock as NSString).deletingLastPathComponent)
            unlink(sock)
            services.append(Application(router: router, server: XendHTTP.server(),
                                        configuration: .init(address: .unixDomainSocket(path: sock), serverName: "xend"),
                                        logger: serviceLog))
        }
        if cfg.httpServer {
            let host = cfg.address.isEmpty ? "0.0.0.0" : (cfg.address == "localhost" ? "127.0.0.1" : cfg.address)
            services.append(Application(router: router, server: XendHTTP.server(),
                                        configuration: .init(address: .hostname(host, port: cfg.port), serverName: "xend"),
                                        logger: serviceLog))
        }
        let group = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: serviceLog)
        let done = DispatchSemaphore(value: 0)
        let failed = LockedBox(false)
        Task {
            do { try await group.run() } catch { log.error("xend: \(error)"); failed.set(true) }
            done.signal()
        }
        done.wait()
        log.info("Xend stopped; domains keep running")
        if cfg.unixServer { unlink(paths.resolve(cfg.unixPath)) }
        return failed.get() ? 1 : 0
    }
}

final class LockedBox<T>: @unchecked Sendable {
    private var v: T
    private let l = NSLock()
    init(_ v: T) { self.v = v }
    func get() -> T { l.lock(); defer { l.unlock() }; return v }
    func set(_ n: T) { l.lock(); v = n; l.unlock() }
}
