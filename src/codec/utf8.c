#include "utf8.h"

#include <string.h>

/*
 * States inside a sequence. Each names the range the next byte must fall
 * in and how many continuation bytes follow it. Only the first
 * continuation byte after E0, ED, F0 and F4 has a narrower range (Unicode
 * Table 3-7); checking that range at that byte is what rejects overlongs,
 * surrogates and code points above U+10FFFF at the first byte that proves
 * them, instead of after the whole sequence has been read.
 */
enum {
    ST_TAIL1 = 1, /* 80..BF, then done */
    ST_TAIL2,     /* 80..BF, then ST_TAIL1 */
    ST_TAIL3,     /* 80..BF, then ST_TAIL2 */
    ST_E0,        /* A0..BF, then ST_TAIL1 (no 3-byte overlongs) */
    ST_ED,        /* 80..9F, then ST_TAIL1 (no surrogates) */
    ST_F0,        /* 90..BF, then ST_TAIL2 (no 4-byte overlongs) */
    ST_F4,        /* 80..8F, then ST_TAIL2 (nothing above U+10FFFF) */
    ST_COUNT
};

static const uint8_t cont_lo[ST_COUNT] = {0, 0x80, 0x80, 0x80, 0xA0, 0x80, 0x90, 0x80};
static const uint8_t cont_hi[ST_COUNT] = {0, 0xBF, 0xBF, 0xBF, 0xBF, 0x9F, 0xBF, 0x8F};
static const uint8_t cont_next[ST_COUNT] = {0,        UTF8_OK,  ST_TAIL1, ST_TAIL2,
                                            ST_TAIL1, ST_TAIL1, ST_TAIL2, ST_TAIL2};

/* The state a lead byte >= 0x80 starts, or UTF8_REJECT. C0 and C1 could
 * only start overlong encodings of ASCII; F5..FF would encode values above
 * U+10FFFF; 80..BF are continuation bytes with nothing to continue. */
static uint32_t lead_state(uint8_t c)
{
    if (c < 0xC2) return UTF8_REJECT;
    if (c < 0xE0) return ST_TAIL1;
    if (c == 0xE0) return ST_E0;
    if (c == 0xED) return ST_ED;
    if (c < 0xF0) return ST_TAIL2;
    if (c == 0xF0) return ST_F0;
    if (c < 0xF4) return ST_TAIL3;
    if (c == 0xF4) return ST_F4;
    return UTF8_REJECT;
}

#define ASCII_MASK 0x8080808080808080ull

uint32_t utf8_step(uint32_t state, const uint8_t *s, size_t n)
{
    if (state == UTF8_REJECT) return UTF8_REJECT;
    if (state >= ST_COUNT) return UTF8_REJECT; /* not a state we hand out */
    size_t i = 0;
    while (i < n) {
        if (state == UTF8_OK) {
            /* Text is mostly ASCII: skip it a word at a time. memcpy keeps
             * the loads alignment-safe; compilers make them plain loads. */
            while (n - i >= 16) {
                uint64_t a, b;
                memcpy(&a, s + i, 8);
                memcpy(&b, s + i + 8, 8);
                if ((a | b) & ASCII_MASK) break;
                i += 16;
            }
            if (n - i >= 8) {
                uint64_t a;
                memcpy(&a, s + i, 8);
                if (!(a & ASCII_MASK)) {
                    i += 8;
                    continue;
                }
            }
            while (i < n && s[i] < 0x80) i++;
            if (i == n) break;
            state = lead_state(s[i++]);
            if (state == UTF8_REJECT) return UTF8_REJECT;
            continue;
        }
        uint8_t c = s[i++];
        if (c < cont_lo[state] || c > cont_hi[state]) return UTF8_REJECT;
        state = cont_next[state];
    }
    return state;
}

bool utf8_valid(const uint8_t *s, size_t n)
{
    return utf8_step(UTF8_OK, s, n) == UTF8_OK;
}
