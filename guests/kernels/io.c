/* Port I/O: IN/OUT/INS/OUTS in every size, imm8 and DX ports, REP, the direction flag, CPL 3 and IOPL */
#include "guest.h"

/* UART registers that read back what was written: LCR (0x3fb), MCR (0x3fc), SCR (0x3ff).
 * Wider accesses reach neighbouring registers, one byte each, as on an ISA bus. */
#define UART_LCR (SERIAL_PORT + 3)
#define UART_MCR (SERIAL_PORT + 4)
#define LCR_8N1 0x03
#define MCR_DTR_RTS_OUT2 0x0b
#define PIC1_DATA 0x21

static u8 buf[32];
static u16 wbuf[8];
static u32 dbuf[4];

static void test_in_out(void)
{
	u32 v;

	report_prefix_push("out");
	outb(0x5a, SERIAL_SCRATCH);
	report(inb(SERIAL_SCRATCH) == 0x5a, "[o8 dx] byte to the UART scratch register");
	asm volatile("outb %%al, $0x21" ::"a"(0xfb));
	report(inb(PIC1_DATA) == 0xfb, "[o8 imm8] byte to the PIC mask register 0x21");
	asm volatile("outw %%ax, %%dx" ::"a"((MCR_DTR_RTS_OUT2 << 8) | LCR_8N1), "d"(UART_LCR));
	report(inb(UART_LCR) == LCR_8N1 && inb(UART_MCR) == MCR_DTR_RTS_OUT2,
	       "[o16 dx] word to LCR:MCR, one byte each");
	asm volatile("outl %%eax, %%dx" ::"a"(0xc3000000u | MCR_DTR_RTS_OUT2), "d"(UART_MCR));
	report(inb(UART_MCR) == MCR_DTR_RTS_OUT2 && inb(SERIAL_SCRATCH) == 0xc3,
	       "[o32 dx] dword to MCR..SCR: the first and the last byte land");
	asm volatile("outw %%ax, $0x20" ::"a"(0xff00 | 0x0b)); /* OCW3: read ISR; mask 0xff */
	report(inb(PIC1_DATA) == 0xff, "[o16 imm8] word to 0x20:0x21 sets the mask byte");
	asm volatile("outl %%eax, $0x80" ::"a"(0x12345678u));
	report(inb(SERIAL_SCRATCH) == 0xc3 && inb(UART_MCR) == MCR_DTR_RTS_OUT2,
	       "[o32 imm8] dword to port 0x80 leaves the UART alone");
	report_prefix_pop();

	report_prefix_push("in");
	outb(0x3c, SERIAL_SCRATCH);
	asm volatile("inb %%dx, %%al" : "=a"(v) : "0"(0xdeadbe00u), "d"(SERIAL_SCRATCH));
	report(v == 0xdeadbe3c, "[o8 dx] byte, the rest of EAX kept (%x)", v);
	asm volatile("inb $0x21, %%al" : "=a"(v) : "0"(0xdeadbe00u));
	report(v == 0xdeadbeff, "[o8 imm8] PIC mask byte (%x)", v);
	asm volatile("inw %%dx, %%ax" : "=a"(v) : "0"(0xdead0000u), "d"(UART_LCR));
	report(v == (0xdead0000u | (MCR_DTR_RTS_OUT2 << 8) | LCR_8N1),
	       "[o16 dx] LCR:MCR, the upper half of EAX kept (%x)", v);
	outb(0x99, SERIAL_SCRATCH);
	asm volatile("inl %%dx, %%eax" : "=a"(v) : "d"(UART_MCR));
	report((v & 0xff) == MCR_DTR_RTS_OUT2 && (v >> 24) == 0x99,
	       "[o32 dx] MCR..SCR: first and last byte (%x)", v);
	asm volatile("inw $0x20, %%ax" : "=a"(v) : "0"(0xdead0000u));
	report((v >> 16) == 0xdead && ((v >> 8) & 0xff) == 0xff, "[o16 imm8] 0x20:0x21 (%x)", v);
	asm volatile("inl $0x20, %%eax" : "=a"(v));
	report(((v >> 8) & 0xff) == 0xff, "[o32 imm8] 0x20..0x23 (%x)", v);
	report_prefix_pop();
}

