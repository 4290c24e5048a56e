/* Operand-size, address-size, register/memory and segment-override forms of every patched class */
#include "guest.h"

/* Check names are "<class>: [<forms>] what": the class is the rewriter's class name and the
 * forms say which encoding the check executes (see lib/guest.h, "Check names"). */

#define SCR_DS 0x30	 /* data, base = scratch, limit 0xffff: 16-bit addresses reach it */
#define ALT_DS 0x38	 /* flat ring 0 data, a second selector for the same memory */
#define ALT_CS 0x40	 /* flat ring 0 code, a second selector for the same code */
#define LDT_SEL 0x48
#define GDT_ENTRIES 10
/* The far-transfer routines are copied here, so that 16-bit instruction pointers reach
 * them (below 64 KiB, and below the Multiboot information at 0x9000). */
#define LOW_CODE 0x6000

static struct descriptor ldt[1] __attribute__((aligned(8)));
static u8 scratch[0x100] __attribute__((aligned(16)));

static void setup_gdt(void)
{
	gdt[SCR_DS >> 3] = make_segment((u32)scratch, 0xffff, 0x93, 0x4);
	gdt[ALT_DS >> 3] = make_segment(0, 0xfffff, 0x93, 0xc);
	gdt[ALT_CS >> 3] = make_segment(0, 0xfffff, 0x9b, 0xc);
	gdt[LDT_SEL >> 3] = make_segment((u32)ldt, sizeof(ldt) - 1, 0x82, 0);
	ldt[0] = make_segment(0, 0xfffff, 0x93, 0xc);
	gdt_load(GDT_ENTRIES);
	asm volatile("lldt %w0" ::"r"(LDT_SEL));
}

static void restore_data_segments(void)
{
	asm volatile("movw %w0, %%ds; movw %w0, %%es; movw %w0, %%fs; movw %w0, %%gs; "
		     "movw %w0, %%ss" ::"r"(KERNEL_DS)
		     : "memory");
}

/* FS = the scratch segment, so "addr16 insn %fs:(%bx)" with BX = 0 reaches scratch[0]. */
static void fs_scratch(void) { asm volatile("movw %w0, %%fs" ::"r"(SCR_DS) : "memory"); }

/* ---- PUSHF / POPF ---- */

static void test_pushf_popf(void)
{
	u32 before, after, v;

	report_prefix_push("pushf");
	cli();
	asm volatile("stc; movl %%esp, %0; pushfw; movl %%esp, %1; popw %w2; clc"
		     : "=&r"(before), "=&r"(after), "=&r"(v)::"cc", "memory");
	report(before - after == 2 && (v & EFLAGS_CF) && (v & EFLAGS_FIXED1) && !(v & EFLAGS_IF),
	       "[o16] PUSHFW pushes 2 bytes: CF=1, IF=0 after CLI");
	sti();
	asm volatile("movl %%esp, %0; pushfl; movl %%esp, %1; popl %2"
		     : "=&r"(before), "=&r"(after), "=&r"(v)::"memory");
	cli();
	report(before - after == 4 && (v & EFLAGS_IF) && !(v & 0xfffc0000u),
	       "[o32] PUSHFD pushes 4 bytes: IF=1 after STI, VM and RF clear");
	write_eflags(read_eflags() | EFLAGS_IOPL);
	asm volatile("pushfl; popl %0" : "=r"(v));
	write_eflags(read_eflags() & ~EFLAGS_IOPL);
	report((v & EFLAGS_IOPL) == EFLAGS_IOPL, "[o32] PUSHFD shows the IOPL POPF set");
	report_prefix_pop();

	report_prefix_push("popf");
	asm volatile("movl %%esp, %0; pushw %3; popfw; movl %%esp, %1; pushfl; popl %2; cli"
		     : "=&r"(before), "=&r"(after), "=&r"(v)
		     : "i"(EFLAGS_FIXED1 | EFLAGS_IF)
		     : "cc", "memory");
	report(before == after && (v & EFLAGS_IF), "[o16] POPFW pops 2 bytes and sets IF");
	sti();
	asm volatile("movl %%esp, %0; pushl %3; popfl; movl %%esp, %1; pushfl; popl %2"
		     : "=&r"(before), "=&r"(after), "=&r"(v)
		     : "i"(0)
		     : "cc", "memory");
	cli();
	report(before == after && !(v & EFLAGS_IF) && (v & EFLAGS_FIXED1),
	       "[o32] POPFD pops 4 bytes, clears IF, keeps the fixed bit 1");
	/* EFLAGS.ID (bit 21) toggles on every CPU with CPUID; POPFW must not touch it. */
	u32 id = 1u << 21;
	write_eflags(read_eflags() | id);
	asm volatile("pushw %1; popfw; pushfl; popl %0" : "=r"(v) : "i"(EFLAGS_FIXED1) : "cc", "memory");
	write_eflags(read_eflags() & ~id);
	report((v & id) && (read_eflags() & id) == 0,
	       "[o16] POPFW keeps the upper 16 bits (ID), POPFD sets and clears ID");
	report_prefix_pop();
}

