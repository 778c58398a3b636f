// Saving and restoring a whole domain (the core's state stream, StateStream.swift): guest
// RAM, every vCPU's registers as KVM exposes them, the in-kernel irqchip, PIT and clock,
// and the emulated devices. The live part (pre-copy over the dirty log) is Precopy.swift.
import CLinux
import GuestMemory
import KVM
#if canImport(Glibc)
import Glibc
#endif

/// The figures of one save.
public struct SaveResult: Sendable {
    /// Stream bytes written.
    public var bytes: UInt64
    /// RAM passes (1 for a stop-and-copy save).
    public var rounds: Int
    /// Milliseconds the vCPUs were stopped while the stream was written (from the pause to
    /// the end record; for a stop-and-copy save, the whole save).
    public var downtimeMs: Int
    /// Whether the guest was running when the save began.
    public var wasRunning: Bool
}

extension Machine {
    /// Milliseconds a pause may take to get every vCPU out of KVM_RUN.
    static let quiesceTimeoutMs = 5000

    /// Pauses the vCPUs and waits until every one is parked outside KVM_RUN with its last
    /// instruction complete, so its registers can be read.
    /// - Throws: ``CoreError/kvm(_:)`` when a vCPU does not stop within 5 s.
    func quiesce() throws(CoreError) {
        pause()
        guard pauseGate.waitParked(threads.count, timeoutMs: Self.quiesceTimeoutMs) else {
            throw .kvm("the vCPUs did not stop within \(Self.quiesceTimeoutMs) ms")
        }
    }

    /// Every region of guest memory with its KVM slot number (``VirtualMachine/map(_:firstSlot:dirtyLogging:)``
    /// registered them from slot 0 in order).
    var slots: [(slot: UInt32, region: MemoryRegion)] {
        memory.regions.enumerated().map { (UInt32($0.offset), $0.element) }
    }

    /// Writes all of guest RAM: runs of zero pages as `zero` records, the rest as `ram`.
    func writeAllRAM(_ w: StateWriter) throws(CoreError) {
        let page = CoreStateFormat.pageSize
        for (_, r) in slots {
            let pages = Int(r.size) / page
            var i = 0
            while i < pages {
                let zero = Self.isZero(r.host + i * page)
                var j = i + 1
                let limit = zero ? 1 << 20 : CoreStateFormat.maxPagesPerRecord
                while j < pages && j - i < limit && Self.isZero(r.host + j * page) == zero { j += 1 }
                let address = r.guestBase + UInt64(i * page)
                if zero {
                    var e = StateEncoder()
                    e.u64(address); e.u32(UInt32(j - i))
                    try w.record(.zero, e.bytes)
                } else {
                    try w.ram(address: address, from: r.host + i * page, pages: j - i)
                }
                i = j
            }
        }
    }

    /// Writes the pages set in `bitmaps` (one per slot, one bit per page) as `ram` records.
    /// - Returns: pages written.
    @discardableResult
    func writeDirtyRAM(_ w: StateWriter, _ bitmaps: [[UInt64]]) throws(CoreError) -> Int {
        let page = CoreStateFormat.pageSize
        var total = 0
        for (slot, r) in slots {
            let bitmap = bitmaps[Int(slot)]
            let pages = Int(r.size) / page
            func dirty(_ p: Int) -> Bool { bitmap[p >> 6] & (1 << UInt64(p & 63)) != 0 }
            var i = 0
            while i < pages {
                if bitmap[i >> 6] == 0 { i = (i | 63) + 1; continue }
                guard dirty(i) else { i += 1; continue }
                var j = i + 1
                while j < pages && j - i < CoreStateFormat.maxPagesPerRecord && dirty(j) { j += 1 }
                try w.ram(address: r.guestBase + UInt64(i * page), from: r.host + i * page, pages: j - i)
                total += j - i
                i = j
            }
        }
        return total
    }

    static func isZero(_ p: UnsafeMutableRawPointer) -> Bool {
        let words = p.assumingMemoryBound(to: UInt64.self)
        var acc: UInt64 = 0
        for k in 0..<(CoreStateFormat.pageSize / 8) { acc |= words[k] }
        return acc == 0
    }

