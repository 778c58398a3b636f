// The command-line plumbing every sandboxed service (blkback, netback, xenconsoled) shares:
// an argument cursor whose errors name the service and the flag, the lookup of the
// service's security manifest, daemonizing, and the forbidden-syscall test hook.
// Foundation-free, like the services.
import CLinux
import Spawn
#if canImport(Glibc)
import Glibc
#endif

/// Reads a service's arguments flag by flag. Every error is one stderr line
/// `PROGRAM: MESSAGE` and exit status 1 (the services' usage-error convention), and the
/// same text as `failed: MESSAGE` on the readiness descriptor when there is one.
/// `--ready-fd N` is taken here for every service (`ServiceReadiness`), before any other
/// flag, so that even a usage error reaches the launcher.
public struct ServiceArguments {
    /// The service's name, the prefix of its error lines (`blkback`).
    public let program: String
    private var rest: ArraySlice<String>

    /// - Parameters:
    ///   - program: the prefix of error lines.
    ///   - arguments: argv without argv[0]; `--ready-fd N` is adopted and removed.
    public init(program: String, arguments: some Collection<String>) {
        self.program = program
        rest = ArraySlice(ServiceReadiness.adopt(fromArguments: Array(arguments), program: program))
    }

    /// The next flag, nil when all are read.
    public mutating func next() -> String? { rest.popFirst() }

    /// The value following `flag`; exits with `FLAG needs a value` when there is none.
    public mutating func value(_ flag: String) -> String {
        guard let v = rest.popFirst() else { fail("\(flag) needs a value") }
        return v
    }

    /// The integer value following `flag`; exits naming the flag, the value and the
    /// accepted range when it is not an integer within `range`.
    public mutating func int(_ flag: String, in range: ClosedRange<Int>) -> Int {
        let v = value(flag)
        guard let n = Int(v), range.contains(n) else {
            fail("\(flag) \(v): expected an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return n
    }

    /// Writes `PROGRAM: MESSAGE` to stderr and exits with status 1.
    public func fail(_ message: String) -> Never { ServiceArguments.fail(program: program, message) }

    /// Writes `PROGRAM: MESSAGE` to stderr, sends `failed: MESSAGE` on the readiness
    /// descriptor (if any, and nothing was sent yet) and exits with status 1.
    public static func fail(program: String, _ message: String) -> Never {
        var line = "\(program): \(message)\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        ServiceReadiness.failed(message)
        exit(1)
    }
}

/// Where a service finds its security manifest (manifests/README.md).
public enum ServiceManifest {
    /// The path of manifest `file` (e.g. `blkback.manifest`), first that is readable of:
    /// `$XENITH_MANIFESTS/FILE`; `BINDIR/../share/xenith/manifests/FILE` (an installed
    /// tree; BINDIR is the directory of /proc/self/exe); `manifests/FILE` in BINDIR or
    /// one of its parents (a build tree inside the sources). `$XENITH_MANIFESTS` is taken
    /// as given, readable or not, so a wrong setting fails loudly when it is loaded.
    /// - Returns: nil when none is found.
    public static func locate(_ file: String) -> String? {
        if let env = getenv("XENITH_MANIFESTS") { return String(cString: env) + "/" + file }
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        var dir = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        dir = String(dir[..<(dir.lastIndex(of: "/") ?? dir.endIndex)])
        let installed = dir + "/../share/xenith/manifests/" + file
        if access(installed, R_OK) == 0 { return installed }
        while !dir.isEmpty {
            let candidate = dir + "/manifests/" + file
            if access(candidate, R_OK) == 0 { return candidate }
            guard let slash = dir.lastIndex(of: "/") else { break }
            dir = String(dir[..<slash])
        }
        return nil
    }

    /// `locate(file)`, or exit with `PROGRAM: no manifest found: …` (status 1).
    public static func locateOrExit(_ file: String, program: String) -> String {
        guard let p = locate(file) else {
            ServiceArguments.fail(program: program, "no manifest found: give --manifest FILE (or --no-sandbox for debugging)")
        }
        return p
    }
}

/// Running a service in the background the way `xenstored` and `xenconsoled` do without
/// `-N`: the program re-executes itself as a daemon and the caller returns once the
/// daemon says it is ready, so a script that starts it can use it on the next line.
public enum ServiceDaemon {
    /// Re-executes this program (/proc/self/exe) with its arguments (less any
    /// `--ready-fd`) plus `foregroundFlag` and `--ready-fd READYFD`, in a new session
    /// (setsid), stdio on /dev/null and none of the caller's other descriptors, with a
    /// readiness channel's write end at `readyFd` (a number the daemon's manifest keeps,
    /// `fd READYFD readiness optional`), and waits for the daemon's message. Exits 0 on
    /// `ready` (first passing it on to this process's own launcher, `ServiceReadiness`).
    /// Exits 1 with `PROGRAM: …` on stderr (and `failed: …` to its own launcher) when the
    /// spawn fails, the daemon reports a failure, exits during start-up, or says nothing
    /// within `timeoutSeconds`.
    public static func detachAndExit(program: String, foregroundFlag: String = "-N", readyFd: Int32,
                                     timeoutSeconds: Int = 10) -> Never {
        var args: [String] = []
        var it = CommandLine.arguments.makeIterator()
        while let a = it.next() {
            if a == ServiceReadiness.option { _ = it.next(); continue }
            if a.hasPrefix(ServiceReadiness.option + "=") { continue }
            args.append(a)
        }
        let channel: ReadinessChannel
        let pid: pid_t
        var o = SpawnOptions()
        o.executable = "/proc/self/exe"
        do {
            channel = try ReadinessChannel.make()
            o.descriptors = [channel.handOver(at: readyFd)]
            pid = try spawnProcess(args + [foregroundFlag, ServiceReadiness.option, String(readyFd)], o)
        } catch { ServiceArguments.fail(program: program, "cannot start daemon: \(error.message)") }
        switch channel.wait(pid: pid, timeout: .seconds(timeoutSeconds)) {
        case .ready(let detail):
            ServiceReadiness.ready(detail)
            exit(0)
        case .failed(let reason):
            ServiceArguments.fail(program: program, "daemon failed to start: \(reason)")
        case .exited(let status):
            ServiceArguments.fail(program: program, "daemon exited during startup (status \(status)); run with \(foregroundFlag) to see why")
        case .timedOut:
            ServiceArguments.fail(program: program, "daemon did not answer within \(timeoutSeconds) s")
        }
    }
}

/// The test hook that proves a service's seccomp filter and its supervisor: once armed, the
/// service makes one system call no manifest allows (getppid) right after its sandbox is
/// applied, so it dies by SIGSYS and the supervisor must name the call and restart it.
public enum ServiceSyscallProbe {
    /// Whether the hook is armed for `service` by `$XENITH_<SERVICE>_TEST_FORBIDDEN`
    /// (service upper-cased): `1` arms it always; an absolute PATH arms it once, when PATH
    /// exists (it is removed, so the supervisor's next restart runs normally). Call it
    /// before the sandbox is applied (the sandbox's file system is empty).
    public static func isArmed(service: String) -> Bool {
        guard let v = getenv("XENITH_\(service.uppercased())_TEST_FORBIDDEN").map({ String(cString: $0) }) else { return false }
        if v == "1" { return true }
        return v.hasPrefix("/") && unlink(v) == 0
    }

    /// Makes the forbidden call (getppid). Under the sandbox's filter the process dies by
    /// SIGSYS and the reporter names `getppid` on stderr; without a filter it returns.
    public static func trip() { _ = getppid() }
}
