/* Fuzzes the URL parser. What it accepts must be well-formed, and putting
 * the parts back together must parse to the same thing. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096) return 0;
    char *s = malloc(size + 1);
    CHECK(s);
    memcpy(s, data, size);
    s[size] = '\0';
    purl u;
    int rc = purl_parse(s, &u);
    if (rc == 0) {
        CHECK(u.host[0] && u.port >= 1 && u.port <= 65535 && u.target[0] == '/');
        CHECK(strlen(u.scheme) >= 2 && strlen(u.host_header) < sizeof u.host_header);
        for (const char *p = u.target; *p; p++) CHECK(*p > 0x20 && *p < 0x7f && *p != '#');
        for (const char *p = u.host_header; *p; p++) CHECK(*p > 0x20 && *p < 0x7f && *p != '@');
        char again[sizeof u.scheme + sizeof u.host_header + sizeof u.target + 16];
        snprintf(again, sizeof again, "%s://%s%s", u.scheme, u.host_header, u.target);
        purl v;
        CHECK(purl_parse(again, &v) == 0);
        CHECK(strcmp(u.scheme, v.scheme) == 0 && strcmp(u.host, v.host) == 0 && u.port == v.port &&
              u.tls == v.tls && u.ipv6 == v.ipv6 && strcmp(u.target, v.target) == 0 &&
              strcmp(u.host_header, v.host_header) == 0);
    } else {
        CHECK(rc == -15);
    }
    free(s);
    return 0;
}
