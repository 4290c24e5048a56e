/* CALL/RET pair at CPL 0: plain code, which the monitor runs natively without exits */
#include "kernel.h"
#include "ops.h"

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	op_call_ret(WARMUP(CALL_RET_ITERATIONS));
	bench_report("call_ret", WARMUP(CALL_RET_ITERATIONS), CALL_RET_ITERATIONS,
		     BENCH_BEST_OF_TRIALS(op_call_ret(CALL_RET_ITERATIONS)), 0, 0);
	return 0;
}
