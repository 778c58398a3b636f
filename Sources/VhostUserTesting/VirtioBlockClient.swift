import BlockBackend
import CLinux
import GuestMemory
import Virtio
import VhostUser
#if canImport(Glibc)
import Glibc
#endif

/// A synthetic virtio-blk *driver* behind a vhost-user front-end: it plays the guest for
/// tests and benchmarks (the `vhost-user-frontend` tool). Guest memory is a memfd of two
/// guest-contiguous regions (so buffers can straddle a region boundary on purpose); each
/// queue has rings plus `depth` request slots of header page + data buffer.
public final class VirtioBlockClient: @unchecked Sendable {
    public struct Queue {
        public let driver: VirtqueueDriver
        public let kick: Int32, call: Int32, err: Int32
        /// Guest-physical base of slot 0; slot `s` is at `slotBase + s * slotStride`.
        public let slotBase: UInt64
        public let ringBase: UInt64
        /// head → slot of requests in flight.
        public var slotOfHead: [UInt16: Int] = [:]
        public var freeSlots: [Int]
    }

    public let memory: GuestMemory
    public let frontend: VhostUserFrontend
    public let queueSize: UInt16
    /// Requests in flight per queue at most.
    public let depth: Int
    /// Data bytes per slot.
    public let maxRequestBytes: Int
    public let slotStride: UInt64
    public private(set) var queues: [Queue] = []
    /// Capacity in 512-byte sectors (config space), after ``connect()``.
    public private(set) var capacitySectors: UInt64 = 0
    /// Guest-physical address where region 1 starts (region 0 ends).
    public let regionBoundary: UInt64
    /// Spare 64 KiB of guest memory for hand-built tables, right before the boundary.
    public var scratch: UInt64 { regionBoundary - 65536 }

