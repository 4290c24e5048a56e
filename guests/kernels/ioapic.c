/* IOAPIC: identification, redirection table, PIT and COM1 routed with masking, remote IRR */
/* The IOAPIC as an OS in APIC mode uses it, with both 8259s masked: the identification
 * registers, read-back of the redirection table, the PIT's IRQ 0 arriving on pin 2 (the
 * interrupt source override of the MP table and MADT), COM1's transmitter-empty interrupt
 * on pin 4, masking at the pin, and a level-triggered entry whose remote IRR stays set
 * until the local APIC's EOI. */
#include "guest.h"

#define V_PIT 0x70
#define V_CLOCK 0x71
#define V_COM1 0x74
#define V_COM1_LEVEL 0x75
#define PIT_PIN 2
#define COM1_PIN 4
#define UART_IER (SERIAL_PORT + 1)
#define UART_IIR (SERIAL_PORT + 2)
#define UART_MCR (SERIAL_PORT + 4)
#define IER_THRE 0x02
#define MCR_OUT2 0x08

static volatile u32 pit_count, clock_count, com1_count;
static volatile u32 com1_iir, level_irr_in_handler, level_irr_after_eoi, level_tmr;

static void pit_handler(struct frame *f)
{
	(void)f;
	pit_count++;
	lapic_eoi();
}

static void clock_handler(struct frame *f)
{
	(void)f;
	clock_count++;
	lapic_eoi();
}

static void com1_handler(struct frame *f)
{
	(void)f;
	com1_count++;
	com1_iir = inb(UART_IIR); /* reading IIR ends the transmitter-empty interrupt */
	lapic_eoi();
}

static void com1_level_handler(struct frame *f)
{
	(void)f;
	com1_count++;
	level_irr_in_handler = (u32)ioapic_entry(COM1_PIN) & IOAPIC_REMOTE_IRR;
	level_tmr = lapic_vector_set(LAPIC_TMR, V_COM1_LEVEL);
	com1_iir = inb(UART_IIR);
	lapic_eoi();
	level_irr_after_eoi = (u32)ioapic_entry(COM1_PIN) & IOAPIC_REMOTE_IRR;
}

/* Waits (interrupts enabled) for `ms` milliseconds of the local APIC timer: a clock that
 * does not go through the IOAPIC. Its bus clock runs at 1 GHz on both machines. */
static void sleep_ms(u32 ms)
{
	clock_count = 0;
	lapic_write(LAPIC_TIMER_DIVIDE, 0xb);
	lapic_write(LAPIC_LVT_TIMER, V_CLOCK);
	lapic_write(LAPIC_TIMER_INITIAL, ms * 1000000);
	while (!clock_count) {
		sti();
		asm volatile("hlt");
		cli();
	}
}

/* Waits until `*counter` reaches `target`, at most `ms` milliseconds. */
static bool wait_count(volatile u32 *counter, u32 target, u32 ms)
{
	for (u32 i = 0; i < ms && *counter < target; i++)
		sleep_ms(1);
	return *counter >= target;
}

static void identification(void)
{
	report_prefix_push("registers");
	u32 ver = ioapic_read(IOAPIC_VER);
	report_info("version register %x, ID %x", ver, ioapic_read(IOAPIC_ID));
	report((ver & 0xff) == 0x11, "version 0x11");
	report(((ver >> 16) & 0xff) == 23, "24 redirection entries (max index 23)");
	report(((ioapic_read(IOAPIC_ID) >> 24) & 0xf) == 0, "ID 0, as the firmware tables say");
	report(ioapic_read(IOAPIC_ARB) == ioapic_read(IOAPIC_ID), "arbitration ID is the ID");
	*(volatile u32 *)IOAPIC_BASE = IOAPIC_VER;
	report((*(volatile u32 *)IOAPIC_BASE & 0xff) == IOAPIC_VER, "IOREGSEL reads back");
	bool all_masked = true;
	for (int pin = 0; pin < 24; pin++)
		all_masked = all_masked && (ioapic_entry(pin) & IOAPIC_MASKED);
	report(all_masked, "every entry masked after reset");
	u64 entry = 0x5a | IOAPIC_LOWEST_PRIORITY | IOAPIC_LOGICAL | IOAPIC_ACTIVE_LOW | IOAPIC_LEVEL |
		    IOAPIC_MASKED | (3ull << 56);
	ioapic_set_entry(10, entry);
	report(ioapic_entry(10) == entry, "entry 10 reads back (vector, mode, destination, flags)");
	ioapic_set_entry(23, 0x8e | IOAPIC_MASKED);
	report(ioapic_entry(23) == (0x8e | IOAPIC_MASKED), "entry 23 reads back");
	ioapic_set_entry(10, IOAPIC_MASKED);
	ioapic_set_entry(23, IOAPIC_MASKED);
	report_prefix_pop();
}

