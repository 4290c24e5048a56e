/* Paging with user mode: two user processes in separate address spaces switched by CR3, user faults on supervisor and read-only pages */
#include "paging.h"

#define USER_BASE 0x40000000u /* PDE 0x100: each process's private 4 KiB pages */
#define USER_CODE USER_BASE
#define USER_DATA (USER_BASE + PAGE_SIZE)
#define USER_STACK_TOP (USER_BASE + 3 * PAGE_SIZE)
#define KERNEL_PROBE 0x00101000u /* kernel text: supervisor-only */
#define HIGH_BASE 0xc0000000u    /* a supervisor alias of the first 4 MiB */
#define HIGH_PROBE (HIGH_BASE + 0x1000u)
#define ROUNDS 50u

#define SYS_YIELD 1
#define SYS_EXIT 2

/* Data page layout, shared with the user code below. */
#define DATA_COUNTER 0
#define DATA_ID 1
#define DATA_LIMIT 2
#define DATA_TLS 3 /* where the user program stores what it read through its TLS segment */

/* i386 TLS: a user data segment based inside the data page, 4 GiB limit, read at a
 * negative offset (as libc reads gs:-0x54) so the offset wraps past 4 GiB. */
#define TLS_ENTRY 7
#define TLS_SEL (TLS_ENTRY * 8 + 3)
#define TLS_BASE (USER_DATA + 0x100u)
#define TLS_OFFSET 0x54u
#define TLS_SLOT ((0x100u - TLS_OFFSET) / 4) /* the word gs:-0x54 reaches */
#define TLS_MARK 0x71500000u

/* The user program, position-dependent at USER_CODE: count to the limit the kernel set,
 * yielding after every step; then read kernel memory and write its own (read-only) code,
 * each of which the kernel reports and skips; then exit with the count. */
extern const u8 user_blob[], user_blob_end[];
asm(".section .rodata\n"
    ".globl user_blob, user_blob_end\n"
    "user_blob:\n\t"
    "movl $0x40003000, %esp\n"
    "1:\n\t"
    "incl 0x40001000\n\t"
    "movl $1, %eax\n\t"
    "int $0x80\n\t"
    "movl 0x40001000, %ecx\n\t"
    "cmpl 0x40001008, %ecx\n\t"
    "jb 1b\n\t"
    "movl $0x3b, %eax\n\t" /* TLS_SEL */
    "movw %ax, %gs\n\t"
    "movl %gs:-0x54, %eax\n\t" /* the offset wraps: TLS_BASE - 0x54 */
    "movl %eax, 0x4000100c\n\t" /* DATA_TLS */
    "movl 0x00101000, %eax\n\t" /* A1 imm32: 5 bytes, faults */
    "movl 0xc0001000, %eax\n\t" /* the same, above every user directory entry */
    "movl $0, 0x40000000\n\t"  /* C7 05 imm32 imm32: 10 bytes, faults */
    "movl $2, %eax\n\t"
    "movl 0x40001000, %ebx\n\t"
    "int $0x80\n\t"
    "ud2\n"
    "user_blob_end:\n"
    ".globl spin_blob, spin_blob_end\n"
    "spin_blob:\n\t"
    "movl $0x40003000, %esp\n"
    "2:\n\t"
    "incl 0x40001000\n\t"
    "jmp 2b\n"
    "spin_blob_end:\n"
    ".globl gs_blob, gs_blob_end\n"
    "gs_blob:\n\t"
    "movl $0x3b, %eax\n\t" /* TLS_SEL */
    "movw %ax, %gs\n"
    "3:\n\t"
    "incl 0x40001000\n\t"
    "jmp 4f\n"
    "4:\n\t"
    "movl %gs:-0x54, %eax\n\t"
    "movl %eax, 0x4000100c\n\t" /* DATA_TLS */
    "movl $3, %eax\n\t"         /* SYS_GS_BASE: the kernel moves the TLS segment */
    "int $0x80\n\t"
    "jmp 3b\n"
    "gs_blob_end:\n"
    ".text\n");
extern const u8 spin_blob[], spin_blob_end[], gs_blob[], gs_blob_end[];
#define GS_OFFSET 0x200u /* where the TLS-reading program lies in the code page */
#define GS_ROUNDS 8u
#define SYS_GS_BASE 3
#define SPIN_OFFSET 0x100u /* where the spinning program lies in the code page */
#define PREEMPT_TICKS 20u

static u32 page_dirs[2][1024] __attribute__((aligned(4096)));
static u32 user_tables[2][1024] __attribute__((aligned(4096)));
static u8 code_frame[4096] __attribute__((aligned(4096)));
static u32 data_frames[2][1024] __attribute__((aligned(4096)));
static u8 stack_frames[2][4096] __attribute__((aligned(4096)));

static struct frame saved[2];
static int current;
static bool alive[2];
static u32 exit_value[2], yields[2];

struct user_fault {
	u32 count, error, cr2;
};
static struct user_fault read_fault[2], high_fault[2], write_fault[2];
static u32 kernel_faults;

void return_to_kernel(u32 value) __attribute__((noreturn));

