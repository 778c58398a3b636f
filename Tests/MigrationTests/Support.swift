// Helpers shared by the Migration tests: descriptors, scratch files, random streams, and
// save files made in-process.
import CLinux   // socketpair constants: <sys/socket.h> may be attributed to CLinux's module
import Glibc
import Migration

// glibc declares these only under _GNU_SOURCE, which Swift's Glibc module does not set.
@_silgen_name("mkostemp") func c_mkostemp(_ template: UnsafeMutablePointer<CChar>, _ flags: Int32) -> Int32
@_silgen_name("pipe2") func c_pipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32

/// `n` random bytes.
func randomBytes(_ n: Int) -> [UInt8] {
    var g = SystemRandomNumberGenerator()
    var out = [UInt8](repeating: 0, count: n)
    out.withUnsafeMutableBytes { p in
        var i = 0
        while i + 8 <= n { p.storeBytes(of: g.next() as UInt64, toByteOffset: i, as: UInt64.self); i += 8 }
        while i < n { p[i] = UInt8.random(in: 0...255, using: &g); i += 1 }
    }
    return out
}

/// An anonymous scratch file (created in /tmp and unlinked), open read-write, close-on-exec.
func scratchFile(_ contents: [UInt8] = []) -> Int32 {
    var template = Array("/tmp/migration-test-XXXXXX".utf8CString)
    let fd = c_mkostemp(&template, O_CLOEXEC)
    precondition(fd >= 0, "mkostemp: \(errno)")
    unlink(template)
    writeAll(fd, contents)
    lseek(fd, 0, SEEK_SET)
    return fd
}

/// Writes all of `bytes` to `fd`, or stops at the first error (a reader that went away).
/// - Returns: whether everything was written.
@discardableResult
func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    // A service that failed closes its end early: that must be an EPIPE here, not a death.
    signal(SIGPIPE, SIG_IGN)
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, bytes.count - done) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}

/// Everything from the start of regular file `fd` (pread, offset untouched).
func fileContents(_ fd: Int32) -> [UInt8] {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    var off: off_t = 0
    while true {
        let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off) }
        precondition(n >= 0, "pread: \(errno)")
        if n == 0 { return out }
        out += chunk[0..<n]; off += off_t(n)
    }
}

/// Reads `fd` (a pipe or socket) to EOF.
func readToEOF(_ fd: Int32) -> [UInt8] {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return out }
        out += chunk[0..<n]
    }
}

/// A connected stream socketpair, close-on-exec (so no concurrently spawned child inherits it).
func socketPair() -> (Int32, Int32) {
    var sv: [Int32] = [-1, -1]
    precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0)
    return (sv[0], sv[1])
}

/// A pipe (read end, write end), close-on-exec.
func pipePair() -> (Int32, Int32) {
    var p: [Int32] = [-1, -1]
    precondition(c_pipe2(&p, O_CLOEXEC) == 0)
    return (p[0], p[1])
}

/// A domain configuration as xend would have it.
let sampleConfig = "(domain (name mig-test) (memory 256) (vcpus 1) (image (linux (kernel /boot/vmlinuz))))"

/// A save file made in-process by `Sender`: the bytes of the whole file.
/// - Parameter answer: what xend says after `drained` (commit, or abort for a half file).
func makeSaveFile(_ stream: [UInt8], config: String = sampleConfig, answer: StatusMessage = .commit) -> [UInt8] {
    let engine = scratchFile(stream), file = scratchFile()
    let (xend, service) = socketPair()
    defer { close(engine); close(file); close(xend); close(service) }
    writeAll(xend, StatusMessage.config(config).encoded + answer.encoded)
    _ = try? Sender.run(engine: Descriptor(engine, role: "engine"), output: Descriptor(file, role: "file"),
                        status: StatusChannel(Descriptor(service, role: "status")), pacer: nil,
                        expectAck: false, progressInterval: 0)
    return fileContents(file)
}

/// Verifies `bytes` as a save file in-process.
func verify(_ bytes: [UInt8]) throws(MigrationError) -> (config: String, summary: Summary) {
    let fd = scratchFile(bytes)
    defer { close(fd) }
    return try Receiver.verify(file: Descriptor(fd, role: "save file"), status: nil)
}

/// The error `verify` throws for `bytes`, nil when it passes.
func verifyError(_ bytes: [UInt8]) -> MigrationError? {
    do { _ = try verify(bytes); return nil } catch { return error }
}

/// The byte offset of the stream header in a save file made with `config`.
func headerOffset(_ config: String = sampleConfig) -> Int { 20 + config.utf8.count }

/// `bytes` with the big-endian u32 at `at` replaced by `value`.
func patched(_ bytes: [UInt8], at: Int, u32 value: UInt32) -> [UInt8] {
    var b = bytes
    b[at] = UInt8(value >> 24); b[at + 1] = UInt8((value >> 16) & 0xFF)
    b[at + 2] = UInt8((value >> 8) & 0xFF); b[at + 3] = UInt8(value & 0xFF)
    return b
}
