import Boot
import Synchronization

/// Why a guest stopped running, as the core reports it (Xen's shutdown reasons).
public enum GuestStop: Equatable, Sendable, CustomStringConvertible {
    /// ACPI soft-off (S5).
    case poweroff
    /// Reset through the ACPI reset register, port 0xCF9, the i8042 or a triple fault.
    case reboot(String)
    /// pvpanic, an unrecoverable KVM error, or a vCPU thread failure.
    case crash(String)
    /// `destroy` through the control socket or a signal.
    case destroyed

    public var description: String {
        switch self {
        case .poweroff: return "poweroff"
        case let .reboot(why): return "reboot (\(why))"
        case let .crash(why): return "crash (\(why))"
        case .destroyed: return "destroyed"
        }
    }

    /// One machine-readable line: `poweroff`, `reboot REASON`, `crash REASON` or `destroyed`.
    public var statusLine: String {
        switch self {
        case .poweroff: return "poweroff"
        case let .reboot(why): return "reboot \(why)"
        case let .crash(why): return "crash \(why)"
        case .destroyed: return "destroyed"
        }
    }

    /// The process exit status `xenith-core` uses for this outcome (README, "Exit status").
    public var exitStatus: Int32 {
        switch self {
        case .poweroff: return 0
        case .reboot: return 2
        case .crash: return 3
        case .destroyed: return 4
        }
    }
}

/// ACPI fixed hardware (PM1a event and control blocks, ACPI 6.x §4.8), the reset register
/// at 0xCF9, the i8042 reset line and the pvpanic port: everything by which a guest asks
/// to stop, plus the power button by which the host asks it to.
public final class PowerDevices: PortIODevice, @unchecked Sendable {
    private struct State { var status: UInt16 = 0; var enable: UInt16 = 0 }
    private let state = Mutex(State())
    private let onStop: @Sendable (GuestStop) -> Void
    private let setSCI: @Sendable (Bool) -> Void

    static let pwrbtnBit: UInt16 = 1 << 8
    static let slpEn: UInt16 = 1 << 13

    /// - Parameters:
    ///   - onStop: called (from a vCPU thread) when the guest powers off, resets or panics.
    ///   - setSCI: raises or lowers the SCI line (ISA IRQ 9, level).
    public init(onStop: @escaping @Sendable (GuestStop) -> Void, setSCI: @escaping @Sendable (Bool) -> Void) {
        self.onStop = onStop
        self.setSCI = setSCI
    }

    /// Registers on the bus at the ports of ``PlatformLayout``.
    public func attach(to bus: IOBus) {
        bus.register(ports: PlatformLayout.pm1aEventPort...(PlatformLayout.pm1aEventPort + 3), self)
        bus.register(ports: PlatformLayout.pm1aControlPort...(PlatformLayout.pm1aControlPort + 1), self)
        bus.register(ports: PlatformLayout.resetPort...PlatformLayout.resetPort, self)
        bus.register(ports: PlatformLayout.i8042DataPort...PlatformLayout.i8042DataPort, self)
        bus.register(ports: PlatformLayout.i8042CommandPort...PlatformLayout.i8042CommandPort, self)
        bus.register(ports: PlatformLayout.pvpanicPort...PlatformLayout.pvpanicPort, self)
    }

    /// Presses the ACPI power button (fixed feature): sets PWRBTN_STS and raises the SCI
    /// if the guest enabled it. This is how `shutdown` asks a guest to power off.
    public func pressPowerButton() {
        let level = state.withLock { s -> Bool in
            s.status |= Self.pwrbtnBit
            return s.status & s.enable & Self.pwrbtnBit != 0
        }
        setSCI(level)
    }

    public func read(port: UInt16, data: UnsafeMutableRawBufferPointer) {
        let base = PlatformLayout.pm1aEventPort
        let v: UInt64
        switch port {
        case base, base + 1:
            v = UInt64(state.withLock { $0.status }) >> (port == base ? 0 : 8)
        case base + 2, base + 3:
            v = UInt64(state.withLock { $0.enable }) >> (port == base + 2 ? 0 : 8)
        case PlatformLayout.pm1aControlPort:
            v = 1 // SCI_EN: ACPI mode is always on (FADT SMI_CMD is 0)
        case PlatformLayout.pvpanicPort:
            v = 0x3 // PVPANIC_PANICKED | PVPANIC_CRASH_LOADED supported
        case PlatformLayout.i8042CommandPort:
            v = 0x1C // status: system flag, command/data, unlocked; no data waiting
        default:
            v = 0
        }
        data.storeLittleEndian(v)
    }

    public func write(port: UInt16, data: UnsafeRawBufferPointer) {
        let value = data.littleEndianValue
        let base = PlatformLayout.pm1aEventPort
        switch port {
        case base, base + 1:
            // PM1_STS: write 1 to clear.
            let mask = UInt16(truncatingIfNeeded: port == base ? value : value << 8)
            let level = state.withLock { s -> Bool in
                s.status &= ~mask
                return s.status & s.enable & Self.pwrbtnBit != 0
            }
            setSCI(level)
        case base + 2, base + 3:
            let level = state.withLock { s -> Bool in
                if data.count >= 2 || port == base + 2 {
                    s.enable = port == base + 2 ? UInt16(truncatingIfNeeded: value)
                                                : (s.enable & 0xFF) | UInt16(truncatingIfNeeded: value << 8)
                } else {
                    s.enable = (s.enable & 0xFF) | UInt16(truncatingIfNeeded: value << 8)
                }
                return s.status & s.enable & Self.pwrbtnBit != 0
            }
            setSCI(level)
        case PlatformLayout.pm1aControlPort, PlatformLayout.pm1aControlPort + 1:
            let v = UInt16(truncatingIfNeeded: port == PlatformLayout.pm1aControlPort ? value : value << 8)
            if v & Self.slpEn != 0 {
                let typ = (v >> 10) & 7
                if typ == PlatformLayout.s5SleepType { onStop(.poweroff) }
            }
        case PlatformLayout.resetPort:
            if data.count == 1, UInt8(truncatingIfNeeded: value) & 0x04 != 0 { onStop(.reboot("reset register")) }
        case PlatformLayout.i8042CommandPort:
            if UInt8(truncatingIfNeeded: value) == 0xFE { onStop(.reboot("i8042 reset line")) }
        case PlatformLayout.pvpanicPort:
            if value & 1 != 0 { onStop(.crash("guest panicked (pvpanic)")) }
        default:
            break
        }
    }
}

/// Port 0x80 (POST codes) and other ports a PC guest pokes that need no behaviour.
public final class IgnoredPorts: PortIODevice {
    public init() {}
    public func read(port: UInt16, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(0) }
    public func write(port: UInt16, data: UnsafeRawBufferPointer) {}
}

extension PowerDevices {
    /// PM1 status and enable registers (the `device 2` record of the state stream).
    public func saveState() -> [UInt8] {
        state.withLock { s in
            var e = StateEncoder()
            e.u16(s.status); e.u16(s.enable)
            return e.bytes
        }
    }

    /// Loads what ``saveState()`` wrote and sets the SCI line to match.
    /// - Throws: ``CoreError/badStream(_:)`` for a record of the wrong size.
    public func restoreState(_ bytes: [UInt8]) throws(CoreError) {
        var d = StateDecoder(bytes, what: "device ACPI")
        let status = try d.u16(), enable = try d.u16()
        try d.finish()
        state.withLock { $0 = State(status: status, enable: enable) }
        setSCI(status & enable & Self.pwrbtnBit != 0)
    }
}
