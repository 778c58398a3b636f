// libFuzzer target: the qcow2 reader and writer (BlockBackend/Qcow2*.swift) on an image
// file the input is (a memfd): header, header extensions, L1 and refcount tables, L2
// tables, refcount blocks and data are all untrusted. The first input byte chooses
// read-only and the request mix, the second seeds the request offsets; the rest is the
// file. A header naming a backing file gets a 1 MiB raw backing image. Requests: reads,
// writes (cluster allocation, refcount blocks, refcount table growth), discards,
// write-zeroes and flushes over the first MiB of the disk and near its end. An image that
// is refused, or a request that fails, is fine; a trap or a sanitizer report is not.
import BlockBackend
import FuzzSupport
import CLinux
#if canImport(Glibc)
import Glibc
#endif

nonisolated(unsafe) let backingFD: Int32 = {
    let fd = clinux_memfd_create("fuzz-qcow2-backing", CLINUX_MFD_CLOEXEC)
    precondition(fd >= 0 && ftruncate(fd, 1 << 20) == 0, "backing memfd")
    return fd
}()

nonisolated(unsafe) var buffer = [UInt8](repeating: 0, count: 256 << 10)

func fuzzQcow2(_ input: UnsafeBufferPointer<UInt8>) {
    guard input.count >= 3 else { return }
    let readOnly = input[0] & 1 != 0
    var seed = UInt64(input[1]) &* 0x9E37_79B9_7F4A_7C15 | 1
    func next() -> UInt64 { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; return seed }
    let fd = clinux_memfd_create("fuzz-qcow2", CLINUX_MFD_CLOEXEC)
    precondition(fd >= 0, "memfd")
    let file = UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: input[2...]))
    guard file.isEmpty || write(fd, file.baseAddress, file.count) == file.count else { fatalError("memfd write") }
    let header: Qcow2Header
    do { header = try Qcow2Header(fd: fd, writable: !readOnly) } catch { close(fd); return }
    var backing: (any BlockStorage)? = nil
    if header.backingFile != nil {
        do { backing = try BlockImage(fd: dup(backingFD), readOnly: true) } catch { fatalError("backing: \(error)") }
    }
    let image: Qcow2Image
    do { image = try Qcow2Image(fd: fd, readOnly: readOnly, backing: backing) } catch { close(fd); return }
    let size = image.size
    guard size >= 512 else { return }
    for _ in 0..<12 {
        let r = next()
        let len = Int(min(UInt64([512, 4096, 65536, 3 * 4096 + 512][Int(r & 3)]), size / 512 * 512))
        guard len > 0 else { break }
        let span = size / 512 - UInt64(len / 512)
        // Mostly the first MiB; sometimes the end of the disk (the far L1 entries).
        var sector = (r >> 8) % min(span + 1, 2048)
        if (r >> 40) & 7 == 0 { sector = span - min(span, (r >> 16) % 64) }
        let off = sector * 512
        buffer.withUnsafeMutableBytes { p in
            var iov = iovec(iov_base: p.baseAddress, iov_len: len)
            switch (r >> 4) & 7 {
            case 0, 1, 2: _ = image.readv(&iov, count: 1, offset: off, total: len)
            case 3, 4:
                memset(p.baseAddress!, Int32(r & 0xff), len)
                _ = image.writev(&iov, count: 1, offset: off, total: len)
            case 5: _ = image.discard(offset: off, length: UInt64(len))
            case 6: _ = image.writeZeroes(offset: off, length: UInt64(len), unmap: r & 1 != 0)
            default: _ = image.flush()
            }
        }
    }
}

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzQcow2) }
}
