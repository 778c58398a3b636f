import GuestMemory

/// One buffer of a descriptor chain: a guest-physical range and its direction.
/// `address`/`length` are guest-controlled and *not* yet checked against guest memory:
/// go through ``DescriptorChain/slice(_:)`` (or ``GuestMemory/slice(at:count:)``).
public struct ChainBuffer: Equatable, Sendable {
    /// Guest-physical address of the buffer.
    public var address: UInt64
    /// Length in bytes (may be zero).
    public var length: UInt32
    /// Device-writable (VIRTQ_DESC_F_WRITE) rather than device-readable.
    public var writable: Bool
    public init(address: UInt64, length: UInt32, writable: Bool) {
        self.address = address; self.length = length; self.writable = writable
    }
}

/// A descriptor chain popped from the avail ring (virtio 1.2 §2.7.5), with indirect tables
/// already expanded. Structure (indices, loops, indirect rules, read-before-write order) is
/// validated when the chain is built; buffer addresses are validated on access.
public struct DescriptorChain: Sendable {
    /// Head descriptor index: the id to return in the used ring.
    public let head: UInt16
    /// Buffers in chain order (device-readable first, then device-writable, when
    /// ``wellOrdered``).
    public let buffers: [ChainBuffer]
    /// Index in `buffers` of the first device-writable buffer (`buffers.count` if none).
    public let firstWritable: Int

    /// False when a device-readable buffer follows a device-writable one, which
    /// virtio 1.2 §2.7.4.2 forbids; devices fail such a request.
    public let wellOrdered: Bool

    public init(head: UInt16, buffers: [ChainBuffer]) {
        self.head = head
        self.buffers = buffers
        let fw = buffers.firstIndex(where: { $0.writable }) ?? buffers.count
        self.firstWritable = fw
        self.wellOrdered = buffers[fw...].allSatisfy { $0.writable }
    }

    /// Device-readable buffers (driver → device).
    public var readable: ArraySlice<ChainBuffer> { buffers[..<firstWritable] }
    /// Device-writable buffers (device → driver).
    public var writable: ArraySlice<ChainBuffer> { buffers[firstWritable...] }
    /// Total device-readable bytes.
    public var readableLength: UInt64 { readable.reduce(0) { $0 + UInt64($1.length) } }
    /// Total device-writable bytes.
    public var writableLength: UInt64 { writable.reduce(0) { $0 + UInt64($1.length) } }
}

extension GuestMemory {
    /// Host memory for one chain buffer.
    /// - Throws: ``VirtioError/memory(_:)`` when the buffer is not inside one region.
    @inlinable
    public func slice(_ b: ChainBuffer) throws(VirtioError) -> UnsafeMutableRawBufferPointer {
        do { return try slice(at: b.address, count: Int(b.length)) } catch { throw .memory(error.description) }
    }
}
