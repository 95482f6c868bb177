#include "services/tz.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "parley/parley.h"

int tz_load(const char *dir, const char *name, tz_zone **out)
{
    *out = NULL;
    if (!name || !tz_valid_name(name, strlen(name))) return PARLEY_EINVAL;
    if (!dir) dir = "/usr/share/zoneinfo";
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof path) return PARLEY_EINVAL;

    /* Symlinks are followed on purpose: the database links aliases (UTC ->
     * Etc/UTC); the name check already keeps the path below dir. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return PARLEY_EIO;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return PARLEY_EIO;
    }
    if (st.st_size > TZ_MAX_FILE) {
        close(fd);
        return PARLEY_ELIMIT;
    }
    /* Read up to one byte more than the limit: the file may have grown
     * since fstat, and a short read at EOF is what ends the loop. */
    uint8_t *buf = malloc(TZ_MAX_FILE + 1);
    if (!buf) {
        close(fd);
        return PARLEY_ENOMEM;
    }
    size_t len = 0;
    int rc = 0;
    while (len < TZ_MAX_FILE + 1) {
        ssize_t r = read(fd, buf + len, TZ_MAX_FILE + 1 - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = PARLEY_EIO;
            break;
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    close(fd);
    if (rc == 0 && len > TZ_MAX_FILE) rc = PARLEY_ELIMIT;
    if (rc == 0) rc = tzif_parse(buf, len, out);
    free(buf);
    return rc;
}
