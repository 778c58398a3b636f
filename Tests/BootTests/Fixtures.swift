@testable import Boot
import GuestMemory

/// Little-endian helpers for building and checking byte arrays in tests.
extension Array where Element == UInt8 {
    mutating func set<T: FixedWidthInteger>(_ v: T, at o: Int) {
        for i in 0..<MemoryLayout<T>.size { self[o + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }
    func get<T: FixedWidthInteger>(_: T.Type, at o: Int) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(self[o + i]) << (8 * i) }
        return v
    }
    func ascii(_ o: Int, _ n: Int) -> String { String(decoding: self[o..<o + n], as: UTF8.self) }
    var byteSum: UInt8 { reduce(0, &+) }
}

extension ArraySlice where Element == UInt8 {
    var byteSum: UInt8 { reduce(0, &+) }
}

/// A synthetic bzImage: boot sector + setup sectors with a setup header, then a payload.
struct BzImageFixture {
    var version: UInt16 = 0x020F
    var setupSects: UInt8 = 4
    var payload = 8192
    var loadflags: UInt8 = 0x01
    var xloadflags: UInt16 = 0x0003
    var kernelAlignment: UInt32 = 0x20_0000
    var relocatable: UInt8 = 1
    var cmdlineSize: UInt32 = 2047
    var initrdAddrMax: UInt32 = 0x7FFF_FFFF
    var prefAddress: UInt64 = 0x100_0000
    var initSize: UInt32 = 0x40_0000

    var bytes: [UInt8] {
        let sects = setupSects == 0 ? 4 : Int(setupSects)
        var b = [UInt8](repeating: 0, count: (sects + 1) * 512 + payload)
        b[0x1F1] = setupSects
        b.set(UInt32(payload / 16), at: 0x1F4)
        b.set(UInt16(0xAA55), at: 0x1FE)
        b[0x200] = 0xEB; b[0x201] = 0x6A // jump; header ends at 0x202 + 0x6A = 0x26C
        b.replaceSubrange(0x202..<0x206, with: Array("HdrS".utf8))
        b.set(version, at: 0x206)
        b.set(UInt32(0x10_0000), at: 0x214) // code32_start
        b[0x211] = loadflags
        b.set(initrdAddrMax, at: 0x22C)
        b.set(kernelAlignment, at: 0x230)
        b[0x234] = relocatable
        b.set(xloadflags, at: 0x236)
        b.set(cmdlineSize, at: 0x238)
        b.set(prefAddress, at: 0x258)
        b.set(initSize, at: 0x260)
        for i in 0..<payload { b[(sects + 1) * 512 + i] = UInt8(truncatingIfNeeded: i &* 7 &+ 1) }
        return b
    }
}

/// A synthetic ELF kernel with one PT_LOAD segment and (optionally) a Xen PHYS32 note.
struct ELFFixture {
    var is64 = true
    var machine: UInt16 = 62
    var paddr: UInt64 = 0x100_0000
    var filesz = 4096
    var memsz = 8192
    var entry: UInt64 = 0x100_0040
    var noteDescSize = 4          // 4 or 8
    var note = true
    var noteInSectionOnly = false  // put the note only in a SHT_NOTE section, not a PT_NOTE

