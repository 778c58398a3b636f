// Sandbox helpers (used by Sources/Sandbox only): what Swift cannot do safely or at all —
// unshare/close_range wrappers, an async-signal-safe SIGSYS reporter, and the reaper that
// stays behind when a service enters a new PID namespace. Every function is `clinux_`.
#ifndef CLINUX_SANDBOX_H
#define CLINUX_SANDBOX_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

// clone(2)/unshare(2) flags. <sched.h> hides them unless _GNU_SOURCE, which the Swift
// importer does not define; values from <linux/sched.h>.
static const int CLINUX_CLONE_THREAD = 0x00010000;
static const int CLINUX_CLONE_NEWNS = 0x00020000;
static const int CLINUX_CLONE_NEWCGROUP = 0x02000000;
static const int CLINUX_CLONE_NEWUTS = 0x04000000;
static const int CLINUX_CLONE_NEWIPC = 0x08000000;
static const int CLINUX_CLONE_NEWUSER = 0x10000000;
static const int CLINUX_CLONE_NEWPID = 0x20000000;
static const int CLINUX_CLONE_NEWNET = 0x40000000;

/// unshare(2). Returns 0 or -1 with errno.
int clinux_unshare(int flags);
/// close_range(2) (Linux 5.9): closes descriptors first...last inclusive. 0 or -1/errno.
int clinux_close_range(unsigned int first, unsigned int last, unsigned int flags);

/// Installs the SIGSYS reporter for seccomp SECCOMP_RET_TRAP. `prefix` (e.g.
/// "sandbox: blkback: ") and the syscall-name table (`names[nr]`, NULL for unknown numbers,
/// `count` entries) are copied into one buffer now, so the handler only reads memory and
/// calls write(2). On a trapped syscall the handler writes
/// "<prefix>blocked syscall <name> (<nr>)\n" to fd 2 and issues syscall number `die_nr`,
/// which the filter must trap too: SIGSYS being blocked inside its handler, the kernel
/// then forces SIGSYS with the default action, so the process dies by SIGSYS (this works even for PID 1 of a
/// namespace, where a self-sent signal would be ignored). Returns 0 or -1/errno.
int clinux_sigsys_install(const char *prefix, const char *const *names, unsigned int count,
                          long die_nr);

/// Forks for a new PID namespace (after unshare(CLONE_NEWPID)). In the child (PID 1 of the
/// new namespace) returns 0 after setting PR_SET_PDEATHSIG=SIGKILL. In the parent returns
/// the child's pid and stores in `*parent_fd` a descriptor the parent must keep open until
/// it exits (the child's proof that the parent was alive when PDEATHSIG was set);
/// -1/errno on failure.
pid_t clinux_sandbox_fork(int *parent_fd);
/// Parent side of clinux_sandbox_fork: forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1,
/// SIGUSR2 to `child`, waits for it, then ends the same way: _exit with its exit status, or
/// death by the same signal (handler reset to SIG_DFL). Never returns.
void clinux_sandbox_reap(pid_t child) __attribute__((noreturn));

#endif
