import Testing
@testable import Boot
import GuestMemory

@Suite struct PVHBootTests {
    let ram: UInt64 = 64 << 20

    func boot(_ f: ELFFixture = ELFFixture(), initrd: [UInt8]? = nil, ram: UInt64? = nil) throws -> (GuestMemory, BootSetup) {
        let r = ram ?? self.ram
        let m = try makeMemory(r)
        let s = try BootLoader.prepare(memory: m, ramBytes: r, vcpus: 1, target: .kernel(try Kernel.load(bytes: f.bytes)),
                                       initrd: initrd, cmdline: "console=hvc0")
        return (m, s)
    }

    @Test func startInfoLayout() throws {
        let initrd = [UInt8](repeating: 7, count: 3000)
        let (m, s) = try boot(initrd: initrd)
        let si = try m.read(at: 0x6000, count: 0x38)
        #expect(si.get(UInt32.self, at: 0x00) == 0x336E_C578)
        #expect(si.get(UInt32.self, at: 0x04) == 1)
        #expect(si.get(UInt32.self, at: 0x08) == 0)
        #expect(si.get(UInt32.self, at: 0x0C) == 1)
        #expect(si.get(UInt64.self, at: 0x10) == 0x6040)
        #expect(si.get(UInt64.self, at: 0x18) == 0x2_0000)
        #expect(si.get(UInt64.self, at: 0x20) == 0xE_0000)
        #expect(si.get(UInt64.self, at: 0x28) == 0x6080)
        #expect(si.get(UInt32.self, at: 0x30) == 4)
        let mod = try m.read(at: 0x6040, count: 32)
        let at = try #require(s.initrdAddress)
        #expect(at == (ram - 3000) & ~0xFFF)
        #expect(mod.get(UInt64.self, at: 0) == at && mod.get(UInt64.self, at: 8) == 3000)
        #expect(mod.get(UInt64.self, at: 16) == 0 && mod.get(UInt64.self, at: 24) == 0)
        #expect(try m.read(at: at, count: 3000) == initrd)
        let mm = try m.read(at: 0x6080, count: 4 * 24)
        let expected: [(UInt64, UInt64, UInt32)] = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xE0000, 0x20000, 2), (0x100000, ram - 0x100000, 1)]
        for (i, e) in expected.enumerated() {
            #expect(mm.get(UInt64.self, at: 24 * i) == e.0 && mm.get(UInt64.self, at: 24 * i + 8) == e.1)
            #expect(mm.get(UInt32.self, at: 24 * i + 16) == e.2 && mm.get(UInt32.self, at: 24 * i + 20) == 0)
        }
        #expect(try m.read(at: 0x2_0000, count: 13) == Array("console=hvc0".utf8) + [0])
    }

    @Test func noModulesWithoutInitrd() throws {
        let (m, s) = try boot()
        #expect(s.initrdAddress == nil)
        #expect(try m.load(UInt32.self, at: 0x600C) == 0 && m.load(UInt64.self, at: 0x6010) == 0)
    }

    @Test func segmentsLoadedAndBSSZeroed() throws {
        let f = ELFFixture()
        let m = try makeMemory(ram)
        try m.write([UInt8](repeating: 0xEE, count: 8192), at: 0x100_0000) // dirty bss
        _ = try BootLoader.prepare(memory: m, ramBytes: ram, vcpus: 1, target: .kernel(try Kernel.load(bytes: f.bytes)), initrd: nil, cmdline: "")
        #expect(try m.read(at: 0x100_0000, count: 4096) == f.segmentData)
        #expect(try m.read(at: 0x100_1000, count: 4096).allSatisfy { $0 == 0 })
    }

    @Test func initialState() throws {
        let (_, s) = try boot()
        let v = s.vcpu
        #expect(v.mode == .protected32)
        #expect(v.rip == 0x100_0040 && v.rbx == 0x6000)
        #expect(v.cr0 == 1 && v.cr4 == 0 && v.efer == 0 && v.rflags == 2)
        #expect(v.cs == BootGDT.code32 && v.cs.selector == 0x08 && v.cs.db && !v.cs.l && v.cs.limit == 0xFFFF_FFFF)
        for seg in [v.ds, v.es, v.ss] { #expect(seg.selector == 0x18 && seg.base == 0 && seg.limit == 0xFFFF_FFFF && seg.type == 0x3) }
        #expect(v.tr.base == 0 && v.tr.limit == 0x67 && v.tr.type == 0xB)
    }

    @Test func segmentErrors() throws {
        var low = ELFFixture(); low.paddr = 0x8_0000
        #expect(throws: BootError.self) { try boot(low) }
        var high = ELFFixture(); high.paddr = 0x3FF_F000 // ends past 64 MiB
        do { _ = try boot(high); Issue.record("accepted") } catch let e as BootError {
            #expect(e.description.contains("outside guest RAM"))
        }
        var hole = ELFFixture(); hole.paddr = 0xC000_0000; hole.is64 = true
        #expect(throws: BootError.self) { try boot(hole) }
    }

    @Test func initrdTooLarge() throws {
        #expect(throws: BootError.self) { try boot(initrd: [UInt8](repeating: 0, count: Int(ram))) }
    }
}

