#include "services/tz.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "parley/parley.h"

#define WHY(...)                                                                                   \
    do {                                                                                           \
        if (why) snprintf(why, cap, __VA_ARGS__);                                                  \
    } while (0)

int tz_load(const char *dir, const char *name, tz_zone **out)
{
    return tz_load_why(dir, name, out, NULL, 0);
}

int tz_load_why(const char *dir, const char *name, tz_zone **out, char *why, size_t cap)
{
    *out = NULL;
    if (!name || !tz_valid_name(name, strlen(name))) {
        WHY("not a valid zone name");
        return PARLEY_EINVAL;
    }
    if (!dir) dir = "/usr/share/zoneinfo";
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof path) {
        WHY("the path is too long");
        return PARLEY_EINVAL;
    }

    /* Symlinks are followed on purpose: the database links aliases (UTC ->
     * Etc/UTC); the name check already keeps the path below dir. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            WHY("no such zone: %s does not exist (is tzdata installed, or --tz-dir right?)", path);
        else
            WHY("cannot open %s: %s", path, strerror(errno));
        return PARLEY_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        WHY("%s is not a regular file (a zone directory?)", path);
        close(fd);
        return PARLEY_EIO;
    }
    if (st.st_size > TZ_MAX_FILE) {
        WHY("%s is larger than %d bytes: not a zone file", path, TZ_MAX_FILE);
        close(fd);
        return PARLEY_ELIMIT;
    }
    /* Read up to one byte more than the limit: the file may have grown
     * since fstat, and a short read at EOF is what ends the loop. */
    uint8_t *buf = malloc(TZ_MAX_FILE + 1);
    if (!buf) {
        WHY("out of memory");
        close(fd);
        return PARLEY_ENOMEM;
    }
    size_t len = 0;
    int rc = 0;
    while (len < TZ_MAX_FILE + 1) {
        ssize_t r = read(fd, buf + len, TZ_MAX_FILE + 1 - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            WHY("cannot read %s: %s", path, strerror(errno));
            rc = PARLEY_EIO;
            break;
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    close(fd);
    if (rc == 0 && len > TZ_MAX_FILE) {
        WHY("%s is larger than %d bytes: not a zone file", path, TZ_MAX_FILE);
        rc = PARLEY_ELIMIT;
    }
    if (rc == 0) {
        rc = tzif_parse(buf, len, out);
        if (rc == PARLEY_ENOMEM)
            WHY("out of memory reading %s", path);
        else if (rc)
            WHY("%s is not a valid TZif file (RFC 8536) or is over this server's limits", path);
    }
    free(buf);
    return rc;
}
