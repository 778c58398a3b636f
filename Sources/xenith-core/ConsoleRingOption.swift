// --console-ring-fd / --console-out-fd / --console-in-fd: COM1 on a console ring handed
// in by the launcher (xend) instead of stdio (ConsoleBackend, Core/ConsoleRingPort.swift).
import Core

/// The three inherited descriptors of a console ring, all given or none.
struct ConsoleRingFDs {
    init() {}
    var ring: Int32?, out: Int32?, input: Int32?

    /// nil when none is given; an error text when only some are.
    var problem: String? {
        let given = [ring, out, input].filter { $0 != nil }.count
        if given == 0 || given == 3 { return nil }
        return "--console-ring-fd, --console-out-fd and --console-in-fd go together"
    }

    /// Maps the ring; nil when no ring was asked for.
    /// - Throws: ConsoleError (bad or missing descriptors), ``CoreError``.
    func open(log: @escaping @Sendable (String) -> Void) throws -> ConsoleRingPort? {
        guard let ring, let out, let input else { return nil }
        return try ConsoleRingPort(ringFD: ring, outEventFD: out, inEventFD: input, log: log)
    }
}
