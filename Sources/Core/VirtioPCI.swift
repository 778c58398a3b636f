import Boot
import GuestMemory
import KVM
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One virtqueue as the driver configured it (virtio 1.2 §4.1.4.3 common configuration).
public struct VirtqueueConfig: Sendable, Equatable {
    public var size: UInt16
    /// Guest-physical addresses of the descriptor table, driver (avail) and device (used) areas.
    public var descTable: UInt64, availRing: UInt64, usedRing: UInt64
    public var enabled: Bool
}

/// A virtio device model behind the PCI transport: in-core (virtio-rng) or served by a
/// vhost-user backend in another process. The transport owns feature negotiation and
/// queue configuration; the device sees the result in ``activate(features:queues:kicks:calls:)``.
public protocol VirtioDevice: AnyObject, Sendable {
    /// Virtio device ID (virtio 1.2 §5): 2 block, 1 net, 4 entropy, 3 console.
    var deviceType: UInt16 { get }
    /// Features the device offers (VERSION_1, bit 32, is added by the transport).
    var offeredFeatures: UInt64 { get }
    /// Maximum size of each queue; the count is the number of queues.
    var queueMaxSizes: [UInt16] { get }
    /// Reads device-specific configuration at `offset` into `data`.
    func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer)
    func writeConfig(offset: Int, data: UnsafeRawBufferPointer)
    /// DRIVER_OK: start serving. `kicks[i]` is signalled when the driver notifies queue i;
    /// write `calls[i]` to interrupt the driver for queue i.
    func activate(features: UInt64, queues: [VirtqueueConfig], kicks: [Int32], calls: [Int32]) throws
    /// The driver reset the device (status 0): stop using guest memory.
    func reset()
    /// Why the device cannot be saved while it serves the driver, nil when it can (the
    /// default refuses: a device must say how its queue positions are kept).
    var saveRefusal: String? { get }
    /// Per queue, the index of the next avail entry the device will take (its
    /// last_avail_idx), read with the vCPUs stopped; [] when not active.
    func queuePositions() throws -> [UInt16]
    /// Like ``activate(features:queues:kicks:calls:)`` on a restored domain: the device
    /// takes avail entries from `positions[i]` on.
    func resume(features: UInt64, queues: [VirtqueueConfig], kicks: [Int32], calls: [Int32], positions: [UInt16]) throws
}

extension VirtioDevice {
    public var saveRefusal: String? { "virtio device type \(deviceType) cannot be saved while the guest uses it" }
    public func queuePositions() throws -> [UInt16] { [] }
    public func resume(features: UInt64, queues: [VirtqueueConfig], kicks: [Int32], calls: [Int32], positions: [UInt16]) throws {
        try activate(features: features, queues: queues, kicks: kicks, calls: calls)
    }
}

/// The virtio-pci modern transport (virtio 1.2 §4.1) over one 32-bit memory BAR with the
/// common, ISR, device and notify structures, plus the PCI-configuration access
/// capability. Queue notifications are KVM ioeventfds; interrupts are INTx delivered
/// through an irqfd after the ISR bit is set.
public final class VirtioPCIDevice: PCIDevice, @unchecked Sendable {
    static let barSize: UInt64 = 0x4000
    static let commonOffset: UInt64 = 0x0000, isrOffset: UInt64 = 0x1000
    static let deviceOffset: UInt64 = 0x2000, notifyOffset: UInt64 = 0x3000
    static let notifyMultiplier: UInt32 = 4
    static let versionFeature: UInt64 = 1 << 32

    private struct State {
        var config: PCIConfigSpace
        var deviceFeatureSelect: UInt32 = 0
        var driverFeatureSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var status: UInt8 = 0
        var queueSelect: UInt16 = 0
        var queues: [VirtqueueConfig]
        var configGeneration: UInt8 = 0
        var notifyRegistered: UInt64? = nil
        var active = false
        var cfgCap = (bar: UInt8(0), offset: UInt32(0), length: UInt32(0))
    }
    private let state: Mutex<State>
    /// Pending interrupt reasons: bit 0 queue, bit 1 configuration change.
    private let isr = Atomic<UInt8>(0)
    public let device: any VirtioDevice
    private let vm: VirtualMachine
    private let gsi: UInt32
    private let irqFD: Int32
    /// One kick eventfd per queue (registered as ioeventfds on the notify addresses).
    public let kickFDs: [Int32]
    /// One call eventfd per queue; the core's event loop turns a call into ISR + irqfd.
    public let callFDs: [Int32]
    private let log: @Sendable (String) -> Void

