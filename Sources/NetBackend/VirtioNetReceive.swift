// netback's receive path (tap → guest, virtio 1.2 §5.1.6.3-4): frames read from the tap
// straight into the guest's receive buffers.
import Virtio
import VhostUser
#if canImport(Glibc)
import Glibc
#endif

/// One receive chain taken from the avail ring and checked: device-writable buffers only,
/// each inside guest memory, at least one byte in all. Its non-empty buffers' host memory
/// is `rxIov[iovStart ..< iovStart + iovCount]` of the device, `room` bytes together.
struct RxChain {
    var chain: DescriptorChain
    var iovStart: Int
    var iovCount: Int
    var room: Int
}

extension VirtioNetDevice {
    /// Frames moved per call before the event loop serves other descriptors (transmit, the
    /// vhost-user connection).
    static let rxBudget = 64
    /// Frames between used-ring publications within a call; each publication sends at most
    /// one notification, and only when the driver asked for it (§2.7.7).
    static let rxBatch = 16
    /// iovec entries one readv takes (IOV_MAX); the last is the bounce buffer.
    static let rxMaxIov = 1024

    func receive() {
        do { try receiveFrames() } catch { rxRing?.fail(error.description) }
    }

    /// Receive-buffer bytes to line up before reading a frame with MRG_RXBUF: the largest
    /// frame (header included) the tap may hand over with the offloads set on it.
    var rxWanted: Int {
        let gso = TapDevice.offloads(forGuestFeatures: features) & (TapDevice.offloadTSO4 | TapDevice.offloadTSO6 | TapDevice.offloadUFO)
        return gso != 0 ? Self.rxBufferSize : headerLength + Int(config.mtu) + 18
    }

    /// Moves frames from the tap into receive chains until the tap is empty, the guest has
    /// no buffers left, or ``rxBudget`` frames are done.
    ///
    /// Chains taken but not used stay mapped for the next call, while the queue's avail
    /// cursor is put back to the first of them at every return, so GET_VRING_BASE (a stop,
    /// a restart, a migration) always hands them back to the driver.
    /// - Throws: ``VirtioError`` when the ring can no longer be trusted.
    func receiveFrames() throws(VirtioError) {
        guard let ring = rxRing else { setTapWatch(false); return }
        let q = ring.queue
        resumeChains(q)
        let mergeable = features & VirtioNetFeature.mrgRxbuf != 0
        let wanted = mergeable ? rxWanted : 1
        var pending = 0
        defer {
            q.setLastAvailIdx(rxFirstIdx &+ UInt16(truncatingIfNeeded: rxNext))
            if pending > 0 { ring.publishUsed(); ring.notifyIfNeeded() }
        }
        var frames = 0
        while frames < Self.rxBudget {
            if rxLen > 0 {
                // A frame in the bounce buffer: it goes first, once the guest has room for it.
                guard try deliverBounced(q, ring: ring, mergeable: mergeable, pending: &pending) else { setTapWatch(false); return }
            } else {
                try takeChains(q, ring: ring, room: wanted, pending: &pending)
                // No receive buffer at all: leave frames in the tap until the driver kicks.
                guard rxNext < rxChains.count else { setTapWatch(false); return }
                guard readFrame(ring: ring, mergeable: mergeable, pending: &pending) else { setTapWatch(true); return }
            }
            frames += 1
            if frames % Self.rxBatch == 0 && pending > 0 { ring.publishUsed(); ring.notifyIfNeeded(); pending = 0 }
        }
        // Budget used: more frames may wait; the (level-triggered) watch calls again.
        setTapWatch(true)
    }

    /// Starts a call: keeps the chains of the last call when they came from the same queue
    /// and nothing moved its avail cursor since, else forgets them.
    func resumeChains(_ q: Virtqueue) {
        guard rxQueue === q, q.lastAvailIdx == rxFirstIdx &+ UInt16(truncatingIfNeeded: rxNext) else {
            dropChains(); rxQueue = q; rxFirstIdx = q.lastAvailIdx; return
        }
        if rxNext > 0 {
            let iovDrop = rxNext < rxChains.count ? rxChains[rxNext].iovStart : rxIov.count
            rxChains.removeFirst(rxNext)
            rxIov.removeFirst(iovDrop)
            for i in rxChains.indices { rxChains[i].iovStart -= iovDrop }
            rxFirstIdx &+= UInt16(truncatingIfNeeded: rxNext)
            rxNext = 0
        }
        q.setLastAvailIdx(rxFirstIdx &+ UInt16(truncatingIfNeeded: rxChains.count))
    }

