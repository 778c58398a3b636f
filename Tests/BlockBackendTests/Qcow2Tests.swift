// Qcow2Image against QEMU's own tools: images made by `qemu-img create`, written through
// our code (with a raw reference file given the same writes), then `qemu-img check` must
// find no error and `qemu-img convert -O raw` must equal the reference; hostile headers
// are refused with a named reason.
import Testing
import Foundation
@testable import BlockBackend

/// A scratch directory for qcow2 images, removed at the end.
final class Qcow2Scratch {
    let dir: String
    init() throws {
        dir = NSTemporaryDirectory() + "qcow2-test-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: dir) }
    func path(_ n: String) -> String { dir + "/" + n }
}

let qemuImg = "/usr/bin/qemu-img"
let qemuIO = "/usr/bin/qemu-io"
var haveQemuImg: Bool { FileManager.default.isExecutableFile(atPath: qemuImg) && FileManager.default.isExecutableFile(atPath: qemuIO) }

@discardableResult
func qimg(_ args: [String]) throws -> Run {
    let r = try run(qemuImg, args)
    #expect(r.status == 0, "qemu-img \(args.joined(separator: " ")): \(r.err)\(r.out)")
    return r
}

/// Opens `path` as qcow2 with its backing chain, as blkback does.
func openQcow2(_ path: String, readOnly: Bool = false) throws -> Qcow2Image {
    let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
    guard fd >= 0 else { throw BlockBackendError("open \(path)") }
    let files = try Qcow2Chain.openBackingFiles(imagePath: path, fd: fd)
    return try Qcow2Chain.assemble(top: fd, backing: files.map(\.fd), readOnly: readOnly)
}

extension Qcow2Image {
    func write(_ bytes: [UInt8], at off: UInt64) -> Bool {
        var b = bytes
        return b.withUnsafeMutableBytes { p in
            var iov = iovec(iov_base: p.baseAddress, iov_len: p.count)
            return writev(&iov, count: 1, offset: off, total: p.count)
        }
    }
    func read(_ n: Int, at off: UInt64) -> [UInt8]? {
        var b = [UInt8](repeating: 0xee, count: n)
        let ok = b.withUnsafeMutableBytes { p in
            // Two iovecs, split unevenly, to exercise slicing.
            let half = n / 3
            var iov = [iovec(iov_base: p.baseAddress, iov_len: half), iovec(iov_base: p.baseAddress! + half, iov_len: n - half)]
            return readv(&iov, count: 2, offset: off, total: n)
        }
        return ok ? b : nil
    }
}

/// The same writes on a plain file (the expected guest view).
final class Reference {
    var bytes: [UInt8]
    init(size: Int, base: [UInt8] = []) { bytes = base + [UInt8](repeating: 0, count: max(0, size - base.count)) }
    func write(_ b: [UInt8], at off: Int) { bytes.replaceSubrange(off..<off + b.count, with: b) }
    func zero(at off: Int, count: Int) { write([UInt8](repeating: 0, count: count), at: off) }
}

func pattern(_ n: Int, seed: UInt64) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<n).map { _ in x ^= x << 13; x ^= x >> 7; x ^= x << 17; return UInt8(truncatingIfNeeded: x) }
}

/// `qemu-img check` finds nothing and `convert -O raw` equals `ref`.
func expectClean(_ image: String, equals ref: Reference, in s: Qcow2Scratch) throws {
    let c = try run(qemuImg, ["check", image])
    #expect(c.status == 0 && c.out.contains("No errors were found"), "qemu-img check \(image): \(c.out)\(c.err)")
    let raw = s.path("out-\(UUID().uuidString.prefix(6)).raw")
    try qimg(["convert", "-O", "raw", image, raw])
    let got = [UInt8](try Data(contentsOf: URL(fileURLWithPath: raw)))
    #expect(got.count == ref.bytes.count)
    if got != ref.bytes {
        let first = zip(got, ref.bytes).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? -1
        Issue.record("\(image): converted contents differ from the reference, first at byte \(first)")
    }
    try? FileManager.default.removeItem(atPath: raw)
}

