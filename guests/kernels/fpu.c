/* The FPU class (x87, WAIT, MMX, SSE, FXSAVE) under the guest's CR0.EM, MP and TS: #NM and #UD where the architecture raises them */
/* SDM Vol. 3A §2.5 and Table 2-2, and each instruction's exception list; native results
 * where no fault is due. */
#include "guest.h"

/* Check names are "fpu: [<family> <cr0 state>] what" (family: x87, wait, mmx, sse, fxsr;
 * state: ts, em, mp, or clear when neither TS nor EM is set) and "#NM: [lazy] ...". */

#define NM_VECTOR 7
#define CR0_MP (1u << 1)
#define CR0_EM (1u << 2)
#define CR0_NE (1u << 5)
#define CR4_OSFXSR (1u << 9)
#define ONE_F32 0x3f800000u /* 1.0f */
/* Command-line words naming QEMU deviations (guests::qemu::QUIRKS): the check is reported
 * as skipped instead of run. The monitor runs without them. */
#define QUIRK_EMMS "quirk-emms-ignores-ts"
#define QUIRK_TS_FIRST "quirk-sse-ts-before-em"
#define SKIP_BY(q, name) report_skip(name ": skipped by " q)
#define NOT_RUN (-1)
#define ODD_FAULT (-2)

static u32 base_cr0;
static u8 fxarea[512] __attribute__((aligned(16)));
static volatile u32 result;

static void set_cr0_fpu_bits(u32 bits)
{
	write_cr0((base_cr0 & ~(CR0_MP | CR0_EM | CR0_TS)) | bits);
}

/* Runs one FAULT_ASM() instruction with #NM and #UD caught. The vector it raised at that
 * instruction, NOT_RUN when it raised nothing, ODD_FAULT for anything else. */
#define PROBE(insn, ...)                                                                       \
	({                                                                                     \
		fault_clear();                                                                 \
		expect_fault(NM_VECTOR);                                                       \
		expect_fault(UD_VECTOR);                                                       \
		asm volatile(FAULT_ASM(insn) __VA_ARGS__);                                     \
		handle_exception(NM_VECTOR, NULL);                                             \
		handle_exception(UD_VECTOR, NULL);                                             \
		fault_resume_eip = 0;                                                          \
		int v_ = last_fault.count == 0 ? NOT_RUN : ODD_FAULT;                          \
		if (last_fault.count == 1 && last_fault.eip == fault_insn_eip &&               \
		    last_fault.error == 0)                                                     \
			v_ = (int)last_fault.vector;                                           \
		v_;                                                                            \
	})

/* One site, run under several CR0 states: the trap the monitor patches in while TS is set
 * must be gone once it is clear. */
static __attribute__((noinline)) int fld1_site(void)
{
	return PROBE("fld1; fstps %0", : "=m"(result));
}

static void test_x87(void)
{
	set_cr0_fpu_bits(CR0_MP | CR0_TS);
	result = 0;
	report(fld1_site() == NM_VECTOR && result == 0, "[x87 ts] FLD1 with TS=1: #NM at FLD1");
	set_cr0_fpu_bits(CR0_EM);
	report(fld1_site() == NM_VECTOR, "[x87 em] FLD1 with EM=1: #NM");
	set_cr0_fpu_bits(CR0_EM | CR0_MP | CR0_TS);
	report(PROBE("flds %%ds:(%0)", ::"r"(&result)) == NM_VECTOR,
	       "[x87 mem seg ts] FLDS ds:mem with TS=1: #NM before the memory access");
	report(PROBE("addr16 fildl (%%bx)", ::"b"(0)) == NM_VECTOR,
	       "[x87 mem a16 em] FILD [bx] with EM=1 (16-bit addressing): #NM");
	report(PROBE("fnstsw %%ax", ::: "eax") == NM_VECTOR,
	       "[x87 ts] FNSTSW AX (no-wait form) with TS=1: #NM");
	set_cr0_fpu_bits(CR0_MP);
	result = 0;
	int v = fld1_site();
	u32 got = result;
	report(v == NOT_RUN && got == ONE_F32,
	       "[x87 clear mp] the same FLD1 with TS and EM clear runs natively (got %x)", got);
}

static void test_wait(void)
{
	set_cr0_fpu_bits(CR0_MP | CR0_TS);
	report(PROBE("fwait") == NM_VECTOR, "[wait ts mp] WAIT with TS=1, MP=1: #NM");
	set_cr0_fpu_bits(CR0_TS);
	report(PROBE("fwait") == NOT_RUN, "[wait ts] WAIT with TS=1, MP=0 runs");
	set_cr0_fpu_bits(CR0_EM | CR0_MP);
	report(PROBE("fwait") == NOT_RUN, "[wait em] WAIT with EM=1, TS=0 runs");
	set_cr0_fpu_bits(0);
	report(PROBE("fwait") == NOT_RUN, "[wait clear] WAIT with TS and EM clear runs");
}

