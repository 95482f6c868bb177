/* The loop context: one uv timer for all ptimers, the flush list, shared
 * read buffers. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include "base/log.h"
#include "base/util.h"
#include "net/conn_internal.h"
#include "net/net.h"

static void on_uv_timer(uv_timer_t *t)
{
    parley_loop *l = t->data;
    l->timer_due = UINT64_MAX;
    ptimer_heap_run(&l->timers, ploop_now(l));
    ptimer *next = ptimer_heap_peek(&l->timers);
    if (next) {
        uint64_t now = ploop_now(l);
        uint64_t delay = next->deadline > now ? next->deadline - now : 0;
        l->timer_due = next->deadline;
        uv_timer_start(&l->timer, on_uv_timer, delay, 0);
    }
}

int ploop_timer_start(parley_loop *l, ptimer *t, uint64_t delay_ms)
{
    uint64_t now = ploop_now(l);
    uint64_t due = delay_ms > UINT64_MAX - now ? UINT64_MAX - 1 : now + delay_ms;
    int rc = ptimer_heap_add(&l->timers, t, due);
    if (rc) return rc;
    /* Only an earlier deadline needs the uv timer moved; a later or removed
     * one at worst causes one empty wake-up. */
    if (due < l->timer_due) {
        l->timer_due = due;
        uv_timer_start(&l->timer, on_uv_timer, delay_ms, 0);
    }
    return 0;
}

void ploop_timer_stop(parley_loop *l, ptimer *t)
{
    ptimer_heap_remove(&l->timers, t);
    if (l->timers.n == 0 && l->timer_due != UINT64_MAX) {
        uv_timer_stop(&l->timer);
        l->timer_due = UINT64_MAX;
    }
}

const uint8_t *ploop_random(parley_loop *l, unsigned n)
{
    if (n > 64) return NULL;
    if (l->rnd_left < n) {
        if (prand_bytes(l->rnd, sizeof l->rnd) != 0) return NULL;
        l->rnd_left = sizeof l->rnd;
    }
    l->rnd_left -= n;
    return l->rnd + l->rnd_left;
}

void ploop_defer(parley_loop *l, pdefer *d)
{
    if (d->queued) return;
    d->queued = true;
    d->next = l->defer_head;
    l->defer_head = d;
}

void ploop_defer_cancel(parley_loop *l, pdefer *d)
{
    if (!d->queued) return;
    pdefer **pp = &l->defer_head;
    while (*pp && *pp != d) pp = &(*pp)->next;
    if (*pp) *pp = d->next;
    d->queued = false;
    d->next = NULL;
}

void ploop_flush(parley_loop *l)
{
    /* Repeat until quiet: deferred work produces output, and flushing can
     * redeliver input whose handlers defer work or write again. Everything
     * must be out before the loop blocks in poll. */
    while (l->defer_head || l->flush_head) {
        while (l->defer_head) {
            pdefer *d = l->defer_head;
            l->defer_head = d->next;
            d->next = NULL;
            d->queued = false;
            d->cb(d);
        }
        pconn *c = l->flush_head;
        l->flush_head = NULL;
        while (c) {
            pconn *next = c->flush_next;
            c->flush_next = NULL;
            c->flags &= ~PCONN_FLUSH_LIST;
            pconn__flush(c);
            c = next;
        }
    }
}

static void on_prepare(uv_prepare_t *h)
{
    ploop_flush(h->data);
}

static void on_check(uv_check_t *h)
{
    ploop_flush(h->data);
}

/* ---- calls from other threads ---- */

struct pcall {
    struct pcall *next;
    void (*fn)(void *arg);
    void *arg;
    bool done;
};

bool ploop_on_thread(parley_loop *l)
{
    uv_thread_t self = uv_thread_self();
    uv_mutex_lock(&l->mu);
    bool on = uv_thread_equal(&self, &l->loop_thread) != 0;
    uv_mutex_unlock(&l->mu);
    return on;
}

