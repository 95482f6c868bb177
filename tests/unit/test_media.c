/* Unit tests for content-addressed media files: ids are SHA-256, content
 * is stored once, reads are bounded and checked against the id, crash
 * leftovers are cleaned up; streamed uploads (whole, chopped, content
 * already stored or damaged, aborted, over the limit, a process dying
 * mid-upload); a media path that is a file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "chop.h"
#include "parley/parley.h"
#include "services/server/media.h"

static char dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/media-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    umask(022); /* the modes asked for are the modes seen */
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

/* ---- streamed uploads ---- */

/* Temporaries in root: their number; the last name in name. */
static int temporaries(const char *root, char *name, size_t cap)
{
    DIR *d = opendir(root);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, "tmp-", 4) == 0) {
            n++;
            if (name) snprintf(name, cap, "%s", e->d_name);
        }
    closedir(d);
    return n;
}

static void fill(uint8_t *p, size_t n, uint64_t *rng)
{
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)test_rand(rng);
}

static void test_stream_whole(void **state)
{
    (void)state;
    char root[128];
    snprintf(root, sizeof root, "%s/whole", dir);
    media_store *m = NULL;
    assert_int_equal(media_open(root, false, &m), 0);
    uint64_t rng = chop_seed();
    static uint8_t data[300000];
    fill(data, sizeof data, &rng);
    char want[MSG_MEDIA_ID_LEN + 1], id[MSG_MEDIA_ID_LEN + 1];
    assert_int_equal(media_hash(data, sizeof data, want), 0);

    media_writer *w = NULL;
    assert_int_equal(media_begin(m, sizeof data, &w), 0);
    assert_non_null(w);
    /* While it is written: one temporary with an unguessable name, 0640. */
    char name[256], path[512];
    assert_int_equal(temporaries(root, name, sizeof name), 1);
    assert_int_equal(strlen(name), 4 + 32);
    for (size_t i = 4; i < 36; i++) assert_non_null(strchr("0123456789abcdef", name[i]));
    snprintf(path, sizeof path, "%s/%s", root, name);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    /* A second writer gets a name of its own. */
    media_writer *w2 = NULL;
    assert_int_equal(media_begin(m, 10, &w2), 0);
    assert_int_equal(temporaries(root, NULL, 0), 2);
    media_abort(w2);
    assert_int_equal(temporaries(root, NULL, 0), 1);

    assert_int_equal(media_write(w, data, sizeof data), 0);
    bool existed = true;
    assert_int_equal(media_finish(w, id, &existed), 0);
    assert_string_equal(id, want);
    assert_false(existed);
    assert_int_equal(temporaries(root, NULL, 0), 0);
    snprintf(path, sizeof path, "%s/%.2s/%s", root, id, id);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, (off_t)sizeof data);
    assert_int_equal(st.st_mode & 0777, 0640);
    pbuf out = {0};
    assert_int_equal(media_get(m, id, sizeof data, &out), 0);
    assert_memory_equal(out.ptr, data, sizeof data);
    pbuf_free(&out);
    /* Nothing at all is content too. */
    assert_int_equal(media_begin(m, 0, &w), 0);
    assert_int_equal(media_finish(w, id, &existed), 0);
    assert_string_equal(id, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    media_abort(NULL);
    media_close(m);
}

static void test_stream_chunked(void **state)
{
    (void)state;
    char root[128];
    snprintf(root, sizeof root, "%s/chunked", dir);
    media_store *m = NULL;
    assert_int_equal(media_open(root, true, &m), 0); /* fsync mode */
    uint64_t rng = chop_seed() ^ 0x5752;
    static uint8_t data[100000];
    fill(data, sizeof data, &rng);
    for (int round = 0; round < 20; round++) {
        size_t len = round == 0 ? 300 : 1 + (size_t)(test_rand(&rng) % sizeof data);
        data[0] = (uint8_t)round; /* other content each round */
        char want[MSG_MEDIA_ID_LEN + 1], id[MSG_MEDIA_ID_LEN + 1];
        assert_int_equal(media_hash(data, len, want), 0);
        media_writer *w;
        assert_int_equal(media_begin(m, len, &w), 0);
        /* Byte by byte first, random chops (empty ones too) after. */
        size_t off = 0;
        while (off < len) {
            size_t n = round == 0 ? 1 : (size_t)(test_rand(&rng) % 5000);
            if (n > len - off) n = len - off;
            assert_int_equal(media_write(w, data + off, n), 0);
            off += n;
        }
        bool existed = true;
        assert_int_equal(media_finish(w, id, &existed), 0);
        assert_string_equal(id, want);
        assert_false(existed);
        pbuf out = {0};
        assert_int_equal(media_get(m, id, len, &out), 0);
        assert_int_equal(out.len, len);
        assert_memory_equal(out.ptr, data, len);
        pbuf_free(&out);
    }
    assert_int_equal(temporaries(root, NULL, 0), 0);
    media_close(m);
}

