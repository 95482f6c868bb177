/*
 * Shared by the client tests (test_eio_client.c, test_sio_client.c): the
 * library's own server on a loop thread, a scripted fake HTTP server on
 * plain threads (for answers no real server gives), and waiting on the
 * client's loop. Header-only: each test file is its own executable.
 */
#ifndef PARLEY_TEST_CLIENT_HELPERS_H
#define PARLEY_TEST_CLIENT_HELPERS_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <strings.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/util.h"
#include "chop.h"
#include "net/net.h"
#include "parley/server.h"
#include "server/engine.h"

phttpd *parley_server__http(parley_server *s);

/* A free loopback port below the kernel's ephemeral range (32768 and up
 * by default), for servers a test restarts on the same port: a port from
 * the ephemeral range could meanwhile become the source port of another
 * test's outgoing connection, and the restart would fail to bind. Drawn
 * from the CSPRNG, so that tests starting in the same millisecond do not
 * pick the same one. */
static inline unsigned th_low_port(void)
{
    for (int i = 0; i < 200; i++) {
        uint32_t r = 0;
        if (prand_bytes(&r, sizeof r) != 0) return 0;
        unsigned p = 20000 + r % 12000;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return 0;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int rc = bind(fd, (struct sockaddr *)&a, sizeof a);
        close(fd);
        if (rc == 0) return p;
    }
    return 0;
}

/* ---- waiting on a loop driven by the test thread ---- */

static inline void th_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs loop until *flag becomes true or ms pass; returns *flag. */
static inline bool th_run_until(parley_loop *loop, const volatile bool *flag, uint64_t ms)
{
    uv_timer_t t;
    uv_timer_init(loop->uv, &t);
    uv_timer_start(&t, th_tick, 5, 5);
    uint64_t end = ptime_ms() + ms;
    while (!*flag && ptime_ms() < end) uv_run(loop->uv, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop->uv, UV_RUN_NOWAIT);
    return *flag;
}

/* Runs the loop for ms regardless. */
static inline void th_run_for(parley_loop *loop, uint64_t ms)
{
    bool never = false;
    th_run_until(loop, &never, ms);
}

/* ---- the library's server on a thread of its own ---- */

typedef struct th_server {
    parley_loop *loop;
    parley_server *srv;
    engine *echo; /* plain Engine.IO echo at /engine.io/ */
    unsigned port;
    atomic_bool down;
} th_server;

static inline void th_eio_open(esession *s, const phttpd_req *req)
{
    (void)s;
    (void)req;
}

static inline void th_eio_message(esession *s, bool binary, uint8_t *data, size_t len)
{
    esession_send(s, binary, data, len);
}

static inline void th_eio_close(esession *s, const char *reason)
{
    (void)s;
    (void)reason;
}

static const engine_cbs th_echo_cbs = {
    .on_open = th_eio_open, .on_message = th_eio_message, .on_close = th_eio_close};

/* Starts a server with opts (NULL: defaults with a fast heartbeat) and an
 * echo engine (transports: ENGINE_* bits, 0 = both). setup (may be NULL)
 * runs on the loop before it starts, to install handlers. */
static inline int th_server_start(th_server *t, const parley_server_opts *opts, unsigned transports,
                                  void (*setup)(th_server *t, void *user), void *user,
                                  unsigned port)
{
    memset(t, 0, sizeof *t);
    parley_server_opts o;
    if (opts) {
        o = *opts;
    } else {
        parley_server_opts_init(&o);
        o.ping_interval_ms = 300;
        o.ping_timeout_ms = 200;
    }
    t->loop = parley_loop_new();
    if (!t->loop) return PARLEY_ENOMEM;
    int rc = parley_server_new(t->loop, &o, &t->srv);
    if (rc) return rc;
    engine_opts eo;
    engine_opts_init(&eo);
    eo.ping_interval_ms = o.ping_interval_ms;
    eo.ping_timeout_ms = o.ping_timeout_ms;
    eo.max_payload = o.max_payload;
    if (transports) eo.transports = transports;
    rc = engine_attach(parley_server__http(t->srv), "/engine.io/", &eo, &th_echo_cbs, NULL,
                       &t->echo);
    if (rc) return rc;
    if (setup) setup(t, user);
    rc = parley_server_listen(t->srv, "127.0.0.1", port, &t->port);
    if (rc) return rc;
    return parley_loop_start(t->loop);
}

static inline void th_server_done(parley_server *s, void *user)
{
    (void)s;
    th_server *t = user;
    atomic_store(&t->down, true);
}

static inline void th_server_shutdown_call(void *arg)
{
    th_server *t = arg;
    if (t->echo) engine_free(t->echo);
    t->echo = NULL;
    parley_server_shutdown(t->srv, th_server_done, t);
}

static inline void th_server_stop(th_server *t)
{
    if (!t->loop) return;
    ploop_call(t->loop, th_server_shutdown_call, t);
    for (int i = 0; i < 500 && !atomic_load(&t->down); i++) usleep(10000);
    parley_loop_join(t->loop);
    parley_server_free(t->srv);
    parley_loop_free(t->loop);
    t->loop = NULL;
}

