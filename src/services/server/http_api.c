/* The messaging service: HTTP: POST /media, GET /media/<id>, POST /api/notifications (see
 * messaging.c). */
#include "services/server/msg_internal.h"

/* ---- HTTP: POST /media, GET /media/<id>, POST /api/notifications ---- */

/* The request's Origin header, when there is one. */
bool req_origin(const phttpd_req *req, const char **o, size_t *n)
{
    const http_header *h = http_find_header(req->head, "origin");
    if (!h) return false;
    *o = h->value;
    *n = h->value_len;
    return true;
}

/* Answers with a JSON body: CORS for an allowed Origin, WWW-Authenticate
 * on 401, Retry-After when there is a hint. */
static void http_answer(msg_service *svc, phttpd_req *req, int status, const void *body, size_t len,
                        int64_t retry_ms)
{
    http_header h[4];
    size_t n = 0;
    const char *o = NULL;
    size_t on = 0;
    char ra[24];
    if (svc->origins && req_origin(req, &o, &on) && engine_origin_allowed(svc->origins, o, on)) {
        h[n++] = (http_header){"Access-Control-Allow-Origin", 27, o, on};
        h[n++] = (http_header){"Vary", 4, "Origin", 6};
    }
    if (status == 401) h[n++] = (http_header){"WWW-Authenticate", 16, "Bearer", 6};
    if (retry_ms > 0) {
        int rl = snprintf(ra, sizeof ra, "%lld", (long long)((retry_ms + 999) / 1000));
        h[n++] = (http_header){"Retry-After", 11, ra, (size_t)rl};
    }
    phttpd_respond(req, status, "application/json", h, n, body, len);
}

/* {"code","message"[,"field"][,"retry_after_ms"]} with the HTTP status. */
static void http_err(msg_service *svc, phttpd_req *req, int status, const msg_error *err)
{
    pbuf b = {0};
    if (msg_encode_connect_error(&b, err) == 0)
        http_answer(svc, req, status, b.ptr, b.len, err->retry_after_ms);
    else
        phttpd_respond(req, 500, NULL, NULL, 0, NULL, 0);
    pbuf_free(&b);
}

static void http_error(msg_service *svc, phttpd_req *req, int status, msg_errcode code,
                       const char *message)
{
    msg_error err;
    msg_fail(&err, code, NULL, "%s", message);
    http_err(svc, req, status, &err);
}

/* A storage failure: 503 `unavailable` with Retry-After while the database
 * cannot be reached (PostgreSQL down), 500 `internal` otherwise. */
static void http_store_error(msg_service *svc, phttpd_req *req)
{
    msg_error err;
    if (mstore_up(svc->store)) {
        http_error(svc, req, 500, MSG_E_INTERNAL, "storage failure");
        return;
    }
    msg_fail(&err, MSG_E_UNAVAILABLE, NULL, "the database cannot be reached: try again");
    err.retry_after_ms = STORE_RETRY_MS;
    http_err(svc, req, 503, &err);
}

/* For codes that are not the protocol's (`unavailable`). */
static void http_error_code(msg_service *svc, phttpd_req *req, int status, const char *code,
                            const char *message)
{
    pbuf b = {0};
    int rc = pbuf_append_str(&b, "{\"code\":");
    if (rc == 0) rc = json_append_string(&b, code, strlen(code));
    if (rc == 0) rc = pbuf_append_str(&b, ",\"message\":");
    if (rc == 0) rc = json_append_string(&b, message, strlen(message));
    if (rc == 0) rc = pbuf_append(&b, "}", 1);
    if (rc == 0)
        http_answer(svc, req, status, b.ptr, b.len, 0);
    else
        phttpd_respond(req, 500, NULL, NULL, 0, NULL, 0);
    pbuf_free(&b);
}

/* The HTTP status of a refusal over a limit. */
static int limit_status(msg_errcode code)
{
    return code == MSG_E_STORAGE_FULL ? 507 : 429;
}

