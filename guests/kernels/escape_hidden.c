/* Escapes hidden inside other instructions' bytes and in bytes that never decoded: far transfers to host selectors, segment reads, host syscalls */
#include "escape.h"

/*
 * Every attack here is a byte sequence that a decoder starting at the containing
 * instruction never sees: it sits in the displacement and immediate of a longer
 * instruction (or in a run of undecodable bytes skipped by a jump), the containing code
 * runs once, and then `jmp *%reg` enters the middle. Bare metal decodes from the entry
 * EIP, so the hidden instruction runs with the guest's own descriptor tables: a far
 * transfer to 0x33 or 0x23 looks those selectors up in the guest GDT (index 6 lies past its
 * limit, index 4 is a data segment), segment reads give the guest's selectors, INT 0x80
 * goes through the guest IDT, SYSENTER with SYSENTER_CS = 0 raises #GP(0) and SYSCALL is
 * undefined on this IA-32 CPU.
 */

#define GUEST_CODE6 0x30 /* GDT entry 6 when a check installs one */
#define MARKER 0x600d0000
/* No host system call has this number: if one ever reached the host it would fail. */
#define NO_HOST_SYSCALL 0x7fff


/* A container: `testl $imm32, disp32(%eax)` (F7 80 disp32 imm32), whose 8 bytes of
 * displacement and immediate are the hidden code, then RET. */
#define CONTAINER(name, bytes)                                                                 \
	asm(".text\n"                                                                          \
	    ".globl " #name "\n" #name ":\n\t"                                                 \
	    ".byte 0xf7, 0x80\n" #name "_hidden:\n\t" bytes "\n\t"                             \
	    ".if . - " #name "_hidden - 8\n\t.error \"hidden code must be 8 bytes\"\n\t.endif\n\t" \
	    "ret\n");                                                                          \
	extern const u8 name[], name##_hidden[]

CONTAINER(c_ljmp33, ".byte 0xea; .long escape_landing; .word 0x33; .byte 0x90");
CONTAINER(c_ljmp23, ".byte 0xea; .long escape_landing; .word 0x23; .byte 0x90");
CONTAINER(c_lcall33, ".byte 0x9a; .long escape_landing; .word 0x33; .byte 0x90");
CONTAINER(c_lcall23, ".byte 0x9a; .long escape_landing; .word 0x23; .byte 0x90");
CONTAINER(c_lret, ".byte 0xcb; .fill 7, 1, 0x90");
CONTAINER(c_iret, ".byte 0xcf; .fill 7, 1, 0x90");
/* mov %cs/%ds/%ss, %eax; ret */
CONTAINER(c_movcs, ".byte 0x8c, 0xc8, 0xc3; .fill 5, 1, 0x90");
CONTAINER(c_movds, ".byte 0x8c, 0xd8, 0xc3; .fill 5, 1, 0x90");
CONTAINER(c_movss, ".byte 0x8c, 0xd0, 0xc3; .fill 5, 1, 0x90");
/* push %cs; pop %eax; ret */
CONTAINER(c_pushcs, ".byte 0x0e, 0x58, 0xc3; .fill 5, 1, 0x90");
/* lar/lsl %ecx, %eax; setz %dl; ret — verr %cx; setz %dl; ret */
CONTAINER(c_lar, ".byte 0x0f, 0x02, 0xc1, 0x0f, 0x94, 0xc2, 0xc3, 0x90");
CONTAINER(c_lsl, ".byte 0x0f, 0x03, 0xc1, 0x0f, 0x94, 0xc2, 0xc3, 0x90");
CONTAINER(c_verr, ".byte 0x0f, 0x00, 0xe1, 0x0f, 0x94, 0xc2, 0xc3, 0x90");
/* int $0x80; ret — sysenter — syscall */
CONTAINER(c_int80, ".byte 0xcd, 0x80, 0xc3; .fill 5, 1, 0x90");
CONTAINER(c_sysenter, ".byte 0x0f, 0x34; .fill 6, 1, 0x90");
CONTAINER(c_syscall, ".byte 0x0f, 0x05; .fill 6, 1, 0x90");

static volatile u32 scratch;

/* Runs the containing instruction once: it reads `scratch` and decodes as one TEST. */
static void run_container(const u8 *container)
{
	u32 disp;
	memcpy(&disp, container + 2, 4);
	u32 base = (u32)&scratch - disp;
	asm volatile("call *%1" : "+a"(base) : "r"(container) : "ecx", "edx", "memory", "cc");
}

