/* Unit tests for content-addressed media files: ids are SHA-256, content
 * is stored once, reads are bounded and checked against the id, crash
 * leftovers are cleaned up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/buf.h"
#include "chop.h"
#include "parley/parley.h"
#include "services/media.h"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/media-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

static void test_hash(void **state)
{
    (void)state;
    char id[MSG_MEDIA_ID_LEN + 1];
    assert_int_equal(media_hash("", 0, id), 0);
    assert_string_equal(id, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_int_equal(media_hash("abc", 3, id), 0);
    assert_string_equal(id, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_put_get(void **state)
{
    (void)state;
    char root[128];
    snprintf(root, sizeof root, "%s/media", dir);
    media_store *m = NULL;
    assert_int_equal(media_open(root, false, &m), 0);
    uint64_t rng = chop_seed();
    uint8_t data[5000];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)test_rand(&rng);
    char id[MSG_MEDIA_ID_LEN + 1], id2[MSG_MEDIA_ID_LEN + 1], want[MSG_MEDIA_ID_LEN + 1];
    assert_int_equal(media_hash(data, sizeof data, want), 0);
    assert_int_equal(media_put(m, data, sizeof data, id), 0);
    assert_string_equal(id, want);
    char path[256];
    snprintf(path, sizeof path, "%s/%.2s/%s", root, id, id);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, (off_t)sizeof data);
    /* Stored once: a second put does not rewrite the file. */
    time_t before = st.st_mtime;
    assert_int_equal(media_put(m, data, sizeof data, id2), 0);
    assert_string_equal(id2, id);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mtime, before);

    pbuf out = {0};
    pbuf_append(&out, "xy", 2); /* appends after what is there */
    assert_int_equal(media_get(m, id, sizeof data, &out), 0);
    assert_int_equal(out.len, 2 + sizeof data);
    assert_memory_equal(out.ptr + 2, data, sizeof data);
    pbuf_free(&out);
    /* Bounded. */
    assert_int_equal(media_get(m, id, sizeof data - 1, &out), PARLEY_ELIMIT);
    assert_int_equal(out.len, 0);
    /* Unknown and malformed ids. */
    assert_int_equal(media_get(m,
                               "0000000000000000000000000000000000000000000000000000000000000000",
                               1 << 20, &out),
                     PARLEY_EAGAIN);
    assert_int_equal(media_get(m, "../../etc/passwd", 1 << 20, &out), PARLEY_EINVAL);
    assert_int_equal(media_get(m, id + 1, 1 << 20, &out), PARLEY_EINVAL);
    /* A file whose content no longer matches its name is not served. */
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fputc(data[0] ^ 1, f);
    fclose(f);
    assert_int_equal(media_get(m, id, 1 << 20, &out), PARLEY_EIO);
    assert_int_equal(out.len, 0);
    /* ... and an upload of the right bytes replaces it. */
    assert_int_equal(media_put(m, data, sizeof data, id), 0);
    assert_int_equal(media_get(m, id, 1 << 20, &out), 0);
    assert_memory_equal(out.ptr, data, sizeof data);
    pbuf_free(&out);
    unlink(path);
    assert_int_equal(media_get(m, id, 1 << 20, &out), PARLEY_EAGAIN);
    assert_int_equal(media_put(m, data, sizeof data, id), 0);
    assert_int_equal(media_get(m, id, 1 << 20, &out), 0);
    pbuf_free(&out);
    media_close(m);
}

static void test_crash_leftovers(void **state)
{
    (void)state;
    char root[128], tmp[192];
    snprintf(root, sizeof root, "%s/left", dir);
    media_store *m = NULL;
    assert_int_equal(media_open(root, false, &m), 0);
    media_close(m);
    snprintf(tmp, sizeof tmp, "%s/tmp-abcdef", root);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs("half a file", f);
    fclose(f);
    assert_int_equal(media_open(root, true, &m), 0);
    assert_int_equal(access(tmp, F_OK), -1);
    /* fsync mode stores as well. */
    char id[MSG_MEDIA_ID_LEN + 1];
    assert_int_equal(media_put(m, "synced", 6, id), 0);
    pbuf out = {0};
    assert_int_equal(media_get(m, id, 6, &out), 0);
    assert_memory_equal(out.ptr, "synced", 6);
    pbuf_free(&out);
    media_close(m);
    /* A path that cannot be a directory. */
    snprintf(tmp, sizeof tmp, "%s/a-file", dir);
    f = fopen(tmp, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(root, sizeof root, "%s/a-file/sub", dir);
    assert_int_equal(media_open(root, false, &m), PARLEY_EIO);
    assert_null(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash),
        cmocka_unit_test(test_put_get),
        cmocka_unit_test(test_crash_leftovers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
