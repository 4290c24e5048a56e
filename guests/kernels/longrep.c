/* Long REP INSB and REP MOVSB while the PIT ticks: interrupts land inside, data correct */
/* A `rep insb` of many MiB from a port and a `rep movsb` over tens or hundreds of MiB must
 * be interruptible, as on the CPU (an interrupt lands between iterations and the
 * instruction resumes with ECX/ESI/EDI where it stopped): the monitor emulates REP string
 * I/O in bounded batches per exit and resumes, so timer interrupts arrive during the
 * operation, and the data must come out right.
 *
 * Command line: insb-mib=N and movsb-mib=N set the sizes (8 and 32 by default, what the
 * suite runs side by side with QEMU); `console` also serves the console during each
 * instruction: COM1's receive interrupt (IRQ 4) is unmasked, the first timer tick inside
 * the instruction prints "<test>: inside the instruction, type a line", and every byte
 * received is echoed by the interrupt handler, there and then, while the instruction is
 * still under way. A check then says whether input arrived mid-instruction. Needs
 * input: tests/tests/longrep.rs types it (at hundreds of MiB); the suite runs without. */
#include "guest.h"

#define MiB (1024u * 1024u)
/* rep insb destination, and rep movsb source and destination: above the kernel. */
#define INS_DST (16u * MiB)
#define MOVS_SRC (16u * MiB)
#define DEFAULT_INS_MIB 8u
#define DEFAULT_MOVS_MIB 32u
/* What a 32-bit guest can address below the PC's MMIO hole, with the kernel below. */
#define MAX_MIB 1024u
#define PIC1_DATA 0x21
#define COM1_IRQ 4
#define UART_RBR SERIAL_PORT
#define UART_IER (SERIAL_PORT + 1)
#define UART_MCR (SERIAL_PORT + 4)
#define UART_LSR (SERIAL_PORT + 5)
#define IER_RDA 0x01
#define MCR_DTR_RTS_OUT2 0x0b
#define LSR_DATA_READY 0x01
/* The copy is repeated until what it waits for landed inside: at most this long. */
#define MOVS_MAX_TICKS 20000u
#define MOVS_MAX_ROUNDS 2000u

extern char longrep_insb[], longrep_movsb[];

/* Ticks whose interrupted EIP was the string instruction, mid-way through it. */
static volatile u32 ticks_inside;
static volatile u32 rep_start, rep_count;
/* Console mode: the test under way, whether it asked for input, what came in. */
static bool console;
static const char *volatile current;
static volatile bool prompted;
static volatile u32 rx_bytes, rx_inside, rx_lines;

static bool inside(const struct frame *f)
{
	return f->eip == rep_start && f->ecx != 0 && f->ecx != rep_count;
}

static void tick(struct frame *f)
{
	pit_ticks++;
	if (inside(f)) {
		ticks_inside++;
		if (console && !prompted) {
			prompted = true;
			printf("%s: inside the instruction, type a line\n", current);
		}
	}
	pic_eoi(0);
}

/* Echoes every byte COM1 holds, from inside the interrupted instruction. */
static void com1_rx(struct frame *f)
{
	while (inb(UART_LSR) & LSR_DATA_READY) {
		char c = (char)inb(UART_RBR);
		if (c == '\r')
			c = '\n';
		putchar(c);
		rx_bytes++;
		rx_lines += c == '\n';
		if (inside(f))
			rx_inside++;
	}
	pic_eoi(COM1_IRQ);
}

/* The value of `key=N` on the command line, or `dflt`. */
static u32 cmdline_value(const char *key, u32 dflt)
{
	const char *c = cmdline();
	unsigned long n = strlen(key);
	for (; *c; c++) {
		if ((c == cmdline() || c[-1] == ' ') && !strncmp(c, key, n) && c[n] == '=') {
			u32 v = 0;
			for (c += n + 1; *c >= '0' && *c <= '9' && v <= MAX_MIB; c++)
				v = v * 10 + (u32)(*c - '0');
			return v;
		}
	}
	return dflt;
}

static void begin(const char *name)
{
	report_prefix_push(name);
	current = name;
	prompted = false;
	ticks_inside = 0;
	rx_bytes = rx_inside = rx_lines = 0;
}

/* Console mode's check, once the instruction is over. */
static void console_report(void)
{
	if (!console)
		return;
	printf("  console: %u bytes received, %u of them mid-instruction\n", rx_bytes, rx_inside);
	report(rx_inside > 0 && rx_lines > 0,
	       "console input arrived during the instruction and was echoed");
}

static u32 pattern(u32 i) { return i * 2654435761u ^ (i >> 7); }

