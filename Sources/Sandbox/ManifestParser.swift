// Line-by-line parser for the manifest format of manifests/README.md.
import Glibc
import CLinux
import CSeccomp
import CCap

struct ManifestParser {
    typealias Include = (String, SourceLocation) throws(ManifestError) -> (path: String, text: String)
    var service: String?
    var rules: [SyscallRule] = []
    var capabilities: [KeptCapability] = []
    var namespaces: [Namespace] = []
    var rlimits: [ResourceLimit] = []
    var fds: [HandedFd] = []
    var includeStack: [String] = []

    mutating func parseFile(text: String, file: String, depth: Int, include: Include) throws(ManifestError) {
        includeStack.append(file)
        defer { includeStack.removeLast() }
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let location = SourceLocation(file: file, line: lineNumber)
            // `--` (a token of its own) starts the reason; `#` before it starts a comment.
            var body = Substring(rawLine)
            if let hash = body.firstIndex(of: "#"), Self.reasonStart(in: body[..<hash]) == nil {
                body = body[..<hash]
            }
            var reason: String?
            if let start = Self.reasonStart(in: body) {
                reason = body[body.index(start, offsetBy: 2)...].trimmed
                body = body[..<start]
            }
            let tokens = body.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard let keyword = tokens.first else {
                if reason != nil {
                    throw ManifestError(location: location, token: "--", problem: "reason without a rule")
                }
                continue
            }
            let args = Array(tokens.dropFirst())
            switch keyword {
            case "service":
                // A variant of a service's manifest (blkback-io_uring.manifest) includes the
                // base manifest, which names the same service: that line is the variant's own.
                if depth > 0, args.count == 1, let s = service, args[0] == s { break }
                guard depth == 0 else {
                    throw ManifestError(location: location, token: keyword, problem: "included fragments may not name another service:")
                }
                guard args.count == 1 else { throw expectation(location, args, "expected 'service <name>'") }
                guard service == nil else { throw ManifestError(location: location, token: args[0], problem: "second service name") }
                guard args[0].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                    throw ManifestError(location: location, token: args[0], problem: "bad service name")
                }
                service = args[0]
            case "include":
                guard args.count == 1 else { throw expectation(location, args, "expected 'include <file>'") }
                guard depth < 8 else { throw ManifestError(location: location, token: args[0], problem: "includes nested too deeply at") }
                let (path, text) = try include(args[0], location)
                if includeStack.contains(path) {
                    throw ManifestError(location: location, token: args[0], problem: "include cycle through")
                }
                try parseFile(text: text, file: path, depth: depth + 1, include: include)
            case "allow":
                try parseRule(args, action: nil, reason: reason, location: location)
            case "errno":
                guard args.count >= 2 else { throw expectation(location, args, "expected 'errno <syscall> <errno> [filters] -- <reason>'") }
                guard let value = Self.errnoValue(args[1]) else {
                    throw ManifestError(location: location, token: args[1], problem: "unknown errno value")
                }
                var ruleArgs = args
                ruleArgs.remove(at: 1)
                try parseRule(ruleArgs, action: .errno(value), reason: reason, location: location)
            case "cap", "caps":
                guard !args.isEmpty else { throw expectation(location, args, "expected 'cap none' or 'cap <name> -- <reason>'") }
                if args == ["none"] { continue }
                for name in args {
                    var value: cap_value_t = 0
                    guard cap_from_name(name, &value) == 0 else {
                        throw ManifestError(location: location, token: name, problem: "unknown capability")
                    }
                    try requireReason(reason, location: location, what: name)
                    capabilities.append(KeptCapability(name: name.lowercased(), value: Int32(value), reason: reason ?? ""))
                }
            case "namespaces", "namespace", "unshare":
                guard !args.isEmpty else { throw expectation(location, args, "expected 'namespaces <name>...'") }
                for name in args {
                    guard let ns = Namespace(rawValue: name) else {
                        throw ManifestError(location: location, token: name, problem: "unknown namespace")
                    }
                    if !namespaces.contains(ns) { namespaces.append(ns) }
                }
            case "rlimit":
                guard args.count == 2 else { throw expectation(location, args, "expected 'rlimit <name> <value|unlimited>'") }
                guard let resource = Self.rlimitResources[args[0]] else {
                    throw ManifestError(location: location, token: args[0], problem: "unknown rlimit")
                }
                let value: UInt64?
                if args[1] == "unlimited" { value = nil } else {
                    guard let v = Self.sizeValue(args[1]) else {
                        throw ManifestError(location: location, token: args[1], problem: "bad rlimit value")
                    }
                    value = v
                }
                let limit = ResourceLimit(name: args[0], resource: resource, value: value, location: location)
                rlimits.removeAll { $0.name == limit.name }   // a later line overrides an included one
                rlimits.append(limit)
            case "fd":
                guard args.count == 2 || (args.count == 3 && args[2] == "optional") else {
                    throw expectation(location, args, "expected 'fd <number> <name> [optional]'")
                }
                guard let number = Int32(args[0]), number >= 3, number < 1024 else {
                    throw ManifestError(location: location, token: args[0], problem: "fd number must be 3...1023, not")
                }
                fds.append(HandedFd(number: number, name: args[1], optional: args.count == 3, location: location))
            default:
                throw ManifestError(location: location, token: keyword, problem: "unknown keyword")
            }
        }
    }

    /// Index of a `--` that stands alone (whitespace or line edge on both sides).
    static func reasonStart(in line: Substring) -> Substring.Index? {
        var i = line.startIndex
        while i < line.endIndex {
            let next = line.index(after: i)
            if line[i] == "-", next < line.endIndex, line[next] == "-" {
                let before = i == line.startIndex ? " " : line[line.index(before: i)]
                let afterIndex = line.index(after: next)
                let after = afterIndex == line.endIndex ? " " : line[afterIndex]
                if (before == " " || before == "\t") && (after == " " || after == "\t" || after == "\r") {
                    return i
                }
            }
            i = next
        }
        return nil
    }

    private func expectation(_ location: SourceLocation, _ args: [String], _ problem: String) -> ManifestError {
        ManifestError(location: location, token: args.joined(separator: " "), problem: problem + ", got")
    }

    private func requireReason(_ reason: String?, location: SourceLocation, what: String) throws(ManifestError) {
        guard let reason, !reason.isEmpty else {
            throw ManifestError(location: location, token: what, problem: "missing reason ('-- why') for")
        }
    }

    /// `allow <syscall> [argN <op> <value> [&& ...]] -- reason` (action nil = allow).
    private mutating func parseRule(_ args: [String], action: RuleAction?, reason: String?,
                                    location: SourceLocation) throws(ManifestError) {
        guard let name = args.first else {
            throw ManifestError(location: location, token: "", problem: "missing syscall name")
        }
        let number = seccomp_syscall_resolve_name(name)
        guard number >= 0 else {   // __NR_SCMP_ERROR, or a pseudo-number for another architecture
            throw ManifestError(location: location, token: name, problem: "unknown syscall")
        }
        try requireReason(reason, location: location, what: name)
        var filters: [ArgumentFilter] = []
        var rest = Array(args.dropFirst())
        while !rest.isEmpty {
            if !filters.isEmpty {
                guard rest.first == "&&" else {
                    throw ManifestError(location: location, token: rest[0], problem: "expected '&&' between argument filters, got")
                }
                rest.removeFirst()
            }
            filters.append(try parseFilter(&rest, location: location))
        }
        if filters.count > 6 {
            throw ManifestError(location: location, token: name, problem: "more than 6 argument filters for")
        }
        rules.append(SyscallRule(name: name, number: number, action: action ?? .allow,
                                 filters: filters, reason: reason ?? "", location: location))
    }

    /// `argN <op> <value>` or `argN & <mask> == <value>`.
    private func parseFilter(_ rest: inout [String], location: SourceLocation) throws(ManifestError) -> ArgumentFilter {
        // `... && ` with nothing after it (found by fuzz-manifest: it trapped here).
        guard !rest.isEmpty else {
            throw ManifestError(location: location, token: "&&", problem: "expected an argument filter after")
        }
        let argToken = rest.removeFirst()
        guard argToken.hasPrefix("arg"), let index = Int(argToken.dropFirst(3)), (0...5).contains(index) else {
            throw ManifestError(location: location, token: argToken, problem: "expected arg0...arg5, got")
        }
        guard rest.count >= 2 else {
            throw ManifestError(location: location, token: argToken, problem: "incomplete argument filter after")
        }
        var op = rest.removeFirst()
        var mask: UInt64?
        if op == "&" {
            guard rest.count >= 3 else {
                throw ManifestError(location: location, token: argToken, problem: "expected 'argN & <mask> == <value>' after")
            }
            let maskToken = rest.removeFirst()
            guard let m = Self.constant(maskToken) else {
                throw ManifestError(location: location, token: maskToken, problem: "unknown constant")
            }
            mask = m
            op = rest.removeFirst()
            guard op == "==" else {
                throw ManifestError(location: location, token: op, problem: "masked filters compare with '==', not")
            }
        }
        let valueToken = rest.removeFirst()
        guard let value = Self.constant(valueToken) else {
            throw ManifestError(location: location, token: valueToken, problem: "unknown constant")
        }
        let comparison: ArgumentFilter.Comparison
        switch (op, mask) {
        case ("==", let m?): comparison = .maskedEqual(mask: m)
        case ("==", nil): comparison = .equal
        case ("!=", nil): comparison = .notEqual
        case ("<", nil): comparison = .less
        case ("<=", nil): comparison = .lessOrEqual
        case (">", nil): comparison = .greater
        case (">=", nil): comparison = .greaterOrEqual
        default: throw ManifestError(location: location, token: op, problem: "unknown comparison")
        }
        return ArgumentFilter(index: index, comparison: comparison, value: value)
    }

    // MARK: value tables

    static let rlimitResources: [String: Int32] = [
        "nofile": Int32(RLIMIT_NOFILE.rawValue), "as": Int32(RLIMIT_AS.rawValue),
        "data": Int32(RLIMIT_DATA.rawValue), "core": Int32(RLIMIT_CORE.rawValue),
        "nproc": Int32(__RLIMIT_NPROC.rawValue), "fsize": Int32(RLIMIT_FSIZE.rawValue),
        "memlock": Int32(__RLIMIT_MEMLOCK.rawValue), "stack": Int32(RLIMIT_STACK.rawValue),
        "cpu": Int32(RLIMIT_CPU.rawValue), "msgqueue": Int32(__RLIMIT_MSGQUEUE.rawValue),
    ]

    /// Decimal or 0x-hex, with an optional binary suffix K, M, G or T.
    static func sizeValue(_ token: String) -> UInt64? {
        var digits = Substring(token)
        var scale: UInt64 = 1
        if let last = digits.last, !digits.hasPrefix("0x") || "KMGT".contains(last) {
            switch last {
            case "K": scale = 1 << 10
            case "M": scale = 1 << 20
            case "G": scale = 1 << 30
            case "T": scale = 1 << 40
            default: break
            }
            if scale != 1 { digits = digits.dropLast() }
        }
        let parsed: UInt64?
        if digits.hasPrefix("0x") { parsed = UInt64(digits.dropFirst(2), radix: 16) } else { parsed = UInt64(digits) }
        guard let v = parsed else { return nil }
        let (product, overflow) = v.multipliedReportingOverflow(by: scale)
        return overflow ? nil : product
    }

    /// A number, or one of the named constants that manifests may use in argument filters.
    static func constant(_ token: String) -> UInt64? {
        if let v = sizeValue(token), token.first?.isNumber == true { return v }
        return namedConstants[token]
    }

    static let namedConstants: [String: UInt64] = [
        // ioctl requests (Linux <linux/fs.h>, <linux/if_tun.h>, <asm-generic/ioctls.h>)
        "BLKGETSIZE64": UInt64(CLINUX_BLKGETSIZE64), "BLKSSZGET": UInt64(CLINUX_BLKSSZGET),
        "BLKDISCARD": UInt64(CLINUX_BLKDISCARD), "TUNSETOFFLOAD": UInt64(CLINUX_TUNSETOFFLOAD),
        "TUNSETVNETHDRSZ": UInt64(CLINUX_TUNSETVNETHDRSZ), "TUNSETIFF": UInt64(CLINUX_TUNSETIFF),
        "FIONBIO": 0x5421, "FIONREAD": 0x541B, "FIOCLEX": 0x5451,
        // VFIO (<linux/vfio.h>: _IO(';', 100 + n))
        "VFIO_GET_API_VERSION": 0x3B64, "VFIO_CHECK_EXTENSION": 0x3B65, "VFIO_SET_IOMMU": 0x3B66,
        "VFIO_GROUP_GET_STATUS": 0x3B67, "VFIO_GROUP_SET_CONTAINER": 0x3B68, "VFIO_GROUP_GET_DEVICE_FD": 0x3B6A,
        "VFIO_DEVICE_GET_INFO": 0x3B6B, "VFIO_DEVICE_RESET": 0x3B6F,
        // fcntl commands
        "F_DUPFD": 0, "F_GETFD": 1, "F_SETFD": 2, "F_GETFL": 3, "F_SETFL": 4,
        "F_DUPFD_CLOEXEC": 1030, "F_ADD_SEALS": 1033, "F_GET_SEALS": 1034,
        // clone flags
        "CLONE_VM": 0x100, "CLONE_FS": 0x200, "CLONE_FILES": 0x400, "CLONE_SIGHAND": 0x800,
        "CLONE_THREAD": UInt64(CLINUX_CLONE_THREAD),
        // prctl options
        "PR_SET_PDEATHSIG": 1, "PR_SET_NAME": 15, "PR_GET_NAME": 16, "PR_GET_SECCOMP": 21,
        "PR_CAPBSET_READ": 23, "PR_GET_NO_NEW_PRIVS": 39, "PR_CAP_AMBIENT": 47,
        "PR_SET_VMA": 0x53564d41,
        // *at flags
        "AT_EMPTY_PATH": 0x1000,
        // signals
        "SIGSYS": UInt64(SIGSYS), "SIGKILL": UInt64(SIGKILL), "SIGTERM": UInt64(SIGTERM),
        // fallocate modes
        "FALLOC_FL_KEEP_SIZE": 0x01, "FALLOC_FL_PUNCH_HOLE": 0x02, "FALLOC_FL_ZERO_RANGE": 0x10,
        // mmap protections
        "PROT_EXEC": 0x4, "PROT_WRITE": 0x2, "PROT_READ": 0x1,
        // madvise advice
        "MADV_DONTNEED": 4, "MADV_FREE": 8, "MADV_REMOVE": 9,
    ]

    static let errnoNames: [String: Int32] = [
        "EPERM": EPERM, "ENOENT": ENOENT, "EINTR": EINTR, "EIO": EIO, "EBADF": EBADF,
        "EAGAIN": EAGAIN, "ENOMEM": ENOMEM, "EACCES": EACCES, "EFAULT": EFAULT, "EBUSY": EBUSY,
        "EEXIST": EEXIST, "EINVAL": EINVAL, "ENOTTY": ENOTTY, "ENOSPC": ENOSPC,
        "ENOSYS": ENOSYS, "EOPNOTSUPP": EOPNOTSUPP, "ENOTSUP": EOPNOTSUPP, "EAFNOSUPPORT": EAFNOSUPPORT,
    ]

    static func errnoValue(_ token: String) -> Int32? {
        if let v = errnoNames[token] { return v }
        if let v = Int32(token), (0...4095).contains(v) { return v }
        return nil
    }
}

extension StringProtocol {
    var trimmed: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
