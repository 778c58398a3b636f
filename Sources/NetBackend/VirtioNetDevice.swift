import CLinux
import GuestMemory
import Virtio
import VhostUser
#if canImport(Glibc)
import Glibc
#endif

/// Counters of one netback (all since start). Drops are the guest's or the tap's fault and
/// never stop the device.
public struct NetStats: Sendable, Equatable {
    /// Frames written to the tap, and their bytes (Ethernet frame, no virtio-net header).
    public var txFrames: UInt64 = 0, txBytes: UInt64 = 0
    /// Transmit chains dropped as malformed: bad descriptor order, writable buffers,
    /// buffers outside guest memory, shorter than header + Ethernet header, or a header
    /// the negotiated features do not allow.
    public var txMalformed: UInt64 = 0
    /// Transmit frames dropped for exceeding the MTU (non-GSO) or 64 KiB (GSO).
    public var txOversized: UInt64 = 0
    /// Transmit frames the tap refused (write error).
    public var txErrors: UInt64 = 0
    /// Times the rate limit held the transmit queue back.
    public var txThrottled: UInt64 = 0
    /// Frames delivered to the guest, and their bytes.
    public var rxFrames: UInt64 = 0, rxBytes: UInt64 = 0
    /// Received frames dropped: no receive buffer large enough (without MRG_RXBUF), or
    /// shorter than a virtio-net header from the tap.
    public var rxDropped: UInt64 = 0
    /// Receive chains returned unused (length 0) because they were malformed
    /// (device-readable buffers, buffers outside guest memory).
    public var rxMalformed: UInt64 = 0
    public init() {}

    /// One `key=value` line for logs.
    public var line: String {
        "tx_frames=\(txFrames) tx_bytes=\(txBytes) tx_malformed=\(txMalformed) tx_oversized=\(txOversized) tx_errors=\(txErrors) tx_throttled=\(txThrottled) rx_frames=\(rxFrames) rx_bytes=\(rxBytes) rx_dropped=\(rxDropped) rx_malformed=\(rxMalformed)"
    }
}

/// The virtio-net device of netback (virtio 1.2 §5.1) on one tap: queue 0 receives
/// (tap → guest), queue 1 transmits (guest → tap). Runs entirely on the vhost-user
/// event loop's thread (``VhostUserDrivenDevice``).
///
/// Transmit: each chain's device-readable buffers (virtio-net header + frame) are checked
/// — order, placement in guest memory, length, header against the negotiated features —
/// and written to the tap with one `writev` straight from guest memory; bad chains are
/// counted and completed with length 0. With a rate limit the queue is paced by a token
/// bucket (``RateLimiter``) and a timerfd.
///
/// Receive: each frame is read from the tap with one `readv` straight into the guest's
/// receive buffers — one chain, or with VIRTIO_NET_F_MRG_RXBUF as many as the largest
/// frame the tap may hand over needs, filled in place, num_buffers written in the header
/// (§5.1.6.4) — with a bounce buffer as the last element for what does not fit. A frame
/// that reached the bounce buffer (the guest posted too few buffers) is copied into chains
/// once the guest posts more; meanwhile the tap is not read. Used entries are published
/// and the driver notified once per batch of frames (event idx decides, §2.7.7).
///
/// Chains go back through ``VhostUserRing/addUsed(_:written:)`` with the bytes written, so
/// during a live migration the received frames' pages and the used ring are logged.
public final class VirtioNetDevice: VhostUserDrivenDevice, @unchecked Sendable {
    /// Largest Ethernet frame accepted from the guest with a GSO type (64 KiB IP packet +
    /// Ethernet and VLAN headers).
    public static let maxGSOFrame = 65535 + 18
    /// Receive buffer: header + largest GSO frame the tap may hand over.
    static let rxBufferSize = 12 + 65535 + 18

    public let tap: TapDevice
    public var config: VirtioNetConfig
    public let deviceFeatures: UInt64
    public var numQueues: Int { 2 }
    /// Counters (read on the event-loop thread, e.g. from a signalfd handler).
    public internal(set) var stats = NetStats()
    /// One line per notable event (first drops of each kind, tap errors).
    public var log: (String) -> Void = { _ in }

    /// Negotiated features and the resulting header length.
    public private(set) var features: UInt64 = 0
    public private(set) var headerLength = VirtioNetHeader.size
    var limiter: RateLimiter?
    let timerFd: Int32
    var txWaiting = false
    unowned(unsafe) var backend: VhostUserBackend?
    var rxRing: VhostUserRing?
    var txRing: VhostUserRing?
    /// Bounce buffer: the tail of a frame longer than the receive buffers posted when it
    /// was read, or a whole frame waiting for buffers (`rxLen` bytes, header included).
    var rxBuf: UnsafeMutableRawBufferPointer
    var rxLen = 0
    var rxWatch = false
    /// Receive chains taken from the avail ring, checked and mapped, in avail order; those
    /// from `rxNext` on are not used yet (``VirtioNetDevice/receiveFrames()``).
    var rxChains: [RxChain] = []
    var rxNext = 0
    /// Their buffers' host memory, chain after chain (a chain's run starts at `iovStart`).
    var rxIov: [iovec] = []
    /// Bytes of the unused chains, and the avail index of `rxChains[0]`.
    var rxRoom = 0
    var rxFirstIdx: UInt16 = 0
    /// The queue the chains came from (they are dropped when the ring changes).
    var rxQueue: Virtqueue?
    var scratch: UnsafeMutableRawBufferPointer
    var iov: [iovec]
    var logged: [String: UInt64] = [:]

