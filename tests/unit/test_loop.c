/* The loop on a thread of its own, and calls into it from other threads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/net.h"
#include "parley/parley.h"

typedef struct counter {
    parley_loop *loop;
    long n;          /* touched only on the loop thread */
    long off_thread; /* calls that ran elsewhere: must stay 0 */
} counter;

static void bump(void *arg)
{
    counter *c = arg;
    if (!ploop_on_thread(c->loop)) c->off_thread++;
    c->n++;
}

static void *hammer(void *arg)
{
    counter *c = arg;
    for (int i = 0; i < 2000; i++) assert_int_equal(ploop_call(c->loop, bump, c), 0);
    return NULL;
}

static void test_calls_from_threads(void **state)
{
    (void)state;
    counter c = {.loop = parley_loop_new()};
    assert_non_null(c.loop);
    /* Before the loop runs elsewhere, calls on this thread run in place. */
    assert_true(ploop_on_thread(c.loop));
    assert_int_equal(ploop_call(c.loop, bump, &c), 0);
    assert_int_equal(c.n, 1);

    assert_int_equal(parley_loop_start(c.loop), 0);
    assert_int_equal(parley_loop_start(c.loop), PARLEY_ESTATE);
    assert_false(ploop_on_thread(c.loop));
    pthread_t th[4];
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&th[i], NULL, hammer, &c), 0);
    hammer(&c);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    assert_int_equal(c.n, 1 + 5 * 2000);
    assert_int_equal(c.off_thread, 0);
    parley_loop_join(c.loop);
    /* After the join the loop belongs to this thread again. */
    assert_true(ploop_on_thread(c.loop));
    assert_int_equal(ploop_call(c.loop, bump, &c), 0);
    assert_int_equal(c.n, 2 + 5 * 2000);
    /* Started again, joined by free. */
    assert_int_equal(parley_loop_start(c.loop), 0);
    hammer(&c);
    parley_loop_free(c.loop);
    assert_int_equal(c.n, 2 + 6 * 2000);
}

static void test_wrapped_loop_is_not_started(void **state)
{
    (void)state;
    uv_loop_t uv;
    assert_int_equal(uv_loop_init(&uv), 0);
    parley_loop *l = parley_loop_wrap_uv(&uv);
    assert_non_null(l);
    assert_int_equal(parley_loop_start(l), PARLEY_EINVAL);
    assert_int_equal(parley_loop_run(l), PARLEY_EINVAL);
    parley_loop_free(l);
    uv_run(&uv, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&uv), 0);
}

typedef struct pipe_write {
    int fd;
    ssize_t n;
    int err;
} pipe_write;

static void write_to_gone_peer(void *arg)
{
    pipe_write *w = arg;
    w->n = write(w->fd, "x", 1);
    w->err = errno;
}

/* A peer that goes away while the loop writes to it (a server killed mid-
 * stream) must fail that write, not end the application: before the loop
 * thread blocked SIGPIPE, libparley's test driver died of it now and then.
 * The process here keeps SIGPIPE's default action, as an application that
 * never heard of it does; the write on the loop's own thread gets EPIPE. */
static void test_own_thread_survives_a_gone_peer(void **state)
{
    (void)state;
    struct sigaction dfl = {.sa_handler = SIG_DFL}, old;
    sigemptyset(&dfl.sa_mask);
    assert_int_equal(sigaction(SIGPIPE, &dfl, &old), 0);
    sigset_t none, mask;
    sigemptyset(&none);
    assert_int_equal(pthread_sigmask(SIG_SETMASK, &none, NULL), 0);

    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(close(sv[1]), 0);
    parley_loop *l = parley_loop_new();
    assert_non_null(l);
    assert_int_equal(parley_loop_start(l), 0);
    pipe_write w = {.fd = sv[0]};
    assert_int_equal(ploop_call(l, write_to_gone_peer, &w), 0);
    assert_int_equal(w.n, -1);
    assert_int_equal(w.err, EPIPE);
    parley_loop_join(l);
    parley_loop_free(l);
    close(sv[0]);

    /* The application's thread and disposition are as they were. */
    assert_int_equal(pthread_sigmask(SIG_SETMASK, NULL, &mask), 0);
    assert_int_equal(sigismember(&mask, SIGPIPE), 0);
    struct sigaction now;
    assert_int_equal(sigaction(SIGPIPE, &old, &now), 0);
    assert_true(now.sa_handler == SIG_DFL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calls_from_threads),
        cmocka_unit_test(test_wrapped_loop_is_not_started),
        cmocka_unit_test(test_own_thread_survives_a_gone_peer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
