import Testing
import GuestMemory
@testable import Virtio

/// A device queue and a driver queue over the same memfd guest memory (two regions so
/// buffers can straddle a region boundary).
struct Rig {
    let mem: GuestMemory
    let driver: VirtqueueDriver
    let device: Virtqueue
    static let boundary: UInt64 = 0x40000
    init(size: UInt16 = 16, features: UInt64 = VirtioFeature.ringIndirectDesc | VirtioFeature.ringEventIdx) throws {
        mem = try GuestMemory.memfd(name: "vq", layout: [(0, Self.boundary), (Self.boundary, 0x40000)])
        driver = try VirtqueueDriver(memory: mem, size: size, base: 0x10000)
        device = try Virtqueue(memory: mem, size: size, descTable: driver.descTable, availRing: driver.availRing,
                               usedRing: driver.usedRing, features: features)
    }
}

@Suite struct VirtqueueTests {
    @Test func roundTripDirectAndIndirect() throws {
        let r = try Rig()
        let h = try #require(try r.driver.add([ChainBuffer(address: 0x1000, length: 16, writable: false),
                                               ChainBuffer(address: 0x2000, length: 512, writable: true)]))
        try r.driver.publish(h)
        let c = try #require(try r.device.pop())
        #expect(c.head == h)
        #expect(c.readable.count == 1 && c.writable.count == 1 && c.wellOrdered)
        #expect(c.writableLength == 512)
        #expect(try r.device.pop() == nil)
        r.device.addUsed(head: c.head, length: 513)
        r.device.publishUsed()
        #expect(r.device.needsNotification())
        let u = try #require(try r.driver.pollUsed())
        #expect(u.id == h && u.length == 513)

        let i = try #require(try r.driver.addIndirect([ChainBuffer(address: 0x1000, length: 16, writable: false),
                                                       ChainBuffer(address: 0x3000, length: 8, writable: true),
                                                       ChainBuffer(address: 0x4000, length: 1, writable: true)], table: 0x5000))
        try r.driver.publish(i)
        let ci = try #require(try r.device.pop())
        #expect(ci.buffers.count == 3 && ci.head == i && ci.firstWritable == 1)
    }

    @Test func eventIdxSuppressesNotifications() throws {
        let r = try Rig()
        for _ in 0..<3 {
            let h = try #require(try r.driver.add([ChainBuffer(address: 0x1000, length: 1, writable: true)]))
            try r.driver.publish(h)
        }
        try r.driver.setUsedEvent(2)   // wake me when entry 2 is used
        var notes: [Bool] = []
        while let c = try r.device.pop() {
            r.device.addUsed(head: c.head, length: 1); r.device.publishUsed()
            notes.append(r.device.needsNotification())
        }
        #expect(notes == [true, false, true])
        // avail_event published for the driver once the ring ran dry.
        let availEvent: UInt16 = try r.mem.load(at: r.driver.usedRing + 4 + 8 * 16)
        #expect(availEvent == 3)
    }

    /// vring_need_event across the 16-bit wrap (virtio 1.1 §2.6.7.2): indices are free-running
    /// and compared modulo 2^16, so a used_event just past 65535 still fires exactly once, at
    /// the entry it names, and avail_event wraps with the avail cursor.
    @Test(arguments: [UInt16(0), UInt16(1), UInt16(65535)])
    func eventIdxAcrossTheWrap(usedEvent: UInt16) throws {
        let mem = try GuestMemory.memfd(name: "vq-wrap", layout: [(0, 0x80000)])
        let driver = try VirtqueueDriver(memory: mem, size: 8, base: 0x10000)
        let start: UInt16 = 65533
        try mem.store(start, at: driver.usedRing + 2)      // used->idx (the device resumes there)
        try driver.resync()
        try driver.forceAvailIdx(start)
        let device = try Virtqueue(memory: mem, size: 8, descTable: driver.descTable, availRing: driver.availRing,
                                   usedRing: driver.usedRing, features: VirtioFeature.ringEventIdx, lastAvailIdx: start)
        for _ in 0..<6 {
            let h = try #require(try driver.add([ChainBuffer(address: 0x40000, length: 1, writable: true)]))
            try driver.publish(h)
        }
        // The first decision after start-up always notifies (nothing was signalled before).
        #expect(device.needsNotification())
        try driver.setUsedEvent(usedEvent)
        var fired: [UInt16] = []
        while let c = try device.pop() {
            device.addUsed(head: c.head, length: 1); device.publishUsed()
            // Entry number (nextUsedIdx - 1) was just used: notify iff it is used_event.
            if device.needsNotification() { fired.append(device.nextUsedIdx &- 1) }
        }
        #expect(fired == [usedEvent])
        #expect(device.publishedUsedIdx == start &+ 6)        // 3, past the wrap
        let availEvent: UInt16 = try mem.load(at: driver.usedRing + 4 + 8 * 8)
        #expect(availEvent == start &+ 6)
    }

    /// Several entries published at once: one notification when used_event lies among them
    /// (also across the wrap), none when it lies before or after them.
    @Test func eventIdxBatchAcrossTheWrap() throws {
        let mem = try GuestMemory.memfd(name: "vq-wrap2", layout: [(0, 0x80000)])
        let driver = try VirtqueueDriver(memory: mem, size: 8, base: 0x10000)
        let start: UInt16 = 65534
        try mem.store(start, at: driver.usedRing + 2)
        try driver.resync()
        try driver.forceAvailIdx(start)
        let device = try Virtqueue(memory: mem, size: 8, descTable: driver.descTable, availRing: driver.availRing,
                                   usedRing: driver.usedRing, features: VirtioFeature.ringEventIdx, lastAvailIdx: start)
        #expect(device.needsNotification())
        func batch(_ n: Int, usedEvent: UInt16) throws -> Bool {
            for _ in 0..<n {
                let h = try #require(try driver.add([ChainBuffer(address: 0x40000, length: 1, writable: true)]))
                try driver.publish(h)
            }
            try driver.setUsedEvent(usedEvent)
            for _ in 0..<n { let c = try #require(try device.pop()); device.addUsed(head: c.head, length: 1) }
            device.publishUsed()
            while try driver.pollUsed() != nil {}
            return device.needsNotification()
        }
        #expect(try batch(4, usedEvent: 0))            // entries 65534, 65535, 0, 1: 0 among them
        #expect(try !batch(2, usedEvent: 0))           // entries 2, 3: 0 is behind
        #expect(try !batch(2, usedEvent: 7))           // entries 4, 5: 7 is ahead
        #expect(try batch(3, usedEvent: 7))            // entries 6, 7, 8
    }

    @Test func loopIsDetected() throws {
        let r = try Rig()
        try r.driver.writeDescriptor(0, address: 0x1000, length: 16, flags: VirtqDescFlag.next, next: 1)
        try r.driver.writeDescriptor(1, address: 0x1000, length: 16, flags: VirtqDescFlag.next, next: 0)
        try r.driver.publish(0)
        #expect(throws: VirtioError.chainLoop(head: 0)) { try r.device.pop() }
        #expect(VirtioError.chainLoop(head: 0).breaksDevice)
    }

    @Test func selfLoopAndNextOutOfRange() throws {
        let r = try Rig()
        try r.driver.writeDescriptor(3, address: 0x1000, length: 16, flags: VirtqDescFlag.next, next: 3)
        try r.driver.publish(3)
        #expect(throws: VirtioError.chainLoop(head: 3)) { try r.device.pop() }
        try r.driver.writeDescriptor(4, address: 0x1000, length: 16, flags: VirtqDescFlag.next, next: 16)
        try r.driver.publish(4)
        #expect(throws: VirtioError.descriptorIndexOutOfRange(16)) { try r.device.pop() }
    }

    @Test func headOutOfRange() throws {
        let r = try Rig()
        try r.driver.publish(16)
        #expect(throws: VirtioError.descriptorIndexOutOfRange(16)) { try r.device.pop() }
    }

    @Test func availIndexJump() throws {
        let r = try Rig()
        try r.driver.forceAvailIdx(17)
        #expect(throws: VirtioError.availIndexJump(lastSeen: 0, now: 17)) { try r.device.pop() }
        // Exactly a full ring is fine.
        let r2 = try Rig()
        try r2.driver.forceAvailIdx(16)
        #expect(try r2.device.pending() == 16)
    }

    @Test func indirectRules() throws {
        // Not negotiated.
        let plain = try Rig(features: 0)
        try plain.driver.writeDescriptor(0, address: 0x5000, length: 16, flags: VirtqDescFlag.indirect, next: 0)
        try plain.driver.publish(0)
        #expect(throws: VirtioError.indirectNotNegotiated(head: 0)) { try plain.device.pop() }

        let r = try Rig()
        // Table length not a multiple of 16, and empty.
        for len: UInt32 in [10, 0] {
            try r.driver.writeDescriptor(0, address: 0x5000, length: len, flags: VirtqDescFlag.indirect, next: 0)
            try r.driver.publish(0)
            #expect(throws: VirtioError.self) { try r.device.pop() }
        }
        // Longer than the queue (17 entries > 16).
        try r.driver.writeDescriptor(0, address: 0x5000, length: 16 * 17, flags: VirtqDescFlag.indirect, next: 0)
        try r.driver.publish(0)
        #expect(throws: VirtioError.self) { try r.device.pop() }
        // Nested.
        try r.mem.store(UInt64(0x6000), at: 0x5000); try r.mem.store(UInt32(16), at: 0x5008)
        try r.mem.store(VirtqDescFlag.indirect, at: 0x500c)
        try r.driver.writeDescriptor(0, address: 0x5000, length: 16, flags: VirtqDescFlag.indirect, next: 0)
        try r.driver.publish(0)
        #expect(throws: VirtioError.badIndirect(head: 0, "nested indirect")) { try r.device.pop() }
        // Loop inside the table.
        try r.mem.store(VirtqDescFlag.next, at: 0x500c); try r.mem.store(UInt16(0), at: 0x500e)
        try r.driver.publish(0)
        #expect(throws: VirtioError.badIndirect(head: 0, "loop in table")) { try r.device.pop() }
        // next outside the table.
        try r.mem.store(UInt16(5), at: 0x500e)
        try r.driver.publish(0)
        #expect(throws: VirtioError.self) { try r.device.pop() }
        // Table outside guest memory, and straddling the end of region 0.
        for a: UInt64 in [1 << 45, Rig.boundary - 16] {
            try r.driver.writeDescriptor(0, address: a, length: 32, flags: VirtqDescFlag.indirect, next: 0)
            try r.driver.publish(0)
            #expect(throws: VirtioError.self) { try r.device.pop() }
        }
        // INDIRECT together with NEXT.
        try r.driver.writeDescriptor(0, address: 0x5000, length: 16, flags: VirtqDescFlag.indirect | VirtqDescFlag.next, next: 1)
        try r.driver.publish(0)
        #expect(throws: VirtioError.self) { try r.device.pop() }
    }

    @Test func buffersAreCheckedOnAccess() throws {
        let r = try Rig()
        let h = try #require(try r.driver.add([
            ChainBuffer(address: Rig.boundary - 8, length: 16, writable: false),   // straddles regions
            ChainBuffer(address: 1 << 50, length: 1, writable: true),              // outside
            ChainBuffer(address: UInt64.max - 3, length: 8, writable: true),       // wraps
            ChainBuffer(address: 0x1000, length: UInt32.max, writable: true),      // enormous
            ChainBuffer(address: 0x1000, length: 0, writable: true),               // zero length
        ]))
        try r.driver.publish(h)
        let c = try #require(try r.device.pop())
        #expect(c.buffers.count == 5)
        for b in c.buffers.prefix(4) { #expect(throws: VirtioError.self) { try r.mem.slice(b) } }
        #expect(try r.mem.slice(c.buffers[4]).count == 0)
        #expect(!VirtioError.memory("x").breaksDevice)
    }

    @Test func readableAfterWritableIsFlagged() throws {
        let r = try Rig()
        let h = try #require(try r.driver.add([ChainBuffer(address: 0x1000, length: 1, writable: true),
                                               ChainBuffer(address: 0x2000, length: 16, writable: false)]))
        try r.driver.publish(h)
        let c = try #require(try r.device.pop())
        #expect(!c.wellOrdered)
    }

    @Test func badRingSetup() throws {
        let mem = try GuestMemory.memfd(name: "vq", layout: [(0, 0x10000)])
        #expect(throws: VirtioError.badQueueSize(3)) {
            try Virtqueue(memory: mem, size: 3, descTable: 0, availRing: 0x1000, usedRing: 0x2000, features: 0)
        }
        #expect(throws: VirtioError.self) {   // misaligned descriptor table
            try Virtqueue(memory: mem, size: 8, descTable: 8, availRing: 0x1000, usedRing: 0x2000, features: 0)
        }
        #expect(throws: VirtioError.self) {   // used ring past the end of memory
            try Virtqueue(memory: mem, size: 256, descTable: 0, availRing: 0x1000, usedRing: 0xff00, features: 0)
        }
    }

    @Test func resumesFromPublishedUsedIndex() throws {
        let r = try Rig()
        for _ in 0..<3 {
            let h = try #require(try r.driver.add([ChainBuffer(address: 0x1000, length: 1, writable: true)]))
            try r.driver.publish(h)
            let c = try #require(try r.device.pop())
            r.device.addUsed(head: c.head, length: 1); r.device.publishUsed()
        }
        let again = try Virtqueue(memory: r.mem, size: 16, descTable: r.driver.descTable, availRing: r.driver.availRing,
                                  usedRing: r.driver.usedRing, features: 0, lastAvailIdx: 3)
        #expect(again.nextUsedIdx == 3 && again.lastAvailIdx == 3)
        #expect(try again.pop() == nil)
    }
}
