// Where qemu-engine domains' shared guest RAM lives (xend-config `qemu-ram-directory`): a
// tmpfs mounted with `huge=advise`, so that QEMU's MADV_HUGEPAGE on guest RAM gives it
// 2 MiB transparent huge pages. A memfd lives on the kernel's internal shmem mount, whose
// huge-page policy is the host-wide `shmem_enabled` (Debian's default: never); a tmpfs of
// our own carries its policy in its mount options and changes nothing else on the host.
import CLinux
import Foundation
import Logging
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

enum GuestRAMDirectory {
    /// Mount options of the tmpfs xend makes: huge pages where the mapping asks for them
    /// (QEMU does for guest RAM); no size limit, as the kernel's own shmem mount under a
    /// memfd has none (a full tmpfs would SIGBUS whichever domain faults next, where memory
    /// pressure behaves as for any other RAM); root's alone (QEMU makes its file before it
    /// drops privileges; the back-ends get descriptors, never the path).
    static let mountOptions = "huge=advise,size=0,mode=0700"
    /// MS_NOSUID | MS_NODEV | MS_NOEXEC (<linux/mount.h>; glibc's and the kernel's headers
    /// both define the names, which Swift then finds ambiguous).
    static let mountFlags: UInt = 0x2 | 0x4 | 0x8
    /// statfs(2) f_type of tmpfs.
    static let tmpfsMagic = 0x0102_1994

    /// Makes `path` usable as QEMU's `mem-path`. A tmpfs already mounted there is used as it
    /// is (one the administrator made, with options of their own); otherwise xend, as root,
    /// creates the directory (parents 0755, like its other run directories) and mounts a
    /// tmpfs on it (``mountOptions``), but only on an empty directory: it never hides files.
    /// The mount stays after xend stops (like /dev/shm): running domains' RAM files live on
    /// it, unlinked. The path is the host's, not under `XENITH_ROOT` (a mount inside a root
    /// that tests remove would outlive it).
    /// - Returns: `path`, or nil when it cannot be used (not root, another file system
    ///   mounted there, a directory with files, the mount refused); the reason is logged and
    ///   domains then get a memfd, as before.
    static func prepare(_ path: String, log: Logger) -> String? {
        func refuse(_ why: String) -> String? {
            log.error("qemu-ram-directory \(path): \(why): guest RAM stays in memfds")
            return nil
        }
        if isMountPoint(path) {
            var type = 0
            guard clinux_fs_type(path, &type) == 0 else { return refuse(String(cString: strerror(errno))) }
            guard type == tmpfsMagic else {
                return refuse("a file system other than tmpfs is mounted there (f_type 0x\(String(type, radix: 16)))")
            }
            return path
        }
        guard geteuid() == 0 else {
            log.info("qemu-ram-directory \(path): not a mount point and xend is not root: guest RAM stays in memfds")
            return nil
        }
        XenithPaths.makeDirectories((path as NSString).deletingLastPathComponent)
        if mkdir(path, 0o700) != 0 && errno != EEXIST { return refuse("mkdir: \(String(cString: strerror(errno)))") }
        var st = stat()
        guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else { return refuse("not a directory") }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        guard entries.isEmpty else { return refuse("not a mount point and not empty (xend mounts only on an empty directory)") }
        guard mount("xenith-guest-ram", path, "tmpfs", mountFlags, mountOptions) == 0 else {
            return refuse("mount tmpfs (\(mountOptions)): \(String(cString: strerror(errno)))")
        }
        log.info("qemu-ram-directory \(path): mounted a tmpfs (\(mountOptions)) for guest RAM")
        return path
    }

    /// Whether `path` is a directory on a different file system than its parent.
    static func isMountPoint(_ path: String) -> Bool {
        var st = stat(), parent = stat()
        guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR,
              stat(path + "/..", &parent) == 0 else { return false }
        return st.st_dev != parent.st_dev
    }
}
