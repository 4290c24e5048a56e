/* Every exception vector a monitor reflects (vector, error code, saved EIP) and PIC/PIT interrupts */
#include "guest.h"

/* Check names are "#XX: [...] what" for exceptions, "irq: ..." for PIC/PIT interrupts. */

#define NP_DS 0x30	/* data segment, P=0 */
#define SMALL_SS 0x38	/* data, limit set just above the stack by the #SS check */
#define GDT_ENTRIES 8
#define BR_VECTOR 5
#define NM_VECTOR 7
#define DF_VECTOR 8
#define TS_VECTOR 10
#define SS_VECTOR 12
#define MF_VECTOR 16
#define AC_VECTOR 17
#define CR0_MP (1u << 1)
#define CR0_EM (1u << 2)
#define CR0_NE (1u << 5)
#define CR0_AM (1u << 18)
#define EFLAGS_AC (1u << 18)
#define EFLAGS_NT (1u << 14)
/* Command-line words naming QEMU deviations (guests::qemu::QUIRKS): the check is reported
 * as skipped instead of run. The monitor runs without them. */
#define QUIRK_INT1 "quirk-int1-ud"
#define QUIRK_NO_LIMITS "quirk-no-segment-limit-checks"
#define QUIRK_LTR_NULL "quirk-ltr-null-accepted"
#define QUIRK_NO_AC "quirk-no-alignment-check"
#define SKIP_BY(q, name) report_skip(name ": skipped by " q)

/* Catches one fault of `vec` from the FAULT_ASM() instruction; true if vector, error code
 * and saved EIP (the faulting instruction) are right. */
#define CHECK_FAULT(vec, err, insn, ...)                                                       \
	({                                                                                     \
		catch_begin(vec);                                                              \
		asm volatile(FAULT_ASM(insn) __VA_ARGS__);                                     \
		catch_end(vec, err);                                                           \
	})

/* Traps save the EIP of the next instruction: where FAULT_ASM resumes. */
static bool trap_seen(int vector, u32 next)
{
	return last_fault.count == 1 && last_fault.vector == (u32)vector && last_fault.eip == next;
}

/* An instruction-breakpoint #DB handler that resumes at the breakpoint with RF set. */
static volatile u32 db_rf_hits;
static void db_rf_handler(struct frame *f)
{
	db_rf_hits++;
	f->eflags |= 1u << 16; /* RF */
}

/* A data-breakpoint #DB handler: a trap, so it only records where it came from. */
static volatile u32 watched_var;
static volatile u32 db_data_hits, db_data_eip;
static void db_data_handler(struct frame *f)
{
	db_data_hits++;
	db_data_eip = f->eip;
}

/* DR7 for DR0 as a 4-byte data breakpoint: L0, R/W0 (01 writes, 11 reads and writes),
 * LEN0 = 11. */
#define DR7_DR0_WRITE4 0x000d0001u
#define DR7_DR0_RW4 0x000f0001u

