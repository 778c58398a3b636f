import Testing
@testable import Boot

@Suite struct KernelImageTests {
    @Test func parsesBzImageHeader() throws {
        var f = BzImageFixture()
        f.setupSects = 0 // means 4
        let bytes = f.bytes
        guard case let .bzImage(bz) = try Kernel.load(bytes: bytes) else { Issue.record("not a bzImage"); return }
        #expect(bz.protocolVersion == 0x020F && bz.protocolMajor == 2 && bz.protocolMinor == 15)
        #expect(bz.setupSects == 4)
        #expect(bz.syssize == 8192 / 16)
        #expect(bz.loadflags == 1 && bz.xloadflags == 3)
        #expect(bz.kernelAlignment == 0x20_0000 && bz.relocatable)
        #expect(bz.cmdlineSize == 2047 && bz.initrdAddrMax == 0x7FFF_FFFF)
        #expect(bz.prefAddress == 0x100_0000 && bz.initSize == 0x40_0000)
        #expect(bz.setupHeader.count == 0x26C - 0x1F1)
        #expect(bz.setupHeader == Array(bytes[0x1F1..<0x26C]))
        #expect(bz.protectedModeKernel == Array(bytes[(5 * 512)...]))
    }

    @Test func rejectsOldProtocol() {
        var f = BzImageFixture(); f.version = 0x0205
        #expect(expectBootError(.protocolTooOld(major: 2, minor: 5)) { try Kernel.load(bytes: f.bytes) })
        #expect(BootError.protocolTooOld(major: 2, minor: 5).description == "bzImage boot protocol 2.05 is older than 2.06")
    }

    @Test func rejectsMissing64BitEntry() {
        var f = BzImageFixture(); f.xloadflags = 0
        #expect(expectBootError(.no64BitEntry("XLF_KERNEL_64 is not set in xloadflags")) { try Kernel.load(bytes: f.bytes) })
        var old = BzImageFixture(); old.version = 0x020A
        #expect(throws: BootError.self) { try Kernel.load(bytes: old.bytes) }
        var z = BzImageFixture(); z.loadflags = 0
        #expect(throws: BootError.self) { try Kernel.load(bytes: z.bytes) }
    }

    @Test func rejectsTruncatedBzImage() {
        let b = BzImageFixture().bytes
        for cut in [0x207, 0x230, 0x26B, 5 * 512, 5 * 512 + 100, b.count - 1] {
            do { _ = try Kernel.load(bytes: Array(b.prefix(cut))); Issue.record("accepted \(cut) bytes") }
            catch { if case .truncated = error {} else { Issue.record("cut \(cut): \(error)") } }
        }
        // Too short to carry "HdrS" at all: not recognised.
        #expect(expectBootError(.notAKernel) { try Kernel.load(bytes: Array(b.prefix(0x205))) })
    }

    @Test func rejectsUnknownFormat() {
        #expect(expectBootError(.notAKernel) { try Kernel.load(bytes: []) })
        #expect(expectBootError(.notAKernel) { try Kernel.load(bytes: [UInt8](repeating: 0x90, count: 4096)) })
        #expect(BootError.notAKernel.description == "not a bzImage or ELF kernel")
    }

    @Test(arguments: [true, false]) func parsesPVHELF(is64: Bool) throws {
        for desc in [4, 8] {
            var f = ELFFixture(); f.is64 = is64; f.machine = is64 ? 62 : 3; f.noteDescSize = desc
            guard case let .elf(e) = try Kernel.load(bytes: f.bytes) else { Issue.record("not ELF"); return }
            #expect(e.is64Bit == is64)
            #expect(e.pvhEntry == 0x100_0040)
            #expect(e.segments == [ELFSegment(paddr: 0x100_0000, data: f.segmentData, memsz: 8192)])
        }
    }

    @Test func findsNoteInSectionHeaders() throws {
        var f = ELFFixture(); f.noteInSectionOnly = true
        guard case let .elf(e) = try Kernel.load(bytes: f.bytes) else { Issue.record("not ELF"); return }
        #expect(e.pvhEntry == 0x100_0040)
    }

    @Test func rejectsELFWithoutPVHNote() {
        var f = ELFFixture(); f.note = false
        #expect(expectBootError(.noPVHNote) { try Kernel.load(bytes: f.bytes) })
        #expect(BootError.noPVHNote.description == "ELF kernel has no XEN_ELFNOTE_PHYS32_ENTRY note (not a PVH kernel)")
    }

    @Test func rejectsBadELF() {
        var arm = ELFFixture(); arm.machine = 183
        #expect(throws: BootError.self) { try Kernel.load(bytes: arm.bytes) }
        var be = ELFFixture().bytes; be[5] = 2
        #expect(throws: BootError.self) { try Kernel.load(bytes: be) }
        var big = ELFFixture(); big.filesz = 9000 // filesz > memsz
        #expect(throws: BootError.self) { try Kernel.load(bytes: big.bytes) }
        let b = ELFFixture().bytes
        for cut in [4, 19, 40, 63, 100, b.count - 1] {
            #expect(throws: BootError.self) { try Kernel.load(bytes: Array(b.prefix(cut))) }
        }
    }

    /// Random bytes, random truncations and random header corruption never trap.
    @Test func fuzzParserNeverTraps() {
        var rng = SplitMix(seed: 0x5EED)
        let seeds = [BzImageFixture().bytes, ELFFixture().bytes, { var f = ELFFixture(); f.is64 = false; f.machine = 3; return f.bytes }(),
                     { var f = ELFFixture(); f.noteInSectionOnly = true; return f.bytes }()]
        var accepted = 0, rejected = 0
        for i in 0..<6000 {
            var b: [UInt8]
            switch i % 4 {
            case 0: b = (0..<Int(rng.next() % 2048)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                if i % 8 == 0, b.count >= 4 { b.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46]) }
            case 1: let s = seeds[Int(rng.next() % 4)]; b = Array(s.prefix(Int(rng.next() % UInt64(s.count + 1))))
            default:
                b = seeds[Int(rng.next() % 4)]
                for _ in 0..<(1 + rng.next() % 8) {
                    // Corrupt mostly the headers, where lengths and offsets live.
                    let limit = UInt64(min(b.count, rng.next() % 2 == 0 ? 0x300 : b.count))
                    b[Int(rng.next() % limit)] = UInt8(truncatingIfNeeded: rng.next())
                }
            }
            do { _ = try Kernel.load(bytes: b); accepted += 1 } catch { rejected += 1; #expect(!error.description.contains("\n")) }
        }
        #expect(accepted + rejected == 6000 && rejected > 0)
    }

    /// A real Debian bzImage, when one is at hand ($XENITH_TEST_KERNEL or /boot/vmlinuz-*).
    @Test func parsesRealBzImage() throws {
        guard let path = realKernelPath() else { print("SKIP: no real bzImage (set XENITH_TEST_KERNEL or install one in /boot)"); return }
        let bytes = try readFile(path)
        guard case let .bzImage(bz) = try Kernel.load(bytes: bytes) else { Issue.record("\(path) is not a bzImage"); return }
        #expect(bz.protocolVersion >= 0x0206)
        #expect(bz.xloadflags & 1 != 0)
        #expect(bz.initSize > 0 && bz.cmdlineSize >= 255)
        print("real bzImage \(path): protocol \(bz.protocolMajor).\(bz.protocolMinor), init_size \(bz.initSize), pref \(hex(bz.prefAddress))")
    }
}

/// Deterministic PRNG for the fuzz test.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
