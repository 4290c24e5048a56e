/* A 16-bit code segment (D=0) whose bytes decode differently as 32-bit code: CS read and a far jump to 0x33 hidden there */
#include "escape.h"

/*
 * GDT entry 6 (selector 0x30) is a 16-bit code segment over the block below. Decoded with
 * 16-bit operands, `B8 34 12 8C C8` is `mov ax, 0x1234; mov ax, cs`; decoded as 32-bit code
 * it is a single `mov eax, 0xc88c1234`. The second entry point holds `mov ax, 0x9090;
 * jmp far 0x33:0000`, which as 32-bit code is a MOV and two ADDs. A decoder that ignores
 * CS.D sees no sensitive instruction in either. Each path ends in UD2 (the same bytes in
 * both sizes), which the catcher turns into a return to 32-bit code: no far return that a
 * wrong decoder could also get wrong.
 */

#define CODE16_SEL 0x30
#define CODE16_ENTRIES (GDT_BASE_ENTRIES + 1)

asm(".text\n"
    ".balign 16\n"
    ".globl code16_base\n"
    "code16_base:\n"
    "code16_movcs:\n\t"
    ".byte 0xb8, 0x34, 0x12\n\t" /* mov ax, 0x1234 */
    ".byte 0x8c, 0xc8\n"         /* mov ax, cs */
    "code16_ud2:\n\t"
    ".byte 0x0f, 0x0b\n"         /* ud2: back to 32-bit code through the catcher */
    "code16_ljmp:\n\t"
    ".byte 0xb8, 0x90, 0x90\n" /* mov ax, 0x9090 */
    ".globl code16_ljmp_insn\n"
    "code16_ljmp_insn:\n\t"
    ".byte 0xea, 0x00, 0x00, 0x33, 0x00\n\t" /* jmp far 0x33:0000 */
    ".byte 0x0f, 0x0b\n"
    ".globl code16_ud2_off\n"
    ".set code16_ud2_off, code16_ud2 - code16_base\n"
    ".globl code16_ljmp_off\n"
    ".set code16_ljmp_off, code16_ljmp - code16_base\n"
    ".globl code16_ljmp_insn_off\n"
    ".set code16_ljmp_insn_off, code16_ljmp_insn - code16_base\n");
/* Offsets in the segment, as absolute symbols. */
extern const u8 code16_base[], code16_ud2_off[], code16_ljmp_off[], code16_ljmp_insn_off[];

static void code16_install(void)
{
	gdt[CODE16_SEL >> 3] = make_segment((u32)code16_base, 0xffff, ACC_CODE0, 0);
	gdt_load(CODE16_ENTRIES);
}

static void test_movcs(void)
{
	if (!check_selected("code16-mov-cs"))
		return;
	catch_start(KERNEL_CS);
	asm volatile(CATCH_RESUME_AT("1f") "lcall $0x30, $0\n1:\n\t" CATCH_RESUMED ::"a"(0xabcd0000)
		     : "memory", "cc");
	catch_stop();
	bool ud = caught_one(UD_VECTOR, 0, (u32)code16_ud2_off) && caught.cs == CODE16_SEL;
	if (caught.eax != (0xabcd0000 | CODE16_SEL))
		report_info("EAX %x", caught.eax);
	report(ud && caught.eax == (0xabcd0000 | CODE16_SEL),
	       "code16-mov-cs: `B8 34 12 8C C8` in a 16-bit code segment leaves AX = the guest's CS "
	       "0x30 and the upper half of EAX untouched");
}

static void test_ljmp(void)
{
	if (!check_selected("code16-ljmp-33"))
		return;
	/* The far pointer for an indirect far call into the segment at the second entry. */
	static struct {
		u32 offset;
		u16 sel;
	} __attribute__((packed)) entry = { 0, CODE16_SEL };
	entry.offset = (u32)code16_ljmp_off;
	catch_start(KERNEL_CS);
	asm volatile(CATCH_RESUME_AT("1f") "lcall *%0\n1:\n\t" CATCH_RESUMED ::"m"(entry)
		     : "eax", "memory", "cc");
	catch_stop();
	/* The selector names entry 6 with RPL 3: a non-conforming DPL 0 segment at CPL 0. */
	report(caught_one(GP_VECTOR, CODE16_SEL, (u32)code16_ljmp_insn_off) &&
		       caught.cs == CODE16_SEL,
	       "code16-ljmp-33: a 16-bit far JMP to 0x33 raises #GP(0x30) at 0x30:%x",
	       (u32)code16_ljmp_insn_off);
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	report_prefix_push("code16");
	code16_install();
	test_movcs();
	test_ljmp();
	gdt_load(GDT_BASE_ENTRIES);
	report_prefix_pop();
	report_info("still running: 16-bit code stayed in the guest");
	return report_summary();
}