/* Browsers from allowed origins may call these routes: a present Origin
 * that is not allowed is refused (403), and a preflight (OPTIONS) from
 * an allowed one is answered here. True when the request was answered. */
static bool cors_gate(msg_service *svc, phttpd_req *req, const char *methods)
{
    const char *o = NULL;
    size_t n = 0;
    bool has = req_origin(req, &o, &n);
    if (has && svc->origins && !engine_origin_allowed(svc->origins, o, n)) {
        http_error(svc, req, 403, MSG_E_FORBIDDEN, "this origin is not allowed");
        return true;
    }
    const http_head *h = req->head;
    if (h->method_len != 7 || memcmp(h->method, "OPTIONS", 7) != 0) return false;
    if (!svc->origins || !has) {
        http_header allow = {"Allow", 5, methods, strlen(methods)};
        phttpd_respond(req, 405, "text/plain; charset=utf-8", &allow, 1, "method not allowed\n",
                       19);
        return true;
    }
    http_header hd[5] = {
        {"Access-Control-Allow-Origin", 27, o, n},
        {"Access-Control-Allow-Methods", 28, methods, strlen(methods)},
        {"Access-Control-Allow-Headers", 28, "Authorization, Content-Type", 27},
        {"Access-Control-Max-Age", 22, "600", 3},
        {"Vary", 4, "Origin", 6},
    };
    phttpd_respond(req, 204, NULL, hd, 5, NULL, 0);
    return true;
}

/* The user of an HTTP request (Authorization: Bearer <JWT>, or Dev <user>
 * with --dev-auth). Answers 401 itself and returns false when there is
 * none. */
static bool http_user(msg_service *svc, phttpd_req *req, char user[MSG_USER_MAX + 1])
{
    const http_header *h = http_find_header(req->head, "authorization");
    if (svc->disabled) {
        http_error(svc, req, 401, MSG_E_AUTH_UNAVAILABLE, "this server has no JWT keys configured");
        return false;
    }
    if (!h) {
        http_error(svc, req, 401, MSG_E_AUTH_REQUIRED, "Authorization: Bearer <token> is required");
        return false;
    }
    const char *v = h->value;
    size_t n = h->value_len;
    if (svc->o.dev_auth && n > 4 && pstr_ieq(v, 4, "Dev ", 4)) {
        if (!msg_valid_user(v + 4, n - 4)) {
            http_error(svc, req, 401, MSG_E_INVALID_USER, "not a valid user id");
            return false;
        }
        memcpy(user, v + 4, n - 4);
        user[n - 4] = 0;
        return true;
    }
    if (n < 7 || !pstr_ieq(v, 7, "Bearer ", 7)) {
        http_error(svc, req, 401, MSG_E_AUTH_REQUIRED, "Authorization: Bearer <token> is required");
        return false;
    }
    if (!svc->keys) {
        http_error(svc, req, 401, MSG_E_AUTH_UNAVAILABLE, "this server has no JWT keys configured");
        return false;
    }
    jwt_claims c;
    msg_error err;
    size_t off = 7;
    while (off < n && v[off] == ' ') off++;
    if (jwt_verify_set(svc->keys, v + off, n - off, msvc_wall_ms(), &c, &err) != MSG_OK) {
        http_err(svc, req, 401, &err);
        return false;
    }
    memcpy(user, c.sub, sizeof c.sub);
    return true;
}

/* The request's Content-Type without its parameters (NULL: none). */
static const http_header *media_type_of(const http_head *hd, size_t *len)
{
    const http_header *ct = http_find_header(hd, "content-type");
    if (!ct) return NULL;
    const char *semi = memchr(ct->value, ';', ct->value_len);
    size_t n = semi ? (size_t)(semi - ct->value) : ct->value_len;
    while (n && (ct->value[n - 1] == ' ' || ct->value[n - 1] == '\t')) n--;
    *len = n;
    return ct;
}