static void test_string_io(void)
{
	u32 esi, edi, ecx;

	report_prefix_push("outs");
	for (int i = 0; i < 32; i++)
		buf[i] = (u8)(0x40 + i);
	asm volatile("outsb" : "=S"(esi) : "0"(buf), "d"(SERIAL_SCRATCH) : "memory");
	report(esi == (u32)buf + 1 && inb(SERIAL_SCRATCH) == 0x40, "[o8 dx] one byte, ESI+1");
	asm volatile("rep outsb"
		     : "=S"(esi), "=c"(ecx)
		     : "0"(buf), "1"(5), "d"(SERIAL_SCRATCH)
		     : "memory");
	report(esi == (u32)buf + 5 && ecx == 0 && inb(SERIAL_SCRATCH) == 0x44,
	       "[o8 dx rep] 5 bytes, the last one in the port");
	asm volatile("std; rep outsb; cld"
		     : "=S"(esi), "=c"(ecx)
		     : "0"(buf + 9), "1"(3), "d"(SERIAL_SCRATCH)
		     : "memory");
	report(esi == (u32)buf + 6 && ecx == 0 && inb(SERIAL_SCRATCH) == 0x47,
	       "[o8 dx rep df] DF=1: ESI goes down");
	wbuf[0] = (MCR_DTR_RTS_OUT2 << 8) | LCR_8N1;
	wbuf[1] = (MCR_DTR_RTS_OUT2 << 8) | LCR_8N1;
	asm volatile("rep outsw"
		     : "=S"(esi), "=c"(ecx)
		     : "0"(wbuf), "1"(2), "d"(UART_LCR)
		     : "memory");
	report(esi == (u32)wbuf + 4 && ecx == 0 && inb(UART_MCR) == MCR_DTR_RTS_OUT2,
	       "[o16 dx rep] 2 words, ESI+4");
	dbuf[0] = 0x11000000u | MCR_DTR_RTS_OUT2;
	dbuf[1] = 0x22000000u | MCR_DTR_RTS_OUT2;
	asm volatile("rep outsl"
		     : "=S"(esi), "=c"(ecx)
		     : "0"(dbuf), "1"(2), "d"(UART_MCR)
		     : "memory");
	report(esi == (u32)dbuf + 8 && ecx == 0 && inb(SERIAL_SCRATCH) == 0x22,
	       "[o32 dx rep] 2 dwords, ESI+8, the last one in the port");
	asm volatile("std; outsl; cld" : "=S"(esi) : "0"(dbuf), "d"(UART_MCR) : "memory");
	report(esi == (u32)dbuf - 4 && inb(SERIAL_SCRATCH) == 0x11, "[o32 dx df] ESI-4");
	asm volatile("rep outsb" : "=S"(esi), "=c"(ecx) : "0"(buf), "1"(0), "d"(SERIAL_SCRATCH) : "memory");
	report(esi == (u32)buf && inb(SERIAL_SCRATCH) == 0x11, "[o8 dx rep] ECX=0 does nothing");
	report_prefix_pop();

	report_prefix_push("ins");
	memset(buf, 0, sizeof(buf));
	outb(0x77, SERIAL_SCRATCH);
	asm volatile("insb" : "=D"(edi) : "0"(buf), "d"(SERIAL_SCRATCH) : "memory");
	report(edi == (u32)buf + 1 && buf[0] == 0x77 && buf[1] == 0, "[o8 dx] one byte, EDI+1");
	asm volatile("rep insb"
		     : "=D"(edi), "=c"(ecx)
		     : "0"(buf + 4), "1"(3), "d"(SERIAL_SCRATCH)
		     : "memory");
	report(edi == (u32)buf + 7 && ecx == 0 && buf[4] == 0x77 && buf[6] == 0x77 && buf[7] == 0,
	       "[o8 dx rep] exactly 3 bytes");
	outb(0x66, SERIAL_SCRATCH);
	asm volatile("std; rep insb; cld"
		     : "=D"(edi), "=c"(ecx)
		     : "0"(buf + 12), "1"(2), "d"(SERIAL_SCRATCH)
		     : "memory");
	report(edi == (u32)buf + 10 && buf[12] == 0x66 && buf[11] == 0x66 && buf[10] == 0,
	       "[o8 dx rep df] DF=1: stored downwards");
	memset(wbuf, 0, sizeof(wbuf));
	asm volatile("rep insw"
		     : "=D"(edi), "=c"(ecx)
		     : "0"(wbuf), "1"(2), "d"(UART_LCR)
		     : "memory");
	report(edi == (u32)wbuf + 4 && wbuf[0] == ((MCR_DTR_RTS_OUT2 << 8) | LCR_8N1) &&
		       wbuf[1] == wbuf[0] && wbuf[2] == 0,
	       "[o16 dx rep] 2 words of LCR:MCR");
	memset(dbuf, 0, sizeof(dbuf));
	outb(0x55, SERIAL_SCRATCH);
	asm volatile("std; insl; cld" : "=D"(edi) : "0"(&dbuf[2]), "d"(UART_MCR) : "memory");
	report(edi == (u32)&dbuf[1] && (dbuf[2] >> 24) == 0x55 && dbuf[1] == 0 && dbuf[3] == 0,
	       "[o32 dx df] one dword, EDI-4");
	asm volatile("rep insl"
		     : "=D"(edi), "=c"(ecx)
		     : "0"(dbuf), "1"(2), "d"(UART_MCR)
		     : "memory");
	report(edi == (u32)dbuf + 8 && (dbuf[1] & 0xff) == MCR_DTR_RTS_OUT2 && dbuf[2] >> 24 == 0x55,
	       "[o32 dx rep] 2 dwords");
	report_prefix_pop();
}

