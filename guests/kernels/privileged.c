/* Every privileged (trapping) instruction class in its register, memory and operand-size forms */
#include "guest.h"

#define SCR_DS 0x30	/* data, base = scratch, limit 0xffff: 16-bit addresses reach it */
#define LDT_SEL 0x38
#define TSS2_SEL 0x40	/* a second, available TSS */
#define GDT_ENTRIES 9
#define CR0_AM (1u << 18)
/* Command-line words naming QEMU deviations (guests::qemu::QUIRKS): the check is reported
 * as skipped instead of run. The monitor runs without them. */
#define QUIRK_MSR_UNKNOWN "quirk-unknown-msr-ignored"
#define QUIRK_RDPMC "quirk-rdpmc-ud"
#define QUIRK_INT1 "quirk-int1-ud"

static struct descriptor ldt[1] __attribute__((aligned(8)));
static struct tss32 tss2 __attribute__((aligned(16)));
static u8 scratch[0x40] __attribute__((aligned(16)));

static void fs_scratch(void) { asm volatile("movw %w0, %%fs" ::"r"(SCR_DS) : "memory"); }
static void fs_restore(void) { asm volatile("movw %w0, %%fs" ::"r"(KERNEL_DS) : "memory"); }

static void test_flags_and_halt(void)
{
	report_prefix_push("cli");
	sti();
	cli();
	report(!(read_eflags() & EFLAGS_IF), "[cpl0] IF=0 afterwards");
	report_prefix_pop();
	report_prefix_push("sti");
	sti();
	u32 f = read_eflags();
	cli();
	report(f & EFLAGS_IF, "[cpl0] IF=1 afterwards");
	report_prefix_pop();
	report_prefix_push("hlt");
	u32 start = pit_ticks;
	pit_start(1000);
	watchdog_arm(1000, "HLT");
	asm volatile("sti; hlt; cli" ::: "memory");
	watchdog_disarm();
	pit_stop();
	report(pit_ticks != start, "[cpl0] woken by the PIT interrupt");
	report_prefix_pop();
}

static void test_tables(void)
{
	struct pseudo_descriptor p, q;

	report_prefix_push("lgdt");
	p = (struct pseudo_descriptor){ GDT_ENTRIES * 8 - 1, (u32)gdt };
	asm volatile("lgdtl %0" ::"m"(p));
	q = sgdt();
	report(q.base == (u32)gdt && q.limit == p.limit, "[o32 mem] base and limit");
	/* with a 16-bit operand LGDT loads only 24 bits of the base */
	p = (struct pseudo_descriptor){ GDT_ENTRIES * 8 - 9, 0xff000000u | (u32)gdt };
	asm volatile("data16 lgdt %0" ::"m"(p));
	q = sgdt();
	p = (struct pseudo_descriptor){ GDT_ENTRIES * 8 - 1, (u32)gdt };
	asm volatile("lgdtl %0" ::"m"(p));
	report(q.base == (u32)gdt && q.limit == GDT_ENTRIES * 8 - 9,
	       "[o16 mem] loads a 24-bit base (%x)", q.base);
	memcpy(scratch, &p, sizeof(p));
	scratch[0] = (u8)(GDT_ENTRIES * 8 - 1 - 8);
	fs_scratch();
	asm volatile("addr16 lgdtl %%fs:(%%bx)" ::"b"(0) : "memory");
	fs_restore();
	q = sgdt();
	asm volatile("lgdtl %0" ::"m"(p));
	report(q.limit == GDT_ENTRIES * 8 - 9 && q.base == (u32)gdt,
	       "[a16 seg mem] through FS with a 16-bit address");
	report_prefix_pop();

	report_prefix_push("lidt");
	p = (struct pseudo_descriptor){ 0x3ff, (u32)idt };
	asm volatile("lidtl %0" ::"m"(p));
	q = sidt();
	report(q.base == (u32)idt && q.limit == 0x3ff, "[o32 mem] base and limit");
	p = (struct pseudo_descriptor){ 0x1ff, 0xff000000u | (u32)idt };
	asm volatile("data16 lidt %0" ::"m"(p));
	q = sidt();
	report(q.base == (u32)idt && q.limit == 0x1ff, "[o16 mem] loads a 24-bit base (%x)", q.base);
	p = (struct pseudo_descriptor){ 0x2ff, (u32)idt };
	memcpy(scratch, &p, sizeof(p));
	fs_scratch();
	asm volatile("addr16 lidtl %%fs:(%%bx)" ::"b"(0) : "memory");
	fs_restore();
	q = sidt();
	idt_load_default();
	report(q.base == (u32)idt && q.limit == 0x2ff, "[a16 seg mem] through FS");
	report_prefix_pop();

	report_prefix_push("lldt");
	u16 sel;
	asm volatile("lldt %w1; sldt %0" : "=r"(sel) : "r"(LDT_SEL));
	report(sel == LDT_SEL, "[reg] LDTR = 0x38");
	u16 m = 0;
	asm volatile("lldt %1; sldt %0" : "=r"(sel) : "m"(m));
	report(sel == 0, "[mem] null selector from memory");
	memcpy(scratch, &(u16){ LDT_SEL }, 2);
	fs_scratch();
	asm volatile("addr16 lldt %%fs:(%%bx); sldt %0" : "=r"(sel) : "b"(0) : "memory");
	fs_restore();
	u32 v;
	asm volatile("movw %w1, %%gs; movl %%gs:(%2), %0; movw %w3, %%gs"
		     : "=r"(v)
		     : "r"(0x04), "r"(&scratch[0]), "r"(KERNEL_DS)
		     : "memory");
	report(sel == LDT_SEL && v == *(u32 *)scratch, "[a16 seg mem] the loaded LDT is used");
	report_prefix_pop();

	report_prefix_push("ltr");
	asm volatile("ltr %w1; str %0" : "=r"(sel) : "r"(TSS2_SEL));
	report(sel == TSS2_SEL && ((gdt[TSS2_SEL >> 3].hi >> 8) & 0xf) == 0xb,
	       "[reg] TR = 0x40, the descriptor marked busy");
	/* back to the library TSS: clear its busy bit first, as a kernel would */
	gdt[TSS_SEL >> 3].hi &= ~(2u << 8);
	m = TSS_SEL;
	asm volatile("ltr %1; str %0" : "=r"(sel) : "m"(m));
	report(sel == TSS_SEL, "[mem] selector from memory");
	gdt[TSS2_SEL >> 3].hi &= ~(2u << 8);
	report_prefix_pop();
}

