/* Local APIC: registers, priorities and EOI order, self-IPIs, timer rates, virtual wire */
/* The local APIC as firmware leaves it and as an OS programs it: identification, task and
 * processor priority, software enable, the error status register, self-IPIs through the
 * ICR, the order of nested vectors and their EOIs, the LVT timer's one-shot and periodic
 * rates (measured against the TSC) under several divide values, timer masking, LINT0 as
 * the 8259's virtual wire, and the global disable in IA32_APIC_BASE (last: it cannot be
 * undone before a reset). */
#include "guest.h"

#define V_IPI 0x50
#define V_LOW 0x41
#define V_MID 0x62
#define V_HIGH 0x81
#define V_TPR 0x45
#define V_TIMER 0x60
/* The timer measurements keep the shortest of a few runs: a host or emulator delay only
 * ever lengthens one. */
#define RUNS 5

static volatile u32 ipi_count, ipi_isr_seen, ipi_ppr;
static volatile u32 timer_count;
static volatile u64 timer_tsc[8];
static char order[64];
static volatile int order_len;

static void note(const char *s)
{
	while (*s && order_len < (int)sizeof(order) - 1)
		order[order_len++] = *s++;
	order[order_len] = '\0';
}

static void ipi_handler(struct frame *f)
{
	(void)f;
	ipi_count++;
	ipi_isr_seen = lapic_vector_set(LAPIC_ISR, V_IPI);
	ipi_ppr = lapic_read(LAPIC_PPR);
	lapic_eoi();
}

static volatile u32 nested_isr_both, mid_ppr;

static void low_handler(struct frame *f)
{
	(void)f;
	note("41 ");
	lapic_eoi();
}

static void high_handler(struct frame *f)
{
	(void)f;
	note("81 ");
	nested_isr_both = lapic_vector_set(LAPIC_ISR, V_HIGH) && lapic_vector_set(LAPIC_ISR, V_MID);
	lapic_eoi();
}

static void mid_handler(struct frame *f)
{
	(void)f;
	note("62 ");
	mid_ppr = lapic_read(LAPIC_PPR);
	lapic_self_ipi(V_HIGH);
	sti(); /* 0x81 is of a higher class and nests; 0x41 waits */
	asm volatile("nop");
	cli();
	note("/62 ");
	lapic_eoi();
}

static volatile u32 tpr_count;

static void tpr_handler(struct frame *f)
{
	(void)f;
	tpr_count++;
	lapic_eoi();
}

static void timer_handler(struct frame *f)
{
	(void)f;
	u32 n = timer_count;
	if (n < 8)
		timer_tsc[n] = rdtsc();
	timer_count = n + 1;
	lapic_eoi();
}

static void identification(void)
{
	report_prefix_push("identification");
	report(cpuid(1).d & CPUID_1_EDX_APIC, "CPUID.1:EDX reports an APIC");
	u64 base = rdmsr(MSR_APIC_BASE);
	report((base & 0xfffff900u) == (LAPIC_BASE | APIC_BASE_ENABLE | 0x100),
	       "IA32_APIC_BASE: page at 0xfee00000, enabled, BSP");
	report(lapic_read(LAPIC_ID) >> 24 == 0, "APIC ID 0");
	u32 ver = lapic_read(LAPIC_VERSION);
	report_info("version register %x", ver);
	report((ver & 0xff) >= 0x10 && ((ver >> 16) & 0xff) == 5,
	       "integrated APIC (version 0x1X) with six LVT entries");
	u32 lint0 = lapic_read(LAPIC_LVT_LINT0), lint1 = lapic_read(LAPIC_LVT_LINT1);
	report_info("SVR %x LINT0 %x LINT1 %x", lapic_read(LAPIC_SVR), lint0, lint1);
	report(lapic_read(LAPIC_SVR) & APIC_SVR_ENABLE, "software-enabled by firmware");
	report((lint0 & (APIC_LVT_MASKED | 0x700)) == 0x700, "LINT0 unmasked in ExtINT mode (virtual wire)");
	report((lint1 & 0x700) == 0x400, "LINT1 delivers NMI");
	report(lapic_read(LAPIC_DFR) == 0xffffffff, "DFR: flat model");
	report_prefix_pop();
}

