/* Private to the net layer. */
#ifndef PARLEY_NET_CONN_INTERNAL_H
#define PARLEY_NET_CONN_INTERNAL_H

#include <openssl/ssl.h>

#include "net/net.h"

struct ptls_ctx {
    SSL_CTX *ctx;
    bool server;
};

struct ptls {
    SSL *ssl;
    BIO *rbio; /* ciphertext from the network, read by OpenSSL */
    BIO *wbio; /* ciphertext produced by OpenSSL, for the network */
    pbuf wire; /* ciphertext waiting for the socket */
    bool done; /* handshake finished */
    bool shutdown_sent;
};

/* Writes out what the connection has queued (encrypting first for TLS). */
void pconn__flush(pconn *c);

/* Creates the TLS state for a connection. host: client side, for SNI and
 * certificate name checks (NULL on the server side). */
ptls *ptls__new(ptls_ctx *ctx, const char *host);
void ptls__free(ptls *t);

/* Moves OpenSSL's pending output into t->wire. 0 or PARLEY_ENOMEM. */
int ptls__drain(ptls *t);

/* Formats the OpenSSL error queue (and clears it) into buf. */
const char *ptls__errstr(char *buf, size_t cap);

#endif
