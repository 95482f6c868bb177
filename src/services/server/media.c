/* Content-addressed media files (see media.h). */
#include "services/server/media.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"
#include "parley/parley.h"

#define TMP_PREFIX "tmp-"
#define TMP_RANDOM 16    /* random bytes in a temporary's name, as hex */
#define DIR_MAX    3000  /* longest media directory path */
#define SUB_CAP    4096  /* dir/ab */
#define PATH_CAP   4200  /* any path below it: dir/ab/<64 hex digits> */
#define READ_CHUNK 65536 /* bytes read at a time to hash a stored file */

struct media_store {
    char *dir;
    bool full_sync;
};

struct media_writer {
    media_store *m;
    EVP_MD_CTX *md;
    int fd;
    int err; /* sticky: once failed, only abort is left */
    uint64_t len, max;
    char tmp[PATH_CAP];
};

static int make_dir(const char *path)
{
    if (mkdir(path, 0750) == 0 || errno == EEXIST) return 0;
    plog_error("media: cannot create %s: %s", path, strerror(errno));
    return PARLEY_EIO;
}

/* Temporaries are only ever in the top directory. min_age_s > 0: only
 * those not written to for that long (another node may be writing the
 * others). */
static void remove_temporaries(const char *dir, time_t min_age_s)
{
    time_t now = time(NULL);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) != 0) continue;
        char p[PATH_CAP];
        struct stat st;
        if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= sizeof p) continue;
        if (min_age_s > 0 && (stat(p, &st) != 0 || now - st.st_mtime < min_age_s)) continue;
        unlink(p);
    }
    closedir(d);
}

static int open_dir(const char *dir, bool full_sync, time_t tmp_age_s, media_store **out)
{
    *out = NULL;
    if (strlen(dir) > DIR_MAX) return PARLEY_EINVAL;
    int rc = make_dir(dir);
    if (rc) return rc;
    /* EEXIST above is also what a file of that name gives. */
    struct stat st;
    if (stat(dir, &st) != 0) {
        plog_error("media: %s: %s", dir, strerror(errno));
        return PARLEY_EIO;
    }
    if (!S_ISDIR(st.st_mode)) {
        plog_error("media: %s exists and is not a directory", dir);
        return PARLEY_EIO;
    }
    media_store *m = pcalloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(dir))) {
        free(m);
        return PARLEY_ENOMEM;
    }
    m->full_sync = full_sync;
    remove_temporaries(dir, tmp_age_s);
    *out = m;
    return 0;
}

int media_open(const char *dir, bool full_sync, media_store **out)
{
    return open_dir(dir, full_sync, 0, out);
}

int media_open_shared(const char *dir, bool full_sync, media_store **out)
{
    return open_dir(dir, full_sync, MEDIA_SHARED_TMP_AGE_S, out);
}

void media_close(media_store *m)
{
    if (!m) return;
    free(m->dir);
    free(m);
}

static void to_hex(const uint8_t *p, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[p[i] >> 4];
        out[2 * i + 1] = hex[p[i] & 15];
    }
    out[2 * n] = 0;
}

int media_hash(const void *data, size_t len, char id[MSG_MEDIA_ID_LEN + 1])
{
    uint8_t md[32];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != sizeof md)
        return PARLEY_EIO;
    to_hex(md, sizeof md, id);
    return 0;
}

static void path_of(const media_store *m, const char *id, char *sub, size_t subcap, char *file,
                    size_t filecap)
{
    snprintf(sub, subcap, "%s/%.2s", m->dir, id);
    snprintf(file, filecap, "%s/%s", sub, id);
}

static int write_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void sync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* A new temporary in the top directory, under a name nobody can guess
 * (so nobody can plant a file or link there first: O_EXCL). */
