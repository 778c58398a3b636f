import Testing
import Foundation

/// blkback --cache direct with the synthetic front-end: the device checks of `verify`, and
/// `unaligned` (odd buffer addresses and segment lengths, sectors off 4 KiB) checked against
/// the image file, with the file system's own alignment and with 4 KiB blocks forced (the
/// read-modify-write path); an image on a file system that refuses O_DIRECT is refused
/// naming the image and the reason.
@Suite(.serialized) struct BlkbackDirectTests {
    /// A 4 MiB image of random bytes on the disk file system (/var/tmp: not tmpfs).
    func image() throws -> (dir: String, image: String, socket: String) {
        let dir = "/var/tmp/blkback-direct-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var g = SystemRandomNumberGenerator()
        let bytes = (0..<(4 << 20) / 8).flatMap { _ in withUnsafeBytes(of: g.next()) { Array($0) } }
        FileManager.default.createFile(atPath: dir + "/d.img", contents: Data(bytes))
        return (dir, dir + "/d.img", dir + "/blk.sock")
    }

    @Test(arguments: [512, 4096]) func directUnalignedRequests(block: Int) throws {
        let s = try image()
        defer { try? FileManager.default.removeItem(atPath: s.dir) }
        let b = try startBlkback(["--socket", s.socket, "--image", "file:" + s.image, "--cache", "direct",
                                  "--test-dio-align", String(block)], socket: s.socket)
        defer { stop(b) }
        #expect(b.isRunning, "blkback --cache direct did not start on \(s.image)")
        let u = try run(frontendTool, ["unaligned", "--socket", s.socket, "--image", s.image])
        #expect(u.status == 0 && u.out.contains("file checked: passed"), "\(u.out)\(u.err)")
        let v = try run(frontendTool, ["verify", "--socket", s.socket])
        #expect(v.status == 0, "\(v.out)\(v.err)")
    }

    @Test func fileSystemRefusingDirectIO() throws {
        if getuid() != 0 { print("SKIP: fileSystemRefusingDirectIO: needs root (mounts a ramfs)"); return }
        let dir = "/var/tmp/blkback-ramfs-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { _ = try? run("/usr/bin/umount", [dir]); try? FileManager.default.removeItem(atPath: dir) }
        guard try run("/usr/bin/mount", ["-t", "ramfs", "blkback-test", dir]).status == 0 else {
            print("SKIP: fileSystemRefusingDirectIO: cannot mount a ramfs"); return
        }
        FileManager.default.createFile(atPath: dir + "/d.img", contents: Data(count: 1 << 20))
        let r = try run(blkback, noSandbox + ["--socket", dir + "/s", "--image", "file:\(dir)/d.img", "--cache", "direct"], timeout: 10)
        #expect(r.status != 0)
        #expect(r.err.contains("\(dir)/d.img") && r.err.contains("refuses direct I/O"), "\(r.err)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/s"), "nothing half-made: no socket")
    }
}
