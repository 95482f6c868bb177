/*
 * parleyd's operator side (docs/OPERATIONS.md): GET /metrics (Prometheus
 * text format), GET /readyz, the live dashboard at /dashboard with its
 * Server-Sent Events stream /dashboard/events and its login form, all
 * behind the admin access rule (server/admin_auth.h) except /readyz.
 *
 * The metrics registry (base/metrics.h) holds one collector per
 * subsystem: process, HTTP, Engine.IO / Socket.IO, the event loop, admin
 * access, and the messaging service when there is one. A later
 * subsystem (a cluster adapter) registers its own collector with
 * ops_registry().
 */
#ifndef PARLEY_PROG_OPS_H
#define PARLEY_PROG_OPS_H

#include <stdbool.h>

#include "base/metrics.h"
#include "server/admin_auth.h"
#include "server/engine.h"
#include "services/messaging.h"

typedef struct ops ops;

typedef struct ops_opts {
    bool metrics_public;      /* /metrics without the admin rule */
    uint32_t lag_interval_ms; /* event-loop lag sampling (default 500) */
    bool cluster;             /* a cluster adapter reports parley_cluster_nodes itself */
} ops_opts;

/* Adds the routes to srv's HTTP server and starts sampling the loop's
 * lag. admin is used, not owned; msg may be NULL. 0 or PARLEY_ENOMEM. */
int ops_new(parley_server *srv, msg_service *msg, padmin *admin, const ops_opts *o, ops **out);

pmx_registry *ops_registry(ops *o);

/* Before the server shuts down: streams are closed, timers stopped, and
 * /readyz answers 503. */
void ops_stop(ops *o);

/* After the loop ended. */
void ops_free(ops *o);

#endif
