#include "prog/workers.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"
#include "net/net.h"

typedef struct wslot {
    pid_t pid;           /* 0: not running */
    uint64_t started_ms; /* when it was last forked */
    uint64_t restart_ms; /* when to fork it again (0: not due) */
    uint32_t backoff_ms;
} wslot;

static int sig_pipe[2] = {-1, -1};

static void on_sig(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t r = write(sig_pipe[1], &b, 1);
    (void)r;
    errno = saved;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

typedef struct wstate {
    int n;
    const char *host;
    unsigned port;
    int reserve_fd;
    int relay_fd[PWORKERS_MAX];
    unsigned relay_port[PWORKERS_MAX];
    int ready[2];
    wslot w[PWORKERS_MAX];
} wstate;

/* Forks worker i. In the child: fills ctx and returns 1. In the parent: 0,
 * or -1 when fork failed. */
static int spawn(wstate *s, int i, pworker_ctx *ctx)
{
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        plog_error("workers: fork: %s", strerror(errno));
        return -1;
    }
    if (pid > 0) {
        s->w[i].pid = pid;
        s->w[i].started_ms = mono_ms();
        s->w[i].restart_ms = 0;
        return 0;
    }
    /* A worker does not outlive its parent (a supervisor SIGKILLed, e.g.
     * by systemd or a test harness, must not leave orphans serving the
     * port and holding its stdout). */
#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
#else
    (void)parent;
#endif
    /* The worker: the parent's signal plumbing is not its own. */
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    close(s->ready[0]);
    close(s->reserve_fd);
    for (int j = 0; j < s->n; j++)
        if (j != i) close(s->relay_fd[j]);
    memset(ctx, 0, sizeof *ctx);
    ctx->index = i;
    ctx->n = s->n;
    ctx->port = s->port;
    ctx->relay_fd = s->relay_fd[i];
    ctx->ready_fd = s->ready[1];
    memcpy(ctx->relay_ports, s->relay_port, sizeof s->relay_port);
    if (plisten_socket(s->host, s->port, true, &ctx->listen_fd) != 0) _exit(1);
    return 1;
}

static int slot_of(const wstate *s, pid_t pid)
{
    for (int i = 0; i < s->n; i++)
        if (s->w[i].pid == pid) return i;
    return -1;
}

static void signal_all(wstate *s, int sig)
{
    for (int i = 0; i < s->n; i++)
        if (s->w[i].pid > 0) kill(s->w[i].pid, sig);
}

static int running(const wstate *s)
{
    int k = 0;
    for (int i = 0; i < s->n; i++) k += s->w[i].pid > 0;
    return k;
}

/* Reaps exited workers; schedules restarts unless stopping. */
static void reap(wstate *s, bool stopping)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        int i = slot_of(s, pid);
        if (i < 0) continue;
        s->w[i].pid = 0;
        if (stopping) continue;
        uint64_t now = mono_ms();
        /* Dying young doubles the wait; a worker that ran a while starts
         * again after 1 s. */
        if (now - s->w[i].started_ms < 10000)
            s->w[i].backoff_ms =
                s->w[i].backoff_ms ? PARLEY_MIN(s->w[i].backoff_ms * 2, 30000) : 1000;
        else
            s->w[i].backoff_ms = 1000;
        s->w[i].restart_ms = now + s->w[i].backoff_ms;
        if (WIFSIGNALED(status))
            plog_error("workers: worker %d (pid %d) killed by signal %d; restarting in %u ms", i,
                       (int)pid, WTERMSIG(status), s->w[i].backoff_ms);
        else
            plog_error("workers: worker %d (pid %d) exited with %d; restarting in %u ms", i,
                       (int)pid, WEXITSTATUS(status), s->w[i].backoff_ms);
    }
}

static void drain(int fd)
{
    unsigned char b[64];
    while (read(fd, b, sizeof b) > 0) {
    }
}

