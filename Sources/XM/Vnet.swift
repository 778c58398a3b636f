// xm vnet-create, vnet-list, vnet-delete (Xen 3.x tools/python/xen/xm/main.py): virtual
// networks, which xend makes as a bridge plus a VXLAN device (Sources/Xend/Vnets.swift).
import DomainConfig
import Foundation
import XendAPI

extension XM {
    /// `xm vnet-create <ConfigFile>`: sends the file's `(vnet ...)` form to xend. Prints
    /// nothing on success; a file xend refuses is named with its line and key.
    func xmVnetCreate(_ args: [String]) throws {
        try argCheck(args, "vnet-create", 1)
        let path = args[0].hasPrefix("/") ? args[0] : cwd + "/" + args[0]
        guard access(path, R_OK) == 0, let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            out("File not found: \(args[0])"); throw XMExit(status: 1)
        }
        _ = try client().call("POST", "/api/v1/vnets", body: VnetCreateRequest(config: text, file: args[0]), as: VnetInfo.self)
    }

    /// `xm vnet-list [-l|--long] [<VnetId> ...]`: one id a line; with `-l` (or ids) each
    /// vnet's SXP, pretty-printed as Xen's `PrettyPrint.prettyprint` did.
    func xmVnetList(_ args: [String]) throws {
        let (opts, params) = try gnuGetopt(args, short: "l", long: ["long"])
        let long = !params.isEmpty || opts.contains { $0.0 == "-l" || $0.0 == "--long" }
        let vnets: [VnetInfo]
        if params.isEmpty {
            vnets = try client().call("GET", "/api/v1/vnets", as: VnetList.self).vnets
        } else {
            vnets = try params.map { try client().call("GET", "/api/v1/vnets/\(XendClient.escape($0))", as: VnetInfo.self) }
        }
        for v in vnets {
            if long {
                out((try? SXP.parse(v.sxp))?.prettyPrinted() ?? v.sxp)
            } else {
                out(String(v.id))
            }
        }
    }

    /// `xm vnet-delete <VnetId>`: removes the vnet's VXLAN device, bridge and record.
    func xmVnetDelete(_ args: [String]) throws {
        try argCheck(args, "vnet-delete", 1)
        _ = try client().call("DELETE", "/api/v1/vnets/\(XendClient.escape(args[0]))", as: VnetList.self)
    }
}
