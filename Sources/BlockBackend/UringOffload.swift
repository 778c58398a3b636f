// blkback's io_uring submission path (issue 17 item 2), beside the I/O-thread pool: the
// event loop checks each request (VirtioBlockDevice.plan), queues its read, write or flush
// on an io_uring confined to the image, submits once per kick and completes requests from
// the ring's eventfd. Picked at start: blkback --aio io_uring.
import CLinux
import GuestMemory
import Virtio
import VhostUser
#if canImport(Glibc)
import Glibc
#endif

/// Serves a raw image's virtio-blk requests through an ``IOUring``: no I/O threads of our
/// own, one io_uring_enter(2) per batch of requests a kick brings. Requests that need no
/// data transfer are answered at once; a direct-I/O request the alignment rules refuse (it
/// needs the bounce buffer) and a request beyond the ring's completion capacity are served
/// synchronously on the event loop. A short transfer is finished with preadv/pwritev; an
/// error is VIRTIO_BLK_S_IOERR for that request only. FLUSH is fdatasync of the image, as
/// on the thread pool: it covers every write completed before it (virtio 1.2 §5.2.6.1).
/// Runs on the event-loop thread only (``VhostUserOffload``).
public final class UringOffload: VhostUserOffload, @unchecked Sendable {
    /// The ring's completion eventfd.
    public let doneFd: Int32
    /// The ring's descriptor: keep it (and ``doneFd``) when the sandbox closes descriptors.
    public var ringFd: Int32 { ring.fd }
    /// Requests served synchronously because they could not go on the ring (tests, logs).
    public private(set) var servedInline: UInt64 = 0
    private let device: VirtioBlockDevice
    private let image: BlockImage
    private let ring: IOUring
    private var out: [UInt64: Pending] = [:]
    private var nextTag: UInt64 = 1
    private var done: [OffloadDone] = []
    /// Set while ``takeDone()`` reaps: results added then are returned at once, no wake-up.
    private var reaping = false

    private final class Pending {
        let job: OffloadJob
        let request: PlannedBlockRequest
        let write: Bool
        let flush: Bool
        let offset: UInt64
        let length: Int
        /// A copy of the request's iovecs that stays put while the kernel uses it.
        let iov: UnsafeMutablePointer<iovec>
        let count: Int
        init(job: OffloadJob, request: PlannedBlockRequest, write: Bool, flush: Bool, offset: UInt64, length: Int, iov: [iovec]) {
            self.job = job; self.request = request; self.write = write; self.flush = flush
            self.offset = offset; self.length = length
            count = iov.count
            self.iov = .allocate(capacity: max(1, iov.count))
            if !iov.isEmpty { self.iov.initialize(from: iov, count: iov.count) }
        }
        deinit { iov.deallocate() }
    }

    /// - Parameters:
    ///   - device: the virtio-blk device whose requests it serves.
    ///   - image: the raw image behind `device`.
    ///   - file: the one file the ring may touch: the image opened afresh by
    ///     ``claimImage(_:exclusive:waiting:)`` (the ring takes its own reference; the
    ///     caller closes `file`).
    /// - Throws: ``BlockBackendError`` when io_uring cannot be set up (named errno).
    public init(device: VirtioBlockDevice, image: BlockImage, file: Int32) throws(BlockBackendError) {
        self.device = device
        self.image = image
        doneFd = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
        if doneFd < 0 { throw .errno("io_uring: eventfd") }
        do { ring = try IOUring(file: file, eventfd: doneFd) } catch { close(doneFd); throw error }
    }

    /// Opens `image` afresh through /proc/self/fd (same O_DIRECT; read-only when the disk
    /// is) and, for a blkback that has the image to itself (`exclusive`: not `w!`, not
    /// read-only), takes the ring lock on it, waiting up to `seconds` for another holder.
    /// Returns the new descriptor (the caller owns it).
    ///
    /// Why: a ring releases its registered files only when the kernel frees it, after the
    /// process is gone, and may still have direct-I/O writes in the device then (the kernel
    /// does not wait for them before the process is reaped). A ring on the image's own
    /// descriptor would keep the image's flock alive past a SIGKILL, so the ring gets this
    /// fresh open file description instead; and an exclusive blkback's ring holds an OFD
    /// lock on it (fcntl F_OFD_SETLK on byte ``ringLockOffset``, independent of flock) that
    /// goes only when that ring is freed. Every exclusive blkback, whichever `--aio`, claims
    /// the image so before it serves: no stale write of a dead blkback's ring can land after
    /// its successor serves the guest. Shared (`w!`) and read-only blkbacks neither hold nor
    /// wait for it, as they take no exclusive flock either. Call before the sandbox (it opens
    /// a path).
    /// - Throws: ``BlockBackendError`` naming the errno, or that another blkback's io_uring
    ///   still holds the image after `seconds`.
    public static func claimImage(_ image: BlockImage, exclusive: Bool, waiting seconds: Double) throws(BlockBackendError) -> Int32 {
        let flags = fcntl(image.fd, F_GETFL)
        if flags < 0 { throw .errno("io_uring: image fd \(image.fd)") }
        let access = image.readOnly ? O_RDONLY : (flags & O_ACCMODE)
        let file = clinux_open("/proc/self/fd/\(image.fd)", access | (flags & directIOOpenFlag) | O_CLOEXEC, 0)
        if file < 0 { throw .errno("reopening the image (/proc/self/fd/\(image.fd))") }
        guard exclusive else { return file }
        var lk = flock()
        lk.l_type = Int16(F_WRLCK)
        lk.l_whence = Int16(SEEK_SET)
        lk.l_start = off_t(ringLockOffset)
        lk.l_len = 1
        var waited = 0.0
        while clinux_fcntl_lock(file, CLINUX_F_OFD_SETLK, &lk) != 0 {
            let e = errno
            guard e == EAGAIN || e == EACCES || e == EINTR else { close(file); throw .errno("ring lock") }
            guard waited < seconds else {
                close(file)
                throw BlockBackendError("another blkback's io_uring still holds this image after \(Int(seconds)) s (one that died may still have writes in the device)")
            }
            usleep(10_000)
            waited += 0.01
        }
        return file
    }

