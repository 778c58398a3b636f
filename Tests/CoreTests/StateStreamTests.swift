import Foundation
import Testing
@testable import Core

/// The core's state stream (Sources/Core/StateStream.swift, MachineState.swift): a saved
/// machine restores into an incoming one with its RAM; a hostile stream (truncated, wrong
/// magic or version, oversized lengths and counts, out-of-range indices and addresses,
/// missing parts) is refused with a message naming the fault, never a crash. Needs
/// /dev/kvm (a Machine is a KVM VM; the guest never runs).
@Suite(.serialized) struct StateStreamTests {
    let dir: String = {
        var t = Array("/tmp/coresave-stream-XXXXXX".utf8CString)
        return t.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }()

    /// A 4 MiB, one-vCPU machine booting a page of `hlt` as firmware.
    func machine(incoming: Bool) throws -> Machine? {
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { print("SKIP: StateStreamTests: /dev/kvm is not accessible"); return nil }
        let fw = dir + "/fw.bin"
        if !FileManager.default.fileExists(atPath: fw) {
            try Data(repeating: 0xF4, count: 4096).write(to: URL(fileURLWithPath: fw))
        }
        var cfg = MachineConfiguration(memoryMiB: 4, vcpus: 1, firmwarePath: fw, name: "stream-test", virtioRNG: true)
        cfg.incoming = incoming
        return try Machine(config: cfg, consoleOutput: { _ in }, log: { _ in })
    }

