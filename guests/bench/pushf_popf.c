/* PUSHF+POPF pair at CPL 0: both are sensitive without trapping and are rewritten */
#include "kernel.h"
#include "ops.h"

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	op_pushf_popf(WARMUP(PUSHF_POPF_ITERATIONS));
	bench_report("pushf_popf", WARMUP(PUSHF_POPF_ITERATIONS), PUSHF_POPF_ITERATIONS,
		     BENCH_BEST_OF_TRIALS(op_pushf_popf(PUSHF_POPF_ITERATIONS)), 0, 0);
	return 0;
}
