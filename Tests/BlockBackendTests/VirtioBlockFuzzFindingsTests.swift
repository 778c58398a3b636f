import Foundation
import Testing
import GuestMemory
import Virtio
import CLinux
@testable import BlockBackend

/// Regression tests named after what fuzz-virtio-blk found (bench/fuzz-campaign.md).
@Suite struct VirtioBlockFuzzFindingsTests {
    /// fuzz-virtio-blk, 2026-12-07: a status buffer at the top of the address space
    /// (address 2^64 − 1, length 1) made `address &+ length` wrap to 0 and the `- 1` after it
    /// trap, so a guest could kill its blkback with one descriptor. The request must fail as
    /// a broken queue (the status byte is outside guest memory), never trap.
    @Test func statusByteAtTheTopOfTheAddressSpaceIsRefusedNotATrap() throws {
        let memory = try GuestMemory.memfd(name: "finding", layout: [(0, 0x10000)])
        let fd = clinux_memfd_create("finding-image", CLINUX_MFD_CLOEXEC)
        #expect(fd >= 0 && ftruncate(fd, 1 << 20) == 0)
        let disk = VirtioBlockDevice(image: try BlockImage(fd: fd, readOnly: false))
        let failing = FailingBlockDevice(standingInFor: disk)
        for (address, length) in [(UInt64.max, UInt32(1)), (UInt64.max - 1, UInt32(2)), (UInt64.max - 0xfff, UInt32(0x1000))] {
            let chain = DescriptorChain(head: 0, buffers: [
                ChainBuffer(address: 0, length: 16, writable: false),
                ChainBuffer(address: address, length: length, writable: true),
            ])
            #expect(throws: VirtioError.self) { _ = try disk.handle(chain, queue: 0, memory: memory) }
            #expect(throws: VirtioError.self) { _ = try failing.handle(chain, queue: 0, memory: memory) }
        }
    }
}
