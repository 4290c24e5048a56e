/* Timing and reporting shared by the benchmark kernels and the native host program, so
 * the same measuring code produces every column of `vmm bench`. Freestanding: no libc, no
 * libgcc (64-bit division is done bit by bit here). */
#ifndef BENCH_H
#define BENCH_H

typedef unsigned int bench_u32;
typedef unsigned long long bench_u64;

/* The environment's output: the serial port in a kernel, write(2) in the host program. */
void bench_write(const char *s);

/* LFENCE on both sides keeps the timed instructions from drifting across the read (AMD
 * makes LFENCE dispatch-serialising under Linux; Intel always has). CPUID would serialise
 * fully but traps under the monitor and would add an exit to every measurement. */
static inline bench_u64 bench_rdtsc(void)
{
	bench_u32 lo, hi;
	asm volatile("lfence\n\trdtsc\n\tlfence" : "=a"(lo), "=d"(hi)::"memory");
	return ((bench_u64)hi << 32) | lo;
}

/* Each timed loop runs this many times and the fastest counts: on a shared host a loop
 * is only ever slowed down by others (interrupts, preemption, cache thrashing), never
 * sped up, so the minimum is the figure least disturbed. */
#define BENCH_TRIALS 5
#define BENCH_BEST_OF_TRIALS(timed_loop)                                                       \
	({                                                                                     \
		bench_u64 best_ = ~0ull;                                                       \
		for (int trial_ = 0; trial_ < BENCH_TRIALS; trial_++) {                        \
			bench_u64 cycles_ = (timed_loop);                                      \
			if (cycles_ < best_)                                                   \
				best_ = cycles_;                                               \
		}                                                                              \
		best_;                                                                         \
	})

/* n / d by restoring division; gcc would call libgcc's __udivdi3 for the operator. */
static inline bench_u64 bench_udiv64(bench_u64 n, bench_u32 d, bench_u32 *rem)
{
	bench_u64 q = 0, r = 0;
	for (int i = 63; i >= 0; i--) {
		r = (r << 1) | ((n >> i) & 1);
		if (r >= d) {
			r -= d;
			q |= 1ull << i;
		}
	}
	if (rem)
		*rem = (bench_u32)r;
	return q;
}

static inline char *bench_put_str(char *p, const char *s)
{
	while (*s)
		*p++ = *s++;
	return p;
}

static inline char *bench_put_dec(char *p, bench_u64 v)
{
	char digits[21];
	int n = 0;
	do {
		bench_u32 r;
		v = bench_udiv64(v, 10, &r);
		digits[n++] = (char)('0' + r);
	} while (v);
	while (n)
		*p++ = digits[--n];
	return p;
}

static inline char *bench_put_hex(char *p, bench_u32 v)
{
	p = bench_put_str(p, "0x");
	for (int shift = 28; shift >= 0; shift -= 4)
		*p++ = "0123456789abcdef"[(v >> shift) & 0xf];
	return p;
}

/* One result line, the format `vmm bench` parses:
 *   BENCH <name> warmup=<n> iterations=<n> trials=<t> cycles=<total>
 *         cycles_per_op=<x.y> [checksum=0x<h>]
 * cycles is the exact TSC delta of the fastest of `trials` timed loops of `iterations`
 * operations each, which ran after `warmup` untimed operations; cycles_per_op is for
 * people reading the serial log. The checksum, when the operation computes one, must agree between
 * environments: it shows that every column did the same work. */
static inline void bench_report(const char *name, bench_u32 warmup, bench_u32 iterations,
				bench_u64 cycles, int has_checksum, bench_u32 checksum)
{
	char line[160];
	char *p = bench_put_str(line, "BENCH ");
	p = bench_put_str(p, name);
	p = bench_put_str(p, " warmup=");
	p = bench_put_dec(p, warmup);
	p = bench_put_str(p, " iterations=");
	p = bench_put_dec(p, iterations);
	p = bench_put_str(p, " trials=");
	p = bench_put_dec(p, BENCH_TRIALS);
	p = bench_put_str(p, " cycles=");
	p = bench_put_dec(p, cycles);
	p = bench_put_str(p, " cycles_per_op=");
	bench_u32 tenth;
	bench_u64 whole = bench_udiv64(bench_udiv64(cycles * 10, iterations, 0), 10, &tenth);
	p = bench_put_dec(p, whole);
	*p++ = '.';
	*p++ = (char)('0' + tenth);
	if (has_checksum) {
		p = bench_put_str(p, " checksum=");
		p = bench_put_hex(p, checksum);
	}
	*p++ = '\n';
	*p = '\0';
	bench_write(line);
}

#endif
