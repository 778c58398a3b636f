import CLinux
import GuestMemory
import NetBackend
import Virtio
import VhostUser
#if canImport(Glibc)
import Glibc
#endif

/// A synthetic virtio-net *driver* behind a vhost-user front-end: it plays the guest for
/// tests and benchmarks (the `vhost-user-frontend` net modes). Guest memory is a memfd of
/// two regions: region 0 (1 MiB) holds both rings, region 1 the receive buffers (one
/// `rxBufferBytes` buffer per descriptor), the transmit slots (4 KiB each) and a 256 KiB
/// area for large or hand-built frames.
public final class VirtioNetClient: @unchecked Sendable {
    public let memory: GuestMemory
    public let frontend: VhostUserFrontend
    public let queueSize: UInt16
    public let rx: VirtqueueDriver, tx: VirtqueueDriver
    public let rxKick: Int32, rxCall: Int32, txKick: Int32, txCall: Int32, rxErr: Int32, txErr: Int32
    /// Bytes per receive buffer (one descriptor per receive chain).
    public let rxBufferBytes: Int
    /// Guest-physical bases of the receive buffers, transmit slots and the large area.
    public let rxBase: UInt64, txBase: UInt64, bigBase: UInt64
    public static let txSlotBytes = 4096
    public static let bigBytes = 256 << 10
    /// Header length in use (12 with VERSION_1), after ``connect()``.
    public private(set) var headerLength = VirtioNetHeader.size
    /// Config space after ``connect()``.
    public private(set) var config: VirtioNetConfig?
    var txFree: [Int]
    var txSlotOfHead: [UInt16: Int] = [:]
    var rxSlotOfHead: [UInt16: Int] = [:]

    /// - Parameters:
    ///   - wantedFeatures: virtio-net features to accept if offered (default: VERSION_1,
    ///     ring features, MAC, STATUS, MRG_RXBUF; no offloads).
    ///   - rxBufferBytes: size of each receive buffer (2048 for mergeable buffers; 65562+ without).
    public init(socketPath: String, queueSize: UInt16 = 256,
                wantedFeatures: UInt64 = VirtioNetDevice.baseFeatures, rxBufferBytes: Int = 2048) throws {
        self.queueSize = queueSize
        self.rxBufferBytes = rxBufferBytes
        let n = UInt64(queueSize)
        rxBase = 0x100000
        txBase = rxBase + ((n * UInt64(rxBufferBytes) + 4095) & ~4095)
        bigBase = txBase + n * UInt64(Self.txSlotBytes)
        let end = (bigBase + UInt64(Self.bigBytes) + 0xfffff) & ~0xfffff
        memory = try GuestMemory.memfd(name: "net-client", layout: [(0, 0x100000), (0x100000, end - 0x100000)])
        frontend = VhostUserFrontend(socketPath: socketPath, memory: memory, wantedFeatures: wantedFeatures)
        rx = try VirtqueueDriver(memory: memory, size: queueSize, base: 0x10000)
        tx = try VirtqueueDriver(memory: memory, size: queueSize, base: 0x80000)
        func efd(_ nb: Bool) -> Int32 { eventfd(0, Int32(EFD_CLOEXEC) | (nb ? Int32(EFD_NONBLOCK) : 0)) }
        rxKick = efd(false); txKick = efd(false); rxCall = efd(true); txCall = efd(true); rxErr = efd(true); txErr = efd(true)
        txFree = Array((0..<Int(queueSize)).reversed())
    }

    deinit { for f in [rxKick, rxCall, txKick, txCall, rxErr, txErr] { close(f) } }

    func setups() -> [VhostUserFrontend.QueueSetup] {
        [.init(index: 0, size: queueSize, descTable: rx.descTable, availRing: rx.availRing, usedRing: rx.usedRing, kickFd: rxKick, callFd: rxCall, errFd: rxErr),
         .init(index: 1, size: queueSize, descTable: tx.descTable, availRing: tx.availRing, usedRing: tx.usedRing, kickFd: txKick, callFd: txCall, errFd: txErr)]
    }

    /// Connects, negotiates, reads the config space, starts both rings and posts every
    /// receive buffer.
    public func connect() throws {
        try frontend.connect()
        let f = frontend.negotiatedFeatures
        headerLength = f & (VirtioFeature.version1 | VirtioNetFeature.mrgRxbuf) != 0 ? VirtioNetHeader.size : VirtioNetHeader.legacySize
        if frontend.protocolFeatures & VhostUserProtocolFeature.config != 0 {
            config = VirtioNetConfig(bytes: try frontend.getConfig(offset: 0, count: 12))
        }
        for s in setups() { try frontend.startQueue(s) }
        for i in 0..<Int(queueSize) where !rxSlotOfHead.values.contains(i) { try postRx(i) }
        kick(rxKick)
    }

    /// Reconnects after the back-end restarted (same rings, resuming at the used index).
    public func reconnect(timeoutMs: Int = 30_000) throws {
        try frontend.reconnect(timeoutMs: timeoutMs)
    }

