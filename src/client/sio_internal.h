/* Internal hooks of the Socket.IO client (src/client/sio_client.c) for
 * tests and fuzzing; not part of the public API. */
#ifndef PARLEY_CLIENT_SIO_INTERNAL_H
#define PARLEY_CLIENT_SIO_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "parley/client.h"

/* Hands c one Engine.IO message as if its session had delivered it, with
 * the client marked open (sends fail quietly: there is no transport). On
 * the loop thread only. */
void parley_client__feed(parley_client *c, bool binary, const uint8_t *data, size_t len);

/* The loop the client runs on (its own or the application's). */
parley_loop *parley_client__loop(parley_client *c);

#endif
