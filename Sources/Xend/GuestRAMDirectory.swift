// Where qemu-engine domains' shared guest RAM lives (xend-config `qemu-ram-directory`): a
// tmpfs mounted with `huge=advise`, so that QEMU's MADV_HUGEPAGE on guest RAM gives it
// 2 MiB transparent huge pages. A memfd lives on the kernel's internal shmem mount, whose
// huge-page policy is the host-wide `shmem_enabled` (Debian's default: never); a tmpfs of
// our own carries its policy in its mount options and changes nothing else on the host.
import Foundation
import Logging
#if canImport(Glibc)
import Glibc
#endif

enum GuestRAMDirectory {
    /// Mount options of the tmpfs xend makes: huge pages where the mapping asks for them
    /// (QEMU does for guest RAM), at most the host's RAM in all, root's alone (QEMU makes
    /// its file before it drops privileges; the back-ends get descriptors, never the path).
    static let mountOptions = "huge=advise,size=100%,mode=0700"

    /// Makes `path` usable as QEMU's `mem-path`. A path that is already a mount point is used
    /// as it is (a tmpfs or hugetlbfs the administrator made); otherwise xend, as root,
    /// creates the directory and mounts a tmpfs there (``mountOptions``). The mount stays
    /// after xend stops (like /dev/shm): running domains' RAM files live on it, unlinked.
    /// - Returns: `path`, or nil when it cannot be used (not root, the mount refused, a
    ///   file in the way); the reason is logged and domains then get a memfd, as before.
    static func prepare(_ path: String, log: Logger) -> String? {
        if isMountPoint(path) { return path }
        guard geteuid() == 0 else {
            log.info("qemu-ram-directory \(path): not a mount point and xend is not root: guest RAM stays in memfds")
            return nil
        }
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            log.error("qemu-ram-directory \(path): \(error.localizedDescription): guest RAM stays in memfds")
            return nil
        }
        guard mount("xenith-guest-ram", path, "tmpfs", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), mountOptions) == 0 else {
            log.error("qemu-ram-directory \(path): mount tmpfs (\(mountOptions)): \(String(cString: strerror(errno))): guest RAM stays in memfds")
            return nil
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
