/* The admin access rule's pieces (server/admin_auth.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>

#include "parley/parley.h"
#include "server/admin_auth.h"

static struct sockaddr_storage addr(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
    }
    return ss;
}

static bool lo(const char *ip)
{
    struct sockaddr_storage ss = addr(ip);
    return padmin_addr_is_loopback((struct sockaddr *)&ss);
}

static void test_loopback(void **state)
{
    (void)state;
    assert_true(lo("127.0.0.1"));
    assert_true(lo("127.255.3.4"));
    assert_true(lo("::1"));
    assert_true(lo("::ffff:127.0.0.1"));
    assert_false(lo("10.0.0.1"));
    assert_false(lo("128.0.0.1"));
    assert_false(lo("::2"));
    assert_false(lo("::ffff:10.0.0.1"));
    assert_false(lo("fe80::1"));
    parley_loop *loop = parley_loop_new();
    padmin_opts o;
    padmin_opts_init(&o);
    assert_true(o.loopback); /* on by default */
    padmin *a;
    assert_int_equal(padmin_new(loop, &o, &a), 0);
    struct sockaddr_storage one = addr("127.0.0.1");
    assert_true(padmin_is_loopback(a, (struct sockaddr *)&one));
    /* The same rule for addresses in text (the Admin UI namespace's). */
    assert_true(padmin_ip_is_loopback(a, "127.0.0.1"));
    assert_true(padmin_ip_is_loopback(a, "127.8.9.10"));
    assert_true(padmin_ip_is_loopback(a, "::1"));
    assert_true(padmin_ip_is_loopback(a, "::ffff:127.0.0.1"));
    assert_false(padmin_ip_is_loopback(a, "10.0.0.1"));
    assert_false(padmin_ip_is_loopback(a, "::ffff:10.0.0.1"));
    assert_false(padmin_ip_is_loopback(a, "127.0.0.1 "));
    assert_false(padmin_ip_is_loopback(a, "localhost"));
    assert_false(padmin_ip_is_loopback(a, ""));
    assert_false(padmin_ip_is_loopback(a, NULL));
    padmin_free(a);
    o.loopback = false; /* --admin-loopback off */
    assert_int_equal(padmin_new(loop, &o, &a), 0);
    assert_false(padmin_is_loopback(a, (struct sockaddr *)&one));
    assert_false(padmin_ip_is_loopback(a, "127.0.0.1"));
    padmin_free(a);
    parley_loop_free(loop);
}

static void test_key(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    padmin_opts o;
    padmin_opts_init(&o);
    padmin *a;
    /* No key: nothing matches, not even the empty string. */
    assert_int_equal(padmin_new(loop, &o, &a), 0);
    assert_false(padmin_has_key(a));
    assert_false(padmin_check_key(a, "", 0));
    assert_false(padmin_check_key(a, "x", 1));
    padmin_free(a);
    o.key = "correct horse battery staple";
    assert_int_equal(padmin_new(loop, &o, &a), 0);
    assert_true(padmin_has_key(a));
    assert_true(padmin_check_key(a, "correct horse battery staple", 28));
    assert_false(padmin_check_key(a, "correct horse battery stapl", 27));
    assert_false(padmin_check_key(a, "correct horse battery staple!", 29));
    assert_false(padmin_check_key(a, "Correct horse battery staple", 28));
    assert_false(padmin_check_key(a, "", 0));
    padmin_free(a);
    parley_loop_free(loop);
}

static void test_sessions(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    padmin_opts o;
    padmin_opts_init(&o);
    o.key = "0123456789abcdef";
    padmin *a;
    assert_int_equal(padmin_new(loop, &o, &a), 0);
    char t1[PADMIN_TOKEN_HEX + 1], t2[PADMIN_TOKEN_HEX + 1];
    assert_int_equal(padmin_session_new(a, t1), 0);
    assert_int_equal(padmin_session_new(a, t2), 0);
    assert_int_equal(strlen(t1), PADMIN_TOKEN_HEX);
    assert_string_not_equal(t1, t2);
    assert_null(strstr(t1, "0123456789abcdef")); /* not the key */
    assert_true(padmin_session_ok(a, t1, PADMIN_TOKEN_HEX));
    assert_false(padmin_session_ok(a, t1, PADMIN_TOKEN_HEX - 1));
    char bad[PADMIN_TOKEN_HEX + 1];
    memcpy(bad, t1, sizeof bad);
    bad[0] = bad[0] == 'a' ? 'b' : 'a';
    assert_false(padmin_session_ok(a, bad, PADMIN_TOKEN_HEX));
    assert_int_equal(padmin_sessions(a), 2);
    padmin_session_end(a, t1, PADMIN_TOKEN_HEX);
    assert_false(padmin_session_ok(a, t1, PADMIN_TOKEN_HEX));
    assert_true(padmin_session_ok(a, t2, PADMIN_TOKEN_HEX));
    /* Bounded: many more logins than slots keep the table at its size;
     * the newest sessions are live. */
    char last[PADMIN_TOKEN_HEX + 1];
    for (int i = 0; i < 3 * PADMIN_SESSIONS_MAX; i++)
        assert_int_equal(padmin_session_new(a, last), 0);
    assert_int_equal(padmin_sessions(a), PADMIN_SESSIONS_MAX);
    assert_true(padmin_session_ok(a, last, PADMIN_TOKEN_HEX));
    padmin_free(a);
    parley_loop_free(loop);
}

static void test_cookie(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    padmin_opts o;
    padmin_opts_init(&o);
    padmin *a;
    assert_int_equal(padmin_new(loop, &o, &a), 0);
    char c[256];
    assert_int_equal(padmin_cookie(a, "abc", c, sizeof c), 0);
    assert_string_equal(c, "parley_admin=abc; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict");
    assert_int_equal(padmin_cookie(a, NULL, c, sizeof c), 0);
    assert_string_equal(c, "parley_admin=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
    assert_int_not_equal(padmin_cookie(a, "abc", c, 10), 0);
    padmin_free(a);
    o.tls = true;
    assert_int_equal(padmin_new(loop, &o, &a), 0);
    assert_int_equal(padmin_cookie(a, "abc", c, sizeof c), 0);
    assert_non_null(strstr(c, "; Secure"));
    padmin_free(a);
    /* Finding the cookie among others, in several Cookie headers. */
    http_header hs[] = {{"Host", 4, "x", 1},
                        {"Cookie", 6, "a=1; parley_adminx=no", 21},
                        {"cookie", 6, "b=2;parley_admin=tok123 ; c=3", 29}};
    http_head h = {.headers = hs, .num_headers = 3};
    const char *v;
    size_t n;
    assert_true(padmin_find_cookie(&h, "parley_admin", &v, &n));
    assert_int_equal(n, 6);
    assert_memory_equal(v, "tok123", 6);
    assert_false(padmin_find_cookie(&h, "missing", &v, &n));
    parley_loop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loopback),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_sessions),
        cmocka_unit_test(test_cookie),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
