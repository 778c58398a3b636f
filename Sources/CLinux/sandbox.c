// See include/clinux_sandbox.h.
#include "CLinux.h"
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>

int clinux_unshare(int flags) { return unshare(flags); }

int clinux_close_range(unsigned int first, unsigned int last, unsigned int flags) {
    return (int)syscall(SYS_close_range, first, last, flags);
}

// MARK: SIGSYS reporter. Everything the handler touches is laid out here at install time.
static char *sigsys_prefix;
static size_t sigsys_prefix_len;
static const char **sigsys_names;
static unsigned int sigsys_count;
static long sigsys_die_nr = -1;

static size_t u_to_dec(char *out, unsigned long v) {
    char tmp[24];
    size_t n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v && n < sizeof(tmp));
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

static void sigsys_handler(int sig, siginfo_t *info, void *uctx) {
    (void)sig; (void)uctx;
    int saved = errno;
    char line[512];
    size_t n = 0;
    int nr = info->si_syscall;
    const char *name = (nr >= 0 && (unsigned)nr < sigsys_count) ? sigsys_names[nr] : NULL;
    if (!name) name = "unknown";
    size_t pl = sigsys_prefix_len < 200 ? sigsys_prefix_len : 200;
    memcpy(line + n, sigsys_prefix, pl); n += pl;
    static const char blocked[] = "blocked syscall ";
    memcpy(line + n, blocked, sizeof(blocked) - 1); n += sizeof(blocked) - 1;
    size_t nl = strnlen(name, 64);
    memcpy(line + n, name, nl); n += nl;
    line[n++] = ' '; line[n++] = '(';
    if (nr < 0) { line[n++] = '-'; n += u_to_dec(line + n, (unsigned long)(-(long)nr)); }
    else n += u_to_dec(line + n, (unsigned long)nr);
    line[n++] = ')'; line[n++] = '\n';
    ssize_t w = write(2, line, n);
    (void)w;
    // Die by SIGSYS: SIGSYS is blocked while this handler runs, so trapping die_nr makes
    // the kernel force SIGSYS with its default action (force_sig_seccomp resets a blocked
    // handler to SIG_DFL; this also holds for the init of a PID namespace, which would
    // ignore a self-sent signal). No sigaction here: manifests may deny it for SIGSYS.
    if (sigsys_die_nr >= 0) syscall(sigsys_die_nr, 0, 0, 0, 0, 0, 0);
    // Not reached with a correct filter; never return into the denied call.
    errno = saved;
    _exit(128 + SIGSYS);
}

int clinux_sigsys_install(const char *prefix, const char *const *names, unsigned int count,
                          long die_nr) {
    size_t plen = strlen(prefix);
    size_t total = plen + 1;
    for (unsigned int i = 0; i < count; i++) if (names[i]) total += strlen(names[i]) + 1;
    char *buf = malloc(total);
    const char **table = calloc(count ? count : 1, sizeof(char *));
    if (!buf || !table) { free(buf); free(table); errno = ENOMEM; return -1; }
    memcpy(buf, prefix, plen + 1);
    char *p = buf + plen + 1;
    for (unsigned int i = 0; i < count; i++) {
        if (!names[i]) continue;
        size_t l = strlen(names[i]);
        memcpy(p, names[i], l + 1);
        table[i] = p;
        p += l + 1;
    }
    sigsys_prefix = buf;
    sigsys_prefix_len = plen;
    sigsys_names = table;
    sigsys_count = count;
    sigsys_die_nr = die_nr;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = sigsys_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSYS, &sa, NULL);
}

// MARK: PID-namespace reaper.
static volatile pid_t reap_child = -1;

static void forward_signal(int sig) {
    if (reap_child > 0) kill(reap_child, sig);
}

pid_t clinux_sandbox_fork(int *parent_fd) {
    // The child cannot use getppid() to notice that the parent died before PDEATHSIG was
    // set (the parent is outside its PID namespace, so getppid() is 0 either way); it
    // checks a pipe whose write end only the parent holds instead.
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) { close(p[0]); close(p[1]); return -1; }
    if (pid > 0) { close(p[0]); *parent_fd = p[1]; return pid; }
    close(p[1]);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    struct pollfd pfd = { .fd = p[0], .events = POLLIN };
    if (poll(&pfd, 1, 0) != 0) _exit(128 + SIGKILL);   // POLLHUP: the parent is gone
    close(p[0]);
    *parent_fd = -1;
    return 0;
}

void clinux_sandbox_reap(pid_t child) {
    reap_child = child;
    static const int forwarded[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 };
    for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = forward_signal;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(forwarded[i], &sa, NULL);
    }
    /* The service may have had these blocked (a signalfd, or a mask inherited from a
     * Dispatch thread): the reaper must receive them to forward them. Only the reaper's
     * own mask changes; the child keeps what it had. */
    sigset_t fwd;
    sigemptyset(&fwd);
    for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++) sigaddset(&fwd, forwarded[i]);
    sigprocmask(SIG_UNBLOCK, &fwd, NULL);
    int status = 0;
    for (;;) {
        pid_t r = waitpid(child, &status, 0);
        if (r == child) break;
        if (r < 0 && errno != EINTR) _exit(127);
    }
    if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
    int sig = WTERMSIG(status);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    kill(getpid(), sig);
    _exit(128 + sig);
}
