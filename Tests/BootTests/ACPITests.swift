import Testing
@testable import Boot
import GuestMemory
#if canImport(Glibc)
import Glibc
#endif

@Suite struct ACPITests {
    /// The table at guest address `at` inside `t.bytes`.
    func table(_ t: ACPITables, _ at: UInt64) -> [UInt8] {
        let o = Int(at - t.base)
        let len = t.bytes.get(UInt32.self, at: o + 4)
        return Array(t.bytes[o..<o + Int(len)])
    }

    @Test func rsdp() {
        let t = ACPITables(vcpus: 4)
        let r = Array(t.bytes[0..<36])
        #expect(t.rsdp == 0xE_0000 && t.rsdp % 16 == 0)
        #expect(r.ascii(0, 8) == "RSD PTR ")
        #expect(r[0..<20].byteSum == 0)
        #expect(r.byteSum == 0)
        #expect(r[15] == 2)
        #expect(r.get(UInt32.self, at: 16) == UInt32(t.rsdt))
        #expect(r.get(UInt32.self, at: 20) == 36)
        #expect(r.get(UInt64.self, at: 24) == t.xsdt)
    }

    @Test(arguments: [1, 2, 8, 254]) func tablesChecksumAndLength(vcpus: Int) {
        let t = ACPITables(vcpus: vcpus)
        for (sig, at) in [("RSDT", t.rsdt), ("XSDT", t.xsdt), ("FACP", t.fadt), ("APIC", t.madt), ("DSDT", t.dsdt)] {
            let b = table(t, at)
            #expect(b.ascii(0, 4) == sig)
            #expect(b.byteSum == 0, "checksum of \(sig)")
            #expect(b.ascii(10, 6) == "XENITH")
        }
        #expect(table(t, t.rsdt).get(UInt32.self, at: 36) == UInt32(t.fadt))
        #expect(table(t, t.rsdt).get(UInt32.self, at: 40) == UInt32(t.madt))
        #expect(table(t, t.xsdt).count == 36 + 16)
        #expect(table(t, t.xsdt).get(UInt64.self, at: 36) == t.fadt)
        #expect(table(t, t.xsdt).get(UInt64.self, at: 44) == t.madt)
        let facs = Array(t.bytes[Int(t.facs - t.base)..<Int(t.facs - t.base) + 64])
        #expect(facs.ascii(0, 4) == "FACS" && facs.get(UInt32.self, at: 4) == 64 && t.facs % 64 == 0)
        #expect(t.base + UInt64(t.bytes.count) <= PlatformLayout.mpTableBase)
        // MADT: one Processor Local APIC entry per vCPU.
        let madt = table(t, t.madt)
        #expect(madt.get(UInt32.self, at: 36) == 0xFEE0_0000 && madt.get(UInt32.self, at: 40) == 1)
        var o = 44, cpus = 0, ioapics = 0, overrides: [(UInt8, UInt32, UInt16)] = []
        while o < madt.count {
            let type = madt[o], len = Int(madt[o + 1])
            switch type {
            case 0:
                #expect(len == 8 && madt[o + 2] == UInt8(cpus) && madt[o + 3] == UInt8(cpus) && madt.get(UInt32.self, at: o + 4) == 1)
                cpus += 1
            case 1:
                #expect(len == 12 && madt[o + 2] == UInt8(vcpus) && madt.get(UInt32.self, at: o + 4) == 0xFEC0_0000 && madt.get(UInt32.self, at: o + 8) == 0)
                ioapics += 1
            case 2: overrides.append((madt[o + 3], madt.get(UInt32.self, at: o + 4), madt.get(UInt16.self, at: o + 8)))
            case 4: #expect(len == 6 && madt[o + 2] == 0xFF && madt[o + 5] == 1)
            default: Issue.record("unexpected MADT entry \(type)")
            }
            o += len
        }
        #expect(o == madt.count && cpus == vcpus && ioapics == 1)
        #expect(overrides.count == 2)
        #expect(overrides.first.map { $0.0 == 0 && $0.1 == 2 && $0.2 == 5 } == true)
        #expect(overrides.last.map { $0.0 == 9 && $0.1 == 9 && $0.2 == 0xD } == true)
    }

