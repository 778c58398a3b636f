import CLinux
import GuestMemory
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The front-end (core) side of vhost-user (vhost-user.rst): connects to a back-end
/// socket, negotiates features, sends the guest memory table, hands over in-flight, kick,
/// call and error eventfds, and reconnects after the back-end restarts.
///
/// The caller owns the eventfds (the core registers kick as a KVM ioeventfd and call as an
/// irqfd); this class dups nothing and closes none of them. It owns the socket and the
/// in-flight region fd. Not thread-safe: one control thread calls it.
public final class VhostUserFrontend: @unchecked Sendable {
    /// One ring as the driver set it up. Addresses are guest-physical; the frontend
    /// translates them to its own virtual addresses for SET_VRING_ADDR.
    public struct QueueSetup: Sendable {
        public var index: Int
        /// Queue size (power of two).
        public var size: UInt16
        public var descTable: UInt64, availRing: UInt64, usedRing: UInt64
        /// Guest → back-end notification eventfd (the core's ioeventfd).
        public var kickFd: Int32
        /// Back-end → guest notification eventfd (the core's irqfd).
        public var callFd: Int32
        /// Back-end error eventfd (DEVICE_NEEDS_RESET), or -1.
        public var errFd: Int32
        public init(index: Int, size: UInt16, descTable: UInt64, availRing: UInt64, usedRing: UInt64, kickFd: Int32, callFd: Int32, errFd: Int32 = -1) {
            self.index = index; self.size = size; self.descTable = descTable; self.availRing = availRing
            self.usedRing = usedRing; self.kickFd = kickFd; self.callFd = callFd; self.errFd = errFd
        }
    }

    public let socketPath: String
    public let memory: GuestMemory
    /// Virtio feature bits the driver accepted; ANDed with what the device offers.
    public let wantedFeatures: UInt64
    /// Features offered by the back-end (GET_FEATURES), valid after ``connect()``.
    public private(set) var deviceFeatures: UInt64 = 0
    /// Features acked (SET_FEATURES), without VHOST_USER_F_PROTOCOL_FEATURES.
    public private(set) var negotiatedFeatures: UInt64 = 0
    /// Protocol features in use.
    public private(set) var protocolFeatures: UInt64 = 0
    /// Queue count the back-end supports (GET_QUEUE_NUM, 1 without MQ).
    public private(set) var maxQueues: Int = 1
    /// Connected socket, -1 when disconnected. Poll it for POLLHUP/POLLIN to see a hang-up.
    public private(set) var socketFd: Int32 = -1
    /// Rings started with ``startQueue(_:)``, re-sent by ``reconnect(timeoutMs:)``.
    public private(set) var queues: [Int: QueueSetup] = [:]

    /// Whether the back-end is asked to log its writes (``setDirtyLogging(_:)``); kept
    /// across ``reconnect(timeoutMs:retryMs:)``.
    public private(set) var dirtyLogging = false

    var inflightFd: Int32 = -1
    var inflightSize: UInt64 = 0
    var inflightShape: (UInt16, UInt16) = (0, 0)

    /// Protocol features this front-end asks for.
    public static let wantedProtocolFeatures: UInt64 = VhostUserProtocolFeature.mq | VhostUserProtocolFeature.replyAck
        | VhostUserProtocolFeature.config | VhostUserProtocolFeature.inflightShmfd | VhostUserProtocolFeature.status
        | VhostUserProtocolFeature.logShmfd

    /// - Parameters:
    ///   - memory: guest RAM; every region must have a shareable `fd` (memfd).
    ///   - wantedFeatures: virtio features to accept if offered (e.g. VERSION_1 | blk bits).
    public init(socketPath: String, memory: GuestMemory, wantedFeatures: UInt64) {
        self.socketPath = socketPath; self.memory = memory; self.wantedFeatures = wantedFeatures
    }

    deinit {
        if socketFd >= 0 { close(socketFd) }
        if inflightFd >= 0 { close(inflightFd) }
    }

    // MARK: messaging

    func send(_ req: VhostUserRequest, _ payload: [UInt8] = [], fds: [Int32] = [], ack: Bool = true) throws(VhostUserError) {
        guard socketFd >= 0 else { throw .disconnected }
        let wantAck = ack && protocolFeatures & VhostUserProtocolFeature.replyAck != 0
        try writeMessage(socketFd, VhostUserMessage(request: req.rawValue,
                         flags: VhostUserFlag.version | (wantAck ? VhostUserFlag.needReply : 0), payload: payload, fds: fds))
        if wantAck {
            let r = try receive(req)
            var p = PayloadReader(r.payload)
            if try p.u64() != 0 { throw .rejected(req) }
        }
    }

