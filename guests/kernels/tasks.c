/* Hardware task switches: JMP, CALL, IRET with NT, task gates for exceptions and #DF */
/* JMP and CALL to a TSS and to a task gate, IRET with NT=1 back through the back link, an
 * exception and a double fault through IDT task gates, the busy bits and back link as read
 * from the GDT and the TSSs, and the faults of bad targets (busy TSS, not present, limit
 * too small, IRET to an idle TSS), and CR3 loaded from the new TSS with paging on. */
#include "guest.h"
#include "paging.h"

#define SEL_A 0x30	/* TSS of task A (JMP) */
#define SEL_B 0x38	/* TSS of task B (CALL, IRET) */
#define SEL_GATE_B 0x40 /* task gate in the GDT to task B */
#define SEL_C 0x48	/* TSS of task C (exceptions through IDT task gates) */
#define SEL_DF 0x50	/* TSS of the double-fault task */
#define SEL_NP 0x58	/* a TSS descriptor that is not present */
#define SEL_SHORT 0x60	/* a TSS descriptor whose limit is 0x66 */
#define SEL_E 0x68	/* TSS of task E, which runs in its own address space */
#define GDT_ENTRIES 14
#define WINDOW 0x40000000u /* 4 MiB that each address space maps elsewhere */

#define DF_VECTOR 8
#define TS_VECTOR 10
#define SOFT_VECTOR 0x41
#define EFLAGS_NT (1u << 14)
#define TYPE_TSS_AVAILABLE 0x9
#define TYPE_TSS_BUSY 0xb

static struct tss32 tss_a, tss_b, tss_c, tss_df, tss_e, tss_spare;
static u32 stack_a[512], stack_b[512], stack_c[512], stack_df[512], stack_e[512];
static u32 pd_main[1024] __attribute__((aligned(4096)));
static u32 pd_e[1024] __attribute__((aligned(4096)));
static volatile u32 window_marker;
static volatile u32 seen_e_runs, seen_e_cr3, seen_e_window;

static u32 tss_type(u16 sel) { return (gdt[sel >> 3].hi >> 8) & 0xf; }

static u16 read_tr(void)
{
	u16 v;
	asm volatile("str %0" : "=r"(v));
	return v;
}

/* A TSS whose task starts at `entry` with flat ring-0 segments on `stack`. */
static void tss_setup(struct tss32 *t, void *entry, u32 *stack_top, u32 eax)
{
	memset(t, 0, sizeof(*t));
	t->eip = (u32)entry;
	t->eflags = EFLAGS_FIXED1;
	t->esp = (u32)stack_top;
	t->eax = eax;
	t->cs = KERNEL_CS;
	t->ss = t->ds = t->es = t->fs = t->gs = KERNEL_DS;
	t->cr3 = read_cr3();
	t->iomap_base = sizeof(*t);
}

static void set_tss(u16 sel, struct tss32 *t, u32 limit)
{
	gdt[sel >> 3] = make_segment((u32)t, limit, ACC_TSS32, 0);
}

static struct descriptor task_gate(u16 tss_sel, int dpl)
{
	struct descriptor d;
	d.lo = (u32)tss_sel << 16;
	d.hi = 0x8000 | ((u32)dpl << 13) | (0x5 << 8);
	return d;
}

/* What each task saw when it started running; the tasks loop so they can run again. */
struct seen {
	u32 runs, eax, eflags, tr, esp, error, link, self_type, caller_type, caller_eip, cr0;
};
static volatile struct seen seen_a, seen_b, seen_c, seen_df;

/* Records a task's view: EFLAGS, TR, the busy bits of its own TSS and of the main task's,
 * the back link and the EIP saved in the main task's TSS. */
void task_record(volatile struct seen *s, struct tss32 *own, u16 own_sel, u32 eax, u32 esp)
{
	s->runs++;
	s->eax = eax;
	s->esp = esp;
	s->eflags = read_eflags();
	s->tr = read_tr();
	s->link = own->link & 0xffff;
	s->self_type = tss_type(own_sel);
	s->caller_type = tss_type(TSS_SEL);
	s->caller_eip = tss.eip;
	s->cr0 = read_cr0();
}

