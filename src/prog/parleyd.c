/* parleyd: the Parley server. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <openssl/crypto.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "base/util.h"
#include "net/net.h"
#include "parley/parley.h"
#include "parley/server.h"
#include "prog/ops.h"
#include "prog/protocol_test.h"
#include "server/admin_auth.h"
#include "server/admin_ui.h"
#include "server/engine.h"
#include "server/httpd.h"
#include "server/peers.h"
#include "prog/workers.h"
#include "cluster/adapter.h"
#include "cluster/redis_conn.h"
#include "services/jwt.h"
#include "services/messaging.h"
#include "services/server/push.h"
#include "ws/wsconn.h"

typedef struct config {
    ppeers peers; /* --node-id, --peer */
    unsigned workers;       /* --workers (0/1: this process serves) */
    pworker_ctx *worker;    /* in a worker of --workers */
    char host[256];
    unsigned port;
    const char *ws_echo;
    bool deflate;
    bool protocol_test;
    bool ping_set, ping_timeout_set, recovery_set, cors_set, connect_timeout_set;
    parley_server_opts sio;
    wsconn_opts ws;
    parley_log_level level;
    plog_format log_format;
    phttpd_opts http; /* limits and deadlines of the HTTP side */
    bool messaging;   /* the messaging service (on unless --no-messaging / --protocol-test) */
    bool max_body_set;
    bool limits_off; /* --limits off: every rate limit and quota lifted */
    const char *allowed_origins;
    int root_nsp; /* ROOT_*: what `/` is when messaging is on */
    msg_service_opts msg;
    const char *jwt_secret;
    const char *jwt_secret_file;
    const char *jwt_pem[8]; /* --jwt-public-key-file, repeatable */
    size_t n_jwt_pem;
    const char *jwks_file;
    uint64_t jwt_max_lifetime_s;
    const char *api_key_file;
    bool admin_ui;              /* --admin-ui: the /admin namespace of the Socket.IO Admin UI */
    bool admin_events;          /* --admin-ui-events */
    uint64_t admin_max_backlog; /* --admin-ui-max-backlog (0: the default) */
    const char *redis_url;      /* --redis: the cluster adapter */
    const char *redis_ca;       /* --redis-ca */
    char *strings[64]; /* option values read from a config file */
    size_t nstrings;
    /* Operations: admin access, /metrics, /dashboard (prog/ops.h). */
    bool admin_loopback_off;
    const char *admin_key_file;
    bool metrics_public;
    /* The push webhook (services/server/push.h). */
    push_opts push;
    const char *push_url;
    const char *push_secret_file;
} config;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: parleyd [options]\n"
            "\n"
            "Serves Socket.IO (Engine.IO v4 / Socket.IO v5) at --path, a status page at /,\n"
            "/healthz, /readyz, /metrics and /dashboard, and optionally a WebSocket echo\n"
            "endpoint.\n"
            "\n"
            "  --listen HOST:PORT        address (default 127.0.0.1:8080; port 0 = any free one)\n"
            "  --config FILE             read options from FILE: `name = value` lines with the\n"
            "                            long option names below; flags given after it win\n"
            "  --tls-cert FILE           serve TLS (https/wss) with this PEM certificate chain\n"
            "  --tls-key FILE            ... and this PEM private key\n"
            "  --log-level LEVEL         debug, info, warn, error (default info)\n"
            "  --log-format FORMAT       text (default) or json: one JSON object per line,\n"
            "                            {\"ts\":...,\"level\":...,\"msg\":...}, on stderr\n"
            "\n"
            "Socket.IO / Engine.IO:\n"
            "  --path PATH               default /socket.io/\n"
            "  --ping-interval MS        heartbeat interval (default 25000; also the WebSocket\n"
            "                            echo's keepalive, default 30000 there, 0 = off)\n"
            "  --ping-timeout MS         heartbeat timeout (default 20000; echo: 10000)\n"
            "  --max-payload BYTES       largest POST body / WebSocket message (default 1000000)\n"
            "  --upgrade-timeout MS      to complete a polling->websocket upgrade (default 10000)\n"
            "  --connect-timeout MS      to CONNECT to a namespace (default 45000)\n"
            "  --transports LIST         polling,websocket (default both)\n"
            "  --cors-origin ORIGINS     '*' or a comma-separated list (default: no CORS)\n"
            "  --cors-credentials        allow credentials in CORS requests\n"
            "  --allowed-origins LIST    refuse (403) WebSocket upgrades, Engine.IO requests and\n"
            "                            /media, /api/notifications from browsers whose Origin\n"
            "                            is not listed ('*' = any); requests without Origin pass.\n"
            "                            Default: the --cors-origin list when it is not '*'\n"
            "  --max-attachment-bytes N  binary attachments one session may hold pending\n"
            "                            (default 4 x --max-payload)\n"
            "  --max-pending-attachment-bytes N  the same for all sessions (default 64 MiB)\n"
            "  --recovery                connection-state recovery\n"
            "  --max-disconnection MS    recovery window (default 120000)\n"
            "  --max-attachments N       binary attachments per packet (default 10)\n"
            "  --compression             permessage-deflate on the websocket transport (default\n"
            "                            off, as socket.io); inflated messages are bounded by\n"
            "                            --max-payload (close 1009)\n"
            "  --compression-threshold BYTES  smaller messages go uncompressed (default 1024)\n"
            "  --protocol-test           the reference test server's behaviour (see README);\n"
            "                            turns the messaging service off\n"
            "\n"
            "Messaging (namespace /chat, HTTP /media; see docs/PROTOCOL.md):\n"
            "  --no-messaging            do not serve the messaging service\n"
            "  --root-namespace MODE     the Socket.IO namespace `/` beside /chat: off (default:\n"
            "                            'Invalid namespace'), auth (the same tokens as /chat),\n"
            "                            or open; either way a session must join an\n"
            "                            authenticated namespace within --connect-timeout\n"
            "  --jwt-secret SECRET       HS256 key that signs clients' tokens (prefer the file)\n"
            "  --jwt-secret-file FILE    read the HS256 key from FILE (trailing newline dropped)\n"
            "  --jwt-leeway SECONDS      clock skew allowed for exp/nbf (default 30)\n"
            "  --jwt-public-key-file F   RS256/ES256 tokens: PEM public keys or certificates\n"
            "                            (repeatable, up to 8 files)\n"
            "  --jwks-file FILE          RS256/ES256 tokens: a JWKS file; `kid` picks the key\n"
            "                            (keys, secret and TLS certificate reloaded on SIGHUP)\n"
            "  --jwt-max-lifetime SECS   refuse tokens valid for longer (default 0 = no limit)\n"
            "  --dev-auth                INSECURE development mode: accept {\"user\": id}\n"
            "                            without a token (off by default; logged)\n"
            "  --data-dir DIR            database and media files (default ./data)\n"
            "  --store URL               the message store: sqlite:PATH (default\n"
            "                            DATA_DIR/messages.db) or postgresql://user@host:port/db,\n"
            "                            one database every node of a cluster shares\n"
            "  --media-dir DIR           media files (default DATA_DIR/media); with a\n"
            "                            PostgreSQL store, a directory every node shares\n"
            "  --fsync                   fsync every commit and media file (power-loss safe;\n"
            "                            a killed process loses nothing acknowledged either way)\n"
            "  --max-media-bytes BYTES   largest media upload (default 8388608); raises the\n"
            "                            default --max-body to match, for POST /media\n"
            "  --max-text-bytes BYTES    largest text message (default 8192)\n"
            "  --typing-timeout MS       typing indicator expiry without refresh (default 5000)\n"
            "  --low-delay MS            batching delay of low-priority messages (default 500)\n"
            "  --away-after MS           a connected device without events for MS counts as\n"
            "                            away (default 300000; 0: never)\n"
            "  --presence-interval MS    presence updates per user at most every MS; changes\n"
            "                            in between are coalesced (default 1000; 0: no window)\n"
            "  --presence-node-timeout MS  with --redis: a node not heard from for MS is dead\n"
            "                            and its devices go offline (default 3000; heartbeat\n"
            "                            every 1000, or MS/3 when shorter)\n"
            "  --api-key-file FILE       API keys for POST /api/notifications, one per line\n"
            "                            (blank lines and lines starting with # skipped);\n"
            "                            without it the route answers 503\n"
            "  --tz-dir DIR              IANA zoneinfo for notification quiet hours\n"
            "                            (default /usr/share/zoneinfo)\n"
            "\n"
            "Limits (docs/PROTOCOL.md, \"Limits\"; over one: error rate_limited or\n"
            "quota_exceeded with retry_after_ms, HTTP 429/503):\n"
            "  --limits on|off           off lifts every limit below (benchmarks; default on)\n"
            "  --max-conns-per-ip N      open connections per client address, IPv6 per /64\n"
            "                            (default 256; 0 = none; behind a proxy: 0)\n"
            "  --handshake-rate N        new sessions and WebSocket upgrades per address per\n"
            "                            second (default 20, bursts of 5x; 0 = none)\n"
            "  --max-body-inflight BYTES buffered request bodies, all connections (default\n"
            "                            67108864; uploads stream to disk, not counted)\n"
            "  --rate-events N           events per socket per second (default 50, burst 2x)\n"
            "  --rate-messages N         messages per user per second (default 20, burst 2x)\n"
            "  --rate-message-bytes B    message bytes per user per second (default 262144,\n"
            "                            burst 4x)\n"
            "  --rate-presence N         presence_set per user per second (default 1, burst 10)\n"
            "  --rate-joins N            join_room per user per second (default 1, burst 20)\n"
            "  --rate-notify N           notifications per sender and recipient per minute\n"
            "                            (default 30, burst 10)\n"
            "  --rate-urgent N           urgent messages per sender and recipient (or room)\n"
            "                            per hour (default 10, burst 3)\n"
            "  --max-rooms N             rooms a user may be a member of (default 500)\n"
            "  --uploads-per-day N       media uploads per user per UTC day (default 500)\n"
            "  --upload-bytes-per-day B  media bytes per user per UTC day (default 1 GiB)\n"
            "  --storage-per-user BYTES  stored bytes per user (default 2 GiB; 0 = none)\n"
            "  --disk-reserve BYTES      refuse writes (storage_full) when the data directory's\n"
            "                            free space is below (default 268435456; 0 = never)\n"
            "\n"
            "Socket.IO Admin UI (docs/PROTOCOL.md, \"The /admin namespace\"):\n"
            "  --admin-ui                serve the /admin namespace of @socket.io/admin-ui 0.5\n"
            "                            (off by default)\n"
            "                            (who may connect: as for the dashboard below; the\n"
            "                            admin key is the UI's password, any username)\n"
            "  --admin-ui-events         relay every event (the users' messages too) to the\n"
            "                            admins: the UI's Events page (off by default)\n"
            "  --admin-ui-max-backlog B  an admin leaving more than B bytes untaken is\n"
            "                            disconnected (default 8388608)\n"
            "\n"
            "Cluster (docs/CLUSTER.md):\n"
            "  --redis URL               join a cluster of Socket.IO servers through Redis,\n"
            "                            as @socket.io/redis-adapter 8.x does (Node servers\n"
            "                            with that adapter, @socket.io/redis-emitter and other\n"
            "                            parleyd nodes share broadcasts, rooms operations and\n"
            "                            serverSideEmit); URL: redis[s]://[[user]:pass@]host[:port][/db]\n"
            "                            (rediss: TLS, the certificate checked against the host)\n"
            "  --redis-ca FILE           CA bundle for a rediss:// server (default: system store)\n"
            "                            (off by default: a single node)\n"
            "\n"
            "WebSocket echo and limits:\n"
            "  --ws-echo PATH            serve a WebSocket echo endpoint at PATH\n"
            "  --no-deflate              do not accept permessage-deflate on the echo endpoint\n"
            "  --max-message BYTES       largest echo message (default 16777216)\n"
            "  --max-frame BYTES         largest echo frame (default 16777216)\n"
            "  --max-header-bytes N      largest HTTP request head (default 8192)\n"
            "  --max-headers N           most HTTP header fields (default 64)\n"
            "  --max-body BYTES          largest HTTP request body (default 1048576)\n"
            "  --max-output BYTES        unsent output per connection before it is dropped\n"
            "                            (default 8388608)\n"
            "  --handshake-timeout MS    complete an HTTP request/upgrade within (default 10000)\n"
            "\n"
            "Operations (/metrics, /dashboard, /readyz; docs/OPERATIONS.md):\n"
            "  --admin-key-file FILE     the admin key (the file's bytes, line ends dropped):\n"
            "                            other than loopback clients, only `Authorization:\n"
            "                            Bearer KEY` or a login at /dashboard/login see\n"
            "                            /dashboard, /metrics and the Admin UI (without it\n"
            "                            they get 403)\n"
            "  --admin-loopback on|off   loopback clients need no key (default on; turn it off\n"
            "                            behind a reverse proxy on the same host)\n"
            "  --metrics-public          /metrics open to anyone (e.g. a Prometheus elsewhere\n"
            "                            on a private network)\n"
            "\n"
            "Push webhook (docs/PROTOCOL.md, \"Push webhook\"; docs/OPERATIONS.md):\n"
            "  --push-webhook URL        POST push-eligible notifications, signed, to URL:\n"
            "                            https://, or http:// to a loopback IP only (off by\n"
            "                            default)\n"
            "  --push-secret-file FILE   the HMAC-SHA256 signing key (required with\n"
            "                            --push-webhook; line ends dropped)\n"
            "  --push-ca FILE            CA bundle the receiver's certificate must chain to\n"
            "                            (default: the system store)\n"
            "  --push-timeout SECONDS    per request, connect included (default 10)\n"
            "  --push-backoff-ms MS      first retry delay; doubles per failure (default 1000)\n"
            "  --push-backoff-max-ms MS  longest retry delay (default 600000)\n"
            "  --push-max-attempts N     then the push is dropped (default 20)\n"
            "  --push-max-outbox N       queued pushes at most; more are dropped (default\n"
            "                            100000)\n"
            "  --push-concurrency N      requests in flight at most (default 4, at most 64)\n"
            "\n"
            "Cluster without sticky sessions (docs/CLUSTER.md):\n"
            "  --node-id ID              this node's id (1..64 of [A-Za-z0-9._-]); its\n"
            "                            Engine.IO session ids start with a tag derived from it\n"
            "  --peer ID=HOST:PORT       another node (repeatable, up to 64): polling requests\n"
            "                            for its sessions are relayed to HOST:PORT\n"
            "  --workers N               N processes on the port (SO_REUSEPORT), polling requests\n"
            "                            relayed between them; with the messaging service,\n"
            "                            needs --store postgresql://... and --redis\n"
            "\n"
            "  --version, --help\n"
            "\n"
            "When ready, prints 'parleyd listening on HOST:PORT' on stdout.\n"
            "SIGINT/SIGTERM: graceful shutdown (clients are disconnected, WebSocket echo\n"
            "sessions closed with 1001).\n");
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-' || v > max) return -1;
    *out = v;
    return 0;
}