    /// Capability layout in configuration space.
    static let capCommon = 0x40, capISR = 0x50, capDevice = 0x60, capNotify = 0x70, capPCICfg = 0x84

    /// - Parameters:
    ///   - slot: PCI slot, which also picks the INTx GSI (``PlatformLayout/pciIntxGSI(slot:)``).
    ///   - barAddress: where the BAR is placed before the guest runs (firmware assignment).
    /// - Throws: ``CoreError`` when eventfds or the irqfd cannot be set up.
    public init(device: any VirtioDevice, vm: VirtualMachine, loop: EventLoop, slot: Int, barAddress: UInt32,
                log: @escaping @Sendable (String) -> Void) throws {
        self.device = device
        self.vm = vm
        self.log = log
        gsi = PlatformLayout.pciIntxGSI(slot: slot)
        let classCode: UInt32
        switch device.deviceType {
        case 1: classCode = 0x02_00_00
        case 2: classCode = 0x01_00_00
        case 3: classCode = 0x07_80_00
        default: classCode = 0xFF_00_00
        }
        var cfg = PCIConfigSpace(vendor: 0x1AF4, device: 0x1040 + device.deviceType, revision: 1, classCode: classCode,
                                 subsystemVendor: 0x1AF4, subsystem: 0x40, interruptPin: 1, interruptLine: UInt8(gsi))
        cfg.addMemoryBAR(0, size: Self.barSize, address: barAddress)
        cfg.bytes[0x04] = 0x02 // memory decoding on, as firmware would leave it
        cfg.setCapabilityPointer(UInt8(Self.capCommon))
        func cap(_ at: Int, next: Int, len: UInt8, type: UInt8, offset: UInt64, length: UInt32) {
            cfg.bytes[at] = 0x09; cfg.bytes[at + 1] = UInt8(next); cfg.bytes[at + 2] = len; cfg.bytes[at + 3] = type
            cfg.bytes[at + 4] = 0 // BAR 0
            cfg.set32(at + 8, UInt32(offset)); cfg.set32(at + 12, length)
        }
        let nq = device.queueMaxSizes.count
        cap(Self.capCommon, next: Self.capISR, len: 16, type: 1, offset: Self.commonOffset, length: 0x38)
        cap(Self.capISR, next: Self.capDevice, len: 16, type: 3, offset: Self.isrOffset, length: 4)
        cap(Self.capDevice, next: Self.capNotify, len: 16, type: 4, offset: Self.deviceOffset, length: 0x1000)
        cap(Self.capNotify, next: Self.capPCICfg, len: 20, type: 2, offset: Self.notifyOffset, length: UInt32(nq) * Self.notifyMultiplier)
        cfg.set32(Self.capNotify + 16, Self.notifyMultiplier)
        cap(Self.capPCICfg, next: 0, len: 20, type: 5, offset: 0, length: 0)
        // The PCI-config access window (bar, offset, length, data) is guest-writable.
        for o in (Self.capPCICfg + 4)...(Self.capPCICfg + 4) { cfg.writable[o] = 0xFF }
        for o in (Self.capPCICfg + 8)..<(Self.capPCICfg + 20) { cfg.writable[o] = 0xFF }

        var kicks: [Int32] = [], calls: [Int32] = []
        do {
            for _ in 0..<nq { kicks.append(try makeEventFD()); calls.append(try makeEventFD()) }
            irqFD = try makeEventFD()
        } catch {
            for fd in kicks + calls { close(fd) }
            throw error
        }
        kickFDs = kicks
        callFDs = calls
        state = Mutex(State(config: cfg, queues: device.queueMaxSizes.map {
            VirtqueueConfig(size: $0, descTable: 0, availRing: 0, usedRing: 0, enabled: false)
        }))
        for (q, fd) in calls.enumerated() {
            try loop.add(fd) { [weak self] _ in
                _ = drainEventFD(fd)
                self?.interrupt(queue: q)
            }
        }
        // The irqfd and the notify ioeventfds are registered when the driver first sets
        // DRIVER_OK (``wire()``): each registration waits for a KVM SRCU grace period
        // (milliseconds), which would otherwise delay every boot before its first byte.
    }