static void test_data_breakpoints(void)
{
	u32 after = 0, dr6 = 0;

	/* A write to a watched dword traps after the writing instruction; a read does not. */
	db_data_hits = 0;
	handle_exception(DB_VECTOR, db_data_handler);
	asm volatile("xorl %%eax, %%eax; movl %%eax, %%dr6\n\t"
		     "movl %[var], %%eax; movl %%eax, %%dr0\n\t"
		     "movl %[dr7], %%eax; movl %%eax, %%dr7\n\t"
		     "movl $8884f, %[after]\n\t"
		     "movl $5, %[w]\n\t"
		     "8884: movl %[w], %%eax\n\t"
		     "xorl %%eax, %%eax; movl %%eax, %%dr7; movl %%dr6, %%eax; movl %%eax, %[dr6]"
		     : [after] "=m"(after), [dr6] "=m"(dr6), [w] "+m"(watched_var)
		     : [var] "i"(&watched_var), [dr7] "i"(DR7_DR0_WRITE4)
		     : "eax", "memory");
	handle_exception(DB_VECTOR, NULL);
	report(db_data_hits == 1 && db_data_eip == after && (dr6 & 1) && watched_var == 5,
	       "[dr0 write] a write to a watched dword traps after the instruction, DR6.B0; a "
	       "read does not (hits %u, eip %x, expected %x, dr6 %x)",
	       db_data_hits, db_data_eip, after, dr6);

	/* R/W = 11: a read traps too, here through a byte inside the watched dword. */
	db_data_hits = 0;
	handle_exception(DB_VECTOR, db_data_handler);
	asm volatile("xorl %%eax, %%eax; movl %%eax, %%dr6\n\t"
		     "movl %[var], %%eax; movl %%eax, %%dr0\n\t"
		     "movl %[dr7], %%eax; movl %%eax, %%dr7\n\t"
		     "movl $8885f, %[after]\n\t"
		     "movb 2+%[w], %%al\n\t"
		     "8885: xorl %%eax, %%eax; movl %%eax, %%dr7; movl %%dr6, %%eax; movl %%eax, %[dr6]"
		     : [after] "=m"(after), [dr6] "=m"(dr6), [w] "+m"(watched_var)
		     : [var] "i"(&watched_var), [dr7] "i"(DR7_DR0_RW4)
		     : "eax", "memory");
	handle_exception(DB_VECTOR, NULL);
	report(db_data_hits == 1 && db_data_eip == after && (dr6 & 1),
	       "[dr0 read/write] a byte read inside a watched dword traps after the instruction "
	       "(hits %u, eip %x, expected %x, dr6 %x)",
	       db_data_hits, db_data_eip, after, dr6);

	/* An implicit write: PUSH onto a watched stack slot traps after it; LEA of the slot's
	 * address and POP (a read) do not. */
	db_data_hits = 0;
	handle_exception(DB_VECTOR, db_data_handler);
	asm volatile("xorl %%eax, %%eax; movl %%eax, %%dr6\n\t"
		     "leal -4(%%esp), %%eax; movl %%eax, %%dr0\n\t"
		     "movl %[dr7], %%eax; movl %%eax, %%dr7\n\t"
		     "movl $8886f, %[after]\n\t"
		     "leal -4(%%esp), %%eax\n\t"
		     "pushl $7\n\t"
		     "8886: popl %%eax\n\t"
		     "xorl %%eax, %%eax; movl %%eax, %%dr7; movl %%dr6, %%eax; movl %%eax, %[dr6]"
		     : [after] "=m"(after), [dr6] "=m"(dr6)
		     : [dr7] "i"(DR7_DR0_WRITE4)
		     : "eax", "memory");
	handle_exception(DB_VECTOR, NULL);
	report(db_data_hits == 1 && db_data_eip == after && (dr6 & 1),
	       "[dr0 push] a PUSH onto a watched stack slot traps after it; LEA and POP do not "
	       "(hits %u, eip %x, expected %x, dr6 %x)",
	       db_data_hits, db_data_eip, after, dr6);
}

