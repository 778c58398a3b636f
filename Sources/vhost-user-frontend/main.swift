// vhost-user-frontend: a synthetic vhost-user-blk front-end (plays QEMU and the guest
// driver) for tests and benchmarks of any vhost-user-blk back-end.
import BlockBackend
import CLinux
import GuestMemory
import VhostUser
import VhostUserTesting
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// Writes one line to stderr (no stdio globals: Swift 6 concurrency checking).
func eprint(_ s: String) { var s = s; s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) } }

let usage = """
usage: vhost-user-frontend MODE --socket PATH [options]
modes:
  bench       4 KiB random reads at QD32 (IOPS), 1 MiB sequential reads and writes (MB/s)
              options: --seconds N (per figure, default 3), --queues N, --seq-depth N (8)
  malformed   sends each malformed descriptor chain and checks the back-end answers it
              with IOERR/UNSUPP or flags DEVICE_NEEDS_RESET, then serves a good request
  verify      write/read/verify, flush, GET_ID, discard, write-zeroes; --read-only
              expects writes to be refused instead
  unaligned   --image PATH: writes and reads with buffers at odd addresses, split into
              segments of odd lengths, at sectors not aligned to 4 KiB, against a copy of
              PATH read at the start; checks every read and, at the end, PATH itself
              (the neighbours of each write survive a back-end's read-modify-write)
  restart     --backend-cmd 'CMD' [--kills N] [--queues N] [--blocks N]: starts CMD,
              keeps writes in flight, SIGKILLs and restarts it N times, reconnects,
              then verifies every block; prints the SIGKILL → first completion times
"""

/// The back-end this tool started (restart mode), killed when the tool fails.
nonisolated(unsafe) var childPid: pid_t = 0
func fail(_ s: String) -> Never {
    eprint("vhost-user-frontend: \(s)\n")
    if childPid > 0 { kill(childPid, SIGKILL) }
    exit(1)
}
func now() -> Double { var t = timespec(); clock_gettime(CLOCK_MONOTONIC, &t); return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9 }

// Start from an empty signal mask (a launcher's may block SIGTERM; children inherit it).
var noSignals = sigset_t()
sigemptyset(&noSignals)
sigprocmask(SIG_SETMASK, &noSignals, nil)

var args = Array(CommandLine.arguments.dropFirst())
guard let mode = args.first else { print(usage); print(netUsage); exit(2) }
if mode == "--help" || mode == "-h" { print(usage); print(netUsage); exit(0) }
args.removeFirst()
var opts: [String: String] = [:]
var flags: Set<String> = []
while !args.isEmpty {
    let a = args.removeFirst()
    if ["--read-only"].contains(a) { flags.insert(a); continue }
    guard a.hasPrefix("--"), !args.isEmpty else { fail("bad argument \(a)") }
    opts[a] = args.removeFirst()
}
guard let socketPath = opts["--socket"] else { fail("--socket PATH is required") }
@MainActor func intOpt(_ k: String, _ d: Int) -> Int { opts[k].flatMap { Int($0) } ?? d }

var rng = SystemRandomNumberGenerator()

@MainActor func connectClient(queues: Int, depth: Int, maxBytes: Int) -> VirtioBlockClient {
    do {
        let c = try VirtioBlockClient(socketPath: socketPath, numQueues: queues, queueSize: 256, depth: depth, maxRequestBytes: maxBytes)
        try c.connect()
        return c
    } catch { fail("connect \(socketPath): \(error)") }
}

// MARK: bench

/// Keeps `depth` requests in flight on every queue for `seconds`; returns completions and bytes.
@MainActor func load(_ c: VirtioBlockClient, type: UInt32, bytes: Int, random: Bool, seconds: Double) throws -> (Int, Double) {
    let sectors = UInt64(bytes / 512)
    let span = c.capacitySectors / sectors
    guard span > 0 else { fail("image smaller than one request") }
    var next: UInt64 = 0
    var done = 0
    let t0 = now()
    var end = t0 + seconds
    var stopping = false
    while true {
        for q in c.queues.indices {
            if !stopping {
                var n = 0
                while c.inflight(q) < c.depth {
                    let blk = random ? UInt64.random(in: 0..<span, using: &rng) : (next % span)
                    next += 1
                    guard try c.submit(q, type: type, sector: blk * sectors, bytes: bytes) != nil else { break }
                    n += 1
                }
                if n > 0 { c.kick(q) }
            }
            for r in try c.reap(q, timeoutMs: c.queues.count == 1 ? 1000 : 0) {
                if r.status != VirtioBlk.sOK { fail("request failed with status \(r.status)") }
                done += 1
            }
        }
        let t = now()
        if !stopping && t >= end { stopping = true; end = t }
        if stopping && c.queues.indices.allSatisfy({ c.inflight($0) == 0 }) { break }
    }
    return (done, end - t0)
}

