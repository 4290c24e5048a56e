/* The operations a 32-bit host process can run as they are, shared by their benchmark
 * kernels and the native program. Each times `iterations` operations (a multiple of
 * BENCH_UNROLL) and returns the TSC cycles taken. The loops are written in assembly so
 * both builds execute the very same instructions, unrolled so the loop's own DEC/JNZ is
 * a small part of a cheap operation. */
#ifndef BENCH_OPS_H
#define BENCH_OPS_H

#include "bench.h"

#define BENCH_UNROLL 10
#define BENCH_REPEAT10(x) x x x x x x x x x x

/* Iteration counts, picked so an operation that exits to the monitor on every execution
 * (a few microseconds each) still finishes in well under a second. */
#define CALL_RET_ITERATIONS 10000000u
#define PUSHF_POPF_ITERATIONS 20000u
#define SREG_LOAD_ITERATIONS 20000u

/* The compute-bound workload: FNV-1a over a buffer much larger than the caches, several
 * passes. One operation is one KiB hashed. */
#define COMPUTE_BUFFER_BYTES (8u << 20)
#define COMPUTE_PASSES 4u
#define COMPUTE_ITERATIONS (COMPUTE_PASSES * (COMPUTE_BUFFER_BYTES >> 10))

static void __attribute__((noinline, used)) bench_empty_function(void) { asm volatile(""); }

static inline bench_u64 op_call_ret(bench_u32 iterations)
{
	bench_u32 loops = iterations / BENCH_UNROLL;
	bench_u64 t0 = bench_rdtsc();
	asm volatile("1:\n\t" BENCH_REPEAT10("call %P[fn]\n\t") "decl %[n]\n\tjnz 1b"
		     : [n] "+r"(loops)
		     : [fn] "i"(bench_empty_function)
		     : "memory", "cc");
	return bench_rdtsc() - t0;
}

static inline bench_u64 op_pushf_popf(bench_u32 iterations)
{
	bench_u32 loops = iterations / BENCH_UNROLL;
	bench_u64 t0 = bench_rdtsc();
	asm volatile("1:\n\t" BENCH_REPEAT10("pushfl\n\tpopfl\n\t") "decl %[n]\n\tjnz 1b"
		     : [n] "+r"(loops)::"memory", "cc");
	return bench_rdtsc() - t0;
}

/* Reloads DS with the selector it already holds: valid in a kernel and in a process. */
static inline bench_u64 op_sreg_load(bench_u32 iterations)
{
	bench_u32 loops = iterations / BENCH_UNROLL;
	bench_u32 sel;
	asm volatile("movl %%ds, %0" : "=r"(sel));
	bench_u64 t0 = bench_rdtsc();
	asm volatile("1:\n\t" BENCH_REPEAT10("movw %w[sel], %%ds\n\t") "decl %[n]\n\tjnz 1b"
		     : [n] "+r"(loops)
		     : [sel] "r"(sel)
		     : "memory", "cc");
	return bench_rdtsc() - t0;
}

/* unused: only the compute benchmark and the native program hash; gcc drops it elsewhere */
static unsigned char compute_buffer[COMPUTE_BUFFER_BYTES] __attribute__((aligned(4096), unused));

/* xorshift32: a fixed pseudo-random fill, so every environment hashes the same bytes. */
static inline void compute_fill(void)
{
	bench_u32 x = 0x2545f491u;
	bench_u32 *w = (bench_u32 *)compute_buffer;
	for (bench_u32 i = 0; i < COMPUTE_BUFFER_BYTES / 4; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		w[i] = x;
	}
}

static bench_u32 __attribute__((noinline, unused)) compute_hash(bench_u32 h)
{
	const volatile unsigned char *p = compute_buffer;
	for (bench_u32 i = 0; i < COMPUTE_BUFFER_BYTES; i++) {
		h ^= p[i];
		h *= 16777619u;
	}
	return h;
}

/* Returns the cycles of COMPUTE_PASSES passes; *checksum is the chained FNV-1a hash. */
static inline bench_u64 op_compute(bench_u32 *checksum)
{
	bench_u32 h = 2166136261u;
	bench_u64 t0 = bench_rdtsc();
	for (bench_u32 pass = 0; pass < COMPUTE_PASSES; pass++)
		h = compute_hash(h);
	bench_u64 cycles = bench_rdtsc() - t0;
	*checksum = h;
	return cycles;
}

#endif
