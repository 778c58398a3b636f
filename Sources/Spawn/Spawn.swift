// Starting the toolstack's child processes (engines, back-ends, xenconsoled, hotplug
// scripts) one way: posix_spawn with a clean signal state, chosen standard streams,
// descriptors handed over at fixed numbers, and nothing else of the parent inherited.
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Held while a spawn runs with a raised RLIMIT_MEMLOCK (`SpawnOptions.memlockBytes`), and
/// by every other spawn, so that no other child inherits the raised limit.
private let spawnLimitLock = Mutex(())

/// Where a child's standard stream goes.
public enum SpawnStream: Sendable, Equatable {
    /// /dev/null.
    case devNull
    /// A file opened in the child: appended to, or truncated, created with `mode`.
    case file(String, append: Bool = true, mode: mode_t = 0o644)
    /// An open descriptor of the parent (e.g. a pipe end), duplicated onto the stream.
    case descriptor(Int32)
    /// The same file as the child's stderr (stdout only; stderr is set up first).
    case stderr
}

/// How to start a child process.
public struct SpawnOptions: Sendable {
    public var stdin: SpawnStream = .devNull
    public var stdout: SpawnStream = .devNull
    public var stderr: SpawnStream = .devNull
    /// Parent descriptors handed to the child at fixed numbers (source → target, targets
    /// above 2). A source may equal its target.
    public var descriptors: [(source: Int32, target: Int32)] = []
    /// The child's whole environment; nil inherits the parent's.
    public var environment: [String: String]? = nil
    /// A new session and process group (setsid), so the child outlives its parent's group.
    public var newSession: Bool = true
    /// The file to run when it is not `argv[0]` (e.g. /proc/self/exe, keeping argv[0]).
    public var executable: String? = nil
    /// RLIMIT_MEMLOCK (soft and hard, bytes) the child starts with; nil inherits ours.
    /// posix_spawn cannot set limits, so the parent's own limit is raised around the
    /// spawn (needs CAP_SYS_RESOURCE) while no other spawn runs. For QEMU with VFIO
    /// devices: VFIO's type-1 IOMMU pins all guest RAM against this limit.
    public var memlockBytes: UInt64? = nil

    public init(stdin: SpawnStream = .devNull, stdout: SpawnStream = .devNull, stderr: SpawnStream = .devNull,
                descriptors: [(source: Int32, target: Int32)] = [], environment: [String: String]? = nil,
                newSession: Bool = true) {
        self.stdin = stdin; self.stdout = stdout; self.stderr = stderr
        self.descriptors = descriptors; self.environment = environment; self.newSession = newSession
    }
}

/// A child that could not be started; `message` names the program or descriptor and the
/// strerror text.
public struct SpawnError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

@_silgen_name("close_range")
private func spawnCloseRange(_ first: UInt32, _ last: UInt32, _ flags: Int32) -> Int32

/// The current process's environment as a dictionary.
public func currentEnvironment() -> [String: String] {
    var env: [String: String] = [:]
    var p = environ
    while let entry = p.pointee {
        let s = String(cString: entry)
        if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
        p += 1
    }
    return env
}

/// Starts `argv[0]` (a path; or `options.executable`) with `argv` and `options`: signal mask empty and every signal
/// at its default action; stdin, stdout and stderr as asked; each handed descriptor at its
/// target number; every other descriptor of the parent closed on exec (the parent's
/// descriptors above stderr are marked close-on-exec: a child must never hold xend's
/// sockets).
/// - Returns: the child's pid (the caller reaps it).
/// - Throws: `SpawnError` when a descriptor cannot be duplicated or posix_spawn fails.
public func spawnProcess(_ argv: [String], _ options: SpawnOptions = SpawnOptions()) throws(SpawnError) -> pid_t {
    precondition(!argv.isEmpty, "spawnProcess needs a program")
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var empty = sigset_t(); sigemptyset(&empty)
    var all = sigset_t(); sigfillset(&all)
    posix_spawnattr_setsigmask(&attr, &empty)
    posix_spawnattr_setsigdefault(&attr, &all)
    // POSIX_SPAWN_SETSID is glibc's 0x80 (not imported into Swift).
    let flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) | (options.newSession ? 0x80 : 0)
    posix_spawnattr_setflags(&attr, Int16(flags))

    var fa = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&fa)
    defer { posix_spawn_file_actions_destroy(&fa) }
    func setUp(_ fd: Int32, _ s: SpawnStream) {
        switch s {
        case .devNull: posix_spawn_file_actions_addopen(&fa, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0)
        case .file(let path, let append, let mode):
            let how = fd == 0 ? O_RDONLY : (O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC))
            posix_spawn_file_actions_addopen(&fa, fd, path, how, mode)
        case .descriptor(let src): posix_spawn_file_actions_adddup2(&fa, src, fd)
        case .stderr: posix_spawn_file_actions_adddup2(&fa, 2, fd)
        }
    }
    setUp(0, options.stdin)
    setUp(2, options.stderr)
    setUp(1, options.stdout)
    // Sources move above every target first, so no dup2 clobbers a later source; dup2 onto
    // the target clears close-on-exec there.
    var high: [Int32] = []
    defer { for h in high { close(h) } }
    for (src, _) in options.descriptors {
        let h = fcntl(src, F_DUPFD_CLOEXEC, 100)
        guard h >= 0 else { throw SpawnError(message: "descriptor \(src): \(String(cString: strerror(errno)))") }
        high.append(h)
    }
    for (i, d) in options.descriptors.enumerated() { posix_spawn_file_actions_adddup2(&fa, high[i], d.target) }

    var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    defer { for a in cargs { free(a) } }
    var cenv: [UnsafeMutablePointer<CChar>?] = (options.environment ?? currentEnvironment()).map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for e in cenv { free(e) } }
    _ = spawnCloseRange(3, UInt32.max, 4 /* CLOSE_RANGE_CLOEXEC */)
    var pid: pid_t = 0
    let path = options.executable ?? argv[0]
    let rc: Int32 = spawnLimitLock.withLock { _ in
        guard let m = options.memlockBytes else { return posix_spawn(&pid, path, &fa, &attr, &cargs, &cenv) }
        var old = rlimit()
        getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &old)
        var raised = rlimit(rlim_cur: rlim_t(m), rlim_max: rlim_t(m))
        if setrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &raised) != 0 { return errno }
        defer { setrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &old) }
        return posix_spawn(&pid, path, &fa, &attr, &cargs, &cenv)
    }
    guard rc == 0 else { throw SpawnError(message: "\(path): \(String(cString: strerror(rc)))") }
    return pid
}
