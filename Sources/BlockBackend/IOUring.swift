// An io_uring confined to one file (Linux io_uring_setup(2), io_uring_register(2)
// IORING_REGISTER_RESTRICTIONS): the ring itself lives in CLinux's uring.c, which does the
// shared-ring index ordering.
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// An io_uring that can only read (IORING_OP_READV), write (IORING_OP_WRITEV) and
/// fdatasync (IORING_OP_FSYNC with IORING_FSYNC_DATASYNC) one file, registered as its fixed
/// file 0, and that signals an eventfd for each completion. Set up before the service's
/// seccomp filter is loaded; afterwards only io_uring_enter(2) is needed. Not thread-safe:
/// one thread queues, submits and reaps.
final class IOUring {
    private let ring: UnsafeMutablePointer<clinux_uring>
    /// The ring's descriptor (kept across the sandbox's descriptor clean-up).
    var fd: Int32 { ring.pointee.fd }
    /// Completion entries: at most this many operations may be out at once without the
    /// kernel having to hold completions back (it does not drop them: IORING_FEAT_NODROP).
    var completionEntries: Int { Int(ring.pointee.cq_entries) }
    /// Operations queued and not yet handed to the kernel.
    var pendingSubmissions: Int { Int(ring.pointee.pending) }

    /// - Parameters:
    ///   - file: the one file the ring may touch.
    ///   - eventfd: written by the kernel for each completion.
    ///   - entries: submission entries (completion entries: 16×, at least 4096).
    /// - Throws: ``BlockBackendError`` naming the failed step's errno (for example ENOSYS
    ///   or EPERM where io_uring is not available or disabled by `kernel.io_uring_disabled`).
    init(file: Int32, eventfd: Int32, entries: Int = 256) throws(BlockBackendError) {
        ring = .allocate(capacity: 1)
        let rc = clinux_uring_init(ring, UInt32(entries), UInt32(max(4096, entries * 16)), file, eventfd)
        if rc < 0 {
            ring.deallocate()
            throw BlockBackendError("io_uring: \(String(cString: strerror(-rc)))")
        }
    }

    deinit {
        clinux_uring_exit(ring)
        ring.deallocate()
    }

    /// The operations the ring may queue.
    enum Operation { case readv, writev, fdatasync }

    /// Queues `op` (for readv/writev, of the `count` iovecs at `iov`, which must stay valid
    /// until its completion, at byte `offset`) tagged `tag`; submits what is queued first
    /// when the submission ring is full.
    /// - Returns: false when the ring refuses it (the kernel took nothing in).
    func queue(_ op: Operation, iov: UnsafePointer<iovec>?, count: Int, offset: UInt64, tag: UInt64) -> Bool {
        let opcode: UInt8
        switch op {
        case .readv: opcode = CLINUX_IORING_OP_READV
        case .writev: opcode = CLINUX_IORING_OP_WRITEV
        case .fdatasync: opcode = CLINUX_IORING_OP_FSYNC
        }
        var rc = clinux_uring_queue(ring, opcode, iov, UInt32(count), offset, tag)
        if rc == -EBUSY {
            _ = submit()
            rc = clinux_uring_queue(ring, opcode, iov, UInt32(count), offset, tag)
        }
        return rc == 0
    }

    /// Hands the queued operations to the kernel. Returns 0 or the errno of io_uring_enter
    /// (EAGAIN/EBUSY: try again after reaping completions).
    @discardableResult
    func submit() -> Int32 {
        let rc = clinux_uring_submit(ring)
        return rc < 0 ? -rc : 0
    }

    /// Blocks until a completion is in the ring (submitting what is queued).
    func waitForCompletion() { _ = clinux_uring_wait(ring) }

    /// The next completion, if any: its tag and result (bytes moved, or -errno).
    func reap() -> (tag: UInt64, result: Int32)? {
        var tag: UInt64 = 0, res: Int32 = 0
        guard clinux_uring_reap(ring, &tag, &res) == 1 else { return nil }
        return (tag, res)
    }
}
