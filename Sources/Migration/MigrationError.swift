// Every way a save, restore or migration fails, each with the message xend shows the user.

/// Why a save, verify, restore, send or receive failed. `description` is the one-line
/// message that goes to xend in a `failed` status message (README.md §3) and to stderr;
/// each names what was wrong and where (frame number, byte offset of the stream).
public enum MigrationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The first 16 bytes are not `LinuxGuestRecord` (Xen's own wording).
    case notAGuestStateFile(found: String)
    /// The envelope's config length is 0 or above `SaveEnvelope.maxConfigBytes`.
    case configLength(UInt32)
    /// The config is not UTF-8 text (or holds a NUL byte).
    case configNotText
    /// The 8 bytes after the config are not `XNTHSTRM`.
    case notAStream(found: String)
    /// The stream was written by a newer format version than this reader knows.
    case newerVersion(UInt32)
    /// The stream header's version is 0 (no such format).
    case badVersion(UInt32)
    /// The stream header's own CRC does not match.
    case headerChecksum
    /// The config CRC in the stream header does not match the config text.
    case configChecksum
    /// The input ended (EOF) before `what` was complete; `offset` is the byte offset of
    /// the stream where it ended.
    case truncated(what: String, offset: UInt64)
    /// The input ended cleanly between frames, but no end frame came.
    case missingEnd(offset: UInt64)
    /// Frame `frame` is of a type that does not belong here (an ack in a file, data after the end).
    case unexpectedFrame(type: String, frame: UInt64, offset: UInt64)
    /// Frame `frame` (1-based) has a type this format does not define.
    case unknownFrameType(UInt32, frame: UInt64, offset: UInt64)
    /// Frame `frame` announces a payload longer than the format allows for its type.
    case frameTooLarge(length: UInt32, limit: Int, frame: UInt64, offset: UInt64)
    /// Frame `frame` has a payload length its type does not allow (empty data, a short end).
    case frameLength(type: String, length: UInt32, frame: UInt64, offset: UInt64)
    /// Frame `frame`'s CRC does not match its bytes.
    case frameChecksum(frame: UInt64, offset: UInt64)
    /// The end frame disagrees with what was read (`what`: byte count, frame count, CRC).
    case endMismatch(what: String, expected: UInt64, found: UInt64)
    /// Bytes follow the end frame in a file.
    case trailingData(offset: UInt64)
    /// The writer gave up and said why (an abort frame).
    case aborted(reason: String)
    /// The peer answered the end frame with something other than its `ack`.
    case notAcknowledged(String)
    /// xend sent `abort` (save, send): the engine's stream is not to be committed.
    case abandoned(reason: String)
    /// A status message from xend was malformed or unexpected.
    case statusProtocol(String)
    /// A system call on a handed descriptor failed (`operation` names the call and the fd's role).
    case io(operation: String, errno: Int32)
    /// A bad command-line choice caught by the library (e.g. a rate of 0).
    case invalidArgument(String)

    /// The one-line message for xend and stderr.
    public var description: String {
        switch self {
        case .notAGuestStateFile(let found):
            return "not a valid guest state file: found '\(found)' where 'LinuxGuestRecord' belongs"
        case .configLength(let n):
            return "not a valid guest state file: configuration length \(n) is outside 1...\(SaveEnvelope.maxConfigBytes) bytes"
        case .configNotText:
            return "not a valid guest state file: the configuration is not UTF-8 text"
        case .notAStream(let found):
            return "not a Xenith migration stream: found '\(found)' where the stream magic 'XNTHSTRM' belongs"
        case .newerVersion(let v):
            return "stream format version \(v) is newer than this xenith supports (version \(StreamFormat.version)); restore it with a newer xenith"
        case .badVersion(let v):
            return "stream format version \(v) does not exist"
        case .headerChecksum:
            return "stream header is corrupt (header CRC-32C mismatch)"
        case .configChecksum:
            return "the domain configuration is corrupt (config CRC-32C mismatch)"
        case .truncated(let what, let offset):
            return "truncated stream: it ends inside \(what) at byte \(offset)"
        case .missingEnd(let offset):
            return "truncated stream: it ends at byte \(offset) without an end frame"
        case .unexpectedFrame(let type, let frame, let offset):
            return "corrupt stream: frame \(frame) at byte \(offset) is an \(type) frame, which does not belong here"
        case .unknownFrameType(let t, let frame, let offset):
            return "corrupt stream: frame \(frame) at byte \(offset) has unknown type \(t)"
        case .frameTooLarge(let length, let limit, let frame, let offset):
            return "corrupt stream: frame \(frame) at byte \(offset) is \(length) bytes long, more than the limit of \(limit)"
        case .frameLength(let type, let length, let frame, let offset):
            return "corrupt stream: \(type) frame \(frame) at byte \(offset) has a payload of \(length) bytes, which its type does not allow"
        case .frameChecksum(let frame, let offset):
            return "corrupt stream: frame \(frame) at byte \(offset) fails its CRC-32C check"
        case .endMismatch(let what, let expected, let found):
            return "corrupt stream: the end frame says \(what) \(expected), the stream has \(found)"
        case .trailingData(let offset):
            return "corrupt stream: unexpected bytes after the end frame at byte \(offset)"
        case .aborted(let reason):
            return "the stream was aborted by its writer: \(reason)"
        case .notAcknowledged(let why):
            return "the receiver did not acknowledge the stream: \(why)"
        case .abandoned(let reason):
            return "abandoned by xend: \(reason)"
        case .statusProtocol(let why):
            return "status channel: \(why)"
        case .io(let operation, let errno):
            return "\(operation): \(errnoText(errno)) (errno \(errno))"
        case .invalidArgument(let why):
            return why
        }
    }
}
