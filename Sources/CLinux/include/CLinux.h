// C shim for what Swift cannot import directly: ioctl request numbers built by
// _IOW()-style macros, variadic calls (ioctl, prctl, syscall), and SCM_RIGHTS cmsg
// handling. Every function is prefixed `clinux_`.
#ifndef CLINUX_H
#define CLINUX_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/signalfd.h>
#include <sys/random.h>
#include <spawn.h>
#include <linux/kvm.h>
#include <linux/fs.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <signal.h>
#include <termios.h>
#include <poll.h>
#include <sched.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>

// MARK: KVM ioctl numbers (Documentation/virt/kvm/api.rst)
static const unsigned long CLINUX_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CLINUX_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CLINUX_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CLINUX_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CLINUX_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CLINUX_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CLINUX_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CLINUX_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CLINUX_KVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CLINUX_KVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CLINUX_KVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CLINUX_KVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long CLINUX_KVM_IRQFD = KVM_IRQFD;
static const unsigned long CLINUX_KVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long CLINUX_KVM_SET_GSI_ROUTING = KVM_SET_GSI_ROUTING;
static const unsigned long CLINUX_KVM_SIGNAL_MSI = KVM_SIGNAL_MSI;
static const unsigned long CLINUX_KVM_RUN = KVM_RUN;
static const unsigned long CLINUX_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CLINUX_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CLINUX_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CLINUX_KVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CLINUX_KVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CLINUX_KVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CLINUX_KVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CLINUX_KVM_SET_FPU = KVM_SET_FPU;
static const unsigned long CLINUX_KVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long CLINUX_KVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long CLINUX_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CLINUX_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CLINUX_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long CLINUX_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long CLINUX_KVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
static const unsigned long CLINUX_KVM_ENABLE_CAP = KVM_ENABLE_CAP;
static const unsigned long CLINUX_KVM_SET_CLOCK = KVM_SET_CLOCK;
static const unsigned long CLINUX_KVM_GET_CLOCK = KVM_GET_CLOCK;
// State save and restore (api.rst §4: fpu, xsave, xcrs, irqchip, pit2, msr index list).
static const unsigned long CLINUX_KVM_GET_FPU = KVM_GET_FPU;
static const unsigned long CLINUX_KVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long CLINUX_KVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long CLINUX_KVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long CLINUX_KVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long CLINUX_KVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long CLINUX_KVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long CLINUX_KVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long CLINUX_KVM_SET_PIT2 = KVM_SET_PIT2;
static const unsigned long CLINUX_KVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;
static const unsigned long CLINUX_KVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long CLINUX_KVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;

// Exit reasons as unsigned values matching kvm_run.exit_reason.
static const uint32_t CLINUX_KVM_EXIT_UNKNOWN = KVM_EXIT_UNKNOWN;
static const uint32_t CLINUX_KVM_EXIT_EXCEPTION = KVM_EXIT_EXCEPTION;
static const uint32_t CLINUX_KVM_EXIT_IO = KVM_EXIT_IO;
static const uint32_t CLINUX_KVM_EXIT_HLT = KVM_EXIT_HLT;
static const uint32_t CLINUX_KVM_EXIT_MMIO = KVM_EXIT_MMIO;
static const uint32_t CLINUX_KVM_EXIT_SHUTDOWN = KVM_EXIT_SHUTDOWN;
static const uint32_t CLINUX_KVM_EXIT_FAIL_ENTRY = KVM_EXIT_FAIL_ENTRY;
static const uint32_t CLINUX_KVM_EXIT_INTR = KVM_EXIT_INTR;
static const uint32_t CLINUX_KVM_EXIT_INTERNAL_ERROR = KVM_EXIT_INTERNAL_ERROR;
static const uint32_t CLINUX_KVM_EXIT_SYSTEM_EVENT = KVM_EXIT_SYSTEM_EVENT;

static const uint32_t CLINUX_KVM_IOEVENTFD_FLAG_DATAMATCH = 1u << 0;
static const uint32_t CLINUX_KVM_IOEVENTFD_FLAG_PIO = 1u << 1;
static const uint32_t CLINUX_KVM_IOEVENTFD_FLAG_DEASSIGN = 1u << 2;
static const uint32_t CLINUX_KVM_IRQFD_FLAG_DEASSIGN = 1u << 0;
static const uint32_t CLINUX_KVM_IRQFD_FLAG_RESAMPLE = 1u << 1;

// MARK: other ioctl numbers
static const unsigned long CLINUX_BLKGETSIZE64 = BLKGETSIZE64;
static const unsigned long CLINUX_BLKSSZGET = BLKSSZGET;
static const unsigned long CLINUX_BLKDISCARD = BLKDISCARD;
static const unsigned long CLINUX_TUNSETIFF = TUNSETIFF;
static const unsigned long CLINUX_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
static const unsigned long CLINUX_TUNSETOFFLOAD = TUNSETOFFLOAD;

// memfd and file-seal constants (glibc hides them without _GNU_SOURCE, which the Swift
// importer does not define; values from <linux/memfd.h> and <linux/fcntl.h>).
static const unsigned int CLINUX_MFD_CLOEXEC = 0x0001U;
static const unsigned int CLINUX_MFD_ALLOW_SEALING = 0x0002U;
static const int CLINUX_F_ADD_SEALS = 1024 + 9;
static const int CLINUX_F_SEAL_SHRINK = 0x0002;
static const int CLINUX_F_SEAL_GROW = 0x0004;

