/* Self-modifying code through an alias: one frame mapped twice, run through one mapping, rewritten through the other (4 KiB and 4 MiB aliases, string stores), run again */
#include "escape.h"
#include "paging.h"

/*
 * The frame `code_frame` is mapped at EXEC (where it runs) and at WRITE (where it is
 * rewritten), and inside the 4 MiB page at LARGE. After code at EXEC has run, new bytes
 * written through an alias must be what runs next: the new value, a far JMP to 0x33 that
 * raises #GP(0x30), a MOV from CS that reads the guest's CS. A monitor that keeps running
 * what it translated or scanned before would run stale code, or new code it never saw.
 */

#define EXEC 0x00800000u  /* PDE 2: 4 KiB pages */
#define WRITE 0x00801000u /* the same frame again */
#define LARGE 0x01000000u /* PDE 4: a 4 MiB page over physical 0..4 MiB */

static u32 page_dir[1024] __attribute__((aligned(4096)));
static u32 alias_table[1024] __attribute__((aligned(4096)));
static u8 code_frame[4096] __attribute__((aligned(4096)));

static void paging_on(void)
{
	page_dir[0] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
	page_dir[1] = 0x400000 | PTE_P | PTE_RW | PTE_PS;
	page_dir[pde_index(LARGE)] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
	alias_table[pte_index(EXEC)] = (u32)code_frame | PTE_P | PTE_RW;
	alias_table[pte_index(WRITE)] = (u32)code_frame | PTE_P | PTE_RW;
	page_dir[pde_index(EXEC)] = (u32)alias_table | PTE_P | PTE_RW;
	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((u32)page_dir);
	write_cr0(read_cr0() | CR0_PG);
}

/* The frame through the large-page alias (the kernel image lies below 4 MiB). */
static u8 *large_alias(void) { return (u8 *)(LARGE + (u32)code_frame); }

/* `mov $value, %eax; ret` at `at`, written with plain stores or one string store. */
static void put_mov_ret(u8 *at, u32 value, bool string)
{
	u8 code[6] = { 0xb8, 0, 0, 0, 0, 0xc3 };
	memcpy(code + 1, &value, 4);
	if (string) {
		u32 d = (u32)at, s = (u32)code, n = sizeof(code);
		asm volatile("cld; rep movsb" : "+D"(d), "+S"(s), "+c"(n)::"memory");
	} else {
		for (unsigned i = 0; i < sizeof(code); i++)
			((volatile u8 *)at)[i] = code[i];
	}
	asm volatile("" ::: "memory");
}

static u32 call_at(u32 lin)
{
	u32 r;
	asm volatile("call *%1" : "=a"(r) : "r"(lin) : "ecx", "edx", "memory", "cc");
	return r;
}

static void check_rewrite(const char *name, const char *how, u8 *writer, bool string)
{
	if (!check_selected(name))
		return;
	put_mov_ret(writer, 0x11111111, string);
	u32 first = call_at(EXEC);
	put_mov_ret(writer, 0x22222222, string);
	u32 second = call_at(EXEC);
	if (first != 0x11111111 || second != 0x22222222)
		report_info("returned %x, then %x", first, second);
	report(first == 0x11111111 && second == 0x22222222,
	       "%s: code run at 0x800000 and rewritten %s runs its new bytes", name, how);
}

static void test_far_jump(void)
{
	if (!check_selected("alias-ljmp-33"))
		return;
	put_mov_ret(code_frame + 0x100, 0x33333333, false);
	u8 *w = (u8 *)WRITE + 0x100;
	u32 first = call_at(EXEC + 0x100);
	/* The code that just ran becomes ljmp $0x33, $escape_landing. */
	u8 ljmp[7] = { 0xea };
	u32 target = (u32)escape_landing;
	u16 sel = HOST_CS64;
	memcpy(ljmp + 1, &target, 4);
	memcpy(ljmp + 5, &sel, 2);
	for (unsigned i = 0; i < sizeof(ljmp); i++)
		((volatile u8 *)w)[i] = ljmp[i];
	catch_start(KERNEL_CS);
	asm volatile(CATCH_RESUME_AT("1f") "call *%0\n1:\n\t" CATCH_RESUMED ::"r"(EXEC + 0x100)
		     : "eax", "memory", "cc");
	catch_stop();
	report(first == 0x33333333 && caught_one(GP_VECTOR, 0x30, EXEC + 0x100),
	       "alias-ljmp-33: code that ran, rewritten through the alias into a far JMP to 0x33, "
	       "raises #GP(0x30)");
}

static void test_mov_cs(void)
{
	if (!check_selected("alias-mov-cs"))
		return;
	put_mov_ret(code_frame + 0x200, 0x44444444, false);
	u32 first = call_at(EXEC + 0x200);
	static const u8 movcs[] = { 0x8c, 0xc8, 0xc3, 0x90, 0x90, 0x90 };
	for (unsigned i = 0; i < sizeof(movcs); i++)
		((volatile u8 *)WRITE + 0x200)[i] = movcs[i];
	u32 second = call_at(EXEC + 0x200);
	if (first != 0x44444444 || (second & 0xffff) != KERNEL_CS)
		report_info("returned %x, then %x", first, second);
	report(first == 0x44444444 && (second & 0xffff) == KERNEL_CS,
	       "alias-mov-cs: code that ran, rewritten through the alias into MOV from CS, reads "
	       "the guest's CS 0x08");
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	paging_on();
	report_prefix_push("alias");
	check_rewrite("alias-4k", "through its 4 KiB alias", (u8 *)WRITE, false);
	check_rewrite("alias-4m", "through a 4 MiB page over the same frame", large_alias(),
		      false);
	check_rewrite("alias-movs", "by REP MOVSB through the alias", (u8 *)WRITE, true);
	check_rewrite("alias-identity", "through the frame's identity map", code_frame, false);
	test_far_jump();
	test_mov_cs();
	report_prefix_pop();
	report_info("still running: every rewrite was seen");
	return report_summary();
}
