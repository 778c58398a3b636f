// Consoles through xenconsoled (DESIGN.md "Processes": core ──console ring──▶ xenconsoled).
//
// Who holds a domain's console ring (ConsoleBackend.ConsoleRingChannel: a sealed memfd and
// two eventfds):
//   - the core, at fixed descriptor numbers 3, 4, 5 (`--console-ring-fd 3 --console-out-fd 4
//     --console-in-fd 5`) for as long as the domain runs: it is the canonical holder;
//   - xenconsoled, which received copies with each registration;
//   - xend, which keeps a copy per running domain to register it again whenever
//     xenconsoled restarts (it comes back with no registrations).
// xenconsoled runs in its own session, so it outlives xend. When xend itself restarts, its
// copies are gone: it re-adopts the running xenconsoled (pid file + `list`), takes fresh
// copies of each re-adopted core's ring straight from the core with pidfd_getfd(2) (fds
// 3, 4, 5), and registers every domain xenconsoled does not list. So neither an xend
// restart nor an xenconsoled restart, nor both, loses a console; the ring's indices carry
// over, so no output is lost either.
//
// A qemu domain's console is a stream instead (QEMU's serial chardev cannot speak the ring):
// xend makes a socketpair, QEMU inherits one end (`-chardev socket,fd=N`), xenconsoled gets
// the other with `register-stream`, and xend keeps its own copy of that end for as long as
// the domain runs, to register it again after xenconsoled restarts (what QEMU writes
// meanwhile waits in the socket buffer; once it is full, the guest's UART waits too).
// After an xend restart, xend takes a copy of that end back from the running xenconsoled
// (`stream-fd`). If xenconsoled died while xend was down, every copy of xend's end is gone
// and QEMU's chardev sees the peer hang up: that console cannot be recovered (QEMU's own
// end, reachable with pidfd_getfd, is the wrong end of the pair), and the domain runs on
// without console output until it is restarted; xend logs this.
import CLinux
import ConsoleBackend
import Foundation
import Logging
import Spawn
import Sandbox
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

/// glibc's pidfd_getfd(2) wrapper (glibc ≥ 2.36): a copy of descriptor `targetfd` of the
/// process behind `pidfd` (needs ptrace access, i.e. root here).
@_silgen_name("pidfd_getfd")
func pidfdGetfd(_ pidfd: Int32, _ targetfd: Int32, _ flags: UInt32) -> Int32

/// The descriptor numbers a core inherits its console ring at (ring memfd, outEvent, inEvent).
public let coreConsoleFDs: (ring: Int32, out: Int32, input: Int32) = (3, 4, 5)

