/* The Prometheus text renderer and histograms (base/metrics.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/metrics.h"

static char *render(const pmx_registry *r, int mode)
{
    pbuf b = {0};
    assert_int_equal(pmx_render(r, mode, &b), 0);
    assert_int_equal(pbuf_append(&b, "", 1), 0);
    return (char *)b.ptr;
}

static void one_counter(pmx_out *o, void *user)
{
    uint64_t *v = user;
    pmx_counter(o, "x_total", "Things.", *v);
}

static void test_counter_family(void **state)
{
    (void)state;
    uint64_t v = 0;
    pmx_registry r = {0};
    assert_int_equal(pmx_register(&r, one_counter, &v), 0);
    v += 3; /* counting is a plain increment of the owner's field */
    v++;
    char *t = render(&r, PMX_TEXT);
    assert_string_equal(t, "# HELP x_total Things.\n# TYPE x_total counter\nx_total 4\n");
    free(t);
}

static void labelled(pmx_out *o, void *user)
{
    (void)user;
    pmx_family(o, "esc", PMX_GAUGE, "Help with \\ and\nnewline \"quotes\" kept.");
    pmx_label l[2] = {{"a", "back\\slash"}, {"b", "quote\" and\nline"}};
    pmx_sample(o, "esc", NULL, l, 2, 1.5);
    pmx_label e = {"a", ""};
    pmx_sample_u64(o, "esc", NULL, &e, 1, 18446744073709551615ull);
}

static void test_escaping(void **state)
{
    (void)state;
    pmx_registry r = {0};
    pmx_register(&r, labelled, NULL);
    char *t = render(&r, PMX_TEXT);
    assert_string_equal(t, "# HELP esc Help with \\\\ and\\nnewline \"quotes\" kept.\n"
                           "# TYPE esc gauge\n"
                           "esc{a=\"back\\\\slash\",b=\"quote\\\" and\\nline\"} 1.5\n"
                           "esc{a=\"\"} 18446744073709551615\n");
    free(t);
    /* JSON: the text-format sample names become JSON strings. */
    t = render(&r, PMX_JSON);
    assert_string_equal(
        t, "{\"esc{a=\\\"back\\\\\\\\slash\\\",b=\\\"quote\\\\\\\" and\\\\nline\\\"}\":1.5,"
           "\"esc{a=\\\"\\\"}\":18446744073709551615}");
    free(t);
}

static const uint64_t bounds[] = {1000000, 5000000, 10000000}; /* 1, 5, 10 ms in ns */

static void hist(pmx_out *o, void *user)
{
    pmx_hist *h = user;
    pmx_family(o, "lat_seconds", PMX_HISTOGRAM, "Latency.");
    pmx_hist_write(o, "lat_seconds", NULL, 0, h);
}

static void test_histogram(void **state)
{
    (void)state;
    pmx_hist h;
    pmx_hist_init(&h, bounds, 3, 1e9);
    pmx_hist_observe(&h, 500000);   /* 0.5 ms: first bucket */
    pmx_hist_observe(&h, 1000000);  /* exactly on a bound: that bucket (le) */
    pmx_hist_observe(&h, 7000000);  /* third */
    pmx_hist_observe(&h, 90000000); /* over every bound: +Inf only */
    pmx_registry r = {0};
    pmx_register(&r, hist, &h);
    char *t = render(&r, PMX_TEXT);
    assert_string_equal(t, "# HELP lat_seconds Latency.\n"
                           "# TYPE lat_seconds histogram\n"
                           "lat_seconds_bucket{le=\"0.001\"} 2\n"
                           "lat_seconds_bucket{le=\"0.005\"} 2\n"
                           "lat_seconds_bucket{le=\"0.01\"} 3\n"
                           "lat_seconds_bucket{le=\"+Inf\"} 4\n"
                           "lat_seconds_sum 0.0985\n"
                           "lat_seconds_count 4\n");
    free(t);
    /* JSON leaves the buckets out. */
    t = render(&r, PMX_JSON);
    assert_string_equal(t, "{\"lat_seconds_sum\":0.0985,\"lat_seconds_count\":4}");
    free(t);
}

