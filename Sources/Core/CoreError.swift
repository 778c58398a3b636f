#if canImport(Glibc)
import Glibc
#endif

/// Errors the core reports before or while running a domain. Each has a one-line
/// description naming the problem, printed by `xenith-core` before a non-zero exit.
public enum CoreError: Error, CustomStringConvertible {
    case system(String, Int32)
    case badArgument(String)
    case kernel(String)
    case kvm(String)
    /// A saved-state stream the core refuses (truncated, wrong version, a size or index out
    /// of range); the text names the record and byte offset.
    case badStream(String)

    public var description: String {
        switch self {
        case let .system(what, e): return "\(what): \(String(cString: strerror(e)))"
        case let .badArgument(s), let .kernel(s), let .kvm(s): return s
        case let .badStream(s): return "not a valid core state stream: " + s
        }
    }
}
