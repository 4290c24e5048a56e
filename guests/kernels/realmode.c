/* Real mode: protected → real → protected round trips, as kernels and SMP trampolines do */
/* The kernel copies a blob of 16-bit code below 1 MiB, enters 16-bit protected mode through
 * a GDT code segment, clears CR0.PE and far-jumps to a real-mode CS. There it checks segment
 * arithmetic (base = selector × 16), a software INT, a #DE and a timer IRQ through the IVT
 * (the frames they push and IRET), far CALL/RET, PUSHF/POPF, 32-bit operands and registers,
 * MOV from segment registers, and "big real mode" (a 4 GiB FS limit kept from protected
 * mode); then it sets CR0.PE again and returns to 32-bit code. Results are words the blob
 * stores at RM_DATA, read back and reported here. */
#include "guest.h"

#define RM_CODE 0x6000u	/* the blob, CS = 0x0600 in real mode */
#define RM_DATA 0x7000u	/* results, DS = 0x0700 in real mode */
#define RM_STACK 0x5ff0u /* SS = 0, SP = 0x5ff0 */
#define SEL_CODE16 0x30	/* 16-bit code, base RM_CODE, limit 64 KiB */
#define SEL_DATA16 0x38	/* 16-bit data, base 0, limit 64 KiB */
#define SEL_FLAT4G 0x40	/* 4 GiB data, kept in FS through real mode */
#define SOFT_VECTOR 0x50
#define TIMER_VECTOR IRQ_BASE
#define SAVED_IDT 0x100	/* offset in RM_DATA of the protected-mode IDTR */

/* Offsets in RM_DATA of what the real-mode code records. */
enum {
	R_CR0 = 0x00,	 /* CR0 low word in real mode */
	R_DS = 0x02,	 /* MOV AX, DS */
	R_CS = 0x04,	 /* MOV AX, CS */
	R_INT_AX = 0x06, /* AX after INT 0x50 (the handler adds 1) */
	R_INT_CS = 0x08, /* CS pushed by INT 0x50 */
	R_INT_IP = 0x0a, /* IP pushed by INT 0x50 (the return address) */
	R_INT_FL = 0x0c, /* FLAGS pushed by INT 0x50 */
	R_INT_IF = 0x0e, /* FLAGS inside the handler (IF clear) */
	R_DE_IP = 0x10,	 /* IP pushed by #DE (the faulting DIV) */
	R_DE_AFTER = 0x12, /* 1 when execution went on after the DIV */
	R_IRQS = 0x14,	 /* timer interrupts taken through the IVT */
	R_FAR_CS = 0x16, /* CS inside a far-called routine */
	R_FAR_RET = 0x18, /* 1 after LRET came back */
	R_FLAGS = 0x1a,	 /* PUSHF after STD: DF set, IOPL and bits 12-15 as real mode shows */
	R_FLAGS_CLD = 0x1c, /* PUSHF after POPF of the saved flags with DF cleared */
	R_EAX_LO = 0x1e, /* a 32-bit operand (66 prefix): low and high words */
	R_EAX_HI = 0x20,
	R_SEGWRAP = 0x22, /* a word written through ES = 0x0701 at offset 0, read through DS */
	R_STACK = 0x24,	 /* PUSH/POP round trip through SS = 0 */
	R_BIG = 0x26,	 /* 1 after a store through FS above 1 MiB */
	R_DONE = 0x28,	 /* 0x600d when the blob reached its end */
	R_LEN = 0x2a
};

extern char rm_blob_start[], rm_blob_end[];
extern void rm_trip(void);
volatile u32 big_real_target;
u32 rm_saved_esp;

