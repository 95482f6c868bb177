/* Unit tests for the incremental UTF-8 validator: boundaries, overlongs,
 * surrogates, truncation, the exact byte a sequence is rejected at, and
 * agreement of every way of splitting the input with a reference that
 * decodes code points the slow way. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "chop.h"
#include "codec/utf8.h"

/* Reference, written from RFC 3629 section 4 rather than as a state
 * machine: a partial sequence is acceptable while some completion of it
 * still encodes a scalar value in the range its length allows. */
static bool completable(uint32_t v, int rem, uint32_t lo, uint32_t hi)
{
    uint32_t a = v << (6 * rem);
    uint32_t b = a | ((1u << (6 * rem)) - 1);
    if (b < lo || a > hi) return false;
    if (a < lo) a = lo;
    if (b > hi) b = hi;
    return !(a >= 0xD800 && b <= 0xDFFF);
}

/* Index of the first byte after which no valid completion exists, or n;
 * *partial tells whether the input ends inside a sequence. */
static size_t ref_first_bad(const uint8_t *s, size_t n, bool *partial)
{
    *partial = false;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int k;
        uint32_t v, lo, hi;
        if (c >= 0xC0 && c <= 0xDF) {
            k = 1, v = c & 0x1F, lo = 0x80, hi = 0x7FF;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2, v = c & 0x0F, lo = 0x800, hi = 0xFFFF;
        } else if (c >= 0xF0 && c <= 0xF7) {
            k = 3, v = c & 0x07, lo = 0x10000, hi = 0x10FFFF;
        } else {
            return i;
        }
        if (!completable(v, k, lo, hi)) return i;
        for (int j = 1; j <= k; j++) {
            if (i + (size_t)j >= n) {
                *partial = true;
                return n;
            }
            uint8_t t = s[i + (size_t)j];
            if ((t & 0xC0) != 0x80) return i + (size_t)j;
            v = v << 6 | (t & 0x3F);
            if (!completable(v, k - j, lo, hi)) return i + (size_t)j;
        }
        i += (size_t)k + 1;
    }
    return n;
}

/* Index where the state first becomes UTF8_REJECT when fed byte by byte,
 * or n. */
static size_t reject_index(const uint8_t *s, size_t n, uint32_t *final)
{
    uint32_t st = UTF8_OK;
    for (size_t i = 0; i < n; i++) {
        st = utf8_step(st, s + i, 1);
        if (st == UTF8_REJECT) {
            *final = st;
            return i;
        }
    }
    *final = st;
    return n;
}

/* Checks one input against the reference in every feeding mode. */
static void check_all_ways(const uint8_t *s, size_t n)
{
    bool partial;
    size_t bad = ref_first_bad(s, n, &partial);
    uint32_t whole = utf8_step(UTF8_OK, s, n);
    if (bad < n)
        assert_int_equal(whole, UTF8_REJECT);
    else if (partial)
        assert_true(whole != UTF8_OK && whole != UTF8_REJECT);
    else
        assert_int_equal(whole, UTF8_OK);
    assert_int_equal(utf8_valid(s, n), bad == n && !partial);

    uint32_t st;
    assert_int_equal(reject_index(s, n, &st), bad);
    assert_int_equal(st, whole);

    chopper c;
    chop_init(&c, CHOP_RANDOM, chop_seed() ^ n);
    for (int round = 0; round < 4; round++) {
        uint32_t s2 = UTF8_OK;
        size_t off = 0;
        while (off < n) {
            size_t k = chop_next(&c, n - off);
            s2 = utf8_step(s2, s + off, k);
            off += k;
        }
        assert_int_equal(s2, whole);
    }
}

typedef struct ucase {
    const char *name;
    const char *bytes;
    size_t len;
    long reject_at; /* -1: valid; -2: ends inside a sequence */
} ucase;

#define U(name, lit, at)                                                                           \
    {                                                                                              \
        name, lit, sizeof(lit) - 1, at                                                             \
    }