static void pit_routing(void)
{
	report_prefix_push("PIT on pin 2");
	handle_exception(V_PIT, pit_handler);
	u32 pic_ticks = pit_ticks;
	pit_count = 0;
	ioapic_route(PIT_PIN, V_PIT, 0);
	/* channel 0 at 1 kHz; the 8259 stays masked */
	outb(0x34, 0x43);
	outb((u8)(PIT_HZ / 1000), 0x40);
	outb((u8)((PIT_HZ / 1000) >> 8), 0x40);
	report(wait_count(&pit_count, 5, 500), "IRQ 0 arrives on pin 2 with the 8259 masked");
	report(pit_ticks == pic_ticks, "nothing came through the 8259");
	ioapic_route(PIT_PIN, V_PIT, IOAPIC_MASKED);
	sti(); /* take what the local APIC accepted before the mask */
	asm volatile("nop");
	cli();
	u32 before = pit_count;
	sleep_ms(20);
	report(pit_count == before, "masked pin: no interrupt in 20 ms of a 1 kHz PIT");
	ioapic_route(PIT_PIN, V_PIT, 0);
	report(wait_count(&pit_count, before + 3, 500), "unmasked: interrupts resume");
	ioapic_route(PIT_PIN, V_PIT, IOAPIC_MASKED);
	outb(0x30, 0x43); /* mode 0 without a count: channel 0 stops */
	report(!lapic_vector_set(LAPIC_TMR, V_PIT), "edge-triggered: TMR clear");
	report_prefix_pop();
}

static void com1_routing(void)
{
	report_prefix_push("COM1 on pin 4");
	handle_exception(V_COM1, com1_handler);
	outb(0x0b, UART_MCR); /* DTR, RTS, OUT2 (the ISA interrupt enable) */
	ioapic_route(COM1_PIN, V_COM1, 0);
	com1_count = 0;
	outb(IER_THRE, UART_IER);
	sleep_ms(5);
	outb(0, UART_IER);
	u32 first = com1_count, iir = com1_iir;

	/* An edge while the pin is masked is lost, also after unmasking. */
	ioapic_route(COM1_PIN, V_COM1, IOAPIC_MASKED);
	com1_count = 0;
	outb(IER_THRE, UART_IER);
	sleep_ms(5);
	(void)inb(UART_IIR);
	outb(0, UART_IER);
	ioapic_route(COM1_PIN, V_COM1, 0);
	sleep_ms(5);
	u32 masked = com1_count;

	com1_count = 0;
	outb(IER_THRE, UART_IER);
	sleep_ms(5);
	outb(0, UART_IER);
	u32 again = com1_count;
	ioapic_route(COM1_PIN, V_COM1, IOAPIC_MASKED);

	report(first == 1, "enabling the THRE interrupt raises one interrupt");
	report((iir & 0x0f) == 0x02, "IIR says transmitter empty (%x)", iir);
	report(masked == 0, "an edge on a masked pin is lost");
	report(again == 1, "unmasked again: the next one arrives");
	report_prefix_pop();
}

static void level_triggered(void)
{
	report_prefix_push("level-triggered");
	handle_exception(V_COM1_LEVEL, com1_level_handler);
	ioapic_route(COM1_PIN, V_COM1_LEVEL, IOAPIC_LEVEL);
	com1_count = 0;
	level_irr_in_handler = level_irr_after_eoi = level_tmr = 0;
	outb(IER_THRE, UART_IER);
	sleep_ms(5);
	outb(0, UART_IER);
	u64 entry = ioapic_entry(COM1_PIN);
	ioapic_route(COM1_PIN, V_COM1_LEVEL, IOAPIC_LEVEL | IOAPIC_MASKED);
	report(com1_count == 1, "one interrupt");
	report(level_irr_in_handler, "remote IRR set while the vector is in service");
	report(level_tmr, "the local APIC marks the vector level-triggered (TMR)");
	report(!level_irr_after_eoi, "the local APIC's EOI clears the remote IRR");
	report(!(entry & IOAPIC_REMOTE_IRR), "remote IRR stays clear with the line low");
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	apic_vectors_install();
	report_prefix_push("ioapic");
	pic_mask_all();
	handle_exception(V_CLOCK, clock_handler);
	identification();
	pit_routing();
	com1_routing();
	level_triggered();
	lapic_write(LAPIC_LVT_TIMER, APIC_LVT_MASKED | V_CLOCK);
	report_prefix_pop();
	return report_summary();
}
