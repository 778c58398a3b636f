// io_uring for blkback's submission path (Linux io_uring_setup(2), io_uring_enter(2),
// io_uring_register(2); include/uapi/linux/io_uring.h). The rings are shared memory the
// kernel reads and writes: their head and tail indices need acquire/release ordering,
// which is written here in C with the compiler's atomics rather than in Swift.
#ifndef CLINUX_URING_H
#define CLINUX_URING_H

#include <stdint.h>
#include <stddef.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <linux/io_uring.h>

/// One io_uring: its descriptor and the three shared mappings (submission ring, completion
/// ring, submission entries). Filled by clinux_uring_init; used from one thread.
struct clinux_uring {
    int fd;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map, *sqe_map;
    size_t sq_map_size, cq_map_size, sqe_map_size;
    unsigned sq_entries, cq_entries;
    /// Entries queued since the last successful io_uring_enter.
    unsigned pending;
};

/// Sets up a ring of `sq_entries` submission and `cq_entries` completion entries that can
/// only ever do IORING_OP_READV, IORING_OP_WRITEV and IORING_OP_FSYNC on `file`:
/// created disabled (IORING_SETUP_R_DISABLED), `file` registered as fixed file 0, `eventfd`
/// registered for completions, then restricted (IORING_REGISTER_RESTRICTIONS: those three
/// opcodes, IOSQE_FIXED_FILE required, no registration op) and enabled. A process holding
/// the ring thus cannot reach any other file through it, whatever its seccomp filter.
/// Returns 0, or -errno of the step that failed (nothing is left open then).
int clinux_uring_init(struct clinux_uring *r, unsigned sq_entries, unsigned cq_entries, int file, int eventfd);

/// Queues one operation on fixed file 0: `opcode` IORING_OP_READV or IORING_OP_WRITEV of
/// the `count` iovecs at `iov` (which must stay valid until its completion) at byte
/// `offset`, or IORING_OP_FSYNC with IORING_FSYNC_DATASYNC. Returns 0, or -EBUSY when the
/// submission ring is full (submit first).
int clinux_uring_queue(struct clinux_uring *r, uint8_t opcode, const struct iovec *iov, unsigned count,
                       uint64_t offset, uint64_t user_data);

/// Hands every queued entry to the kernel (io_uring_enter, retried on EINTR). Returns the
/// number still pending (0 normally), or -errno.
int clinux_uring_submit(struct clinux_uring *r);

/// Waits (io_uring_enter with IORING_ENTER_GETEVENTS) until at least one completion is in
/// the ring, submitting what is queued. Returns 0 or -errno (EINTR included).
int clinux_uring_wait(struct clinux_uring *r);

/// Takes one completion if there is one: returns 1 and fills `user_data` and `res` (bytes
/// moved, or -errno), or 0.
int clinux_uring_reap(struct clinux_uring *r, uint64_t *user_data, int32_t *res);

/// Unmaps the rings and closes the descriptor.
void clinux_uring_exit(struct clinux_uring *r);

/// fcntl(fd, cmd, lock) for the record-lock commands (F_OFD_SETLK, ...): fcntl is variadic.
static inline int clinux_fcntl_lock(int fd, int cmd, struct flock *lock) { return fcntl(fd, cmd, lock); }
/// F_OFD_SETLK (Linux 3.15; <fcntl.h> shows it only under _GNU_SOURCE).
static const int CLINUX_F_OFD_SETLK = 37;

/// IORING_OP_* values the Swift side names.
static const uint8_t CLINUX_IORING_OP_READV = IORING_OP_READV;
static const uint8_t CLINUX_IORING_OP_WRITEV = IORING_OP_WRITEV;
static const uint8_t CLINUX_IORING_OP_FSYNC = IORING_OP_FSYNC;

#endif
