#include "chop.h"

#include <stdio.h>
#include <stdlib.h>

uint64_t test_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t chop_seed(void)
{
    static int printed;
    static uint64_t seed = 0x5eed5eedull;
    if (!printed) {
        const char *s = getenv("PARLEY_TEST_SEED");
        if (s && *s) seed = strtoull(s, NULL, 0);
        fprintf(stderr, "[chop] PARLEY_TEST_SEED=0x%llx\n", (unsigned long long)seed);
        printed = 1;
    }
    return seed;
}

void chop_init(chopper *c, chop_mode mode, uint64_t seed)
{
    c->mode = mode;
    c->rng = seed;
}

size_t chop_next(chopper *c, size_t remaining)
{
    if (remaining == 0) return 0;
    switch (c->mode) {
    case CHOP_WHOLE: return remaining;
    case CHOP_BYTES: return 1;
    case CHOP_RANDOM: break;
    }
    uint64_t r = test_rand(&c->rng);
    size_t n;
    switch (r % 4) {
    case 0: n = 1 + (size_t)((r >> 8) % 3); break;
    case 1: n = 1 + (size_t)((r >> 8) % 16); break;
    case 2: n = 1 + (size_t)((r >> 8) % 200); break;
    default: n = 1 + (size_t)((r >> 8) % 70000); break;
    }
    return n < remaining ? n : remaining;
}
