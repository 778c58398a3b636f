import CLinux
import ConsoleBackend
import Glibc
import Testing

/// Raw access to the shared page through a second mapping, as a misbehaving peer would have.
final class PeerView {
    let p: UnsafeMutableRawPointer
    init(_ c: ConsoleRingChannel) {
        p = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, c.ringFD, 0)!
    }
    deinit { munmap(p, 4096) }
    subscript(off: Int) -> UInt32 {
        get { p.load(fromByteOffset: off, as: UInt32.self) }
        set { p.storeBytes(of: newValue, toByteOffset: off, as: UInt32.self) }
    }
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

extension ConsoleRingChannel {
    func write(output: [UInt8]) -> Int { output.withUnsafeBytes { writeOutput($0) } }
    func write(input: [UInt8]) -> Int { input.withUnsafeBytes { writeInput($0) } }
    func readOutput(max: Int = 4096) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: max)
        let n = b.withUnsafeMutableBytes { readOutput(into: $0) }
        return Array(b[0..<n])
    }
    func readInput(max: Int = 4096) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: max)
        let n = b.withUnsafeMutableBytes { readInput(into: $0) }
        return Array(b[0..<n])
    }
}

@Suite struct RingTests {
    @Test func layoutMatchesXencons() throws {
        let c = try ConsoleRingChannel.create(name: "t")
        let v = PeerView(c)
        #expect(c.write(output: bytes("hi")) == 2)
        #expect(v.p.load(fromByteOffset: 1024, as: UInt8.self) == UInt8(ascii: "h"))
        #expect(v[3084] == 2, "out_prod")
        #expect(v[3080] == 0, "out_cons")
        #expect(c.write(input: bytes("k")) == 1)
        #expect(v.p.load(fromByteOffset: 0, as: UInt8.self) == UInt8(ascii: "k"))
        #expect(v[3076] == 1, "in_prod")
        #expect(c.readInput() == bytes("k"))
        #expect(v[3072] == 1, "in_cons")
        #expect(c.readOutput() == bytes("hi"))
        #expect(v[3080] == 2)
    }