/* An upload being streamed to a temporary file. */
typedef struct upload {
    media_writer *w;
    char user[MSG_USER_MAX + 1];
    char mime[MSG_MIME_MAX + 1];
    uint64_t bytes;
    int error; /* 413: over --max-media-bytes; 500: the file could not be written */
} upload;

/* Everything that can be said on the head is said before a byte of the
 * body is read: origin, method, identity, type, size, disk and quotas. */
void upload_head(phttpd_req *req, void *arg)
{
    msg_service *svc = arg;
    if (cors_gate(svc, req, "POST") || !phttpd_allow(req, "POST")) return;
    char user[MSG_USER_MAX + 1];
    if (!http_user(svc, req, user)) return;
    const http_head *hd = req->head;
    size_t ml = 0;
    const http_header *ct = media_type_of(hd, &ml);
    if (!ct || !msg_valid_mime(ct->value, ml)) {
        http_error(svc, req, 415, MSG_E_INVALID_FIELD, "Content-Type must name the media type");
        return;
    }
    bool sized = hd->body_kind == HTTP_BODY_LENGTH;
    if (hd->body_kind == HTTP_BODY_NONE || (sized && hd->content_length == 0)) {
        http_error(svc, req, 400, MSG_E_INVALID_FIELD, "the body is empty");
        return;
    }
    if (sized && hd->content_length > svc->o.max_media_bytes) {
        http_error(svc, req, 413, MSG_E_TOO_LARGE, "larger than --max-media-bytes");
        return;
    }
    msg_error err;
    if (disk_low(svc)) {
        msg_fail(&err, MSG_E_STORAGE_FULL, NULL,
                 "the server is low on storage: uploads are refused for now");
        err.retry_after_ms = 60000;
        svc->stats.storage_full++;
        http_err(svc, req, 507, &err);
        return;
    }
    msg_errcode q = upload_quota(svc, user, sized ? hd->content_length : 0, &err);
    if (q) {
        if (q == MSG_E_QUOTA_EXCEEDED) svc->stats.quota_exceeded++;
        http_err(svc, req, q == MSG_E_QUOTA_EXCEEDED ? limit_status(q) : 500, &err);
        return;
    }
    upload *u = pcalloc(1, sizeof *u);
    if (!u || media_begin(svc->media, svc->o.max_media_bytes, &u->w) != 0) {
        free(u);
        http_error(svc, req, 500, MSG_E_INTERNAL, "storage failure");
        return;
    }
    memcpy(u->user, user, sizeof u->user);
    memcpy(u->mime, ct->value, ml);
    u->mime[ml] = 0;
    for (size_t i = 0; i < ml; i++)
        if (u->mime[i] >= 'A' && u->mime[i] <= 'Z') u->mime[i] = (char)(u->mime[i] - 'A' + 'a');
    req->stream = true;
    req->state = u;
}

int upload_body(void *state, const uint8_t *data, size_t len, void *arg)
{
    (void)arg;
    upload *u = state;
    int rc = media_write(u->w, data, len);
    if (rc) {
        u->error = rc == PARLEY_ELIMIT ? 413 : 500;
        return 1;
    }
    u->bytes += len;
    return 0;
}

void upload_abort(void *state, void *arg)
{
    (void)arg;
    upload *u = state;
    media_abort(u->w);
    free(u);
}

