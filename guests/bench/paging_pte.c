/* PTE update: the kernel points a live PTE at the other of two frames, INVLPGs it and reads the page */
#include "kernel.h"
#include "paging.h"

#define WINDOW 0x00800000u /* PDE 2, PTE 0: the remapped page */

static u32 page_dir[1024] __attribute__((aligned(4096)));
static u32 window_table[1024] __attribute__((aligned(4096)));
static u32 frames[2][1024] __attribute__((aligned(4096)));

/* Each step maps frame (i & 1) and reads its first word, which holds 1 or 2: the sum
 * shows every read saw the frame just mapped. */
static u64 pte_updates(u32 iterations, u32 *sum)
{
	volatile u32 *window = (volatile u32 *)WINDOW;
	u32 entries[2] = { (u32)frames[0] | PTE_P | PTE_RW, (u32)frames[1] | PTE_P | PTE_RW };
	u32 total = 0;
	u64 t0 = bench_rdtsc();
	for (u32 i = 0; i < iterations; i++) {
		*(volatile u32 *)&window_table[0] = entries[i & 1];
		invlpg(window);
		total += *window;
	}
	u64 cycles = bench_rdtsc() - t0;
	*sum = total;
	return cycles;
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	frames[0][0] = 1;
	frames[1][0] = 2;
	page_dir[0] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
	page_dir[1] = 0x400000 | PTE_P | PTE_RW | PTE_PS;
	page_dir[pde_index(WINDOW)] = (u32)window_table | PTE_P | PTE_RW;
	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((u32)page_dir);
	write_cr0(read_cr0() | CR0_PG | CR0_WP);

	u32 sum = 0;
	pte_updates(WARMUP(EXITING_ITERATIONS), &sum);
	u64 cycles = BENCH_BEST_OF_TRIALS(pte_updates(EXITING_ITERATIONS, &sum));
	/* Even steps read 1, odd steps 2. */
	bench_check(sum == EXITING_ITERATIONS / 2 * 3, "every read saw the frame just mapped");
	bench_report("paging_pte", WARMUP(EXITING_ITERATIONS), EXITING_ITERATIONS, cycles, 1,
		     sum);
	return 0;
}