static void labelled_hist(pmx_out *o, void *user)
{
    pmx_hist *h = user;
    pmx_family(o, "h", PMX_HISTOGRAM, "H.");
    pmx_label l = {"kind", "a"};
    pmx_hist_write(o, "h", &l, 1, h);
}

static void test_histogram_labels_and_empty(void **state)
{
    (void)state;
    static const uint64_t b[] = {1, 2};
    pmx_hist h;
    pmx_hist_init(&h, b, 2, 1);
    pmx_registry r = {0};
    pmx_register(&r, labelled_hist, &h);
    char *t = render(&r, PMX_TEXT);
    assert_string_equal(t, "# HELP h H.\n# TYPE h histogram\n"
                           "h_bucket{kind=\"a\",le=\"1\"} 0\n"
                           "h_bucket{kind=\"a\",le=\"2\"} 0\n"
                           "h_bucket{kind=\"a\",le=\"+Inf\"} 0\n"
                           "h_sum{kind=\"a\"} 0\n"
                           "h_count{kind=\"a\"} 0\n");
    free(t);
}

static void special_values(pmx_out *o, void *user)
{
    (void)user;
    pmx_gauge(o, "nan", "N.", 0.0 / 0.0);
    pmx_gauge(o, "inf", "I.", 1.0 / 0.0);
    pmx_gauge(o, "big", "B.", 1796672989.25);
}

static void test_special_values(void **state)
{
    (void)state;
    pmx_registry r = {0};
    pmx_register(&r, special_values, NULL);
    char *t = render(&r, PMX_TEXT);
    assert_non_null(strstr(t, "\nnan NaN\n"));
    assert_non_null(strstr(t, "\ninf +Inf\n"));
    assert_non_null(strstr(t, "\nbig 1796672989.25\n"));
    free(t);
    t = render(&r, PMX_JSON); /* JSON has no NaN: null */
    assert_string_equal(t, "{\"nan\":null,\"inf\":null,\"big\":1796672989.25}");
    free(t);
}

static void nothing(pmx_out *o, void *user)
{
    (void)o;
    (void)user;
}

static void test_registry_bounded_and_ordered(void **state)
{
    (void)state;
    pmx_registry r = {0};
    for (int i = 0; i < PMX_COLLECTORS_MAX; i++) assert_int_equal(pmx_register(&r, nothing, 0), 0);
    assert_int_not_equal(pmx_register(&r, nothing, 0), 0);
    pmx_registry r2 = {0};
    uint64_t a = 1, b = 2;
    pmx_register(&r2, one_counter, &a);
    pmx_register(&r2, one_counter, &b);
    char *t = render(&r2, PMX_JSON);
    assert_string_equal(t, "{\"x_total\":1,\"x_total\":2}");
    free(t);
}

static void test_process_families(void **state)
{
    (void)state;
    pmx_registry r = {0};
    pmx_register(&r, pmx_collect_process, NULL);
    char *t = render(&r, PMX_TEXT);
    const char *names[] = {"process_cpu_seconds_total ",
                           "process_virtual_memory_bytes ",
                           "process_resident_memory_bytes ",
                           "process_open_fds ",
                           "process_max_fds ",
                           "process_start_time_seconds "};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char *line = strstr(t, names[i]);
        while (line && line != t && line[-1] != '\n') line = strstr(line + 1, names[i]);
        assert_non_null(line);
        double v = strtod(line + strlen(names[i]), NULL);
        assert_true(v >= 0);
        if (strstr(names[i], "resident") || strstr(names[i], "open_fds") ||
            strstr(names[i], "start_time"))
            assert_true(v > 0);
    }
    /* Memory in bytes: more than a megabyte for any process with libc. */
    char *rss = strstr(t, "\nprocess_resident_memory_bytes ");
    assert_true(strtod(rss + 31, NULL) > 1e6);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_family),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_histogram_labels_and_empty),
        cmocka_unit_test(test_special_values),
        cmocka_unit_test(test_registry_bounded_and_ordered),
        cmocka_unit_test(test_process_families),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
