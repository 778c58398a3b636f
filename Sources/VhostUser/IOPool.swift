// I/O threads that serve large requests off the event-loop thread.
import CLinux
import GuestMemory
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// I/O threads for large requests: jobs in, results out, an eventfd to wake the event loop.
/// Each thread serves a whole request through ``VhostUserDevice/handle(_:queue:memory:)``.
final class IOPool: VhostUserOffload, @unchecked Sendable {
    typealias Job = OffloadJob
    typealias Done = OffloadDone
    let device: any VhostUserDevice
    let doneFd: Int32
    private var lock = pthread_mutex_t()
    private var cond = pthread_cond_t()
    /// Signalled when a result is added (``waitForDone(milliseconds:)``).
    private var doneCond = pthread_cond_t()
    private var jobs: [Job] = []
    private var done: [Done] = []

    init(device: any VhostUserDevice, threads: Int) throws(VhostUserError) {
        self.device = device
        doneFd = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
        if doneFd < 0 { throw .errno("eventfd") }
        pthread_mutex_init(&lock, nil)
        pthread_cond_init(&cond, nil)
        pthread_cond_init(&doneCond, nil)
        for _ in 0..<threads {
            let me = Unmanaged.passUnretained(self)   // the pool lives as long as its back-end's process
            _ = me.retain()
            // 1 MiB stacks: a request needs little, and up to 64 threads stay well inside
            // blkback's `rlimit data` (the default 8 MiB stack each would not).
            spawnThread(stackBytes: 1 << 20) { me.takeUnretainedValue().work() }
        }
    }

    func submit(_ j: Job) {
        pthread_mutex_lock(&lock)
        jobs.append(j)
        pthread_cond_signal(&cond)
        pthread_mutex_unlock(&lock)
    }

    func takeDone() -> [Done] {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        let d = done
        done.removeAll(keepingCapacity: true)
        return d
    }

    func waitForDone(milliseconds: Int) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)   // pthread_cond_timedwait's default clock
        let ns = Int(now.tv_nsec) + (milliseconds % 1000) * 1_000_000
        var until = timespec(tv_sec: now.tv_sec + milliseconds / 1000 + ns / 1_000_000_000, tv_nsec: ns % 1_000_000_000)
        pthread_mutex_lock(&lock)
        while done.isEmpty {
            if pthread_cond_timedwait(&doneCond, &lock, &until) == ETIMEDOUT { break }
        }
        pthread_mutex_unlock(&lock)
    }

    private func work() {
        while true {
            pthread_mutex_lock(&lock)
            while jobs.isEmpty { pthread_cond_wait(&cond, &lock) }
            let j = jobs.removeFirst()
            pthread_mutex_unlock(&lock)
            let r: Result<UInt32, VirtioError>
            do { r = .success(try device.handle(j.chain, queue: j.queue, memory: j.memory)) }
            catch { r = .failure(error) }
            pthread_mutex_lock(&lock)
            // Only the first result of a batch wakes the event loop: while `done` holds
            // results the loop has not taken, a wake-up is already pending (the loop reads
            // the eventfd before it takes them), so small direct requests cost one write
            // per batch, not one each.
            let wake = done.isEmpty
            done.append(Done(j, r))
            pthread_cond_broadcast(&doneCond)
            pthread_mutex_unlock(&lock)
            if wake {
                var one: UInt64 = 1
                _ = write(doneFd, &one, 8)
            }
        }
    }
}
