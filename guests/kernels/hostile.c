/* Attempts to reach the host: host syscalls by every instruction, 4 GiB wrap, host selectors */
#include "guest.h"

/* i386 Linux syscall numbers a guest might try on the host */
#define HOST_EXIT 1
#define HOST_WRITE 4
#define HOST_GETPID 20
#define HOST_EXIT_GROUP 252
/* The host's 64-bit user code selector (x86-64 Linux __USER_CS); index 6, which is past the
 * limit of the library GDT (6 entries), so the guest must see #GP(0x30). */
#define HOST_CS64 0x33
/* The host's 32-bit user code selector (__USER32_CS); a DPL 3 data segment here. */
#define HOST_CS32 0x23
#define WRAP_DS 0x30	/* base 0xfffff000, 4 GiB limit: offsets wrap past 4 GiB */
#define EDGE_DS 0x38	/* base 0xfffff000, limit 0xfff: the limit check comes first */
#define GDT_WRAP_ENTRIES 8
#define MARKER 0x600d0000
/* Command-line word that skips the data-segment limit checks: QEMU 7.2 TCG does not check
 * segment limits on data accesses, so the access wraps instead of faulting. */
#define QUIRK_NO_LIMITS "quirk-no-segment-limit-checks"

/* ---- INT 0x80 ---- */

static volatile u32 gate_count, gate_eax[8], gate_cs[8];

static void int80_handler(struct frame *f)
{
	if (gate_count < 8) {
		gate_eax[gate_count] = f->eax;
		gate_cs[gate_count] = f->cs;
	}
	gate_count++;
	f->eax = MARKER | (f->eax & 0xffff);
}

static u32 int80(u32 nr, u32 b, u32 c, u32 d)
{
	u32 r;
	asm volatile("int $0x80" : "=a"(r) : "0"(nr), "b"(b), "c"(c), "d"(d) : "memory");
	return r;
}

static const u32 host_calls[4] = { HOST_WRITE, HOST_GETPID, HOST_EXIT_GROUP, HOST_EXIT };
static volatile u32 user_results[4];
static const char msg[] = "host write\n";

/* Issues each host call with plausible arguments; only the guest's gate may answer. */
static void issue_host_calls(volatile u32 *results)
{
	for (int i = 0; i < 4; i++)
		results[i] = int80(host_calls[i], host_calls[i] == HOST_WRITE ? 1 : 0, (u32)msg,
				   sizeof(msg) - 1);
}

static void user_int80(void)
{
	issue_host_calls(user_results);
	user_return(0);
}

static bool gate_saw_all(u32 cs, volatile u32 *results)
{
	bool ok = gate_count == 4;
	for (int i = 0; i < 4 && ok; i++)
		ok = gate_eax[i] == host_calls[i] && gate_cs[i] == cs &&
		     results[i] == (MARKER | host_calls[i]);
	return ok;
}

static void test_int80(void)
{
	report_prefix_push("int80");
	u32 results[4];
	set_syscall_hook(int80_handler);
	gate_count = 0;
	issue_host_calls(results);
	report(gate_saw_all(KERNEL_CS, results),
	       "CPL 0: INT 0x80 with host write/getpid/exit_group/exit reaches the guest gate");
	gate_count = 0;
	run_user(user_int80, EFLAGS_FIXED1);
	report(gate_saw_all(USER_CS, user_results),
	       "CPL 3: INT 0x80 with host write/getpid/exit_group/exit reaches the guest gate");
	set_syscall_hook(NULL);
	report_prefix_pop();
}

/* ---- SYSENTER ---- */

volatile u32 sysenter_count, sysenter_eax, sysenter_cs, sysenter_ss;
static u8 sysenter_stack[1024] __attribute__((aligned(16)));
static volatile u32 user_sysenter_gp, user_sysenter_ret, user_sysenter_esp_ok;
void sysenter_entry(void);

/* SYSENTER lands at CPL 0 with CS = SYSENTER_CS and SS = SYSENTER_CS + 8; SYSEXIT returns
 * to CPL 3 with CS = SYSENTER_CS + 16 and SS = SYSENTER_CS + 24, which are exactly the
 * library's user selectors when SYSENTER_CS is 0x08. */
asm(".text\n"
    "sysenter_entry:\n\t"
    "incl sysenter_count\n\t"
    "movl %eax, sysenter_eax\n\t"
    "movl %cs, %eax\n\t"
    "movl %eax, sysenter_cs\n\t"
    "movl %ss, %eax\n\t"
    "movl %eax, sysenter_ss\n\t"
    "movl $0x600d5e, %eax\n\t"
    "sysexit\n");

