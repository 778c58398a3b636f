// xenith-core: one domain's vCPUs and memory on KVM (the minimal hypervisor core).
// Run by hand for debugging with the console on stdio; xend runs it per domain.
import CLinux
import Core
#if canImport(Glibc)
import Glibc
#endif

/// xenith-core's command line. The core parses it by hand: swift-argument-parser pulls in
/// FoundationEssentials (~10 MB of code, ~6 MB resident at start), which alone would break
/// the core's memory target (8 MiB without guest RAM) and its start-up time, and Foundation
/// has no place in a process that may run under seccomp (PLATFORM.md).
struct XenithCore {
    static let usage = """
    usage: xenith-core --kernel FILE [--ramdisk FILE] [--extra CMDLINE] [options]
           xenith-core --firmware FILE [options]

    Run one domain on KVM with its console on stdio. Boots a Linux bzImage (64-bit boot
    protocol), an ELF kernel with a PVH entry note, or a real-mode firmware image.

    options:
      --kernel FILE        kernel: bzImage or PVH ELF
      --firmware FILE      real-mode firmware image (flat binary, ends at 1 MiB)
      --ramdisk FILE       initial ramdisk
      --extra CMDLINE      kernel command line
      --memory MIB         guest memory in MiB (default 128)
      --vcpus N            number of vCPUs (default 1)
      --name NAME          domain name (default "domain")
      --control PATH       control socket (pause, unpause, shutdown, reboot, destroy, query)
      --status-file PATH   on exit, write why the guest stopped (one line: poweroff |
                           reboot REASON | crash REASON | destroyed)
      --vhost-user-blk SOCK  add a virtio-blk disk served by the vhost-user back-end
                           listening on SOCK (blkback); repeatable, one PCI slot each
      --vhost-user-net SOCK  add a virtio-net NIC served by the vhost-user back-end
                           listening on SOCK (netback); repeatable, one PCI slot each
      --no-rng             leave out the in-core virtio-rng device
      --balloon            add an in-core virtio-balloon device (control: balloon MIB)
      --no-input           do not read the console from stdin
      --incoming           start paused and wait for a saved state on the control socket
                           (`restore` with the stream's descriptor), as the target of
                           xm restore; `unpause` then runs the restored guest
      --console-ring-fd N --console-out-fd N --console-in-fd N
                           COM1 on a console ring served by xenconsoled instead of
                           stdio: inherited ring memfd, outEvent and inEvent eventfds
      -h, --help           show this help

    exit status: 0 poweroff, 2 reboot, 3 crash, 4 destroyed, 1 error, 64 usage
    """

    var kernel: String?
    var firmware: String?
    var ramdisk: String?
    var extra = ""
    var memory = 128
    var vcpus = 1
    var name = "domain"
    var control: String?
    var statusFile: String?
    var noRng = false
    var balloon = false
    var noInput = false
    var incoming = false
    var vhostUserBlk: [String] = []
    var vhostUserNet: [String] = []
    var consoleRing = ConsoleRingFDs()