static int parse_listen(const char *s, config *c)
{
    const char *colon = strrchr(s, ':');
    if (!colon) return -1;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof c->host) return -1;
    uint64_t port;
    if (parse_u64(colon + 1, 65535, &port) != 0) return -1;
    memcpy(c->host, h, hl);
    c->host[hl] = 0;
    c->port = (unsigned)port;
    return 0;
}

enum {
    OPT_LISTEN = 256,
    OPT_CONFIG,
    OPT_WS_ECHO,
    OPT_CERT,
    OPT_KEY,
    OPT_NO_DEFLATE,
    OPT_COMPRESSION,
    OPT_COMPRESSION_THRESHOLD,
    OPT_MAX_MSG,
    OPT_MAX_FRAME,
    OPT_MAX_HDR_BYTES,
    OPT_MAX_HDRS,
    OPT_MAX_BODY,
    OPT_MAX_OUT,
    OPT_HS_TIMEOUT,
    OPT_PING_INT,
    OPT_PING_TO,
    OPT_LOG,
    OPT_PATH,
    OPT_MAX_PAYLOAD,
    OPT_UPGRADE_TO,
    OPT_CONNECT_TO,
    OPT_TRANSPORTS,
    OPT_CORS,
    OPT_CORS_CRED,
    OPT_RECOVERY,
    OPT_MAX_DISC,
    OPT_MAX_ATT,
    OPT_PROTOCOL_TEST,
    OPT_VERSION,
    OPT_HELP
};

/* The messaging service's options. */
enum {
    OPT_NO_MESSAGING = OPT_HELP + 1,
    OPT_JWT_SECRET,
    OPT_JWT_SECRET_FILE,
    OPT_JWT_LEEWAY,
    OPT_DEV_AUTH,
    OPT_DATA_DIR,
    OPT_STORE,
    OPT_MEDIA_DIR,
    OPT_FSYNC,
    OPT_MAX_MEDIA,
    OPT_MAX_TEXT,
    OPT_TYPING_TO,
    OPT_LOW_DELAY,
    OPT_AWAY_AFTER,
    OPT_PRESENCE_INTERVAL,
    OPT_PRESENCE_NODE_TIMEOUT,
    OPT_API_KEY_FILE,
    OPT_TZ_DIR
};

/* Identity and exposure. */
enum {
    OPT_JWT_PEM = OPT_TZ_DIR + 1,
    OPT_JWKS,
    OPT_JWT_MAX_LIFE,
    OPT_ALLOWED_ORIGINS,
    OPT_ROOT_NSP,
    OPT_MAX_ATT_BYTES,
    OPT_MAX_PENDING_ATT
};
enum { ROOT_OFF, ROOT_AUTH, ROOT_OPEN };

/* Operations. */
enum {
    OPT_ADMIN_KEY_FILE = 512,
    OPT_ADMIN_LOOPBACK,
    OPT_METRICS_PUBLIC,
    OPT_ADMIN_UI,
    OPT_ADMIN_EVENTS,
    OPT_ADMIN_MAX_BACKLOG
};

/* The push webhook. */
enum {
    OPT_PUSH_WEBHOOK = OPT_ADMIN_MAX_BACKLOG + 1,
    OPT_PUSH_SECRET_FILE,
    OPT_PUSH_CA,
    OPT_PUSH_TIMEOUT,
    OPT_PUSH_BACKOFF,
    OPT_PUSH_BACKOFF_MAX,
    OPT_PUSH_MAX_ATTEMPTS,
    OPT_PUSH_MAX_OUTBOX,
    OPT_PUSH_CONCURRENCY
};

/* The Redis cluster adapter (docs/CLUSTER.md). */
enum { OPT_REDIS = OPT_PUSH_CONCURRENCY + 1, OPT_REDIS_CA };

/* Limits. */
enum {
    OPT_LIMITS = OPT_MAX_PENDING_ATT + 1,
    OPT_CONNS_PER_IP,
    OPT_HS_RATE,
    OPT_BODY_INFLIGHT,
    OPT_RATE_EVENTS,
    OPT_RATE_MESSAGES,
    OPT_RATE_MSG_BYTES,
    OPT_RATE_PRESENCE,
    OPT_RATE_JOINS,
    OPT_RATE_NOTIFY,
    OPT_RATE_URGENT,
    OPT_MAX_ROOMS,
    OPT_UPLOADS_DAY,
    OPT_UPLOAD_BYTES_DAY,
    OPT_STORAGE_USER,
    OPT_DISK_RESERVE
};