/* The main task resumes at `resume` when the task returns to it. */
static volatile u32 resume_main;

void task_a_body(u32 eax, u32 esp) { task_record(&seen_a, &tss_a, SEL_A, eax, esp); }
void task_b_body(u32 eax, u32 esp) { task_record(&seen_b, &tss_b, SEL_B, eax, esp); }
void task_c_body(u32 eax, u32 esp)
{
	task_record(&seen_c, &tss_c, SEL_C, eax, esp);
	if (resume_main)
		tss.eip = resume_main;
}
void task_df_body(u32 eax, u32 esp, u32 error)
{
	task_record(&seen_df, &tss_df, SEL_DF, eax, esp);
	seen_df.error = error;
	if (resume_main)
		tss.eip = resume_main;
}

void task_e_body(void)
{
	seen_e_runs++;
	seen_e_cr3 = read_cr3();
	seen_e_window = *(volatile u32 *)(WINDOW + (u32)&window_marker);
}

extern char task_a_entry[], task_b_entry[], task_c_entry[], task_df_entry[], task_e_entry[];
asm(".text\n"
    /* Task A: entered by JMP, leaves by JMP back to the main task. */
    "task_a_entry:\n\t"
    "pushl %esp\n\tpushl %eax\n\tcall task_a_body\n\taddl $8, %esp\n\t"
    "ljmp $0x28, $0\n\t"
    "jmp task_a_entry\n"
    /* Task B: entered by CALL (or a task gate), returns with IRET (NT = 1). */
    "task_b_entry:\n\t"
    "pushl %esp\n\tpushl %eax\n\tcall task_b_body\n\taddl $8, %esp\n\t"
    "iret\n\t"
    "jmp task_b_entry\n"
    /* Task C: entered through an IDT task gate for an event without error code. */
    "task_c_entry:\n\t"
    "pushl %esp\n\tpushl %eax\n\tcall task_c_body\n\taddl $8, %esp\n\t"
    "iret\n\t"
    "jmp task_c_entry\n"
    /* The double-fault task: its error code is on its stack. */
    "task_df_entry:\n\t"
    "movl %esp, %ecx\n\tpushl (%esp)\n\tpushl %ecx\n\tpushl %eax\n\t"
    "call task_df_body\n\taddl $16, %esp\n\t"
    "iret\n\t"
    "jmp task_df_entry\n"
    /* Task E: entered by CALL with its own CR3. */
    "task_e_entry:\n\t"
    "call task_e_body\n\t"
    "iret\n\t"
    "jmp task_e_entry\n");

static void clear_ts(void) { asm volatile("clts"); }

