// Errors and warnings for every configuration format this module reads.

/// An error in a configuration file (domain config, xend-config.sxp, or SXP text).
///
/// `description` is `FILE:LINE: key 'KEY': message`, or `FILE:LINE: message` when no
/// key applies. Lines are 1-based. Values given on the command line (`vmid=1`) report
/// `file` as `"<command line>"` and `line` as the 1-based position of the argument.
public struct ConfigError: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    /// Path or name of the file the error was found in.
    public var file: String
    /// 1-based line number of the offending text.
    public var line: Int
    /// The configuration key involved (`memory`, `disk`, `xend-port`), if any.
    public var key: String?
    /// What is wrong, in a few words.
    public var message: String

    public init(file: String, line: Int, key: String? = nil, message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        if let key {
            return "\(file):\(line): key '\(key)': \(message)"
        }
        return "\(file):\(line): \(message)"
    }
}

/// A non-fatal remark about a configuration file: an unknown xend-config.sxp key that is
/// kept, a domain-config key that xm accepted and Xenith ignores, a duplicate entry.
///
/// `description` is `FILE:LINE: warning: key 'KEY': message`.
public struct ConfigWarning: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var key: String?
    public var message: String

    public init(file: String, line: Int, key: String? = nil, message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        if let key {
            return "\(file):\(line): warning: key '\(key)': \(message)"
        }
        return "\(file):\(line): warning: \(message)"
    }
}

/// The engine a domain runs on (DESIGN.md "Two engines, one toolstack").
///
/// Used by `xend-config.sxp`'s `domain-engine` (the host default) and by a domain
/// configuration's `engine` key (a per-domain request).
public enum DomainEngine: String, Sendable, Hashable, CaseIterable {
    /// Core where KVM is hardware-backed, qemu otherwise (or the host default).
    case auto
    /// Xenith's own Swift/KVM core (direct Linux kernel boot).
    case core
    /// `qemu-system-x86_64` (HVM: firmware boot, CD-ROM, VNC/SDL, emulated NICs).
    case qemu
}
