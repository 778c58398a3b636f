// Reading configuration files without Foundation.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a whole configuration file as UTF-8 text, at most 16 MiB.
///
/// - Throws: `ConfigError` with `line` 0 naming the path: the `strerror` text when the
///   file cannot be opened or read, a file larger than 16 MiB, a NUL byte (a binary file),
///   bytes that are not UTF-8.
public func readConfigText(_ path: String) throws(ConfigError) -> String { try readTextFile(path) }

/// `readConfigText`.
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
    if let nul = bytes.firstIndex(of: 0) {
        throw ConfigError(file: path, line: 0, message: "not a text file (NUL byte at offset \(nul))")
    }
    let text = String(decoding: bytes, as: UTF8.self)
    if text.utf8.count != bytes.count || (text.contains("\u{FFFD}") && !containsReplacementCharacter(bytes)) {
        throw ConfigError(file: path, line: 0, message: "not UTF-8 text")
    }
    return text
}

/// Whether `bytes` hold an encoded U+FFFD (EF BF BD) themselves.
private func containsReplacementCharacter(_ bytes: [UInt8]) -> Bool {
    guard bytes.count >= 3 else { return false }
    for i in 0...(bytes.count - 3) where bytes[i] == 0xEF && bytes[i + 1] == 0xBF && bytes[i + 2] == 0xBD { return true }
    return false
}
