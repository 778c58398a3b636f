#if XENITH_SANITIZED
/// Set once a process is sandboxed (``Sandbox/apply(_:keepFds:)``), in a sanitizer build only
/// (make sanitize defines XENITH_SANITIZED).
nonisolated(unsafe) var sandboxedUnderSanitizer: Int32 = 0

/// LeakSanitizer's hook (`__lsan_is_turned_off`, sanitizer/lsan_interface.h), asked when the
/// process exits: a sandboxed service cannot run the leak check, which stops every thread
/// with `clone` and `ptrace` that its seccomp filter rightly forbids, and would die by
/// SIGSYS after its work was done. AddressSanitizer's checks of every access still run
/// there; processes that are not sandboxed (the tests, xend) keep the leak check.
@_cdecl("__lsan_is_turned_off")
public func lsanIsTurnedOff() -> Int32 { sandboxedUnderSanitizer }
#endif
