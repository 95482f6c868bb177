/* Test helper: feed a parser its input whole, byte by byte, or in random
 * pieces. Every parser test runs each case through all three. */
#ifndef PARLEY_TEST_CHOP_H
#define PARLEY_TEST_CHOP_H

#include <stddef.h>
#include <stdint.h>

typedef enum chop_mode { CHOP_WHOLE, CHOP_BYTES, CHOP_RANDOM } chop_mode;

typedef struct chopper {
    chop_mode mode;
    uint64_t rng;
} chopper;

/* Seed for CHOP_RANDOM: PARLEY_TEST_SEED from the environment, else a fixed
 * value, so failures reproduce. Printed once per process. */
uint64_t chop_seed(void);

void chop_init(chopper *c, chop_mode mode, uint64_t seed);

/* Size of the next piece to feed, 1..remaining (0 only when remaining is 0).
 * Random pieces are mostly small, sometimes large. */
size_t chop_next(chopper *c, size_t remaining);

/* splitmix64: deterministic pseudo-random numbers for tests. */
uint64_t test_rand(uint64_t *state);

#endif
