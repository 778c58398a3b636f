// blkback: the Xenith block back-end. Serves one disk image as a vhost-user-blk device.
// Glibc, SystemPackage and CLinux only (no Foundation) so it can run under seccomp.
import BlockBackend
import CLinux
import VhostUser
import Virtio
import GuestMemory
import Sandbox
#if canImport(Glibc)
import Glibc
#endif

/// Writes one line to stderr (no stdio globals: Swift 6 concurrency checking).
func eprint(_ s: String) { var s = s; s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) } }

let usage = """
usage: blkback --socket PATH --image IMAGE [options]
       blkback --listen-fd N --image-fd N [options]

Serves IMAGE as a virtio-blk device over vhost-user (QEMU vhost-user.rst) to one front-end
at a time; keeps listening for a reconnect after the front-end goes away.

  --socket PATH       listen on a Unix socket at PATH (a stale socket file is replaced;
                      one with a live listener is refused)
  --listen-fd N       serve on an already listening socket fd (from a supervisor)
  --image IMAGE       file:PATH (raw image), phy:DEVICE (host block device) or a path
  --image-fd N        an open image fd (from a supervisor)
  --read-only         export read-only (VIRTIO_BLK_F_RO; writes fail with IOERR); takes a
                      shared lock on the image
  --shared-write      Xen's 'w!' mode: export read-write without the exclusive image lock
                      (by default an image already exported read-write, by this or another
                      blkback, is refused; so is a block device mounted read-write here)
  --num-queues N      request queues (VIRTIO_BLK_F_MQ when N > 1; default 1, max 64)
  --io-threads N      threads serving requests of 256 KiB or more concurrently, so large
                      transfers overlap (default 4; 0 serves everything on the event loop)
  --serial S          GET_ID serial (default xenith-blk, at most 20 bytes)
  --manifest FILE     security manifest (default $XENITH_MANIFESTS/blkback.manifest, else
                      BINDIR/../share/xenith/manifests/blkback.manifest, else the source
                      tree's manifests/); applied once the image and socket are open
  --no-sandbox        run without the manifest (debugging only)
  --quiet             no log lines on stderr
  --help              this text

With the sandbox the listener ends up at fd 3 and the image at fd 4 (the manifest's fd
lines); a supervisor best hands them there (--listen-fd 3 --image-fd 4).
"""

func fail(_ msg: String) -> Never { ServiceArguments.fail(program: "blkback", msg) }

var socketPath: String?
var listenFdArg: Int32?
var imageSpec: String?
var imageFdArg: Int32?
var readOnly = false
var sharedWrite = false
var numQueues = 1
var serial = "xenith-blk"
var quiet = false
var testReorder = false
var ioThreads = 4
var testDelayUs: UInt32 = 0
var manifestArg: String?
var noSandbox = false
var testForbiddenSyscall = false

var args = ServiceArguments(program: "blkback", arguments: CommandLine.arguments.dropFirst())
while let a = args.next() {
    switch a {
    case "--socket": socketPath = args.value(a)
    case "--listen-fd": listenFdArg = Int32(args.int(a, in: 0...65535))
    case "--image": imageSpec = args.value(a)
    case "--image-fd": imageFdArg = Int32(args.int(a, in: 0...65535))
    case "--read-only", "--readonly": readOnly = true
    case "--shared-write": sharedWrite = true
    case "--num-queues": numQueues = args.int(a, in: 1...64)
    case "--serial": serial = args.value(a)
    case "--quiet": quiet = true
    case "--io-threads": ioThreads = args.int(a, in: 0...16)
    case "--test-reorder": testReorder = true          // complete each batch in reverse (tests)
    case "--test-delay-us": testDelayUs = UInt32(args.int(a, in: 0...1_000_000))  // slow each request (tests)
    case "--manifest": manifestArg = args.value(a)
    case "--no-sandbox": noSandbox = true
    // Tests only: once sandboxed, make one syscall outside the manifest (the supervisor
    // must see a death by SIGSYS naming it). Also XENITH_BLKBACK_TEST_FORBIDDEN=1.
    case "--test-forbidden-syscall": testForbiddenSyscall = true
    case "--help", "-h": print(usage); exit(0)
    default: fail("unknown argument \(a) (see --help)")
    }
}
guard (socketPath == nil) != (listenFdArg == nil) else { fail("give exactly one of --socket PATH or --listen-fd N") }
guard (imageSpec == nil) != (imageFdArg == nil) else { fail("give exactly one of --image IMAGE or --image-fd N") }
if manifestArg != nil && noSandbox { fail("--manifest and --no-sandbox exclude each other") }
// Tests only: XENITH_BLKBACK_TEST_FORBIDDEN=1 or =PATH (once) arms --test-forbidden-syscall.
if ServiceSyscallProbe.isArmed(service: "blkback") { testForbiddenSyscall = true }

// --manifest, else $XENITH_MANIFESTS, BINDIR/../share/xenith/manifests, or the source tree's.
let manifestPath: String? = noSandbox ? nil : (manifestArg ?? ServiceManifest.locateOrExit("blkback.manifest", program: "blkback"))

