import Testing
import Synchronization
import GuestMemory
import VhostUser
import VhostUserTesting
import Virtio
@testable import BlockBackend
#if canImport(Glibc)
import Glibc
#endif

/// blkback's device and back-end on a thread of their own, serving the synthetic driver
/// (one queue of 64), for migration dirty-log checks.
final class InProcessBlk: @unchecked Sendable {
    let scratch: Scratch
    let backend: VhostUserBackend
    let client: VirtioBlockClient
    /// Set when the back-end's ``VhostUserBackend/run()`` returned.
    let done = Atomic<Bool>(false)

    init() throws {
        scratch = try Scratch()
        let img = try BlockImage.open(scratch.image, readOnly: false, sharedWrite: false)
        let b = try VhostUserBackend(device: VirtioBlockDevice(image: img), listenFd: try vhostUserListen(path: scratch.socket))
        backend = b
        client = try VirtioBlockClient(socketPath: scratch.socket, numQueues: 1, queueSize: 64, depth: 8, maxRequestBytes: 65536)
        spawnThread { [self] in try? b.run(); self.done.store(true, ordering: .releasing) }
        try client.connect()
    }

    func stop() {
        backend.stop()
        for _ in 0..<200 where !done.load(ordering: .acquiring) { usleep(5000) }
    }

    /// used->idx of queue 0 as the driver sees it.
    var usedIdx: UInt16 { (try? client.memory.load(at: client.queues[0].driver.usedRing + 2)) ?? 0 }

    /// Pages of queue 0's used ring one completion at `usedIdx` writes: the element, used->idx
    /// and avail_event (VIRTIO_F_EVENT_IDX is negotiated).
    func usedRingPages(completionAt usedIdx: UInt16) -> Set<UInt64> {
        let u = client.queues[0].driver.usedRing, n = UInt64(client.queueSize)
        return DirtyBitmap.pages(u + 4 + 8 * UInt64(usedIdx % client.queueSize), 8)
            .union(DirtyBitmap.pages(u + 2, 2)).union(DirtyBitmap.pages(u + 4 + 8 * n, 2))
    }
}

/// DESIGN.md "Back-ends during migration", vhost-user.rst "Migration": while VHOST_F_LOG_ALL
/// is negotiated, every page blkback writes is marked in the SET_LOG_BASE bitmap.
@Suite(.serialized) struct BlkDirtyLogTests {
    @Test func diskReadMarksExactlyItsBuffersAndTheUsedRing() throws {
        let t = try InProcessBlk()
        defer { t.stop() }
        let c = t.client
        #expect(c.frontend.deviceFeatures & vhostFLogAll != 0)
        #expect(c.frontend.protocolFeatures & VhostUserProtocolFeature.logShmfd != 0)
        let data = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        #expect(try c.write(sector: 8, data) == VirtioBlk.sOK)

        let log = try DirtyBitmap(size: 4096)       // 128 MiB of guest memory
        try c.frontend.setLogBase(fd: log.fd, size: UInt64(log.size))
        // A log base alone logs nothing: LOG_ALL is not negotiated yet.
        #expect(try c.read(sector: 8, count: 8192) == data)
        #expect(log.markedPages.isEmpty)

        try c.frontend.setDirtyLogging(true)
        var before = t.usedIdx
        let r = try c.run(0, type: VirtioBlk.tIn, sector: 8, bytes: 8192)
        #expect(r.status == VirtioBlk.sOK)
        #expect(Array(UnsafeRawBufferPointer(rebasing: c.data(0, r.slot)[0..<8192])) == data)
        let a = c.slotAddresses(0, r.slot)
        let expected = DirtyBitmap.pages(a.data, 8192).union(DirtyBitmap.pages(a.status, 1)).union(t.usedRingPages(completionAt: before))
        #expect(Set(log.markedPages) == expected)
        #expect(expected.count >= 4)   // two data pages, the status page, the used ring

        // A disk write puts nothing in guest memory but its status byte and the used ring.
        log.clear()
        before = t.usedIdx
        let s = c.queues[0].freeSlots.last!
        #expect(try c.write(sector: 100, data) == VirtioBlk.sOK)
        #expect(Set(log.markedPages) == DirtyBitmap.pages(c.slotAddresses(0, s).status, 1).union(t.usedRingPages(completionAt: before)))

        // Migration over: LOG_ALL cleared, nothing marked any more.
        try c.frontend.setDirtyLogging(false)
        log.clear()
        #expect(try c.read(sector: 8, count: 8192) == data)
        #expect(log.markedPages.isEmpty)
        #expect(t.backend.unloggedWrites == 0)
    }

    @Test func tooSmallOrShortLogIsSurvived() throws {
        let t = try InProcessBlk()
        defer { t.stop() }
        let c = t.client
        // A log file shorter than the size claimed is refused (touching it would be SIGBUS).
        let short = try DirtyBitmap(size: 1 << 20, fileSize: 4096)
        #expect(throws: VhostUserError.rejected(.setLogBase)) { try c.frontend.setLogBase(fd: short.fd, size: 1 << 20) }
        // A log covering only the first 32 KiB of guest memory: the rings and buffers lie
        // above it, so each write is counted and the device goes on serving.
        let tiny = try DirtyBitmap(size: 1)
        try c.frontend.setLogBase(fd: tiny.fd, size: 1)
        try c.frontend.setDirtyLogging(true)
        let data = [UInt8](repeating: 0x5a, count: 4096)
        #expect(try c.write(sector: 3, data) == VirtioBlk.sOK)
        #expect(try c.read(sector: 3, count: 4096) == data)
        #expect(tiny.markedPages.isEmpty)
        #expect(t.backend.unloggedWrites > 0)
        #expect(try c.frontend.getStatus() & VirtioDeviceStatus.needsReset == 0)
    }

    @Test func logIsKeptAcrossReconnect() throws {
        let t = try InProcessBlk()
        defer { t.stop() }
        let c = t.client
        let log = try DirtyBitmap(size: 4096)
        try c.frontend.setLogBase(fd: log.fd, size: UInt64(log.size))
        try c.frontend.setDirtyLogging(true)
        // The front-end reconnects with LOG_ALL and restarts its rings before it would send
        // the log again: the back-end logs into the area it kept.
        c.frontend.disconnect()
        try c.frontend.reconnect(timeoutMs: 5000)
        log.clear()
        let before = t.usedIdx
        let r = try c.run(0, type: VirtioBlk.tIn, sector: 0, bytes: 4096)
        #expect(r.status == VirtioBlk.sOK)
        let a = c.slotAddresses(0, r.slot)
        #expect(Set(log.markedPages) == DirtyBitmap.pages(a.data, 4096).union(DirtyBitmap.pages(a.status, 1)).union(t.usedRingPages(completionAt: before)))
    }
}
