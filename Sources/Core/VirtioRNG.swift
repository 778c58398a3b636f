import CLinux
import GuestMemory
import Virtio
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
    private struct Active { var queue: Virtqueue?; var call: Int32 }
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
        try resume(features: features, queues: queues, kicks: kicks, calls: calls, positions: [0])
    }

    /// Saved with the domain: its one queue's position is all the state it has.
    public var saveRefusal: String? { nil }

    public func queuePositions() throws -> [UInt16] {
        [active.withLock { $0?.queue?.lastAvailIdx ?? 0 }]
    }

    public func resume(features: UInt64, queues: [VirtqueueConfig], kicks: [Int32], calls: [Int32], positions: [UInt16]) throws {
        guard let q = queues.first, q.enabled else { return }
        // Virtqueue checks that the rings lie inside guest memory (virtio 1.2 §2.7); a queue
        // that does not is broken and ignored until the driver resets the device.
        var vq: Virtqueue? = nil
        do {
            vq = try Virtqueue(memory: memory, size: q.size, descTable: q.descTable, availRing: q.availRing,
                               usedRing: q.usedRing, features: features, lastAvailIdx: positions.first ?? 0)
        } catch {
            log("virtio-rng: \(error); queue broken")
        }
        active.withLock { $0 = Active(queue: vq, call: calls[0]) }
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
        var call: Int32 = -1
        active.withLock { a in
            guard let s = a, let q = s.queue else { return }
            call = s.call
            do {
                while let chain = try q.pop() {
                    var written: UInt32 = 0
                    for b in chain.buffers where b.writable {
                        let buf = try memory.slice(ChainBuffer(address: b.address, length: min(b.length, 1 << 16), writable: true))
                        if buf.count > 0 { _ = getrandom(buf.baseAddress, buf.count, 0) }
                        written &+= UInt32(buf.count)
                    }
                    q.addUsed(head: chain.head, length: written)
                    bytesServed.add(UInt64(written), ordering: .relaxed)
                }
                q.publishUsed()
                notify = q.needsNotification()
            } catch {
                log("virtio-rng: \(error); queue broken")
                a = Active(queue: nil, call: s.call)
            }
        }
        if notify { signalEventFD(call) }
    }
}
