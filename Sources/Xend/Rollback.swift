// One rollback guard for everything that makes several things in a row: each step made
// registers how to undo it; on failure the steps are undone newest first.

/// Undo steps of a half-done operation. `commit()` keeps what was made; otherwise
/// `finish()` (normally in a `defer`) runs the undo steps in reverse order.
final class Rollback {
    private var steps: [() -> Void] = []
    private(set) var committed = false

    /// Registers how to undo the step just made (or about to be made: undo steps must
    /// tolerate finding nothing).
    func add(_ undo: @escaping () -> Void) { steps.append(undo) }

    /// Keeps everything: `finish()` then does nothing.
    func commit() { committed = true; steps.removeAll() }

    /// Undoes every registered step, newest first, unless committed.
    func finish() {
        guard !committed else { return }
        for undo in steps.reversed() { undo() }
        steps.removeAll()
    }
}
