// Facts about host processes that every supervisor needs: is this still the process we
// started (pid + start time), and one round trip to a line-based control socket.
import Foundation
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
    public static func control(_ path: String, _ command: String, timeoutMs: Int32 = 2000) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw EngineError("socket: \(String(cString: strerror(errno)))") }
        defer { Glibc.close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() where i < p.count - 1 { p[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw EngineError("\(path): \(String(cString: strerror(errno)))") }
        let line = command + "\n"
        _ = line.withCString { write(fd, $0, strlen($0)) }
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

