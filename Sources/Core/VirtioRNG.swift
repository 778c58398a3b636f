import CLinux
import GuestMemory
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// virtio-rng (virtio 1.2 §5.4), served in the core: one queue of device-writable buffers
/// filled from getrandom(2). Small enough to live beside the vCPUs; it is the in-core
/// device the transport's ioeventfd → device → irqfd path is tested with.
public final class VirtioRNG: VirtioDevice, @unchecked Sendable {
    public let deviceType: UInt16 = 4
    public let offeredFeatures: UInt64 = 0
    public let queueMaxSizes: [UInt16] = [256]
    private let memory: GuestMemory
    private let log: @Sendable (String) -> Void
    private struct Active { var queue: VirtqueueConfig; var kick: Int32; var call: Int32; var lastAvail: UInt16 = 0; var usedIdx: UInt16 = 0; var broken = false }
    private let active = Mutex<Active?>(nil)
    private var thread: DedicatedThread?
    private let stopFD: Int32
    /// Bytes handed to the guest so far.
    public let bytesServed = Atomic<UInt64>(0)

    public init(memory: GuestMemory, log: @escaping @Sendable (String) -> Void) throws {
        self.memory = memory
        self.log = log
        stopFD = try makeEventFD()
    }

    deinit { close(stopFD) }

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(0) }
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}

    public func activate(features: UInt64, queues: [VirtqueueConfig], kicks: [Int32], calls: [Int32]) throws {
        guard let q = queues.first, q.enabled else { return }
        // The rings must lie inside guest memory (virtio 1.2 §2.7: descriptor table 16*n,
        // avail 6+2*n, used 6+8*n bytes). Checked once here, so later offsets within them
        // cannot overflow or leave RAM.
        let n = Int(q.size)
        var broken = false
        do {
            _ = try memory.slice(at: q.descTable, count: 16 * n)
            _ = try memory.slice(at: q.availRing, count: 6 + 2 * n)
            _ = try memory.slice(at: q.usedRing, count: 6 + 8 * n)
        } catch {
            log("virtio-rng: rings outside guest memory (\(error)); queue broken")
            broken = true
        }
        active.withLock { $0 = Active(queue: q, kick: kicks[0], call: calls[0], broken: broken) }
        let kick = kicks[0], stop = stopFD
        thread = DedicatedThread(name: "virtio-rng") { [self] in
            var fds = [pollfd(fd: kick, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
            while true {
                _ = poll(&fds, 2, -1)
                if fds[1].revents != 0 { _ = drainEventFD(stop); return }
                if fds[0].revents != 0 { _ = drainEventFD(kick); process() }
            }
        }
    }

    public func reset() {
        signalEventFD(stopFD)
        thread?.join()
        thread = nil
        active.withLock { $0 = nil }
    }

    /// Serves every available chain; a malformed chain marks the queue broken (it is then
    /// ignored until the driver resets the device).
    private func process() {
        var notify = false
        active.withLock { a in
            guard var s = a, !s.broken else { return }
            defer { a = s }
            let q = s.queue
            do {
                let availIdx: UInt16 = try memory.load(at: q.availRing &+ 2)
                if UInt16(availIdx &- s.lastAvail) > q.size { s.broken = true; log("virtio-rng: avail index jumped; queue broken"); return }
                while s.lastAvail != availIdx {
                    let head: UInt16 = try memory.load(at: q.availRing &+ 4 &+ 2 &* UInt64(s.lastAvail % q.size))
                    var written: UInt32 = 0
                    var i = head, hops = 0
                    while true {
                        guard i < q.size, hops < Int(q.size) else { s.broken = true; log("virtio-rng: bad descriptor chain"); return }
                        let d = q.descTable &+ 16 &* UInt64(i)
                        let addr: UInt64 = try memory.load(at: d)
                        let len: UInt32 = try memory.load(at: d &+ 8)
                        let flags: UInt16 = try memory.load(at: d &+ 12)
                        let next: UInt16 = try memory.load(at: d &+ 14)
                        if flags & 2 != 0 {
                            let buf = try memory.slice(at: addr, count: Int(min(len, 1 << 16)))
                            if buf.count > 0 { _ = getrandom(buf.baseAddress, buf.count, 0) }
                            written &+= UInt32(buf.count)
                        }
                        hops += 1
                        if flags & 1 == 0 { break }
                        i = next
                    }
                    let slot = q.usedRing &+ 4 &+ 8 &* UInt64(s.usedIdx % q.size)
                    try memory.store(UInt32(head), at: slot)
                    try memory.store(written, at: slot &+ 4)
                    s.usedIdx &+= 1
                    s.lastAvail &+= 1
                    try memory.store(s.usedIdx, at: q.usedRing &+ 2)
                    bytesServed.add(UInt64(written), ordering: .relaxed)
                    notify = true
                }
            } catch {
                s.broken = true
                log("virtio-rng: \(error); queue broken")
            }
        }
        if notify, let call = active.withLock({ $0?.call }) { signalEventFD(call) }
    }
}