static void test_control(void)
{
	u32 cr0 = read_cr0(), v;

	report_prefix_push("mov_cr");
	write_cr0(cr0 | CR0_AM);
	report((read_cr0() & CR0_AM) != 0, "[cr0] AM written and read back");
	write_cr0(cr0);
	write_cr2(0xfeedf00d);
	report(read_cr2() == 0xfeedf00d, "[cr2] write then read");
	u32 cr3 = read_cr3();
	write_cr3(0x00456000);
	v = read_cr3();
	write_cr3(cr3);
	report(v == 0x00456000, "[cr3] write then read with paging off");
	u32 cr4 = read_cr4();
	write_cr4(cr4 | CR4_PCE);
	v = read_cr4();
	write_cr4(cr4);
	report((v & CR4_PCE) && read_cr4() == cr4, "[cr4] PCE set and cleared");
	report_prefix_pop();

	report_prefix_push("mov_dr");
	/* all four written before any is read, so one register cannot alias another */
	u32 d[4];
	asm volatile("movl %0, %%dr0; movl %1, %%dr1" ::"r"(0x00c0ffe0u), "r"(0x00c0ffe4u));
	asm volatile("movl %0, %%dr2; movl %1, %%dr3" ::"r"(0x00c0ffe8u), "r"(0x00c0ffecu));
	asm volatile("movl %%dr0, %0; movl %%dr1, %1" : "=r"(d[0]), "=r"(d[1]));
	asm volatile("movl %%dr2, %0; movl %%dr3, %1" : "=r"(d[2]), "=r"(d[3]));
	report(d[0] == 0x00c0ffe0, "[dr0] write then read");
	report(d[1] == 0x00c0ffe4, "[dr1] write then read");
	report(d[2] == 0x00c0ffe8, "[dr2] write then read");
	report(d[3] == 0x00c0ffec, "[dr3] write then read");
	asm volatile("movl %1, %%dr6; movl %%dr6, %0" : "=r"(v) : "r"(0));
	report(v == 0xffff0ff0, "[dr6] 0 reads back with the fixed bits set (%x)", v);
	asm volatile("movl %1, %%dr7; movl %%dr7, %0; movl %2, %%dr7" : "=&r"(v) : "r"(0x00000300u), "r"(0));
	report((v & 0x300) == 0x300 && (v & 0x400), "[dr7] LE/GE kept, bit 10 fixed (%x)", v);
	report_prefix_pop();

	report_prefix_push("clts");
	write_cr0(cr0 | CR0_TS);
	asm volatile("clts");
	report(!(read_cr0() & CR0_TS), "[cpl0] clears CR0.TS");
	report_prefix_pop();

	report_prefix_push("lmsw");
	asm volatile("lmsw %w0" ::"r"((u16)(cr0 | CR0_TS)));
	v = read_cr0();
	asm volatile("clts");
	report((v & CR0_TS) && (v & ~CR0_TS) == (cr0 & ~CR0_TS), "[reg] sets TS, the rest kept");
	u16 msw = (u16)(cr0 | CR0_TS);
	asm volatile("lmsw %0" ::"m"(msw));
	v = read_cr0();
	asm volatile("clts");
	report(v & CR0_TS, "[mem] sets TS from memory");
	memcpy(scratch, &(u16){ (u16)(cr0 & ~CR0_PE) }, 2);
	fs_scratch();
	asm volatile("addr16 lmsw %%fs:(%%bx)" ::"b"(0) : "memory");
	fs_restore();
	report(read_cr0() & CR0_PE, "[a16 seg mem] cannot clear PE");
	write_cr0(cr0);
	report_prefix_pop();
}

