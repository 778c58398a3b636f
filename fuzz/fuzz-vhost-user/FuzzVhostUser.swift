// libFuzzer target: the vhost-user back-end's message handling (VhostUser/MessageHandler.swift
// and the rings it starts) serving a virtio-blk device, as blkback does. The front-end
// (QEMU or xenith-core) is only partly trusted: every message field is checked.
//
// Input: a little-endian u16 L, then L bytes of messages (vhost-user.rst "Message
// Specification": u32 request, u32 flags, u32 size, payload), then a guest-memory image.
// The top 4 bits of a message's flags (reserved in the protocol, cleared before dispatch)
// say how many descriptors ride with it: an eventfd for the vring kick/call/err messages,
// otherwise the guest-memory memfd (as SET_MEM_TABLE, SET_LOG_BASE, SET_INFLIGHT_FD carry).
// Replies go to a socket pair that is drained after each message.
import BlockBackend
import FuzzSupport
import CLinux
import GuestMemory
@testable import VhostUser
import Virtio
#if canImport(Glibc)
import Glibc
#endif

let memorySize = 0x10000
/// The memfd the front-end shares as guest memory, refilled from each input.
nonisolated(unsafe) let guestFd: Int32 = {
    let fd = clinux_memfd_create("fuzz-vhost-guest", CLINUX_MFD_CLOEXEC)
    precondition(fd >= 0 && ftruncate(fd, off_t(memorySize)) == 0, "guest memfd")
    return fd
}()
nonisolated(unsafe) let device: VirtioBlockDevice = {
    let fd = clinux_memfd_create("fuzz-vhost-image", CLINUX_MFD_CLOEXEC)
    precondition(fd >= 0 && ftruncate(fd, 1 << 20) == 0, "image memfd")
    do { return VirtioBlockDevice(image: try BlockImage(fd: fd, readOnly: false)) }
    catch { fatalError("image: \(error)") }
}()

func drain(_ fd: Int32) {
    var buf = [UInt8](repeating: 0, count: 8192)
    while true {
        var fds = [Int32](repeating: -1, count: 16)
        var n: Int32 = 0
        let r = buf.withUnsafeMutableBytes { b in
            fds.withUnsafeMutableBufferPointer { clinux_recv_with_fds(fd, b.baseAddress, b.count, $0.baseAddress, 16, &n) }
        }
        for f in fds.prefix(Int(n)) where f >= 0 { close(f) }
        if r <= 0 { return }
    }
}

func fuzzVhostUser(_ input: UnsafeBufferPointer<UInt8>) {
    guard input.count >= 2 else { return }
    let streamLength = min(Int(input[0]) | Int(input[1]) << 8, input.count - 2)
    let stream = Array(input[2..<(2 + streamLength)])
    let image = input[(2 + streamLength)...].prefix(memorySize)
    var zero = [UInt8](repeating: 0, count: memorySize)
    zero.replaceSubrange(0..<image.count, with: image)
    precondition(pwrite(guestFd, zero, memorySize, 0) == memorySize)

    var pair: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { fatalError("socketpair") }
    _ = fcntl(pair[1], F_SETFL, O_NONBLOCK)
    // The reply side must never block the handler: a large send buffer, drained after each message.
    var big: Int32 = 1 << 20
    _ = setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &big, 4)
    let listenFd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    let backend: VhostUserBackend
    do { backend = try VhostUserBackend(device: device, listenFd: listenFd) } catch { fatalError("backend: \(error)") }
    backend.conn = pair[0]

    var r = PayloadReader(stream)
    var handled = 0
    while handled < 64, r.remaining >= 12 {
        let request = (try? r.u32()) ?? 0, flags = (try? r.u32()) ?? 0, length = (try? r.u32()) ?? 0
        let n = min(Int(length) % (VhostUserMessage.maxPayload + 1), r.remaining)
        let payload = (try? r.raw(n)) ?? []
        var fds: [Int32] = []
        for _ in 0..<min(Int(flags >> 28), 8) {
            if request == VhostUserRequest.setVringKick.rawValue || request == VhostUserRequest.setVringCall.rawValue
                || request == VhostUserRequest.setVringErr.rawValue {
                fds.append(eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK)))
            } else {
                fds.append(dup(guestFd))
            }
        }
        handled += 1
        do { try backend.dispatch(VhostUserMessage(request: request, flags: flags & 0x0fff_ffff, payload: payload, fds: fds)) }
        catch { break }   // the back-end drops the connection
        drain(pair[1])
    }
    backend.teardownConnection()   // closes pair[0]
    close(pair[1])
}

@main enum FuzzMain {
    static func main() { runFuzzer(fuzzVhostUser) }
}