/* ---- SGDT / SIDT ---- */

static void test_store_tables(void)
{
	struct pseudo_descriptor p;
	u32 gdt_limit = GDT_ENTRIES * 8 - 1;

	report_prefix_push("sgdt");
	memset(&p, 0xee, sizeof(p));
	asm volatile("sgdtl %0" : "=m"(p));
	report(p.limit == gdt_limit && p.base == (u32)gdt, "[o32 mem] limit and 32-bit base");
	memset(&p, 0xee, sizeof(p));
	asm volatile("data16 sgdt %0" : "=m"(p));
	/* the base is below 16 MiB, so 24- and 32-bit stores agree */
	report(p.limit == gdt_limit && p.base == (u32)gdt, "[o16 mem] limit and base");
	memset(scratch, 0xee, 8);
	fs_scratch();
	asm volatile("addr16 sgdt %%fs:(%%bx)" ::"b"(0) : "memory");
	restore_data_segments();
	memcpy(&p, scratch, sizeof(p));
	report(p.limit == gdt_limit && p.base == (u32)gdt && scratch[6] == 0xee,
	       "[a16 seg mem] through FS with a 16-bit address, 6 bytes stored");
	report_prefix_pop();

	report_prefix_push("sidt");
	memset(&p, 0xee, sizeof(p));
	asm volatile("sidtl %0" : "=m"(p));
	report(p.limit == sizeof(idt) - 1 && p.base == (u32)idt, "[o32 mem] limit and 32-bit base");
	memset(&p, 0xee, sizeof(p));
	asm volatile("data16 sidt %0" : "=m"(p));
	report(p.limit == sizeof(idt) - 1 && p.base == (u32)idt, "[o16 mem] limit and base");
	memset(scratch, 0xee, 8);
	fs_scratch();
	asm volatile("addr16 sidt %%fs:(%%bx)" ::"b"(0) : "memory");
	restore_data_segments();
	memcpy(&p, scratch, sizeof(p));
	report(p.limit == sizeof(idt) - 1 && p.base == (u32)idt && scratch[6] == 0xee,
	       "[a16 seg mem] through FS with a 16-bit address, 6 bytes stored");
	report_prefix_pop();
}

/* ---- SLDT / STR / SMSW: register and memory destinations ---- */

#define STORE_FORMS(cls, insn, expect, mask)                                                   \
	do {                                                                                   \
		u32 r;                                                                         \
		u16 m[2];                                                                      \
		report_prefix_push(cls);                                                       \
		r = 0xdead0000u;                                                               \
		asm volatile(insn " %w0" : "+r"(r));                                           \
		report((r & 0xffff) == ((expect) & 0xffff) && (r >> 16) == 0xdead,             \
		       "[o16 reg] writes the low 16 bits only (%x)", r);                       \
		r = 0xdeadbeefu;                                                               \
		asm volatile(insn " %0" : "+r"(r));                                            \
		report((r & (mask)) == ((expect) & (mask)), "[o32 reg] (%x)", r);              \
		m[0] = 0xeeee;                                                                 \
		m[1] = 0xeeee;                                                                 \
		asm volatile(insn " %0" : "=m"(m[0]));                                         \
		report(m[0] == (u16)(expect) && m[1] == 0xeeee,                                \
		       "[mem] stores exactly 16 bits (%x)", m[0]);                             \
		memset(scratch, 0xee, 4);                                                      \
		fs_scratch();                                                                  \
		asm volatile("addr16 " insn " %%fs:(%%bx)" ::"b"(0) : "memory");               \
		restore_data_segments();                                                       \
		report(scratch[0] == (u8)(expect) && scratch[1] == (u8)((expect) >> 8) &&      \
			       scratch[2] == 0xee,                                             \
		       "[a16 seg mem] through FS with a 16-bit address");                      \
		report_prefix_pop();                                                           \
	} while (0)

static void test_store_selectors(void)
{
	STORE_FORMS("sldt", "sldt", LDT_SEL, 0xffffffffu);
	STORE_FORMS("str", "str", TSS_SEL, 0xffffffffu);
	/* SMSW to a 32-bit register leaves the high 16 bits undefined (SDM 2B SMSW) */
	STORE_FORMS("smsw", "smsw", read_cr0(), 0xffffu);
}

/* ---- LAR / LSL / VERR / VERW: register and memory sources ---- */