    private let wired = Mutex(false)

    /// Registers the INTx irqfd (once) and the notify ioeventfds. Before this, a notify
    /// takes the MMIO exit path and still reaches the kick eventfd.
    private func wire() {
        let first = wired.withLock { w -> Bool in
            if w { return false }
            w = true
            return true
        }
        if first {
            do { try vm.irqfd(irqFD, gsi: gsi) }
            catch { log("virtio-pci: irqfd for GSI \(gsi) failed: \(error)") }
        }
        remapNotify()
    }

    deinit {
        for fd in kickFDs + callFDs { close(fd) }
        close(irqFD)
    }

    /// Raises the queue interrupt: sets ISR bit 0 and pulses INTx through the irqfd.
    public func interrupt(queue: Int) {
        isr.bitwiseOr(1, ordering: .acquiringAndReleasing)
        signalEventFD(irqFD)
    }

    /// Raises a configuration-change interrupt (ISR bit 1).
    public func configChanged() {
        state.withLock { $0.configGeneration &+= 1 }
        isr.bitwiseOr(2, ordering: .acquiringAndReleasing)
        signalEventFD(irqFD)
    }

    /// (Re)registers the queue-notify ioeventfds at the BAR's current address.
    private func remapNotify() {
        state.withLock { s in
            let base = s.config.memoryEnabled ? s.config.barAddress(0) : 0
            let want: UInt64? = base == 0 ? nil : base + Self.notifyOffset
            if want == s.notifyRegistered { return }
            if let old = s.notifyRegistered {
                for (q, fd) in kickFDs.enumerated() {
                    try? vm.ioeventfd(fd, address: old + UInt64(q) * UInt64(Self.notifyMultiplier), length: 2, deassign: true)
                }
            }
            s.notifyRegistered = nil
            if let new = want {
                do {
                    for (q, fd) in kickFDs.enumerated() {
                        try vm.ioeventfd(fd, address: new + UInt64(q) * UInt64(Self.notifyMultiplier), length: 2)
                    }
                    s.notifyRegistered = new
                } catch {
                    log("virtio-pci: cannot register queue notify ioeventfds: \(error); notifications take the slow path")
                }
            }
        }
    }

    // MARK: PCIDevice

    public func configRead(offset: Int, size: Int) -> UInt32 {
        let (v, window) = state.withLock { s -> (UInt32, (UInt8, UInt32, UInt32)?) in
            let dataOff = Self.capPCICfg + 16
            if offset >= dataOff && offset + size <= dataOff + 4 {
                return (0, (s.config.bytes[Self.capPCICfg + 4], s.config.get32(Self.capPCICfg + 8), s.config.get32(Self.capPCICfg + 12)))
            }
            return (s.config.read(offset: offset, size: size), nil)
        }
        guard let (bar, off, len) = window else { return v }
        // VIRTIO_PCI_CAP_PCI_CFG: read through the window into BAR 0.
        guard bar == 0, len == 1 || len == 2 || len == 4, UInt64(off) + UInt64(len) <= Self.barSize else { return 0 }
        var buf: UInt64 = 0
        withUnsafeMutableBytes(of: &buf) { barRead(offset: UInt64(off), data: UnsafeMutableRawBufferPointer(rebasing: $0.prefix(Int(len)))) }
        return UInt32(truncatingIfNeeded: buf)
    }

    public func configWrite(offset: Int, size: Int, value: UInt32) {
        let dataOff = Self.capPCICfg + 16
        if offset >= dataOff && offset + size <= dataOff + 4 {
            let (bar, off, len) = state.withLock { s in
                (s.config.bytes[Self.capPCICfg + 4], s.config.get32(Self.capPCICfg + 8), s.config.get32(Self.capPCICfg + 12))
            }
            guard bar == 0, len == 1 || len == 2 || len == 4, UInt64(off) + UInt64(len) <= Self.barSize else { return }
            var v = UInt64(value)
            withUnsafeBytes(of: &v) { barWrite(offset: UInt64(off), data: UnsafeRawBufferPointer(rebasing: $0.prefix(Int(len)))) }
            return
        }
        let remap = state.withLock { $0.config.write(offset: offset, size: size, value: value) }
        if remap && wired.withLock({ $0 }) { remapNotify() }
    }