/// Moves descriptor `fd` to number `target` (the manifest's fd line), close-on-exec.
func moveFd(_ fd: Int32, to target: Int32) -> Int32 {
    if fd == target { _ = fcntl(fd, F_SETFD, FD_CLOEXEC); return fd }
    guard dup2(fd, target) == target else { fail("dup2 to fd \(target): \(String(cString: strerror(errno)))") }
    _ = fcntl(target, F_SETFD, FD_CLOEXEC)
    close(fd)
    return target
}
if manifestPath != nil {
    // Handed fds go out of the way first, so moving one never clobbers the other; then
    // 3 and 4 are held by placeholders until the listener and image take them.
    if let f = imageFdArg { let hi = fcntl(f, F_DUPFD_CLOEXEC, 64); guard hi >= 0 else { fail("image fd \(f): \(String(cString: strerror(errno)))") }; close(f); imageFdArg = hi }
    if let f = listenFdArg { let hi = fcntl(f, F_DUPFD_CLOEXEC, 64); guard hi >= 0 else { fail("listen fd \(f): \(String(cString: strerror(errno)))") }; close(f); listenFdArg = hi }
    while true {
        let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if fd < 0 { fail("/dev/null: \(String(cString: strerror(errno)))") }
        if fd > 4 { close(fd); break }
    }
}

// A launcher running on a Dispatch or concurrency-pool thread hands us a mask with most
// signals blocked; start from a clean one so SIGTERM/SIGINT work.
var noSignals = sigset_t()
sigemptyset(&noSignals)
sigprocmask(SIG_SETMASK, &noSignals, nil)
signal(SIGPIPE, SIG_IGN)

// 1. The image (before the socket, so a bad image leaves nothing behind).
var image: BlockImage
do {
    if let spec = imageSpec { image = try BlockImage.open(spec, readOnly: readOnly, sharedWrite: sharedWrite) }
    else { image = try BlockImage(fd: imageFdArg!, readOnly: readOnly) }
    if manifestPath != nil && image.fd != 4 {
        // The manifest filters image syscalls on fd 4. The lock (flock) belongs to the open
        // file description, so it carries over; the old BlockImage closes its own fd.
        guard dup2(image.fd, 4) == 4 else { fail("dup2 to fd 4: \(String(cString: strerror(errno)))") }
        _ = fcntl(4, F_SETFD, FD_CLOEXEC)
        image = try BlockImage(fd: 4, readOnly: readOnly)
    }
} catch { fail(error.description) }

// 2. The listening socket.
var listenFd: Int32
if let p = socketPath {
    do { listenFd = try vhostUserListen(path: p) } catch { fail("socket \(p): \(error)") }
} else {
    listenFd = listenFdArg!
}
if manifestPath != nil { listenFd = moveFd(listenFd, to: 3) }

// Remove our socket file on SIGTERM/SIGINT.
nonisolated(unsafe) var socketPathC: UnsafeMutablePointer<CChar>? = socketPath.map { strdup($0) }
let onSignal: @convention(c) (Int32) -> Void = { _ in
    if let p = socketPathC { unlink(p) }
    _exit(0)
}
signal(SIGTERM, onSignal)
signal(SIGINT, onSignal)

final class DelayedDevice: VhostUserDevice {
    let inner: VirtioBlockDevice
    let delay: UInt32
    init(_ i: VirtioBlockDevice, _ d: UInt32) { inner = i; delay = d }
    var deviceFeatures: UInt64 { inner.deviceFeatures }
    var numQueues: Int { inner.numQueues }
    func readConfig(offset: Int, count: Int) -> [UInt8] { inner.readConfig(offset: offset, count: count) }
    func setNegotiatedFeatures(_ f: UInt64) { inner.setNegotiatedFeatures(f) }
    func handle(_ c: DescriptorChain, queue: Int, memory: GuestMemory) throws(VirtioError) -> UInt32 {
        usleep(delay)
        return try inner.handle(c, queue: queue, memory: memory)
    }
}

// ---------------------------------------------------------------------------------------
// SANDBOX: after the image and socket are open, before the back-end's epoll/eventfds exist
// (apply closes every fd it does not know) and before the first front-end message or guest
// byte is read. From here on blkback opens nothing (memory and eventfds arrive over the
// socket): the listener is fd 3, the image fd 4 (manifests/blkback.manifest).
// ---------------------------------------------------------------------------------------
if let m = manifestPath {
    _ = Sandbox.applyOrExit(manifestPath: m)
    // unlink is outside the manifest (and the root is empty now): whoever bound the socket
    // removes its file.
    socketPathC = nil
    if testForbiddenSyscall {
        // A syscall no manifest allows: the filter traps, the reporter names it, and the
        // process dies by SIGSYS (manifests/README.md).
        ServiceSyscallProbe.trip()
    }
} else if !quiet {
    eprint("blkback: running without a sandbox (--no-sandbox)\n")
}

let blk = VirtioBlockDevice(image: image, numQueues: numQueues, serial: serial)
let device: any VhostUserDevice = testDelayUs > 0 ? DelayedDevice(blk, testDelayUs) : blk
let backend: VhostUserBackend
do { backend = try VhostUserBackend(device: device, listenFd: listenFd) } catch { fail("\(error)") }
if testReorder { backend.completionOrder = .reversedBatches }
backend.ioThreads = ioThreads
if !quiet { backend.log = { eprint("blkback: \($0)\n") } }

if !quiet {
    eprint("blkback: serving \(imageSpec ?? "fd \(image.fd)") (\(image.size) bytes\(readOnly ? ", read-only" : ""), \(numQueues) queue\(numQueues == 1 ? "" : "s")) on \(socketPath ?? "fd \(listenFd)")\n")
}
do { try backend.run() } catch { fail("\(error)") }
