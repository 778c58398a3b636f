import Boot
import Synchronization

/// A function on PCI bus 0 (PCI Local Bus 3.0, type 0 header).
public protocol PCIDevice: AnyObject, Sendable {
    /// Reads `size` (1, 2 or 4) bytes of configuration space at `offset` (< 256).
    func configRead(offset: Int, size: Int) -> UInt32
    /// Writes `size` bytes of configuration space at `offset`.
    func configWrite(offset: Int, size: Int, value: UInt32)
    /// Guest-physical range of each memory BAR currently decoding, for MMIO dispatch.
    func mmioRanges() -> [ClosedRange<UInt64>]
    func mmioRead(address: UInt64, data: UnsafeMutableRawBufferPointer)
    func mmioWrite(address: UInt64, data: UnsafeRawBufferPointer)
    /// The device's state for the core's state stream (configuration space and more).
    /// - Throws: ``CoreError`` when the device cannot be saved now.
    func saveState() throws(CoreError) -> [UInt8]
    /// Loads what ``saveState()`` wrote, on a freshly built device of the same kind.
    /// - Throws: ``CoreError/badStream(_:)`` for a record that does not fit the device.
    func restoreState(_ bytes: [UInt8]) throws(CoreError)
}

/// 256 bytes of type 0 configuration space with per-byte write masks and BAR sizing.
public struct PCIConfigSpace: Sendable {
    public var bytes = [UInt8](repeating: 0, count: 256)
    /// Bits the guest may change.
    public var writable = [UInt8](repeating: 0, count: 256)
    /// Size in bytes of each of the six BARs (0: unimplemented); memory BARs only.
    public var barSizes = [UInt64](repeating: 0, count: 6)

    /// A header with the given identity. Command bits IO/MEM/MASTER/INTX_DISABLE and the
    /// interrupt line are writable; everything else is read-only until `addBAR`.
    public init(vendor: UInt16, device: UInt16, revision: UInt8, classCode: UInt32,
                subsystemVendor: UInt16, subsystem: UInt16, interruptPin: UInt8, interruptLine: UInt8) {
        set16(0x00, vendor); set16(0x02, device)
        bytes[0x08] = revision
        bytes[0x09] = UInt8(classCode & 0xFF); bytes[0x0A] = UInt8((classCode >> 8) & 0xFF); bytes[0x0B] = UInt8(classCode >> 16)
        bytes[0x0E] = 0x00
        set16(0x2C, subsystemVendor); set16(0x2E, subsystem)
        bytes[0x3C] = interruptLine
        bytes[0x3D] = interruptPin
        writable[0x04] = 0x07          // IO, MEM, bus master
        writable[0x05] = 0x04          // INTx disable
        writable[0x3C] = 0xFF
    }

    public mutating func set16(_ off: Int, _ v: UInt16) { bytes[off] = UInt8(v & 0xFF); bytes[off + 1] = UInt8(v >> 8) }
    public mutating func set32(_ off: Int, _ v: UInt32) { for i in 0..<4 { bytes[off + i] = UInt8((v >> (8 * UInt32(i))) & 0xFF) } }
    public func get32(_ off: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[off + $1]) << (8 * UInt32($1)) } }

    /// Declares BAR `index` as a 32-bit non-prefetchable memory BAR of `size` bytes (a power
    /// of two ≥ 16) at `address`.
    public mutating func addMemoryBAR(_ index: Int, size: UInt64, address: UInt32) {
        barSizes[index] = size
        set32(0x10 + 4 * index, address)
        let mask = ~UInt32(size - 1)
        for i in 0..<4 { writable[0x10 + 4 * index + i] = UInt8((mask >> (8 * UInt32(i))) & 0xFF) }
        writable[0x10 + 4 * index] &= 0xF0
    }

    /// Adds the capabilities-list bit and pointer.
    public mutating func setCapabilityPointer(_ off: UInt8) {
        bytes[0x06] |= 0x10
        bytes[0x34] = off
    }

    /// Address of memory BAR `index` (0 when not programmed).
    public func barAddress(_ index: Int) -> UInt64 { UInt64(get32(0x10 + 4 * index) & 0xFFFF_FFF0) }

    /// Whether memory decoding (command bit 1) is on.
    public var memoryEnabled: Bool { bytes[0x04] & 0x02 != 0 }

    public func read(offset: Int, size: Int) -> UInt32 {
        guard offset >= 0, size > 0, offset + size <= 256 else { return 0xFFFF_FFFF }
        var v: UInt32 = 0
        for i in 0..<size { v |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
        return v
    }

    /// Applies a guest write through the write masks. Returns whether a BAR or the command
    /// register changed (the device must then remap).
    @discardableResult
    public mutating func write(offset: Int, size: Int, value: UInt32) -> Bool {
        guard offset >= 0, size > 0, offset + size <= 256 else { return false }
        var remap = false
        for i in 0..<size {
            let o = offset + i
            let b = UInt8((value >> (8 * UInt32(i))) & 0xFF)
            let old = bytes[o]
            bytes[o] = (old & ~writable[o]) | (b & writable[o])
            if bytes[o] != old && ((0x10..<0x28).contains(o) || o == 0x04) { remap = true }
        }
        return remap
    }
}

/// PCI bus 0 behind configuration mechanism #1 (ports 0xCF8/0xCFC) with a host bridge at
/// 00:00.0. Devices plug into slots 1...31 (function 0 only). Also routes MMIO in the
/// 32-bit PCI window to the BAR that decodes it.
public final class PCIBus: PortIODevice, MMIODevice, @unchecked Sendable {
    private let address = Atomic<UInt32>(0)
    private var slots = [(any PCIDevice)?](repeating: nil, count: 32)
    private let hostBridge: HostBridge

