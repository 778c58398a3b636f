import CoreControl
import Testing
@testable import Core

/// The core's parts of `xm sysrq`, `xm dump-core` and `xm mem-set` that the PVH fixture
/// cannot show: the UART's break (Linux's serial SysRq), the ELF core's layout, the
/// control commands with an argument.
@Suite struct CoreCommandsTests {
    @Test func breakThenKeyReadsAsLinuxSerialSysrqExpectsIt() {
        let r = Recorder()
        let uart = Serial8250(base: 0x3F8, output: { _ in }, setIRQ: { l in r.levels.withLock { $0.append(l) } })
        out(uart, 0x3FC, 0x08); out(uart, 0x3F9, 0x01)
        #expect(uart.receive([0x41]) == 1)
        #expect(uart.receiveBreak(then: UInt8(ascii: "h")))
        // The byte before the break reads normally, without BI.
        #expect(inp(uart, 0x3FD) & 0x11 == 0x01)
        #expect(inp(uart, 0x3F8) == 0x41)
        // Then the break: a NUL with BI (LSR bit 4) and data ready.
        #expect(inp(uart, 0x3FD) & 0x11 == 0x11)
        #expect(inp(uart, 0x3F8) == 0)
        // Then the key, without BI.
        #expect(inp(uart, 0x3FD) & 0x11 == 0x01)
        #expect(inp(uart, 0x3F8) == UInt64(UInt8(ascii: "h")))
        #expect(inp(uart, 0x3FD) & 0x11 == 0)
        #expect(lastLevel(r) == false)
    }

    @Test func elfCoreLayoutHasANoteAndOneLoadPerRegion() {
        let (h, offsets) = ElfCore.layout(regions: [(0, 0x8000_0000), (0x1_0000_0000, 0x1000_0000)], note: "name=x vcpus=1 memory_mib=2304")
        #expect(Array(h.prefix(4)) == [0x7F, 0x45, 0x4C, 0x46])
        func u16(_ o: Int) -> Int { Int(h[o]) | Int(h[o + 1]) << 8 }
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(h[o + $1]) << (8 * $1) } }
        func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(h[o + $1]) << (8 * $1) } }
        #expect(u16(16) == 4 && u16(18) == 62)              // ET_CORE, EM_X86_64
        #expect(u16(56) == 3)                               // e_phnum: note + 2 loads
        #expect(u32(64) == 4)                               // PT_NOTE first
        for (i, (base, size)) in [(UInt64(0), UInt64(0x8000_0000)), (0x1_0000_0000, 0x1000_0000)].enumerated() {
            let ph = 64 + 56 * (i + 1)
            #expect(u32(ph) == 1)                           // PT_LOAD
            #expect(u64(ph + 8) == offsets[i] && offsets[i] % 4096 == 0)
            #expect(u64(ph + 24) == base && u64(ph + 32) == size && u64(ph + 40) == size)
        }
        #expect(offsets[1] == offsets[0] + 0x8000_0000)
        #expect(String(decoding: h, as: UTF8.self).contains("XENITH"))
    }

    @Test func controlRequestsWithAnArgument() {
        #expect(CoreControlRequest(line: "balloon 48") == .balloon(mib: 48))
        #expect(CoreControlRequest(line: "sysrq h") == .sysrq(UInt8(ascii: "h")))
        #expect(CoreControlRequest(line: "dump-core") == .dumpCore)
        for bad in ["balloon", "balloon 0", "balloon -1", "balloon x", "sysrq", "sysrq hh", "sysrq !", "sysrq H", "dump-core x"] {
            #expect(CoreControlRequest(line: bad) == nil, "\(bad)")
        }
        #expect(CoreControlRequest.balloon(mib: 48).line == "balloon 48\n")
        let s = CoreControlStatus(parsing: "ok state=running vcpus=1 vcpu_time_ns=5 uptime_ns=9 pid=3 balloon_target_kib=32768 balloon_actual_kib=40960")
        #expect(s?.balloonTargetKiB == 32768 && s?.balloonActualKiB == 40960)
        #expect(s.map { CoreControlStatus(parsing: $0.line) == $0 } == true)
    }
}
