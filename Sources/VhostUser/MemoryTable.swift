// The guest memory of SET_MEM_TABLE: regions mapped from the front-end's fds, and
// front-end (user) address → guest-physical address translation.
import GuestMemory
#if canImport(Glibc)
import Glibc
#endif

/// Guest memory mapped from the fds of SET_MEM_TABLE; unmapped and closed on release.
final class MappedMemoryTable: @unchecked Sendable {
    let memory: GuestMemory
    let table: [VhostUserMemoryRegion]
    let maps: [(UnsafeMutableRawPointer, Int)]
    let fds: [Int32]

    init(table: [VhostUserMemoryRegion], fds: [Int32]) throws(VhostUserError) {
        var maps: [(UnsafeMutableRawPointer, Int)] = []
        var regions: [MemoryRegion] = []
        func undo() { for (p, l) in maps { munmap(p, l) } }
        for (r, fd) in zip(table, fds) {
            guard r.size > 0, r.size < 1 << 46, r.mmapOffset < 1 << 46 else { undo(); throw .protocolViolation("memory region size \(r.size) offset \(r.mmapOffset)") }
            let len = Int(r.size + r.mmapOffset)
            // A mapping past the end of a file is valid, but touching it raises SIGBUS: a
            // front-end that announces more than its file holds would kill the back-end on
            // the first ring access (found by fuzz-vhost-user).
            var st = stat()
            if fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, UInt64(st.st_size) < r.size + r.mmapOffset {
                undo()
                throw .protocolViolation("memory region of \(r.size) bytes at offset \(r.mmapOffset) extends past the end of its file (\(st.st_size) bytes)")
            }
            let p = mmap(nil, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
            if p == MAP_FAILED || p == nil { let e = VhostUserError.errno("mmap(memory region)"); undo(); throw e }
            maps.append((p!, len))
            regions.append(MemoryRegion(guestBase: r.guestPhysAddr, size: r.size, host: p! + Int(r.mmapOffset), fd: fd, fdOffset: r.mmapOffset))
        }
        do { memory = try GuestMemory(regions: regions, ownsMappings: false) }
        catch { undo(); throw .protocolViolation("memory table: \(error)") }
        self.table = table; self.maps = maps; self.fds = fds
    }

    deinit {
        for (p, l) in maps { munmap(p, l) }
        for f in fds { close(f) }
    }

    /// Front-end virtual address → guest-physical address.
    func guestPhys(user a: UInt64) -> UInt64? {
        for r in table where a >= r.userAddr && a - r.userAddr < r.size { return a - r.userAddr + r.guestPhysAddr }
        return nil
    }
}