/* Operations. */
enum { OPT_LOG_FORMAT = OPT_DISK_RESERVE + 1 };

/* Cluster without sticky sessions (docs/CLUSTER.md). */
enum { OPT_NODE_ID = OPT_LOG_FORMAT + 1, OPT_PEER, OPT_WORKERS };
_Static_assert((int)OPT_WORKERS < (int)OPT_ADMIN_KEY_FILE, "option values overlap");

static const struct option longopts[] = {
    {"listen", required_argument, 0, OPT_LISTEN},
    {"config", required_argument, 0, OPT_CONFIG},
    {"ws-echo", required_argument, 0, OPT_WS_ECHO},
    {"tls-cert", required_argument, 0, OPT_CERT},
    {"tls-key", required_argument, 0, OPT_KEY},
    {"no-deflate", no_argument, 0, OPT_NO_DEFLATE},
    {"compression", no_argument, 0, OPT_COMPRESSION},
    {"compression-threshold", required_argument, 0, OPT_COMPRESSION_THRESHOLD},
    {"max-message", required_argument, 0, OPT_MAX_MSG},
    {"max-frame", required_argument, 0, OPT_MAX_FRAME},
    {"max-header-bytes", required_argument, 0, OPT_MAX_HDR_BYTES},
    {"max-headers", required_argument, 0, OPT_MAX_HDRS},
    {"max-body", required_argument, 0, OPT_MAX_BODY},
    {"max-output", required_argument, 0, OPT_MAX_OUT},
    {"handshake-timeout", required_argument, 0, OPT_HS_TIMEOUT},
    {"ping-interval", required_argument, 0, OPT_PING_INT},
    {"ping-timeout", required_argument, 0, OPT_PING_TO},
    {"log-level", required_argument, 0, OPT_LOG},
    {"log-format", required_argument, 0, OPT_LOG_FORMAT},
    {"path", required_argument, 0, OPT_PATH},
    {"max-payload", required_argument, 0, OPT_MAX_PAYLOAD},
    {"upgrade-timeout", required_argument, 0, OPT_UPGRADE_TO},
    {"connect-timeout", required_argument, 0, OPT_CONNECT_TO},
    {"transports", required_argument, 0, OPT_TRANSPORTS},
    {"cors-origin", required_argument, 0, OPT_CORS},
    {"cors-credentials", no_argument, 0, OPT_CORS_CRED},
    {"recovery", no_argument, 0, OPT_RECOVERY},
    {"max-disconnection", required_argument, 0, OPT_MAX_DISC},
    {"max-attachments", required_argument, 0, OPT_MAX_ATT},
    {"protocol-test", no_argument, 0, OPT_PROTOCOL_TEST},
    {"no-messaging", no_argument, 0, OPT_NO_MESSAGING},
    {"jwt-secret", required_argument, 0, OPT_JWT_SECRET},
    {"jwt-secret-file", required_argument, 0, OPT_JWT_SECRET_FILE},
    {"jwt-leeway", required_argument, 0, OPT_JWT_LEEWAY},
    {"dev-auth", no_argument, 0, OPT_DEV_AUTH},
    {"data-dir", required_argument, 0, OPT_DATA_DIR},
    {"store", required_argument, 0, OPT_STORE},
    {"media-dir", required_argument, 0, OPT_MEDIA_DIR},
    {"fsync", no_argument, 0, OPT_FSYNC},
    {"max-media-bytes", required_argument, 0, OPT_MAX_MEDIA},
    {"max-text-bytes", required_argument, 0, OPT_MAX_TEXT},
    {"typing-timeout", required_argument, 0, OPT_TYPING_TO},
    {"low-delay", required_argument, 0, OPT_LOW_DELAY},
    {"away-after", required_argument, 0, OPT_AWAY_AFTER},
    {"presence-interval", required_argument, 0, OPT_PRESENCE_INTERVAL},
    {"presence-node-timeout", required_argument, 0, OPT_PRESENCE_NODE_TIMEOUT},
    {"api-key-file", required_argument, 0, OPT_API_KEY_FILE},
    {"tz-dir", required_argument, 0, OPT_TZ_DIR},
    {"jwt-public-key-file", required_argument, 0, OPT_JWT_PEM},
    {"jwks-file", required_argument, 0, OPT_JWKS},
    {"jwt-max-lifetime", required_argument, 0, OPT_JWT_MAX_LIFE},
    {"allowed-origins", required_argument, 0, OPT_ALLOWED_ORIGINS},
    {"root-namespace", required_argument, 0, OPT_ROOT_NSP},
    {"max-attachment-bytes", required_argument, 0, OPT_MAX_ATT_BYTES},
    {"max-pending-attachment-bytes", required_argument, 0, OPT_MAX_PENDING_ATT},
    {"limits", required_argument, 0, OPT_LIMITS},
    {"max-conns-per-ip", required_argument, 0, OPT_CONNS_PER_IP},
    {"handshake-rate", required_argument, 0, OPT_HS_RATE},
    {"max-body-inflight", required_argument, 0, OPT_BODY_INFLIGHT},
    {"rate-events", required_argument, 0, OPT_RATE_EVENTS},
    {"rate-messages", required_argument, 0, OPT_RATE_MESSAGES},
    {"rate-message-bytes", required_argument, 0, OPT_RATE_MSG_BYTES},
    {"rate-presence", required_argument, 0, OPT_RATE_PRESENCE},
    {"rate-joins", required_argument, 0, OPT_RATE_JOINS},
    {"rate-notify", required_argument, 0, OPT_RATE_NOTIFY},
    {"rate-urgent", required_argument, 0, OPT_RATE_URGENT},
    {"max-rooms", required_argument, 0, OPT_MAX_ROOMS},
    {"uploads-per-day", required_argument, 0, OPT_UPLOADS_DAY},
    {"upload-bytes-per-day", required_argument, 0, OPT_UPLOAD_BYTES_DAY},
    {"storage-per-user", required_argument, 0, OPT_STORAGE_USER},
    {"disk-reserve", required_argument, 0, OPT_DISK_RESERVE},
    {"admin-key-file", required_argument, 0, OPT_ADMIN_KEY_FILE},
    {"admin-loopback", required_argument, 0, OPT_ADMIN_LOOPBACK},
    {"metrics-public", no_argument, 0, OPT_METRICS_PUBLIC},
    {"admin-ui", no_argument, 0, OPT_ADMIN_UI},
    {"admin-ui-events", no_argument, 0, OPT_ADMIN_EVENTS},
    {"admin-ui-max-backlog", required_argument, 0, OPT_ADMIN_MAX_BACKLOG},
    {"push-webhook", required_argument, 0, OPT_PUSH_WEBHOOK},
    {"push-secret-file", required_argument, 0, OPT_PUSH_SECRET_FILE},
    {"push-ca", required_argument, 0, OPT_PUSH_CA},
    {"push-timeout", required_argument, 0, OPT_PUSH_TIMEOUT},
    {"push-backoff-ms", required_argument, 0, OPT_PUSH_BACKOFF},
    {"push-backoff-max-ms", required_argument, 0, OPT_PUSH_BACKOFF_MAX},
    {"push-max-attempts", required_argument, 0, OPT_PUSH_MAX_ATTEMPTS},
    {"push-max-outbox", required_argument, 0, OPT_PUSH_MAX_OUTBOX},
    {"push-concurrency", required_argument, 0, OPT_PUSH_CONCURRENCY},
    {"node-id", required_argument, 0, OPT_NODE_ID},
    {"peer", required_argument, 0, OPT_PEER},
    {"workers", required_argument, 0, OPT_WORKERS},
    {"redis", required_argument, 0, OPT_REDIS},
    {"redis-ca", required_argument, 0, OPT_REDIS_CA},
    {"version", no_argument, 0, OPT_VERSION},
    {"help", no_argument, 0, OPT_HELP},
    {0, 0, 0, 0},
};

static int apply_config(config *c, const char *path);

