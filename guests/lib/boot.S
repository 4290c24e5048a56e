/* Multiboot v1 entry: the loader enters in protected mode, paging off, EAX = magic, EBX = info. */
#define MB_MAGIC 0x1badb002
/* page-align modules + memory info; no video mode request, the guests only use the serial port */
#define MB_FLAGS 0x00000003

	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.text
	.globl _start
_start:
	cli
	cld
	movl $stack_top, %esp
	pushl $0		/* no return address: ends backtraces */
	pushl %ebx
	pushl %eax
	call guest_start
1:	cli
	hlt
	jmp 1b

	.bss
	.align 16
	.space 16384
	.globl stack_top
stack_top:
	/* stack for interrupts taken from CPL 3 (TSS.ESP0); separate so the kernel stack that
	 * run_user() left behind is not overwritten */
	.space 8192
	.globl interrupt_stack_top
interrupt_stack_top:
