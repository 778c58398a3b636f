// Virtio: the transport-agnostic split virtqueue of virtio 1.2 §2.7, device side
// (``Virtqueue``) and driver side (``VirtqueueDriver``, for tests and synthetic frontends).
// It knows nothing of PCI, MMIO, vhost-user or eventfds: callers notify.

/// Feature bits shared by all device types (virtio 1.2 §6, "Reserved Feature Bits").
public enum VirtioFeature {
    /// VIRTIO_F_RING_INDIRECT_DESC (bit 28): descriptors may point at indirect tables (§2.7.5.3).
    public static let ringIndirectDesc: UInt64 = 1 << 28
    /// VIRTIO_F_RING_EVENT_IDX (bit 29): used_event / avail_event suppression (§2.7.7, §2.7.10).
    public static let ringEventIdx: UInt64 = 1 << 29
    /// VIRTIO_F_VERSION_1 (bit 32): compliance with virtio 1.x.
    public static let version1: UInt64 = 1 << 32
}

/// Device status bits (virtio 1.2 §2.1).
public enum VirtioDeviceStatus {
    public static let acknowledge: UInt8 = 1
    public static let driver: UInt8 = 2
    public static let driverOK: UInt8 = 4
    public static let featuresOK: UInt8 = 8
    /// DEVICE_NEEDS_RESET: the device hit an error it cannot recover from without a reset.
    public static let needsReset: UInt8 = 64
    public static let failed: UInt8 = 128
}

/// Descriptor flags (virtio 1.2 §2.7.5).
public enum VirtqDescFlag {
    public static let next: UInt16 = 1
    public static let write: UInt16 = 2
    public static let indirect: UInt16 = 4
}

/// Errors raised while reading a virtqueue that the driver (guest) controls.
///
/// Every case is the guest's fault; none is fatal to the process. Cases marked *broken*
/// mean the device can no longer trust the ring and must set DEVICE_NEEDS_RESET
/// (virtio 1.2 §2.1.2); the others fail one request.
public enum VirtioError: Error, Equatable, CustomStringConvertible {
    /// Queue size not a power of two in 1...32768 (§2.7). *broken*
    case badQueueSize(UInt16)
    /// A ring area is misaligned or not inside guest memory (§2.7). *broken*
    case badRingAddress(String, UInt64)
    /// avail->idx moved more than the queue size past the last index seen (§2.7.6). *broken*
    case availIndexJump(lastSeen: UInt16, now: UInt16)
    /// A head or `next` index is >= the queue size (§2.7.5). *broken*
    case descriptorIndexOutOfRange(UInt16)
    /// A chain revisits a descriptor or is longer than the queue size (§2.7.5.2). *broken*
    case chainLoop(head: UInt16)
    /// Indirect table misplaced, sized wrong (not a multiple of 16 bytes, empty, more than
    /// 32768 entries), nested, or combined with NEXT (§2.7.5.3.1). *broken*
    case badIndirect(head: UInt16, String)
    /// INDIRECT used without VIRTIO_F_RING_INDIRECT_DESC negotiated. *broken*
    case indirectNotNegotiated(head: UInt16)
    /// A device-readable descriptor follows a device-writable one (§2.7.4.2). Fails the request.
    case readAfterWrite(head: UInt16)
    /// Guest memory access failed (address outside every region, or straddling two).
    case memory(String)

    public var description: String {
        switch self {
        case let .badQueueSize(n): return "bad queue size \(n)"
        case let .badRingAddress(what, a): return "bad \(what) address 0x\(String(a, radix: 16))"
        case let .availIndexJump(l, n): return "avail index jumped from \(l) to \(n)"
        case let .descriptorIndexOutOfRange(i): return "descriptor index \(i) out of range"
        case let .chainLoop(h): return "descriptor chain at head \(h) loops or is too long"
        case let .badIndirect(h, s): return "bad indirect table in chain \(h): \(s)"
        case let .indirectNotNegotiated(h): return "indirect descriptor in chain \(h) without VIRTIO_F_RING_INDIRECT_DESC"
        case let .readAfterWrite(h): return "device-readable descriptor after a writable one in chain \(h)"
        case let .memory(s): return s
        }
    }

    /// Whether the error leaves the queue untrustworthy (set DEVICE_NEEDS_RESET).
    public var breaksDevice: Bool {
        switch self {
        case .readAfterWrite, .memory: return false
        default: return true
        }
    }
}
