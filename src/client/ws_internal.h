/*
 * Internal hooks of the WebSocket client (ws_client.c) for other parts of
 * libparley: an observer of connection events besides the application's
 * on_event (the reactive store's "ws/<name>/state" keys).
 */
#ifndef PARLEY_CLIENT_WS_INTERNAL_H
#define PARLEY_CLIENT_WS_INTERNAL_H

#include "parley/ws.h"

typedef void (*pws_observer_fn)(parley_ws *ws, const parley_ws_event *ev, void *user);

/* Coarse connection states of a parley_ws, for observers. */
typedef enum pws_state {
    PWS_IDLE = 0,     /* never connected */
    PWS_CONNECTING,   /* an attempt is running */
    PWS_OPEN,         /* the handshake completed */
    PWS_RECONNECTING, /* waiting for the next automatic attempt */
    PWS_CLOSED,       /* over: closed, failed, or no more attempts */
} pws_state;

/* Sets (fn non-NULL) or clears the one observer, on the ws's loop: fn runs
 * there before on_event for every event from then on. *state gets the
 * state at that moment (may be NULL). 0, or PARLEY_ESTATE when another
 * observer is set (fn non-NULL and a different user). */
int pws_observe(parley_ws *ws, pws_observer_fn fn, void *user, pws_state *state);

#endif
