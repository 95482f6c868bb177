/* parleyd --protocol-test handlers (see protocol_test.c). */
#ifndef PARLEY_PROG_PROTOCOL_TEST_H
#define PARLEY_PROG_PROTOCOL_TEST_H

#include "parley/server.h"
#include "server/engine.h"

/* Installs the namespaces and handlers on srv and attaches the plain
 * Engine.IO echo at /engine.io/ with srv's Engine.IO options (*echo, to
 * free at shutdown). */
int protocol_test_setup(parley_server *srv, engine **echo);

#endif
