// Finding the processes of a half-made domain when xend did not live to record their pids:
// every engine and back-end xend starts holds a Unix socket bound at a path xend chose (the
// engine's control or QMP socket, a back-end's vhost-user listener), so the processes that
// hold a socket bound at one of those paths are the domain's, whoever their parent is.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

enum OrphanSweep {
    /// Inodes of the Unix sockets bound at one of `paths` (/proc/net/unix: the inode is
    /// field 7, the path field 8; accepted connections carry their listener's path too).
    static func socketInodes(boundAt paths: Set<String>) -> Set<String> {
        guard !paths.isEmpty, let text = try? String(contentsOfFile: "/proc/net/unix", encoding: .utf8) else { return [] }
        var out: Set<String> = []
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 8, paths.contains(String(f[7])) else { continue }
            out.insert(String(f[6]))
        }
        return out
    }

    /// Pids other than this process with a descriptor on one of the socket `inodes`.
    static func holders(of inodes: Set<String>) -> [Int32] {
        guard !inodes.isEmpty else { return [] }
        let me = getpid()
        var out: [Int32] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != me else { continue }
            let dir = "/proc/\(entry)/fd"
            for fd in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                var buf = [CChar](repeating: 0, count: 64)
                let n = readlink(dir + "/" + fd, &buf, buf.count - 1)
                guard n > 8 else { continue }
                let link = String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if link.hasPrefix("socket:["), inodes.contains(String(link.dropFirst(8).dropLast())) { out.append(pid); break }
            }
        }
        return out
    }

    /// Pids other than this process whose command line has an argument containing `text`
    /// (an engine started with its control socket's path, which it may not have bound yet).
    static func processes(withArgumentContaining text: String) -> [Int32] {
        let me = getpid()
        var out: [Int32] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != me,
                  let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            if data.split(separator: 0).contains(where: { String(decoding: $0, as: UTF8.self).contains(text) }) { out.append(pid) }
        }
        return out
    }

    /// SIGKILLs every process holding a socket bound at one of `paths`, and every process
    /// whose arguments name `argument` (an engine not yet listening on its control socket),
    /// and waits (up to 2 s) until they are gone.
    /// - Returns: the pids killed.
    @discardableResult
    static func killHolders(ofSocketsAt paths: [String], orNaming argument: String? = nil) -> [Int32] {
        var pids = holders(of: socketInodes(boundAt: Set(paths)))
        if let argument { pids += processes(withArgumentContaining: argument).filter { !pids.contains($0) } }
        let ticks = pids.map { ProcessInfo2.startTicks($0) }
        for p in pids { kill(p, SIGKILL) }
        for _ in 0..<200 where zip(pids, ticks).contains(where: { $1 != nil && ProcessInfo2.startTicks($0) == $1 }) {
            usleep(10_000)
        }
        return pids
    }
}