static volatile u32 probe = 0x1234;

static void test_misc(void)
{
	report_prefix_push("invd");
	probe = 0x4321;
	asm volatile("wbinvd; invd" ::: "memory");
	report(probe == 0x4321, "[cpl0] after WBINVD memory is kept");
	report_prefix_pop();
	report_prefix_push("wbinvd");
	asm volatile("wbinvd" ::: "memory");
	report(probe == 0x4321, "[cpl0] memory is kept");
	report_prefix_pop();
	report_prefix_push("invlpg");
	asm volatile("invlpg (%0)" ::"r"(&probe) : "memory");
	report(probe == 0x4321, "[mem] paging off: no effect");
	fs_scratch();
	asm volatile("addr16 invlpg %%fs:(%%bx)" ::"b"(0) : "memory");
	fs_restore();
	report(probe == 0x4321, "[a16 seg mem] through FS");
	report_prefix_pop();

	struct cpuid_result f = cpuid(1);
	report_prefix_push("rdmsr");
	if (f.d & (1u << 5)) {
		u64 old = rdmsr(MSR_SYSENTER_ESP);
		wrmsr(MSR_SYSENTER_ESP, 0x13572468);
		report(rdmsr(MSR_SYSENTER_ESP) == 0x13572468, "[ecx] SYSENTER_ESP reads back");
		wrmsr(MSR_SYSENTER_ESP, old);
		bool quirk = cmdline_has(QUIRK_MSR_UNKNOWN);
		if (quirk) {
			report_skip("[ecx] an unknown MSR raises #GP(0): skipped by " QUIRK_MSR_UNKNOWN);
		} else {
			catch_begin(GP_VECTOR);
			u32 lo, hi;
			asm volatile(FAULT_ASM("rdmsr") : "=a"(lo), "=d"(hi) : "c"(0xdead0002u));
			(void)lo;
			(void)hi;
			report(catch_end(GP_VECTOR, 0), "[ecx] an unknown MSR raises #GP(0)");
		}
		report_prefix_pop();
		report_prefix_push("wrmsr");
		wrmsr(MSR_SYSENTER_EIP, 0xabcdef01);
		report(rdmsr(MSR_SYSENTER_EIP) == 0xabcdef01, "[ecx] SYSENTER_EIP written");
		wrmsr(MSR_SYSENTER_EIP, 0);
		if (quirk) {
			report_skip("[ecx] an unknown MSR raises #GP(0): skipped by " QUIRK_MSR_UNKNOWN);
		} else {
			catch_begin(GP_VECTOR);
			asm volatile(FAULT_ASM("wrmsr") ::"c"(0xdead0002u), "a"(0), "d"(0));
			report(catch_end(GP_VECTOR, 0), "[ecx] an unknown MSR raises #GP(0)");
		}
	} else {
		report_skip("[ecx] CPUID has no MSR");
	}
	report_prefix_pop();

	report_prefix_push("rdpmc");
	if (cmdline_has(QUIRK_RDPMC)) {
		report_skip("[cpl0] counter 0 with CR4.PCE=0 does not fault at CPL 0: skipped by " QUIRK_RDPMC);
		report_prefix_pop();
		goto cpuid;
	}
	rdpmc_probe_pce_clear();
	report(last_fault.count == 0, "[cpl0] counter 0 with CR4.PCE=0 does not fault at CPL 0");
	report_prefix_pop();

cpuid:
	report_prefix_push("cpuid");
	struct cpuid_result r0 = cpuid(0), r1 = cpuid(1);
	report(r0.a >= 1 && r0.b != 0, "[leaf0] max leaf and vendor");
	report(((r1.a >> 8) & 0xf) >= 5 && (r1.d & 1), "[leaf1] family and FPU (eax %x)", r1.a);
	report_prefix_pop();
}