static void run_calls(parley_loop *l)
{
    uv_mutex_lock(&l->mu);
    struct pcall *c = l->calls;
    l->calls = NULL;
    uv_mutex_unlock(&l->mu);
    /* Oldest first: the list was built newest first. */
    struct pcall *rev = NULL;
    while (c) {
        struct pcall *next = c->next;
        c->next = rev;
        rev = c;
        c = next;
    }
    for (c = rev; c;) {
        struct pcall *next = c->next; /* c lives on a waiting thread's stack */
        c->fn(c->arg);
        uv_mutex_lock(&l->mu);
        c->done = true;
        uv_cond_broadcast(&l->cond);
        uv_mutex_unlock(&l->mu);
        c = next;
    }
}

static void on_async(uv_async_t *h)
{
    parley_loop *l = h->data;
    run_calls(l);
    uv_mutex_lock(&l->mu);
    bool stop = l->stopping;
    uv_mutex_unlock(&l->mu);
    if (stop) {
        uv_unref((uv_handle_t *)&l->async);
        uv_stop(l->uv);
    }
}

int ploop_call(parley_loop *l, void (*fn)(void *arg), void *arg)
{
    if (ploop_on_thread(l)) {
        fn(arg);
        return 0;
    }
    struct pcall c = {.fn = fn, .arg = arg};
    uv_mutex_lock(&l->mu);
    if (l->stopping) {
        uv_mutex_unlock(&l->mu);
        return PARLEY_ECLOSED;
    }
    c.next = l->calls;
    l->calls = &c;
    uv_mutex_unlock(&l->mu);
    uv_async_send(&l->async);
    uv_mutex_lock(&l->mu);
    while (!c.done) uv_cond_wait(&l->cond, &l->mu);
    uv_mutex_unlock(&l->mu);
    return 0;
}

typedef struct start_arg {
    parley_loop *l;
    uv_sem_t ready;
} start_arg;

static void loop_thread_main(void *arg)
{
    start_arg *sa = arg;
    parley_loop *l = sa->l;
    /* A write to a socket the peer has reset raises SIGPIPE on the writing
     * thread, and its default action ends the whole process: an
     * application that never touched SIGPIPE would die because a server
     * went away. Blocked on this thread only, the write fails with EPIPE
     * and the connection closes; the process's disposition is left alone. */
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, NULL);
    uv_mutex_lock(&l->mu);
    l->loop_thread = uv_thread_self();
    uv_mutex_unlock(&l->mu);
    uv_sem_post(&sa->ready); /* sa is gone after this */
    uv_run(l->uv, UV_RUN_DEFAULT);
    /* Calls that raced with the stop still get their answer. */
    run_calls(l);
}

int parley_loop_start(parley_loop *loop)
{
    if (!loop->owned) return PARLEY_EINVAL;
    if (loop->started) return PARLEY_ESTATE;
    start_arg sa = {.l = loop};
    if (uv_sem_init(&sa.ready, 0) != 0) return PARLEY_ENOMEM;
    /* The async handle keeps the thread's loop alive while idle. */
    uv_ref((uv_handle_t *)&loop->async);
    loop->started = true;
    if (uv_thread_create(&loop->own_thread, loop_thread_main, &sa) != 0) {
        uv_unref((uv_handle_t *)&loop->async);
        loop->started = false;
        uv_sem_destroy(&sa.ready);
        return PARLEY_ENOMEM;
    }
    /* From here on ploop_on_thread is true only on the loop's thread. */
    uv_sem_wait(&sa.ready);
    uv_sem_destroy(&sa.ready);
    return 0;
}

void parley_loop_join(parley_loop *loop)
{
    if (!loop->started) return;
    uv_mutex_lock(&loop->mu);
    loop->stopping = true;
    uv_mutex_unlock(&loop->mu);
    uv_async_send(&loop->async);
    uv_thread_join(&loop->own_thread);
    uv_mutex_lock(&loop->mu);
    loop->started = false;
    loop->stopping = false;
    /* The loop is driven from this thread from now on (parley_loop_free). */
    loop->loop_thread = uv_thread_self();
    uv_mutex_unlock(&loop->mu);
}

