/* Exceptions and interrupts through the guest's own IDT, and the CPL 0 / CPL 3 boundary */
#include "guest.h"

#define NOT_PRESENT_DS 0x30
#define GDT_ENTRIES 7
#define EMPTY_VECTOR 0x40
#define ABSENT_VECTOR 0x41

/* ---- faults and traps at CPL 0 ---- */

static volatile u32 db_count, db_eip;

static void single_step_handler(struct frame *f)
{
	if (db_count++ == 0)
		db_eip = f->eip;
	f->eflags &= ~EFLAGS_TF;
}

static void test_faults(void)
{
	report_prefix_push("cpl0");
	u32 resumed = 0;

	catch_begin(DE_VECTOR);
	asm volatile("xorl %%edx, %%edx; movl $7, %%eax;" FAULT_ASM("divl %1") "movl $1, %0"
		     : "+m"(resumed)
		     : "r"(0)
		     : "eax", "edx");
	report(catch_end(DE_VECTOR, 0) && resumed == 1,
	       "#DE from DIV by zero: vector 0, faulting EIP, resumes");

	resumed = 0;
	catch_begin(DE_VECTOR);
	asm volatile("movl $0x80000000, %%eax; cltd;" FAULT_ASM("idivl %1") "movl $1, %0"
		     : "+m"(resumed)
		     : "r"(-1)
		     : "eax", "edx");
	report(catch_end(DE_VECTOR, 0) && resumed == 1, "#DE from IDIV overflow");

	resumed = 0;
	catch_begin(UD_VECTOR);
	asm volatile(FAULT_ASM("ud2") "movl $1, %0" : "+m"(resumed));
	report(catch_end(UD_VECTOR, 0) && resumed == 1, "#UD from UD2: faulting EIP, resumes");

	resumed = 0;
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("movw %w1, %%fs") "movl $1, %0" : "+m"(resumed) : "r"(0x1f8));
	report(catch_end(GP_VECTOR, 0x1f8) && resumed == 1,
	       "#GP(0x1f8) from loading a selector beyond the GDT limit");

	catch_begin(NP_VECTOR);
	asm volatile(FAULT_ASM("movw %w0, %%gs") ::"r"(NOT_PRESENT_DS));
	report(catch_end(NP_VECTOR, NOT_PRESENT_DS) && READ_SREG(gs) == KERNEL_DS,
	       "#NP(0x30) from loading a not-present data segment, GS unchanged");

	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("int $0x40"));
	report(catch_end(GP_VECTOR, EMPTY_VECTOR * 8 + 2),
	       "#GP(vector*8+2) from INT through an all-zero (invalid type) IDT entry");

	idt_set_gate(ABSENT_VECTOR, idt_stub(IRQ_BASE), KERNEL_CS, 0xe, 0);
	idt[ABSENT_VECTOR].hi &= ~0x8000u; /* P=0 */
	catch_begin(NP_VECTOR);
	asm volatile(FAULT_ASM("int $0x41"));
	report(catch_end(NP_VECTOR, ABSENT_VECTOR * 8 + 2),
	       "#NP(vector*8+2) from INT through a not-present interrupt gate");

	/* traps: the saved EIP is the next instruction */
	u32 next;
	catch_begin(BP_VECTOR);
	asm volatile("movl $8882f, %0\n\t" FAULT_ASM("int3") : "=m"(next));
	handle_exception(BP_VECTOR, NULL);
	fault_resume_eip = 0;
	report(last_fault.count == 1 && last_fault.vector == BP_VECTOR && last_fault.eip == next &&
		       last_fault.cs == KERNEL_CS,
	       "#BP from INT3: vector 3, EIP after the instruction");
	catch_begin(BP_VECTOR);
	asm volatile("movl $8882f, %0\n\t" FAULT_ASM("int $3") : "=m"(next));
	handle_exception(BP_VECTOR, NULL);
	fault_resume_eip = 0;
	report(last_fault.count == 1 && last_fault.vector == BP_VECTOR && last_fault.eip == next,
	       "#BP from INT 3 (CD 03)");
	catch_begin(4);
	asm volatile("movl $8882f, %0\n\t"
		     "movl $0x7fffffff, %%eax; addl $1, %%eax\n\t" FAULT_ASM("into")
		     : "=m"(next)
		     :
		     : "eax", "cc");
	handle_exception(4, NULL);
	fault_resume_eip = 0;
	report(last_fault.count == 1 && last_fault.vector == 4 && last_fault.eip == next,
	       "#OF from INTO with OF set");

	db_count = 0;
	handle_exception(DB_VECTOR, single_step_handler);
	u32 dr6;
	asm volatile("movl $0, %%eax; movl %%eax, %%dr6\n\t"
		     "pushfl; orl %2, (%%esp); popfl\n\t"
		     "nop\n"
		     "1:\tmovl $1b, %0\n\t"
		     "movl %%dr6, %%eax; movl %%eax, %1"
		     : "=m"(next), "=m"(dr6)
		     : "i"(EFLAGS_TF)
		     : "eax", "cc", "memory");
	handle_exception(DB_VECTOR, NULL);
	report(db_count == 1 && (dr6 & (1u << 14)),
	       "#DB single step with TF: one trap, DR6.BS set (dr6 %x)", dr6);
	/* TF set by POPF takes effect after the instruction following the POPF */
	report(db_eip == next, "#DB single step stops after the first instruction (eip %x, expected %x)",
	       db_eip, next);
	report_prefix_pop();
}

