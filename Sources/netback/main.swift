// netback: the Xenith network back-end. Serves one vif as a vhost-user virtio-net device
// on one tap. Glibc, CLinux and Foundation-free modules only, so it can run under seccomp.
import CLinux
import NetBackend
import NetworkTypes
import Sandbox
import VhostUser
#if canImport(Glibc)
import Glibc
#endif

/// Writes one line to stderr (no stdio globals: Swift 6 concurrency checking).
func eprint(_ s: String) { var s = s; s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) } }

let usage = """
usage: netback (--socket PATH | --listen-fd N) (--tap-fd N | --tap NAME) [options]

Serves a virtio-net device over vhost-user (QEMU vhost-user.rst) to one front-end at a
time, moving frames to and from one tap; keeps listening for a reconnect after the
front-end goes away (the rings resume where the front-end says, frames in flight are lost).

  --socket PATH       listen on a Unix socket at PATH (a stale socket file is replaced)
  --listen-fd N       serve on an already listening socket fd (from a supervisor)
  --tap-fd N          an open tap fd attached with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (the launcher
                      made vifDOMID.DEVID and plugged it into the bridge)
  --tap NAME          attach to (or create) tap NAME via /dev/net/tun before the sandbox;
                      make it persistent first (ip tuntap add NAME mode tap vnet_hdr) so it
                      survives a restart of netback
  --mac MAC           the guest's MAC address (config space; default 00:16:3e:xx:xx:xx random)
  --rate RATE         limit guest transmit: BYTES/USEC (bytes per interval in µs), or Xen's
                      rate= form N[GMK]B/s or N[GMK]b/s with optional @N[m|u]s (default 50ms)
  --num-queues N      queue pairs; only 1 (one event loop serves both directions; more pairs
                      do not help on this platform)
  --no-offload        offer no checksum/TSO offloads
  --manifest FILE     sandbox manifest (default: $XENITH_MANIFESTS/netback.manifest or
                      <bin>/../share/xenith/manifests/netback.manifest, or the source tree's)
  --no-sandbox        run without the sandbox (debugging)
  --quiet             no log lines on stderr (the exit stats line is still written)
  --help              this text

SIGUSR1 writes a stats line to stderr; SIGTERM/SIGINT write it and exit 0.
"""

func fail(_ msg: String) -> Never { ServiceArguments.fail(program: "netback", msg) }

var socketPath: String?
var listenFdArg: Int32?
var tapFdArg: Int32?
var tapName: String?
var mac: [UInt8]?
var rate: (bytes: UInt64, microseconds: UInt64)?
var offloads = true
var manifestPath: String?
var noSandbox = false
var quiet = false

var args = ServiceArguments(program: "netback", arguments: CommandLine.arguments.dropFirst())
/// `BYTES/USEC` or Xen's `rate=` syntax.
func parseRate(_ s: String) -> (bytes: UInt64, microseconds: UInt64)? {
    let parts = s.split(separator: "/", omittingEmptySubsequences: false)
    if parts.count == 2, let b = UInt64(parts[0]), let u = UInt64(parts[1]), b > 0, u > 0, b <= 0xffff_ffff, u <= 0xffff_ffff {
        return (b, u)
    }
    guard let r = VifRate(s) else { return nil }
    return (r.bytesPerInterval, r.intervalMicroseconds)
}
while let a = args.next() {
    switch a {
    case "--socket": socketPath = args.value(a)
    case "--listen-fd": listenFdArg = Int32(args.int(a, in: 0...65535))
    case "--tap-fd": tapFdArg = Int32(args.int(a, in: 0...65535))
    case "--tap": tapName = args.value(a)
    case "--mac":
        let v = args.value(a)
        guard let m = MACAddress(v), m.isUnicast else { fail("--mac \(v): expected a unicast xx:xx:xx:xx:xx:xx") }
        mac = m.octets
    case "--rate":
        let v = args.value(a)
        guard let r = parseRate(v) else { fail("--rate \(v): expected BYTES/USEC or N[GMK]B/s|b/s[@N[m|u]s]") }
        rate = r
    case "--num-queues":
        let n = args.int(a, in: 1...64)
        if n != 1 { fail("--num-queues \(n): only one queue pair is supported") }
    case "--no-offload": offloads = false
    case "--manifest": manifestPath = args.value(a)
    case "--no-sandbox": noSandbox = true
    case "--quiet": quiet = true
    case "--help", "-h": print(usage); exit(0)
    default: fail("unknown argument \(a) (see --help)")
    }
}
guard (socketPath == nil) != (listenFdArg == nil) else { fail("give exactly one of --socket PATH or --listen-fd N") }
guard (tapFdArg == nil) != (tapName == nil) else { fail("give exactly one of --tap-fd N or --tap NAME") }
if manifestPath != nil && noSandbox { fail("--manifest and --no-sandbox exclude each other") }