static void test_int_classes(void)
{
	u32 next;

	report_prefix_push("int");
	catch_begin(BP_VECTOR);
	asm volatile("movl $8882f, %0\n\t" FAULT_ASM("int $3") : "=m"(next));
	handle_exception(BP_VECTOR, NULL);
	fault_resume_eip = 0;
	report(last_fault.count == 1 && last_fault.vector == BP_VECTOR && last_fault.eip == next,
	       "[imm8] INT 3 (CD 03) delivers vector 3, EIP after it");
	catch_begin(BP_VECTOR);
	asm volatile("movl $8882f, %0\n\t" FAULT_ASM("int3") : "=m"(next));
	handle_exception(BP_VECTOR, NULL);
	fault_resume_eip = 0;
	report_prefix_pop();
	report_prefix_push("int3");
	report(last_fault.count == 1 && last_fault.eip == next, "[cpl0] INT3 (CC): vector 3, EIP after it");
	report_prefix_pop();

	report_prefix_push("int1");
	if (cmdline_has(QUIRK_INT1)) {
		report_skip("[cpl0] INT1 (F1): vector 1, EIP after it: skipped by " QUIRK_INT1);
	} else {
		catch_begin(DB_VECTOR);
		asm volatile("movl $8882f, %0\n\t" FAULT_ASM(".byte 0xf1") : "=m"(next));
		handle_exception(DB_VECTOR, NULL);
		fault_resume_eip = 0;
		report(last_fault.count == 1 && last_fault.vector == DB_VECTOR && last_fault.eip == next,
		       "[cpl0] INT1 (F1): vector 1, EIP after it (eip %x, expected %x)", last_fault.eip,
		       next);
	}
	report_prefix_pop();

	report_prefix_push("into");
	catch_begin(4);
	asm volatile("movl $8882f, %0\n\tmovl $0x7fffffff, %%eax; incl %%eax\n\t" FAULT_ASM("into")
		     : "=m"(next)
		     :
		     : "eax", "cc");
	handle_exception(4, NULL);
	fault_resume_eip = 0;
	report(last_fault.count == 1 && last_fault.vector == 4 && last_fault.eip == next,
	       "[cpl0] OF=1: vector 4");
	report_prefix_pop();

	report_prefix_push("ud");
	catch_begin(UD_VECTOR);
	asm volatile(FAULT_ASM("ud2"));
	report(catch_end(UD_VECTOR, 0), "[ud2] vector 6 at the instruction");
	catch_begin(UD_VECTOR);
	asm volatile(FAULT_ASM(".byte 0x0f, 0xb9, 0xc0 /* ud1 eax, eax */"));
	report(catch_end(UD_VECTOR, 0), "[ud1] vector 6 at the instruction");
	report_prefix_pop();
}

/* ---- instructions this IA-32 CPU model does not have, or has disabled: #UD ---- */

#define UD_CHECK(cls, insn, what)                                                              \
	do {                                                                                   \
		report_prefix_push(cls);                                                       \
		catch_begin(UD_VECTOR);                                                        \
		asm volatile(FAULT_ASM(insn)::"D"(scratch), "a"(0), "c"(0), "d"(0) : "memory"); \
		report(catch_end(UD_VECTOR, 0), "[cpl0] " what);                               \
		report_prefix_pop();                                                           \
	} while (0)

static volatile u32 ud_probe_hits;
static void ud_probe(struct frame *f)
{
	ud_probe_hits++;
	f->eip = fault_resume_eip;
	fault_resume_eip = 0;
}

