/* System call round trip: INT 0x80 from CPL 3 to a minimal CPL 0 handler and IRET back */
#include "kernel.h"

/* Counts the calls and returns at once, so the figure is the cost of the privilege
 * transitions themselves. The library's own INT 0x80 stub (isr_128) still serves
 * user_return(), which leaves user mode for good. */
volatile u32 bench_syscalls_taken;
void bench_syscall_entry(void);
asm(".text\n"
    ".globl bench_syscall_entry\n"
    "bench_syscall_entry:\n\t"
    "cmpl $0x4b524554, %eax\n\t"
    "je isr_128\n\t"
    "incl bench_syscalls_taken\n\t"
    "iret\n");

static u64 user_cycles;

static u64 syscalls(u32 iterations)
{
	u64 t0 = bench_rdtsc();
	asm volatile("1:\n\tmovl $1, %%eax\n\tint $0x80\n\tdecl %0\n\tjnz 1b"
		     : "+r"(iterations)::"eax", "memory", "cc");
	return bench_rdtsc() - t0;
}

static void user_main(void)
{
	syscalls(WARMUP(EXITING_ITERATIONS));
	user_cycles = BENCH_BEST_OF_TRIALS(syscalls(EXITING_ITERATIONS));
	user_return(0);
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	_Static_assert(SYS_RETURN_TO_KERNEL == 0x4b524554, "the entry stub tests this value");
	idt_set_gate(SYSCALL_VECTOR, (u32)bench_syscall_entry, KERNEL_CS, GATE_INTERRUPT_32, 3);
	run_user(user_main, EFLAGS_FIXED1);
	idt_set_gate(SYSCALL_VECTOR, idt_stub(SYSCALL_VECTOR), KERNEL_CS, GATE_INTERRUPT_32, 3);
	bench_check(bench_syscalls_taken ==
			    WARMUP(EXITING_ITERATIONS) + BENCH_TRIALS * EXITING_ITERATIONS,
		    "every INT 0x80 reached the handler once");
	bench_report("syscall", WARMUP(EXITING_ITERATIONS), EXITING_ITERATIONS,
		     user_cycles, 0, 0);
	return 0;
}
