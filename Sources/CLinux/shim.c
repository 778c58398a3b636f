#include "CLinux.h"
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <sys/syscall.h>

#include <fcntl.h>

int clinux_set_pipe_size(int fd, int bytes) { return fcntl(fd, F_SETPIPE_SZ, bytes); }
int clinux_pipe_size(int fd) { return fcntl(fd, F_GETPIPE_SZ); }
int clinux_start_writeback(int fd, int64_t offset, int64_t nbytes) {
    return sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE);
}

int clinux_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }
int clinux_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}
long clinux_gettid(void) { return syscall(SYS_gettid); }
int clinux_set_affinity(int tid, const unsigned long long *mask, int words) {
    return (int)syscall(SYS_sched_setaffinity, tid, (size_t)words * 8, mask);
}
int clinux_get_affinity(int tid, unsigned long long *mask, int words) {
    memset(mask, 0, (size_t)words * 8);
    long r = syscall(SYS_sched_getaffinity, tid, (size_t)words * 8, mask);
    return r < 0 ? -1 : 0;
}

ssize_t clinux_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    char control[CMSG_SPACE(sizeof(int) * 16)];
    if (nfds > 16) { errno = EINVAL; return -1; }
    if (nfds > 0) {
        memset(control, 0, sizeof(control));
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t r;
    do { r = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (r < 0 && errno == EINTR);
    return r;
}

ssize_t clinux_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    char control[CMSG_SPACE(sizeof(int) * 16)];
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
    *nfds = 0;
    ssize_t r;
    do { r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); } while (r < 0 && errno == EINTR);
    if (r < 0) return r;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *p = (int *)CMSG_DATA(c);
            for (int i = 0; i < n; i++) {
                if (*nfds < maxfds) fds[(*nfds)++] = p[i];
                else close(p[i]);   // more than the caller can take: never leak
            }
        }
    }
    return r;
}

int clinux_crc32c_hardware(void) { return __builtin_cpu_supports("sse4.2"); }

// CRC-32C with the CRC32 instruction. One instruction's result feeds the next, so a single
// stream runs at the instruction's latency (3 cycles per 8 bytes); three independent streams
// over three adjacent lanes keep it busy every cycle, and the lanes' registers are joined by
// "append LANE zero bytes", a linear map on the register applied through four 256-entry
// tables built once (the register after A then B is shift_len(B)(reg after A) ^ reg(0, B)).
#define CRC32C_POLY 0x82F63B78u
#define CRC32C_LANE 8192u
static uint32_t crc32c_lane_shift[4][256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

// An operator on the 32-bit register: column i is the image of bit i.
static uint32_t crc32c_apply(const uint32_t *op, uint32_t v) {
    uint32_t out = 0;
    for (int i = 0; v != 0; i++, v >>= 1) if (v & 1) out ^= op[i];
    return out;
}
// out = a after b (out may not alias a or b).
static void crc32c_compose(uint32_t *out, const uint32_t *a, const uint32_t *b) {
    for (int i = 0; i < 32; i++) out[i] = crc32c_apply(a, b[i]);
}

static void crc32c_init_tables(void) {
    uint32_t bit[32], byte[32], tmp[32], result[32], base[32];
    // One zero bit: reg >> 1, folding in the polynomial when the bit shifted out was set.
    bit[0] = CRC32C_POLY;
    for (int i = 1; i < 32; i++) bit[i] = 1u << (i - 1);
    // One zero byte: eight zero bits.
    memcpy(byte, bit, sizeof byte);
    for (int k = 1; k < 8; k++) { crc32c_compose(tmp, bit, byte); memcpy(byte, tmp, sizeof byte); }
    // LANE zero bytes, by squaring.
    for (int i = 0; i < 32; i++) result[i] = 1u << i;
    memcpy(base, byte, sizeof base);
    for (uint32_t n = CRC32C_LANE; n != 0; n >>= 1) {
        if (n & 1) { crc32c_compose(tmp, base, result); memcpy(result, tmp, sizeof result); }
        crc32c_compose(tmp, base, base); memcpy(base, tmp, sizeof base);
    }
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++) crc32c_lane_shift[k][b] = crc32c_apply(result, b << (8 * k));
}

static inline uint32_t crc32c_shift_lane(uint32_t r) {
    return crc32c_lane_shift[0][r & 0xff] ^ crc32c_lane_shift[1][(r >> 8) & 0xff]
        ^ crc32c_lane_shift[2][(r >> 16) & 0xff] ^ crc32c_lane_shift[3][r >> 24];
}