    /// Forgets every chain taken (their memory may go with the queue).
    func dropChains() {
        rxChains.removeAll(keepingCapacity: true)
        rxIov.removeAll(keepingCapacity: true)
        rxNext = 0; rxRoom = 0; rxQueue = nil
    }

    /// Takes chains from the avail ring until the unused ones hold `room` bytes or the ring
    /// is empty. A chain with device-readable buffers, buffers outside guest memory or no
    /// bytes is returned unused (length 0, which the driver drops) together with the unused
    /// chains taken before it; no frame is half-placed here, so a frame's chains stay
    /// contiguous in the used ring (§5.1.6.4).
    func takeChains(_ q: Virtqueue, ring: VhostUserRing, room: Int, pending: inout Int) throws(VirtioError) {
        if rxNext == rxChains.count && !rxChains.isEmpty {
            let q0 = rxQueue
            dropChains(); rxQueue = q0; rxFirstIdx = q.lastAvailIdx
        }
        while rxRoom < room {
            guard let c = try q.pop() else { return }
            let start = rxIov.count
            var ok = c.readable.isEmpty
            var r = 0
            if ok {
                for b in c.writable where b.length > 0 {
                    do {
                        let p = try q.memory.slice(b)
                        rxIov.append(iovec(iov_base: p.baseAddress, iov_len: p.count)); r += p.count
                    } catch { ok = false; break }
                }
            }
            if ok && r > 0 {
                rxChains.append(RxChain(chain: c, iovStart: start, iovCount: rxIov.count - start, room: r))
                rxRoom += r
                continue
            }
            // Unusable chain: it and the unused chains taken before it go back empty (the
            // driver drops zero-length buffers). Waiting for those to be used first could
            // wait forever: the room a frame needs may lie behind this chain.
            stats.rxMalformed &+= 1; note("rx malformed", "receive chain \(c.head) has readable or invalid buffers")
            for j in rxNext..<rxChains.count { ring.addUsed(rxChains[j].chain, written: 0); pending += 1 }
            ring.addUsed(c, written: 0); pending += 1
            rxChains.removeAll(keepingCapacity: true); rxIov.removeAll(keepingCapacity: true)
            rxNext = 0; rxRoom = 0; rxFirstIdx = q.lastAvailIdx
        }
    }

    /// Reads one frame with a single readv into the unused chains (only the first without
    /// MRG_RXBUF; at most ``rxMaxIov`` - 1 buffers) and the bounce buffer behind them.
    /// A frame that fit is completed; one that did not is gathered into the bounce buffer
    /// (`rxLen`) and the chains stay unused. Returns false when the tap is empty or failed.
    func readFrame(ring: VhostUserRing, mergeable: Bool, pending: inout Int) -> Bool {
        let hl = headerLength
        let first = rxChains[rxNext].iovStart
        var end = rxNext, iovEnd = first, room = 0
        while end < rxChains.count {
            let c = rxChains[end]
            let take = min(c.iovCount, Self.rxMaxIov - 1 - (iovEnd - first))
            if take <= 0 { break }
            for v in rxIov[c.iovStart..<(c.iovStart + take)] { room += v.iov_len }
            iovEnd = c.iovStart + take
            end += 1
            if !mergeable || take < c.iovCount { break }
        }
        // The bounce buffer goes in the slot after the last buffer used, put back after.
        let bounce = iovec(iov_base: rxBuf.baseAddress, iov_len: rxBuf.count)
        let saved: iovec? = iovEnd < rxIov.count ? rxIov[iovEnd] : nil
        if saved != nil { rxIov[iovEnd] = bounce } else { rxIov.append(bounce) }
        let n = rxIov.withUnsafeBufferPointer { readv(tap.fd, $0.baseAddress! + first, Int32(iovEnd - first + 1)) }
        let err = errno
        if let s = saved { rxIov[iovEnd] = s } else { rxIov.removeLast() }
        if n < 0 {
            // EAGAIN: the tap is empty. Anything else is the tap's fault: say so (once or
            // so); the loop calls again while the tap reports readable.
            if err != EAGAIN && err != EINTR { note("tap read error", String(cString: strerror(err))) }
            return false
        }
        if n < hl + 14 { stats.rxDropped &+= 1; note("rx dropped", "short frame of \(n) bytes from the tap"); return true }
        if n <= room {
            complete(n, ring: ring, pending: &pending)
            return true
        }
        if n > rxBuf.count || n - room > rxBuf.count {
            stats.rxDropped &+= 1; note("rx dropped", "frame of \(n) bytes from the tap exceeds \(rxBuf.count)"); return true
        }
        // The guest had too little room: the whole frame goes to the bounce buffer (its tail
        // is there already) and waits for buffers; the chains it was read into stay unused.
        let base = rxBuf.baseAddress!
        (base + room).copyMemory(from: base, byteCount: n - room)
        var off = 0
        for v in rxIov[first..<iovEnd] where off < room {
            let k = min(v.iov_len, room - off)
            (base + off).copyMemory(from: v.iov_base!, byteCount: k)
            off += k
        }
        rxLen = n
        return true
    }

