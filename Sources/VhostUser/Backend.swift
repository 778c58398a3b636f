import CLinux
import GuestMemory
import Virtio
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A virtio device served over vhost-user by ``VhostUserBackend``.
public protocol VhostUserDevice: AnyObject {
    /// Virtio device feature bits offered (include VERSION_1 and ring bits);
    /// the back-end adds VHOST_USER_F_PROTOCOL_FEATURES.
    var deviceFeatures: UInt64 { get }
    /// Number of virtqueues (GET_QUEUE_NUM).
    var numQueues: Int { get }
    /// Device configuration space bytes `[offset, offset+count)` (GET_CONFIG); short or
    /// empty when out of range.
    func readConfig(offset: Int, count: Int) -> [UInt8]
    /// The features the front-end acked (SET_FEATURES).
    func setNegotiatedFeatures(_ features: UInt64)
    /// Serves one request of queue `queue` and returns the bytes written into its
    /// device-writable buffers (the used length). Request-level failures are answered in
    /// the request itself (e.g. a status byte). Throw only when the queue must be marked
    /// broken (DEVICE_NEEDS_RESET, virtio 1.2 §2.1.2). Called from I/O threads too when
    /// ``VhostUserBackend/ioThreads`` > 0, so it must be thread-safe.
    func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) throws(VirtioError) -> UInt32
}

/// A device that drives its queues itself instead of answering each chain through
/// ``VhostUserDevice/handle(_:queue:memory:)``: virtio-net, whose receive buffers wait for
/// frames from a tap and whose transmit queue may be paced by a rate limit. The back-end
/// hands it each ring once the ring is started, enabled and not broken, and takes it back
/// (nil) when the ring stops, is disabled, breaks or the front-end goes away. In-flight
/// tracking does not apply to such queues (a restarted ring resumes at the base the
/// front-end gives, normally its used index). Everything runs on the event-loop thread.
public protocol VhostUserDrivenDevice: VhostUserDevice {
    /// Ring `queue` became usable (`ring` non-nil) or stopped being usable (nil).
    func queueReady(_ queue: Int, ring: VhostUserRing?)
    /// The driver kicked ring `queue` (or the ring just became usable).
    /// - Throws: ``VirtioError`` when the ring can no longer be trusted: the back-end marks it
    ///   broken (DEVICE_NEEDS_RESET) and calls ``queueReady(_:ring:)`` with nil.
    func kicked(_ queue: Int) throws(VirtioError)
}

/// One usable ring of a ``VhostUserDrivenDevice``: the device view of the split virtqueue
/// and a way to send the used-buffer notification (call eventfd, virtio 1.2 §2.7.7).
public final class VhostUserRing: @unchecked Sendable {
    /// The device side of the ring in guest memory.
    public let queue: Virtqueue
    unowned let backend: VhostUserBackend
    let index: Int
    init(queue: Virtqueue, backend: VhostUserBackend, index: Int) { self.queue = queue; self.backend = backend; self.index = index }
    /// Writes the call eventfd when the driver wants a notification for what was
    /// published with ``Virtqueue/publishUsed()`` since the last call.
    public func notifyIfNeeded() {
        if queue.needsNotification() { notify() }
    }
    /// Writes the call eventfd unconditionally (a spurious notification is harmless).
    public func notify() {
        let c = backend.vrings[index].call
        if c >= 0 { var one: UInt64 = 1; _ = write(c, &one, 8) }
    }
    /// Marks the ring broken (DEVICE_NEEDS_RESET) with a reason for the log.
    public func fail(_ why: String) { backend.markBroken(index, why) }
}

/// Guest memory mapped from the fds of SET_MEM_TABLE; unmapped and closed on release.
final class MappedMemoryTable: @unchecked Sendable {
    let memory: GuestMemory
    let table: [VhostUserMemoryRegion]
    let maps: [(UnsafeMutableRawPointer, Int)]
    let fds: [Int32]