static void test_de_db_bp_of_br_ud(void)
{
	u32 next;

	report_prefix_push("#DE");
	report(CHECK_FAULT(DE_VECTOR, 0, "divl %0", ::"r"(0), "a"(7), "d"(0)),
	       "[div] DIV r32 by zero: vector 0, faulting EIP");
	report(CHECK_FAULT(DE_VECTOR, 0, "divb %b0", ::"q"(0), "a"(7)),
	       "[div] DIV r8 by zero");
	report(CHECK_FAULT(DE_VECTOR, 0, "idivw %w0", ::"r"(-1), "a"(0x8000), "d"(0xffff)),
	       "[idiv] IDIV r16 overflow (-32768 / -1)");
	report_prefix_pop();

	report_prefix_push("#DB");
	if (cmdline_has(QUIRK_INT1)) {
		SKIP_BY(QUIRK_INT1, "[int1] INT1 (F1): vector 1, EIP after it");
	} else {
		catch_begin(DB_VECTOR);
		asm volatile("movl $8882f, %0\n\t" FAULT_ASM(".byte 0xf1") : "=m"(next));
		handle_exception(DB_VECTOR, NULL);
		fault_resume_eip = 0;
		report(trap_seen(DB_VECTOR, next),
		       "[int1] INT1 (F1): vector 1, EIP after it (got %u faults, vector %u, eip %x, "
		       "expected %x)",
		       last_fault.count, last_fault.vector, last_fault.eip, next);
	}
	/* an instruction breakpoint is a fault: the saved EIP is the breakpoint address */
	u32 dr6 = 0;
	catch_begin(DB_VECTOR);
	asm volatile("xorl %%eax, %%eax; movl %%eax, %%dr6\n\t"
		     "movl $8881f, %%eax; movl %%eax, %%dr0; movl $0x1, %%eax; movl %%eax, %%dr7\n\t"
		     FAULT_ASM("nop")
		     "xorl %%eax, %%eax; movl %%eax, %%dr7; movl %%dr6, %%eax; movl %%eax, %0"
		     : "=m"(dr6)
		     :
		     : "eax", "memory");
	report(catch_end(DB_VECTOR, 0) && (dr6 & 1),
	       "[dr0] execution breakpoint in DR0/DR7: vector 1, EIP of the instruction, DR6.B0 "
	       "(dr6 %x)",
	       dr6);
	/* IRET with RF set runs the breakpointed instruction once, without a second #DB */
	u32 ran = 0;
	db_rf_hits = 0;
	handle_exception(DB_VECTOR, db_rf_handler);
	asm volatile("movl $8883f, %%eax; movl %%eax, %%dr0; movl $0x1, %%eax; movl %%eax, %%dr7\n\t"
		     "8883: incl %0\n\t"
		     "xorl %%eax, %%eax; movl %%eax, %%dr7"
		     : "+m"(ran)
		     :
		     : "eax", "memory");
	handle_exception(DB_VECTOR, NULL);
	report(db_rf_hits == 1 && ran == 1,
	       "[dr0] returning with RF set runs the instruction once (hits %u, ran %u)", db_rf_hits,
	       ran);
	test_data_breakpoints();
	report_prefix_pop();

	report_prefix_push("#BP");
	catch_begin(BP_VECTOR);
	asm volatile("movl $8882f, %0\n\t" FAULT_ASM("int3") : "=m"(next));
	handle_exception(BP_VECTOR, NULL);
	fault_resume_eip = 0;
	report(trap_seen(BP_VECTOR, next) && last_fault.error == 0,
	       "[int3] vector 3, EIP after the instruction");
	report_prefix_pop();

	report_prefix_push("#OF");
	catch_begin(4);
	asm volatile("movl $8882f, %0\n\tmovb $0x7f, %%al; addb $1, %%al\n\t" FAULT_ASM("into")
		     : "=m"(next)
		     :
		     : "eax", "cc");
	handle_exception(4, NULL);
	fault_resume_eip = 0;
	report(trap_seen(4, next), "[into] vector 4 with OF=1, EIP after INTO");
	catch_begin(4);
	asm volatile("xorl %%eax, %%eax\n\t" FAULT_ASM("into") ::: "eax", "cc");
	handle_exception(4, NULL);
	fault_resume_eip = 0;
	report(last_fault.count == 0, "[into] nothing with OF=0");
	report_prefix_pop();

	report_prefix_push("#BR");
	static s32 bounds[2] = { 10, 20 };
	report(CHECK_FAULT(BR_VECTOR, 0, "boundl %0, %1", ::"r"(21), "m"(bounds)),
	       "[bound] BOUND above the upper bound: vector 5, faulting EIP");
	report(CHECK_FAULT(BR_VECTOR, 0, "boundl %0, %1", ::"r"(9), "m"(bounds)),
	       "[bound] BOUND below the lower bound");
	catch_begin(BR_VECTOR);
	asm volatile(FAULT_ASM("boundl %0, %1") ::"r"(15), "m"(bounds));
	handle_exception(BR_VECTOR, NULL);
	fault_resume_eip = 0;
	report(last_fault.count == 0, "[bound] BOUND inside the bounds: nothing");
	report_prefix_pop();

	report_prefix_push("#UD");
	report(CHECK_FAULT(UD_VECTOR, 0, "ud2"), "[ud2] vector 6, faulting EIP");
	report(CHECK_FAULT(UD_VECTOR, 0, "lock; nop"), "[lock] LOCK NOP");
	report(CHECK_FAULT(UD_VECTOR, 0, ".byte 0x8d, 0xc0"),
	       "[lea] LEA with a register source (8D C0)");
	report_prefix_pop();
}

/* ---- FPU: #NM, #MF ---- */