    /// Completes a frame of `n` bytes already in the unused chains from `rxNext` on: writes
    /// num_buffers into its header (in guest memory) and puts the chains in the used ring.
    func complete(_ n: Int, ring: VhostUserRing, pending: inout Int) {
        var left = n, k = 0
        while left > 0 { left -= min(rxChains[rxNext + k].room, left); k += 1 }
        if headerLength == VirtioNetHeader.size {
            let nb = UInt16(k)
            storeHeaderByte(VirtioNetHeader.numBuffersOffset, UInt8(nb & 0xff))
            storeHeaderByte(VirtioNetHeader.numBuffersOffset + 1, UInt8(nb >> 8))
        }
        left = n
        for j in rxNext..<(rxNext + k) {
            let w = min(rxChains[j].room, left)
            ring.addUsed(rxChains[j].chain, written: UInt32(w))
            left -= w; rxRoom -= rxChains[j].room
        }
        rxNext += k; pending += k
        stats.rxFrames &+= 1; stats.rxBytes &+= UInt64(n - headerLength)
    }

    /// Writes one header byte at frame offset `o` of the frame starting in chain `rxNext`
    /// (the header may straddle buffers, even chains, of a driver that posts tiny ones).
    func storeHeaderByte(_ o: Int, _ b: UInt8) {
        var off = 0
        for v in rxIov[rxChains[rxNext].iovStart...] {
            if o < off + v.iov_len { v.iov_base!.storeBytes(of: b, toByteOffset: o - off, as: UInt8.self); return }
            off += v.iov_len
        }
    }

    /// Copies the frame waiting in the bounce buffer into chains: as many as it needs with
    /// MRG_RXBUF, else the first, which must hold it all (or the frame is dropped, the
    /// chain kept). Returns false when the guest has not posted enough buffers yet.
    func deliverBounced(_ q: Virtqueue, ring: VhostUserRing, mergeable: Bool, pending: inout Int) throws(VirtioError) -> Bool {
        try takeChains(q, ring: ring, room: mergeable ? rxLen : 1, pending: &pending)
        guard rxNext < rxChains.count else { return false }
        let hl = headerLength
        if !mergeable && rxChains[rxNext].room < rxLen {
            stats.rxDropped &+= 1; note("rx dropped", "frame of \(rxLen - hl) bytes larger than the receive buffer (\(rxChains[rxNext].room - hl) bytes)")
            rxLen = 0
            return true
        }
        guard rxRoom >= rxLen else { return false }
        // The chains' buffers follow each other in rxIov: one pass fills them in order.
        var off = 0
        for v in rxIov[rxChains[rxNext].iovStart...] where off < rxLen {
            let m = min(v.iov_len, rxLen - off)
            v.iov_base!.copyMemory(from: rxBuf.baseAddress! + off, byteCount: m)
            off += m
        }
        // Everything is in guest memory now: the header is completed there.
        complete(rxLen, ring: ring, pending: &pending)
        rxLen = 0
        return true
    }
}