static void test_jmp(void)
{
	report_prefix_push("far_jmp");
	tss_setup(&tss_a, task_a_entry, &stack_a[512], 0xa11a);
	clear_ts();
	u32 ebx_after, marker = 0x5eed;
	asm volatile("ljmp $0x30, $0\n\t"
		     "movl %%ebx, %0"
		     : "=r"(ebx_after)
		     : "b"(marker)
		     : "memory");
	u32 cr0 = read_cr0();
	clear_ts();
	report(seen_a.runs == 1 && seen_a.tr == SEL_A && seen_a.eax == 0xa11a,
	       "[tss] JMP to a TSS runs the task with the TSS's registers (TR %x EAX %x)", seen_a.tr,
	       seen_a.eax);
	report(seen_a.esp == (u32)&stack_a[512], "[tss] the new task's ESP comes from its TSS");
	report(!(seen_a.eflags & EFLAGS_NT), "[tss] JMP does not nest: NT = 0 (EFLAGS %x)",
	       seen_a.eflags);
	report(seen_a.self_type == TYPE_TSS_BUSY && seen_a.caller_type == TYPE_TSS_AVAILABLE,
	       "[tss] JMP marks the new TSS busy and the old one available (types %x %x)",
	       seen_a.self_type, seen_a.caller_type);
	report(seen_a.link == 0, "[tss] JMP leaves the back link alone");
	report(seen_a.cr0 & CR0_TS, "[tss] the task switch sets CR0.TS");
	report(read_tr() == TSS_SEL && ebx_after == marker,
	       "[tss] JMP back resumes the first task with its registers (TR %x EBX %x)", read_tr(),
	       ebx_after);
	report(tss_type(TSS_SEL) == TYPE_TSS_BUSY && tss_type(SEL_A) == TYPE_TSS_AVAILABLE,
	       "[tss] after JMP back the busy bits are swapped again");
	report(cr0 & CR0_TS, "[tss] CR0.TS is set after the switch back");
	asm volatile("ljmp $0x30, $0" ::: "memory");
	clear_ts();
	report(seen_a.runs == 2 && read_tr() == TSS_SEL,
	       "[tss] a second JMP resumes task A where it left (runs %u)", seen_a.runs);
	report_prefix_pop();
}

static void test_call_iret(void)
{
	report_prefix_push("far_call");
	tss_setup(&tss_b, task_b_entry, &stack_b[512], 0xb22b);
	u32 esi_after, marker = 0xca11;
	asm volatile("lcall $0x40, $0\n\t"
		     "movl %%esi, %0"
		     : "=r"(esi_after)
		     : "S"(marker)
		     : "memory");
	clear_ts();
	report(seen_b.runs == 1 && seen_b.tr == SEL_B && seen_b.eax == 0xb22b,
	       "[task-gate] CALL through a task gate runs the task (TR %x)", seen_b.tr);
	report(seen_b.eflags & EFLAGS_NT, "[task-gate] CALL nests: NT = 1 in the new task");
	report(seen_b.link == TSS_SEL, "[task-gate] the back link holds the caller's TSS (%x)",
	       seen_b.link);
	report(seen_b.self_type == TYPE_TSS_BUSY && seen_b.caller_type == TYPE_TSS_BUSY,
	       "[task-gate] CALL leaves the caller busy and marks the new TSS busy (%x %x)",
	       seen_b.self_type, seen_b.caller_type);
	report_prefix_pop();

	report_prefix_push("iret");
	report(read_tr() == TSS_SEL && esi_after == marker,
	       "[nt] IRET with NT = 1 returns to the caller task (TR %x)", read_tr());
	report(tss_type(SEL_B) == TYPE_TSS_AVAILABLE && tss_type(TSS_SEL) == TYPE_TSS_BUSY,
	       "[nt] IRET marks the returning task available");
	report(!(tss_b.eflags & EFLAGS_NT) && !(read_eflags() & EFLAGS_NT),
	       "[nt] NT is saved cleared in the returning task; the caller's NT = 0");
	report_prefix_pop();

	report_prefix_push("far_call");
	asm volatile("lcall $0x38, $0" ::: "memory");
	clear_ts();
	report(seen_b.runs == 2 && read_tr() == TSS_SEL && (seen_b.eflags & EFLAGS_NT),
	       "[tss] CALL to the TSS itself resumes task B after its IRET (runs %u)", seen_b.runs);
	report_prefix_pop();
}

