// Progress messages to xend, at most one per interval (README.md §3, `progress`).

/// Sends `progress` messages on the status channel, at most every `intervalNanoseconds`.
struct ProgressReporter {
    let status: StatusChannel?
    let intervalNanoseconds: UInt64
    let started = monotonicNanoseconds()
    private var lastTime: UInt64
    private var lastBytes: UInt64 = 0

    init(status: StatusChannel?, intervalNanoseconds: UInt64) {
        self.status = status; self.intervalNanoseconds = intervalNanoseconds
        lastTime = started
    }

    /// Reports `bytes` if the interval has passed since the last report.
    /// - Throws: `MigrationError.io` when xend's end of the channel is gone.
    mutating func update(bytes: UInt64) throws(MigrationError) {
        guard let status, intervalNanoseconds > 0 else { return }
        let now = monotonicNanoseconds()
        guard now - lastTime >= intervalNanoseconds else { return }
        let rate = UInt64(Double(bytes - lastBytes) * 1e9 / Double(now - lastTime))   // no overflow on long intervals
        try status.send(.progress(bytes: bytes, bytesPerSecond: rate))
        lastTime = now; lastBytes = bytes
    }

    /// Microseconds since the reporter was made.
    var elapsedMicroseconds: UInt64 { (monotonicNanoseconds() - started) / 1000 }
}