    /// Saves `m` into a file and returns the stream's bytes.
    func save(_ m: Machine) throws -> [UInt8] {
        let path = dir + "/good"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        #expect(fd >= 0)
        _ = try m.save(to: fd)
        close(fd)
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Restores `bytes` into a fresh incoming machine; returns the error text, nil on success.
    func restore(_ bytes: [UInt8], into m: Machine? = nil) throws -> String? {
        guard let target = try m ?? machine(incoming: true) else { return nil }
        let path = dir + "/in"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        do { try target.restore(from: fd); return nil } catch { return "\(error)" }
    }

    /// The stream as header + records, and back.
    struct Parsed { var header: [UInt8]; var records: [(tag: UInt32, payload: [UInt8])] }
    func parse(_ b: [UInt8]) -> Parsed {
        var p = Parsed(header: Array(b[0..<24]), records: [])
        var at = 24
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[o + $1]) << (8 * UInt32($1)) } }
        while at + 8 <= b.count {
            let tag = u32(at), n = Int(u32(at + 4))
            p.records.append((tag, Array(b[(at + 8)..<(at + 8 + n)])))
            at += 8 + n
        }
        return p
    }
    func encode(_ p: Parsed) -> [UInt8] {
        var out = p.header
        for r in p.records { out += le32(r.tag) + le32(UInt32(r.payload.count)) + r.payload }
        return out
    }
    func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

    @Test func anIncomingMachineDoesNotReadItsRamdisk() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { print("SKIP: anIncomingMachineDoesNotReadItsRamdisk: /dev/kvm is not accessible"); return }
        let fw = dir + "/fw.bin"
        try Data(repeating: 0xF4, count: 4096).write(to: URL(fileURLWithPath: fw))
        // A path that cannot be read: a fresh boot fails on it, an incoming machine never opens it.
        var cfg = MachineConfiguration(memoryMiB: 4, vcpus: 1, firmwarePath: fw, ramdiskPath: dir + "/absent-initrd",
                                       name: "stream-test", virtioRNG: false)
        #expect(throws: (any Error).self) { _ = try Machine(config: cfg, consoleOutput: { _ in }, log: { _ in }) }
        cfg.incoming = true
        #expect(throws: Never.self) { _ = try Machine(config: cfg, consoleOutput: { _ in }, log: { _ in }) }
    }

    @Test func savedMachineRestoresWithItsMemory() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard let src = try machine(incoming: false) else { return }
        try src.memory.write(Array("XENITH-RAM-MARK".utf8), at: 0x20_0000)
        let good = try save(src)
        #expect(Array(good[0..<8]) == Array("XNTHCORE".utf8))
        guard let dst = try machine(incoming: true) else { return }
        #expect(try restore(good, into: dst) == nil)
        #expect(try dst.memory.read(at: 0x20_0000, count: 15) == Array("XENITH-RAM-MARK".utf8))
        #expect(try dst.vcpus[0].regs().rip == src.vcpus[0].regs().rip)
    }

    @Test func hostileStreamsAreRefusedByName() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard let src = try machine(incoming: false) else { return }
        let good = try save(src)
        let p = parse(good)
        #expect(encode(p) == good)
        var cases: [(String, [UInt8], String)] = []
        cases.append(("empty", [], "truncated"))
        cases.append(("header cut", Array(good.prefix(10)), "truncated"))
        cases.append(("cut in RAM", Array(good.prefix(good.count / 3)), "truncated"))
        cases.append(("no end record", Array(good.prefix(good.count - 16)), "truncated"))
        var magic = good; magic[0] = 0x58 ^ 0x20
        cases.append(("wrong magic", magic, "wrong magic"))
        var newer = good; newer[8] = 2
        cases.append(("newer version", newer, "version 2 is newer than this core's 1"))
        var ram = good; ram[12] ^= 0x10
        cases.append(("other RAM size", ram, "bytes of RAM"))
        var cpus = good; cpus[20] = 3
        cases.append(("other vCPU count", cpus, "3 vCPUs"))
        var long = good; long[28] = 0xFF; long[29] = 0xFF; long[30] = 0xFF; long[31] = 0xFF
        cases.append(("record length 4 GiB", long, "exceeds"))
        var tag = good; tag[24] = 99
        cases.append(("unknown tag", tag, "unknown tag 99"))
        var q = p
        q.records.insert((1, le64(0xFFFF_F000_0000) + [UInt8](repeating: 1, count: 4096)), at: 0)
        cases.append(("RAM outside memory", encode(q), "outside guest RAM"))
        q = p
        q.records.insert((1, le64(0x1001) + [UInt8](repeating: 1, count: 4096)), at: 0)
        cases.append(("RAM unaligned", encode(q), "not page-aligned"))
        q = p
        q.records.insert((2, le64(0) + le32(1 << 21)), at: 0)
        cases.append(("zero run too long", encode(q), "pages at 0x0"))
        q = p
        q.records.insert((2, le64(0x3F_F000) + le32(1 << 10)), at: 0)
        cases.append(("zero run past RAM", encode(q), "outside guest RAM"))
        if let i = p.records.firstIndex(where: { $0.tag == 3 && Array($0.payload[4..<8]) == le32(10) }) {
            q = p
            q.records[i].payload.replaceSubrange(8..<12, with: le32(5000))
            cases.append(("5000 MSRs", encode(q), "5000 MSRs (at most 1024)"))
        }
        if let i = p.records.firstIndex(where: { $0.tag == 3 }) {
            q = p
            q.records[i].payload.replaceSubrange(0..<4, with: le32(7))
            cases.append(("vCPU 7", encode(q), "vCPU 7 of 1"))
            q = p
            q.records[i].payload.removeLast()
            cases.append(("short register record", encode(q), "bytes, not"))
        }
        if let i = p.records.firstIndex(where: { $0.tag == 3 && Array($0.payload[4..<8]) == le32(1) }) {
            q = p
            q.records.remove(at: i)
            q.records[q.records.count - 1].payload = le64(UInt64(q.records.count - 1))
            cases.append(("no registers", encode(q), "vCPU 0 has no regs state"))
        }
        q = p
        q.records[q.records.count - 1].payload = le64(1)
        cases.append(("end count wrong", encode(q), "end record counts 1"))
        if let i = p.records.firstIndex(where: { $0.tag == 5 && Array($0.payload[0..<4]) == le32(0x101) }) {
            q = p
            q.records[i].payload.replaceSubrange(4..<6, with: [9, 0])
            cases.append(("other device type in slot 1", encode(q), "the stream type 9"))
            q = p
            q.records[i].payload.replaceSubrange(0..<4, with: le32(0x100 + 20))
            cases.append(("device in an empty slot", encode(q), "PCI slot 20"))
        }
        #expect(cases.count == 21, "a hostile case was not built: \(cases.map(\.0))")
        for (what, bytes, expected) in cases {
            let e = try restore(bytes)
            #expect(e?.contains(expected) == true, "\(what): \(e ?? "accepted")")
            #expect(e?.hasPrefix("not a valid core state stream: ") == true || e?.contains("restore") == true, "\(what): \(e ?? "")")
        }
    }
}