static const ucase cases[] = {
    /* Boundaries of each sequence length. */
    U("empty", "", -1),
    U("U+0000", "\x00", -1),
    U("U+007F", "\x7f", -1),
    U("U+0080", "\xc2\x80", -1),
    U("U+07FF", "\xdf\xbf", -1),
    U("U+0800", "\xe0\xa0\x80", -1),
    U("U+D7FF", "\xed\x9f\xbf", -1),
    U("U+E000", "\xee\x80\x80", -1),
    U("U+FFFD", "\xef\xbf\xbd", -1),
    U("U+FFFE noncharacter", "\xef\xbf\xbe", -1),
    U("U+FFFF", "\xef\xbf\xbf", -1),
    U("U+10000", "\xf0\x90\x80\x80", -1),
    U("U+FFFFF", "\xf3\xbf\xbf\xbf", -1),
    U("U+100000", "\xf4\x80\x80\x80", -1),
    U("U+10FFFF", "\xf4\x8f\xbf\xbf", -1),
    U("mixed", "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80z", -1),
    U("kosme", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", -1),
    /* Stray continuation bytes. */
    U("lone 80", "\x80", 0),
    U("lone BF", "\xbf", 0),
    U("continuation after ASCII", "abc\x80", 3),
    U("extra continuation", "\xc2\x80\x80", 2),
    /* Bytes that never appear. */
    U("C0", "\xc0", 0),
    U("C1", "\xc1", 0),
    U("F5", "\xf5\x80\x80\x80", 0),
    U("F7 max 4-byte", "\xf7\xbf\xbf\xbf", 0),
    U("F8 5-byte", "\xf8\x88\x80\x80\x80", 0),
    U("FC 6-byte", "\xfc\x84\x80\x80\x80\x80", 0),
    U("FE", "\xfe", 0),
    U("FF", "\xff", 0),
    /* Overlongs, rejected at the byte that proves them. */
    U("overlong / 2", "\xc0\xaf", 0),
    U("overlong / 3", "\xe0\x80\xaf", 1),
    U("overlong / 4", "\xf0\x80\x80\xaf", 1),
    U("max overlong 2", "\xc1\xbf", 0),
    U("max overlong 3", "\xe0\x9f\xbf", 1),
    U("max overlong 4", "\xf0\x8f\xbf\xbf", 1),
    U("overlong NUL 2", "\xc0\x80", 0),
    U("overlong NUL 3", "\xe0\x80\x80", 1),
    /* Surrogates. */
    U("U+D800", "\xed\xa0\x80", 1),
    U("U+DB7F", "\xed\xad\xbf", 1),
    U("U+DB80", "\xed\xae\x80", 1),
    U("U+DBFF", "\xed\xaf\xbf", 1),
    U("U+DC00", "\xed\xb0\x80", 1),
    U("U+DF80", "\xed\xbe\x80", 1),
    U("U+DFFF", "\xed\xbf\xbf", 1),
    U("surrogate pair", "\xed\xa0\x80\xed\xb0\x80", 1),
    U("surrogate after text", "ab\xed\xa0", 3),
    /* Above U+10FFFF. */
    U("U+110000", "\xf4\x90\x80\x80", 1),
    U("F4 BF", "\xf4\xbf\xbf\xbf", 1),
    /* Missing continuation bytes. */
    U("2-byte then ASCII", "\xc2\x41", 1),
    U("3-byte then ASCII", "\xe1\x80\x41", 2),
    U("4-byte then ASCII", "\xf1\x80\x80\x41", 3),
    U("lead after lead", "\xc2\xc2\x80", 1),
    U("3-byte lead after 1", "\xe2\xe2\x82\xac", 1),
    /* Truncated at the end. */
    U("truncated 2", "\xc2", -2),
    U("truncated 3/1", "\xe0", -2),
    U("truncated 3/2", "\xe0\xa0", -2),
    U("truncated 4/3", "\xf4\x8f\xbf", -2),
    U("text then truncated", "hello\xf0\x9f\x98", -2),
};

static void test_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(cases); i++) {
        const ucase *c = &cases[i];
        const uint8_t *s = (const uint8_t *)c->bytes;
        uint32_t st;
        size_t at = reject_index(s, c->len, &st);
        if (c->reject_at >= 0) {
            if (at != (size_t)c->reject_at) fail_msg("%s: rejected at %zu", c->name, at);
            assert_int_equal(st, UTF8_REJECT);
            assert_false(utf8_valid(s, c->len));
        } else {
            if (at != c->len) fail_msg("%s: rejected at %zu", c->name, at);
            if (c->reject_at == -1) {
                assert_int_equal(st, UTF8_OK);
                assert_true(utf8_valid(s, c->len));
            } else {
                assert_true(st != UTF8_OK && st != UTF8_REJECT);
                assert_false(utf8_valid(s, c->len));
            }
        }
        check_all_ways(s, c->len);
    }
}

/* Every 1-, 2- and 3-byte input against the reference; 4-byte inputs for
 * every lead and second byte with representative tails. */
static void test_exhaustive(void **state)
{
    (void)state;
    uint8_t b[4];
    for (unsigned x = 0; x < 256; x++) {
        b[0] = (uint8_t)x;
        check_all_ways(b, 1);
        for (unsigned y = 0; y < 256; y++) {
            b[1] = (uint8_t)y;
            bool partial;
            size_t bad = ref_first_bad(b, 2, &partial);
            uint32_t st;
            assert_int_equal(reject_index(b, 2, &st), bad);
            /* Rejection is sticky (checked above by check_all_ways on
             * cases), so a third byte only matters after a good prefix. */
            unsigned zmax = bad == 2 ? 256 : 4;
            for (unsigned z = 0; z < zmax; z++) {
                b[2] = (uint8_t)(z * 67);
                bad = ref_first_bad(b, 3, &partial);
                uint32_t whole = utf8_step(UTF8_OK, b, 3);
                assert_int_equal(reject_index(b, 3, &st), bad);
                assert_int_equal(st, whole);
                if (bad == 3) assert_int_equal(whole == UTF8_OK, !partial);
            }
        }
    }
    static const uint8_t tails[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90,
                                    0x9f, 0xa0, 0xbf, 0xc0, 0xff};
    for (unsigned x = 0xf0; x <= 0xf4; x++)
        for (unsigned y = 0; y < 256; y++)
            for (size_t t = 0; t < sizeof tails; t++)
                for (size_t u = 0; u < sizeof tails; u++) {
                    b[0] = (uint8_t)x;
                    b[1] = (uint8_t)y;
                    b[2] = tails[t];
                    b[3] = tails[u];
                    check_all_ways(b, 4);
                }
}

