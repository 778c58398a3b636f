// A vif's transmit rate limit (Xen `rate=`), as configurations and the network back-end use it.

/// A vif credit-based rate limit (Xen 3.0.2+ `rate=`): `RATE[@INTERVAL]` where RATE is
/// `N[G|M|K]B/s` (bytes) or `N[G|M|K]b/s` (bits), decimal multipliers, and INTERVAL is
/// `N[m|u]s` (default 50 ms). `1Mb/s` → 6250 bytes per 50000 µs;
/// `10MB/s@20ms` → 200000 bytes per 20000 µs.
public struct VifRate: Sendable, Hashable, CustomStringConvertible {
    /// Bytes the vif may send in each interval.
    public var bytesPerInterval: UInt64
    /// The credit interval in microseconds.
    public var intervalMicroseconds: UInt64
    /// The text as given (`10MB/s@20ms`).
    public var text: String

    public var description: String { text }

    /// Parses a rate; nil when malformed, zero, or beyond 2^32-1 bytes or µs (xend's limits).
    public init?(_ text: String) {
        var s = Substring(text)
        func number() -> UInt64? {
            let d = s.prefix { $0.isASCII && $0.isNumber }
            guard !d.isEmpty, d.count <= 18, let v = UInt64(d) else { return nil }
            s = s.dropFirst(d.count)
            return v
        }
        guard var perSecond = number() else { return nil }
        var mult: UInt64 = 1
        if let c = s.first, "GMK".contains(c) {
            mult = c == "G" ? 1_000_000_000 : c == "M" ? 1_000_000 : 1000
            s = s.dropFirst()
        }
        let (p, o) = perSecond.multipliedReportingOverflow(by: mult)
        guard !o else { return nil }
        perSecond = p
        guard let unit = s.first, unit == "B" || unit == "b" else { return nil }
        s = s.dropFirst()
        if unit == "b" { perSecond /= 8 }
        guard s.hasPrefix("/s") else { return nil }
        s = s.dropFirst(2)
        var interval: UInt64 = 50_000
        if s.hasPrefix("@") {
            s = s.dropFirst()
            guard let n = number() else { return nil }
            var scale: UInt64 = 1_000_000
            if s.hasPrefix("ms") { scale = 1000; s = s.dropFirst(2) }
            else if s.hasPrefix("us") { scale = 1; s = s.dropFirst(2) }
            else if s.hasPrefix("s") { s = s.dropFirst() }
            else { return nil }
            let (v, o2) = n.multipliedReportingOverflow(by: scale)
            guard !o2 else { return nil }
            interval = v
        }
        guard s.isEmpty else { return nil }
        let (product, o3) = perSecond.multipliedReportingOverflow(by: interval)
        guard !o3 else { return nil }
        let bytes = product / 1_000_000
        guard bytes > 0, bytes <= 0xffff_ffff, interval > 0, interval <= 0xffff_ffff else { return nil }
        bytesPerInterval = bytes
        intervalMicroseconds = interval
        self.text = text
    }
}
