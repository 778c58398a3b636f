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

    @Test func elfCoreHasAPrstatusNotePerVCPU() {
        let regs = (0..<UInt64(ElfCore.registerCount)).map { 0x1000 + $0 }
        let (h, _) = ElfCore.layout(regions: [(0, 0x10_0000)], cpus: [regs, regs.map { $0 + 0x100 }], note: "name=x")
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(h[o + $1]) << (8 * $1) } }
        func u64(_ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(h[o + $1]) << (8 * $1) } }
        let noteOffset = Int(u64(64 + 8)), noteSize = Int(u64(64 + 32))
        // Two CORE/NT_PRSTATUS notes (namesz 5, descsz 336), then the XENITH one.
        var o = noteOffset
        for cpu in 0..<2 {
            #expect(u32(o) == 5 && u32(o + 4) == 336 && u32(o + 8) == 1)
            #expect(Array(h[(o + 12)..<(o + 17)]) == Array("CORE\0".utf8))
            let desc = o + 12 + 8
            #expect(u32(desc + 32) == UInt32(cpu + 1), "pr_pid")
            #expect(u64(desc + 112) == 0x1000 + UInt64(cpu) * 0x100, "r15 first")
            #expect(u64(desc + 112 + 16 * 8) == 0x1010 + UInt64(cpu) * 0x100, "rip 17th")
            o = desc + 336
        }
        #expect(u32(o) == 7 && u32(o + 8) == ElfCore.noteType)
        #expect(o + 12 + 8 + 8 == noteOffset + noteSize, "the note segment ends after the XENITH note")
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