let manifest = noSandbox ? nil : (manifestPath ?? ServiceManifest.locateOrExit("netback.manifest", program: "netback"))

// A launcher running on a Dispatch or concurrency-pool thread hands us a mask with most
// signals blocked; start from a clean one.
var noSignals = sigset_t()
sigemptyset(&noSignals)
sigprocmask(SIG_SETMASK, &noSignals, nil)
signal(SIGPIPE, SIG_IGN)

// 1. The tap (before the socket, so a bad tap leaves nothing behind).
var tapFd: Int32
if let name = tapName {
    do {
        let t = try TapDevice.open(name: name)
        tapFd = dup(t.fd)   // `t` closes its own copy
    } catch { fail("\(error)") }
} else {
    tapFd = tapFdArg!
    var st = stat()
    guard fstat(tapFd, &st) == 0, st.st_mode & S_IFMT == S_IFCHR else { fail("--tap-fd \(tapFd): not an open character device") }
}

// 2. The listening socket.
var listenFd: Int32
if let p = socketPath {
    do { listenFd = try vhostUserListen(path: p) } catch { fail("socket \(p): \(error)") }
} else {
    listenFd = listenFdArg!
}

// 3. The manifest names the listener fd 3 and the tap fd 4: move them there.
func moveHigh(_ fd: Int32) -> Int32 {
    let h = fcntl(fd, F_DUPFD_CLOEXEC, 100)
    if h < 0 { fail("F_DUPFD: \(String(cString: strerror(errno)))") }
    if fd > 4 || fd < 3 { close(fd) }
    return h
}
if listenFd != 3 || tapFd != 4 {
    let l = moveHigh(listenFd), t = moveHigh(tapFd)
    if dup2(l, 3) < 0 || dup2(t, 4) < 0 { fail("dup2: \(String(cString: strerror(errno)))") }
    close(l); close(t)
    _ = fcntl(3, F_SETFD, FD_CLOEXEC); _ = fcntl(4, F_SETFD, FD_CLOEXEC)
    listenFd = 3; tapFd = 4
}

// 4. The sandbox: before the first front-end message or guest byte.
// Tests only: XENITH_NETBACK_TEST_FORBIDDEN=1 or =PATH (once) makes one forbidden syscall
// once sandboxed, so the supervisor sees a death by SIGSYS naming it.
let tripProbe = ServiceSyscallProbe.isArmed(service: "netback")
if let m = manifest {
    _ = Sandbox.applyOrExit(manifestPath: m)
    if tripProbe { ServiceSyscallProbe.trip() }
} else if !quiet {
    eprint("netback: running without a sandbox (--no-sandbox)\n")
}
let sandboxed = manifest != nil

// 5. Signals through a signalfd served by the event loop.
var sigs = sigset_t()
sigemptyset(&sigs)
for s in [SIGTERM, SIGINT, SIGHUP, SIGUSR1] { sigaddset(&sigs, s) }
sigprocmask(SIG_BLOCK, &sigs, nil)
let sigFd = signalfd(-1, &sigs, Int32(SFD_NONBLOCK | SFD_CLOEXEC))
if sigFd < 0 { fail("signalfd: \(String(cString: strerror(errno)))") }

let guestMAC = mac ?? MACAddress.random().octets
let device: VirtioNetDevice
do { device = try VirtioNetDevice(tap: TapDevice(fd: tapFd), mac: guestMAC, rate: rate, offloads: offloads) }
catch { fail("\(error)") }
let backend: VhostUserBackend
do { backend = try VhostUserBackend(device: device, listenFd: listenFd) } catch { fail("\(error)") }
if !quiet {
    backend.log = { eprint("netback: \($0)\n") }
    device.log = { eprint("netback: \($0)\n") }
}
nonisolated(unsafe) let socketPathC: UnsafeMutablePointer<CChar>? = socketPath.map { strdup($0) }
do {
    try device.attach(to: backend)
    try backend.watch(fd: sigFd) {
        var info = signalfd_siginfo()
        while read(sigFd, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size {
            eprint("netback: stats \(device.stats.line)\n")
            if info.ssi_signo != UInt32(SIGUSR1) {
                if !sandboxed, let p = socketPathC { unlink(p) }
                exit(0)
            }
        }
    }
} catch { fail("\(error)") }

if !quiet {
    let m = MACAddress(octets: guestMAC)
    let r = rate.map { ", rate \($0.bytes) bytes per \($0.microseconds) µs" } ?? ""
    eprint("netback: serving tap \(tapName ?? "fd \(tapFdArg!)") for MAC \(m)\(r)\(offloads ? "" : ", no offloads") on \(socketPath ?? "fd \(listenFdArg!)")\n")
}
do { try backend.run() } catch { fail("\(error)") }
