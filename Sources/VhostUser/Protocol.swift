// VhostUser: the vhost-user protocol (QEMU docs/interop/vhost-user.rst): message codec,
// backend (service side, ``VhostUserBackend``) and frontend (core side, ``VhostUserFrontend``).
import CLinux
import SystemPackage
import UnixSocket
#if canImport(Glibc)
import Glibc
#endif

/// Front-end → back-end request codes (vhost-user.rst "Front-end message types").
public enum VhostUserRequest: UInt32, Sendable {
    case getFeatures = 1, setFeatures = 2, setOwner = 3, resetOwner = 4, setMemTable = 5
    case setLogBase = 6, setLogFd = 7, setVringNum = 8, setVringAddr = 9, setVringBase = 10
    case getVringBase = 11, setVringKick = 12, setVringCall = 13, setVringErr = 14
    case getProtocolFeatures = 15, setProtocolFeatures = 16, getQueueNum = 17
    case setVringEnable = 18, sendRarp = 19, netSetMtu = 20, setBackendReqFd = 21
    case iotlbMsg = 22, setVringEndian = 23, getConfig = 24, setConfig = 25
    case getInflightFd = 31, setInflightFd = 32, resetDevice = 34, vringKick = 35
    case getMaxMemSlots = 36, addMemReg = 37, remMemReg = 38, setStatus = 39, getStatus = 40
}

/// Header flag bits (vhost-user.rst "Header").
public enum VhostUserFlag {
    /// Protocol version 1 in bits 0..1.
    public static let version: UInt32 = 0x1
    public static let reply: UInt32 = 0x4
    public static let needReply: UInt32 = 0x8
}

/// Protocol feature bits (vhost-user.rst "Protocol features").
public enum VhostUserProtocolFeature {
    public static let mq: UInt64 = 1 << 0
    public static let logShmfd: UInt64 = 1 << 1
    public static let replyAck: UInt64 = 1 << 3
    public static let config: UInt64 = 1 << 9
    public static let inflightShmfd: UInt64 = 1 << 12
    public static let resetDevice: UInt64 = 1 << 13
    public static let status: UInt64 = 1 << 16
}

/// VHOST_USER_F_PROTOCOL_FEATURES: bit 30 of GET_FEATURES; when negotiated, rings start
/// disabled and GET/SET_PROTOCOL_FEATURES are usable.
public let vhostUserFProtocolFeatures: UInt64 = 1 << 30

/// Errors of the vhost-user layer.
public enum VhostUserError: Error, CustomStringConvertible, Equatable {
    /// A system call failed.
    case system(String, Errno)
    /// The peer sent something the protocol does not allow.
    case protocolViolation(String)
    /// The peer closed the connection.
    case disconnected
    /// The peer answered a request with a failure (REPLY_ACK non-zero) or not at all.
    case rejected(VhostUserRequest)

    public var description: String {
        switch self {
        case let .system(c, e): return "\(c): \(e)"
        case let .protocolViolation(s): return "vhost-user protocol violation: \(s)"
        case .disconnected: return "vhost-user peer disconnected"
        case let .rejected(r): return "vhost-user request \(r) rejected"
        }
    }
    static func errno(_ call: String) -> VhostUserError { .system(call, Errno(rawValue: Glibc.errno)) }
}

/// One vhost-user message: 12-byte header (request, flags, size) + payload + attached fds.
public struct VhostUserMessage: Sendable {
    public var request: UInt32
    public var flags: UInt32
    public var payload: [UInt8]
    /// Descriptors received with (or to send with) the message; the receiver owns them.
    public var fds: [Int32]
    public init(request: UInt32, flags: UInt32 = VhostUserFlag.version, payload: [UInt8] = [], fds: [Int32] = []) {
        self.request = request; self.flags = flags; self.payload = payload; self.fds = fds
    }
    /// Largest payload accepted (a memory table of 8 regions is 264 bytes; config ≤ 268).
    public static let maxPayload = 4096
}

/// Little-endian payload builder.
public struct PayloadWriter {
    public private(set) var bytes: [UInt8] = []
    public init() {}
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func raw(_ b: [UInt8]) { bytes += b }
}

/// Little-endian payload reader; every read is bounds-checked against the payload.
public struct PayloadReader {
    let bytes: [UInt8]
    public private(set) var offset = 0
    public init(_ b: [UInt8]) { bytes = b }
    public var remaining: Int { bytes.count - offset }
    mutating func take<T: FixedWidthInteger>(_: T.Type) throws(VhostUserError) -> T {
        let n = MemoryLayout<T>.size
        guard remaining >= n else { throw .protocolViolation("payload too short") }
        var v: T = 0
        for i in 0..<n { v |= T(bytes[offset + i]) << (8 * i) }
        offset += n
        return v
    }
    public mutating func u8() throws(VhostUserError) -> UInt8 { try take(UInt8.self) }
    public mutating func u16() throws(VhostUserError) -> UInt16 { try take(UInt16.self) }
    public mutating func u32() throws(VhostUserError) -> UInt32 { try take(UInt32.self) }
    public mutating func u64() throws(VhostUserError) -> UInt64 { try take(UInt64.self) }
    public mutating func raw(_ n: Int) throws(VhostUserError) -> [UInt8] {
        guard n >= 0, remaining >= n else { throw .protocolViolation("payload too short") }
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }
}

/// A memory region entry of SET_MEM_TABLE (vhost-user.rst "Memory region description").
public struct VhostUserMemoryRegion: Equatable, Sendable {
    public var guestPhysAddr: UInt64
    public var size: UInt64
    /// The front-end's virtual address of the region (ring addresses are given in these).
    public var userAddr: UInt64
    /// Offset of the region within the fd.
    public var mmapOffset: UInt64
    public init(guestPhysAddr: UInt64, size: UInt64, userAddr: UInt64, mmapOffset: UInt64) {
        self.guestPhysAddr = guestPhysAddr; self.size = size; self.userAddr = userAddr; self.mmapOffset = mmapOffset
    }
}

