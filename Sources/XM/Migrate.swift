// xm migrate (Xen 3.0's xm/migrate.py and main.py xm_migrate): silent on success as Xen's;
// on a terminal one progress line (bytes so far, rate) while xend moves the domain.
import Foundation
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

extension XM {
    /// `xm migrate [-l|--live] [-p|--port PORT] [-r|--resource MBIT] <Domain> <Host>`.
    func xmMigrate(_ args: [String]) throws {
        let (opts, params) = try gnuGetopt(args, short: "lp:r:", long: ["live", "port=", "resource="])
        var live = false, port = 8002
        var resource: Int?
        for (o, v) in opts {
            switch o {
            case "-l", "--live": live = true
            case "-p", "--port":
                guard let n = Int(v), (1...65535).contains(n) else { err("xm migrate: \(o) \(v): not a TCP port (1...65535)"); throw XMExit(status: 1) }
                port = n
            case "-r", "--resource":
                guard let n = Int(v), (1...1_000_000).contains(n) else {
                    err("xm migrate: \(o) \(v): the rate must be 1...1000000 Mbit/s (0 would never send anything)"); throw XMExit(status: 1)
                }
                resource = n
            default: break
            }
        }
        guard params.count == 2 else { err("Wrong number of parameters"); cmdHelp("migrate"); throw XMExit(status: 1) }
        let (dom, host) = (params[0], params[1])
        if dom == "0" || dom == "Domain-0" { err("Cannot migrate privileged domain 0"); throw XMExit(status: 1) }
        let request = MigrateRequest(host: host, port: port, live: live, resource: resource)
        let call = { [self] in
            _ = try client().call("POST", "/api/v1/domains/\(XendClient.escape(dom))/migrate", body: request, as: MigrateReply.self)
        }
        guard isatty(2) == 1, let c = try? client() else { try call(); return }
        let stop = ProgressStop()
        let t = Thread {
            var shown = false
            while !stop.isSet {
                usleep(500_000)
                if stop.isSet { break }
                guard let list = try? c.call("GET", "/api/v1/transfers", as: TransferList.self),
                      let tr = list.transfers.first(where: { $0.kind == "migrate" && ($0.domain == dom || $0.domid.map(String.init) == dom) })
                else { continue }
                XM.writeStderr("\r\u{1B}[K" + XM.migrateProgressLine(tr, host: host))
                shown = true
            }
            if shown { XM.writeStderr("\r\u{1B}[K") }
            stop.finished()
        }
        t.start()
        defer { stop.set(); stop.waitFinished() }
        try call()
    }

    /// `Migrating web1 to hostb: 123.4 MiB, 56.7 MiB/s`.
    public static func migrateProgressLine(_ t: TransferInfo, host: String) -> String {
        func mib(_ b: UInt64) -> String { String(format: "%.1f MiB", Double(b) / 1048576) }
        return "Migrating \(t.domain) to \(host): \(mib(t.bytes)), \(mib(t.bytesPerSecond))/s"
    }
}
