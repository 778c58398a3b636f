// xend's log file (xend-config.sxp `logfile`, `loglevel`) as a swift-log handler.
import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Appends one line per message to a file: `[YYYY-MM-DD HH:MM:SS PID] LEVEL (label) message`.
/// Thread-safe (one `write(2)` per line on an O_APPEND descriptor).
public struct FileLogHandler: LogHandler {
    final class Sink: @unchecked Sendable {
        let fd: Int32
        init(path: String) {
            XenithPathsSupport.makeParent(path)
            fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        }
    }
    private let sink: Sink
    private let label: String
    public var logLevel: Logger.Level = .debug
    public var metadata: Logger.Metadata = [:]

    /// - Parameter path: the log file; created with its directories when missing.
    public init(label: String, path: String) {
        self.label = label
        self.sink = Sink(path: path)
    }

    private init(label: String, sink: Sink) { self.label = label; self.sink = sink }

    /// A factory for `LoggingSystem.bootstrap`-style use sharing one file.
    public func with(label: String) -> FileLogHandler {
        var h = FileLogHandler(label: label, sink: sink)
        h.logLevel = logLevel
        return h
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        guard sink.fd >= 0 else { return }
        var t = time(nil)
        var tmv = tm()
        localtime_r(&t, &tmv)
        let stamp = String(format: "%04d-%02d-%02d %02d:%02d:%02d", tmv.tm_year + 1900, tmv.tm_mon + 1, tmv.tm_mday,
                           tmv.tm_hour, tmv.tm_min, tmv.tm_sec)
        let level: String
        switch event.level {
        case .trace, .debug: level = "DEBUG"
        case .info, .notice: level = "INFO"
        case .warning: level = "WARNING"
        case .error: level = "ERROR"
        case .critical: level = "CRITICAL"
        }
        var line = "[\(stamp) \(getpid())] \(level) (\(label)) \(event.message)\n"
        line.withUTF8 { _ = write(sink.fd, $0.baseAddress, $0.count) }
    }
}

enum XenithPathsSupport {
    static func makeParent(_ path: String) {
        let dir = (path as NSString).deletingLastPathComponent
        var cur = ""
        for part in dir.split(separator: "/") { cur += "/" + part; _ = mkdir(cur, 0o755) }
    }
}