    init(table: [VhostUserMemoryRegion], fds: [Int32]) throws(VhostUserError) {
        var maps: [(UnsafeMutableRawPointer, Int)] = []
        var regions: [MemoryRegion] = []
        func undo() { for (p, l) in maps { munmap(p, l) } }
        for (r, fd) in zip(table, fds) {
            guard r.size > 0, r.size < 1 << 46, r.mmapOffset < 1 << 46 else { undo(); throw .protocolViolation("memory region size \(r.size) offset \(r.mmapOffset)") }
            let len = Int(r.size + r.mmapOffset)
            let p = mmap(nil, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
            if p == MAP_FAILED || p == nil { let e = VhostUserError.errno("mmap(memory region)"); undo(); throw e }
            maps.append((p!, len))
            regions.append(MemoryRegion(guestBase: r.guestPhysAddr, size: r.size, host: p! + Int(r.mmapOffset), fd: fd, fdOffset: r.mmapOffset))
        }
        do { memory = try GuestMemory(regions: regions, ownsMappings: false) }
        catch { undo(); throw .protocolViolation("memory table: \(error)") }
        self.table = table; self.maps = maps; self.fds = fds
    }

    deinit {
        for (p, l) in maps { munmap(p, l) }
        for f in fds { close(f) }
    }

    /// Front-end virtual address → guest-physical address.
    func guestPhys(user a: UInt64) -> UInt64? {
        for r in table where a >= r.userAddr && a - r.userAddr < r.size { return a - r.userAddr + r.guestPhysAddr }
        return nil
    }
}

/// The order in which a batch of completed requests is put in the used ring.
public enum CompletionOrder: Sendable {
    /// Submission order.
    case inOrder
    /// Each batch reversed: out-of-order completion, to exercise in-flight tracking.
    case reversedBatches
}

/// Serves one ``VhostUserDevice`` to one vhost-user front-end at a time (vhost-user.rst),
/// from an epoll loop on the calling thread (``run()``): the listening socket, the
/// connection and every kick eventfd. Memory regions are mapped from SET_MEM_TABLE fds and
/// unmapped on a new table or disconnect; call eventfds are written after used-ring updates
/// when the driver wants them; in-flight requests are tracked in the shared region of
/// GET/SET_INFLIGHT_FD and resubmitted when a ring starts. After a disconnect the back-end
/// listens again.
public final class VhostUserBackend: @unchecked Sendable {
    public let device: any VhostUserDevice
    /// Protocol features offered.
    public static let supportedProtocolFeatures: UInt64 = VhostUserProtocolFeature.mq | VhostUserProtocolFeature.replyAck
        | VhostUserProtocolFeature.config | VhostUserProtocolFeature.inflightShmfd
        | VhostUserProtocolFeature.resetDevice | VhostUserProtocolFeature.status

    /// Test hook: order of completions within a batch.
    public var completionOrder: CompletionOrder = .inOrder
    /// Largest number of requests completed together (one used->idx update, one call).
    public var batchLimit = 32
    /// A batch is also completed once its requests moved this many bytes, so large
    /// requests reach the driver at once and its pipeline stays full.
    public var batchBytesLimit: UInt64 = 128 << 10
    /// Threads that serve requests moving ≥ ``offloadBytes`` concurrently (set before
    /// ``run()``); 0 serves every request on the event-loop thread. Completions may then
    /// come out of order; the in-flight region covers that.
    public var ioThreads = 0
    /// Request size (data bytes) from which requests go to the I/O threads.
    public var offloadBytes: UInt64 = 256 << 10
    /// Called with one line per notable event (connects, broken queues); default: nothing.
    public var log: (String) -> Void = { _ in }
    /// Called once the first request after a (re)connect has completed (for restart timing).
    public var onFirstCompletion: (() -> Void)?

    let listenFd: Int32
    let epfd: Int32
    let stopFd: Int32
    var conn: Int32 = -1
    var mem: MappedMemoryTable?
    var inflight: InflightRegion?
    var acked: UInt64 = 0
    var protocolAcked: UInt64 = 0
    var status: UInt64 = 0
    var vrings: [Vring]
    var completedSinceConnect = false