void upload_done(phttpd_req *req, void *arg)
{
    msg_service *svc = arg;
    upload *u = req->state;
    msg_error err;
    if (u->error || req->body_error || u->bytes == 0) {
        if (u->error == 413)
            http_error(svc, req, 413, MSG_E_TOO_LARGE, "larger than --max-media-bytes");
        else if (u->bytes == 0 && !u->error)
            http_error(svc, req, 400, MSG_E_INVALID_FIELD, "the body is empty");
        else
            http_error(svc, req, 500, MSG_E_INTERNAL, "cannot write the media");
        upload_abort(u, arg);
        return;
    }
    /* A chunked body's size is known only now. */
    msg_errcode q = req->head->body_kind == HTTP_BODY_CHUNKED
                        ? upload_quota(svc, u->user, u->bytes, &err)
                        : MSG_OK;
    if (q) {
        http_err(svc, req, q == MSG_E_QUOTA_EXCEEDED ? limit_status(q) : 500, &err);
        upload_abort(u, arg);
        return;
    }
    char id[MSG_MEDIA_ID_LEN + 1];
    bool file_existed = false, existed = false;
    int rc = media_finish(u->w, id, &file_existed);
    u->w = NULL;
    obx *e = rc == 0 ? obx_new(svc, OB_HTTP, NULL, true) : NULL;
    if (!e || !msvc_json_done(&e->json, record_upload(svc, u->user, id, u->bytes, u->mime, &e->json,
                                                      &existed))) {
        if (e) obx_release(svc, e);
        http_store_error(svc, req);
        free(u);
        return;
    }
    free(u);
    obx_push_http(svc, e, req, existed ? 200 : 201);
}

void route_download(phttpd_req *req, void *arg)
{
    msg_service *svc = arg;
    if (cors_gate(svc, req, "GET, HEAD") || !phttpd_allow(req, "GET, HEAD")) return;
    char user[MSG_USER_MAX + 1];
    if (!http_user(svc, req, user)) return;
    static const char prefix[] = "/media/";
    char id[MSG_MEDIA_ID_LEN + 1];
    size_t idlen = req->path_len - (sizeof prefix - 1);
    int64_t size = 0;
    char mime[MSG_MIME_MAX + 1];
    int r = 0;
    if (idlen == MSG_MEDIA_ID_LEN && msg_valid_media_id(req->path + sizeof prefix - 1, idlen)) {
        memcpy(id, req->path + sizeof prefix - 1, idlen);
        id[idlen] = 0;
        /* Absent and not visible to this user are one answer (no oracle),
         * and the type is the one this user knows it by. */
        r = mstore_media_for(svc->store, id, user, &size, mime);
    }
    if (r < 0) {
        http_store_error(svc, req);
        return;
    }
    if (r == 0) {
        http_error(svc, req, 404, MSG_E_NOT_FOUND, "no such media");
        return;
    }
    pbuf body = {0};
    int rc = media_get(svc->media, id, svc->o.max_media_bytes, &body);
    if (rc) {
        pbuf_free(&body);
        if (rc == PARLEY_EAGAIN)
            http_error(svc, req, 404, MSG_E_NOT_FOUND, "no such media");
        else
            http_error(svc, req, 500, MSG_E_INTERNAL, "cannot read the media");
        return;
    }
    char etag[MSG_MEDIA_ID_LEN + 3];
    snprintf(etag, sizeof etag, "\"%s\"", id);
    /* Uploaded content is served as data, never as a page of this origin. */
    http_header h[6] = {
        {"ETag", 4, etag, strlen(etag)},
        {"Cache-Control", 13, "private, max-age=31536000, immutable", 36},
        {"X-Content-Type-Options", 22, "nosniff", 7},
        {"Content-Security-Policy", 23, "sandbox", 7},
    };
    size_t nh = 4;
    const char *o = NULL;
    size_t on = 0;
    if (svc->origins && req_origin(req, &o, &on)) {
        h[nh++] = (http_header){"Access-Control-Allow-Origin", 27, o, on};
        h[nh++] = (http_header){"Vary", 4, "Origin", 6};
    }
    phttpd_respond(req, 200, mime, h, nh, body.ptr, body.len);
    pbuf_free(&body);
}

static bool api_key_ok(msg_service *svc, const char *key, size_t len)
{
    uint8_t d[32];
    SHA256((const unsigned char *)key, len, d);
    bool ok = false;
    /* Every key is compared, in constant time: no early exit. */
    for (size_t i = 0; i < svc->n_api_keys; i++) ok |= CRYPTO_memcmp(d, svc->api_keys[i], 32) == 0;
    return ok;
}

