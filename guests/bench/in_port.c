/* IN from the master PIC's mask register (port 0x21) at CPL 0: a port I/O exit to a device */
#include "kernel.h"

#define PIC1_DATA 0x21

/* Returns the cycles; *last is the value the final IN read. */
static u64 in_port(u32 iterations, u8 *last)
{
	u8 v;
	u64 t0 = bench_rdtsc();
	asm volatile("1:\n\tinb %[port], %%al\n\tdecl %[n]\n\tjnz 1b"
		     : [n] "+r"(iterations), "=a"(v)
		     : [port] "i"(PIC1_DATA)
		     : "memory", "cc");
	u64 cycles = bench_rdtsc() - t0;
	*last = v;
	return cycles;
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	u8 v;
	in_port(WARMUP(EXITING_ITERATIONS), &v);
	u64 cycles = BENCH_BEST_OF_TRIALS(in_port(EXITING_ITERATIONS, &v));
	/* the library masked every input of both PICs at start-up */
	bench_check(v == 0xff, "IN 0x21 reads back the mask the kernel wrote");
	bench_report("in_port", WARMUP(EXITING_ITERATIONS), EXITING_ITERATIONS,
		     cycles, 0, 0);
	return 0;
}