static void user_sysenter(void)
{
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("sysenter") ::"a"(HOST_EXIT) : "memory");
	user_sysenter_gp = catch_end(GP_VECTOR, 0);
	/* the kernel now points the MSRs at sysenter_entry */
	user_return(0);
}

static void user_sysenter_valid(void)
{
	u32 r, esp_before, esp_after;
	asm volatile("movl %%esp, %1\n\t"
		     "movl %%esp, %%ecx\n\t"
		     "movl $1f, %%edx\n\t"
		     "sysenter\n"
		     "1:\tmovl %%esp, %2"
		     : "=a"(r), "=&r"(esp_before), "=&r"(esp_after)
		     : "0"(HOST_EXIT)
		     : "ecx", "edx", "memory");
	user_sysenter_ret = r;
	user_sysenter_esp_ok = esp_before == esp_after && READ_SREG(cs) == USER_CS &&
			       READ_SREG(ss) == USER_DS;
	user_return(0);
}

static void test_sysenter(bool sep)
{
	report_prefix_push("sysenter");
	if (!sep) {
		report_skip("CPUID has no SEP");
		report_prefix_pop();
		return;
	}
	wrmsr(MSR_SYSENTER_CS, 0);
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("sysenter") ::"a"(HOST_EXIT) : "memory");
	report(catch_end(GP_VECTOR, 0), "CPL 0: SYSENTER with SYSENTER_CS=0 raises #GP(0)");
	user_sysenter_gp = 0;
	run_user(user_sysenter, EFLAGS_FIXED1);
	report(user_sysenter_gp, "CPL 3: SYSENTER with SYSENTER_CS=0 raises #GP(0)");

	wrmsr(MSR_SYSENTER_CS, KERNEL_CS);
	wrmsr(MSR_SYSENTER_ESP, (u32)(sysenter_stack + sizeof(sysenter_stack)));
	wrmsr(MSR_SYSENTER_EIP, (u32)sysenter_entry);
	sysenter_count = 0;
	run_user(user_sysenter_valid, EFLAGS_FIXED1);
	wrmsr(MSR_SYSENTER_CS, 0);
	report(sysenter_count == 1 && sysenter_eax == HOST_EXIT && sysenter_cs == KERNEL_CS &&
		       sysenter_ss == KERNEL_DS,
	       "CPL 3: SYSENTER with EAX=1 enters the guest's SYSENTER_EIP at CS 0x08, SS 0x10");
	report(user_sysenter_ret == 0x600d5e && user_sysenter_esp_ok,
	       "SYSEXIT returns to CPL 3 at EDX with ESP=ECX and the guest handler's EAX");
	report_prefix_pop();
}

/* ---- SYSCALL ---- */

static volatile bool user_syscall_ud;

static void user_syscall(void)
{
	catch_begin(UD_VECTOR);
	asm volatile(FAULT_ASM("syscall") ::"a"(60) : "ecx", "memory");
	user_syscall_ud = catch_end(UD_VECTOR, 0);
	user_return(0);
}

static void test_syscall(void)
{
	report_prefix_push("syscall");
	struct cpuid_result r = cpuid(0x80000000);
	u32 ext = r.a >= 0x80000001 ? cpuid(0x80000001).d : 0;
	report(!(ext & (1u << 11)), "CPUID 0x80000001 reports no SYSCALL (edx %x)", ext);
	/* EAX=60 is the x86-64 exit number, what a 64-bit host would take it as */
	catch_begin(UD_VECTOR);
	asm volatile(FAULT_ASM("syscall") ::"a"(60) : "ecx", "memory");
	report(catch_end(UD_VECTOR, 0), "CPL 0: SYSCALL raises #UD on an IA-32 CPU");
	user_syscall_ud = false;
	run_user(user_syscall, EFLAGS_FIXED1);
	report(user_syscall_ud, "CPL 3: SYSCALL raises #UD on an IA-32 CPU");
	report_prefix_pop();
}

/* ---- segment arithmetic past 4 GiB ---- */

static volatile u32 low_marker = 0x1d1d1d1d;

