import Boot
import Synchronization
import Testing
@testable import Core

/// Collects what a device model reports, for assertions.
final class Recorder: @unchecked Sendable {
    let bytes = Mutex<[UInt8]>([])
    let levels = Mutex<[Bool]>([])
    let stops = Mutex<[GuestStop]>([])
}

func lastLevel(_ r: Recorder) -> Bool? { r.levels.withLock { $0.last } }

func out(_ d: any PortIODevice, _ port: UInt16, _ value: UInt64, size: Int = 1) {
    var v = value
    withUnsafeBytes(of: &v) { d.write(port: port, data: UnsafeRawBufferPointer(rebasing: $0.prefix(size))) }
}

func inp(_ d: any PortIODevice, _ port: UInt16, size: Int = 1) -> UInt64 {
    var v: UInt64 = 0
    withUnsafeMutableBytes(of: &v) { d.read(port: port, data: UnsafeMutableRawBufferPointer(rebasing: $0.prefix(size))) }
    return v
}

@Suite struct SerialTests {
    @Test func transmitReceiveAndInterrupts() {
        let r = Recorder()
        let uart = Serial8250(base: 0x3F8, output: { b in r.bytes.withLock { $0.append(b) } },
                              setIRQ: { l in r.levels.withLock { $0.append(l) } })
        out(uart, 0x3F8, UInt64(UInt8(ascii: "A")))
        #expect(r.bytes.withLock { $0 == [65] })
        #expect(inp(uart, 0x3FD) & 0x60 == 0x60, "THRE and TEMT always set")
        #expect(inp(uart, 0x3FA) & 1 == 1, "no interrupt pending")
        // Enable RX interrupts with OUT2 set: input raises the line, reading drains it.
        out(uart, 0x3FC, 0x08)
        out(uart, 0x3F9, 0x01)
        #expect(uart.receive([1, 2]) == 2)
        #expect(lastLevel(r) == true)
        #expect(inp(uart, 0x3FA) & 0x0F == 0x04, "IIR: received data available")
        #expect(inp(uart, 0x3FD) & 1 == 1)
        #expect(inp(uart, 0x3F8) == 1)
        #expect(inp(uart, 0x3F8) == 2)
        #expect(inp(uart, 0x3FD) & 1 == 0)
        #expect(lastLevel(r) == false)
        // Divisor latch access does not transmit.
        out(uart, 0x3FB, 0x80); out(uart, 0x3F8, 0x01); out(uart, 0x3FB, 0x03)
        #expect(r.bytes.withLock { $0.count == 1 })
        // Loopback reflects MCR into MSR (what Linux's autoconfig probes).
        out(uart, 0x3FC, 0x1A)
        #expect(inp(uart, 0x3FE) & 0xF0 == 0x90)
        // The FIFO is bounded.
        #expect(uart.receive([UInt8](repeating: 0, count: Serial8250.rxCapacity + 10)) == Serial8250.rxCapacity)
    }
}

@Suite struct PowerTests {
    func make(_ r: Recorder) -> PowerDevices {
        PowerDevices(onStop: { s in r.stops.withLock { $0.append(s) } }, setSCI: { l in r.levels.withLock { $0.append(l) } })
    }

    @Test func softOffResetAndPanic() {
        let r = Recorder()
        let p = make(r)
        #expect(inp(p, 0x604, size: 2) & 1 == 1, "SCI_EN reads set")
        out(p, 0x604, 3 << 10 | 1 << 13, size: 2) // S3: not supported, ignored
        #expect(r.stops.withLock { $0.isEmpty })
        out(p, 0x604, 5 << 10 | 1 << 13, size: 2)
        out(p, 0xCF9, 0x02)                       // no reset bit
        out(p, 0xCF9, 0x06)
        out(p, 0x64, 0xFE)
        #expect(inp(p, 0x505) == 3)
        out(p, 0x505, 1)
        let stops = r.stops.withLock { $0 }
        #expect(stops == [.poweroff, .reboot("reset register"), .reboot("i8042 reset line"), .crash("guest panicked (pvpanic)")])
    }

    @Test func powerButtonRaisesSCIOnlyWhenEnabled() {
        let r = Recorder()
        let p = make(r)
        p.pressPowerButton()
        #expect(lastLevel(r) == false)
        #expect(inp(p, 0x600, size: 2) & 0x100 != 0)
        out(p, 0x602, 0x100, size: 2)                  // PWRBTN_EN
        #expect(lastLevel(r) == true)
        out(p, 0x600, 0x100, size: 2)                  // write 1 to clear
        #expect(inp(p, 0x600, size: 2) & 0x100 == 0)
        #expect(lastLevel(r) == false)
    }
}

@Suite struct PCIConfigSpaceTests {
    @Test func headerAndBARSizing() {
        var c = PCIConfigSpace(vendor: 0x1AF4, device: 0x1042, revision: 1, classCode: 0x01_00_00,
                               subsystemVendor: 0x1AF4, subsystem: 0x40, interruptPin: 1, interruptLine: 17)
        c.addMemoryBAR(0, size: 0x4000, address: 0xD000_4000)
        c.setCapabilityPointer(0x40)
        #expect(c.read(offset: 0, size: 4) == 0x1042_1AF4)
        #expect(c.read(offset: 0x08, size: 4) == 0x0100_0001)
        #expect(c.read(offset: 0x06, size: 2) & 0x10 != 0, "capabilities list")
        #expect(c.read(offset: 0x34, size: 1) == 0x40)
        #expect(c.read(offset: 0x3C, size: 2) == 0x0111)
        // Sizing: all ones reads back ~(size-1) with the type bits.
        let remap = c.write(offset: 0x10, size: 4, value: 0xFFFF_FFFF)
        #expect(remap)
        #expect(c.read(offset: 0x10, size: 4) == 0xFFFF_C000)
        c.write(offset: 0x10, size: 4, value: 0xD000_8000)
        #expect(c.barAddress(0) == 0xD000_8000)
        // Unimplemented BAR and read-only IDs ignore writes.
        c.write(offset: 0x14, size: 4, value: 0xFFFF_FFFF)
        #expect(c.read(offset: 0x14, size: 4) == 0)
        c.write(offset: 0x00, size: 4, value: 0)
        #expect(c.read(offset: 0, size: 2) == 0x1AF4)
        // Out-of-range accesses are harmless.
        #expect(c.read(offset: 254, size: 4) == 0xFFFF_FFFF)
        let outside = c.write(offset: 300, size: 4, value: 1)
        #expect(!outside)
    }
}