    public func mmioRanges() -> [ClosedRange<UInt64>] {
        state.withLock { s in
            let b = s.config.barAddress(0)
            return s.config.memoryEnabled && b != 0 ? [b...(b + Self.barSize - 1)] : []
        }
    }

    /// Offset of `[address, address+count)` inside BAR 0, or nil when it is not (the BAR may
    /// have moved since the bus routed the access, on another vCPU).
    private func barOffset(_ address: UInt64, _ count: Int) -> UInt64? {
        let base = state.withLock { $0.config.barAddress(0) }
        guard base != 0, address >= base else { return nil }
        let off = address - base
        return off < Self.barSize && UInt64(count) <= Self.barSize - off ? off : nil
    }

    public func mmioRead(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard let off = barOffset(address, data.count) else { data.initializeMemory(as: UInt8.self, repeating: 0xFF); return }
        barRead(offset: off, data: data)
    }

    public func mmioWrite(address: UInt64, data: UnsafeRawBufferPointer) {
        guard let off = barOffset(address, data.count) else { return }
        barWrite(offset: off, data: data)
    }

    // MARK: BAR 0 structures

    private func barRead(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        switch offset {
        case Self.commonOffset..<Self.isrOffset:
            data.storeLittleEndian(commonRead(Int(offset - Self.commonOffset), size: data.count))
        case Self.isrOffset..<Self.deviceOffset:
            // Reading the ISR acknowledges it (virtio 1.2 §4.1.4.5).
            data.storeLittleEndian(offset == Self.isrOffset ? UInt64(isr.exchange(0, ordering: .acquiringAndReleasing)) : 0)
        case Self.deviceOffset..<Self.notifyOffset:
            device.readConfig(offset: Int(offset - Self.deviceOffset), data: data)
        default:
            data.storeLittleEndian(0)
        }
    }

    private func barWrite(offset: UInt64, data: UnsafeRawBufferPointer) {
        let v = data.littleEndianValue
        switch offset {
        case Self.commonOffset..<Self.isrOffset:
            commonWrite(Int(offset - Self.commonOffset), size: data.count, value: v)
        case Self.deviceOffset..<Self.notifyOffset:
            device.writeConfig(offset: Int(offset - Self.deviceOffset), data: data)
        case Self.notifyOffset..<(Self.notifyOffset + UInt64(kickFDs.count) * UInt64(Self.notifyMultiplier)):
            // Slow path (ioeventfd missing or an access size it does not match).
            signalEventFD(kickFDs[Int((offset - Self.notifyOffset) / UInt64(Self.notifyMultiplier))])
        default:
            break
        }
    }

    private func commonRead(_ off: Int, size: Int) -> UInt64 {
        state.withLock { s -> UInt64 in
            let features = device.offeredFeatures | Self.versionFeature
            let q = Int(s.queueSelect) < s.queues.count ? s.queues[Int(s.queueSelect)] : nil
            switch off {
            case 0x00: return UInt64(s.deviceFeatureSelect)
            case 0x04: return s.deviceFeatureSelect < 2 ? (features >> (32 * UInt64(s.deviceFeatureSelect))) & 0xFFFF_FFFF : 0
            case 0x08: return UInt64(s.driverFeatureSelect)
            case 0x0C: return s.driverFeatureSelect < 2 ? (s.driverFeatures >> (32 * UInt64(s.driverFeatureSelect))) & 0xFFFF_FFFF : 0
            case 0x10: return 0xFFFF // config_msix_vector: VIRTIO_MSI_NO_VECTOR (INTx only)
            case 0x12: return UInt64(s.queues.count)
            case 0x14: return UInt64(s.status)
            case 0x15: return UInt64(s.configGeneration)
            case 0x16: return UInt64(s.queueSelect)
            case 0x18: return UInt64(q?.size ?? 0)
            case 0x1A: return 0xFFFF
            case 0x1C: return (q?.enabled ?? false) ? 1 : 0
            case 0x1E: return UInt64(s.queueSelect) // queue_notify_off
            case 0x20: return (q?.descTable ?? 0) & 0xFFFF_FFFF
            case 0x24: return (q?.descTable ?? 0) >> 32
            case 0x28: return (q?.availRing ?? 0) & 0xFFFF_FFFF
            case 0x2C: return (q?.availRing ?? 0) >> 32
            case 0x30: return (q?.usedRing ?? 0) & 0xFFFF_FFFF
            case 0x34: return (q?.usedRing ?? 0) >> 32
            default: return 0
            }
        }
    }