    /// Writes the VM-wide, vCPU and device state, then the end record. The vCPUs must be
    /// quiesced.
    /// - Throws: ``CoreError`` when KVM refuses a read or a device cannot be saved.
    func writeMachineState(_ w: StateWriter) throws(CoreError) {
        for kind in VMStateKind.allCases {
            var e = StateEncoder()
            e.u32(kind.rawValue)
            do { e.raw(try vm.state(kind)) } catch { throw .kvm("save: \(error)") }
            try w.record(.vm, e.bytes)
        }
        let msrIndices = vm.system.msrIndexList()
        for v in vcpus {
            for kind in VCPUStateKind.allCases {
                var e = StateEncoder()
                e.u32(UInt32(v.id)); e.u32(kind.rawValue)
                if kind == .msrs {
                    let values = v.msrValues(msrIndices).prefix(Self.maxMSRs)
                    e.u32(UInt32(values.count))
                    for m in values { e.u32(m.index); e.u64(m.value) }
                } else {
                    do { e.raw(try v.state(kind)) } catch {
                        // XSAVE, XCRS and debug registers are optional in KVM; the rest is not.
                        if [.xsave, .xcrs, .debugRegs].contains(kind) { continue }
                        throw .kvm("save: vCPU \(v.id): \(error)")
                    }
                }
                try w.record(.vcpu, e.bytes)
            }
        }
        try w.record(.device, [UInt8](le32(CoreStateFormat.deviceSerial)) + serial.saveState())
        try w.record(.device, [UInt8](le32(CoreStateFormat.devicePower)) + power.saveState())
        try w.record(.device, [UInt8](le32(CoreStateFormat.devicePCIAddress)) + [UInt8](le32(pci.addressLatch)))
        for slot in 0..<32 {
            guard let d = pci.device(in: slot) else { continue }
            try w.record(.device, [UInt8](le32(CoreStateFormat.devicePCIBase + UInt32(slot))) + (try d.saveState()))
        }
        try w.end()
    }

    /// MSRs a stream may carry per vCPU.
    static let maxMSRs = 1024

    /// Reason a save cannot be live: an in-core device writes guest memory behind KVM's
    /// dirty log, so while one serves the driver the RAM is copied with the vCPUs stopped.
    var precopyRefusal: String? {
        virtioDevices.contains { $0.isActive } ? "a virtio device is in use (its writes bypass KVM's dirty log)" : nil
    }

    /// Stop-and-copy save: pauses the vCPUs, writes the header, all RAM and the machine
    /// state into `fd`. The guest stays paused.
    /// - Throws: ``CoreError``; the guest is running again if it was.
    public func save(to fd: Int32, onProgress: ((UInt64) -> Void)? = nil) throws(CoreError) -> SaveResult {
        let wasRunning = state == .running
        let t0 = clock_ns()
        do {
            try quiesce()
            let w = StateWriter(fd: fd)
            w.onProgress = onProgress
            try w.header(ramBytes: memory.totalSize, vcpus: vcpus.count)
            try writeAllRAM(w)
            try writeMachineState(w)
            return SaveResult(bytes: w.bytesWritten, rounds: 1, downtimeMs: Int((clock_ns() - t0) / 1_000_000),
                              wasRunning: wasRunning)
        } catch {
            if wasRunning { unpause() }
            throw error
        }
    }

    /// Loads a state stream from `fd` into this machine (built with
    /// ``MachineConfiguration/incoming``, vCPUs parked). RAM is written as it arrives;
    /// register and device state are checked whole and applied after the end record.
    /// The guest stays paused.
    /// - Throws: ``CoreError/badStream(_:)`` naming the fault (wrong magic or version, a
    ///   size, count, index or address out of range, a missing part, the stream's end
    ///   before its end record); ``CoreError/kvm(_:)`` when KVM refuses the state.
    public func restore(from fd: Int32, onProgress: ((UInt64) -> Void)? = nil) throws(CoreError) {
        _ = try restoreCounting(from: fd, onProgress: onProgress)
    }