static int loop_setup(parley_loop *l)
{
    l->rbuf = malloc(PNET_READ_BUF_SIZE);
    l->pbuf = malloc(PNET_READ_BUF_SIZE);
    if (!l->rbuf || !l->pbuf) return PARLEY_ENOMEM;
    l->timer_due = UINT64_MAX;
    uv_timer_init(l->uv, &l->timer);
    uv_prepare_init(l->uv, &l->prepare);
    uv_check_init(l->uv, &l->check);
    l->timer.data = l->prepare.data = l->check.data = l;
    uv_prepare_start(&l->prepare, on_prepare);
    uv_check_start(&l->check, on_check);
    if (uv_mutex_init(&l->mu) != 0) return PARLEY_ENOMEM;
    if (uv_cond_init(&l->cond) != 0) return PARLEY_ENOMEM;
    uv_async_init(l->uv, &l->async, on_async);
    l->async.data = l;
    uv_unref((uv_handle_t *)&l->async);
    /* A loop is created on the thread that will run it, unless started. */
    l->loop_thread = uv_thread_self();
    /* The flush hooks never keep the loop alive; the timer does while any
     * ptimer is armed, because an armed timer is pending work. */
    uv_unref((uv_handle_t *)&l->prepare);
    uv_unref((uv_handle_t *)&l->check);
    return 0;
}

parley_loop *parley_loop_new(void)
{
    parley_loop *l = pcalloc(1, sizeof *l);
    if (!l) return NULL;
    if (uv_loop_init(&l->own) != 0) {
        free(l);
        return NULL;
    }
    l->uv = &l->own;
    l->owned = true;
    if (loop_setup(l) != 0) {
        uv_loop_close(&l->own);
        free(l->rbuf);
        free(l->pbuf);
        free(l);
        return NULL;
    }
    return l;
}

parley_loop *parley_loop_wrap_uv(void *uv_loop)
{
    if (!uv_loop) return NULL;
    parley_loop *l = pcalloc(1, sizeof *l);
    if (!l) return NULL;
    l->uv = uv_loop;
    if (loop_setup(l) != 0) {
        free(l->rbuf);
        free(l->pbuf);
        free(l);
        return NULL;
    }
    return l;
}

void *parley_loop_uv(parley_loop *loop)
{
    return loop->uv;
}

int parley_loop_run(parley_loop *loop)
{
    if (!loop->owned || loop->started) return PARLEY_EINVAL;
    uv_mutex_lock(&loop->mu);
    loop->loop_thread = uv_thread_self();
    uv_mutex_unlock(&loop->mu);
    uv_run(loop->uv, UV_RUN_DEFAULT);
    return 0;
}

void parley_loop_stop(parley_loop *loop)
{
    uv_stop(loop->uv);
}

void parley_loop_free(parley_loop *loop)
{
    if (!loop) return;
    parley_loop_join(loop);
    if (loop->nconns) plog_warn("parley_loop_free: %u connections still open", loop->nconns);
    uv_close((uv_handle_t *)&loop->timer, NULL);
    uv_close((uv_handle_t *)&loop->prepare, NULL);
    uv_close((uv_handle_t *)&loop->check, NULL);
    uv_close((uv_handle_t *)&loop->async, NULL);
    /* Let the close callbacks run (they are NULL, but libuv must unlink the
     * handles before the memory goes away). */
    uv_run(loop->uv, UV_RUN_NOWAIT);
    if (loop->owned) {
        uv_run(loop->uv, UV_RUN_DEFAULT);
        if (uv_loop_close(loop->uv) != 0) plog_warn("parley_loop_free: libuv loop still busy");
    }
    ptimer_heap_free(&loop->timers);
    uv_mutex_destroy(&loop->mu);
    uv_cond_destroy(&loop->cond);
    free(loop->rbuf);
    free(loop->pbuf);
    free(loop);
}
