// xm: the Xen 3.x domain management command (tools/python/xen/xm/main.py, create.py,
// shutdown.py), talking to xend over its Unix socket.
import XendAPI
import ConsoleBackend
import DomainConfig
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Ends a command with an exit status (after its output).
public struct XMExit: Error { public var status: Int32 }

/// One run of `xm`. Output goes to `stdout`/`stderr` buffers that `main` flushes, so tests
/// can run commands in-process.
public final class XM {
    public let paths: XenithPaths
    public var stdout = ""
    public var stderr = ""
    /// Working directory for relative config and kernel paths.
    public var cwd: String
    private var clientCache: XendClient?

    public init(paths: XenithPaths = XenithPaths(), cwd: String = FileManager.default.currentDirectoryPath) {
        self.paths = paths
        self.cwd = cwd
    }

    /// (args, description) per command, as xm's SUBCOMMAND_HELP.
    static let help: [(String, String, String)] = [
        ("console", "[-q|--quiet] <Domain>", "Attach to <Domain>'s console."),
        ("create", "<ConfigFile> [options] [vars]", "Create a domain based on <ConfigFile>."),
        ("destroy", "<Domain>", "Terminate a domain immediately."),
        ("help", "[--long] [<Command>]", "Display this message."),
        ("list", "[options] [Domain, ...]", "List information about all/some domains."),
        ("pause", "<Domain>", "Pause execution of a domain."),
        ("reboot", "<Domain> [-wa]", "Reboot a domain."),
        ("restore", "[-p] <File>", "Restore a domain from a saved state."),
        ("save", "[-c] <Domain> <File>", "Save a domain state to restore later."),
        ("shutdown", "<Domain> [-waRH]", "Shutdown a domain."),
        ("unpause", "<Domain>", "Unpause a paused domain."),
        ("uptime", "[-s] <Domain>", "Print uptime for a domain."),
        ("dmesg", "[-c|--clear]", "Read and/or clear Xend's message buffer."),
        ("domid", "<DomainName>", "Convert a domain name to domain id."),
        ("domname", "<DomId>", "Convert a domain id to domain name."),
        ("info", "", "Get information about Xen host."),
        ("log", "", "Print Xend log"),
        ("migrate", "<Domain> <Host>", "Migrate a domain to another machine."),
        ("mem-max", "<Domain> <Mem>", "Set the maximum amount reservation for a domain."),
        ("mem-set", "<Domain> <Mem>", "Set the current memory usage for a domain."),
        ("network-attach", "<Domain> [script=<script>] [ip=<ip>] [mac=<mac>] [bridge=<bridge>] [vifname=<name>] [rate=<rate>]",
         "Create a new virtual network device."),
        ("network-detach", "<Domain> <DevId>", "Destroy a domain's virtual network device."),
        ("network-list", "<Domain> [--long]", "List virtual network interfaces for a domain."),
        ("vnet-create", "<ConfigFile>", "Create a vnet from ConfigFile."),
        ("vnet-delete", "<VnetId>", "Delete a Vnet."),
        ("vnet-list", "[-l|--long]", "List Vnets."),
        ("dump-core", "[-C|--crash] <Domain> [Filename]", "Dump core for a specific domain."),
        ("rename", "<Domain> <NewDomainName>", "Rename a domain."),
        ("reset", "<Domain>", "Reset a domain."),
        ("sysrq", "<Domain> <letter>", "Send a sysrq to a domain."),
        ("top", "[-b] [-i <Iterations>] [-d <Delay>]", "Monitor a host and the domains in real time."),
        ("sched-credit", "[-d <Domain> [-w[=WEIGHT]|-c[=CAP]]]", "Get/set credit scheduler parameters."),
        ("vcpu-list", "[<Domain>]", "List the VCPUs for a domain or all domains."),
        ("vcpu-pin", "<Domain> <VCPU|all> <CPUs|all>", "Set which CPUs a VCPU can use."),
        ("vcpu-set", "<Domain> <vCPUs>", "Set the number of active VCPUs for allowed for the domain."),
        ("block-attach", "<Domain> <BackDev> <FrontDev> <Mode> [BackDomain]", "Create a new virtual block device."),
        ("block-detach", "<Domain> <DevId> [-f]", "Destroy a domain's virtual block device, where <DevId> may either be the device ID or the device name as mounted in the guest."),
        ("block-list", "<Domain> [--long]", "List virtual block devices for a domain."),
        ("pci-attach", "<Domain> <domain:bus:slot.func> [virtual slot]", "Insert a new pass-through pci device."),
        ("pci-detach", "<Domain> <domain:bus:slot.func>", "Remove a domain's pass-through pci device."),
        ("pci-list", "<Domain>", "List the PCI devices assigned to a domain."),
        ("pci-list-assignable-devices", "", "List PCI devices that can be assigned to domains."),
    ]
    static let commonCommands = ["console", "create", "destroy", "help", "list", "pause", "reboot", "shutdown", "unpause", "uptime"]
    static let options: [String: [(String, String, String)]] = [
        "list": [("-l", "--long", "Output all VM details in SXP"),
                 ("", "--state=<state>", "Select only VMs with the specified state")],
        "console": [("-q", "--quiet", "Do not print an error message if the domain does not exist")],
        "dmesg": [("-c", "--clear", "Clear dmesg buffer as well as printing it")],
        "uptime": [("-s", "--short", "Short output")],
        "create": [("-c", "--console_autoconnect", "Connect to the console after the domain is created."),
                   ("-n", "--dryrun", "Dry run - prints the resulting configuration in SXP but does not create the domain."),
                   ("-p", "--paused", "Leave the domain paused after it is created."),
                   ("-f FILE", "--defconfig=FILE", "Use the given Python configuration script."),
                   ("-F FILE", "--config=FILE", "Domain configuration to use (SXP)."),
                   ("-q", "--quiet", "Quiet."),
                   ("", "--help_config", "Print the variables the configuration script declares (xm_vars.var)."),
                   ("", "--path=PATH", "Search path for configuration scripts.")],
        "shutdown": [("-a", "--all", "Shutdown all domains."), ("-w", "--wait", "Wait for shutdown to complete."),
                     ("-H", "--halt", "Shutdown without reboot."), ("-R", "--reboot", "Shutdown and reboot.")],
        "reboot": [("-a", "--all", "Reboot all domains."), ("-w", "--wait", "Wait for reboot to complete.")],
        "network-list": [("-l", "--long", "List resources as SXP")],
        "vnet-list": [("-l", "--long", "List Vnets as SXP")],
        "block-list": [("-l", "--long", "List resources as SXP")],
        "block-detach": [("-f", "--force", "Do not wait for the guest to release the device.")],
        "save": [("-c", "--checkpoint", "Leave domain running after creating snapshot")],
        "restore": [("-p", "--paused", "Do not unpause domain after restoring it")],
        "migrate": [("-l", "--live", "Use live migration."),
                    ("-p=portnum", "--port=portnum", "Use specified port for migration."),
                    ("-r=MBIT", "--resource=MBIT", "Set level of resource usage for migration.")],
        "dump-core": [("-C", "--crash", "Crash domain after dumping core")],
        "top": [("-b", "--batch", "Plain frames, no terminal control (for scripts)"),
                ("-i N", "--iterations=N", "Stop after N refreshes"),
                ("-d SECONDS", "--delay=SECONDS", "Seconds between refreshes (default 1)")],
        "sched-credit": [("-d DOMAIN", "--domain=DOMAIN", "Domain to modify"),
                         ("-w WEIGHT", "--weight=WEIGHT", "Weight (int)"),
                         ("-c CAP", "--cap=CAP", "Cap (int)")],
    ]
    static let commandNames: [String] = help.map { $0.0 }

