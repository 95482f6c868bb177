/*
 * Metrics in the Prometheus text exposition format (version 0.0.4).
 *
 * Counting costs nothing special: a counter or gauge is a plain uint64_t
 * (or an array of them indexed by an enumeration: labels only ever come
 * from fixed sets) in a struct owned by the subsystem that counts, bumped
 * with `x++` on the loop thread — no lock, no allocation, no lookup. A
 * histogram (pmx_hist) has fixed bucket bounds chosen at compile time and
 * an observation is a short scan of at most PMX_BUCKETS_MAX bounds.
 *
 * Nothing is rendered until a scrape: a registry (pmx_registry) is a
 * fixed array of collectors — callbacks that write their families with
 * the pmx_* writers below into the caller's pbuf. Values that a subsystem
 * already keeps as statistics are read there, not counted twice. A new
 * subsystem (e.g. a cluster adapter) adds its families by registering one
 * more collector; family names must be unique across collectors.
 *
 * The same collectors render a JSON snapshot (PMX_JSON): an object whose
 * keys are the sample names with their labels exactly as in the text
 * format (`name{a="b"}`) and whose values are numbers; histogram buckets
 * are left out there (_sum and _count stay).
 *
 * Loop thread only (parleyd is one thread per process).
 */
#ifndef PARLEY_BASE_METRICS_H
#define PARLEY_BASE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

#define PMX_BUCKETS_MAX 16

/* A histogram over integer observations (nanoseconds, counts, ...). The
 * bounds are upper bounds in the observed unit, ascending, and are shown
 * divided by `scale` (1e9 turns nanoseconds into the seconds Prometheus
 * wants). counts[i] is the number of observations in bucket i alone
 * (bounds[i-1] < v <= bounds[i]); counts[n] is the overflow (+Inf). */
typedef struct pmx_hist {
    const uint64_t *bounds;
    unsigned n;
    double scale;
    uint64_t counts[PMX_BUCKETS_MAX + 1];
    uint64_t count;
    uint64_t sum; /* in the observed unit */
} pmx_hist;

/* n <= PMX_BUCKETS_MAX bounds (kept by reference: static storage). */
void pmx_hist_init(pmx_hist *h, const uint64_t *bounds, unsigned n, double scale);
void pmx_hist_observe(pmx_hist *h, uint64_t v);

enum { PMX_TEXT, PMX_JSON };

/* A scrape in progress: everything is appended to *b. The first error
 * (PARLEY_ENOMEM) is kept in err and later writes do nothing. */
typedef struct pmx_out {
    pbuf *b;
    int mode;
    int err;
    bool first; /* JSON: no sample written yet */
} pmx_out;

typedef enum pmx_type { PMX_COUNTER, PMX_GAUGE, PMX_HISTOGRAM } pmx_type;

/* Starts a family: its # HELP and # TYPE lines (text mode only). The
 * help text is escaped (backslash, newline). */
void pmx_family(pmx_out *o, const char *name, pmx_type type, const char *help);

/* One sample. Labels are n (key, value) pairs: keys are fixed
 * identifiers, values are escaped (backslash, double quote, newline);
 * n may be 0. suffix is appended to the name (NULL: none). */
typedef struct pmx_label {
    const char *key;
    const char *val;
} pmx_label;

void pmx_sample(pmx_out *o, const char *name, const char *suffix, const pmx_label *labels, size_t n,
                double v);
void pmx_sample_u64(pmx_out *o, const char *name, const char *suffix, const pmx_label *labels,
                    size_t n, uint64_t v);

/* A family with one unlabelled sample: the common case. */
void pmx_counter(pmx_out *o, const char *name, const char *help, uint64_t v);
void pmx_gauge(pmx_out *o, const char *name, const char *help, double v);

/* A histogram's samples: cumulative _bucket{le=...} lines ending with
 * le="+Inf", then _sum and _count. Its family line comes first
 * (pmx_family with PMX_HISTOGRAM), so that one family may hold several
 * labelled histograms. */
void pmx_hist_write(pmx_out *o, const char *name, const pmx_label *labels, size_t n,
                    const pmx_hist *h);

/* Collectors. */
typedef void (*pmx_collect_fn)(pmx_out *o, void *user);

#define PMX_COLLECTORS_MAX 16

typedef struct pmx_registry {
    struct {
        pmx_collect_fn fn;
        void *user;
    } c[PMX_COLLECTORS_MAX];
    unsigned n;
} pmx_registry;

/* 0, or PARLEY_ELIMIT when PMX_COLLECTORS_MAX are registered. */
int pmx_register(pmx_registry *r, pmx_collect_fn fn, void *user);

/* Renders every collector, in registration order, into *b (appended).
 * 0 or PARLEY_ENOMEM. */
int pmx_render(const pmx_registry *r, int mode, pbuf *b);

/* The Content-Type of the text format. */
#define PMX_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* The process_* families from /proc/self (resident and virtual memory,
 * open and maximum descriptors, CPU seconds, start time): a collector.
 * Linux only; elsewhere it writes nothing. */
void pmx_collect_process(pmx_out *o, void *user);

#endif