static int tmp_open(const media_store *m, char path[PATH_CAP])
{
    for (int tries = 0; tries < 4; tries++) {
        uint8_t r[TMP_RANDOM];
        char hex[2 * TMP_RANDOM + 1];
        if (prand_bytes(r, sizeof r) != 0) return PARLEY_EIO;
        to_hex(r, sizeof r, hex);
        snprintf(path, PATH_CAP, "%s/" TMP_PREFIX "%s", m->dir, hex);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0640);
        if (fd >= 0) return fd;
        if (errno != EEXIST) break;
    }
    plog_error("media: cannot create a file in %s: %s", m->dir, strerror(errno));
    return PARLEY_EIO;
}

/* Moves the complete temporary `tmp` to media id's name. */
static int install(media_store *m, const char *tmp, const char *id)
{
    char sub[SUB_CAP], file[PATH_CAP];
    path_of(m, id, sub, sizeof sub, file, sizeof file);
    int rc = make_dir(sub);
    if (rc == 0 && rename(tmp, file) != 0) {
        plog_error("media: cannot store %s: %s", id, strerror(errno));
        rc = PARLEY_EIO;
    }
    if (rc) {
        unlink(tmp);
        return rc;
    }
    if (m->full_sync) {
        sync_dir(sub);
        sync_dir(m->dir);
    }
    return 0;
}

int media_put(media_store *m, const void *data, size_t len, char id[MSG_MEDIA_ID_LEN + 1])
{
    int rc = media_hash(data, len, id);
    if (rc) return rc;
    char sub[SUB_CAP], file[PATH_CAP], tmp[PATH_CAP];
    path_of(m, id, sub, sizeof sub, file, sizeof file);
    struct stat st;
    if (stat(file, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == len) {
        /* Stored already, if the bytes still hash right; a damaged file is
         * replaced by this upload. */
        pbuf check = {0};
        rc = media_get(m, id, len, &check);
        pbuf_free(&check);
        if (rc == 0) return 0;
    }
    int fd = tmp_open(m, tmp);
    if (fd < 0) return fd;
    bool ok = write_all(fd, data, len) == 0 && (!m->full_sync || fsync(fd) == 0);
    ok = close(fd) == 0 && ok;
    if (!ok) {
        plog_error("media: cannot store %s: %s", id, strerror(errno));
        unlink(tmp);
        return PARLEY_EIO;
    }
    return install(m, tmp, id);
}

int media_get(media_store *m, const char *id, size_t max, pbuf *out)
{
    if (!msg_valid_media_id(id, strlen(id))) return PARLEY_EINVAL;
    char sub[SUB_CAP], file[PATH_CAP];
    path_of(m, id, sub, sizeof sub, file, sizeof file);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? PARLEY_EAGAIN : PARLEY_EIO;
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        rc = PARLEY_EIO;
    else if ((uint64_t)st.st_size > max || (uint64_t)st.st_size >= PBUF_MAX)
        rc = PARLEY_ELIMIT;
    else if (pbuf_reserve(out, (size_t)st.st_size) != 0)
        rc = PARLEY_ENOMEM;
    size_t want = rc ? 0 : (size_t)st.st_size, got = 0;
    while (rc == 0 && got < want) {
        ssize_t n = read(fd, out->ptr + out->len + got, want - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            rc = PARLEY_EIO;
        else
            got += (size_t)n;
    }
    close(fd);
    if (rc) return rc;
    /* The bytes are checked against their name: a damaged or replaced
     * file is never served as the media it claims to be. */
    char check[MSG_MEDIA_ID_LEN + 1];
    const uint8_t *bytes = out->ptr ? out->ptr + out->len : (const uint8_t *)"";
    if (media_hash(bytes, got, check) != 0 || strcmp(check, id) != 0) {
        plog_error("media: %s does not match its content", file);
        return PARLEY_EIO;
    }
    out->len += (uint32_t)got;
    return 0;
}

/* ---- streamed uploads ---- */

int media_begin(media_store *m, uint64_t max_bytes, media_writer **out)
{
    *out = NULL;
    media_writer *w = pcalloc(1, sizeof *w);
    if (!w || !(w->md = EVP_MD_CTX_new())) {
        free(w);
        return PARLEY_ENOMEM;
    }
    w->m = m;
    w->max = max_bytes;
    w->fd = -1;
    if (!EVP_DigestInit_ex(w->md, EVP_sha256(), NULL)) {
        media_abort(w);
        return PARLEY_EIO;
    }
    if ((w->fd = tmp_open(m, w->tmp)) < 0) {
        int rc = w->fd;
        w->tmp[0] = 0; /* nothing to delete */
        media_abort(w);
        return rc;
    }
    *out = w;
    return 0;
}

int media_write(media_writer *w, const void *data, size_t len)
{
    if (w->err) return w->err;
    if (len > w->max - w->len) return w->err = PARLEY_ELIMIT;
    if (len == 0) return 0;
    if (!EVP_DigestUpdate(w->md, data, len)) return w->err = PARLEY_EIO;
    if (write_all(w->fd, data, len) != 0) {
        plog_error("media: cannot write %s: %s", w->tmp, strerror(errno));
        return w->err = PARLEY_EIO;
    }
    w->len += len;
    return 0;
}

/* 1 when the file at path holds exactly `size` bytes hashing to id. */
static int stored_as(const char *path, uint64_t size, const char *id)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    uint8_t *buf = NULL;
    EVP_MD_CTX *md = NULL;
    int ret = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != size ||
        !(buf = malloc(READ_CHUNK)) || !(md = EVP_MD_CTX_new()) ||
        !EVP_DigestInit_ex(md, EVP_sha256(), NULL))
        goto out;
    uint64_t left = size;
    while (left) {
        ssize_t n = read(fd, buf, READ_CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || (uint64_t)n > left || !EVP_DigestUpdate(md, buf, (size_t)n)) goto out;
        left -= (uint64_t)n;
    }
    uint8_t d[32];
    unsigned int dlen = 0;
    char check[MSG_MEDIA_ID_LEN + 1];
    if (EVP_DigestFinal_ex(md, d, &dlen) && dlen == sizeof d) {
        to_hex(d, sizeof d, check);
        ret = strcmp(check, id) == 0;
    }
out:
    EVP_MD_CTX_free(md);
    free(buf);
    close(fd);
    return ret;
}