/// Where the security manifests are: `$XENITH_MANIFESTS`, then `BINDIR/../share/xenith/manifests`
/// (an installed tree), then a `manifests/` directory in a parent of BINDIR (a build inside
/// the sources), then the sources this xend was built from. Nil when none has `file`.
public func resolveManifestDirectory(binDir: String, file: String = "blkback.manifest",
                                     sourceFile: String = #filePath) -> String? {
    var candidates: [String] = []
    if let env = getenv("XENITH_MANIFESTS") { candidates.append(String(cString: env)) }
    candidates.append(binDir + "/../share/xenith/manifests")
    var dir = binDir
    while dir.count > 1 {
        candidates.append(dir + "/manifests")
        dir = (dir as NSString).deletingLastPathComponent
    }
    // Sources/Xend/Consoles.swift → the repository's manifests/.
    let repo = ((sourceFile as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent
    candidates.append((repo as NSString).deletingLastPathComponent + "/manifests")
    for c in candidates where access(c + "/" + file, R_OK) == 0 {
        return URL(fileURLWithPath: c).standardizedFileURL.path
    }
    return nil
}

/// The last `limit` bytes of a file as text ("" when unreadable).
func fileTail(_ path: String, limit: Int = 8192) -> String {
    guard let h = FileHandle(forReadingAtPath: path) else { return "" }
    defer { try? h.close() }
    let size = (try? h.seekToEnd()) ?? 0
    try? h.seek(toOffset: size > UInt64(limit) ? size - UInt64(limit) : 0)
    return String(decoding: h.readDataToEndOfFile(), as: UTF8.self)
}

/// Spawns `argv` detached (own session), stdin and stdout on /dev/null, stderr appended to
/// `log`, with `fds` (source → target number) inherited and every other descriptor closed
/// on exec. Sets `SWIFT_BACKTRACE=enable=no` (the backtracer cannot run sandboxed).
/// - Returns: the pid.
/// - Throws: `EngineError` with strerror text.
func spawnDetached(_ argv: [String], log: String, fds: [(Int32, Int32)] = []) throws -> pid_t {
    var env = currentEnvironment()
    env["SWIFT_BACKTRACE"] = "enable=no"
    do {
        return try spawnProcess(argv, SpawnOptions(stderr: .file(log), descriptors: fds.map { (source: $0.0, target: $0.1) },
                                                   environment: env))
    } catch { throw EngineError(error.message) }
}

/// Runs xenconsoled for one `$XENITH_ROOT`, restarts it with backoff when it dies, and
/// keeps every running domain's console registered with it.
public final class ConsoleSupervisor: @unchecked Sendable {
    let paths: XenithPaths
    let binary: String
    let manifest: String?
    let log: Logger
    private let lock = NSLock()
    /// A domain's console as xend holds it.
    enum Console {
        /// The core's console ring.
        case ring(ConsoleRingChannel)
        /// xend's copy of its end of a qemu domain's serial socketpair.
        case stream(StreamEnd)
    }
    /// Owns one descriptor; closes it when the last reference goes.
    final class StreamEnd: @unchecked Sendable {
        let fd: Int32
        init(_ fd: Int32) { self.fd = fd }
        deinit { close(fd) }
    }
    private var channels: [Int: (name: String, console: Console)] = [:]
    private var pid: pid_t = 0
    private var isChild = false
    private var stopping = false

    /// The daemon's socket.
    public var socketPath: String { paths.xenconsoledSocket }
    var pidFile: String { paths.resolve("/run/xenconsoled/xenconsoled.pid") }
    var logPath: String { paths.logDir + "/xenconsoled.log" }

    /// - Parameters:
    ///   - binary: the xenconsoled executable (beside xend's).
    ///   - manifest: `xenconsoled.manifest`, nil to run it without a sandbox (logged).
    public init(paths: XenithPaths, binary: String, manifest: String?, logger: Logger) {
        self.paths = paths
        self.binary = binary
        self.manifest = manifest
        self.log = logger
    }

    /// The running daemon's pid (0 when none).
    public var daemonPid: pid_t { lock.lock(); defer { lock.unlock() }; return pid }

    /// Adopts a running xenconsoled of this root (pid file, answering `list`) or starts one,
    /// then watches it on a thread.
    public func start() {
        if let t = try? String(contentsOfFile: pidFile, encoding: .utf8),
           let p = Int32(t.trimmingCharacters(in: .whitespacesAndNewlines)), p > 0, kill(p, 0) == 0,
           (try? listConsoles(socketPath: socketPath)) != nil {
            lock.lock(); pid = p; isChild = false; lock.unlock()
            log.info("re-adopted xenconsoled, pid \(p)")
        } else if !spawn() {
            log.error("xenconsoled could not be started; retrying in the background")
        }
        let t = Thread { [self] in supervise() }
        t.name = "xenconsoled"
        t.start()
    }

    /// The descriptor xenconsoled's readiness pipe is handed at (its manifest's `fd 4
    /// readiness optional`).
    static let readyFD: Int32 = 4

    /// Starts a new daemon and waits (up to 10 s) for its readiness message. False on failure.
    private func spawn() -> Bool {
        XenithPaths.makeDirectories(paths.consoleLogDir)
        XenithPaths.makeDirectories((socketPath as NSString).deletingLastPathComponent)
        var argv = [binary, "-N", "--socket", socketPath, "--log-dir", paths.consoleLogDir, "--pid-file", pidFile,
                    "--ready-fd", String(Self.readyFD)]
        if let m = manifest { argv += ["--manifest", m] } else {
            argv.append("--no-sandbox")
            log.warning("no xenconsoled.manifest found (set XENITH_MANIFESTS): xenconsoled runs without a sandbox")
        }
        let p: pid_t
        let ready: ReadinessChannel
        do {
            ready = try ReadinessChannel.make()
            p = try spawnDetached(argv, log: logPath, fds: [ready.handOver(at: Self.readyFD)])
        } catch {
            log.error("cannot start xenconsoled: \(error)")
            return false
        }
        lock.lock(); pid = p; isChild = true; lock.unlock()
        switch ready.wait(pid: p, timeout: .seconds(10)) {
        case .ready:
            log.info("started xenconsoled, pid \(p), socket \(socketPath)")
            return true
        case .timedOut:
            log.error("xenconsoled did not say it was ready within 10 s; see \(logPath)")
            return false
        case let other:
            log.error("xenconsoled did not start: \(other)")
            return false
        }
    }

    /// Waits for the daemon to die; restarts it with backoff (0.1 s doubling to 5 s, reset
    /// after 30 s of good health) and registers every console again.
    private func supervise() {
        var backoff = 0.1
        while true {
            lock.lock(); let p = pid; let child = isChild; lock.unlock()
            if p > 0 {
                let up = Date()
                waitForExit(pid: p)
                var status: Int32 = 0
                let how: String
                if child && waitpid(p, &status, 0) == p {
                    how = Sandbox.describeDeath(service: "xenconsoled", status: status, stderr: fileTail(logPath))
                } else {
                    how = "xenconsoled (pid \(p)) exited"
                }
                lock.lock(); let quitting = stopping; lock.unlock()
                if quitting { return }
                log.error("\(how); restarting it")
                if Date().timeIntervalSince(up) > 30 { backoff = 0.1 }
            }
            lock.lock(); pid = 0; lock.unlock()
            usleep(UInt32(backoff * 1_000_000))
            backoff = min(backoff * 2, 5)
            if spawn() { registerAll() }
        }
    }

    /// Registers every console xenconsoled does not list (all of them after a restart).
    func registerAll() {
        let listed = Set(((try? listConsoles(socketPath: socketPath)) ?? []).map(\.domid))
        lock.lock(); let all = channels; lock.unlock()
        for (domid, c) in all.sorted(by: { $0.key < $1.key }) where !listed.contains(domid) {
            do {
                try register(domid: domid, name: c.name, c.console)
                log.info("registered the console of domain \(c.name) (\(domid)) with xenconsoled")
            } catch {
                log.error("cannot register the console of domain \(c.name) (\(domid)): \(error)")
            }
        }
    }

    /// A new console ring for a domain about to start; kept (and registered) until
    /// ``remove(domid:)``.
    /// - Throws: `ConsoleError` when the memfd or eventfds cannot be created.
    public func create(domid: Int, name: String) throws -> ConsoleRingChannel {
        let ch = try ConsoleRingChannel.create(name: "console-\(name)")
        add(domid: domid, name: name, channel: ch)
        return ch
    }

    /// Keeps `channel` for `domid` and registers it (a failure is logged: the supervisor
    /// registers it again once xenconsoled is back).
    public func add(domid: Int, name: String, channel: ConsoleRingChannel) {
        add(domid: domid, name: name, .ring(channel))
    }

    private func add(domid: Int, name: String, _ console: Console) {
        lock.lock(); channels[domid] = (name, console); lock.unlock()
        do { try register(domid: domid, name: name, console) }
        catch { log.error("cannot register the console of domain \(name) (\(domid)): \(error)") }
    }

    private func register(domid: Int, name: String, _ console: Console) throws(ConsoleError) {
        switch console {
        case .ring(let ch): try registerConsole(socketPath: socketPath, domid: domid, name: name, channel: ch)
        case .stream(let end): try registerStreamConsole(socketPath: socketPath, domid: domid, name: name, streamFD: end.fd)
        }
    }

    /// A serial socketpair for a qemu domain about to start: xend keeps one end (and
    /// registers it with xenconsoled as a stream console) until ``remove(domid:)``.
    /// - Returns: the other end, close-on-exec, for QEMU to inherit (`QemuSerial.socketFD`);
    ///   the caller closes it once QEMU holds it.
    /// - Throws: `EngineError` when socketpair(2) fails.
    public func createStream(domid: Int, name: String) throws -> Int32 {
        var sv: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0 else {
            throw EngineError("socketpair: \(String(cString: strerror(errno)))")
        }
        add(domid: domid, name: name, .stream(StreamEnd(sv[0])))
        return sv[1]
    }

    /// After an xend restart, for a re-adopted qemu domain: takes a copy of xend's end of its
    /// serial socketpair back from xenconsoled (`stream-fd`) and keeps it.
    /// - Returns: false when xenconsoled does not hold it (it died while xend was down: the
    ///   console is lost, see the top of this file).
    @discardableResult
    public func adoptStream(domid: Int, name: String, listed: Set<Int>) -> Bool {
        guard listed.contains(domid) else {
            log.error("domain \(name) (\(domid)): xenconsoled no longer holds its console stream (it stopped while xend was down); the console of this qemu domain is lost until the domain restarts")
            return false
        }
        do {
            let fd = try fetchStreamConsole(socketPath: socketPath, domid: domid)
            lock.lock(); channels[domid] = (name, .stream(StreamEnd(fd))); lock.unlock()
            return true
        } catch {
            log.error("domain \(name) (\(domid)): cannot take its console stream back from xenconsoled: \(error)")
            return false
        }
    }

    /// After an xend restart: takes copies of a re-adopted core's ring (fds 3, 4, 5 of
    /// `pid`) and keeps them; registers the console only if xenconsoled does not list it.
    /// - Returns: false when the core holds no console ring there.
    @discardableResult
    public func adopt(domid: Int, name: String, pid: pid_t, listed: Set<Int>) -> Bool {
        let pfd = pidfdOpen(pid, 0)
        guard pfd >= 0 else { return false }
        defer { close(pfd) }
        let fds = [coreConsoleFDs.ring, coreConsoleFDs.out, coreConsoleFDs.input].map { pidfdGetfd(pfd, $0, 0) }
        guard fds.allSatisfy({ $0 >= 0 }), let ch = try? ConsoleRingChannel(ringFD: fds[0], outEventFD: fds[1], inEventFD: fds[2]) else {
            for f in fds where f >= 0 { close(f) }
            log.error("domain \(name) (\(domid)): no console ring in its core (pidfd_getfd: \(String(cString: strerror(errno))))")
            return false
        }
        lock.lock(); channels[domid] = (name, .ring(ch)); lock.unlock()
        if !listed.contains(domid) {
            do { try registerConsole(socketPath: socketPath, domid: domid, name: name, channel: ch) }
            catch { log.error("cannot register the console of domain \(name) (\(domid)): \(error)") }
        }
        return true
    }

    /// The domids xenconsoled has registered (empty when it does not answer).
    public func listed() -> Set<Int> { Set(((try? listConsoles(socketPath: socketPath)) ?? []).map(\.domid)) }

    /// Unregisters a domain's console (attached `xm console`s see EOF) and drops the ring.
    public func remove(domid: Int) {
        lock.lock(); let had = channels.removeValue(forKey: domid) != nil; lock.unlock()
        if had { try? unregisterConsole(socketPath: socketPath, domid: domid) }
    }
}
