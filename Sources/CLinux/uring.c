// io_uring set-up, submission and completion (clinux_uring.h). Ring protocol as in
// io_uring_setup(2): the application owns the submission tail and the completion head,
// the kernel the other two; each side publishes its index with a release store and reads
// the other's with an acquire load.
#include "CLinux.h"
#include "clinux_uring.h"
#include <string.h>
#include <sys/syscall.h>

static int ring_setup(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int ring_register(int fd, unsigned op, const void *arg, unsigned n) {
    return (int)syscall(__NR_io_uring_register, fd, op, arg, n);
}

static int ring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static void unmap_all(struct clinux_uring *r) {
    if (r->sqe_map && r->sqe_map != MAP_FAILED) munmap(r->sqe_map, r->sqe_map_size);
    if (r->cq_map && r->cq_map != MAP_FAILED) munmap(r->cq_map, r->cq_map_size);
    if (r->sq_map && r->sq_map != MAP_FAILED) munmap(r->sq_map, r->sq_map_size);
    r->sqe_map = r->cq_map = r->sq_map = NULL;
}

int clinux_uring_init(struct clinux_uring *r, unsigned sq_entries, unsigned cq_entries, int file, int eventfd) {
    memset(r, 0, sizeof *r);
    r->fd = -1;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_R_DISABLED | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
    p.cq_entries = cq_entries;
    int fd = ring_setup(sq_entries, &p);
    if (fd < 0) return -errno;
    r->fd = fd;
    int err = 0;

    r->sq_map_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_map_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    r->sqe_map_size = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sq_map = mmap(NULL, r->sq_map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    r->cq_map = mmap(NULL, r->cq_map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
    r->sqe_map = mmap(NULL, r->sqe_map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (r->sq_map == MAP_FAILED || r->cq_map == MAP_FAILED || r->sqe_map == MAP_FAILED) { err = -errno; goto fail; }

    char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    r->sqes = r->sqe_map;
    r->sq_entries = p.sq_entries;
    r->cq_entries = p.cq_entries;

    int files[1] = { file };
    if (ring_register(fd, IORING_REGISTER_FILES, files, 1) < 0) { err = -errno; goto fail; }
    if (ring_register(fd, IORING_REGISTER_EVENTFD, &eventfd, 1) < 0) { err = -errno; goto fail; }
    struct io_uring_restriction res[5];
    memset(res, 0, sizeof res);
    res[0].opcode = IORING_RESTRICTION_SQE_OP; res[0].sqe_op = IORING_OP_READV;
    res[1].opcode = IORING_RESTRICTION_SQE_OP; res[1].sqe_op = IORING_OP_WRITEV;
    res[2].opcode = IORING_RESTRICTION_SQE_OP; res[2].sqe_op = IORING_OP_FSYNC;
    res[3].opcode = IORING_RESTRICTION_SQE_FLAGS_REQUIRED; res[3].sqe_flags = IOSQE_FIXED_FILE;
    res[4].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED; res[4].sqe_flags = IOSQE_FIXED_FILE;
    if (ring_register(fd, IORING_REGISTER_RESTRICTIONS, res, 5) < 0) { err = -errno; goto fail; }
    if (ring_register(fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0) { err = -errno; goto fail; }
    return 0;
fail:
    unmap_all(r);
    close(fd);
    r->fd = -1;
    return err;
}

int clinux_uring_queue(struct clinux_uring *r, uint8_t opcode, const struct iovec *iov, unsigned count,
                       uint64_t offset, uint64_t user_data) {
    unsigned tail = *r->sq_tail;   // ours: nobody else writes it
    unsigned head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    if (tail - head >= r->sq_entries) return -EBUSY;
    unsigned i = tail & *r->sq_mask;
    struct io_uring_sqe *e = &r->sqes[i];
    memset(e, 0, sizeof *e);
    e->opcode = opcode;
    e->flags = IOSQE_FIXED_FILE;
    e->fd = 0;                     // fixed file 0: the registered image
    e->user_data = user_data;
    if (opcode == IORING_OP_FSYNC) {
        e->fsync_flags = IORING_FSYNC_DATASYNC;
    } else {
        e->addr = (uint64_t)(uintptr_t)iov;
        e->len = count;
        e->off = offset;
    }
    r->sq_array[i] = i;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    r->pending++;
    return 0;
}

int clinux_uring_submit(struct clinux_uring *r) {
    while (r->pending > 0) {
        int n = ring_enter(r->fd, r->pending, 0, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (n == 0) break;
        r->pending -= (unsigned)n;
    }
    return (int)r->pending;
}

int clinux_uring_wait(struct clinux_uring *r) {
    int n = ring_enter(r->fd, r->pending, 1, IORING_ENTER_GETEVENTS);
    if (n < 0) return -errno;
    r->pending -= (unsigned)n;
    return 0;
}

int clinux_uring_reap(struct clinux_uring *r, uint64_t *user_data, int32_t *res) {
    unsigned head = *r->cq_head;   // ours
    unsigned tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    if (head == tail) return 0;
    struct io_uring_cqe *c = &r->cqes[head & *r->cq_mask];
    *user_data = c->user_data;
    *res = c->res;
    __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
    return 1;
}

void clinux_uring_exit(struct clinux_uring *r) {
    unmap_all(r);
    if (r->fd >= 0) close(r->fd);
    r->fd = -1;
}
