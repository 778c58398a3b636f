// xm vcpu-list, vcpu-pin, vcpu-set and sched-credit (Xen 3.x tools/python/xen/xm/main.py).
import Foundation
import XendAPI

extension XM {
    /// `xm vcpu-list [Domain ...]`: every vCPU of the named domains (all, Domain-0 first,
    /// without arguments) in Xen 3.x's columns.
    func xmVcpuList(_ args: [String]) throws {
        let names = args.isEmpty ? try domains().filter { $0.pid != nil || $0.domid == 0 }.map { String($0.domid) } : args
        let lists = try names.map { try client().call("GET", "/api/v1/domains/\(XendClient.escape($0))/vcpus", as: DomainVcpus.self) }
        stdout += XM.vcpuTable(lists)
    }

    /// Xen 3.x's `xm vcpu-list` text: the header, then per vCPU
    /// `%-32s %3d  %4d  %3s   %-3s   %7.1f  AFFINITY` (CPU `-` and state `--p` when offline;
    /// state `r--` running, `-b-` blocked).
    public static func vcpuTable(_ lists: [DomainVcpus]) -> String {
        var s = "Name                              ID  VCPU  CPU  State  Time(s)  CPU Affinity\n"
        func l(_ t: String, _ n: Int) -> String { t.count >= n ? t : t + String(repeating: " ", count: n - t.count) }
        func r(_ t: String, _ n: Int) -> String { t.count >= n ? t : String(repeating: " ", count: n - t.count) + t }
        for d in lists {
            for v in d.vcpus {
                let c = v.online ? String(v.cpu) : "-"
                let st = v.online ? (v.running ? "r" : "-") + (v.blocked ? "b" : "-") + "-" : "--p"
                s += l(d.name, 32) + " " + r(String(d.domid), 3) + "  " + r(String(v.number), 4) + "  " + r(c, 3) + "   "
                    + l(st, 3) + "   " + r(String(format: "%.1f", v.cpuTime), 7) + "  "
                    + CPUList.format(v.affinity, hostCPUs: d.hostCpus) + "\n"
            }
        }
        return s
    }

    /// `xm vcpu-pin <Domain> <VCPU|all> <CPUs|all>`. Prints nothing on success.
    func xmVcpuPin(_ args: [String]) throws {
        try argCheck(args, "vcpu-pin", 3)
        _ = try client().call("POST", "/api/v1/domains/\(XendClient.escape(args[0]))/vcpus/pin",
                              body: VcpuPinRequest(vcpu: args[1], cpus: args[2]), as: DomainVcpus.self)
    }

    /// `xm vcpu-set <Domain> <vCPUs>`. Prints nothing on success.
    func xmVcpuSet(_ args: [String]) throws {
        try argCheck(args, "vcpu-set", 2)
        guard let n = Int(args[1]) else { err("Invalid VCPUs '\(args[1])': expected a number"); throw XMExit(status: 1) }
        _ = try client().call("POST", "/api/v1/domains/\(XendClient.escape(args[0]))/vcpus",
                              body: VcpuSetRequest(count: n), as: DomainVcpus.self)
    }

    /// `xm sched-credit [-d <Domain> [-w WEIGHT] [-c CAP]]`: without -w/-c, the table of the
    /// domain (or of every domain); with them, sets the domain's parameters silently.
    func xmSchedCredit(_ args: [String]) throws {
        let (opts, params) = try gnuGetopt(args, short: "d:w:c:", long: ["domain=", "weight=", "cap="])
        var dom: String?, weight: Int?, cap: Int?
        for (k, v) in opts {
            switch k {
            case "-d", "--domain": dom = v
            case "-w", "--weight":
                guard let w = Int(v) else { err("Invalid weight '\(v)': expected an integer"); throw XMExit(status: 1) }
                weight = w
            case "-c", "--cap":
                guard let c = Int(v) else { err("Invalid cap '\(v)': expected an integer"); throw XMExit(status: 1) }
                cap = c
            default: break
            }
        }
        if let p = params.first { err("Invalid argument: \(p)"); throw XMExit(status: 1) }
        if weight == nil && cap == nil {
            var names: [String]
            if let dom { names = [dom] } else { names = try domains().filter { $0.pid != nil || $0.domid == 0 }.map { String($0.domid) } }
            let rows = try names.map { try client().call("GET", "/api/v1/domains/\(XendClient.escape($0))/sched-credit", as: SchedCredit.self) }
            stdout += XM.schedCreditTable(rows)
            return
        }
        guard let dom else { err("No domain given."); cmdHelp("sched-credit"); throw XMExit(status: 1) }
        _ = try client().call("POST", "/api/v1/domains/\(XendClient.escape(dom))/sched-credit",
                              body: SchedCreditRequest(weight: weight, cap: cap), as: SchedCredit.self)
    }

    /// Xen 3.x's `xm sched-credit` table: `%-33s %4s %6s %4s` header, `%-32s %5s %6d %4d` rows.
    public static func schedCreditTable(_ rows: [SchedCredit]) -> String {
        func l(_ t: String, _ n: Int) -> String { t.count >= n ? t : t + String(repeating: " ", count: n - t.count) }
        func r(_ t: String, _ n: Int) -> String { t.count >= n ? t : String(repeating: " ", count: n - t.count) + t }
        var s = l("Name", 33) + " " + r("ID", 4) + " " + r("Weight", 6) + " " + r("Cap", 4) + "\n"
        for x in rows {
            s += l(x.name, 32) + " " + r(String(x.domid), 5) + " " + r(String(x.weight), 6) + " " + r(String(x.cap), 4) + "\n"
        }
        return s
    }
}
