/* The monitor window (linear 0xFC000000 and up): accesses through every segment register and string instructions, jumps there, paging on and off */
#include "escape.h"
#include "paging.h"

/*
 * The top 64 MiB of the linear space is where a translating monitor keeps its code cache,
 * lookup table and vCPU page. To the guest it is ordinary linear space: with paging off
 * there is no RAM there (writes vanish, reads give what memory without RAM gives, the same
 * as elsewhere in the PCI hole: all-ones on real buses and the monitor, zeros under QEMU),
 * and with paging on it is whatever the guest's page tables map. The guest must never see
 * monitor bytes there, and never execute them.
 */

#define WINDOW 0xfc000000u
/* Outside the window and without RAM: what "nothing" reads as on this machine. */
#define HOLE_REFERENCE 0xe0000000u
/* Devices inside the window on a PC (IOAPIC, HPET, local APIC), and the top MiB where
 * QEMU maps its BIOS ROM: the comparisons with the hole leave them out. */
#define DEVICES_START 0xfec00000u
#define DEVICES_END 0xfef00000u
#define ROM_START 0xfff00000u
#define PATTERN 0x5a5aa5a5u
#define WIN_DS 0x30 /* base 0x10000000: offset 0xec000000 reaches the window */
#define WIN_FS 0x38 /* base 0xfc000000 */
#define WINDOW_ENTRIES 8

static u32 nothing;

static u32 peek(u32 lin) { return *(volatile u32 *)lin; }

/* Stores `v` at linear `lin` through segment register `seg` (flat, or the segment the
 * caller loaded), by plain MOV, by MOV with an override, or by a string instruction. */
enum how { BY_DS, BY_ES, BY_FS, BY_GS, BY_SS, BY_STOS, BY_MOVS, BY_PUSH };
#define BY_LAST_DEFAULT BY_MOVS
static const char *const how_name[] = { "DS", "ES", "FS", "GS", "SS", "REP STOSL (ES)",
					 "REP MOVSL (DS to ES)", "PUSH (SS:ESP)" };

/* A fault the store raises is caught (catch_start() by the caller) and counted in `caught`:
 * it fails that check only. */
static void store(enum how how, u32 lin, u32 v)
{
	u32 src[2] = { v, v };
	switch (how) {
	case BY_DS:
		asm volatile(CATCH_RESUME_AT("1f") "movl %1, (%0)\n1:\n\t" CATCH_RESUMED ::"r"(lin), "r"(v)
			     : "memory");
		break;
	case BY_ES:
		asm volatile(CATCH_RESUME_AT("1f") "movl %1, %%es:(%0)\n1:\n\t" CATCH_RESUMED ::"r"(lin),
			     "r"(v)
			     : "memory");
		break;
	case BY_FS:
		asm volatile(CATCH_RESUME_AT("1f") "movl %1, %%fs:(%0)\n1:\n\t" CATCH_RESUMED ::"r"(lin),
			     "r"(v)
			     : "memory");
		break;
	case BY_GS:
		asm volatile(CATCH_RESUME_AT("1f") "movl %1, %%gs:(%0)\n1:\n\t" CATCH_RESUMED ::"r"(lin),
			     "r"(v)
			     : "memory");
		break;
	case BY_SS:
		asm volatile(CATCH_RESUME_AT("1f") "movl %1, %%ss:(%0)\n1:\n\t" CATCH_RESUMED ::"r"(lin),
			     "r"(v)
			     : "memory");
		break;
	case BY_STOS: {
		u32 d = lin, n = 2;
		asm volatile(CATCH_RESUME_AT("1f") "cld; rep stosl\n1:\n\t" CATCH_RESUMED
			     : "+D"(d), "+c"(n)
			     : "a"(v)
			     : "memory");
		break;
	}
	case BY_MOVS: {
		u32 d = lin, s = (u32)src, n = 2;
		asm volatile(CATCH_RESUME_AT("1f") "cld; rep movsl\n1:\n\t" CATCH_RESUMED
			     : "+D"(d), "+S"(s), "+c"(n)::"memory");
		break;
	}
	case BY_PUSH:
		/* ESP in the window for one push, interrupts off */
		asm volatile(CATCH_RESUME_AT("1f") "movl %0, %%esp\n\t"
						   "pushl %1\n1:\n\t" CATCH_RESUMED ::"r"(lin + 4),
			     "r"(v)
			     : "memory");
		break;
	}
}