static void test_fpu(void)
{
	u32 cr0 = read_cr0();

	report_prefix_push("#NM");
	asm volatile("fninit");
	write_cr0(cr0 | CR0_TS | CR0_MP);
	report(CHECK_FAULT(NM_VECTOR, 0, "fld1"), "[ts] FLD1 with CR0.TS=1: vector 7, faulting EIP");
	report(CHECK_FAULT(NM_VECTOR, 0, "fwait"), "[ts] WAIT with CR0.TS=1 and CR0.MP=1");
	asm volatile("clts");
	write_cr0((cr0 & ~CR0_TS) | CR0_EM);
	report(CHECK_FAULT(NM_VECTOR, 0, "fld1"), "[em] FLD1 with CR0.EM=1");
	write_cr0(cr0);
	report_prefix_pop();

	report_prefix_push("#MF");
	write_cr0(cr0 | CR0_NE);
	u16 cw = 0x037b; /* every exception masked except zero-divide (ZM, bit 2) */
	/* ST0 = 1 / 0: the zero-divide stays pending until the next waiting FPU instruction */
	asm volatile("fninit; fldcw %0; fldz; fld1; fdiv %%st(1), %%st" ::"m"(cw));
	report(CHECK_FAULT(MF_VECTOR, 0, "fwait"),
	       "[ne] pending zero-divide: vector 16 at the next WAIT");
	asm volatile("fninit");
	write_cr0(cr0);
	report_prefix_pop();
}

/* ---- #DF, #TS, #NP, #SS, #GP ---- */

static volatile u32 df_count, df_error;
static void df_handler(struct frame *f)
{
	df_count++;
	df_error = f->error;
	f->eip = fault_resume_eip;
	fault_resume_eip = 0;
}

static void test_segment_faults(void)
{
	report_prefix_push("#DF");
	/* #GP whose gate is not present: the #NP it raises is contributory too */
	u32 saved = idt[GP_VECTOR].hi;
	idt[GP_VECTOR].hi &= ~0x8000u;
	df_count = 0;
	df_error = ~0u;
	handle_exception(DF_VECTOR, df_handler);
	asm volatile("movl $8882f, fault_resume_eip\n\t"
		     "movw %w0, %%fs\n"
		     "8882:" ::"r"(0x1f8)
		     : "memory");
	idt[GP_VECTOR].hi = saved;
	handle_exception(DF_VECTOR, NULL);
	asm volatile("movw %w0, %%fs" ::"r"(KERNEL_DS));
	report(df_count == 1 && df_error == 0,
	       "[gp-np] #GP through a not-present gate: vector 8, error 0 (count %u, error %x)",
	       df_count, df_error);
	report_prefix_pop();

	report_prefix_push("#TS");
	/* IRET with NT=1 returns to the task in TSS.link; a link beyond the GDT limit is #TS */
	tss.link = 0x1f8;
	catch_begin(TS_VECTOR);
	/* a valid same-level IRET frame under the IRET: a CPU that ignored NT would return
	 * through it to the resume point instead of running off */
	asm volatile("movl %%esp, %%ecx\n\t"
		     "pushfl\n\tpushl %%cs\n\tpushl $8882f\n\t"
		     "pushfl; orl %0, (%%esp); popfl\n\t" FAULT_ASM("iret")
		     "movl %%ecx, %%esp\n\t"
		     "pushfl; andl %1, (%%esp); popfl" ::"i"(EFLAGS_NT),
		     "i"(~EFLAGS_NT)
		     : "ecx", "memory", "cc");
	tss.link = 0;
	report(catch_end(TS_VECTOR, 0x1f8),
	       "[iret-nt] IRET with NT=1 and a back link beyond the GDT: vector 10, error = link");
	report_prefix_pop();

	report_prefix_push("#NP");
	report(CHECK_FAULT(NP_VECTOR, NP_DS, "movw %w0, %%gs", ::"r"(NP_DS)) &&
		       READ_SREG(gs) == KERNEL_DS,
	       "[mov_to_sreg] not-present data segment: vector 11, error = selector");
	catch_begin(NP_VECTOR);
	/* a faulting POP leaves ESP alone: the selector is still on the stack afterwards */
	asm volatile("pushl %0\n\t" FAULT_ASM("popl %%es") "addl $4, %%esp" ::"r"(NP_DS)
		     : "memory");
	report(catch_end(NP_VECTOR, NP_DS) && READ_SREG(es) == KERNEL_DS,
	       "[pop_sreg] POP ES of a not-present segment, ES unchanged");
	report_prefix_pop();

	report_prefix_push("#SS");
	report(CHECK_FAULT(SS_VECTOR, NP_DS, "movw %w0, %%ss", ::"r"(NP_DS)) &&
		       READ_SREG(ss) == KERNEL_DS,
	       "[mov_to_sreg] SS from a not-present segment: vector 12, error = selector");
	/* SS limited to just above the current stack, so the #SS frame itself still fits */
	if (cmdline_has(QUIRK_NO_LIMITS)) {
		SKIP_BY(QUIRK_NO_LIMITS, "[limit] SS-relative load past the SS limit: vector 12, error 0");
		goto gp;
	}
	u32 esp;
	asm volatile("movl %%esp, %0" : "=r"(esp));
	gdt[SMALL_SS >> 3] = make_segment(0, (esp >> 12) + 1, 0x93, 0xc);
	u32 v = 0;
	catch_begin(SS_VECTOR);
	asm volatile("movw %w2, %%ss\n\t" FAULT_ASM("movl %%ss:(%1), %0") "movw %w3, %%ss"
		     : "+r"(v)
		     : "r"(0xfffffff0u), "r"(SMALL_SS), "r"(KERNEL_DS)
		     : "memory");
	report(catch_end(SS_VECTOR, 0), "[limit] SS-relative load past the SS limit: vector 12, error 0");
gp:
	report_prefix_pop();

	report_prefix_push("#GP");
	report(CHECK_FAULT(GP_VECTOR, 0x1f8, "movw %w0, %%ds", ::"r"(0x1f8)),
	       "[mov_to_sreg] selector beyond the GDT limit: error = selector");
	report(CHECK_FAULT(GP_VECTOR, 0, "movw %w0, %%ss", ::"r"(0)), "[mov_to_sreg] null SS: error 0");
	report(CHECK_FAULT(GP_VECTOR, 0x42 * 8 + 2, "int $0x42"),
	       "[int] INT through an empty IDT entry: error = vector*8+2 (IDT bit)");
	if (cmdline_has(QUIRK_LTR_NULL))
		SKIP_BY(QUIRK_LTR_NULL, "[ltr] LTR of the null selector: error 0");
	else
		report(CHECK_FAULT(GP_VECTOR, 0, "ltr %w0", ::"r"(0)),
		       "[ltr] LTR of the null selector: error 0");
	/* where LTR of null did not fault, TR is no longer the TSS the CPL 3 checks need */
	u16 tr;
	asm volatile("str %0" : "=r"(tr));
	if (tr != TSS_SEL) {
		gdt[TSS_SEL >> 3].hi &= ~(2u << 8);
		asm volatile("ltr %w0" ::"r"(TSS_SEL));
	}
	report(CHECK_FAULT(GP_VECTOR, KERNEL_DS, "ljmp $0x10, $0"),
	       "[far_jmp] far JMP to a data segment: error = selector");
	report_prefix_pop();

	report_prefix_push("#PF");
	report_skip("[paging] page faults need paging, which this kernel leaves off");
	report_prefix_pop();
}

