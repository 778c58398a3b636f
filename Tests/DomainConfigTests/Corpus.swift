// Locating the test corpus next to this file (no Package.swift resources needed).
@testable import DomainConfig

enum Corpus {
    /// Tests/DomainConfigTests/corpus
    static let root: String = {
        let here = #filePath
        let dir = here[..<here.lastIndex(of: "/")!]
        return dir + "/corpus"
    }()

    /// The repository's services/ directory.
    static let services: String = {
        let here = #filePath
        var parts = here.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3) // Corpus.swift, DomainConfigTests, Tests
        return parts.joined(separator: "/") + "/services"
    }()

    static func read(_ path: String) throws -> String {
        try readTextFile(path)
    }

    /// File names in a corpus directory, sorted.
    static func list(_ sub: String) -> [String] {
        listDirectory(root + "/" + sub).sorted()
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

func listDirectory(_ path: String) -> [String] {
    guard let d = opendir(path) else { return [] }
    defer { closedir(d) }
    var out: [String] = []
    while let e = readdir(d) {
        let name = withUnsafePointer(to: e.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        if name != "." && name != ".." { out.append(name) }
    }
    return out
}

/// A deterministic generator for MAC addresses in tests (SplitMix64).
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