/* ---- far transfers to host selectors (attack: leave compat mode) ---- */

/* Jumps into `hidden` with a far-return frame (`frame` words, pushed last first) on the
 * stack; the fault it raises resumes after the jump. */
static void enter_hidden(const u8 *hidden, u32 sel, int frame)
{
	switch (frame) {
	case 0:
		asm volatile(CATCH_RESUME_AT("1f") "jmp *%0\n1:\n\t" CATCH_RESUMED ::"r"(hidden)
			     : "eax", "memory", "cc");
		break;
	case 2: /* far RET: EIP, CS */
		asm volatile(CATCH_RESUME_AT("1f") "pushl %1\n\tpushl $escape_landing\n\t"
						   "jmp *%0\n1:\n\t" CATCH_RESUMED ::"r"(hidden),
			     "r"(sel)
			     : "eax", "memory", "cc");
		break;
	default: /* IRET: EIP, CS, EFLAGS */
		asm volatile(CATCH_RESUME_AT("1f") "pushfl\n\tpushl %1\n\tpushl $escape_landing\n\t"
						   "jmp *%0\n1:\n\t" CATCH_RESUMED ::"r"(hidden),
			     "r"(sel)
			     : "eax", "memory", "cc");
		break;
	}
}

struct far_attack {
	const char *name, *what;
	const u8 *container, *hidden;
	u32 sel;
	int frame;
};

#define ATTACK(n, c, s, f, w) { n, w, c, c##_hidden, s, f }
static const struct far_attack far_attacks[] = {
	ATTACK("ljmp-33", c_ljmp33, HOST_CS64, 0, "far JMP to 0x33 raises #GP(0x30)"),
	ATTACK("ljmp-23", c_ljmp23, HOST_CS32, 0, "far JMP to 0x23 (a guest data segment) raises #GP(0x20)"),
	ATTACK("lcall-33", c_lcall33, HOST_CS64, 0, "far CALL to 0x33 raises #GP(0x30)"),
	ATTACK("lcall-23", c_lcall23, HOST_CS32, 0, "far CALL to 0x23 raises #GP(0x20)"),
	ATTACK("lret-33", c_lret, HOST_CS64, 2, "far RET to a crafted 0x33 frame raises #GP(0x30)"),
	ATTACK("lret-23", c_lret, HOST_CS32, 2, "far RET to a crafted 0x23 frame raises #GP(0x20)"),
	ATTACK("iret-33", c_iret, HOST_CS64, 3, "IRET to a crafted 0x33 frame raises #GP(0x30)"),
	ATTACK("iret-23", c_iret, HOST_CS32, 3, "IRET to a crafted 0x23 frame raises #GP(0x20)"),
};

static void test_far_transfers(void)
{
	report_prefix_push("hidden far");
	for (unsigned i = 0; i < sizeof(far_attacks) / sizeof(far_attacks[0]); i++) {
		const struct far_attack *a = &far_attacks[i];
		if (!check_selected(a->name))
			continue;
		run_container(a->container);
		catch_start(KERNEL_CS);
		enter_hidden(a->hidden, a->sel, a->frame);
		catch_stop();
		report(caught_one(GP_VECTOR, a->sel & ~3u, (u32)a->hidden), "%s: %s", a->name,
		       a->what);
	}
	report_prefix_pop();
}

/* CPL 3: the same jump from user mode; then with a guest GDT whose entry 6 is a DPL 3 code
 * segment, where 0x33 is a valid target: it lands in the guest's segment. */
static const u8 *user_hidden;
static u32 user_sel;
static int user_frame;

static void user_far(void)
{
	run_container(user_hidden - 2);
	enter_hidden(user_hidden, user_sel, user_frame);
	user_return(0);
}

static void far_cpl3(const char *name, const u8 *hidden, u32 sel, int frame)
{
	user_hidden = hidden;
	user_sel = sel;
	user_frame = frame;
	catch_start(USER_CS);
	run_user(user_far, EFLAGS_FIXED1);
	catch_stop();
	(void)name;
}

