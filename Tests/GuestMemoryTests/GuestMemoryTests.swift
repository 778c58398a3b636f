import Testing
@testable import GuestMemory

@Suite struct GuestMemoryTests {
    @Test func memfdLayoutAndBounds() throws {
        let m = try GuestMemory.memfd(name: "t", layout: [(0, 0x10000), (0x100000, 0x2000)])
        #expect(m.totalSize == 0x12000)
        try m.store(UInt32(0xdeadbeef), at: 0xfffc)
        #expect(try m.load(UInt32.self, at: 0xfffc) == 0xdeadbeef)
        // Straddles the end of region 0.
        #expect(throws: GuestMemoryError.self) { try m.load(UInt64.self, at: 0xfffc) }
        // In the hole.
        #expect(throws: GuestMemoryError.self) { try m.read(at: 0x20000, count: 1) }
        // Wrap-around.
        #expect(throws: GuestMemoryError.self) { try m.slice(at: UInt64.max - 2, count: 8) }
        try m.write([1, 2, 3], at: 0x101ffd)
        #expect(try m.read(at: 0x101ffd, count: 3) == [1, 2, 3])
        #expect(throws: GuestMemoryError.self) { try m.write([1, 2, 3, 4], at: 0x101ffd) }
        // Both regions share one fd, at consecutive offsets.
        #expect(m.regions[0].fd == m.regions[1].fd)
        #expect(m.regions[1].fdOffset == 0x10000)
    }

    @Test func rejectsOverlap() throws {
        #expect(throws: GuestMemoryError.self) {
            _ = try GuestMemory.memfd(name: "t", layout: [(0, 0x2000), (0x1000, 0x1000)])
        }
    }
}
