import Boot
import Glibc
import GuestMemory
import KVM
import Testing
@testable import Core

/// A device that records activation, for transport tests.
final class FakeDevice: VirtioDevice, @unchecked Sendable {
    let deviceType: UInt16 = 2
    let offeredFeatures: UInt64 = 1 << 9
    let queueMaxSizes: [UInt16] = [128, 64]
    var activated: [VirtqueueConfig]? = nil
    var resets = 0
    func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(UInt64(0xA0 + offset)) }
    func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}
    func activate(features: UInt64, queues: [VirtqueueConfig], kicks: [Int32], calls: [Int32]) throws { activated = queues }
    func reset() { resets += 1 }
}

/// virtio-pci modern transport against virtio 1.2 §4.1: capability layout and the common
/// configuration state machine. Needs /dev/kvm (the transport registers ioeventfds).
@Suite struct VirtioPCITests {
    func device() throws -> (VirtioPCIDevice, FakeDevice)? {
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { print("SKIP: VirtioPCITests: /dev/kvm is not accessible"); return nil }
        let vm = try VirtualMachine(system: KVMSystem())
        try vm.createIRQChip()
        let fake = FakeDevice()
        let d = try VirtioPCIDevice(device: fake, vm: vm, loop: try EventLoop(), slot: 3, barAddress: 0xD000_C000, log: { _ in })
        return (d, fake)
    }

    func common(_ d: VirtioPCIDevice, _ off: UInt64, _ v: UInt64, size: Int) {
        var x = v
        withUnsafeBytes(of: &x) { d.mmioWrite(address: 0xD000_C000 + off, data: UnsafeRawBufferPointer(rebasing: $0.prefix(size))) }
    }
    func common(_ d: VirtioPCIDevice, _ off: UInt64, size: Int) -> UInt64 {
        var x: UInt64 = 0
        withUnsafeMutableBytes(of: &x) { d.mmioRead(address: 0xD000_C000 + off, data: UnsafeMutableRawBufferPointer(rebasing: $0.prefix(size))) }
        return x
    }

    @Test func capabilities() throws {
        guard let (d, _) = try device() else { return }
        #expect(d.configRead(offset: 0, size: 4) == 0x1042_1AF4)
        #expect(d.configRead(offset: 0x3D, size: 1) == 1, "INTx pin A")
        #expect(d.configRead(offset: 0x3C, size: 1) == PlatformLayout.pciIntxGSI(slot: 3))
        // Walk the list: (type, offset, length) of each vendor capability.
        var found: [UInt32: (UInt32, UInt32)] = [:]
        var p = Int(d.configRead(offset: 0x34, size: 1))
        var hops = 0
        while p != 0 && hops < 16 {
            #expect(d.configRead(offset: p, size: 1) == 0x09)
            let type = d.configRead(offset: p + 3, size: 1)
            #expect(d.configRead(offset: p + 4, size: 1) == 0, "BAR 0")
            found[type] = (d.configRead(offset: p + 8, size: 4), d.configRead(offset: p + 12, size: 4))
            if type == 2 { #expect(d.configRead(offset: p + 16, size: 4) == 4, "notify_off_multiplier") }
            p = Int(d.configRead(offset: p + 1, size: 1))
            hops += 1
        }
        #expect(Set(found.keys) == [1, 2, 3, 4, 5])
        #expect(found[1]! == (0x0000, 0x38))
        #expect(found[3]!.0 == 0x1000)
        #expect(found[4]!.0 == 0x2000)
        #expect(found[2]! == (0x3000, 8))
        #expect(d.mmioRanges() == [0xD000_C000...0xD000_FFFF])
    }

    @Test func negotiationAndQueueSetup() throws {
        guard let (d, fake) = try device() else { return }
        #expect(common(d, 0x12, size: 2) == 2, "num_queues")
        common(d, 0x00, 1, size: 4)
        #expect(common(d, 0x04, size: 4) == 1, "VERSION_1 offered")
        common(d, 0x00, 0, size: 4)
        #expect(common(d, 0x04, size: 4) == 1 << 9)
        common(d, 0x14, 3, size: 1)
        // A feature we did not offer: FEATURES_OK is refused.
        common(d, 0x08, 0, size: 4); common(d, 0x0C, 1 << 5, size: 4)
        common(d, 0x08, 1, size: 4); common(d, 0x0C, 1, size: 4)
        common(d, 0x14, 0xB, size: 1)
        #expect(common(d, 0x14, size: 1) & 0x08 == 0)
        common(d, 0x14, 0, size: 1)
        common(d, 0x14, 3, size: 1)
        common(d, 0x08, 0, size: 4); common(d, 0x0C, 1 << 9, size: 4)
        common(d, 0x08, 1, size: 4); common(d, 0x0C, 1, size: 4)
        common(d, 0x14, 0xB, size: 1)
        #expect(common(d, 0x14, size: 1) == 0xB)
        common(d, 0x16, 1, size: 2)
        #expect(common(d, 0x18, size: 2) == 64)
        common(d, 0x18, 48, size: 2)   // not a power of two: ignored
        #expect(common(d, 0x18, size: 2) == 64)
        common(d, 0x18, 256, size: 2)  // above the maximum: ignored
        common(d, 0x18, 32, size: 2)
        common(d, 0x20, 0x1000, size: 4); common(d, 0x24, 0x1, size: 4)
        common(d, 0x28, 0x2000, size: 4); common(d, 0x30, 0x3000, size: 4)
        common(d, 0x1C, 1, size: 2)
        #expect(common(d, 0x1E, size: 2) == 1, "queue_notify_off")
        #expect(common(d, 0x2000 + 3, size: 1) == 0xA3, "device config window")
        common(d, 0x14, 0xF, size: 1)
        let q = try #require(fake.activated)
        #expect(q[1] == VirtqueueConfig(size: 32, descTable: 0x1_0000_1000, availRing: 0x2000, usedRing: 0x3000, enabled: true))
        #expect(!q[0].enabled)
        // Queue registers are frozen while running; reset unfreezes and tells the device.
        common(d, 0x18, 16, size: 2)
        #expect(common(d, 0x18, size: 2) == 32)
        common(d, 0x14, 0, size: 1)
        #expect(fake.resets == 1)
        #expect(common(d, 0x14, size: 1) == 0)
        // ISR reads clear.
        d.interrupt(queue: 0)
        #expect(common(d, 0x1000, size: 1) == 1)
        #expect(common(d, 0x1000, size: 1) == 0)
    }
}