@MainActor func bench() throws {
    let secs = Double(intOpt("--seconds", 3))
    let queues = intOpt("--queues", 1)
    let c4 = connectClient(queues: queues, depth: 32, maxBytes: 4096)
    let (n, t) = try load(c4, type: VirtioBlk.tIn, bytes: 4096, random: true, seconds: secs)
    print("randread_4k_qd32_iops=\(Int(Double(n) / t))")
    c4.frontend.disconnect()
    usleep(50_000)
    let seqDepth = intOpt("--seq-depth", 8)
    let c1 = connectClient(queues: queues, depth: seqDepth, maxBytes: 1 << 20)
    let (r, tr) = try load(c1, type: VirtioBlk.tIn, bytes: 1 << 20, random: false, seconds: secs)
    print("seqread_1m_mbps=\(Int(Double(r) / tr * 1.048576))")
    let (w, tw) = try load(c1, type: VirtioBlk.tOut, bytes: 1 << 20, random: false, seconds: secs)
    print("seqwrite_1m_mbps=\(Int(Double(w) / tw * 1.048576))")
    c1.frontend.disconnect()
}

// MARK: verify

func pattern(_ block: UInt64, _ gen: UInt64, bytes: Int = 4096) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: bytes)
    out.withUnsafeMutableBytes { p in
        for i in 0..<(bytes / 8) { p.storeBytes(of: (gen << 48 | block << 16 | UInt64(i)).littleEndian, toByteOffset: 8 * i, as: UInt64.self) }
    }
    return out
}

@MainActor func verify() throws {
    let c = connectClient(queues: 1, depth: 8, maxBytes: 1 << 20)
    let ro = flags.contains("--read-only")
    var failures = 0
    func check(_ ok: Bool, _ what: String) { print("\(ok ? "ok" : "FAIL") \(what)"); if !ok { failures += 1 } }
    check(c.capacitySectors > 64, "capacity \(c.capacitySectors) sectors")
    check(c.frontend.negotiatedFeatures & VirtioBlk.fRO != 0 || !ro, "VIRTIO_BLK_F_RO offered when read-only")
    if ro {
        check(try c.write(sector: 0, pattern(0, 9)) == VirtioBlk.sIOErr, "write refused with IOERR")
        check(try c.read(sector: 0, count: 4096) != nil, "read works")
        let d = try c.run(type: VirtioBlk.tDiscard, sector: 0, bytes: 0, segment: (0, 8, 0)).status
        check(d != VirtioBlk.sOK, "discard refused")
    } else {
        for b in 0..<16 as Range<UInt64> { check(try c.write(sector: b * 8, pattern(b, 7)) == VirtioBlk.sOK, "write block \(b)") }
        for b in 0..<16 as Range<UInt64> { check(try c.read(sector: b * 8, count: 4096) == pattern(b, 7), "read back block \(b)") }
        let big = (0..<256).flatMap { pattern(UInt64(1000 + $0), 3) }   // 1 MiB
        check(try c.write(sector: 2048, big) == VirtioBlk.sOK, "write 1 MiB")
        check(try c.read(sector: 2048, count: big.count) == big, "read back 1 MiB")
        check(try c.run(type: VirtioBlk.tFlush, sector: 0, bytes: 0).status == VirtioBlk.sOK, "flush")
        check(try c.run(type: VirtioBlk.tWriteZeroes, sector: 8, bytes: 0, segment: (8, 8, 0)).status == VirtioBlk.sOK, "write-zeroes block 1")
        check(try c.read(sector: 8, count: 4096) == [UInt8](repeating: 0, count: 4096), "block 1 reads zeros")
        check(try c.run(type: VirtioBlk.tWriteZeroes, sector: 16, bytes: 0, segment: (16, 8, 1)).status == VirtioBlk.sOK, "write-zeroes+unmap block 2")
        check(try c.read(sector: 16, count: 4096) == [UInt8](repeating: 0, count: 4096), "block 2 reads zeros")
        check(try c.run(type: VirtioBlk.tDiscard, sector: 0, bytes: 0, segment: (24, 8, 0)).status == VirtioBlk.sOK, "discard block 3")
        check(try c.run(type: VirtioBlk.tDiscard, sector: 0, bytes: 0, segment: (24, 8, 1)).status == VirtioBlk.sUnsupp, "discard with unmap flag → UNSUPP")
        check(try c.read(sector: 32, count: 4096) == pattern(4, 7), "block 4 untouched")
        check(try c.write(sector: c.capacitySectors - 4, pattern(0, 1)) == VirtioBlk.sIOErr, "write past the end → IOERR")
    }
    let id = try c.run(type: VirtioBlk.tGetID, sector: 0, bytes: 20)
    let serial = String(decoding: c.data(0, id.slot)[0..<20].prefix { $0 != 0 }, as: UTF8.self)
    check(id.status == VirtioBlk.sOK && !serial.isEmpty, "GET_ID serial \"\(serial)\"")
    print("verify: \(failures == 0 ? "passed" : "\(failures) failures")")
    if failures > 0 { exit(1) }
}

