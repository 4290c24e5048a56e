/* Divide error: DIV by zero at CPL 0 raises #DE through the guest IDT; the handler skips the DIV */
#include "kernel.h"

/* #DE is a fault: the saved EIP is the DIV's, whose encoding here (F7 F1, div %ecx) is
 * two bytes long; the handler resumes after it. */
volatile u32 bench_divide_errors;
void bench_de_entry(void);
asm(".text\n"
    ".globl bench_de_entry\n"
    "bench_de_entry:\n\t"
    "incl bench_divide_errors\n\t"
    "addl $2, (%esp)\n\t"
    "iret\n");

static u64 divide_errors(u32 iterations)
{
	u64 t0 = bench_rdtsc();
	asm volatile("1:\n\txorl %%edx, %%edx\n\tmovl $1, %%eax\n\t"
		     ".byte 0xf7, 0xf1\n\t" /* div %ecx */
		     "decl %0\n\tjnz 1b"
		     : "+S"(iterations)
		     : "c"(0)
		     : "eax", "edx", "memory", "cc");
	return bench_rdtsc() - t0;
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	idt_set_gate(DE_VECTOR, (u32)bench_de_entry, KERNEL_CS, GATE_INTERRUPT_32, 0);
	divide_errors(WARMUP(EXITING_ITERATIONS));
	u64 cycles = BENCH_BEST_OF_TRIALS(divide_errors(EXITING_ITERATIONS));
	idt_set_gate(DE_VECTOR, idt_stub(DE_VECTOR), KERNEL_CS, GATE_INTERRUPT_32, 0);
	bench_check(bench_divide_errors ==
			    WARMUP(EXITING_ITERATIONS) + BENCH_TRIALS * EXITING_ITERATIONS,
		    "every DIV by zero raised #DE once");
	bench_report("divide_error", WARMUP(EXITING_ITERATIONS), EXITING_ITERATIONS,
		     cycles, 0, 0);
	return 0;
}