int media_finish(media_writer *w, char id[MSG_MEDIA_ID_LEN + 1], bool *existed)
{
    *existed = false;
    id[0] = 0;
    int rc = w->err;
    uint8_t d[32];
    unsigned int dlen = 0;
    if (rc == 0 && (!EVP_DigestFinal_ex(w->md, d, &dlen) || dlen != sizeof d)) rc = PARLEY_EIO;
    if (rc == 0 && w->m->full_sync && fsync(w->fd) != 0) {
        plog_error("media: cannot sync %s: %s", w->tmp, strerror(errno));
        rc = PARLEY_EIO;
    }
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0 && rc == 0) {
        plog_error("media: cannot write %s: %s", w->tmp, strerror(errno));
        rc = PARLEY_EIO;
    }
    if (rc) {
        media_abort(w);
        return rc;
    }
    to_hex(d, sizeof d, id);
    char sub[SUB_CAP], file[PATH_CAP];
    path_of(w->m, id, sub, sizeof sub, file, sizeof file);
    if (stored_as(file, w->len, id)) {
        *existed = true;
        media_abort(w); /* deletes the temporary */
        return 0;
    }
    rc = install(w->m, w->tmp, id);
    w->tmp[0] = 0; /* moved, or deleted by install */
    media_abort(w);
    if (rc) id[0] = 0;
    return rc;
}

void media_abort(media_writer *w)
{
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->tmp[0]) unlink(w->tmp);
    EVP_MD_CTX_free(w->md);
    free(w);
}

int media_disk_free(media_store *m, uint64_t *bytes_avail)
{
    struct statvfs v;
    if (statvfs(m->dir, &v) != 0) {
        plog_error("media: statvfs %s: %s", m->dir, strerror(errno));
        return PARLEY_EIO;
    }
    uint64_t blocks = v.f_bavail, unit = v.f_frsize ? v.f_frsize : v.f_bsize;
    *bytes_avail = unit && blocks > UINT64_MAX / unit ? UINT64_MAX : blocks * unit;
    return 0;
}
