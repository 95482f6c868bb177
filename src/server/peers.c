#include "server/peers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

void ppeers_tag(const char *id, char tag[PPEERS_TAG_LEN + 1])
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)id, strlen(id), d);
    uint32_t v = ((uint32_t)d[0] << 16) | ((uint32_t)d[1] << 8) | d[2];
    for (int i = 0; i < 4; i++) tag[i] = b64[(v >> (18 - 6 * i)) & 63];
    tag[4] = 0;
}

int ppeers_id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > PPEERS_ID_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static const char *check_unique(const ppeers *t, const char *id, const char *tag)
{
    if (t->self_id[0] && (!strcmp(t->self_id, id) || !strcmp(t->self_tag, tag)))
        return !strcmp(t->self_id, id) ? "a --peer has this node's own --node-id"
                                       : "a --peer's id has the same tag as --node-id: rename one";
    for (size_t i = 0; i < t->n; i++) {
        if (!strcmp(t->p[i].id, id)) return "--peer: the same node id twice";
        if (!strcmp(t->p[i].tag, tag)) return "--peer: two node ids share a tag: rename one";
    }
    return NULL;
}

const char *ppeers_set_self(ppeers *t, const char *id)
{
    if (!ppeers_id_ok(id)) return "--node-id wants 1..64 characters of [A-Za-z0-9._-]";
    char tag[PPEERS_TAG_LEN + 1];
    ppeers_tag(id, tag);
    char saved[PPEERS_ID_MAX + 1];
    memcpy(saved, t->self_id, sizeof saved);
    t->self_id[0] = 0;
    const char *err = check_unique(t, id, tag);
    if (err) {
        memcpy(t->self_id, saved, sizeof saved);
        return err;
    }
    snprintf(t->self_id, sizeof t->self_id, "%s", id);
    memcpy(t->self_tag, tag, sizeof tag);
    return NULL;
}

const char *ppeers_add(ppeers *t, const char *spec)
{
    const char *eq = spec ? strchr(spec, '=') : NULL;
    const char *colon = eq ? strrchr(eq + 1, ':') : NULL;
    if (!eq || !colon) return "--peer wants ID=HOST:PORT";
    if (t->n == PPEERS_MAX) return "--peer: at most 64 peers";
    ppeer p;
    memset(&p, 0, sizeof p);
    size_t idl = (size_t)(eq - spec);
    if (idl == 0 || idl > PPEERS_ID_MAX) return "--peer: bad node id";
    memcpy(p.id, spec, idl);
    if (!ppeers_id_ok(p.id)) return "--peer: a node id is 1..64 characters of [A-Za-z0-9._-]";
    const char *h = eq + 1;
    size_t hl = (size_t)(colon - h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof p.host) return "--peer: bad host";
    for (size_t i = 0; i < hl; i++)
        if ((unsigned char)h[i] <= ' ' || h[i] == '/' || h[i] == '@') return "--peer: bad host";
    memcpy(p.host, h, hl);
    char *end;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (!colon[1] || *end || port == 0 || port > 65535) return "--peer: bad port";
    p.port = (unsigned)port;
    ppeers_tag(p.id, p.tag);
    const char *err = check_unique(t, p.id, p.tag);
    if (err) return err;
    t->p[t->n++] = p;
    return NULL;
}

int ppeers_route(void *user, const char *tag, char *host, size_t host_cap, unsigned *port)
{
    const ppeers *t = user;
    for (size_t i = 0; i < t->n; i++) {
        if (memcmp(t->p[i].tag, tag, PPEERS_TAG_LEN) != 0) continue;
        if (strlen(t->p[i].host) >= host_cap) return -1;
        strcpy(host, t->p[i].host);
        *port = t->p[i].port;
        return 0;
    }
    return -1;
}
