import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Byte offsets of Xen's `struct xencons_interface` (xen/include/public/io/console.h) in
/// the 4096-byte console page: `char in[1024]; char out[2048]; uint32 in_cons, in_prod,
/// out_cons, out_prod`. Indices are free-running and masked with `size - 1` on access.
/// "out" carries guest output (core → xenconsoled), "in" guest input (xenconsoled → core).
public enum ConsoleRingLayout {
    /// Size of the shared page, bytes.
    public static let pageSize = 4096
    public static let inOffset = 0
    public static let inSize = 1024
    public static let outOffset = 1024
    public static let outSize = 2048
    public static let inConsOffset = 3072
    public static let inProdOffset = 3076
    public static let outConsOffset = 3080
    public static let outProdOffset = 3084
}

/// One direction of the console page: a power-of-two byte ring with a producer and a
/// consumer index, each free-running.
struct RingDirection {
    let page: UnsafeMutableRawPointer
    let dataOffset: Int
    let size: UInt32
    let consOffset: Int
    let prodOffset: Int

    func load(_ off: Int) -> UInt32 { page.load(fromByteOffset: off, as: UInt32.self) }
    func store(_ off: Int, _ v: UInt32) { page.storeBytes(of: v, toByteOffset: off, as: UInt32.self) }

    /// Copies as much of `bytes` as fits. `prod` is the producer's private index (never
    /// read back from the page, which the peer could scribble).
    /// - Returns: bytes written; `wasEmpty` when the consumer had caught up with the old
    ///   producer index (it may be waiting for a notification); `broken` when the
    ///   consumer's index was impossible (`prod - cons > size`) and the ring was reset.
    func produce(_ bytes: UnsafeRawBufferPointer, prod: inout UInt32) -> (count: Int, wasEmpty: Bool, broken: Bool) {
        var broken = false
        let cons = load(consOffset)          // one read of the untrusted index
        var used = prod &- cons
        if used > size {
            // Impossible: restart the ring from the consumer's position (empty).
            prod = cons
            store(prodOffset, prod)
            used = 0
            broken = true
        }
        let n = min(Int(size - used), bytes.count)
        if n == 0 { return (0, false, broken) }
        let mask = size - 1
        let start = Int(prod & mask)
        let first = min(n, Int(size) - start)
        let dst = page + dataOffset
        (dst + start).copyMemory(from: bytes.baseAddress!, byteCount: first)
        if n > first { dst.copyMemory(from: bytes.baseAddress! + first, byteCount: n - first) }
        atomicMemoryFence(ordering: .releasing)   // data before index (Xen: wmb())
        let old = prod
        prod = prod &+ UInt32(n)
        store(prodOffset, prod)
        // Store prod, then load cons: pairs with the consumer's store cons, load prod, so
        // one of us sees the other and no wakeup is lost.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let consNow = load(consOffset)
        return (n, consNow == old, broken)
    }

    /// Copies up to `buffer.count` waiting bytes out. `cons` is the consumer's private index.
    /// - Returns: bytes read; `broken` when the producer's index was impossible
    ///   (`prod - cons > size`): the ring was reset to empty and nothing was read.
    func consume(into buffer: UnsafeMutableRawBufferPointer, cons: inout UInt32) -> (count: Int, broken: Bool) {
        let prod = load(prodOffset)          // one read of the untrusted index
        atomicMemoryFence(ordering: .acquiring)   // index before data (Xen: rmb())
        let avail = prod &- cons
        if avail > size {
            cons = prod
            store(consOffset, cons)
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            return (0, true)
        }
        let n = min(Int(avail), buffer.count)
        if n == 0 { return (0, false) }
        let mask = size - 1
        let start = Int(cons & mask)
        let first = min(n, Int(size) - start)
        let src = UnsafeRawPointer(page + dataOffset)
        buffer.baseAddress!.copyMemory(from: src + start, byteCount: first)
        if n > first { (buffer.baseAddress! + first).copyMemory(from: src, byteCount: n - first) }
        atomicMemoryFence(ordering: .sequentiallyConsistent)  // data read before the slot is freed
        cons = cons &+ UInt32(n)
        store(consOffset, cons)
        atomicMemoryFence(ordering: .sequentiallyConsistent)  // see producer's comment
        return (n, false)
    }

    /// Bytes waiting, or nil when the indices are impossible.
    func used(cons: UInt32) -> Int? {
        let prod = load(prodOffset)
        let u = prod &- cons
        return u > size ? nil : Int(u)
    }
}

