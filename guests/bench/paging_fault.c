/* Guest page fault: a read of a not-present page raises #PF through the guest IDT; the kernel's handler skips the read */
#include "kernel.h"
#include "paging.h"

#define PROBE 0x00800000u /* PDE 2: a page table whose entries are all not present */

static u32 page_dir[1024] __attribute__((aligned(4096)));
static u32 probe_table[1024] __attribute__((aligned(4096)));

/* #PF pushes an error code: drop it, step over the faulting `mov (%ebx), %eax` (8B 03,
 * two bytes) and return. */
volatile u32 bench_page_faults;
void bench_pf_entry(void);
asm(".text\n"
    ".globl bench_pf_entry\n"
    "bench_pf_entry:\n\t"
    "addl $4, %esp\n\t"
    "incl bench_page_faults\n\t"
    "addl $2, (%esp)\n\t"
    "iret\n");

static u64 page_faults(u32 iterations)
{
	u64 t0 = bench_rdtsc();
	asm volatile("1:\n\t"
		     ".byte 0x8b, 0x03\n\t" /* mov (%ebx), %eax */
		     "decl %0\n\tjnz 1b"
		     : "+S"(iterations)
		     : "b"(PROBE)
		     : "eax", "memory", "cc");
	return bench_rdtsc() - t0;
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	page_dir[0] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
	page_dir[1] = 0x400000 | PTE_P | PTE_RW | PTE_PS;
	page_dir[pde_index(PROBE)] = (u32)probe_table | PTE_P | PTE_RW;
	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((u32)page_dir);
	write_cr0(read_cr0() | CR0_PG | CR0_WP);

	idt_set_gate(PF_VECTOR, (u32)bench_pf_entry, KERNEL_CS, GATE_INTERRUPT_32, 0);
	page_faults(WARMUP(EXITING_ITERATIONS));
	u64 cycles = BENCH_BEST_OF_TRIALS(page_faults(EXITING_ITERATIONS));
	idt_set_gate(PF_VECTOR, idt_stub(PF_VECTOR), KERNEL_CS, GATE_INTERRUPT_32, 0);
	bench_check(bench_page_faults ==
			    WARMUP(EXITING_ITERATIONS) + BENCH_TRIALS * EXITING_ITERATIONS,
		    "every read of the not-present page raised #PF once");
	bench_check(read_cr2() == PROBE, "CR2 is the probed address");
	bench_report("paging_fault", WARMUP(EXITING_ITERATIONS), EXITING_ITERATIONS, cycles, 0,
		     0);
	return 0;
}