static void test_absent(void)
{
	struct cpuid_result r1 = cpuid(1), r0 = cpuid(0), e0 = cpuid(0x80000000);
	u32 leaf7_ebx = r0.a >= 7 ? cpuid(7).b : 0;
	u32 ext_edx = e0.a >= 0x80000001 ? cpuid(0x80000001).d : 0;
	if (!(r1.c & (1u << 3))) {
		UD_CHECK("monitor", ".byte 0x0f, 0x01, 0xc8", "MONITOR without CPUID.MONITOR raises #UD");
		UD_CHECK("mwait", ".byte 0x0f, 0x01, 0xc9", "MWAIT without CPUID.MONITOR raises #UD");
	} else {
		report_skip("monitor: [cpl0] CPUID has MONITOR");
		report_skip("mwait: [cpl0] CPUID has MONITOR");
	}
	/* CR4.OSXSAVE is 0 in this kernel: the XSAVE family is undefined */
	UD_CHECK("xsetbv", ".byte 0x0f, 0x01, 0xd1", "XSETBV with CR4.OSXSAVE=0 raises #UD");
	UD_CHECK("xsaves", ".byte 0x0f, 0xc7, 0x2f /* xsaves (%%edi) */",
		 "XSAVES with CR4.OSXSAVE=0 raises #UD");
	UD_CHECK("xrstors", ".byte 0x0f, 0xc7, 0x1f /* xrstors (%%edi) */",
		 "XRSTORS with CR4.OSXSAVE=0 raises #UD");
	if (!(leaf7_ebx & (1u << 20))) {
		UD_CHECK("clac", ".byte 0x0f, 0x01, 0xca", "CLAC without CPUID.SMAP raises #UD");
		UD_CHECK("stac", ".byte 0x0f, 0x01, 0xcb", "STAC without CPUID.SMAP raises #UD");
	} else {
		report_skip("clac: [cpl0] CPUID has SMAP");
		report_skip("stac: [cpl0] CPUID has SMAP");
	}
	if (!(leaf7_ebx & (1u << 10)))
		UD_CHECK("invpcid", ".byte 0x66, 0x0f, 0x38, 0x82, 0x07 /* invpcid (%%edi), %%eax */",
			 "INVPCID without CPUID.INVPCID raises #UD");
	else
		report_skip("invpcid: [cpl0] CPUID has INVPCID");
	/* The handler the kernel installs right before a fault is the one that runs, also
	 * right after an instruction the monitor emulated into a #UD (INVPCID above). */
	report_prefix_push("ud");
	ud_probe_hits = 0;
	handle_exception(UD_VECTOR, ud_probe);
	asm volatile(FAULT_ASM(".byte 0x0f, 0xaa /* rsm */"));
	handle_exception(UD_VECTOR, NULL);
	fault_resume_eip = 0;
	report(ud_probe_hits == 1, "[cpl0] the #UD handler installed just before RSM runs (hits %u)",
	       ud_probe_hits);
	report_prefix_pop();
	/* the rewriter's catch-all class: modes and features this guest never has */
	UD_CHECK("privileged", ".byte 0x0f, 0xaa", "RSM outside SMM raises #UD");
	UD_CHECK("privileged", ".byte 0x0f, 0x37", "GETSEC with CR4.SMXE=0 raises #UD");
	UD_CHECK("privileged", ".byte 0x0f, 0x24, 0xc0", "MOV from a test register raises #UD");
	if (!(ext_edx & (1u << 11)))
		UD_CHECK("sysret", ".byte 0x0f, 0x07", "SYSRET without CPUID.SYSCALL raises #UD");
	else
		report_skip("sysret: [cpl0] CPUID has SYSCALL");
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	gdt[SCR_DS >> 3] = make_segment((u32)scratch, 0xffff, 0x93, 0x4);
	gdt[LDT_SEL >> 3] = make_segment((u32)ldt, sizeof(ldt) - 1, 0x82, 0);
	ldt[0] = make_segment(0, 0xfffff, 0x93, 0xc);
	memset(&tss2, 0, sizeof(tss2));
	tss2.iomap_base = sizeof(tss2);
	gdt[TSS2_SEL >> 3] = make_segment((u32)&tss2, sizeof(tss2) - 1, 0x89, 0);
	gdt_load(GDT_ENTRIES);
	memset(scratch, 0x5a, sizeof(scratch));
	test_flags_and_halt();
	test_tables();
	test_control();
	test_misc();
	test_int_classes();
	/* last: these reach the monitor through the least common exits */
	test_absent();
	return report_summary();
}