// MARK: socket I/O

/// Sends all of `bytes` (with `fds` on the first chunk).
func sendAll(_ sock: Int32, _ bytes: [UInt8], fds: [Int32] = []) throws(VhostUserError) {
    var off = 0
    var first = true
    while off < bytes.count || first {
        let r: Int = bytes.withUnsafeBytes { b in
            fds.withUnsafeBufferPointer { f in
                clinux_send_with_fds(sock, b.baseAddress! + off, b.count - off, first ? f.baseAddress : nil, first ? Int32(f.count) : 0)
            }
        }
        if r < 0 {
            if errno == EPIPE || errno == ECONNRESET { throw .disconnected }
            throw .errno("sendmsg")
        }
        off += r
        first = false
    }
}

/// Receives exactly `count` bytes; fds that arrive are appended to `fds`.
func recvExact(_ sock: Int32, _ count: Int, fds: inout [Int32]) throws(VhostUserError) -> [UInt8] {
    var buf = [UInt8](repeating: 0, count: count)
    var off = 0
    while off < count {
        var got: [Int32] = Array(repeating: -1, count: 16)
        var n: Int32 = 0
        let r: Int = buf.withUnsafeMutableBytes { b in
            got.withUnsafeMutableBufferPointer { g in
                clinux_recv_with_fds(sock, b.baseAddress! + off, count - off, g.baseAddress, 16, &n)
            }
        }
        if n > 0 { fds += got[0..<Int(n)] }
        if r < 0 {
            if errno == ECONNRESET { throw .disconnected }
            throw .errno("recvmsg")
        }
        if r == 0 { throw .disconnected }
        off += r
    }
    return buf
}

/// Reads one message. Closes received fds itself when it throws.
func readMessage(_ sock: Int32) throws(VhostUserError) -> VhostUserMessage {
    var fds: [Int32] = []
    do throws(VhostUserError) {
        let h = try recvExact(sock, 12, fds: &fds)
        var r = PayloadReader(h)
        let req = try r.u32(), flags = try r.u32(), size = try r.u32()
        guard size <= UInt32(VhostUserMessage.maxPayload) else { throw .protocolViolation("payload of \(size) bytes") }
        let p = size > 0 ? try recvExact(sock, Int(size), fds: &fds) : []
        return VhostUserMessage(request: req, flags: flags, payload: p, fds: fds)
    } catch {
        for f in fds { close(f) }
        throw error
    }
}

/// Writes one message (header + payload + fds).
func writeMessage(_ sock: Int32, _ m: VhostUserMessage) throws(VhostUserError) {
    var w = PayloadWriter()
    w.u32(m.request); w.u32(m.flags); w.u32(UInt32(m.payload.count)); w.raw(m.payload)
    try sendAll(sock, w.bytes, fds: m.fds)
}

/// A `UnixSocketError` as a `VhostUserError.system` (the errno kept; EEXIST for a path
/// that is not a socket, as before).
func vhostUserError(_ e: UnixSocketError) -> VhostUserError {
    switch e {
    case .system(let op, let path, let code): .system("\(op)(\(path))", Errno(rawValue: code))
    case .notASocket: .system(e.description, Errno(rawValue: EEXIST))
    default: .system(e.description, Errno(rawValue: e.errno))
    }
}

/// Connects a stream socket to `path` (close-on-exec).
/// - Throws: ``VhostUserError/system(_:_:)`` naming the call and path.
public func vhostUserConnect(path: String) throws(VhostUserError) -> Int32 {
    do { return try UnixSocket.connect(path: path) } catch { throw vhostUserError(error) }
}

/// Whether some process is accepting connections on the Unix socket at `path`.
public func unixSocketIsLive(path: String) -> Bool { UnixSocket.isLive(path: path) }

/// Creates a listening Unix socket at `path` (close-on-exec, backlog 4). A stale socket
/// file (no listener) is removed first; a live one is refused.
/// - Throws: ``VhostUserError/system(_:_:)`` with `EADDRINUSE` when a listener owns `path`,
///   `EEXIST` when `path` is not a socket.
public func vhostUserListen(path: String) throws(VhostUserError) -> Int32 {
    do { return try UnixSocket.listen(path: path, backlog: 4) } catch { throw vhostUserError(error) }
}

/// Starts `body` on a new dedicated pthread (not Dispatch, not the concurrency pool). The
/// thread is detached: nobody joins it, and its stack is freed when `body` returns (a
/// joinable thread that is never joined keeps its stack; ThreadSanitizer reported it).
/// - Parameter stackBytes: the thread's stack size; nil for the default (RLIMIT_STACK, which
///   counts against a sandboxed service's `rlimit data` for every thread).
public func spawnThread(stackBytes: Int? = nil, _ body: @escaping @Sendable () -> Void) {
    final class Box { let f: @Sendable () -> Void; init(_ f: @escaping @Sendable () -> Void) { self.f = f } }
    var t = pthread_t()
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    defer { pthread_attr_destroy(&attr) }
    if let n = stackBytes { pthread_attr_setstacksize(&attr, n) }
    let arg = Unmanaged.passRetained(Box(body)).toOpaque()
    let r = pthread_create(&t, &attr, { p in
        let b = Unmanaged<Box>.fromOpaque(p!).takeRetainedValue()
        b.f()
        return nil
    }, arg)
    precondition(r == 0, "pthread_create failed")
    pthread_detach(t)
}
