/* Fuzzes the TZif parser and the evaluation of what it accepts: offsets at
 * the extremes, around the epoch, in the table and in the footer's years
 * stay inside RFC 8536's range, and quiet hours never misbehave. A failed
 * parse leaves nothing behind. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "codec/tzif.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536) return 0;
    /* An exact-size copy, so that ASan catches any read past the end. */
    uint8_t *copy = malloc(size ? size : 1);
    CHECK(copy);
    for (size_t i = 0; i < size; i++) copy[i] = data[i];
    tz_zone *z = (tz_zone *)copy; /* must be overwritten either way */
    int rc = tzif_parse(copy, size, &z);
    if (rc != 0) {
        CHECK(z == NULL);
    } else {
        CHECK(z != NULL);
        static const int64_t ts[] = {
            INT64_MIN,  INT64_MIN + 1, -((int64_t)1 << 59), -2208988800,   -1,
            0,          1774745999,    1774746000,          1792890000,    2147483647,
            4118126400, 32503680000,   (int64_t)1 << 57,    INT64_MAX - 1, INT64_MAX};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
            int32_t off = tz_offset(z, ts[i]);
            CHECK(off >= -89999 && off <= 93599);
        }
        /* Times taken from the input itself hit its own transitions. */
        for (size_t i = 0; i + 8 <= size && i < 512; i += 8) {
            int64_t t = 0;
            for (int k = 0; k < 8; k++) t = (int64_t)((uint64_t)t << 8 | copy[i + k]);
            int32_t off = tz_offset(z, t);
            CHECK(off >= -89999 && off <= 93599);
            CHECK(tz_offset(z, t) == off); /* pure */
            bool a = tz_in_quiet_hours(z, 22 * 60, 7 * 60, t);
            bool b = tz_in_quiet_hours(z, 7 * 60, 22 * 60, t);
            CHECK(a != b); /* complementary windows */
        }
        tz_free(z);
    }
    free(copy);
    return 0;
}
