// The guest kernel command line, built as Xen 3.x did.

extension DomainConfiguration {
    /// The `ip=` setting Xen's `xm create` built from `ip`, `nfs_server`, `gateway`,
    /// `netmask`, `hostname`, `interface` and `dhcp` (Linux nfsroot.txt "ip=" syntax):
    /// `ip=IP:SERVER:GATEWAY:NETMASK:HOSTNAME:INTERFACE:AUTOCONF` with AUTOCONF `off` or
    /// `dhcp`; plain `ip=dhcp` when DHCP is on and nothing else is set. Nil when neither
    /// `ip` nor DHCP is set.
    ///
    /// xm filled an unset SERVER field with a dummy address (1.2.3.4 in 3.0, later
    /// 127.0.255.255); Xenith leaves it empty, which Linux reads as "none".
    public var ipSetting: String? {
        let ipText = ip ?? ""
        guard !ipText.isEmpty || dhcp else { return nil }
        let autoconf = dhcp ? "dhcp" : "off"
        if dhcp && ipText.isEmpty && nfsServer == nil && gateway == nil && netmask == nil && hostname == nil {
            return "ip=dhcp"
        }
        let fields = [ipText, nfsServer ?? "", gateway ?? "", netmask ?? "", hostname ?? "", interface, autoconf]
        return "ip=" + fields.joined(separator: ":")
    }

    /// The text after `root=`: `root` with any `root=` prefix removed.
    var rootValue: String? {
        guard var r = root, !r.isEmpty else { return nil }
        if r.hasPrefix("root=") { r.removeFirst(5) }
        return r
    }

    /// `extra`, preceded by `nfsroot=SERVER:PATH` when `nfs_root` is set (xm create.py
    /// `preprocess_nfs`).
    var extraWithNFS: String? {
        var parts: [String] = []
        if let r = nfsRoot, let s = nfsServer { parts.append("nfsroot=\(s):\(r)") }
        if let e = extra, !e.isEmpty { parts.append(e) }
        return parts.isEmpty ? nil : parts.joined(separator: " ")
    }

    /// The kernel command line for the linux builder.
    ///
    /// Order as Xen 3.x xend (XendConfig) assembled it from `xm create`'s image settings:
    /// `root=ROOT`, then the `ip=` setting (`ipSetting`), then `extra` (after
    /// `nfsroot=...` when `nfs_root` is set); `root=` and `ip=` are left out when `extra`
    /// already holds one. xl's `cmdline`, when set, replaces all of that. Xenith then
    /// appends `console=ttyS0` (the core's UART feeds xenconsoled) unless the line already
    /// names a `console=`. Words are separated by single spaces.
    public var kernelCommandLine: String {
        var words: [String] = []
        if let c = cmdline {
            words = c.split(separator: " ").map(String.init)
        } else {
            let extraWords = (extraWithNFS ?? "").split(separator: " ").map(String.init)
            if let r = rootValue, !extraWords.contains(where: { $0.hasPrefix("root=") }) {
                words += ("root=" + r).split(separator: " ").map(String.init)
            }
            if let ip = ipSetting, !extraWords.contains(where: { $0.hasPrefix("ip=") }) {
                words.append(ip)
            }
            words += extraWords
        }
        if !words.contains(where: { $0.hasPrefix("console=") }) {
            words.append("console=ttyS0")
        }
        return words.joined(separator: " ")
    }
}
