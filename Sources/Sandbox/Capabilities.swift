// Dropping capabilities with libcap, and reading them back.
import Glibc
import CLinux
import CCap

/// The calling thread's capability sets as 64-bit masks (bit n = capability n).
public struct CapabilitySets: Sendable, Equatable {
    public var effective: UInt64
    public var permitted: UInt64
    public var inheritable: UInt64
    /// The bounding set, read with PR_CAPBSET_READ.
    public var bounding: UInt64
    /// The ambient set, read with PR_CAP_AMBIENT_IS_SET.
    public var ambient: UInt64

    /// Reads the current sets with capget(2) and prctl(2) (both in common.manifest).
    public static func current() -> CapabilitySets {
        var header = __user_cap_header_struct(version: 0x20080522, pid: 0)   // _LINUX_CAPABILITY_VERSION_3
        var data = [__user_cap_data_struct](repeating: __user_cap_data_struct(), count: 2)
        _ = capget(&header, &data)
        func join(_ lo: UInt32, _ hi: UInt32) -> UInt64 { UInt64(lo) | UInt64(hi) << 32 }
        var bounding: UInt64 = 0, ambient: UInt64 = 0
        for cap in 0..<64 {
            if clinux_prctl(PR_CAPBSET_READ, UInt(cap), 0, 0, 0) == 1 { bounding |= 1 << UInt64(cap) }
            if clinux_prctl(PR_CAP_AMBIENT, UInt(PR_CAP_AMBIENT_IS_SET), UInt(cap), 0, 0) == 1 { ambient |= 1 << UInt64(cap) }
        }
        return CapabilitySets(effective: join(data[0].effective, data[1].effective),
                              permitted: join(data[0].permitted, data[1].permitted),
                              inheritable: join(data[0].inheritable, data[1].inheritable),
                              bounding: bounding, ambient: ambient)
    }
}

enum Capabilities {
    /// Drops every capability not in `kept` from the bounding set, clears the ambient set,
    /// locks the root-privilege securebits (so an exec could not regain capabilities even
    /// without no_new_privs) and sets effective = permitted = `kept`, inheritable = none.
    static func dropAll(except kept: [Int32]) throws(SandboxError) {
        let keep = Set(kept)
        let max = cap_max_bits()
        for cap in 0..<Int32(max) where !keep.contains(cap) {
            if clinux_prctl(PR_CAPBSET_READ, UInt(cap), 0, 0, 0) == 1 {
                guard cap_drop_bound(cap_value_t(cap)) == 0 else {
                    throw SandboxError(step: "drop capability \(cap) from the bounding set", code: errno)
                }
            }
        }
        guard cap_reset_ambient() == 0 || errno == EINVAL else {
            throw SandboxError(step: "clear the ambient capability set", code: errno)
        }
        // SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS_LOCKED and
        // SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock bit (<linux/securebits.h>).
        let securebits: UInt = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80
        if clinux_prctl(PR_SET_SECUREBITS, securebits, 0, 0, 0) != 0 && errno != EPERM {
            throw SandboxError(step: "prctl(PR_SET_SECUREBITS)", code: errno)
        }
        guard let caps = cap_init() else { throw SandboxError(step: "cap_init", code: errno) }
        defer { cap_free(UnsafeMutableRawPointer(caps)) }
        var values = keep.sorted().map { cap_value_t($0) }
        if !values.isEmpty {
            for set in [CAP_EFFECTIVE, CAP_PERMITTED] {
                guard cap_set_flag(caps, set, Int32(values.count), &values, CAP_SET) == 0 else {
                    throw SandboxError(step: "cap_set_flag", code: errno)
                }
            }
        }
        guard cap_set_proc(caps) == 0 else {
            throw SandboxError(step: "cap_set_proc (keep \(values))", code: errno)
        }
    }
}

extension Sandbox {
    /// Whether PR_SET_NO_NEW_PRIVS is set and the seccomp mode of the calling thread
    /// (0 none, 1 strict, 2 filter), read with prctl(2) (allowed by common.manifest).
    public static func processStatus() -> (noNewPrivs: Bool, seccompMode: Int32) {
        (clinux_prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, clinux_prctl(PR_GET_SECCOMP, 0, 0, 0, 0))
    }
}