/* ---- CPL 3: IOPL decides ---- */

static volatile bool u_in_ok, u_out_ok, u_ins_ok, u_outs_ok, u_gp_in, u_gp_out, u_gp_ins,
	u_gp_outs;

static void user_with_iopl3(void)
{
	u8 b = 0;
	outb(0x3a, SERIAL_SCRATCH);
	u_out_ok = true;
	u_in_ok = inb(SERIAL_SCRATCH) == 0x3a;
	asm volatile("insb" ::"D"(&b), "d"(SERIAL_SCRATCH) : "memory");
	u_ins_ok = b == 0x3a;
	b = 0x3b;
	asm volatile("outsb" ::"S"(&b), "d"(SERIAL_SCRATCH) : "memory");
	u_outs_ok = inb(SERIAL_SCRATCH) == 0x3b;
	user_return(0);
}

static void user_with_iopl0(void)
{
	u8 b;
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("inb %%dx, %%al") : "=a"(b) : "d"(SERIAL_SCRATCH));
	u_gp_in = catch_end(GP_VECTOR, 0);
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("outb %%al, $0x80") ::"a"(0));
	u_gp_out = catch_end(GP_VECTOR, 0);
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("rep insb") ::"D"(&b), "c"(1), "d"(SERIAL_SCRATCH) : "memory");
	u_gp_ins = catch_end(GP_VECTOR, 0);
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("outsw") ::"S"(&b), "d"(SERIAL_SCRATCH) : "memory");
	u_gp_outs = catch_end(GP_VECTOR, 0);
	user_return(0);
}

static void test_user_io(void)
{
	run_user(user_with_iopl3, EFLAGS_FIXED1 | EFLAGS_IOPL);
	run_user(user_with_iopl0, EFLAGS_FIXED1);
	report_prefix_push("in");
	report(u_in_ok, "[o8 dx cpl3] allowed with IOPL 3");
	report(u_gp_in, "[o8 dx cpl3] #GP(0) with IOPL 0");
	report_prefix_pop();
	report_prefix_push("out");
	report(u_out_ok, "[o8 dx cpl3] allowed with IOPL 3");
	report_prefix_pop();
	report_prefix_push("ins");
	report(u_ins_ok, "[o8 dx cpl3] allowed with IOPL 3");
	report_prefix_pop();
	report_prefix_push("outs");
	report(u_outs_ok, "[o8 dx cpl3] allowed with IOPL 3");
	report_prefix_pop();
	report_prefix_push("out");
	report(u_gp_out, "[o8 imm8 cpl3] #GP(0) with IOPL 0");
	report_prefix_pop();
	report_prefix_push("ins");
	report(u_gp_ins, "[o8 dx rep cpl3] #GP(0) with IOPL 0");
	report_prefix_pop();
	report_prefix_push("outs");
	report(u_gp_outs, "[o16 dx cpl3] #GP(0) with IOPL 0");
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	test_in_out();
	test_string_io();
	test_user_io();
	return report_summary();
}
