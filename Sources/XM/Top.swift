// xm top: a live table of the domains, as Xen's xentop (tools/xenstat/xentop) showed it:
// CPU time and share, memory, vCPUs, network and block counters per domain, refreshed
// every DELAY seconds; `q` quits. `-b` (batch) prints plain frames for scripts, `-i N`
// stops after N of them.
import Foundation
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

/// One refresh of `xm top`: the table text for `now` given the previous sample.
public struct TopFrame {
    /// The columns, xentop's names (VBD_RD/VBD_WR are KiB here, see README).
    public static let header = "      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_RD   VBD_WR"

    /// Renders `cur`; CPU(%) is the vCPU time used since `prev` (taken `elapsed` seconds
    /// earlier) over that time, per cent of one CPU (0 for a domain not in `prev`).
    public static func render(_ cur: DomainStatsList, prev: DomainStatsList?, elapsed: Double, clock: String) -> String {
        let doms = cur.domains
        func count(_ c: Character) -> Int { doms.filter { $0.state.contains(c) }.count }
        var s = "xm top - \(clock)\n"
        s += "\(doms.count) domains: \(count("r")) running, \(count("b")) blocked, \(count("p")) paused, "
            + "\(count("c")) crashed, \(count("d")) dying, \(count("s")) shutdown\n"
        let used = doms.dropFirst().reduce(0) { $0 + $1.memoryKib }
        s += "Mem: \(cur.hostMemoryKib)k total, \(used)k used by domains    CPUs: \(cur.hostCpus)\n\n"
        s += header + "\n"
        let before = Dictionary((prev?.domains ?? []).map { ($0.domid, $0) }, uniquingKeysWith: { a, _ in a })
        for d in doms {
            var pct = 0.0
            if let p = before[d.domid], elapsed > 0 { pct = max(0, d.cpuTime - p.cpuTime) / elapsed * 100 }
            let memPct = cur.hostMemoryKib > 0 ? Double(d.memoryKib) / Double(cur.hostMemoryKib) * 100 : 0
            s += r(String(d.name.prefix(10)), 10) + " " + r(d.state, 6) + " " + r(String(Int(d.cpuTime)), 10) + " "
                + r(String(format: "%.1f", pct), 6) + " " + r(String(d.memoryKib), 10) + " " + r(String(format: "%.1f", memPct), 6)
                + " " + r(String(d.maxmemKib), 10) + " " + r(String(d.vcpus), 5) + " " + r(String(d.nets), 4)
                + " " + r(String(d.netTxBytes / 1024), 8) + " " + r(String(d.netRxBytes / 1024), 8) + " " + r(String(d.vbds), 4)
                + " " + r(String(d.vbdReadBytes / 1024), 8) + " " + r(String(d.vbdWriteBytes / 1024), 8) + "\n"
        }
        return s
    }

    static func r(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
}

extension XM {
    /// `xm top [-b] [-i ITERATIONS] [-d DELAY]`.
    func xmTop(_ args: [String]) throws {
        let (opts, params) = try gnuGetopt(args, short: "bi:d:", long: ["batch", "iterations=", "delay="])
        if !params.isEmpty { err("No parameter required"); throw XMExit(status: 1) }
        var batch = false, iterations: Int? = nil, delay = 1.0
        for (k, v) in opts {
            switch k {
            case "-b", "--batch": batch = true
            case "-i", "--iterations":
                guard let n = Int(v), n > 0 else { err("Invalid iterations '\(v)': a positive number"); throw XMExit(status: 1) }
                iterations = n
            case "-d", "--delay":
                guard let d = Double(v), d >= 0.1, d <= 3600 else { err("Invalid delay '\(v)': seconds, 0.1 to 3600"); throw XMExit(status: 1) }
                delay = d
            default: break
            }
        }
        // Without a terminal there is nothing to redraw: batch it is.
        if !batch && isatty(0) != 1 { batch = true }
        let c = try client()
        let f = DateFormatter(); f.dateFormat = "HH:mm:ss"
        var saved = termios()
        let raw = !batch && tcgetattr(0, &saved) == 0
        if raw {
            var t = saved
            t.c_lflag &= ~tcflag_t(ICANON | ECHO)
            tcsetattr(0, TCSANOW, &t)
        }
        defer {
            if raw {
                tcsetattr(0, TCSANOW, &saved)
                stdout += "\n"; flush()
            }
        }
        var prev: DomainStatsList? = nil
        var prevTime = Date()
        var n = 0
        while true {
            let cur = try c.call("GET", "/api/v1/stats", as: DomainStatsList.self)
            let now = Date()
            let frame = TopFrame.render(cur, prev: prev, elapsed: now.timeIntervalSince(prevTime), clock: f.string(from: now))
            stdout += batch ? frame + "\n" : "\u{1B}[H\u{1B}[2J" + frame.replacingOccurrences(of: "\n", with: "\r\n")
            flush()
            prev = cur; prevTime = now
            n += 1
            if let i = iterations, n >= i { return }
            if batch { usleep(UInt32(delay * 1_000_000)); continue }
            // Wait up to DELAY for a key: q (or Q) quits, anything else refreshes now.
            var p = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, Int32(delay * 1000)) > 0 {
                var b: UInt8 = 0
                let got = read(0, &b, 1)
                if got <= 0 || b == UInt8(ascii: "q") || b == UInt8(ascii: "Q") { return }
            }
        }
    }
}
