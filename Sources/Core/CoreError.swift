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

    public var description: String {
        switch self {
        case let .system(what, e): return "\(what): \(String(cString: strerror(e)))"
        case let .badArgument(s), let .kernel(s), let .kvm(s): return s
        }
    }
}
