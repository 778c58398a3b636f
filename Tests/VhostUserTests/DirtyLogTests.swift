import Testing
@testable import VhostUser
#if canImport(Glibc)
import Glibc
#endif

/// A scratch file of `bytes` zero bytes, unlinked at once; the caller closes the fd.
func scratchFile(_ bytes: Int) throws -> Int32 {
    let path = "/tmp/xenith-dirtylog-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    try #require(fd >= 0)
    unlink(path)
    try #require(ftruncate(fd, off_t(bytes)) == 0)
    return fd
}

func byte(_ fd: Int32, at offset: Int) -> UInt8 {
    var b: UInt8 = 0
    _ = pread(fd, &b, 1, off_t(offset))
    return b
}

/// vhost-user.rst "Migration": page = addr / 4096, log[page / 8] |= 1 << page % 8, the log
/// starting at the given offset of the fd.
@Suite struct DirtyLogTests {
    @Test func marksTheBitOfEveryPageTouched() throws {
        let fd = try scratchFile(4)
        defer { close(fd) }
        let log = try DirtyLog(fd: fd, size: 4, offset: 0)       // 32 pages, 128 KiB
        #expect(log.mark(0, 1))
        #expect(log.mark(0x1fff, 2))                               // straddles pages 1 and 2
        #expect(log.mark(0x9000, 0x1000))                          // exactly page 9
        #expect(log.mark(0x1f000, 0x1000))                         // the last page
        #expect(byte(fd, at: 0) == 0b0000_0111)
        #expect(byte(fd, at: 1) == 0b0000_0010)
        #expect(byte(fd, at: 2) == 0)
        #expect(byte(fd, at: 3) == 0b1000_0000)
        #expect(log.mark(0x5000, 0))                               // nothing written, nothing marked
        #expect(!log.isMarked(0x5000))
    }

    @Test func writesPastTheLogAreRefusedNotFatal() throws {
        let fd = try scratchFile(1)
        defer { close(fd) }
        let log = try DirtyLog(fd: fd, size: 1, offset: 0)        // 8 pages
        #expect(!log.mark(0x8000, 1))                              // page 8: just past the end
        #expect(!log.mark(0x7000, 0x2000))                         // partly inside: page 7 marked
        #expect(byte(fd, at: 0) == 0b1000_0000)
        #expect(!log.mark(UInt64.max - 10, 100))                   // wraps past 2^64
        #expect(!log.mark(1 << 60, 4096))
    }

    @Test func logStartsAtItsOffset() throws {
        let fd = try scratchFile(100 + 8)
        defer { close(fd) }
        let log = try DirtyLog(fd: fd, size: 8, offset: 100)       // not page-aligned
        #expect(log.mark(0x3000, 1))
        #expect(byte(fd, at: 100) == 0b0000_1000)
        #expect(byte(fd, at: 0) == 0)
    }

    @Test func logLargerThanItsFileIsRefused() throws {
        let fd = try scratchFile(4096)
        defer { close(fd) }
        #expect(throws: VhostUserError.self) { try DirtyLog(fd: fd, size: 8192, offset: 0) }
        #expect(throws: VhostUserError.self) { try DirtyLog(fd: fd, size: 4096, offset: 1) }
        #expect(throws: VhostUserError.self) { try DirtyLog(fd: fd, size: 0, offset: 0) }
        #expect(throws: VhostUserError.self) { try DirtyLog(fd: fd, size: UInt64.max, offset: 0) }
    }
}
