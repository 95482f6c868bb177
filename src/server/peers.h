/*
 * The static node table of a cluster without sticky sessions: each node
 * has an id (--node-id) and a 4-character tag derived from it, which
 * starts every Engine.IO session id the node makes; --peer ID=HOST:PORT
 * tells a node where another node's Engine.IO endpoint listens, so that a
 * polling request for one of that node's sessions can be relayed there
 * (engine_set_cluster in server/engine.h; docs/CLUSTER.md).
 */
#ifndef PARLEY_SERVER_PEERS_H
#define PARLEY_SERVER_PEERS_H

#include <stddef.h>

#define PPEERS_MAX     64
#define PPEERS_ID_MAX  64
#define PPEERS_TAG_LEN 4

typedef struct ppeer {
    char id[PPEERS_ID_MAX + 1];
    char tag[PPEERS_TAG_LEN + 1];
    char host[256];
    unsigned port;
} ppeer;

typedef struct ppeers {
    char self_id[PPEERS_ID_MAX + 1];
    char self_tag[PPEERS_TAG_LEN + 1];
    size_t n;
    ppeer p[PPEERS_MAX];
} ppeers;

/* The tag of a node id: the URL-safe base64 of the first three bytes of
 * SHA-256(id), so every node computes every other node's tag. */
void ppeers_tag(const char *id, char tag[PPEERS_TAG_LEN + 1]);

/* A node id: 1..64 bytes of [A-Za-z0-9._-]. */
int ppeers_id_ok(const char *id);

/* Sets this node's id. NULL, or an error message. */
const char *ppeers_set_self(ppeers *t, const char *id);

/* Adds "ID=HOST:PORT" (HOST a name, an IPv4 literal or [IPv6]). NULL, or
 * an error message: malformed, too many, repeated id, or a tag shared
 * with another node (rename one). */
const char *ppeers_add(ppeers *t, const char *spec);

/* An engine_route_fn over a ppeers table (user): 0 and host/port for a
 * peer's tag, -1 for an unknown tag or this node's own. */
int ppeers_route(void *user, const char *tag, char *host, size_t host_cap, unsigned *port);

#endif
