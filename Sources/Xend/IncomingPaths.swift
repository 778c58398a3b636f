// Which host paths an incoming domain may name. A migration peer (MigrationReceive) or a
// save file (DomainSave's restore) chooses the configuration the target starts, so every
// path in it is untrusted: a `ramdisk` of /etc/shadow would be loaded into guest memory
// (QEMU's -initrd, readable through fw_cfg; the core engine copies it into guest RAM,
// which a stream need not overwrite), a `file:` disk of /etc/shadow or a `phy:` disk of
// the host's root device would be served to the guest read-write.
//
// The policy: each path resolved with realpath; never under /proc, /sys or /run, and
// under /dev only as a `phy:` block device; images, kernels and ramdisks regular files;
// a `phy:` device one the host does not use (mounted, active swap, held by device-mapper
// or md, a whole disk with such a partition); with `xend-relocation-paths-allow` set,
// under one of its directories. A vif script must be a name in the target's scripts
// directory. Not checked: `bootloader` and `device_model`, which no engine here runs.
import BlockBackend
import DomainConfig
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The target's checks of every host path an incoming domain's configuration names.
struct IncomingPaths: Sendable {
    /// `xend-relocation-paths-allow` (absolute directories, normalised by `XendConfig`);
    /// empty: no list, only the other checks.
    let allow: [String]

    /// Trees no incoming path may lie in (/dev: except a `phy:` block device).
    static let forbidden = ["/proc", "/sys", "/run"]

    init(allow: [String]) { self.allow = allow }

    /// Checks the kernel, ramdisk, HVM cdrom and every disk of `cfg`, and the backing
    /// files of each qcow2 disk.
    /// - Throws: `XendError` 400 naming the key (`kernel`, `ramdisk`, `cdrom`, `disk VDEV`),
    ///   the path and the reason.
    func check(_ cfg: DomainConfiguration) throws(XendError) {
        if let k = cfg.kernel { _ = try regularFile("kernel", k) }
        if let r = cfg.ramdisk { _ = try regularFile("ramdisk", r) }
        if cfg.builder == .hvm, let c = cfg.hvm.cdrom, !c.isEmpty { try fileOrDevice("cdrom", c) }
        for d in cfg.disks {
            guard let p = d.path else { continue }
            let key = "disk \(d.vdev)"
            let real = d.kind == .phy ? try blockDevice(key, p) : try regularFile(key, p)
            // A qcow2 image (in a file, or on a device) names further files in its header.
            if d.format == "qcow2" { try backingChain(key, real) }
        }
    }

    /// A vif script an incoming domain names must be one of the target's scripts directory
    /// (a name, no path): the peer or save file would otherwise choose what runs as root.
    /// - Throws: `XendError` 400 naming the script.
    static func checkVifScripts(_ cfg: DomainConfiguration) throws(XendError) {
        if let v = cfg.vifs.first(where: { ($0.script ?? "").contains("/") || ($0.script ?? "") == ".." }) {
            throw XendError(.badRequest, "vif script \(v.script!): an incoming domain may only name a script of the target's scripts directory")
        }
    }

    /// `path` resolved, checked against the forbidden trees and the allow list.
    /// - Parameter device: `path` is a `phy:` device, which may lie under /dev.
    /// - Returns: the resolved path and its `stat`.
    func resolve(_ key: String, _ path: String, device: Bool = false) throws(XendError) -> (String, stat) {
        guard path.hasPrefix("/") else { throw XendError(.badRequest, "\(key): \(path) is not an absolute path") }
        guard let c = realpath(path, nil) else {
            throw XendError(.badRequest, "\(key): \(path) is missing on the target: \(String(cString: strerror(errno)))")
        }
        let real = String(cString: c)
        free(c)
        let shown = real == path ? path : "\(path) (→ \(real))"
        if let root = (Self.forbidden + (device ? [] : ["/dev"])).first(where: { Self.isUnder(real, $0) }) {
            throw XendError(.badRequest, "\(key): \(shown) is under \(root), which an incoming domain may not use")
        }
        if !allow.isEmpty && !allow.contains(where: { Self.isUnder(real, $0) || Self.isUnder(real, Self.realDirectory($0)) }) {
            throw XendError(.badRequest, "\(key): \(shown) is not under xend-relocation-paths-allow (\(allow.joined(separator: " ")))")
        }
        var st = stat()
        guard stat(real, &st) == 0 else {
            throw XendError(.badRequest, "\(key): \(shown): \(String(cString: strerror(errno)))")
        }
        return (real, st)
    }

