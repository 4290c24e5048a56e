/* CLI+STI pair at CPL 0: privileged, each traps (#GP) and is emulated */
#include "kernel.h"

static u64 cli_sti(u32 iterations)
{
	u64 t0 = bench_rdtsc();
	asm volatile("1:\n\tcli\n\tsti\n\tdecl %0\n\tjnz 1b\n\tcli" : "+r"(iterations)::"memory", "cc");
	return bench_rdtsc() - t0;
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	/* every PIC input stays masked (the library's start-up): STI lets nothing in */
	cli_sti(WARMUP(EXITING_ITERATIONS));
	u64 cycles = BENCH_BEST_OF_TRIALS(cli_sti(EXITING_ITERATIONS));
	bench_check(!(read_eflags() & EFLAGS_IF), "IF clear after the closing CLI");
	bench_report("cli_sti", WARMUP(EXITING_ITERATIONS), EXITING_ITERATIONS,
		     cycles, 0, 0);
	return 0;
}
