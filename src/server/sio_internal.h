/*
 * Internal hooks of the Socket.IO server for modules inside the server
 * (the Admin UI namespace, src/server/admin_ui.c): an observer of socket
 * life cycles, rooms and traffic, iteration over namespaces and sockets,
 * and what each socket's session recorded at its Engine.IO handshake.
 * Not part of the public API (include/parley/server.h).
 *
 * Everything runs on the loop's thread. Observer callbacks may send
 * (parley_emit, parley_broadcast) but must not disconnect sockets or
 * join/leave rooms from inside the callback.
 */
#ifndef PARLEY_SERVER_SIO_INTERNAL_H
#define PARLEY_SERVER_SIO_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "base/buf.h"
#include "parley/server.h"
#include "server/httpd.h"

typedef struct sio_observer {
    /* Optional: builds what a session records at its handshake (kept in
     * memory for the session's life, so the builder bounds it): appends
     * the bytes to `out`. peer_ip is the TCP peer's address ("127.0.0.1",
     * "::1"), secure says TLS. A failure records nothing. */
    int (*handshake)(const phttpd_req *req, const char *peer_ip, bool secure, pbuf *out,
                     void *user);
    /* A socket connected: after its CONNECT answer, before the
     * namespace's on_connection. */
    void (*connected)(parley_socket *s, void *user);
    /* A socket is going away (reason as on_disconnect): it no longer
     * takes packets but its rooms are still readable. Called before the
     * namespace's on_disconnect. */
    void (*gone)(parley_socket *s, const char *reason, void *user);
    /* A socket joined or left a room (not its own id's room, and not the
     * rooms it leaves because it is gone: see `gone`). */
    void (*room)(parley_socket *s, const char *room, size_t len, bool joined, void *user);
    /* A socket's session moved from polling to WebSocket. */
    void (*upgraded)(parley_socket *s, void *user);
    /* An Engine.IO session opened (reason NULL) or closed. */
    void (*session)(bool open, const char *reason, void *user);
    /* A message packet of `bytes` bytes was received (out false) or sent
     * to one session (out true). */
    void (*traffic)(bool out, size_t bytes, void *user);
    /* An event received by socket s (before the namespace's on_event),
     * or sent to it (out; once per recipient of a broadcast). args is a
     * JSON array (binary values as their placeholders), not
     * NUL-terminated. */
    void (*event)(parley_socket *s, bool out, const char *event, size_t event_len,
                  const char *args, size_t args_len, void *user);
    void *user;
} sio_observer;

/* Installs the observer (copied; NULL removes it). One at a time. Sessions
 * opened before it was installed recorded no handshake. */
void parley_server__observe(parley_server *s, const sio_observer *o);

parley_loop *parley_server__loop(const parley_server *s);

/* Namespaces, in no particular order: *pos starts at 0; NULL at the end. */
parley_nsp *parley_server__nsp_next(const parley_server *s, size_t *pos);
/* The connected sockets of a namespace, the same way. Do not connect or
 * disconnect sockets of the namespace while iterating. */
parley_socket *parley_nsp__socket_next(const parley_nsp *n, size_t *pos);
size_t parley_nsp__count(const parley_nsp *n);

/* The connected sockets of namespace n that are in room `room` (len
 * bytes; a socket id names that one socket), or every socket of n when
 * room is NULL, copied into out[0, cap). Returns how many there are (may
 * exceed cap: only cap were copied). */
size_t parley_nsp__select(const parley_nsp *n, const char *room, size_t len, parley_socket **out,
                          size_t cap);

/* Leaves room[0, len) (no-op when not in it). */
int parley_leave_n(parley_socket *s, const char *room, size_t len);
/* Joins room[0, len) (1 to 256 bytes). */
int parley_join_n(parley_socket *s, const char *room, size_t len);

/* The socket's rooms besides the one named by its id: i < count. */
size_t parley_socket__nrooms(const parley_socket *s);
const char *parley_socket__room(const parley_socket *s, size_t i, size_t *len);
/* Bytes queued for the socket's session that its client has not taken. */
size_t parley_socket__backlog(const parley_socket *s);
/* The socket's Engine.IO session id (20 characters). */
const char *parley_socket__client_id(const parley_socket *s);
/* What the observer's handshake builder recorded (NULL, 0 when nothing),
 * and the peer address of the handshake ("" when not recorded). */
const char *parley_socket__handshake(const parley_socket *s, size_t *len);
const char *parley_socket__peer_ip(const parley_socket *s);

/* Sends event with args_json (a JSON array of len bytes, no binary) to
 * one socket, never through the recovery log (the packet has no offset):
 * for server-internal traffic such as the Admin UI's. */
int parley_emit__direct(parley_socket *s, const char *event, const char *args_json, size_t len);

/* Engine.IO sessions now, and those of them on polling. */
unsigned parley_server__clients(const parley_server *s);
unsigned parley_server__polling_clients(const parley_server *s);

#endif
