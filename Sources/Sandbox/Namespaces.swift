// unshare(2) and the empty root (mount namespace).
import Glibc
import CLinux

enum Namespaces {
    // mount(2) flags (<linux/mount.h>; glibc's and the kernel's headers both define them,
    // which makes the imported names ambiguous).
    static let MS_RDONLY: UInt = 0x1, MS_NOSUID: UInt = 0x2, MS_NODEV: UInt = 0x4,
        MS_NOEXEC: UInt = 0x8, MS_REMOUNT: UInt = 0x20, MS_BIND: UInt = 0x1000,
        MS_REC: UInt = 0x4000, MS_PRIVATE: UInt = 0x40000
    static let MNT_DETACH: Int32 = 0x2

    static func flag(_ ns: Namespace) -> Int32 {
        switch ns {
        case .user: return CLINUX_CLONE_NEWUSER
        case .mount: return CLINUX_CLONE_NEWNS
        case .pid: return CLINUX_CLONE_NEWPID
        case .ipc: return CLINUX_CLONE_NEWIPC
        case .net: return CLINUX_CLONE_NEWNET
        case .uts: return CLINUX_CLONE_NEWUTS
        case .cgroup: return CLINUX_CLONE_NEWCGROUP
        }
    }

    /// Unshares the user namespace first (mapping the caller's uid/gid to themselves, so a
    /// root service stays uid 0 inside it while the namespace owns the others), then all
    /// other namespaces in one call.
    static func unshare(_ namespaces: [Namespace]) throws(SandboxError) {
        if namespaces.contains(.user) {
            let uid = getuid(), gid = getgid()
            guard clinux_unshare(CLINUX_CLONE_NEWUSER) == 0 else {
                throw SandboxError(step: "unshare(CLONE_NEWUSER)", code: errno)
            }
            try writeProcFile("/proc/self/setgroups", "deny")
            try writeProcFile("/proc/self/uid_map", "\(uid) \(uid) 1")
            try writeProcFile("/proc/self/gid_map", "\(gid) \(gid) 1")
        }
        let flags = namespaces.filter { $0 != .user }.reduce(Int32(0)) { $0 | flag($1) }
        guard flags != 0 else { return }
        guard clinux_unshare(flags) == 0 else {
            let names = namespaces.filter { $0 != .user }.map(\.rawValue).joined(separator: ",")
            throw SandboxError(step: "unshare(\(names))", code: errno)
        }
    }

    /// Directories tried, in order, as the mount point of the new empty root. The mount is
    /// private to the new mount namespace; the host never sees it.
    static let scratchDirectories = ["/tmp", "/mnt", "/var/empty", "/run"]

    /// Makes every mount private, mounts an empty tmpfs, pivots into it with
    /// pivot_root(".", "."), detaches the old root and remounts the new one read-only.
    /// Afterwards "/" is an empty directory and /proc, /dev and /sys do not exist.
    static func pivotIntoEmptyRoot() throws(SandboxError) {
        guard mount(nil, "/", nil, MS_REC | MS_PRIVATE, nil) == 0 else {
            throw SandboxError(step: "mount --make-rprivate /", code: errno)
        }
        var st = stat()
        guard let dir = scratchDirectories.first(where: { stat($0, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR }) else {
            throw SandboxError(step: "no directory to mount the empty root on (tried \(scratchDirectories))", code: ENOENT)
        }
        let flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        guard mount("xenith-sandbox", dir, "tmpfs", flags, "size=16k,nr_inodes=16,mode=0555") == 0 else {
            throw SandboxError(step: "mount empty tmpfs on \(dir)", code: errno)
        }
        guard chdir(dir) == 0 else { throw SandboxError(step: "chdir \(dir)", code: errno) }
        guard clinux_pivot_root(".", ".") == 0 else {
            throw SandboxError(step: "pivot_root into the empty tmpfs", code: errno)
        }
        // The old root is now stacked under "."; detach it.
        guard umount2(".", MNT_DETACH) == 0 else {
            throw SandboxError(step: "unmount the old root", code: errno)
        }
        guard chdir("/") == 0 else { throw SandboxError(step: "chdir /", code: errno) }
        guard mount(nil, "/", nil, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, nil) == 0 else {
            throw SandboxError(step: "remount the empty root read-only", code: errno)
        }
    }

    private static func writeProcFile(_ path: String, _ text: String) throws(SandboxError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SandboxError(step: "open \(path)", code: errno) }
        defer { close(fd) }
        var text = text
        let n = text.withUTF8 { write(fd, $0.baseAddress, $0.count) }
        guard n == text.utf8.count else { throw SandboxError(step: "write \(path)", code: errno) }
    }
}