    @Test func fadtFields() {
        let t = ACPITables(vcpus: 1)
        let f = table(t, t.fadt)
        #expect(f.count == 276 && f[8] == 6)
        #expect(f.get(UInt32.self, at: 36) == UInt32(t.facs) && f.get(UInt32.self, at: 40) == UInt32(t.dsdt))
        #expect(f.get(UInt16.self, at: 46) == 9)                  // SCI_INT
        #expect(f.get(UInt32.self, at: 48) == 0)                  // SMI_CMD
        #expect(f.get(UInt32.self, at: 56) == 0x600 && f[88] == 4) // PM1a_EVT_BLK, PM1_EVT_LEN
        #expect(f.get(UInt32.self, at: 64) == 0x604 && f[89] == 2) // PM1a_CNT_BLK, PM1_CNT_LEN
        #expect(f.get(UInt32.self, at: 76) == 0 && f[91] == 0)    // no PM timer
        #expect(f.get(UInt16.self, at: 109) & 0x2 != 0)           // 8042
        let flags = f.get(UInt32.self, at: 112)
        #expect(flags & (1 << 10) != 0)                           // RESET_REG_SUP
        #expect(flags & (1 << 4) == 0)                            // power button is a fixed feature
        #expect(flags & (1 << 20) == 0)                           // not hardware-reduced
        #expect(Array(f[116..<128]) == [1, 8, 0, 1, 0xF9, 0x0C, 0, 0, 0, 0, 0, 0]) // RESET_REG
        #expect(f[128] == 6)
        #expect(f.get(UInt64.self, at: 132) == t.facs && f.get(UInt64.self, at: 140) == t.dsdt)
    }

    @Test func amlEncodings() {
        #expect(AML.pkgLength(10) == [11])
        #expect(AML.pkgLength(62) == [63])
        #expect(AML.pkgLength(63) == [0x41, 0x04])        // 65 = 0x41
        #expect(AML.pkgLength(4093) == [0x4F, 0xFF])       // 4095 in two bytes
        #expect(AML.pkgLength(4094) == [0x81, 0x00, 0x01]) // 4097 needs three
        #expect(AML.eisaID("PNP0A03") == [0x0C, 0x41, 0xD0, 0x0A, 0x03])
        #expect(AML.eisaID("PNP0501") == [0x0C, 0x41, 0xD0, 0x05, 0x01])
        #expect(AML.integer(0) == [0] && AML.integer(1) == [1] && AML.integer(5) == [0x0A, 5])
        #expect(AML.integer(0x1234) == [0x0B, 0x34, 0x12] && AML.integer(0x1_FFFF) == [0x0C, 0xFF, 0xFF, 1, 0])
        #expect(AML.nameString("\\_SB_.PCI0") == [0x5C, 0x2E] + Array("_SB_PCI0".utf8))
        #expect(AML.nameString("_S5") == Array("_S5_".utf8))
        #expect(AML.io(base: 0x3F8, length: 8) == [0x47, 1, 0xF8, 3, 0xF8, 3, 1, 8])
        #expect(AML.irq(4) == [0x22, 0x10, 0x00])
        // \_S5_ package at the start of the DSDT body.
        let d = ACPITables.dsdt()
        #expect(Array(d[36..<51]) == [0x08, 0x5C] + Array("_S5_".utf8) + [0x12, 0x08, 4, 0x0A, 5, 0x0A, 5, 0, 0])
    }

