/* Prometheus text exposition (base/metrics.h). */
#include "base/metrics.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "parley/parley.h"

void pmx_hist_init(pmx_hist *h, const uint64_t *bounds, unsigned n, double scale)
{
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n = n > PMX_BUCKETS_MAX ? PMX_BUCKETS_MAX : n;
    h->scale = scale > 0 ? scale : 1;
}

void pmx_hist_observe(pmx_hist *h, uint64_t v)
{
    unsigned i = 0;
    while (i < h->n && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

static void put(pmx_out *o, const void *p, size_t n)
{
    if (o->err == 0) o->err = pbuf_append(o->b, p, n);
}

static void puts_(pmx_out *o, const char *s)
{
    put(o, s, strlen(s));
}

/* Escapes for label values (\\, \", \n) and, with quote false, for HELP
 * text (\\, \n). */
static void put_escaped(pmx_out *o, const char *s, bool quote)
{
    const char *run = s;
    for (; *s; s++) {
        const char *rep = NULL;
        if (*s == '\\')
            rep = "\\\\";
        else if (*s == '\n')
            rep = "\\n";
        else if (*s == '"' && quote)
            rep = "\\\"";
        if (!rep) continue;
        put(o, run, (size_t)(s - run));
        puts_(o, rep);
        run = s + 1;
    }
    put(o, run, (size_t)(s - run));
}

/* JSON mode: a key is a JSON string holding the text-format sample name;
 * the label escaping above already happened, so here only what JSON
 * needs (\ and " and control characters) is escaped once more. */
static void put_json_escaped(pmx_out *o, const char *s, size_t n)
{
    const char *run = s, *end = s + n;
    for (; s < end; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch != '\\' && ch != '"' && ch >= 0x20) continue;
        put(o, run, (size_t)(s - run));
        char esc[8];
        if (ch == '\\' || ch == '"')
            snprintf(esc, sizeof esc, "\\%c", ch);
        else
            snprintf(esc, sizeof esc, "\\u%04x", ch);
        puts_(o, esc);
        run = s + 1;
    }
    put(o, run, (size_t)(s - run));
}

static const char *type_name(pmx_type t)
{
    return t == PMX_COUNTER ? "counter" : t == PMX_GAUGE ? "gauge" : "histogram";
}

void pmx_family(pmx_out *o, const char *name, pmx_type type, const char *help)
{
    if (o->mode != PMX_TEXT) return;
    puts_(o, "# HELP ");
    puts_(o, name);
    puts_(o, " ");
    put_escaped(o, help, false);
    puts_(o, "\n# TYPE ");
    puts_(o, name);
    puts_(o, " ");
    puts_(o, type_name(type));
    puts_(o, "\n");
}

static void format_value(char *out, size_t cap, double v)
{
    if (isnan(v))
        snprintf(out, cap, "NaN");
    else if (isinf(v))
        snprintf(out, cap, v > 0 ? "+Inf" : "-Inf");
    else if (v > -1e15 && v < 1e15 && v == (double)(long long)v)
        snprintf(out, cap, "%.0f", v);
    else
        snprintf(out, cap, "%.15g", v);
}

/* Writes name+suffix{labels} into the text, or as a JSON key. */
static void sample_head(pmx_out *o, const char *name, const char *suffix, const pmx_label *labels,
                        size_t n)
{
    size_t start = o->b->len;
    if (o->mode == PMX_JSON) {
        puts_(o, o->first ? "\"" : ",\"");
        o->first = false;
        start = o->b->len;
    }
    puts_(o, name);
    if (suffix) puts_(o, suffix);
    if (n) {
        puts_(o, "{");
        for (size_t i = 0; i < n; i++) {
            if (i) puts_(o, ",");
            puts_(o, labels[i].key);
            puts_(o, "=\"");
            put_escaped(o, labels[i].val ? labels[i].val : "", true);
            puts_(o, "\"");
        }
        puts_(o, "}");
    }
    if (o->mode == PMX_JSON && o->err == 0) {
        /* The text written since start becomes a JSON string: escape it
         * in a second pass (rare characters; label values are ours). */
        size_t len = o->b->len - start;
        bool plain = true;
        for (size_t i = 0; i < len && plain; i++) {
            unsigned char ch = o->b->ptr[start + i];
            plain = ch != '\\' && ch != '"' && ch >= 0x20;
        }
        if (!plain) {
            char *copy = malloc(len);
            if (!copy) {
                o->err = PARLEY_ENOMEM;
                return;
            }
            memcpy(copy, o->b->ptr + start, len);
            o->b->len = (uint32_t)start;
            put_json_escaped(o, copy, len);
            free(copy);
        }
        puts_(o, "\":");
        return;
    }
    puts_(o, " ");
}

void pmx_sample(pmx_out *o, const char *name, const char *suffix, const pmx_label *labels, size_t n,
                double v)
{
    sample_head(o, name, suffix, labels, n);
    char num[48];
    format_value(num, sizeof num, v);
    if (o->mode == PMX_JSON && (isnan(v) || isinf(v))) snprintf(num, sizeof num, "null");
    puts_(o, num);
    if (o->mode == PMX_TEXT) puts_(o, "\n");
}

void pmx_sample_u64(pmx_out *o, const char *name, const char *suffix, const pmx_label *labels,
                    size_t n, uint64_t v)
{
    sample_head(o, name, suffix, labels, n);
    char num[24];
    snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    puts_(o, num);
    if (o->mode == PMX_TEXT) puts_(o, "\n");
}

void pmx_counter(pmx_out *o, const char *name, const char *help, uint64_t v)
{
    pmx_family(o, name, PMX_COUNTER, help);
    pmx_sample_u64(o, name, NULL, NULL, 0, v);
}

void pmx_gauge(pmx_out *o, const char *name, const char *help, double v)
{
    pmx_family(o, name, PMX_GAUGE, help);
    pmx_sample(o, name, NULL, NULL, 0, v);
}

void pmx_hist_write(pmx_out *o, const char *name, const pmx_label *labels, size_t n,
                    const pmx_hist *h)
{
    if (o->mode == PMX_TEXT) {
        pmx_label l[9];
        size_t k = n < 8 ? n : 8;
        if (k) memcpy(l, labels, k * sizeof *l);
        uint64_t cum = 0;
        char le[48];
        for (unsigned i = 0; i <= h->n; i++) {
            cum += h->counts[i];
            if (i < h->n)
                format_value(le, sizeof le, (double)h->bounds[i] / h->scale);
            else
                snprintf(le, sizeof le, "+Inf");
            l[k] = (pmx_label){"le", le};
            pmx_sample_u64(o, name, "_bucket", l, k + 1, cum);
        }
    }
    pmx_sample(o, name, "_sum", labels, n, (double)h->sum / h->scale);
    pmx_sample_u64(o, name, "_count", labels, n, h->count);
}

int pmx_register(pmx_registry *r, pmx_collect_fn fn, void *user)
{
    if (r->n == PMX_COLLECTORS_MAX) return PARLEY_ELIMIT;
    r->c[r->n].fn = fn;
    r->c[r->n].user = user;
    r->n++;
    return 0;
}

int pmx_render(const pmx_registry *r, int mode, pbuf *b)
{
    pmx_out o = {.b = b, .mode = mode, .first = true};
    if (mode == PMX_JSON) puts_(&o, "{");
    for (unsigned i = 0; i < r->n; i++) r->c[i].fn(&o, r->c[i].user);
    if (mode == PMX_JSON) puts_(&o, "}");
    return o.err;
}

/* ---- process_* from /proc/self ---- */

static bool read_file(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) return false;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = 0;
    return n > 0;
}

