// Applying a manifest to the calling process (DESIGN.md "Sandboxing"; order and rationale
// in manifests/README.md). Only executables call this, at startup, before any guest input.
import Glibc
import CLinux
import CSeccomp
import CCap

/// A failed sandbox step. Fatal for the service: see `Sandbox.applyOrExit`.
public struct SandboxError: Error, Sendable, CustomStringConvertible {
    /// The step that failed, e.g. "pivot_root into empty tmpfs".
    public var step: String
    /// errno of the failing call, 0 when the failure is not a system-call error.
    public var code: Int32
    public var description: String {
        code == 0 ? step : "\(step): \(String(cString: strerror(code))) (errno \(code))"
    }
}

/// The driver-domain sandbox: applies a `Manifest` to the calling process.
public enum Sandbox {
    /// Applies `manifest` to the calling process, in this order: check the handed fds,
    /// close every other fd (0, 1, 2, the manifest's `fd` lines and `keepFds` stay),
    /// set rlimits, PR_SET_NO_NEW_PRIVS, unshare namespaces (user first, then the rest),
    /// make / private and pivot into an empty read-only tmpfs (mount namespace), drop every
    /// capability not kept (bounding, ambient, effective/permitted/inheritable; securebits
    /// locked), fork into the new PID namespace (pid: the caller continues as its PID 1;
    /// the original process stays behind as a sandboxed reaper), install the SIGSYS
    /// reporter and load the seccomp filter (default: trap → reported death by SIGSYS),
    /// then log one line to stderr.
    ///
    /// Call it from `main` before any thread is started (the user and pid namespaces need
    /// a single-threaded process) and before reading guest input.
    /// - Parameter keepFds: extra descriptors to keep besides those the manifest names.
    /// - Throws: `SandboxError` naming the step; the process may then be half-sandboxed
    ///   and must exit (use `applyOrExit`). An adopted readiness descriptor
    ///   (`ServiceReadiness`) the manifest does not declare as `fd N readiness` is an
    ///   error before anything changes.
    public static func apply(_ manifest: Manifest, keepFds: [Int32] = []) throws(SandboxError) {
        // Everything that can fail without side effects comes first.
        let filter = try SeccompFilter(manifest: manifest)
        defer { filter.release() }
        let names = SyscallNames()
        let wantsPid = manifest.namespaces.contains(.pid)
        if wantsPid || manifest.namespaces.contains(.user) {
            let threads = threadCount()
            guard threads == 1 else {
                throw SandboxError(step: "user/pid namespaces need a single-threaded process, found \(threads) threads", code: 0)
            }
        }

        if let r = ServiceReadiness.descriptor, !manifest.fds.contains(where: { $0.number == r && $0.name == "readiness" }) {
            // It would be closed below, and its number reused: the message would land elsewhere.
            throw SandboxError(step: "readiness descriptor \(r) is not declared in the manifest (fd \(r) readiness optional)", code: 0)
        }
        var keep = Set<Int32>([0, 1, 2]).union(keepFds)
        for fd in manifest.fds {
            // A readiness line only keeps the descriptor the service adopted (--ready-fd);
            // whatever else a launcher left at that number is closed like any stray fd.
            if fd.name == "readiness" && ServiceReadiness.descriptor != fd.number { continue }
            if try checkHandedFd(fd) { keep.insert(fd.number) }
        }
        try closeAllFds(except: keep)
        #if XENITH_SANITIZED
        sandboxedUnderSanitizer = 1
        #endif

        for limit in manifest.rlimits {
            #if XENITH_SANITIZED
            // A sanitizer build (make sanitize) maps its shadow memory and per-thread state as
            // private writable memory: an address-space or data limit sized for the service
            // kills it before its main. Such a build never ships.
            if limit.name == "data" || limit.name == "as" { continue }
            #endif
            let v = limit.value ?? UInt64.max   // RLIM_INFINITY
            var rl = rlimit(rlim_cur: rlim_t(v), rlim_max: rlim_t(v))
            guard setrlimit(__rlimit_resource_t(UInt32(limit.resource)), &rl) == 0 else {
                throw SandboxError(step: "setrlimit \(limit.name) (\(limit.location))", code: errno)
            }
        }

        guard clinux_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 else {
            throw SandboxError(step: "prctl(PR_SET_NO_NEW_PRIVS)", code: errno)
        }

        try Namespaces.unshare(manifest.namespaces)
        if manifest.namespaces.contains(.mount) { try Namespaces.pivotIntoEmptyRoot() }
        try Capabilities.dropAll(except: manifest.capabilities.map(\.value))

        if wantsPid {
            var lifeline: Int32 = -1
            let child = clinux_sandbox_fork(&lifeline)
            guard child >= 0 else { throw SandboxError(step: "fork into the new PID namespace", code: errno) }
            if child > 0 {
                // The reaper: no guest input ever reaches it; keep stderr only. The readiness
                // descriptor stays with the service (the child).
                ServiceReadiness.forget()
                try closeAllFds(except: [2, lifeline])
                let reaper = try SeccompFilter.reaper()
                guard seccomp_load(reaper.context) == 0 else {
                    throw SandboxError(step: "seccomp_load (reaper)", code: errno)
                }
                clinux_sandbox_reap(child)
            }
        }

        let prefix = "sandbox: \(manifest.service): "
        try names.installReporter(prefix: prefix, dieNumber: SeccompFilter.dieSyscall)
        let rc = seccomp_load(filter.context)
        guard rc == 0 else { throw SandboxError(step: "seccomp_load", code: -rc) }

        let caps = manifest.capabilities.isEmpty ? "none" : "[" + manifest.capabilities.map(\.name).joined(separator: ", ") + "]"
        let line = "sandbox: \(manifest.service) applied manifest \(manifest.path): "
            + "\(manifest.allowedSyscalls.count) syscalls allowed, "
            + "namespaces [\(manifest.namespaces.map(\.rawValue).joined(separator: ", "))], caps \(caps)\n"
        writeStderr(line)
    }