    func out(_ s: String) { stdout += s + "\n" }
    func err(_ s: String) { stderr += "Error: " + s + "\n" }

    /// Runs `xm ARGS...` (without the program name) and returns the exit status.
    public func run(_ argv: [String]) -> Int32 {
        do {
            try dispatch(argv)
            return 0
        } catch let e as XMExit {
            return e.status
        } catch let e as XendConnectionError {
            err("Unable to connect to xend: \(e.reason). Is xend running?")
        } catch let e as APIErrorReply {
            if e.kind == "no_such_domain" { err("Domain '\(e.domain ?? "")' does not exist.") } else { err(e.error) }
        } catch let e as GetOptError {
            err(e.description)
        } catch let e as ConfigError {
            err(e.description)
        } catch {
            err("\(error)")
        }
        return 1
    }

    /// Flushes the buffered output to fds 1 and 2.
    public func flush() {
        for (fd, s) in [(Int32(1), stdout), (2, stderr)] where !s.isEmpty {
            var t = s
            t.withUTF8 { p in
                var off = 0
                while off < p.count {
                    let n = write(fd, p.baseAddress! + off, p.count - off)
                    if n <= 0 { break }
                    off += n
                }
            }
        }
        stdout = ""; stderr = ""
    }

    /// The command `name` stands for: exact, or the one command it is a prefix of (len > 1).
    public static func lookup(_ name: String) -> String? {
        if commandNames.contains(name) { return name }
        guard name.count > 1 else { return nil }
        let m = commandNames.filter { $0.hasPrefix(name) }
        return m.count == 1 ? m[0] : nil
    }

