/* Call gates, interrupt and trap gates, TSS stack switches and SYSENTER/SYSEXIT across CPL 3 and 0 */
#include "guest.h"

#define CALL_GATE3 0x38	  /* 32-bit call gate, DPL 3, to ring 0 code, 2 parameters */
#define CALL_GATE0 0x30	  /* 32-bit call gate, DPL 0, to ring 0 code */
#define GDT_ENTRIES 8
#define TRAP_VECTOR 0x2f  /* trap gate, DPL 0 */
#define INTR_VECTOR 0x2e  /* interrupt gate, DPL 0 */
#define USER_TRAP 0x2d	  /* trap gate, DPL 3: INT n from CPL 3 */

static void set_call_gate(int sel, void *target, int dpl, int params)
{
	u32 off = (u32)target;
	gdt[sel >> 3].lo = (off & 0xffff) | ((u32)KERNEL_CS << 16);
	gdt[sel >> 3].hi = (off & 0xffff0000) | 0x8000 | ((u32)dpl << 13) | (0xc << 8) | params;
}

/* ---- call gates ---- */

u32 gate_cs, gate_ss, gate_esp, gate_arg0, gate_arg1, gate_ret_cs, gate_ret_ss;
extern char gate_entry[], gate_entry_same[];
asm(".text\n"
    /* reached through CALL_GATE3 from CPL 3: records the ring 0 view, removes 2 params */
    "gate_entry:\n\t"
    "movl %cs, %eax\n\tmovl %eax, gate_cs\n\t"
    "movl %ss, %eax\n\tmovl %eax, gate_ss\n\t"
    "movl %esp, gate_esp\n\t"
    "movl 8(%esp), %eax\n\tmovl %eax, gate_arg0\n\t"
    "movl 12(%esp), %eax\n\tmovl %eax, gate_arg1\n\t"
    "movl 4(%esp), %eax\n\tmovl %eax, gate_ret_cs\n\t"
    "movl 20(%esp), %eax\n\tmovl %eax, gate_ret_ss\n\t"
    "lret $8\n"
    /* reached through CALL_GATE0 from CPL 0: no stack switch, no parameters copied */
    "gate_entry_same:\n\t"
    "movl %cs, %eax\n\tmovl %eax, gate_cs\n\t"
    "movl %esp, gate_esp\n\t"
    "movl 4(%esp), %eax\n\tmovl %eax, gate_ret_cs\n\t"
    "lret\n");

static volatile u32 user_cs_after, user_esp_delta;

static void user_call_gate(void)
{
	u32 before, after;
	asm volatile("movl %%esp, %0\n\t"
		     "pushl $0x2222\n\tpushl $0x1111\n\t"
		     "lcall $0x3b, $0\n\t"
		     "movl %%esp, %1"
		     : "=&r"(before), "=&r"(after)
		     :
		     : "eax", "memory");
	user_esp_delta = before - after;
	user_cs_after = READ_SREG(cs);
	user_return(0);
}

static void test_call_gates(void)
{
	extern char interrupt_stack_top[];
	u32 top = (u32)interrupt_stack_top;

	report_prefix_push("far_call");
	gate_cs = gate_ss = gate_esp = gate_arg0 = gate_arg1 = 0;
	run_user(user_call_gate, EFLAGS_FIXED1);
	report(gate_cs == KERNEL_CS && gate_ss == KERNEL_DS,
	       "[gate cpl3] call gate from CPL 3 runs at CS 0x08 on SS 0x10 (cs %x ss %x)", gate_cs,
	       gate_ss);
	report(gate_esp < top && gate_esp >= top - 64,
	       "[gate cpl3] on the stack from TSS.ESP0 (esp %x, top %x)", gate_esp, top);
	report(gate_arg0 == 0x1111 && gate_arg1 == 0x2222,
	       "[gate cpl3] copies the 2 parameters from the caller's stack");
	report((gate_ret_cs & 0xffff) == USER_CS && (gate_ret_ss & 0xffff) == USER_DS,
	       "[gate cpl3] pushes the caller's CS and SS");
	gate_cs = gate_esp = 0;
	u32 esp;
	asm volatile("movl %%esp, %0; lcall $0x30, $0" : "=r"(esp)::"eax", "memory");
	report(gate_cs == KERNEL_CS && gate_esp == esp - 8 && gate_ret_cs == KERNEL_CS,
	       "[gate] call gate at the same level: no stack switch");
	report_prefix_pop();

	report_prefix_push("far_ret");
	report(user_cs_after == USER_CS && user_esp_delta == 0,
	       "[outer imm16] RET 8 back to CPL 3 pops SS:ESP and both parameter copies");
	report_prefix_pop();
}

/* ---- interrupt and trap gates ---- */

static volatile u32 h_eflags, h_cs, h_frame, h_ss, h_user_ss, h_count;

static void gate_probe(struct frame *f)
{
	h_count++;
	h_eflags = read_eflags();
	h_cs = f->cs;
	h_frame = (u32)f;
	h_ss = READ_SREG(ss);
	h_user_ss = (f->cs & 3) ? f->user_ss : 0;
}

static void user_int(void)
{
	asm volatile("int $0x2d");
	user_return(0);
}

static u32 alt_stack[256] __attribute__((aligned(16)));

