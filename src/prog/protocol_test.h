/* parleyd --protocol-test handlers (see protocol_test.c). */
#ifndef PARLEY_PROG_PROTOCOL_TEST_H
#define PARLEY_PROG_PROTOCOL_TEST_H

#include "cluster/adapter.h"
#include "parley/server.h"
#include "server/engine.h"

/* Installs the namespaces and handlers on srv and attaches the plain
 * Engine.IO echo at /engine.io/ with srv's Engine.IO options (*echo, to
 * free at shutdown). */
int protocol_test_setup(parley_server *srv, engine **echo);

/* Cluster hooks (--redis): the adapter the test events use (NULL: none),
 * and what the adapter calls on a serverSideEmit from another node (the
 * event goes to every socket of the namespace as "server-side-emit" with
 * [event, ...args]; one that wants an acknowledgement is answered at
 * once with {"echo": [event, ...args]}). */
void protocol_test_set_cluster(pcluster *c);
void protocol_test_server_side_emit(parley_nsp *n, const char *event, const char *args_json,
                                    size_t len, const char *ack_id, void *user);

#endif