    /// Parses `args` (without the program name).
    /// - Throws: ``UsageError`` naming the bad argument.
    init(arguments given: [String]) throws(UsageError) {
        // Split --flag=value into two arguments first.
        var args: [String] = []
        for a in given {
            if a.hasPrefix("--"), let eq = a.firstIndex(of: "=") {
                args.append(String(a[..<eq]))
                args.append(String(a[a.index(after: eq)...]))
            } else {
                args.append(a)
            }
        }
        var i = 0
        func value(_ flag: String) throws(UsageError) -> String {
            i += 1
            guard i < args.count else { throw UsageError("\(flag) needs a value") }
            return args[i]
        }
        func number(_ flag: String) throws(UsageError) -> Int {
            let v = try value(flag)
            guard let n = Int(v) else { throw UsageError("\(flag) takes a whole number, not '\(v)'") }
            return n
        }
        while i < args.count {
            let arg = args[i]
            switch arg {
            case "--kernel": kernel = try value(arg)
            case "--firmware": firmware = try value(arg)
            case "--ramdisk": ramdisk = try value(arg)
            case "--extra": extra = try value(arg)
            case "--memory": memory = try number(arg)
            case "--vcpus": vcpus = try number(arg)
            case "--name": name = try value(arg)
            case "--control": control = try value(arg)
            case "--status-file": statusFile = try value(arg)
            case "--vhost-user-blk": vhostUserBlk.append(try value(arg))
            case "--vhost-user-net": vhostUserNet.append(try value(arg))
            case "--no-rng": noRng = true
            case "--balloon": balloon = true
            case "--no-input": noInput = true
            case "--incoming": incoming = true
            case "--console-ring-fd": consoleRing.ring = Int32(exactly: try number(arg))
            case "--console-out-fd": consoleRing.out = Int32(exactly: try number(arg))
            case "--console-in-fd": consoleRing.input = Int32(exactly: try number(arg))
            case "-h", "--help": throw UsageError(nil)
            default: throw UsageError("unknown argument '\(arg)'")
            }
            i += 1
        }
        if kernel == nil && firmware == nil { throw UsageError("give --kernel or --firmware") }
        if kernel != nil && firmware != nil { throw UsageError("--kernel and --firmware exclude each other") }
        if memory < 2 { throw UsageError("--memory must be at least 2 (MiB)") }
        if vcpus < 1 { throw UsageError("--vcpus must be at least 1") }
        if let p = consoleRing.problem { throw UsageError(p) }
    }

    /// Runs the domain to its end and returns the process exit status.
    func run() -> Int32 {
        // Before any thread exists, so every thread inherits the blocked mask.
        let sigFD = clinux_termination_signalfd()
        var cfg = MachineConfiguration(memoryMiB: memory, vcpus: vcpus, kernelPath: kernel, firmwarePath: firmware,
                                       ramdiskPath: ramdisk, cmdline: extra, name: name, virtioRNG: !noRng)
        cfg.virtioBalloon = balloon
        cfg.incoming = incoming
        let machine: Machine
        let ring: ConsoleRingPort?
        do {
            ring = try consoleRing.open(log: { msg in eprint("xenith-core: \(msg)") })
            let stdoutConsole: @Sendable (UInt8) -> Void = { b in
                var c = b
                _ = write(1, &c, 1)
            }
            machine = try Machine(config: cfg, consoleOutput: ring?.output ?? stdoutConsole,
                                  log: { msg in eprint("xenith-core: \(msg)") })
            try ring?.connect(to: machine)
        } catch {
            eprint("xenith-core: \(error)")
            return 1
        }
        for sock in vhostUserBlk {
            do {
                // virtio-blk device features the core passes through (virtio 1.2 §5.2.3):
                // SIZE_MAX 1, SEG_MAX 2, BLK_SIZE 6, FLUSH 9, TOPOLOGY 10, MQ 12,
                // DISCARD 13, WRITE_ZEROES 14; RO 5.
                let mask: UInt64 = (1 << 1) | (1 << 2) | (1 << 5) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 12) | (1 << 13) | (1 << 14)
                try machine.addVirtio(VhostUserDevice(socketPath: sock, memory: machine.memory, deviceType: 2,
                                                      deviceFeatureMask: mask, configSize: 60, numQueues: vcpus,
                                                      log: { eprint("xenith-core: \($0)") }))
            } catch {
                eprint("xenith-core: \(error)")
                return 1
            }
        }
        for sock in vhostUserNet {
            do {
                // virtio-net device features the core passes through (virtio 1.2 §5.1.3):
                // CSUM 0, GUEST_CSUM 1, MAC 5, GUEST_TSO4/6/ECN 7-9, HOST_TSO4/6/ECN 11-13,
                // MRG_RXBUF 15, STATUS 16. Config: mac, status, max_virtqueue_pairs, mtu.
                let mask: UInt64 = (1 << 0) | (1 << 1) | (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9)
                    | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 15) | (1 << 16)
                try machine.addVirtio(VhostUserDevice(socketPath: sock, memory: machine.memory, deviceType: 1,
                                                      deviceFeatureMask: mask, configSize: 12, numQueues: 2,
                                                      log: { eprint("xenith-core: \($0)") }))
            } catch {
                eprint("xenith-core: \(error)")
                return 1
            }
        }
        var control: ControlServer? = nil
        if let path = self.control {
            do { control = try ControlServer(path: path, machine: machine) }
            catch { eprint("xenith-core: \(error)"); return 1 }
        }
        let console = noInput || ring != nil ? nil : StdinConsole(machine: machine)
        SignalStop.install(machine, fd: sigFD)
        let outcome = machine.run()
        console?.restore()
        control = nil
        _ = control
        eprint("xenith-core: domain '\(name)' stopped: \(outcome)")
        if let path = statusFile { writeStatus(outcome, to: path) }
        return outcome.exitStatus
    }
}

