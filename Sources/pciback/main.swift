// pciback: the PCI back-end of one domain, sandboxed, on descriptors xend opened
// (Sources/PciBack, DESIGN.md "Sandboxing"). Glibc, PciBack and Sandbox only (no Foundation).
//
// Serve mode (`--domain`): runs for the domain's life. It resets the domain's functions
// through VFIO before the engine starts and after it ended (the container and group arrive
// over its socket with each request: QEMU 7.2 opens /dev/vfio/N itself, and a VFIO group
// has a single opener, so nothing may hold it while the guest runs), and in between checks
// every second that each function is still on vfio-pci and still answers, reporting a
// broken one to xend's `watch` connection. Restarted by xend with `--adopt`, it never
// resets for assignment (but for a function `add`ed later by `xm pci-attach`, which is not
// yet the guest's). Reset mode (`--reset`): one run that resets the functions of one
// group and exits (xend's fallback when no serving pciback is there).
import CLinux
import PciBack
import Sandbox
#if canImport(Glibc)
import Glibc
#endif

func eprint(_ s: String) { var s = s + "\n"; s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) } }

let usage = """
usage: pciback --domain ID --device BDF [--device BDF ...] [--adopt] [--ready-fd 5] [--manifest FILE | --no-sandbox]
       pciback --reset BDF [--reset BDF ...] [--ready-fd 5] [--manifest FILE | --no-sandbox]

Serve mode (--domain): the back-end of one domain's PCI functions for the domain's life.
xend hands it
  fd 3       a listening Unix socket (requests: watch, status, reset assign|release BDF...,
             add BDF, drop BDF; each reset carries the VFIO container and group, an add
             the function's sysfs directory and config, over SCM_RIGHTS)
  fd 6+2i    the sysfs directory of the i-th --device (O_PATH)
  fd 7+2i    its sysfs config attribute (read-only)
and reads `ready` once it serves. --adopt: restarted while the domain runs; it never resets
a function for assignment (the guest may be using it).

Reset mode (--reset): resets the functions of one IOMMU group and exits. xend hands it
  fd 3  /dev/vfio/vfio (a new VFIO container)
  fd 4  /dev/vfio/N (the functions' IOMMU group)

Exit status: 0 when done (reset mode: every function was reset); 3 when a reset failed;
1 for a usage error; 70 when the sandbox cannot be applied.
"""

let argv = ServiceReadiness.adopt(fromArguments: Array(CommandLine.arguments.dropFirst()), program: "pciback")
let opts: PciBackOptions
do throws(PciBackUsage) {
    guard let o = try PciBackOptions.parse(argv) else { eprint(usage); exit(0) }
    opts = o
} catch {
    ServiceArguments.fail(program: "pciback", error.message)
}
let manifestPath: String? = opts.noSandbox ? nil : (opts.manifest ?? ServiceManifest.locateOrExit("pciback.manifest", program: "pciback"))

func handed(_ fd: Int32, _ role: String, kind: mode_t) {
    var st = stat()
    guard fstat(fd, &st) == 0 else { ServiceArguments.fail(program: "pciback", "the \(role) (fd \(fd)) was not handed to this process") }
    guard st.st_mode & S_IFMT == kind else { ServiceArguments.fail(program: "pciback", "fd \(fd) is not the \(role)") }
}

/// Resets `members` on `group` (attached to `container` first).
func reset(_ members: [String], container: Int32, group: Int32) throws(VfioError) {
    let g = VfioGroup(container: container, group: group)
    try g.attach()
    for d in members {
        let fd = try g.device(d)
        defer { close(fd) }
        try VfioGroup.reset(fd, name: d)
    }
}

switch opts.mode {
case .reset:
    handed(3, "VFIO container", kind: S_IFCHR)
    handed(4, "VFIO group", kind: S_IFCHR)
    if let manifestPath { _ = Sandbox.applyOrExit(manifestPath: manifestPath) }
    do throws(VfioError) {
        try reset(opts.devices, container: 3, group: 4)
        ServiceReadiness.ready("reset \(opts.devices.joined(separator: " "))")
        exit(0)
    } catch {
        eprint("pciback: \(error.message)")
        ServiceReadiness.failed(error.message)
        exit(3)
    }
case .serve(let domid, let adopt):
    handed(3, "listening socket", kind: S_IFSOCK)
    var keep: [Int32] = []
    for i in opts.devices.indices {
        let (dir, cfg) = PciBackOptions.deviceFDs(i)
        handed(dir, "sysfs directory of \(opts.devices[i])", kind: S_IFDIR)
        handed(cfg, "sysfs config of \(opts.devices[i])", kind: S_IFREG)
        keep += [dir, cfg]
    }
    // xend stops it with SIGTERM; PID 1 of its namespace ignores a signal it has no handler
    // for. The socket file is xend's: nothing to tidy.
    let onSignal: @convention(c) (Int32) -> Void = { _ in _exit(0) }
    signal(SIGTERM, onSignal)
    signal(SIGINT, onSignal)
    if let manifestPath { _ = Sandbox.applyOrExit(manifestPath: manifestPath, keepFds: keep) }
    serve(domid: domid, adopt: adopt, devices: opts.devices.indices.map {
        let (dir, cfg) = PciBackOptions.deviceFDs($0)
        return Served(name: opts.devices[$0], directory: dir, config: cfg)
    })
}