@Suite struct FirmwareAndMemoryMapTests {
    @Test func firmwareEndsAtOneMiB() throws {
        let m = try makeMemory(2 << 20)
        let fw = (0..<4096).map { UInt8(truncatingIfNeeded: $0) }
        let s = try BootLoader.prepare(memory: m, ramBytes: 2 << 20, vcpus: 1, target: .firmware(fw), initrd: nil, cmdline: "")
        #expect(try m.read(at: 0x10_0000 - 4096, count: 4096) == fw)
        let v = s.vcpu
        #expect(v.mode == .real && v.rip == 0xFFF0)
        #expect(v.cs.selector == 0xF000 && v.cs.base == 0xF_0000 && v.cs.limit == 0xFFFF && !v.cs.db)
        #expect(v.cr0 & 1 == 0 && v.cr0 == 0x6000_0010)
        #expect(v.ds.selector == 0 && v.ds.base == 0 && v.ds.limit == 0xFFFF)
        #expect(s.rsdpAddress == nil)
        // The byte at the reset vector is the firmware's byte at size - 16.
        #expect(try m.load(UInt8.self, at: 0xF_0000 + 0xFFF0) == fw[4096 - 16])
    }

    @Test func firmwareSizeLimits() throws {
        let m = try makeMemory(2 << 20)
        #expect(expectBootError(.badFirmwareSize(128 * 1024 + 1)) { try Firmware.load(bytes: [UInt8](repeating: 0, count: 128 * 1024 + 1), into: m) })
        #expect(expectBootError(.badFirmwareSize(0)) { try Firmware.load(bytes: [], into: m) })
        _ = try Firmware.load(bytes: [UInt8](repeating: 0, count: 128 * 1024), into: m)
    }

    @Test func memoryMapBelowHole() throws {
        let map = try MemoryMap.forRAM(bytes: 512 << 20)
        #expect(map.e820 == [E820Entry(addr: 0, size: 0x9FC00, type: 1), E820Entry(addr: 0x9FC00, size: 0x400, type: 2),
                             E820Entry(addr: 0xE0000, size: 0x20000, type: 2), E820Entry(addr: 0x100000, size: (512 << 20) - 0x100000, type: 1)])
        #expect(map.layout.count == 1 && map.layout[0].base == 0 && map.layout[0].size == 512 << 20)
        #expect(map.lowRAMEnd == 512 << 20)
    }

    @Test func memoryMapAboveHole() throws {
        let ram: UInt64 = 6 << 30
        let map = try MemoryMap.forRAM(bytes: ram)
        #expect(map.e820.count == 5)
        #expect(map.e820[3] == E820Entry(addr: 0x100000, size: 0xC000_0000 - 0x100000, type: 1))
        #expect(map.e820[4] == E820Entry(addr: 0x1_0000_0000, size: ram - 0xC000_0000, type: 1))
        #expect(map.layout.map { $0.base } == [0, 0x1_0000_0000])
        #expect(map.layout.map { $0.size } == [0xC000_0000, ram - 0xC000_0000])
        #expect(map.layout.reduce(0) { $0 + $1.size } == ram)
    }

    @Test func memoryMapRejectsBadSizes() {
        #expect(expectBootError(.badRAMSize(1 << 20)) { try MemoryMap.forRAM(bytes: 1 << 20) })
        #expect(expectBootError(.badRAMSize((4 << 20) + 1)) { try MemoryMap.forRAM(bytes: (4 << 20) + 1) })
    }
}