    @Test func memfdIsSealedAndFdsAreCloexec() throws {
        let c = try ConsoleRingChannel.create(name: "t")
        #expect(ftruncate(c.ringFD, 8192) != 0, "sealed against growing")
        #expect(ftruncate(c.ringFD, 0) != 0, "sealed against shrinking")
        for fd in [c.ringFD, c.outEventFD, c.inEventFD] { #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC != 0) }
    }

    @Test func wrapsAroundAndStopsWhenFull() throws {
        let c = try ConsoleRingChannel.create(name: "t")
        let a = (0..<1500).map { UInt8($0 % 251) }
        #expect(c.write(output: a) == 1500)
        #expect(c.readOutput() == a)
        let b = (0..<3000).map { UInt8(($0 * 7) % 253) }
        #expect(c.write(output: b) == 2048, "the out ring holds 2048 bytes")
        #expect(c.write(output: [1]) == 0)
        #expect(c.readOutput(max: 100) == Array(b[0..<100]))
        #expect(c.readOutput() == Array(b[100..<2048]))
        #expect(c.readOutput() == [])
        #expect(c.write(input: Array(repeating: 9, count: 2000)) == 1024, "the in ring holds 1024 bytes")
        #expect(c.inputSpace == 0)
        #expect(c.inputAvailable == 1024)
        #expect(c.readInput(max: 24).count == 24)
        #expect(c.inputSpace == 24)
    }

    @Test func notifiesOnlyWhenTheReaderMayBeIdle() throws {
        let c = try ConsoleRingChannel.create(name: "t")
        _ = c.write(output: bytes("a"))
        #expect(c.drainOutEvent() == 1, "ring was empty: signal")
        _ = c.write(output: bytes("b"))
        #expect(c.drainOutEvent() == 0, "reader has not caught up: no signal needed")
        #expect(c.readOutput() == bytes("ab"))
        #expect(c.drainInEvent() == 1, "consuming output tells the core there is room")
        _ = c.write(output: bytes("c"))
        #expect(c.drainOutEvent() == 1)
        _ = c.write(input: bytes("x"))
        #expect(c.drainInEvent() == 1)
        _ = c.readInput()
        #expect(c.drainOutEvent() == 1)
    }

    @Test func secondMappingSharesTheRingAndAdoptsIndices() throws {
        let a = try ConsoleRingChannel.create(name: "t")
        _ = a.write(output: bytes("before"))
        let b = try ConsoleRingChannel(ringFD: dup(a.ringFD), outEventFD: dup(a.outEventFD), inEventFD: dup(a.inEventFD))
        #expect(b.readOutput() == bytes("before"))
        _ = a.write(output: bytes("after"))
        // A restarted reader adopts the indices its predecessor left.
        let c = try ConsoleRingChannel(ringFD: dup(a.ringFD), outEventFD: dup(a.outEventFD), inEventFD: dup(a.inEventFD))
        #expect(c.readOutput() == bytes("after"))
    }

    @Test(arguments: [UInt32(5000), UInt32(0xFFFF_FF00), UInt32(2049)])
    func impossibleConsumerIndexResetsTheRing(_ bad: UInt32) throws {
        let c = try ConsoleRingChannel.create(name: "t")
        let v = PeerView(c)
        _ = c.write(output: bytes("abc"))
        v[3080] = 3 &+ bad        // out_cons far beyond out_prod / behind by more than the ring
        if (UInt32(3) &- v[3080]) <= 2048 { return }  // not impossible for this value
        #expect(c.write(output: bytes("xyz")) == 3, "the writer restarts from the consumer's index")
        #expect(c.resets == 1)
        // This reader's own (private) index disagrees with the scribbled one: it resets too,
        // and from then on both agree again.
        #expect(c.readOutput() == [])
        #expect(c.resets == 2)
        #expect(c.write(output: bytes("again")) == 5)
        #expect(c.readOutput() == bytes("again"))
    }

    @Test func impossibleProducerIndexNeverCrashesTheReader() throws {
        let c = try ConsoleRingChannel.create(name: "t")
        let v = PeerView(c)
        v[3084] = 0x7FFF_FFFF     // out_prod: 2 G bytes "available"
        #expect(c.readOutput() == [])
        #expect(c.resets == 1)
        v[3076] = 5000            // in_prod
        #expect(c.readInput() == [])
        #expect(c.resets == 2)
        // The rings work again from the adopted positions.
        v[3084] = v[3084] &+ 0    // unchanged
        #expect(c.write(input: bytes("ok")) == 2)
        #expect(c.readInput() == bytes("ok"))
    }

    @Test func peerScribblingOnOurOwnIndexIsIgnored() throws {
        let c = try ConsoleRingChannel.create(name: "t")
        let v = PeerView(c)
        _ = c.write(output: bytes("one"))
        v[3084] = 1234            // the core's own out_prod, overwritten by the peer
        _ = c.write(output: bytes("two"))
        #expect(v[3084] == 6, "the writer keeps its own index")
    }

    @Test func rejectsUnsealedOrSmallMemfds() throws {
        let fd = clinux_memfd_create("x", CLINUX_MFD_CLOEXEC)
        #expect(ftruncate(fd, 4096) == 0)
        #expect(throws: ConsoleError.self) { _ = try ConsoleRingChannel(ringFD: fd, outEventFD: eventfd(0, 0), inEventFD: eventfd(0, 0)) }
        let small = clinux_memfd_create("y", CLINUX_MFD_CLOEXEC | CLINUX_MFD_ALLOW_SEALING)
        #expect(ftruncate(small, 100) == 0)
        _ = clinux_fcntl_int(small, CLINUX_F_ADD_SEALS, CLINUX_F_SEAL_SHRINK)
        #expect(throws: ConsoleError.self) { _ = try ConsoleRingChannel(ringFD: small, outEventFD: eventfd(0, 0), inEventFD: eventfd(0, 0)) }
        #expect(throws: ConsoleError.self) { _ = try ConsoleRingChannel(ringFD: 999, outEventFD: 998, inEventFD: 997) }
        close(fd); close(small)
    }

    @Test func byteQueueDropsOldest() {
        var q = ByteQueue(capacity: 8)
        ([1, 2, 3, 4, 5] as [UInt8]).withUnsafeBytes { q.append($0) }
        ([6, 7, 8, 9, 10] as [UInt8]).withUnsafeBytes { q.append($0) }
        #expect(q.count == 8)
        #expect(q.dropped == 2)
        var out: [UInt8] = []
        while !q.isEmpty { let n = q.withFirstChunk { out += $0; return $0.count }; q.removeFirst(n) }
        #expect(out == [3, 4, 5, 6, 7, 8, 9, 10])
        Array(0..<20).map(UInt8.init).withUnsafeBytes { q.append($0) }
        #expect(q.count == 8 && q.dropped == 14)
    }

    @Test func frontendBacklogsWhileFullAndFlushesInOrder() throws {
        let c = try ConsoleRingChannel.create(name: "t")
        let f = ConsoleFrontend(channel: c, backlogCapacity: 4096)
        let data = (0..<5000).map { UInt8($0 % 256) }
        for b in data { f.guestOutput(b) }
        // 2048 in the ring, 2952 kept, nothing dropped yet beyond capacity? 5000-2048 = 2952 < 4096.
        #expect(f.backlogCount == 2952)
        #expect(f.droppedBytes == 0)
        var got: [UInt8] = []
        while got.count < data.count {
            let chunk = c.readOutput()
            f.flushBacklog()
            if chunk.isEmpty { break }
            got += chunk
        }
        #expect(got == data)
        // Beyond the backlog the oldest bytes go and are counted.
        for _ in 0..<(2048 + 4096 + 100) { f.guestOutput(7) }
        #expect(f.droppedBytes == 100)
    }

    @Test func frontendTakesInputOnlyAsFarAsThereIsRoom() throws {
        let c = try ConsoleRingChannel.create(name: "t")
        let f = ConsoleFrontend(channel: c)
        _ = c.write(input: bytes("hello world"))
        var got: [UInt8] = []
        var more = f.pumpInput(room: 5) { got += $0 }
        #expect(got == bytes("hello"))
        #expect(more)
        more = f.pumpInput(room: 100) { got += $0 }
        #expect(got == bytes("hello world"))
        #expect(!more)
    }
}
