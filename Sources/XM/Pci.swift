// xm pci-attach, pci-detach, pci-list, pci-list-assignable-devices (Xen 3.2-3.4
// tools/python/xen/xm/main.py).
import DomainConfig
import XendAPI

extension XM {
    /// `xm pci-attach <Domain> <BDF> [VSLOT]`: BDF in Xen's forms, VSLOT hex (`0x` optional).
    func xmPciAttach(_ args: [String]) throws {
        try argCheck(args, "pci-attach", 2, 3)
        let bdf: String, vslot: Int?
        do { (bdf, vslot) = try XM.pciAttachArguments(Array(args[1...])) } catch { err(error.message); throw XMExit(status: 1) }
        _ = try client().call("POST", "/api/v1/domains/\(XendClient.escape(args[0]))/pci",
                              body: PciAttachRequest(bdf: bdf, vslot: vslot), as: PciList.self)
    }

    /// `xm pci-detach <Domain> <BDF>`.
    func xmPciDetach(_ args: [String]) throws {
        try argCheck(args, "pci-detach", 2)
        let a: PciAddress
        do { a = try PciAddress(parsing: args[1]) } catch { err(error.message); throw XMExit(status: 1) }
        _ = try client().call("DELETE", "/api/v1/domains/\(XendClient.escape(args[0]))/pci/\(a)", as: PciList.self)
    }

    /// The BDF and virtual slot of `xm pci-attach` (`[BDF]` or `[BDF, VSLOT]`), checked
    /// before xend is asked: the BDF normalised to `DDDD:BB:SS.F`, the slot hex 1...0x1f.
    /// - Throws: `PciSpecError` naming the argument.
    public static func pciAttachArguments(_ a: [String]) throws(PciSpecError) -> (String, Int?) {
        let addr = try PciAddress(parsing: a[0])
        guard a.count > 1 else { return (addr.description, nil) }
        var t = a[1].lowercased()
        if t.hasPrefix("0x") { t.removeFirst(2) }
        guard !t.isEmpty, t.count <= 2, t.allSatisfy({ $0.isASCII && $0.isHexDigit }), let v = Int(t, radix: 16), (1...0x1f).contains(v) else {
            throw PciSpecError("bad virtual slot '\(a[1])' (expected hex 1 to 1f)")
        }
        return (addr.description, v)
    }

    /// `xm pci-list <Domain>`: Xen's table of the domain's PCI functions.
    func xmPciList(_ args: [String]) throws {
        try argCheck(args, "pci-list", 1)
        let list = try client().call("GET", "/api/v1/domains/\(XendClient.escape(args[0]))/pci", as: PciList.self)
        if !list.devices.isEmpty { out(XM.pciListTable(list.devices)) }
    }

    /// `xm pci-list-assignable-devices`: one `DDDD:BB:SS.F` per line.
    func xmPciListAssignable(_ args: [String]) throws {
        try argCheck(args, "pci-list-assignable-devices", 0)
        for d in try client().call("GET", "/api/v1/pci/assignable", as: PciAssignableList.self).devices { out(d) }
    }

    /// The `xm pci-list` table: header `domain   bus   slot   func` and rows
    /// `0xDDDD 0xBB 0xSS 0xF` (Xen 3.2's format), then the guest slot asked for, if any, and
    /// `BROKEN: REASON` for a function pciback reported unfit.
    public static func pciListTable(_ devices: [PciDeviceInfo]) -> String {
        func h(_ v: Int, _ w: Int) -> String {
            let s = String(v, radix: 16)
            return "0x" + String(repeating: "0", count: max(0, w - s.count)) + s
        }
        var lines = ["domain   bus   slot   func"]
        for d in devices {
            var l = "\(h(d.domain, 4)) \(h(d.bus, 2)) \(h(d.slot, 2)) \(h(d.func, 1))"
            if let v = d.vslot { l += " (guest slot \(h(v, 2)))" }
            if let why = d.broken { l += " BROKEN: \(why)" }
            lines.append(l)
        }
        return lines.joined(separator: "\n")
    }
}
