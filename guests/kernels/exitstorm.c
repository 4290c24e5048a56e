/* Exit storm: port accesses in a tight loop, with COM1 polled between them and input echoed */
/* Every iteration makes three exits: an OUT and an IN to a port no device claims (on the
 * monitor and on QEMU's pc machine) and a read of COM1's line status; with interrupts
 * disabled, polling is the only way console input is seen. Under the monitor each access
 * leaves the guest (through the gate in translate mode), so the guest exits millions of
 * times while the console keeps being served; a progress line every million exits shows
 * it. It never ends by itself: the monitor's stop request (the control socket's stop)
 * ends it from outside, and a line "exit" on the console ends it with its checks (host
 * status 1). Needs input: not in tests.cfg (tests/tests/exit_storm.rs drives it). */
#include "guest.h"

/* No device decodes it: every access is an unclaimed port access, still one exit. */
#define STORM_PORT 0x2f0
#define UART_RBR SERIAL_PORT
#define UART_LSR (SERIAL_PORT + 5)
#define LSR_DATA_READY 0x01
#define MILLION 1000000u

static char line[64];
static int line_len;

/* Echoes one received byte; true when it completes the line "exit". */
static bool take(char c, u32 *lines)
{
	if (c == '\r')
		c = '\n';
	putchar(c);
	if (c != '\n') {
		if (line_len < (int)sizeof(line) - 1)
			line[line_len++] = c;
		return false;
	}
	line[line_len] = '\0';
	line_len = 0;
	(*lines)++;
	return !strncmp(line, "exit", 5);
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	cli();
	puts("storm: started\n");
	/* Exits counted as millions plus the rest: a u32 alone wraps after an hour or so. */
	u32 millions = 0, exits = 0, lines = 0, stray = 0;
	bool done = false;
	while (!done) {
		outb((u8)exits, STORM_PORT);
		/* A port nothing decodes reads as all ones, as the ISA bus floats. */
		stray += inb(STORM_PORT) != 0xff;
		u8 lsr = inb(UART_LSR);
		exits += 3;
		if (lsr & LSR_DATA_READY) {
			done = take((char)inb(UART_RBR), &lines);
			exits++;
		}
		if (exits >= MILLION) {
			exits -= MILLION;
			millions++;
			printf("storm: %u million exits, %u lines echoed\n", millions, lines);
		}
	}
	report(millions >= 1, "the storm made %u million exits", millions);
	report(lines >= 2, "%u console lines were echoed during the storm", lines);
	report(stray == 0, "port 0x%x read all ones every time (%u reads did not)", STORM_PORT,
	       stray);
	return report_summary();
}
