/* Interrupt stubs: every stub pushes (error code, vector) in the same layout so one C
 * dispatcher sees a struct frame (lib/guest.h). */

	.macro stub vector, has_error
	.globl isr_\vector
isr_\vector:
	.if \has_error == 0
	pushl $0
	.endif
	pushl $\vector
	jmp isr_common
	.endm

	.text
	stub 0, 0
	stub 1, 0
	stub 2, 0
	stub 3, 0
	stub 4, 0
	stub 5, 0
	stub 6, 0
	stub 7, 0
	stub 8, 1
	stub 9, 0
	stub 10, 1
	stub 11, 1
	stub 12, 1
	stub 13, 1
	stub 14, 1
	stub 15, 0
	stub 16, 0
	stub 17, 1
	stub 18, 0
	stub 19, 0
	stub 20, 0
	stub 21, 1
	stub 22, 0
	stub 23, 0
	stub 24, 0
	stub 25, 0
	stub 26, 0
	stub 27, 0
	stub 28, 0
	stub 29, 1
	stub 30, 1
	stub 31, 0
	stub 32, 0
	stub 33, 0
	stub 34, 0
	stub 35, 0
	stub 36, 0
	stub 37, 0
	stub 38, 0
	stub 39, 0
	stub 40, 0
	stub 41, 0
	stub 42, 0
	stub 43, 0
	stub 44, 0
	stub 45, 0
	stub 46, 0
	stub 47, 0
	/* vectors for the local APIC and the IOAPIC (lib/apic.c), and the APIC's spurious one */
	stub 64, 0
	stub 65, 0
	stub 66, 0
	stub 67, 0
	stub 68, 0
	stub 69, 0
	stub 70, 0
	stub 71, 0
	stub 72, 0
	stub 73, 0
	stub 74, 0
	stub 75, 0
	stub 76, 0
	stub 77, 0
	stub 78, 0
	stub 79, 0
	stub 80, 0
	stub 81, 0
	stub 82, 0
	stub 83, 0
	stub 84, 0
	stub 85, 0
	stub 86, 0
	stub 87, 0
	stub 88, 0
	stub 89, 0
	stub 90, 0
	stub 91, 0
	stub 92, 0
	stub 93, 0
	stub 94, 0
	stub 95, 0
	stub 96, 0
	stub 97, 0
	stub 98, 0
	stub 99, 0
	stub 100, 0
	stub 101, 0
	stub 102, 0
	stub 103, 0
	stub 104, 0
	stub 105, 0
	stub 106, 0
	stub 107, 0
	stub 108, 0
	stub 109, 0
	stub 110, 0
	stub 111, 0
	stub 112, 0
	stub 113, 0
	stub 114, 0
	stub 115, 0
	stub 116, 0
	stub 117, 0
	stub 118, 0
	stub 119, 0
	stub 120, 0
	stub 121, 0
	stub 122, 0
	stub 123, 0
	stub 124, 0
	stub 125, 0
	stub 126, 0
	stub 127, 0
	stub 129, 0
	stub 130, 0
	stub 131, 0
	stub 132, 0
	stub 133, 0
	stub 134, 0
	stub 135, 0
	stub 136, 0
	stub 137, 0
	stub 138, 0
	stub 139, 0
	stub 140, 0
	stub 141, 0
	stub 142, 0
	stub 143, 0
	stub 255, 0
	stub 128, 0

isr_common:
	pushal
	pushl %ds
	pushl %es
	pushl %fs
	pushl %gs
	movw $0x10, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %fs
	movw %ax, %gs
	cld
	pushl %esp
	call isr_dispatch
	addl $4, %esp
	popl %gs
	popl %fs
	popl %es
	popl %ds
	popal
	addl $8, %esp
	iret

	/* Table of stub addresses indexed by position; vector numbers in isr_vectors. */
	.section .rodata
	.align 4
	.globl isr_stub_table
isr_stub_table:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,255,128
	.long isr_\v
	.endr
	.globl isr_vectors
isr_vectors:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,255,128
	.byte \v
	.endr
	.globl isr_stub_count
isr_stub_count:
	.long isr_stub_count - isr_vectors /* one byte per vector */

	/* u32 run_user(void (*fn)(void), u32 eflags): IRET to CPL 3 at fn on the user stack;
	 * returns the value user code passed to user_return(). */
	.text
	.globl run_user
run_user:
	pushl %ebp
	pushl %ebx
	pushl %esi
	pushl %edi
	pushfl
	movl %esp, kernel_saved_esp
	movl 24(%esp), %eax
	movl 28(%esp), %edx
	pushl $0x23		/* SS: user data, RPL 3 */
	pushl $user_stack_top
	pushl %edx		/* EFLAGS */
	pushl $0x1b		/* CS: user code, RPL 3 */
	pushl %eax		/* EIP */
	movw $0x23, %cx
	movw %cx, %ds
	movw %cx, %es
	movw %cx, %fs
	movw %cx, %gs
	iret

	/* Called from the INT 0x80 handler (in CPL 0, on the TSS stack): abandon that frame
	 * and resume run_user's caller with EAX = value. */
	.globl return_to_kernel
return_to_kernel:
	movl 4(%esp), %eax
	movl kernel_saved_esp, %esp
	popfl
	popl %edi
	popl %esi
	popl %ebx
	popl %ebp
	ret

	.globl user_return
user_return:
	movl 4(%esp), %ebx
	movl $0x4b524554, %eax
	int $0x80
	ud2			/* not reached: the handler never returns to this frame */

	.bss
	.align 4
kernel_saved_esp:
	.long 0
	.align 16
	.space 8192
	.globl user_stack_top
user_stack_top:
