// The seccomp filter built from a manifest's rules with libseccomp.
import Glibc
import CLinux
import CSeccomp

struct SeccompFilter {
    let context: scmp_filter_ctx

    /// Syscall number the SIGSYS reporter issues to die: never allowed by any manifest
    /// (above every x86_64 syscall, below the x32 bit), so the default action traps it.
    static let dieSyscall: Int32 = 1023

    /// Builds (but does not load) the filter: default action SCMP_ACT_TRAP (the SIGSYS
    /// reporter names the syscall, then the process dies by SIGSYS), foreign architectures
    /// SCMP_ACT_KILL_PROCESS, filter synchronised to all threads (TSYNC).
    init(manifest: Manifest) throws(SandboxError) {
        guard let ctx = seccomp_init(SCMP_ACT_TRAP) else {
            throw SandboxError(step: "seccomp_init", code: ENOMEM)
        }
        context = ctx
        do {
            try setAttributes()
            try addRules(manifest.rules)
            try allowSanitizerRuntime()
        } catch {
            seccomp_release(ctx)
            throw error
        }
    }

    private init(defaultAction: UInt32) throws(SandboxError) {
        guard let ctx = seccomp_init(defaultAction) else {
            throw SandboxError(step: "seccomp_init", code: ENOMEM)
        }
        context = ctx
    }

    /// What a sanitizer build's runtime calls (make sanitize, which defines XENITH_SANITIZED):
    /// the ASan/TSan runtime sets and clears an alternate signal stack per thread, names and
    /// queries threads with prctl, maps and releases its shadow and allocator memory, and
    /// reads /proc/self/maps for its reports. Nothing in a build that ships.
    private func allowSanitizerRuntime() throws(SandboxError) {
        #if XENITH_SANITIZED
        for name in ["sigaltstack", "prctl", "mmap", "munmap", "mprotect", "madvise", "mremap", "sched_yield",
                     "openat", "read", "close", "readlink", "getpid", "gettid", "prlimit64", "getrlimit"] {
            let rc = seccomp_rule_add_array(context, SCMP_ACT_ALLOW, seccomp_syscall_resolve_name(name), 0, nil)
            guard rc == 0 || rc == -EEXIST else { throw SandboxError(step: "seccomp rule for \(name) (sanitizer build)", code: -rc) }
        }
        #endif
    }

    /// The reaper that stays behind a PID namespace: waits, forwards signals, exits.
    static func reaper() throws(SandboxError) -> SeccompFilter {
        let filter = try SeccompFilter(defaultAction: SCMP_ACT_KILL_PROCESS)
        try filter.setAttributes()
        try filter.allowSanitizerRuntime()
        let names = ["wait4", "kill", "rt_sigaction", "rt_sigreturn", "rt_sigprocmask", "write",
                     "exit", "exit_group", "getpid", "gettid", "tgkill", "restart_syscall"]
        for name in names {
            let nr = seccomp_syscall_resolve_name(name)
            let rc = seccomp_rule_add_array(filter.context, SCMP_ACT_ALLOW, nr, 0, nil)
            guard rc == 0 else { throw SandboxError(step: "seccomp rule for \(name) (reaper)", code: -rc) }
        }
        return filter
    }

    func release() { seccomp_release(context) }

    private func setAttributes() throws(SandboxError) {
        var rc = seccomp_attr_set(context, SCMP_FLTATR_ACT_BADARCH, UInt32(SCMP_ACT_KILL_PROCESS))
        guard rc == 0 else { throw SandboxError(step: "seccomp_attr_set(ACT_BADARCH)", code: -rc) }
        rc = seccomp_attr_set(context, SCMP_FLTATR_CTL_TSYNC, 1)
        guard rc == 0 else { throw SandboxError(step: "seccomp_attr_set(CTL_TSYNC)", code: -rc) }
    }

    private func addRules(_ rules: [SyscallRule]) throws(SandboxError) {
        // An unfiltered rule covers every filtered rule of the same syscall; identical
        // rules from several fragments are added once.
        var unfiltered = Set<Int32>()
        for rule in rules where rule.filters.isEmpty { unfiltered.insert(rule.number) }
        var added = Set<String>()
        for rule in rules {
            if rule.number == Self.dieSyscall {
                throw SandboxError(step: "\(rule.location): syscall \(rule.number) is reserved for the SIGSYS reporter", code: 0)
            }
            if !rule.filters.isEmpty && unfiltered.contains(rule.number) { continue }
            let key = "\(rule.number) \(rule.action) \(rule.filters)"
            guard added.insert(key).inserted else { continue }
            let action: UInt32
            switch rule.action {
            case .allow: action = SCMP_ACT_ALLOW
            case .errno(let e): action = xenith_scmp_act_errno(UInt16(e))
            }
            var conditions = rule.filters.map { f -> scmp_arg_cmp in
                switch f.comparison {
                case .equal: return scmp_arg_cmp(arg: UInt32(f.index), op: SCMP_CMP_EQ, datum_a: f.value, datum_b: 0)
                case .notEqual: return scmp_arg_cmp(arg: UInt32(f.index), op: SCMP_CMP_NE, datum_a: f.value, datum_b: 0)
                case .less: return scmp_arg_cmp(arg: UInt32(f.index), op: SCMP_CMP_LT, datum_a: f.value, datum_b: 0)
                case .lessOrEqual: return scmp_arg_cmp(arg: UInt32(f.index), op: SCMP_CMP_LE, datum_a: f.value, datum_b: 0)
                case .greater: return scmp_arg_cmp(arg: UInt32(f.index), op: SCMP_CMP_GT, datum_a: f.value, datum_b: 0)
                case .greaterOrEqual: return scmp_arg_cmp(arg: UInt32(f.index), op: SCMP_CMP_GE, datum_a: f.value, datum_b: 0)
                case .maskedEqual(let mask): return scmp_arg_cmp(arg: UInt32(f.index), op: SCMP_CMP_MASKED_EQ, datum_a: mask, datum_b: f.value)
                }
            }
            let rc = conditions.withUnsafeMutableBufferPointer {
                seccomp_rule_add_array(context, action, rule.number, UInt32($0.count), $0.baseAddress)
            }
            guard rc == 0 else {
                throw SandboxError(step: "seccomp rule for \(rule.name) (\(rule.location))", code: -rc)
            }
        }
    }
}

/// Native syscall names by number, resolved before the filter is loaded so that the
/// SIGSYS handler only has to index a table.
struct SyscallNames {
    static let count = 512
    var names: [String?]

    init() {
        names = (0..<Self.count).map { nr in
            guard let p = seccomp_syscall_resolve_num_arch(UInt32(SCMP_ARCH_NATIVE), Int32(nr)) else { return nil }
            defer { free(p) }
            return String(cString: p)
        }
    }

    /// Installs the C SIGSYS handler with this table (copied by the C side).
    func installReporter(prefix: String, dieNumber: Int32) throws(SandboxError) {
        var cStrings: [UnsafeMutablePointer<CChar>?] = names.map { $0.flatMap { strdup($0) } }
        defer { for p in cStrings { free(p) } }
        let rc = cStrings.withUnsafeMutableBufferPointer { buf in
            buf.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buf.count) {
                clinux_sigsys_install(prefix, $0, UInt32(buf.count), Int(dieNumber))
            }
        }
        guard rc == 0 else { throw SandboxError(step: "install SIGSYS reporter", code: errno) }
    }
}