    /// ``restore(from:onProgress:)``, returning the stream bytes read.
    public func restoreCounting(from fd: Int32, onProgress: ((UInt64) -> Void)? = nil) throws(CoreError) -> UInt64 {
        try quiesce()
        let r = StateReader(fd: fd)
        r.onProgress = onProgress
        let (ramBytes, n) = try r.header()
        guard ramBytes == memory.totalSize else {
            throw .badStream("the stream holds \(ramBytes) bytes of RAM, this domain has \(memory.totalSize)")
        }
        guard n == vcpus.count else { throw .badStream("the stream holds \(n) vCPUs, this domain has \(vcpus.count)") }
        var vmState: [VMStateKind: [UInt8]] = [:]
        var cpuState = [[VCPUStateKind: [UInt8]]](repeating: [:], count: vcpus.count)
        var devices: [UInt32: [UInt8]] = [:]
        let page = CoreStateFormat.pageSize
        recordLoop: while true {
            let (tag, length) = try r.next()
            let what = "record \(r.records) (\(tag))"
            switch tag {
            case .ram:
                guard length > 8, (length - 8) % page == 0 else { throw .badStream("\(what): length \(length) is not an address and whole pages") }
                var d = StateDecoder(try r.read(8, what: what), what: what)
                let address = try d.u64()
                guard address % UInt64(page) == 0 else { throw .badStream("\(what): address 0x\(String(address, radix: 16)) not page-aligned") }
                let dst: UnsafeMutableRawBufferPointer
                do { dst = try memory.slice(at: address, count: length - 8) }
                catch { throw .badStream("\(what): \(length - 8) bytes at 0x\(String(address, radix: 16)) are outside guest RAM") }
                try r.read(into: dst, what: what)
            case .zero:
                guard length == 12 else { throw .badStream("\(what): length \(length), not 12") }
                var d = StateDecoder(try r.read(12, what: what), what: what)
                let address = try d.u64(), pages = try d.u32()
                guard address % UInt64(page) == 0, pages >= 1, pages <= 1 << 20 else {
                    throw .badStream("\(what): \(pages) pages at 0x\(String(address, radix: 16))")
                }
                do { try memory.zero(at: address, count: Int(pages) * page) }
                catch { throw .badStream("\(what): \(pages) pages at 0x\(String(address, radix: 16)) are outside guest RAM") }
            case .vcpu:
                guard length >= 8 else { throw .badStream("\(what): length \(length)") }
                var d = StateDecoder(try r.read(length, what: what), what: what)
                let index = try d.u32(), k = try d.u32()
                guard Int(index) < vcpus.count else { throw .badStream("\(what): vCPU \(index) of \(vcpus.count)") }
                guard let kind = VCPUStateKind(rawValue: k) else { throw .badStream("\(what): unknown vCPU state kind \(k)") }
                let data = d.rest()
                if let size = kind.structSize, data.count != size {
                    throw .badStream("\(what): vCPU \(index) \(kind) of \(data.count) bytes, not \(size)")
                }
                cpuState[Int(index)][kind] = data
            case .vm:
                guard length >= 4 else { throw .badStream("\(what): length \(length)") }
                var d = StateDecoder(try r.read(length, what: what), what: what)
                let k = try d.u32()
                guard let kind = VMStateKind(rawValue: k) else { throw .badStream("\(what): unknown VM state kind \(k)") }
                let data = d.rest()
                guard data.count == kind.structSize else { throw .badStream("\(what): \(kind) of \(data.count) bytes, not \(kind.structSize)") }
                vmState[kind] = data
            case .device:
                guard length >= 4 else { throw .badStream("\(what): length \(length)") }
                var d = StateDecoder(try r.read(length, what: what), what: what)
                let id = try d.u32()
                guard devices[id] == nil else { throw .badStream("\(what): device \(id) appears twice") }
                devices[id] = d.rest()
            case .end:
                guard length == 8 else { throw .badStream("\(what): end record of \(length) bytes") }
                var d = StateDecoder(try r.read(8, what: what), what: what)
                let count = try d.u64()
                guard count == r.records - 1 else { throw .badStream("end record counts \(count) records, the stream had \(r.records - 1)") }
                break recordLoop
            }
        }
        // Everything the machine needs must be there before any of it is applied.
        for kind in VMStateKind.allCases where vmState[kind] == nil { throw .badStream("no \(kind) state") }
        for (i, s) in cpuState.enumerated() {
            for kind in [VCPUStateKind.regs, .sregs, .lapic, .mpState, .events, .msrs] where s[kind] == nil {
                throw .badStream("vCPU \(i) has no \(kind) state")
            }
        }
        for id in [CoreStateFormat.deviceSerial, CoreStateFormat.devicePower, CoreStateFormat.devicePCIAddress] where devices[id] == nil {
            throw .badStream("no state for device \(id)")
        }
        for id in devices.keys where id >= CoreStateFormat.devicePCIBase {
            guard id - CoreStateFormat.devicePCIBase < 32, pci.device(in: Int(id - CoreStateFormat.devicePCIBase)) != nil else {
                throw .badStream("state for PCI slot \(Int(id) - Int(CoreStateFormat.devicePCIBase)), which this domain does not have")
            }
        }
        for slot in 0..<32 where pci.device(in: slot) != nil && devices[CoreStateFormat.devicePCIBase + UInt32(slot)] == nil {
            throw .badStream("no state for the device in PCI slot \(slot)")
        }
        var msrLists: [[(UInt32, UInt64)]] = []
        for (i, s) in cpuState.enumerated() {
            var d = StateDecoder(s[.msrs]!, what: "vCPU \(i) MSRs")
            let count = try d.u32()
            guard count <= UInt32(Self.maxMSRs) else { throw .badStream("vCPU \(i): \(count) MSRs (at most \(Self.maxMSRs))") }
            var list: [(UInt32, UInt64)] = []
            for _ in 0..<count { list.append((try d.u32(), try d.u64())) }
            try d.finish()
            msrLists.append(list)
        }

        // Devices first (their interrupt lines), then the irqchip, the vCPUs, the clock.
        try serial.restoreState(devices[CoreStateFormat.deviceSerial]!)
        try power.restoreState(devices[CoreStateFormat.devicePower]!)
        var latch = StateDecoder(devices[CoreStateFormat.devicePCIAddress]!, what: "PCI address latch")
        pci.addressLatch = try latch.u32()
        try latch.finish()
        for slot in 0..<32 {
            guard let dev = pci.device(in: slot) else { continue }
            try dev.restoreState(devices[CoreStateFormat.devicePCIBase + UInt32(slot)]!)
        }
        do {
            for kind in [VMStateKind.picMaster, .picSlave, .ioapic, .pit2] { try vm.setState(kind, vmState[kind]!) }
            // KVM's own order (QEMU's kvm_arch_put_registers): registers, FPU/XSAVE, XCRs,
            // special registers (APIC base among them), MSRs, MP state, LAPIC, events.
            for (i, v) in vcpus.enumerated() {
                let s = cpuState[i]
                try v.setState(.regs, s[.regs]!)
                if let f = s[.fpu] { try v.setState(.fpu, f) }
                if let x = s[.xsave] { try v.setState(.xsave, x) }
                if let x = s[.xcrs] { try v.setState(.xcrs, x) }
                try v.setState(.sregs, s[.sregs]!)
                var refused = 0
                for m in msrLists[i] { if (try? v.setMSRs([(m.0, m.1)])) != 1 { refused += 1 } }
                if refused > 0 { log("restore: vCPU \(i): KVM refused \(refused) of \(msrLists[i].count) MSRs") }
                try v.setState(.mpState, s[.mpState]!)
                try v.setState(.lapic, s[.lapic]!)
                try v.setState(.events, s[.events]!)
                if let dr = s[.debugRegs] { try v.setState(.debugRegs, dr) }
            }
            try vm.setState(.clock, vmState[.clock]!)
        } catch { throw .kvm("restore: \(error)") }
        return r.bytesRead
    }
}

@inline(__always)
func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
