// xm block-attach, block-detach, block-list (Xen 3.x tools/python/xen/xm/main.py).
import XendAPI

extension XM {
    /// `xm block-attach <Domain> <BackDev> <FrontDev> <Mode> [BackDomain]`: BackDev is
    /// `file:PATH` or `phy:DEVICE`, Mode `r`, `w` or `w!`; BackDomain may only be the host
    /// (0 / Domain-0). Prints nothing on success.
    func xmBlockAttach(_ args: [String]) throws {
        try argCheck(args, "block-attach", 4, 5)
        if args.count == 5 && args[4] != "0" && args[4] != "Domain-0" {
            err("Backend domain \(args[4]) is not supported: block devices are served by Domain-0 (give 0 or leave it out)")
            throw XMExit(status: 1)
        }
        guard ["r", "w", "w!"].contains(args[3]) else {
            err("Invalid mode '\(args[3])': expected r, w or w!"); throw XMExit(status: 1)
        }
        _ = try client().call("POST", "/api/v1/domains/\(XendClient.escape(args[0]))/vbds",
                              body: BlockAttachRequest(backdev: args[1], frontdev: args[2], mode: args[3]), as: VbdInfo.self)
    }

    /// `xm block-detach [-f|--force] <Domain> <DevId>`: DevId is the device number
    /// (`xm block-list`'s Vdev) or the guest's name for it (`xvdb`).
    func xmBlockDetach(_ args: [String]) throws {
        let (opts, params) = try gnuGetopt(args, short: "f", long: ["force"])
        try argCheck(params, "block-detach", 2)
        let force = !opts.isEmpty
        _ = try client().call("DELETE", "/api/v1/domains/\(XendClient.escape(params[0]))/vbds/\(XendClient.escape(params[1]))"
                                  + (force ? "?force=1" : ""), as: VbdList.self)
    }

    /// `xm block-list [-l|--long] <Domain>`.
    func xmBlockList(_ args: [String]) throws {
        try argCheck(args, "block-list", 1, 2)
        let (opts, params) = try gnuGetopt(args, short: "l", long: ["long"])
        let long = opts.contains { $0.0 == "-l" || $0.0 == "--long" }
        guard let dom = params.first else { out("No domain parameter given"); throw XMExit(status: 1) }
        let vbds = try client().call("GET", "/api/v1/domains/\(XendClient.escape(dom))/vbds", as: VbdList.self).vbds
        if long {
            for v in vbds { out(XM.vbdSXP(v)) }
        } else if !vbds.isEmpty {
            out(XM.blockListTable(vbds))
        }
    }

    /// The `xm block-list` table: Xen 3.0's header and `%-3d    %-3d  %-3d   %-3d    %-3d
    /// %-5d %-30s  ` rows (Vdev, BE, handle, state, evt-ch, ring-ref, BE-path). A broken
    /// vbd shows state 6 (Closed).
    public static func blockListTable(_ vbds: [VbdInfo]) -> String {
        func l(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        var lines = ["Vdev  BE handle state evt-ch ring-ref BE-path"]
        for v in vbds {
            // handle: Xen's vbd front-ends have none, so xm printed its default, 0.
            lines.append(l(String(v.vdev), 3) + "    " + l(String(v.backendId), 3) + "  " + l("0", 3) + "   "
                         + l(String(v.state), 3) + "    " + l(String(v.eventChannel), 3) + "    " + l(String(v.ringRef), 5) + " "
                         + l(v.bePath, 30) + "  ")
        }
        return lines.joined(separator: "\n")
    }

    /// `xm block-list -l`: one `(VDEV (vbd ...))` SXP per vbd.
    public static func vbdSXP(_ v: VbdInfo) -> String {
        var fields = ["(backend-id \(v.backendId))", "(virtual-device \(v.vdev))", "(dev \(v.dev))", "(device-type \(v.deviceType))",
                      "(state \(v.state))", "(be-path \(v.bePath))", "(uname \(v.uname))", "(mode \(v.mode))"]
        if let p = v.pid { fields.append("(blkback-pid \(p))") }
        if v.broken { fields.append("(broken 1)") }
        return "(\(v.vdev)\n    (vbd\n        " + fields.joined(separator: "\n        ") + "\n    )\n)"
    }
}