/* The word-at-a-time ASCII path must not skip over a bad byte at any
 * position or alignment, nor a lead byte that starts a sequence. */
static void test_ascii_fast_path(void **state)
{
    (void)state;
    uint8_t buf[80];
    for (size_t start = 0; start < 8; start++) {
        for (size_t n = 1; n + start <= 72; n++) {
            for (size_t pos = 0; pos < n; pos++) {
                uint8_t *s = buf + start;
                memset(s, 'a', n);
                s[pos] = 0xff;
                uint32_t st;
                assert_int_equal(reject_index(s, n, &st), pos);
                assert_int_equal(utf8_step(UTF8_OK, s, n), UTF8_REJECT);
                /* A valid two-byte character at pos, cut or whole. */
                s[pos] = 0xc3;
                if (pos + 1 < n) {
                    s[pos + 1] = 0xa9;
                    assert_true(utf8_valid(s, n));
                    s[pos + 1] = 'a';
                    assert_int_equal(utf8_step(UTF8_OK, s, n), UTF8_REJECT);
                } else {
                    uint32_t mid = utf8_step(UTF8_OK, s, n);
                    assert_true(mid != UTF8_OK && mid != UTF8_REJECT);
                    assert_int_equal(utf8_step(mid, (const uint8_t *)"\xa9", 1), UTF8_OK);
                }
            }
        }
    }
    /* A long ASCII run is valid, and a character straddling two calls is
     * carried by the state. */
    uint8_t big[4096];
    memset(big, 'x', sizeof big);
    assert_true(utf8_valid(big, sizeof big));
    big[4095] = 0xe2;
    uint32_t st = utf8_step(UTF8_OK, big, sizeof big);
    st = utf8_step(st, (const uint8_t *)"\x82", 1);
    assert_true(st != UTF8_OK && st != UTF8_REJECT);
    assert_int_equal(utf8_step(st, (const uint8_t *)"\xac", 1), UTF8_OK);
}

static void test_sticky_and_bad_state(void **state)
{
    (void)state;
    uint32_t st = utf8_step(UTF8_OK, (const uint8_t *)"\xff", 1);
    assert_int_equal(st, UTF8_REJECT);
    assert_int_equal(utf8_step(st, (const uint8_t *)"abc", 3), UTF8_REJECT);
    assert_int_equal(utf8_step(st, NULL, 0), UTF8_REJECT);
    assert_int_equal(utf8_step(UTF8_OK, NULL, 0), UTF8_OK);
    /* A value that was never handed out is not trusted. */
    assert_int_equal(utf8_step(12345u, (const uint8_t *)"a", 1), UTF8_REJECT);
    /* An in-sequence state needs continuation, not a new character. */
    st = utf8_step(UTF8_OK, (const uint8_t *)"\xe2\x82", 2);
    assert_int_equal(utf8_step(st, (const uint8_t *)"a", 1), UTF8_REJECT);
    assert_int_equal(utf8_step(st, NULL, 0), st);
}

/* Random mixes of valid characters and occasional garbage, checked in
 * all feeding modes. */
static void test_random(void **state)
{
    (void)state;
    uint64_t rng = chop_seed();
    static const char *pieces[] = {"a",
                                   "\x7f",
                                   "\xc2\x80",
                                   "\xdf\xbf",
                                   "\xe0\xa0\x80",
                                   "\xed\x9f\xbf",
                                   "\xee\x80\x80",
                                   "\xef\xbf\xbf",
                                   "\xf0\x90\x80\x80",
                                   "\xf4\x8f\xbf\xbf",
                                   "hello world, plain ascii text"};
    uint8_t buf[512];
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = 0;
        while (n < sizeof buf - 40) {
            uint64_t r = test_rand(&rng);
            if (r % 97 == 0) {
                buf[n++] = (uint8_t)(r >> 8);
            } else {
                const char *pc = pieces[(r >> 16) % PARLEY_ARRAY_LEN(pieces)];
                size_t k = strlen(pc);
                memcpy(buf + n, pc, k);
                n += k;
            }
            if ((r >> 32) % 50 == 0) break;
        }
        check_all_ways(buf, n);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),           cmocka_unit_test(test_exhaustive),
        cmocka_unit_test(test_ascii_fast_path), cmocka_unit_test(test_sticky_and_bad_state),
        cmocka_unit_test(test_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
