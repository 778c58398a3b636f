import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A failure of netback's own setup or of the tap (not a guest error).
public struct NetBackendError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ s: String) { description = s }
    static func errno(_ what: String) -> NetBackendError {
        NetBackendError("\(what): \(String(cString: strerror(Glibc.errno))) (errno \(Glibc.errno))")
    }
}

/// A tap device (Linux Documentation/networking/tuntap.rst) carrying frames with a
/// virtio-net header in front (IFF_VNET_HDR), the host end of one vif.
public final class TapDevice: @unchecked Sendable {
    /// TUNSETIFF flags: IFF_TAP (2), IFF_NO_PI (0x1000), IFF_VNET_HDR (0x4000).
    public static let iffTap: UInt16 = 0x0002, iffNoPI: UInt16 = 0x1000, iffVnetHdr: UInt16 = 0x4000
    /// TUNSETOFFLOAD bits: what the tap may hand us (receive direction towards the guest).
    public static let offloadCsum: UInt32 = 0x01, offloadTSO4: UInt32 = 0x02, offloadTSO6: UInt32 = 0x04,
                       offloadTSOECN: UInt32 = 0x08, offloadUFO: UInt32 = 0x10

    /// The tap file descriptor (non-blocking).
    public let fd: Int32
    /// Whether this object closes `fd` when released.
    let owns: Bool
    /// False for the socket stand-in (``init(socket:owns:)``), which takes no tap ioctls.
    let isTap: Bool
    /// The virtio-net header length (bytes) and TUN_F_* offloads last set.
    private(set) var vnetHeaderSize = 0, offloadFlags: UInt32 = 0

    /// Adopts an open tap fd (from a launcher); sets O_NONBLOCK. The tap must have been
    /// attached with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR.
    public init(fd: Int32, owns: Bool = false) {
        self.fd = fd; self.owns = owns; isTap = true
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    /// Adopts one end of a SOCK_SEQPACKET socket pair standing in for a tap, so netback
    /// runs in-process without root or /dev/net/tun (fuzz/fuzz-virtio-net, unit tests):
    /// the other end sends and receives what a tap would, one frame per message with the
    /// virtio-net header in front. Header size and offloads are recorded
    /// (``vnetHeaderSize``, ``offloadFlags``), not set; sets O_NONBLOCK.
    init(socket fd: Int32, owns: Bool = false) {
        self.fd = fd; self.owns = owns; isTap = false
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    /// Opens /dev/net/tun and attaches to (or creates) the tap `name` (at most 15 bytes)
    /// with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR. A persistent tap made by `ip tuntap add
    /// NAME mode tap vnet_hdr` survives this process; otherwise the tap goes away with it.
    /// - Throws: ``NetBackendError`` when the name is too long, /dev/net/tun cannot be
    ///   opened (needs CAP_NET_ADMIN unless the tap's owner) or TUNSETIFF fails.
    public static func open(name: String) throws(NetBackendError) -> TapDevice {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count < 16 else { throw NetBackendError("tap name '\(name)' must be 1...15 bytes") }
        let fd = clinux_open("/dev/net/tun", O_RDWR | O_CLOEXEC, 0)
        if fd < 0 { throw .errno("open /dev/net/tun") }
        var ifr = [UInt8](repeating: 0, count: 40)   // struct ifreq: name[16], flags at 16
        for (i, b) in bytes.enumerated() { ifr[i] = b }
        let flags = iffTap | iffNoPI | iffVnetHdr
        ifr[16] = UInt8(flags & 0xff); ifr[17] = UInt8(flags >> 8)
        let r = ifr.withUnsafeMutableBytes { clinux_ioctl_ptr(fd, CLINUX_TUNSETIFF, $0.baseAddress) }
        if r != 0 { let e = NetBackendError.errno("TUNSETIFF \(name)"); close(fd); throw e }
        return TapDevice(fd: fd, owns: true)
    }

    deinit { if owns { close(fd) } }

    /// TUNSETVNETHDRSZ: the virtio-net header length on every frame (10 or 12 bytes).
    /// - Throws: ``NetBackendError`` when the ioctl fails (not a tap, no IFF_VNET_HDR).
    public func setVnetHeaderSize(_ n: Int) throws(NetBackendError) {
        vnetHeaderSize = n
        guard isTap else { return }
        var v = Int32(n)
        if clinux_ioctl_ptr(fd, CLINUX_TUNSETVNETHDRSZ, &v) != 0 { throw .errno("TUNSETVNETHDRSZ \(n)") }
    }

    /// TUNSETOFFLOAD: which partial-checksum / GSO frames the tap may hand us (TUN_F_* bits).
    /// - Throws: ``NetBackendError`` when the kernel refuses the combination.
    public func setOffload(_ flags: UInt32) throws(NetBackendError) {
        offloadFlags = flags
        guard isTap else { return }
        if clinux_ioctl_int(fd, CLINUX_TUNSETOFFLOAD, UInt(flags)) != 0 { throw .errno("TUNSETOFFLOAD 0x\(String(flags, radix: 16))") }
    }

    /// TUN_F_* bits matching the receive offloads the driver negotiated (GUEST_CSUM,
    /// GUEST_TSO4/6, GUEST_ECN, GUEST_UFO); TSO needs the checksum offload underneath.
    public static func offloads(forGuestFeatures f: UInt64) -> UInt32 {
        guard f & VirtioNetFeature.guestCsum != 0 else { return 0 }
        var o = offloadCsum
        if f & VirtioNetFeature.guestTSO4 != 0 { o |= offloadTSO4 }
        if f & VirtioNetFeature.guestTSO6 != 0 { o |= offloadTSO6 }
        if f & VirtioNetFeature.guestECN != 0 && o & (offloadTSO4 | offloadTSO6) != 0 { o |= offloadTSOECN }
        if f & VirtioNetFeature.guestUFO != 0 { o |= offloadUFO }
        return o
    }
}
