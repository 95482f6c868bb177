/* Connections: batched writes, shared read buffers, TLS, close, connect. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "base/log.h"
#include "base/util.h"
#include "net/conn_internal.h"

#define PCONN_DEFAULT_MAX_OUT (8u * 1024 * 1024)
#define PCONN_LINGER_MS       5000
#define PCONN_MIN_READ        (16 * 1024)

/* A piece of output: owned bytes or a slice of a shared block. */
typedef struct pseg {
    pshared *blk; /* shared block, or NULL for owned bytes */
    uint8_t *own; /* owned allocation, freed when written */
    size_t off;   /* first unwritten byte */
    size_t len;   /* unwritten bytes */
} pseg;

/* Output queued before the tail buffer `out`: exists only once a shared
 * block has been written to the connection. */
struct pconn_outq {
    pseg *v;
    uint32_t head, n, cap; /* live segments are v[head, n) */
    size_t bytes;
};

struct pconn_write {
    uv_write_t req;
    pconn *c;
    pseg *segs; /* being written, in order */
    uint32_t nsegs;
    size_t bytes;
};

static inline uint8_t *pseg_data(const pseg *s)
{
    return (s->blk ? s->blk->data : s->own) + s->off;
}

static void pseg_release(pseg *s)
{
    if (s->blk)
        pshared_unref(s->blk);
    else
        free(s->own);
}

struct pconn_connect {
    pconn *c; /* NULL once the connection is gone */
    uv_getaddrinfo_t gai;
    uv_connect_t req;
    struct addrinfo *res, *cur;
    struct addrinfo literal; /* an IP literal needs no resolver */
    struct sockaddr_storage literal_addr;
    ptls_ctx *tls;
    bool resolving;
    bool connecting;
    bool reopening;
    int last_err;
    char host[256];    /* the target: TLS name, CONNECT authority */
    struct pconn_tunnel *tun; /* through an HTTP proxy (CONNECT) */
};

/* A CONNECT through an HTTP proxy: the request, then the proxy's response
 * head, read into a buffer of fixed size (PNET_PROXY_HEAD_MAX). */
struct pconn_tunnel {
    char *req;
    size_t req_len;
    size_t head_len;
    uint8_t head[PNET_PROXY_HEAD_MAX];
};

/* What only some connections need. */
struct pconn_ext {
    pconn *c;
    ptls *tls;
    struct pconn_outq q;
    struct pconn_write *w;
    struct pconn_connect *connecting;
    ptimer timer;     /* connect deadline, close linger */
    int proxy_status; /* the HTTP proxy's answer to CONNECT, 0 = none */
};

static struct pconn_ext *ext(pconn *c)
{
    if (!c->x) {
        c->x = pcalloc(1, sizeof *c->x);
        if (!c->x) return NULL;
        c->x->c = c;
        ptimer_init(&c->x->timer, NULL);
    }
    return c->x;
}

#define XTLS(c)  ((c)->x ? (c)->x->tls : NULL)
#define XW(c)    ((c)->x ? (c)->x->w : NULL)
#define XCONN(c) ((c)->x ? (c)->x->connecting : NULL)

static void stop_timer(pconn *c)
{
    if (c->x) ploop_timer_stop(c->loop, &c->x->timer);
}

/* Arms the connection's timer; false when out of memory. */
static bool start_timer(pconn *c, ptimer_cb cb, uint64_t ms)
{
    struct pconn_ext *e = ext(c);
    if (!e) return false;
    e->timer.cb = cb;
    return ploop_timer_start(c->loop, &e->timer, ms) == 0;
}

