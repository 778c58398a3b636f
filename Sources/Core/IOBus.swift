import Synchronization

/// A device that answers guest port I/O.
public protocol PortIODevice: AnyObject, Sendable {
    /// Fills `data` (1, 2 or 4 bytes) for an `in` from `port`.
    func read(port: UInt16, data: UnsafeMutableRawBufferPointer)
    /// Handles an `out` of `data` (1, 2 or 4 bytes, little-endian) to `port`.
    func write(port: UInt16, data: UnsafeRawBufferPointer)
}

/// A device that answers guest MMIO at absolute guest-physical addresses.
public protocol MMIODevice: AnyObject, Sendable {
    /// Fills `data` (1 to 8 bytes) for a read at `address`.
    func read(address: UInt64, data: UnsafeMutableRawBufferPointer)
    /// Handles a write of `data` (1 to 8 bytes) at `address`.
    func write(address: UInt64, data: UnsafeRawBufferPointer)
}

/// Routes port and MMIO exits to devices by address range. Unclaimed reads return all
/// ones and unclaimed writes are dropped, as on a PC bus: a guest writing garbage
/// anywhere never reaches a crash.
public final class IOBus: @unchecked Sendable {
    private var ports: [(range: ClosedRange<UInt16>, device: any PortIODevice)] = []
    private var mmio: [(range: ClosedRange<UInt64>, device: any MMIODevice)] = []
    /// Counts of accesses nobody claimed (for diagnostics).
    public let unclaimedAccesses = Atomic<UInt64>(0)

    public init() {}

    /// Claims ports `range` for `device`. Registration happens before vCPUs start.
    public func register(ports range: ClosedRange<UInt16>, _ device: any PortIODevice) {
        ports.append((range, device))
    }

    /// Claims guest-physical `range` for `device`.
    public func register(mmio range: ClosedRange<UInt64>, _ device: any MMIODevice) {
        mmio.append((range, device))
    }

    @inline(__always)
    func portDevice(_ port: UInt16) -> (any PortIODevice)? {
        for p in ports where p.range.contains(port) { return p.device }
        return nil
    }

    /// Dispatches one port access of `size` bytes repeated `count` times (string I/O).
    public func handlePortIO(port: UInt16, size: Int, count: Int, isWrite: Bool, data: UnsafeMutableRawPointer) {
        guard size == 1 || size == 2 || size == 4, count >= 1, count <= 4096 else { return }
        let dev = portDevice(port)
        for i in 0..<count {
            let p = data + i * size
            if isWrite {
                if let d = dev { d.write(port: port, data: UnsafeRawBufferPointer(start: p, count: size)) }
                else { unclaimedAccesses.add(1, ordering: .relaxed) }
            } else {
                let buf = UnsafeMutableRawBufferPointer(start: p, count: size)
                if let d = dev { d.read(port: port, data: buf) }
                else { buf.initializeMemory(as: UInt8.self, repeating: 0xFF); unclaimedAccesses.add(1, ordering: .relaxed) }
            }
        }
    }

    /// Dispatches one MMIO access of `length` (1...8) bytes.
    public func handleMMIO(address: UInt64, length: Int, isWrite: Bool, data: UnsafeMutableRawPointer) {
        guard length >= 1, length <= 8 else { return }
        for m in mmio where m.range.contains(address) {
            if isWrite { m.device.write(address: address, data: UnsafeRawBufferPointer(start: data, count: length)) }
            else { m.device.read(address: address, data: UnsafeMutableRawBufferPointer(start: data, count: length)) }
            return
        }
        unclaimedAccesses.add(1, ordering: .relaxed)
        if !isWrite { UnsafeMutableRawBufferPointer(start: data, count: length).initializeMemory(as: UInt8.self, repeating: 0xFF) }
    }
}

extension UnsafeRawBufferPointer {
    /// The little-endian value of up to 8 bytes.
    @inline(__always)
    var littleEndianValue: UInt64 {
        var v: UInt64 = 0
        for (i, b) in self.prefix(8).enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Stores the low `count` bytes of `value`, little-endian.
    @inline(__always)
    func storeLittleEndian(_ value: UInt64) {
        for i in 0..<Swift.min(count, 8) { self[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
}