static void priority_registers(void)
{
	report_prefix_push("priority registers");
	lapic_write(LAPIC_TPR, 0x35);
	report(lapic_read(LAPIC_TPR) == 0x35, "TPR reads back");
	report(lapic_read(LAPIC_PPR) == 0x35, "PPR is the TPR with nothing in service");
	lapic_write(LAPIC_TPR, 0);
	report(lapic_read(LAPIC_PPR) == 0, "PPR follows TPR down to 0");
	lapic_write(LAPIC_LDR, 0x01000000);
	report(lapic_read(LAPIC_LDR) == 0x01000000, "LDR reads back");
	lapic_write(LAPIC_LDR, 0);
	report_prefix_pop();
}

static void error_status(void)
{
	report_prefix_push("ESR");
	lapic_write(LAPIC_ESR, 0);
	report(lapic_read(LAPIC_ESR) == 0, "no errors after firmware");
	(void)lapic_read(0x3f0); /* a reserved register */
	lapic_write(LAPIC_ESR, 0);
	report(lapic_read(LAPIC_ESR) == 0x80, "illegal register address logged");
	if (cmdline_has("quirk-apic-esr-not-cleared")) {
		report_skip("ESR write clears the logged errors: skipped by quirk-apic-esr-not-cleared");
	} else {
		lapic_write(LAPIC_ESR, 0);
		report(lapic_read(LAPIC_ESR) == 0, "ESR write clears the logged errors");
	}
	report_prefix_pop();
}

static void self_ipi(void)
{
	report_prefix_push("self-IPI");
	handle_exception(V_IPI, ipi_handler);
	cli();
	ipi_count = 0;
	lapic_self_ipi(V_IPI);
	u32 icr = lapic_read(LAPIC_ICR_LOW);
	report(!(icr & APIC_DELIVERY_PENDING), "ICR delivery status reads idle after the send");
	report((icr & 0xff) == V_IPI && ((icr >> 18) & 3) == 1, "ICR reads back vector and self shorthand");
	report(lapic_vector_set(LAPIC_IRR, V_IPI) && ipi_count == 0, "held in IRR while IF=0");
	sti();
	asm volatile("nop");
	cli();
	report(ipi_count == 1, "delivered once IF=1");
	report(ipi_isr_seen, "in service (ISR) during its handler");
	report(ipi_ppr == (V_IPI & 0xf0), "PPR is the in-service class during its handler");
	report(!lapic_vector_set(LAPIC_ISR, V_IPI) && !lapic_vector_set(LAPIC_IRR, V_IPI),
	       "EOI retires it");
	report(!lapic_vector_set(LAPIC_TMR, V_IPI), "edge-triggered (TMR clear)");

	/* The other destination forms that reach this CPU. */
	ipi_count = 0;
	lapic_write(LAPIC_ICR_HIGH, 0);
	lapic_write(LAPIC_ICR_LOW, V_IPI); /* physical destination 0 */
	lapic_write(LAPIC_ICR_LOW, (2u << 18) | V_IPI); /* all including self */
	sti();
	asm volatile("nop");
	cli();
	report(ipi_count == 1, "physical ID 0 and all-including-self merge in IRR");
	ipi_count = 0;
	lapic_write(LAPIC_ICR_HIGH, 1u << 24);
	lapic_write(LAPIC_ICR_LOW, V_IPI); /* physical destination 1: absent */
	lapic_write(LAPIC_ICR_LOW, (3u << 18) | V_IPI); /* all excluding self */
	lapic_write(LAPIC_ICR_LOW, (3u << 18) | 0x4500); /* INIT to the others */
	lapic_write(LAPIC_ICR_LOW, (3u << 18) | 0x4608); /* start-up to the others */
	lapic_write(LAPIC_ICR_HIGH, 0);
	sti();
	asm volatile("nop");
	cli();
	report(ipi_count == 0, "absent CPUs: nothing arrives here, INIT and SIPI are ignored");
	handle_exception(V_IPI, NULL);
	report_prefix_pop();
}