static void do_close(pconn *c);
static void start_reading(pconn *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void process_in(pconn *c);
static void connect_done(pconn *c, int status);

static void st_release(struct pconn_connect *st)
{
    if (st->res) uv_freeaddrinfo(st->res);
    if (st->tun) free(st->tun->req);
    free(st->tun);
    free(st);
}

static int uv_to_parley(int uverr)
{
    switch (uverr) {
    case UV_ECONNREFUSED:
        return PARLEY_ECONNREFUSED;
    case UV_ETIMEDOUT:
        return PARLEY_ETIMEDOUT;
    case UV_ENOMEM:
    case UV_ENOBUFS:
        return PARLEY_ENOMEM;
    case UV_EOF:
        return PARLEY_ECLOSED;
    default:
        return PARLEY_EIO;
    }
}

void pconn_init(pconn *c, parley_loop *loop, const pconn_cbs *cbs, size_t max_out)
{
    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->cbs = cbs;
    c->max_out =
        (uint32_t)PARLEY_MIN(max_out ? max_out : PCONN_DEFAULT_MAX_OUT, (size_t)UINT32_MAX);
    uv_tcp_init(loop->uv, &c->tcp);
    c->tcp.data = c;
    c->flags = PCONN_HAS_TCP;
    loop->nconns++;
}

size_t pconn_pending(const pconn *c)
{
    size_t n = c->out.len;
    if (c->x) {
        n += c->x->q.bytes;
        if (c->x->tls) n += c->x->tls->wire.len;
        if (c->x->w) n += c->x->w->bytes;
    }
    return n;
}

static int outq_push(struct pconn_outq *q, pseg seg)
{
    if (q->head > 0 && q->head == q->n) q->head = q->n = 0;
    if (q->n == q->cap) {
        if (q->head > 0) {
            memmove(q->v, q->v + q->head, (q->n - q->head) * sizeof *q->v);
            q->n -= q->head;
            q->head = 0;
        } else {
            uint32_t cap = q->cap ? q->cap * 2 : 8;
            pseg *v = realloc(q->v, cap * sizeof *v);
            if (!v) return PARLEY_ENOMEM;
            q->v = v;
            q->cap = cap;
        }
    }
    q->v[q->n++] = seg;
    q->bytes += seg.len;
    return 0;
}

static void outq_free(pconn *c)
{
    if (!c->x) return;
    struct pconn_outq *q = &c->x->q;
    for (uint32_t i = q->head; i < q->n; i++) pseg_release(&q->v[i]);
    free(q->v);
    memset(q, 0, sizeof *q);
}

static void schedule_flush(pconn *c)
{
    if (c->flags & PCONN_FLUSH_LIST) return;
    c->flags |= PCONN_FLUSH_LIST;
    c->flush_next = c->loop->flush_head;
    c->loop->flush_head = c;
}

static void unlink_flush(pconn *c)
{
    if (!(c->flags & PCONN_FLUSH_LIST)) return;
    pconn **pp = &c->loop->flush_head;
    while (*pp && *pp != c) pp = &(*pp)->flush_next;
    if (*pp) *pp = c->flush_next;
    c->flush_next = NULL;
    c->flags &= ~PCONN_FLUSH_LIST;
}

/* The limit bounds the backlog a new write may join, not the write itself:
 * one message larger than the limit can still be sent to a peer that
 * reads, and a peer that does not read is dropped at its next write. So
 * memory per connection stays below max_out plus one message. */
static int check_limit(pconn *c)
{
    if (pconn_pending(c) <= c->max_out) return 0;
    char peer[64];
    uint64_t held;
    if (plog_limit_ok(&c->loop->log_out, ploop_now(c->loop), 10000, &held)) {
        pconn_peer_name(c, peer, sizeof peer);
        plog_warn("closing %s: %zu bytes of output not taken by the peer (limit %zu; %llu more "
                  "since the last line)",
                  peer, pconn_pending(c), (size_t)c->max_out, (unsigned long long)held);
    }
    pconn_close(c, false, PARLEY_EFULL);
    return PARLEY_EFULL;
}

uint8_t *pconn_reserve(pconn *c, size_t n)
{
    pbuf *out = pconn_out(c);
    if (!out || pbuf_reserve(out, n) != 0) return NULL;
    return out->ptr + out->len;
}

void pconn_commit(pconn *c, size_t n)
{
    c->out.len += n;
    schedule_flush(c);
}

pbuf *pconn_out(pconn *c)
{
    if (c->flags & PCONN_CLOSING) return NULL;
    if (check_limit(c) != 0) return NULL;
    return &c->out;
}

int pconn_wrote(pconn *c)
{
    if (c->flags & PCONN_CLOSED) return PARLEY_ECLOSED;
    if (c->out.len) schedule_flush(c);
    return 0;
}

int pconn_write(pconn *c, const void *data, size_t len)
{
    if (c->flags & PCONN_CLOSING) return PARLEY_ECLOSED;
    int rc = check_limit(c);
    if (rc || len == 0) return rc;
    rc = pbuf_append(&c->out, data, len);
    if (rc) return rc;
    schedule_flush(c);
    return 0;
}

static void on_write(uv_write_t *req, int status)
{
    struct pconn_write *w = PARLEY_CONTAINER_OF(req, struct pconn_write, req);
    pconn *c = w->c;
    c->flags &= ~PCONN_WRITING;
    c->x->w = NULL;
    for (uint32_t i = 0; i < w->nsegs; i++) pseg_release(&w->segs[i]);
    free(w->segs);
    free(w);
    if (c->flags & PCONN_CLOSED) return;
    if (status < 0) {
        pconn_close(c, false, uv_to_parley(status));
        return;
    }
    pconn__flush(c);
}

/* Hands the unwritten segments to one uv_write that owns them until it
 * completes. */
static void write_rest(pconn *c, pseg *segs, uint32_t nsegs, size_t bytes)
{
    struct pconn_write *w = ext(c) ? malloc(sizeof *w) : NULL;
    uv_buf_t small[8];
    uv_buf_t *bufs = nsegs <= 8 ? small : malloc(nsegs * sizeof *bufs);
    if (!w || !bufs) {
        for (uint32_t i = 0; i < nsegs; i++) pseg_release(&segs[i]);
        free(segs);
        free(w);
        if (bufs != small) free(bufs);
        pconn_close(c, false, PARLEY_ENOMEM);
        return;
    }
    w->c = c;
    w->segs = segs;
    w->nsegs = nsegs;
    w->bytes = bytes;
    for (uint32_t i = 0; i < nsegs; i++)
        bufs[i] = uv_buf_init((char *)pseg_data(&segs[i]), (unsigned)segs[i].len);
    /* libuv copies the buffer array; the bytes stay ours until on_write. */
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, nsegs, on_write);
    if (bufs != small) free(bufs);
    if (rc < 0) {
        for (uint32_t i = 0; i < nsegs; i++) pseg_release(&segs[i]);
        free(segs);
        free(w);
        pconn_close(c, false, uv_to_parley(rc));
        return;
    }
    c->x->w = w;
    c->flags |= PCONN_WRITING;
}

/* Writes one buffer to the socket: as much as the kernel takes now, the
 * rest with one uv_write that takes over the buffer's storage. */