    /// - Parameters:
    ///   - numQueues: queues to set up (≤ what the back-end offers).
    ///   - queueSize: descriptors per queue (power of two); each request uses 3.
    ///   - depth: request slots per queue (≤ queueSize / 3).
    ///   - maxRequestBytes: data buffer per slot (multiple of 4096).
    public init(socketPath: String, numQueues: Int = 1, queueSize: UInt16 = 256, depth: Int = 32,
                maxRequestBytes: Int = 1 << 20) throws {
        self.queueSize = queueSize
        self.depth = min(depth, Int(queueSize) / 3)
        self.maxRequestBytes = (maxRequestBytes + 4095) & ~4095
        slotStride = UInt64(4096 + self.maxRequestBytes)
        let perQueue = 65536 + UInt64(self.depth) * slotStride
        let total = (UInt64(numQueues) * perQueue + 2 * 65536 + 0xfffff) & ~0xfffff
        // Region 0: scratch + queue 0's rings; the rest in region 1.
        regionBoundary = 0x100000
        memory = try GuestMemory.memfd(name: "blk-client", layout: [(0, regionBoundary), (regionBoundary, total)])
        let features = VirtioFeature.version1 | VirtioFeature.ringIndirectDesc | VirtioFeature.ringEventIdx
            | VirtioBlk.fSizeMax | VirtioBlk.fSegMax | VirtioBlk.fBlkSize | VirtioBlk.fFlush | VirtioBlk.fMQ
            | VirtioBlk.fDiscard | VirtioBlk.fWriteZeroes | VirtioBlk.fRO
        frontend = VhostUserFrontend(socketPath: socketPath, memory: memory, wantedFeatures: features)
        for q in 0..<numQueues {
            let ring = regionBoundary + UInt64(q) * perQueue
            let kick = eventfd(0, Int32(EFD_CLOEXEC)), call = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK)),
                err = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
            let d = try VirtqueueDriver(memory: memory, size: queueSize, base: ring)
            queues.append(Queue(driver: d, kick: kick, call: call, err: err, slotBase: ring + 65536, ringBase: ring,
                                freeSlots: Array((0..<self.depth).reversed())))
        }
    }

    deinit { for q in queues { close(q.kick); close(q.call); close(q.err) } }

    func setup(_ q: Int) -> VhostUserFrontend.QueueSetup {
        let d = queues[q].driver
        return .init(index: q, size: queueSize, descTable: d.descTable, availRing: d.availRing, usedRing: d.usedRing,
                     kickFd: queues[q].kick, callFd: queues[q].call, errFd: queues[q].err)
    }

    /// Connects, negotiates, sets up the in-flight region and starts every queue.
    public func connect() throws {
        try frontend.connect()
        guard queues.count <= frontend.maxQueues else {
            throw BlockBackendError("back-end offers \(frontend.maxQueues) queues, \(queues.count) wanted")
        }
        try frontend.setupInflight(numQueues: UInt16(queues.count), queueSize: queueSize)
        for q in queues.indices { try frontend.startQueue(setup(q)) }
        let c = try frontend.getConfig(offset: 0, count: 8)
        capacitySectors = c.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * $1.offset) }
    }

    /// Resets queue `q` after the back-end flagged it broken: GET_VRING_BASE, fresh rings,
    /// start again from 0.
    public func resetQueue(_ q: Int) throws {
        _ = try frontend.stopQueue(q)
        let old = queues[q]
        let d = try VirtqueueDriver(memory: memory, size: queueSize, base: old.ringBase)
        var v: UInt64 = 0
        _ = Glibc.read(old.err, &v, 8)
        queues[q] = Queue(driver: d, kick: old.kick, call: old.call, err: old.err, slotBase: old.slotBase, ringBase: old.ringBase,
                          freeSlots: Array((0..<depth).reversed()))
        try frontend.startQueue(setup(q), base: 0)
    }

    /// Guest-physical address of slot `s`'s header, status byte and data buffer.
    public func slotAddresses(_ q: Int, _ s: Int) -> (header: UInt64, status: UInt64, data: UInt64) {
        let b = queues[q].slotBase + UInt64(s) * slotStride
        return (b, b + 16, b + 4096)
    }

    /// Host pointer to slot `s`'s data buffer.
    public func data(_ q: Int, _ s: Int) -> UnsafeMutableRawBufferPointer {
        try! memory.slice(at: slotAddresses(q, s).data, count: maxRequestBytes)
    }

    /// Submits a request from a free slot (data in/out through the slot's buffer) without
    /// kicking. Returns the slot, or nil when every slot is busy.
    public func submit(_ q: Int, type: UInt32, sector: UInt64, bytes: Int, segment: (UInt64, UInt32, UInt32)? = nil) throws -> Int? {
        guard let s = queues[q].freeSlots.popLast() else { return nil }
        let a = slotAddresses(q, s)
        try memory.store(type, at: a.header); try memory.store(UInt32(0), at: a.header + 4); try memory.store(sector, at: a.header + 8)
        try memory.store(UInt8(0xff), at: a.status)
        var bufs = [ChainBuffer(address: a.header, length: 16, writable: false)]
        if let seg = segment {
            try memory.store(seg.0, at: a.data); try memory.store(seg.1, at: a.data + 8); try memory.store(seg.2, at: a.data + 12)
            bufs.append(ChainBuffer(address: a.data, length: 16, writable: false))
        } else if bytes > 0 {
            bufs.append(ChainBuffer(address: a.data, length: UInt32(bytes), writable: type == VirtioBlk.tIn || type == VirtioBlk.tGetID))
        }
        bufs.append(ChainBuffer(address: a.status, length: 1, writable: true))
        guard let head = try queues[q].driver.add(bufs) else { queues[q].freeSlots.append(s); return nil }
        queues[q].slotOfHead[head] = s
        try queues[q].driver.publish(head)
        return s
    }

    /// Runs one IN or OUT request whose data is scattered over `segments` (byte offset into
    /// a free slot's data buffer, length): odd addresses and lengths on purpose, as a guest
    /// may hand them. For OUT the caller has put the data at those offsets of
    /// `data(q, slot)` (`prepare` is given the slot first); for IN it is there afterwards.
    /// Returns the slot and the status (0xff: no answer in `timeoutMs`).
    public func runScattered(_ q: Int = 0, type: UInt32, sector: UInt64, segments: [(offset: Int, length: Int)],
                             timeoutMs: Int32 = 5000, prepare: (Int) -> Void = { _ in }) throws -> (slot: Int, status: UInt8) {
        guard let s = queues[q].freeSlots.popLast() else { throw BlockBackendError("no free slot") }
        prepare(s)
        let a = slotAddresses(q, s)
        try memory.store(type, at: a.header); try memory.store(UInt32(0), at: a.header + 4); try memory.store(sector, at: a.header + 8)
        try memory.store(UInt8(0xff), at: a.status)
        var bufs = [ChainBuffer(address: a.header, length: 16, writable: false)]
        for g in segments {
            guard g.offset >= 0, g.length > 0, g.offset + g.length <= maxRequestBytes else { throw BlockBackendError("segment outside the slot") }
            bufs.append(ChainBuffer(address: a.data + UInt64(g.offset), length: UInt32(g.length), writable: type == VirtioBlk.tIn))
        }
        bufs.append(ChainBuffer(address: a.status, length: 1, writable: true))
        guard let head = try queues[q].driver.add(bufs) else { queues[q].freeSlots.append(s); throw BlockBackendError("ring full") }
        queues[q].slotOfHead[head] = s
        try queues[q].driver.publish(head)
        kick(q)
        var waited: Int32 = 0
        while waited < timeoutMs {
            if let r = try reap(q, timeoutMs: 50).first(where: { $0.slot == s }) { return (s, r.status) }
            waited += 50
        }
        return (s, 0xff)
    }

    /// Notifies the back-end of new avail entries on queue `q`.
    public func kick(_ q: Int) {
        var one: UInt64 = 1
        _ = Glibc.write(queues[q].kick, &one, 8)
    }

    /// Completed requests of queue `q`: (slot, status byte, used length). Waits up to
    /// `timeoutMs` for at least one when none is ready (0: don't wait).
    public func reap(_ q: Int, timeoutMs: Int32) throws -> [(slot: Int, status: UInt8, length: UInt32)] {
        var out: [(slot: Int, status: UInt8, length: UInt32)] = []
        func drain() throws {
            while let (id, len) = try queues[q].driver.pollUsed() {
                guard let s = queues[q].slotOfHead.removeValue(forKey: id) else { continue }
                let st: UInt8 = try memory.load(at: slotAddresses(q, s).status)
                queues[q].freeSlots.append(s)
                out.append((s, st, len))
            }
        }
        try drain()
        if out.isEmpty && timeoutMs != 0 {
            try queues[q].driver.setUsedEvent(queues[q].driver.lastUsedIdx)
            try drain()
            if out.isEmpty {
                var p = pollfd(fd: queues[q].call, events: Int16(POLLIN), revents: 0)
                _ = poll(&p, 1, timeoutMs)
                var v: UInt64 = 0
                _ = Glibc.read(queues[q].call, &v, 8)
                try drain()
            }
        }
        return out
    }

    /// In-flight request count of queue `q`.
    public func inflight(_ q: Int) -> Int { depth - queues[q].freeSlots.count }

    /// Runs one request synchronously and returns its status (0xff: no answer in time).
    public func run(_ q: Int = 0, type: UInt32, sector: UInt64, bytes: Int, segment: (UInt64, UInt32, UInt32)? = nil,
                    timeoutMs: Int32 = 5000) throws -> (slot: Int, status: UInt8, length: UInt32) {
        guard let s = try submit(q, type: type, sector: sector, bytes: bytes, segment: segment) else { throw BlockBackendError("no free slot") }
        kick(q)
        var waited: Int32 = 0
        while waited < timeoutMs {
            if let r = try reap(q, timeoutMs: 50).first(where: { $0.slot == s }) { return r }
            waited += 50
        }
        return (s, 0xff, 0)
    }

    /// Writes `bytes` (multiple of 512) at `sector`; returns the status.
    public func write(sector: UInt64, _ bytes: [UInt8], queue q: Int = 0) throws -> UInt8 {
        guard let s = queues[q].freeSlots.last else { throw BlockBackendError("no free slot") }
        data(q, s).copyBytes(from: bytes)
        return try run(q, type: VirtioBlk.tOut, sector: sector, bytes: bytes.count).status
    }

    /// Reads `count` bytes at `sector`; nil unless the status is OK.
    public func read(sector: UInt64, count: Int, queue q: Int = 0) throws -> [UInt8]? {
        let r = try run(q, type: VirtioBlk.tIn, sector: sector, bytes: count)
        guard r.status == VirtioBlk.sOK else { return nil }
        return Array(UnsafeRawBufferPointer(rebasing: data(q, r.slot)[0..<count]))
    }

    /// Whether the back-end flagged queue `q` broken (error eventfd or GET_STATUS NEEDS_RESET).
    public func needsReset(_ q: Int) -> Bool {
        var p = pollfd(fd: queues[q].err, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, 0) > 0 { return true }
        if let st = try? frontend.getStatus(), st & VirtioDeviceStatus.needsReset != 0 { return true }
        return false
    }
}