    struct Vring {
        var num: UInt16 = 0
        var descUser: UInt64 = 0, usedUser: UInt64 = 0, availUser: UInt64 = 0
        var addrSet = false
        var base: UInt16 = 0
        var kick: Int32 = -1, call: Int32 = -1, err: Int32 = -1
        var enabled = false
        var started = false
        var broken = false
        var queue: Virtqueue?
        var replay: [UInt16] = []
        var counter: UInt64 = 1
    }

    static let tagListen: UInt64 = 1 << 40, tagConn: UInt64 = 1 << 41, tagStop: UInt64 = 1 << 42, tagDone: UInt64 = 1 << 43
    var pool: IOPool?
    /// Requests handed to the pool and not yet completed, per queue.
    var outstanding: [Int] = []
    /// Bumped whenever a ring stops, so late completions for an old ring are dropped.
    var generation: [UInt64] = []
    /// Rings handed to a ``VhostUserDrivenDevice`` (nil: not usable).
    var drivenRings: [VhostUserRing?] = []
    var driven: (any VhostUserDrivenDevice)? { device as? any VhostUserDrivenDevice }
    /// Extra descriptors watched by the loop (``watch(fd:_:)``), by tag offset.
    var watched: [(fd: Int32, handler: () -> Void)] = []
    static let tagWatched: UInt64 = 1 << 44

    /// Serves on an already listening Unix socket (for example one handed over by a
    /// supervisor). Takes ownership of `listenFd`.
    public init(device: any VhostUserDevice, listenFd: Int32) throws(VhostUserError) {
        self.device = device
        self.listenFd = listenFd
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        if epfd < 0 { throw .errno("epoll_create1") }
        stopFd = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
        if stopFd < 0 { throw .errno("eventfd") }
        vrings = Array(repeating: Vring(), count: max(device.numQueues, 1))
        outstanding = Array(repeating: 0, count: vrings.count)
        generation = Array(repeating: 0, count: vrings.count)
        drivenRings = Array(repeating: nil, count: vrings.count)
        _ = fcntl(listenFd, F_SETFL, fcntl(listenFd, F_GETFL) | O_NONBLOCK)
        try add(listenFd, Self.tagListen)
        try add(stopFd, Self.tagStop)
    }

    deinit {
        teardownConnection()
        close(listenFd); close(epfd); close(stopFd)
    }

    /// Asks ``run()`` to return (thread-safe).
    public func stop() {
        var one: UInt64 = 1
        _ = write(stopFd, &one, 8)
    }

    func add(_ fd: Int32, _ tag: UInt64) throws(VhostUserError) {
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue
        ev.data.u64 = tag
        if epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0 { throw .errno("epoll_ctl(ADD)") }
    }
    func remove(_ fd: Int32) { _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil) }

    /// Watches `fd` for readability in the event loop and calls `handler` on the loop's
    /// thread while it is readable and the watch is not paused (level-triggered). For a
    /// device's own descriptors (a tap, a timerfd, a signalfd). Call before or during ``run()``.
    /// - Throws: ``VhostUserError/system(_:_:)`` when epoll refuses the descriptor.
    public func watch(fd: Int32, _ handler: @escaping () -> Void) throws(VhostUserError) {
        try add(fd, Self.tagWatched + UInt64(watched.count))
        watched.append((fd, handler))
    }