static void test_idt_gates(void)
{
	extern char interrupt_stack_top[];
	u32 top = (u32)interrupt_stack_top;

	idt_set_gate(TRAP_VECTOR, idt_stub(TRAP_VECTOR), KERNEL_CS, 0xf, 0);
	idt_set_gate(INTR_VECTOR, idt_stub(INTR_VECTOR), KERNEL_CS, 0xe, 0);
	idt_set_gate(USER_TRAP, idt_stub(USER_TRAP), KERNEL_CS, 0xf, 3);
	handle_exception(TRAP_VECTOR, gate_probe);
	handle_exception(INTR_VECTOR, gate_probe);
	handle_exception(USER_TRAP, gate_probe);

	report_prefix_push("int");
	h_count = 0;
	asm volatile("sti; int $0x2f; cli" ::: "memory");
	report(h_count == 1 && (h_eflags & EFLAGS_IF), "[trap-gate] INT through a trap gate keeps IF=1");
	h_count = 0;
	asm volatile("sti; int $0x2e; cli" ::: "memory");
	report(h_count == 1 && !(h_eflags & EFLAGS_IF),
	       "[intr-gate] INT through an interrupt gate clears IF");
	h_count = 0;
	run_user(user_int, EFLAGS_FIXED1 | EFLAGS_IF);
	report(h_count == 1 && (h_cs & 0xffff) == USER_CS && (h_eflags & EFLAGS_IF),
	       "[trap-gate cpl3] INT from CPL 3 through a DPL 3 trap gate, IF kept");
	report(h_ss == KERNEL_DS && (h_user_ss & 0xffff) == USER_DS && h_frame < top &&
		       h_frame >= top - 256,
	       "[tss cpl3] switches to TSS.SS0:ESP0 and pushes the user SS:ESP");
	u32 saved_esp0 = tss.esp0;
	tss.esp0 = (u32)&alt_stack[256];
	h_count = 0;
	run_user(user_int, EFLAGS_FIXED1 | EFLAGS_IF);
	tss.esp0 = saved_esp0;
	report(h_count == 1 && h_frame >= (u32)alt_stack && h_frame < (u32)&alt_stack[256],
	       "[tss cpl3] a changed TSS.ESP0 is used by the next interrupt (frame %x)", h_frame);
	report_prefix_pop();
}

/* ---- SYSENTER / SYSEXIT ---- */

u32 se_cs, se_ss, se_esp, se_eflags, sx_cs, sx_ss, sx_esp_ok;
extern char sysenter_entry[];
static u32 sysenter_stack[256] __attribute__((aligned(16)));
asm(".text\n"
    "sysenter_entry:\n\t"
    "movl %cs, %eax\n\tmovl %eax, se_cs\n\t"
    "movl %ss, %eax\n\tmovl %eax, se_ss\n\t"
    "movl %esp, se_esp\n\t"
    "pushfl\n\tpopl se_eflags\n\t"
    /* back to CPL 3: EIP from EDX, ESP from ECX (the caller left both set) */
    "sti\n\t"
    "sysexit\n");

static void user_sysenter(void)
{
	u32 esp_before, esp_after;
	asm volatile("movl %%esp, %0\n\t"
		     "movl %%esp, %%ecx\n\t"
		     "movl $1f, %%edx\n\t"
		     "sysenter\n"
		     "1:\tmovl %%esp, %1"
		     : "=&r"(esp_before), "=&r"(esp_after)
		     :
		     : "eax", "ecx", "edx", "memory");
	sx_cs = READ_SREG(cs);
	sx_ss = READ_SREG(ss);
	sx_esp_ok = esp_before == esp_after;
	user_return(0);
}

static void test_sysenter(void)
{
	struct cpuid_result f = cpuid(1);
	report_prefix_push("sysenter");
	if (!(f.d & (1u << 11))) {
		report_skip("[cpl3] CPUID has no SEP");
		report_prefix_pop();
		return;
	}
	wrmsr(MSR_SYSENTER_CS, KERNEL_CS);
	wrmsr(MSR_SYSENTER_ESP, (u32)&sysenter_stack[256]);
	wrmsr(MSR_SYSENTER_EIP, (u32)sysenter_entry);
	run_user(user_sysenter, EFLAGS_FIXED1 | EFLAGS_IF);
	wrmsr(MSR_SYSENTER_CS, 0);
	report(se_cs == KERNEL_CS && se_ss == KERNEL_DS,
	       "[cpl3] enters at SYSENTER_CS and SYSENTER_CS+8 (cs %x ss %x)", se_cs, se_ss);
	report(se_esp == (u32)&sysenter_stack[256], "[cpl3] ESP from SYSENTER_ESP");
	report(!(se_eflags & EFLAGS_IF), "[cpl3] IF cleared on entry");
	report_prefix_pop();
	report_prefix_push("sysexit");
	report(sx_cs == USER_CS && sx_ss == USER_DS,
	       "[cpl0] returns to SYSENTER_CS+16 and +24 with RPL 3 (cs %x ss %x)", sx_cs, sx_ss);
	report(sx_esp_ok, "[cpl0] EIP from EDX, ESP from ECX");
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	set_call_gate(CALL_GATE3, gate_entry, 3, 2);
	set_call_gate(CALL_GATE0, gate_entry_same, 0, 0);
	gdt_load(GDT_ENTRIES);
	test_call_gates();
	test_idt_gates();
	test_sysenter();
	return report_summary();
}