/* Applies one option; returns NULL or an error message. */
static const char *apply(config *c, int ch, const char *arg)
{
    uint64_t v = 0;
    switch (ch) {
    case OPT_LISTEN:
        return parse_listen(arg, c) ? "--listen wants HOST:PORT" : NULL;
    case OPT_CONFIG:
        return apply_config(c, arg) ? "cannot use the --config file" : NULL;
    case OPT_WS_ECHO:
        if (arg[0] != '/') return "--ws-echo wants a path starting with /";
        c->ws_echo = arg;
        return NULL;
    case OPT_CERT:
        c->sio.tls_cert = arg;
        return NULL;
    case OPT_KEY:
        c->sio.tls_key = arg;
        return NULL;
    case OPT_NO_DEFLATE:
        c->deflate = false;
        return NULL;
    case OPT_COMPRESSION:
        c->sio.permessage_deflate = 1;
        return NULL;
    case OPT_NODE_ID:
        return ppeers_set_self(&c->peers, arg);
    case OPT_PEER:
        return ppeers_add(&c->peers, arg);
    case OPT_WORKERS:
        if (parse_u64(arg, PWORKERS_MAX, &v) || v == 0) return "--workers wants 1..64";
        c->workers = (unsigned)v;
        return NULL;
    case OPT_COMPRESSION_THRESHOLD:
        if (parse_u64(arg, UINT32_MAX, &v)) return "bad --compression-threshold";
        c->sio.compression_threshold = (size_t)v;
        return NULL;
    case OPT_MAX_MSG:
        if (parse_u64(arg, UINT32_MAX, &v) || v == 0) return "bad --max-message";
        c->ws.max_message = v;
        return NULL;
    case OPT_MAX_FRAME:
        if (parse_u64(arg, UINT32_MAX, &v) || v == 0) return "bad --max-frame";
        c->ws.max_frame = v;
        return NULL;
    case OPT_MAX_HDR_BYTES:
        if (parse_u64(arg, 1u << 20, &v) || v < 64) return "bad --max-header-bytes";
        c->http.limits.max_header_bytes = (size_t)v;
        return NULL;
    case OPT_MAX_HDRS:
        if (parse_u64(arg, 1000, &v) || v == 0) return "bad --max-headers";
        c->http.limits.max_headers = (size_t)v;
        return NULL;
    case OPT_MAX_BODY:
        if (parse_u64(arg, UINT32_MAX, &v)) return "bad --max-body";
        c->http.limits.max_body = v;
        c->max_body_set = true;
        return NULL;
    case OPT_MAX_OUT:
        if (parse_u64(arg, UINT32_MAX, &v) || v < 1024) return "bad --max-output";
        c->http.max_output = (size_t)v;
        return NULL;
    case OPT_HS_TIMEOUT:
        if (parse_u64(arg, 3600000, &v) || v == 0) return "bad --handshake-timeout";
        c->http.head_timeout_ms = (uint32_t)v;
        return NULL;
    case OPT_PING_INT:
        if (parse_u64(arg, 3600000, &v)) return "bad --ping-interval";
        c->ws.ping_interval_ms = (uint32_t)v;
        c->sio.ping_interval_ms = (uint32_t)v;
        c->ping_set = true;
        return NULL;
    case OPT_PING_TO:
        if (parse_u64(arg, 3600000, &v) || v == 0) return "bad --ping-timeout";
        c->ws.ping_timeout_ms = (uint32_t)v;
        c->sio.ping_timeout_ms = (uint32_t)v;
        c->ping_timeout_set = true;
        return NULL;
    case OPT_LOG:
        if (!strcmp(arg, "debug"))
            c->level = PARLEY_LOG_DEBUG;
        else if (!strcmp(arg, "info"))
            c->level = PARLEY_LOG_INFO;
        else if (!strcmp(arg, "warn"))
            c->level = PARLEY_LOG_WARN;
        else if (!strcmp(arg, "error"))
            c->level = PARLEY_LOG_ERROR;
        else
            return "--log-level wants debug, info, warn or error";
        return NULL;
    case OPT_LOG_FORMAT:
        if (!strcmp(arg, "text"))
            c->log_format = PLOG_TEXT;
        else if (!strcmp(arg, "json"))
            c->log_format = PLOG_JSON;
        else
            return "--log-format wants text or json";
        return NULL;
    case OPT_PATH:
        if (arg[0] != '/') return "--path wants a path starting with /";
        c->sio.path = arg;
        return NULL;
    case OPT_MAX_PAYLOAD:
        if (parse_u64(arg, UINT32_MAX, &v) || v == 0) return "bad --max-payload";
        c->sio.max_payload = (size_t)v;
        return NULL;
    case OPT_UPGRADE_TO:
        if (parse_u64(arg, 3600000, &v) || v == 0) return "bad --upgrade-timeout";
        c->sio.upgrade_timeout_ms = (uint32_t)v;
        return NULL;
    case OPT_CONNECT_TO:
        if (parse_u64(arg, 3600000, &v) || v == 0) return "bad --connect-timeout";
        c->sio.connect_timeout_ms = (uint32_t)v;
        c->connect_timeout_set = true;
        return NULL;
    case OPT_TRANSPORTS:
        c->sio.polling = strstr(arg, "polling") != NULL;
        c->sio.websocket = strstr(arg, "websocket") != NULL;
        return c->sio.polling || c->sio.websocket ? NULL
                                                  : "--transports wants polling and/or websocket";
    case OPT_CORS:
        c->sio.cors_origin = arg;
        c->cors_set = true;
        return NULL;
    case OPT_CORS_CRED:
        c->sio.cors_credentials = 1;
        return NULL;
    case OPT_RECOVERY:
        c->sio.recovery = 1;
        c->recovery_set = true;
        return NULL;
    case OPT_MAX_DISC:
        if (parse_u64(arg, 86400000, &v) || v == 0) return "bad --max-disconnection";
        c->sio.max_disconnection_ms = (uint32_t)v;
        return NULL;
    case OPT_MAX_ATT:
        if (parse_u64(arg, 64, &v)) return "bad --max-attachments (at most 64)";
        c->sio.max_attachments = (unsigned)v;
        return NULL;
    case OPT_PROTOCOL_TEST:
        c->protocol_test = true;
        return NULL;
    case OPT_NO_MESSAGING:
        c->messaging = false;
        return NULL;
    case OPT_JWT_SECRET:
        if (!*arg) return "--jwt-secret must not be empty";
        c->jwt_secret = arg;
        return NULL;
    case OPT_JWT_SECRET_FILE:
        c->jwt_secret_file = arg;
        return NULL;
    case OPT_API_KEY_FILE:
        if (!*arg) return "--api-key-file must not be empty";
        c->api_key_file = arg;
        return NULL;
    case OPT_TZ_DIR:
        if (!*arg) return "--tz-dir must not be empty";
        c->msg.tz_dir = arg;
        return NULL;
    case OPT_JWT_LEEWAY:
        if (parse_u64(arg, 86400, &v)) return "bad --jwt-leeway (seconds, at most 86400)";
        c->msg.jwt_leeway_ms = (uint32_t)v * 1000;
        return NULL;
    case OPT_DEV_AUTH:
        c->msg.dev_auth = true;
        return NULL;
    case OPT_DATA_DIR:
        if (!*arg) return "--data-dir must not be empty";
        c->msg.data_dir = arg;
        return NULL;
    case OPT_STORE:
        if (strncmp(arg, "sqlite:", 7) == 0 ? !arg[7]
                                            : strncmp(arg, "postgresql://", 13) != 0 &&
                                                  strncmp(arg, "postgres://", 11) != 0)
            return "bad --store (sqlite:PATH or postgresql://user@host:port/db)";
        c->msg.store = arg;
        return NULL;
    case OPT_MEDIA_DIR:
        if (!*arg) return "--media-dir must not be empty";
        c->msg.media_dir = arg;
        return NULL;
    case OPT_FSYNC:
        c->msg.full_sync = true;
        return NULL;
    case OPT_MAX_MEDIA:
        if (parse_u64(arg, UINT32_MAX - 65536, &v) || v == 0) return "bad --max-media-bytes";
        c->msg.max_media_bytes = (size_t)v;
        return NULL;
    case OPT_MAX_TEXT:
        if (parse_u64(arg, 1u << 20, &v) || v == 0) return "bad --max-text-bytes (1 to 1048576)";
        c->msg.limits.max_text = (size_t)v;
        return NULL;
    case OPT_TYPING_TO:
        if (parse_u64(arg, 600000, &v) || v == 0) return "bad --typing-timeout";
        c->msg.typing_timeout_ms = (uint32_t)v;
        return NULL;
    case OPT_LOW_DELAY:
        if (parse_u64(arg, 60000, &v)) return "bad --low-delay";
        c->msg.low_delay_ms = (uint32_t)v;
        return NULL;
    case OPT_AWAY_AFTER:
        if (parse_u64(arg, 86400000, &v)) return "bad --away-after (0 to 86400000)";
        c->msg.away_after_ms = (uint32_t)v;
        return NULL;
    case OPT_PRESENCE_INTERVAL:
        if (parse_u64(arg, 600000, &v)) return "bad --presence-interval (0 to 600000)";
        c->msg.presence_interval_ms = (uint32_t)v;
        return NULL;
    case OPT_PRESENCE_NODE_TIMEOUT:
        if (parse_u64(arg, 600000, &v) || v < 300)
            return "bad --presence-node-timeout (300 to 600000)";
        c->msg.presence_node_timeout_ms = (uint32_t)v;
        c->msg.presence_heartbeat_ms = (uint32_t)PARLEY_MIN(1000, v / 3);
        return NULL;
    case OPT_JWT_PEM:
        if (!*arg) return "--jwt-public-key-file must not be empty";
        if (c->n_jwt_pem == PARLEY_ARRAY_LEN(c->jwt_pem)) return "at most 8 --jwt-public-key-file";
        c->jwt_pem[c->n_jwt_pem++] = arg;
        return NULL;
    case OPT_JWKS:
        if (!*arg) return "--jwks-file must not be empty";
        c->jwks_file = arg;
        return NULL;
    case OPT_JWT_MAX_LIFE:
        if (parse_u64(arg, 10ull * 365 * 86400, &v)) return "bad --jwt-max-lifetime (seconds)";
        c->jwt_max_lifetime_s = v;
        return NULL;
    case OPT_ALLOWED_ORIGINS:
        if (!*arg) return "--allowed-origins wants '*' or a comma-separated list";
        c->allowed_origins = arg;
        return NULL;
    case OPT_ROOT_NSP:
        if (!strcmp(arg, "off"))
            c->root_nsp = ROOT_OFF;
        else if (!strcmp(arg, "auth"))
            c->root_nsp = ROOT_AUTH;
        else if (!strcmp(arg, "open"))
            c->root_nsp = ROOT_OPEN;
        else
            return "--root-namespace wants off, auth or open";
        return NULL;
    case OPT_MAX_ATT_BYTES:
        if (parse_u64(arg, 1ull << 40, &v) || v == 0) return "bad --max-attachment-bytes";
        c->sio.max_attachment_bytes = (size_t)v;
        return NULL;
    case OPT_MAX_PENDING_ATT:
        if (parse_u64(arg, 1ull << 40, &v) || v == 0) return "bad --max-pending-attachment-bytes";
        c->sio.max_pending_attachment_bytes = (size_t)v;
        return NULL;
    case OPT_LIMITS:
        if (!strcmp(arg, "on"))
            c->limits_off = false;
        else if (!strcmp(arg, "off"))
            c->limits_off = true;
        else
            return "--limits wants on or off";
        return NULL;
    case OPT_CONNS_PER_IP:
        if (parse_u64(arg, 1000000, &v)) return "bad --max-conns-per-ip (0 to 1000000)";
        c->http.max_conns_per_ip = (uint32_t)v;
        return NULL;
    case OPT_HS_RATE:
        if (parse_u64(arg, 100000, &v)) return "bad --handshake-rate (0 to 100000)";
        c->http.ip_rate = prate_limit(v, 1000, 5 * v);
        return NULL;
    case OPT_BODY_INFLIGHT:
        if (parse_u64(arg, 1ull << 40, &v)) return "bad --max-body-inflight";
        c->http.max_body_inflight = v;
        return NULL;
    case OPT_RATE_EVENTS:
    case OPT_RATE_MESSAGES:
    case OPT_RATE_PRESENCE:
    case OPT_RATE_JOINS: {
        if (parse_u64(arg, 1000000, &v)) return "bad rate (0 to 1000000 per second; 0 = none)";
        mquota_opts *q = &c->msg.quota;
        if (ch == OPT_RATE_EVENTS) q->events = prate_limit(v, 1000, 2 * v);
        if (ch == OPT_RATE_MESSAGES) q->messages = prate_limit(v, 1000, 2 * v);
        if (ch == OPT_RATE_PRESENCE) q->presence = prate_limit(v, 1000, 10 * v);
        if (ch == OPT_RATE_JOINS) q->joins = prate_limit(v, 1000, 20 * v);
        return NULL;
    }
    case OPT_RATE_MSG_BYTES:
        if (parse_u64(arg, 1ull << 30, &v)) return "bad --rate-message-bytes (0 to 2^30)";
        c->msg.quota.message_bytes = prate_limit(v, 1000, 4 * v);
        return NULL;
    case OPT_RATE_NOTIFY:
        if (parse_u64(arg, 1000000, &v)) return "bad --rate-notify (per minute; 0 = none)";
        c->msg.quota.notify = prate_limit(v, 60000, v < 3 ? v : (v + 2) / 3);
        return NULL;
    case OPT_RATE_URGENT:
        if (parse_u64(arg, 1000000, &v)) return "bad --rate-urgent (per hour; 0 = none)";
        c->msg.quota.urgent = prate_limit(v, 3600000, v < 3 ? v : 3);
        return NULL;
    case OPT_MAX_ROOMS:
        if (parse_u64(arg, UINT32_MAX, &v)) return "bad --max-rooms";
        c->msg.quota.max_rooms = (uint32_t)v;
        return NULL;
    case OPT_UPLOADS_DAY:
        if (parse_u64(arg, UINT32_MAX, &v)) return "bad --uploads-per-day";
        c->msg.quota.uploads_per_day = (uint32_t)v;
        return NULL;
    case OPT_UPLOAD_BYTES_DAY:
        if (parse_u64(arg, 1ull << 50, &v)) return "bad --upload-bytes-per-day";
        c->msg.quota.upload_bytes_per_day = v;
        return NULL;
    case OPT_STORAGE_USER:
        if (parse_u64(arg, 1ull << 50, &v)) return "bad --storage-per-user";
        c->msg.quota.storage_per_user = v;
        return NULL;
    case OPT_DISK_RESERVE:
        if (parse_u64(arg, 1ull << 50, &v)) return "bad --disk-reserve";
        c->msg.quota.disk_reserve = v;
        return NULL;
    case OPT_ADMIN_UI:
        c->admin_ui = true;
        return NULL;
    case OPT_ADMIN_EVENTS:
        c->admin_events = true;
        return NULL;
    case OPT_ADMIN_MAX_BACKLOG:
        if (parse_u64(arg, 1ull << 40, &v) || v < 1024) return "bad --admin-ui-max-backlog";
        c->admin_max_backlog = v;
        return NULL;
    case OPT_REDIS: {
        predis_url u;
        const char *why = NULL;
        if (predis_url_parse(arg, &u, &why) != 0) return why ? why : "bad --redis URL";
        c->redis_url = arg;
        return NULL;
    }
    case OPT_REDIS_CA:
        if (access(arg, R_OK) != 0) return "--redis-ca: cannot read the file";
        c->redis_ca = arg;
        return NULL;
    /* Operations. */
    case OPT_ADMIN_KEY_FILE:
        if (!*arg) return "--admin-key-file must not be empty";
        c->admin_key_file = arg;
        return NULL;
    case OPT_ADMIN_LOOPBACK:
        if (!strcmp(arg, "on"))
            c->admin_loopback_off = false;
        else if (!strcmp(arg, "off"))
            c->admin_loopback_off = true;
        else
            return "--admin-loopback wants on or off";
        return NULL;
    case OPT_METRICS_PUBLIC:
        c->metrics_public = true;
        return NULL;
    /* The push webhook. */
    case OPT_PUSH_WEBHOOK: {
        static char err[320];
        if (push_check_url(arg, err, sizeof err) != 0) return err;
        c->push_url = arg;
        return NULL;
    }
    case OPT_PUSH_SECRET_FILE:
        if (!*arg) return "--push-secret-file must not be empty";
        c->push_secret_file = arg;
        return NULL;
    case OPT_PUSH_CA:
        if (!*arg) return "--push-ca must not be empty";
        c->push.ca_file = arg;
        return NULL;
    case OPT_PUSH_TIMEOUT:
        if (parse_u64(arg, 600, &v) || v == 0) return "bad --push-timeout (1 to 600 seconds)";
        c->push.timeout_ms = (uint32_t)v * 1000;
        return NULL;
    case OPT_PUSH_BACKOFF:
        if (parse_u64(arg, 3600000, &v) || v == 0) return "bad --push-backoff-ms (1 to 3600000)";
        c->push.backoff_ms = (uint32_t)v;
        return NULL;
    case OPT_PUSH_BACKOFF_MAX:
        if (parse_u64(arg, 86400000, &v) || v == 0)
            return "bad --push-backoff-max-ms (1 to 86400000)";
        c->push.backoff_max_ms = (uint32_t)v;
        return NULL;
    case OPT_PUSH_MAX_ATTEMPTS:
        if (parse_u64(arg, 1000, &v) || v == 0) return "bad --push-max-attempts (1 to 1000)";
        c->push.max_attempts = (uint32_t)v;
        return NULL;
    case OPT_PUSH_MAX_OUTBOX:
        if (parse_u64(arg, 100000000, &v)) return "bad --push-max-outbox (0 to 100000000)";
        c->push.max_outbox = v;
        return NULL;
    case OPT_PUSH_CONCURRENCY:
        if (parse_u64(arg, PUSH_CONCURRENCY_MAX, &v) || v == 0)
            return "bad --push-concurrency (1 to 64)";
        c->push.concurrency = (unsigned)v;
        return NULL;
    default:
        return "unknown option";
    }
}