    /// Pauses (`false`) or resumes (`true`) a watch set up with ``watch(fd:_:)``: a paused
    /// descriptor stays registered but reports nothing, so a device can leave data queued
    /// (a tap while no receive buffer is posted) without the loop spinning.
    public func setWatch(fd: Int32, enabled: Bool) {
        guard let i = watched.firstIndex(where: { $0.fd == fd }) else { return }
        var ev = epoll_event()
        ev.events = enabled ? EPOLLIN.rawValue : 0
        ev.data.u64 = Self.tagWatched + UInt64(i)
        _ = epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev)
    }

    /// Offers ring `q` to a driven device when it became usable, or takes it back.
    func syncDriven(_ q: Int) {
        guard let d = driven else { return }
        let v = vrings[q]
        let live = v.started && v.enabled && !v.broken ? v.queue : nil
        if live === drivenRings[q]?.queue { return }
        let ring = live.map { VhostUserRing(queue: $0, backend: self, index: q) }
        drivenRings[q] = ring
        d.queueReady(q, ring: ring)
        // A notification lost while the back-end was away (restart) would leave the
        // driver waiting: one spurious call on every (re)start costs nothing.
        ring?.notify()
    }

    /// Runs the event loop until ``stop()``. Connection-level errors drop the connection
    /// and go back to listening; only a failing epoll itself throws.
    public func run() throws(VhostUserError) {
        if ioThreads > 0 && pool == nil {
            let p = try IOPool(device: device, threads: ioThreads)
            try add(p.doneFd, Self.tagDone)
            pool = p
        }
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            let n = epoll_wait(epfd, &events, Int32(events.count), -1)
            if n < 0 { if errno == EINTR { continue }; throw .errno("epoll_wait") }
            for i in 0..<Int(n) {
                let tag = events[i].data.u64
                switch tag {
                case Self.tagStop: return
                case Self.tagListen: acceptConnection()
                case Self.tagDone: reapPool()
                case Self.tagWatched..<(Self.tagWatched + UInt64(watched.count)):
                    watched[Int(tag - Self.tagWatched)].handler()
                case Self.tagConn:
                    do throws(VhostUserError) {
                        let m = try readMessage(conn)
                        try dispatch(m)
                    } catch {
                        if error != .disconnected { log("vhost-user: \(error); dropping the connection") }
                        else { log("vhost-user: front-end disconnected") }
                        teardownConnection()
                    }
                default:
                    let q = Int(tag)
                    guard q < vrings.count, vrings[q].kick >= 0 else { continue }
                    var v: UInt64 = 0
                    _ = read(vrings[q].kick, &v, 8)
                    process(q)
                }
                if conn < 0 && tag == Self.tagConn { break }
            }
        }
    }

    func acceptConnection() {
        let c = accept(listenFd, nil, nil)
        if c < 0 { return }
        _ = fcntl(c, F_SETFD, FD_CLOEXEC)
        if conn >= 0 { close(c); return }
        conn = c
        do { try add(c, Self.tagConn) } catch { close(c); conn = -1; return }
        remove(listenFd)  // one front-end at a time; others wait in the backlog
        completedSinceConnect = false
        log("vhost-user: front-end connected")
    }

    func teardownConnection() {
        guard conn >= 0 else { return }
        remove(conn); close(conn); conn = -1
        for q in vrings.indices { resetVring(q) }
        mem = nil
        inflight = nil
        acked = 0; protocolAcked = 0; status = 0
        try? add(listenFd, Self.tagListen)
    }

    func resetVring(_ q: Int) {
        stopVring(q)
        if vrings[q].call >= 0 { close(vrings[q].call) }
        if vrings[q].err >= 0 { close(vrings[q].err) }
        vrings[q] = Vring()
    }

    func stopVring(_ q: Int) {
        drain()
        generation[q] &+= 1
        if vrings[q].kick >= 0 { remove(vrings[q].kick); close(vrings[q].kick); vrings[q].kick = -1 }
        if let queue = vrings[q].queue { vrings[q].base = queue.lastAvailIdx &- UInt16(vrings[q].replay.count) }
        vrings[q].queue = nil
        vrings[q].started = false
        vrings[q].replay = []
        syncDriven(q)
    }

    // MARK: messages

    func reply(_ m: VhostUserMessage, _ payload: [UInt8], fds: [Int32] = []) throws(VhostUserError) {
        try writeMessage(conn, VhostUserMessage(request: m.request, flags: VhostUserFlag.version | VhostUserFlag.reply, payload: payload, fds: fds))
    }
    func replyU64(_ m: VhostUserMessage, _ v: UInt64) throws(VhostUserError) {
        var w = PayloadWriter(); w.u64(v); try reply(m, w.bytes)
    }

    /// The vring a message names: the whole 32-bit `index` of a vring state (vhost-user.rst
    /// "Vring state description"), or bits 0-7 of a vring descriptor message's u64 (bit 8 the
    /// invalid-fd flag, the rest reserved and required zero).
    /// - Throws: `protocolViolation` naming the index when no such vring exists.
    func vringIndex(_ raw: UInt64, descriptorMessage: Bool = false) throws(VhostUserError) -> Int {
        if descriptorMessage && raw & ~UInt64(0x1ff) != 0 {
            throw .protocolViolation("reserved bits set in vring descriptor message 0x\(String(raw, radix: 16))")
        }
        let v = descriptorMessage ? raw & 0xff : raw
        guard v < UInt64(vrings.count) else { throw .protocolViolation("vring index \(v) >= \(vrings.count)") }
        return Int(v)
    }

    func dispatch(_ m: VhostUserMessage) throws(VhostUserError) {
        var fds = m.fds
        defer { for f in fds { close(f) } }   // whatever a handler did not take
        func takeFd() -> Int32? { fds.isEmpty ? nil : fds.removeFirst() }
        var r = PayloadReader(m.payload)
        var ok = true
        guard let req = VhostUserRequest(rawValue: m.request) else {
            if m.flags & VhostUserFlag.needReply != 0 { try replyU64(m, 1) }
            return
        }
        do throws(VhostUserError) {
            switch req {
            case .getFeatures:
                return try replyU64(m, device.deviceFeatures | vhostUserFProtocolFeatures)
            case .setFeatures:
                acked = try r.u64()
                device.setNegotiatedFeatures(acked & ~vhostUserFProtocolFeatures)
                if acked & vhostUserFProtocolFeatures == 0 { for q in vrings.indices { vrings[q].enabled = true } }
            case .getProtocolFeatures:
                return try replyU64(m, Self.supportedProtocolFeatures)
            case .setProtocolFeatures:
                protocolAcked = try r.u64() & Self.supportedProtocolFeatures
            case .setOwner:
                break
            case .resetOwner, .resetDevice:
                for q in vrings.indices { resetVring(q) }
                status = 0
            case .getQueueNum:
                return try replyU64(m, UInt64(device.numQueues))
            case .setMemTable:
                let n = Int(try r.u32()); _ = try r.u32()
                guard n >= 1, n <= 8, fds.count == n else { throw .protocolViolation("SET_MEM_TABLE with \(n) regions and \(fds.count) fds") }
                var table: [VhostUserMemoryRegion] = []
                for _ in 0..<n {
                    table.append(VhostUserMemoryRegion(guestPhysAddr: try r.u64(), size: try r.u64(), userAddr: try r.u64(), mmapOffset: try r.u64()))
                }
                drain()
                let taken = fds; fds = []
                let t: MappedMemoryTable
                do { t = try MappedMemoryTable(table: table, fds: taken) } catch { for f in taken { close(f) }; throw error }
                mem = t
                // Rings already running move to the new mapping at the same position.
                for q in vrings.indices where vrings[q].started {
                    let last = vrings[q].queue?.lastAvailIdx ?? vrings[q].base
                    vrings[q].queue = nil
                    activate(q, resumeAt: last)
                }
            case .setVringNum:
                let q = try vringIndex(UInt64(try r.u32())); let num = try r.u32()
                guard num > 0, num <= 32768, num & (num - 1) == 0 else { throw .protocolViolation("vring size \(num)") }
                vrings[q].num = UInt16(num)
            case .setVringAddr:
                let q = try vringIndex(UInt64(try r.u32())); _ = try r.u32()
                vrings[q].descUser = try r.u64(); vrings[q].usedUser = try r.u64(); vrings[q].availUser = try r.u64()
                vrings[q].addrSet = true
            case .setVringBase:
                let q = try vringIndex(UInt64(try r.u32())); vrings[q].base = UInt16(truncatingIfNeeded: try r.u32())
            case .getVringBase:
                let q = try vringIndex(UInt64(try r.u32()))
                let usedNow = vrings[q].queue?.publishedUsedIdx
                stopVring(q)
                // Requests are served synchronously, so after a stop nothing is in flight.
                if let u = usedNow, let iq = inflight?.queue(q), iq.size == vrings[q].num { iq.clear(usedIdx: u) }
                var w = PayloadWriter(); w.u32(UInt32(q)); w.u32(UInt32(vrings[q].base))
                return try reply(m, w.bytes)
            case .setVringKick, .setVringCall, .setVringErr:
                let v = try r.u64()
                let q = try vringIndex(v, descriptorMessage: true)
                let fd: Int32 = v & 0x100 != 0 ? -1 : (takeFd() ?? -1)
                if req == .setVringKick {
                    stopVring(q)
                    vrings[q].kick = fd
                    if fd >= 0 { try add(fd, UInt64(q)) }
                    vrings[q].broken = false
                    activate(q, resumeAt: vrings[q].base)
                    process(q)
                } else if req == .setVringCall {
                    if vrings[q].call >= 0 { close(vrings[q].call) }
                    vrings[q].call = fd
                } else {
                    if vrings[q].err >= 0 { close(vrings[q].err) }
                    vrings[q].err = fd
                }
            case .setVringEnable:
                let q = try vringIndex(UInt64(try r.u32()))
                vrings[q].enabled = try r.u32() != 0
                syncDriven(q)
                process(q)
            case .getConfig:
                let off = try r.u32(), size = try r.u32(), flags = try r.u32()
                guard size <= 256 else { throw .protocolViolation("GET_CONFIG of \(size) bytes") }
                var data = device.readConfig(offset: Int(off), count: Int(size))
                data += [UInt8](repeating: 0, count: max(0, Int(size) - data.count))
                var w = PayloadWriter(); w.u32(off); w.u32(size); w.u32(flags); w.raw(Array(data.prefix(Int(size))))
                return try reply(m, w.bytes)
            case .setConfig:
                ok = false  // virtio-blk config is read-only for the driver except writeback
            case .getInflightFd:
                _ = try r.u64(); _ = try r.u64()
                let nq = try r.u16(), qs = try r.u16()
                let region = try InflightRegion.create(numQueues: nq, queueSize: qs)
                for q in 0..<Int(nq) { region.queue(q)?.initializeIfFresh() }
                inflight = region
                // struct VhostUserInflight is 24 bytes: 20 of fields + 4 of padding.
                var w = PayloadWriter(); w.u64(region.mmapSize); w.u64(0); w.u16(nq); w.u16(qs); w.u32(0)
                return try reply(m, w.bytes, fds: [region.fd])
            case .setInflightFd:
                let size = try r.u64(), off = try r.u64(), nq = try r.u16(), qs = try r.u16()
                guard let fd = takeFd() else { throw .protocolViolation("SET_INFLIGHT_FD without fd") }
                do { inflight = try InflightRegion(fd: fd, mmapSize: size, mmapOffset: off, numQueues: nq, queueSize: qs) }
                catch { close(fd); throw error }
            case .setStatus:
                status = try r.u64()
            case .getStatus:
                let broken = vrings.contains { $0.broken }
                return try replyU64(m, status | (broken ? UInt64(VirtioDeviceStatus.needsReset) : 0))
            case .setBackendReqFd:
                break
            default:
                ok = false
            }
        } catch {
            if error == .disconnected { throw error }
            log("vhost-user: \(req): \(error)")
            ok = false
        }
        if m.flags & VhostUserFlag.needReply != 0 && protocolAcked & VhostUserProtocolFeature.replyAck != 0 {
            try replyU64(m, ok ? 0 : 1)
        }
    }

    // MARK: rings

    /// Builds the device view of ring `q` and sets up in-flight replay.
    func activate(_ q: Int, resumeAt base: UInt16) {
        guard let mem, vrings[q].num > 0, vrings[q].addrSet else { return }
        guard let d = mem.guestPhys(user: vrings[q].descUser), let a = mem.guestPhys(user: vrings[q].availUser),
              let u = mem.guestPhys(user: vrings[q].usedUser) else { markBroken(q, "ring address not in the memory table"); return }
        let queue: Virtqueue
        do { queue = try Virtqueue(memory: mem.memory, size: vrings[q].num, descTable: d, availRing: a, usedRing: u, features: acked, lastAvailIdx: base) }
        catch { markBroken(q, "\(error)"); return }
        vrings[q].started = true
        vrings[q].queue = queue
        vrings[q].replay = []
        if driven != nil { return syncDriven(q) }
        if let iq = inflight?.queue(q), iq.size == vrings[q].num {
            iq.initializeIfFresh()
            let (heads, maxC) = iq.recover(usedRingIdx: queue.publishedUsedIdx)
            queue.setLastAvailIdx(queue.publishedUsedIdx &+ UInt16(truncatingIfNeeded: heads.count))
            vrings[q].replay = heads
            vrings[q].counter = maxC + 1
            if !heads.isEmpty { log("vhost-user: queue \(q): resubmitting \(heads.count) in-flight requests") }
        }
    }

    func markBroken(_ q: Int, _ why: String) {
        guard !vrings[q].broken else { return }
        vrings[q].broken = true
        log("vhost-user: queue \(q) broken (DEVICE_NEEDS_RESET): \(why)")
        if vrings[q].err >= 0 { var one: UInt64 = 1; _ = write(vrings[q].err, &one, 8) }
        syncDriven(q)
    }

    /// Serves every available request of ring `q`.
    func process(_ q: Int) {
        if let d = driven {
            guard drivenRings[q] != nil else { return }
            do { try d.kicked(q) } catch { markBroken(q, error.description) }
            return
        }
        guard vrings[q].started, vrings[q].enabled, !vrings[q].broken, let queue = vrings[q].queue, let mem else { return }
        let iq = inflight?.queue(q).flatMap { $0.size == queue.size ? $0 : nil }
        var batch: [(UInt16, UInt32)] = []
        batch.reserveCapacity(batchLimit)
        var replay = vrings[q].replay
        vrings[q].replay = []
        var batchBytes: UInt64 = 0
        defer { if !batch.isEmpty { complete(q, queue, iq, &batch) } }
        while true {
            let chain: DescriptorChain
            var failedHead: UInt16?
            do throws(VirtioError) {
                if !replay.isEmpty {
                    let h = replay.removeFirst()
                    failedHead = h
                    chain = try queue.chain(head: h)
                } else {
                    guard let c = try queue.pop() else { return }
                    chain = c
                    failedHead = c.head
                    iq?.begin(head: c.head, counter: vrings[q].counter)
                    vrings[q].counter &+= 1
                }
                if let pool, chain.readableLength &+ chain.writableLength >= offloadBytes {
                    outstanding[q] += 1
                    pool.submit(IOPool.Job(queue: q, generation: generation[q], chain: chain, memory: mem.memory, mapping: mem))
                    continue
                }
                let len = try device.handle(chain, queue: q, memory: mem.memory)
                batch.append((chain.head, len))
                batchBytes &+= chain.readableLength &+ chain.writableLength
            } catch {
                if !batch.isEmpty { complete(q, queue, iq, &batch) }
                if let h = failedHead { iq?.drop(head: h) }
                markBroken(q, error.description)
                return
            }
            if batch.count >= batchLimit || batchBytes >= batchBytesLimit {
                complete(q, queue, iq, &batch)
                batchBytes = 0
            }
        }
    }

    /// Completes what the I/O threads finished.
    func reapPool() {
        guard let pool else { return }
        var v: UInt64 = 0
        _ = read(pool.doneFd, &v, 8)
        var batches: [Int: [(UInt16, UInt32)]] = [:]
        for d in pool.takeDone() {
            outstanding[d.queue] -= 1
            guard d.generation == generation[d.queue], let queue = vrings[d.queue].queue, !vrings[d.queue].broken else { continue }
            switch d.result {
            case .success(let len): batches[d.queue, default: []].append((d.head, len))
            case .failure(let e):
                inflight?.queue(d.queue)?.drop(head: d.head)
                if var b = batches.removeValue(forKey: d.queue), !b.isEmpty {
                    complete(d.queue, queue, inflight?.queue(d.queue).flatMap { $0.size == queue.size ? $0 : nil }, &b)
                }
                markBroken(d.queue, e.description)
            }
        }
        for (q, var b) in batches {
            guard let queue = vrings[q].queue else { continue }
            complete(q, queue, inflight?.queue(q).flatMap { $0.size == queue.size ? $0 : nil }, &b)
        }
    }

    /// Waits until the I/O threads finished every request handed to them, completing them.
    func drain() {
        guard let pool else { return }
        while outstanding.contains(where: { $0 > 0 }) {
            var p = pollfd(fd: pool.doneFd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 100)
            reapPool()
        }
    }

    func complete(_ q: Int, _ queue: Virtqueue, _ iq: InflightQueue?, _ batch: inout [(UInt16, UInt32)]) {
        if completionOrder == .reversedBatches { batch.reverse() }
        for (h, l) in batch {
            iq?.linkUsed(head: h)
            queue.addUsed(head: h, length: l)
        }
        queue.publishUsed()
        iq?.endBatch(heads: batch.lazy.map { $0.0 }, usedIdx: queue.nextUsedIdx)
        batch.removeAll(keepingCapacity: true)
        if queue.needsNotification(), vrings[q].call >= 0 {
            var one: UInt64 = 1
            _ = write(vrings[q].call, &one, 8)
        }
        if !completedSinceConnect {
            completedSinceConnect = true
            onFirstCompletion?()
        }
    }
}

