/* Unit tests for Engine.IO v4 packets and polling payloads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/util.h"
#include "chop.h"
#include "codec/eio.h"
#include "parley/parley.h"

static void test_parse_text(void **state)
{
    (void)state;
    for (int t = 0; t <= 6; t++) {
        uint8_t s[8] = {(uint8_t)('0' + t), 'a', 'b', 'c'};
        eio_packet p;
        memset(&p, 0xa5, sizeof p);
        assert_int_equal(eio_parse_text(s, 4, &p), 0);
        assert_int_equal(p.type, t);
        assert_false(p.binary);
        assert_ptr_equal(p.data, s + 1);
        assert_int_equal(p.len, 3);
        memset(&p, 0xa5, sizeof p);
        assert_int_equal(eio_parse_text(s, 1, &p), 0);
        assert_int_equal(p.type, t);
        assert_int_equal(p.len, 0);
    }
    /* the data is passed through untouched, separators included */
    uint8_t m[] = "4\x1e\0\xff";
    eio_packet p;
    assert_int_equal(eio_parse_text(m, 4, &p), 0);
    assert_int_equal(p.len, 3);
    assert_memory_equal(p.data, "\x1e\0\xff", 3);

    static const char bad[] = {'7', '8', '9', 'b', 'a', '/', ' ', 0x1e, '\0', '-', (char)0xb4};
    for (size_t i = 0; i < sizeof bad; i++) {
        uint8_t s[2] = {(uint8_t)bad[i], 'x'};
        assert_int_equal(eio_parse_text(s, 2, &p), PARLEY_EPROTO);
        assert_int_equal(eio_parse_text(s, 1, &p), PARLEY_EPROTO);
    }
    uint8_t e[1] = {'4'};
    assert_int_equal(eio_parse_text(e, 0, &p), PARLEY_EPROTO);
}

/* Expected packet: type, binary, data (len given for binary). */
typedef struct xpkt {
    int type;
    bool binary;
    const char *data;
    size_t len;
} xpkt;

/* Runs the iterator over a copy of body and compares with want[]; when
 * err_at >= 0, the call after err_at packets must fail (and keep
 * failing). */
static void check_payload(const char *body, size_t len, const xpkt *want, size_t n, int err_at)
{
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, body, len);
    eio_payload it;
    eio_payload_init(&it, copy, len);
    eio_packet p;
    for (size_t i = 0; i < n; i++) {
        memset(&p, 0xa5, sizeof p);
        int rc = eio_payload_next(&it, &p);
        if (rc != 1) print_error("packet %zu of %.*s: rc %d\n", i, (int)len, body, rc);
        assert_int_equal(rc, 1);
        assert_int_equal(p.type, want[i].type);
        assert_int_equal(p.binary, want[i].binary);
        size_t wl = want[i].binary ? want[i].len : strlen(want[i].data);
        assert_int_equal(p.len, wl);
        assert_memory_equal(p.data, want[i].data, wl);
        assert_true(p.data >= copy && p.data + p.len <= copy + len);
    }
    if (err_at >= 0) {
        assert_int_equal(eio_payload_next(&it, &p), PARLEY_EPROTO);
        assert_int_equal(eio_payload_next(&it, &p), PARLEY_EPROTO);
    } else {
        assert_int_equal(eio_payload_next(&it, &p), 0);
        assert_int_equal(eio_payload_next(&it, &p), 0);
    }
    free(copy);
}

