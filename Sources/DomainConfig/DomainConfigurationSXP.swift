// DomainConfiguration ⇄ the `(vm ...)` SXP that `xm create -n` printed.

extension DomainConfiguration {
    /// The domain as the `(vm ...)` S-expression Xen 3.x `xm create -n` printed
    /// (create.py `make_config`), which xend stores and `xm create -F` reads back:
    ///
    ///     (vm (name N) (memory MiB) [(maxmem MiB)] (on_poweroff A) (on_reboot A) (on_crash A)
    ///         (vcpus N) [(uuid U)] [(cpus '0-3')] [(engine core|qemu)]
    ///         [(bootloader B) [(bootloader_args A)]]
    ///         (image (linux (kernel K) [(ramdisk R)] [(ip IPSETTING)] [(root R)] [(args EXTRA)]))
    ///         (device (vbd (uname phy:/dev/x) (dev xvda) (mode w) [(backend B)] [(hotplug-port P)])) ...
    ///         (device (vif (mac M) [(vifname) (bridge) (script) (backend) (ip) (type) (model) (rate)
    ///                           (hotplug-port P)])) ...
    ///         [(device (pci (dev (domain 0x0) (bus 0x3) (slot 0x1a) (func 0x1) [(vslot 0x5)]) ...))])
    ///
    /// For `builder = 'hvm'` the image is `(hvm [(kernel K)] (device_model D) (boot c) ...)`
    /// with the HVM settings that are set or on (Xen wrote `1` for true). The `ip`,
    /// `root` and `args` children hold the parts Xen's xend joined into the command
    /// line; with xl's `cmdline`, `args` holds it alone. Xenith adds `(engine ...)` when
    /// the domain asks for one, `(hotplug-port P)` to devices attached while the domain ran (the
    /// slot they went into), and `(format F)` is expressed through `tap:F:` unames.
    public func toSXP() -> SXP {
        func p(_ k: String, _ v: String) -> SXP { .pair(k, .atom(v)) }
        var vm: [SXP] = [.atom("vm"), p("name", name), .pair("memory", .int(memory))]
        if let m = maxmem { vm.append(.pair("maxmem", .int(m))) }
        vm += [p("on_poweroff", onPoweroff.rawValue), p("on_reboot", onReboot.rawValue),
               p("on_crash", onCrash.rawValue), .pair("vcpus", .int(vcpus))]
        if let u = uuid { vm.append(p("uuid", u)) }
        if let c = cpus { vm.append(p("cpus", c)) }
        if let m = maxvcpus { vm.append(.pair("maxvcpus", .int(m))) }
        if let w = cpuWeight { vm.append(.pair("cpu_weight", .int(w))) }
        if let c = cpuCap { vm.append(.pair("cpu_cap", .int(c))) }
        if engine != .auto { vm.append(p("engine", engine.rawValue)) }
        if let b = bootloader {
            vm.append(p("bootloader", b))
            if let a = bootloaderArgs { vm.append(p("bootloader_args", a)) }
        }
        var image: [SXP] = [.atom(builder.rawValue)]
        if let k = kernel { image.append(p("kernel", k)) }
        if builder == .linux {
            if let r = ramdisk { image.append(p("ramdisk", r)) }
            if let c = cmdline {
                image.append(p("args", c))
            } else {
                if let ip = ipSetting { image.append(p("ip", String(ip.dropFirst(3)))) }
                if let r = rootValue { image.append(p("root", r)) }
                if let e = extraWithNFS { image.append(p("args", e)) }
            }
        } else {
            let h = hvm
            func flag(_ k: String, _ v: Bool) { if v { image.append(.pair(k, .int(1))) } }
            if let d = h.deviceModel { image.append(p("device_model", d)) }
            image.append(p("boot", h.boot))
            if let c = h.cdrom { image.append(p("cdrom", c)) }
            flag("acpi", h.acpi); flag("apic", h.apic); flag("pae", h.pae)
            flag("localtime", h.localtime); flag("stdvga", h.stdvga); flag("nographic", h.nographic)
            flag("ne2000", h.ne2000); flag("usb", h.usb)
            if let u = h.usbdevice { image.append(p("usbdevice", u)) }
            if let s = h.serial { image.append(p("serial", s)) }
            flag("vnc", h.vnc)
            if let d = h.vncdisplay { image.append(.pair("vncdisplay", .int(d))) }
            flag("vncunused", h.vncunused)
            if let l = h.vnclisten { image.append(p("vnclisten", l)) }
            if let pw = h.vncpasswd { image.append(p("vncpasswd", pw)) }
            flag("vncviewer", h.vncviewer); flag("sdl", h.sdl)
            if let s = h.soundhw { image.append(p("soundhw", s)) }
            if let k = h.keymap { image.append(p("keymap", k)) }
        }
        vm.append(.element("image", [.list(image)]))
        for d in disks {
            var vbd: [SXP] = [.atom("vbd"), .pair("uname", .string(d.uname)), p("dev", d.dev), p("mode", d.access.rawValue)]
            if let b = d.backend { vbd.append(p("backend", b)) }
            if let s = d.script { vbd.append(p("script", s)) }
            if let c = d.cache { vbd.append(p("cache", c.rawValue)) }
            if let s = d.hotplugPort { vbd.append(p("hotplug-port", s)) }
            vm.append(.element("device", [.list(vbd)]))
        }
        for v in vifs {
            var vif: [SXP] = [.atom("vif"), p("mac", v.mac.description)]
            if let x = v.vifname { vif.append(p("vifname", x)) }
            if let x = v.backendMAC { vif.append(p("be_mac", x.description)) }
            if let x = v.bridge { vif.append(p("bridge", x)) }
            if let x = v.script { vif.append(p("script", x)) }
            if let x = v.backend { vif.append(p("backend", x)) }
            if let x = v.ip { vif.append(p("ip", x)) }
            if let x = v.type { vif.append(p("type", x)) }
            if let x = v.model { vif.append(p("model", x)) }
            if let x = v.rate { vif.append(p("rate", x.text)) }
            if let x = v.hotplugPort { vif.append(p("hotplug-port", x)) }
            vm.append(.element("device", [.list(vif)]))
        }
        if !pciDevices.isEmpty { vm.append(PciSpec.deviceSXP(pciDevices)) }
        return .list(vm)
    }