static void build_space(int p)
{
	u32 *pd = page_dirs[p];
	pd[0] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
	pd[1] = 0x400000 | PTE_P | PTE_RW | PTE_PS;
	pd[pde_index(HIGH_BASE)] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
	u32 *pt = user_tables[p];
	pt[0] = (u32)code_frame | PTE_P | PTE_US; /* read-only for user */
	pt[1] = (u32)data_frames[p] | PTE_P | PTE_RW | PTE_US;
	pt[2] = (u32)stack_frames[p] | PTE_P | PTE_RW | PTE_US;
	pd[pde_index(USER_BASE)] = (u32)pt | PTE_P | PTE_RW | PTE_US;
	data_frames[p][DATA_COUNTER] = 0;
	data_frames[p][DATA_ID] = (u32)p;
	data_frames[p][DATA_LIMIT] = ROUNDS;
	data_frames[p][TLS_SLOT] = TLS_MARK + (u32)p;
}

/* The CPU's frame of the interrupted process becomes that of the other process. */
static void switch_to(struct frame *f, int next)
{
	saved[current] = *f;
	current = next;
	write_cr3((u32)page_dirs[next]);
	*f = saved[next];
}

/* The TLS bases the kernel alternates between, and what the program read at each. */
static u32 gs_reads[GS_ROUNDS], gs_rounds;

static u32 tls_base(u32 round) { return TLS_BASE + (round & 1) * 0x100u; }

static void syscall(struct frame *f)
{
	if (f->eax == SYS_GS_BASE) {
		gs_reads[gs_rounds++] = data_frames[current][DATA_TLS];
		if (gs_rounds == GS_ROUNDS) {
			write_cr3((u32)page_dirs[0]);
			return_to_kernel(0);
		}
		/* The TLS descriptor moves; the return to user mode reloads GS from it. */
		gdt[TLS_ENTRY] = make_segment(tls_base(gs_rounds), 0xfffff, ACC_DATA3, FLAGS_4K_32);
		f->gs = TLS_SEL;
		return;
	}
	if (f->eax == SYS_YIELD) {
		yields[current]++;
		if (alive[current ^ 1])
			switch_to(f, current ^ 1);
		return;
	}
	if (f->eax == SYS_EXIT) {
		exit_value[current] = f->ebx;
		alive[current] = false;
		if (alive[current ^ 1]) {
			switch_to(f, current ^ 1);
			return;
		}
		write_cr3((u32)page_dirs[0]);
		return_to_kernel(0);
	}
	report(false, "unknown system call %u", f->eax);
	exit(report_summary());
}

static void page_fault(struct frame *f)
{
	if ((f->cs & 3) != 3) {
		kernel_faults++;
		report(false, "kernel #PF error %x CR2 %x at %x", f->error, read_cr2(), f->eip);
		exit(report_summary());
	}
	u8 op = *(volatile u8 *)f->eip; /* the kernel may read user pages */
	u32 cr2 = read_cr2();
	struct user_fault *r = op != 0xa1	      ? &write_fault[current]
			       : cr2 == HIGH_PROBE ? &high_fault[current]
						   : &read_fault[current];
	r->count++;
	r->error = f->error;
	r->cr2 = cr2;
	f->eip += op == 0xa1 ? 5 : 10;
}

/* Preemption: both processes spin without ever entering the kernel; the timer interrupt
 * switches between them, so each only runs when the PIT takes the CPU from the other. */
static volatile u32 preempt_ticks, preempt_switches;

static void preempt(struct frame *f)
{
	pic_eoi(0);
	preempt_ticks++;
	if ((f->cs & 3) != 3)
		return;
	if (preempt_ticks >= PREEMPT_TICKS) {
		pit_stop();
		write_cr3((u32)page_dirs[0]);
		return_to_kernel(0);
	}
	preempt_switches++;
	switch_to(f, current ^ 1);
}

/* The same user code reads gs:-0x54 while the kernel moves the TLS segment between
 * runs: each run reads through the base GS holds then. */
static void test_gs_bases(void)
{
	report_prefix_push("TLS");
	memcpy(code_frame + GS_OFFSET, gs_blob, (unsigned long)(gs_blob_end - gs_blob));
	for (u32 r = 0; r < 2; r++)
		data_frames[0][(tls_base(r) - USER_DATA - TLS_OFFSET) / 4] = TLS_MARK + 0x10 + r;
	gdt[TLS_ENTRY] = make_segment(tls_base(0), 0xfffff, ACC_DATA3, FLAGS_4K_32);
	current = 0;
	write_cr3((u32)page_dirs[0]);
	run_user((void (*)(void))(USER_CODE + GS_OFFSET), EFLAGS_FIXED1);
	int each = gs_rounds == GS_ROUNDS;
	for (u32 r = 0; r < gs_rounds; r++)
		each &= gs_reads[r] == TLS_MARK + 0x10 + (r & 1);
	report(each, "gs:-0x%x read %u times while the TLS base alternates: each through the base of the moment",
	       TLS_OFFSET, GS_ROUNDS);
	gdt[TLS_ENTRY] = make_segment(TLS_BASE, 0xfffff, ACC_DATA3, FLAGS_4K_32);
	report_prefix_pop();
}

