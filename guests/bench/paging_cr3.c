/* CR3 switch: the kernel alternates between two address spaces that map one linear page to different frames, reading it after each switch */
#include "kernel.h"
#include "paging.h"

#define PRIVATE 0x00800000u /* PDE 2, PTE 0: a page each address space maps differently */

static u32 page_dirs[2][1024] __attribute__((aligned(4096)));
static u32 private_tables[2][1024] __attribute__((aligned(4096)));
static u32 frames[2][1024] __attribute__((aligned(4096)));

static u64 cr3_switches(u32 iterations, u32 *sum)
{
	volatile u32 *page = (volatile u32 *)PRIVATE;
	u32 roots[2] = { (u32)page_dirs[0], (u32)page_dirs[1] };
	u32 total = 0;
	u64 t0 = bench_rdtsc();
	for (u32 i = 0; i < iterations; i++) {
		write_cr3(roots[i & 1]);
		total += *page;
	}
	u64 cycles = bench_rdtsc() - t0;
	*sum = total;
	return cycles;
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	for (int s = 0; s < 2; s++) {
		frames[s][0] = (u32)s + 1;
		page_dirs[s][0] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
		page_dirs[s][1] = 0x400000 | PTE_P | PTE_RW | PTE_PS;
		private_tables[s][0] = (u32)frames[s] | PTE_P | PTE_RW;
		page_dirs[s][pde_index(PRIVATE)] = (u32)private_tables[s] | PTE_P | PTE_RW;
	}
	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((u32)page_dirs[0]);
	write_cr0(read_cr0() | CR0_PG | CR0_WP);

	u32 sum = 0;
	cr3_switches(WARMUP(EXITING_ITERATIONS), &sum);
	u64 cycles = BENCH_BEST_OF_TRIALS(cr3_switches(EXITING_ITERATIONS, &sum));
	bench_check(sum == EXITING_ITERATIONS / 2 * 3, "every read saw its address space's frame");
	bench_report("paging_cr3", WARMUP(EXITING_ITERATIONS), EXITING_ITERATIONS, cycles, 1, sum);
	return 0;
}