    /// Feature bits offered without any offload (`offloads: false`).
    public static let baseFeatures = VirtioFeature.version1 | VirtioFeature.ringIndirectDesc | VirtioFeature.ringEventIdx
        | VirtioNetFeature.mac | VirtioNetFeature.status | VirtioNetFeature.mrgRxbuf
    /// Checksum and TSO offloads offered with `offloads: true` (never UFO).
    public static let offloadFeatures = VirtioNetFeature.csum | VirtioNetFeature.guestCsum
        | VirtioNetFeature.guestTSO4 | VirtioNetFeature.guestTSO6 | VirtioNetFeature.guestECN
        | VirtioNetFeature.hostTSO4 | VirtioNetFeature.hostTSO6 | VirtioNetFeature.hostECN

    /// - Parameters:
    ///   - tap: the host end (opened with IFF_VNET_HDR).
    ///   - mac: the guest's MAC address (config space `mac`).
    ///   - rate: Xen `rate=` limit on guest transmit as (bytes, per microseconds), or nil.
    ///   - offloads: offer checksum/TSO offloads (mirrored onto the tap when negotiated).
    /// - Throws: ``NetBackendError`` when the timerfd or the tap's header size cannot be set.
    public init(tap: TapDevice, mac: [UInt8], rate: (bytes: UInt64, microseconds: UInt64)? = nil, offloads: Bool = true) throws(NetBackendError) {
        self.tap = tap
        config = VirtioNetConfig(mac: mac)
        deviceFeatures = Self.baseFeatures | (offloads ? Self.offloadFeatures : 0)
        if let r = rate { limiter = RateLimiter(bytesPerInterval: r.bytes, intervalMicroseconds: r.microseconds, now: Self.nowNs()) }
        timerFd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC))
        if timerFd < 0 { throw .errno("timerfd_create") }
        rxBuf = .allocate(byteCount: Self.rxBufferSize, alignment: 64)
        scratch = .allocate(byteCount: Self.rxBufferSize, alignment: 64)
        iov = []
        iov.reserveCapacity(256)
        rxChains.reserveCapacity(256)
        rxIov.reserveCapacity(1024)
        try tap.setVnetHeaderSize(VirtioNetHeader.size)
        try? tap.setOffload(0)
    }

    deinit { rxBuf.deallocate(); scratch.deallocate(); close(timerFd) }

    /// Registers the tap and the rate-limit timer with `backend`'s event loop. Call once
    /// before ``VhostUserBackend/run()``.
    /// - Throws: ``VhostUserError`` from epoll.
    public func attach(to backend: VhostUserBackend) throws(VhostUserError) {
        self.backend = backend
        try backend.watch(fd: tap.fd) { [unowned self] in self.receive() }
        try backend.watch(fd: timerFd) { [unowned self] in self.timerFired() }
        backend.setWatch(fd: tap.fd, enabled: false)
    }

    static func nowNs() -> UInt64 {
        var t = timespec(); clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    func note(_ kind: String, _ what: String) {
        let n = logged[kind, default: 0]
        logged[kind] = n + 1
        if n < 5 { log("\(kind): \(what)\(n == 4 ? " (further ones only counted)" : "")") }
    }

    // MARK: VhostUserDevice

    public func readConfig(offset: Int, count: Int) -> [UInt8] {
        let b = config.bytes
        guard offset >= 0, count >= 0, offset < b.count else { return [] }
        return Array(b[offset..<min(b.count, offset + count)])
    }

    public func setNegotiatedFeatures(_ f: UInt64) {
        features = f & deviceFeatures
        headerLength = features & (VirtioFeature.version1 | VirtioNetFeature.mrgRxbuf) != 0 ? VirtioNetHeader.size : VirtioNetHeader.legacySize
        do { try tap.setVnetHeaderSize(headerLength) } catch { log("\(error)") }
        let offloads = TapDevice.offloads(forGuestFeatures: features)
        do { try tap.setOffload(offloads) } catch { log("\(error)") }
        log("features 0x\(String(features, radix: 16)): \(headerLength)-byte header, mergeable receive buffers \(features & VirtioNetFeature.mrgRxbuf != 0 ? "on" : "off"), tap offloads 0x\(String(offloads, radix: 16))")
    }

    public func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) throws(VirtioError) -> UInt32 { 0 }

    public func queueReady(_ queue: Int, ring: VhostUserRing?) {
        if queue == 0 {
            rxRing = ring
            dropChains()
            setTapWatch(ring != nil)
        } else if queue == 1 {
            txRing = ring
        }
    }

    public func kicked(_ queue: Int) throws(VirtioError) {
        if queue == 0 { try receiveFrames() } else if queue == 1 { try transmit() }
    }

    func setTapWatch(_ on: Bool) {
        guard on != rxWatch else { return }
        rxWatch = on
        backend?.setWatch(fd: tap.fd, enabled: on)
    }

    // MARK: transmit (guest → tap)

    func timerFired() {
        var v: UInt64 = 0
        _ = read(timerFd, &v, 8)
        txWaiting = false
        do { try transmit() } catch { txRing?.fail(error.description) }
    }

    func armTimer(_ ns: UInt64) {
        var spec = itimerspec()
        spec.it_value.tv_sec = Int(ns / 1_000_000_000)
        spec.it_value.tv_nsec = Int(ns % 1_000_000_000)
        _ = timerfd_settime(timerFd, 0, &spec, nil)
        txWaiting = true
    }

    /// Sends every frame the driver queued (or as many as the rate limit allows).
    func transmit() throws(VirtioError) {
        guard let ring = txRing, !txWaiting else { return }
        let q = ring.queue
        var done = 0
        defer { if done > 0 { ring.publishUsed(); ring.notifyIfNeeded() } }
        while let chain = try q.pop() {
            if let frame = prepare(chain, memory: q.memory) {
                if limiter != nil {
                    let wait = limiter!.take(frame, now: Self.nowNs())
                    if wait > 0 {
                        q.setLastAvailIdx(q.lastAvailIdx &- 1)  // not taken after all
                        stats.txThrottled &+= 1
                        armTimer(wait)
                        return
                    }
                }
                send(frame)
            }
            ring.addUsed(chain, written: 0)
            done += 1
            if done >= 64 { ring.publishUsed(); ring.notifyIfNeeded(); done = 0 }
        }
    }

    /// Checks a transmit chain and fills `iov` with its header + frame. Returns the frame
    /// length (without header), or nil when the chain was dropped (counted).
    func prepare(_ chain: DescriptorChain, memory: GuestMemory) -> Int? {
        iov.removeAll(keepingCapacity: true)
        guard chain.wellOrdered, chain.firstWritable == chain.buffers.count else {
            stats.txMalformed &+= 1; note("tx malformed", "chain \(chain.head) has device-writable buffers"); return nil
        }
        let total = chain.readableLength
        let hl = headerLength
        guard total >= UInt64(hl + 14) else {
            stats.txMalformed &+= 1; note("tx malformed", "chain \(chain.head) of \(total) bytes is shorter than a header and an Ethernet header"); return nil
        }
        guard total <= UInt64(hl + Self.maxGSOFrame) else {
            stats.txOversized &+= 1; note("tx oversized", "frame of \(total - UInt64(hl)) bytes"); return nil
        }
        for b in chain.buffers where b.length > 0 {
            let p: UnsafeMutableRawBufferPointer
            do { p = try memory.slice(b) } catch {
                stats.txMalformed &+= 1; note("tx malformed", "chain \(chain.head): \(error)"); return nil
            }
            iov.append(iovec(iov_base: p.baseAddress, iov_len: p.count))
        }
        // The header may straddle buffers: gather it (on the stack, no allocation per frame).
        var hdr: (UInt64, UInt32) = (0, 0)
        withUnsafeMutableBytes(of: &hdr) { d in
            var got = 0
            for v in iov where got < hl {
                let n = min(v.iov_len, hl - got)
                (d.baseAddress! + got).copyMemory(from: v.iov_base!, byteCount: n)
                got += n
            }
        }
        let h = withUnsafeBytes(of: hdr) { b in (b[0], b[1], b[6], b[7], b[8], b[9]) }
        let frame = Int(total) - hl
        let gso = h.1
        let mtuFrame = Int(config.mtu) + 18
        if gso == VirtioNetHeader.gsoNone && frame > mtuFrame {
            stats.txOversized &+= 1; note("tx oversized", "non-GSO frame of \(frame) bytes (MTU \(config.mtu))"); return nil
        }
        let csumStart = UInt16(h.2) | UInt16(h.3) << 8, csumOffset = UInt16(h.4) | UInt16(h.5) << 8
        if let why = VirtioNetHeader.checkTransmit(flags: h.0, gsoType: gso, csumStart: csumStart, csumOffset: csumOffset,
                                                   frameLength: frame, features: features) {
            stats.txMalformed &+= 1; note("tx malformed", "chain \(chain.head): \(why)"); return nil
        }
        if iov.count > 64 {
            // Long gather lists are linearised (IOV_MAX is 1024; rings may be larger).
            var o = 0
            for v in iov { scratch.baseAddress!.advanced(by: o).copyMemory(from: v.iov_base!, byteCount: v.iov_len); o += v.iov_len }
            iov = [iovec(iov_base: scratch.baseAddress, iov_len: o)]
        }
        return frame
    }

    func send(_ frame: Int) {
        let n = iov.withUnsafeBufferPointer { writev(tap.fd, $0.baseAddress, Int32($0.count)) }
        if n < 0 {
            stats.txErrors &+= 1
            note("tx error", "tap write: \(String(cString: strerror(errno)))")
        } else {
            stats.txFrames &+= 1; stats.txBytes &+= UInt64(frame)
        }
    }
}