/* `name = value` lines; '#' starts a comment; flags without a value take
 * `true`/`yes`/`1`. */
static int apply_config(config *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "parleyd: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[1024];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        char *p = line;
        char *hash = strchr(p, '#');
        if (hash) *hash = 0;
        while (*p == ' ' || *p == '\t') p++;
        size_t len = strlen(p);
        while (len && (p[len - 1] == '\n' || p[len - 1] == '\r' || p[len - 1] == ' ' ||
                       p[len - 1] == '\t'))
            p[--len] = 0;
        if (!*p) continue;
        char *eq = strchr(p, '=');
        char *name = p, *value = NULL;
        if (eq) {
            *eq = 0;
            value = eq + 1;
            while (*value == ' ' || *value == '\t') value++;
            size_t nl = strlen(name);
            while (nl && (name[nl - 1] == ' ' || name[nl - 1] == '\t')) name[--nl] = 0;
        }
        const struct option *o = NULL;
        for (const struct option *k = longopts; k->name; k++)
            if (!strcmp(k->name, name)) o = k;
        const char *err = NULL;
        if (!o || o->val == OPT_CONFIG || o->val == OPT_HELP || o->val == OPT_VERSION) {
            err = "unknown option";
        } else if (o->has_arg == no_argument) {
            if (value && strcmp(value, "true") && strcmp(value, "yes") && strcmp(value, "1"))
                err = "this option takes no value (or true)";
            else
                err = apply(c, o->val, NULL);
        } else if (!value || !*value) {
            err = "missing value";
        } else if (c->nstrings == PARLEY_ARRAY_LEN(c->strings)) {
            err = "too many options";
        } else {
            char *copy = strdup(value);
            if (!copy) {
                err = "out of memory";
            } else {
                c->strings[c->nstrings++] = copy;
                err = apply(c, o->val, copy);
            }
        }
        if (err) {
            fprintf(stderr, "parleyd: %s:%d: %s: %s\n", path, lineno, name, err);
            rc = -1;
        }
    }
    fclose(f);
    return rc;
}

#define API_KEYS_MAX     1024
#define API_KEY_FILE_MAX (1 << 20)

/* API keys, one per line; blank lines and # comments skipped, spaces and
 * CR around a key dropped. The file's buffer holds the keys (*buf). */
