import CoreControl
import Testing
@testable import Xend

/// The cpu controller is found from /proc/mounts: a v2 hierarchy only when it has the cpu
/// controller, else the v1 `cpu` mount (this host's layout: v1 controllers, empty v2 beside).
@Test func cpuControllerIsFoundFromMounts() {
    let v1 = """
        cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
        cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
        cgroup2 /nonexistent/unified cgroup2 rw,relatime 0 0
        """
    let g = CPUGroups.detect(root: "/tmp/r", mounts: v1, requireRoot: false)
    #expect(g?.version == .v1 && g?.mount == "/sys/fs/cgroup/cpu")
    #expect(CPUGroups.detect(root: "/", mounts: "cgroup2 /nonexistent cgroup2 rw 0 0\n", requireRoot: false) == nil)
    #expect(CPUGroups.detect(root: "/", mounts: "cgroup /x cgroup rw,cpuacct 0 0\n", requireRoot: false) == nil)
}

/// One parent per $XENITH_ROOT, so test roots never share groups; domains by domid.
@Test func groupNamesComeFromTheRootAndDomid() {
    #expect(CPUGroups.parentName(root: "/") == "xenith")
    let a = CPUGroups.parentName(root: "/tmp/a"), b = CPUGroups.parentName(root: "/tmp/b")
    #expect(a != b && a.hasPrefix("xenith-") && a.count == 23)
    #expect(CPUGroups.parentName(root: "/tmp/a/") == a)
    let g = CPUGroups(version: .v1, mount: "/sys/fs/cgroup/cpu", parentName: a)
    #expect(g.path(7) == "/sys/fs/cgroup/cpu/\(a)/domain-7")
}

/// Xen's weight and cap in the kernel's units: 256 is the default share either way; a cap
/// is a CFS quota per 100 ms period.
@Test func weightsAndCapsMapToTheKernelsUnits() {
    #expect(CPUGroups.shares(weight: 256) == 1024 && CPUGroups.shares(weight: 768) == 3072)
    #expect(CPUGroups.shares(weight: 1) == 4 && CPUGroups.shares(weight: 65535) == 262_140)
    #expect(CPUGroups.v2Weight(weight: 256) == 100 && CPUGroups.v2Weight(weight: 768) == 300)
    #expect(CPUGroups.v2Weight(weight: 1) == 1 && CPUGroups.v2Weight(weight: 65535) == 10_000)
    #expect(CPUGroups.quotaUs(cap: 0) == nil && CPUGroups.quotaUs(cap: 20) == 20_000 && CPUGroups.quotaUs(cap: 150) == 150_000)
}

/// The core's `query` reply carries its vCPU threads' ids; a reply without them still parses.
@Test func coreQueryCarriesVcpuThreadIDs() {
    let s = CoreControlStatus(state: .running, vcpus: 2, vcpuTimeNs: [5, 6], uptimeNs: 9, pid: 42, vcpuThreadIDs: [100, 101])
    #expect(s.line == "ok state=running vcpus=2 vcpu_time_ns=5,6 uptime_ns=9 pid=42 vcpu_tids=100,101")
    #expect(CoreControlStatus(parsing: s.line) == s)
    #expect(CoreControlStatus(parsing: "ok state=paused vcpus=1 vcpu_time_ns=1 uptime_ns=2 pid=3")?.vcpuThreadIDs == [])
}
