#if canImport(Glibc)
import Glibc
#endif

/// Why a console operation failed. `description` is one line suitable for a log or for
/// `xm console`'s error output.
public enum ConsoleError: Error, Sendable, CustomStringConvertible {
    /// A system call failed: the call's name and errno.
    case system(String, Int32)
    /// The ring memfd or an eventfd handed over is unusable (wrong size, unsealed...).
    case badChannel(String)
    /// A malformed request or reply on the xenconsoled socket.
    case badMessage(String)
    /// xenconsoled answered `error ...` (the text after `error `).
    case refused(String)

    public var description: String {
        switch self {
        case let .system(call, code): return "\(call): \(String(cString: strerror(code))) (errno \(code))"
        case let .badChannel(s): return "bad console channel: \(s)"
        case let .badMessage(s): return "bad console message: \(s)"
        case let .refused(s): return s
        }
    }
}
