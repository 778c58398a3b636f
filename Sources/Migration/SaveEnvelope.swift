// Xen 3.0's save-file envelope (XendCheckpoint.py at RELEASE-3.0.x): the 16-byte signature
// and the domain's SXP behind a 4-byte big-endian length. README.md §1, offsets 0...20+L.

/// The envelope in front of every save file and migration stream.
public enum SaveEnvelope {
    /// The 16 ASCII bytes a save file starts with.
    public static let signature: [UInt8] = Array("LinuxGuestRecord".utf8)
    /// The largest config accepted, in bytes (1 MiB); Xen had no limit, we need one.
    public static let maxConfigBytes = 1 << 20

    /// The envelope for `config` (the SXP text): signature, u32 BE length, the text.
    /// - Throws: `MigrationError.configLength` when the text is empty or above 1 MiB,
    ///   `.configNotText` when it holds a NUL.
    public static func encode(config: String) throws(MigrationError) -> [UInt8] {
        let text = Array(config.utf8)
        try check(configLength: UInt32(clamping: text.count))
        guard !text.contains(0) else { throw .configNotText }
        var out = signature
        BigEndian.append(UInt32(text.count), to: &out)
        out += text
        return out
    }

    /// Refuses a config length outside 1...maxConfigBytes.
    /// - Throws: `MigrationError.configLength`.
    public static func check(configLength n: UInt32) throws(MigrationError) {
        guard n >= 1 && Int(n) <= maxConfigBytes else { throw .configLength(n) }
    }

    /// The config text of `bytes`.
    /// - Throws: `MigrationError.configNotText` for invalid UTF-8 or a NUL byte.
    public static func decodeConfig(_ bytes: [UInt8]) throws(MigrationError) -> String {
        guard !bytes.contains(0), let s = String(validating: bytes, as: UTF8.self) else { throw .configNotText }
        return s
    }

    /// Printable form of a wrong signature for the error message (non-ASCII as '.').
    static func printable(_ bytes: some Sequence<UInt8>) -> String {
        String(decoding: bytes.map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: ".") }, as: UTF8.self)
    }
}