static void write_out(pconn *c, pbuf *src)
{
    if (src->len == 0 || (c->flags & PCONN_WRITING)) return;
    uv_buf_t b = uv_buf_init((char *)src->ptr, (unsigned)PARLEY_MIN(src->len, (size_t)UINT32_MAX));
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == UV_EAGAIN) n = 0;
    if (n < 0) {
        pconn_close(c, false, uv_to_parley(n));
        return;
    }
    if ((size_t)n == src->len) {
        /* All out: give the buffer back, so that an idle connection holds
         * no output memory (a malloc per burst costs far less than the
         * write syscall it accompanies). */
        pbuf_reset(src, 0);
        return;
    }
    pseg *seg = malloc(sizeof *seg);
    if (!seg) {
        pconn_close(c, false, PARLEY_ENOMEM);
        return;
    }
    *seg = (pseg){.own = src->ptr, .off = (size_t)n, .len = src->len - (size_t)n};
    memset(src, 0, sizeof *src);
    write_rest(c, seg, 1, seg->len);
}

/* Plain connections with shared blocks queued: one writev of the queue and
 * the tail buffer. */
static void write_queue(pconn *c)
{
    if (c->flags & PCONN_WRITING) return;
    struct pconn_outq *q = c->x ? &c->x->q : NULL;
    if (!q || q->head == q->n) {
        write_out(c, &c->out);
        return;
    }
    enum { MAXV = 64 };
    uv_buf_t bufs[MAXV];
    unsigned nb = 0;
    for (uint32_t i = q->head; i < q->n && nb < MAXV - 1; i++)
        bufs[nb++] = uv_buf_init((char *)pseg_data(&q->v[i]), (unsigned)q->v[i].len);
    bool tail = nb < MAXV && q->head + nb == q->n && c->out.len > 0;
    if (tail) bufs[nb++] = uv_buf_init((char *)c->out.ptr, (unsigned)c->out.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nb);
    if (n == UV_EAGAIN) n = 0;
    if (n < 0) {
        pconn_close(c, false, uv_to_parley(n));
        return;
    }
    size_t left = (size_t)n;
    while (q->head < q->n && left >= q->v[q->head].len) {
        left -= q->v[q->head].len;
        q->bytes -= q->v[q->head].len;
        pseg_release(&q->v[q->head++]);
    }
    if (q->head < q->n) {
        q->v[q->head].off += left;
        q->v[q->head].len -= left;
        q->bytes -= left;
        left = 0;
    } else if (left) {
        pbuf_consume(&c->out, left);
    }
    if (q->head == q->n) {
        q->head = q->n = 0;
        if (c->out.len == 0) return;
        write_out(c, &c->out);
        return;
    }
    /* The kernel is full: the rest of the queue and the tail go to one
     * uv_write, which owns them; new output starts a fresh queue. */
    uint32_t nsegs = q->n - q->head + (c->out.len ? 1 : 0);
    pseg *segs = malloc(nsegs * sizeof *segs);
    if (!segs) {
        pconn_close(c, false, PARLEY_ENOMEM);
        return;
    }
    memcpy(segs, q->v + q->head, (q->n - q->head) * sizeof *segs);
    size_t bytes = q->bytes;
    if (c->out.len) {
        segs[nsegs - 1] = (pseg){.own = c->out.ptr, .len = c->out.len};
        bytes += c->out.len;
        memset(&c->out, 0, sizeof c->out);
    }
    q->head = q->n = 0;
    q->bytes = 0;
    write_rest(c, segs, nsegs, bytes);
}

int pconn_write_shared(pconn *c, pshared *blk, size_t off, size_t len)
{
    if (c->flags & PCONN_CLOSING) return PARLEY_ECLOSED;
    int rc = check_limit(c);
    if (rc || len == 0) return rc;
    struct pconn_ext *e = ext(c);
    if (!e) return PARLEY_ENOMEM;
    if (c->out.len) {
        /* Bytes written before must go first: the tail joins the queue. */
        rc = outq_push(&e->q, (pseg){.own = c->out.ptr, .len = c->out.len});
        if (rc) return rc;
        memset(&c->out, 0, sizeof c->out);
    }
    rc = outq_push(&e->q, (pseg){.blk = pshared_ref(blk), .off = off, .len = len});
    if (rc) {
        pshared_unref(blk);
        return rc;
    }
    schedule_flush(c);
    return 0;
}

static void tls_fail(pconn *c, const char *what)
{
    char buf[256], peer[64];
    uint64_t held;
    /* The reason is taken off OpenSSL's error queue either way. */
    ptls__errstr(buf, sizeof buf);
    if (plog_limit_ok(&c->loop->log_tls, ploop_now(c->loop), 10000, &held)) {
        pconn_peer_name(c, peer, sizeof peer);
        plog_info("TLS error with %s (%s): %s (%llu more since the last line)", peer, what, buf,
                  (unsigned long long)held);
    }
    if (XCONN(c)) {
        connect_done(c, PARLEY_ETLS);
        return;
    }
    pconn_close(c, false, PARLEY_ETLS);
}

/* Encrypts queued plaintext (once the handshake is done) into t->wire. */
static int tls_write_all(pconn *c, const uint8_t *p, size_t len)
{
    size_t off = 0;
    while (off < len) {
        size_t chunk = PARLEY_MIN(len - off, (size_t)1 << 30);
        int n = SSL_write(c->x->tls->ssl, p + off, (int)chunk);
        if (n <= 0) {
            tls_fail(c, "write");
            return PARLEY_ETLS;
        }
        off += (size_t)n;
    }
    return 0;
}

