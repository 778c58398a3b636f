// xm save and xm restore (Xen 3.x tools/python/xen/xm/main.py xm_save, xm_restore): silent
// on success as Xen's; on a terminal, one progress line (bytes so far, rate) while xend works.
import Foundation
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

extension XM {
    /// `xm save [-c|--checkpoint] <Domain> <File>`.
    func xmSave(_ args: [String]) throws {
        try argCheck(args, "save", 2, 3)
        let (opts, params) = try gnuGetopt(args, short: "c", long: ["checkpoint"])
        let checkpoint = opts.contains { $0.0 == "-c" || $0.0 == "--checkpoint" }
        guard params.count == 2 else { err("Wrong number of parameters"); cmdHelp("save"); throw XMExit(status: 1) }
        let file = absolute(params[1])
        let parent = (file as NSString).deletingLastPathComponent
        let dir = parent.isEmpty ? "/" : parent
        // Xen's words, then why (Xen gave none: a missing directory and a read-only one read alike).
        guard access(dir, W_OK) == 0 else {
            let why = String(cString: strerror(errno))
            err("xm save: Unable to create file \(file): \(dir): \(why)"); throw XMExit(status: 1)
        }
        try withProgress(file: file, verb: "Saving") {
            _ = try client().call("POST", "/api/v1/domains/\(XendClient.escape(params[0]))/save",
                                  body: SaveRequest(file: file, checkpoint: checkpoint), as: DomainInfo.self)
        }
    }

    /// `xm restore [-p|--paused] <File>`.
    func xmRestore(_ args: [String]) throws {
        try argCheck(args, "restore", 1, 2)
        let (opts, params) = try gnuGetopt(args, short: "p", long: ["paused"])
        let paused = opts.contains { $0.0 == "-p" || $0.0 == "--paused" }
        guard params.count == 1 else { err("Wrong number of parameters"); cmdHelp("restore"); throw XMExit(status: 1) }
        let file = absolute(params[0])
        guard access(file, R_OK) == 0 else {
            let why = String(cString: strerror(errno))
            err("xm restore: Unable to read file \(file): \(why)"); throw XMExit(status: 1)
        }
        try withProgress(file: file, verb: "Restoring") {
            _ = try client().call("POST", "/api/v1/restore", body: RestoreRequest(file: file, paused: paused), as: DomainInfo.self)
        }
    }

    /// Runs `body` (a request that blocks until xend is done); when stderr is a terminal, a
    /// thread polls `GET /api/v1/transfers` every half second and redraws one line for
    /// `file`, erased at the end.
    func withProgress(file: String, verb: String, _ body: () throws -> Void) throws {
        guard isatty(2) == 1, let c = try? client() else { try body(); return }
        let stop = ProgressStop()
        let t = Thread {
            var shown = false
            while !stop.isSet {
                // Woken at once by the end of the request: a plain sleep here made every
                // save and restore on a terminal last up to half a second longer.
                if stop.sleep(0.5) { break }
                guard let list = try? c.call("GET", "/api/v1/transfers", as: TransferList.self),
                      let t = list.transfers.first(where: { $0.file == file }) else { continue }
                let line = XM.progressLine(verb: verb, t)
                XM.writeStderr("\r\u{1B}[K" + line)
                shown = true
            }
            if shown { XM.writeStderr("\r\u{1B}[K") }
            stop.finished()
        }
        t.start()
        defer { stop.set(); stop.waitFinished() }
        try body()
    }

    /// `Saving web1 to /srv/web1.chk: 123.4 MiB, 56.7 MiB/s`.
    public static func progressLine(verb: String, _ t: TransferInfo) -> String {
        func mib(_ b: UInt64) -> String { String(format: "%.1f MiB", Double(b) / 1048576) }
        let who = t.domain.isEmpty ? "" : " " + t.domain
        let prep = verb == "Saving" ? "to" : "from"
        return "\(verb)\(who) \(prep) \(t.file): \(mib(t.bytes)), \(mib(t.bytesPerSecond))/s"
    }

    static func writeStderr(_ s: String) {
        var s = s
        s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
}

/// A stop flag and a "thread finished" signal for the progress thread.
final class ProgressStop: @unchecked Sendable {
    private let cond = NSCondition()
    private var stopped = false
    private var done = false
    var isSet: Bool { cond.lock(); defer { cond.unlock() }; return stopped }
    func set() { cond.lock(); stopped = true; cond.broadcast(); cond.unlock() }
    func finished() { cond.lock(); done = true; cond.broadcast(); cond.unlock() }
    /// Sleeps `seconds` or until ``set()``; returns whether the flag is set.
    func sleep(_ seconds: Double) -> Bool {
        cond.lock(); defer { cond.unlock() }
        let until = Date().addingTimeInterval(seconds)
        while !stopped && cond.wait(until: until) {}
        return stopped
    }
    /// Waits (at most 2 s) for the thread to have erased its line.
    func waitFinished() {
        cond.lock(); defer { cond.unlock() }
        let until = Date().addingTimeInterval(2)
        while !done && cond.wait(until: until) {}
    }
}