/* ---- #AC at CPL 3 ---- */

static volatile bool ac_seen;
static void ac_user(void)
{
	catch_begin(AC_VECTOR);
	asm volatile("pushfl; orl %0, (%%esp); popfl\n\t" FAULT_ASM("movl 1(%%esp), %%eax")
		     "pushfl; andl %1, (%%esp); popfl" ::"i"(EFLAGS_AC),
		     "i"(~EFLAGS_AC)
		     : "eax", "memory", "cc");
	ac_seen = catch_end(AC_VECTOR, 0) && last_fault.cs == USER_CS;
	user_return(0);
}

static void test_ac(void)
{
	report_prefix_push("#AC");
	if (cmdline_has(QUIRK_NO_AC)) {
		SKIP_BY(QUIRK_NO_AC, "[cpl3] misaligned load with CR0.AM=1, EFLAGS.AC=1: vector 17, error 0");
		report_prefix_pop();
		return;
	}
	u32 cr0 = read_cr0();
	write_cr0(cr0 | CR0_AM);
	ac_seen = false;
	run_user(ac_user, EFLAGS_FIXED1);
	write_cr0(cr0);
	report(ac_seen, "[cpl3] misaligned load with CR0.AM=1, EFLAGS.AC=1: vector 17, error 0");
	report_prefix_pop();
}

/* ---- PIC and PIT ---- */

static volatile u32 irq_order[4], irq_seen, irq0_eoi, irq0_mask;

static void irq_probe(struct frame *f)
{
	if (irq_seen < 4)
		irq_order[irq_seen] = f->vector;
	irq_seen++;
	if (f->vector == IRQ_BASE + 4) {
		outb(0, SERIAL_PORT + 1); /* IER off: the THRE interrupt stops */
		pic_eoi(4);
	} else if (irq0_eoi) {
		/*
		 * Masked once taken: on a loaded host the next tick can come before
		 * the IRET, and IRQ 0 would win again over a pending IRQ 4.
		 */
		if (irq0_mask)
			pic_mask(0);
		pic_eoi(0);
	}
}