/// I/O threads for large requests: jobs in, results out, an eventfd to wake the event loop.
final class IOPool: @unchecked Sendable {
    struct Job { let queue: Int; let generation: UInt64; let chain: DescriptorChain; let memory: GuestMemory; let mapping: AnyObject }
    struct Done { let queue: Int; let generation: UInt64; let head: UInt16; let result: Result<UInt32, VirtioError> }
    let device: any VhostUserDevice
    let doneFd: Int32
    private var lock = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var jobs: [Job] = []
    private var done: [Done] = []

    init(device: any VhostUserDevice, threads: Int) throws(VhostUserError) {
        self.device = device
        doneFd = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
        if doneFd < 0 { throw .errno("eventfd") }
        pthread_mutex_init(&lock, nil)
        pthread_cond_init(&cond, nil)
        for _ in 0..<threads {
            let me = Unmanaged.passUnretained(self)   // the pool lives as long as its back-end's process
            _ = me.retain()
            spawnThread { me.takeUnretainedValue().work() }
        }
    }

    func submit(_ j: Job) {
        pthread_mutex_lock(&lock)
        jobs.append(j)
        pthread_cond_signal(&cond)
        pthread_mutex_unlock(&lock)
    }

    func takeDone() -> [Done] {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        let d = done
        done.removeAll(keepingCapacity: true)
        return d
    }

    private func work() {
        while true {
            pthread_mutex_lock(&lock)
            while jobs.isEmpty { pthread_cond_wait(&cond, &lock) }
            let j = jobs.removeFirst()
            pthread_mutex_unlock(&lock)
            let r: Result<UInt32, VirtioError>
            do { r = .success(try device.handle(j.chain, queue: j.queue, memory: j.memory)) }
            catch { r = .failure(error) }
            pthread_mutex_lock(&lock)
            done.append(Done(queue: j.queue, generation: j.generation, head: j.chain.head, result: r))
            pthread_mutex_unlock(&lock)
            var one: UInt64 = 1
            _ = write(doneFd, &one, 8)
        }
    }
}
