import Synchronization

/// A 16550A-compatible UART (COM1): the guest's console. Transmitted bytes go to `output`
/// at once (the line never backs up); received bytes wait in a FIFO until the guest
/// reads them. Interrupt line level is recomputed after each access (ISA IRQ 4).
public final class Serial8250: PortIODevice, @unchecked Sendable {
    private struct Regs {
        var ier: UInt8 = 0, lcr: UInt8 = 0x03, mcr: UInt8 = 0x08, scr: UInt8 = 0
        var dll: UInt8 = 0x0C, dlm: UInt8 = 0, fcr: UInt8 = 0
        var rx: [UInt8] = []
        var rxHead = 0
        var thrEmptyPending = true   // THRE interrupt condition, cleared by IIR read or THR write
        var irqLevel = false
        /// Index in `rx` of a byte received with a break condition (LSR BI), nil for none.
        var breakAt: Int? = nil
    }
    private let regs = Mutex(Regs())
    private let base: UInt16
    private let output: @Sendable (UInt8) -> Void
    private let setIRQ: @Sendable (Bool) -> Void
    /// Bytes kept for the guest to read before further input is dropped.
    public static let rxCapacity = 4096

    /// - Parameters:
    ///   - base: first of the 8 ports (0x3F8 for COM1).
    ///   - output: receives every byte the guest transmits, on the vCPU thread.
    ///   - setIRQ: sets the interrupt line level.
    public init(base: UInt16, output: @escaping @Sendable (UInt8) -> Void, setIRQ: @escaping @Sendable (Bool) -> Void) {
        self.base = base
        self.output = output
        self.setIRQ = setIRQ
    }

    public func attach(to bus: IOBus) { bus.register(ports: base...(base + 7), self) }

    /// Queues bytes typed at the console for the guest. Returns how many were accepted.
    @discardableResult
    public func receive<C: Collection>(_ bytes: C) -> Int where C.Element == UInt8 {
        let (n, level) = regs.withLock { r -> (Int, Bool?) in
            Self.compact(&r)
            let room = Self.rxCapacity - (r.rx.count - r.rxHead)
            let take = Swift.min(room, bytes.count)
            r.rx.append(contentsOf: bytes.prefix(take))
            return (take, Self.updateIRQ(&r))
        }
        if let l = level { setIRQ(l) }
        return n
    }

    /// A break on the line, then `byte` (`xm sysrq`: Linux's serial console reads a byte
    /// that follows a break as a SysRq key). The break arrives as a NUL with LSR BI set.
    /// Returns false when the receive buffer has no room for both.
    @discardableResult
    public func receiveBreak(then byte: UInt8) -> Bool {
        let (ok, level) = regs.withLock { r -> (Bool, Bool?) in
            Self.compact(&r)
            guard Self.rxCapacity - (r.rx.count - r.rxHead) >= 2 else { return (false, nil) }
            r.breakAt = r.rx.count
            r.rx.append(0)
            r.rx.append(byte)
            return (true, Self.updateIRQ(&r))
        }
        if let l = level { setIRQ(l) }
        return ok
    }

    /// Bytes waiting for the guest.
    public var pendingInput: Int { regs.withLock { $0.rx.count - $0.rxHead } }

    /// Drops consumed bytes once they are half the buffer (amortised O(1) per byte).
    private static func compact(_ r: inout Regs) {
        if r.rxHead == r.rx.count { r.rx.removeAll(keepingCapacity: true); r.rxHead = 0; r.breakAt = nil }
        else if r.rxHead >= rxCapacity / 2 {
            r.rx.removeFirst(r.rxHead)
            r.breakAt = r.breakAt.flatMap { $0 >= r.rxHead ? $0 - r.rxHead : nil }
            r.rxHead = 0
        }
    }

    private static func interruptID(_ r: Regs) -> UInt8 {
        if r.ier & 0x04 != 0 { /* line status: never raised */ }
        if r.ier & 0x01 != 0 && r.rx.count > r.rxHead { return 0x04 }
        if r.ier & 0x02 != 0 && r.thrEmptyPending { return 0x02 }
        return 0x01
    }

    /// Recomputes the line; returns the new level when it changed.
    private static func updateIRQ(_ r: inout Regs) -> Bool? {
        // OUT2 (MCR bit 3) gates the interrupt onto the ISA bus, as on a PC.
        let level = interruptID(r) != 0x01 && r.mcr & 0x08 != 0
        if level == r.irqLevel { return nil }
        r.irqLevel = level
        return level
    }

