// The security manifest of one service (DESIGN.md "Sandboxing"; format in manifests/README.md).
// Parsed without Foundation: sandboxed services must not link it (PLATFORM.md).
import Glibc
import CSeccomp
import CCap

/// Where a manifest line came from, for error messages and the apply log.
public struct SourceLocation: Sendable, Equatable, CustomStringConvertible {
    /// Path of the manifest file as it was given (or the include's resolved path).
    public var file: String
    /// 1-based line number.
    public var line: Int
    public var description: String { "\(file):\(line)" }
}

/// A parse or load error: the file, the line, and the offending token.
public struct ManifestError: Error, Sendable, Equatable, CustomStringConvertible {
    public var location: SourceLocation
    /// The token that could not be accepted ("" when the problem is a missing token).
    public var token: String
    /// What is wrong, e.g. "unknown syscall".
    public var problem: String
    public var description: String {
        token.isEmpty ? "\(location): \(problem)" : "\(location): \(problem) '\(token)'"
    }
}

/// One argument comparison of a syscall rule (libseccomp `struct scmp_arg_cmp`).
/// Manifest syntax: `argN == v` (also `!=`, `<`, `<=`, `>`, `>=`) or `argN & mask == v`.
public struct ArgumentFilter: Sendable, Equatable {
    /// The comparison, as libseccomp's SCMP_CMP_* operators.
    public enum Comparison: Sendable, Equatable {
        case equal, notEqual, less, lessOrEqual, greater, greaterOrEqual
        /// `(arg & mask) == value`.
        case maskedEqual(mask: UInt64)
    }
    /// Syscall argument index, 0...5.
    public var index: Int
    public var comparison: Comparison
    /// The 64-bit value compared against.
    public var value: UInt64
}

/// What the filter does when a rule matches.
public enum RuleAction: Sendable, Equatable {
    /// Let the syscall run.
    case allow
    /// Do not run it; return -errno to the caller (0 means "pretend success").
    case errno(Int32)
}

/// One syscall rule (`allow …` or `errno …` line); every rule carries the reason it exists.
public struct SyscallRule: Sendable, Equatable {
    /// The syscall name as written (e.g. "pread64").
    public var name: String
    /// Native syscall number (resolved with seccomp_syscall_resolve_name).
    public var number: Int32
    public var action: RuleAction
    /// All must hold (AND); several rules for one syscall are alternatives (OR).
    public var filters: [ArgumentFilter]
    /// The text after `--`; never empty.
    public var reason: String
    /// The line the rule came from (an included fragment's own file and line).
    public var location: SourceLocation
}

/// A namespace the service leaves the host's instance of (unshare(2)).
public enum Namespace: String, Sendable, CaseIterable {
    case user, mount, pid, ipc, net, uts, cgroup
}

/// A resource limit (setrlimit(2)); soft and hard are both set to `value`.
public struct ResourceLimit: Sendable, Equatable {
    /// Manifest name: nofile, as, data, core, nproc, fsize, memlock, stack, cpu, msgqueue.
    public var name: String
    /// RLIMIT_* number.
    public var resource: Int32
    /// Bytes for as/data/core/fsize/memlock/stack/msgqueue, seconds for cpu, a count
    /// otherwise; `nil` is RLIM_INFINITY.
    public var value: UInt64?
    public var location: SourceLocation
}

/// A descriptor the launcher hands the service at a fixed number.
public struct HandedFd: Sendable, Equatable {
    /// The descriptor number (3 and up; 0...2 are stdio and always kept).
    public var number: Int32
    /// Role name, e.g. "socket", "image", "tap", "log". Known roles imply a type check
    /// at apply time (see `expectedKinds`).
    public var name: String
    /// When true the launcher may leave it out; otherwise apply fails if it is not open.
    public var optional: Bool
    public var location: SourceLocation
}

/// A capability the service keeps (normally none).
public struct KeptCapability: Sendable, Equatable {
    /// Name as written, e.g. "cap_net_admin".
    public var name: String
    /// CAP_* number.
    public var value: Int32
    /// The text after `--`; never empty.
    public var reason: String
}

