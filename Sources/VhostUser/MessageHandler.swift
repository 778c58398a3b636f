// The back-end's protocol state machine: one front-end message at a time
// (vhost-user.rst "Front-end message types").
import CLinux
import GuestMemory
import Virtio
#if canImport(Glibc)
import Glibc
#endif

extension VhostUserBackend {
    func reply(_ m: VhostUserMessage, _ payload: [UInt8], fds: [Int32] = []) throws(VhostUserError) {
        try writeMessage(conn, VhostUserMessage(request: m.request, flags: VhostUserFlag.version | VhostUserFlag.reply, payload: payload, fds: fds))
    }
    func replyU64(_ m: VhostUserMessage, _ v: UInt64) throws(VhostUserError) {
        var w = PayloadWriter(); w.u64(v); try reply(m, w.bytes)
    }

    /// The vring a message names: the whole 32-bit `index` of a vring state (vhost-user.rst
    /// "Vring state description"), or bits 0-7 of a vring descriptor message's u64 (bit 8 the
    /// invalid-fd flag, the rest reserved and required zero).
    /// - Throws: `protocolViolation` naming the index when no such vring exists.
    func vringIndex(_ raw: UInt64, descriptorMessage: Bool = false) throws(VhostUserError) -> Int {
        if descriptorMessage && raw & ~UInt64(0x1ff) != 0 {
            throw .protocolViolation("reserved bits set in vring descriptor message 0x\(String(raw, radix: 16))")
        }
        let v = descriptorMessage ? raw & 0xff : raw
        guard v < UInt64(vrings.count) else { throw .protocolViolation("vring index \(v) >= \(vrings.count)") }
        return Int(v)
    }

