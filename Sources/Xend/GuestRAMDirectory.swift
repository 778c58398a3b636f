// Where qemu-engine domains' shared guest RAM lives (xend-config `qemu-ram-directory`): a
// tmpfs mounted with `huge=advise`, so that QEMU's MADV_HUGEPAGE on guest RAM gives it
// 2 MiB transparent huge pages. A memfd lives on the kernel's internal shmem mount, whose
// huge-page policy is the host-wide `shmem_enabled` (Debian's default: never); a tmpfs of
// our own carries its policy in its mount options and changes nothing else on the host.
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
        // One xend at a time checks and mounts (several roots on a host share the path).
        let parent = (path as NSString).deletingLastPathComponent
        if geteuid() == 0 { XenithPaths.makeDirectories(parent) }
        let lockFD = open(parent.isEmpty ? "/" : parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if lockFD >= 0 { _ = flock(lockFD, LOCK_EX) }
        defer { if lockFD >= 0 { close(lockFD) } }
        if let m = mountInfo(at: path) {
            guard m.type == "tmpfs" else { return refuse("a \(m.type) file system is mounted there, not a tmpfs") }
            guard !m.readOnly else { return refuse("its tmpfs is mounted read-only") }
            if let size = m.sizeLimit {
                log.warning("qemu-ram-directory \(path): its tmpfs is limited to \(size) (size=): a guest that touches RAM past what is left gets SIGBUS; xend's own mount has no limit")
            }
            log.info("qemu-ram-directory \(path): guest RAM on the tmpfs mounted there (\(m.options))")
            return path
        }
        guard geteuid() == 0 else {
            log.info("qemu-ram-directory \(path): not a mount point and xend is not root: guest RAM stays in memfds")
            return nil
        }
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

    /// The mount on top at `path` (the last of /proc/self/mountinfo's lines naming it as
    /// their mount point; a bind mount counts), nil when none is.
    static func mountInfo(at path: String) -> (type: String, readOnly: Bool, options: String, sizeLimit: String?)? {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
        // Mount points escape space, tab, newline and backslash as octal (\040 ...).
        let escaped = path.replacingOccurrences(of: "\\", with: "\\134").replacingOccurrences(of: " ", with: "\\040")
            .replacingOccurrences(of: "\t", with: "\\011").replacingOccurrences(of: "\n", with: "\\012")
        var found: (String, Bool, String, String?)?
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 6, f[4] == escaped, let dash = f.firstIndex(of: "-"), dash + 3 < f.count else { continue }
            let superOptions = f[dash + 3].split(separator: ",")
            let size = superOptions.first { $0.hasPrefix("size=") }.map { String($0.dropFirst(5)) }
            found = (String(f[dash + 1]), f[5].split(separator: ",").contains("ro"), String(f[dash + 3]),
                     size == nil || size == "0k" ? nil : size)
        }
        return found
    }

    /// Whether `path` still has a writable tmpfs mounted: checked before each domain's
    /// QEMU starts (an administrator may have unmounted it since xend started; QEMU would
    /// then put guest RAM in a file on the disk below).
    static func stillUsable(_ path: String) -> Bool {
        guard let m = mountInfo(at: path) else { return false }
        return m.type == "tmpfs" && !m.readOnly
    }
}