#define ZF_OP(insn, src_constraint, src, dst)                                                  \
	({                                                                                     \
		bool _zf;                                                                      \
		asm volatile(insn "; setz %1" : "+r"(dst), "=q"(_zf) : src_constraint(src) : "cc"); \
		_zf;                                                                           \
	})

static void test_access_rights(void)
{
	u32 v;
	u16 sel_mem;
	bool zf;

	report_prefix_push("lar");
	v = 0xdeadbeef;
	zf = ZF_OP("lar %2, %0", "r", (u32)KERNEL_CS, v);
	report(zf && v == 0x00c09b00, "[o32 reg] ring 0 code rights (%x)", v);
	v = 0xdeadbeef;
	zf = ZF_OP("lar %w2, %w0", "r", (u32)KERNEL_CS, v);
	report(zf && v == 0xdead9b00, "[o16 reg] low 16 bits of the rights only (%x)", v);
	sel_mem = USER_DS;
	v = 0xdeadbeef;
	zf = ZF_OP("lar %2, %0", "m", sel_mem, v);
	report(zf && v == 0x00c0f300, "[o32 mem] selector from memory (%x)", v);
	v = 0xdeadbeef;
	zf = ZF_OP("lar %2, %w0", "m", sel_mem, v);
	report(zf && v == 0xdeadf300, "[o16 mem] selector from memory (%x)", v);
	memcpy(scratch, &(u16){ TSS_SEL }, 2);
	fs_scratch();
	v = 0xdeadbeef;
	zf = ZF_OP("addr16 lar %%fs:(%%bx), %0", "b", 0, v);
	restore_data_segments();
	report(zf && v == 0x00008b00, "[a16 seg mem] busy TSS rights through FS (%x)", v);
	v = 0xdeadbeef;
	zf = ZF_OP("lar %2, %0", "r", (u32)0, v);
	report(!zf && v == 0xdeadbeef, "[o32 reg] null selector: ZF=0, destination kept");
	report_prefix_pop();

	report_prefix_push("lsl");
	v = 0xdeadbeef;
	zf = ZF_OP("lsl %2, %0", "r", (u32)KERNEL_DS, v);
	report(zf && v == 0xffffffff, "[o32 reg] page-granular flat data (%x)", v);
	v = 0xdeadbeef;
	zf = ZF_OP("lsl %w2, %w0", "r", (u32)KERNEL_DS, v);
	report(zf && v == 0xdeadffff, "[o16 reg] limit truncated to 16 bits (%x)", v);
	sel_mem = SCR_DS;
	v = 0xdeadbeef;
	zf = ZF_OP("lsl %2, %0", "m", sel_mem, v);
	report(zf && v == 0xffff, "[o32 mem] byte-granular limit (%x)", v);
	v = 0xdeadbeef;
	zf = ZF_OP("lsl %2, %w0", "m", sel_mem, v);
	report(zf && v == 0xdeadffff, "[o16 mem] (%x)", v);
	memcpy(scratch, &(u16){ TSS_SEL }, 2);
	fs_scratch();
	v = 0xdeadbeef;
	zf = ZF_OP("addr16 lsl %%fs:(%%bx), %0", "b", 0, v);
	restore_data_segments();
	report(zf && v == sizeof(struct tss32) - 1, "[a16 seg mem] TSS limit through FS (%x)", v);
	report_prefix_pop();

#define VER(insn, constraint, sel)                                                             \
	({                                                                                     \
		bool _zf;                                                                      \
		asm volatile(insn " %1; setz %0" : "=q"(_zf) : constraint(sel) : "cc");        \
		_zf;                                                                           \
	})
	report_prefix_push("verr");
	report(VER("verr", "r", (u16)KERNEL_CS) && !VER("verr", "r", (u16)TSS_SEL),
	       "[reg] readable code: ZF=1; TSS: ZF=0");
	sel_mem = KERNEL_DS;
	report(VER("verr", "m", sel_mem), "[mem] data selector from memory: ZF=1");
	sel_mem = 0;
	report(!VER("verr", "m", sel_mem), "[mem] null selector from memory: ZF=0");
	memcpy(scratch, &(u16){ USER_DS }, 2);
	fs_scratch();
	bool zf16;
	asm volatile("addr16 verr %%fs:(%%bx); setz %0" : "=q"(zf16) : "b"(0) : "cc");
	restore_data_segments();
	report(zf16, "[a16 seg mem] through FS: ZF=1");
	report_prefix_pop();

	report_prefix_push("verw");
	report(VER("verw", "r", (u16)KERNEL_DS) && !VER("verw", "r", (u16)KERNEL_CS),
	       "[reg] writable data: ZF=1; code: ZF=0");
	sel_mem = ALT_DS;
	report(VER("verw", "m", sel_mem), "[mem] data selector from memory: ZF=1");
	memcpy(scratch, &(u16){ KERNEL_CS }, 2);
	fs_scratch();
	asm volatile("addr16 verw %%fs:(%%bx); setz %0" : "=q"(zf16) : "b"(0) : "cc");
	restore_data_segments();
	report(!zf16, "[a16 seg mem] code selector through FS: ZF=0");
	report_prefix_pop();
}