    func receive(_ req: VhostUserRequest) throws(VhostUserError) -> VhostUserMessage {
        let m = try readMessage(socketFd)
        guard m.request == req.rawValue, m.flags & VhostUserFlag.reply != 0 else {
            for f in m.fds { close(f) }
            throw .protocolViolation("expected reply to \(req), got request \(m.request)")
        }
        return m
    }

    func call(_ req: VhostUserRequest, _ payload: [UInt8] = []) throws(VhostUserError) -> VhostUserMessage {
        try send(req, payload, ack: false)
        return try receive(req)
    }

    func getU64(_ req: VhostUserRequest) throws(VhostUserError) -> UInt64 {
        var r = PayloadReader(try call(req).payload)
        return try r.u64()
    }

    func setU64(_ req: VhostUserRequest, _ v: UInt64, fds: [Int32] = []) throws(VhostUserError) {
        var w = PayloadWriter(); w.u64(v); try send(req, w.bytes, fds: fds)
    }

    // MARK: lifecycle

    /// Connects and negotiates: SET_OWNER, GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES,
    /// GET_QUEUE_NUM, SET_MEM_TABLE, and SET_INFLIGHT_FD when an in-flight region is
    /// already held (reconnect).
    /// - Throws: ``VhostUserError`` (`.system` with ECONNREFUSED/ENOENT while no back-end listens).
    public func connect() throws(VhostUserError) {
        if socketFd >= 0 { close(socketFd); socketFd = -1 }
        socketFd = try vhostUserConnect(path: socketPath)
        protocolFeatures = 0
        do throws(VhostUserError) {
            try send(.setOwner)
            deviceFeatures = try getU64(.getFeatures)
            if deviceFeatures & vhostUserFProtocolFeatures != 0 {
                let offered = try getU64(.getProtocolFeatures)
                let pf = offered & Self.wantedProtocolFeatures
                try setU64(.setProtocolFeatures, pf)
                protocolFeatures = pf
            }
            negotiatedFeatures = deviceFeatures & wantedFeatures & ~vhostUserFProtocolFeatures
            try setU64(.setFeatures, featuresToAck)
            maxQueues = protocolFeatures & VhostUserProtocolFeature.mq != 0 ? Int(try getU64(.getQueueNum)) : 1
            try sendMemTable()
            if inflightFd >= 0 { try sendInflight() }
        } catch {
            close(socketFd); socketFd = -1
            throw error
        }
    }

    /// SET_FEATURES value: the negotiated features, the protocol-features bit when offered,
    /// VHOST_F_LOG_ALL while dirty logging.
    var featuresToAck: UInt64 {
        negotiatedFeatures | (deviceFeatures & vhostUserFProtocolFeatures) | (dirtyLogging ? vhostFLogAll : 0)
    }

    func sendMemTable() throws(VhostUserError) {
        var w = PayloadWriter()
        let regions = memory.regions
        guard regions.count <= 8, regions.allSatisfy({ $0.fd >= 0 }) else {
            throw .protocolViolation("guest memory needs at most 8 fd-backed regions")
        }
        w.u32(UInt32(regions.count)); w.u32(0)
        for r in regions {
            w.u64(r.guestBase); w.u64(r.size); w.u64(UInt64(UInt(bitPattern: r.host))); w.u64(r.fdOffset)
        }
        try send(.setMemTable, w.bytes, fds: regions.map { $0.fd })
    }

    func sendInflight() throws(VhostUserError) {
        var w = PayloadWriter()
        w.u64(inflightSize); w.u64(0); w.u16(inflightShape.0); w.u16(inflightShape.1); w.u32(0)  // 24-byte struct
        try send(.setInflightFd, w.bytes, fds: [inflightFd])
    }