static void test_far_transfers_cpl3(void)
{
	report_prefix_push("hidden far cpl3");
	if (check_selected("ljmp-33-cpl3")) {
		far_cpl3("ljmp-33-cpl3", c_ljmp33_hidden, HOST_CS64, 0);
		report(caught_one(GP_VECTOR, 0x30, (u32)c_ljmp33_hidden),
		       "ljmp-33-cpl3: far JMP to 0x33 from CPL 3 raises #GP(0x30)");
	}
	if (check_selected("lret-33-cpl3")) {
		far_cpl3("lret-33-cpl3", c_lret_hidden, HOST_CS64, 2);
		report(caught_one(GP_VECTOR, 0x30, (u32)c_lret_hidden),
		       "lret-33-cpl3: far RET to a crafted 0x33 frame from CPL 3 raises #GP(0x30)");
	}
	if (check_selected("ljmp-33-guest-code")) {
		gdt[GUEST_CODE6 >> 3] = make_segment(0, 0xfffff, ACC_CODE3, FLAGS_4K_32);
		gdt_load(GDT_BASE_ENTRIES + 1);
		far_cpl3("ljmp-33-guest-code", c_ljmp33_hidden, HOST_CS64, 0);
		gdt_load(GDT_BASE_ENTRIES);
		report(caught_one(UD_VECTOR, 0, (u32)escape_landing + 2) && caught.cs == HOST_CS64 &&
			       (caught.eax & 0xffff) == HOST_CS64,
		       "ljmp-33-guest-code: far JMP to 0x33 from CPL 3 with a DPL 3 code segment "
		       "at guest GDT entry 6 runs in that segment (CS 0x33, then #UD)");
	}
	report_prefix_pop();
}

/* ---- hidden segment reads, descriptor probes and system calls ---- */

/* Calls hidden code that ends in RET with ECX = `ecx`, EAX = `eax`; returns EAX, and DL
 * in *zf. */
static u32 call_hidden(const u8 *hidden, u32 ecx, u32 eax, u32 *zf)
{
	u32 edx = 0;
	asm volatile("call *%2" : "+a"(eax), "+d"(edx) : "r"(hidden), "c"(ecx) : "memory", "cc");
	if (zf)
		*zf = edx & 0xff;
	return eax;
}

struct read_check {
	const char *name, *what;
	const u8 *container, *hidden;
	u32 ecx, expect_eax, expect_zf, mask;
};

#define SEL_ANY 0xdeadbeef
/* LAR of a flat 4 GiB code segment with the accessed bit set, masked by 0x00f0ff00: G, D,
 * P, DPL 0, type 0xb. */
#define LAR_FLAT_CODE0 0x00c09b00
static const struct read_check read_checks[] = {
	{ "mov-cs", "MOV from CS reads the guest's CS 0x08", c_movcs, c_movcs_hidden, 0, KERNEL_CS, 0, 0xffff },
	{ "mov-ds", "MOV from DS reads the guest's DS 0x10", c_movds, c_movds_hidden, 0, KERNEL_DS, 0, 0xffff },
	{ "mov-ss", "MOV from SS reads the guest's SS 0x10", c_movss, c_movss_hidden, 0, KERNEL_DS, 0, 0xffff },
	{ "push-cs", "PUSH CS pushes the guest's CS 0x08", c_pushcs, c_pushcs_hidden, 0, KERNEL_CS, 0, 0xffff },
	{ "lar-08", "LAR of 0x08 reads the guest's descriptor (ZF=1, 0x00c09b00)", c_lar, c_lar_hidden, KERNEL_CS, LAR_FLAT_CODE0, 1, 0xffffffff },
	{ "lar-33", "LAR of 0x33 fails (ZF=0): past the guest GDT limit", c_lar, c_lar_hidden, HOST_CS64, SEL_ANY, 0, 0xffffffff },
	{ "lsl-10", "LSL of 0x10 reads the guest's limit (ZF=1, 0xffffffff)", c_lsl, c_lsl_hidden, KERNEL_DS, 0xffffffff, 1, 0xffffffff },
	{ "lsl-33", "LSL of 0x33 fails (ZF=0)", c_lsl, c_lsl_hidden, HOST_CS64, SEL_ANY, 0, 0xffffffff },
	{ "verr-08", "VERR of 0x08 (readable guest code) sets ZF", c_verr, c_verr_hidden, KERNEL_CS, SEL_ANY, 1, 0xffffffff },
	{ "verr-33", "VERR of 0x33 clears ZF", c_verr, c_verr_hidden, HOST_CS64, SEL_ANY, 0, 0xffffffff },
};

