// The disk behind a virtio-blk device, whatever its format: VirtioBlockDevice serves any
// BlockStorage (a raw BlockImage, a Qcow2Image) without knowing which one it has.
#if canImport(Glibc)
import Glibc
#endif

/// A disk as the virtio-blk device sees it: `size` bytes addressed by byte offset.
///
/// Every method reports failure with `false` (the request then gets VIRTIO_BLK_S_IOERR);
/// none may trap on anything read from the image file. Implementations are safe to call
/// from several threads at once.
public protocol BlockStorage: AnyObject, Sendable {
    /// Virtual size in bytes (what the guest sees).
    var size: UInt64 { get }
    /// Logical block size in bytes (512, or a block device's sector size).
    var logicalBlockSize: UInt32 { get }
    /// True when writes, discards and write-zeroes must fail.
    var readOnly: Bool { get }
    /// Reads `total` bytes at byte `offset` into `iov` (`count` entries); may rewrite the
    /// iovec entries. False on error or short read.
    func readv(_ iov: UnsafeMutablePointer<iovec>, count: Int, offset: UInt64, total: Int) -> Bool
    /// Writes `total` bytes from `iov` at byte `offset`; false on error or a read-only disk.
    func writev(_ iov: UnsafeMutablePointer<iovec>, count: Int, offset: UInt64, total: Int) -> Bool
    /// Makes every completed write durable (VIRTIO_BLK_T_FLUSH); false on error.
    func flush() -> Bool
    /// Discards `[offset, offset+length)` (a hint: contents afterwards are unspecified).
    func discard(offset: UInt64, length: UInt64) -> Bool
    /// Makes `[offset, offset+length)` read as zeros, deallocating if `unmap` allows it.
    func writeZeroes(offset: UInt64, length: UInt64, unmap: Bool) -> Bool
}

extension BlockImage: BlockStorage {}