    /// Asks the back-end for an in-flight tracking region (GET_INFLIGHT_FD) the first time,
    /// keeps its fd, and hands it back (SET_INFLIGHT_FD). Does nothing when the back-end
    /// lacks VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD. Call before starting queues.
    public func setupInflight(numQueues: UInt16, queueSize: UInt16) throws(VhostUserError) {
        guard protocolFeatures & VhostUserProtocolFeature.inflightShmfd != 0 else { return }
        if inflightFd < 0 {
            var w = PayloadWriter(); w.u64(0); w.u64(0); w.u16(numQueues); w.u16(queueSize); w.u32(0)
            let m = try call(.getInflightFd, w.bytes)
            var fds = m.fds
            var r = PayloadReader(m.payload)
            let size = try r.u64(); _ = try r.u64()
            guard let fd = fds.first, size > 0 else { for f in fds { close(f) }; throw .protocolViolation("GET_INFLIGHT_FD without a region") }
            fds.removeFirst(); for f in fds { close(f) }
            inflightFd = fd; inflightSize = size; inflightShape = (numQueues, queueSize)
        }
        try sendInflight()
    }

    /// Starts one ring: SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_CALL,
    /// SET_VRING_ERR, SET_VRING_KICK, SET_VRING_ENABLE(1).
    /// - Parameter base: first avail index the back-end takes; defaults to the used index
    ///   found in guest memory (what a restarted back-end must resume from).
    /// - Throws: ``VhostUserError/protocolViolation(_:)`` when a ring is outside guest memory.
    public func startQueue(_ q: QueueSetup, base: UInt16? = nil) throws(VhostUserError) {
        let addr = try vringAddr(q)
        let usedIdx: UInt16 = (try? memory.load(at: q.usedRing + 2)) ?? 0
        var w = PayloadWriter(); w.u32(UInt32(q.index)); w.u32(UInt32(q.size))
        try send(.setVringNum, w.bytes)
        w = PayloadWriter(); w.u32(UInt32(q.index)); w.u32(UInt32(base ?? usedIdx))
        try send(.setVringBase, w.bytes)
        try send(.setVringAddr, addr)
        try setU64(.setVringCall, UInt64(q.index) | (q.callFd < 0 ? 0x100 : 0), fds: q.callFd < 0 ? [] : [q.callFd])
        try setU64(.setVringErr, UInt64(q.index) | (q.errFd < 0 ? 0x100 : 0), fds: q.errFd < 0 ? [] : [q.errFd])
        try setU64(.setVringKick, UInt64(q.index) | (q.kickFd < 0 ? 0x100 : 0), fds: q.kickFd < 0 ? [] : [q.kickFd])
        if deviceFeatures & vhostUserFProtocolFeatures != 0 {
            w = PayloadWriter(); w.u32(UInt32(q.index)); w.u32(1)
            try send(.setVringEnable, w.bytes)
        }
        queues[q.index] = q
    }

    /// Hands the back-end the dirty-page log of a live migration (SET_LOG_BASE with
    /// VHOST_USER_PROTOCOL_F_LOG_SHMFD, vhost-user.rst "Migration"): `size` bytes of bitmap at
    /// `offset` in `fd`, one bit per 4 KiB guest-physical page. `fd` stays the caller's.
    /// - Throws: ``VhostUserError/rejected(_:)`` when the back-end lacks LOG_SHMFD or
    ///   refuses the log; other ``VhostUserError``s from the socket.
    public func setLogBase(fd: Int32, size: UInt64, offset: UInt64 = 0) throws(VhostUserError) {
        guard protocolFeatures & VhostUserProtocolFeature.logShmfd != 0 else { throw .rejected(.setLogBase) }
        var w = PayloadWriter(); w.u64(size); w.u64(offset)
        try send(.setLogBase, w.bytes, fds: [fd], ack: false)
        var r = PayloadReader(try receive(.setLogBase).payload)
        if r.remaining >= 8, try r.u64() != 0 { throw .rejected(.setLogBase) }
    }

    /// Starts (`true`) or stops logging of the back-end's writes: SET_FEATURES with or
    /// without VHOST_F_LOG_ALL, then SET_VRING_ADDR of every started ring with or without
    /// VHOST_VRING_F_LOG (its used ring logged at its own guest-physical address).
    /// - Throws: ``VhostUserError/rejected(_:)`` when the back-end does not offer
    ///   VHOST_F_LOG_ALL; other ``VhostUserError``s from the socket.
    public func setDirtyLogging(_ on: Bool) throws(VhostUserError) {
        guard deviceFeatures & vhostFLogAll != 0 else { throw .rejected(.setFeatures) }
        dirtyLogging = on
        try setU64(.setFeatures, featuresToAck)
        for q in queues.values.sorted(by: { $0.index < $1.index }) { try send(.setVringAddr, try vringAddr(q)) }
    }

