#include "parley/parley.h"
#include <stdlib.h>
#include <string.h>

const char *parley_strerror(int err)
{
    switch ((parley_err)err) {
    case PARLEY_OK: return "success";
    case PARLEY_ENOMEM: return "out of memory";
    case PARLEY_EINVAL: return "invalid argument";
    case PARLEY_EPROTO: return "protocol violation by the peer";
    case PARLEY_ELIMIT: return "limit exceeded";
    case PARLEY_EAGAIN: return "more input needed";
    case PARLEY_ECLOSED: return "connection closed";
    case PARLEY_ETIMEDOUT: return "timed out";
    case PARLEY_ECONNREFUSED: return "connection refused";
    case PARLEY_EDNS: return "host name lookup failed";
    case PARLEY_ETLS: return "TLS error";
    case PARLEY_EHANDSHAKE: return "handshake rejected";
    case PARLEY_EIO: return "I/O error";
    case PARLEY_ESTATE: return "invalid state for this call";
    case PARLEY_EFULL: return "buffer or queue full";
    case PARLEY_EURL: return "malformed or unsupported URL";
    case PARLEY_EPROXY: return "the HTTP proxy refused the tunnel";
    case PARLEY_EPROXYAUTH: return "the HTTP proxy requires authentication (407)";
    }
    return "unknown error";
}

const char *parley_version(void)
{
#define PARLEY_STR2(x) #x
#define PARLEY_STR(x)  PARLEY_STR2(x)
    return PARLEY_STR(PARLEY_VERSION_MAJOR) "." PARLEY_STR(PARLEY_VERSION_MINOR) "." PARLEY_STR(
        PARLEY_VERSION_PATCH);
}

int parley_version_number(void)
{
    return PARLEY_VERSION_NUMBER;
}

void *parley_alloc(size_t size)
{
    return malloc(size ? size : 1);
}

char *parley_strdup(const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

void parley_free(void *p)
{
    free(p);
}
