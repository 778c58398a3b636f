// The service's end of the readiness channel (Spawn/ReadinessMessage.swift for the format,
// Spawn.ReadinessChannel for the launcher's end): `--ready-fd N` names the descriptor the
// launcher handed over, and the service says `ready` once its sandbox is applied and it
// serves, or `failed: <reason>` when start-up fails. Foundation-free, like the services.
import Spawn
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The readiness descriptor of this process (at most one) and the one message it carries.
public enum ServiceReadiness {
    /// The command-line option every service takes: `--ready-fd N`.
    public static let option = "--ready-fd"

    private static let fd = Atomic<Int32>(-1)

    /// The adopted descriptor, nil when none (or once the message is sent).
    public static var descriptor: Int32? {
        let f = fd.load(ordering: .acquiring)
        return f >= 0 ? f : nil
    }

    /// Takes descriptor `number` as the readiness channel: it must be open for writing.
    /// Marks it close-on-exec and ignores SIGPIPE (a launcher that went away must not kill
    /// the service through its report; every service ignores SIGPIPE anyway). Call it
    /// before the sandbox, whose manifest must declare `fd <number> readiness optional`.
    /// - Returns: false when `number` is not an open, writable descriptor.
    public static func adopt(_ number: Int32) -> Bool {
        let flags = fcntl(number, F_GETFL)
        guard number > 2, flags >= 0, flags & O_ACCMODE != O_RDONLY else { return false }
        _ = fcntl(number, F_SETFD, FD_CLOEXEC)
        signal(SIGPIPE, SIG_IGN)
        fd.store(number, ordering: .releasing)
        return true
    }

    /// Finds `--ready-fd N` (or `--ready-fd=N`) in `arguments` and adopts N; exits with
    /// `PROGRAM: --ready-fd …` (status 1) when N is not an open writable descriptor above 2.
    /// - Returns: `arguments` without that option, for the service's own parser.
    public static func adopt(fromArguments arguments: [String], program: String) -> [String] {
        var rest: [String] = []
        var i = arguments.startIndex
        while i < arguments.endIndex {
            let a = arguments[i]
            var value: String? = nil
            if a == option {
                i += 1
                guard i < arguments.endIndex else { ServiceArguments.fail(program: program, "\(option) needs a value") }
                value = arguments[i]
            } else if a.hasPrefix(option + "=") {
                value = String(a.dropFirst(option.count + 1))
            }
            if let value {
                guard let n = Int32(value), adopt(n) else {
                    ServiceArguments.fail(program: program, "\(option) \(value): expected an open, writable descriptor above 2")
                }
            } else {
                rest.append(a)
            }
            i += 1
        }
        return rest
    }

    /// Sends `ready[ detail]` and closes the descriptor. Call it once the sandbox is applied
    /// and the service accepts work. Does nothing without a descriptor or when a message
    /// was sent already.
    public static func ready(_ detail: String = "") { send(.ready(detail: detail)) }

    /// Sends `failed: reason` and closes the descriptor. `ServiceArguments.fail` and
    /// `Sandbox.applyOrExit` call it; so should every start-up failure of a service. Does
    /// nothing without a descriptor or when a message was sent already.
    public static func failed(_ reason: String) { send(.failed(reason: reason)) }

    /// Drops the descriptor without sending (the PID-namespace reaper, which closed it).
    static func forget() { fd.store(-1, ordering: .releasing) }

    private static func send(_ message: ReadinessMessage) {
        let f = fd.exchange(-1, ordering: .acquiringAndReleasing)
        guard f >= 0 else { return }
        let bytes = message.encoded()
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(f, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; break }   // EPIPE: nobody listens any more
            off += n
        }
        close(f)
    }
}