    public func read(port: UInt16, data: UnsafeMutableRawBufferPointer) {
        let off = port &- base
        var out: UInt8 = 0
        let level: Bool? = regs.withLock { r in
            let dlab = r.lcr & 0x80 != 0
            switch off {
            case 0:
                if dlab { out = r.dll }
                else if r.rxHead < r.rx.count {
                    out = r.rx[r.rxHead]
                    if r.breakAt == r.rxHead { r.breakAt = nil }
                    r.rxHead += 1
                    Self.compact(&r)
                }
            case 1: out = dlab ? r.dlm : r.ier
            case 2:
                let id = Self.interruptID(r)
                out = id | (r.fcr & 0x01 != 0 ? 0xC0 : 0)
                if id == 0x02 { r.thrEmptyPending = false }
            case 3: out = r.lcr
            case 4: out = r.mcr
            case 5:
                // THR empty and transmitter empty always; DR when input waits.
                // BI while the byte at the head came with a break.
                out = 0x60 | (r.rxHead < r.rx.count ? 0x01 : 0) | (r.breakAt == r.rxHead && r.rxHead < r.rx.count ? 0x10 : 0)
            case 6:
                if r.mcr & 0x10 != 0 {
                    // Loopback: CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2 (probed by Linux).
                    out = ((r.mcr & 0x02) << 3) | ((r.mcr & 0x01) << 5) | ((r.mcr & 0x04) << 4) | ((r.mcr & 0x08) << 4)
                } else {
                    out = 0xB0 // DCD, DSR, CTS
                }
            case 7: out = r.scr
            default: out = 0xFF
            }
            return Self.updateIRQ(&r)
        }
        if let l = level { setIRQ(l) }
        data.storeLittleEndian(UInt64(out))
    }

    public func write(port: UInt16, data: UnsafeRawBufferPointer) {
        let off = port &- base
        let v = UInt8(truncatingIfNeeded: data.littleEndianValue)
        var emit: UInt8? = nil
        let level: Bool? = regs.withLock { r in
            let dlab = r.lcr & 0x80 != 0
            switch off {
            case 0:
                if dlab { r.dll = v }
                else {
                    if r.mcr & 0x10 != 0 {
                        // Loopback: the byte comes back as input, within the same bound.
                        Self.compact(&r)
                        if r.rx.count - r.rxHead < Self.rxCapacity { r.rx.append(v) }
                    } else { emit = v }
                    r.thrEmptyPending = true
                }
            case 1:
                if dlab { r.dlm = v }
                else {
                    let hadTHRE = r.ier & 0x02 != 0
                    r.ier = v & 0x0F
                    if !hadTHRE && r.ier & 0x02 != 0 { r.thrEmptyPending = true }
                }
            case 2:
                r.fcr = v
                if v & 0x02 != 0 { r.rx.removeAll(); r.rxHead = 0 }
            case 3: r.lcr = v
            case 4: r.mcr = v & 0x1F
            case 7: r.scr = v
            default: break
            }
            return Self.updateIRQ(&r)
        }
        if let e = emit { output(e) }
        if let l = level { setIRQ(l) }
    }
}

extension Serial8250 {
    /// The UART's registers and unread input (the `device 1` record of the state stream).
    public func saveState() -> [UInt8] {
        regs.withLock { r in
            var e = StateEncoder()
            for b in [r.ier, r.lcr, r.mcr, r.scr, r.dll, r.dlm, r.fcr] { e.u8(b) }
            e.bool(r.thrEmptyPending); e.bool(r.irqLevel)
            e.blob(Array(r.rx[r.rxHead...]))
            return e.bytes
        }
    }

    /// Loads what ``saveState()`` wrote and sets the interrupt line to match.
    /// - Throws: ``CoreError/badStream(_:)`` for a short record or more input than the FIFO holds.
    public func restoreState(_ bytes: [UInt8]) throws(CoreError) {
        var d = StateDecoder(bytes, what: "device COM1")
        var r = Regs()
        r.ier = try d.u8() & 0x0F; r.lcr = try d.u8(); r.mcr = try d.u8() & 0x1F; r.scr = try d.u8()
        r.dll = try d.u8(); r.dlm = try d.u8(); r.fcr = try d.u8()
        r.thrEmptyPending = try d.bool(); r.irqLevel = try d.bool()
        r.rx = try d.blob(max: Self.rxCapacity)
        try d.finish()
        let level = r.irqLevel
        regs.withLock { $0 = r }
        setIRQ(level)
    }
}
