/* What every benchmark kernel shares: output on the serial port and the warm-up rule. */
#ifndef BENCH_KERNEL_H
#define BENCH_KERNEL_H

#include "guest.h"
#include "bench.h"

void bench_write(const char *s) { puts(s); }

/* A tenth of the timed count runs first, untimed: the monitor scans and patches the code
 * on its first execution, and caches and predictors settle. */
#define WARMUP(iterations) ((iterations) / 10)

/* IDT gate type of the benchmarks' own handlers: a 32-bit interrupt gate. */
#define GATE_INTERRUPT_32 0xe

/* Operations that exit to the monitor every time: a few microseconds each there. */
#define EXITING_ITERATIONS 10000u

/* A kernel whose operation did not behave as the architecture says reports it and fails,
 * so a wrong emulation never yields a timing. */
static inline void bench_check(bool ok, const char *what)
{
	if (!ok) {
		report(false, "%s", what);
		exit(1);
	}
}

#endif