/* The same value read by plain MOV and by a string load into RAM. */
static u32 load_movs(u32 lin)
{
	u32 dst = 0x0badf00d, d = (u32)&dst, s = lin, n = 1;
	asm volatile("cld; rep movsl" : "+D"(d), "+S"(s), "+c"(n)::"memory");
	return dst;
}

static const u32 window_addrs[] = { WINDOW, WINDOW + 0x10000, WINDOW + 0x1234560,
				    0xfe000000, DEVICES_START - 4, ROM_START - 4 };

static void test_paging_off_stores(void)
{
	report_prefix_push("window");
	static const char *const names[] = { "store-ds",   "store-es",   "store-fs",
					     "store-gs",   "store-ss",   "store-stos",
					     "store-movs", "store-push" };
	for (enum how how = BY_DS; how <= BY_PUSH; how++) {
		const char *name = names[how];
		/* PUSH is opt-in: the monitor stops the VM there (README, hostile suite). */
		if (how > BY_LAST_DEFAULT ? !check_opt_in(name) : !check_selected(name))
			continue;
		bool ok = true;
		catch_start(KERNEL_CS);
		for (unsigned i = 0; i < sizeof(window_addrs) / 4; i++) {
			u32 a = window_addrs[i];
			store(how, a, PATTERN);
			if (caught.count) {
				report_info("the store to %x raised vector %u error %x", a,
					    caught.vector, caught.error);
				ok = false;
				break;
			}
			u32 r = peek(a), s = load_movs(a);
			if (r != nothing || s != nothing) {
				report_info("%x reads %x (string load %x) after the store", a, r, s);
				ok = false;
			}
		}
		catch_stop();
		report(ok, "%s: stores through %s to the window vanish; reads give what the hole "
			   "outside it gives",
		       name, how_name[how]);
	}
	if (check_selected("store-segment-base")) {
		gdt[WIN_DS >> 3] = make_segment(0x10000000, 0xfffff, ACC_DATA0, FLAGS_4K_32);
		gdt[WIN_FS >> 3] = make_segment(WINDOW, 0xfffff, ACC_DATA0, FLAGS_4K_32);
		gdt_load(WINDOW_ENTRIES);
		u32 r1, r2;
		asm volatile("movw %w2, %%fs\n\t"
			     "movl %3, %%fs:0xec000000\n\t"
			     "movl %%fs:0xec000000, %0\n\t"
			     "movw %w4, %%fs\n\t"
			     "movl %3, %%fs:0x20\n\t"
			     "movl %%fs:0x20, %1\n\t"
			     "movw %w5, %%fs"
			     : "=&r"(r1), "=&r"(r2)
			     : "r"(WIN_DS), "r"(PATTERN), "r"(WIN_FS), "r"(KERNEL_DS)
			     : "memory");
		gdt_load(GDT_BASE_ENTRIES);
		if (r1 != nothing || r2 != nothing)
			report_info("read %x, %x", r1, r2);
		report(r1 == nothing && r2 == nothing,
		       "store-segment-base: the window reached by segment base + offset (0x10000000 "
		       "+ 0xec000000, and base 0xfc000000) reads as the hole");
	}
	if (check_selected("store-rom")) {
		/* QEMU maps its BIOS ROM at the very top: only "a write changes nothing" holds. */
		bool ok = true;
		catch_start(KERNEL_CS);
		for (u32 i = 0; i < 8; i++) {
			u32 a = 0xfffff000 + i * 0x1fc, before = peek(a);
			store(BY_DS, a, ~before);
			if (peek(a) != before) {
				report_info("%x: %x became %x", a, before, peek(a));
				ok = false;
			}
		}
		u32 last = peek(0xfffffffc);
		store(BY_ES, 0xfffffffc, ~last);
		catch_stop();
		report(ok && !caught.count && peek(0xfffffffc) == last,
		       "store-rom: stores to the last page below 4 GiB (QEMU's BIOS ROM) change "
		       "nothing read there");
	}
	report_prefix_pop();
}

static bool scan(u32 from, u32 to, u32 step)
{
	for (u32 a = from; a < to; a += step)
		if (peek(a) != nothing) {
			report_info("%x reads %x", a, peek(a));
			return false;
		}
	return true;
}