static void insb_test(u32 len)
{
	begin("rep insb");
	u8 imr = inb(PIC1_DATA);
	u32 before = pit_ticks;
	rep_start = (u32)longrep_insb;
	rep_count = len;
	u32 dst = INS_DST, n = len;
	sti();
	asm volatile(".globl longrep_insb\nlongrep_insb: rep insb"
		     : "+D"(dst), "+c"(n)
		     : "d"(PIC1_DATA)
		     : "memory");
	cli();
	printf("  %u MiB from port 0x21: %u ticks, %u of them inside the instruction\n",
	       len / MiB, pit_ticks - before, ticks_inside);
	report(n == 0 && dst == INS_DST + len, "ECX ran down to 0 and EDI advanced by %u MiB",
	       len / MiB);
	const u8 *p = (const u8 *)INS_DST;
	u32 bad = 0;
	for (u32 i = 0; i < len; i++)
		bad += p[i] != imr;
	if (bad)
		printf("  %u bytes are not the PIC mask %x\n", bad, imr);
	report(bad == 0, "every byte is the PIC mask read before");
	report(ticks_inside > 0, "timer interrupts arrived during the instruction");
	console_report();
	report_prefix_pop();
}

static void movsb_test(u32 len)
{
	begin("rep movsb");
	u32 movs_dst = MOVS_SRC + len;
	u32 *src = (u32 *)MOVS_SRC, *dst = (u32 *)movs_dst;
	for (u32 i = 0; i < len / 4; i++) {
		src[i] = pattern(i);
		dst[i] = 0;
	}
	u32 before = pit_ticks;
	rep_start = (u32)longrep_movsb;
	rep_count = len;
	/* The copy takes milliseconds where it runs natively: repeat it (the data stays the
	 * same) until a tick, and in console mode a typed byte, has landed inside, a bounded
	 * number of times. */
	u32 rounds = 0, ok_regs = 1;
	while (rounds == 0 || ((ticks_inside == 0 || (console && rx_inside == 0)) &&
			       rounds < MOVS_MAX_ROUNDS && pit_ticks - before < MOVS_MAX_TICKS)) {
		u32 s = MOVS_SRC, d = movs_dst, n = len;
		sti();
		asm volatile(".globl longrep_movsb\nlongrep_movsb: rep movsb"
			     : "+S"(s), "+D"(d), "+c"(n)
			     :
			     : "memory");
		cli();
		ok_regs &= n == 0 && s == MOVS_SRC + len && d == movs_dst + len;
		rounds++;
	}
	printf("  %u MiB copied %u times: %u ticks, %u of them inside the instruction\n",
	       len / MiB, rounds, pit_ticks - before, ticks_inside);
	report(ok_regs, "ECX ran down to 0, ESI and EDI advanced by %u MiB", len / MiB);
	u32 bad = 0;
	for (u32 i = 0; i < len / 4; i++)
		bad += dst[i] != pattern(i);
	if (bad)
		printf("  %u words differ from the source\n", bad);
	report(bad == 0, "the copy equals the source");
	report(ticks_inside > 0, "timer interrupts arrived during the instruction");
	console_report();
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	const u32 *info = mbi;
	u32 ins_mib = cmdline_value("insb-mib", DEFAULT_INS_MIB);
	u32 movs_mib = cmdline_value("movsb-mib", DEFAULT_MOVS_MIB);
	console = cmdline_has("console");
	if (!ins_mib || !movs_mib || ins_mib > MAX_MIB || movs_mib > MAX_MIB) {
		report(false, "insb-mib=%u movsb-mib=%u: sizes from 1 to %u MiB", ins_mib,
		       movs_mib, MAX_MIB);
		return report_summary();
	}
	u32 ins_len = ins_mib * MiB, movs_len = movs_mib * MiB;
	/* RAM used up to here; mem_upper: KiB above 1 MiB. */
	u32 top = INS_DST + ins_len;
	if (MOVS_SRC + 2 * movs_len > top)
		top = MOVS_SRC + 2 * movs_len;
	if (!info || !(info[0] & 1) || info[2] < top / 1024) {
		report_skip("needs %u MiB of RAM", top / MiB + 1);
		return report_summary();
	}
	handle_exception(IRQ_BASE, tick);
	if (console) {
		handle_exception(IRQ_BASE + COM1_IRQ, com1_rx);
		outb(MCR_DTR_RTS_OUT2, UART_MCR);
		outb(IER_RDA, UART_IER);
		pic_unmask(COM1_IRQ);
	}
	pit_start(1000);
	insb_test(ins_len);
	movsb_test(movs_len);
	pit_stop();
	if (console) {
		pic_mask(COM1_IRQ);
		outb(0, UART_IER);
	}
	return report_summary();
}