    /// The byte whose OFD lock marks "an exclusive blkback's ring holds this image": far
    /// past any image's end and away from the bytes QEMU's own image locking uses (100 and up).
    public static let ringLockOffset: Int64 = Int64.max - 1

    deinit { close(doneFd) }

    public func submit(_ job: OffloadJob) {
        let r: PlannedBlockRequest
        do { r = try device.plan(job.chain, memory: job.memory) } catch {
            finished(job, .failure(error)); return
        }
        switch r.plan {
        case .answered(let status, let written):
            finished(job, .success(r.finish(status: status, written: written)))
        case .flush:
            enqueue(Pending(job: job, request: r, write: false, flush: true, offset: 0, length: 0, iov: []))
        case .read(let offset, let length, let iov):
            enqueue(Pending(job: job, request: r, write: false, flush: false, offset: offset, length: length, iov: iov))
        case .write(let offset, let length, let iov):
            enqueue(Pending(job: job, request: r, write: true, flush: false, offset: offset, length: length, iov: iov))
        }
    }

    public func submitPending() {
        guard ring.pendingSubmissions > 0, ring.submit() != 0 else { return }
        // The kernel took nothing (EAGAIN, ENOMEM, ...): no completion may come to wake the
        // loop for these, so wake it to try again, a little later.
        usleep(1000)
        var one: UInt64 = 1
        _ = write(doneFd, &one, 8)
    }

    public func takeDone() -> [OffloadDone] {
        reaping = true
        while let c = ring.reap() {
            guard let p = out.removeValue(forKey: c.tag) else { continue }
            complete(p, result: c.result)
        }
        reaping = false
        // Entries the kernel did not take on an earlier try go now.
        submitPending()
        let d = done
        done.removeAll(keepingCapacity: true)
        return d
    }

    /// Returns at once when results wait or nothing is out; otherwise blocks in
    /// io_uring_enter until the kernel completes one (every operation on the ring is a
    /// transfer or fdatasync of the image, which ends), whatever `milliseconds` says.
    public func waitForDone(milliseconds: Int) {
        guard done.isEmpty, !out.isEmpty else { return }
        ring.waitForCompletion()
    }

    // MARK: -

    private func enqueue(_ p: Pending) {
        let asIs = p.flush || image.takesAsIs(p.iov, count: p.count, offset: p.offset, total: p.length)
        guard asIs, out.count < ring.completionEntries else { serveInline(p); return }
        let tag = nextTag
        nextTag &+= 1
        let op: IOUring.Operation = p.flush ? .fdatasync : (p.write ? .writev : .readv)
        guard ring.queue(op, iov: p.iov, count: p.count, offset: p.offset, tag: tag) else { serveInline(p); return }
        out[tag] = p
    }

    /// The synchronous path: the image's own readv/writev (bounce buffer included) or flush.
    private func serveInline(_ p: Pending) {
        servedInline &+= 1
        let ok: Bool
        if p.flush { ok = image.flush() }
        else if p.write { ok = image.writev(p.iov, count: p.count, offset: p.offset, total: p.length) }
        else { ok = image.readv(p.iov, count: p.count, offset: p.offset, total: p.length) }
        finish(p, ok: ok)
    }

    private func complete(_ p: Pending, result: Int32) {
        if p.flush { finish(p, ok: result == 0); return }
        guard result > 0 else { finish(p, ok: result == 0 && p.length == 0); return }
        let moved = Int(result)
        if moved >= p.length { finish(p, ok: moved == p.length); return }
        // Short: the rest with preadv/pwritev from where the kernel stopped.
        var iov = p.iov, count = p.count
        BlockImage.advance(&iov, &count, by: moved)
        let rest = p.length - moved, at = p.offset + UInt64(moved)
        finish(p, ok: p.write ? image.writev(iov, count: count, offset: at, total: rest)
                              : image.readv(iov, count: count, offset: at, total: rest))
    }

    private func finish(_ p: Pending, ok: Bool) {
        let status = ok ? VirtioBlk.sOK : VirtioBlk.sIOErr
        let written: UInt32 = ok && !p.write && !p.flush ? UInt32(p.length) : 0
        finished(p.job, .success(p.request.finish(status: status, written: written)))
    }

    private func finished(_ job: OffloadJob, _ result: Result<UInt32, VirtioError>) {
        let wake = done.isEmpty && !reaping
        done.append(OffloadDone(job, result))
        if wake {
            // The loop reads the eventfd before it takes results, so one write covers them all.
            var one: UInt64 = 1
            _ = write(doneFd, &one, 8)
        }
    }
}