/// The console ring of one domain (the manual's console ring): a sealed 4096-byte memfd laid
/// out as ``ConsoleRingLayout`` plus two eventfds used as event channels.
///
/// - `outEventFD`: the core signals it after producing output or consuming input.
/// - `inEventFD`: xenconsoled signals it after producing input or consuming output.
///
/// Each side keeps its own indices privately and reads the peer's index from the page once
/// per operation; an impossible peer index (`prod - cons > size`) resets that direction to
/// empty, counts a reset and calls `log`. Nothing the peer writes can crash this side.
/// The channel owns its three descriptors and closes them (and unmaps the page) on deinit.
/// Thread-safe: each of the four operations is serialized by its own lock.
public final class ConsoleRingChannel: @unchecked Sendable {
    /// The memfd holding the page (sealed against shrinking and growing).
    public let ringFD: Int32
    /// Core → xenconsoled notifications.
    public let outEventFD: Int32
    /// xenconsoled → core notifications.
    public let inEventFD: Int32
    private let page: UnsafeMutableRawPointer
    private let out: RingDirection
    private let inn: RingDirection
    // Private copies of the indices (one per role and direction).
    private let outProd: Mutex<UInt32>
    private let outCons: Mutex<UInt32>
    private let inProd: Mutex<UInt32>
    private let inCons: Mutex<UInt32>
    private let resetCount = Atomic<Int>(0)
    private let log: @Sendable (String) -> Void

    /// Creates a new ring page (zeroed) and two eventfds, all close-on-exec and non-blocking.
    /// - Parameter name: memfd name (shown in /proc/PID/fd), e.g. "console-guest1".
    /// - Throws: ``ConsoleError/system(_:_:)``.
    public static func create(name: String, log: @escaping @Sendable (String) -> Void = { _ in }) throws(ConsoleError) -> ConsoleRingChannel {
        let fd = clinux_memfd_create(name, CLINUX_MFD_CLOEXEC | CLINUX_MFD_ALLOW_SEALING)
        if fd < 0 { throw .system("memfd_create", errno) }
        if ftruncate(fd, off_t(ConsoleRingLayout.pageSize)) != 0 { let e = errno; close(fd); throw .system("ftruncate", e) }
        if clinux_fcntl_int(fd, CLINUX_F_ADD_SEALS, CLINUX_F_SEAL_SHRINK | CLINUX_F_SEAL_GROW | 0x0001 /* F_SEAL_SEAL */) != 0 {
            let e = errno; close(fd); throw .system("fcntl(F_ADD_SEALS)", e)
        }
        let o = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        if o < 0 { let e = errno; close(fd); throw .system("eventfd", e) }
        let i = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        if i < 0 { let e = errno; close(fd); close(o); throw .system("eventfd", e) }
        do { return try ConsoleRingChannel(ringFD: fd, outEventFD: o, inEventFD: i, log: log) }
        catch { close(fd); close(o); close(i); throw error }
    }