/* POST /api/notifications: keys, type and size are checked on the head. */
void api_head(phttpd_req *req, void *arg)
{
    msg_service *svc = arg;
    if (cors_gate(svc, req, "POST") || !phttpd_allow(req, "POST")) return;
    if (svc->disabled || svc->n_api_keys == 0) {
        http_error_code(svc, req, 503, "unavailable", "no API key is configured (--api-key-file)");
        return;
    }
    const http_head *hd = req->head;
    const http_header *h = http_find_header(hd, "authorization");
    size_t off = 7;
    if (h && h->value_len > 7 && pstr_ieq(h->value, 7, "Bearer ", 7))
        while (off < h->value_len && h->value[off] == ' ') off++;
    if (!h || h->value_len <= 7 || !pstr_ieq(h->value, 7, "Bearer ", 7) ||
        !api_key_ok(svc, h->value + off, h->value_len - off)) {
        http_error(svc, req, 401, h ? MSG_E_INVALID_TOKEN : MSG_E_AUTH_REQUIRED,
                   "Authorization: Bearer <API key> is required");
        return;
    }
    if (hd->body_kind == HTTP_BODY_LENGTH && hd->content_length > NOTIF_HTTP_MAX_BODY) {
        http_error(svc, req, 413, MSG_E_TOO_LARGE, "the body is over 65536 bytes");
        return;
    }
    size_t ml = 0;
    const http_header *ct = media_type_of(hd, &ml);
    if (!ct || !pstr_ieq(ct->value, ml, "application/json", 16)) {
        http_error(svc, req, 415, MSG_E_INVALID_FIELD, "Content-Type must be application/json");
        return;
    }
    if (disk_low(svc)) {
        msg_error err;
        msg_fail(&err, MSG_E_STORAGE_FULL, NULL, "the server is low on storage: writes refused");
        err.retry_after_ms = 60000;
        svc->stats.storage_full++;
        http_err(svc, req, 507, &err);
    }
}

void route_api_notify(phttpd_req *req, void *arg)
{
    msg_service *svc = arg;
    json_val obj;
    if (json_parse((const char *)req->body, req->body_len, svc->o.limits.max_depth, &obj, NULL) !=
        0) {
        http_error(svc, req, 400, MSG_E_BAD_REQUEST, "the body is not JSON");
        return;
    }
    msg_notification *n = malloc(sizeof *n);
    if (!n) {
        http_error(svc, req, 500, MSG_E_INTERNAL, "out of memory");
        return;
    }
    msg_error err;
    if (msg_parse_notify(&obj, msvc_wall_ms(), n, &err)) {
        http_err(svc, req, 400, &err);
        free(n);
        return;
    }
    uint64_t retry = 0;
    /* The API's notifications count as one sender ('#' is no user id). */
    if (!mquota_pair_take(svc->quota, "#api", n->to, MQ_NOTIFY, &retry)) {
        msg_fail(&err, MSG_E_RATE_LIMITED, "to", "too many notifications to this recipient");
        err.retry_after_ms = (int64_t)retry;
        svc->stats.rate_limited++;
        http_err(svc, req, 429, &err);
        free(n);
        return;
    }
    bool dup;
    obx *e = NULL;
    int rc = notif_create(svc, n, NULL, &dup);
    if (rc == 0 && !(e = obx_new(svc, OB_HTTP, NULL, mstore_in_batch(svc->store)))) rc = -1;
    if (rc == 0) rc = pbuf_append_str(&e->json, "{\"notification\":");
    if (rc == 0) rc = msg_encode_notification(&e->json, n);
    if (rc == 0)
        rc = pbuf_append_str(&e->json, dup ? ",\"duplicate\":true}" : ",\"duplicate\":false}");
    free(n);
    if (!e || !msvc_json_done(&e->json, rc)) {
        if (e) obx_release(svc, e);
        http_store_error(svc, req);
        return;
    }
    obx_push_http(svc, e, req, dup ? 200 : 201);
}
