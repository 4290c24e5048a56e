/* IPI round trip: the BSP sends a fixed IPI to the AP, whose handler answers with one to the BSP (2 processors) */
#include "kernel.h"

#define PING_VECTOR 0x61
#define PONG_VECTOR 0x62
#define ITERATIONS 2000u

static volatile u32 pings, pongs;

static void on_ping(struct frame *f)
{
	(void)f;
	pings++;
	lapic_eoi();
	smp_send_ipi(0, PONG_VECTOR);
}

static void on_pong(struct frame *f)
{
	(void)f;
	pongs++;
	lapic_eoi();
}

/* The AP waits for pings with interrupts on. */
static void ap_idle(u32 id)
{
	(void)id;
	for (;;)
		asm volatile("sti; hlt");
}

static u64 round_trips(u32 iterations)
{
	u64 t0 = bench_rdtsc();
	for (u32 i = 0; i < iterations; i++) {
		u32 seen = pongs;
		smp_send_ipi(1, PING_VECTOR);
		bench_check(SMP_WAIT_FOR(pongs != seen), "the AP answered the IPI");
	}
	return bench_rdtsc() - t0;
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	bench_check(madt_processors() >= 2, "the machine has a second processor (-smp 2)");
	apic_vectors_install();
	handle_exception(PING_VECTOR, on_ping);
	handle_exception(PONG_VECTOR, on_pong);
	asm volatile("sti");
	bench_check(smp_boot_aps(2, ap_idle) == 1, "the AP started");
	round_trips(WARMUP(ITERATIONS));
	u64 cycles = BENCH_BEST_OF_TRIALS(round_trips(ITERATIONS));
	bench_check(pings == pongs && pongs == WARMUP(ITERATIONS) + BENCH_TRIALS * ITERATIONS,
		    "every ping was answered once");
	bench_report("ipi_round_trip", WARMUP(ITERATIONS), ITERATIONS, cycles, 0, 0);
	return 0;
}