    /// Disassembles our DSDT with ACPICA's iasl when it is installed.
    @Test func iaslDisassemblesDSDT() throws {
        guard let iasl = which("iasl") else { print("SKIP: iasl not installed (apt-get install acpica-tools)"); return }
        let dir = "/tmp/boot-iasl-\(getpid())"
        mkdir(dir, 0o700)
        defer { if getenv("BOOT_KEEP_IASL") == nil { _ = run(["rm", "-rf", dir]) } }
        let t = ACPITables(vcpus: 2)
        for (name, at) in [("dsdt", t.dsdt), ("facp", t.fadt), ("apic", t.madt)] {
            let b = table(t, at)
            let path = "\(dir)/\(name).dat"
            let f = fopen(path, "wb")!
            _ = b.withUnsafeBytes { fwrite($0.baseAddress, 1, b.count, f) }
            fclose(f)
            let (status, out) = run([iasl, "-d", path])
            #expect(status == 0, "iasl -d \(name): \(out)")
            let dsl = (try? readFile("\(dir)/\(name).dsl")).map { String(decoding: $0, as: UTF8.self) } ?? ""
            if name == "dsdt" {
                for needle in ["_S5_", "QEMU0001", "PCI0", "PNP0A03", "PNP0501", "_PRT", "0x0505", "0x03F8", "0xD0000000"] {
                    #expect(dsl.contains(needle), "DSDT disassembly lacks \(needle)")
                }
                #expect(!dsl.contains("Error"), "\(dsl)")
            } else {
                #expect(!dsl.isEmpty && !dsl.contains("Invalid"), "\(name): \(dsl)")
            }
        }
        // Recompiling the disassembly must succeed too.
        let (status, out) = run([iasl, "-p", "\(dir)/re", "\(dir)/dsdt.dsl"])
        #expect(status == 0, "iasl recompile: \(out)")
    }

    @Test func writtenToGuestMemory() throws {
        let m = try makeMemory(64 << 20)
        let t = ACPITables(vcpus: 3)
        try t.write(to: m)
        #expect(try m.read(at: 0xE_0000, count: t.bytes.count) == t.bytes)
    }
}

@Suite struct MPTableTests {
    @Test(arguments: [1, 4, 254]) func layoutAndChecksums(vcpus: Int) {
        let t = MPTable(vcpus: vcpus)
        let b = t.bytes
        #expect(b.ascii(0, 4) == "_MP_" && b.get(UInt32.self, at: 4) == 0xF_0010 && b[8] == 1 && b[9] == 4)
        #expect(b[0..<16].byteSum == 0)
        #expect(b[11] == 0 && b[12] == 0)
        let c = Array(b[16...])
        let len = Int(c.get(UInt16.self, at: 4))
        #expect(c.ascii(0, 4) == "PCMP" && len == c.count && c[6] == 4)
        #expect(c.byteSum == 0)
        #expect(c.get(UInt32.self, at: 36) == 0xFEE0_0000)
        var o = 44, n = 0, cpus = 0, buses: [String] = [], ioapic = false, isa: [UInt8: UInt8] = [:], pci = 0, local: [UInt8] = []
        var lastType: UInt8 = 0
        while o < len {
            let type = c[o]
            #expect(type >= lastType, "entries in type order"); lastType = type
            switch type {
            case 0:
                #expect(c[o + 1] == UInt8(cpus) && c[o + 3] == (cpus == 0 ? 3 : 1)); cpus += 1; o += 20
            case 1: buses.append(c.ascii(o + 2, 6)); o += 8
            case 2: #expect(c[o + 1] == UInt8(vcpus) && c[o + 3] == 1 && c.get(UInt32.self, at: o + 4) == 0xFEC0_0000); ioapic = true; o += 8
            case 3:
                #expect(c[o + 6] == UInt8(vcpus))
                if c[o + 4] == 1 { isa[c[o + 5]] = c[o + 7] } else {
                    let slot = Int(c[o + 5] >> 2), pin = Int(c[o + 5] & 3)
                    #expect(UInt32(c[o + 7]) == PlatformLayout.pciIntxGSI(slot: slot, pin: pin) && c.get(UInt16.self, at: o + 2) == 0x0F)
                    pci += 1
                }
                o += 8
            case 4: local.append(c[o + 1]); #expect(c[o + 6] == 0xFF && c[o + 7] == (c[o + 1] == 3 ? 0 : 1)); o += 8
            default: Issue.record("bad entry type \(type)"); o = len
            }
            n += 1
        }
        #expect(n == Int(c.get(UInt16.self, at: 34)))
        #expect(cpus == vcpus && buses == ["PCI   ", "ISA   "] && ioapic)
        #expect(isa.count == 15 && isa[0] == 2 && isa[2] == nil && isa[4] == 4 && isa[9] == 9)
        #expect(pci == 31 * 4 && local == [3, 1])
        #expect(t.base + UInt64(b.count) <= PlatformLayout.firmwareEnd)
    }
}