static int read_api_keys(const char *path, char **buf, const char ***keys, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        plog_error("%s: %s", path, strerror(errno));
        return -1;
    }
    char *b = malloc(API_KEY_FILE_MAX + 1);
    size_t len = b ? fread(b, 1, API_KEY_FILE_MAX + 1, f) : 0;
    bool bad = !b || ferror(f) || len > API_KEY_FILE_MAX;
    fclose(f);
    const char **k = bad ? NULL : calloc(API_KEYS_MAX, sizeof *k);
    if (bad || !k) {
        plog_error("%s: cannot read the API keys (at most %d bytes)", path,
                API_KEY_FILE_MAX);
        free(b);
        return -1;
    }
    b[len] = 0;
    size_t count = 0;
    for (char *line = b; line < b + len;) {
        char *end = memchr(line, '\n', (size_t)(b + len - line));
        if (!end) end = b + len;
        *end = 0;
        char *e = end;
        while (*line == ' ' || *line == '\t') line++;
        while (e > line && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) *--e = 0;
        if (*line && *line != '#') {
            if (count == API_KEYS_MAX || memchr(line, 0, (size_t)(e - line))) {
                plog_error("%s: at most %d API keys", path, API_KEYS_MAX);
                free(k);
                free(b);
                return -1;
            }
            if (e - line < 16) plog_warn("%s: an API key under 16 bytes", path);
            k[count++] = line;
        }
        line = end + 1;
    }
    if (count == 0) {
        plog_error("%s: no API key in the file", path);
        free(k);
        free(b);
        return -1;
    }
    *buf = b;
    *keys = k;
    *n = count;
    return 0;
}

/* The key set tokens are verified with: the HS256 secret (from its file,
 * read again, or the flag) and the public keys of the PEM and JWKS files.
 * NULL with a message on stderr when a file is unusable; a set with
 * nothing in it is NULL too (no way to check tokens). */
static jwt_keyset *load_keys(const config *c)
{
    jwt_keyset_opts ko;
    jwt_keyset_opts_init(&ko);
    ko.leeway_ms = c->msg.jwt_leeway_ms;
    ko.max_lifetime_ms = (int64_t)c->jwt_max_lifetime_s * 1000;
    jwt_keyset *ks = NULL;
    if (jwt_keyset_new(&ko, &ks) != 0) {
        plog_error("out of memory");
        return NULL;
    }
    char err[256];
    int rc = 0;
    if (c->jwt_secret_file) {
        uint8_t *buf = NULL;
        size_t len = 0;
        rc = jwt_read_secret_file(c->jwt_secret_file, &buf, &len, err, sizeof err);
        if (rc) plog_error("%s", err);
        if (rc == 0) {
            rc = jwt_keyset_set_secret(ks, buf, len);
            if (len < 32) plog_warn("the JWT secret is %zu bytes; HS256 wants at least 32", len);
            OPENSSL_cleanse(buf, len);
            free(buf);
        }
    } else if (c->jwt_secret) {
        rc = jwt_keyset_set_secret(ks, (const uint8_t *)c->jwt_secret, strlen(c->jwt_secret));
    }
    for (size_t i = 0; rc == 0 && i < c->n_jwt_pem; i++) {
        rc = jwt_keyset_add_pem_file(ks, c->jwt_pem[i], err, sizeof err);
        if (rc) plog_error("%s", err);
    }
    if (rc == 0 && c->jwks_file) {
        rc = jwt_keyset_add_jwks_file(ks, c->jwks_file, err, sizeof err);
        if (rc) plog_error("%s", err);
    }
    if (rc || (!jwt_keyset_has_secret(ks) && jwt_keyset_count(ks) == 0)) {
        jwt_keyset_unref(ks);
        return NULL;
    }
    return ks;
}

/* Urgent messages raise notifications inside the messaging service;
 * this extra hook of the seam logs them at debug level (one line per
 * message and recipient is too much for info on a hot path). */
static void log_urgent(const msg_notice *n, void *user)
{
    (void)user;
    plog_debug("messaging: urgent message %lld in %s from %s for %s (%s)",
               (long long)n->message->id, n->message->conversation, n->message->from, n->recipient,
               n->online ? "online" : "offline");
}

/* The echo endpoint. */
static void echo_message(wsconn *w, int opcode, uint8_t *data, size_t len)
{
    wsconn_send(w, opcode, data, len);
}

static const wsconn_cbs echo_cbs = {.on_message = echo_message};

static void route_root(phttpd_req *req, void *user)
{
    (void)user;
    if (!phttpd_allow(req, "GET, HEAD")) return;
    char body[1024];
    int n = snprintf(body, sizeof body,
                     "<!doctype html><meta charset=utf-8><title>parleyd</title>"
                     "<h1>parleyd %s</h1><p>Running. Health: <a href=\"/healthz\">/healthz</a></p>"
                     "<ul><li><a href=\"/dashboard\">/dashboard</a>: live dashboard</li>"
                     "<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>"
                     "<li><a href=\"/healthz\">/healthz</a>: alive</li>"
                     "<li><a href=\"/readyz\">/readyz</a>: ready (the store answers)</li></ul>\n",
                     parley_version());
    phttpd_respond(req, 200, "text/html; charset=utf-8", NULL, 0, body, (size_t)n);
}

static void route_health(phttpd_req *req, void *user)
{
    (void)user;
    if (!phttpd_allow(req, "GET, HEAD")) return;
    phttpd_respond(req, 200, "text/plain; charset=utf-8", NULL, 0, "ok\n", 3);
}

/* The Admin UI namespace's authorizer: the rule of the dashboard
 * (admin_auth.h): a loopback peer without credentials (unless
 * --admin-loopback off), anyone else with the admin key as the password
 * (any username). */
static int admin_ui_authorize(const char *username, size_t ulen, const char *password, size_t plen,
                              const char *peer_ip, void *user)
{
    (void)username;
    (void)ulen;
    const padmin *pa = *(padmin *const *)user;
    if (padmin_ip_is_loopback(pa, peer_ip)) return 1;
    return padmin_check_key(pa, password, plen);
}

typedef struct app {
    const config *c;
    parley_loop *loop;
    parley_server *srv;
    msg_service *msg;
    admin_ui *admin_ui;
    engine *echo_engine;
    pcluster *cluster;
    uv_signal_t sigint, sigterm, sighup;
    bool stopping;
    /* Operations. */
    padmin *admin;
    ops *ops;
} app;

/* SIGHUP: the token keys and the TLS certificate are read again; what
 * fails to load leaves the old one in place (and says why). */
static void on_sighup(uv_signal_t *h, int signum)
{
    (void)signum;
    app *a = h->data;
    const config *c = a->c;
    if (a->msg && (c->jwt_secret || c->jwt_secret_file || c->n_jwt_pem || c->jwks_file)) {
        jwt_keyset *ks = load_keys(c);
        if (ks) {
            plog_info("SIGHUP: token keys reloaded (%zu public keys%s)", jwt_keyset_count(ks),
                      jwt_keyset_has_secret(ks) ? " and a secret" : "");
            msg_service_set_keys(a->msg, ks);
            jwt_keyset_unref(ks);
        } else {
            plog_error("SIGHUP: the token keys did not load: the old ones stay in use");
        }
    }
    if (c->sio.tls_cert) {
        char err[256];
        ptls_ctx *tls = parley_server__tls(a->srv);
        if (tls &&
            ptls_ctx_server_reload(tls, c->sio.tls_cert, c->sio.tls_key, err, sizeof err) == 0)
            plog_info("SIGHUP: TLS certificate reloaded from %s", c->sio.tls_cert);
        else
            plog_error("SIGHUP: TLS certificate not reloaded (%s): the old one stays in use",
                       tls ? err : "no TLS context");
    }
}

static void on_shutdown_done(parley_server *s, void *user)
{
    (void)s;
    app *a = user;
    /* Every socket is gone: the service commits and lets go of its timers. */
    msg_service_free(a->msg);
    a->msg = NULL;
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->sighup, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    app *a = h->data;
    if (a->stopping) {
        plog_warn("second signal: exiting now");
        exit(1);
    }
    a->stopping = true;
    ops_stop(a->ops);
    /* Leave the cluster first: no more publishing while the sockets go. */
    if (a->msg) msg_service_set_cluster(a->msg, NULL);
    pcluster_free(a->cluster);
    a->cluster = NULL;
    protocol_test_set_cluster(NULL);
    plog_info("signal %d: shutting down (%u connections)", signum,
              phttpd_connections(parley_server__http(a->srv)));
    if (a->echo_engine) engine_free(a->echo_engine);
    a->echo_engine = NULL;
    parley_server_shutdown(a->srv, on_shutdown_done, a);
}

/* What /chat accepts, for the start banner. */
static void auth_mode(const config *c, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = 0;
#define ADD(...)                                                                                   \
    do {                                                                                           \
        if (n < cap) n += (size_t)snprintf(out + n, cap - n, "%s", n ? " + " : "");               \
        if (n < cap) n += (size_t)snprintf(out + n, cap - n, __VA_ARGS__);                        \
    } while (0)
    if (c->jwt_secret_file) ADD("JWT HS256 secret from %s", c->jwt_secret_file);
    if (c->jwt_secret) ADD("JWT HS256 secret (--jwt-secret)");
    if (c->n_jwt_pem) ADD("JWT RS256/ES256 public keys (%zu files)", c->n_jwt_pem);
    if (c->jwks_file) ADD("JWT RS256/ES256 JWKS from %s", c->jwks_file);
    if (c->msg.dev_auth) ADD("dev-auth (INSECURE: any user id is trusted)");
    if (!n) ADD("none");
#undef ADD
}