static void priority_and_eoi_order(void)
{
	report_prefix_push("priority");
	handle_exception(V_LOW, low_handler);
	handle_exception(V_MID, mid_handler);
	handle_exception(V_HIGH, high_handler);
	cli();
	order_len = 0;
	order[0] = '\0';
	lapic_self_ipi(V_LOW);
	lapic_self_ipi(V_MID);
	sti();
	asm volatile("nop");
	cli();
	report(!strncmp(order, "62 81 /62 41 ", 64), "highest first, a higher class nests, a lower one waits (%s)",
	       order);
	report(mid_ppr == 0x60, "PPR is 0x60 while 0x62 is in service");
	report(nested_isr_both, "nested: both vectors in ISR");
	report(lapic_read(LAPIC_ISR + 0x20) == 0 && lapic_read(LAPIC_ISR + 0x30) == 0 &&
		       lapic_read(LAPIC_ISR + 0x40) == 0,
	       "every EOI retired its vector");

	handle_exception(V_TPR, tpr_handler);
	tpr_count = 0;
	lapic_write(LAPIC_TPR, 0x50);
	lapic_self_ipi(V_TPR);
	sti();
	asm volatile("nop");
	cli();
	report(tpr_count == 0 && lapic_vector_set(LAPIC_IRR, V_TPR), "TPR 0x50 holds back vector 0x45");
	lapic_write(LAPIC_TPR, 0x30);
	sti();
	asm volatile("nop");
	cli();
	report(tpr_count == 1, "TPR 0x30 lets it through (class 4 above 3)");
	lapic_write(LAPIC_TPR, 0);

	/* Software disable holds a pending request until the APIC is enabled again. */
	tpr_count = 0;
	lapic_self_ipi(V_TPR);
	lapic_write(LAPIC_SVR, 0xff);
	report(!(lapic_read(LAPIC_SVR) & APIC_SVR_ENABLE), "SVR software disable");
	sti();
	asm volatile("nop");
	cli();
	report(tpr_count == 0, "nothing delivered while software-disabled");
	lapic_write(LAPIC_SVR, 0x1ff);
	lapic_write(LAPIC_LVT_LINT0, 0x700); /* the disable masked the LVT */
	sti();
	asm volatile("nop");
	cli();
	report(lapic_read(LAPIC_SVR) == 0x1ff && tpr_count == 1, "re-enabled: the held request is delivered");
	report_prefix_pop();
}

/* TSC ticks from programming a one-shot of `count` at divide `dcr` to its interrupt. */
static u64 one_shot_tsc(u32 dcr, u32 count)
{
	u64 best = ~0ull;
	for (int run = 0; run < RUNS; run++) {
		cli();
		timer_count = 0;
		lapic_write(LAPIC_TIMER_DIVIDE, dcr);
		lapic_write(LAPIC_LVT_TIMER, V_TIMER);
		u64 start = rdtsc();
		lapic_write(LAPIC_TIMER_INITIAL, count);
		while (!timer_count) {
			sti();
			asm volatile("hlt");
			cli();
		}
		u64 t = timer_tsc[0] - start;
		if (t < best)
			best = t;
	}
	return best;
}

/* a / b within +-pct percent of `expect` (all ratios of TSC times). */
static bool ratio_near(u64 a, u64 b, u32 expect, u32 pct)
{
	return a * 100 >= b * expect * (100 - pct) && a * 100 <= b * expect * (100 + pct);
}

static void timer(void)
{
	report_prefix_push("timer");
	handle_exception(V_TIMER, timer_handler);
	/* 20 ms at QEMU's 1 GHz APIC bus clock; the checks only compare rates. */
	const u32 count = 20000000;
	cli();
	lapic_write(LAPIC_TIMER_DIVIDE, 0xb);
	lapic_write(LAPIC_LVT_TIMER, APIC_LVT_MASKED | V_TIMER);
	lapic_write(LAPIC_TIMER_INITIAL, count);
	u32 c1 = lapic_read(LAPIC_TIMER_CURRENT);
	u32 c2 = lapic_read(LAPIC_TIMER_CURRENT);
	report(c1 <= count && c2 < c1, "current count runs down from the initial count");
	lapic_write(LAPIC_TIMER_INITIAL, 0);
	report(lapic_read(LAPIC_TIMER_CURRENT) == 0, "initial count 0 stops it");
	report(lapic_read(LAPIC_TIMER_DIVIDE) == 0xb, "divide configuration reads back");

	u64 by1 = one_shot_tsc(0xb, count);
	u64 by2 = one_shot_tsc(0x0, count / 2);
	u64 by16 = one_shot_tsc(0x3, count / 16);
	report_info("one-shot of 20M bus clocks: %u / %u / %u KiTSC at divide 1 / 2 / 16", (u32)(by1 >> 10),
		    (u32)(by2 >> 10), (u32)(by16 >> 10));
	report(timer_count == 1, "one-shot fires once");
	report(ratio_near(by2, by1, 1, 25), "divide by 2: half the count takes as long");
	report(ratio_near(by16, by1, 1, 25), "divide by 16: a sixteenth of the count takes as long");

	/* Periodic: seven periods of the one-shot's length, measured between interrupts. One
	 * late interrupt lengthens one period and shortens the next: keep the median. */
	timer_count = 0;
	lapic_write(LAPIC_TIMER_DIVIDE, 0x0);
	lapic_write(LAPIC_LVT_TIMER, APIC_TIMER_PERIODIC | V_TIMER);
	lapic_write(LAPIC_TIMER_INITIAL, count / 2);
	while (timer_count < 8) {
		sti();
		asm volatile("hlt");
		cli();
	}
	lapic_write(LAPIC_TIMER_INITIAL, 0);
	u64 periods[7];
	for (int i = 0; i < 7; i++) {
		u64 p = timer_tsc[i + 1] - timer_tsc[i];
		int j = i;
		for (; j > 0 && periods[j - 1] > p; j--)
			periods[j] = periods[j - 1];
		periods[j] = p;
	}
	u64 median = periods[3];
	report_info("median period: %u KiTSC", (u32)(median >> 10));
	report(ratio_near(median, by2, 1, 25), "periodic: a period takes as long as the one-shot");
	u32 before = timer_count;
	sti();
	for (u64 t0 = rdtsc(); rdtsc() - t0 < 3 * by2;)
		asm volatile("pause");
	cli();
	report(timer_count == before, "writing initial count 0 stops the periodic timer");

	/* Masked: the count runs out without an interrupt. */
	timer_count = 0;
	lapic_write(LAPIC_TIMER_DIVIDE, 0xb);
	lapic_write(LAPIC_LVT_TIMER, APIC_LVT_MASKED | V_TIMER);
	lapic_write(LAPIC_TIMER_INITIAL, 1000000);
	sti();
	while (lapic_read(LAPIC_TIMER_CURRENT) != 0)
		asm volatile("pause");
	cli();
	report(timer_count == 0, "masked: it runs out without an interrupt");
	lapic_write(LAPIC_LVT_TIMER, V_TIMER);
	sti();
	asm volatile("nop");
	cli();
	report(timer_count == 0, "unmasking after it ran out raises nothing");
	lapic_write(LAPIC_LVT_TIMER, APIC_LVT_MASKED | V_TIMER);
	report_prefix_pop();
}