static void test_reads(void)
{
	report_prefix_push("hidden read");
	for (unsigned i = 0; i < sizeof(read_checks) / sizeof(read_checks[0]); i++) {
		const struct read_check *c = &read_checks[i];
		if (!check_selected(c->name))
			continue;
		run_container(c->container);
		u32 zf, eax = call_hidden(c->hidden, c->ecx, SEL_ANY, &zf);
		bool ok = (eax & c->mask) == (c->expect_eax & c->mask) && zf == c->expect_zf;
		if (!ok)
			report_info("EAX %x ZF %u", eax, zf);
		report(ok, "%s: %s", c->name, c->what);
	}
	report_prefix_pop();
}

static volatile u32 gate_count, gate_eax, gate_cs, gate_eip;

static void int80_hook(struct frame *f)
{
	gate_count++;
	gate_eax = f->eax;
	gate_cs = f->cs;
	gate_eip = f->eip;
	f->eax = MARKER;
}

static bool int80_reached_gate(u32 r, u32 cs)
{
	bool ok = gate_count == 1 && gate_eax == NO_HOST_SYSCALL && gate_cs == cs &&
		  gate_eip == (u32)c_int80_hidden + 2 && r == MARKER;
	if (!ok)
		report_info("gate count %u eax %x cs %x eip %x; returned %x", gate_count, gate_eax,
			    gate_cs, gate_eip, r);
	return ok;
}

static void test_syscalls(void)
{
	report_prefix_push("hidden syscall");
	if (check_selected("int80")) {
		run_container(c_int80);
		set_syscall_hook(int80_hook);
		gate_count = 0;
		u32 r = call_hidden(c_int80_hidden, 0, NO_HOST_SYSCALL, NULL);
		set_syscall_hook(NULL);
		report(int80_reached_gate(r, KERNEL_CS),
		       "int80: INT 0x80 enters the guest's gate 0x80 with the guest's CS");
	}
	if (check_selected("sysenter")) {
		run_container(c_sysenter);
		wrmsr(MSR_SYSENTER_CS, 0);
		catch_start(KERNEL_CS);
		asm volatile(CATCH_RESUME_AT("1f") "jmp *%0\n1:\n\t" CATCH_RESUMED ::"r"(
				     c_sysenter_hidden),
			     "a"(NO_HOST_SYSCALL)
			     : "memory", "cc");
		catch_stop();
		report(caught_one(GP_VECTOR, 0, (u32)c_sysenter_hidden),
		       "sysenter: SYSENTER with SYSENTER_CS = 0 raises #GP(0)");
	}
	if (check_selected("syscall")) {
		run_container(c_syscall);
		catch_start(KERNEL_CS);
		asm volatile(CATCH_RESUME_AT("1f") "jmp *%0\n1:\n\t" CATCH_RESUMED ::"r"(
				     c_syscall_hidden),
			     "a"(NO_HOST_SYSCALL)
			     : "ecx", "memory", "cc");
		catch_stop();
		report(caught_one(UD_VECTOR, 0, (u32)c_syscall_hidden),
		       "syscall: SYSCALL raises #UD (no SYSCALL on this IA-32 CPU)");
	}
	report_prefix_pop();
}

static volatile u32 user_r, user_zf;

static void user_movcs(void)
{
	run_container(c_movcs);
	user_r = call_hidden(c_movcs_hidden, 0, SEL_ANY, NULL);
	user_return(0);
}

static void user_lar33(void)
{
	run_container(c_lar);
	u32 zf;
	user_r = call_hidden(c_lar_hidden, HOST_CS64, SEL_ANY, &zf);
	user_zf = zf;
	user_return(0);
}

static void user_int80(void)
{
	run_container(c_int80);
	user_r = call_hidden(c_int80_hidden, 0, NO_HOST_SYSCALL, NULL);
	user_return(0);
}

static void test_cpl3(void)
{
	report_prefix_push("hidden cpl3");
	if (check_selected("mov-cs-cpl3")) {
		run_user(user_movcs, EFLAGS_FIXED1);
		if ((user_r & 0xffff) != USER_CS)
			report_info("EAX %x", user_r);
		report((user_r & 0xffff) == USER_CS,
		       "mov-cs-cpl3: MOV from CS at CPL 3 reads the guest's CS 0x1b");
	}
	if (check_selected("lar-33-cpl3")) {
		run_user(user_lar33, EFLAGS_FIXED1);
		if (user_zf != 0 || user_r != SEL_ANY)
			report_info("EAX %x ZF %u", user_r, user_zf);
		report(user_zf == 0 && user_r == SEL_ANY,
		       "lar-33-cpl3: LAR of 0x33 at CPL 3 fails (ZF=0, EAX unchanged)");
	}
	if (check_selected("int80-cpl3")) {
		set_syscall_hook(int80_hook);
		gate_count = 0;
		run_user(user_int80, EFLAGS_FIXED1);
		set_syscall_hook(NULL);
		report(int80_reached_gate(user_r, USER_CS),
		       "int80-cpl3: INT 0x80 at CPL 3 enters the guest's gate with CS 0x1b");
	}
	report_prefix_pop();
}

