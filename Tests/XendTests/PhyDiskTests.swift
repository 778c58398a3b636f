// phy: disks that Domain-0 itself has mounted read-write are refused (Xen's block script
// refuses a device mounted in a privileged domain): on a real loop device with a mounted
// ext4 file system. Needs root, a free loop device, mkfs.ext4 and mount.
import DomainConfig
import Foundation
import Logging
import Testing
import XendAPI
@testable import Xend
#if canImport(Glibc)
import Glibc
#endif

@discardableResult
private func sh(_ cmd: String) -> (status: Int32, out: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", "PATH=/usr/sbin:/usr/bin:/sbin:/bin; " + cmd]   // other tests may change PATH
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    do { try p.run() } catch { return (127, "\(error)") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

@Suite(.serialized) struct PhyDiskTests {
    @Test func mountedReadWriteBlockDeviceIsRefused() throws {
        guard getuid() == 0 else { print("SKIP: needs root (losetup, mount)"); return }
        guard access("/dev/loop-control", R_OK | W_OK) == 0 else { print("SKIP: no /dev/loop-control"); return }
        guard sh("command -v mkfs.ext4 && command -v losetup").status == 0 else { print("SKIP: mkfs.ext4/losetup missing"); return }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("phy-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir + "/mnt", withIntermediateDirectories: true)
        defer { _ = try? FileManager.default.removeItem(atPath: dir) }
        let img = dir + "/fs.img"
        #expect(sh("truncate -s 16M \(img) && mkfs.ext4 -q -F \(img)").status == 0)
        let lo = sh("losetup -f --show \(img)")
        guard lo.status == 0 else { print("SKIP: losetup: \(lo.out)"); return }
        let dev = lo.out.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { sh("losetup -d \(dev)") }
        guard sh("mount -t ext4 \(dev) \(dir)/mnt").status == 0 else { print("SKIP: cannot mount \(dev) here"); return }
        var mounted = true
        defer { if mounted { sh("umount \(dir)/mnt") } }

        let root = dir + "/root"
        let blocks = BlockSupervisor(paths: XenithPaths(root: root), binary: "/nonexistent/blkback", manifest: nil,
                                     xenstore: nil, logger: Logger(label: "test"))
        let spec = try DiskSpec(parsing: "phy:\(dev),xvda,w")
        do {
            _ = try blocks.start(domid: 7, name: "phy-test", disks: [spec], vcpus: 1, inUse: [])
            Issue.record("a read-write export of \(dev) mounted read-write at \(dir)/mnt was accepted")
        } catch {
            #expect(error.message.contains("mounted read-write on this host at \(dir)/mnt"), "\(error.message)")
            #expect(error.message.contains("phy:\(dev),xvda,w"), "the error names the disk: \(error.message)")
        }
        // Nothing made: no socket, no process.
        #expect(!FileManager.default.fileExists(atPath: blocks.socketPath(domid: 7, vdev: "xvda")))
        #expect(blocks.pids(domid: 7).isEmpty)

        // Unmounted, the same disk passes the check (it then fails only because this test's
        // blkback binary does not exist) and again leaves nothing behind.
        #expect(sh("umount \(dir)/mnt").status == 0)
        mounted = false
        do {
            _ = try blocks.start(domid: 7, name: "phy-test", disks: [spec], vcpus: 1, inUse: [])
            Issue.record("a nonexistent blkback binary started")
        } catch {
            #expect(!error.message.contains("mounted"), "\(error.message)")
        }
        #expect(!FileManager.default.fileExists(atPath: blocks.socketPath(domid: 7, vdev: "xvda")))
        blocks.stop(domid: 7)
    }
}