/// A bad command line; `nil` message means "print the help".
struct UsageError: Error {
    let message: String?
    init(_ m: String?) { message = m }
}

/// Feeds stdin to COM1 (raw mode when stdin is a terminal, restored on exit). On a terminal,
/// Ctrl-] (0x1d, the escape of `xm console`) destroys the domain: Ctrl-C goes to the guest.
final class StdinConsole: @unchecked Sendable {
    private var saved = termios()
    private var isTTY = false

    init?(machine: Machine) {
        let isTTY = isatty(0) != 0
        self.isTTY = isTTY
        if isTTY {
            tcgetattr(0, &saved)
            var raw = saved
            cfmakeraw(&raw)
            raw.c_oflag |= tcflag_t(OPOST | ONLCR)
            tcsetattr(0, TCSANOW, &raw)
        }
        _ = fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK)
        do {
            try machine.loop.add(0) { [weak machine] _ in
                var buf = [UInt8](repeating: 0, count: 256)
                let n = buf.withUnsafeMutableBytes { read(0, $0.baseAddress, 256) }
                if n > 0, isTTY, let esc = buf[0..<n].firstIndex(of: 0x1d) {
                    if esc > 0 { machine?.serial.receive(buf[0..<esc]) }
                    machine?.stop(.destroyed)
                } else if n > 0 { machine?.serial.receive(buf[0..<n]) }
                else if n == 0 || (errno != EAGAIN && errno != EINTR) { machine?.loop.remove(0) }
            }
        } catch { return nil }
    }

    func restore() { if isTTY { tcsetattr(0, TCSANOW, &saved) } }
}

/// SIGTERM, SIGINT and SIGHUP destroy the domain cleanly (console restored, sockets
/// removed): they are blocked in every thread and read from a signalfd on the event loop.
enum SignalStop {
    static func install(_ m: Machine, fd: Int32) {
        guard fd >= 0 else { return }
        try? m.loop.add(fd) { [weak m] _ in
            var info = signalfd_siginfo()
            while read(fd, &info, MemoryLayout<signalfd_siginfo>.size) > 0 {}
            m?.stop(.destroyed)
        }
    }
}

/// Writes the stop reason atomically (temp file + rename).
func writeStatus(_ outcome: GuestStop, to path: String) {
    let tmp = path + ".tmp"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { eprint("xenith-core: cannot write \(path): \(String(cString: strerror(errno)))"); return }
    let line = outcome.statusLine + "\n"
    _ = line.withCString { write(fd, $0, strlen($0)) }
    close(fd)
    rename(tmp, path)
}

/// Writes one line to standard error (unbuffered, thread-safe at line granularity).
func eprint(_ line: String) {
    let s = line + "\n"
    _ = s.withCString { write(2, $0, strlen($0)) }
}

do {
    let cmd = try XenithCore(arguments: Array(CommandLine.arguments.dropFirst()))
    exit(cmd.run())
} catch {
    if let m = error.message {
        eprint("xenith-core: \(m)")
        eprint("run 'xenith-core --help' for usage")
        exit(64)
    }
    print(XenithCore.usage)
    exit(0)
}