static void test_paging_off_scan(void)
{
	if (!check_selected("scan"))
		return;
	report_prefix_push("window");
	bool ok = scan(WINDOW, WINDOW + 0x100000, 0x1000) &&
		  scan(WINDOW + 0x100000, DEVICES_START, 0x10000) &&
		  scan(DEVICES_END, ROM_START - 0x100000, 0x10000) &&
		  scan(ROM_START - 0x100000, ROM_START, 0x1000);
	report(ok, "scan: every page of the window's first and last MiB and every 64 KiB "
		   "between (devices and ROM left out) reads as the hole");
	report_prefix_pop();
}

/* Opt-in: memory without RAM reads as 0xFF bytes on the monitor but zeros under QEMU,
 * where executing it runs `add %al, (%eax)` through the hole; so no reference exists.
 * Where the bytes read 0xFF, executing them is FF /7: #UD at the window address. */
static void test_paging_off_exec(void)
{
	if (!check_opt_in("exec-noram"))
		return;
	report_prefix_push("window");
	if (peek(WINDOW) != 0xffffffff) {
		report_skip("exec-noram: memory without RAM reads %x here", peek(WINDOW));
	} else {
		catch_start(KERNEL_CS);
		asm volatile(CATCH_RESUME_AT("1f") "jmp 0xfc000000\n1:\n\t" CATCH_RESUMED ::
				     : "memory", "cc");
		bool jmp = caught_one(UD_VECTOR, 0, WINDOW);
		catch_start(KERNEL_CS);
		asm volatile(CATCH_RESUME_AT("1f") "call *%0\n1:\n\t" CATCH_RESUMED ::"r"(WINDOW +
											   0x2000)
			     : "memory", "cc");
		bool call = caught_one(UD_VECTOR, 0, WINDOW + 0x2000);
		catch_stop();
		report(jmp && call, "exec-noram: JMP and CALL into the window without RAM execute "
				    "its 0xFF bytes: #UD at the target");
	}
	report_prefix_pop();
}

/* ---- paging on: the window is what the guest's page tables map ---- */

static u32 page_dir[1024] __attribute__((aligned(4096)));
static u32 window_table[1024] __attribute__((aligned(4096)));
static u32 top_table[1024] __attribute__((aligned(4096)));
static u8 frame_low[4096] __attribute__((aligned(4096)));
static u8 frame_top[4096] __attribute__((aligned(4096)));
#define TOP_PAGE 0xfffff000u
#define ABSENT (WINDOW + 0x1000)

static void paging_on(void)
{
	page_dir[0] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
	page_dir[1] = 0x400000 | PTE_P | PTE_RW | PTE_PS;
	window_table[0] = (u32)frame_low | PTE_P | PTE_RW;
	page_dir[pde_index(WINDOW)] = (u32)window_table | PTE_P | PTE_RW;
	top_table[pte_index(TOP_PAGE)] = (u32)frame_top | PTE_P | PTE_RW;
	page_dir[pde_index(TOP_PAGE)] = (u32)top_table | PTE_P | PTE_RW;
	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((u32)page_dir);
	write_cr0(read_cr0() | CR0_PG);
}

/* mov $imm32, %eax; ret */
static void put_code(u8 *at, u32 value)
{
	at[0] = 0xb8;
	memcpy(at + 1, &value, 4);
	at[5] = 0xc3;
	asm volatile("" ::: "memory");
}

static u32 call_at(u32 lin)
{
	u32 r;
	asm volatile("call *%1" : "=a"(r) : "r"(lin) : "ecx", "edx", "memory", "cc");
	return r;
}

static void test_paging_rw(const char *name, u32 page, u8 *frame)
{
	if (!check_selected(name))
		return;
	bool ok = true;
	catch_start(KERNEL_CS);
	for (enum how how = BY_DS; how <= BY_LAST_DEFAULT; how++) {
		u32 off = 0x40 + how * 16, v = PATTERN + how;
		if (how == BY_MOVS)
			v = PATTERN; /* the string source holds the pattern twice */
		caught.count = 0;
		store(how, page + off, v);
		if (caught.count)
			report_info("%s store to %x raised vector %u error %x", how_name[how],
				    page + off, caught.vector, caught.error);
		u32 in_frame;
		memcpy(&in_frame, frame + off, 4);
		if (in_frame != v || peek(page + off) != v || load_movs(page + off) != v) {
			report_info("%s store to %x: frame %x, read back %x", how_name[how],
				    page + off, in_frame, peek(page + off));
			ok = false;
		}
	}
	catch_stop();
	u32 v = 0x77665544;
	memcpy(frame + 0xffc, &v, 4);
	ok = ok && peek(page + 0xffc) == v;
	report(ok, "%s: the guest's page at %x is its RAM frame: stores through DS, ES, FS, GS, "
		   "SS, STOS and MOVS land there, and reads see the frame",
	       name, page);
}

