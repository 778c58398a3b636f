// Per-domain counters for `xm top` (GET /api/v1/stats) and `/metrics` (Metrics.swift):
// vCPU time and state from the status cache, memory from the configuration, network bytes
// from each vif's tap (/sys/class/net/TAP/statistics), block bytes from each blkback
// process (/proc/PID/io). Read on each request; nothing is kept between requests.
import DomainConfig
import Foundation
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

enum DomainStatistics {
    /// One counter file of a network interface (`rx_bytes`, `tx_bytes`), 0 when absent.
    static func netCounter(_ ifname: String, _ counter: String) -> UInt64 {
        guard !ifname.contains("/"), !ifname.isEmpty,
              let s = try? String(contentsOfFile: "/sys/class/net/\(ifname)/statistics/\(counter)", encoding: .utf8) else { return 0 }
        return UInt64(s.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    /// `pid` and every process below it (blkback runs under its sandbox's reaper), from
    /// /proc/PID/task/TID/children; at most `limit` processes.
    static func processTree(_ pid: Int32, limit: Int = 64) -> [Int32] {
        var out: [Int32] = []
        var queue = [pid]
        while let p = queue.popLast(), out.count < limit {
            out.append(p)
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(p)/task")) ?? []
            for t in tasks {
                let c = (try? String(contentsOfFile: "/proc/\(p)/task/\(t)/children", encoding: .utf8)) ?? ""
                queue += c.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            }
        }
        return out
    }

    /// Bytes read and written through read(2)/write(2)-like calls by `pid` and its
    /// descendants (`rchar`, `wchar` of /proc/PID/io).
    static func ioBytes(_ pid: Int32) -> (read: UInt64, written: UInt64) {
        guard pid > 0 else { return (0, 0) }
        var r: UInt64 = 0, w: UInt64 = 0
        for p in processTree(pid) {
            guard let s = try? String(contentsOfFile: "/proc/\(p)/io", encoding: .utf8) else { continue }
            for line in s.split(separator: "\n") {
                let f = line.split(separator: ":")
                guard f.count == 2, let v = UInt64(f[1].trimmingCharacters(in: .whitespaces)) else { continue }
                if f[0] == "rchar" { r &+= v } else if f[0] == "wchar" { w &+= v }
            }
        }
        return (r, w)
    }
}

extension DomainManager {
    /// Every domain's counters, Domain-0 first (its network and block counters are 0).
    public func statistics() -> DomainStatsList {
        let hostKiB = HostFacts.meminfo()["MemTotal"] ?? 0
        let d0 = HostFacts.dom0Info()
        var out = [DomainStats(domid: 0, name: d0.name, state: d0.state, cpuTime: d0.cpuTime, memoryKib: d0.memory * 1024,
                               maxmemKib: d0.maxmem * 1024, vcpus: d0.vcpus, nets: 0, netTxBytes: 0, netRxBytes: 0,
                               vbds: 0, vbdReadBytes: 0, vbdWriteBytes: 0)]
        for r in registry.all {
            let i = info(r, long: false)
            var tx: UInt64 = 0, rx: UInt64 = 0
            let vifs = r.vifs ?? []
            if r.isLive {
                // The tap's receive side is what the domain sent (Xen's xentop counts the same way).
                for v in vifs { tx &+= DomainStatistics.netCounter(v.vifname, "rx_bytes"); rx &+= DomainStatistics.netCounter(v.vifname, "tx_bytes") }
            }
            var rd: UInt64 = 0, wr: UInt64 = 0
            if r.isLive {
                for d in r.disks ?? [] where d.pid > 0 && ProcessInfo2.startTicks(d.pid) == d.startTicks {
                    let io = DomainStatistics.ioBytes(d.pid)
                    rd &+= io.read; wr &+= io.written
                }
            }
            out.append(DomainStats(domid: r.domid, name: i.name, state: i.state, cpuTime: i.cpuTime, memoryKib: i.memory * 1024,
                                   maxmemKib: i.maxmem * 1024, vcpus: i.vcpus, nets: r.isLive ? vifs.count : 0, netTxBytes: tx,
                                   netRxBytes: rx, vbds: r.isLive ? r.config.disks.count : 0, vbdReadBytes: rd, vbdWriteBytes: wr))
        }
        return DomainStatsList(hostMemoryKib: hostKiB, hostCpus: HostFacts.onlineCPUs, domains: out)
    }
}
