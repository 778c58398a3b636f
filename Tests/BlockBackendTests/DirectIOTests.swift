import Testing
import Foundation
@testable import BlockBackend

/// An in-memory file that records every transfer and fails any that breaks the alignment
/// rules, as the kernel does with O_DIRECT (EINVAL).
final class ModelFile: AlignedBlockIO, @unchecked Sendable {
    var bytes: [UInt8]
    let rule: DirectIOAlignment
    var misaligned = 0
    var calls = 0
    init(size: Int, rule: DirectIOAlignment) {
        bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        self.rule = rule
    }
    func ok(_ p: UnsafeRawPointer, _ n: Int, _ off: UInt64) -> Bool {
        let good = UInt(bitPattern: p) % UInt(rule.memory) == 0 && n % rule.offset == 0 && off % UInt64(rule.offset) == 0
        if !good { misaligned += 1; errno = EINVAL }
        return good
    }
    func readBlocks(_ buf: UnsafeMutableRawPointer, _ length: Int, at offset: UInt64) -> Int {
        calls += 1
        guard ok(buf, length, offset) else { return -1 }
        guard offset < UInt64(bytes.count) else { return 0 }
        let n = min(length, bytes.count - Int(offset))
        bytes.withUnsafeBytes { memcpy(buf, $0.baseAddress! + Int(offset), n) }
        return n
    }
    func writeBlocks(_ buf: UnsafeRawPointer, _ length: Int, at offset: UInt64) -> Int {
        calls += 1
        guard ok(buf, length, offset) else { return -1 }
        let end = Int(offset) + length
        if end > bytes.count { bytes += [UInt8](repeating: 0, count: end - bytes.count) }
        bytes.withUnsafeMutableBytes { _ = memcpy($0.baseAddress! + Int(offset), buf, length) }
        return length
    }
}

/// Scatter buffers at odd addresses and lengths inside one allocation.
func scatter(_ base: UnsafeMutableRawPointer, total: Int, cuts: [Int], shift: Int) -> [iovec] {
    var out: [iovec] = [], pos = 0, at = shift
    for c in cuts + [total] where c > pos && c <= total {
        out.append(iovec(iov_base: base + at, iov_len: c - pos))
        at += c - pos + 3          // a gap, so segments are not contiguous either
        pos = c
    }
    return out
}

@Suite struct DirectIOTests {
    /// One read-modify-write lock for every test of the suite (Swift Testing makes an
    /// instance per test: a lock made per instance was never freed, and LeakSanitizer
    /// counted each one under make sanitize).
    nonisolated(unsafe) static let sharedLock: UnsafeMutablePointer<pthread_mutex_t> = {
        let l = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(l, nil)
        return l
    }()
    var lock: UnsafeMutablePointer<pthread_mutex_t> { Self.sharedLock }

