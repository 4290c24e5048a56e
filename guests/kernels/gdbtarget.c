/* The gdb stub's target: a counter a debugger watches, and a gate it opens by writing memory */
#include "guest.h"

/* What the debugger reads, watches and writes (by symbol: the kernels carry no debug info). */
volatile u32 ticks;
volatile u32 gate = 1;
volatile u32 spins;
/* Written with the value it already holds: an access watchpoint still stops there. */
volatile u32 level = 5;

/* A breakpoint target that is its own function. */
__attribute__((noinline)) void tick(void)
{
	ticks = ticks + 1;
}

/* Reached only when a debugger wrote 42 into gate. */
__attribute__((noinline)) void gate_opened(void)
{
	printf("gdbtarget: the gate was opened\n");
}

int main(u32 magic, const void *mbi)
{
	for (int i = 0; i < 3; i++)
		tick();
	level = 5;
	/* A debugger that wrote 7 interrupts this loop (it makes no exit) and sets gate back. */
	while (gate == 7)
		spins = spins + 1;
	printf("gdbtarget: ticks %u, gate %u\n", ticks, gate);
	if (gate == 42) {
		gate_opened();
		exit(21);
	}
	exit(20);
}
