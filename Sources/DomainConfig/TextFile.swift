// Reading configuration files without Foundation.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a whole file as UTF-8 text (invalid sequences are replaced with U+FFFD).
///
/// - Throws: `ConfigError` with `line` 0 naming the path and the `strerror` text when
///   the file cannot be opened or read.
func readTextFile(_ path: String) throws(ConfigError) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 {
        let reason = String(cString: strerror(errno))
        throw ConfigError(file: path, line: 0, message: "cannot open: \(reason)")
    }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            let reason = String(cString: strerror(errno))
            throw ConfigError(file: path, line: 0, message: "cannot read: \(reason)")
        }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
        if bytes.count > 16 << 20 {
            throw ConfigError(file: path, line: 0, message: "file larger than 16 MiB")
        }
    }
    return String(decoding: bytes, as: UTF8.self)
}