static void test_preemption(void)
{
	report_prefix_push("preemption");
	memcpy(code_frame + SPIN_OFFSET, spin_blob, (unsigned long)(spin_blob_end - spin_blob));
	for (int p = 0; p < 2; p++)
		data_frames[p][DATA_COUNTER] = 0;
	saved[1] = (struct frame){
		.gs = USER_DS, .fs = USER_DS, .es = USER_DS, .ds = USER_DS,
		.eip = USER_CODE + SPIN_OFFSET, .cs = USER_CS, .eflags = EFLAGS_FIXED1 | EFLAGS_IF,
		.user_esp = USER_STACK_TOP, .user_ss = USER_DS,
	};
	current = 0;
	handler_fn saved_timer = get_handler(IRQ_BASE);
	handle_exception(IRQ_BASE, preempt);
	write_cr3((u32)page_dirs[0]);
	pit_start(1000);
	run_user((void (*)(void))(USER_CODE + SPIN_OFFSET), EFLAGS_FIXED1 | EFLAGS_IF);
	cli();
	handle_exception(IRQ_BASE, saved_timer);
	report(preempt_ticks >= PREEMPT_TICKS, "the timer took the CPU back from user mode");
	report(preempt_switches >= 2 && data_frames[0][DATA_COUNTER] > 0 &&
		       data_frames[1][DATA_COUNTER] > 0,
	       "both spinning processes ran, each counting in its own page (%u switches)",
	       preempt_switches);
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	memcpy(code_frame, user_blob, (unsigned long)(user_blob_end - user_blob));
	gdt[TLS_ENTRY] = make_segment(TLS_BASE, 0xfffff, ACC_DATA3, FLAGS_4K_32);
	gdt_load(TLS_ENTRY + 1);
	build_space(0);
	build_space(1);

	/* Process 1 starts where process 0 does, on its own stack. */
	saved[1] = (struct frame){
		.gs = USER_DS, .fs = USER_DS, .es = USER_DS, .ds = USER_DS,
		.eip = USER_CODE, .cs = USER_CS, .eflags = EFLAGS_FIXED1,
		.user_esp = USER_STACK_TOP, .user_ss = USER_DS,
	};
	alive[0] = alive[1] = true;
	current = 0;
	set_syscall_hook(syscall);
	handle_exception(PF_VECTOR, page_fault);

	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((u32)page_dirs[0]);
	write_cr0(read_cr0() | CR0_PG | CR0_WP);
	run_user((void (*)(void))USER_CODE, EFLAGS_FIXED1);
	handle_exception(PF_VECTOR, NULL);

	report_prefix_push("processes");
	report(!alive[0] && !alive[1], "both processes ran to their exit");
	report(data_frames[0][DATA_COUNTER] == ROUNDS && data_frames[1][DATA_COUNTER] == ROUNDS,
	       "each counted to %u in its own data page at the same linear address", ROUNDS);
	report(exit_value[0] == ROUNDS && exit_value[1] == ROUNDS,
	       "each read back its own count through its own address space");
	report(data_frames[0][DATA_ID] == 0 && data_frames[1][DATA_ID] == 1,
	       "neither wrote the other's page");
	report(yields[0] == ROUNDS && yields[1] == ROUNDS, "%u CR3 switches each way", ROUNDS);
	report(data_frames[0][DATA_TLS] == TLS_MARK && data_frames[1][DATA_TLS] == TLS_MARK + 1,
	       "each read its TLS word at gs:-0x%x, an offset that wraps past 4 GiB", TLS_OFFSET);
	report_prefix_pop();

	report_prefix_push("user #PF");
	for (int p = 0; p < 2; p++) {
		report(read_fault[p].count == 1 && read_fault[p].error == (PF_P | PF_U) &&
			       read_fault[p].cr2 == KERNEL_PROBE,
		       "process %d reading a supervisor page: error P|U, CR2", p);
		report(high_fault[p].count == 1 && high_fault[p].error == (PF_P | PF_U) &&
			       high_fault[p].cr2 == HIGH_PROBE,
		       "process %d reading the kernel's higher half: error P|U, CR2", p);
		report(write_fault[p].count == 1 &&
			       write_fault[p].error == (PF_P | PF_W | PF_U) &&
			       write_fault[p].cr2 == USER_CODE,
		       "process %d writing its read-only code page: error P|W|U, CR2", p);
	}
	report(((volatile u8 *)code_frame)[0] == user_blob[0], "the code page is unchanged");
	report(kernel_faults == 0, "no kernel page faults");
	report_prefix_pop();

	/* Back in the kernel: the kernel still reaches every page, supervisor or user. */
	test_preemption();
	test_gs_bases();

	report_prefix_push("kernel");
	report(*(volatile u32 *)(USER_DATA) == data_frames[0][DATA_COUNTER],
	       "the kernel reads process 0's data page");
	*(volatile u32 *)(USER_DATA + 4 * DATA_ID) = 7;
	report(data_frames[0][DATA_ID] == 7, "and writes it");
	report_prefix_pop();
	return report_summary();
}