static void test_exception_gates(void)
{
	struct descriptor saved_de = idt[DE_VECTOR];
	tss_setup(&tss_c, task_c_entry, &stack_c[512], 0xc33c);
	idt[DE_VECTOR] = task_gate(SEL_C, 0);
	idt[SOFT_VECTOR] = task_gate(SEL_C, 0);

	report_prefix_push("#DE");
	u32 fault_at, after;
	asm volatile("movl $1f, %0\n\t"
		     "movl $2f, %1\n\t"
		     "movl %1, resume_main\n\t"
		     "xorl %%edx, %%edx\n\t"
		     "movl $1, %%eax\n\t"
		     "xorl %%ecx, %%ecx\n"
		     "1:\tdivl %%ecx\n"
		     "2:"
		     : "=&r"(fault_at), "=&r"(after)
		     :
		     : "eax", "ecx", "edx", "memory");
	clear_ts();
	resume_main = 0;
	report(seen_c.runs == 1 && seen_c.tr == SEL_C && (seen_c.eflags & EFLAGS_NT) &&
		       seen_c.link == TSS_SEL,
	       "[task-gate] #DE through a task gate switches to the nested task (TR %x link %x)",
	       seen_c.tr, seen_c.link);
	report(seen_c.caller_eip == fault_at,
	       "[task-gate] the old TSS holds the faulting EIP (%x, DIV at %x)", seen_c.caller_eip,
	       fault_at);
	report(seen_c.esp == (u32)&stack_c[512], "[task-gate] no error code pushed for #DE");
	report(read_tr() == TSS_SEL, "[task-gate] IRET returns to the interrupted task");
	report_prefix_pop();

	report_prefix_push("int");
	u32 next;
	asm volatile("movl $1f, %0\n\t"
		     "int $0x41\n"
		     "1:"
		     : "=&r"(next)
		     :
		     : "memory");
	clear_ts();
	report(seen_c.runs == 2 && seen_c.caller_eip == next && read_tr() == TSS_SEL,
	       "[task-gate] INT n through a task gate saves the next EIP (%x)", seen_c.caller_eip);
	report_prefix_pop();
	idt[DE_VECTOR] = saved_de;
}

static void test_double_fault(void)
{
	struct descriptor saved_de = idt[DE_VECTOR];
	tss_setup(&tss_df, task_df_entry, &stack_df[512], 0xdf);
	idt[DF_VECTOR] = task_gate(SEL_DF, 0);
	/* #DE's gate not present: #NP while delivering #DE is a double fault. */
	idt[DE_VECTOR].hi &= ~0x8000u;

	report_prefix_push("#DF");
	u32 fault_at;
	asm volatile("movl $1f, %0\n\t"
		     "movl $2f, resume_main\n\t"
		     "xorl %%edx, %%edx\n\t"
		     "movl $1, %%eax\n\t"
		     "xorl %%ecx, %%ecx\n"
		     "1:\tdivl %%ecx\n"
		     "2:"
		     : "=&r"(fault_at)
		     :
		     : "eax", "ecx", "edx", "memory");
	clear_ts();
	resume_main = 0;
	idt[DE_VECTOR] = saved_de;
	report(seen_df.runs == 1 && seen_df.tr == SEL_DF && (seen_df.eflags & EFLAGS_NT),
	       "[task-gate] #NP while delivering #DE: #DF through its task gate (TR %x)",
	       seen_df.tr);
	report(seen_df.error == 0 && seen_df.esp == (u32)&stack_df[512] - 4,
	       "[task-gate] #DF pushes error code 0 on the new task's stack (error %x esp %x)",
	       seen_df.error, seen_df.esp);
	report(seen_df.caller_eip == fault_at && read_tr() == TSS_SEL,
	       "[task-gate] the old TSS holds the DIV's EIP and IRET returns to it (%x)",
	       seen_df.caller_eip);
	report_prefix_pop();
}