__attribute__((target("sse4.2")))
uint32_t clinux_crc32c_update(uint32_t crc, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n > 0 && ((uintptr_t)p & 7) != 0) { crc = __builtin_ia32_crc32qi(crc, *p++); n--; }
    if (n >= 3 * CRC32C_LANE) {
        pthread_once(&crc32c_once, crc32c_init_tables);
        while (n >= 3 * CRC32C_LANE) {
            uint64_t a = crc, b = 0, c = 0;
            const uint8_t *pb = p + CRC32C_LANE, *pc = p + 2 * CRC32C_LANE;
            for (size_t i = 0; i < CRC32C_LANE; i += 8) {
                uint64_t wa, wb, wc;
                memcpy(&wa, p + i, 8); memcpy(&wb, pb + i, 8); memcpy(&wc, pc + i, 8);
                a = __builtin_ia32_crc32di(a, wa);
                b = __builtin_ia32_crc32di(b, wb);
                c = __builtin_ia32_crc32di(c, wc);
            }
            crc = crc32c_shift_lane(crc32c_shift_lane((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)c;
            p += 3 * CRC32C_LANE; n -= 3 * CRC32C_LANE;
        }
    }
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8; n -= 8;
    }
    crc = (uint32_t)c;
    while (n > 0) { crc = __builtin_ia32_crc32qi(crc, *p++); n--; }
    return crc;
}

struct kvm_cpuid2 *clinux_cpuid2_alloc(unsigned int n) {
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(struct kvm_cpuid_entry2));
    if (c) c->nent = n;
    return c;
}
struct kvm_cpuid_entry2 *clinux_cpuid2_entry(struct kvm_cpuid2 *c, unsigned int i) { return &c->entries[i]; }
struct kvm_msrs *clinux_msrs_alloc(unsigned int n) {
    struct kvm_msrs *m = calloc(1, sizeof(*m) + n * sizeof(struct kvm_msr_entry));
    if (m) m->nmsrs = n;
    return m;
}
struct kvm_msr_entry *clinux_msrs_entry(struct kvm_msrs *m, unsigned int i) { return &m->entries[i]; }
struct kvm_irq_routing *clinux_irq_routing_alloc(unsigned int n) {
    struct kvm_irq_routing *r = calloc(1, sizeof(*r) + n * sizeof(struct kvm_irq_routing_entry));
    if (r) r->nr = n;
    return r;
}
struct kvm_irq_routing_entry *clinux_irq_routing_entry(struct kvm_irq_routing *r, unsigned int i) { return &r->entries[i]; }

uint64_t clinux_thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
int clinux_pthread_kill(unsigned long thread, int sig) { return pthread_kill((pthread_t)thread, sig); }
unsigned long clinux_pthread_self(void) { return (unsigned long)pthread_self(); }
int clinux_pthread_setname(unsigned long thread, const char *name) { return pthread_setname_np((pthread_t)thread, name); }

static void clinux_kick_handler(int sig) { (void)sig; }
int clinux_install_kick_handler(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = clinux_kick_handler;   /* no SA_RESTART: KVM_RUN returns EINTR */
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}
int clinux_unblock_signal(int sig) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    return pthread_sigmask(SIG_UNBLOCK, &s, NULL);
}
int clinux_block_signal(int sig) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    return pthread_sigmask(SIG_BLOCK, &s, NULL);
}
uint64_t clinux_thread_cpu_ns_of(unsigned long thread) {
    clockid_t cid;
    struct timespec ts;
    if (pthread_getcpuclockid((pthread_t)thread, &cid) != 0) return 0;
    if (clock_gettime(cid, &ts) != 0) return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
int clinux_termination_signalfd(void) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGINT);
    sigaddset(&s, SIGHUP);
    if (pthread_sigmask(SIG_BLOCK, &s, NULL) != 0) return -1;
    return signalfd(-1, &s, SFD_NONBLOCK | SFD_CLOEXEC);
}
int clinux_accept_nonblock(int fd) {
    int r;
    do { r = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); } while (r < 0 && errno == EINTR);
    return r;
}
int clinux_spawn_closefrom(posix_spawn_file_actions_t *fa, int from) {
    return posix_spawn_file_actions_addclosefrom_np(fa, from);
}

int clinux_raise_memlock(pid_t pid, uint64_t bytes) {
    struct rlimit old;
    if (prlimit(pid, RLIMIT_MEMLOCK, NULL, &old) != 0) return -1;
    if (old.rlim_cur != RLIM_INFINITY && old.rlim_cur >= bytes && old.rlim_max >= bytes) return 0;
    if (old.rlim_cur == RLIM_INFINITY) return 0;
    struct rlimit raised = { bytes, old.rlim_max == RLIM_INFINITY || old.rlim_max > bytes ? old.rlim_max : bytes };
    return prlimit(pid, RLIMIT_MEMLOCK, &raised, NULL);
}
