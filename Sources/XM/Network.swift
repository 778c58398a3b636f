// xm network-attach, network-detach, network-list (Xen 3.x tools/python/xen/xm/main.py).
import XendAPI

extension XM {
    /// `xm network-attach <Domain> [mac=MAC] [bridge=BR] [ip=IP] [script=S] [vifname=N] [rate=R]`
    /// (also `--key=value`, as Xen 3.0's help spelled them). Prints nothing on success.
    func xmNetworkAttach(_ args: [String]) throws {
        guard let dom = args.first else { err("'xm network-attach' requires at least 1 argument."); throw XMExit(status: 1) }
        var parts: [String] = []
        for a in args.dropFirst() {
            var kv = a
            if kv.hasPrefix("--") { kv.removeFirst(2) }
            guard kv.contains("=") else { err("Invalid argument: \(a) (expected key=value)"); throw XMExit(status: 1) }
            parts.append(kv)
        }
        _ = try client().call("POST", "/api/v1/domains/\(XendClient.escape(dom))/vifs",
                              body: NetworkAttachRequest(spec: parts.joined(separator: ",")), as: VifInfo.self)
    }

    /// `xm network-detach <Domain> <DevId>`.
    func xmNetworkDetach(_ args: [String]) throws {
        try argCheck(args, "network-detach", 2)
        guard Int(args[1]) != nil else { err("Device \(args[1]) not connected"); throw XMExit(status: 1) }
        _ = try client().call("DELETE", "/api/v1/domains/\(XendClient.escape(args[0]))/vifs/\(args[1])", as: VifList.self)
    }

    /// `xm network-list [-l|--long] <Domain>`.
    func xmNetworkList(_ args: [String]) throws {
        try argCheck(args, "network-list", 1, 2)
        let (opts, params) = try gnuGetopt(args, short: "l", long: ["long"])
        let long = opts.contains { $0.0 == "-l" || $0.0 == "--long" }
        guard let dom = params.first else { out("No domain parameter given"); throw XMExit(status: 1) }
        let vifs = try client().call("GET", "/api/v1/domains/\(XendClient.escape(dom))/vifs", as: VifList.self).vifs
        if long {
            for v in vifs { out(XM.vifSXP(v)) }
        } else if !vifs.isEmpty {
            out(XM.networkListTable(vifs))
        }
    }

    /// The `xm network-list` table: Xen 3.x's header and `%-3d %-3d%-17s    %-3d   ...` rows.
    public static func networkListTable(_ vifs: [VifInfo]) -> String {
        func l(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        var lines = ["Idx BE     MAC Addr.     handle state evt-ch tx-/rx-ring-ref BE-path"]
        for v in vifs {
            lines.append(l(String(v.idx), 3) + " " + l(String(v.backendId), 3) + l(v.mac, 17) + "    " + l(String(v.handle), 3)
                         + "   " + l(String(v.state), 3) + "    " + l(String(v.eventChannel), 3) + "   "
                         + l(String(v.txRingRef), 5) + "/" + l(String(v.rxRingRef), 5) + "   " + l(v.bePath, 30) + "  ")
        }
        return lines.joined(separator: "\n")
    }

    /// `xm network-list -l`: one `(DEVID (vif ...))` SXP per vif.
    public static func vifSXP(_ v: VifInfo) -> String {
        var fields = ["(backend-id \(v.backendId))", "(mac \(v.mac))", "(handle \(v.handle))", "(state \(v.state))",
                      "(be-path \(v.bePath))", "(vifname \(v.vifname))", "(script \(v.script))"]
        if let b = v.bridge { fields.append("(bridge \(b))") }
        if let ip = v.ip { fields.append("(ip '\(ip)')") }
        if let r = v.rate { fields.append("(rate \(r))") }
        if let p = v.pid { fields.append("(netback-pid \(p))") }
        return "(\(v.idx)\n    (vif\n        " + fields.joined(separator: "\n        ") + "\n    )\n)"
    }
}
