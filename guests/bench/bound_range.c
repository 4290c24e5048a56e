/* BOUND past its bounds at CPL 0 raises #BR through the guest IDT; the handler skips it */
#include "kernel.h"

/* Bounds [0, 9]; the index (EAX = 10) is past them. */
volatile s32 bench_bounds[2] = { 0, 9 };
volatile u32 bench_bound_ranges;

/* #BR is a fault: the saved EIP is the BOUND's, whose encoding here (62 05 disp32,
 * bound %eax, bench_bounds) is six bytes long; the handler resumes after it. */
void bench_br_entry(void);
asm(".text\n"
    ".globl bench_br_entry\n"
    "bench_br_entry:\n\t"
    "incl bench_bound_ranges\n\t"
    "addl $6, (%esp)\n\t"
    "iret\n");

static u64 bound_ranges(u32 iterations)
{
	u64 t0 = bench_rdtsc();
	asm volatile("1:\n\tmovl $10, %%eax\n\t"
		     ".byte 0x62, 0x05\n\t.long bench_bounds\n\t" /* bound %eax, bench_bounds */
		     "decl %0\n\tjnz 1b"
		     : "+S"(iterations)
		     :
		     : "eax", "memory", "cc");
	return bench_rdtsc() - t0;
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	idt_set_gate(BR_VECTOR, (u32)bench_br_entry, KERNEL_CS, GATE_INTERRUPT_32, 0);
	bound_ranges(WARMUP(EXITING_ITERATIONS));
	u64 cycles = BENCH_BEST_OF_TRIALS(bound_ranges(EXITING_ITERATIONS));
	idt_set_gate(BR_VECTOR, idt_stub(BR_VECTOR), KERNEL_CS, GATE_INTERRUPT_32, 0);
	bench_check(bench_bound_ranges ==
			    WARMUP(EXITING_ITERATIONS) + BENCH_TRIALS * EXITING_ITERATIONS,
		    "every BOUND past its bounds raised #BR once");
	bench_report("bound_range", WARMUP(EXITING_ITERATIONS), EXITING_ITERATIONS,
		     cycles, 0, 0);
	return 0;
}