/* ---- code written over bytes that never decoded ---- */

/* A page of its own: a jump over a run of 0xFF bytes, which no decoder takes for code. */
asm(".text\n"
    ".balign 4096\n"
    ".globl gap_code\n"
    "gap_code:\n\t"
    "jmp 1f\n"
    ".globl gap_bytes\n"
    "gap_bytes:\n\t"
    ".fill 64, 1, 0xff\n"
    "1:\tret\n"
    ".balign 4096\n");
extern u8 gap_code[], gap_bytes[];

#define GAP_UD 0	/* the 0xFF run itself */
#define GAP_MOVCS 8	/* mov %cs, %eax; ret */
#define GAP_LJMP 16	/* ljmp $0x33, $escape_landing */
#define GAP_USER 32	/* mov %cs, %eax; ret, called at CPL 3 */

static void gap_write(unsigned off, const u8 *code, unsigned n)
{
	memcpy(gap_bytes + off, code, n);
	asm volatile("" ::: "memory");
}

static void user_gap(void)
{
	user_r = call_hidden(gap_bytes + GAP_USER, 0, SEL_ANY, NULL);
	user_return(0);
}

static void test_gap(void)
{
	report_prefix_push("gap");
	static const u8 movcs[] = { 0x8c, 0xc8, 0xc3 };
	((void (*)(void))gap_code)();
	if (check_selected("gap-ff")) {
		catch_start(KERNEL_CS);
		asm volatile(CATCH_RESUME_AT("1f") "call *%0\n1:\n\t" CATCH_RESUMED ::"r"(
				     gap_bytes + GAP_UD)
			     : "eax", "memory", "cc");
		catch_stop();
		report(caught_one(UD_VECTOR, 0, (u32)gap_bytes + GAP_UD),
		       "gap-ff: the skipped 0xFF run executed raises #UD (FF /7)");
	}
	if (check_selected("gap-mov-cs")) {
		gap_write(GAP_MOVCS, movcs, sizeof(movcs));
		u32 r = call_hidden(gap_bytes + GAP_MOVCS, 0, SEL_ANY, NULL);
		if ((r & 0xffff) != KERNEL_CS)
			report_info("EAX %x", r);
		report((r & 0xffff) == KERNEL_CS,
		       "gap-mov-cs: MOV from CS written over the skipped bytes reads the guest's "
		       "CS 0x08");
	}
	if (check_selected("gap-ljmp-33")) {
		u8 ljmp[7] = { 0xea };
		u32 target = (u32)escape_landing;
		u16 sel = HOST_CS64;
		memcpy(ljmp + 1, &target, 4);
		memcpy(ljmp + 5, &sel, 2);
		gap_write(GAP_LJMP, ljmp, sizeof(ljmp));
		catch_start(KERNEL_CS);
		asm volatile(CATCH_RESUME_AT("1f") "jmp *%0\n1:\n\t" CATCH_RESUMED ::"r"(
				     gap_bytes + GAP_LJMP)
			     : "eax", "memory", "cc");
		catch_stop();
		report(caught_one(GP_VECTOR, 0x30, (u32)gap_bytes + GAP_LJMP),
		       "gap-ljmp-33: far JMP to 0x33 written over the skipped bytes raises #GP(0x30)");
	}
	if (check_selected("gap-mov-cs-cpl3")) {
		gap_write(GAP_USER, movcs, sizeof(movcs));
		run_user(user_gap, EFLAGS_FIXED1);
		if ((user_r & 0xffff) != USER_CS)
			report_info("EAX %x", user_r);
		report((user_r & 0xffff) == USER_CS,
		       "gap-mov-cs-cpl3: the same at CPL 3 reads the guest's CS 0x1b");
	}
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	test_far_transfers();
	test_far_transfers_cpl3();
	test_reads();
	test_syscalls();
	test_cpl3();
	test_gap();
	report_info("still running: no hidden instruction left the guest");
	return report_summary();
}