static int tls_encrypt(pconn *c)
{
    ptls *t = c->x->tls;
    if (t->done && !t->shutdown_sent && c->x->q.head < c->x->q.n) {
        /* SSL_write copies into records: shared blocks cost no extra copy. */
        struct pconn_outq *q = &c->x->q;
        while (q->head < q->n) {
            pseg *sg = &q->v[q->head];
            if (tls_write_all(c, pseg_data(sg), sg->len) != 0) return PARLEY_ETLS;
            q->bytes -= sg->len;
            pseg_release(sg);
            q->head++;
        }
        q->head = q->n = 0;
    }
    if (t->done && c->out.len && !t->shutdown_sent) {
        size_t off = 0;
        while (off < c->out.len) {
            size_t chunk = PARLEY_MIN(c->out.len - off, (size_t)1 << 30);
            int n = SSL_write(t->ssl, c->out.ptr + off, (int)chunk);
            if (n <= 0) {
                tls_fail(c, "write");
                return PARLEY_ETLS;
            }
            off += (size_t)n;
        }
        c->out.len = 0;
        pbuf_reset(&c->out, 64 * 1024);
    }
    if (ptls__drain(t) != 0) {
        pconn_close(c, false, PARLEY_ENOMEM);
        return PARLEY_ENOMEM;
    }
    return 0;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    pconn *c = req->data;
    free(req);
    if (c->flags & PCONN_CLOSED) return;
    if (status < 0 || (c->flags & PCONN_EOF)) do_close(c);
}

static void on_drain_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    pconn *c = s->data;
    /* Lingering: what the peer still sends is read and dropped. */
    if (nread < 0) {
        c->flags |= PCONN_EOF;
        if (!(c->flags & PCONN_SHUT_SENT)) return; /* still flushing */
        do_close(c);
    }
}

/* Output is flushed: send FIN, then keep reading (and dropping) until the
 * peer closes too or the linger timer fires. Closing a socket with unread
 * input makes the kernel send RST, which can destroy the response or close
 * frame we just sent before the peer reads it (e.g. a 1009 sent while the
 * oversized message is still arriving). */
static void finish_linger(pconn *c)
{
    if (c->flags & PCONN_SHUT_SENT) return;
    if (c->flags & PCONN_EOF) {
        do_close(c);
        return;
    }
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req) {
        do_close(c);
        return;
    }
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        free(req);
        do_close(c);
        return;
    }
    c->flags |= PCONN_SHUT_SENT;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_drain_read) == 0)
        c->flags |= PCONN_READING;
}

static void maybe_finish_linger(pconn *c)
{
    if ((c->flags & PCONN_LINGER) && !(c->flags & PCONN_CLOSED) && pconn_pending(c) == 0)
        finish_linger(c);
}

void pconn__flush(pconn *c)
{
    if (c->flags & PCONN_CLOSED) return;
    if (c->flags & PCONN_REDELIVER) {
        c->flags &= ~PCONN_REDELIVER;
        if (c->in.len > 0) process_in(c);
        if (c->flags & PCONN_CLOSED) return;
    }
    if (c->flags & PCONN_WRITING) return; /* on_write flushes again */
    if (c->flags & PCONN_CONNECTED) {
        if (XTLS(c)) {
            if (tls_encrypt(c) != 0) return;
            write_out(c, &c->x->tls->wire);
        } else {
            write_queue(c);
        }
    }
    maybe_finish_linger(c);
}

void pconn_redeliver(pconn *c)
{
    if (c->flags & PCONN_CLOSING) return;
    c->flags |= PCONN_REDELIVER;
    schedule_flush(c);
}

void pconn_expect(pconn *c, size_t total)
{
    c->in_hint = (uint32_t)PARLEY_MIN(total, (size_t)UINT32_MAX);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    pconn *c = h->data;
    /* Plain connections holding a partial message read straight into their
     * own buffer (sized for the frame being received when known); all
     * others read into the loop's shared buffer. */
    if (!XTLS(c) && c->in.len > 0) {
        size_t want = PCONN_MIN_READ;
        if (c->in_hint > c->in.len) want = PARLEY_MAX(want, c->in_hint - c->in.len);
        if (pbuf_reserve(&c->in, want) == 0) {
            *buf = uv_buf_init((char *)c->in.ptr + c->in.len,
                               (unsigned)PARLEY_MIN(c->in.cap - c->in.len, (size_t)UINT32_MAX));
            return;
        }
        *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
        return;
    }
    *buf = uv_buf_init((char *)c->loop->rbuf, PNET_READ_BUF_SIZE);
}

/* Hands c->in to the consumer and keeps what it leaves. */
static void process_in(pconn *c)
{
    if (c->flags & PCONN_CLOSING) return;
    c->flags |= PCONN_IN_DATA;
    size_t used = c->cbs->on_data(c, c->in.ptr, c->in.len);
    c->flags &= ~PCONN_IN_DATA;
    if (used >= c->in.len) {
        c->in.len = 0;
        pbuf_reset(&c->in, 0);
        c->in_hint = 0;
    } else if (used > 0) {
        pbuf_consume(&c->in, used);
    }
}

/* Delivers plaintext that is not in c->in (a shared buffer). */
static void deliver(pconn *c, uint8_t *data, size_t n)
{
    if (c->flags & PCONN_CLOSING) return;
    if (c->in.len > 0) {
        /* Earlier bytes are waiting: keep the stream contiguous. */
        if (pbuf_append(&c->in, data, n) != 0) {
            pconn_close(c, false, PARLEY_ENOMEM);
            return;
        }
        process_in(c);
        return;
    }
    c->flags |= PCONN_IN_DATA;
    size_t used = c->cbs->on_data(c, data, n);
    c->flags &= ~PCONN_IN_DATA;
    if (used < n && !(c->flags & PCONN_CLOSING)) {
        size_t want = PARLEY_MAX(n - used, c->in_hint);
        if (pbuf_reserve(&c->in, want) != 0 || pbuf_append(&c->in, data + used, n - used) != 0)
            pconn_close(c, false, PARLEY_ENOMEM);
    }
}

