/* Content-addressed media files (see media.h). */
#include "services/media.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"
#include "parley/parley.h"

#define TMP_PREFIX "tmp-"

struct media_store {
    char *dir;
    bool full_sync;
};

static int make_dir(const char *path)
{
    if (mkdir(path, 0750) == 0 || errno == EEXIST) return 0;
    plog_error("media: cannot create %s: %s", path, strerror(errno));
    return PARLEY_EIO;
}

/* Temporaries are only ever in the top directory. */
static void remove_temporaries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) != 0) continue;
        char p[4096];
        if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, e->d_name) < sizeof p) unlink(p);
    }
    closedir(d);
}

int media_open(const char *dir, bool full_sync, media_store **out)
{
    *out = NULL;
    if (strlen(dir) > 3000) return PARLEY_EINVAL;
    int rc = make_dir(dir);
    if (rc) return rc;
    media_store *m = pcalloc(1, sizeof *m);
    if (!m || !(m->dir = strdup(dir))) {
        free(m);
        return PARLEY_ENOMEM;
    }
    m->full_sync = full_sync;
    remove_temporaries(dir);
    *out = m;
    return 0;
}

void media_close(media_store *m)
{
    if (!m) return;
    free(m->dir);
    free(m);
}

int media_hash(const void *data, size_t len, char id[MSG_MEDIA_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t md[32];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != sizeof md)
        return PARLEY_EIO;
    for (size_t i = 0; i < sizeof md; i++) {
        id[2 * i] = hex[md[i] >> 4];
        id[2 * i + 1] = hex[md[i] & 15];
    }
    id[MSG_MEDIA_ID_LEN] = 0;
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
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int media_put(media_store *m, const void *data, size_t len, char id[MSG_MEDIA_ID_LEN + 1])
{
    int rc = media_hash(data, len, id);
    if (rc) return rc;
    char sub[4096], file[4200], tmp[4096];
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
    if ((rc = make_dir(sub))) return rc;
    snprintf(tmp, sizeof tmp, "%s/" TMP_PREFIX "XXXXXX", m->dir);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        plog_error("media: cannot create a file in %s: %s", m->dir, strerror(errno));
        return PARLEY_EIO;
    }
    bool ok = write_all(fd, data, len) == 0 && (!m->full_sync || fsync(fd) == 0);
    ok = close(fd) == 0 && ok;
    if (ok) ok = rename(tmp, file) == 0;
    if (!ok) {
        plog_error("media: cannot store %s: %s", id, strerror(errno));
        unlink(tmp);
        return PARLEY_EIO;
    }
    if (m->full_sync) {
        sync_dir(sub);
        sync_dir(m->dir);
    }
    return 0;
}

int media_get(media_store *m, const char *id, size_t max, pbuf *out)
{
    if (!msg_valid_media_id(id, strlen(id))) return PARLEY_EINVAL;
    char sub[4096], file[4200];
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
