/* Fuzzes the WebSocket opening handshake. The input is a request head and
 * a response head separated by the first NUL byte. An accepted request
 * must produce a 101 that our own client side verifies; the response is
 * verified against the RFC 6455 example key with two offered protocols. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/http.h"
#include "codec/ws_handshake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXH 32

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

static const char *const protos[] = {"chat", "superchat"};

static long parse(bool response, const uint8_t *buf, size_t len, http_head *h, http_header *hs)
{
    http_parser p;
    http_parser_init(&p, response, NULL);
    return http_parse_head(&p, buf, len, h, hs, MAXH);
}

static void server_side(const uint8_t *buf, size_t len)
{
    http_header hs[MAXH];
    http_head h;
    if (parse(false, buf, len, &h, hs) <= 0) return;
    ws_upgrade up;
    const char *why = NULL;
    int st = ws_check_upgrade(&h, &up, &why);
    pbuf out = {0};
    if (st) {
        CHECK(why && (st == 400 || st == 405 || st == 426));
        CHECK(ws_write_reject(&out, st, why) == 0);
        pbuf_free(&out);
        return;
    }
    CHECK(up.key_len == 24 && up.host);
    /* Echo the first offered protocol back, as a server might. */
    size_t pos = 0, n;
    const char *item;
    char proto[64] = {0};
    if (ws_header_items(&h, "Sec-WebSocket-Protocol", &pos, &item, &n) && n < sizeof proto)
        memcpy(proto, item, n);
    CHECK(ws_header_join(&h, "Sec-WebSocket-Extensions", &out) == 0);
    pbuf_free(&out);
    int rc = ws_write_accept(&out, up.key, up.key_len, proto[0] ? proto : NULL, NULL, NULL, 0);
    if (rc == 0) {
        /* Our client must accept our own answer. */
        char key[25];
        memcpy(key, up.key, 24);
        key[24] = '\0';
        http_head rh;
        http_header rhs[MAXH];
        CHECK(parse(true, out.ptr, out.len, &rh, rhs) == (long)out.len);
        const char *offer[1] = {proto};
        ws_client_result res;
        CHECK(ws_verify_response(&rh, key, offer, proto[0] ? 1 : 0, &res, &why) == 0);
    } else {
        /* Only a protocol item with a control character can be refused. */
        CHECK(rc == -2 && proto[0]);
    }
    pbuf_free(&out);
}

static void client_side(const uint8_t *buf, size_t len)
{
    http_header hs[MAXH];
    http_head h;
    if (parse(true, buf, len, &h, hs) <= 0) return;
    ws_client_result res;
    const char *why = NULL;
    int rc = ws_verify_response(&h, "dGhlIHNhbXBsZSBub25jZQ==", protos, 2, &res, &why);
    if (rc == 0) {
        CHECK(h.status == 101 && !why);
        if (res.protocol)
            CHECK((res.protocol_len == 4 && memcmp(res.protocol, "chat", 4) == 0) ||
                  (res.protocol_len == 9 && memcmp(res.protocol, "superchat", 9) == 0));
    } else {
        CHECK(rc == -11 && why);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t reqlen = nul ? (size_t)(nul - data) : size;
    uint8_t *buf = malloc(size ? size : 1);
    CHECK(buf);
    if (size) memcpy(buf, data, size);
    server_side(buf, reqlen);
    if (nul) client_side(buf + reqlen + 1, size - reqlen - 1);
    free(buf);
    return 0;
}