static void test_payloads(void **state)
{
    (void)state;
    {
        /* the reference encoder's output for [message "hello", message
         * <01 02 03>, ping, message "€€€", message <>] */
        const char body[] = "4hello\x1e"
                            "bAQID\x1e"
                            "2\x1e"
                            "4\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\x1e"
                            "b";
        xpkt w[] = {{4, false, "hello", 0},
                    {4, true, "\x01\x02\x03", 3},
                    {2, false, "", 0},
                    {4, false, "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac", 0},
                    {4, true, "", 0}};
        check_payload(body, sizeof body - 1, w, 5, -1);
    }
    {
        xpkt w[] = {{4, false, "hello", 0}};
        check_payload("4hello", 6, w, 1, -1);
    }
    {
        xpkt w[] = {{2, false, "", 0}, {3, false, "probe", 0}, {6, false, "", 0},
                    {1, false, "", 0}, {0, false, "{}", 0},    {5, false, "", 0}};
        check_payload("2\x1e"
                      "3probe\x1e"
                      "6\x1e"
                      "1\x1e"
                      "0{}\x1e"
                      "5",
                      18, w, 6, -1);
    }
    {
        xpkt w[] = {{4, false, "", 0}};
        check_payload("4", 1, w, 1, -1);
    }
    {
        xpkt w[] = {{4, true, "\0", 1}, {4, true, "\x1e\xff", 2}, {4, true, "\xfb\xff\xbf", 3}};
        check_payload("bAA==\x1e"
                      "bHv8=\x1e"
                      "b+/+/",
                      17, w, 3, -1);
    }
    {
        /* text packets may hold anything but the separator */
        xpkt w[] = {{4, false, "a\0b\xff", 0}};
        const char body[] = "4a\0b\xff";
        uint8_t *copy = malloc(5);
        memcpy(copy, body, 5);
        eio_payload it;
        eio_packet p;
        eio_payload_init(&it, copy, 5);
        assert_int_equal(eio_payload_next(&it, &p), 1);
        assert_int_equal(p.len, 4);
        assert_memory_equal(p.data, w[0].data, 4);
        assert_int_equal(eio_payload_next(&it, &p), 0);
        free(copy);
    }

    /* malformed: empty body, empty packets, trailing separator, bad type,
     * bad base64 (strict: the reference's Buffer.from would be lenient) */
    xpkt one[] = {{4, false, "a", 0}};
    static const struct {
        const char *body;
        size_t good; /* packets before the error */
    } bad[] = {
        {"", 0},
        {"\x1e", 0},
        {"4a\x1e", 1},
        {"\x1e"
         "4a",
         0},
        {"4a\x1e\x1e"
         "4a",
         1},
        {"7x", 0},
        {"4a\x1e"
         "9",
         1},
        {"x4a", 0},
        {" 4a", 0},
        {"4a\x1e"
         "B4a",
         1},
        {"bAQ", 0},
        {"bAQI", 0},
        {"bAQJ=", 0},
        {"bAQID=", 0},
        {"bAQ=D", 0},
        {"b====", 0},
        {"b AQID", 0},
        {"bAQID\n", 0},
        {"bAQ-_", 0},
        {"4a\x1e"
         "bA",
         1},
        {"4a\x1e"
         "b=",
         1},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++)
        check_payload(bad[i].body, strlen(bad[i].body), one, bad[i].good, 0);
}

static void test_append(void **state)
{
    (void)state;
    pbuf b = {0};
    assert_int_equal(eio_payload_append(&b, true, EIO_MESSAGE, false, (const uint8_t *)"hello", 5),
                     0);
    assert_int_equal(eio_payload_append(&b, false, EIO_MESSAGE, true, (const uint8_t *)"\1\2\3", 3),
                     0);
    assert_int_equal(eio_payload_append(&b, false, EIO_PING, false, NULL, 0), 0);
    assert_int_equal(eio_payload_append(&b, false, EIO_MESSAGE, false,
                                        (const uint8_t *)"\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac", 9),
                     0);
    assert_int_equal(eio_payload_append(&b, false, EIO_MESSAGE, true, NULL, 0), 0);
    /* byte for byte what engine.io-parser's encodePayload writes */
    const char want[] = "4hello\x1e"
                        "bAQID\x1e"
                        "2\x1e"
                        "4\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\x1e"
                        "b";
    assert_int_equal(b.len, sizeof want - 1);
    assert_memory_equal(b.ptr, want, b.len);

    /* errors leave the buffer as it was */
    size_t before = b.len;
    assert_int_equal(eio_payload_append(&b, false, -1, false, NULL, 0), PARLEY_EINVAL);
    assert_int_equal(eio_payload_append(&b, false, 7, false, NULL, 0), PARLEY_EINVAL);
    assert_int_equal(eio_payload_append(&b, false, EIO_PING, true, (const uint8_t *)"x", 1),
                     PARLEY_EINVAL);
    assert_int_equal(eio_payload_append(&b, false, EIO_MESSAGE, false,
                                        (const uint8_t *)"a\x1e"
                                                         "2",
                                        3),
                     PARLEY_EINVAL);
    assert_int_equal(b.len, before);
    /* a binary message may hold separators: it is base64 */
    assert_int_equal(eio_payload_append(&b, false, EIO_MESSAGE, true, (const uint8_t *)"\x1e", 1),
                     0);
    assert_int_equal(b.len, before + 6);
    assert_memory_equal(b.ptr + before,
                        "\x1e"
                        "bHg==",
                        6);
    pbuf_free(&b);

    /* every type digit */
    for (int t = 0; t <= 6; t++) {
        pbuf c = {0};
        assert_int_equal(eio_payload_append(&c, true, t, false, (const uint8_t *)"x", 1), 0);
        assert_int_equal(c.len, 2);
        assert_int_equal(c.ptr[0], '0' + t);
        pbuf_free(&c);
    }
}

