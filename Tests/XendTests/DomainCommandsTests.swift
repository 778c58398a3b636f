import Foundation
import Testing
import XendAPI
@testable import Xend

/// dom0-min-mem (issue 14, item 6) and the /metrics text (item 4), without a running xend.
@Suite struct DomainCommandsUnitTests {
    func message(_ need: Int, _ freeKiB: Int, _ min: Int) -> String? {
        do { try HostMemory.check(needMiB: need, freeKiB: freeKiB, dom0MinMemMiB: min); return nil } catch { return error.message }
    }

    @Test func dom0MinMemRefusesACreateThatWouldLeaveTheHostLess() {
        // 4096 MiB free, 1024 kept: 3072 MiB may go to domains.
        #expect(message(3072, 4096 * 1024, 1024) == nil)
        #expect(message(3073, 4096 * 1024, 1024)
                == "I need 3073 MiB, but dom0_min_mem is 1024 and shrinking to 1024 MiB would leave only 3072 MiB free.")
        // More kept than there is: nothing may go.
        #expect(message(1, 512 * 1024, 1024)
                == "I need 1 MiB, but dom0_min_mem is 1024 and shrinking to 1024 MiB would leave only 0 MiB free.")
    }

    @Test func withoutAReserveOnlyTheFreeMemoryCounts() {
        #expect(message(4096, 4096 * 1024, 0) == nil)
        #expect(message(4097, 4096 * 1024, 0)?.hasPrefix("Not enough free memory and dom0_min_mem is 0, so I cannot release any more.  I need 4195328 KiB but only have 4194304 KiB") == true)
    }

    @Test func metricsAreOneSeriesPerDomainWithNameAndDomid() {
        let s = DomainStatsList(hostMemoryKib: 1024, hostCpus: 2, domains: [
            DomainStats(domid: 0, name: "Domain-0", state: "r-----", cpuTime: 1.5, memoryKib: 1024, maxmemKib: 1024, vcpus: 2,
                        nets: 0, netTxBytes: 0, netRxBytes: 0, vbds: 0, vbdReadBytes: 0, vbdWriteBytes: 0),
            DomainStats(domid: 7, name: "web", state: "--p---", cpuTime: 2.25, memoryKib: 65536, maxmemKib: 131072, vcpus: 1,
                        nets: 1, netTxBytes: 1000, netRxBytes: 2000, vbds: 1, vbdReadBytes: 4096, vbdWriteBytes: 8192),
        ])
        let text = Metrics.exposition(s)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.contains("xenith_host_memory_bytes 1048576.0"))
        #expect(lines.contains(#"xenith_domain_cpu_seconds_total{name="web",domid="7"} 2.25"#))
        #expect(lines.contains(#"xenith_domain_memory_bytes{name="web",domid="7"} 67108864.0"#))
        #expect(lines.contains(#"xenith_domain_running{name="web",domid="7"} 0.0"#))
        #expect(lines.contains(#"xenith_domain_running{name="Domain-0",domid="0"} 1.0"#))
        #expect(lines.contains(#"xenith_domain_vbd_write_bytes_total{name="web",domid="7"} 8192.0"#))
        #expect(lines.contains("# TYPE xenith_domain_net_receive_bytes_total counter"))
        // Every sample line is NAME{LABELS} VALUE with a TYPE line before its family.
        for l in lines where !l.hasPrefix("#") && !l.isEmpty {
            #expect(l.range(of: #"^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+$"#, options: .regularExpression) != nil, "\(l)")
        }
    }
}