/* ---- scripted fake HTTP server ---- */

typedef struct fake_req {
    char method[16];
    char target[1024];
    char head[4096];
    char *body;
    size_t body_len;
    int conn; /* connection number, from 1 */
} fake_req;

typedef struct fake_srv fake_srv;
/* Answers one request by writing to fd (fake_send). Return false to close
 * the connection. */
typedef bool (*fake_handler)(fake_srv *s, int fd, const fake_req *r, void *user);

#define FAKE_MAX_CONNS 64

struct fake_srv {
    int lfd;
    unsigned port;
    pthread_t th;
    fake_handler handler;
    void *user;
    chop_mode mode; /* how responses are written */
    uint64_t rng;
    atomic_bool stop;
    atomic_int requests;
    atomic_int conns;
    pthread_mutex_t mu;
    pthread_t conn_th[FAKE_MAX_CONNS];
    int conn_fd[FAKE_MAX_CONNS];
    int nconn;
};

typedef struct fake_conn_arg {
    fake_srv *s;
    int fd;
    int no;
} fake_conn_arg;

/* Writes data in pieces as the server's chop mode says, pausing between
 * pieces so that they arrive in separate reads. */
static inline void fake_send(fake_srv *s, int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    chopper ch;
    pthread_mutex_lock(&s->mu);
    uint64_t seed = test_rand(&s->rng);
    pthread_mutex_unlock(&s->mu);
    chop_init(&ch, s->mode, seed);
    size_t off = 0;
    while (off < len) {
        size_t n = chop_next(&ch, len - off);
        if (n > len - off) n = len - off;
        ssize_t w = send(fd, p + off, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        off += (size_t)w;
        if (s->mode != CHOP_WHOLE && off < len) usleep(s->mode == CHOP_BYTES ? 50 : 300);
    }
}

static inline void fake_sendf(fake_srv *s, int fd, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline void fake_sendf(fake_srv *s, int fd, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0) fake_send(s, fd, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* A 200 response with a text body. */
static inline void fake_ok(fake_srv *s, int fd, const char *body, size_t len)
{
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     len);
    char *all = malloc((size_t)n + len);
    memcpy(all, head, (size_t)n);
    memcpy(all + n, body, len);
    fake_send(s, fd, all, (size_t)n + len);
    free(all);
}

static inline char *fake_find(char *buf, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(buf + i, needle, k)) return buf + i;
    return NULL;
}

/* Content-Length of a head, 0 when absent. */
static inline size_t fake_content_length(const char *head)
{
    for (const char *p = head; *p; p++)
        if (*p == '\n' && !strncasecmp(p + 1, "Content-Length:", 15))
            return strtoul(p + 16, NULL, 10);
    return 0;
}

static inline void *fake_conn_main(void *arg)
{
    fake_conn_arg a = *(fake_conn_arg *)arg;
    free(arg);
    fake_srv *s = a.s;
    char buf[65536];
    size_t have = 0;
    for (;;) {
        char *end = NULL;
        while (!(end = fake_find(buf, have, "\r\n\r\n"))) {
            if (have == sizeof buf) goto out;
            struct pollfd pf = {.fd = a.fd, .events = POLLIN};
            int pr = poll(&pf, 1, 50);
            if (atomic_load(&s->stop)) goto out;
            if (pr <= 0) continue;
            ssize_t r = recv(a.fd, buf + have, sizeof buf - have, 0);
            if (r <= 0) goto out;
            have += (size_t)r;
        }
        fake_req req;
        memset(&req, 0, sizeof req);
        size_t hlen = (size_t)(end - buf) + 4;
        memcpy(req.head, buf, hlen < sizeof req.head ? hlen : sizeof req.head - 1);
        sscanf(buf, "%15s %1023s", req.method, req.target);
        size_t clen = fake_content_length(req.head);
        if (clen > sizeof buf - hlen) goto out;
        while (have < hlen + clen) {
            ssize_t r = recv(a.fd, buf + have, sizeof buf - have, 0);
            if (r <= 0) goto out;
            have += (size_t)r;
        }
        req.body = buf + hlen;
        req.body_len = clen;
        req.conn = a.no;
        atomic_fetch_add(&s->requests, 1);
        bool keep = s->handler(s, a.fd, &req, s->user);
        memmove(buf, buf + hlen + clen, have - hlen - clen);
        have -= hlen + clen;
        if (!keep) break;
    }
out:
    shutdown(a.fd, SHUT_RDWR);
    return NULL;
}

static inline void *fake_accept_main(void *arg)
{
    fake_srv *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd pf = {.fd = s->lfd, .events = POLLIN};
        if (poll(&pf, 1, 20) <= 0) continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_mutex_lock(&s->mu);
        if (s->nconn == FAKE_MAX_CONNS) {
            pthread_mutex_unlock(&s->mu);
            close(fd);
            continue;
        }
        fake_conn_arg *a = malloc(sizeof *a);
        a->s = s;
        a->fd = fd;
        a->no = s->nconn + 1;
        s->conn_fd[s->nconn] = fd;
        pthread_create(&s->conn_th[s->nconn], NULL, fake_conn_main, a);
        s->nconn++;
        pthread_mutex_unlock(&s->mu);
        atomic_fetch_add(&s->conns, 1);
    }
    return NULL;
}