static void test_size_exact(void **state)
{
    (void)state;
    uint8_t data[200];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7 + 1) == 0x1e ? 0 : (uint8_t)(i * 7 + 1);
    for (size_t len = 0; len <= sizeof data; len++) {
        for (int first = 0; first <= 1; first++) {
            for (int bin = 0; bin <= 1; bin++) {
                pbuf b = {0};
                pbuf_append_str(&b, "xyz");
                assert_int_equal(eio_payload_append(&b, first, EIO_MESSAGE, bin, data, len), 0);
                assert_int_equal(b.len - 3, eio_payload_size(first, bin, len));
                size_t want = (first ? 0 : 1) + 1 + (bin ? (len + 2) / 3 * 4 : len);
                assert_int_equal(eio_payload_size(first, bin, len), want);
                pbuf_free(&b);
            }
        }
    }
    /* absurd sizes saturate rather than wrap */
    assert_int_equal(eio_payload_size(false, true, SIZE_MAX), SIZE_MAX);
    assert_int_equal(eio_payload_size(false, true, SIZE_MAX / 4 * 3), SIZE_MAX);
    assert_int_equal(eio_payload_size(false, false, SIZE_MAX), SIZE_MAX);
    assert_int_equal(eio_payload_size(false, false, SIZE_MAX - 1), SIZE_MAX);
    assert_int_equal(eio_payload_size(true, false, SIZE_MAX - 1), SIZE_MAX);
    assert_int_equal(eio_payload_size(false, false, SIZE_MAX - 3), SIZE_MAX - 1);
}

/* Random packets -> payload -> iterator -> the same packets. Each round
 * draws new packet boundaries (and lengths of every residue mod 3 for the
 * base64 padding). */
static void test_random_round_trip(void **state)
{
    (void)state;
    uint64_t rng = chop_seed() ^ 0x65696full;
    enum { MAXP = 40 };
    for (int round = 0; round < 2000; round++) {
        struct {
            int type;
            bool binary;
            uint8_t data[300];
            size_t len;
        } pk[MAXP];
        size_t n = 1 + test_rand(&rng) % MAXP;
        pbuf b = {0};
        size_t expect_len = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t r = test_rand(&rng);
            pk[i].binary = r % 3 == 0;
            pk[i].type = pk[i].binary ? EIO_MESSAGE : (int)((r >> 8) % 7);
            pk[i].len = (r >> 16) % 4 == 0 ? (r >> 24) % 300 : (r >> 24) % 8;
            for (size_t k = 0; k < pk[i].len; k++) {
                uint8_t c = (uint8_t)test_rand(&rng);
                if (!pk[i].binary && c == EIO_SEPARATOR) c = 'x';
                pk[i].data[k] = c;
            }
            expect_len += eio_payload_size(i == 0, pk[i].binary, pk[i].len);
            assert_int_equal(
                eio_payload_append(&b, i == 0, pk[i].type, pk[i].binary, pk[i].data, pk[i].len), 0);
            assert_int_equal(b.len, expect_len);
        }
        eio_payload it;
        eio_packet p;
        eio_payload_init(&it, b.ptr, b.len);
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(eio_payload_next(&it, &p), 1);
            assert_int_equal(p.type, pk[i].type);
            assert_int_equal(p.binary, pk[i].binary);
            assert_int_equal(p.len, pk[i].len);
            if (p.len) assert_memory_equal(p.data, pk[i].data, p.len);
        }
        assert_int_equal(eio_payload_next(&it, &p), 0);
        pbuf_free(&b);
    }
}

/* A corrupted payload never yields bytes outside the body, and it stops
 * at the first malformed packet. */
static void test_random_corruption(void **state)
{
    (void)state;
    uint64_t rng = chop_seed() ^ 0xbadull;
    static const uint8_t alphabet[] = "0123456789b=+/AZaz\x1e\x1e\x1e";
    for (int round = 0; round < 20000; round++) {
        size_t len = test_rand(&rng) % 24;
        uint8_t *body = malloc(len ? len : 1);
        for (size_t i = 0; i < len; i++)
            body[i] = alphabet[test_rand(&rng) % (sizeof alphabet - 1)];
        eio_payload it;
        eio_packet p;
        eio_payload_init(&it, body, len);
        int rc;
        size_t count = 0;
        while ((rc = eio_payload_next(&it, &p)) == 1) {
            assert_true(p.data >= body && p.data + p.len <= body + len);
            assert_true(p.type >= 0 && p.type <= 6);
            assert_true(++count <= len);
        }
        assert_true(rc == 0 || rc == PARLEY_EPROTO);
        /* the final verdict repeats */
        assert_int_equal(eio_payload_next(&it, &p), rc);
        free(body);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_text),
        cmocka_unit_test(test_payloads),
        cmocka_unit_test(test_append),
        cmocka_unit_test(test_size_exact),
        cmocka_unit_test(test_random_round_trip),
        cmocka_unit_test(test_random_corruption),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