/// One function served and the two descriptors it is checked on (handed at start, or
/// received with `add`).
struct Served {
    var name: String
    var directory: Int32
    var config: Int32
}

/// One accepted connection from xend.
struct Connection {
    var fd: Int32
    var watching = false
}

func send(_ fd: Int32, _ line: String) {
    var l = line + "\n"
    l.withUTF8 { _ = Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
}

func serve(domid: Int, adopt: Bool, devices start: [Served]) -> Never {
    var served = start
    var devices: [String] { served.map(\.name) }
    var life = PciBackLifecycle(devices: start.map(\.name), adopted: adopt)
    var broken: [String: String] = [:]
    var conns: [Connection] = []
    let tag = "pciback: domain \(domid):"

    func check() -> [(String, String)] {
        var fresh: [(String, String)] = []
        for f in served where broken[f.name] == nil && !life.released.contains(f.name) {
            let d = f.name
            if let why = PciDeviceCheck.problem(d, directory: f.directory, config: f.config) {
                broken[d] = why
                fresh.append((d, why))
            }
        }
        return fresh
    }
    // A device already unfit at start is reported from the first watch on.
    for (_, why) in check() { eprint("\(tag) \(why)") }
    eprint("\(tag) \(adopt ? "re-adopted (restarted under a running guest: no reset)" : "serving") \(devices.joined(separator: " "))")
    ServiceReadiness.ready("\(adopt ? "adopted" : "serving") \(devices.joined(separator: " "))")

    func handle(_ c: inout Connection, _ line: String, _ fds: [Int32]) {
        var keep = false
        defer { if !keep { for f in fds { close(f) } } }
        let req: PciBackRequest
        do throws(PciBackUsage) { req = try PciBackRequest(parsing: line) } catch {
            send(c.fd, "failed: \(error.message)"); return
        }
        switch req {
        case .watch:
            c.watching = true
            send(c.fd, "ok watching \(devices.count)")
            for d in devices { if let why = broken[d] { send(c.fd, "broken \(d) \(why)") } }
        case .status:
            send(c.fd, "ok " + devices.map { "\($0)=\(broken[$0] == nil ? "ok" : "broken")" }.joined(separator: " "))
        case .add(let d):
            guard fds.count == 2 else { send(c.fd, "failed: add needs the function's sysfs directory and config descriptors"); return }
            if let why = life.add(d) { send(c.fd, "failed: \(why)"); return }
            served.append(Served(name: d, directory: fds[0], config: fds[1]))
            keep = true
            eprint("\(tag) added \(d)")
            send(c.fd, "ok added \(d)")
        case .drop(let d):
            guard life.drop(d) != nil, let i = served.firstIndex(where: { $0.name == d }) else {
                send(c.fd, "failed: PCI device \(d) is not one of this pciback's devices"); return
            }
            close(served[i].directory); close(served[i].config)
            served.remove(at: i)
            broken[d] = nil
            eprint("\(tag) dropped \(d)")
            send(c.fd, "ok dropped \(d)")
        case .reset(let phase, let members):
            guard fds.count == 2 else { send(c.fd, "failed: reset needs the VFIO container and group descriptors"); return }
            if let why = life.permit(phase, members) {
                eprint("\(tag) refused \(phase.rawValue) reset: \(why)")
                send(c.fd, "failed: \(why)"); return
            }
            do throws(VfioError) {
                try reset(members, container: fds[0], group: fds[1])
                eprint("\(tag) reset \(members.joined(separator: " ")) (\(phase.rawValue))")
                send(c.fd, "ok reset")
            } catch {
                eprint("\(tag) \(error.message)")
                send(c.fd, "failed: \(error.message)")
            }
        }
    }

    while true {
        var pfds = [pollfd(fd: 3, events: Int16(POLLIN), revents: 0)] + conns.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
        let n = poll(&pfds, nfds_t(pfds.count), 1000)
        if n < 0 && errno != EINTR { eprint("\(tag) poll: \(String(cString: strerror(errno)))"); exit(1) }
        for (d, why) in check() {
            eprint("\(tag) \(why)")
            for c in conns where c.watching { send(c.fd, "broken \(d) \(why)") }
        }
        guard n > 0 else { continue }
        var closed: Set<Int32> = []
        for i in conns.indices where pfds[i + 1].revents != 0 {
            var buf = [UInt8](repeating: 0, count: 512)
            var fds = [Int32](repeating: -1, count: 4)
            var nf: Int32 = 0
            let r = clinux_recv_with_fds(conns[i].fd, &buf, buf.count, &fds, 4, &nf)
            let got = Array(fds.prefix(Int(nf)))
            if r <= 0 { for f in got { close(f) }; closed.insert(conns[i].fd); continue }
            var line = String(decoding: buf[..<r], as: UTF8.self)
            while line.hasSuffix("\n") { line.removeLast() }
            handle(&conns[i], line, got)
        }
        for f in closed { close(f) }
        conns.removeAll { closed.contains($0.fd) }
        if pfds[0].revents & Int16(POLLIN) != 0 {
            let fd = clinux_accept_nonblock(3)
            if fd >= 0 {
                if conns.count >= 4 { send(fd, "failed: too many connections"); close(fd) }
                else { conns.append(Connection(fd: fd)) }   // non-blocking: read only when poll says so
            }
        }
    }
}