/* ---- external interrupt ---- */

static volatile u32 irq_count, irq_saved_eflags, irq_handler_eflags, irq_cs, irq_vector;
static volatile u32 irq_user_ss, irq_frame;

static void timer_probe(struct frame *f)
{
	irq_count++;
	irq_vector = f->vector;
	irq_cs = f->cs;
	irq_saved_eflags = f->eflags;
	irq_handler_eflags = read_eflags();
	irq_user_ss = (f->cs & 3) ? f->user_ss : 0;
	irq_frame = (u32)f;
	pic_eoi(0);
}

/* Each of these is one DIV site, run again and again: a site that keeps raising #DE may be
 * translated behind a check of its divisor, which must raise the same #DE and divide as
 * before. Gives the quotient and remainder (EAX, EDX unchanged on #DE) and whether
 * exactly one #DE came from the DIV. */
struct division {
	u32 quotient, remainder;
	bool faulted;
};

static __attribute__((noinline)) struct division div_reg(u32 dividend, u32 divisor)
{
	struct division d;
	catch_begin(DE_VECTOR);
	asm volatile("xorl %%edx, %%edx;" FAULT_ASM("divl %2")
		     : "=a"(d.quotient), "=&d"(d.remainder)
		     : "c"(divisor), "0"(dividend));
	d.faulted = catch_end(DE_VECTOR, 0);
	return d;
}

static volatile u32 divisor_word;
static __attribute__((noinline)) struct division div_mem(u32 dividend, u32 divisor)
{
	struct division d;
	divisor_word = divisor;
	catch_begin(DE_VECTOR);
	asm volatile("xorl %%edx, %%edx;" FAULT_ASM("divl divisor_word")
		     : "=a"(d.quotient), "=&d"(d.remainder)
		     : "0"(dividend));
	d.faulted = catch_end(DE_VECTOR, 0);
	return d;
}

/* AX / BH: AL the quotient, AH the remainder. */
static __attribute__((noinline)) struct division div_byte(u32 dividend, u32 divisor)
{
	struct division d;
	u32 ax = dividend & 0xffff;
	catch_begin(DE_VECTOR);
	asm volatile(FAULT_ASM("divb %%bh") : "+a"(ax) : "b"(divisor << 8));
	d.faulted = catch_end(DE_VECTOR, 0);
	d.quotient = ax & 0xff;
	d.remainder = (ax >> 8) & 0xff;
	if (d.faulted)
		d.quotient = ax;
	return d;
}

static void test_repeated_divide_error(void)
{
	struct division (*const sites[])(u32, u32) = { div_reg, div_mem, div_byte };
	static const char *const names[] = { "DIV ECX", "DIV [mem]", "DIV BH" };
	for (u32 s = 0; s < 3; s++) {
		u32 faults = 0, right = 0, rounds = 24;
		for (u32 i = 0; i < rounds; i++) {
			u32 dividend = 200 + i, divisor = i % 3 == 0 ? 0 : i % 7 + 1;
			struct division d = sites[s](dividend, divisor);
			if (divisor == 0) {
				faults += d.faulted;
				right += d.faulted && d.quotient == dividend;
			} else {
				right += !d.faulted && d.quotient == dividend / divisor &&
					 d.remainder == dividend % divisor;
			}
		}
		report(right == rounds && faults == rounds / 3,
		       "#DE from the same %s %u times between divisions that do not fault: each at "
		       "the DIV, every quotient right (%u of %u)",
		       names[s], rounds / 3, right, rounds);
	}
}

/* Each of these is one BOUND site, run again and again: a site that keeps raising #BR may
 * be translated behind a check of its bounds, which must raise the same #BR, at the
 * BOUND, exactly for the indices outside the bounds. Gives whether exactly one #BR came
 * from the BOUND. */
static volatile s32 bounds_pair[2];

