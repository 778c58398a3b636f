// Facts about host processes that every supervisor needs: is this still the process we
// started (pid + start time), and one round trip to a line-based control socket.
import CLinux
import Foundation
import UnixSocket
#if canImport(Glibc)
import Glibc
#endif

/// Process helpers shared by engines.
public enum ProcessInfo2 {
    /// Start time (clock ticks since boot) of `pid`, nil when it does not exist.
    public static func startTicks(_ pid: Int32) -> UInt64? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        let fields = s[s.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); start time is field 22.
        guard fields.count > 19, let t = UInt64(fields[19]) else { return nil }
        if fields[0] == "Z" { return nil }
        return t
    }

    /// Sends one line to a Unix-socket control server and returns the reply line.
    /// - Parameter passing: a descriptor sent with the line (SCM_RIGHTS); the caller keeps its copy.
    public static func control(_ path: String, _ command: String, timeoutMs: Int32 = 2000, passing passed: Int32? = nil) throws -> String {
        let fd: Int32
        do { fd = try UnixSocket.connect(path: path) } catch {
            if case .system(_, _, let e) = error { throw EngineError("\(path): \(String(cString: strerror(e)))") }
            throw EngineError("\(error)")
        }
        defer { Glibc.close(fd) }
        let line = command + "\n"
        if let passed {
            var one = [passed]
            let sent = line.withCString { clinux_send_with_fds(fd, $0, strlen($0), &one, 1) }
            if sent < 0 { throw EngineError("\(path): \(String(cString: strerror(errno)))") }
        } else {
            _ = line.withCString { write(fd, $0, strlen($0)) }
        }
        var reply: [UInt8] = []
        var c: UInt8 = 0
        while reply.count < 4096 {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeoutMs) > 0 else { throw EngineError("\(path): no reply to \(command)") }
            let n = read(fd, &c, 1)
            if n <= 0 { break }
            if c == 10 { break }
            reply.append(c)
        }
        return String(decoding: reply, as: UTF8.self)
    }
}

