// Per-queue state of the back-end: what SET_VRING_* set, starting, stopping, breaking a
// ring, and handing rings to a driven device.
import CLinux
import GuestMemory
import Virtio
#if canImport(Glibc)
import Glibc
#endif

extension VhostUserBackend {
    /// Per-queue state as the front-end set it up (vhost-user.rst SET_VRING_*) and the
    /// device view built from it once the ring starts.
    struct Vring {
        var num: UInt16 = 0
        var descUser: UInt64 = 0, usedUser: UInt64 = 0, availUser: UInt64 = 0
        var addrSet = false
        /// SET_VRING_ADDR flags (``vhostVringFLog``) and the guest-physical address at
        /// which writes to the used ring are logged.
        var flags: UInt32 = 0
        var logGuestAddr: UInt64 = 0
        var base: UInt16 = 0
        var kick: Int32 = -1, call: Int32 = -1, err: Int32 = -1
        var enabled = false
        var started = false
        var broken = false
        var queue: Virtqueue?
        var replay: [UInt16] = []
        var counter: UInt64 = 1
    }

    /// Offers ring `q` to a driven device when it became usable, or takes it back.
    func syncDriven(_ q: Int) {
        guard let d = driven else { return }
        let v = vrings[q]
        let live = v.started && v.enabled && !v.broken ? v.queue : nil
        if live === drivenRings[q]?.queue { return }
        let ring = live.map { VhostUserRing(queue: $0, backend: self, index: q) }
        drivenRings[q] = ring
        d.queueReady(q, ring: ring)
        // A notification lost while the back-end was away (restart) would leave the
        // driver waiting: one spurious call on every (re)start costs nothing.
        ring?.notify()
    }

    func resetVring(_ q: Int) {
        stopVring(q)
        if vrings[q].call >= 0 { close(vrings[q].call) }
        if vrings[q].err >= 0 { close(vrings[q].err) }
        vrings[q] = Vring()
    }

    func stopVring(_ q: Int) {
        drain()
        generation[q] &+= 1
        if vrings[q].kick >= 0 { remove(vrings[q].kick); close(vrings[q].kick); vrings[q].kick = -1 }
        if let queue = vrings[q].queue { vrings[q].base = queue.lastAvailIdx &- UInt16(vrings[q].replay.count) }
        vrings[q].queue = nil
        vrings[q].started = false
        vrings[q].replay = []
        syncDriven(q)
    }

    /// Builds the device view of ring `q` and sets up in-flight replay.
    func activate(_ q: Int, resumeAt base: UInt16) {
        guard let mem, vrings[q].num > 0, vrings[q].addrSet else { return }
        guard let d = mem.guestPhys(user: vrings[q].descUser), let a = mem.guestPhys(user: vrings[q].availUser),
              let u = mem.guestPhys(user: vrings[q].usedUser) else { markBroken(q, "ring address not in the memory table"); return }
        let queue: Virtqueue
        do { queue = try Virtqueue(memory: mem.memory, size: vrings[q].num, descTable: d, availRing: a, usedRing: u, features: acked, lastAvailIdx: base) }
        catch { markBroken(q, "\(error)"); return }
        vrings[q].started = true
        vrings[q].queue = queue
        vrings[q].replay = []
        if driven != nil { return syncDriven(q) }
        if let iq = inflight?.queue(q), iq.size == vrings[q].num {
            iq.initializeIfFresh()
            let (heads, maxC) = iq.recover(usedRingIdx: queue.publishedUsedIdx)
            queue.setLastAvailIdx(queue.publishedUsedIdx &+ UInt16(truncatingIfNeeded: heads.count))
            vrings[q].replay = heads
            vrings[q].counter = maxC + 1
            if !heads.isEmpty { log("vhost-user: queue \(q): resubmitting \(heads.count) in-flight requests") }
        }
    }

    func markBroken(_ q: Int, _ why: String) {
        guard !vrings[q].broken else { return }
        vrings[q].broken = true
        log("vhost-user: queue \(q) broken (DEVICE_NEEDS_RESET): \(why)")
        if vrings[q].err >= 0 { var one: UInt64 = 1; _ = write(vrings[q].err, &one, 8) }
        syncDriven(q)
    }
}