static void handle_eof(pconn *c)
{
    c->flags |= PCONN_EOF;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->flags &= ~PCONN_READING;
    /* A half-closed peer may still read: a lingering close keeps flushing
     * and closes once the flush is done. */
    if (c->flags & PCONN_CLOSING) return;
    if (c->cbs->on_eof)
        c->cbs->on_eof(c);
    else
        pconn_close(c, true, 0);
}

static void tls_progress(pconn *c)
{
    ptls *t = c->x->tls;
    if (!t->done) {
        int rc = SSL_do_handshake(t->ssl);
        if (rc == 1) {
            t->done = true;
            if (XCONN(c)) connect_done(c, 0);
            if (c->flags & PCONN_CLOSING) return;
        } else {
            int e = SSL_get_error(t->ssl, rc);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                /* Send the alert OpenSSL queued before dropping the link. */
                ptls__drain(t);
                write_out(c, &t->wire);
                tls_fail(c, "handshake");
                return;
            }
        }
    }
    if (t->done) {
        for (;;) {
            bool in_place = c->in.len > 0;
            uint8_t *dst;
            size_t cap;
            if (in_place) {
                if (pbuf_reserve(&c->in, PCONN_MIN_READ) != 0) {
                    pconn_close(c, false, PARLEY_ENOMEM);
                    return;
                }
                dst = c->in.ptr + c->in.len;
                cap = c->in.cap - c->in.len;
            } else {
                dst = c->loop->pbuf;
                cap = PNET_READ_BUF_SIZE;
            }
            int n = SSL_read(t->ssl, dst, (int)PARLEY_MIN(cap, (size_t)INT32_MAX));
            if (n > 0) {
                if (in_place) {
                    c->in.len += (size_t)n;
                    process_in(c);
                } else {
                    deliver(c, dst, (size_t)n);
                }
                if (c->flags & PCONN_CLOSING) break;
                continue;
            }
            int e = SSL_get_error(t->ssl, n);
            if (e == SSL_ERROR_WANT_READ) break;
            if (e == SSL_ERROR_ZERO_RETURN) {
                ptls__drain(t);
                schedule_flush(c);
                handle_eof(c);
                return;
            }
            tls_fail(c, "read");
            return;
        }
    }
    /* Handshake messages, alerts and session tickets go out now. */
    if (!(c->flags & PCONN_CLOSED) && BIO_ctrl_pending(t->wbio)) schedule_flush(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    pconn *c = s->data;
    if (nread == 0) return;
    if (nread < 0) {
        if (nread == UV_EOF) {
            handle_eof(c);
        } else {
            pconn_close(c, false, uv_to_parley((int)nread));
        }
        return;
    }
    if (c->flags & PCONN_CLOSING) return;
    if (XTLS(c)) {
        if (BIO_write(c->x->tls->rbio, buf->base, (int)nread) != (int)nread) {
            pconn_close(c, false, PARLEY_ENOMEM);
            return;
        }
        tls_progress(c);
        return;
    }
    if ((uint8_t *)buf->base == c->loop->rbuf) {
        deliver(c, (uint8_t *)buf->base, (size_t)nread);
    } else {
        c->in.len += (size_t)nread;
        process_in(c);
    }
}

static void start_reading(pconn *c)
{
    if ((c->flags & (PCONN_READING | PCONN_CLOSING | PCONN_EOF))) return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->flags |= PCONN_READING;
}

void pconn_pause(pconn *c)
{
    if (!(c->flags & PCONN_READING)) return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->flags &= ~PCONN_READING;
}

void pconn_resume(pconn *c)
{
    start_reading(c);
}

static void on_uv_close(uv_handle_t *h)
{
    pconn *c = h->data;
    pbuf_free(&c->in);
    pbuf_free(&c->out);
    outq_free(c);
    if (c->x) {
        ptls__free(c->x->tls);
        free(c->x);
        c->x = NULL;
    }
    c->loop->nconns--;
    if (c->cbs->on_close) c->cbs->on_close(c, c->close_err);
}

static void do_close(pconn *c)
{
    if (c->flags & PCONN_CLOSED) return;
    c->flags |= PCONN_CLOSED | PCONN_CLOSING;
    unlink_flush(c);
    stop_timer(c);
    if (c->flags & PCONN_REOPENING) {
        /* The handle is already closing: on_reopened finishes the job. */
        if (XCONN(c)) c->x->connecting->c = NULL;
        if (c->x) c->x->connecting = NULL;
        return;
    }
    if (XCONN(c)) {
        struct pconn_connect *st = c->x->connecting;
        st->c = NULL;
        c->x->connecting = NULL;
        if (st->resolving) uv_cancel((uv_req_t *)&st->gai);
        /* A pending uv_connect is cancelled by closing the handle; its
         * callback still runs and frees st. */
        if (!st->resolving && !st->connecting && !st->reopening) st_release(st);
    }
    uv_close((uv_handle_t *)&c->tcp, on_uv_close);
}

static void on_linger_timeout(ptimer *t)
{
    pconn *c = PARLEY_CONTAINER_OF(t, struct pconn_ext, timer)->c;
    do_close(c);
}

