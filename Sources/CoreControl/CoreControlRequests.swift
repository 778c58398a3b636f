// Control-socket commands that carry an argument or a descriptor (beside the plain ones of
// CoreControlCommand): the balloon target, a SysRq key, a core dump.

/// A command with an argument, as sent on the core's control socket.
public enum CoreControlRequest: Sendable, Equatable {
    /// `balloon MIB`: set the virtio-balloon target to MIB MiB of guest RAM; reply `ok`, or
    /// `error ...` without a balloon device or with MIB out of 1...RAM.
    case balloon(mib: Int)
    /// `sysrq KEY`: a break on COM1 followed by KEY (one of a-z, 0-9; Linux's serial
    /// console treats a character right after a break as a SysRq key); reply `ok`.
    case sysrq(UInt8)
    /// `dump-core`: sent with one descriptor (SCM_RIGHTS), a regular file open for writing:
    /// the core writes the guest's RAM into it as an ELF core with the vCPUs stopped; reply
    /// `ok BYTES` once written, `error ...` otherwise.
    case dumpCore

    /// Parses one command line (without the newline); nil when it is none of these.
    public init?(line: String) {
        let f = line.split(separator: " ", omittingEmptySubsequences: true)
        switch (f.first, f.count) {
        case ("balloon", 2):
            guard let n = Int(f[1]), n > 0, n <= 1 << 22 else { return nil }
            self = .balloon(mib: n)
        case ("sysrq", 2):
            guard f[1].utf8.count == 1, let c = f[1].utf8.first,
                  (0x61...0x7A).contains(c) || (0x30...0x39).contains(c) else { return nil }
            self = .sysrq(c)
        case ("dump-core", 1):
            self = .dumpCore
        default:
            return nil
        }
    }

    /// The command as sent, newline-terminated.
    public var line: String {
        switch self {
        case .balloon(let mib): "balloon \(mib)\n"
        case .sysrq(let c): "sysrq \(Character(Unicode.Scalar(c)))\n"
        case .dumpCore: "dump-core\n"
        }
    }
}
