/* Segment register load (MOV to DS) at CPL 0 with paging on, of the selector DS holds */
/* Its descriptor is checked against the guest GDT; translate mode loads it without an exit
 * once the monitor has checked it and watches its descriptor for writes. */
#include "kernel.h"
#include "ops.h"
#include "paging.h"

static u32 page_dir[1024] __attribute__((aligned(4096)));

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	/* The first 8 MiB identity-mapped with 4 MiB pages: the kernel, its data and stack. */
	page_dir[0] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
	page_dir[1] = 0x400000 | PTE_P | PTE_RW | PTE_PS;
	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((u32)page_dir);
	write_cr0(read_cr0() | CR0_PG | CR0_WP);

	op_sreg_load(WARMUP(SREG_LOAD_ITERATIONS));
	u64 cycles = BENCH_BEST_OF_TRIALS(op_sreg_load(SREG_LOAD_ITERATIONS));
	bench_check(READ_SREG(ds) == KERNEL_DS, "DS still holds the kernel data selector");
	bench_report("sreg_load", WARMUP(SREG_LOAD_ITERATIONS), SREG_LOAD_ITERATIONS,
		     cycles, 0, 0);
	return 0;
}
