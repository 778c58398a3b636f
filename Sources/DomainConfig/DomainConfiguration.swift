// A domain configuration file (xm/xl syntax), typed.

/// What to do when a domain stops for a given reason (`on_poweroff`, `on_reboot`,
/// `on_crash`; Xen 3 `xm create`).
public enum LifecycleAction: String, Sendable, Hashable, CaseIterable {
    /// Clean the domain up.
    case destroy
    /// Start a new domain in place of the old one.
    case restart
    /// Keep the stopped domain until `xm destroy`.
    case preserve
    /// Keep the old domain under a new name and start a new one.
    case renameRestart = "rename-restart"
}

/// How a domain is built (`builder`).
public enum DomainBuilder: String, Sendable, Hashable {
    /// Paravirtual-style direct Linux kernel boot (`kernel`, `ramdisk`, `extra`).
    case linux
    /// Unmodified guest with firmware boot (Xen 3.0.0 called it `vmx`).
    case hvm
}

/// The HVM settings of the manual's "Unmodified (HVM) guest domains" appendix, kept for
/// the qemu engine. Booleans default as the manual says (acpi, apic, pae, vnc on).
public struct HVMOptions: Sendable, Hashable {
    /// Boot order: `a` floppy, `c` hard disk, `d` CD-ROM, e.g. `dc`. Default `c`.
    public var boot = "c"
    /// CD-ROM image or device for hdc.
    public var cdrom: String?
    public var vnc = true
    /// VNC display number (port 5900 + display).
    public var vncdisplay: Int?
    /// Pick the first free VNC display.
    public var vncunused = true
    /// Address the VNC server listens on.
    public var vnclisten: String?
    public var vncpasswd: String?
    /// Start a vncviewer (`vncviewer`, also `vncconsole`).
    public var vncviewer = false
    public var sdl = false
    /// Where the guest's first serial port goes (`pty`, `stdio`, a file...).
    public var serial: String?
    public var acpi = true
    public var apic = true
    public var pae = true
    /// RTC in local time rather than UTC.
    public var localtime = false
    public var nographic = false
    public var deviceModel: String?
    /// Emulate an NE2000 NIC rather than rtl8139.
    public var ne2000 = false
    /// Standard VGA rather than Cirrus Logic.
    public var stdvga = false
    public var usb = false
    /// `mouse`, `tablet` or `host:ID1:ID2`.
    public var usbdevice: String?
    public var soundhw: String?
    public var keymap: String?

    public init() {}
}

/// A domain configuration: what `xm create FILE` builds.
///
/// Units: `memory` and `maxmem` in MiB. Defaults are xm's: memory 128, vcpus 1,
/// builder linux, on_poweroff destroy, on_reboot restart, on_crash restart, engine auto.
public struct DomainConfiguration: Sendable, Hashable {
    /// Domain name (required).
    public var name: String
    /// Canonical lower-case `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, if given.
    public var uuid: String?
    /// Initial memory, MiB.
    public var memory: Int = 128
    /// Maximum memory (balloon ceiling), MiB; nil means `memory`.
    public var maxmem: Int?
    public var vcpus: Int = 1
    /// Physical CPUs the vCPUs may run on, Xen's syntax: `"0-3,5,^1"`.
    public var cpus: String?
    /// Most vCPUs the domain may have online (`maxvcpus`, xl's key): `xm vcpu-set` adds
    /// vCPUs up to it; nil means `vcpus`.
    public var maxvcpus: Int?
    /// Credit-scheduler weight (`cpu_weight`), 1...65535; nil means Xen's default 256.
    public var cpuWeight: Int?
    /// Credit-scheduler cap (`cpu_cap`), percent of one CPU; 0 or nil = no cap.
    public var cpuCap: Int?
    public var builder: DomainBuilder = .linux
    public var kernel: String?
    public var ramdisk: String?
    /// Text appended to the kernel command line.
    public var extra: String?
    /// The root device for `root=` (`/dev/sda1 ro`).
    public var root: String?
    /// xl's `cmdline`: the whole kernel command line; when set, root, ip and extra are not used.
    public var cmdline: String?
    /// A bootloader (pygrub) run on the first disk instead of giving `kernel`.
    public var bootloader: String?
    /// Arguments for the bootloader (`bootargs`).
    public var bootloaderArgs: String?
    public var disks: [DiskSpec] = []
    public var vifs: [VifSpec] = []
    /// PCI devices passed through (`pci = [...]`), in config order, each host function once.
    public var pciDevices: [PciSpec] = []
    /// Kernel IP settings for `ip=` (see `kernelCommandLine`).
    public var ip: String?
    public var netmask: String?
    public var gateway: String?
    public var hostname: String?
    /// Guest interface the kernel configures (`interface`). Default `eth0`.
    public var interface: String = "eth0"
    /// `dhcp = 'dhcp'`: the kernel asks DHCP for its address.
    public var dhcp: Bool = false
    public var nfsServer: String?
    public var nfsRoot: String?
    public var onPoweroff: LifecycleAction = .destroy
    public var onReboot: LifecycleAction = .restart
    public var onCrash: LifecycleAction = .restart
    public var hvm = HVMOptions()
    /// Engine this domain asks for (`engine`); `.auto` defers to xend-config.sxp.
    public var engine: DomainEngine = .auto
    /// Keys xm accepted that Xenith ignores, and other remarks.
    public var warnings: [ConfigWarning] = []

    public init(name: String) {
        self.name = name
    }

    /// Keys with a meaning here (besides variables a file defines for its own use).
    public static let knownKeys: Set<String> = [
        "name", "uuid", "memory", "maxmem", "vcpus", "cpus", "maxvcpus", "cpu_weight", "cpu_cap", "builder", "kernel", "ramdisk", "extra",
        "root", "cmdline", "bootloader", "bootargs", "disk", "vif", "pci", "nics", "ip", "netmask", "gateway",
        "hostname", "interface", "dhcp", "nfs_server", "nfs_root", "on_poweroff", "on_reboot", "on_crash",
        "engine", "boot", "cdrom", "vnc", "vncdisplay", "vncunused", "vnclisten", "vncpasswd", "vncviewer",
        "vncconsole", "sdl", "serial", "acpi", "apic", "pae", "localtime", "nographic", "device_model",
        "ne2000", "stdvga", "usb", "usbdevice", "soundhw", "keymap",
    ]

    /// Keys Xen 3.x's `xm create` accepted that Xenith reads and ignores with a warning.
    public static let ignoredKeys: Set<String> = [
        "ssidref", "cpu", "restart", "blkif", "netif", "tpmif", "vtpm",
        "ioports", "irq", "usbport", "vfb", "vscsi", "access_control", "security", "shadow_memory",
        "features", "bootentry", "lapic", "isa", "display", "xauthority", "fda", "fdb", "full_screen",
        "hap", "timer_mode", "viridian", "rtc_timeoffset", "on_xend_start", "on_xend_stop", "description",
        "target", "cpuid", "cpuid_check", "pool", "vcpu_avail", "console", "ipaddr",
        "videoram", "parallel", "monitor", "guest_os_type", "vhpt", "hpet", "s3_integrity",
    ]
}