    /// Loads the manifest at `path` and applies it; on any failure writes
    /// "sandbox: <service or path>: <error>" to stderr, sends the same line as
    /// `failed: …` on the readiness descriptor (`ServiceReadiness`) and exits with status
    /// 70 (EX_SOFTWARE). Returns the applied manifest.
    public static func applyOrExit(manifestPath path: String, keepFds: [Int32] = []) -> Manifest {
        func die(_ line: String) -> Never {
            writeStderr(line + "\n")
            ServiceReadiness.failed(line)
            _exit(70)
        }
        let manifest: Manifest
        do {
            manifest = try Manifest.load(path: path)
        } catch {
            die("sandbox: \(path): cannot load manifest: \(error)")
        }
        do {
            try apply(manifest, keepFds: keepFds)
        } catch {
            die("sandbox: \(manifest.service): applying \(path) failed: \(error)")
        }
        return manifest
    }

    /// Describes how a sandboxed child ended, for a supervisor's log. `status` is the raw
    /// wait status from waitpid(2). When the child died by SIGSYS, the syscall is named
    /// from its "blocked syscall <name> (<nr>)" stderr line if `stderr` (the child's
    /// captured standard error, or its tail) is given.
    /// - Returns: e.g. "blkback exited with status 0", "blkback killed by SIGKILL (9)",
    ///   "blkback killed by SIGSYS: blocked syscall openat (257)".
    public static func describeDeath(service: String, status: Int32, stderr: String? = nil) -> String {
        let signal = status & 0x7f
        if signal == 0 { return "\(service) exited with status \((status >> 8) & 0xff)" }
        if signal == 0x7f { return "\(service) stopped by signal \((status >> 8) & 0xff)" }
        let core = (status & 0x80) != 0 ? " (core dumped)" : ""
        if signal == SIGSYS {
            if let stderr, let blocked = blockedSyscall(inStderr: stderr) {
                return "\(service) killed by SIGSYS: blocked syscall \(blocked.name) (\(blocked.number))\(core)"
            }
            return "\(service) killed by SIGSYS (seccomp: a syscall outside its manifest)\(core)"
        }
        return "\(service) killed by \(signalName(signal)) (\(signal))\(core)"
    }

