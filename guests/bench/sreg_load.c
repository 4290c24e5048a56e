/* Segment register load (MOV to DS) at CPL 0: rewritten, checked against the guest GDT */
#include "kernel.h"
#include "ops.h"

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	op_sreg_load(WARMUP(SREG_LOAD_ITERATIONS));
	u64 cycles = BENCH_BEST_OF_TRIALS(op_sreg_load(SREG_LOAD_ITERATIONS));
	bench_check(READ_SREG(ds) == KERNEL_DS, "DS still holds the kernel data selector");
	bench_report("sreg_load", WARMUP(SREG_LOAD_ITERATIONS), SREG_LOAD_ITERATIONS,
		     cycles, 0, 0);
	return 0;
}
