// xm pci-list, pci-list-assignable-devices (Xen 3.2-3.4 tools/python/xen/xm/main.py).
import XendAPI

extension XM {
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
