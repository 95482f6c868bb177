/*
 * The Socket.IO client's handling of what a server sends: arbitrary
 * Engine.IO messages (text or binary) fed to a client with two namespaces
 * whose handlers answer, emit and disconnect, so that reassembly of
 * attachments, acknowledgements, CONNECT/CONNECT_ERROR/DISCONNECT, the
 * receive buffer and recovery offsets all see hostile input.
 *
 * Input: a sequence of [kind][len lo][len hi][len bytes]; kind bit 0 set
 * means a binary message.
 */
#include <stdint.h>
#include <string.h>

#include "client/sio_internal.h"
#include "net/net.h"
#include "parley/client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_event(parley_sock *s, const char *event, const parley_args *a, int64_t ack_id,
                     void *user)
{
    (void)user;
    if (ack_id >= 0) parley_sock_ack(s, ack_id, a->json, a->bins, a->nbins);
    if (!strcmp(event, "x")) parley_sock_emit(s, "y", a->json, a->bins, a->nbins);
    if (!strcmp(event, "off")) parley_sock_disconnect(s);
    if (!strcmp(event, "on")) parley_sock_connect(s);
}

static void on_ack(parley_sock *s, int err, const parley_args *a, void *user)
{
    (void)s;
    (void)err;
    (void)a;
    (void)user;
}

static char *auth(parley_sock *s, void *user)
{
    (void)s;
    (void)user;
    return strdup("{\"token\":\"t\"}");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static parley_loop *loop;
    if (!loop) loop = parley_loop_new();
    parley_client_opts o;
    parley_client_opts_init(&o);
    o.url = "http://127.0.0.1:9";
    o.auto_connect = 0;
    o.reconnection = 0;
    o.loop = loop;
    parley_client *c;
    if (parley_client_new(&o, &c) != 0) return 0;
    parley_sock_opts so;
    parley_sock_opts_init(&so);
    so.auth = auth;
    parley_sock *a = parley_client_socket(c, "/", &so);
    parley_sock *b = parley_client_socket(c, "/n", &so);
    parley_sock_on_any(a, on_event, NULL);
    parley_sock_once(b, "x", on_event, NULL);
    parley_sock_on(b, "off", on_event, NULL);
    /* Acks that the input may answer (ids 0 and 1). */
    parley_sock_emit_ack(a, "q", "[1]", NULL, 0, 0, on_ack, NULL);
    parley_sock_emit_ack(a, "q", "[2]", NULL, 0, 0, on_ack, NULL);
    parley_sock_send(b, "r", "[3]", PARLEY_PRIORITY_HIGH, 0, NULL, NULL, NULL);
    while (size >= 3) {
        bool binary = data[0] & 1;
        size_t len = (size_t)data[1] | (size_t)data[2] << 8;
        data += 3;
        size -= 3;
        if (len > size) len = size;
        parley_client__feed(c, binary, data, len);
        data += len;
        size -= len;
    }
    parley_client_free(c);
    return 0;
}
