import Testing
@testable import Boot
import GuestMemory

@Suite struct LinuxBootTests {
    let ram: UInt64 = 256 << 20

    func boot(_ f: BzImageFixture = BzImageFixture(), initrd: [UInt8]? = nil, cmdline: String = "console=ttyS0",
              ram: UInt64? = nil) throws -> (GuestMemory, BootSetup, BzImage) {
        let r = ram ?? self.ram
        let memory = try makeMemory(r)
        guard case let .bzImage(bz) = try Kernel.load(bytes: f.bytes) else { throw BootError.notAKernel }
        let s = try BootLoader.prepare(memory: memory, ramBytes: r, vcpus: 2, target: .kernel(.bzImage(bz)),
                                       initrd: initrd, cmdline: cmdline)
        return (memory, s, bz)
    }

    @Test func zeroPageFields() throws {
        let initrd = [UInt8](repeating: 0xA5, count: 10_000)
        let (m, s, bz) = try boot(initrd: initrd)
        let zp = try m.read(at: 0x7000, count: 4096)
        // Setup header copied from the image, then our fields.
        #expect(zp.ascii(0x202, 4) == "HdrS")
        #expect(zp.get(UInt16.self, at: 0x206) == 0x020F)
        #expect(zp.get(UInt16.self, at: 0x1FE) == 0xAA55)
        #expect(zp.get(UInt16.self, at: 0x236) == bz.xloadflags)
        #expect(zp[0x210] == 0xFF)                              // type_of_loader
        #expect(zp[0x211] == 0x81)                              // LOADED_HIGH | CAN_USE_HEAP
        #expect(zp.get(UInt16.self, at: 0x224) == 0xFE00 - 0x200) // heap_end_ptr
        #expect(zp.get(UInt32.self, at: 0x228) == 0x2_0000)     // cmd_line_ptr
        #expect(zp.get(UInt32.self, at: 0x0C8) == 0)            // ext_cmd_line_ptr
        let initrdAt = try #require(s.initrdAddress)
        #expect(zp.get(UInt32.self, at: 0x218) == UInt32(initrdAt)) // ramdisk_image
        #expect(zp.get(UInt32.self, at: 0x21C) == 10_000)           // ramdisk_size
        #expect(zp.get(UInt32.self, at: 0x0C0) == 0 && zp.get(UInt32.self, at: 0x0C4) == 0)
        #expect(zp.get(UInt64.self, at: 0x070) == 0xE_0000)     // acpi_rsdp_addr (protocol 2.15)
        #expect(zp[0x1EF] == 0)                                 // sentinel
        // Nothing past the setup header but the e820 table.
        #expect(zp[0x26C..<0x2D0].allSatisfy { $0 == 0 })
        // e820.
        #expect(zp[0x1E8] == 4)
        let expected: [(UInt64, UInt64, UInt32)] = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xE0000, 0x20000, 2),
                                                    (0x100000, ram - 0x100000, 1)]
        for (i, e) in expected.enumerated() {
            let o = 0x2D0 + 20 * i
            #expect(zp.get(UInt64.self, at: o) == e.0 && zp.get(UInt64.self, at: o + 8) == e.1 && zp.get(UInt32.self, at: o + 16) == e.2)
        }
        #expect(zp[(0x2D0 + 80)..<(0x2D0 + 100)].allSatisfy { $0 == 0 })
        // Command line, kernel and initrd contents.
        #expect(try m.read(at: 0x2_0000, count: 14) == Array("console=ttyS0".utf8) + [0])
        #expect(try m.read(at: 0x10_0000, count: bz.protectedModeKernel.count) == bz.protectedModeKernel)
        #expect(try m.read(at: initrdAt, count: initrd.count) == initrd)
    }

    @Test func rsdpOmittedBeforeProtocol214() throws {
        var f = BzImageFixture(); f.version = 0x020D
        let (m, _, _) = try boot(f)
        #expect(try m.load(UInt64.self, at: 0x7000 + 0x070) == 0)
    }

    @Test func initrdPlacedHighestBelowLimit() throws {
        let (_, s, _) = try boot(initrd: [UInt8](repeating: 1, count: 5000))
        #expect(s.initrdAddress == ((ram - 5000) & ~0xFFF))
        // initrd_addr_max lower than RAM: the initrd ends at or below it.
        var f = BzImageFixture(); f.initrdAddrMax = 0x3FF_FFFF
        let (_, s2, _) = try boot(f, initrd: [UInt8](repeating: 1, count: 4096))
        #expect(s2.initrdAddress == 0x400_0000 - 4096)
    }

    @Test func initrdTooLarge() throws {
        // Kernel runs at 16 MiB with init_size 4 MiB: 20 MiB used of 32 MiB.
        let big = [UInt8](repeating: 0, count: 13 << 20)
        do { _ = try boot(initrd: big, ram: 32 << 20); Issue.record("accepted") }
        catch let e as BootError { #expect(e == .initrdDoesNotFit(size: 13 << 20, limit: 32 << 20)) }
        #expect(BootError.initrdDoesNotFit(size: 5, limit: 0x2000000).description == "initrd (5 bytes) does not fit below 0x2000000")
        let fits = [UInt8](repeating: 0, count: 12 << 20)
        let (_, s, _) = try boot(initrd: fits, ram: 32 << 20)
        #expect(s.initrdAddress == 20 << 20)
    }

    @Test func kernelTooLargeForRAM() throws {
        var f = BzImageFixture(); f.initSize = 0x200_0000 // needs 16 + 32 MiB
        #expect(throws: BootError.self) { try boot(f, ram: 32 << 20) }
    }

    @Test func cmdlineTooLong() throws {
        var f = BzImageFixture(); f.cmdlineSize = 16
        #expect(throws: BootError.self) { try boot(f, cmdline: String(repeating: "x", count: 17)) }
        _ = try boot(f, cmdline: String(repeating: "x", count: 16))
        do { _ = try boot(f, cmdline: String(repeating: "x", count: 17)) }
        catch let e as BootError { #expect(e == .cmdlineTooLong(length: 17, max: 16)) }
    }

    @Test func pageTablesIdentityMap4GiB() throws {
        let (m, s, _) = try boot()
        #expect(s.vcpu.cr3 == 0x9000)
        #expect(try m.load(UInt64.self, at: 0x9000) == 0xA000 | 3)
        #expect(try m.load(UInt64.self, at: 0x9008) == 0)
        for i in 0..<4 { #expect(try m.load(UInt64.self, at: 0xA000 + UInt64(8 * i)) == (0xB000 + UInt64(i) * 0x1000) | 3) }
        #expect(try m.load(UInt64.self, at: 0xA020) == 0)
        for j in [0, 1, 511, 512, 1535, 2047] {
            #expect(try m.load(UInt64.self, at: 0xB000 + UInt64(8 * j)) == (UInt64(j) << 21) | 0x83)
        }
    }

    @Test func gdtDescriptors() throws {
        let (m, s, _) = try boot()
        let g = try m.read(at: 0x500, count: 0x30)
        #expect(g.get(UInt64.self, at: 0x00) == 0)
        #expect(g.get(UInt64.self, at: 0x08) == 0x00CF_9B00_0000_FFFF) // code32 flat
        #expect(g.get(UInt64.self, at: 0x10) == 0x00AF_9B00_0000_FFFF) // code64, L=1
        #expect(g.get(UInt64.self, at: 0x18) == 0x00CF_9300_0000_FFFF) // data flat
        #expect(g.get(UInt64.self, at: 0x20) == 0x0000_8B00_0000_0067) // busy TSS
        #expect(g.get(UInt64.self, at: 0x28) == 0)
        #expect(s.vcpu.gdt == DescriptorTableRegister(base: 0x500, limit: 0x2F))
    }

    @Test func initialState() throws {
        let (_, s, _) = try boot()
        let v = s.vcpu
        #expect(v.mode == .long64)
        #expect(v.rip == 0x10_0200 && v.rsi == 0x7000 && v.rflags == 2)
        #expect(v.cr0 & 0x8000_0001 == 0x8000_0001)
        #expect(v.cr4 & 0x20 != 0 && v.efer == 0x500)
        #expect(v.cs.selector == 0x10 && v.cs.l && !v.cs.db && v.cs.type == 0xB && v.cs.present && v.cs.s)
        for seg in [v.ds, v.es, v.fs, v.gs, v.ss] {
            #expect(seg.selector == 0x18 && seg.type == 0x3 && seg.base == 0 && seg.limit == 0xFFFF_FFFF && seg.g && seg.db)
        }
        #expect(v.tr.selector == 0x20 && v.tr.type == 0xB && !v.tr.s && v.tr.limit == 0x67)
        #expect(s.rsdpAddress == 0xE_0000 && s.mpFloatingPointerAddress == 0xF_0000)
    }

    @Test func rejectsBadVCPUAndRAM() throws {
        let m = try makeMemory(16 << 20)
        let k = try Kernel.load(bytes: BzImageFixture().bytes)
        #expect(expectBootError(.badVCPUCount(0)) { try BootLoader.prepare(memory: m, ramBytes: 16 << 20, vcpus: 0, target: .kernel(k), initrd: nil, cmdline: "") })
        #expect(expectBootError(.badVCPUCount(255)) { try BootLoader.prepare(memory: m, ramBytes: 16 << 20, vcpus: 255, target: .kernel(k), initrd: nil, cmdline: "") })
        #expect(expectBootError(.badRAMSize(12345)) { try BootLoader.prepare(memory: m, ramBytes: 12345, vcpus: 1, target: .kernel(k), initrd: nil, cmdline: "") })
    }

    @Test func bootsRealBzImage() throws {
        guard let path = realKernelPath() else { print("SKIP: no real bzImage (set XENITH_TEST_KERNEL or install one in /boot)"); return }
        let k = try Kernel.load(bytes: try readFile(path))
        let m = try makeMemory(256 << 20)
        let s = try BootLoader.prepare(memory: m, ramBytes: 256 << 20, vcpus: 1, target: .kernel(k),
                                       initrd: [UInt8](repeating: 0, count: 1 << 20), cmdline: "console=ttyS0")
        #expect(s.vcpu.rip == 0x10_0200)
        #expect(try #require(s.initrdAddress) >= 0x100_0000)
    }
}