/* Last in the kernel: a fault here is delivered on the same stack, in the window. */
static void test_paging_push(void)
{
	if (!check_selected("paging-push"))
		return;
	catch_start(KERNEL_CS);
	store(BY_PUSH, WINDOW + 0x800, PATTERN);
	catch_stop();
	u32 in_frame;
	memcpy(&in_frame, frame_low + 0x800, 4);
	if (caught.count || in_frame != PATTERN)
		report_info("vector %u raised, the frame holds %x", caught.count ? caught.vector : 0,
			    in_frame);
	report(!caught.count && in_frame == PATTERN,
	       "paging-push: a PUSH with ESP in the window lands in the guest's frame there");
}

static void test_paging_exec(const char *name, u32 page, u8 *frame)
{
	if (!check_selected(name))
		return;
	put_code(frame + 0x100, 0x600dc0de);
	u32 first = call_at(page + 0x100);
	/* Rewritten through the identity map of the frame, then run at the window again. */
	put_code(frame + 0x100, 0x5ec0de);
	u32 second = call_at(page + 0x100);
	if (first != 0x600dc0de || second != 0x5ec0de)
		report_info("returned %x, then %x", first, second);
	report(first == 0x600dc0de && second == 0x5ec0de,
	       "%s: guest code mapped at %x runs, and runs its new bytes once rewritten through "
	       "another mapping",
	       name, page + 0x100);
}

static void test_paging_absent(void)
{
	if (!check_selected("paging-absent"))
		return;
	u32 lin = ABSENT + 0x10;
	catch_start(KERNEL_CS);
	asm volatile(CATCH_RESUME_AT("1f") "movl (%0), %%eax\n1:\n\t" CATCH_RESUMED ::"r"(lin)
		     : "eax", "memory");
	bool rd = caught.vector == PF_VECTOR && caught.error == 0 && read_cr2() == lin;
	catch_start(KERNEL_CS);
	asm volatile(CATCH_RESUME_AT("1f") "movl %%eax, (%0)\n1:\n\t" CATCH_RESUMED ::"r"(lin)
		     : "eax", "memory");
	bool wr = caught.vector == PF_VECTOR && caught.error == PF_W && read_cr2() == lin;
	catch_start(KERNEL_CS);
	asm volatile(CATCH_RESUME_AT("1f") "call *%0\n1:\n\t" CATCH_RESUMED ::"r"(lin)
		     : "eax", "memory");
	bool ex = caught_one(PF_VECTOR, 0, lin) && read_cr2() == lin;
	catch_stop();
	report(rd && wr && ex,
	       "paging-absent: a read, a write and a CALL to a window page the guest left "
	       "unmapped raise #PF (error 0, 2, 0) with CR2 = %x",
	       lin);
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	/* FS and GS flat like DS: every segment register reaches the window by offset alone. */
	asm volatile("movw %w0, %%fs; movw %w0, %%gs" ::"r"(KERNEL_DS));
	nothing = peek(HOLE_REFERENCE);
	report_info("memory without RAM reads %x (at %x)", nothing, HOLE_REFERENCE);
	test_paging_off_stores();
	test_paging_off_scan();
	test_paging_off_exec();

	paging_on();
	report_prefix_push("window paging");
	test_paging_rw("paging-rw", WINDOW, frame_low);
	test_paging_rw("paging-rw-top", TOP_PAGE, frame_top);
	test_paging_exec("paging-exec", WINDOW, frame_low);
	test_paging_exec("paging-exec-top", TOP_PAGE, frame_top);
	test_paging_absent();
	test_paging_push();
	report_prefix_pop();
	report_info("still running: the window held only what the guest put there");
	return report_summary();
}