asm(".text\n"
    ".globl rm_trip\n"
    "rm_trip:\n\t"
    "pushal\n\t"
    "movl %esp, rm_saved_esp\n\t"
    "sidt " "0x7100" "\n\t"
    "movw $0x40, %ax\n\t"
    "movw %ax, %fs\n\t"
    "ljmp $0x30, $(rm_pm16 - rm_blob_start)\n"
    ".code32\n"
    "rm_back32:\n\t"
    ASM_LOAD_KERNEL_DATA_SEGMENTS
    "lidt 0x7100\n\t"
    "movl rm_saved_esp, %esp\n\t"
    "popal\n\t"
    "ret\n"

    /* The blob: position-independent within its segment (every address is an offset
       from rm_blob_start), copied to RM_CODE. It is data to the kernel, which copies it,
       so it lives with the read-only data, not on a page the kernel executes. */
    ".pushsection .rodata\n"
    ".globl rm_blob_start, rm_blob_end\n"
    ".p2align 4\n"
    "rm_blob_start:\n"
    ".code16\n"
    "rm_pm16:\n\t"
    /* 16-bit protected mode: 64 KiB data segments, then real mode. */
    "movw $0x38, %ax\n\t"
    "movw %ax, %ds\n\t"
    "movw %ax, %es\n\t"
    "movw %ax, %ss\n\t"
    "movl %cr0, %eax\n\t"
    "andl $0xfffffffe, %eax\n\t"
    "movl %eax, %cr0\n\t"
    "ljmp $0x0600, $(rm_real - rm_blob_start)\n"
    "rm_real:\n\t"
    "xorw %ax, %ax\n\t"
    "movw %ax, %ss\n\t"
    "movw $0x5ff0, %sp\n\t"
    "movw $0x0700, %ax\n\t"
    "movw %ax, %ds\n\t"
    "lidt %cs:(rm_ivt_desc - rm_blob_start)\n\t"
    /* The IVT: INT 0x50, #DE and the timer. */
    "xorw %ax, %ax\n\t"
    "movw %ax, %es\n\t"
    "movw $(rm_int50 - rm_blob_start), %es:(0x50 * 4)\n\t"
    "movw $0x0600, %es:(0x50 * 4 + 2)\n\t"
    "movw $(rm_de - rm_blob_start), %es:0\n\t"
    "movw $0x0600, %es:2\n\t"
    "movw $(rm_timer - rm_blob_start), %es:(0x20 * 4)\n\t"
    "movw $0x0600, %es:(0x20 * 4 + 2)\n\t"
    /* CR0 and segment registers. */
    "movl %cr0, %eax\n\t"
    "movw %ax, 0x00\n\t"
    "movw %ds, %ax\n\t"
    "movw %ax, 0x02\n\t"
    "movw %cs, %ax\n\t"
    "movw %ax, 0x04\n\t"
    /* INT 0x50 through the IVT. */
    "movw $0x1234, %ax\n\t"
    "int $0x50\n"
    "rm_int50_ret:\n\t"
    "movw %ax, 0x06\n\t"
    /* #DE through the IVT: the handler skips the 2-byte DIV. */
    "movw $0, 0x12\n\t"
    "xorb %bl, %bl\n\t"
    "movw $7, %ax\n"
    "rm_div:\n\t"
    "divb %bl\n\t"
    "movw $1, 0x12\n\t"
    /* A timer interrupt through the IVT, waited for with HLT. */
    "movw $0, 0x14\n\t"
    "movw $2000, %cx\n"
    "1:\n\t"
    "sti\n\t"
    "hlt\n\t"
    "cli\n\t"
    "cmpw $0, 0x14\n\t"
    "jne 2f\n\t"
    "loop 1b\n"
    "2:\n\t"
    /* Far CALL and RET. */
    "movw $0, 0x18\n\t"
    "lcall $0x0600, $(rm_far - rm_blob_start)\n\t"
    "movw $1, 0x18\n\t"
    /* PUSHF/POPF. */
    "pushf\n\t"
    "std\n\t"
    "pushf\n\t"
    "popw %ax\n\t"
    "movw %ax, 0x1a\n\t"
    "popf\n\t"
    "pushf\n\t"
    "popw %ax\n\t"
    "movw %ax, 0x1c\n\t"
    /* A 32-bit register and operand in 16-bit code. */
    "movl $0x12345678, %eax\n\t"
    "movl %eax, %ebx\n\t"
    "movw %bx, 0x1e\n\t"
    "shrl $16, %ebx\n\t"
    "movw %bx, 0x20\n\t"
    /* Segment arithmetic: ES = 0x0701 is linear 0x7010 = DS:0x10. */
    "movw $0x0701, %ax\n\t"
    "movw %ax, %es\n\t"
    "movw $0xbeef, %es:0x12\n\t"
    "movw 0x22, %ax\n\t"
    "movw %ax, 0x22\n\t"
    /* The stack through SS = 0. */
    "movw $0x5a5a, %ax\n\t"
    "pushw %ax\n\t"
    "xorw %ax, %ax\n\t"
    "movw %sp, %bx\n\t"
    "movw %ss:(%bx), %dx\n\t"
    "popw %ax\n\t"
    "addw %dx, %ax\n\t"
    "movw %ax, 0x24\n\t"
    /* Big real mode: FS keeps the 4 GiB limit of its protected-mode descriptor. */
    "movl $big_real_target, %ebx\n\t"
    "movl $0xcafef00d, %fs:(%ebx)\n\t"
    "movw $1, 0x26\n\t"
    "movw $0x600d, 0x28\n\t"
    /* Back to protected mode: CR0.PE, then a far jump to the 32-bit code segment. */
    "cli\n\t"
    "movl %cr0, %eax\n\t"
    "orl $1, %eax\n\t"
    "movl %eax, %cr0\n\t"
    "ljmpl $0x08, $rm_back32\n"

    "rm_int50:\n\t"
    "pushw %bp\n\t"
    "movw %sp, %bp\n\t"
    "pushw %bx\n\t"
    "movw 2(%bp), %bx\n\t"
    "movw %bx, 0x0a\n\t"
    "movw 4(%bp), %bx\n\t"
    "movw %bx, 0x08\n\t"
    "movw 6(%bp), %bx\n\t"
    "movw %bx, 0x0c\n\t"
    "pushf\n\t"
    "popw %bx\n\t"
    "movw %bx, 0x0e\n\t"
    "popw %bx\n\t"
    "popw %bp\n\t"
    "incw %ax\n\t"
    "iret\n"

    "rm_de:\n\t"
    "pushw %bp\n\t"
    "movw %sp, %bp\n\t"
    "pushw %bx\n\t"
    "movw 2(%bp), %bx\n\t"
    "movw %bx, 0x10\n\t"
    "addw $2, 2(%bp)\n\t"
    "popw %bx\n\t"
    "popw %bp\n\t"
    "iret\n"

    "rm_timer:\n\t"
    "pushw %ax\n\t"
    "incw 0x14\n\t"
    "movb $0x20, %al\n\t"
    "outb %al, $0x20\n\t"
    "popw %ax\n\t"
    "iret\n"

    "rm_far:\n\t"
    "pushw %ax\n\t"
    "movw %cs, %ax\n\t"
    "movw %ax, 0x16\n\t"
    "popw %ax\n\t"
    "lret\n"

    ".p2align 1\n"
    "rm_ivt_desc:\n\t"
    ".word 0x3ff\n\t"
    ".long 0\n"
    "rm_blob_end:\n"
    ".code32\n"
    ".popsection\n");