void pconn_close(pconn *c, bool graceful, int err)
{
    if (c->flags & PCONN_CLOSED) return;
    if (!(c->flags & PCONN_CLOSING)) {
        c->flags |= PCONN_CLOSING;
        c->close_err = err;
    } else if (!graceful) {
        do_close(c);
        return;
    } else {
        return; /* already lingering */
    }
    if (graceful && (c->flags & PCONN_CONNECTED)) {
        ptls *t = XTLS(c);
        if (t && t->done && !t->shutdown_sent) {
            /* Plaintext still queued must be encrypted before close_notify. */
            if (tls_encrypt(c) != 0) return;
            SSL_shutdown(t->ssl);
            t->shutdown_sent = true;
            ptls__drain(t);
        }
        if (!(c->flags & PCONN_EOF) || pconn_pending(c) > 0) {
            c->flags |= PCONN_LINGER;
            if (!start_timer(c, on_linger_timeout, PCONN_LINGER_MS)) {
                do_close(c);
                return;
            }
            schedule_flush(c);
            return;
        }
    }
    do_close(c);
}

void pconn_peer_name(pconn *c, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            uv_ip4_name(a, ip, sizeof ip);
            port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, ip, sizeof ip);
            port = ntohs(a->sin6_port);
        }
    }
    snprintf(out, cap, ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, port);
}

/* Called once the TCP link exists (accepted or connected). */
static int begin_session(pconn *c, ptls_ctx *tls, const char *host)
{
    c->flags |= PCONN_CONNECTED;
    uv_tcp_nodelay(&c->tcp, 1);
    if (tls) {
        if (!ext(c)) return PARLEY_ENOMEM;
        c->x->tls = ptls__new(tls, host);
        if (!c->x->tls) return PARLEY_ENOMEM;
    }
    start_reading(c);
    if (XTLS(c)) {
        /* The client speaks first; the server waits for ClientHello. */
        if (!tls->server) tls_progress(c);
    }
    return 0;
}

/* Listener. */

struct plistener {
    uv_tcp_t tcp;
    parley_loop *loop;
    ptls_ctx *tls;
    plisten_accept_fn accept;
    plisten_admit_fn admit;
    void *user;
};

void plisten_set_admit(plistener *l, plisten_admit_fn admit)
{
    l->admit = admit;
}

static void on_connection(uv_stream_t *server, int status)
{
    plistener *l = server->data;
    if (status < 0) {
        /* EMFILE and the like repeat at every loop turn: a summary. */
        uint64_t held;
        if (plog_limit_ok(&l->loop->log_accept, ploop_now(l->loop), 10000, &held))
            plog_warn("accept failed: %s (%llu more failures since the last line)",
                      uv_strerror(status), (unsigned long long)held);
        return;
    }
    pconn *c = l->accept(l, l->user);
    if (!c) {
        /* Refused (e.g. out of memory): accept and drop, so the backlog
         * does not keep waking us. */
        uv_tcp_t *tmp = malloc(sizeof *tmp);
        if (tmp && uv_tcp_init(l->loop->uv, tmp) == 0) {
            if (uv_accept(server, (uv_stream_t *)tmp) == 0) {
            }
            uv_close((uv_handle_t *)tmp, (uv_close_cb)free);
        } else {
            free(tmp);
        }
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        pconn_close(c, false, PARLEY_EIO);
        return;
    }
    if (l->admit) {
        struct sockaddr_storage ss;
        int len = sizeof ss;
        memset(&ss, 0, sizeof ss);
        if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0 ||
            !l->admit(l, c, (const struct sockaddr *)&ss, l->user)) {
            pconn_close(c, false, PARLEY_ELIMIT);
            return;
        }
    }
    if (begin_session(c, l->tls, NULL) != 0) pconn_close(c, false, PARLEY_ENOMEM);
}

/* A listener on loop, its handle initialised; NULL when out of memory. */
static plistener *listener_new(parley_loop *loop, ptls_ctx *tls, plisten_accept_fn accept,
                               void *user)
{
    plistener *l = pcalloc(1, sizeof *l);
    if (!l) return NULL;
    l->loop = loop;
    l->tls = tls;
    l->accept = accept;
    l->user = user;
    uv_tcp_init(loop->uv, &l->tcp);
    l->tcp.data = l;
    return l;
}

int plisten(parley_loop *loop, const char *host, unsigned port, ptls_ctx *tls,
            plisten_accept_fn accept, void *user, plistener **out)
{
    if (port > 65535 || !accept) return PARLEY_EINVAL;
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss) != 0)
        return PARLEY_EINVAL;
    plistener *l = listener_new(loop, tls, accept, user);
    if (!l) return PARLEY_ENOMEM;
    int rc = uv_tcp_bind(&l->tcp, (struct sockaddr *)&ss, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection);
    if (rc != 0) {
        plog_error("listen on %s:%u: %s", host, port, uv_strerror(rc));
        uv_close((uv_handle_t *)&l->tcp, (uv_close_cb)free);
        return rc == UV_EADDRINUSE ? PARLEY_EIO : PARLEY_EINVAL;
    }
    *out = l;
    return 0;
}

int plisten_fd(parley_loop *loop, int fd, ptls_ctx *tls, plisten_accept_fn accept, void *user,
               plistener **out)
{
    if (fd < 0 || !accept) return PARLEY_EINVAL;
    plistener *l = listener_new(loop, tls, accept, user);
    if (!l) {
        close(fd);
        return PARLEY_ENOMEM;
    }
    int rc = uv_tcp_open(&l->tcp, (uv_os_sock_t)fd);
    if (rc != 0) close(fd);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection);
    if (rc != 0) {
        plog_error("listen on an inherited socket: %s", uv_strerror(rc));
        uv_close((uv_handle_t *)&l->tcp, (uv_close_cb)free);
        return PARLEY_EINVAL;
    }
    *out = l;
    return 0;
}