/* ---- MOV to and from segment registers ---- */

static void test_mov_sreg(void)
{
	u32 r;
	u16 m[2];

	report_prefix_push("mov_from_sreg");
	r = 0xdeadbeef;
	asm volatile(".byte 0x66, 0x8c, 0xd8 /* mov ax, ds */" : "+a"(r));
	report(r == (0xdead0000u | KERNEL_DS), "[o16 reg] writes the low 16 bits only (%x)", r);
	r = 0xdeadbeef;
	asm volatile(".byte 0x8c, 0xd0 /* mov eax, ss */" : "+a"(r));
	report(r == KERNEL_DS, "[o32 reg] zero-extends (%x)", r);
	m[0] = m[1] = 0xeeee;
	asm volatile("movw %%cs, %0" : "=m"(m[0]));
	report(m[0] == KERNEL_CS && m[1] == 0xeeee, "[mem] CS, exactly 16 bits stored");
	m[0] = m[1] = 0xeeee;
	asm volatile(".byte 0x66; movw %%es, %0" : "=m"(m[0]));
	report(m[0] == KERNEL_DS && m[1] == 0xeeee, "[o16 mem] ES, exactly 16 bits stored");
	memset(scratch, 0xee, 4);
	fs_scratch();
	asm volatile("addr16 movw %%fs, %%fs:(%%bx)" ::"b"(0) : "memory");
	restore_data_segments();
	report(scratch[0] == SCR_DS && scratch[1] == 0 && scratch[2] == 0xee,
	       "[a16 seg mem] FS through FS with a 16-bit address");
	report_prefix_pop();

	report_prefix_push("mov_to_sreg");
	u16 got;
	asm volatile(".byte 0x66, 0x8e, 0xe0 /* mov fs, ax */; movw %%fs, %0"
		     : "=r"(got)
		     : "a"(ALT_DS)
		     : "memory");
	restore_data_segments();
	report(got == ALT_DS, "[o16 reg] FS from AX");
	asm volatile(".byte 0x8e, 0xe8 /* mov gs, eax */; movw %%gs, %0"
		     : "=r"(got)
		     : "a"(0xffff0000u | ALT_DS)
		     : "memory");
	restore_data_segments();
	report(got == ALT_DS, "[o32 reg] GS from EAX ignores the high 16 bits");
	u16 sel = ALT_DS;
	u32 v;
	asm volatile("movw %2, %%es; movw %%es, %0; movl %%es:(%3), %1"
		     : "=&r"(got), "=&r"(v)
		     : "m"(sel), "r"(&scratch[8])
		     : "memory");
	restore_data_segments();
	report(got == ALT_DS && v == *(u32 *)&scratch[8], "[mem] ES from memory, data reachable");
	memcpy(scratch, &(u16){ ALT_DS }, 2);
	fs_scratch();
	asm volatile("addr16 movw %%fs:(%%bx), %%ss; movw %%ss, %0" : "=r"(got) : "b"(0) : "memory");
	restore_data_segments();
	report(got == ALT_DS, "[a16 seg mem] SS from memory through FS");
	asm volatile("movw %w1, %%ds; movw %%ds, %0" : "=r"(got) : "r"(0x04) : "memory");
	restore_data_segments();
	report(got == 0x04, "[reg] DS from an LDT selector");
	report_prefix_pop();
}

/* ---- PUSH / POP of each segment register ---- */

#define PUSH_FORMS(s, expect)                                                                  \
	do {                                                                                   \
		u32 b, a, w;                                                                   \
		asm volatile("movl %%esp, %0; pushl %%" #s "; movl %%esp, %1; popl %2"         \
			     : "=&r"(b), "=&r"(a), "=&r"(w)::"memory");                        \
		report(b - a == 4 && (w & 0xffff) == (expect), "[o32 " #s "] 4 bytes, %x",     \
		       w & 0xffff);                                                            \
		asm volatile("movl %%esp, %0; pushw %%" #s "; movl %%esp, %1; popw %w2"        \
			     : "=&r"(b), "=&r"(a), "=&r"(w)::"memory");                        \
		report(b - a == 2 && (w & 0xffff) == (expect), "[o16 " #s "] 2 bytes, %x",     \
		       w & 0xffff);                                                            \
	} while (0)