    /// The SET_VRING_ADDR payload of ring `q`: its areas as this process's addresses, with
    /// VHOST_VRING_F_LOG and its used ring as log address while dirty logging.
    /// - Throws: ``VhostUserError/protocolViolation(_:)`` when a ring is outside guest memory.
    func vringAddr(_ q: QueueSetup) throws(VhostUserError) -> [UInt8] {
        func host(_ gpa: UInt64, _ len: Int) throws(VhostUserError) -> UInt64 {
            do { return UInt64(UInt(bitPattern: try memory.slice(at: gpa, count: len).baseAddress!)) }
            catch { throw .protocolViolation("ring at 0x\(String(gpa, radix: 16)) outside guest memory") }
        }
        let n = Int(q.size)
        let d = try host(q.descTable, 16 * n), a = try host(q.availRing, 6 + 2 * n), u = try host(q.usedRing, 6 + 8 * n)
        var w = PayloadWriter(); w.u32(UInt32(q.index)); w.u32(dirtyLogging ? vhostVringFLog : 0)
        w.u64(d); w.u64(u); w.u64(a); w.u64(dirtyLogging ? q.usedRing : 0)
        return w.bytes
    }

    /// Stops one ring (GET_VRING_BASE) and returns the next avail index the back-end would take.
    public func stopQueue(_ index: Int) throws(VhostUserError) -> UInt16 {
        var w = PayloadWriter(); w.u32(UInt32(index)); w.u32(0)
        var r = PayloadReader(try call(.getVringBase, w.bytes).payload)
        _ = try r.u32()
        queues[index] = nil
        return UInt16(truncatingIfNeeded: try r.u32())
    }

    /// Device configuration space bytes (GET_CONFIG; needs VHOST_USER_PROTOCOL_F_CONFIG).
    public func getConfig(offset: UInt32, count: UInt32) throws(VhostUserError) -> [UInt8] {
        guard protocolFeatures & VhostUserProtocolFeature.config != 0 else { throw .rejected(.getConfig) }
        var w = PayloadWriter(); w.u32(offset); w.u32(count); w.u32(0); w.raw([UInt8](repeating: 0, count: Int(count)))
        var r = PayloadReader(try call(.getConfig, w.bytes).payload)
        _ = try r.u32(); let size = try r.u32(); _ = try r.u32()
        return try r.raw(Int(min(size, count)))
    }

    /// Device status as the back-end reports it (GET_STATUS, needs F_STATUS); includes
    /// DEVICE_NEEDS_RESET (0x40) when a queue broke.
    public func getStatus() throws(VhostUserError) -> UInt8 {
        guard protocolFeatures & VhostUserProtocolFeature.status != 0 else { throw .rejected(.getStatus) }
        return UInt8(truncatingIfNeeded: try getU64(.getStatus))
    }

    /// Sets the device status (SET_STATUS, needs F_STATUS).
    public func setStatus(_ s: UInt8) throws(VhostUserError) {
        guard protocolFeatures & VhostUserProtocolFeature.status != 0 else { return }
        try setU64(.setStatus, UInt64(s))
    }

    /// Waits up to `timeoutMs` for the back-end to hang up. Returns true on hang-up.
    public func waitForHangup(timeoutMs: Int32) -> Bool {
        guard socketFd >= 0 else { return true }
        var p = pollfd(fd: socketFd, events: Int16(POLLIN | 0x2000), revents: 0)
        let r = poll(&p, 1, timeoutMs)
        if r <= 0 { return false }
        if p.revents & Int16(POLLHUP | 0x2000 | POLLERR) != 0 { return true }
        var b: UInt8 = 0
        return recv(socketFd, &b, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT)) == 0
    }

    /// After a hang-up: retries ``connect()`` every `retryMs` until `timeoutMs` passes, then
    /// re-sends the in-flight region and restarts every ring with base = used->idx, so the
    /// back-end resubmits what was in flight.
    /// - Throws: the last connect error when the back-end did not come back in time.
    public func reconnect(timeoutMs: Int = 30_000, retryMs: Int = 5) throws(VhostUserError) {
        var waited = 0
        while true {
            do { try connect(); break } catch {
                if waited >= timeoutMs { throw error }
                usleep(UInt32(retryMs * 1000)); waited += retryMs
            }
        }
        for q in queues.values.sorted(by: { $0.index < $1.index }) { try startQueue(q) }
    }

    /// Closes the connection (the back-end goes back to listening).
    public func disconnect() {
        if socketFd >= 0 { close(socketFd); socketFd = -1 }
    }
}
