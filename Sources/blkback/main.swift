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

\(BackendService.usageLines)
  --image IMAGE       file:PATH (raw image), phy:DEVICE (host block device) or a path
  --image-fd N        an open image fd (from a supervisor)
  --format F          raw (default) or qcow2 (QEMU's qcow2, versions 2 and 3: cluster
                      allocation, refcounts, discard; a read-only backing chain)
  --backing-fd N      with --image-fd and qcow2: an open backing file, nearest first, once
                      per file of the chain (at most 16); with --image the chain is opened
                      from the header's names before the sandbox
  --read-only         export read-only (VIRTIO_BLK_F_RO; writes fail with IOERR); takes a
                      shared lock on the image
  --shared-write      Xen's 'w!' mode: export read-write without the exclusive image lock
                      (by default an image already exported read-write, by this or another
                      blkback, is refused; so is a block device mounted read-write here)
  --num-queues N      request queues (VIRTIO_BLK_F_MQ when N > 1; default 1, max 64)
  --cache MODE        writeback (default): image I/O through the host's page cache;
                      direct: O_DIRECT, bypassing it (the image fd must allow O_DIRECT: a
                      supervisor opens it so; with --image blkback does). Requests whose
                      buffers or sectors break the file system's alignment rules go through
                      an aligned bounce buffer (read-modify-write of partial blocks). FLUSH is
                      fdatasync in both modes
  --io-threads N      threads serving requests of 256 KiB or more concurrently, so large
                      transfers overlap (default 4; 0 serves everything on the event loop);
                      with --cache direct every request goes to them (default 16), since
                      each one waits for the device
  --aio MODE          how requests reach the image: threads (default; the I/O-thread pool
                      above) or io_uring (raw images: the event loop submits reads, writes
                      and flushes to an io_uring set up before the sandbox, confined to the
                      image and to those three operations; the manifest then also allows
                      io_uring_enter: blkback-io_uring.manifest)
  --serial S          GET_ID serial (default xenith-blk, at most 20 bytes)
  --fail-io           answer every request with an I/O error (VIRTIO_BLK_S_IOERR) and never
                      touch the image: the stand-in xend starts for a disk whose blkback it
                      gave up on, so the guest's I/O fails instead of hanging
  --manifest FILE     security manifest (default $XENITH_MANIFESTS/blkback.manifest, or
                      blkback-io_uring.manifest with --aio io_uring, else
                      BINDIR/../share/xenith/manifests/blkback.manifest, else the source
                      tree's manifests/); applied once the image and socket are open
  --no-sandbox        run without the manifest (debugging only)
  --quiet             no log lines on stderr
  --help              this text

With the sandbox the listener ends up at fd 3 and the image at fd 4 (the manifest's fd
lines); a supervisor best hands them there (--listen-fd 3 --image-fd 4), the readiness
pipe at fd 5 (--ready-fd 5), the number the manifest keeps for it, and backing files at
6, 7, ... (--backing-fd 6 --backing-fd 7).
"""

var service = BackendService(program: "blkback")
func fail(_ msg: String) -> Never { ServiceArguments.fail(program: "blkback", msg) }

var imageSpec: String?
var imageFdArg: Int32?
var readOnly = false
var sharedWrite = false
var numQueues = 1
var serial = "xenith-blk"
var testReorder = false
var ioThreads: Int?
var direct = false
var testDirectAlign = 512
var testDelayUs: UInt32 = 0
var testForbiddenSyscall = false
var failIO = false
var format = "raw"
var backingFds: [Int32] = []
var aio = "threads"
var testRingLockWait = 30.0

var args = ServiceArguments(program: "blkback", arguments: CommandLine.arguments.dropFirst())
while let a = args.next() {
    if service.take(a, from: &args) { continue }
    switch a {
    case "--image": imageSpec = args.value(a)
    case "--image-fd": imageFdArg = Int32(args.int(a, in: 0...65535))
    case "--format":
        format = args.value(a)
        guard format == "raw" || format == "qcow2" else { fail("--format \(format): expected raw or qcow2") }
    case "--backing-fd":
        guard backingFds.count < Qcow2Chain.maxDepth else { fail("--backing-fd: more than \(Qcow2Chain.maxDepth) backing files") }
        backingFds.append(Int32(args.int(a, in: 0...65535)))
    case "--read-only", "--readonly": readOnly = true
    case "--shared-write": sharedWrite = true
    case "--num-queues": numQueues = args.int(a, in: 1...64)
    case "--serial": serial = args.value(a)
    case "--aio":
        aio = args.value(a)
        guard aio == "threads" || aio == "io_uring" else { fail("--aio \(aio): expected threads or io_uring") }
    case "--io-threads": ioThreads = args.int(a, in: 0...64)
    case "--cache":
        switch args.value(a) {
        case "direct": direct = true
        case "writeback": direct = false
        case let m: fail("--cache \(m): expected direct or writeback")
        }
    // Tests only: raise the direct-I/O offset alignment (bytes, a power of two) so the
    // read-modify-write path runs on a file system with 512-byte blocks.
    case "--test-dio-align": testDirectAlign = args.int(a, in: 512...65536)
    case "--fail-io": failIO = true
    // Tests only: seconds a new io_uring waits for an earlier blkback's ring (default 30).
    case "--test-ring-lock-wait": testRingLockWait = Double(args.int(a, in: 0...600))
    case "--test-reorder": testReorder = true          // complete each batch in reverse (tests)
    case "--test-delay-us": testDelayUs = UInt32(args.int(a, in: 0...1_000_000))  // slow each request (tests)
    // Tests only: once sandboxed, make one syscall outside the manifest (the supervisor
    // must see a death by SIGSYS naming it). Also XENITH_BLKBACK_TEST_FORBIDDEN=1.
    case "--test-forbidden-syscall": testForbiddenSyscall = true
    case "--help", "-h": print(usage); exit(0)
    default: fail("unknown argument \(a) (see --help)")
    }
}
// --manifest, else $XENITH_MANIFESTS, BINDIR/../share/xenith/manifests, or the source tree's:
// blkback.manifest, or blkback-io_uring.manifest (the same plus io_uring_enter) with --aio io_uring.
if aio == "io_uring" { service.defaultManifestName = "blkback-io_uring.manifest" }
let manifestPath = service.manifestPath {
    guard (imageSpec == nil) != (imageFdArg == nil) else { fail("give exactly one of --image IMAGE or --image-fd N") }
}
// Tests only: XENITH_BLKBACK_TEST_FORBIDDEN=1 or =PATH (once) arms --test-forbidden-syscall.
if ServiceSyscallProbe.isArmed(service: "blkback") { testForbiddenSyscall = true }

if manifestPath != nil {
    // Handed fds go out of the way first and 3, 4 are held by placeholders until the
    // listener and image take them, so placing one never clobbers the other.
    let moved = service.reserveFixedDescriptors(upTo: 4, moving: [(imageFdArg, "image fd"), (service.listenFd, "listen fd")])
    imageFdArg = moved[0]; service.listenFd = moved[1]
}
if !backingFds.isEmpty && (format != "qcow2" || imageFdArg == nil) { fail("--backing-fd needs --format qcow2 and --image-fd") }

/// The backing files, placed at 6, 7, ... under the sandbox (the manifest's fd lines):
/// first moved above them all, so that placing one never clobbers another.
@MainActor func placeBacking(_ fds: [Int32]) -> [Int32] {
    guard manifestPath != nil else { return fds }
    let high = fds.map { f -> Int32 in
        let h = fcntl(f, F_DUPFD_CLOEXEC, 64)
        guard h >= 0 else { fail("backing fd \(f): \(String(cString: strerror(errno)))") }
        if f > 5 { close(f) }
        return h
    }
    return high.enumerated().map { service.place($0.element, at: Int32(6 + $0.offset)) }
}
BackendService.resetSignals()

// 1. The image (before the socket, so a bad image leaves nothing behind).
var image: any BlockStorage
/// The raw image when the format is raw (what an io_uring may be confined to).
var rawImage: BlockImage?
do {
    if testDirectAlign & (testDirectAlign - 1) != 0 { fail("--test-dio-align \(testDirectAlign): not a power of two") }
    // qcow2's metadata I/O is not aligned for O_DIRECT: its images use the page cache.
    if direct && format == "qcow2" { fail("--cache direct: qcow2 images are served through the page cache (writeback)") }
    if aio == "io_uring" && format != "raw" { fail("--aio io_uring: \(format) images are served by the I/O threads (--aio threads)") }
    if aio == "io_uring" && (failIO || testDelayUs > 0) { fail("--aio io_uring cannot be combined with --fail-io or --test-delay-us") }
    var raw: BlockImage
    if let spec = imageSpec {
        raw = try BlockImage.open(spec, readOnly: readOnly, sharedWrite: sharedWrite, direct: direct, minDirectAlignment: testDirectAlign)
    } else {
        // The cache mode is the open file description's O_DIRECT flag: a supervisor opens the
        // image with it (where a file system refuses it, that open fails and names the disk);
        // set or cleared here when it did not.
        let fd = imageFdArg!
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 && (flags & directIOOpenFlag != 0) != direct
            && fcntl(fd, F_SETFL, direct ? flags | directIOOpenFlag : flags & ~directIOOpenFlag) != 0 {
            fail("image fd \(fd): cannot \(direct ? "set" : "clear") O_DIRECT: \(String(cString: strerror(errno)))\(direct ? " (its file system refuses direct I/O; use the writeback cache mode)" : "")")
        }
        raw = try BlockImage(fd: fd, readOnly: readOnly, minDirectAlignment: testDirectAlign)
    }
    if manifestPath != nil && raw.fd != 4 {
        // The manifest filters image syscalls on fd 4. The lock (flock) belongs to the open
        // file description, so it carries over (so does O_DIRECT); the old BlockImage closes
        // its own fd.
        raw = try BlockImage(fd: service.place(raw.fd, at: 4, closingSource: false), readOnly: readOnly,
                             minDirectAlignment: testDirectAlign)
    }
    image = raw
    if format == "raw" { rawImage = raw }
    if format == "qcow2" {
        var files = backingFds
        if let spec = imageSpec, !failIO {   // the error server reads nothing below
            let path = spec.hasPrefix("file:") ? String(spec.dropFirst(5)) : spec
            files = try Qcow2Chain.openBackingFiles(imagePath: path, fd: raw.fd).map(\.fd)
        }
        files = placeBacking(files)
        // The qcow2 image owns the descriptor from here, at the same number (the manifest's
        // fd 4 under the sandbox): the raw wrapper closes its own, so keep a duplicate of
        // the open file description (and its lock) and put it back at that number.
        let number = raw.fd
        let keep = fcntl(number, F_DUPFD_CLOEXEC, 64)
        guard keep >= 0 else { fail("image: \(String(cString: strerror(errno)))") }
        raw = try BlockImage(fd: keep, readOnly: true)
        image = raw    // the first wrapper is gone now, and `number` closed with it
        guard dup2(keep, number) == number else { fail("image: dup2: \(String(cString: strerror(errno)))") }
        _ = fcntl(number, F_SETFD, FD_CLOEXEC)
        image = try Qcow2Chain.assemble(top: number, backing: files, readOnly: readOnly, ignoringBacking: failIO)
    }
} catch { fail(error.description) }

// 1b. The image claimed against a dead blkback's io_uring that may still write it
// (UringOffload.claimImage: exclusive disks wait for its ring lock; any --aio), and with
// --aio io_uring the ring, confined to the image (IOUring.swift), set up now, while
// io_uring_setup and io_uring_register are still allowed: the filter then allows
// io_uring_enter only. Both before the socket, so a refusal leaves nothing behind.
let blk = VirtioBlockDevice(image: image, numQueues: numQueues, serial: serial)
var uring: UringOffload?
if let rawImage, !failIO, aio == "io_uring" || !(readOnly || sharedWrite) {
    let file: Int32
    do { file = try UringOffload.claimImage(rawImage, exclusive: !readOnly && !sharedWrite, waiting: testRingLockWait) }
    catch { fail("image: \(error)") }
    if aio == "io_uring" {
        do { uring = try UringOffload(device: blk, image: rawImage, file: file) } catch { close(file); fail("--aio io_uring: \(error)") }
    }
    close(file)   // the ring holds its own reference (and with it the lock)
}

// 2. The listening socket.
var listenFd = service.openListener()
if manifestPath != nil { listenFd = service.place(listenFd, at: 3) }

// Remove our socket file on SIGTERM/SIGINT.
nonisolated(unsafe) var socketPathC: UnsafeMutablePointer<CChar>? = service.socketPath.map { strdup($0) }
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
// glibc's malloc sizes its arena limit from the CPU count the first time a thread needs a
// ninth arena, reading /sys/devices/system/cpu/online: an open the sandbox forbids. A fixed
// limit (mallopt M_ARENA_MAX) means it never asks; more I/O threads then share arenas.
// Only with more than 7 I/O threads (direct I/O's default 16); the page-cache mode's 4 keep
// glibc's defaults.
if (ioThreads ?? (direct ? 16 : 4)) > 7, let p = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") {
    let mallopt = unsafeBitCast(p, to: (@convention(c) (Int32, Int32) -> Int32).self)
    _ = mallopt(-8, 8)   // M_ARENA_MAX (<malloc.h>)
}
service.applySandbox(manifestPath: manifestPath, probe: testForbiddenSyscall,
                     keepFds: uring.map { [$0.ringFd, $0.doneFd] } ?? [])
// unlink is outside the manifest (and the root is empty now): whoever bound the socket
// removes its file.
if manifestPath != nil { socketPathC = nil }

let device: any VhostUserDevice
if failIO { device = FailingBlockDevice(standingInFor: blk) }
else if testDelayUs > 0 { device = DelayedDevice(blk, testDelayUs) }
else { device = blk }
let backend: VhostUserBackend
do { backend = try VhostUserBackend(device: device, listenFd: listenFd) } catch { fail("\(error)") }
if testReorder { backend.completionOrder = .reversedBatches }
if let uring {
    // Every request goes to the ring: the loop only checks and queues them.
    backend.offloadBytes = 0
    do { try backend.useOffload(uring) } catch { fail("\(error)") }
} else if direct {
    // Each direct request waits for the device: serve them all on the I/O threads, so a
    // queue of small random reads keeps the device busy as a deep queue would.
    backend.offloadBytes = 0
    backend.ioThreads = ioThreads ?? 16
} else {
    backend.ioThreads = ioThreads ?? 4
}
if !service.quiet { backend.log = { eprint("blkback: \($0)\n") } }

let serving = (failIO ? "failing every request to " : "serving ") + "\(imageSpec ?? "fd \(imageFdArg ?? 4)") (\(format), \(image.size) bytes\(readOnly ? ", read-only" : ""), \(direct ? "direct I/O" : "page cache"), \(uring != nil ? "io_uring" : "I/O threads"), \(numQueues) queue\(numQueues == 1 ? "" : "s")) on \(service.socketPath ?? "fd \(listenFd)")"
service.log(serving)
// The signal for the launcher (the log line above is for people).
ServiceReadiness.ready(serving)
do { try backend.run() } catch { fail("\(error)") }
