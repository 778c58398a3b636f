// The paths an incoming domain (migration peer, save file) may name: real files in a temp
// directory, /proc and /dev entries, a symlink into /proc, the allow list's prefix match,
// and the block device holding / (mounted, so refused as a phy: disk).
import DomainConfig
import Foundation
import Testing
@testable import Xend
#if canImport(Glibc)
import Glibc
#endif

/// glibc's makedev (a macro Swift does not import).
func devNumber(_ major: UInt32, _ minor: UInt32) -> dev_t {
    let ma = UInt64(major), mi = UInt64(minor)
    return dev_t((mi & 0xff) | ((ma & 0xfff) << 8) | ((mi & ~0xff) << 12) | ((ma & ~0xfff) << 32))
}

@Suite struct IncomingPathsTests {
    /// A fresh temp directory (resolved, so prefixes compare) with `files` created in it.
    func scratch(_ files: [String] = []) throws -> String {
        let dir = IncomingPaths.realDirectory(NSTemporaryDirectory()) + "/incoming-paths-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for f in files {
            try FileManager.default.createDirectory(atPath: (dir + "/" + f as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: dir + "/" + f, contents: Data("x".utf8))
        }
        return dir
    }

    /// The message the policy refuses `cfg` with, nil when it passes.
    func refusal(_ cfg: DomainConfiguration, allow: [String] = []) -> String? {
        do { try IncomingPaths(allow: allow).check(cfg); return nil } catch {
            #expect(error.kind == .badRequest)
            return error.message
        }
    }

    func config(kernel: String? = nil, ramdisk: String? = nil, disks: [String] = []) throws -> DomainConfiguration {
        var c = DomainConfiguration(name: "in")
        c.kernel = kernel
        c.ramdisk = ramdisk
        c.disks = try disks.map { try DiskSpec(parsing: $0) }
        return c
    }

