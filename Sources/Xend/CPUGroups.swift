// The kernel's CPU controller for domains (`cpu_weight`, `cpu_cap`, `xm sched-credit`): one
// control group per domain under a parent named after $XENITH_ROOT, holding the domain's
// engine process(es). cgroup v2 (`cpu.weight`, `cpu.max`) where a v2 hierarchy has the cpu
// controller, else v1 (`cpu.shares`, `cpu.cfs_quota_us`). The group's name is derived from
// the domid, so a restarted xend finds it again; it is removed when the domain ends.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Errors of the CPU controller; `message` is shown to the user.
struct CPUGroupError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// The domains' CPU control groups on this host.
final class CPUGroups: Sendable {
    /// Which cgroup interface `mount` speaks.
    enum Version: String, Sendable { case v1, v2 }
    let version: Version
    /// Where the cpu controller's hierarchy is mounted (`/sys/fs/cgroup/cpu`).
    let mount: String
    /// The parent group of this xend's domains (`MOUNT/xenith-HASH`).
    let parent: String
    /// CFS period, microseconds (caps are a share of it).
    static let periodUs = 100_000

    init(version: Version, mount: String, parentName: String) {
        self.version = version; self.mount = mount; self.parent = mount + "/" + parentName
    }

    /// The parent group's name for `root` (`$XENITH_ROOT`): `xenith` for `/`, else
    /// `xenith-` and 16 hex digits of the path's FNV-1a hash, so test roots never share one.
    static func parentName(root: String) -> String {
        let r = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
        if r == "/" || r.isEmpty { return "xenith" }
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in r.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return "xenith-" + String(h, radix: 16).leftPadded(16)
    }

    /// The cpu controller of this host from `/proc/mounts` text: a cgroup2 mount whose
    /// `cgroup.controllers` lists `cpu`, else a v1 `cgroup` mount with the `cpu` option;
    /// nil when there is none or xend is not root (it could not write the groups).
    static func detect(root: String, mounts: String? = nil, requireRoot: Bool = true) -> CPUGroups? {
        if requireRoot && geteuid() != 0 { return nil }
        guard let text = mounts ?? (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) else { return nil }
        var v1: String?
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count >= 4 else { continue }
            let dir = String(f[1]).replacingOccurrences(of: "\\040", with: " ")
            if f[2] == "cgroup2" {
                let ctl = (try? String(contentsOfFile: dir + "/cgroup.controllers", encoding: .utf8)) ?? ""
                if ctl.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("cpu") {
                    return CPUGroups(version: .v2, mount: dir, parentName: parentName(root: root))
                }
            } else if f[2] == "cgroup", v1 == nil, f[3].split(separator: ",").contains("cpu") {
                v1 = dir
            }
        }
        return v1.map { CPUGroups(version: .v1, mount: $0, parentName: parentName(root: root)) }
    }

    /// The group of domain `domid`.
    func path(_ domid: Int) -> String { parent + "/domain-\(domid)" }

    /// cgroup v1 `cpu.shares` for a credit weight: 4 × weight (256, Xen's default, is the
    /// kernel's default 1024).
    static func shares(weight: Int) -> Int { max(2, min(weight * 4, 262_144)) }
    /// cgroup v2 `cpu.weight` for a credit weight: weight × 100 / 256 (256 → 100, the
    /// kernel's default), within 1...10000.
    static func v2Weight(weight: Int) -> Int { max(1, min((weight * 100 + 128) / 256, 10_000)) }
    /// CFS quota in microseconds per ``periodUs`` for a cap in percent of one CPU; nil = none.
    static func quotaUs(cap: Int) -> Int? { cap <= 0 ? nil : cap * periodUs / 100 }

    /// Makes (or finds) domain `domid`'s group, sets its weight and cap, and moves `pids`
    /// (whole processes, every thread) into it.
    /// - Throws: `CPUGroupError` naming the file that could not be written.
    func apply(domid: Int, pids: [Int32], weight: Int, cap: Int) throws {
        let dir = path(domid)
        try makeDirectory(parent)
        if version == .v2 {
            try? write(mount + "/cgroup.subtree_control", "+cpu")
            try write(parent + "/cgroup.subtree_control", "+cpu")
        }
        try makeDirectory(dir)
        switch version {
        case .v1:
            try write(dir + "/cpu.shares", String(Self.shares(weight: weight)))
            try write(dir + "/cpu.cfs_period_us", String(Self.periodUs))
            try write(dir + "/cpu.cfs_quota_us", Self.quotaUs(cap: cap).map(String.init) ?? "-1")
        case .v2:
            try write(dir + "/cpu.weight", String(Self.v2Weight(weight: weight)))
            try write(dir + "/cpu.max", (Self.quotaUs(cap: cap).map(String.init) ?? "max") + " \(Self.periodUs)")
        }
        for pid in pids where pid > 0 { try write(dir + "/cgroup.procs", String(pid)) }
    }

    /// The processes in domain `domid`'s group (empty when it has none).
    func members(_ domid: Int) -> [Int32] {
        ((try? String(contentsOfFile: path(domid) + "/cgroup.procs", encoding: .utf8)) ?? "")
            .split(separator: "\n").compactMap { Int32($0) }
    }

    /// Removes domain `domid`'s group once its processes are gone (waits up to 2 s for an
    /// exiting one); a group still holding a live process is left.
    func remove(_ domid: Int) {
        let dir = path(domid)
        guard access(dir, F_OK) == 0 else { return }
        let deadline = Date().addingTimeInterval(2)
        waitMembersGone(domid, until: deadline)
        while rmdir(dir) != 0 && errno == EBUSY && Date() < deadline { usleep(20_000) }
        rmdir(parent)   // only when no other domain's group is left in it
    }

    /// Waits until every process in domain `domid`'s group has ended (a pidfd each, which
    /// becomes readable once the last thread of the process has gone, and with it the
    /// process from the group), or until `deadline`. An engine that was just told to quit
    /// is still unmapping the guest's RAM (~0.1 s for 256 MiB) after its main thread has
    /// exited: a 20 ms rmdir poll alone lost 10 ms on average after it left.
    func waitMembersGone(_ domid: Int, until deadline: Date) {
        for pid in members(domid) {
            let fd = pidfdOpen(pid, 0)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            while poll(&p, 1, Int32(max(0, deadline.timeIntervalSinceNow * 1000))) < 0 && errno == EINTR {}
        }
    }

    /// Removes the groups of domains not in `live` that no process uses any more (left by
    /// domains that ended while xend was down).
    func sweep(live: Set<Int>) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: parent) else { return }
        for n in names where n.hasPrefix("domain-") {
            guard let id = Int(n.dropFirst(7)), !live.contains(id), members(id).isEmpty else { continue }
            rmdir(parent + "/" + n)
        }
    }

    private func makeDirectory(_ dir: String) throws {
        if mkdir(dir, 0o755) != 0 && errno != EEXIST {
            throw CPUGroupError(message: "cannot make the CPU control group \(dir): \(String(cString: strerror(errno)))")
        }
    }

    private func write(_ file: String, _ value: String) throws {
        let fd = open(file, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CPUGroupError(message: "cannot open \(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard n == bytes.count else {
            throw CPUGroupError(message: "cannot write '\(value)' to \(file): \(String(cString: strerror(errno)))")
        }
    }
}

extension String {
    fileprivate func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