    var segmentData: [UInt8] { (0..<filesz).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) } }

    var noteBytes: [UInt8] {
        var n = [UInt8](repeating: 0, count: 16 + noteDescSize)
        n.set(UInt32(4), at: 0); n.set(UInt32(noteDescSize), at: 4); n.set(UInt32(18), at: 8)
        n.replaceSubrange(12..<16, with: Array("Xen\0".utf8))
        if noteDescSize == 8 { n.set(entry, at: 16) } else { n.set(UInt32(entry), at: 16) }
        // A GNU note first, to check the walker skips notes it does not want.
        var gnu = [UInt8](repeating: 0, count: 12 + 4 + 8)
        gnu.set(UInt32(4), at: 0); gnu.set(UInt32(8), at: 4); gnu.set(UInt32(3), at: 8)
        gnu.replaceSubrange(12..<16, with: Array("GNU\0".utf8))
        return gnu + n
    }

    var bytes: [UInt8] {
        let ehsize = is64 ? 64 : 52, phentsize = is64 ? 56 : 32, shentsize = is64 ? 64 : 40
        let phnum = (note && !noteInSectionOnly) ? 2 : 1
        let shnum = (note && noteInSectionOnly) ? 2 : 0
        let notes = note ? noteBytes : []
        let phoff = ehsize
        let notesOff = phoff + phnum * phentsize
        let dataOff = (notesOff + notes.count + 15) & ~15
        let shoff = dataOff + filesz
        var b = [UInt8](repeating: 0, count: shoff + shnum * shentsize)
        b.replaceSubrange(0..<4, with: [0x7F, 0x45, 0x4C, 0x46])
        b[4] = is64 ? 2 : 1; b[5] = 1; b[6] = 1
        b.set(UInt16(2), at: 16); b.set(machine, at: 18); b.set(UInt32(1), at: 20)
        if is64 {
            b.set(entry, at: 24); b.set(UInt64(phoff), at: 32); b.set(UInt64(shnum > 0 ? shoff : 0), at: 40)
            b.set(UInt16(ehsize), at: 52); b.set(UInt16(phentsize), at: 54); b.set(UInt16(phnum), at: 56)
            b.set(UInt16(shentsize), at: 58); b.set(UInt16(shnum), at: 60)
        } else {
            b.set(UInt32(entry), at: 24); b.set(UInt32(phoff), at: 28); b.set(UInt32(shnum > 0 ? shoff : 0), at: 32)
            b.set(UInt16(ehsize), at: 40); b.set(UInt16(phentsize), at: 42); b.set(UInt16(phnum), at: 44)
            b.set(UInt16(shentsize), at: 46); b.set(UInt16(shnum), at: 48)
        }
        func phdr(_ i: Int, type: UInt32, off: Int, paddr: UInt64, filesz: Int, memsz: Int) {
            let h = phoff + i * phentsize
            b.set(type, at: h)
            if is64 {
                b.set(UInt32(7), at: h + 4); b.set(UInt64(off), at: h + 8); b.set(paddr, at: h + 16)
                b.set(paddr, at: h + 24); b.set(UInt64(filesz), at: h + 32); b.set(UInt64(memsz), at: h + 40)
                b.set(UInt64(4096), at: h + 48)
            } else {
                b.set(UInt32(off), at: h + 4); b.set(UInt32(paddr), at: h + 8); b.set(UInt32(paddr), at: h + 12)
                b.set(UInt32(filesz), at: h + 16); b.set(UInt32(memsz), at: h + 20); b.set(UInt32(7), at: h + 24)
                b.set(UInt32(4096), at: h + 28)
            }
        }
        phdr(0, type: 1, off: dataOff, paddr: paddr, filesz: filesz, memsz: memsz)
        if phnum == 2 { phdr(1, type: 4, off: notesOff, paddr: 0, filesz: notes.count, memsz: notes.count) }
        b.replaceSubrange(notesOff..<notesOff + notes.count, with: notes)
        b.replaceSubrange(dataOff..<dataOff + filesz, with: segmentData)
        if shnum == 2 { // [0] null, [1] SHT_NOTE
            let h = shoff + shentsize
            b.set(UInt32(7), at: h + 4)
            if is64 { b.set(UInt64(notesOff), at: h + 24); b.set(UInt64(notes.count), at: h + 32) }
            else { b.set(UInt32(notesOff), at: h + 16); b.set(UInt32(notes.count), at: h + 20) }
        }
        return b
    }
}

/// Guest RAM laid out as MemoryMap says, backed by a memfd.
func makeMemory(_ ram: UInt64) throws -> GuestMemory {
    let map = try MemoryMap.forRAM(bytes: ram)
    return try GuestMemory.memfd(name: "boot-test", layout: map.layout)
}

/// Expects `body` to throw exactly `expected`.
func expectBootError<T>(_ expected: BootError, _ body: () throws -> T) -> Bool {
    do { _ = try body(); return false } catch { return (error as? BootError) == expected }
}
