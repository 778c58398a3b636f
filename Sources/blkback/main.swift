// blkback: the Xenith block back-end. Serves one disk image as a vhost-user-blk device.
// Glibc, SystemPackage and CLinux only (no Foundation) so it can run under seccomp.
import BlockBackend
import CLinux
import VhostUser
import Virtio
import GuestMemory
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
  --quiet             no log lines on stderr
  --help              this text
"""

func fail(_ msg: String) -> Never {
    eprint("blkback: \(msg)\n")
    exit(1)
}

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

var args = CommandLine.arguments.dropFirst()
@MainActor func value(_ flag: String) -> String {
    guard let v = args.popFirst() else { fail("\(flag) needs a value") }
    return v
}
@MainActor func intValue(_ flag: String, _ range: ClosedRange<Int>) -> Int {
    let v = value(flag)
    guard let n = Int(v), range.contains(n) else { fail("\(flag) \(v): expected an integer in \(range.lowerBound)...\(range.upperBound)") }
    return n
}
while let a = args.popFirst() {
    switch a {
    case "--socket": socketPath = value(a)
    case "--listen-fd": listenFdArg = Int32(intValue(a, 0...65535))
    case "--image": imageSpec = value(a)
    case "--image-fd": imageFdArg = Int32(intValue(a, 0...65535))
    case "--read-only", "--readonly": readOnly = true
    case "--shared-write": sharedWrite = true
    case "--num-queues": numQueues = intValue(a, 1...64)
    case "--serial": serial = value(a)
    case "--quiet": quiet = true
    case "--io-threads": ioThreads = intValue(a, 0...16)
    case "--test-reorder": testReorder = true          // complete each batch in reverse (tests)
    case "--test-delay-us": testDelayUs = UInt32(intValue(a, 0...1_000_000))  // slow each request (tests)
    case "--help", "-h": print(usage); exit(0)
    default: fail("unknown argument \(a) (see --help)")
    }
}
guard (socketPath == nil) != (listenFdArg == nil) else { fail("give exactly one of --socket PATH or --listen-fd N") }
guard (imageSpec == nil) != (imageFdArg == nil) else { fail("give exactly one of --image IMAGE or --image-fd N") }

// A launcher running on a Dispatch or concurrency-pool thread hands us a mask with most
// signals blocked; start from a clean one so SIGTERM/SIGINT work.
var noSignals = sigset_t()
sigemptyset(&noSignals)
sigprocmask(SIG_SETMASK, &noSignals, nil)
signal(SIGPIPE, SIG_IGN)

// 1. The image (before the socket, so a bad image leaves nothing behind).
let image: BlockImage
do {
    if let spec = imageSpec { image = try BlockImage.open(spec, readOnly: readOnly, sharedWrite: sharedWrite) }
    else { image = try BlockImage(fd: imageFdArg!, readOnly: readOnly) }
} catch { fail(error.description) }

// 2. The listening socket.
let listenFd: Int32
if let p = socketPath {
    do { listenFd = try vhostUserListen(path: p) } catch { fail("socket \(p): \(error)") }
} else {
    listenFd = listenFdArg!
}

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

let blk = VirtioBlockDevice(image: image, numQueues: numQueues, serial: serial)
let device: any VhostUserDevice = testDelayUs > 0 ? DelayedDevice(blk, testDelayUs) : blk
let backend: VhostUserBackend
do { backend = try VhostUserBackend(device: device, listenFd: listenFd) } catch { fail("\(error)") }
if testReorder { backend.completionOrder = .reversedBatches }
backend.ioThreads = ioThreads
if !quiet { backend.log = { eprint("blkback: \($0)\n") } }

// ---------------------------------------------------------------------------------------
// SANDBOX: `Sandbox.apply(<blkback manifest>)` goes HERE — after the image and socket are
// open, before the first front-end message or guest byte is read. After this point blkback
// opens nothing (memory and eventfds arrive over the socket).
// ---------------------------------------------------------------------------------------

if !quiet {
    eprint("blkback: serving \(imageSpec ?? "fd \(imageFdArg!)") (\(image.size) bytes\(readOnly ? ", read-only" : ""), \(numQueues) queue\(numQueues == 1 ? "" : "s")) on \(socketPath ?? "fd \(listenFd)")\n")
}
do { try backend.run() } catch { fail("\(error)") }
