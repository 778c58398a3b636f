// libFuzzer target: the save-file / migration-stream reader (Migration/Receiver.swift,
// FrameReader.swift): the envelope, the stream header, every frame and the end record, as
// `migration verify` reads a save file (seekable, read to its end). The input is the file.
// Whatever the bytes, verify returns the configuration or throws a MigrationError; nothing
// it reads may make it allocate by an unchecked length.
import CLinux
import FuzzSupport
import Migration
#if canImport(Glibc)
import Glibc
#endif

/// One memfd reused for every input (truncated and rewritten each time).
nonisolated(unsafe) let saveFile: Int32 = {
    let fd = clinux_memfd_create("fuzz-save", CLINUX_MFD_CLOEXEC)
    precondition(fd >= 0, "memfd_create failed")
    return fd
}()

func fuzzMigration(_ input: UnsafeBufferPointer<UInt8>) {
    precondition(ftruncate(saveFile, 0) == 0)
    var off = 0
    while off < input.count {
        let n = pwrite(saveFile, input.baseAddress! + off, input.count - off, off_t(off))
        precondition(n > 0, "pwrite to the memfd failed")
        off += n
    }
    _ = try? Receiver.verify(file: Descriptor(saveFile, role: "save file"), status: nil)
}

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzMigration) }
}