/* The offsets of two labels inside the blob, for the checks of the frames. */
extern char rm_int50_ret[], rm_div[];

static u16 result(unsigned off) { return *(volatile u16 *)(RM_DATA + off); }

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	u32 blob_len = (u32)(rm_blob_end - rm_blob_start);
	report_info("blob of %u bytes at 0x%x", blob_len, RM_CODE);
	memcpy((void *)RM_CODE, rm_blob_start, blob_len);
	memset((void *)RM_DATA, 0xff, R_LEN);
	*(volatile u16 *)(RM_DATA + 0x22) = 0;
	*(volatile u16 *)(RM_DATA + 0x12) = 0;
	big_real_target = 0;

	gdt[SEL_CODE16 >> 3] = make_segment(RM_CODE, 0xffff, ACC_CODE0, 0);
	gdt[SEL_DATA16 >> 3] = make_segment(0, 0xffff, ACC_DATA0, 0);
	gdt[SEL_FLAT4G >> 3] = make_segment(0, 0xfffff, ACC_DATA0, FLAGS_4K_32);
	gdt_load(9);

	pic_remap();
	pic_mask_all();
	pit_start(1000);

	u32 idtr_before[2] = { 0, 0 };
	asm volatile("sidt %0" : "+m"(idtr_before));
	rm_trip();
	pic_mask(0);
	pit_stop();
	u32 idtr_after[2] = { 0, 0 };
	asm volatile("sidt %0" : "+m"(idtr_after));

	report(result(R_DONE) == 0x600d, "real mode: the blob ran to its end and came back");
	report((result(R_CR0) & CR0_PE) == 0, "real mode: CR0.PE reads clear (cr0 0x%x)",
	       result(R_CR0));
	report(result(R_DS) == 0x0700, "real mode: MOV from DS gives the selector (0x%x)",
	       result(R_DS));
	report(result(R_CS) == 0x0600, "real mode: MOV from CS gives the selector (0x%x)",
	       result(R_CS));
	report(result(R_INT_AX) == 0x1235, "real mode: INT 0x50 ran its IVT handler (ax 0x%x)",
	       result(R_INT_AX));
	report(result(R_INT_CS) == 0x0600 &&
		       result(R_INT_IP) == (u16)(rm_int50_ret - rm_blob_start),
	       "real mode: INT pushes CS:IP of the next instruction (%04x:%04x)",
	       result(R_INT_CS), result(R_INT_IP));
	report((result(R_INT_FL) & EFLAGS_FIXED1) && !(result(R_INT_IF) & EFLAGS_IF),
	       "real mode: INT pushes FLAGS and clears IF (pushed 0x%x, inside 0x%x)",
	       result(R_INT_FL), result(R_INT_IF));
	report(result(R_DE_IP) == (u16)(rm_div - rm_blob_start) && result(R_DE_AFTER) == 1,
	       "real mode: #DE through the IVT pushes the DIV's IP (0x%x) and IRET resumes",
	       result(R_DE_IP));
	report(result(R_IRQS) >= 1 && result(R_IRQS) != 0xffff,
	       "real mode: timer interrupts arrive through the IVT (%u)", result(R_IRQS));
	report(result(R_FAR_CS) == 0x0600 && result(R_FAR_RET) == 1,
	       "real mode: far CALL and RET (cs 0x%x)", result(R_FAR_CS));
	report((result(R_FLAGS) & EFLAGS_DF) && (result(R_FLAGS) & EFLAGS_FIXED1) &&
		       !(result(R_FLAGS_CLD) & EFLAGS_DF),
	       "real mode: PUSHF/POPF carry DF (0x%x then 0x%x)", result(R_FLAGS),
	       result(R_FLAGS_CLD));
	report(result(R_EAX_LO) == 0x5678 && result(R_EAX_HI) == 0x1234,
	       "real mode: 32-bit operands in 16-bit code");
	report(result(R_SEGWRAP) == 0xbeef,
	       "real mode: segment base is selector x 16 (0x%x)", result(R_SEGWRAP));
	report(result(R_STACK) == 0xb4b4, "real mode: PUSH and POP through SS = 0 (0x%x)",
	       result(R_STACK));
	report(result(R_BIG) == 1 && big_real_target == 0xcafef00d,
	       "real mode: big real mode keeps FS's 4 GiB limit (0x%x)", big_real_target);
	report(idtr_before[0] == idtr_after[0] && idtr_before[1] == idtr_after[1],
	       "real mode: the protected-mode IDT is back");
	u16 cs;
	asm volatile("movw %%cs, %0" : "=r"(cs));
	report(cs == KERNEL_CS, "real mode: back in 32-bit protected mode (cs 0x%x)", cs);
	return report_summary();
}