int pworkers_run(int n, const char *host, unsigned port, pworker_ctx *ctx)
{
    static wstate st;
    wstate *s = &st;
    memset(s, 0, sizeof *s);
    if (n < 2 || n > PWORKERS_MAX) return 1;
    s->n = n;
    s->host = host;
    /* The public port, held by the parent (SO_REUSEPORT, not listening:
     * it takes no connections) so that port 0 resolves once and a
     * restarted worker finds the same port. */
    if (plisten_socket(host, port, true, &s->reserve_fd) != 0) return 1;
    s->port = psocket_port(s->reserve_fd);
    for (int i = 0; i < n; i++) {
        if (plisten_socket("127.0.0.1", 0, false, &s->relay_fd[i]) != 0 ||
            listen(s->relay_fd[i], 1024) != 0) {
            plog_error("workers: cannot make a relay socket");
            return 1;
        }
        s->relay_port[i] = psocket_port(s->relay_fd[i]);
    }
    if (pipe(s->ready) != 0 || pipe(sig_pipe) != 0) return 1;
    fcntl(s->ready[0], F_SETFL, O_NONBLOCK);
    fcntl(sig_pipe[0], F_SETFL, O_NONBLOCK);
    fcntl(sig_pipe[1], F_SETFL, O_NONBLOCK);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sig;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);

    for (int i = 0; i < n; i++) {
        int r = spawn(s, i, ctx);
        if (r == 1) return -1;
        if (r < 0) {
            signal_all(s, SIGTERM);
            return 1;
        }
    }
    /* Ready when every worker listens; a worker that dies first fails
     * the start. */
    int ready = 0;
    bool stopping = false, failed = false;
    uint64_t deadline = mono_ms() + 30000;
    while (ready < n && !stopping && !failed) {
        struct pollfd p[2] = {{s->ready[0], POLLIN, 0}, {sig_pipe[0], POLLIN, 0}};
        uint64_t now = mono_ms();
        if (now >= deadline) {
            plog_error("workers: not every worker listened within 30 s");
            failed = true;
            break;
        }
        if (poll(p, 2, (int)(deadline - now)) < 0 && errno != EINTR) break;
        if (p[0].revents & POLLIN) {
            unsigned char b[64];
            ssize_t r = read(s->ready[0], b, sizeof b);
            if (r > 0) ready += (int)r;
        }
        if (p[1].revents & POLLIN) {
            unsigned char b[16];
            ssize_t r = read(sig_pipe[0], b, sizeof b);
            for (ssize_t k = 0; k < r; k++) {
                if (b[k] == SIGTERM || b[k] == SIGINT) stopping = true;
                if (b[k] == SIGCHLD) {
                    int before = running(s);
                    reap(s, true);
                    if (running(s) < before) failed = true;
                }
            }
        }
    }
    if (!failed && !stopping) {
        printf(strchr(host, ':') ? "parleyd listening on [%s]:%u\n"
                                 : "parleyd listening on %s:%u\n",
               host, s->port);
        fflush(stdout);
        plog_info("workers: %d workers on port %u", n, s->port);
    }
    /* Supervise. */
    uint64_t kill_at = 0;
    if (failed || stopping) {
        stopping = true;
        signal_all(s, SIGTERM);
        kill_at = mono_ms() + 15000;
    }
    while (running(s) > 0 || !stopping) {
        uint64_t now = mono_ms();
        int timeout = -1;
        for (int i = 0; i < n && !stopping; i++) {
            if (s->w[i].pid || !s->w[i].restart_ms) continue;
            if (s->w[i].restart_ms <= now) {
                if (spawn(s, i, ctx) == 1) return -1;
                continue;
            }
            int left = (int)(s->w[i].restart_ms - now);
            if (timeout < 0 || left < timeout) timeout = left;
        }
        if (kill_at) {
            if (now >= kill_at) {
                signal_all(s, SIGKILL);
                kill_at = 0;
            } else if (timeout < 0 || (int)(kill_at - now) < timeout) {
                timeout = (int)(kill_at - now);
            }
        }
        struct pollfd p[2] = {{sig_pipe[0], POLLIN, 0}, {s->ready[0], POLLIN, 0}};
        if (poll(p, 2, timeout) < 0 && errno != EINTR) break;
        if (p[1].revents & POLLIN) drain(s->ready[0]);
        if (p[0].revents & POLLIN) {
            unsigned char b[16];
            ssize_t r = read(sig_pipe[0], b, sizeof b);
            for (ssize_t k = 0; k < r; k++) {
                if ((b[k] == SIGTERM || b[k] == SIGINT) && !stopping) {
                    plog_info("workers: stopping");
                    stopping = true;
                    signal_all(s, SIGTERM);
                    kill_at = mono_ms() + 15000;
                } else if (b[k] == SIGHUP) {
                    signal_all(s, SIGHUP);
                }
            }
        }
        reap(s, stopping);
    }
    close(s->reserve_fd);
    for (int i = 0; i < n; i++) close(s->relay_fd[i]);
    return failed ? 1 : 0;
}

void pworker_ready(pworker_ctx *ctx)
{
    unsigned char b = 1;
    ssize_t r = write(ctx->ready_fd, &b, 1);
    (void)r;
    close(ctx->ready_fd);
    ctx->ready_fd = -1;
}