    private func commonWrite(_ off: Int, size: Int, value: UInt64) {
        var activate: (UInt64, [VirtqueueConfig])? = nil
        var doReset = false
        state.withLock { s in
            let qi = Int(s.queueSelect)
            let hasQ = qi < s.queues.count
            // Queue registers are frozen once the driver is running (virtio 1.2 §4.1.4.3.2).
            let queueWritable = hasQ && !s.active
            func setLow(_ v: inout UInt64) { v = (v & 0xFFFF_FFFF_0000_0000) | (value & 0xFFFF_FFFF) }
            func setHigh(_ v: inout UInt64) { v = (v & 0xFFFF_FFFF) | ((value & 0xFFFF_FFFF) << 32) }
            switch off {
            case 0x00: s.deviceFeatureSelect = UInt32(truncatingIfNeeded: value)
            case 0x08: s.driverFeatureSelect = UInt32(truncatingIfNeeded: value)
            case 0x0C:
                guard s.status & 0x08 == 0, s.driverFeatureSelect < 2 else { break }
                let shift = 32 * UInt64(s.driverFeatureSelect)
                s.driverFeatures = (s.driverFeatures & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift)
            case 0x14:
                let new = UInt8(truncatingIfNeeded: value)
                if new == 0 {
                    doReset = s.active
                    s.status = 0; s.active = false; s.driverFeatures = 0; s.queueSelect = 0
                    s.queues = device.queueMaxSizes.map { VirtqueueConfig(size: $0, descTable: 0, availRing: 0, usedRing: 0, enabled: false) }
                    isr.store(0, ordering: .releasing)
                    break
                }
                var accepted = new
                if new & 0x08 != 0 && s.status & 0x08 == 0 {
                    // FEATURES_OK only for a subset of what we offer, including VERSION_1.
                    let offered = device.offeredFeatures | Self.versionFeature
                    if s.driverFeatures & ~offered != 0 || s.driverFeatures & Self.versionFeature == 0 { accepted &= ~0x08 }
                }
                if accepted & 0x04 != 0 && s.status & 0x04 == 0 && !s.active {
                    if accepted & 0x08 == 0 { accepted = s.status | 0x40 } // DRIVER_OK without FEATURES_OK: NEEDS_RESET
                    else { s.active = true; activate = (s.driverFeatures, s.queues) }
                }
                s.status = accepted
            case 0x16: s.queueSelect = UInt16(truncatingIfNeeded: value)
            case 0x18:
                let n = UInt16(truncatingIfNeeded: value)
                // Split queues: a power of two no larger than the device's maximum.
                if queueWritable, n != 0, n & (n - 1) == 0, n <= device.queueMaxSizes[qi] { s.queues[qi].size = n }
            case 0x1C: if queueWritable { s.queues[qi].enabled = value & 1 != 0 }
            case 0x20: if queueWritable { setLow(&s.queues[qi].descTable) }
            case 0x24: if queueWritable { setHigh(&s.queues[qi].descTable) }
            case 0x28: if queueWritable { setLow(&s.queues[qi].availRing) }
            case 0x2C: if queueWritable { setHigh(&s.queues[qi].availRing) }
            case 0x30: if queueWritable { setLow(&s.queues[qi].usedRing) }
            case 0x34: if queueWritable { setHigh(&s.queues[qi].usedRing) }
            default: break
            }
        }
        if doReset { device.reset() }
        if let (features, queues) = activate {
            wire()
            do {
                try device.activate(features: features, queues: queues, kicks: kickFDs, calls: callFDs)
            } catch {
                log("virtio-pci: device type \(device.deviceType) failed to activate: \(error); DEVICE_NEEDS_RESET")
                state.withLock { $0.status |= 0x40; $0.active = false }
                configChanged()
            }
        }
    }
}

