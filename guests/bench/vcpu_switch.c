/* Processor hand-off: two processors in their own address spaces take turns through a shared word, each spinning with PAUSE (2 processors) */
#include "kernel.h"
#include "paging.h"

#define ITERATIONS 2000u

static volatile u32 turn;
static u32 page_dirs[2][1024] __attribute__((aligned(4096)));

static void address_space(u32 cpu)
{
	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((u32)page_dirs[cpu]);
	write_cr0(read_cr0() | CR0_PG);
}

/* The AP answers every turn the BSP gives it. */
static void ap_turns(u32 id)
{
	address_space(id);
	for (;;) {
		while (turn != 1)
			asm volatile("pause" ::: "memory");
		turn = 0;
	}
}

static u64 hand_offs(u32 iterations)
{
	u64 t0 = bench_rdtsc();
	for (u32 i = 0; i < iterations; i++) {
		turn = 1;
		while (turn != 0)
			asm volatile("pause" ::: "memory");
	}
	return bench_rdtsc() - t0;
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	bench_check(madt_processors() >= 2, "the machine has a second processor (-smp 2)");
	/* The same 1:1 map of the first 8 MiB twice: two CR3 values, as two processes. */
	for (u32 s = 0; s < 2; s++)
		for (u32 i = 0; i < 1024; i++)
			page_dirs[s][i] = (i << 22) | PTE_P | PTE_RW | PTE_PS;
	asm volatile("sti");
	bench_check(smp_boot_aps(2, ap_turns) == 1, "the AP started");
	address_space(0);
	hand_offs(WARMUP(ITERATIONS));
	u64 cycles = BENCH_BEST_OF_TRIALS(hand_offs(ITERATIONS));
	/* Each hand-off is two turns: there and back. */
	bench_report("vcpu_switch", WARMUP(ITERATIONS), 2 * ITERATIONS, cycles, 0, 0);
	return 0;
}