#define POP_FORMS(s, sel)                                                                      \
	do {                                                                                   \
		u32 b, a;                                                                      \
		u16 got;                                                                       \
		asm volatile("pushl %3; movl %%esp, %0; popl %%" #s "; movl %%esp, %1; "       \
			     "movw %%" #s ", %2"                                               \
			     : "=&r"(b), "=&r"(a), "=&r"(got)                                  \
			     : "i"(sel)                                                        \
			     : "memory");                                                      \
		restore_data_segments();                                                       \
		report(a - b == 4 && got == (sel), "[o32 " #s "] 4 bytes");                    \
		asm volatile("pushw %3; movl %%esp, %0; popw %%" #s "; movl %%esp, %1; "       \
			     "movw %%" #s ", %2"                                               \
			     : "=&r"(b), "=&r"(a), "=&r"(got)                                  \
			     : "i"(sel)                                                        \
			     : "memory");                                                      \
		restore_data_segments();                                                       \
		report(a - b == 2 && got == (sel), "[o16 " #s "] 2 bytes");                    \
	} while (0)

static void test_push_pop_sreg(void)
{
	report_prefix_push("push_sreg");
	PUSH_FORMS(cs, KERNEL_CS);
	PUSH_FORMS(ss, KERNEL_DS);
	PUSH_FORMS(ds, KERNEL_DS);
	PUSH_FORMS(es, KERNEL_DS);
	PUSH_FORMS(fs, KERNEL_DS);
	PUSH_FORMS(gs, KERNEL_DS);
	report_prefix_pop();

	report_prefix_push("pop_sreg");
	POP_FORMS(ss, ALT_DS);
	POP_FORMS(ds, USER_DS);
	POP_FORMS(es, USER_DS);
	POP_FORMS(fs, ALT_DS);
	POP_FORMS(gs, ALT_DS);
	report_prefix_pop();
}

/* ---- LDS / LES / LFS / LGS / LSS ---- */

struct far32 {
	u32 offset;
	u16 selector;
} __attribute__((packed));
struct far16 {
	u16 offset;
	u16 selector;
} __attribute__((packed));

#define LOAD_FAR_FORMS(cls, insn, s)                                                           \
	do {                                                                                   \
		struct far32 p32 = { 0x12345678, ALT_DS };                                     \
		struct far16 p16 = { 0x9abc, USER_DS };                                        \
		u32 off;                                                                       \
		u16 sel;                                                                       \
		report_prefix_push(cls);                                                       \
		off = 0;                                                                       \
		asm volatile(insn " %2, %0; movw %%" #s ", %1"                                 \
			     : "+r"(off), "=r"(sel)                                            \
			     : "m"(p32)                                                        \
			     : "memory");                                                      \
		restore_data_segments();                                                       \
		report(off == p32.offset && sel == ALT_DS, "[o32 mem m16:32]");                \
		off = 0xdead0000u;                                                             \
		asm volatile(insn " %2, %w0; movw %%" #s ", %1"                                \
			     : "+r"(off), "=r"(sel)                                            \
			     : "m"(p16)                                                        \
			     : "memory");                                                      \
		restore_data_segments();                                                       \
		report(off == 0xdead9abcu && sel == USER_DS,                                   \
		       "[o16 mem m16:16] writes the low 16 bits of the register");             \
		memcpy(scratch, &p32, sizeof(p32));                                            \
		fs_scratch();                                                                  \
		off = 0;                                                                       \
		asm volatile("addr16 " insn " %%fs:(%%bx), %0; movw %%" #s ", %1"              \
			     : "+r"(off), "=r"(sel)                                            \
			     : "b"(0)                                                          \
			     : "memory");                                                      \
		restore_data_segments();                                                       \
		report(off == p32.offset && sel == ALT_DS, "[a16 seg mem m16:32] through FS");  \
		report_prefix_pop();                                                           \
	} while (0)

static void test_load_far(void)
{
	LOAD_FAR_FORMS("lds", "lds", ds);
	LOAD_FAR_FORMS("les", "les", es);
	LOAD_FAR_FORMS("lfs", "lfs", fs);
	LOAD_FAR_FORMS("lgs", "lgs", gs);

	report_prefix_push("lss");
	u32 before, after;
	u16 sel;
	struct far32 p32;
	asm volatile("movl %%esp, %0; movl %%esp, %3; movw %5, %4; lss %3, %%esp; "
		     "movl %%esp, %1; movw %%ss, %2"
		     : "=&r"(before), "=&r"(after), "=&r"(sel), "=m"(p32.offset), "=m"(p32.selector)
		     : "i"(ALT_DS)
		     : "memory");
	restore_data_segments();
	report(before == after && sel == ALT_DS, "[o32 mem m16:32] ESP and SS");
	struct far16 p16;
	asm volatile("movl %%esp, %0; movw %%sp, %3; movw %5, %4; lss %3, %%sp; "
		     "movl %%esp, %1; movw %%ss, %2"
		     : "=&r"(before), "=&r"(after), "=&r"(sel), "=m"(p16.offset), "=m"(p16.selector)
		     : "i"(ALT_DS)
		     : "memory");
	restore_data_segments();
	report(before == after && sel == ALT_DS, "[o16 mem m16:16] SP and SS, upper ESP kept");
	fs_scratch();
	asm volatile("movl %%esp, %0; movl %%esp, %%fs:0; movw %4, %%fs:4; "
		     "addr16 lss %%fs:(%%bx), %%esp; movl %%esp, %1; movw %%ss, %2"
		     : "=&r"(before), "=&r"(after), "=&r"(sel)
		     : "b"(0), "i"(ALT_DS)
		     : "memory");
	restore_data_segments();
	report(before == after && sel == ALT_DS, "[a16 seg mem m16:32] through FS");
	report_prefix_pop();
}

/* ---- far JMP / CALL / RET and IRET in both operand sizes ---- */

u32 far_cs_seen, far_pushed_cs, far_esp_delta;
struct far16 far16_target;
struct far32 far32_target;
extern char low_blob_start[], low_blob_end[];
extern char jmp_ptr1616[], jmp_ptr1632[], jmp_m1616[], jmp_m1632[], jmp_m1632_fs[];
extern char call_ptr1616[], call_ptr1632[], call_m1616[], call_m1632[];
extern char ret16_imm[], ret32_imm[], iret16[], iret32[];

/* Position-independent routines copied to LOW_CODE; every absolute target inside is
 * LOW_CODE + (label - low_blob_start). Each returns (near) the CS it ends on and leaves
 * the CS seen at the far target in far_cs_seen. They live in .data: only the copy runs,
 * so the bytes copied are the original instructions whatever the monitor does to code
 * it has executed (checked separately by test_code_reads()). */
#define LOW(l) "0x6000 + (" l " - low_blob_start)"
asm(".data\n"
    ".globl low_blob_start\n"
    "low_blob_start:\n"

    "jmp_ptr1616:\n\t"
    "ljmpw $0x40, $" LOW("1f") "\n"
    "1:\tmovl %cs, %eax\n\tmovl %eax, far_cs_seen\n\t"
    "ljmpl $0x08, $" LOW("2f") "\n"
    "2:\tmovl %cs, %eax\n\tret\n"

    "jmp_ptr1632:\n\t"
    "ljmpl $0x40, $" LOW("1f") "\n"
    "1:\tmovl %cs, %eax\n\tmovl %eax, far_cs_seen\n\t"
    "ljmpl $0x08, $" LOW("2f") "\n"
    "2:\tmovl %cs, %eax\n\tret\n"

    "jmp_m1616:\n\t"
    "movw $" LOW("1f") ", far16_target\n\t"
    "movw $0x40, far16_target+2\n\t"
    "ljmpw *far16_target\n"
    "1:\tmovl %cs, %eax\n\tmovl %eax, far_cs_seen\n\t"
    "ljmpl $0x08, $" LOW("2f") "\n"
    "2:\tmovl %cs, %eax\n\tret\n"

    "jmp_m1632:\n\t"
    "movl $" LOW("1f") ", far32_target\n\t"
    "movw $0x40, far32_target+4\n\t"
    "ljmpl *far32_target\n"
    "1:\tmovl %cs, %eax\n\tmovl %eax, far_cs_seen\n\t"
    "ljmpl $0x08, $" LOW("2f") "\n"
    "2:\tmovl %cs, %eax\n\tret\n"

    /* FS holds the scratch segment; the pointer is at its offset 0 */
    "jmp_m1632_fs:\n\t"
    "movl $" LOW("1f") ", %fs:0\n\t"
    "movw $0x40, %fs:4\n\t"
    "xorl %ebx, %ebx\n\t"
    "addr16 ljmpl *%fs:(%bx)\n"
    "1:\tmovl %cs, %eax\n\tmovl %eax, far_cs_seen\n\t"
    "ljmpl $0x08, $" LOW("2f") "\n"
    "2:\tmovl %cs, %eax\n\tret\n"

    "callee16:\n\t"
    "movzwl 2(%esp), %eax\n\tmovl %eax, far_pushed_cs\n\t"
    "movl %cs, %eax\n\tmovl %eax, far_cs_seen\n\t"
    "lretw\n"
    "callee32:\n\t"
    "movl 4(%esp), %eax\n\tandl $0xffff, %eax\n\tmovl %eax, far_pushed_cs\n\t"
    "movl %cs, %eax\n\tmovl %eax, far_cs_seen\n\t"
    "lretl\n"
    "callee16_imm:\n\t"
    "movl %cs, %eax\n\tmovl %eax, far_cs_seen\n\t"
    "lretw $4\n"
    "callee32_imm:\n\t"
    "movl %cs, %eax\n\tmovl %eax, far_cs_seen\n\t"
    "lretl $8\n"

    "call_ptr1616:\n\t"
    "movl %esp, %edx\n\t"
    "lcallw $0x40, $" LOW("callee16") "\n\t"
    "subl %esp, %edx\n\tmovl %edx, far_esp_delta\n\t"
    "movl %cs, %eax\n\tret\n"

    "call_ptr1632:\n\t"
    "movl %esp, %edx\n\t"
    "lcalll $0x40, $" LOW("callee32") "\n\t"
    "subl %esp, %edx\n\tmovl %edx, far_esp_delta\n\t"
    "movl %cs, %eax\n\tret\n"

    "call_m1616:\n\t"
    "movw $" LOW("callee16") ", far16_target\n\t"
    "movw $0x40, far16_target+2\n\t"
    "movl %esp, %edx\n\t"
    "lcallw *far16_target\n\t"
    "subl %esp, %edx\n\tmovl %edx, far_esp_delta\n\t"
    "movl %cs, %eax\n\tret\n"

    "call_m1632:\n\t"
    "movl $" LOW("callee32") ", far32_target\n\t"
    "movw $0x40, far32_target+4\n\t"
    "movl %esp, %edx\n\t"
    "lcalll *far32_target\n\t"
    "subl %esp, %edx\n\tmovl %edx, far_esp_delta\n\t"
    "movl %cs, %eax\n\tret\n"

    "ret16_imm:\n\t"
    "movl %esp, %edx\n\t"
    "pushw $1\n\tpushw $2\n\t"
    "lcallw $0x40, $" LOW("callee16_imm") "\n\t"
    "subl %esp, %edx\n\tmovl %edx, far_esp_delta\n\t"
    "movl %cs, %eax\n\tret\n"

    "ret32_imm:\n\t"
    "movl %esp, %edx\n\t"
    "pushl $1\n\tpushl $2\n\t"
    "lcalll $0x40, $" LOW("callee32_imm") "\n\t"
    "subl %esp, %edx\n\tmovl %edx, far_esp_delta\n\t"
    "movl %cs, %eax\n\tret\n"

    /* IRET with EFLAGS from the argument; returns the EFLAGS seen at the target */
    "iret16:\n\t"
    "movl 4(%esp), %eax\n\t"
    "movl %esp, %edx\n\t"
    "pushw %ax\n\tpushw $0x40\n\tpushw $" LOW("1f") "\n\t"
    "iretw\n"
    "1:\tpushfl\n\tpopl %ecx\n\t"
    "subl %esp, %edx\n\tmovl %edx, far_esp_delta\n\t"
    "movl %cs, %eax\n\tmovl %eax, far_cs_seen\n\t"
    "ljmpl $0x08, $" LOW("2f") "\n"
    "2:\tmovl %ecx, %eax\n\tret\n"

    "iret32:\n\t"
    "movl 4(%esp), %eax\n\t"
    "movl %esp, %edx\n\t"
    "pushl %eax\n\tpushl $0x40\n\tpushl $" LOW("1f") "\n\t"
    "iretl\n"
    "1:\tpushfl\n\tpopl %ecx\n\t"
    "subl %esp, %edx\n\tmovl %edx, far_esp_delta\n\t"
    "movl %cs, %eax\n\tmovl %eax, far_cs_seen\n\t"
    "ljmpl $0x08, $" LOW("2f") "\n"
    "2:\tmovl %ecx, %eax\n\tret\n"

    ".globl low_blob_end\n"
    "low_blob_end:\n"
    ".text\n");

static u32 call_low(char *routine, u32 arg)
{
	u32 (*fn)(u32) = (u32(*)(u32))(LOW_CODE + (u32)(routine - low_blob_start));
	far_cs_seen = 0;
	far_pushed_cs = 0;
	far_esp_delta = ~0u;
	return fn(arg);
}

static void test_far(void)
{
	u32 cs;
	memcpy((void *)LOW_CODE, low_blob_start, low_blob_end - low_blob_start);

	report_prefix_push("far_jmp");
	cs = call_low(jmp_ptr1616, 0);
	report(far_cs_seen == ALT_CS && cs == KERNEL_CS, "[o16 ptr16:16] to 0x40 and back");
	cs = call_low(jmp_ptr1632, 0);
	report(far_cs_seen == ALT_CS && cs == KERNEL_CS, "[o32 ptr16:32] to 0x40 and back");
	cs = call_low(jmp_m1616, 0);
	report(far_cs_seen == ALT_CS && cs == KERNEL_CS, "[o16 mem m16:16] to 0x40 and back");
	cs = call_low(jmp_m1632, 0);
	report(far_cs_seen == ALT_CS && cs == KERNEL_CS, "[o32 mem m16:32] to 0x40 and back");
	fs_scratch();
	cs = call_low(jmp_m1632_fs, 0);
	restore_data_segments();
	report(far_cs_seen == ALT_CS && cs == KERNEL_CS,
	       "[a16 seg mem m16:32] pointer through FS with a 16-bit address");
	report_prefix_pop();

	report_prefix_push("far_call");
	cs = call_low(call_ptr1616, 0);
	report(far_cs_seen == ALT_CS && far_pushed_cs == KERNEL_CS && far_esp_delta == 0 &&
		       cs == KERNEL_CS,
	       "[o16 ptr16:16] pushes 16-bit CS:IP, far RET returns");
	cs = call_low(call_ptr1632, 0);
	report(far_cs_seen == ALT_CS && far_pushed_cs == KERNEL_CS && far_esp_delta == 0 &&
		       cs == KERNEL_CS,
	       "[o32 ptr16:32] pushes 32-bit CS:EIP, far RET returns");
	cs = call_low(call_m1616, 0);
	report(far_cs_seen == ALT_CS && far_pushed_cs == KERNEL_CS && far_esp_delta == 0 &&
		       cs == KERNEL_CS,
	       "[o16 mem m16:16] pushes 16-bit CS:IP, far RET returns");
	cs = call_low(call_m1632, 0);
	report(far_cs_seen == ALT_CS && far_pushed_cs == KERNEL_CS && far_esp_delta == 0 &&
		       cs == KERNEL_CS,
	       "[o32 mem m16:32] pushes 32-bit CS:EIP, far RET returns");
	report_prefix_pop();

	report_prefix_push("far_ret");
	cs = call_low(call_ptr1616, 0);
	report(far_esp_delta == 0 && cs == KERNEL_CS, "[o16] pops 16-bit IP and CS");
	cs = call_low(call_ptr1632, 0);
	report(far_esp_delta == 0 && cs == KERNEL_CS, "[o32] pops 32-bit EIP and CS");
	cs = call_low(ret16_imm, 0);
	report(far_cs_seen == ALT_CS && far_esp_delta == 0 && cs == KERNEL_CS,
	       "[o16 imm16] RETW 4 pops the two argument words");
	cs = call_low(ret32_imm, 0);
	report(far_cs_seen == ALT_CS && far_esp_delta == 0 && cs == KERNEL_CS,
	       "[o32 imm16] RETD 8 pops the two argument dwords");
	report_prefix_pop();

	report_prefix_push("iret");
	u32 f = call_low(iret16, EFLAGS_FIXED1 | EFLAGS_CF | EFLAGS_IF);
	cli();
	report(far_cs_seen == ALT_CS && far_esp_delta == 0 && (f & EFLAGS_CF) && (f & EFLAGS_IF),
	       "[o16] IRETW pops IP, CS, FLAGS (6 bytes) and loads IF, CF");
	f = call_low(iret32, EFLAGS_FIXED1 | EFLAGS_CF | EFLAGS_IF);
	cli();
	report(far_cs_seen == ALT_CS && far_esp_delta == 0 && (f & EFLAGS_CF) && (f & EFLAGS_IF),
	       "[o32] IRETD pops EIP, CS, EFLAGS (12 bytes) and loads IF, CF");
	f = call_low(iret32, EFLAGS_FIXED1);
	report(!(f & (EFLAGS_IF | EFLAGS_CF)), "[o32] IRETD clears IF and CF");
	report_prefix_pop();
}

/* ---- reading code that has run ---- */

extern char pushf_probe[], ljmp_probe[];
u32 pushf_probe_call(void);
void ljmp_probe_call(void);
asm(".text\n"
    "pushf_probe_call:\n"
    "pushf_probe:\n\t"
    "pushfl\n\t"
    "popl %eax\n\t"
    "ret\n"
    "ljmp_probe_call:\n"
    "ljmp_probe:\n\t"
    "ljmpl $0x08, $1f\n"
    "1:\tret\n");

static void test_code_reads(void)
{
	report_prefix_push("code");
	pushf_probe_call();
	u8 first = *(volatile u8 *)pushf_probe;
	report(first == 0x9c, "a data read of executed code sees its own bytes (PUSHFD 9c, read %x)",
	       first);
	ljmp_probe_call();
	first = *(volatile u8 *)ljmp_probe;
	report(first == 0xea, "a data read of executed code sees its own bytes (far JMP ea, read %x)",
	       first);
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	setup_gdt();
	memset(scratch, 0x5a, sizeof(scratch));
	test_pushf_popf();
	test_store_tables();
	test_store_selectors();
	test_access_rights();
	test_mov_sreg();
	test_push_pop_sreg();
	test_load_far();
	test_far();
	test_code_reads();
	return report_summary();
}
