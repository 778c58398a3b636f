// Process supervision helpers for xend (pidfd), kept apart from CLinux.h.
#pragma once
#include <sys/syscall.h>
#include <unistd.h>

/// pidfd_open(2): a file descriptor that becomes readable when `pid` exits; -1 and errno on failure.
static inline int clinux_pidfd_open(int pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    return (int)syscall(434, pid, 0);
#endif
}
