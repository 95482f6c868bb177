/* parley bench: load generator scenarios (see bench.c). */
#ifndef PARLEY_PROG_BENCH_H
#define PARLEY_PROG_BENCH_H

/* argv[0] is "bench"; returns the process exit code. */
int bench_main(int argc, char **argv);

#endif
