/// Xen's vif credit scheduler (`rate=`, netback `credit_bytes`/`credit_usec`) as a token
/// bucket on transmit: `bytesPerInterval` bytes of credit accrue per `intervalMicroseconds`,
/// continuously, up to one interval's worth. A frame goes once the credit covers it; a
/// frame larger than one interval's credit (a TSO frame) waits until that much has
/// accrued. Frames are paid for before they go, so over any window the bytes sent stay
/// within rate × window + one interval's credit (or one frame).
public struct RateLimiter: Sendable {
    public let bytesPerInterval: UInt64
    public let intervalMicroseconds: UInt64
    /// Credit ceiling in bytes.
    public let burst: Int64
    /// Current credit in bytes (negative: debt).
    public private(set) var credit: Int64
    /// Time of the last refill, nanoseconds on the caller's monotonic clock.
    var last: UInt64

    /// - Parameters: `bytesPerInterval` > 0, `intervalMicroseconds` > 0; `now` in ns.
    public init(bytesPerInterval: UInt64, intervalMicroseconds: UInt64, now: UInt64) {
        precondition(bytesPerInterval > 0 && intervalMicroseconds > 0, "a rate needs bytes and an interval")
        self.bytesPerInterval = bytesPerInterval
        self.intervalMicroseconds = intervalMicroseconds
        burst = Int64(min(bytesPerInterval, UInt64(Int64.max / 2)))
        credit = burst
        last = now
    }

    mutating func refill(_ now: UInt64, cap: Int64) {
        guard now > last else { return }
        let elapsed = now - last
        // bytes = elapsed_ns * bpi / (interval_us * 1000), in 128-bit to avoid overflow.
        let (hi, lo) = elapsed.multipliedFullWidth(by: bytesPerInterval)
        let d = intervalMicroseconds * 1000
        guard hi < d else { credit = cap; last = now; return }
        let (q, _) = d.dividingFullWidth((hi, lo))
        guard q > 0 else { return }
        credit = min(cap, credit + Int64(min(q, UInt64(Int64.max / 2))))
        if credit == cap { last = now; return }
        // Advance by the time those whole bytes took, so rounding never loses credit.
        let (h2, l2) = q.multipliedFullWidth(by: d)
        last += h2 < bytesPerInterval ? bytesPerInterval.dividingFullWidth((h2, l2)).quotient : elapsed
    }

    /// Takes `bytes` of credit if that much is available now. Returns 0 when the frame
    /// may go, else the nanoseconds to wait before asking again.
    public mutating func take(_ bytes: Int, now: UInt64) -> UInt64 {
        let need = Int64(max(bytes, 1))
        refill(now, cap: max(burst, need))
        if credit >= need { credit -= need; return 0 }
        let missing = UInt64(need - credit)
        // ns until `missing` bytes accrue
        let (hi, lo) = missing.multipliedFullWidth(by: intervalMicroseconds * 1000)
        guard hi < bytesPerInterval else { return UInt64.max / 2 }
        let (q, _) = bytesPerInterval.dividingFullWidth((hi, lo))
        return max(q, 1000)
    }
}