/* The start banner: a few log lines saying what is served where, and how
 * to fix a /chat that can only refuse. */
static void banner(const config *c, unsigned port)
{
    char base[300];
    bool v6 = strchr(c->host, ':') != NULL;
    snprintf(base, sizeof base, "%s%s%s:%u", v6 ? "[" : "", c->host, v6 ? "]" : "", port);
    const char *http = c->sio.tls_cert ? "https" : "http";
    plog_info("parleyd %s: Socket.IO at %s://%s%s (transports:%s%s%s%s)", parley_version(), http,
              base, c->sio.path, c->sio.polling ? " polling" : "",
              c->sio.websocket ? " websocket" : "", c->sio.recovery ? "; recovery on" : "",
              c->protocol_test ? "; protocol-test mode" : "");
    if (c->messaging) {
        char mode[600];
        auth_mode(c, mode, sizeof mode);
        plog_info("namespace " MSG_NAMESPACE ": messaging, presence, notifications; auth: %s; "
                  "data in %s",
                  mode, c->msg.data_dir);
        bool keys = c->jwt_secret || c->jwt_secret_file || c->n_jwt_pem || c->jwks_file;
        if (!keys && !c->msg.dev_auth)
            plog_warn("no JWT keys configured: every " MSG_NAMESPACE " connection will be "
                      "refused with auth_unavailable. To fix: start parleyd with "
                      "--jwt-secret-file F (F holding a random secret of 32 bytes or more, e.g. "
                      "`head -c 32 /dev/urandom | base64 > F`), then mint tokens with "
                      "`parley token --secret-file F --user alice`");
    } else {
        plog_info("namespace " MSG_NAMESPACE ": off (%s)",
                  c->protocol_test ? "--protocol-test" : "--no-messaging");
    }
    char echo[600] = "";
    if (c->ws_echo)
        snprintf(echo, sizeof echo, "; WebSocket echo at %s://%s%s", c->sio.tls_cert ? "wss" : "ws",
                 base, c->ws_echo);
    plog_info("health at %s://%s/healthz and /readyz, status page at /%s", http, base, echo);
    const char *who = c->admin_loopback_off
                          ? (c->admin_key_file ? "only with the admin key (--admin-loopback off)"
                                               : "nobody (--admin-loopback off, no --admin-key-file)")
                          : (c->admin_key_file ? "loopback clients, and others with the admin key"
                                               : "loopback clients only (no --admin-key-file)");
    plog_info("dashboard at %s://%s/dashboard, metrics at /metrics%s; admin access: %s", http, base,
              c->metrics_public ? " (public)" : "", who);
    if (c->admin_ui)
        plog_info("Socket.IO Admin UI: namespace /admin at %s://%s%s (same admin access%s)", http,
                  base, c->sio.path, c->admin_events ? "; message events shown" : "");
}