static void test_mmx_sse(void)
{
	set_cr0_fpu_bits(CR0_MP | CR0_TS);
	if (cmdline_has(QUIRK_EMMS))
		SKIP_BY(QUIRK_EMMS, "[mmx ts] EMMS with TS=1: #NM");
	else
		report(PROBE("emms") == NM_VECTOR, "[mmx ts] EMMS with TS=1: #NM");
	report(PROBE("movq %mm1, %mm0") == NM_VECTOR, "[mmx ts] MOVQ mm0, mm1 with TS=1: #NM");
	report(PROBE("movaps %xmm1, %xmm0") == NM_VECTOR,
	       "[sse ts] MOVAPS xmm0, xmm1 with TS=1: #NM");
	report(PROBE("ldmxcsr %0", ::"m"(result)) == NM_VECTOR,
	       "[sse mem ts] LDMXCSR with TS=1: #NM");
	set_cr0_fpu_bits(CR0_EM);
	report(PROBE("movq %mm1, %mm0") == UD_VECTOR,
	       "[mmx em] MOVQ mm0, mm1 with EM=1: #UD");
	report(PROBE("addps %xmm1, %xmm0") == UD_VECTOR,
	       "[sse em] ADDPS with EM=1: #UD");
	set_cr0_fpu_bits(CR0_EM | CR0_TS);
	if (cmdline_has(QUIRK_TS_FIRST))
		SKIP_BY(QUIRK_TS_FIRST, "[sse em ts] PXOR with EM=1 and TS=1: #UD before #NM");
	else
		report(PROBE("pxor %xmm0, %xmm0") == UD_VECTOR,
		       "[sse em ts] PXOR with EM=1 and TS=1: #UD before #NM");
	set_cr0_fpu_bits(CR0_MP);
	u32 out = 0;
	int v = PROBE("movd %1, %%xmm0; movd %%xmm0, %0; emms", : "=r"(out) : "r"(0x1234u));
	report(v == NOT_RUN && out == 0x1234, "[sse mmx clear] MOVD through xmm0 runs (got %x)",
	       out);
}

static void test_fxsr(void)
{
	set_cr0_fpu_bits(CR0_MP | CR0_TS);
	report(PROBE("fxsave %0", : "=m"(fxarea)) == NM_VECTOR, "[fxsr ts] FXSAVE with TS=1: #NM");
	set_cr0_fpu_bits(CR0_EM);
	report(PROBE("fxrstor %0", ::"m"(fxarea)) == NM_VECTOR,
	       "[fxsr em] FXRSTOR with EM=1: #NM");
	set_cr0_fpu_bits(CR0_MP);
	asm volatile("fninit; fld1");
	int v = PROBE("fxsave %0", : "=m"(fxarea));
	asm volatile("fstp %st(0)");
	/* FSW.TOP (bits 13:11) is 7 after one push; the abridged tag byte marks ST0 valid. */
	u16 fsw = (u16)(fxarea[2] | fxarea[3] << 8);
	report(v == NOT_RUN && ((fsw >> 11) & 7) == 7 && fxarea[4] == 0x80,
	       "[fxsr clear] FXSAVE runs and stores the x87 state (FSW %x, FTW %x)", fsw,
	       fxarea[4]);
}

/* The lazy FPU switch of older kernels: #NM, CLTS in the handler, the instruction again. */
static volatile u32 lazy_faults;
static void lazy_handler(struct frame *f)
{
	(void)f;
	lazy_faults++;
	asm volatile("clts");
}

static void test_lazy(void)
{
	report_prefix_push("#NM");
	handle_exception(NM_VECTOR, lazy_handler);
	set_cr0_fpu_bits(CR0_MP | CR0_TS);
	lazy_faults = 0;
	result = 0;
	asm volatile("fld1; fstps %0" : "=m"(result));
	handle_exception(NM_VECTOR, NULL);
	report(lazy_faults == 1 && result == ONE_F32 && !(read_cr0() & CR0_TS),
	       "[lazy] #NM handler with CLTS, FLD1 restarted: one fault, result %x", result);
	report_prefix_pop();
}

/* The guest's x87 and SSE registers through exits of every kind: port reads (the gate in
 * translate mode), CPUID, CR3 reloads, a #DE the guest handles (a host signal), and
 * interrupts. */
static volatile u32 divide_faults;
static void divide_handler(struct frame *f)
{
	divide_faults++;
	f->eip += 2; /* div %ecx */
}

static void test_state_across_exits(void)
{
	handle_exception(DE_VECTOR, divide_handler);
	divide_faults = 0;
	fpu_state_load(0, 0x5eed);
	u32 sum = 0;
	for (u32 i = 0; i < 200; i++) {
		sum += inb(0x21);
		u32 a = 1, b = 0, c = 0, d = 0;
		asm volatile("cpuid" : "+a"(a), "+b"(b), "+c"(c), "+d"(d));
		write_cr3(read_cr3());
		if (i % 50 == 0)
			asm volatile("div %%ecx" : "+a"(a), "+d"(d) : "c"(0));
	}
	bool intact = fpu_state_intact(0);
	handle_exception(DE_VECTOR, NULL);
	report(intact && divide_faults == 4,
	       "[state] x87 registers, control words, MXCSR and XMM0-7 unchanged by 800 exits "
	       "(4 #DE handled, port sum %u)",
	       sum);
	asm volatile("fninit");
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	base_cr0 = read_cr0() | CR0_NE;
	write_cr4(read_cr4() | CR4_OSFXSR);
	set_cr0_fpu_bits(CR0_MP);
	asm volatile("fninit");
	report_prefix_push("fpu");
	test_x87();
	test_wait();
	test_mmx_sse();
	test_fxsr();
	report_prefix_pop();
	test_lazy();
	report_prefix_push("fpu");
	test_state_across_exits();
	report_prefix_pop();
	set_cr0_fpu_bits(CR0_MP);
	return report_summary();
}