static void test_wrap(void)
{
	report_prefix_push("wrap");
	gdt[WRAP_DS >> 3] = make_segment(0xfffff000, 0xfffff, 0x93, 0xc);
	gdt[EDGE_DS >> 3] = make_segment(0xfffff000, 0xfff, 0x93, 0x4);
	gdt_load(GDT_WRAP_ENTRIES);

	/* base 0xfffff000 + offset (0x1000 + x) is linear x, modulo 2^32 */
	u32 off = 0x1000 + (u32)&low_marker, v;
	asm volatile("movw %w2, %%fs; movl %%fs:(%1), %0; movw %w3, %%fs"
		     : "=&r"(v)
		     : "r"(off), "r"(WRAP_DS), "r"(KERNEL_DS)
		     : "memory");
	report(v == 0x1d1d1d1d, "read through base+offset past 4 GiB wraps to low memory");
	asm volatile("movw %w1, %%fs; movl $0x2e2e2e2e, %%fs:(%0); movw %w2, %%fs" ::"r"(off),
		     "r"(WRAP_DS), "r"(KERNEL_DS)
		     : "memory");
	report(low_marker == 0x2e2e2e2e, "write through base+offset past 4 GiB wraps too");

	if (cmdline_has(QUIRK_NO_LIMITS)) {
		report_skip("segment limit checks: skipped by " QUIRK_NO_LIMITS);
	} else {
		catch_begin(GP_VECTOR);
		asm volatile("movw %w1, %%fs\n\t" FAULT_ASM("movl %%fs:(%0), %%eax")
			     "movw %w2, %%fs" ::"r"(0x1000),
			     "r"(EDGE_DS), "r"(KERNEL_DS)
			     : "eax", "memory");
		report(catch_end(GP_VECTOR, 0), "offset past the segment limit: #GP(0), not a wrap");
		catch_begin(GP_VECTOR);
		asm volatile("movw %w1, %%fs\n\t" FAULT_ASM("movl %%fs:(%0), %%eax")
			     "movw %w2, %%fs" ::"r"(0xffe),
			     "r"(EDGE_DS), "r"(KERNEL_DS)
			     : "eax", "memory");
		report(catch_end(GP_VECTOR, 0), "access straddling the segment limit: #GP(0)");
	}
	asm volatile("movw %w0, %%fs" ::"r"(KERNEL_DS));
	gdt_load(GDT_BASE_ENTRIES);
	report_prefix_pop();
}

/* ---- host code selectors ---- */

struct far_ptr {
	u32 offset;
	u16 selector;
} __attribute__((packed));

struct far_ptr host_target = { 0, HOST_CS64 };
static volatile bool user_far_gp;

static void user_far_jump(void)
{
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("ljmp $0x33, $0"));
	user_far_gp = catch_end(GP_VECTOR, HOST_CS64 & ~3u);
	user_return(0);
}

static void test_host_selectors(void)
{
	report_prefix_push("selectors");
	struct pseudo_descriptor g;
	asm volatile("sgdt %0" : "=m"(g));
	report(g.limit < (HOST_CS64 & ~7u), "selector 0x33 lies beyond the GDT limit (%x)",
	       g.limit);

	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("ljmp $0x33, $0"));
	report(catch_end(GP_VECTOR, 0x30), "direct far JMP to 0x33 raises #GP(0x30)");
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("ljmp *host_target"));
	report(catch_end(GP_VECTOR, 0x30), "indirect far JMP to 0x33 raises #GP(0x30)");
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("lcall $0x33, $0"));
	report(catch_end(GP_VECTOR, 0x30), "far CALL to 0x33 raises #GP(0x30)");
	catch_begin(GP_VECTOR);
	asm volatile("pushl $0x33; pushl $0\n\t" FAULT_ASM("lret") "addl $8, %%esp" ::: "memory");
	report(catch_end(GP_VECTOR, 0x30), "far RET to 0x33 raises #GP(0x30)");
	catch_begin(GP_VECTOR);
	asm volatile("pushfl; pushl $0x33; pushl $0\n\t" FAULT_ASM("iret") "addl $12, %%esp" ::
			     : "memory");
	report(catch_end(GP_VECTOR, 0x30), "IRET to 0x33 raises #GP(0x30)");
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("ljmp $0x23, $0"));
	report(catch_end(GP_VECTOR, 0x20),
	       "far JMP to 0x23 (host 32-bit code selector, a data segment here) raises #GP(0x20)");
	user_far_gp = false;
	run_user(user_far_jump, EFLAGS_FIXED1);
	report(user_far_gp, "CPL 3: far JMP to 0x33 raises #GP(0x30)");
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	bool sep = cpuid(1).d & (1u << 11);
	test_int80();
	test_sysenter(sep);
	test_syscall();
	test_wrap();
	test_host_selectors();
	report_info("still running: no host syscall ended this guest");
	return report_summary();
}