static void test_bad_targets(void)
{
	report_prefix_push("#GP");
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("ljmp $0x28, $0") ::: "memory");
	report(catch_end(GP_VECTOR, TSS_SEL), "[tss] JMP to a busy TSS");
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("lcall $0x28, $0") ::: "memory");
	report(catch_end(GP_VECTOR, TSS_SEL), "[tss] CALL to a busy TSS");
	report_prefix_pop();

	report_prefix_push("#NP");
	catch_begin(NP_VECTOR);
	asm volatile(FAULT_ASM("ljmp $0x58, $0") ::: "memory");
	report(catch_end(NP_VECTOR, SEL_NP), "[tss] JMP to a TSS that is not present");
	report_prefix_pop();

	report_prefix_push("#TS");
	catch_begin(TS_VECTOR);
	asm volatile(FAULT_ASM("ljmp $0x60, $0") ::: "memory");
	report(catch_end(TS_VECTOR, SEL_SHORT), "[tss] JMP to a TSS whose limit is below 0x67");
	/* IRET with NT = 1 whose back link names an available TSS. */
	tss.link = SEL_A;
	catch_begin(TS_VECTOR);
	asm volatile("pushfl\n\t"
		     "orl $0x4000, (%%esp)\n\t"
		     "popfl\n\t" FAULT_ASM("iret") "pushfl\n\t"
		     "andl $~0x4000, (%%esp)\n\t"
		     "popfl" ::
			     : "memory", "cc");
	report(catch_end(TS_VECTOR, SEL_A), "[nt] IRET to a task that is not busy");
	tss.link = 0;
	report(read_tr() == TSS_SEL && tss_type(SEL_A) == TYPE_TSS_AVAILABLE,
	       "[tss] the faulting switches changed neither TR nor busy bits");
	report_prefix_pop();
}

/* Two address spaces that identity-map 0..8 MiB and map WINDOW to physical 0 (the main
 * task's) or 4 MiB (task E's); the word at WINDOW + &window_marker tells them apart. */
static void test_cr3(void)
{
	report_prefix_push("cr3");
	for (u32 i = 0; i < 2; i++)
		pd_main[i] = pd_e[i] = (i << 22) | PTE_P | PTE_RW | PTE_PS;
	pd_main[pde_index(WINDOW)] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
	pd_e[pde_index(WINDOW)] = 0x400000 | PTE_P | PTE_RW | PTE_PS;
	window_marker = 0x1111;
	*(volatile u32 *)(0x400000 + (u32)&window_marker) = 0x2222;
	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((u32)pd_main);
	write_cr0(read_cr0() | CR0_PG);
	/* A task switch does not save CR3: the main task's comes back from its TSS. */
	tss.cr3 = (u32)pd_main;
	tss_setup(&tss_e, task_e_entry, &stack_e[512], 0);
	tss_e.cr3 = (u32)pd_e;
	asm volatile("lcall $0x68, $0" ::: "memory");
	clear_ts();
	u32 cr3_after = read_cr3();
	u32 window_after = *(volatile u32 *)(WINDOW + (u32)&window_marker);
	write_cr0(read_cr0() & ~CR0_PG);
	report(seen_e_runs == 1 && seen_e_cr3 == (u32)pd_e && seen_e_window == 0x2222,
	       "[tss] CALL loads the new task's CR3: its window shows its page (CR3 %x word %x)",
	       seen_e_cr3, seen_e_window);
	report(cr3_after == (u32)pd_main && window_after == 0x1111,
	       "[nt] IRET back loads the caller's CR3 from its TSS (CR3 %x word %x)", cr3_after,
	       window_after);
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	set_tss(SEL_A, &tss_a, sizeof(struct tss32) - 1);
	set_tss(SEL_B, &tss_b, sizeof(struct tss32) - 1);
	gdt[SEL_GATE_B >> 3] = task_gate(SEL_B, 0);
	set_tss(SEL_C, &tss_c, sizeof(struct tss32) - 1);
	set_tss(SEL_DF, &tss_df, sizeof(struct tss32) - 1);
	set_tss(SEL_NP, &tss_spare, sizeof(struct tss32) - 1);
	gdt[SEL_NP >> 3].hi &= ~0x8000u;
	set_tss(SEL_SHORT, &tss_spare, 0x66);
	set_tss(SEL_E, &tss_e, sizeof(struct tss32) - 1);
	gdt_load(GDT_ENTRIES);
	test_jmp();
	test_call_iret();
	test_exception_gates();
	test_double_fault();
	test_bad_targets();
	test_cr3();
	return report_summary();
}
