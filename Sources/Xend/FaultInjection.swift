// Crash points for the crash-safety tests: xend kills itself (SIGKILL) at the named point of
// a domain creation when `XENITH_TEST_CRASH_AT` names it, so a test can prove that a restarted
// xend finishes or undoes every half-made domain (integration/CrashSafeCreateTests.swift).
// Without the variable every call is a no-op.
#if canImport(Glibc)
import Glibc
#endif

enum FaultInjection {
    /// The point named by `$XENITH_TEST_CRASH_AT`, read once.
    static let armedPoint: String? = getenv("XENITH_TEST_CRASH_AT").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }

    /// Kills xend at once when `point` is the armed one. Points of a create, in order:
    /// `intent` (record written), `xenstore`, `vif-DEVID` (each vif made), `vbd-VDEV` (each
    /// vbd made), `console`, `engine-spawned` (the core's process exists, its control socket
    /// may not), `engine` (engine started, record not yet final). Of a restore:
    /// `restore-loaded` (the engine has the whole state, the guest has not run).
    static func crashPoint(_ point: String) {
        guard let armed = armedPoint, armed == point else { return }
        kill(getpid(), SIGKILL)
    }
}
