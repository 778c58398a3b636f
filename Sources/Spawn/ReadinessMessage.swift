// The readiness message a service sends its launcher over the readiness descriptor
// (STYLE.md: readiness travels as a typed message on a descriptor, never as log text).
// The one definition of the format: Sandbox.ServiceReadiness writes it, ReadinessChannel
// reads it.
//
// Format: one line of UTF-8, at most `ReadinessMessage.maxBytes` bytes including its
// terminating "\n", no other control characters:
//
//     ready\n                      the service applied its sandbox and is serving
//     ready <detail>\n             the same, with a short note (what it serves)
//     failed: <reason>\n           start-up failed; the reason is one line for a log
//
// The service writes exactly one message and closes the descriptor; end of file before a
// whole line means it died (or closed the descriptor) without saying anything.

/// One readiness message (the format above).
public enum ReadinessMessage: Sendable, Equatable {
    /// Serving; `detail` is "" or a short note.
    case ready(detail: String)
    /// Start-up failed for `reason` (one line).
    case failed(reason: String)

    /// The longest message on the wire, in bytes, terminating newline included.
    public static let maxBytes = 512

    /// The message as one line, newline-terminated and at most `maxBytes` bytes: control
    /// characters in the detail or reason become blanks, and a text too long is cut at a
    /// character boundary.
    public func encoded() -> [UInt8] {
        let (head, text): (String, String) = switch self {
        case .ready(let d): (d.isEmpty ? "ready" : "ready ", d)
        case .failed(let r): ("failed: ", r)
        }
        var out = Array(head.utf8)
        let room = Self.maxBytes - 1 - out.count
        var used = 0
        for scalar in text.unicodeScalars {
            let s: Unicode.Scalar = scalar.value < 0x20 || scalar.value == 0x7f ? " " : scalar
            let bytes = Array(String(s).utf8)
            guard used + bytes.count <= room else { break }
            out += bytes
            used += bytes.count
        }
        out.append(10)
        return out
    }

    /// Decodes one line (without its newline).
    /// - Returns: nil when the line is longer than `maxBytes - 1`, not UTF-8, holds a
    ///   control character, or is neither `ready[ …]` nor `failed: …`.
    public static func decode(_ line: some Collection<UInt8>) -> ReadinessMessage? {
        guard line.count < maxBytes, !line.contains(where: { $0 < 0x20 || $0 == 0x7f }),
              let text = String(validating: line, as: UTF8.self) else { return nil }
        if text == "ready" { return .ready(detail: "") }
        if text.hasPrefix("ready ") { return .ready(detail: String(text.dropFirst(6))) }
        if text.hasPrefix("failed: ") { return .failed(reason: String(text.dropFirst(8))) }
        return nil
    }
}
