/* Compute-bound workload: FNV-1a over an 8 MiB buffer, no sensitive instruction in the loop */
#include "kernel.h"
#include "ops.h"

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	u32 checksum;
	compute_fill();
	op_compute(&checksum);
	u64 cycles = BENCH_BEST_OF_TRIALS(op_compute(&checksum));
	bench_report("compute", COMPUTE_ITERATIONS, COMPUTE_ITERATIONS, cycles, 1, checksum);
	return 0;
}