    func dispatch(_ argv: [String]) throws {
        guard let first = argv.first else { shortHelp(); throw XMExit(status: 1) }
        if first == "--help" || first == "-h" { longHelp(); return }
        // `xm CMD --help` is a request, not a mistake: usage on stdout, status 0.
        if argv.dropFirst().contains("--help") || argv.dropFirst().contains("-h") {
            cmdHelp(first); return
        }
        guard let cmd = XM.lookup(first) else {
            err("Subcommand \(first) not found!")
            shortHelp()
            throw XMExit(status: 1)
        }
        let args = Array(argv.dropFirst())
        switch cmd {
        case "help": try xmHelp(args)
        case "create": try xmCreate(args)
        case "list": try xmList(args)
        case "console": try xmConsole(args)
        case "destroy": try argCheck(args, cmd, 1); try post(args[0], "destroy")
        case "pause": try argCheck(args, cmd, 1); try post(args[0], "pause")
        case "unpause": try argCheck(args, cmd, 1); try post(args[0], "unpause")
        case "shutdown": try argCheck(args, cmd, 1, 4); try xmShutdown(args, reboot: false)
        case "reboot": try argCheck(args, cmd, 1, 3); try xmShutdown(args, reboot: true)
        case "domid": try argCheck(args, cmd, 1); out(String(try domain(args[0]).domid))
        case "domname": try argCheck(args, cmd, 1); out(try domain(args[0]).name)
        case "uptime": try xmUptime(args)
        case "mem-set", "mem-max":
            try argCheck(args, cmd, 2)
            guard let mib = XM.memorySize(args[1]) else {
                err("Invalid memory size '\(args[1])': expected MiB, or a number followed by m or g"); throw XMExit(status: 1)
            }
            _ = try post(args[0], "memory", cmd == "mem-set" ? MemoryRequest(target: mib) : MemoryRequest(max: mib))
        case "info": try argCheck(args, cmd, 0); try xmInfo()
        case "dmesg": try xmDmesg(args)
        case "log": try argCheck(args, cmd, 0); out(try client().call("GET", "/api/v1/log", as: TextReply.self).text)
        case "network-attach": try xmNetworkAttach(args)
        case "network-detach": try xmNetworkDetach(args)
        case "network-list": try xmNetworkList(args)
        case "vnet-create": try xmVnetCreate(args)
        case "vnet-list": try xmVnetList(args)
        case "vnet-delete": try xmVnetDelete(args)
        case "block-attach": try xmBlockAttach(args)
        case "block-detach": try xmBlockDetach(args)
        case "block-list": try xmBlockList(args)
        case "pci-attach": try xmPciAttach(args)
        case "pci-detach": try xmPciDetach(args)
        case "pci-list": try xmPciList(args)
        case "pci-list-assignable-devices": try xmPciListAssignable(args)
        case "save": try xmSave(args)
        case "restore": try xmRestore(args)
        case "migrate": try xmMigrate(args)
        case "rename": try xmRename(args)
        case "sysrq": try xmSysrq(args)
        case "reset": try xmReset(args)
        case "dump-core": try xmDumpCore(args)
        case "top": try xmTop(args)
        case "vcpu-list": try xmVcpuList(args)
        case "vcpu-pin": try xmVcpuPin(args)
        case "vcpu-set": try xmVcpuSet(args)
        case "sched-credit": try xmSchedCredit(args)
        default: err("Subcommand \(first) not found!"); throw XMExit(status: 1)
        }
    }