// MARK: malformed

enum Expect { case ioerr, unsupp, broken, errorOrBroken }

@MainActor func malformed() throws {
    let c = connectClient(queues: 1, depth: 8, maxBytes: 1 << 16)
    let m = c.memory
    let qs = c.queueSize
    var failures = 0
    let cap = c.capacitySectors
    // Each scenario publishes one request (or corrupts the ring) and says what it expects.
    typealias Scenario = (name: String, expect: Expect, build: (VirtqueueDriver, (header: UInt64, status: UInt64, data: UInt64)) throws -> Void)
    func hdr(_ a: UInt64, _ type: UInt32, _ sector: UInt64) throws {
        try m.store(type, at: a); try m.store(UInt32(0), at: a + 4); try m.store(sector, at: a + 8)
    }
    func chain(_ d: VirtqueueDriver, _ bufs: [ChainBuffer]) throws { try d.publish(try d.add(bufs)!) }
    let R = false, W = true
    let scenarios: [Scenario] = [
        ("descriptor loop", .broken, { d, a in
            try hdr(a.header, VirtioBlk.tIn, 0)
            try d.writeDescriptor(0, address: a.header, length: 16, flags: VirtqDescFlag.next, next: 1)
            try d.writeDescriptor(1, address: a.data, length: 512, flags: VirtqDescFlag.next | VirtqDescFlag.write, next: 0)
            d.reserve([0, 1]); try d.publish(0) }),
        ("next index >= queue size", .broken, { d, a in
            try d.writeDescriptor(0, address: a.header, length: 16, flags: VirtqDescFlag.next, next: qs + 3)
            d.reserve([0]); try d.publish(0) }),
        ("head index >= queue size", .broken, { d, _ in try d.publish(qs + 7) }),
        ("avail index jumps past queue size", .broken, { d, _ in try d.forceAvailIdx(d.availIdx &+ qs &+ 2) }),
        ("indirect table longer than queue size", .broken, { d, a in
            try hdr(a.header, VirtioBlk.tIn, 0)
            try d.writeDescriptor(0, address: c.scratch, length: UInt32(16 * (Int(qs) + 1)), flags: VirtqDescFlag.indirect, next: 0)
            d.reserve([0]); try d.publish(0) }),
        ("nested indirect", .broken, { d, a in
            try m.store(c.scratch + 256, at: c.scratch); try m.store(UInt32(16), at: c.scratch + 8)
            try m.store(VirtqDescFlag.indirect, at: c.scratch + 12); try m.store(UInt16(0), at: c.scratch + 14)
            try d.writeDescriptor(0, address: c.scratch, length: 16, flags: VirtqDescFlag.indirect, next: 0)
            d.reserve([0]); try d.publish(0) }),
        ("indirect table of 10 bytes", .broken, { d, _ in
            try d.writeDescriptor(0, address: c.scratch, length: 10, flags: VirtqDescFlag.indirect, next: 0)
            d.reserve([0]); try d.publish(0) }),
        ("indirect table outside guest memory", .broken, { d, _ in
            try d.writeDescriptor(0, address: 1 << 50, length: 48, flags: VirtqDescFlag.indirect, next: 0)
            d.reserve([0]); try d.publish(0) }),
        ("data buffer outside guest memory", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tIn, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: 1 << 40, length: 512, writable: W),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("data buffer straddling two regions", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tIn, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: c.regionBoundary - 512, length: 1024, writable: W),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("address wrapping 2^64", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tIn, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: UInt64.max - 255, length: 512, writable: W),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("enormous length (4 GiB - 1)", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tIn, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: a.data, length: UInt32.max, writable: W),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("IN with a device-readable data buffer", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tIn, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: a.data, length: 512, writable: R),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("OUT with a device-writable data buffer", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tOut, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: a.data, length: 512, writable: W),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("readable after writable", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tIn, 0)
            try chain(d, [ChainBuffer(address: a.data, length: 512, writable: W), ChainBuffer(address: a.header, length: 16, writable: R),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("status byte not device-writable", .broken, { d, a in
            try hdr(a.header, VirtioBlk.tFlush, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: a.status, length: 1, writable: R)]) }),
        ("zero-length status buffer", .broken, { d, a in
            try hdr(a.header, VirtioBlk.tFlush, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: a.status, length: 0, writable: W)]) }),
        ("zero-length header", .ioerr, { d, a in
            try chain(d, [ChainBuffer(address: a.header, length: 0, writable: R), ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("short header (8 bytes)", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tIn, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 8, writable: R), ChainBuffer(address: a.data, length: 512, writable: W),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("read length not a multiple of 512", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tIn, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: a.data, length: 100, writable: W),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("sector beyond capacity", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tIn, cap)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: a.data, length: 512, writable: W),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("sector + length overflowing 2^64", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tIn, UInt64.max - 1)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: a.data, length: 1024, writable: W),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("unknown request type", .unsupp, { d, a in
            try hdr(a.header, 0x7777, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: a.status, length: 1, writable: W)]) }),
        ("discard with 3 segments", .ioerr, { d, a in
            try hdr(a.header, VirtioBlk.tDiscard, 0)
            try chain(d, [ChainBuffer(address: a.header, length: 16, writable: R), ChainBuffer(address: a.data, length: 48, writable: R),
                          ChainBuffer(address: a.status, length: 1, writable: W)]) }),
    ]
    for sc in scenarios {
        let d = c.queues[0].driver
        let a = c.slotAddresses(0, 0)
        try m.store(UInt8(0xff), at: a.status)
        try sc.build(d, a)
        c.kick(0)
        // Wait for an answer or a broken flag.
        var answered: (UInt32, UInt8)? = nil
        var broken = false
        let t0 = now()
        while now() - t0 < 2 {
            if let (id, len) = try d.pollUsed() { _ = id; answered = (len, try m.load(at: a.status)); break }
            if c.needsReset(0) { broken = true; break }
            usleep(1000)
        }
        let alive = !c.frontend.waitForHangup(timeoutMs: 0)
        var outcome = "no answer"
        var ok = false
        if let (_, st) = answered {
            outcome = st == VirtioBlk.sIOErr ? "IOERR" : st == VirtioBlk.sUnsupp ? "UNSUPP" : "status \(st)"
            switch sc.expect {
            case .ioerr: ok = st == VirtioBlk.sIOErr
            case .unsupp: ok = st == VirtioBlk.sUnsupp
            case .errorOrBroken: ok = st != VirtioBlk.sOK
            case .broken: ok = false
            }
        } else if broken {
            outcome = "NEEDS_RESET"
            ok = sc.expect == .broken || sc.expect == .errorOrBroken
            try c.resetQueue(0)
        }
        // Then a good request must be served.
        let good = alive ? (try? c.read(sector: 0, count: 4096)) != nil : false
        if !good { ok = false }
        print("\(ok ? "ok  " : "FAIL") \(sc.name): \(outcome)\(alive ? "" : ", back-end gone")\(good ? ", next request served" : ", next request NOT served")")
        if !ok { failures += 1 }
        if !alive { break }
        if answered == nil && !broken { try c.resetQueue(0) }
    }
    print("malformed: \(scenarios.count - failures) passed, \(failures) failed")
    if failures > 0 { exit(1) }
}