@Suite(.serialized) struct Qcow2Tests {
    /// Random writes (partial clusters, across clusters, rewrites) on fresh images of
    /// every cluster size class and both versions; 512-byte clusters make the refcount
    /// table grow and move.
    @Test(arguments: [("512", "1.1"), ("65536", "1.1"), ("65536", "0.10"), ("2M", "1.1")])
    func writesAreReadBackAndCheckClean(cluster: String, compat: String) throws {
        guard haveQemuImg else { print("SKIP: qcow2 writes: qemu-img/qemu-io not installed"); return }
        let s = try Qcow2Scratch()
        let img = s.path("a.qcow2"), size = 16 << 20
        try qimg(["create", "-q", "-f", "qcow2", "-o", "cluster_size=\(cluster),compat=\(compat)", img, String(size)])
        let ref = Reference(size: size)
        do {
            let q = try openQcow2(img)
            let table = q.refTableOffset
            var rng = SystemRandomNumberGenerator()
            for i in 0..<60 {
                let len = [512, 4096, 65536, 70000 / 512 * 512, 1 << 20][Int.random(in: 0..<5, using: &rng)]
                let off = Int.random(in: 0...(size - len) / 512, using: &rng) * 512
                let data = pattern(len, seed: UInt64(i + 1))
                #expect(q.write(data, at: UInt64(off)))
                ref.write(data, at: off)
            }
            if cluster == "512" {
                // Fill 12 MiB: with 512-byte clusters the file outgrows the 8 MiB one
                // refcount table cluster covers, whatever the random writes touched.
                for k in 0..<12 {
                    let data = pattern(1 << 20, seed: UInt64(500 + k))
                    #expect(q.write(data, at: UInt64(k) << 20))
                    ref.write(data, at: k << 20)
                }
            }
            // Read back through our code too.
            #expect(q.read(size, at: 0) == ref.bytes)
            #expect(q.flush())
            // 512-byte clusters: one table cluster covers 8 MiB of file, so it moved.
            if cluster == "512" { #expect(q.refTableOffset != table, "the refcount table never grew") }
        }
        try expectClean(img, equals: ref, in: s)
    }

    /// What QEMU wrote reads back the same through our code.
    @Test func readsWhatQemuWrote() throws {
        guard haveQemuImg else { print("SKIP: qcow2 reads: qemu-img not installed"); return }
        let s = try Qcow2Scratch()
        let img = s.path("q.qcow2")
        try qimg(["create", "-q", "-f", "qcow2", img, "8M"])
        let io = try run(qemuIO, ["-f", "qcow2", "-c", "write -P 0xab 1M 64k", "-c", "write -P 0x5c 3584 1024", "-c", "write -z 2M 64k", img])
        #expect(io.status == 0, "\(io.err)")
        let q = try openQcow2(img, readOnly: true)
        let ref = Reference(size: 8 << 20)
        ref.write([UInt8](repeating: 0xab, count: 65536), at: 1 << 20)
        ref.write([UInt8](repeating: 0x5c, count: 1024), at: 3584)
        #expect(q.read(8 << 20, at: 0) == ref.bytes)
        #expect(!q.write([1], at: 0), "a read-only image took a write")
    }

    /// Over a raw base and over a qcow2 middle layer: partial writes copy the rest of the
    /// cluster from below; the backing files are not changed.
    @Test(arguments: ["0.10", "1.1"])
    func backingChain(compat: String) throws {
        guard haveQemuImg else { print("SKIP: qcow2 backing: qemu-img not installed"); return }
        let s = try Qcow2Scratch()
        let size = 4 << 20
        let baseBytes = pattern(size, seed: 99)
        try Data(baseBytes).write(to: URL(fileURLWithPath: s.path("base.raw")))
        try qimg(["create", "-q", "-f", "qcow2", "-o", "compat=\(compat)", "-b", "base.raw", "-F", "raw", s.path("mid.qcow2")])
        let io = try run(qemuIO, ["-f", "qcow2", "-c", "write -P 0x11 100k 8k", s.path("mid.qcow2")])
        #expect(io.status == 0, "\(io.err)")
        try qimg(["create", "-q", "-f", "qcow2", "-o", "compat=\(compat)", "-b", "mid.qcow2", "-F", "qcow2", s.path("top.qcow2")])
        let ref = Reference(size: size, base: baseBytes)
        ref.write([UInt8](repeating: 0x11, count: 8192), at: 100 << 10)
        do {
            let q = try openQcow2(s.path("top.qcow2"))
            #expect(q.read(size, at: 0) == ref.bytes, "the chain reads wrong before any write")
            for (i, (off, len)) in [(512, 512), (100 << 10 + 4096, 8192), (1 << 20, 65536), (3 << 20 + 1000 / 512 * 512, 200 * 512)].enumerated() {
                let d = pattern(len, seed: UInt64(1000 + i))
                #expect(q.write(d, at: UInt64(off)))
                ref.write(d, at: off)
            }
            #expect(q.read(size, at: 0) == ref.bytes)
        }
        try expectClean(s.path("top.qcow2"), equals: ref, in: s)
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: s.path("base.raw")))) == baseBytes, "the raw base changed")
        let mid = try run(qemuImg, ["check", s.path("mid.qcow2")])
        #expect(mid.status == 0)
    }

    /// Discard and write-zeroes free whole clusters (refcounts dropped: check stays clean,
    /// no leak) and zero partial ones; over a backing file the old data does not return
    /// where zeros were asked for.
    @Test(arguments: ["0.10", "1.1"])
    func discardAndWriteZeroes(compat: String) throws {
        guard haveQemuImg else { print("SKIP: qcow2 discard: qemu-img not installed"); return }
        let s = try Qcow2Scratch()
        let size = 4 << 20
        let baseBytes = pattern(size, seed: 7)
        try Data(baseBytes).write(to: URL(fileURLWithPath: s.path("base.raw")))
        try qimg(["create", "-q", "-f", "qcow2", "-o", "compat=\(compat)", "-b", "base.raw", "-F", "raw", s.path("o.qcow2")])
        try qimg(["create", "-q", "-f", "qcow2", "-o", "compat=\(compat)", s.path("plain.qcow2"), String(size)])
        for name in ["o.qcow2", "plain.qcow2"] {
            let ref = Reference(size: size, base: name == "o.qcow2" ? baseBytes : [])
            do {
                let q = try openQcow2(s.path(name))
                let d = pattern(1 << 20, seed: 3)
                #expect(q.write(d, at: 0)); ref.write(d, at: 0)
                #expect(q.writeZeroes(offset: 65536 + 512, length: 3 * 65536, unmap: true))
                ref.zero(at: 65536 + 512, count: 3 * 65536)
                #expect(q.writeZeroes(offset: 2 << 20, length: 65536, unmap: false))
                ref.zero(at: 2 << 20, count: 65536)
                #expect(q.discard(offset: 512 << 10, length: 256 << 10))
                // Discarded contents are unspecified: take what we now read as the truth
                // for that range, but it must be zeros or the old data.
                let now = q.read(256 << 10, at: 512 << 10)!
                let zeros = [UInt8](repeating: 0, count: 256 << 10)
                let below = Array(ref.bytes[(512 << 10)..<(768 << 10)])
                #expect(now == zeros || now == below || (name == "o.qcow2" && now == Array(baseBytes[(512 << 10)..<(768 << 10)])))
                ref.write(now, at: 512 << 10)
                // Write again into freed clusters.
                let e = pattern(4096, seed: 4)
                #expect(q.write(e, at: 600 << 10)); ref.write(e, at: 600 << 10)
                #expect(q.read(size, at: 0) == ref.bytes)
            }
            try expectClean(s.path(name), equals: ref, in: s)
        }
    }

    /// Patches bytes of a fresh image's header and expects the open to fail naming `why`.
    func expectRefused(_ s: Qcow2Scratch, _ name: String, why: String, writable: Bool = true,
                       patch: (inout [UInt8]) -> Void) throws {
        let img = s.path(name)
        try qimg(["create", "-q", "-f", "qcow2", img, "64M"])
        var b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: img)))
        patch(&b)
        try Data(b).write(to: URL(fileURLWithPath: img))
        do {
            _ = try openQcow2(img, readOnly: !writable)
            Issue.record("\(name): opened; expected a refusal naming '\(why)'")
        } catch {
            #expect("\(error)".contains(why), "\(name): \(error)")
        }
    }

    static func put64(_ b: inout [UInt8], _ o: Int, _ v: UInt64) {
        if b.count < o + 8 { b += [UInt8](repeating: 0, count: o + 8 - b.count) }   // qemu-img ends the file after the L1 table
        b.replaceSubrange(o..<o + 8, with: Qcow2IO.be64(v))
    }
    static func put32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) { b.replaceSubrange(o..<o + 4, with: Qcow2IO.be32(v)) }

    @Test func hostileHeadersAreRefusedByName() throws {
        guard haveQemuImg else { print("SKIP: qcow2 hostile headers: qemu-img not installed"); return }
        let s = try Qcow2Scratch()
        try expectRefused(s, "truncated", why: "truncated header") { $0 = Array($0.prefix(50)) }
        try expectRefused(s, "truncated3", why: "truncated version 3 header") { $0 = Array($0.prefix(80)) }
        try expectRefused(s, "magic", why: "bad magic") { $0[0] = 0 }
        try expectRefused(s, "version", why: "version 4") { Self.put32(&$0, 4, 4) }
        try expectRefused(s, "cluster", why: "cluster_bits 30") { Self.put32(&$0, 20, 30) }
        try expectRefused(s, "aes", why: "encrypted (AES)") { Self.put32(&$0, 32, 1) }
        try expectRefused(s, "luks", why: "encrypted (LUKS)") { Self.put32(&$0, 32, 2) }
        try expectRefused(s, "rtpast", why: "refcount table (offset 1099511627776") { Self.put64(&$0, 48, 1 << 40) }
        try expectRefused(s, "rtmisaligned", why: "refcount table offset 65537 is not cluster-aligned") { Self.put64(&$0, 48, 65537) }
        try expectRefused(s, "rthuge", why: "refcount table of 4294967295 clusters is too large") { Self.put32(&$0, 56, .max) }
        try expectRefused(s, "l1huge", why: "L1 table size 4294967295 is too large") { Self.put32(&$0, 36, .max) }
        try expectRefused(s, "l1small", why: "is too small") { Self.put32(&$0, 36, 0) }
        try expectRefused(s, "l1past", why: "L1 table (offset") { Self.put64(&$0, 40, 1 << 30) }
        try expectRefused(s, "overlap", why: "overlap") { b in Self.put64(&b, 40, Qcow2Header.be64(b, 48)) }
        try expectRefused(s, "bit9", why: "unknown incompatible feature bit 9") { Self.put64(&$0, 72, 1 << 9) }
        try expectRefused(s, "extdata", why: "external data file") { Self.put64(&$0, 72, 1 << 2) }
        try expectRefused(s, "corrupt", why: "marked corrupt") { Self.put64(&$0, 72, 1 << 1) }
        try expectRefused(s, "dirty", why: "the image is dirty") { Self.put64(&$0, 72, 1 << 0) }
        try expectRefused(s, "backingname", why: "backing file name") { Self.put64(&$0, 8, 65530); Self.put32(&$0, 16, 100) }
        // An L1 entry pointing outside the file, or at the header.
        try expectRefused(s, "l2outside", why: "outside the file") { b in
            let l1 = Int(Qcow2Header.be64(b, 40)); Self.put64(&b, l1, (1 << 40) | (1 << 63))
        }
        try expectRefused(s, "l2onrefcounts", why: "overlaps the header, the L1 table or the refcount table") { b in
            let l1 = Int(Qcow2Header.be64(b, 40)); Self.put64(&b, l1, Qcow2Header.be64(b, 48) | (1 << 63))
        }
    }

    /// fuzz-qcow2 finding: a refcount table entry near 2^64 overflowed the "inside the
    /// file" check (offset + cluster size) and trapped; it must be refused by name.
    @Test func fuzzFindingRefcountBlockOffsetOverflow() throws {
        guard haveQemuImg else { print("SKIP: qcow2 fuzz finding: qemu-img not installed"); return }
        let s = try Qcow2Scratch()
        try expectRefused(s, "rbhuge", why: "refcount block 1 at 18446744073709486080 is outside the file") { b in
            let rt = Int(Qcow2Header.be64(b, 48)); Self.put64(&b, rt + 8, 0xFFFF_FFFF_FFFF_0000)
        }
        try expectRefused(s, "l2huge", why: "L2 table 0 at 72057594037862400 is outside the file") { b in
            let l1 = Int(Qcow2Header.be64(b, 40)); Self.put64(&b, l1, 0xFFFF_FFFF_FFFF_0000)
        }
    }

    /// An L2 entry pointing outside the file (or at metadata) fails that request only.
    @Test func badDataPointerFailsTheRequest() throws {
        guard haveQemuImg else { print("SKIP: qcow2 bad L2 entry: qemu-img not installed"); return }
        let s = try Qcow2Scratch()
        let img = s.path("d.qcow2")
        try qimg(["create", "-q", "-f", "qcow2", img, "8M"])
        _ = try run(qemuIO, ["-f", "qcow2", "-c", "write -P 0x22 0 128k", img])
        var b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: img)))
        let l2 = Int(Qcow2Header.be64(b, Int(Qcow2Header.be64(b, 40))) & Qcow2Image.offsetMask)
        Self.put64(&b, l2, (1 << 63) | (1 << 45))                // cluster 0: far outside the file
        Self.put64(&b, l2 + 8, (1 << 63) | Qcow2Header.be64(b, 48)) // cluster 1: the refcount table
        try Data(b).write(to: URL(fileURLWithPath: img))
        let q = try openQcow2(img)
        #expect(q.read(512, at: 0) == nil)
        #expect(q.read(512, at: 65536) == nil)
        #expect(!q.write([UInt8](repeating: 1, count: 512), at: 65536), "a write landed on the refcount table")
        #expect(q.read(512, at: 2 * 65536) == [UInt8](repeating: 0, count: 512), "an untouched cluster no longer reads")
    }

    @Test func backingProblemsAreNamed() throws {
        guard haveQemuImg else { print("SKIP: qcow2 backing problems: qemu-img not installed"); return }
        let s = try Qcow2Scratch()
        try qimg(["create", "-q", "-f", "qcow2", s.path("a.qcow2"), "8M"])
        try qimg(["create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", s.path("b.qcow2")])
        try qimg(["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", s.path("a.qcow2")])
        do { _ = try openQcow2(s.path("b.qcow2")); Issue.record("a loop opened") }
        catch { #expect("\(error)".contains("makes a loop"), "\(error)") }
        try qimg(["rebase", "-u", "-b", "gone.raw", "-F", "raw", s.path("a.qcow2")])
        do { _ = try openQcow2(s.path("b.qcow2")); Issue.record("a missing backing file opened") }
        catch { #expect("\(error)".contains("gone.raw") && "\(error)".contains("No such file"), "\(error)") }
        // A chain of 17 is too deep.
        try qimg(["create", "-q", "-f", "qcow2", s.path("c0.qcow2"), "1M"])
        for i in 1...17 { try qimg(["create", "-q", "-f", "qcow2", "-b", "c\(i - 1).qcow2", "-F", "qcow2", s.path("c\(i).qcow2")]) }
        do { _ = try openQcow2(s.path("c17.qcow2")); Issue.record("a chain of 17 opened") }
        catch { #expect("\(error)".contains("deeper than 16"), "\(error)") }
        // Not handed over.
        let fd = open(s.path("c1.qcow2"), O_RDONLY)
        do { _ = try Qcow2Chain.assemble(top: fd, backing: [], readOnly: true); Issue.record("opened without its backing file") }
        catch { #expect("\(error)".contains("was not handed over"), "\(error)") }
        close(fd)
        // No recorded backing format: a file that looks like qcow2 is not probed into one
        // (bytes a guest wrote could name any host file); a raw-looking one reads as raw.
        try qimg(["create", "-q", "-f", "qcow2", "-b", "c0.qcow2", "-F", "qcow2", s.path("u.qcow2")])
        var u = try Data(contentsOf: URL(fileURLWithPath: s.path("u.qcow2")))
        let ext = Data([0xE2, 0x79, 0x2A, 0xCA])   // the backing-format extension's type
        guard let r = u.range(of: ext) else { Issue.record("no backing-format extension"); return }
        u.replaceSubrange(r, with: [0x12, 0x34, 0x56, 0x78])   // an unknown extension, skipped
        try u.write(to: URL(fileURLWithPath: s.path("u.qcow2")))
        do { _ = try openQcow2(s.path("u.qcow2")); Issue.record("a probed qcow2 backing file opened") }
        catch { #expect("\(error)".contains("looks like qcow2 but") && "\(error)".contains("qemu-img rebase -u -b"), "\(error)") }
    }

    /// blkback itself (`--format qcow2`, the chain opened from the header's names) under the
    /// synthetic front-end's write/read/flush/discard/write-zeroes workload, with I/O
    /// threads; the image checks clean afterwards. The error server starts on it too.
    @Test func blkbackServesQcow2OverBacking() throws {
        guard haveQemuImg else { print("SKIP: blkback qcow2: qemu-img not installed"); return }
        let s = try Qcow2Scratch()
        let base = s.path("base.raw")
        try Data(pattern(64 << 20, seed: 5)).write(to: URL(fileURLWithPath: base))
        let img = s.path("o.qcow2"), sock = s.path("blk.sock")
        try qimg(["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", img])
        do {
            let b = try startBlkback(["--socket", sock, "--image", img, "--format", "qcow2", "--io-threads", "4"], socket: sock)
            defer { stop(b) }
            let r = try run(frontendTool, ["verify", "--socket", sock])
            #expect(r.status == 0 && r.out.contains("verify: passed"), "\(r.out)\(r.err)")
        }
        let c = try run(qemuImg, ["check", img])
        #expect(c.status == 0 && c.out.contains("No errors were found"), "\(c.out)\(c.err)")
        // A raw image given as qcow2, and a missing backing file, are refused by name.
        let bad = try run(blkback, noSandbox + ["--socket", s.path("x.sock"), "--image", base, "--format", "qcow2"])
        #expect(bad.status != 0 && bad.err.contains("not a qcow2 image"), "\(bad.err)")
        try qimg(["rebase", "-u", "-b", "gone.raw", "-F", "raw", img])
        let gone = try run(blkback, noSandbox + ["--socket", s.path("y.sock"), "--image", img, "--format", "qcow2"])
        #expect(gone.status != 0 && gone.err.contains("backing file \(s.dir)/gone.raw of \(img)"), "\(gone.err)")
        let failing = try startBlkback(["--socket", s.path("z.sock"), "--image", img, "--format", "qcow2", "--fail-io"], socket: s.path("z.sock"))
        #expect(failing.isRunning, "the error server did not start on a qcow2 image without its backing file")
        stop(failing)
    }
}