    /// Finds the last "blocked syscall <name> (<nr>)" report in a child's stderr.
    public static func blockedSyscall(inStderr text: String) -> (name: String, number: Int32)? {
        for line in text.split(separator: "\n").reversed() {
            guard let range = line.firstRange(of: "blocked syscall ") else { continue }
            let parts = line[range.upperBound...].split(separator: " ")
            guard parts.count >= 2, parts[1].hasPrefix("("), parts[1].hasSuffix(")"),
                  let nr = Int32(parts[1].dropFirst().dropLast()) else { continue }
            return (String(parts[0]), nr)
        }
        return nil
    }

    static func signalName(_ signal: Int32) -> String {
        let names: [Int32: String] = [SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT",
            SIGILL: "SIGILL", SIGTRAP: "SIGTRAP", SIGABRT: "SIGABRT", SIGBUS: "SIGBUS",
            SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1", SIGSEGV: "SIGSEGV",
            SIGUSR2: "SIGUSR2", SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM", SIGTERM: "SIGTERM",
            SIGXCPU: "SIGXCPU", SIGXFSZ: "SIGXFSZ", SIGSYS: "SIGSYS"]
        return names[signal] ?? "signal"
    }

    // MARK: fds

    /// Roles with a type check: S_IFMT values each role may have.
    static let expectedKinds: [String: [mode_t]] = [
        "socket": [S_IFSOCK], "listener": [S_IFSOCK], "vhost-user": [S_IFSOCK],
        "image": [S_IFREG, S_IFBLK], "disk": [S_IFREG, S_IFBLK],
        "tap": [S_IFCHR], "vfio": [S_IFCHR], "log": [S_IFREG, S_IFIFO, S_IFCHR],
        "readiness": [S_IFIFO, S_IFSOCK],
    ]

    /// True if the handed fd is open (and of the right kind); false if optional and absent.
    private static func checkHandedFd(_ fd: HandedFd) throws(SandboxError) -> Bool {
        var st = stat()
        guard fstat(fd.number, &st) == 0 else {
            if fd.optional && errno == EBADF { return false }
            throw SandboxError(step: "handed fd \(fd.number) (\(fd.name), \(fd.location)) is not open", code: errno)
        }
        if let kinds = expectedKinds[fd.name], !kinds.contains(st.st_mode & S_IFMT) {
            throw SandboxError(step: "handed fd \(fd.number) is not a \(fd.name) (mode 0o\(String(st.st_mode, radix: 8)), \(fd.location))", code: 0)
        }
        return true
    }

    /// Closes every descriptor not in `keep` with close_range(2).
    static func closeAllFds(except keep: Set<Int32>) throws(SandboxError) {
        var first: UInt32 = 0
        for fd in keep.sorted() where fd >= 0 {
            if UInt32(fd) > first {
                guard clinux_close_range(first, UInt32(fd) - 1, 0) == 0 else {
                    throw SandboxError(step: "close_range(\(first), \(fd - 1))", code: errno)
                }
            }
            first = UInt32(fd) + 1
        }
        guard clinux_close_range(first, UInt32.max, 0) == 0 else {
            throw SandboxError(step: "close_range(\(first), ~0)", code: errno)
        }
    }

    private static func threadCount() -> Int {
        guard let dir = opendir("/proc/self/task") else { return 0 }
        defer { closedir(dir) }
        var count = 0
        while let entry = readdir(dir) {
            if entry.pointee.d_name.0 != 0x2e { count += 1 }   // skip "." and ".."
        }
        return count
    }
}

func writeStderr(_ text: String) {
    var text = text
    text.withUTF8 { buf in
        var offset = 0
        while offset < buf.count {
            let n = write(2, buf.baseAddress! + offset, buf.count - offset)
            if n < 0 { if errno == EINTR { continue }; return }
            offset += n
        }
    }
}