static u8 pic_read_irr(void)
{
	outb(0x0a, 0x20);
	return inb(0x20);
}

static u8 pic_read_isr(void)
{
	outb(0x0b, 0x20);
	return inb(0x20);
}

static void spin(u32 n)
{
	for (volatile u32 i = 0; i < n; i++)
		;
}

static void wait_irq(u32 count)
{
	for (u32 i = 0; irq_seen < count && i < 200000000; i++)
		asm volatile("pause");
}

static void test_irq(void)
{
	report_prefix_push("irq");
	handler_fn saved0 = get_handler(IRQ_BASE), saved4 = get_handler(IRQ_BASE + 4);
	handle_exception(IRQ_BASE, irq_probe);
	handle_exception(IRQ_BASE + 4, irq_probe);
	irq_seen = 0;
	irq0_eoi = 0;

	/* masked: the PIT runs, the request waits in IRR */
	pit_start(1000);
	pic_mask(0);
	sti();
	spin(20000000);
	u8 irr = 0;
	for (u32 i = 0; !(irr & 1) && i < 100000000; i++)
		irr = pic_read_irr();
	report(irq_seen == 0 && (irr & 1), "a masked IRQ 0 is not delivered, IRR bit 0 set");

	pic_unmask(0);
	wait_irq(1);
	report(irq_seen >= 1 && irq_order[0] == IRQ_BASE, "unmasked, IRQ 0 arrives as vector 0x20");
	/* no EOI yet: IRQ 0 stays in service and blocks itself */
	spin(20000000);
	u8 isr = pic_read_isr();
	report(irq_seen == 1 && (isr & 1), "without EOI no second IRQ 0, ISR bit 0 set (isr %x)",
	       isr);
	irq0_eoi = 1;
	pic_eoi(0);
	wait_irq(2);
	report(irq_seen >= 2, "after EOI IRQ 0 arrives again");
	cli();
	pit_stop();
	pic_eoi(0);

	/* priority: IRQ 0 and IRQ 4 (UART transmitter empty) pending together, 0 goes first */
	irq_seen = 0;
	irq0_eoi = 1;
	irq0_mask = 1;
	pit_start(1000);
	pic_mask(0);
	for (u32 i = 0; !(pic_read_irr() & 1) && i < 100000000; i++)
		;
	/*
	 * The THRE interrupt is raised only while the transmitter is empty: a
	 * report still going out (a slow console behind the UART) would leave
	 * IRQ 4 idle while IRQ 0 fires again and again.
	 */
	for (u32 i = 0; (inb(SERIAL_PORT + 5) & 0x60) != 0x60 && i < 100000000; i++)
		asm volatile("pause");
	outb(0x08, SERIAL_PORT + 4); /* MCR.OUT2 routes the UART interrupt */
	outb(0x02, SERIAL_PORT + 1); /* IER: transmitter holding register empty */
	for (u32 i = 0; (pic_read_irr() & 0x11) != 0x11 && i < 100000000; i++)
		;
	pic_unmask(0);
	pic_unmask(4);
	sti();
	wait_irq(2);
	cli();
	pit_stop();
	pic_mask(0);
	pic_mask(4);
	outb(0, SERIAL_PORT + 1);
	outb(0x0b, SERIAL_PORT + 4);
	report(irq_seen >= 2 && irq_order[0] == IRQ_BASE && irq_order[1] == IRQ_BASE + 4,
	       "IRQ 0 and IRQ 4 pending: IRQ 0 first (got %x then %x)", irq_order[0], irq_order[1]);
	irq0_mask = 0;
	handle_exception(IRQ_BASE, saved0);
	handle_exception(IRQ_BASE + 4, saved4);
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	gdt[NP_DS >> 3] = make_segment(0, 0xfffff, 0x13, 0xc);
	gdt[SMALL_SS >> 3] = make_segment(0, 0xfffff, 0x93, 0xc);
	gdt_load(GDT_ENTRIES);
	test_de_db_bp_of_br_ud();
	test_fpu();
	test_segment_faults();
	test_irq();
	/* last: a monitor that cannot deliver #AC may lose the guest here */
	test_ac();
	return report_summary();
}
