/* Console echo over COM1 with its receive interrupt routed through the IOAPIC */
/* Both 8259s and LINT0 are masked, so the only way a byte can arrive is COM1's receive
 * interrupt on IOAPIC pin 4. Every byte received is written back; a line "exit" ends the
 * run through the debug-exit port (host status 1). Needs input: not in tests.cfg (the
 * console integration test drives it). */
#include "guest.h"

#define V_COM1 0x44
#define COM1_PIN 4
#define UART_RBR SERIAL_PORT
#define UART_IER (SERIAL_PORT + 1)
#define UART_MCR (SERIAL_PORT + 4)
#define UART_LSR (SERIAL_PORT + 5)
#define IER_RDA 0x01
#define LSR_DATA_READY 0x01

static char line[64];
static volatile int line_len;
static volatile bool done;
static volatile u32 interrupts;

static void com1_handler(struct frame *f)
{
	(void)f;
	interrupts++;
	while (inb(UART_LSR) & LSR_DATA_READY) {
		char c = (char)inb(UART_RBR);
		if (c == '\r')
			c = '\n';
		putchar(c);
		if (c == '\n') {
			line[line_len] = '\0';
			if (!strncmp(line, "exit", 5))
				done = true;
			line_len = 0;
		} else if (line_len < (int)sizeof(line) - 1) {
			line[line_len++] = c;
		}
	}
	lapic_eoi();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	apic_vectors_install();
	pic_mask_all();
	lapic_write(LAPIC_LVT_LINT0, APIC_LVT_MASKED | 0x700);
	handle_exception(V_COM1, com1_handler);
	ioapic_route(COM1_PIN, V_COM1, 0);
	outb(0x0b, UART_MCR); /* DTR, RTS, OUT2 */
	outb(IER_RDA, UART_IER);
	puts("echo: ready\n");
	while (!done) {
		sti();
		asm volatile("hlt");
		cli();
	}
	outb(0, UART_IER);
	printf("echo: %u receive interrupts\n", interrupts);
	return 0;
}
