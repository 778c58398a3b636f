// What a device kind implements to be served by ``VhostUserBackend``, and the ring handle
// a device that drives its own queues is given.
import GuestMemory
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// A virtio device served over vhost-user by ``VhostUserBackend``.
public protocol VhostUserDevice: AnyObject {
    /// Virtio device feature bits offered (include VERSION_1 and ring bits); the back-end
    /// adds VHOST_USER_F_PROTOCOL_FEATURES and VHOST_F_LOG_ALL (it does the dirty logging).
    var deviceFeatures: UInt64 { get }
    /// Number of virtqueues (GET_QUEUE_NUM).
    var numQueues: Int { get }
    /// Device configuration space bytes `[offset, offset+count)` (GET_CONFIG); short or
    /// empty when out of range.
    func readConfig(offset: Int, count: Int) -> [UInt8]
    /// The features the front-end acked (SET_FEATURES), without the vhost-user bits
    /// (VHOST_USER_F_PROTOCOL_FEATURES, VHOST_F_LOG_ALL). Called again on every SET_FEATURES,
    /// e.g. when a migration turns dirty logging on or off.
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

/// One usable ring of a ``VhostUserDrivenDevice``: the device view of the split virtqueue,
/// used-ring updates that are logged for live migration, and a way to send the used-buffer
/// notification (call eventfd, virtio 1.2 §2.7.7).
///
/// A driven device takes chains with ``Virtqueue/pop()`` but returns them through
/// ``addUsed(_:written:)`` and ``publishUsed()`` here, never through the queue's own
/// methods: while the front-end has VHOST_F_LOG_ALL negotiated, these mark the pages
/// written in the dirty log (vhost-user.rst "Migration").
public final class VhostUserRing: @unchecked Sendable {
    /// The device side of the ring in guest memory.
    public let queue: Virtqueue
    unowned let backend: VhostUserBackend
    let index: Int
    init(queue: Virtqueue, backend: VhostUserBackend, index: Int) { self.queue = queue; self.backend = backend; self.index = index }
    /// Puts `chain` in the used ring (not yet published) with used length `written`: the
    /// device wrote `written` bytes into the chain's device-writable buffers, from the first
    /// on (virtio 1.2 §2.7.8). With dirty logging on, those bytes' guest pages and the
    /// used element (VHOST_VRING_F_LOG) are marked.
    public func addUsed(_ chain: DescriptorChain, written: UInt32) {
        let idx = queue.nextUsedIdx
        queue.addUsed(head: chain.head, length: written)
        guard backend.loggingAll else { return }
        backend.logWritable(chain.writable, bytes: UInt64(written), memory: queue.memory)
        backend.logUsedElement(index, queue, usedIdx: idx)
    }
    /// Publishes used->idx for the elements added since the last call (virtio 1.2 §2.7.8)
    /// and, with dirty logging on, marks it.
    public func publishUsed() {
        queue.publishUsed()
        backend.logPublished(index, queue)
    }
    /// Writes the call eventfd when the driver wants a notification for what was
    /// published with ``publishUsed()`` since the last call.
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