/* Index in EAX, the bounds through DS. */
static __attribute__((noinline)) bool bound_eax(s32 index, s32 lower, s32 upper)
{
	bounds_pair[0] = lower;
	bounds_pair[1] = upper;
	catch_begin(BR_VECTOR);
	asm volatile(FAULT_ASM("boundl %%eax, bounds_pair") : : "a"(index) : "memory");
	return catch_end(BR_VECTOR, 0);
}

/* Index in ECX, the bounds at [EBX]. */
static __attribute__((noinline)) bool bound_ecx(s32 index, s32 lower, s32 upper)
{
	bounds_pair[0] = lower;
	bounds_pair[1] = upper;
	catch_begin(BR_VECTOR);
	asm volatile(FAULT_ASM("boundl %%ecx, (%%ebx)")
		     :
		     : "c"(index), "b"(bounds_pair)
		     : "memory");
	return catch_end(BR_VECTOR, 0);
}

/* Index in EDX, the bounds on the stack (through SS). */
static __attribute__((noinline)) bool bound_edx(s32 index, s32 lower, s32 upper)
{
	catch_begin(BR_VECTOR);
	asm volatile("pushl %2\n\tpushl %1\n\t" FAULT_ASM("boundl %%edx, (%%esp)") "addl $8, %%esp"
		     :
		     : "d"(index), "r"(lower), "r"(upper)
		     : "memory");
	return catch_end(BR_VECTOR, 0);
}

static void test_repeated_bound_range(void)
{
	bool (*const sites[])(s32, s32, s32) = { bound_eax, bound_ecx, bound_edx };
	static const char *const names[] = { "BOUND EAX, [mem]", "BOUND ECX, [EBX]",
					     "BOUND EDX, [ESP]" };
	/* Bounds and indices where the halves of the distances differ and agree, and where
	 * signed and unsigned order disagree. */
	static const s32 cases[][3] = {
		{ 0, 9, 5 },	     { 0, 9, 10 },	    { 0, 9, -1 },
		{ -100, 100, -5 },   { -100, 100, 0x7fffffff }, { -100, 100, (s32)0x80000000 },
		{ 1, 0x10000, 0x10000 }, { 1, 0x10000, 0x10001 }, { 0x12345, 0x20000, 0x12344 },
		{ (s32)0x80000000, 0x7fffffff, 0 }, { (s32)0x80000000, -1, 0 },
		{ 7, 7, 7 },
	};
	const u32 n = sizeof(cases) / sizeof(cases[0]);
	for (u32 s = 0; s < 3; s++) {
		u32 faults = 0, expected = 0, right = 0, rounds = 0;
		for (u32 pass = 0; pass < 4; pass++) {
			for (u32 c = 0; c < n; c++) {
				s32 lower = cases[c][0], upper = cases[c][1], index = cases[c][2];
				bool outside = index < lower || index > upper;
				bool faulted = sites[s](index, lower, upper);
				faults += faulted;
				expected += outside;
				right += faulted == outside;
				rounds++;
			}
		}
		report(right == rounds && faults == expected,
		       "#BR from the same %s %u times among BOUNDs in range: each at the BOUND, "
		       "exactly for the indices outside (%u of %u right)",
		       names[s], expected, right, rounds);
	}
}

static void test_irq(void)
{
	report_prefix_push("irq");
	handler_fn saved = get_handler(IRQ_BASE);
	handle_exception(IRQ_BASE, timer_probe);
	irq_count = 0;
	pit_start(1000);
	sti();
	for (u32 spin = 0; irq_count == 0 && spin < 200000000; spin++)
		asm volatile("pause");
	cli();
	pit_stop();
	handle_exception(IRQ_BASE, saved);
	report(irq_count >= 1 && irq_vector == IRQ_BASE, "PIT IRQ 0 arrives as vector 0x20");
	report(irq_cs == KERNEL_CS && (irq_saved_eflags & EFLAGS_IF),
	       "the frame holds CS 0x08 and the interrupted EFLAGS with IF=1");
	report(!(irq_handler_eflags & EFLAGS_IF), "an interrupt gate clears IF in the handler");
	report_prefix_pop();
}

/* ---- CPL 3 ---- */

static volatile u32 user_cs, user_ss, user_flags_if, user_flags_iopl;
static volatile bool user_cli_gp, user_hlt_gp, user_in_gp, user_cr_gp, user_int_gp;
static volatile u32 user_int80_ret[2];
static volatile u32 syscall_count, syscall_eax[4], syscall_cs[4];

static void syscall_probe(struct frame *f)
{
	if (syscall_count < 4) {
		syscall_eax[syscall_count] = f->eax;
		syscall_cs[syscall_count] = f->cs;
	}
	syscall_count++;
	f->eax = 0x600d0000 | (f->eax & 0xffff);
}

static u32 int80(u32 nr, u32 b, u32 c, u32 d)
{
	u32 r;
	asm volatile("int $0x80" : "=a"(r) : "0"(nr), "b"(b), "c"(c), "d"(d) : "memory");
	return r;
}