    func dispatch(_ m: VhostUserMessage) throws(VhostUserError) {
        var fds = m.fds
        defer { for f in fds { close(f) } }   // whatever a handler did not take
        func takeFd() -> Int32? { fds.isEmpty ? nil : fds.removeFirst() }
        var r = PayloadReader(m.payload)
        var ok = true
        guard let req = VhostUserRequest(rawValue: m.request) else {
            if m.flags & VhostUserFlag.needReply != 0 { try replyU64(m, 1) }
            return
        }
        do throws(VhostUserError) {
            switch req {
            case .getFeatures:
                return try replyU64(m, device.deviceFeatures | vhostUserFProtocolFeatures | vhostFLogAll)
            case .setFeatures:
                let was = loggingAll
                acked = try r.u64()
                device.setNegotiatedFeatures(acked & ~(vhostUserFProtocolFeatures | vhostFLogAll))
                if loggingAll != was {
                    log("vhost-user: dirty logging \(loggingAll ? "on" : "off")\(loggingAll && dirtyLog == nil ? " (no log area yet)" : "")")
                }
                if acked & vhostUserFProtocolFeatures == 0 { for q in vrings.indices { vrings[q].enabled = true } }
            case .getProtocolFeatures:
                return try replyU64(m, Self.supportedProtocolFeatures)
            case .setProtocolFeatures:
                protocolAcked = try r.u64() & Self.supportedProtocolFeatures
            case .setOwner:
                break
            case .resetOwner, .resetDevice:
                for q in vrings.indices { resetVring(q) }
                status = 0
            case .getQueueNum:
                return try replyU64(m, UInt64(device.numQueues))
            case .setMemTable:
                let n = Int(try r.u32()); _ = try r.u32()
                guard n >= 1, n <= 8, fds.count == n else { throw .protocolViolation("SET_MEM_TABLE with \(n) regions and \(fds.count) fds") }
                var table: [VhostUserMemoryRegion] = []
                for _ in 0..<n {
                    table.append(VhostUserMemoryRegion(guestPhysAddr: try r.u64(), size: try r.u64(), userAddr: try r.u64(), mmapOffset: try r.u64()))
                }
                drain()
                let taken = fds; fds = []
                let t: MappedMemoryTable
                do { t = try MappedMemoryTable(table: table, fds: taken) } catch { for f in taken { close(f) }; throw error }
                mem = t
                // Rings already running move to the new mapping at the same position.
                for q in vrings.indices where vrings[q].started {
                    let last = vrings[q].queue?.lastAvailIdx ?? vrings[q].base
                    vrings[q].queue = nil
                    activate(q, resumeAt: last)
                }
            case .setVringNum:
                let q = try vringIndex(UInt64(try r.u32())); let num = try r.u32()
                guard num > 0, num <= 32768, num & (num - 1) == 0 else { throw .protocolViolation("vring size \(num)") }
                vrings[q].num = UInt16(num)
            case .setVringAddr:
                let q = try vringIndex(UInt64(try r.u32())); let flags = try r.u32()
                guard flags & ~vhostVringFLog == 0 else { throw .protocolViolation("vring flags 0x\(String(flags, radix: 16))") }
                let desc = try r.u64(), used = try r.u64(), avail = try r.u64()
                let logAddr = r.remaining >= 8 ? try r.u64() : 0   // older peers may stop after avail
                vrings[q].descUser = desc; vrings[q].usedUser = used; vrings[q].availUser = avail
                vrings[q].flags = flags; vrings[q].logGuestAddr = logAddr
                vrings[q].addrSet = true
            case .setVringBase:
                let q = try vringIndex(UInt64(try r.u32())); vrings[q].base = UInt16(truncatingIfNeeded: try r.u32())
            case .getVringBase:
                let q = try vringIndex(UInt64(try r.u32()))
                let usedNow = vrings[q].queue?.publishedUsedIdx
                stopVring(q)
                // Requests are served synchronously, so after a stop nothing is in flight.
                if let u = usedNow, let iq = inflight?.queue(q), iq.size == vrings[q].num { iq.clear(usedIdx: u) }
                var w = PayloadWriter(); w.u32(UInt32(q)); w.u32(UInt32(vrings[q].base))
                return try reply(m, w.bytes)
            case .setVringKick, .setVringCall, .setVringErr:
                let v = try r.u64()
                let q = try vringIndex(v, descriptorMessage: true)
                let fd: Int32 = v & 0x100 != 0 ? -1 : (takeFd() ?? -1)
                if req == .setVringKick {
                    stopVring(q)
                    vrings[q].kick = fd
                    if fd >= 0 { try add(fd, UInt64(q)) }
                    vrings[q].broken = false
                    activate(q, resumeAt: vrings[q].base)
                    process(q)
                } else if req == .setVringCall {
                    if vrings[q].call >= 0 { close(vrings[q].call) }
                    vrings[q].call = fd
                } else {
                    if vrings[q].err >= 0 { close(vrings[q].err) }
                    vrings[q].err = fd
                }
            case .setVringEnable:
                let q = try vringIndex(UInt64(try r.u32()))
                vrings[q].enabled = try r.u32() != 0
                syncDriven(q)
                process(q)
            case .getConfig:
                let off = try r.u32(), size = try r.u32(), flags = try r.u32()
                guard size <= 256 else { throw .protocolViolation("GET_CONFIG of \(size) bytes") }
                var data = device.readConfig(offset: Int(off), count: Int(size))
                data += [UInt8](repeating: 0, count: max(0, Int(size) - data.count))
                var w = PayloadWriter(); w.u32(off); w.u32(size); w.u32(flags); w.raw(Array(data.prefix(Int(size))))
                return try reply(m, w.bytes)
            case .setConfig:
                ok = false  // virtio-blk config is read-only for the driver except writeback
            case .getInflightFd:
                _ = try r.u64(); _ = try r.u64()
                let nq = try r.u16(), qs = try r.u16()
                let region = try InflightRegion.create(numQueues: nq, queueSize: qs)
                for q in 0..<Int(nq) { region.queue(q)?.initializeIfFresh() }
                inflight = region
                // struct VhostUserInflight is 24 bytes: 20 of fields + 4 of padding.
                var w = PayloadWriter(); w.u64(region.mmapSize); w.u64(0); w.u16(nq); w.u16(qs); w.u32(0)
                return try reply(m, w.bytes, fds: [region.fd])
            case .setInflightFd:
                let size = try r.u64(), off = try r.u64(), nq = try r.u16(), qs = try r.u16()
                guard let fd = takeFd() else { throw .protocolViolation("SET_INFLIGHT_FD without fd") }
                do { inflight = try InflightRegion(fd: fd, mmapSize: size, mmapOffset: off, numQueues: nq, queueSize: qs) }
                catch { close(fd); throw error }
            case .setLogBase:
                // With LOG_SHMFD the front-end waits for a reply whatever REPLY_ACK says
                // (vhost-user.rst "Communication"); u64 0 is success, as for an ack.
                let shm = protocolAcked & VhostUserProtocolFeature.logShmfd != 0
                let fd = takeFd()
                do throws(VhostUserError) {
                    guard shm else { throw .protocolViolation("SET_LOG_BASE without VHOST_USER_PROTOCOL_F_LOG_SHMFD") }
                    guard let fd else { throw .protocolViolation("SET_LOG_BASE without fd") }
                    let size = try r.u64(), offset = try r.u64()
                    dirtyLog = try DirtyLog(fd: fd, size: size, offset: offset)
                    unloggedWriteReported = false
                    log("vhost-user: dirty log of \(size) bytes (covers guest memory up to \((size * 8 * DirtyLog.pageSize) >> 20) MiB)")
                } catch {
                    if let fd { close(fd) }
                    // The front-end has moved on from the old log: what cannot be logged is counted.
                    dirtyLog = nil
                    if !shm { throw error }
                    log("vhost-user: SET_LOG_BASE: \(error)")
                    return try replyU64(m, 1)
                }
                if let fd { close(fd) }   // the mapping stays
                return try replyU64(m, 0)
            case .setLogFd:
                guard let fd = takeFd() else { throw .protocolViolation("SET_LOG_FD without fd") }
                if logFd >= 0 { close(logFd) }
                logFd = fd
            case .setStatus:
                status = try r.u64()
            case .getStatus:
                let broken = vrings.contains { $0.broken }
                return try replyU64(m, status | (broken ? UInt64(VirtioDeviceStatus.needsReset) : 0))
            case .setBackendReqFd:
                break
            default:
                ok = false
            }
        } catch {
            if error == .disconnected { throw error }
            log("vhost-user: \(req): \(error)")
            ok = false
        }
        if m.flags & VhostUserFlag.needReply != 0 && protocolAcked & VhostUserProtocolFeature.replyAck != 0 {
            try replyU64(m, ok ? 0 : 1)
        }
    }
}
