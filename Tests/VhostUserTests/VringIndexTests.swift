import GuestMemory
import Testing
import Virtio
@testable import VhostUser
#if canImport(Glibc)
import Glibc
#endif

/// A device with two queues and nothing to do: enough to ask the back-end which vring a
/// message names.
final class TwoQueueDevice: VhostUserDevice {
    var deviceFeatures: UInt64 { 0 }
    var numQueues: Int { 2 }
    func readConfig(offset: Int, count: Int) -> [UInt8] { [] }
    func setNegotiatedFeatures(_ features: UInt64) {}
    func handle(_ chain: DescriptorChain, queue: Int, memory: GuestMemory) throws(VirtioError) -> UInt32 { 0 }
}

/// vhost-user.rst: a vring state's index is 32 bits; a vring descriptor message carries the
/// index in bits 0-7 and the invalid-fd flag in bit 8. Index 256 must not alias queue 0.
@Test func vringIndexIsCheckedWhole() throws {
    let path = "/tmp/xenith-vring-\(getpid()).sock"
    defer { unlink(path) }
    let listener = try vhostUserListen(path: path)
    let b = try VhostUserBackend(device: TwoQueueDevice(), listenFd: listener)
    #expect(try b.vringIndex(1) == 1)
    #expect(throws: VhostUserError.self) { try b.vringIndex(256) }
    #expect(throws: VhostUserError.self) { try b.vringIndex(7777) }
    #expect(throws: VhostUserError.self) { try b.vringIndex(2) }
    #expect(try b.vringIndex(0x101, descriptorMessage: true) == 1)
    #expect(throws: VhostUserError.self) { try b.vringIndex(0x201, descriptorMessage: true) }
    #expect(throws: VhostUserError.self) { try b.vringIndex(0x2, descriptorMessage: true) }
    b.stop()
}
