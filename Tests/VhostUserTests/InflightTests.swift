import Testing
@testable import VhostUser

@Suite struct InflightTests {
    @Test func layoutStride() {
        #expect(InflightRegion.queueStride(queueSize: 128) == 2112)   // 16 + 2048 → 64-aligned
        #expect(InflightRegion.queueStride(queueSize: 1) == 64)
    }

    /// Out-of-order completion, then a "crash" between publishing used->idx and clearing
    /// the batch's flags: recovery must return exactly the requests not yet used, in
    /// submission order.
    @Test func recoversOutOfOrderAndTornBatch() throws {
        let region = try InflightRegion.create(numQueues: 2, queueSize: 8)
        let q = try #require(region.queue(1))
        q.initializeIfFresh()
        #expect(q.version == 1)
        // Heads 5, 2, 7, 0 taken in that order.
        for (c, h) in [(1, 5), (2, 2), (3, 7), (4, 0)] as [(UInt64, UInt16)] { q.begin(head: h, counter: c) }
        // Batch 1 completes 7 then 5 (out of order); used->idx becomes 2.
        q.linkUsed(head: 7); q.linkUsed(head: 5)
        q.endBatch(heads: [7, 5], usedIdx: 2)
        // Batch 2 completes 0; used->idx published as 3 but the back-end dies before endBatch.
        q.linkUsed(head: 0)
        let r = q.recover(usedRingIdx: 3)
        #expect(r.heads == [2])
        #expect(r.maxCounter == 4)
        #expect(q.usedIdx == 3)
        // The other queue is untouched.
        #expect(region.queue(0)!.recover(usedRingIdx: 0).heads.isEmpty)
        #expect(region.queue(2) == nil)
    }

    @Test func survivesRemap() throws {
        let region = try InflightRegion.create(numQueues: 1, queueSize: 4)
        region.queue(0)!.initializeIfFresh()
        region.queue(0)!.begin(head: 3, counter: 9)
        region.queue(0)!.begin(head: 1, counter: 10)
        // A second mapping of the same fd (what a restarted back-end gets).
        let fd2 = dup(region.fd)
        let again = try InflightRegion(fd: fd2, mmapSize: region.mmapSize, mmapOffset: 0, numQueues: 1, queueSize: 4)
        #expect(again.queue(0)!.recover(usedRingIdx: 0).heads == [3, 1])
        #expect(throws: VhostUserError.self) {
            try InflightRegion(fd: dup(region.fd), mmapSize: 10, mmapOffset: 0, numQueues: 1, queueSize: 4)
        }
        // A front-end's offset of 2^63 or more trapped the conversion to off_t (fuzz-vhost-user).
        let fd3 = dup(region.fd)
        defer { close(fd3) }
        #expect(throws: VhostUserError.self) {
            try InflightRegion(fd: fd3, mmapSize: region.mmapSize, mmapOffset: UInt64.max & ~4095, numQueues: 1, queueSize: 4)
        }
    }

    @Test func payloadReaderIsBounded() throws {
        var w = PayloadWriter(); w.u32(7); w.u16(1)
        var r = PayloadReader(w.bytes)
        #expect(try r.u32() == 7)
        #expect(throws: VhostUserError.self) { try r.u32() }
    }
}

#if canImport(Glibc)
import Glibc
#endif
