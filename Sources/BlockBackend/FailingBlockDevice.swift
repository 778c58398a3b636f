// The error server of a vbd xend gave up on (its blkback kept dying): the same device
// (features, configuration space) as the disk had, every request answered
// VIRTIO_BLK_S_IOERR without touching the image. Served on the disk's socket, it completes
// the guest's outstanding requests (replayed from the in-flight region) and every later one
// with an I/O error, instead of leaving them unanswered for ever.
import GuestMemory
import VhostUser
import Virtio

/// A virtio-blk device (virtio 1.2 §5.2) that fails every request with IOERR (§5.2.6).
public final class FailingBlockDevice: VhostUserDevice, @unchecked Sendable {
    /// The disk it stands in for: features and configuration space come from it.
    let disk: VirtioBlockDevice

    public init(standingInFor disk: VirtioBlockDevice) { self.disk = disk }

    public var deviceFeatures: UInt64 { disk.deviceFeatures }
    public var numQueues: Int { disk.numQueues }
    public func readConfig(offset: Int, count: Int) -> [UInt8] { disk.readConfig(offset: offset, count: count) }
    public func setNegotiatedFeatures(_ features: UInt64) { disk.setNegotiatedFeatures(features) }

    /// Writes IOERR into the request's status byte (the last byte of its last buffer, which
    /// must be device-writable) and reports that one byte written.
    /// - Throws: `VirtioError.memory` when the request has no writable status byte inside
    ///   guest memory (the queue is then broken, as for the real disk).
    public func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) throws(VirtioError) -> UInt32 {
        guard let last = chain.buffers.last, last.writable, last.length >= 1 else {
            throw .memory("request \(chain.head) has no device-writable status byte")
        }
        let status: UnsafeMutableRawBufferPointer
        do { status = try memory.slice(at: last.address &+ (UInt64(last.length) - 1), count: 1) }
        catch { throw .memory("request \(chain.head): status byte outside guest memory") }
        status.storeBytes(of: VirtioBlk.sIOErr, as: UInt8.self)
        return 1
    }
}