    public init() {
        hostBridge = HostBridge()
        slots[0] = hostBridge
    }

    /// Plugs `device` into `slot` (1...31). Done before vCPUs start.
    public func plug(_ device: any PCIDevice, slot: Int) {
        precondition(slot > 0 && slot < 32 && slots[slot] == nil)
        slots[slot] = device
    }

    /// First free slot, if any.
    public var freeSlot: Int? { (1..<32).first { slots[$0] == nil } }

    public func attach(to bus: IOBus) {
        bus.register(ports: PlatformLayout.pciConfigAddressPort...PlatformLayout.pciConfigAddressPort, self)
        bus.register(ports: PlatformLayout.pciConfigDataPort...(PlatformLayout.pciConfigDataPort + 3), self)
        // The firmware window is pciMMIOBase..+pciMMIOSize, but a guest may move BARs
        // anywhere in the 32-bit hole below the IOAPIC; route all of it.
        bus.register(mmio: PlatformLayout.mmioHoleStart...(PlatformLayout.ioapicBase - 1), self)
    }

    private func target() -> (any PCIDevice, Int)? {
        let a = address.load(ordering: .acquiring)
        guard a & 0x8000_0000 != 0 else { return nil }
        let bus = (a >> 16) & 0xFF, dev = Int((a >> 11) & 0x1F), fn = (a >> 8) & 0x7
        guard bus == 0, fn == 0, let d = slots[dev] else { return nil }
        return (d, Int(a & 0xFC))
    }

    public func read(port: UInt16, data: UnsafeMutableRawBufferPointer) {
        if port == PlatformLayout.pciConfigAddressPort {
            data.storeLittleEndian(data.count == 4 ? UInt64(address.load(ordering: .acquiring)) : 0xFFFF_FFFF)
            return
        }
        let sub = Int(port - PlatformLayout.pciConfigDataPort)
        guard let (dev, reg) = target(), sub + data.count <= 4 else { data.storeLittleEndian(0xFFFF_FFFF); return }
        data.storeLittleEndian(UInt64(dev.configRead(offset: reg + sub, size: data.count)))
    }

    public func write(port: UInt16, data: UnsafeRawBufferPointer) {
        if port == PlatformLayout.pciConfigAddressPort {
            if data.count == 4 { address.store(UInt32(truncatingIfNeeded: data.littleEndianValue), ordering: .releasing) }
            return
        }
        let sub = Int(port - PlatformLayout.pciConfigDataPort)
        guard let (dev, reg) = target(), sub + data.count <= 4 else { return }
        dev.configWrite(offset: reg + sub, size: data.count, value: UInt32(truncatingIfNeeded: data.littleEndianValue))
    }

    private func mmioDevice(_ addr: UInt64, _ len: Int) -> (any PCIDevice)? {
        for case let d? in slots where d.mmioRanges().contains(where: { $0.contains(addr) && $0.contains(addr + UInt64(len) - 1) }) {
            return d
        }
        return nil
    }

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        if let d = mmioDevice(address, data.count) { d.mmioRead(address: address, data: data) }
        else { data.initializeMemory(as: UInt8.self, repeating: 0xFF) }
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        mmioDevice(address, data.count)?.mmioWrite(address: address, data: data)
    }
}

/// 00:00.0: a host bridge with no BARs (Red Hat's generic PCIe host, 1b36:0008).
final class HostBridge: PCIDevice, @unchecked Sendable {
    private let config = Mutex(PCIConfigSpace(vendor: 0x1B36, device: 0x0008, revision: 0, classCode: 0x06_00_00,
                                              subsystemVendor: 0x1AF4, subsystem: 0x1100, interruptPin: 0, interruptLine: 0))
    func configRead(offset: Int, size: Int) -> UInt32 { config.withLock { $0.read(offset: offset, size: size) } }
    func configWrite(offset: Int, size: Int, value: UInt32) { config.withLock { _ = $0.write(offset: offset, size: size, value: value) } }
    func mmioRanges() -> [ClosedRange<UInt64>] { [] }
    func mmioRead(address: UInt64, data: UnsafeMutableRawBufferPointer) { data.initializeMemory(as: UInt8.self, repeating: 0xFF) }
    func mmioWrite(address: UInt64, data: UnsafeRawBufferPointer) {}
    func saveState() throws(CoreError) -> [UInt8] { config.withLock { $0.savedBytes } }
    func restoreState(_ bytes: [UInt8]) throws(CoreError) {
        var c = config.withLock { $0 }
        try c.restore(bytes)
        config.withLock { $0 = c }
    }
}

extension PCIBus {
    /// The configuration address latch (port 0xCF8).
    public var addressLatch: UInt32 {
        get { address.load(ordering: .acquiring) }
        set { address.store(newValue, ordering: .releasing) }
    }
    /// The device in `slot` (0 the host bridge), if any.
    public func device(in slot: Int) -> (any PCIDevice)? { slot >= 0 && slot < 32 ? slots[slot] : nil }
}

extension PCIConfigSpace {
    /// The 256 bytes as saved; ``restore(_:)`` takes back only the guest-writable bits.
    public var savedBytes: [UInt8] { bytes }

    /// Puts back the guest-writable bits of saved configuration bytes (the read-only ones
    /// — IDs, capabilities — stay this build's).
    /// - Throws: ``CoreError/badStream(_:)`` unless there are exactly 256 bytes.
    public mutating func restore(_ saved: [UInt8]) throws(CoreError) {
        guard saved.count == 256 else { throw .badStream("PCI configuration of \(saved.count) bytes, not 256") }
        for i in 0..<256 { bytes[i] = (bytes[i] & ~writable[i]) | (saved[i] & writable[i]) }
    }
}
