import Foundation
import Logging
import Testing
@testable import Xend
#if canImport(Glibc)
import Glibc
#endif

/// xend-config `qemu-ram-directory`: the tmpfs xend mounts for qemu-engine guest RAM, only
/// on an empty directory, with huge pages allowed and no size limit; used as it is when
/// already mounted; never over files.
@Suite struct GuestRAMDirectoryTests {
    @Test func mountsOnAnEmptyDirectoryOnlyAndReusesTheMount() throws {
        guard geteuid() == 0 else { print("SKIP: GuestRAMDirectoryTests: needs root (mount)"); return }
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let log = Logger(label: "test")
        // A directory with a file in it is not mounted over.
        let full = root + "/full"
        try FileManager.default.createDirectory(atPath: full, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: full + "/keep", contents: Data("x".utf8))
        #expect(GuestRAMDirectory.prepare(full, log: log) == nil)
        #expect(GuestRAMDirectory.mountInfo(at: full) == nil)
        #expect(FileManager.default.fileExists(atPath: full + "/keep"))
        // A path that does not exist yet: made (parents 0755) and mounted.
        let ram = root + "/run/xenith/guest-ram"
        #expect(GuestRAMDirectory.prepare(ram, log: log) == ram)
        defer { umount2(ram, 2 /* MNT_DETACH */) }
        #expect(GuestRAMDirectory.mountInfo(at: ram) != nil)
        var st = stat()
        #expect(stat(root + "/run/xenith", &st) == 0 && st.st_mode & 0o777 == 0o755)
        let opts = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
            .split(separator: "\n").first { $0.split(separator: " ")[4] == ram }.map(String.init) ?? ""
        #expect(opts.contains(" tmpfs xenith-guest-ram "))
        #expect(opts.contains("huge=advise"))
        #expect(opts.contains("size=0k"))   // no limit, as under a memfd
        // Already a tmpfs mount point: used as it is, not mounted again.
        #expect(GuestRAMDirectory.prepare(ram, log: log) == ram)
        let mounts = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
            .split(separator: "\n").filter { $0.split(separator: " ")[4] == ram }
        #expect(mounts.count == 1)
    }

    /// From a break-it run: a bind mount of a disk directory and a read-only tmpfs are
    /// refused (not mounted over, not used); a directory unmounted after xend started is no
    /// longer used for new domains.
    @Test func bindMountsReadOnlyTmpfsAndUnmountedDirectoriesAreNotUsed() throws {
        guard geteuid() == 0 else { print("SKIP: GuestRAMDirectoryTests: needs root (mount)"); return }
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let log = Logger(label: "test")
        let src = root + "/src", bind = root + "/bind", ro = root + "/ro"
        for d in [src, bind, ro] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        guard Glibc.mount(src, bind, nil, 4096 /* MS_BIND */, nil) == 0 else { Issue.record("bind mount: errno \(errno)"); return }
        defer { umount2(bind, 2) }
        #expect(GuestRAMDirectory.mountInfo(at: bind) != nil)
        #expect(GuestRAMDirectory.prepare(bind, log: log) == nil)
        #expect(GuestRAMDirectory.mountInfo(at: bind)?.type != "tmpfs")   // not mounted over
        guard Glibc.mount("t", ro, "tmpfs", 1 /* MS_RDONLY */, "size=1m") == 0 else { Issue.record("tmpfs: errno \(errno)"); return }
        #expect(GuestRAMDirectory.prepare(ro, log: log) == nil)
        #expect(!GuestRAMDirectory.stillUsable(ro))
        umount2(ro, 2)
        let ram = root + "/ram"
        #expect(GuestRAMDirectory.prepare(ram, log: log) == ram)
        #expect(GuestRAMDirectory.stillUsable(ram))
        umount2(ram, 2)
        #expect(!GuestRAMDirectory.stillUsable(ram))
    }
}
