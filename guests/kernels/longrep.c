/* Long REP INSB and REP MOVSB while the PIT ticks: interrupts land inside, data correct */
/* A `rep insb` of many MiB from a port and a `rep movsb` over tens of MiB must be
 * interruptible, as on the CPU (an interrupt lands between iterations and the instruction
 * resumes with ECX/ESI/EDI where it stopped): the monitor emulates REP string I/O in
 * bounded batches per exit and resumes, so timer interrupts arrive during the operation,
 * and the data must come out right. */
#include "guest.h"

#define MiB (1024u * 1024u)
/* rep insb destination, and rep movsb source and destination: above the kernel, inside
 * the default 128 MiB of RAM. */
#define INS_DST (16u * MiB)
#define INS_LEN (8u * MiB)
#define MOVS_SRC (16u * MiB)
#define MOVS_DST (64u * MiB)
#define MOVS_LEN (32u * MiB)
#define PIC1_DATA 0x21

extern char longrep_insb[], longrep_movsb[];

/* Ticks whose interrupted EIP was the string instruction, mid-way through it. */
static volatile u32 ticks_inside;
static volatile u32 rep_start, rep_count;

static void tick(struct frame *f)
{
	pit_ticks++;
	if (f->eip == rep_start && f->ecx != 0 && f->ecx != rep_count)
		ticks_inside++;
	pic_eoi(0);
}

static u32 pattern(u32 i) { return i * 2654435761u ^ (i >> 7); }

static void insb_test(void)
{
	report_prefix_push("rep insb");
	u8 imr = inb(PIC1_DATA);
	u32 before = pit_ticks;
	ticks_inside = 0;
	rep_start = (u32)longrep_insb;
	rep_count = INS_LEN;
	u32 dst = INS_DST, n = INS_LEN;
	sti();
	asm volatile(".globl longrep_insb\nlongrep_insb: rep insb"
		     : "+D"(dst), "+c"(n)
		     : "d"(PIC1_DATA)
		     : "memory");
	cli();
	printf("  %u MiB from port 0x21: %u ticks, %u of them inside the instruction\n",
	       INS_LEN / MiB, pit_ticks - before, ticks_inside);
	report(n == 0 && dst == INS_DST + INS_LEN, "ECX ran down to 0 and EDI advanced by %u MiB",
	       INS_LEN / MiB);
	const u8 *p = (const u8 *)INS_DST;
	u32 bad = 0;
	for (u32 i = 0; i < INS_LEN; i++)
		bad += p[i] != imr;
	if (bad)
		printf("  %u bytes are not the PIC mask %x\n", bad, imr);
	report(bad == 0, "every byte is the PIC mask read before");
	report(ticks_inside > 0, "timer interrupts arrived during the instruction");
	report_prefix_pop();
}

static void movsb_test(void)
{
	report_prefix_push("rep movsb");
	u32 *src = (u32 *)MOVS_SRC, *dst = (u32 *)MOVS_DST;
	for (u32 i = 0; i < MOVS_LEN / 4; i++) {
		src[i] = pattern(i);
		dst[i] = 0;
	}
	u32 before = pit_ticks;
	ticks_inside = 0;
	rep_start = (u32)longrep_movsb;
	rep_count = MOVS_LEN;
	/* The copy takes milliseconds where it runs natively: repeat it (the data stays the
	 * same) until a tick has landed inside, a bounded number of times. */
	u32 rounds = 0, ok_regs = 1;
	while (rounds < 64 && (rounds == 0 || ticks_inside == 0)) {
		u32 s = MOVS_SRC, d = MOVS_DST, n = MOVS_LEN;
		sti();
		asm volatile(".globl longrep_movsb\nlongrep_movsb: rep movsb"
			     : "+S"(s), "+D"(d), "+c"(n)
			     :
			     : "memory");
		cli();
		ok_regs &= n == 0 && s == MOVS_SRC + MOVS_LEN && d == MOVS_DST + MOVS_LEN;
		rounds++;
	}
	printf("  %u MiB copied %u times: %u ticks, %u of them inside the instruction\n",
	       MOVS_LEN / MiB, rounds, pit_ticks - before, ticks_inside);
	report(ok_regs, "ECX ran down to 0, ESI and EDI advanced by %u MiB", MOVS_LEN / MiB);
	u32 bad = 0;
	for (u32 i = 0; i < MOVS_LEN / 4; i++)
		bad += dst[i] != pattern(i);
	if (bad)
		printf("  %u words differ from the source\n", bad);
	report(bad == 0, "the copy equals the source");
	report(ticks_inside > 0, "timer interrupts arrived during the instruction");
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	const u32 *info = mbi;
	/* mem_upper: KiB above 1 MiB. */
	if (!info || !(info[0] & 1) || info[2] < (MOVS_DST + MOVS_LEN) / 1024) {
		report_skip("needs %u MiB of RAM", (MOVS_DST + MOVS_LEN) / MiB + 1);
		return report_summary();
	}
	handle_exception(IRQ_BASE, tick);
	pit_start(1000);
	insb_test();
	movsb_test();
	pit_stop();
	return report_summary();
}
