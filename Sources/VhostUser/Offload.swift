// Serving requests away from the event loop's own call: what an offload is handed and
// what it hands back. Two kinds exist: I/O threads (IOPool.swift, any device) and a
// device's own asynchronous submission (blkback's io_uring, BlockBackend/UringOffload.swift).
import GuestMemory
import Virtio

/// A request handed to a ``VhostUserOffload``: the chain popped from ring `queue` and the
/// guest memory it lies in, which stays mapped until the request is done.
public struct OffloadJob {
    /// The ring it came from.
    public let queue: Int
    /// The ring's generation when it was popped: a late result of a stopped ring is dropped.
    let generation: UInt64
    /// The request.
    public let chain: DescriptorChain
    /// The guest memory its buffers lie in.
    public let memory: GuestMemory
    /// Keeps that memory mapped while the request is out.
    let mapping: AnyObject
}

/// A finished ``OffloadJob``: the used length (bytes written into the request's
/// device-writable buffers) or the error that breaks its ring (virtio 1.2 §2.1.2).
public struct OffloadDone {
    public let job: OffloadJob
    public let result: Result<UInt32, VirtioError>
    public init(_ job: OffloadJob, _ result: Result<UInt32, VirtioError>) { self.job = job; self.result = result }
    var queue: Int { job.queue }
    var generation: UInt64 { job.generation }
    var head: UInt16 { job.chain.head }
}

/// Where a ``VhostUserBackend`` sends requests it does not serve inline (those moving at
/// least ``VhostUserBackend/offloadBytes``). All three calls come from the event-loop
/// thread; results may come back in any order (in-flight tracking covers that).
public protocol VhostUserOffload: AnyObject {
    /// Readable (an eventfd) whenever results wait in ``takeDone()``; the loop reads it
    /// before it takes them.
    var doneFd: Int32 { get }
    /// Starts serving `job`.
    func submit(_ job: OffloadJob)
    /// Called once the loop has handed over every request a kick made available: an
    /// offload that queues submissions sends them here. Default: nothing.
    func submitPending()
    /// The results finished since the last call.
    func takeDone() -> [OffloadDone]
    /// Blocks until results wait in ``takeDone()`` or about `milliseconds` pass (used when
    /// a ring stops and every request out must finish first). Without poll(2): blkback's
    /// manifest does not allow it.
    func waitForDone(milliseconds: Int)
}

extension VhostUserOffload {
    public func submitPending() {}
}
