// migration: the Xenith migration service. One sandboxed process per save, restore or
// migration; xend hands it every descriptor (README of Sources/Migration, DESIGN.md
// "Save, restore and migration (round 2)"). Glibc, Migration and Sandbox only (no Foundation).
import Migration
import Sandbox
#if canImport(Glibc)
import Glibc
#endif

/// Writes one line to stderr (no stdio globals: Swift 6 concurrency checking).
func eprint(_ s: String) { var s = s + "\n"; s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) } }

let usage = """
usage: migration --mode save|verify|restore|send|receive [options]

Moves one domain's state stream between the engine and a save file or a peer host, in
Xenith's stream format (Sources/Migration/README.md). It opens nothing: its launcher
(xend) hands it these descriptors:

  fd 3  engine stream   save/send: read end of the pipe QEMU writes (`migrate fd:`);
                        restore/receive: write end of the pipe QEMU reads
                        (`migrate-incoming fd:`); unused by verify
  fd 4  file or peer    save: the new save file, open for writing; verify/restore: the
                        save file, open for reading (seekable); send/receive: the
                        connected stream socket to the peer host
  fd 5  status channel  a connected stream socket to xend: typed messages (config,
                        progress, drained, commit, abort, done, failed)

  --mode M            save, verify, restore, send or receive
  --rate MBIT         save/send: pace the output to MBIT Mbit/s (1...1000000; default unpaced)
  --progress-ms N     milliseconds between progress messages (default 250; 0: none)
  --manifest FILE     security manifest (default $XENITH_MANIFESTS/migration.manifest,
                      else BINDIR/../share/xenith/manifests/, else the source tree's manifests/)
  --no-sandbox        run without the manifest (debugging only)
  --bench-crc MIB     print the CRC-32C throughput over MIB MiB and exit (no descriptors)
  --help              this text

Exit status: 0 after `done`; 3 after `failed` (its reason also on stderr); 1 for a usage
error; 70 when the sandbox cannot be applied.
"""

enum Mode: String { case save, verify, restore, send, receive }

var mode: Mode?
var rate: UInt64?
var progressMs = 250
var manifestArg: String?
var noSandbox = false
var testForbiddenSyscall = false
var benchMiB: Int?

var args = ServiceArguments(program: "migration", arguments: CommandLine.arguments.dropFirst())
while let a = args.next() {
    switch a {
    case "--mode":
        let v = args.value(a)
        guard let m = Mode(rawValue: v) else { args.fail("--mode \(v): expected save, verify, restore, send or receive") }
        mode = m
    case "--rate", "-r", "--resource":
        let v = args.value(a)
        guard let n = UInt64(v), n >= 1, n <= 1_000_000 else {
            args.fail("\(a) \(v): expected a rate in Mbit/s in 1...1000000 (0 would never send anything)")
        }
        rate = n
    case "--progress-ms": progressMs = args.int(a, in: 0...60_000)
    case "--manifest": manifestArg = args.value(a)
    case "--no-sandbox": noSandbox = true
    // Tests only: once sandboxed, make one syscall outside the manifest. Also
    // XENITH_MIGRATION_TEST_FORBIDDEN=1.
    case "--test-forbidden-syscall": testForbiddenSyscall = true
    case "--bench-crc": benchMiB = args.int(a, in: 1...65536)
    case "--help", "-h": eprint(usage); exit(0)
    default: args.fail("unknown argument \(a) (see --help)")
    }
}

if let mib = benchMiB {
    // Development aid: how fast CRC-32C runs in this build (it must not be the bottleneck).
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: mib << 20, alignment: 16)
    defer { buffer.deallocate() }
    for i in 0..<buffer.count { buffer[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 13) }
    var ts0 = timespec(), ts1 = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts0)
    let crc = CRC32C.checksum(UnsafeRawBufferPointer(buffer))
    clock_gettime(CLOCK_MONOTONIC, &ts1)
    let seconds = Double(ts1.tv_sec - ts0.tv_sec) + Double(ts1.tv_nsec - ts0.tv_nsec) / 1e9
    eprint("crc32c \(mib) MiB in \(Int(seconds * 1000)) ms: \(Int(Double(mib << 20) / seconds / 1e6)) MB/s (crc \(String(crc, radix: 16)))")
    exit(0)
}

guard let mode else { args.fail("give --mode save|verify|restore|send|receive (see --help)") }
if rate != nil && mode != .save && mode != .send { args.fail("--rate paces the sending side: only with --mode save or send") }
if manifestArg != nil && noSandbox { args.fail("--manifest and --no-sandbox exclude each other") }
if ServiceSyscallProbe.isArmed(service: "migration") { testForbiddenSyscall = true }
let manifestPath: String? = noSandbox ? nil : (manifestArg ?? ServiceManifest.locateOrExit("migration.manifest", program: "migration"))

// A launcher on a Dispatch or concurrency-pool thread hands us a mask with most signals
// blocked; start from a clean one. A peer or engine that goes away is an EPIPE, not a death.
var noSignals = sigset_t()
sigemptyset(&noSignals)
sigprocmask(SIG_SETMASK, &noSignals, nil)
signal(SIGPIPE, SIG_IGN)
// As PID 1 of its namespace the service would ignore SIGTERM without a handler; xend's
// cancel (SIGTERM, forwarded by the sandbox's reaper) ends it at once. A half-written
// file then has no end frame and is refused as truncated.
signal(SIGTERM) { _ in _exit(143) }

// Every descriptor this mode needs must be handed; say which one is missing, by role.
let engine = Descriptor(3, role: "engine stream (fd 3)")
let stream = Descriptor(4, role: mode == .send || mode == .receive ? "peer connection (fd 4)" : "save file (fd 4)")
let statusFd = Descriptor(5, role: "status channel (fd 5)")
for d in (mode == .verify ? [stream, statusFd] : [engine, stream, statusFd]) where fcntl(d.fd, F_GETFD) < 0 {
    args.fail("the \(d.role) was not handed to this process")
}

// The sandbox goes on before any byte of input is read.
if let manifestPath { _ = Sandbox.applyOrExit(manifestPath: manifestPath) }
if testForbiddenSyscall { ServiceSyscallProbe.trip() }

let status = StatusChannel(statusFd)
let interval = UInt64(progressMs) * 1_000_000
do {
    let summary: Summary
    switch mode {
    case .save, .send:
        let pacer = try rate.map { (r) throws(MigrationError) in try Pacer(megabitsPerSecond: r) }
        summary = try Sender.run(engine: engine, output: stream, status: status, pacer: pacer,
                                 expectAck: mode == .send, progressInterval: interval)
    case .verify:
        summary = try Receiver.verify(file: stream, status: status).summary
    case .restore:
        summary = try Receiver.restore(file: stream, engine: engine, status: status, progressInterval: interval).summary
    case .receive:
        summary = try Receiver.run(input: stream, engine: engine, status: status, reportConfig: true,
                                   acknowledge: true, requireEOF: false, progressInterval: interval).summary
    }
    try status.send(.done(summary))
    exit(0)
} catch {
    eprint("migration: \(mode.rawValue): \(error.description)")
    try? status.send(.failed(error.description))
    exit(3)
}
