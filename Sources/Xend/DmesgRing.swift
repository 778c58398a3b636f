// `xm dmesg`: xend's own ring of lifecycle lines (Xen's hypervisor console buffer).
import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// The last 1000 lifecycle lines, each stamped `(XEN) [HH:MM:SS] `, also written to xend.log.
final class DmesgRing: @unchecked Sendable {
    static let capacity = 1000
    private let lock = NSLock()
    private var lines: [String] = []
    private let log: Logger

    init(logger: Logger) { log = logger }

    func append(_ s: String) {
        var t = time(nil); var tmv = tm(); localtime_r(&t, &tmv)
        let line = String(format: "(XEN) [%02d:%02d:%02d] ", tmv.tm_hour, tmv.tm_min, tmv.tm_sec) + s
        lock.lock()
        lines.append(line)
        if lines.count > Self.capacity { lines.removeFirst(lines.count - Self.capacity) }
        lock.unlock()
        log.info("\(s)")
    }

    var text: String { lock.lock(); defer { lock.unlock() }; return lines.joined(separator: "\n") }
    func clear() { lock.lock(); lines.removeAll(); lock.unlock() }
}
