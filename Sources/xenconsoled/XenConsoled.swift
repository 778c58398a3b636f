// xenconsoled: the console daemon of Domain-0 (the manual's console ring → xenconsoled).
//
//   xenconsoled [--no-fork|-N] [--socket PATH] [--log-dir DIR] [--pid-file F]
//               [--manifest FILE | --no-sandbox] [--ready-fd N]
//
// Binds its socket, then applies manifests/xenconsoled.manifest (Sandbox) before serving
// anything: from then on it opens nothing; rings, eventfds and log files arrive as
// descriptors with each registration (ConsoleBackend/ConsoleProtocol.swift).
import CLinux
import ConsoleBackend
import Glibc
import Sandbox

/// xenconsoled's command line, parsed by hand: swift-argument-parser pulls in
/// FoundationEssentials, which has no place in a process running under seccomp.
@main
struct XenConsoled {
    static let usage = """
    usage: xenconsoled [--no-fork|-N] [--socket PATH] [--log-dir DIR] [--pid-file FILE]
                       [--manifest FILE | --no-sandbox] [--ready-fd N]

    Keep each domain's console log and let xm console attach. Guest output of every
    registered domain is appended to DIR/guest-NAME.log (the registrant opens that file in
    the directory this daemon announces). On restart it has no registrations: xend
    registers every running domain again and logging continues.

    options:
      -N, --no-fork      stay in the foreground
      --socket PATH      socket (default $XENITH_ROOT/run/xenconsoled/socket)
      --log-dir DIR      guest log directory (default $XENITH_ROOT/var/log/xen/console)
      --pid-file FILE    write the daemon's pid to FILE
      --manifest FILE    security manifest (default $XENITH_MANIFESTS/xenconsoled.manifest,
                         else PREFIX/share/xenith/manifests/xenconsoled.manifest, else the source tree's)
      --no-sandbox       run without applying the manifest (debugging only)
      --ready-fd N       say `ready` (or `failed: REASON`) on descriptor N once serving
                         (Spawn/ReadinessMessage.swift); the manifest keeps fd 4 for it
      -h, --help         show this help
    """

    var noFork = false
    var socket: String?
    var logDir: String?
    var pidFile: String?
    var manifest: String?
    var noSandbox = false

    static func main() {
        var args = ServiceReadiness.adopt(fromArguments: Array(CommandLine.arguments.dropFirst()), program: "xenconsoled")
        var options = XenConsoled()
        func usageError(_ text: String) -> Never {
            log(text)
            ServiceReadiness.failed(text)
            var u = usage + "\n"
            u.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
            Glibc.exit(64)
        }
        // --flag=value is two arguments.
        args = args.flatMap { a -> [String] in
            if a.hasPrefix("--"), let eq = a.firstIndex(of: "=") { return [String(a[..<eq]), String(a[a.index(after: eq)...])] }
            return [a]
        }
        var i = 0
        func value(_ flag: String) -> String {
            i += 1
            guard i < args.count else { usageError("\(flag) needs a value") }
            return args[i]
        }
        while i < args.count {
            switch args[i] {
            case "-N", "--no-fork": options.noFork = true
            case "--socket": options.socket = value("--socket")
            case "--log-dir": options.logDir = value("--log-dir")
            case "--pid-file": options.pidFile = value("--pid-file")
            case "--manifest": options.manifest = value("--manifest")
            case "--no-sandbox": options.noSandbox = true
            case "-h", "--help":
                var u = usage + "\n"
                u.withUTF8 { _ = Glibc.write(1, $0.baseAddress, $0.count) }
                Glibc.exit(0)
            default: usageError("unknown argument '\(args[i])'")
            }
            i += 1
        }
        if options.manifest != nil && options.noSandbox { usageError("--manifest and --no-sandbox exclude each other") }
        options.run()
    }

    func run() {
        let path = socket ?? ConsolePaths.defaultSocket
        var dir = logDir ?? ConsolePaths.defaultLogDirectory
        if !dir.hasPrefix("/") { dir = currentDirectory() + "/" + dir }
        signal(SIGPIPE, SIG_IGN)
        // Start from a clean signal mask: a launcher's blocked SIGTERM (Dispatch threads
        // block it) would be inherited by the sandbox's reaper, which could then not
        // forward it.
        var termSignals = sigset_t()
        sigemptyset(&termSignals)
        for sig in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&termSignals, sig) }
        pthread_sigmask(SIG_UNBLOCK, &termSignals, nil)
        if isListening(path) { fail("\(path): another xenconsoled is already listening on this socket") }
        let manifestPath = noSandbox ? nil : (manifest ?? ServiceManifest.locateOrExit("xenconsoled.manifest", program: "xenconsoled"))
        if !noFork { ServiceDaemon.detachAndExit(program: "xenconsoled", readyFd: 4) }

        mkdirs(dir)
        var listener: Int32
        do { listener = try bindConsoleSocket(path: path) } catch { fail("\(error)") }
        if listener != 3 {
            // The manifest names the listener fd 3.
            if dup2(listener, 3) < 0 { fail("dup2: \(String(cString: strerror(errno)))") }
            close(listener)
            listener = 3
            _ = fcntl(3, F_SETFD, FD_CLOEXEC)
        }
        if let pidFile { ServicePidFile.writeOrExit(pidFile, program: "xenconsoled") }
        // Tests only: XENITH_XENCONSOLED_TEST_FORBIDDEN=1 or =PATH (once) makes one forbidden
        // syscall once sandboxed (a death by SIGSYS for xend to name and restart).
        let tripProbe = ServiceSyscallProbe.isArmed(service: "xenconsoled")
        if let m = manifestPath {
            _ = Sandbox.applyOrExit(manifestPath: m)
            if tripProbe { ServiceSyscallProbe.trip() }
        } else {
            log("running without a sandbox (--no-sandbox)")
        }
        // After the sandbox (its PID-namespace reaper must keep receiving SIGTERM to forward
        // it) and before any thread: SIGTERM/SIGINT/SIGHUP are read from a signalfd by the loop.
        let sigFD = clinux_termination_signalfd()

        let server: ConsoleServer
        do { server = try ConsoleServer(listenFD: listener, logDirectory: dir, log: { log($0) }) }
        catch { fail("\(error)") }
        if sigFD >= 0 { server.stopWhenReadable(sigFD) }
        log("listening on \(path), guest logs in \(dir)")
        server.start()
        // The signal for the launcher (the log line above is for people).
        ServiceReadiness.ready("listening on \(path)")
        server.wait()
    }

    private func currentDirectory() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buf, 4096) != nil else { return "" }
        return String(cString: buf)
    }

    private func mkdirs(_ path: String) {
        var cur = ""
        for part in path.split(separator: "/") { cur += "/" + part; _ = mkdir(cur, 0o755) }
    }

    /// True when something accepts connections on `path` and answers `list`.
    private func isListening(_ path: String) -> Bool {
        (try? listConsoles(socketPath: path)) != nil
    }
}

/// One line to standard error (the daemon's log).
func log(_ message: String) {
    var line = "xenconsoled: " + message + "\n"
    line.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
}

/// `xenconsoled: MESSAGE` on stderr, `failed: MESSAGE` to the launcher, exit 1.
func fail(_ message: String) -> Never { ServiceArguments.fail(program: "xenconsoled", message) }