    // MARK: help

    func shortHelp() {
        out("Usage: xm <subcommand> [args]\n\nControl, list, and manipulate Xen guest instances.\n")
        out("Common 'xm' commands:\n")
        for c in XM.commonCommands { if let h = XM.help.first(where: { $0.0 == c }) { out(" " + pad(c, 20) + " " + h.2) } }
        out("")
        out(footer)
        out("For a complete list of subcommands run 'xm help --long'.")
    }

    func longHelp() {
        out("Usage: xm <subcommand> [args]\n\nControl, list, and manipulate Xen guest instances.\n")
        out("xm full list of subcommands:\n")
        for h in XM.help { out(" " + pad(h.0, 20) + " " + h.2) }
        out("")
        out(footer)
    }

    let footer = "<Domain> can either be the Domain Name or Id.\nFor more help on 'xm' see the xm(1) man page.\nFor more help on 'xm create' see the xmdomain.cfg(5)  man page.\n"

    func cmdHelp(_ name: String) {
        guard let c = XM.lookup(name), let h = XM.help.first(where: { $0.0 == c }) else { shortHelp(); return }
        out("Usage: xm \(c) \(h.1)\n")
        out(h.2)
        if let opts = XM.options[c] {
            for (s, l, d) in opts {
                let o = s.isEmpty ? l : (l.isEmpty ? s : "\(s), \(l)")
                out("  " + pad(o, 30) + " " + d)
            }
            out("")
        }
    }

