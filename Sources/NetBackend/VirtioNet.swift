// NetBackend: the virtio-net device (virtio 1.2 §5.1) of netback, moving Ethernet frames
// between a vhost-user front-end's virtqueues and a tap device.
import Virtio

/// virtio-net feature bits (virtio 1.2 §5.1.3).
public enum VirtioNetFeature {
    /// VIRTIO_NET_F_CSUM (0): the device handles packets with partial checksum (guest → host).
    public static let csum: UInt64 = 1 << 0
    /// VIRTIO_NET_F_GUEST_CSUM (1): the driver handles packets with partial checksum.
    public static let guestCsum: UInt64 = 1 << 1
    /// VIRTIO_NET_F_MTU (3): `mtu` in config space is valid.
    public static let mtu: UInt64 = 1 << 3
    /// VIRTIO_NET_F_MAC (5): `mac` in config space is valid.
    public static let mac: UInt64 = 1 << 5
    /// VIRTIO_NET_F_GUEST_TSO4 (7), GUEST_TSO6 (8), GUEST_ECN (9), GUEST_UFO (10).
    public static let guestTSO4: UInt64 = 1 << 7
    public static let guestTSO6: UInt64 = 1 << 8
    public static let guestECN: UInt64 = 1 << 9
    public static let guestUFO: UInt64 = 1 << 10
    /// VIRTIO_NET_F_HOST_TSO4 (11), HOST_TSO6 (12), HOST_ECN (13), HOST_UFO (14).
    public static let hostTSO4: UInt64 = 1 << 11
    public static let hostTSO6: UInt64 = 1 << 12
    public static let hostECN: UInt64 = 1 << 13
    public static let hostUFO: UInt64 = 1 << 14
    /// VIRTIO_NET_F_MRG_RXBUF (15): a received packet may span several receive chains.
    public static let mrgRxbuf: UInt64 = 1 << 15
    /// VIRTIO_NET_F_STATUS (16): `status` in config space is valid.
    public static let status: UInt64 = 1 << 16
    /// VIRTIO_NET_F_CTRL_VQ (17).
    public static let ctrlVQ: UInt64 = 1 << 17
    /// VIRTIO_NET_F_MQ (22).
    public static let mq: UInt64 = 1 << 22
}

/// virtio-net header constants (virtio 1.2 §5.1.6).
public enum VirtioNetHeader {
    /// Header size with VIRTIO_F_VERSION_1 or VIRTIO_NET_F_MRG_RXBUF (includes num_buffers).
    public static let size = 12
    /// Header size of a legacy device without MRG_RXBUF.
    public static let legacySize = 10
    /// flags: VIRTIO_NET_HDR_F_NEEDS_CSUM (1), VIRTIO_NET_HDR_F_DATA_VALID (2).
    public static let fNeedsCsum: UInt8 = 1
    public static let fDataValid: UInt8 = 2
    /// gso_type values: NONE 0, TCPV4 1, UDP 3, TCPV6 4; ECN bit 0x80.
    public static let gsoNone: UInt8 = 0
    public static let gsoTCPv4: UInt8 = 1
    public static let gsoUDP: UInt8 = 3
    public static let gsoTCPv6: UInt8 = 4
    public static let gsoECN: UInt8 = 0x80
    /// Offset of num_buffers (u16 little-endian) in the 12-byte header.
    public static let numBuffersOffset = 10

    /// Checks a transmit header against the negotiated features (§5.1.6.2: the driver
    /// sets NEEDS_CSUM only with VIRTIO_NET_F_CSUM and a GSO type only with the matching
    /// HOST_* feature). Returns nil when acceptable, else why not.
    /// - Parameters: `flags`, `gsoType`: header bytes 0 and 1; `csumStart`, `csumOffset`:
    ///   header fields (bytes 6...9); `frameLength`: Ethernet frame bytes after the header.
    public static func checkTransmit(flags: UInt8, gsoType: UInt8, csumStart: UInt16, csumOffset: UInt16,
                                     frameLength: Int, features: UInt64) -> String? {
        guard flags & ~(fNeedsCsum | fDataValid) == 0 else { return "unknown header flags 0x\(String(flags, radix: 16))" }
        if flags & fNeedsCsum != 0 {
            guard features & VirtioNetFeature.csum != 0 else { return "NEEDS_CSUM without VIRTIO_NET_F_CSUM" }
            guard Int(csumStart) + Int(csumOffset) + 2 <= frameLength else { return "checksum field beyond the frame" }
        }
        let ecn = gsoType & gsoECN != 0
        switch gsoType & ~gsoECN {
        case gsoNone: if ecn { return "ECN bit without a GSO type" }
        case gsoTCPv4: if features & VirtioNetFeature.hostTSO4 == 0 { return "TSO4 frame without VIRTIO_NET_F_HOST_TSO4" }
        case gsoTCPv6: if features & VirtioNetFeature.hostTSO6 == 0 { return "TSO6 frame without VIRTIO_NET_F_HOST_TSO6" }
        case gsoUDP: if features & VirtioNetFeature.hostUFO == 0 { return "UFO frame without VIRTIO_NET_F_HOST_UFO" }
        default: return "unknown gso_type \(gsoType)"
        }
        if ecn && features & VirtioNetFeature.hostECN == 0 { return "ECN GSO frame without VIRTIO_NET_F_HOST_ECN" }
        if gsoType != gsoNone && flags & fNeedsCsum == 0 { return "GSO frame without NEEDS_CSUM" }
        return nil
    }
}

/// Link status bits of config-space `status` (virtio 1.2 §5.1.4).
public enum VirtioNetStatus {
    public static let linkUp: UInt16 = 1
    public static let announce: UInt16 = 2
}

/// The device configuration space (virtio 1.2 §5.1.4, `struct virtio_net_config`):
/// `mac[6]` at 0, `status` (u16 LE) at 6, `max_virtqueue_pairs` (u16) at 8, `mtu` (u16) at 10.
public struct VirtioNetConfig: Sendable, Equatable {
    public var mac: [UInt8]
    public var status: UInt16
    public var maxVirtqueuePairs: UInt16
    public var mtu: UInt16
    public init(mac: [UInt8], status: UInt16 = VirtioNetStatus.linkUp, maxVirtqueuePairs: UInt16 = 1, mtu: UInt16 = 1500) {
        precondition(mac.count == 6, "a MAC address has 6 octets")
        self.mac = mac; self.status = status; self.maxVirtqueuePairs = maxVirtqueuePairs; self.mtu = mtu
    }
    /// The 12 config-space bytes.
    public var bytes: [UInt8] {
        mac + [UInt8(status & 0xff), UInt8(status >> 8), UInt8(maxVirtqueuePairs & 0xff), UInt8(maxVirtqueuePairs >> 8),
               UInt8(mtu & 0xff), UInt8(mtu >> 8)]
    }
    /// Parses config bytes (at least 8: mac and status).
    public init?(bytes b: [UInt8]) {
        guard b.count >= 8 else { return nil }
        mac = Array(b[0..<6]); status = UInt16(b[6]) | UInt16(b[7]) << 8
        maxVirtqueuePairs = b.count >= 10 ? UInt16(b[8]) | UInt16(b[9]) << 8 : 1
        mtu = b.count >= 12 ? UInt16(b[10]) | UInt16(b[11]) << 8 : 1500
    }
}

/// Parses `xx:xx:xx:xx:xx:xx` into six octets; nil for anything else.
public func parseMAC(_ s: String) -> [UInt8]? {
    let parts = s.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 6 else { return nil }
    var out: [UInt8] = []
    for p in parts {
        guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
        out.append(b)
    }
    return out
}