static inline int fake_start(fake_srv *s, fake_handler h, void *user, chop_mode mode)
{
    memset(s, 0, sizeof *s);
    s->handler = h;
    s->user = user;
    s->mode = mode;
    s->rng = chop_seed();
    pthread_mutex_init(&s->mu, NULL);
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (s->lfd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(s->lfd, 64) != 0 ||
        getsockname(s->lfd, (struct sockaddr *)&a, &alen) != 0)
        return -1;
    s->port = ntohs(a.sin_port);
    return pthread_create(&s->th, NULL, fake_accept_main, s);
}

static inline void fake_stop(fake_srv *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->th, NULL);
    for (int i = 0; i < s->nconn; i++) {
        pthread_join(s->conn_th[i], NULL);
        close(s->conn_fd[i]);
    }
    close(s->lfd);
    pthread_mutex_destroy(&s->mu);
}

/* ---- a TCP proxy that can cut every connection (transport loss) ---- */

#define PROXY_MAX 32

typedef struct th_proxy {
    int lfd;
    unsigned port, upstream;
    pthread_t th;
    atomic_bool stop;
    atomic_int drop;    /* bumped to cut every connection */
    atomic_bool refuse; /* new connections are closed at once */
    atomic_int accepted;
    int a[PROXY_MAX], b[PROXY_MAX];
    int n;
} th_proxy;

static inline void proxy_close_pair(th_proxy *p, int i)
{
    close(p->a[i]);
    close(p->b[i]);
    p->a[i] = p->a[p->n - 1];
    p->b[i] = p->b[p->n - 1];
    p->n--;
}

static inline void *proxy_main(void *arg)
{
    th_proxy *p = arg;
    int seen_drop = 0;
    char buf[65536];
    while (!atomic_load(&p->stop)) {
        int d = atomic_load(&p->drop);
        if (d != seen_drop) {
            seen_drop = d;
            while (p->n) {
                /* RST rather than FIN: a transport error, as a killed link. */
                struct linger lg = {1, 0};
                setsockopt(p->a[0], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
                setsockopt(p->b[0], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
                proxy_close_pair(p, 0);
            }
        }
        struct pollfd pf[1 + 2 * PROXY_MAX];
        int k = 0;
        pf[k++] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
        for (int i = 0; i < p->n; i++) {
            pf[k++] = (struct pollfd){.fd = p->a[i], .events = POLLIN};
            pf[k++] = (struct pollfd){.fd = p->b[i], .events = POLLIN};
        }
        int polled = p->n; /* pairs accepted below were not polled */
        if (poll(pf, (nfds_t)k, 10) <= 0) continue;
        if (pf[0].revents & POLLIN) {
            int fd = accept(p->lfd, NULL, NULL);
            if (fd >= 0) {
                atomic_fetch_add(&p->accepted, 1);
                int up = -1;
                if (!atomic_load(&p->refuse) && p->n < PROXY_MAX) {
                    up = socket(AF_INET, SOCK_STREAM, 0);
                    struct sockaddr_in a = {.sin_family = AF_INET,
                                            .sin_port = htons((uint16_t)p->upstream),
                                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
                    if (connect(up, (struct sockaddr *)&a, sizeof a) != 0) {
                        close(up);
                        up = -1;
                    }
                }
                if (up < 0) {
                    close(fd);
                } else {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    p->a[p->n] = fd;
                    p->b[p->n] = up;
                    p->n++;
                }
            }
        }
        for (int i = 0, j = 1; i < polled && i < p->n; i++, j += 2) {
            bool dead = false;
            for (int side = 0; side < 2 && !dead; side++) {
                if (!(pf[j + side].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                int from = side ? p->b[i] : p->a[i], to = side ? p->a[i] : p->b[i];
                ssize_t r = recv(from, buf, sizeof buf, 0);
                if (r <= 0) {
                    dead = true;
                    break;
                }
                for (ssize_t off = 0; off < r;) {
                    ssize_t w = send(to, buf + off, (size_t)(r - off), MSG_NOSIGNAL);
                    if (w <= 0) {
                        dead = true;
                        break;
                    }
                    off += w;
                }
            }
            if (dead) {
                proxy_close_pair(p, i);
                break; /* indexes moved: poll again */
            }
        }
    }
    while (p->n) proxy_close_pair(p, 0);
    return NULL;
}

static inline int proxy_start(th_proxy *p, unsigned upstream)
{
    memset(p, 0, sizeof *p);
    p->upstream = upstream;
    p->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (bind(p->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(p->lfd, 64) != 0 ||
        getsockname(p->lfd, (struct sockaddr *)&a, &alen) != 0)
        return -1;
    p->port = ntohs(a.sin_port);
    return pthread_create(&p->th, NULL, proxy_main, p);
}

static inline void proxy_stop(th_proxy *p)
{
    atomic_store(&p->stop, true);
    pthread_join(p->th, NULL);
    close(p->lfd);
}

#endif