    func xmHelp(_ args: [String]) throws {
        let (opts, params) = try gnuGetopt(args, short: "l", long: ["long"])
        if let c = params.first { cmdHelp(c); return }
        if opts.isEmpty { shortHelp() } else { longHelp() }
    }

    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
    func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }

    func argCheck(_ args: [String], _ name: String, _ lo: Int, _ hi: Int = -1) throws {
        let n = args.filter { $0 != "--" }.count
        if hi == -1 {
            if n != lo { err("'xm \(name)' requires \(lo) argument\(lo == 1 ? "" : "s")."); throw XMExit(status: 1) }
        } else if n < lo || n > hi {
            err("'xm \(name)' requires between \(lo) and \(hi) arguments."); throw XMExit(status: 1)
        }
    }

    // MARK: xend access

    func client() throws -> XendClient {
        if let c = clientCache { return c }
        let cfg = try paths.xendConfig()
        let c = XendClient(socketPath: paths.resolve(cfg.unixPath))
        clientCache = c
        return c
    }

    func domain(_ dom: String, long: Bool = false) throws -> DomainInfo {
        try client().call("GET", "/api/v1/domains/\(XendClient.escape(dom))" + (long ? "?long=1" : ""), as: DomainInfo.self)
    }

    func domains(long: Bool = false) throws -> [DomainInfo] {
        try client().call("GET", "/api/v1/domains" + (long ? "?long=1" : ""), as: DomainList.self).domains
    }

    @discardableResult
    /// A memory size argument in MiB: `256`, `256m`, `1g` (as xm's int_unit).
    /// - Returns: nil when `arg` is not such a size.
    static func memorySize(_ arg: String) -> Int? {
        var t = arg.lowercased()
        var unit = 1
        if t.hasSuffix("g") { unit = 1024; t.removeLast() } else if t.hasSuffix("m") { t.removeLast() }
        guard let n = Int(t), n > 0, n <= Int(Int32.max) / unit else { return nil }
        return n * unit
    }

    func post(_ dom: String, _ action: String, _ body: (some Encodable)? = Optional<TextReply>.none) throws -> DomainInfo {
        try client().call("POST", "/api/v1/domains/\(XendClient.escape(dom))/\(action)", body: body, as: DomainInfo.self)
    }

    // MARK: list

    /// The `xm list` table (Xen 3.0.x xm_brief_list).
    /// The `xm list` note for a domain with devices whose back-end xend gave up on.
    public static func brokenNote(_ name: String, _ domid: Int, _ devices: [String]) -> String {
        "Warning: domain \(name) (\(domid)) has broken devices: \(devices.joined(separator: ", ")) (their back-ends kept dying and were given up; the guest's I/O to them fails)\n"
    }

    public static func brief(_ doms: [DomainInfo]) -> String {
        var s = "Name" + String(repeating: " ", count: 36) + "  ID   Mem VCPUs      State   Time(s)\n"
        for d in doms {
            s += row(d) + "\n"
        }
        return s
    }

    static func row(_ d: DomainInfo) -> String {
        func p(_ s: String, _ n: Int, left: Bool) -> String {
            if s.count >= n { return s }
            let sp = String(repeating: " ", count: n - s.count)
            return left ? s + sp : sp + s
        }
        let t = (d.cpuTime * 10).rounded() / 10
        return p(d.name, 40, left: true) + " " + p(String(d.domid), 3, left: false) + " " + p(String(d.memory), 5, left: false)
            + " " + p(String(d.onlineVcpus), 5, left: false) + " " + p(d.state, 10, left: false) + " "
            + p(String(format: "%.1f", t), 8, left: false)
    }

    func xmList(_ args: [String]) throws {
        let (opts, params) = try gnuGetopt(args, short: "l", long: ["long", "state="])
        var long = false
        var state = "all"
        for (k, v) in opts {
            if k == "-l" || k == "--long" { long = true }
            if k == "--state" { state = v }
        }
        if state != "all" && !params.isEmpty {
            err("You may specify either a state or a particular VM, but not both"); throw XMExit(status: 1)
        }
        var doms = params.isEmpty ? try domains(long: long) : try params.map { try domain($0, long: long) }
        if state != "all" {
            let letter: Character? = ["running": "r", "blocked": "b", "paused": "p", "shutdown": "s", "crashed": "c", "dying": "d"][state]
            guard let letter else { err("Invalid state: \(state)"); throw XMExit(status: 1) }
            doms = doms.filter { $0.state.contains(letter) }
        }
        if long {
            for d in doms { out(d.sxp ?? "(domain (domid \(d.domid)) (name \(d.name)))") }
        } else {
            stdout += XM.brief(doms)
        }
        // Xen has no state for a device whose back-end was given up: a note names them.
        for d in doms { if let b = d.brokenDevices { stderr += XM.brokenNote(d.name, d.domid, b) } }
    }

    // MARK: create

    func xmCreate(_ args: [String]) throws {
        let (opts, params) = try gnuGetopt(args, short: "hqf:F:npc",
                                           long: ["help", "quiet", "defconfig=", "config=", "dryrun", "paused",
                                                  "console_autoconnect", "path=", "help_config"])
        var defconfig: String? = nil, sxpFile: String? = nil
        var dry = false, paused = false, console = false, quiet = false, helpConfig = false
        var path = ".:" + paths.etcXen
        for (k, v) in opts {
            switch k {
            case "-f", "--defconfig": defconfig = v
            case "-F", "--config": sxpFile = v
            case "-n", "--dryrun": dry = true
            case "-p", "--paused": paused = true
            case "-c", "--console_autoconnect": console = true
            case "-q", "--quiet": quiet = true
            case "--path": path = v
            case "--help_config": helpConfig = true
            case "-h", "--help": cmdHelp("create"); return
            default: break
            }
        }
        var vars: [String] = []
        for p in params {
            if p.contains("=") { vars.append(p) }
            else if defconfig == nil && sxpFile == nil { defconfig = p }
            else { err("Invalid argument: \(p)"); throw XMExit(status: 1) }
        }
        var config: DomainConfiguration
        if let f = sxpFile {
            let full = absolute(f)
            let text: String
            do { text = try readConfigText(full) } catch { err("Cannot read file \(f): \(error.message)"); throw XMExit(status: 1) }
            config = try DomainConfiguration(sxp: try SXP.parse(text, file: f), file: f)
        } else {
            let name = defconfig ?? "xmdefconfig"
            var found: String? = nil
            for dir in [""] + path.split(separator: ":").map(String.init) {
                var p = dir.isEmpty ? name : (dir as NSString).appendingPathComponent(name)
                if !p.hasPrefix("/") { p = "./" + p }
                if access(absolute(p), R_OK) == 0 { found = p; break }
            }
            guard let file = found else { err("Unable to open config file: \(name)"); throw XMExit(status: 1) }
            if !quiet { out("Using config file \"\(file)\".") }
            let text: String
            do { text = try readConfigText(absolute(file)) }
            catch { err("Unable to read config file \(file): \(error.message)"); throw XMExit(status: 1) }
            if helpConfig {
                // As Xen's create.py: run the script for help and list what xm_vars.var declared.
                let declared = try DomainConfiguration.declaredVariables(parsing: text, file: file, arguments: vars)
                stdout += XM.variablesHelp(file: file, declared)
                return
            }
            config = try DomainConfiguration(parsing: text, file: file, arguments: vars)
        }
        // Relative paths in the config are relative to xm's working directory.
        if let k = config.kernel { config.kernel = absolute(k) }
        if let r = config.ramdisk { config.ramdisk = absolute(r) }
        for i in config.disks.indices where config.disks[i].kind == .file {
            if let t = config.disks[i].target, !t.isEmpty { config.disks[i].target = absolute(t) }
        }
        if let cd = config.hvm.cdrom, !cd.isEmpty { config.hvm.cdrom = absolute(cd) }
        for w in config.warnings { stderr += XM.warningLine(w) }
        let sxp = config.toSXP()
        if dry { out(sxp.prettyPrinted()); return }
        let info = try client().call("POST", "/api/v1/domains", body: CreateRequest(config: sxp.description, paused: paused),
                                     as: DomainInfo.self)
        out("Started domain \(info.name)")
        if let v = info.vnc { out("VNC display \(v) (vncviewer \(v))") }
        if console {
            flush()
            try attachConsole(info, quiet: false)
        }
    }

    /// One `Warning:` line naming the place and the key (`pci`, `vtpm`) the warning is about.
    static func warningLine(_ w: ConfigWarning) -> String {
        "Warning: \(w.file):\(w.line): " + (w.key.map { "key '\($0)': " } ?? "") + w.message + "\n"
    }

    /// `xm create --help_config` output: Xen's help.py layout, a name padded to 12
    /// columns and its `use` text per variable.
    static func variablesHelp(file: String, _ declared: [ConfigVariable]) -> String {
        guard !declared.isEmpty else { return "\(file) declares no variables (xm_vars.var).\n" }
        var s = "\nConfiguration variables for \(file):\n\n"
        for v in declared {
            let name = v.name.count >= 12 ? v.name : v.name + String(repeating: " ", count: 12 - v.name.count)
            s += name + " " + v.use + "\n"
        }
        return s + "\n"
    }

    func absolute(_ p: String) -> String {
        p.hasPrefix("/") ? p : URL(fileURLWithPath: p, relativeTo: URL(fileURLWithPath: cwd, isDirectory: true)).standardizedFileURL.path
    }

    // MARK: shutdown / reboot

    func xmShutdown(_ args: [String], reboot: Bool) throws {
        let (opts, params) = try gnuGetopt(args, short: "hawHR", long: ["help", "all", "wait", "halt", "reboot"])
        var all = false, wait = false, halt = false, rb = reboot
        for (k, _) in opts {
            switch k {
            case "-a", "--all": all = true
            case "-w", "--wait": wait = true
            case "-H", "--halt": halt = true
            case "-R", "--reboot": rb = true
            case "-h", "--help": cmdHelp(reboot ? "reboot" : "shutdown"); return
            default: break
            }
        }
        if halt && rb { err("Can't specify halt and reboot"); throw XMExit(status: 1) }
        let mode = halt ? "halt" : (rb ? "reboot" : "poweroff")
        var targets: [String]
        if all {
            targets = try domains().filter { $0.domid != 0 }.map(\.name)
        } else {
            if params.isEmpty { err("No domain parameter given"); throw XMExit(status: 1) }
            if params.count > 1 { err("No multiple domain parameters allowed"); throw XMExit(status: 1) }
            targets = [try domain(params[0]).name]
        }
        var counts: [String: Int] = [:]
        for d in targets {
            let info = try post(d, "shutdown", ShutdownRequest(mode: mode))
            counts[d] = info.restartCount
        }
        guard wait else { return }
        var left = targets
        while !left.isEmpty {
            let alive = Dictionary(try domains().map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            for d in left {
                if mode == "reboot" {
                    if let a = alive[d] {
                        if a.restartCount != counts[d] { out("Domain \(d) rebooted"); left.removeAll { $0 == d } }
                    } else {
                        out("Domain \(d) destroyed for failed in rebooting"); left.removeAll { $0 == d }
                    }
                } else if alive[d] == nil || alive[d]!.state.contains("s") && alive[d]!.pid == nil {
                    out("Domain \(d) terminated"); left.removeAll { $0 == d }
                }
            }
            if !left.isEmpty { usleep(100_000) }
        }
        out(mode == "reboot" ? "All domains rebooted" : "All domains terminated")
    }

    // MARK: uptime, info, dmesg

    func xmUptime(_ args: [String]) throws {
        let (opts, params) = try gnuGetopt(args, short: "s", long: ["short"])
        let short = !opts.isEmpty
        let doms = params.isEmpty ? try domains() : try params.map { try domain($0) }
        if !short { out("Name                              ID Uptime") }
        let now = Date().timeIntervalSince1970
        for d in doms {
            var up: Int
            if d.domid > 0 { up = Int((now - d.startTime).rounded()) }
            else {
                let t = (try? String(contentsOfFile: "/proc/uptime", encoding: .utf8)) ?? "0"
                up = Int((Double(t.split(separator: " ").first ?? "0") ?? 0).rounded())
            }
            let days = up / 86400; up -= days * 86400
            let hours = up / 3600; up -= hours * 3600
            let minutes = up / 60; let seconds = up - minutes * 60
            var s = ""
            if days > 0 { s += "\(days) day" + (days > 1 ? "s" : "") + ", " }
            s += lpad(String(hours), 2) + ":" + String(format: "%02d", minutes)
            if short {
                let f = DateFormatter(); f.dateFormat = " HH:mm:ss"
                s = f.string(from: Date()) + " up " + s + ", " + d.name + " (\(d.domid))"
            } else {
                s += ":" + String(format: "%02d", seconds)
                s = pad(d.name, 32) + " " + lpad(String(d.domid), 3) + " " + s
            }
            out(s)
        }
    }

    func xmInfo() throws {
        let info = try client().call("GET", "/api/v1/info", as: HostInfo.self)
        for e in info.entries { out(pad(e.key, 23) + ": " + e.value) }
    }

    func xmDmesg(_ args: [String]) throws {
        let (opts, params) = try gnuGetopt(args, short: "c", long: ["clear"])
        if !params.isEmpty { err("No parameter required"); throw XMExit(status: 1) }
        if opts.isEmpty {
            out(try client().call("GET", "/api/v1/dmesg", as: TextReply.self).text)
        } else {
            _ = try client().call("POST", "/api/v1/dmesg/clear", as: TextReply.self)
        }
    }

    // MARK: console

    func xmConsole(_ args: [String]) throws {
        try argCheck(args, "console", 1, 2)
        let (opts, params) = try gnuGetopt(args, short: "q", long: ["quiet"])
        let quiet = !opts.isEmpty
        if params.count != 1 { err("No domain given"); throw XMExit(status: 1) }
        let info: DomainInfo
        do { info = try domain(params[0]) } catch { if quiet { throw XMExit(status: 1) }; throw error }
        flush()
        try attachConsole(info, quiet: quiet)
    }

    /// Attaches the terminal to the domain's console through xenconsoled
    /// (ConsoleBackend.attachConsole): guest output to stdout, keystrokes to the guest,
    /// Ctrl-] detaches. Returns when detached or when the console goes away.
    func attachConsole(_ info: DomainInfo, quiet: Bool) throws {
        guard info.domid != 0, info.pid != nil else {
            if quiet { throw XMExit(status: 1) }
            err("Domain is not started"); throw XMExit(status: 1)
        }
        let status = ConsoleBackend.attachConsole(socketPath: paths.xenconsoledSocket, domid: info.domid, quiet: quiet)
        if status != 0 { throw XMExit(status: status) }
    }
}
