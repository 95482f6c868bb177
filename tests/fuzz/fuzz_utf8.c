/* libFuzzer target: differential test of the UTF-8 validator. The input
 * is validated whole, byte by byte and in random splits; all must agree
 * with each other and with a slow reference written here from RFC 3629,
 * including the index of the byte at which the input is rejected. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec/utf8.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Can a sequence with value bits v so far and rem continuation bytes to
 * come still encode a scalar value in [lo, hi] outside the surrogates? */
static bool completable(uint32_t v, int rem, uint32_t lo, uint32_t hi)
{
    uint32_t a = v << (6 * rem);
    uint32_t b = a | ((1u << (6 * rem)) - 1);
    if (b < lo || a > hi) return false;
    if (a < lo) a = lo;
    if (b > hi) b = hi;
    return !(a >= 0xD800 && b <= 0xDFFF);
}

/* Index of the first byte that no valid continuation can follow, or n;
 * *partial: the input ends inside a sequence. */
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool partial;
    size_t bad = ref_first_bad(data, size, &partial);
    uint32_t whole = utf8_step(UTF8_OK, data, size);
    if (bad < size)
        CHECK(whole == UTF8_REJECT);
    else if (partial)
        CHECK(whole != UTF8_OK && whole != UTF8_REJECT);
    else
        CHECK(whole == UTF8_OK);
    CHECK(utf8_valid(data, size) == (whole == UTF8_OK));

    /* Byte by byte: rejected exactly at the reference's byte. */
    uint32_t st = UTF8_OK;
    size_t at = size;
    for (size_t i = 0; i < size; i++) {
        st = utf8_step(st, data + i, 1);
        if (st == UTF8_REJECT && at == size) at = i;
    }
    CHECK(at == bad);
    CHECK(st == whole);

    /* Random splits, seeded from the input. */
    uint32_t rng = 0x9e3779b9u ^ (uint32_t)size;
    for (size_t i = 0; i < size && i < 8; i++) rng = rng * 31 + data[i];
    for (int round = 0; round < 3; round++) {
        st = UTF8_OK;
        size_t off = 0;
        while (off < size) {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            size_t k = 1 + rng % (round == 0 ? 3 : round == 1 ? 17 : 300);
            if (k > size - off) k = size - off;
            st = utf8_step(st, data + off, k);
            off += k;
        }
        CHECK(st == whole);
    }
    return 0;
}