/// A parsed, include-resolved service manifest.
public struct Manifest: Sendable {
    /// The service name from the `service` line.
    public var service: String
    /// Path of the top-level manifest file.
    public var path: String
    /// Syscall rules in file order (includes expanded in place).
    public var rules: [SyscallRule] = []
    /// Capabilities kept after apply (empty: all dropped).
    public var capabilities: [KeptCapability] = []
    /// Namespaces to unshare, in manifest order without duplicates.
    public var namespaces: [Namespace] = []
    /// Resource limits, one per name (a later line overrides an included one).
    public var rlimits: [ResourceLimit] = []
    /// Descriptors the launcher hands over, in manifest order.
    public var fds: [HandedFd] = []

    /// Syscall names the filter lets run (with or without argument filters), sorted.
    public var allowedSyscalls: [String] {
        Array(Set(rules.filter { $0.action == .allow }.map(\.name))).sorted()
    }
}

extension Manifest {
    /// Reads and parses the manifest at `path`, resolving `include` lines relative to the
    /// including file's directory (absolute include paths are used as they are).
    /// - Throws: `ManifestError` naming file, line and token for unreadable files, syntax
    ///   errors, unknown syscalls/capabilities/rlimits/namespaces, missing reasons,
    ///   include cycles and conflicting rules.
    public static func load(path: String) throws(ManifestError) -> Manifest {
        try parse(text: try readManifestFile(path, from: nil), file: path) { include, location throws(ManifestError) in
            let resolved = resolveInclude(include, relativeTo: location.file)
            return (resolved, try readManifestFile(resolved, from: location))
        }
    }

    /// Parses manifest `text` whose name (for messages) is `file`. `include` returns the
    /// resolved path and text of an included file; it is called with the include's operand
    /// and the location of the include line.
    /// - Throws: `ManifestError` as for `load(path:)`.
    public static func parse(
        text: String, file: String,
        include: (String, SourceLocation) throws(ManifestError) -> (path: String, text: String)
    ) throws(ManifestError) -> Manifest {
        var parser = ManifestParser()
        try parser.parseFile(text: text, file: file, depth: 0, include: include)
        guard let service = parser.service else {
            throw ManifestError(location: SourceLocation(file: file, line: 1), token: "",
                                problem: "missing 'service <name>' line")
        }
        var manifest = Manifest(service: service, path: file)
        manifest.rules = parser.rules
        manifest.capabilities = parser.capabilities
        manifest.namespaces = parser.namespaces
        manifest.rlimits = parser.rlimits
        manifest.fds = parser.fds
        try manifest.validate()
        return manifest
    }

    private func validate() throws(ManifestError) {
        // One syscall may not be both allowed and answered with an errno.
        var actions: [Int32: SyscallRule] = [:]
        for rule in rules {
            if let first = actions[rule.number] {
                let kinds = (first.action == .allow, rule.action == .allow)
                if kinds.0 != kinds.1 || (first.action != rule.action) {
                    throw ManifestError(location: rule.location, token: rule.name,
                                        problem: "conflicts with the rule at \(first.location) for syscall")
                }
            } else {
                actions[rule.number] = rule
            }
        }
        // Sandbox.apply logs to stderr after the filter is in place.
        guard rules.contains(where: { $0.name == "write" && $0.action == .allow && $0.filters.isEmpty }) else {
            throw ManifestError(location: SourceLocation(file: path, line: 1), token: "write",
                                problem: "manifest must allow (unfiltered) syscall")
        }
        var seen: [Int32: HandedFd] = [:]
        for fd in fds {
            if let other = seen[fd.number] {
                throw ManifestError(location: fd.location, token: String(fd.number),
                                    problem: "fd already declared at \(other.location):")
            }
            seen[fd.number] = fd
        }
    }
}

private func resolveInclude(_ include: String, relativeTo file: String) -> String {
    if include.hasPrefix("/") { return include }
    guard let slash = file.lastIndex(of: "/") else { return include }
    return String(file[...slash]) + include
}

/// Reads a whole file with open/read (no Foundation).
func readManifestFile(_ path: String, from location: SourceLocation?) throws(ManifestError) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    let at = location ?? SourceLocation(file: path, line: 0)
    guard fd >= 0 else {
        throw ManifestError(location: at, token: path, problem: "cannot open (errno \(errno))")
    }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw ManifestError(location: at, token: path, problem: "cannot read (errno \(errno))")
        }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
        if bytes.count > 1 << 20 {
            throw ManifestError(location: at, token: path, problem: "manifest larger than 1 MiB")
        }
    }
    return String(decoding: bytes, as: UTF8.self)
}