extension VirtioPCIDevice {
    /// Whether the driver set DRIVER_OK and the device serves its queues.
    public var isActive: Bool { state.withLock { $0.active } }

    /// The transport's state (configuration space, negotiated features, status, queue
    /// addresses, ISR) and the device's queue positions: the `device 0x100+slot` record.
    /// - Throws: ``CoreError/badArgument(_:)`` when the device is active and cannot be saved.
    public func saveState() throws(CoreError) -> [UInt8] {
        let s = state.withLock { $0 }
        var positions: [UInt16] = []
        if s.active {
            if let why = device.saveRefusal { throw .badArgument(why) }
            do { positions = try device.queuePositions() } catch { throw .badArgument("virtio device type \(device.deviceType): \(error)") }
        }
        var e = StateEncoder()
        e.u16(device.deviceType)
        e.blob(s.config.savedBytes)
        e.u32(s.deviceFeatureSelect); e.u32(s.driverFeatureSelect); e.u64(s.driverFeatures)
        e.u8(s.status); e.u16(s.queueSelect); e.u8(s.configGeneration); e.bool(s.active)
        e.u8(s.cfgCap.bar); e.u32(s.cfgCap.offset); e.u32(s.cfgCap.length)
        e.u8(isr.load(ordering: .acquiring))
        e.u32(UInt32(s.queues.count))
        for (i, q) in s.queues.enumerated() {
            e.u16(q.size); e.u64(q.descTable); e.u64(q.availRing); e.u64(q.usedRing); e.bool(q.enabled)
            e.u16(i < positions.count ? positions[i] : 0)
        }
        return e.bytes
    }

    /// Loads what ``saveState()`` wrote into this (fresh, never activated) transport; an
    /// active device is resumed at its saved queue positions.
    /// - Throws: ``CoreError/badStream(_:)`` for another device type, a queue count or
    ///   size this device does not have, rings outside guest memory, short records.
    public func restoreState(_ bytes: [UInt8]) throws(CoreError) {
        var d = StateDecoder(bytes, what: "PCI device type \(device.deviceType)")
        let type = try d.u16()
        guard type == device.deviceType else { throw .badStream("PCI slot holds device type \(device.deviceType), the stream type \(type)") }
        var s = state.withLock { $0 }
        try s.config.restore(try d.blob(max: 256))
        s.deviceFeatureSelect = try d.u32(); s.driverFeatureSelect = try d.u32()
        s.driverFeatures = try d.u64()
        let offered = device.offeredFeatures | Self.versionFeature
        guard s.driverFeatures & ~offered == 0 else { throw .badStream("driver features 0x\(String(s.driverFeatures, radix: 16)) beyond the device's") }
        s.status = try d.u8(); s.queueSelect = try d.u16(); s.configGeneration = try d.u8()
        s.active = try d.bool()
        s.cfgCap = (try d.u8(), try d.u32(), try d.u32())
        let isrValue = try d.u8() & 3
        let n = try d.u32()
        guard n == UInt32(s.queues.count) else { throw .badStream("\(n) queues, the device has \(s.queues.count)") }
        var positions: [UInt16] = []
        for i in 0..<Int(n) {
            let size = try d.u16()
            guard size <= device.queueMaxSizes[i], size == 0 || size & (size - 1) == 0 else {
                throw .badStream("queue \(i) size \(size) (at most \(device.queueMaxSizes[i]), a power of two)")
            }
            s.queues[i] = VirtqueueConfig(size: size, descTable: try d.u64(), availRing: try d.u64(), usedRing: try d.u64(),
                                          enabled: try d.bool())
            positions.append(try d.u16())
        }
        try d.finish()
        s.notifyRegistered = nil
        let st = s
        state.withLock { $0 = st }
        isr.store(isrValue, ordering: .releasing)
        if st.active {
            wire()
            do {
                try device.resume(features: st.driverFeatures, queues: st.queues, kicks: kickFDs, calls: callFDs, positions: positions)
            } catch { throw .badStream("virtio device type \(device.deviceType) cannot resume: \(error)") }
        } else if st.config.memoryEnabled {
            remapNotify()
        }
        if isrValue != 0 { signalEventFD(irqFD) }
    }
}