    /// Reads a `(vm ...)` S-expression as written by `toSXP()` (or by Xen 3.x `xm
    /// create -n`) back into a configuration. `(ip ...)` is split back into `ip`,
    /// `nfs_server`, `gateway`, `netmask`, `hostname`, `interface` and `dhcp`; a leading
    /// `nfsroot=` word of `(args ...)` back into `nfs_server`/`nfs_root`.
    ///
    /// - Throws: `ConfigError` (file `<sxp>`, line 0, the key involved) when the value is
    ///   not a `vm` element or a child holds a bad value.
    public init(sxp: SXP, file: String = "<sxp>") throws(ConfigError) {
        func fail(_ key: String?, _ m: String) -> ConfigError { ConfigError(file: file, line: 0, key: key, message: m) }
        guard sxp.name == "vm" else { throw fail(nil, "expected a (vm ...) element") }
        guard let name = sxp.childText("name"), !name.isEmpty else { throw fail("name", "missing") }
        self.init(name: name)
        func int(_ k: String, _ v: SXP, _ range: ClosedRange<Int>, _ unit: String) throws(ConfigError) -> Int {
            guard let i = v.intValue else { throw fail(k, "expected an integer, found \(v)") }
            // The ranges `xm create` applies to a config file: an SXP request reaches xend
            // without xm, and a negative or huge value must not reach arithmetic there.
            guard range.contains(i) else {
                throw fail(k, "\(i) is out of range \(range.lowerBound)...\(range.upperBound) (\(unit))")
            }
            return i
        }
        func action(_ k: String) throws(ConfigError) -> LifecycleAction? {
            guard let t = sxp.childText(k) else { return nil }
            guard let a = LifecycleAction(rawValue: t) else { throw fail(k, "bad action '\(t)'") }
            return a
        }
        if let v = sxp.childValue("memory") { memory = try int("memory", v, 1...(1 << 22), "MiB") }
        if let v = sxp.childValue("maxmem") { maxmem = try int("maxmem", v, 1...(1 << 22), "MiB") }
        if let v = sxp.childValue("vcpus") { vcpus = try int("vcpus", v, 1...255, "vCPU count") }
        guard vcpus >= 1 else { throw fail("vcpus", "vcpus must be at least 1") }
        uuid = sxp.childText("uuid")
        cpus = sxp.childText("cpus")
        if let v = sxp.childValue("maxvcpus") { maxvcpus = try int("maxvcpus", v, 1...255, "vCPU count") }
        if let v = sxp.childValue("cpu_weight") { cpuWeight = try int("cpu_weight", v, 1...65535, "credit-scheduler weight") }
        if let v = sxp.childValue("cpu_cap") { cpuCap = try int("cpu_cap", v, 0...25500, "percent of one CPU") }
        if let a = try action("on_poweroff") { onPoweroff = a }
        if let a = try action("on_reboot") { onReboot = a }
        if let a = try action("on_crash") { onCrash = a }
        if let e = sxp.childText("engine") {
            guard let v = DomainEngine(rawValue: e) else { throw fail("engine", "bad engine '\(e)'") }
            engine = v
        }
        bootloader = sxp.childText("bootloader")
        bootloaderArgs = sxp.childText("bootloader_args")
        if let img = sxp.childValue("image"), let kind = img.name {
            switch kind {
            case "linux": builder = .linux
            case "hvm", "vmx": builder = .hvm
            default: throw fail("image", "unknown builder '\(kind)'")
            }
            kernel = img.childText("kernel")
            ramdisk = img.childText("ramdisk")
            root = img.childText("root")
            if let ip = img.childText("ip") {
                if ip == "dhcp" {
                    dhcp = true
                } else {
                    let f = ip.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                    func field(_ i: Int) -> String? { i < f.count && !f[i].isEmpty ? f[i] : nil }
                    self.ip = field(0); nfsServer = field(1); gateway = field(2); netmask = field(3)
                    hostname = field(4); interface = field(5) ?? "eth0"; dhcp = field(6) == "dhcp"
                }
            }
            if let a = img.childText("args") {
                var words = a.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
                if let first = words.first, first.hasPrefix("nfsroot="),
                   let colon = first.firstIndex(of: ":") {
                    nfsServer = String(first[first.index(first.startIndex, offsetBy: 8)..<colon])
                    nfsRoot = String(first[first.index(after: colon)...])
                    words.removeFirst()
                }
                extra = words.isEmpty ? nil : words.joined(separator: " ")
            }
            if builder == .hvm {
                func flag(_ k: String) -> Bool { img.childText(k).flatMap(XendConfig.parseBool) ?? false }
                var h = HVMOptions()
                h.deviceModel = img.childText("device_model")
                h.boot = img.childText("boot") ?? "c"
                h.cdrom = img.childText("cdrom")
                h.acpi = flag("acpi"); h.apic = flag("apic"); h.pae = flag("pae")
                h.localtime = flag("localtime"); h.stdvga = flag("stdvga"); h.nographic = flag("nographic")
                h.ne2000 = flag("ne2000"); h.usb = flag("usb"); h.usbdevice = img.childText("usbdevice")
                h.serial = img.childText("serial"); h.vnc = flag("vnc")
                h.vncdisplay = img.childInt("vncdisplay"); h.vncunused = flag("vncunused")
                h.vnclisten = img.childText("vnclisten"); h.vncpasswd = img.childText("vncpasswd")
                h.vncviewer = flag("vncviewer"); h.sdl = flag("sdl")
                h.soundhw = img.childText("soundhw"); h.keymap = img.childText("keymap")
                hvm = h
            }
        }
        for dev in sxp.children(named: "device") {
            guard let d = dev.children.first else { continue }
            switch d.name {
            case "vbd":
                // Built as a key=value spec so that a target may hold commas.
                var kind: DiskSpec.Kind?, format: String?
                let target: String
                do { target = try DiskSpecParser.stripPrefixes(d.childText("uname") ?? "", kind: &kind, format: &format) }
                catch { throw fail("disk", "bad vbd: \(error.message)") }
                var spec = "vdev=\(d.childText("dev") ?? ""), access=\(d.childText("mode") ?? "w")"
                if let b = d.childText("backend") { spec += ", backend=\(b)" }
                if let f = format { spec += ", format=\(f)" }
                if let c = d.childText("cache") { spec += ", cache=\(c)" }
                spec += ", target=\(target)"
                do {
                    var disk = try DiskSpec(parsing: spec)
                    if let kind { disk.kind = kind }
                    disk.script = d.childText("script")
                    disk.hotplugPort = d.childText("hotplug-port")
                    disks.append(disk)
                } catch { throw fail("disk", "bad vbd: \(error.message)") }
            case "vif":
                var parts: [String] = []
                for k in ["mac", "bridge", "ip", "script", "vifname", "rate", "backend", "model", "type", "be_mac"] {
                    if let v = d.childText(k) { parts.append("\(k)=\(v)") }
                }
                do {
                    var vif = try VifSpec(parsing: parts.joined(separator: ","))
                    vif.hotplugPort = d.childText("hotplug-port")
                    vifs.append(vif)
                } catch { throw fail("vif", "bad vif: \(error.message)") }
            case "pci":
                for dev in d.children(named: "dev") {
                    let p: PciSpec
                    do { p = try PciSpec(sxp: dev) } catch { throw fail("pci", error.message) }
                    guard !pciDevices.contains(where: { $0.address == p.address }) else {
                        throw fail("pci", "PCI device \(p.address) given twice")
                    }
                    pciDevices.append(p)
                }
            default:
                continue
            }
        }
    }
}