int main(int argc, char **argv)
{
    static config c;
    snprintf(c.host, sizeof c.host, "127.0.0.1");
    c.port = 8080;
    c.deflate = true;
    c.level = PARLEY_LOG_INFO;
    parley_server_opts_init(&c.sio);
    wsconn_opts_init(&c.ws);
    c.ws.ping_interval_ms = 30000;
    phttpd_opts_init(&c.http);
    /* The library's HTTP server tracks no addresses by default; a server
     * on the internet should. */
    c.http.max_conns_per_ip = 256;
    c.http.ip_rate = prate_limit(20, 1000, 100);
    c.messaging = true;
    msg_service_opts_init(&c.msg);
    push_opts_init(&c.push);

    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (ch == OPT_VERSION) {
            printf("parleyd %s\n", parley_version());
            return 0;
        }
        if (ch == OPT_HELP) {
            usage(stdout);
            return 0;
        }
        if (ch == '?') {
            usage(stderr);
            return 2;
        }
        const char *err = apply(&c, ch, optarg);
        if (err) {
            fprintf(stderr, "parleyd: %s\n", err);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "parleyd: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!c.sio.tls_cert != !c.sio.tls_key) {
        fprintf(stderr, "parleyd: --tls-cert and --tls-key go together\n");
        return 2;
    }
    if (c.workers > 1 && c.peers.n) {
        fprintf(stderr, "parleyd: --workers with --peer is not supported: list every process of "
                        "every host with --node-id/--peer instead\n");
        return 2;
    }
    if (c.workers > 1 && !c.protocol_test && c.messaging) {
        /* Each worker is a node of the cluster: the store must be shared
         * (PostgreSQL) and the nodes joined (Redis). */
        bool shared = c.msg.store && strncmp(c.msg.store, "sqlite:", 7) != 0;
        if (!shared || !c.redis_url) {
            fprintf(stderr, "parleyd: --workers with the messaging service needs --store "
                            "postgresql://... and --redis URL (the SQLite store belongs to one "
                            "process; docs/CLUSTER.md), or --no-messaging\n");
            return 2;
        }
        if (c.push_url) {
            fprintf(stderr, "parleyd: --workers with --push-webhook is not supported: every worker "
                            "would send the shared outbox; run the webhook on one node\n");
            return 2;
        }
    }
    if (c.peers.n && !c.peers.self_id[0]) {
        fprintf(stderr, "parleyd: --peer needs --node-id\n");
        return 2;
    }
    if (c.protocol_test) {
        /* The reference test servers' settings, unless a flag said other. */
        if (!c.ping_set) c.sio.ping_interval_ms = 300;
        if (!c.ping_timeout_set) c.sio.ping_timeout_ms = 200;
        if (!c.connect_timeout_set) c.sio.connect_timeout_ms = 1000;
        if (!c.cors_set) c.sio.cors_origin = "*";
        c.sio.max_payload = 1000000;
        if (c.sio.recovery) c.sio.max_disconnection_ms = 120000;
    }
    if (c.jwt_secret && c.jwt_secret_file) {
        fprintf(stderr, "parleyd: give --jwt-secret or --jwt-secret-file, not both\n");
        return 2;
    }
    if (c.push_url && !c.push_secret_file) {
        fprintf(stderr, "parleyd: --push-webhook needs --push-secret-file (the signing key)\n");
        return 2;
    }
    if (!c.push_url && (c.push_secret_file || c.push.ca_file)) {
        fprintf(stderr, "parleyd: --push-secret-file and --push-ca need --push-webhook\n");
        return 2;
    }
    if (c.push.backoff_max_ms < c.push.backoff_ms) {
        fprintf(stderr, "parleyd: --push-backoff-max-ms is below --push-backoff-ms\n");
        return 2;
    }
    if (c.push.ca_file) {
        FILE *f = fopen(c.push.ca_file, "r");
        if (!f) {
            fprintf(stderr, "parleyd: --push-ca %s: %s\n", c.push.ca_file, strerror(errno));
            return 2;
        }
        fclose(f);
    }
    if (c.push_url && (c.protocol_test || !c.messaging)) {
        fprintf(stderr, "parleyd: --push-webhook needs the messaging service\n");
        return 2;
    }
    /* From here on, what parleyd says goes through the log, in the chosen
     * format (a log collector reading JSON gets JSON even for a failed
     * start); only refused command lines above are plain text. */
    parley_log_set(c.level, NULL, NULL);
    plog_set_format(c.log_format);
    if (c.protocol_test) c.messaging = false;
    if (c.workers > 1) {
        /* The parent supervises and returns here when the workers stop;
         * a worker goes on below, as node <id>.w<i> relaying to the
         * others on their loopback ports. */
        static pworker_ctx wctx;
        int st = pworkers_run((int)c.workers, c.host, c.port, &wctx);
        if (st >= 0) return st;
        c.worker = &wctx;
        char base[PPEERS_ID_MAX + 1], id[PPEERS_ID_MAX + 8];
        snprintf(base, sizeof base, "%s", c.peers.self_id[0] ? c.peers.self_id : "parleyd");
        memset(&c.peers, 0, sizeof c.peers);
        const char *err = NULL;
        for (int i = 0; i < wctx.n && !err; i++) {
            if (i == wctx.index) continue;
            char spec[PPEERS_ID_MAX + 40];
            snprintf(spec, sizeof spec, "%.56s.w%d=127.0.0.1:%u", base, i, wctx.relay_ports[i]);
            err = ppeers_add(&c.peers, spec);
        }
        snprintf(id, sizeof id, "%.56s.w%d", base, wctx.index);
        if (!err) err = ppeers_set_self(&c.peers, id);
        if (err) {
            plog_error("worker %d: %s", wctx.index, err);
            return 1;
        }
    }
    jwt_keyset *jwt_keys = NULL;
    bool want_keys = c.jwt_secret || c.jwt_secret_file || c.n_jwt_pem || c.jwks_file;
    if (c.messaging && want_keys) {
        jwt_keys = load_keys(&c);
        if (!jwt_keys) {
            plog_error("cannot load the keys tokens are checked with");
            return 2;
        }
        c.msg.jwt_keys = jwt_keys;
    }
    uint8_t *push_secret = NULL;
    size_t push_secret_len = 0;
    if (c.push_url) {
        char perr[256];
        if (jwt_read_key_file(c.push_secret_file, "the push secret", &push_secret, &push_secret_len,
                              perr, sizeof perr) != 0) {
            plog_error("%s", perr);
            plog_error("cannot use the --push-secret-file (the push webhook's signing key)");
            jwt_keyset_unref(jwt_keys);
            return 2;
        }
        if (push_secret_len < 32)
            plog_warn("the push secret is %zu bytes; use at least 32", push_secret_len);
        c.push.url = c.push_url;
        c.push.secret = push_secret;
        c.push.secret_len = push_secret_len;
        c.msg.push = &c.push;
    }
    char *keys_buf = NULL;
    const char **keys = NULL;
    if (c.messaging && c.api_key_file) {
        if (read_api_keys(c.api_key_file, &keys_buf, &keys, &c.msg.n_api_keys) != 0) return 2;
        c.msg.api_keys = keys;
    }
    if (c.limits_off) {
        mquota_opts_unlimited(&c.msg.quota);
        c.http.max_conns_per_ip = 0;
        c.http.ip_rate = prate_limit(0, 1000, 0);
        c.http.max_body_inflight = 0;
    }
    /* Browsers: the allow-list of origins, by default the CORS list. */
    const char *origins = c.allowed_origins;
    if (!origins && c.sio.cors_origin && strcmp(c.sio.cors_origin, "*") != 0)
        origins = c.sio.cors_origin;
    c.sio.allowed_origins = origins;
    c.msg.allowed_origins = origins ? origins : c.sio.cors_origin;
    if (c.messaging) {
        /* Nothing unauthenticated keeps a session: every one must join an
         * authenticated namespace (/chat, or an `auth` root) in time. */
        c.sio.require_auth = 1;
    }
    c.msg.notifier.urgent = log_urgent;
    signal(SIGPIPE, SIG_IGN);

    app a = {0};
    a.c = &c;
    a.loop = parley_loop_new();
    if (!a.loop) return 1;
    int rc = parley_server_new(a.loop, &c.sio, &a.srv);
    phttpd *http = rc ? NULL : parley_server__http(a.srv);
    if (rc == 0) rc = phttpd_set_opts(http, &c.http);
    if (rc == 0 && c.peers.self_id[0])
        rc = parley_server__cluster(a.srv, c.peers.self_tag, ppeers_route, &c.peers);
    if (rc) plog_error("%s", parley_strerror(rc));
    pmd_config pmd;
    pmd_config_init(&pmd);
    pmd.enabled = c.deflate;
    c.ws.cbs = &echo_cbs;
    phttpd_ws_endpoint echo = {.ws_opts = &c.ws, .pmd = &pmd};
    if (rc == 0 && ((c.ws_echo && phttpd_route_ws(http, c.ws_echo, &echo) != 0) ||
                    phttpd_route(http, "/", route_root, NULL) != 0 ||
                    phttpd_route(http, "/healthz", route_health, NULL) != 0 ||
                    (c.protocol_test && protocol_test_setup(a.srv, &a.echo_engine) != 0))) {
        plog_error("cannot set up routes");
        rc = PARLEY_ENOMEM;
    }
    if (rc == 0 && c.messaging) {
        rc = msg_service_new(a.srv, &c.msg, &a.msg);
        if (rc)
            plog_error("messaging: %s (data directory %s; the log above says what)",
                    parley_strerror(rc), c.msg.data_dir);
        parley_nsp *root = parley_server_of(a.srv, "/");
        if (rc == 0 && c.root_nsp == ROOT_OFF) parley_nsp_set_closed(root, 1);
        if (rc == 0 && c.root_nsp == ROOT_AUTH) rc = msg_service_guard(a.msg, root);
    }
    /* Operations: admin access, /metrics, /readyz, /dashboard. */
    if (rc == 0) {
        padmin_opts ao;
        padmin_opts_init(&ao);
        ao.loopback = !c.admin_loopback_off;
        ao.tls = c.sio.tls_cert != NULL;
        uint8_t *key = NULL;
        size_t key_len = 0;
        char kerr[256];
        if (c.admin_key_file &&
            jwt_read_key_file(c.admin_key_file, "the admin key", &key, &key_len, kerr, sizeof kerr) != 0) {
            plog_error("%s", kerr);
            plog_error("cannot use the --admin-key-file");
            rc = PARLEY_EINVAL;
        }
        if (key && key_len < 16) plog_warn("the admin key is %zu bytes; use at least 16", key_len);
        ao.key = (const char *)key;
        ao.key_len = key_len;
        if (rc == 0) rc = padmin_new(a.loop, &ao, &a.admin);
        if (key) OPENSSL_cleanse(key, key_len);
        free(key);
        ops_opts oo = {.metrics_public = c.metrics_public, .cluster = c.redis_url != NULL};
        if (rc == 0) rc = ops_new(a.srv, a.msg, a.admin, &oo, &a.ops);
    }
    /* The cluster adapter: connects in the background (the server serves
     * its own clients whether Redis is there or not). */
    if (rc == 0 && c.redis_url) {
        /* Through the public API, as an embedding application would. */
        parley_cluster_opts po;
        parley_cluster_opts_init(&po);
        po.redis_url = c.redis_url;
        po.redis_ca_file = c.redis_ca;
        if (c.protocol_test) {
            po.on_server_side_emit = protocol_test_server_side_emit;
        } else if (a.msg) {
            po.on_server_side_emit = msg_service_on_server_side_emit;
            po.user = a.msg;
        }
        rc = parley_cluster_join(a.srv, &po, &a.cluster);
        if (rc) plog_error("--redis: %s", parley_strerror(rc));
        if (rc == 0) rc = pmx_register(ops_registry(a.ops), pcluster_collect, a.cluster);
        if (rc == 0 && c.protocol_test) protocol_test_set_cluster(a.cluster);
        /* Presence across nodes (docs/CLUSTER.md, "Presence across nodes"). */
        if (rc == 0 && a.msg) rc = msg_service_set_cluster(a.msg, a.cluster);
        if (rc == 0 && a.msg)
            rc = pmx_register(ops_registry(a.ops), msg_service_cluster_collect, a.msg);
        if (rc == 0)
            plog_info("cluster: Redis adapter, node uid %s (docs/CLUSTER.md)",
                      pcluster_uid(a.cluster));
    }
    if (rc == 0 && c.admin_ui) {
        if (!padmin_has_key(a.admin) && c.admin_loopback_off)
            plog_warn("--admin-ui with --admin-loopback off and no --admin-key-file: every admin is "
                      "refused");
        admin_ui_opts ao;
        admin_ui_opts_init(&ao);
        ao.authorize = admin_ui_authorize;
        ao.user = &a.admin;
        ao.events = c.admin_events;
        if (c.admin_max_backlog) ao.max_backlog = (size_t)c.admin_max_backlog;
        /* /chat's rooms are its conversations: only the service decides
         * who is in them. */
        static const char *const managed[] = {MSG_NAMESPACE};
        if (a.msg) {
            ao.managed = managed;
            ao.nmanaged = 1;
        }
        rc = admin_ui_attach(a.srv, &ao, &a.admin_ui);
        if (rc) plog_error("admin-ui: %s", parley_strerror(rc));
    }
    /* The service keeps digests of the API keys, and its own reference
     * to the key set. */
    if (keys_buf) OPENSSL_cleanse(keys_buf, API_KEY_FILE_MAX + 1);
    free(keys_buf);
    free(keys);
    jwt_keyset_unref(jwt_keys);
    if (push_secret) OPENSSL_cleanse(push_secret, push_secret_len);
    free(push_secret);
    c.push.secret = NULL;
    unsigned port = 0;
    if (rc == 0) {
        if (c.worker) {
            /* The public socket (TLS as configured) and the loopback one
             * the other workers relay to (plain). */
            rc = phttpd_listen_fd(http, c.worker->listen_fd, parley_server__tls(a.srv), &port);
            if (rc == 0) rc = phttpd_listen_fd(http, c.worker->relay_fd, NULL, NULL);
        } else {
            rc = parley_server_listen(a.srv, c.host, c.port, &port);
        }
        if (rc)
            plog_error("cannot listen on %s:%u: %s", c.host, c.port,
                    parley_strerror(rc));
    }
    if (rc) {
        /* Nothing listens yet: free what was made, so that a refused start
         * leaves nothing behind (and leak checkers see none). */
        if (a.echo_engine) engine_free(a.echo_engine);
        if (a.msg) msg_service_set_cluster(a.msg, NULL);
        pcluster_free(a.cluster);
        ops_stop(a.ops);
        msg_service_free(a.msg);
        admin_ui_free(a.admin_ui);
        parley_server_free(a.srv);
        ploop_flush(a.loop);     /* deferred frees (the engines) */
        parley_loop_run(a.loop); /* closes handles the frees started */
        parley_loop_free(a.loop);
        ops_free(a.ops);
        padmin_free(a.admin);
        for (size_t i = 0; i < c.nstrings; i++) free(c.strings[i]);
        return 1;
    }
    uv_signal_init(a.loop->uv, &a.sigint);
    uv_signal_init(a.loop->uv, &a.sigterm);
    uv_signal_init(a.loop->uv, &a.sighup);
    a.sigint.data = a.sigterm.data = a.sighup.data = &a;
    uv_signal_start(&a.sigint, on_signal, SIGINT);
    uv_signal_start(&a.sigterm, on_signal, SIGTERM);
    uv_signal_start(&a.sighup, on_sighup, SIGHUP);

    /* The banner before the ready line: who waits for the one has the other. */
    if (!c.worker || c.worker->index == 0) banner(&c, port);
    if (c.worker) {
        pworker_ready(c.worker); /* the parent prints the ready line */
    } else {
        printf(strchr(c.host, ':') ? "parleyd listening on [%s]:%u\n"
                                   : "parleyd listening on %s:%u\n",
               c.host, port);
    }
    fflush(stdout);

    parley_loop_run(a.loop);
    msg_service_free(a.msg);
    admin_ui_free(a.admin_ui);
    parley_server_free(a.srv);
    parley_loop_free(a.loop);
    ops_free(a.ops);
    padmin_free(a.admin);
    for (size_t i = 0; i < c.nstrings; i++) free(c.strings[i]);
    plog_info("parleyd: stopped");
    return 0;
}