// MARK: restart

@MainActor func spawn(_ cmd: String) -> pid_t {
    var pid: pid_t = 0
    let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup("exec " + cmd), nil]
    let r = posix_spawn(&pid, "/bin/sh", nil, nil, argv, environ)
    for a in argv { free(a) }  // posix_spawn copied them into the child
    if r != 0 { fail("posix_spawn: \(String(cString: strerror(r)))") }
    return pid
}

@MainActor func waitListening(_ pid: pid_t) {
    let t0 = now()
    while now() - t0 < 10 {
        if unixSocketIsLive(path: socketPath) { return }
        var st: Int32 = 0
        if waitpid(pid, &st, WNOHANG) == pid { fail("back-end exited (status \(st)) before listening") }
        usleep(1000)
    }
    fail("back-end did not listen on \(socketPath) within 10 s")
}

@MainActor func restart() throws {
    guard let cmd = opts["--backend-cmd"] else { fail("restart needs --backend-cmd") }
    let kills = intOpt("--kills", 3)
    let nq = intOpt("--queues", 2)
    var pid = spawn(cmd)
    childPid = pid
    waitListening(pid)
    let c = connectClient(queues: nq, depth: 32, maxBytes: 4096)
    let blocks = min(UInt64(intOpt("--blocks", 4096)), c.capacitySectors / 8)
    func pass(gen: UInt64, order: [UInt64], killAt: Set<Int>) throws -> [Double] {
        var times: [Double] = []
        var it = order.makeIterator()
        var pending: [Int: [Int: UInt64]] = [:]   // queue → slot → block
        var done = 0, exhausted = false, killT: Double? = nil
        while true {
            for q in c.queues.indices {
                var n = 0
                while !exhausted, c.inflight(q) < c.depth, let s = c.queues[q].freeSlots.last {
                    guard let b = it.next() else { exhausted = true; break }
                    c.data(q, s).copyBytes(from: pattern(b, gen))
                    _ = try c.submit(q, type: VirtioBlk.tOut, sector: b * 8, bytes: 4096)
                    pending[q, default: [:]][s] = b
                    n += 1
                }
                if n > 0 { c.kick(q) }
                for r in try c.reap(q, timeoutMs: 0) {
                    guard r.status == VirtioBlk.sOK else { fail("write of block \(pending[q]?[r.slot] ?? 0) failed: status \(r.status)") }
                    pending[q]?[r.slot] = nil
                    done += 1
                    if let k = killT { times.append(now() - k); killT = nil }
                    if killAt.contains(done) {
                        // Refill, then kill at a random moment while the back-end works.
                        for q2 in c.queues.indices {
                            var n = 0
                            while c.inflight(q2) < c.depth, let s = c.queues[q2].freeSlots.last, let b = it.next() {
                                c.data(q2, s).copyBytes(from: pattern(b, gen))
                                _ = try c.submit(q2, type: VirtioBlk.tOut, sector: b * 8, bytes: 4096)
                                pending[q2, default: [:]][s] = b
                                n += 1
                            }
                            if n > 0 { c.kick(q2) }
                        }
                        usleep(UInt32.random(in: 200...3000, using: &rng))
                        let inflight = c.queues.indices.reduce(0) { $0 + c.inflight($1) }
                        kill(pid, SIGKILL)
                        killT = now()
                        var st: Int32 = 0
                        waitpid(pid, &st, 0)
                        pid = spawn(cmd)
                        childPid = pid
                        print("SIGKILL with \(inflight) requests in flight after \(done) completions")
                        try c.frontend.reconnect(timeoutMs: 10_000, retryMs: 1)
                    }
                }
            }
            if exhausted && c.queues.indices.allSatisfy({ c.inflight($0) == 0 }) { break }
            if c.frontend.waitForHangup(timeoutMs: 0) { try c.frontend.reconnect(timeoutMs: 10_000, retryMs: 1) }
            else { usleep(50) }
        }
        return times
    }
    _ = try pass(gen: 1, order: Array(0..<blocks), killAt: [])
    let order = Array(0..<blocks).shuffled(using: &rng)
    var marks: Set<Int> = []
    for k in 1...max(kills, 1) where kills > 0 { marks.insert(Int(blocks) * k / (kills + 1)) }
    let times = try pass(gen: 2, order: order, killAt: marks)
    var bad = 0
    for b in 0..<blocks {
        guard let got = try c.read(sector: b * 8, count: 4096, queue: Int(b) % nq) else { bad += 1; continue }
        if got != pattern(b, 2) { bad += 1 }
    }
    for t in times { print("restart_ms=\(String(Int(t * 1000 * 10) / 10))") }
    print("verified \(blocks) blocks after \(times.count) SIGKILL+restart: \(bad) bad")
    kill(pid, SIGTERM)
    var st: Int32 = 0
    waitpid(pid, &st, 0)
    if bad > 0 || times.count != kills { exit(1) }
}

