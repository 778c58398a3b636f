// Keys the parsers read (and keep, so `xm list -l` and a save file carry them) that no part
// of Xenith acts on yet: each draws a warning naming it, so no setting is silently ignored.

extension DomainConfiguration {
    /// Domain-configuration keys in `knownKeys` that are parsed and kept but not acted on,
    /// with why (shown in the warning). `cpus`, `cpu_weight` and `cpu_cap` are not listed:
    /// they belong to the vCPU and scheduling work.
    public static let unusedKeys: [String: String] = [
        "bootloader": "no bootloader is run: give kernel and ramdisk",
        "bootargs": "no bootloader is run",
        "device_model": "the qemu engine runs qemu-system-x86_64 from PATH",
        "soundhw": "no sound device is emulated",
        "vncviewer": "no VNC viewer is started; connect to the address xm create prints",
        "vncconsole": "no VNC viewer is started; connect to the address xm create prints",
    ]

    /// The warning for the unused key `key` read from `file`:`line` into these settings;
    /// nil when the key is acted on, or asks for nothing (`vncviewer = 0`).
    func unusedWarning(_ key: String, file: String, line: Int) -> ConfigWarning? {
        guard let why = DomainConfiguration.unusedKeys[key] else { return nil }
        if (key == "vncviewer" || key == "vncconsole") && !hvm.vncviewer { return nil }
        return ConfigWarning(file: file, line: line, key: key, message: "read but not acted on: \(why)")
    }
}

extension XendConfig {
    /// xend-config.sxp keys in `knownKeys` that are read but not acted on, with why.
    /// `dom0-cpus` is not listed: it belongs to the vCPU work.
    public static let unusedKeys: [String: String] = [
        "enable-dump": "crashed domains are not dumped automatically (use xm dump-core)",
        "console-limit": "xenconsoled does not limit a console's buffer",
    ]

    /// Whether the key `key` of these settings asks for something other than the default
    /// (a setting left at its default asks for nothing that is skipped).
    func differsFromDefault(_ key: String) -> Bool {
        let d = XendConfig()
        switch key {
        case "enable-dump": return enableDump != d.enableDump
        case "console-limit": return consoleLimit != d.consoleLimit
        default: return true
        }
    }

    /// The warning for an unused key read at `line` of `file`, nil when the key is not
    /// one or is set to its default.
    func unusedWarning(_ key: String, file: String, line: Int) -> ConfigWarning? {
        guard let why = XendConfig.unusedKeys[key], differsFromDefault(key) else { return nil }
        return ConfigWarning(file: file, line: line, key: key, message: "read but not acted on: \(why)")
    }
}