static void virtual_wire(void)
{
	report_prefix_push("LINT0");
	/* The 8259's IRQ 0 reaches the CPU through LINT0 only while it is unmasked. */
	u32 ticks = pit_ticks;
	lapic_write(LAPIC_LVT_LINT0, APIC_LVT_MASKED | 0x700);
	pit_start(1000);
	timer_count = 0;
	lapic_write(LAPIC_TIMER_DIVIDE, 0xb);
	lapic_write(LAPIC_LVT_TIMER, V_TIMER);
	lapic_write(LAPIC_TIMER_INITIAL, 20000000);
	while (!timer_count) {
		sti();
		asm volatile("hlt");
		cli();
	}
	report(pit_ticks == ticks, "masked: no 8259 interrupt in 20 ms of a 1 kHz PIT");
	lapic_write(LAPIC_LVT_LINT0, 0x700);
	watchdog_arm(1000, "PIT ticks through LINT0");
	while (pit_ticks - ticks < 3) {
		sti();
		asm volatile("hlt");
		cli();
	}
	watchdog_disarm();
	report(pit_ticks - ticks >= 3, "unmasked ExtINT: PIT ticks arrive");
	pit_stop();
	report_prefix_pop();
}

static void global_disable(void)
{
	report_prefix_push("global disable");
	u64 base = rdmsr(MSR_APIC_BASE);
	wrmsr(MSR_APIC_BASE, base & ~(u64)APIC_BASE_ENABLE);
	report(!(rdmsr(MSR_APIC_BASE) & APIC_BASE_ENABLE), "IA32_APIC_BASE.EN clears");
	report(!(cpuid(1).d & CPUID_1_EDX_APIC), "CPUID.1:EDX no longer reports an APIC");
	u32 ticks = pit_ticks;
	pit_start(1000);
	watchdog_arm(1000, "PIT ticks with the APIC disabled");
	while (pit_ticks - ticks < 3) {
		sti();
		asm volatile("hlt");
		cli();
	}
	watchdog_disarm();
	pit_stop();
	report(pit_ticks - ticks >= 3, "the 8259 reaches the CPU directly");
	wrmsr(MSR_APIC_BASE, base);
	report(!(rdmsr(MSR_APIC_BASE) & APIC_BASE_ENABLE), "the P6 APIC stays disabled until reset");
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	apic_vectors_install();
	report_prefix_push("lapic");
	identification();
	priority_registers();
	error_status();
	self_ipi();
	priority_and_eoi_order();
	timer();
	virtual_wire();
	global_disable();
	report_prefix_pop();
	return report_summary();
}
