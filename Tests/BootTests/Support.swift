#if canImport(Glibc)
import Glibc
#endif

/// Reads a whole file, for the optional real-kernel test.
func readFile(_ path: String) throws -> [UInt8] {
    guard let f = fopen(path, "rb") else { throw POSIXErr(code: errno) }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return out
}

struct POSIXErr: Error { let code: Int32 }

func fileExists(_ path: String) -> Bool { access(path, R_OK) == 0 }

func realKernelPath() -> String? {
    if let p = getenv("XENITH_TEST_KERNEL").map({ String(cString: $0) }), fileExists(p) { return p }
    guard let d = opendir("/boot") else { return nil }
    defer { closedir(d) }
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name.hasPrefix("vmlinuz-"), fileExists("/boot/" + name) { return "/boot/" + name }
    }
    return nil
}

/// Runs `argv` with stdout+stderr captured to a file; returns (exit status, output).
func run(_ argv: [String]) -> (Int32, String) {
    let out = "/tmp/boot-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).out"
    defer { unlink(out) }
    let cmd = argv.map { "'" + $0 + "'" }.joined(separator: " ") + " >'\(out)' 2>&1"
    let status = system(cmd)
    let text = (try? readFile(out)).map { String(decoding: $0, as: UTF8.self) } ?? ""
    return (status, text)
}

/// Path of `tool` on PATH, if any.
func which(_ tool: String) -> String? {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin"] where fileExists(dir + "/" + tool) { return dir + "/" + tool }
    return nil
}