static void test_stream_existing(void **state)
{
    (void)state;
    char root[128], path[512];
    snprintf(root, sizeof root, "%s/existing", dir);
    media_store *m = NULL;
    assert_int_equal(media_open(root, false, &m), 0);
    static const char data[] = "the same bytes, uploaded twice";
    char id[MSG_MEDIA_ID_LEN + 1], id2[MSG_MEDIA_ID_LEN + 1];
    assert_int_equal(media_put(m, data, sizeof data, id), 0);
    snprintf(path, sizeof path, "%s/%.2s/%s", root, id, id);
    struct stat before, after;
    assert_int_equal(stat(path, &before), 0);
    /* Stored already: the temporary goes, the stored file stays. */
    media_writer *w;
    assert_int_equal(media_begin(m, 1000, &w), 0);
    assert_int_equal(media_write(w, data, 10), 0);
    assert_int_equal(media_write(w, data + 10, sizeof data - 10), 0);
    bool existed = false;
    assert_int_equal(media_finish(w, id2, &existed), 0);
    assert_true(existed);
    assert_string_equal(id2, id);
    assert_int_equal(stat(path, &after), 0);
    assert_int_equal(after.st_ino, before.st_ino);
    assert_int_equal(temporaries(root, NULL, 0), 0);
    /* A damaged copy is replaced by the upload. */
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fputc('T' ^ 1, f);
    fclose(f);
    pbuf out = {0};
    assert_int_equal(media_get(m, id, 1000, &out), PARLEY_EIO);
    assert_int_equal(media_begin(m, 1000, &w), 0);
    assert_int_equal(media_write(w, data, sizeof data), 0);
    assert_int_equal(media_finish(w, id2, &existed), 0);
    assert_false(existed);
    assert_int_equal(media_get(m, id, 1000, &out), 0);
    assert_memory_equal(out.ptr, data, sizeof data);
    pbuf_free(&out);
    /* ... as is a truncated one (another size). */
    assert_int_equal(truncate(path, 5), 0);
    assert_int_equal(media_begin(m, 1000, &w), 0);
    assert_int_equal(media_write(w, data, sizeof data), 0);
    assert_int_equal(media_finish(w, id2, &existed), 0);
    assert_false(existed);
    assert_int_equal(media_get(m, id, 1000, &out), 0);
    pbuf_free(&out);
    assert_int_equal(temporaries(root, NULL, 0), 0);
    media_close(m);
}

static void test_stream_abort_and_limit(void **state)
{
    (void)state;
    char root[128];
    snprintf(root, sizeof root, "%s/limit", dir);
    media_store *m = NULL;
    assert_int_equal(media_open(root, false, &m), 0);
    char id[MSG_MEDIA_ID_LEN + 1];
    bool existed;
    /* Aborted: nothing left, nothing stored. */
    media_writer *w;
    assert_int_equal(media_begin(m, 100, &w), 0);
    assert_int_equal(media_write(w, "partial", 7), 0);
    media_abort(w);
    assert_int_equal(temporaries(root, NULL, 0), 0);
    assert_int_equal(media_hash("partial", 7, id), 0);
    pbuf out = {0};
    assert_int_equal(media_get(m, id, 100, &out), PARLEY_EAGAIN);
    /* Up to the limit exactly. */
    assert_int_equal(media_begin(m, 10, &w), 0);
    assert_int_equal(media_write(w, "0123456", 7), 0);
    assert_int_equal(media_write(w, "789", 3), 0);
    assert_int_equal(media_write(w, "", 0), 0);
    assert_int_equal(media_finish(w, id, &existed), 0);
    assert_int_equal(media_get(m, id, 10, &out), 0);
    assert_memory_equal(out.ptr, "0123456789", 10);
    pbuf_free(&out);
    /* Past it: refused, nothing of it written, and the writer fails from
     * then on; finishing stores nothing. */
    assert_int_equal(media_begin(m, 10, &w), 0);
    assert_int_equal(media_write(w, "012345", 6), 0);
    assert_int_equal(media_write(w, "6789A", 5), PARLEY_ELIMIT);
    assert_int_equal(media_write(w, "6", 1), PARLEY_ELIMIT);
    assert_int_equal(media_finish(w, id, &existed), PARLEY_ELIMIT);
    assert_string_equal(id, "");
    assert_int_equal(temporaries(root, NULL, 0), 0);
    assert_int_equal(media_hash("012345", 6, id), 0);
    assert_int_equal(media_get(m, id, 100, &out), PARLEY_EAGAIN);
    /* A huge write at once is refused the same way; abort after. */
    assert_int_equal(media_begin(m, 1 << 20, &w), 0);
    assert_int_equal(media_write(w, "x", SIZE_MAX), PARLEY_ELIMIT);
    media_abort(w);
    assert_int_equal(temporaries(root, NULL, 0), 0);
    uint64_t avail = 0;
    assert_int_equal(media_disk_free(m, &avail), 0);
    assert_true(avail > 0);
    media_close(m);
}