    func postRx(_ slot: Int) throws {
        let a = rxBase + UInt64(slot * rxBufferBytes)
        guard let h = try rx.add([ChainBuffer(address: a, length: UInt32(rxBufferBytes), writable: true)]) else { return }
        rxSlotOfHead[h] = slot
        try rx.publish(h)
    }

    public func kick(_ fd: Int32) { var one: UInt64 = 1; _ = Glibc.write(fd, &one, 8) }

    /// Queues one frame (header of zeros unless given) without kicking; returns false when
    /// no transmit slot is free (reap first). Frames up to 4 KiB - header.
    @discardableResult
    public func queueFrame(_ frame: [UInt8], header: [UInt8]? = nil) throws -> Bool {
        reapTx()
        guard let s = txFree.popLast() else { return false }
        let a = txBase + UInt64(s * Self.txSlotBytes)
        let h = header ?? [UInt8](repeating: 0, count: headerLength)
        let p = try memory.slice(at: a, count: h.count + frame.count)
        p.copyBytes(from: h + frame)
        guard let head = try tx.add([ChainBuffer(address: a, length: UInt32(p.count), writable: false)]) else { txFree.append(s); return false }
        txSlotOfHead[head] = s
        try tx.publish(head)
        return true
    }

    /// Queues a hand-built transmit chain (malformed-chain tests); its buffers are not slots.
    public func queueChain(_ buffers: [ChainBuffer]) throws -> Bool {
        reapTx()
        guard let head = try tx.add(buffers) else { return false }
        try tx.publish(head)
        return true
    }

    /// Sends one frame and kicks.
    public func send(_ frame: [UInt8], header: [UInt8]? = nil) throws {
        var tries = 0
        while try !queueFrame(frame, header: header) {
            tries += 1
            if tries > 1000 { throw NetBackendError("transmit ring stays full") }
            waitTx(timeoutMs: 5)
        }
        kick(txKick)
    }

    /// Frees completed transmit slots; returns how many completed.
    @discardableResult
    public func reapTx() -> Int {
        var n = 0
        while let (id, _) = try? tx.pollUsed() {
            if let s = txSlotOfHead.removeValue(forKey: id) { txFree.append(s) }
            n += 1
        }
        return n
    }

    /// Transmit chains not yet completed.
    public var txInFlight: Int { Int(queueSize) - txFree.count }

    /// Waits up to `timeoutMs` for a transmit completion notification.
    public func waitTx(timeoutMs: Int32) {
        try? tx.setUsedEvent(tx.lastUsedIdx)
        if reapTx() > 0 { return }
        var p = pollfd(fd: txCall, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, timeoutMs)
        var v: UInt64 = 0
        _ = Glibc.read(txCall, &v, 8)
        reapTx()
    }

    /// Received frames (Ethernet, header stripped) with their virtio-net headers; waits up
    /// to `timeoutMs` for the first when none is ready. Reposts the buffers.
    public func receive(timeoutMs: Int32) throws -> [(header: [UInt8], frame: [UInt8])] {
        var out: [(header: [UInt8], frame: [UInt8])] = []
        func drain() throws {
            while let (id, len) = try rx.pollUsed() {
                guard let s = rxSlotOfHead.removeValue(forKey: id) else { continue }
                let a = rxBase + UInt64(s * rxBufferBytes)
                var bytes = Array(try memory.slice(at: a, count: Int(min(len, UInt32(rxBufferBytes)))))
                try postRx(s)
                guard bytes.count >= headerLength else { continue }
                var nb = headerLength == 12 ? Int(UInt16(bytes[10]) | UInt16(bytes[11]) << 8) : 1
                while nb > 1 {
                    // the rest of a merged frame follows in the next used entries
                    var more: (id: UInt16, length: UInt32)?
                    for _ in 0..<1000 { more = try rx.pollUsed(); if more != nil { break }; usleep(100) }
                    guard let m = more, let s2 = rxSlotOfHead.removeValue(forKey: m.id) else { throw NetBackendError("merged frame missing a buffer") }
                    bytes += Array(try memory.slice(at: rxBase + UInt64(s2 * rxBufferBytes), count: Int(min(m.length, UInt32(rxBufferBytes)))))
                    try postRx(s2)
                    nb -= 1
                }
                out.append((Array(bytes[..<headerLength]), Array(bytes[headerLength...])))
            }
        }
        try drain()
        if out.isEmpty && timeoutMs != 0 {
            try rx.setUsedEvent(rx.lastUsedIdx)
            try drain()
            if out.isEmpty {
                var p = pollfd(fd: rxCall, events: Int16(POLLIN), revents: 0)
                _ = poll(&p, 1, timeoutMs)
                var v: UInt64 = 0
                _ = Glibc.read(rxCall, &v, 8)
                try drain()
            }
        }
        if !out.isEmpty { kick(rxKick) }
        return out
    }

    /// Whether the back-end flagged a queue broken (error eventfd or NEEDS_RESET).
    public func needsReset() -> Bool {
        for fd in [rxErr, txErr] {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 0) > 0 { return true }
        }
        if let st = try? frontend.getStatus(), st & VirtioDeviceStatus.needsReset != 0 { return true }
        return false
    }
}
