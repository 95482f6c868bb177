/*
 * The Socket.IO Admin UI's namespace (the protocol of npm
 * @socket.io/admin-ui 0.5.x, whose web UI then works against a
 * parley_server): authentication through the embedder's callback, the
 * `config` event, periodic `server_stats` while an admin is connected,
 * `all_sockets` and live socket/room events, and the join, leave and
 * _disconnect actions. See docs/PROTOCOL.md, "The /admin namespace".
 *
 * Internal to Parley's programs (parleyd): not in the public headers.
 */
#ifndef PARLEY_SERVER_ADMIN_UI_H
#define PARLEY_SERVER_ADMIN_UI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "codec/http.h"
#include "parley/server.h"

typedef struct admin_ui admin_ui;

/* Decides an admin CONNECT: username and password from the CONNECT auth
 * payload ({username, password}; empty when absent), peer_ip the address
 * the client's Engine.IO session was opened from ("127.0.0.1", "::1").
 * Non-zero allows. */
typedef int (*admin_ui_authorize_fn)(const char *username, size_t ulen, const char *password,
                                     size_t plen, const char *peer_ip, void *user);

typedef struct admin_ui_opts {
    const char *nsp;                 /* default "/admin" */
    admin_ui_authorize_fn authorize; /* required */
    void *user;
    const char *server_id;        /* default: the host name */
    uint32_t stats_interval_ms;   /* server_stats period; default 2000 */
    size_t max_sockets;           /* sockets listed by all_sockets; default 1000 */
    size_t max_bytes;             /* all_sockets's size; default 4 MiB */
    size_t max_rooms;             /* rooms listed per socket; default 64 */
    bool readonly;                /* no actions (join, leave, _disconnect) */
    /* An admin whose client leaves more than this many bytes untaken (a
     * polling admin that stopped polling, a stalled WebSocket) gets no
     * more events and is disconnected at the end of the loop iteration;
     * it can reconnect for a fresh all_sockets. Default 8 MiB. */
    size_t max_backlog;
    /* Relay every event of every other namespace to the admins
     * (event_received / event_sent, the UI's Events page): default false,
     * since that shows the users' messages to whoever holds the admin
     * credentials. Arguments over ADMIN_EVENT_MAX bytes are not shown. */
    bool events;
    /* Namespaces whose room membership belongs to a service (e.g. the
     * messaging service's /chat, whose rooms carry conversations): join
     * and leave are refused there (_disconnect is not). The strings must
     * outlive the admin_ui. */
    const char *const *managed;
    size_t nmanaged;
} admin_ui_opts;

void admin_ui_opts_init(admin_ui_opts *o);

/* Serves the admin namespace on srv (call before listening: sessions
 * opened earlier have no recorded handshake). Installs the server's
 * observer (sio_internal.h). PARLEY_EINVAL (no authorize, bad name),
 * PARLEY_ENOMEM. */
int admin_ui_attach(parley_server *srv, const admin_ui_opts *o, admin_ui **out);

/* Removes the observer and frees; before parley_server_free. NULL is a
 * no-op. */
void admin_ui_free(admin_ui *a);

/* Largest event arguments relayed to admins (JSON bytes); larger ones are
 * replaced by a string "[N bytes not shown]". */
#define ADMIN_EVENT_MAX 65536

/* ---- encoding helpers (exposed for the unit tests) ---- */

/* The event_received / event_sent arguments [nsp, id, [event, ...args],
 * date] for args (a JSON array text) into out. */
int admin_event_json(pbuf *out, const char *nsp, const char *id, const char *event,
                     size_t event_len, const char *args, size_t args_len, int64_t now_ms);

/* Bytes recorded per session for the handshake: the JSON object of
 * admin_handshake_json is at most this long. */
#define ADMIN_HS_MAX 2048

/* Appends s[0, len) as a JSON string; when s is not valid UTF-8, every
 * byte >= 0x80 becomes '?'. */
int admin_json_lossy(pbuf *out, const char *s, size_t len);

/* True for request headers whose values are never shown (credentials):
 * authorization, proxy-authorization, cookie, x-api-key, x-auth-token
 * (any case). */
bool admin_header_secret(const char *name, size_t len);

/* True for query parameters whose values are never shown: token,
 * access_token, auth, jwt, key, apikey, api_key, password, sid (any
 * case). */
bool admin_query_secret(const char *name, size_t len);

/* The handshake object the Admin UI shows:
 * {"address","headers","query","issued","secure","time","url","xdomain"}
 * (the reference's fields and order). Header names lower-cased, a
 * repeated header shown once (its first value), secret headers' and query
 * parameters' values replaced by "[redacted]", the query decoded
 * (%XX, '+'). Bounded: headers or query parameters that do not fit in
 * ADMIN_HS_MAX bytes are left out, as are query parameters after the
 * 64th; the url is cut at 512 bytes. now_ms is
 * the wall clock in ms since the epoch. */
int admin_handshake_json(pbuf *out, const char *target, size_t target_len,
                         const http_header *headers, size_t nheaders, const char *peer_ip,
                         bool secure, int64_t now_ms);

/* 2026-12-07T19:40:41.123Z (JavaScript's Date.toISOString). out: 25
 * bytes. */
void admin_iso_time(char out[25], int64_t ms);

#endif