void pmx_collect_process(pmx_out *o, void *user)
{
    (void)user;
    char buf[1024];
    if (!read_file("/proc/self/stat", buf, sizeof buf)) return;
    /* The command name is in parentheses and may hold anything: fields
     * are counted from the last ')'. Field 3 (state) follows it. */
    char *p = strrchr(buf, ')');
    if (!p) return;
    p++;
    unsigned long long f[64] = {0};
    int field = 2;
    while (*p && field < 52) {
        while (*p == ' ') p++;
        field++;
        char *end;
        f[field] = strtoull(p, &end, 10);
        while (*end && *end != ' ') end++;
        p = end;
    }
    long tck = sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);
    if (tck <= 0 || page <= 0) return;
    /* Boot time, for the start time in seconds since the epoch. */
    double btime = 0;
    char stat[8192];
    if (read_file("/proc/stat", stat, sizeof stat)) {
        char *b = strstr(stat, "\nbtime ");
        if (b) btime = strtod(b + 7, NULL);
    }
    unsigned fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') fds++;
        closedir(d);
        if (fds) fds--; /* the directory's own descriptor */
    }
    struct rlimit rl;
    double maxfds = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                        ? (double)rl.rlim_cur
                        : -1;
    pmx_family(o, "process_cpu_seconds_total", PMX_COUNTER,
               "Total user and system CPU time spent in seconds.");
    pmx_sample(o, "process_cpu_seconds_total", NULL, NULL, 0,
               (double)(f[14] + f[15]) / (double)tck);
    pmx_gauge(o, "process_virtual_memory_bytes", "Virtual memory size in bytes.", (double)f[23]);
    pmx_gauge(o, "process_resident_memory_bytes", "Resident memory size in bytes.",
              (double)f[24] * (double)page);
    pmx_gauge(o, "process_open_fds", "Number of open file descriptors.", fds);
    if (maxfds >= 0)
        pmx_gauge(o, "process_max_fds", "Maximum number of open file descriptors.", maxfds);
    if (btime > 0)
        pmx_gauge(o, "process_start_time_seconds",
                  "Start time of the process since unix epoch in seconds.",
                  btime + (double)f[22] / (double)tck);
}
