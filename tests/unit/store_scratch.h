/*
 * Test helper: a messaging store file in a fresh temporary directory
 * (services/store/mstore.h), removed with its WAL files afterwards. Include
 * after cmocka.h.
 */
#ifndef PARLEY_TEST_STORE_SCRATCH_H
#define PARLEY_TEST_STORE_SCRATCH_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "services/store/mstore.h"

typedef struct scratch {
    char dir[64];
    char path[96];
} scratch;

/* A directory /tmp/<tag>-test-XXXXXX and the path m.db in it. */
static inline void scratch_init_tag(scratch *s, const char *tag)
{
    snprintf(s->dir, sizeof s->dir, "/tmp/%.20s-test-XXXXXX", tag);
    assert_non_null(mkdtemp(s->dir));
    snprintf(s->path, sizeof s->path, "%s/m.db", s->dir);
}

static inline void scratch_free(const scratch *s)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        char p[128];
        snprintf(p, sizeof p, "%s%s", s->path, suffix[i]);
        unlink(p);
    }
    assert_int_equal(rmdir(s->dir), 0);
}

static inline mstore *open_store(const char *path)
{
    mstore *st = NULL;
    assert_int_equal(mstore_open(path, false, &st), 0);
    assert_non_null(st);
    return st;
}

#endif