    /// A kernel, ramdisk or image file: resolved, allowed, a regular file.
    /// - Returns: the resolved path.
    func regularFile(_ key: String, _ path: String) throws(XendError) -> String {
        let (real, st) = try resolve(key, path)
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw XendError(.badRequest, "\(key): \(path) is not a regular file")
        }
        return real
    }

    /// A `phy:` device: resolved (under /dev allowed), allowed, a block device the host
    /// does not use.
    /// - Returns: the resolved path.
    @discardableResult
    func blockDevice(_ key: String, _ path: String) throws(XendError) -> String {
        let (real, st) = try resolve(key, path, device: true)
        guard st.st_mode & S_IFMT == S_IFBLK else {
            throw XendError(.badRequest, "\(key): \(path) is not a block device")
        }
        if let use = HostBlockUse.read().use(of: st.st_rdev) {
            throw XendError(.badRequest, "\(key): \(path) is in use by the host (\(use))")
        }
        return real
    }

    /// A CD-ROM image or drive, or a qcow2 backing file: a regular file, or a block
    /// device as `phy:`.
    /// - Returns: the resolved path.
    @discardableResult
    func fileOrDevice(_ key: String, _ path: String) throws(XendError) -> String {
        var st = stat()
        if stat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFBLK { return try blockDevice(key, path) }
        return try regularFile(key, path)
    }

    /// The backing files a qcow2 image names (its header, then each qcow2 backing file's),
    /// each checked as a file or device before it is opened: the image's own bytes, which
    /// a guest or peer may have written, choose them. Relative names are relative to the
    /// naming image's directory, as `Qcow2Chain` reads them; a chain deeper than
    /// `Qcow2Chain.maxDepth` is refused. A header that does not parse is left to the
    /// back-end's own checks (it names the error).
    func backingChain(_ key: String, _ image: String) throws(XendError) {
        var namer = image
        var fd = open(image, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw XendError(.badRequest, "\(key): \(image): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        for _ in 0...Qcow2Chain.maxDepth {
            guard Qcow2Header.isQcow2(fd: fd), let h = try? Qcow2Header(fd: fd, writable: false), let name = h.backingFile else { return }
            let path = name.hasPrefix("/") ? name : (namer as NSString).deletingLastPathComponent + "/" + name
            let real = try fileOrDevice("\(key) (backing file of \(namer))", path)
            // Only a qcow2 layer names further files (Qcow2Chain reads the rest as raw or refuses it).
            guard h.backingFormat == "qcow2" else { return }
            let next = open(real, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
            guard next >= 0 else { throw XendError(.badRequest, "\(key): backing file \(path) of \(namer): \(String(cString: strerror(errno)))") }
            close(fd)
            fd = next
            namer = real
        }
        throw XendError(.badRequest, "\(key): the backing chain of \(image) is deeper than \(Qcow2Chain.maxDepth) files")
    }

    /// Whether `path` is `dir` or lies below it (`/srv/xen` holds `/srv/xen/a`, not `/srv/xenbad`).
    static func isUnder(_ path: String, _ dir: String) -> Bool {
        dir == "/" || path == dir || path.hasPrefix(dir + "/")
    }

    /// `dir` with its symbolic links resolved, itself when it does not resolve.
    static func realDirectory(_ dir: String) -> String {
        guard let c = realpath(dir, nil) else { return dir }
        defer { free(c) }
        return String(cString: c)
    }
}

/// How this host uses its block devices, as xend's mount namespace sees them.
struct HostBlockUse {
    /// `major:minor` of every mounted device (/proc/self/mountinfo, field 3).
    var mounted: Set<String> = []
    /// `major:minor` of every active swap partition (/proc/swaps).
    var swaps: Set<String> = []

    /// The current state (an unreadable file counts as nothing in use; sysfs is read by `use`).
    static func read() -> HostBlockUse {
        var u = HostBlockUse()
        if let t = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) {
            for line in t.split(separator: "\n") {
                let f = line.split(separator: " ")
                if f.count > 2 { u.mounted.insert(String(f[2])) }
            }
        }
        if let t = try? String(contentsOfFile: "/proc/swaps", encoding: .utf8) {
            for line in t.split(separator: "\n").dropFirst() {
                guard let name = line.split(separator: " ").first else { continue }
                var st = stat()
                if stat(String(name), &st) == 0 && st.st_mode & S_IFMT == S_IFBLK { u.swaps.insert(Self.number(st.st_rdev)) }
            }
        }
        return u
    }

    /// `major:minor` of a device number (glibc's encoding).
    static func number(_ rdev: dev_t) -> String {
        let dev = UInt64(rdev)
        return "\(((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfff)):\((dev & 0xff) | ((dev >> 12) & ~0xff))"
    }

    /// Why the host uses device `rdev`, nil when it does not: mounted, an active swap,
    /// held by another device (/sys/dev/block/M:m/holders: device-mapper, md), or, for a
    /// whole disk, one of its partitions so used; for a partition, its disk mounted whole.
    func use(of rdev: dev_t) -> String? {
        let n = Self.number(rdev)
        if let why = direct(n) { return why }
        let sys = "/sys/dev/block/" + n
        let fm = FileManager.default
        if fm.fileExists(atPath: sys + "/partition") {
            // The disk is the parent directory of the partition's sysfs directory.
            let parent = URL(fileURLWithPath: sys).resolvingSymlinksInPath().deletingLastPathComponent().path
            if let d = try? String(contentsOfFile: parent + "/dev", encoding: .utf8) {
                let pn = d.trimmingCharacters(in: .whitespacesAndNewlines)
                if mounted.contains(pn) || swaps.contains(pn) { return "its disk \(pn) is mounted or swapped on" }
            }
        } else if let entries = try? fm.contentsOfDirectory(atPath: sys + "/") {
            for e in entries.sorted() where fm.fileExists(atPath: "\(sys)/\(e)/partition") {
                guard let d = try? String(contentsOfFile: "\(sys)/\(e)/dev", encoding: .utf8) else { continue }
                if let why = direct(d.trimmingCharacters(in: .whitespacesAndNewlines)) { return "its partition \(e) is \(why)" }
            }
        }
        return nil
    }

    /// Mounted, swap or held: the device `n` (`major:minor`) itself.
    private func direct(_ n: String) -> String? {
        if mounted.contains(n) { return "mounted" }
        if swaps.contains(n) { return "an active swap device" }
        if let h = try? FileManager.default.contentsOfDirectory(atPath: "/sys/dev/block/\(n)/holders"), !h.isEmpty {
            return "held by \(h.sorted().joined(separator: ", "))"
        }
        return nil
    }
}