    @Test func regularFilesPassAndSystemTreesAreRefused() throws {
        let dir = try scratch(["vmlinuz", "disk.img"])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(refusal(try config(kernel: dir + "/vmlinuz", disks: ["file:\(dir)/disk.img,xvda,w"])) == nil)
        #expect(refusal(try config(ramdisk: "/proc/self/status"))?.hasPrefix("ramdisk: /proc/self/status (→ /proc/") == true)
        #expect(refusal(try config(ramdisk: "/proc/self/status"))?.hasSuffix("is under /proc, which an incoming domain may not use") == true)
        #expect(refusal(try config(kernel: "/sys/kernel/notes"))
                == "kernel: /sys/kernel/notes is under /sys, which an incoming domain may not use")
        #expect(refusal(try config(disks: ["file:/dev/null,xvdb,w"]))
                == "disk xvdb: /dev/null is under /dev, which an incoming domain may not use")
        // A symlink in an ordinary directory does not hide where it leads.
        symlink("/proc/self/environ", dir + "/env.img")
        #expect(refusal(try config(disks: ["file:\(dir)/env.img,xvdb,r"]))?.contains("(→ /proc/") == true)
        // A directory is not an image; a missing file is named as before.
        #expect(refusal(try config(disks: ["file:\(dir),xvdb,r"])) == "disk xvdb: \(dir) is not a regular file")
        #expect(refusal(try config(kernel: dir + "/gone")) == "kernel: \(dir)/gone is missing on the target: No such file or directory")
        // phy: must be a block device, even where a file would do.
        #expect(refusal(try config(disks: ["phy:\(dir)/disk.img,xvdb,w"])) == "disk xvdb: \(dir)/disk.img is not a block device")
    }

    @Test func allowListMatchesWholeDirectoriesAfterResolving() throws {
        let dir = try scratch(["xen/vmlinuz", "xenbad/initrd", "other/disk.img"])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let allow = [dir + "/xen"]
        #expect(refusal(try config(kernel: dir + "/xen/vmlinuz"), allow: allow) == nil)
        #expect(refusal(try config(ramdisk: dir + "/xenbad/initrd"), allow: allow)
                == "ramdisk: \(dir)/xenbad/initrd is not under xend-relocation-paths-allow (\(dir)/xen)")
        #expect(refusal(try config(disks: ["file:/etc/shadow,xvdb,w"]), allow: allow + ["/var/lib/xen/images"])
                == "disk xvdb: /etc/shadow is not under xend-relocation-paths-allow (\(dir)/xen /var/lib/xen/images)")
        // A link inside an allowed directory to a file outside it is refused, and the reverse passes.
        symlink(dir + "/other/disk.img", dir + "/xen/escape.img")
        #expect(refusal(try config(disks: ["file:\(dir)/xen/escape.img,xvdb,w"]), allow: allow)
                == "disk xvdb: \(dir)/xen/escape.img (→ \(dir)/other/disk.img) is not under xend-relocation-paths-allow (\(dir)/xen)")
        symlink(dir + "/xen/vmlinuz", dir + "/other/k")
        #expect(refusal(try config(kernel: dir + "/other/k"), allow: allow) == nil)
        // An allowed directory reached through a link matches the files it holds.
        symlink(dir + "/xen", dir + "/xenlink")
        #expect(refusal(try config(kernel: dir + "/xen/vmlinuz"), allow: [dir + "/xenlink"]) == nil)
        #expect(refusal(try config(kernel: dir + "/xen/vmlinuz"), allow: ["/"]) == nil)
        #expect(IncomingPaths.isUnder("/srv/xen/a", "/srv/xen") && IncomingPaths.isUnder("/srv/xen", "/srv/xen"))
        #expect(!IncomingPaths.isUnder("/srv/xenbad", "/srv/xen") && !IncomingPaths.isUnder("/srv", "/srv/xen"))
    }

    @Test func vifScriptsAreNamesOnly() throws {
        func refusal(_ vif: String) -> String? {
            var c = DomainConfiguration(name: "in")
            c.vifs = [try! VifSpec(parsing: vif)]
            do { try IncomingPaths.checkVifScripts(c); return nil } catch { return error.message }
        }
        #expect(refusal("script=/tmp/evil") == "vif script /tmp/evil: an incoming domain may only name a script of the target's scripts directory")
        #expect(refusal("script=..")?.hasPrefix("vif script ..:") == true)
        #expect(refusal("script=vif-bridge") == nil)
    }

    @Test func hvmCdromIsChecked() throws {
        var c = try config()
        c.builder = .hvm
        c.hvm.cdrom = "/etc/shadow"
        #expect(refusal(c, allow: ["/srv/iso"]) == "cdrom: /etc/shadow is not under xend-relocation-paths-allow (/srv/iso)")
        c.hvm.cdrom = "/proc/self/environ"
        #expect(refusal(c)?.hasSuffix("is under /proc, which an incoming domain may not use") == true)
    }

    @Test func qcow2BackingFilesAreCheckedBeforeTheyAreOpened() throws {
        guard let qemuImg = (["/usr/bin/qemu-img", "/usr/local/bin/qemu-img"] as [String]).first(where: { (p: String) in access(p, X_OK) == 0 }) else {
            print("SKIP: \(#function): qemu-img missing"); return
        }
        let dir = try scratch(["base.raw"])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func qcow2(_ name: String, backing: String, format: String) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: qemuImg)
            p.arguments = ["create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", format, dir + "/" + name, "1M"]
            try p.run()
            p.waitUntilExit()
            #expect(p.terminationStatus == 0, "qemu-img create \(name)")
        }
        // top → mid.qcow2 (relative name) → base.raw: all in the allowed directory.
        try qcow2("mid.qcow2", backing: "base.raw", format: "raw")
        try qcow2("top.qcow2", backing: dir + "/mid.qcow2", format: "qcow2")
        #expect(refusal(try config(disks: ["tap:qcow2:\(dir)/top.qcow2,xvda,r"]), allow: [dir]) == nil)
        // A layer further down naming a file outside it, or in /proc.
        try qcow2("evil-mid.qcow2", backing: "/etc/shadow", format: "raw")
        try qcow2("evil.qcow2", backing: dir + "/evil-mid.qcow2", format: "qcow2")
        #expect(refusal(try config(disks: ["tap:qcow2:\(dir)/evil.qcow2,xvda,r"]), allow: [dir])
                == "disk xvda (backing file of \(dir)/evil-mid.qcow2): /etc/shadow is not under xend-relocation-paths-allow (\(dir))")
        try qcow2("proc.qcow2", backing: "/proc/self/environ", format: "raw")
        #expect(refusal(try config(disks: ["tap:qcow2:\(dir)/proc.qcow2,xvda,r"]))?
                    .hasPrefix("disk xvda (backing file of \(dir)/proc.qcow2): /proc/self/environ (→ /proc/") == true)
        // A loop (a → b → a) ends at the depth bound, by name.
        try qcow2("loop-a.qcow2", backing: "loop-b.qcow2", format: "qcow2")
        try qcow2("loop-b.qcow2", backing: "loop-a.qcow2", format: "qcow2")
        #expect(refusal(try config(disks: ["tap:qcow2:\(dir)/loop-a.qcow2,xvda,r"]))
                == "disk xvda: the backing chain of \(dir)/loop-a.qcow2 is deeper than \(16) files")
    }

    @Test func theRootFileSystemsDeviceIsRefusedAsPhy() throws {
        var st = stat()
        guard stat("/", &st) == 0 else { Issue.record("stat /"); return }
        let n = HostBlockUse.number(st.st_dev)
        guard FileManager.default.fileExists(atPath: "/sys/dev/block/" + n) else {
            print("SKIP: \(#function): / is not on a block device (\(n), e.g. overlay)"); return
        }
        // The device node: /dev/NAME from sysfs' uevent, else one made here (needs root).
        let uevent = (try? String(contentsOfFile: "/sys/dev/block/\(n)/uevent", encoding: .utf8)) ?? ""
        let name = uevent.split(separator: "\n").first { $0.hasPrefix("DEVNAME=") }.map { String($0.dropFirst(8)) }
        var node = name.map { "/dev/" + $0 } ?? ""
        var dst = stat()
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        if node.isEmpty || stat(node, &dst) != 0 || dst.st_rdev != st.st_dev {
            guard getuid() == 0 else { print("SKIP: \(#function): no /dev node for \(n) and not root to make one"); return }
            node = dir + "/root-disk"
            guard mknod(node, S_IFBLK | 0o600, st.st_dev) == 0 else {
                print("SKIP: \(#function): mknod: \(String(cString: strerror(errno)))"); return
            }
        }
        let why = refusal(try config(disks: ["phy:\(node),xvdb,w"]))
        #expect(why?.hasPrefix("disk xvdb: \(node) is in use by the host (") == true, "\(why ?? "passed")")
        #expect(HostBlockUse.read().use(of: st.st_dev) != nil)
        // The whole disk holding it, when / is on a partition.
        if FileManager.default.fileExists(atPath: "/sys/dev/block/\(n)/partition") {
            let disk = URL(fileURLWithPath: "/sys/dev/block/" + n).resolvingSymlinksInPath().deletingLastPathComponent().path
            if let d = try? String(contentsOfFile: disk + "/dev", encoding: .utf8) {
                let parts = d.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ":").compactMap { UInt32($0) }
                if parts.count == 2 {
                    #expect(HostBlockUse.read().use(of: devNumber(parts[0], parts[1]))?.hasPrefix("its partition ") == true)
                }
            }
        }
    }

    @Test func anUnusedBlockDeviceIsAllowed() throws {
        // A device nobody mounts: a loop device node not bound to anything (its number is
        // enough; the policy only looks at the host's use of it).
        guard getuid() == 0 else { print("SKIP: \(#function): needs root (mknod)"); return }
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let node = dir + "/loop-free"
        let dev = devNumber(7, 250)   // loop250: created on demand, not mounted on any host here
        guard HostBlockUse.read().use(of: dev) == nil else { print("SKIP: \(#function): loop250 is in use"); return }
        guard mknod(node, S_IFBLK | 0o600, dev) == 0 else { print("SKIP: \(#function): mknod: \(String(cString: strerror(errno)))"); return }
        #expect(refusal(try config(disks: ["phy:\(node),xvdb,w"])) == nil)
        #expect(refusal(try config(disks: ["phy:\(node),xvdb,w"]), allow: ["/var/lib/xen/images"])?.contains("is not under xend-relocation-paths-allow") == true)
    }
}