// MARK: variadic wrappers
static inline int clinux_ioctl_ptr(int fd, unsigned long req, void *arg) { return ioctl(fd, req, arg); }
static inline int clinux_ioctl_int(int fd, unsigned long req, unsigned long arg) { return ioctl(fd, req, arg); }
static inline int clinux_prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5) {
    return prctl(option, a2, a3, a4, a5);
}
static inline int clinux_fcntl_int(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }
static inline int clinux_open(const char *path, int flags, mode_t mode) { return open(path, flags, mode); }
int clinux_memfd_create(const char *name, unsigned int flags);
/// prlimit(pid, RLIMIT_MEMLOCK) raised to `bytes` (soft and hard) when below; 0 or -1 with
/// errno. (glibc hides prlimit without _GNU_SOURCE.)
int clinux_raise_memlock(pid_t pid, uint64_t bytes);
/// accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK), retrying EINTR.
int clinux_accept_nonblock(int fd);
/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34): the child closes every
/// descriptor >= `from`, so nothing of ours leaks into it.
int clinux_spawn_closefrom(posix_spawn_file_actions_t *fa, int from);
int clinux_pivot_root(const char *new_root, const char *put_old);
long clinux_gettid(void);
/// sched_setaffinity(2) of thread `tid` (0: the caller) to the CPUs whose bits are set in
/// `mask` (`words` 64-bit words, CPU n is bit n%64 of word n/64). Returns 0 or -1 with errno.
int clinux_set_affinity(int tid, const unsigned long long *mask, int words);
/// sched_getaffinity(2) of thread `tid` into `mask` (`words` 64-bit words, zeroed first).
/// Returns 0 or -1 with errno.
int clinux_get_affinity(int tid, unsigned long long *mask, int words);

// MARK: SCM_RIGHTS
/// Sends `len` bytes with `nfds` file descriptors attached (SCM_RIGHTS). Returns sendmsg's result.
ssize_t clinux_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
/// Receives up to `len` bytes and up to `maxfds` descriptors (stored in `fds`, count in `*nfds`).
/// Received descriptors are close-on-exec. Returns recvmsg's result.
ssize_t clinux_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds);

// MARK: CRC-32C with the SSE4.2 instruction
/// Whether this CPU has SSE4.2's CRC32 instruction (CRC-32C, Castagnoli).
int clinux_crc32c_hardware(void);
/// Feeds `n` bytes to a running CRC-32C register `crc` (pre-inverted state, no final XOR)
/// with the CRC32 instruction; only when clinux_crc32c_hardware() says so.
uint32_t clinux_crc32c_update(uint32_t crc, const void *p, size_t n);

// MARK: kvm_cpuid2 / kvm_msrs with flexible arrays
/// Allocates a kvm_cpuid2 with room for `n` entries (nent set to n). Free with free().
struct kvm_cpuid2 *clinux_cpuid2_alloc(unsigned int n);
struct kvm_cpuid_entry2 *clinux_cpuid2_entry(struct kvm_cpuid2 *c, unsigned int i);
struct kvm_msrs *clinux_msrs_alloc(unsigned int n);
struct kvm_msr_entry *clinux_msrs_entry(struct kvm_msrs *m, unsigned int i);
/// kvm_irq_routing with room for `n` entries.
struct kvm_irq_routing *clinux_irq_routing_alloc(unsigned int n);
struct kvm_irq_routing_entry *clinux_irq_routing_entry(struct kvm_irq_routing *r, unsigned int i);

/// Pointer to the data bytes of a KVM_EXIT_IO exit inside the kvm_run mapping.
static inline uint8_t *clinux_kvm_run_io_data(struct kvm_run *run) {
    return (uint8_t *)run + run->io.data_offset;
}

/// Pointer to the 8 data bytes of a KVM_EXIT_MMIO exit inside the kvm_run mapping (Swift
/// cannot take a stable address of a field inside an imported union).
static inline uint8_t *clinux_kvm_run_mmio_data(struct kvm_run *run) { return run->mmio.data; }

/// Thread CPU time in nanoseconds for the calling thread.
uint64_t clinux_thread_cpu_ns(void);
/// pthread_kill wrapper taking an opaque pthread_t value.
int clinux_pthread_kill(unsigned long thread, int sig);
unsigned long clinux_pthread_self(void);
/// pthread_setname_np wrapper (names are cut to 15 bytes by the caller).
int clinux_pthread_setname(unsigned long thread, const char *name);
/// Installs a do-nothing handler for `sig` without SA_RESTART, so a signal sent to a
/// vCPU thread makes KVM_RUN return EINTR (the pause/stop kick).
int clinux_install_kick_handler(int sig);
int clinux_unblock_signal(int sig);
int clinux_block_signal(int sig);
/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (threads created later inherit
/// it) and returns a non-blocking, close-on-exec signalfd that reports them.
int clinux_termination_signalfd(void);
/// CPU time consumed so far by another thread, nanoseconds (0 on failure).
uint64_t clinux_thread_cpu_ns_of(unsigned long thread);
/// fcntl(fd, F_SETPIPE_SZ, bytes) (fcntl(2)): a pipe's capacity. Returns the capacity the
/// kernel set (bytes, rounded up to a power-of-two number of pages) or -1 with errno.
int clinux_set_pipe_size(int fd, int bytes);
/// fcntl(fd, F_GETPIPE_SZ): a pipe's capacity in bytes, or -1 with errno.
int clinux_pipe_size(int fd);
/// sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) (sync_file_range(2)): starts
/// writing back that byte range of a file without waiting for it. A hint for a later
/// fdatasync, not a durability guarantee. Returns 0 or -1 with errno.
int clinux_start_writeback(int fd, int64_t offset, int64_t nbytes);

#include "clinux_sandbox.h"
#include "clinux_uring.h"

#endif
