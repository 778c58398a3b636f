// What xend reports about the host itself: Domain-0's row in `xm list`, `xm info`, and the
// memory a new domain may take. Read from /proc and uname(2) on each call.
import DomainConfig
import Foundation
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

enum HostFacts {
    /// The `KEY:  N kB` fields of /proc/meminfo, in KiB.
    static func meminfo() -> [String: Int] {
        guard let m = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return [:] }
        var out: [String: Int] = [:]
        for l in m.split(separator: "\n") {
            let f = l.split(separator: " ")
            if f.count >= 2, f[0].hasSuffix(":") { out[String(f[0].dropLast())] = Int(f[1]) }
        }
        return out
    }

    /// KiB the host can give a new domain (MemAvailable; unbounded when unknown).
    static func freeKiB() -> Int { meminfo()["MemAvailable"] ?? Int.max }

    static var onlineCPUs: Int { Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    /// Domain-0's row: the host's memory and CPUs, xend's own CPU time, the host's boot time.
    static func dom0Info() -> DomainInfo {
        let memKiB = meminfo()["MemTotal"] ?? 0
        var cpu = 0.0
        if let s = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8), let c = s.lastIndex(of: ")") {
            let f = s[s.index(after: c)...].split(separator: " ")
            // 2 is _SC_CLK_TCK (glibc's bits/confname.h): the release build's Glibc module does not export that name.
            if f.count > 12 { cpu = Double((Int(f[11]) ?? 0) + (Int(f[12]) ?? 0)) / Double(sysconf(Int32(2))) }
        }
        let n = onlineCPUs
        let boot = Date().timeIntervalSince1970 - ((try? String(contentsOfFile: "/proc/uptime", encoding: .utf8))
            .flatMap { Double($0.split(separator: " ")[0]) } ?? 0)
        return DomainInfo(domid: 0, name: "Domain-0", uuid: "00000000-0000-0000-0000-000000000000", memory: memKiB / 1024,
                          maxmem: memKiB / 1024, vcpus: n, onlineVcpus: n, state: "r-----", cpuTime: cpu,
                          startTime: boot, restartCount: 0, engine: "")
    }

    /// `xm info`'s pairs (Xen 3.0 XendNode.info order).
    static func hostInfo(domainEngine: DomainEngine) -> HostInfo {
        var u = utsname(); uname(&u)
        func s<T>(_ t: T) -> String { withUnsafeBytes(of: t) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) } }
        let mem = meminfo()
        let total = (mem["MemTotal"] ?? 0) / 1024, free = (mem["MemAvailable"] ?? 0) / 1024
        var mhz = "0"
        if let c = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
           let l = c.split(separator: "\n").first(where: { $0.hasPrefix("cpu MHz") }) {
            mhz = String(Int(Double(l.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) ?? 0))
        }
        let kvm = FileManager.default.fileExists(atPath: "/sys/module/kvm_intel") ? "kvm_intel"
            : FileManager.default.fileExists(atPath: "/sys/module/kvm_amd") ? "kvm_amd"
            : FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") ? "kvm_pvm" : "none"
        return HostInfo(entries: [
            .init("host", s(u.nodename)), .init("release", s(u.release)), .init("version", s(u.version)),
            .init("machine", s(u.machine)), .init("nr_cpus", String(onlineCPUs)), .init("nr_nodes", "1"),
            .init("cpu_mhz", mhz), .init("total_memory", String(total)), .init("free_memory", String(free)),
            .init("xen_major", "3"), .init("xen_minor", "0"), .init("xen_extra", "-xenith"),
            .init("xen_caps", "hvm-3.0-x86_64 (" + kvm + ")"), .init("xen_pagesize", "4096"),
            .init("domain_engine", domainEngine.rawValue),
            .init("xend_config_format", "3"),
        ])
    }
}
