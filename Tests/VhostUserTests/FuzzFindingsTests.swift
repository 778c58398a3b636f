// Regression tests for what fuzz-vhost-user found (fuzz/README.md).
import CLinux
import GuestMemory
import Testing
@testable import VhostUser
#if canImport(Glibc)
import Glibc
#endif

/// fuzz-vhost-user: SET_MEM_TABLE naming a region larger than its memfd was mapped, and the
/// first ring access past the file's end raised SIGBUS in the back-end. Such a table is now
/// refused as a protocol violation; a region that fits is still mapped.
@Test func memoryRegionPastTheEndOfItsFileIsRefused() throws {
    let fd = clinux_memfd_create("region", CLINUX_MFD_CLOEXEC)
    #expect(fd >= 0 && ftruncate(fd, 0x10000) == 0)
    let fits = VhostUserMemoryRegion(guestPhysAddr: 0, size: 0x8000, userAddr: 0x7f00_0000_0000, mmapOffset: 0x8000)
    let table = try MappedMemoryTable(table: [fits], fds: [dup(fd)])
    #expect(table.memory.totalSize == 0x8000)
    for (size, offset): (UInt64, UInt64) in [(0x20000, 0), (0x8000, 0x9000), (0x10001, 0)] {
        let past = VhostUserMemoryRegion(guestPhysAddr: 0, size: size, userAddr: 0x7f00_0000_0000, mmapOffset: offset)
        let copy = dup(fd)
        #expect(throws: VhostUserError.protocolViolation("memory region of \(size) bytes at offset \(offset) extends past the end of its file (65536 bytes)")) {
            _ = try MappedMemoryTable(table: [past], fds: [copy])
        }
        close(copy)
    }
    close(fd)
}
