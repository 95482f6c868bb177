/*
 * parleyd --workers N: N processes serving one port. The parent binds the
 * port first (resolving port 0, and holding it while workers restart),
 * makes one loopback listening socket per worker for relays between
 * workers (engine_set_cluster: a polling request that reaches the wrong
 * worker is relayed to the one that owns its session), forks the workers,
 * waits until each one listens, prints the ready line, then supervises:
 * a worker that dies is started again (backoff 1 s doubling to 30 s while
 * it keeps dying young), SIGHUP is passed on, SIGTERM/SIGINT stop every
 * worker (SIGKILL after 15 s) and then the parent.
 *
 * Each worker binds the public address itself with SO_REUSEPORT, so the
 * kernel spreads new connections over the workers.
 */
#ifndef PARLEY_PROG_WORKERS_H
#define PARLEY_PROG_WORKERS_H

#define PWORKERS_MAX 64

typedef struct pworker_ctx {
    int index; /* 0..n-1 */
    int n;
    unsigned port; /* the public port (resolved when 0 was asked) */
    int listen_fd; /* this worker's SO_REUSEPORT socket on the public address */
    int relay_fd;  /* this worker's loopback socket for relays (listening) */
    unsigned relay_ports[PWORKERS_MAX];
    int ready_fd; /* pworker_ready writes here */
} pworker_ctx;

/* In the parent: runs the workers until they are stopped and returns the
 * exit status (0, or 1 when they could not start). In a worker: returns
 * -1 with *ctx filled; the worker goes on to serve. */
int pworkers_run(int n, const char *host, unsigned port, pworker_ctx *ctx);

/* A worker tells the parent that it listens. */
void pworker_ready(pworker_ctx *ctx);

#endif
