/*
 * The cluster adapter hook of the Socket.IO server: the local room index
 * and delivery stay in sio_server.c; an adapter beside them (the Redis
 * adapter, src/cluster/adapter.h) is told about namespaces and about every
 * broadcast after its local delivery, and hands what other nodes publish
 * back through parley_broadcast__local, which delivers locally only and
 * never calls the adapter (so nothing is republished).
 *
 * Everything runs on the loop's thread.
 */
#ifndef PARLEY_SERVER_ADAPTER_H
#define PARLEY_SERVER_ADAPTER_H

#include <stdbool.h>
#include <stddef.h>

#include "codec/json.h"
#include "parley/server.h"

typedef struct sio_adapter {
    /* A namespace exists: called for each existing one when the adapter
     * is installed, then for each new one. */
    void (*nsp_created)(parley_nsp *n, void *user);
    /* A broadcast of parley_broadcast, already delivered locally: args is
     * the parsed JSON array of its arguments (or NULL), placeholders in it
     * refer to bins. Pointers are valid during the call. */
    void (*broadcast)(parley_nsp *n, const parley_target *to, const char *event,
                      const json_val *args, const parley_bin *bins, size_t nbins, void *user);
    void *user;
} sio_adapter;

/* Installs the adapter (copied; NULL removes it). One at a time. */
void parley_server__set_adapter(parley_server *s, const sio_adapter *a);

/* True when an adapter is installed. */
bool parley_server__has_adapter(const parley_server *s);

/* parley_broadcast without the adapter: the local sockets only (what
 * arrives from other nodes, or a broadcast with the `local` flag). */
int parley_broadcast__local(parley_nsp *n, const parley_target *to, const char *event,
                            const char *args_json, const parley_bin *bins, size_t nbins);

/* The namespace `name` if it exists (never creates one). */
parley_nsp *parley_server__nsp_find(const parley_server *s, const char *name, size_t len);

#endif