// MARK: unaligned (checked byte for byte against the image file)

@MainActor func unaligned() throws {
    guard let path = opts["--image"] else { fail("unaligned needs --image PATH (the file the back-end serves)") }
    let c = connectClient(queues: 1, depth: 4, maxBytes: 256 << 10)
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { fail("\(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    func readFile() -> [UInt8] {
        var st = stat()
        fstat(fd, &st)
        var b = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < b.count {
            let n = b.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n <= 0 { fail("\(path): short read") }
            done += n
        }
        return b
    }
    var model = readFile()
    guard model.count >= 1 << 20, UInt64(model.count / 512) == c.capacitySectors else {
        fail("\(path) holds \(model.count) bytes, the device \(c.capacitySectors) sectors (want ≥ 1 MiB, the same)")
    }
    var g = SystemRandomNumberGenerator()
    var failures = 0, writes = 0, reads = 0
    let span = min(model.count / 512, 4096)          // the first 2 MiB
    for round in 0..<300 {
        let sectors = [1, 1, 2, 3, 7, 8, 9, 17, 64][round % 9]
        let sector = Int.random(in: 0...(span - sectors), using: &g)
        let total = sectors * 512
        let cuts = (0..<Int.random(in: 0...3, using: &g)).map { _ in Int.random(in: 1..<max(2, total), using: &g) }
        let segs = oddSegments(total: total, cuts: cuts, shift: Int.random(in: 0...5, using: &g))
        let off = sector * 512
        if round % 3 != 2 {
            let bytes = (0..<total).map { _ in UInt8.random(in: 0...255, using: &g) }
            let r = try c.runScattered(type: VirtioBlk.tOut, sector: UInt64(sector), segments: segs) { slot in
                var k = 0
                let d = c.data(0, slot)
                for s in segs { for j in 0..<s.length { d[s.offset + j] = bytes[k]; k += 1 } }
            }
            writes += 1
            if r.status != VirtioBlk.sOK { print("FAIL write \(total) bytes at sector \(sector) in \(segs.count) segments: status \(r.status)"); failures += 1; continue }
            model.replaceSubrange(off..<off + total, with: bytes)
        } else {
            let r = try c.runScattered(type: VirtioBlk.tIn, sector: UInt64(sector), segments: segs)
            reads += 1
            let d = c.data(0, r.slot)
            var got: [UInt8] = []
            for s in segs { got += UnsafeRawBufferPointer(rebasing: d[s.offset..<s.offset + s.length]) }
            if r.status != VirtioBlk.sOK || got != Array(model[off..<off + total]) {
                print("FAIL read \(total) bytes at sector \(sector) in \(segs.count) segments: status \(r.status)\(r.status == 0 ? ", wrong data" : "")")
                failures += 1
            }
        }
    }
    if try c.run(type: VirtioBlk.tFlush, sector: 0, bytes: 0).status != VirtioBlk.sOK { print("FAIL flush"); failures += 1 }
    let file = readFile()
    var differ = 0
    for i in model.indices where file[i] != model[i] { differ += 1 }
    if differ > 0 { print("FAIL \(path) differs from the expected contents in \(differ) bytes"); failures += 1 }
    print("unaligned: \(writes) writes, \(reads) reads, file checked: \(failures == 0 ? "passed" : "\(failures) failures")")
    c.frontend.disconnect()
    if failures > 0 { exit(1) }
}

do {
    switch mode {
    case "bench": try bench()
    case "verify": try verify()
    case "malformed": try malformed()
    case "restart": try restart()
    case "unaligned": try unaligned()
    case "net-ping": try netPing()
    case "net-malformed": try netMalformed()
    case "net-bench": try netBench()
    case "net-restart": try netRestart()
    default: fail("unknown mode \(mode)\n\(usage)")
    }
} catch { fail("\(error)") }