static void user_main(void)
{
	user_cs = READ_SREG(cs);
	user_ss = READ_SREG(ss);

	/* IOPL is 0: POPF at CPL 3 silently keeps IF and IOPL */
	write_eflags(read_eflags() & ~EFLAGS_IF);
	user_flags_if = read_eflags() & EFLAGS_IF;
	write_eflags(read_eflags() | EFLAGS_IOPL);
	user_flags_iopl = read_eflags() & EFLAGS_IOPL;

	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("cli"));
	user_cli_gp = catch_end(GP_VECTOR, 0) && last_fault.cs == USER_CS;
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("hlt"));
	user_hlt_gp = catch_end(GP_VECTOR, 0);
	catch_begin(GP_VECTOR);
	u8 v;
	asm volatile(FAULT_ASM("inb $0x80, %0") : "=a"(v));
	(void)v;
	user_in_gp = catch_end(GP_VECTOR, 0);
	catch_begin(GP_VECTOR);
	u32 cr0;
	asm volatile(FAULT_ASM("movl %%cr0, %0") : "=r"(cr0));
	(void)cr0;
	user_cr_gp = catch_end(GP_VECTOR, 0);
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("int $0x20"));
	user_int_gp = catch_end(GP_VECTOR, IRQ_BASE * 8 + 2);

	/* the host's i386 exit and write numbers: only the guest's own gate may see them */
	user_int80_ret[0] = int80(1, 0, 0, 0);
	user_int80_ret[1] = int80(4, 1, (u32) "x\n", 2);

	user_return(0x5e7);
}

static void test_user(void)
{
	report_prefix_push("cpl3");
	set_syscall_hook(syscall_probe);
	syscall_count = 0;
	u32 r = run_user(user_main, EFLAGS_FIXED1 | EFLAGS_IF);
	set_syscall_hook(NULL);
	report(r == 0x5e7, "IRET to CPL 3 and back through the DPL 3 gate 0x80");
	report(user_cs == USER_CS && user_ss == USER_DS, "CPL 3 runs with CS 0x1b, SS 0x23");
	report(user_flags_if, "POPF at CPL 3 cannot clear IF");
	report(!user_flags_iopl, "POPF at CPL 3 cannot change IOPL");
	report(user_cli_gp, "CLI at CPL 3 raises #GP(0)");
	report(user_hlt_gp, "HLT at CPL 3 raises #GP(0)");
	report(user_in_gp, "IN at CPL 3 with IOPL 0 raises #GP(0)");
	report(user_cr_gp, "MOV from CR0 at CPL 3 raises #GP(0)");
	report(user_int_gp, "INT 0x20 (DPL 0 gate) at CPL 3 raises #GP(0x102)");
	report(syscall_count == 2 && syscall_eax[0] == 1 && syscall_cs[0] == USER_CS &&
		       user_int80_ret[0] == 0x600d0001,
	       "INT 0x80 with EAX=1 (host exit) reaches only the guest's handler");
	report(syscall_eax[1] == 4 && user_int80_ret[1] == 0x600d0004,
	       "INT 0x80 with EAX=4 (host write) reaches only the guest's handler");
	report_prefix_pop();
}

static void user_wait_for_irq(void)
{
	for (u32 spin = 0; irq_count == 0 && spin < 200000000; spin++)
		;
	user_return(irq_count);
}

static void test_user_irq(void)
{
	report_prefix_push("cpl3");
	handler_fn saved = get_handler(IRQ_BASE);
	handle_exception(IRQ_BASE, timer_probe);
	irq_count = 0;
	irq_user_ss = 0;
	pit_start(1000);
	u32 n = run_user(user_wait_for_irq, EFLAGS_FIXED1 | EFLAGS_IF);
	pit_stop();
	handle_exception(IRQ_BASE, saved);
	extern char interrupt_stack_top[];
	u32 top = (u32)interrupt_stack_top;
	report(n >= 1 && irq_cs == USER_CS && irq_user_ss == USER_DS,
	       "PIT interrupt at CPL 3: frame holds user CS and SS");
	report(irq_frame < top && irq_frame >= top - 256,
	       "interrupt from CPL 3 switches to TSS.ESP0");
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	gdt[NOT_PRESENT_DS >> 3] = make_segment(0, 0xfffff, 0x13, 0xc); /* P=0 */
	gdt_load(GDT_ENTRIES);
	test_faults();
	report_prefix_push("cpl0");
	test_repeated_divide_error();
	test_repeated_bound_range();
	report_prefix_pop();
	test_irq();
	test_user();
	test_user_irq();
	report_skip("#PF: paging is off in this kernel");
	return report_summary();
}