    @Test func alignmentRule() {
        let a = DirectIOAlignment(offset: 4096, memory: 512)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 16384, alignment: 4096)
        defer { buf.deallocate() }
        var good = [iovec(iov_base: buf, iov_len: 4096), iovec(iov_base: buf + 8192 + 512, iov_len: 4096)]
        #expect(a.allows(&good, count: 2, offset: 8192))
        #expect(!a.allows(&good, count: 2, offset: 512), "offset not a block multiple")
        var oddAddress = [iovec(iov_base: buf + 1, iov_len: 4096)]
        #expect(!a.allows(&oddAddress, count: 1, offset: 0))
        var shortSegment = [iovec(iov_base: buf, iov_len: 512), iovec(iov_base: buf + 4096, iov_len: 3584)]
        #expect(!a.allows(&shortSegment, count: 2, offset: 0), "segment length not a block multiple")
    }

    /// Random requests (512-byte sectors, odd buffers) through the bounce path against a
    /// reference copy: the data is right and every transfer the file sees is aligned.
    @Test(arguments: [512, 4096, 8192]) func bouncedMatchesReference(block: Int) {
        let rule = DirectIOAlignment(offset: block, memory: 512)
        let size = 256 * 1024
        let file = ModelFile(size: size, rule: rule)
        var reference = file.bytes
        let t = BouncedTransfer(alignment: rule, chunkBytes: 3 * 8192, rmwLock: lock)
        var g = SystemRandomNumberGenerator()
        let mem = UnsafeMutableRawPointer.allocate(byteCount: 128 * 1024, alignment: 4096)
        defer { mem.deallocate() }
        for round in 0..<400 {
            let sectors = Int.random(in: 1...64, using: &g)
            let total = sectors * 512
            let offset = Int.random(in: 0...(size / 512 - sectors), using: &g) * 512
            let cuts = (0..<Int.random(in: 0...4, using: &g)).map { _ in Int.random(in: 1..<total, using: &g) }.sorted()
            var iov = scatter(mem, total: total, cuts: cuts, shift: Int.random(in: 0...7, using: &g))
            if round % 2 == 0 {
                var data = [UInt8](repeating: 0, count: total)
                for i in data.indices { data[i] = UInt8.random(in: 0...255, using: &g) }
                var k = 0
                for v in iov { for j in 0..<v.iov_len { v.iov_base!.storeBytes(of: data[k], toByteOffset: j, as: UInt8.self); k += 1 } }
                #expect(t.write(file, from: &iov, count: iov.count, offset: UInt64(offset), total: total, fileSize: UInt64(size)))
                reference.replaceSubrange(offset..<offset + total, with: data)
            } else {
                #expect(t.read(file, into: &iov, count: iov.count, offset: UInt64(offset), total: total))
                var got: [UInt8] = []
                for v in iov { got += UnsafeRawBufferPointer(start: v.iov_base, count: v.iov_len) }
                #expect(got == Array(reference[offset..<offset + total]), "read \(total) at \(offset)")
            }
        }
        #expect(file.misaligned == 0)
        #expect(file.bytes == reference, "the writes' neighbours survived their read-modify-write")
    }

    @Test func writePastTheLastWholeBlockIsRefused() {
        let rule = DirectIOAlignment(offset: 4096, memory: 512)
        let file = ModelFile(size: 8192 + 512, rule: rule)     // the last block is partial
        let t = BouncedTransfer(alignment: rule, rmwLock: lock)
        let mem = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { mem.deallocate() }
        var iov = [iovec(iov_base: mem, iov_len: 512)]
        #expect(!t.write(file, from: &iov, count: 1, offset: 8192, total: 512, fileSize: 8192 + 512))
        #expect(file.bytes.count == 8192 + 512, "the file did not grow")
        #expect(t.read(file, into: &iov, count: 1, offset: 8192, total: 512), "reading it is fine")
        #expect(t.write(file, from: &iov, count: 1, offset: 4096 + 512, total: 512, fileSize: 8192 + 512))
    }

    /// A real O_DIRECT file on a disk file system: the image's own paths, aligned and not.
    @Test func realDirectImage() throws {
        let dir = "/var/tmp/disk-dio-test-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/d.img"
        FileManager.default.createFile(atPath: path, contents: Data(count: 1 << 20))
        let img: BlockImage
        do { img = try BlockImage.open("file:" + path, readOnly: false, sharedWrite: false, direct: true, minDirectAlignment: 4096) }
        catch {
            print("SKIP: realDirectImage: \(error)")
            return
        }
        #expect(img.direct?.offset == 4096)
        let mem = UnsafeMutableRawPointer.allocate(byteCount: 65536, alignment: 4096)
        defer { mem.deallocate() }
        for i in 0..<65536 { mem.storeBytes(of: UInt8(truncatingIfNeeded: i * 13), toByteOffset: i, as: UInt8.self) }
        var w = [iovec(iov_base: mem + 1, iov_len: 700), iovec(iov_base: mem + 2048, iov_len: 324)]   // 1 KiB at sector 3
        #expect(img.writev(&w, count: 2, offset: 1536, total: 1024))
        var a = [iovec(iov_base: mem + 8192, iov_len: 8192)]                                          // aligned: straight
        #expect(img.readv(&a, count: 1, offset: 0, total: 8192))
        let got = Array(UnsafeRawBufferPointer(start: mem + 8192 + 1536, count: 1024))
        let want = Array(UnsafeRawBufferPointer(start: mem + 1, count: 700)) + Array(UnsafeRawBufferPointer(start: mem + 2048, count: 324))
        #expect(got == want)
        #expect(Array(UnsafeRawBufferPointer(start: mem + 8192, count: 1536)).allSatisfy { $0 == 0 }, "the sectors before it are still zero")
        #expect(img.writeZeroes(offset: 1536, length: 512, unmap: false))
        #expect(img.flush())
    }
}