    /// Maps a ring handed over by another process (inherited or received with SCM_RIGHTS)
    /// and takes ownership of the three descriptors (on success only). They are made
    /// close-on-exec, the eventfds non-blocking. The current indices on the page are
    /// adopted, so a restarted xenconsoled continues where its predecessor stopped.
    /// - Throws: ``ConsoleError/badChannel(_:)`` when `ringFD` is not a file of at least
    ///   4096 bytes sealed against shrinking (a shrink would fault this process), or an
    ///   eventfd descriptor is not open; ``ConsoleError/system(_:_:)`` when mmap fails.
    public init(ringFD: Int32, outEventFD: Int32, inEventFD: Int32,
                log: @escaping @Sendable (String) -> Void = { _ in }) throws(ConsoleError) {
        var st = stat()
        guard ringFD >= 0, fstat(ringFD, &st) == 0 else { throw .badChannel("ring fd \(ringFD) is not open") }
        guard (st.st_mode & S_IFMT) == S_IFREG, st.st_size >= ConsoleRingLayout.pageSize else {
            throw .badChannel("ring fd is not a file of at least \(ConsoleRingLayout.pageSize) bytes")
        }
        let seals = clinux_fcntl_int(ringFD, 1024 + 10 /* F_GET_SEALS */, 0)
        guard seals >= 0, seals & CLINUX_F_SEAL_SHRINK != 0 else {
            throw .badChannel("ring memfd is not sealed against shrinking")
        }
        for fd in [outEventFD, inEventFD] {
            guard fd >= 0, fcntl(fd, F_GETFD) >= 0 else { throw .badChannel("event fd \(fd) is not open") }
        }
        guard let p = mmap(nil, ConsoleRingLayout.pageSize, PROT_READ | PROT_WRITE, MAP_SHARED, ringFD, 0),
              p != MAP_FAILED else { throw .system("mmap", errno) }
        for fd in [ringFD, outEventFD, inEventFD] { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        for fd in [outEventFD, inEventFD] { _ = clinux_fcntl_int(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        self.ringFD = ringFD
        self.outEventFD = outEventFD
        self.inEventFD = inEventFD
        self.log = log
        page = p
        out = RingDirection(page: p, dataOffset: ConsoleRingLayout.outOffset, size: UInt32(ConsoleRingLayout.outSize),
                            consOffset: ConsoleRingLayout.outConsOffset, prodOffset: ConsoleRingLayout.outProdOffset)
        inn = RingDirection(page: p, dataOffset: ConsoleRingLayout.inOffset, size: UInt32(ConsoleRingLayout.inSize),
                            consOffset: ConsoleRingLayout.inConsOffset, prodOffset: ConsoleRingLayout.inProdOffset)
        outProd = Mutex(out.load(ConsoleRingLayout.outProdOffset))
        outCons = Mutex(out.load(ConsoleRingLayout.outConsOffset))
        inProd = Mutex(inn.load(ConsoleRingLayout.inProdOffset))
        inCons = Mutex(inn.load(ConsoleRingLayout.inConsOffset))
    }

    deinit {
        munmap(page, ConsoleRingLayout.pageSize)
        close(ringFD); close(outEventFD); close(inEventFD)
    }

    /// How many times an impossible peer index reset a direction.
    public var resets: Int { resetCount.load(ordering: .relaxed) }

    private func broke(_ what: String) {
        resetCount.add(1, ordering: .relaxed)
        log("console ring: impossible \(what) index from the peer; ring reset")
    }

    // MARK: core side

    /// Core: appends guest output to the out ring, as much as fits (0 when full).
    /// Signals `outEvent` when xenconsoled had drained the ring (it may be waiting).
    /// - Returns: bytes written.
    @discardableResult
    public func writeOutput(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard bytes.count > 0 else { return 0 }
        let r = outProd.withLock { out.produce(bytes, prod: &$0) }
        if r.broken { broke("out_cons") }
        if r.count > 0 && r.wasEmpty { notifyOut() }
        return r.count
    }

    /// Core: takes up to `buffer.count` bytes of guest input from the in ring; signals
    /// `outEvent` when it took any (room for xenconsoled to write more).
    /// - Returns: bytes read.
    public func readInput(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard buffer.count > 0 else { return 0 }
        let r = inCons.withLock { inn.consume(into: buffer, cons: &$0) }
        if r.broken { broke("in_prod") }
        if r.count > 0 { notifyOut() }
        return r.count
    }

    /// Core: guest input bytes waiting in the in ring (0 when its indices are broken).
    public var inputAvailable: Int { inCons.withLock { inn.used(cons: $0) ?? 0 } }

    // MARK: xenconsoled side

    /// xenconsoled: takes up to `buffer.count` bytes of guest output from the out ring.
    /// Signals `inEvent` when it took any (room for the core's backlog).
    /// Call until it returns 0 before waiting for `outEvent` again.
    /// - Returns: bytes read.
    public func readOutput(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard buffer.count > 0 else { return 0 }
        let r = outCons.withLock { out.consume(into: buffer, cons: &$0) }
        if r.broken { broke("out_prod") }
        if r.count > 0 { notifyIn() }
        return r.count
    }

    /// xenconsoled: appends keystrokes to the in ring, as much as fits; signals `inEvent`
    /// when it wrote any.
    /// - Returns: bytes written.
    @discardableResult
    public func writeInput(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard bytes.count > 0 else { return 0 }
        let r = inProd.withLock { inn.produce(bytes, prod: &$0) }
        if r.broken { broke("in_cons") }
        if r.count > 0 { notifyIn() }
        return r.count
    }

    /// xenconsoled: free bytes in the in ring (the whole ring when the core's index is
    /// impossible: the next write resets it).
    public var inputSpace: Int {
        inProd.withLock { p in
            let used = p &- inn.load(ConsoleRingLayout.inConsOffset)
            return used > inn.size ? Int(inn.size) : Int(inn.size - used)
        }
    }

    // MARK: event channels

    /// Signals `outEvent` (core → xenconsoled).
    public func notifyOut() { Self.signal(outEventFD) }
    /// Signals `inEvent` (xenconsoled → core).
    public func notifyIn() { Self.signal(inEventFD) }
    /// Resets `outEvent`; returns the count that was pending (0 if none).
    @discardableResult public func drainOutEvent() -> UInt64 { Self.drain(outEventFD) }
    /// Resets `inEvent`; returns the count that was pending (0 if none).
    @discardableResult public func drainInEvent() -> UInt64 { Self.drain(inEventFD) }

    static func signal(_ fd: Int32) {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    static func drain(_ fd: Int32) -> UInt64 {
        var v: UInt64 = 0
        return read(fd, &v, 8) == 8 ? v : 0
    }
}
