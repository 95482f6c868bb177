/* Incremental UTF-8 validation (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF). The state carries a partial sequence across
 * calls, so a text message split anywhere (across fragments or reads) is
 * validated as it arrives and rejected at the first byte that cannot start
 * or continue a valid sequence. */
#ifndef PARLEY_CODEC_UTF8_H
#define PARLEY_CODEC_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UTF8_OK     0u          /* at a character boundary */
#define UTF8_REJECT 0xffffffffu /* invalid: sticky */

/* Continues validation from `state` over s[0, n); returns the new state:
 * UTF8_OK, UTF8_REJECT, or another value meaning "inside a sequence". */
uint32_t utf8_step(uint32_t state, const uint8_t *s, size_t n);

/* True when s[0, n) is complete, valid UTF-8. */
bool utf8_valid(const uint8_t *s, size_t n);

#endif