int plisten_socket(const char *host, unsigned port, bool reuseport, int *fd_out)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (port > 65535) return PARLEY_EINVAL;
    socklen_t len;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) == 0)
        len = sizeof(struct sockaddr_in);
    else if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss) == 0)
        len = sizeof(struct sockaddr_in6);
    else
        return PARLEY_EINVAL;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return PARLEY_EIO;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
        bind(fd, (struct sockaddr *)&ss, len) != 0) {
        int e = errno;
        plog_error("bind %s:%u: %s", host, port, strerror(e));
        close(fd);
        return e == EADDRINUSE ? PARLEY_EIO : PARLEY_EINVAL;
    }
    *fd_out = fd;
    return 0;
}

unsigned psocket_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return 0;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

unsigned plistener_port(plistener *l)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &len) != 0) return 0;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

void plistener_close(plistener *l)
{
    if (!l) return;
    uv_close((uv_handle_t *)&l->tcp, (uv_close_cb)free);
}

/* Outbound connect: resolve, try each address, then TLS. */

static void try_next_address(struct pconn_connect *st);

static void connect_done(pconn *c, int status)
{
    struct pconn_connect *st = XCONN(c);
    if (c->x) c->x->connecting = NULL;
    stop_timer(c);
    if (st) {
        st->c = NULL;
        if (!st->resolving && !st->connecting && !st->reopening) st_release(st);
    }
    if (c->cbs->on_connect) c->cbs->on_connect(c, status);
    if (status != 0) pconn_close(c, false, status);
}


/* The tunnel: CONNECT written, the proxy's response head read with the
 * connection's own callbacks not yet involved; once the proxy said 2xx the
 * session (TLS or plain) starts inside the tunnel. */

static void tunnel_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    pconn *c = h->data;
    struct pconn_connect *st = XCONN(c);
    if (!st || !st->tun) { /* gone: read into the scratch buffer, dropped */
        buf->base = (char *)c->loop->rbuf;
        buf->len = PNET_READ_BUF_SIZE;
        return;
    }
    buf->base = (char *)st->tun->head + st->tun->head_len;
    buf->len = sizeof st->tun->head - st->tun->head_len;
}

static int tunnel_status(const uint8_t *h, size_t n)
{
    if (n < 12 || memcmp(h, "HTTP/1.", 7) != 0 || h[8] != ' ') return -1;
    int code = 0;
    for (int i = 9; i < 12; i++) {
        if (h[i] < '0' || h[i] > '9') return -1;
        code = code * 10 + (h[i] - '0');
    }
    return code;
}

static void tunnel_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    pconn *c = s->data;
    struct pconn_connect *st = XCONN(c);
    if (nread == 0 || !st || !st->tun) return;
    struct pconn_tunnel *t = st->tun;
    if (nread < 0) {
        plog_info("proxy for %s: the connection ended before its answer", st->host);
        connect_done(c, PARLEY_EPROXY);
        return;
    }
    size_t old = t->head_len;
    t->head_len += (size_t)nread;
    size_t from = old > 3 ? old - 3 : 0, end = 0;
    for (size_t i = from; i + 4 <= t->head_len; i++) {
        if (!memcmp(t->head + i, "\r\n\r\n", 4)) {
            end = i + 4;
            break;
        }
    }
    if (!end) {
        if (t->head_len == sizeof t->head) {
            plog_info("proxy for %s: response head over %d bytes", st->host, PNET_PROXY_HEAD_MAX);
            connect_done(c, PARLEY_EPROTO);
        }
        return;
    }
    int code = tunnel_status(t->head, end);
    c->x->proxy_status = code > 0 ? code : 0;
    uv_read_stop(s);
    if (code < 200 || code > 299) {
        plog_info("proxy for %s: CONNECT answered %d", st->host, code);
        connect_done(c, code == 407 ? PARLEY_EPROXYAUTH : PARLEY_EPROXY);
        return;
    }
    if (end != t->head_len) { /* the server cannot have spoken yet */
        connect_done(c, PARLEY_EPROTO);
        return;
    }
    free(t->req);
    free(t);
    st->tun = NULL;
    if (begin_session(c, st->tls, st->host) != 0) {
        connect_done(c, PARLEY_ENOMEM);
        return;
    }
    if (!st->tls) connect_done(c, 0);
}

static void tunnel_start(pconn *c, struct pconn_connect *st)
{
    uv_buf_t b = uv_buf_init(st->tun->req, (unsigned)st->tun->req_len);
    /* A few hundred bytes on a fresh socket: written at once or not at
     * all (no write request outlives the attempt). */
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n != (int)st->tun->req_len) {
        connect_done(c, n < 0 ? uv_to_parley(n) : PARLEY_EIO);
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->tcp, tunnel_alloc, tunnel_read) != 0)
        connect_done(c, PARLEY_EIO);
}

static void on_tcp_connected(uv_connect_t *req, int status)
{
    struct pconn_connect *st = PARLEY_CONTAINER_OF(req, struct pconn_connect, req);
    st->connecting = false;
    pconn *c = st->c;
    if (!c) {
        st_release(st);
        return;
    }
    if (status == 0 && st->tun) {
        tunnel_start(c, st);
        return;
    }
    if (status == 0) {
        if (begin_session(c, st->tls, st->host) != 0) {
            connect_done(c, PARLEY_ENOMEM);
            return;
        }
        if (!st->tls) connect_done(c, 0);
        return;
    }
    st->last_err = uv_to_parley(status);
    st->cur = st->cur ? st->cur->ai_next : NULL;
    if (!st->cur) {
        connect_done(c, st->last_err);
        return;
    }
    try_next_address(st);
}

static void on_reopened(uv_handle_t *h)
{
    struct pconn_connect *st = h->data;
    pconn *c = PARLEY_CONTAINER_OF((uv_tcp_t *)h, pconn, tcp);
    st->reopening = false;
    c->flags &= ~PCONN_REOPENING;
    c->tcp.data = c;
    if (c->flags & PCONN_CLOSED) {
        /* Closed (or timed out) while the old socket was going away. */
        if (!st->c) st_release(st);
        on_uv_close(h);
        return;
    }
    uv_tcp_init(c->loop->uv, &c->tcp);
    c->tcp.data = c;
    try_next_address(st);
}

static void try_next_address(struct pconn_connect *st)
{
    pconn *c = st->c;
    int rc = uv_tcp_connect(&st->req, &c->tcp, st->cur->ai_addr, on_tcp_connected);
    if (rc == 0) {
        st->connecting = true;
        return;
    }
    st->last_err = uv_to_parley(rc);
    st->cur = st->cur->ai_next;
    if (!st->cur) {
        connect_done(c, st->last_err);
        return;
    }
    /* A failed socket cannot be reused: close and re-create the handle. */
    st->reopening = true;
    c->flags |= PCONN_REOPENING;
    c->tcp.data = st;
    uv_close((uv_handle_t *)&c->tcp, on_reopened);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct pconn_connect *st = PARLEY_CONTAINER_OF(req, struct pconn_connect, gai);
    st->resolving = false;
    st->res = res;
    pconn *c = st->c;
    if (!c) {
        st_release(st);
        return;
    }
    if (status < 0 || !res) {
        plog_info("resolve %s: %s", st->host, uv_strerror(status));
        connect_done(c, PARLEY_EDNS);
        return;
    }
    st->cur = res;
    try_next_address(st);
}

static void on_connect_timeout(ptimer *t)
{
    pconn *c = PARLEY_CONTAINER_OF(t, struct pconn_ext, timer)->c;
    if (XCONN(c)) connect_done(c, PARLEY_ETIMEDOUT);
}

int pconn_bind_local(pconn *c, const char *ip)
{
    struct sockaddr_storage ss;
    if (uv_ip4_addr(ip, 0, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(ip, 0, (struct sockaddr_in6 *)&ss) != 0)
        return PARLEY_EINVAL;
    return uv_tcp_bind(&c->tcp, (struct sockaddr *)&ss, 0) == 0 ? 0 : PARLEY_EINVAL;
}

int pconn_proxy_status(const pconn *c)
{
    return c->x ? c->x->proxy_status : 0;
}

int pconn_connect(pconn *c, const char *host, unsigned port, ptls_ctx *tls, uint64_t timeout_ms)
{
    return pconn_connect_via(c, NULL, host, port, tls, timeout_ms);
}

int pconn_connect_via(pconn *c, const pproxy *proxy, const char *host, unsigned port,
                      ptls_ctx *tls, uint64_t timeout_ms)
{
    if (!host || !*host || port == 0 || port > 65535) return PARLEY_EINVAL;
    if (strlen(host) >= sizeof(((struct pconn_connect *)0)->host)) return PARLEY_EINVAL;
    struct pconn_connect *st = pcalloc(1, sizeof *st);
    if (!st) return PARLEY_ENOMEM;
    st->c = c;
    st->tls = tls;
    snprintf(st->host, sizeof st->host, "%s", host);
    if (proxy) {
        if (!proxy->host[0] || proxy->port == 0 || proxy->port > 65535 ||
            strchr(host, '\r') || strchr(host, '\n')) {
            free(st);
            return PARLEY_EINVAL;
        }
        st->tun = pcalloc(1, sizeof *st->tun);
        pbuf r = {0};
        bool v6 = strchr(host, ':') != NULL;
        if (st->tun) {
            pbuf_appendf(&r, "CONNECT %s%s%s:%u HTTP/1.1\r\nHost: %s%s%s:%u\r\n", v6 ? "[" : "",
                         host, v6 ? "]" : "", port, v6 ? "[" : "", host, v6 ? "]" : "", port);
            if (proxy->auth[0]) pbuf_appendf(&r, "Proxy-Authorization: %s\r\n", proxy->auth);
            pbuf_append_str(&r, "\r\n");
        }
        if (!st->tun || !r.ptr) {
            pbuf_free(&r);
            st_release(st);
            return PARLEY_ENOMEM;
        }
        st->tun->req = (char *)r.ptr;
        st->tun->req_len = r.len;
        host = proxy->host;
        port = proxy->port;
    }
    if (!ext(c)) {
        st_release(st);
        return PARLEY_ENOMEM;
    }
    c->x->proxy_status = 0;
    c->x->connecting = st;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&st->literal_addr) == 0 ||
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&st->literal_addr) == 0) {
        st->literal.ai_family = st->literal_addr.ss_family;
        st->literal.ai_socktype = SOCK_STREAM;
        st->literal.ai_addr = (struct sockaddr *)&st->literal_addr;
        st->literal.ai_addrlen = st->literal_addr.ss_family == AF_INET
                                     ? sizeof(struct sockaddr_in)
                                     : sizeof(struct sockaddr_in6);
        st->cur = &st->literal;
        if (timeout_ms) start_timer(c, on_connect_timeout, timeout_ms);
        try_next_address(st);
        return 0;
    }
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%u", port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    int rc = uv_getaddrinfo(c->loop->uv, &st->gai, on_resolved, host, portstr, &hints);
    if (rc != 0) {
        c->x->connecting = NULL;
        st_release(st);
        return PARLEY_EDNS;
    }
    st->resolving = true;
    if (timeout_ms) start_timer(c, on_connect_timeout, timeout_ms);
    return 0;
}
