// xenith-core: one domain's vCPUs and memory on KVM (the minimal hypervisor core).
// Run by hand for debugging with the console on stdio; xend runs it per domain.
import ArgumentParser
import CLinux
import Core
#if canImport(Glibc)
import Glibc
#endif

struct XenithCore: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenith-core",
        abstract: "Run one domain on KVM with its console on stdio.",
        discussion: """
        Boots a Linux bzImage (64-bit boot protocol), an ELF kernel with a PVH entry note, or \
        a real-mode firmware image. Prints why the guest stopped and exits with:
          0 poweroff   2 reboot   3 crash   4 destroyed   1 error before or while running   64 usage
        """)

    @Option(help: "Kernel: bzImage or PVH ELF.") var kernel: String?
    @Option(help: "Real-mode firmware image (flat binary, ends at 1 MiB).") var firmware: String?
    @Option(help: "Initial ramdisk.") var ramdisk: String?
    @Option(help: "Kernel command line.") var extra: String = ""
    @Option(help: "Guest memory in MiB.") var memory: Int = 128
    @Option(help: "Number of vCPUs.") var vcpus: Int = 1
    @Option(help: "Domain name.") var name: String = "domain"
    @Option(help: "Control socket path (pause, unpause, shutdown, destroy, query).") var control: String?
    @Flag(help: "Leave out the in-core virtio-rng device.") var noRng = false
    @Flag(help: "Do not read the console from stdin.") var noInput = false
    @Option(help: "On exit, write why the guest stopped to this file (one line: poweroff | reboot REASON | crash REASON | destroyed), for a supervisor that is not our parent.")
    var statusFile: String?
    @Option(help: "Console ring memfd (an inherited fd): COM1 goes to xenconsoled instead of stdio; give all three --console-*-fd.")
    var consoleRingFd: Int32?
    @Option(help: "Console outEvent eventfd (inherited): the core signals it.") var consoleOutFd: Int32?
    @Option(help: "Console inEvent eventfd (inherited): xenconsoled signals it.") var consoleInFd: Int32?
    var consoleRing: ConsoleRingFDs { ConsoleRingFDs(ring: consoleRingFd, out: consoleOutFd, input: consoleInFd) }

    func validate() throws {
        if kernel == nil && firmware == nil { throw ValidationError("give --kernel or --firmware") }
        if kernel != nil && firmware != nil { throw ValidationError("--kernel and --firmware exclude each other") }
        if memory < 2 { throw ValidationError("--memory must be at least 2 (MiB)") }
        if vcpus < 1 { throw ValidationError("--vcpus must be at least 1") }
        if let p = consoleRing.problem { throw ValidationError(p) }
    }

    func run() throws {
        // Before any thread exists, so every thread inherits the blocked mask.
        let sigFD = clinux_termination_signalfd()
        let cfg = MachineConfiguration(memoryMiB: memory, vcpus: vcpus, kernelPath: kernel, firmwarePath: firmware,
                                       ramdiskPath: ramdisk, cmdline: extra, name: name, virtioRNG: !noRng)
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
            throw ExitCode(1)
        }
        var control: ControlServer? = nil
        if let path = self.control {
            do { control = try ControlServer(path: path, machine: machine) }
            catch { eprint("xenith-core: \(error)"); throw ExitCode(1) }
        }
        let console = noInput || ring != nil ? nil : StdinConsole(machine: machine)
        SignalStop.install(machine, fd: sigFD)
        let outcome = machine.run()
        console?.restore()
        control = nil
        _ = control
        eprint("xenith-core: domain \(name) stopped: \(outcome)")
        if let path = statusFile { writeStatus(outcome, to: path) }
        throw ExitCode(outcome.exitStatus)
    }
}

/// Feeds stdin to COM1 (raw mode when stdin is a terminal, restored on exit).
final class StdinConsole: @unchecked Sendable {
    private var saved = termios()
    private var isTTY = false

    init?(machine: Machine) {
        isTTY = isatty(0) != 0
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
                if n > 0 { machine?.serial.receive(buf[0..<n]) }
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

XenithCore.main()