/* A process that dies mid-upload leaves its temporary; the next open
 * removes it, and what was stored stays. */
static void test_stream_crash(void **state)
{
    (void)state;
    char root[128];
    snprintf(root, sizeof root, "%s/crash", dir);
    media_store *m = NULL;
    assert_int_equal(media_open(root, false, &m), 0);
    char id[MSG_MEDIA_ID_LEN + 1];
    assert_int_equal(media_put(m, "kept", 4, id), 0);
    media_close(m);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        media_store *cm = NULL;
        media_writer *w = NULL;
        if (media_open(root, false, &cm) != 0 || media_begin(cm, 100, &w) != 0 ||
            media_write(w, "half an upload", 14) != 0)
            _exit(1);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(temporaries(root, NULL, 0), 1);
    assert_int_equal(media_open(root, false, &m), 0);
    assert_int_equal(temporaries(root, NULL, 0), 0);
    pbuf out = {0};
    assert_int_equal(media_get(m, id, 4, &out), 0);
    pbuf_free(&out);
    media_close(m);
}

/* A directory several servers share: opening it removes only the
 * temporaries nobody wrote to for an hour (another server may be in the
 * middle of the younger ones); a private one removes them all. */
static void test_shared_temporaries(void **state)
{
    (void)state;
    char root[128], young[256], old[256];
    snprintf(root, sizeof root, "%s/shared", dir);
    media_store *m = NULL;
    assert_int_equal(media_open_shared(root, false, &m), 0);
    media_close(m);
    snprintf(young, sizeof young, "%s/tmp-young", root);
    snprintf(old, sizeof old, "%s/tmp-old", root);
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(i ? old : young, "w");
        assert_non_null(f);
        fputs("partial", f);
        fclose(f);
    }
    struct timeval tv[2] = {{time(NULL) - MEDIA_SHARED_TMP_AGE_S - 60, 0},
                            {time(NULL) - MEDIA_SHARED_TMP_AGE_S - 60, 0}};
    assert_int_equal(utimes(old, tv), 0);
    assert_int_equal(media_open_shared(root, false, &m), 0);
    assert_int_equal(access(young, F_OK), 0);
    assert_int_equal(access(old, F_OK), -1);
    media_close(m);
    assert_int_equal(media_open(root, false, &m), 0);
    assert_int_equal(access(young, F_OK), -1);
    media_close(m);
}

static void test_media_path_is_a_file(void **state)
{
    (void)state;
    char root[128];
    snprintf(root, sizeof root, "%s/plain-file", dir);
    FILE *f = fopen(root, "w");
    assert_non_null(f);
    fputs("not a directory", f);
    fclose(f);
    media_store *m = (media_store *)1;
    assert_int_equal(media_open(root, false, &m), PARLEY_EIO);
    assert_null(m);
    /* Left as it was. */
    struct stat st;
    assert_int_equal(stat(root, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_size, 15);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash),
        cmocka_unit_test(test_put_get),
        cmocka_unit_test(test_crash_leftovers),
        cmocka_unit_test(test_stream_whole),
        cmocka_unit_test(test_stream_chunked),
        cmocka_unit_test(test_stream_existing),
        cmocka_unit_test(test_stream_abort_and_limit),
        cmocka_unit_test(test_stream_crash),
        cmocka_unit_test(test_shared_temporaries),
        cmocka_unit_test(test_media_path_is_a_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
