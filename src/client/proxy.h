/*
 * Which HTTP proxy a client connection goes through: the option
 * (parley_client_opts.proxy, parley_ws_opts.proxy) or, when that is NULL,
 * the environment as curl reads it: https_proxy/HTTPS_PROXY for https and
 * wss targets, http_proxy/HTTP_PROXY for http and ws (lower case first),
 * skipped for hosts matched by no_proxy/NO_PROXY (comma-separated names,
 * each matching the host and its subdomains, a leading "." or "*."
 * allowed; "*" matches every host; compared without case, ports ignored).
 * A proxy is "http://[user:password@]host[:port][/]" (port default 80;
 * user and password percent-decoded, sent as Basic credentials) or
 * "host:port"; "" means no proxy. Only http:// proxies: the tunnel is an
 * HTTP/1.1 CONNECT, and for https/wss targets TLS runs inside it.
 */
#ifndef PARLEY_CLIENT_PROXY_H
#define PARLEY_CLIENT_PROXY_H

#include <stdbool.h>

#include "net/net.h"

/* Parses a proxy URL into out. 0, or PARLEY_EURL. */
int pproxy_parse(const char *url, pproxy *out);

/* The proxy for a connection to host (tls: an https/wss target): opt as
 * above. *use is false for a direct connection. 0, or PARLEY_EURL for a
 * malformed proxy URL (in opt or the environment). */
int pproxy_pick(const char *opt, bool tls, const char *host, pproxy *out, bool *use);

/* 1 when no_proxy (the list) covers host. */
bool pproxy_bypass(const char *no_proxy, const char *host);

#endif
