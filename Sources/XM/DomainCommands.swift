// xm rename, sysrq, dump-core and reset (Xen 3.x tools/python/xen/xm/main.py xm_rename,
// xm_sysrq, xm_dump_core, xm_reset): silent on success as Xen's, except dump-core, which
// names the file it wrote.
import Foundation
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

extension XM {
    /// `xm rename <Domain> <NewDomainName>`.
    func xmRename(_ args: [String]) throws {
        try argCheck(args, "rename", 2)
        _ = try post(args[0], "rename", RenameRequest(name: args[1]))
    }

    /// `xm sysrq <Domain> <letter>`.
    func xmSysrq(_ args: [String]) throws {
        try argCheck(args, "sysrq", 2)
        _ = try post(args[0], "sysrq", SysrqRequest(key: args[1]))
    }

    /// `xm reset <Domain>`.
    func xmReset(_ args: [String]) throws {
        try argCheck(args, "reset", 1)
        _ = try post(args[0], "reset")
    }

    /// `xm dump-core [-C|--crash] <Domain> [Filename]`: the file is relative to xm's working
    /// directory; without one, xend picks Xen's `/var/xen/dump/DATE-NAME.DOMID.core`.
    /// `-C` destroys the domain once the dump is written (Xen: "crash domain after dump").
    func xmDumpCore(_ args: [String]) throws {
        let (opts, params) = try gnuGetopt(args, short: "C", long: ["crash"])
        let crash = !opts.isEmpty
        guard (1...2).contains(params.count) else { err("'xm dump-core' requires between 1 and 2 arguments."); throw XMExit(status: 1) }
        let file = params.count == 2 ? absolute(params[1]) : nil
        let reply = try client().call("POST", "/api/v1/domains/\(XendClient.escape(params[0]))/dump-core",
                                      body: DumpCoreRequest(file: file), as: TextReply.self)
        out("Dumping core of domain: \(params[0]) ...")
        out(reply.text)
        if crash { _ = try post(params[0], "destroy") }
    }
}
