// Pacing of the bytes put on the wire (`--rate MBIT`, Xen's `xm migrate -r`): a token bucket.

/// A token bucket over bytes: `rate` bytes per second, at most `burst` bytes ahead. It starts
/// empty, so N bytes take N / rate seconds from the first byte on (5 MiB at 40 Mbit/s: 1.05 s).
public struct Pacer: Sendable {
    /// Bytes per second.
    public let bytesPerSecond: UInt64
    /// Bytes that may go out at once after an idle period.
    public let burst: UInt64
    private var tokens: Double = 0
    private var last: UInt64

    /// A pacer for `megabitsPerSecond` (Mbit/s, 10^6 bits per second, as Xen's `-r`).
    /// - Parameter burst: bytes that may go out at once after an idle period (64 KiB).
    /// - Throws: `MigrationError.invalidArgument` for a rate of 0.
    public init(megabitsPerSecond: UInt64, burst: UInt64 = 64 << 10) throws(MigrationError) {
        guard megabitsPerSecond > 0 else { throw .invalidArgument("a rate of 0 Mbit/s would never send anything; give a rate of at least 1") }
        guard megabitsPerSecond <= 1_000_000 else { throw .invalidArgument("rate \(megabitsPerSecond) Mbit/s is above the limit of 1000000 (1 Tbit/s)") }
        bytesPerSecond = megabitsPerSecond * 125_000
        self.burst = burst
        last = monotonicNanoseconds()
    }

    /// Takes `bytes` from the bucket, sleeping first while the bucket is in debt.
    public mutating func consume(_ bytes: Int) {
        let now = monotonicNanoseconds()
        tokens = min(Double(burst), tokens + Double(now - last) * Double(bytesPerSecond) / 1e9)
        last = now
        tokens -= Double(bytes)
        if tokens < 0 {
            let wait = UInt64(-tokens / Double(bytesPerSecond) * 1e9)
            sleepNanoseconds(wait)
            last = monotonicNanoseconds()
            // Sleeping paid the debt; a late wake-up is credited (bounded by the burst).
            tokens = min(Double(burst), Double(last - now) * Double(bytesPerSecond) / 1e9 - (-tokens))
        }
    }
}
