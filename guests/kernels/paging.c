/* 32-bit paging: identity and higher-half maps, 4 MiB and 4 KiB pages, live PTEs, A/D bits, #PF codes, self-modifying and self-reading code */
#include "paging.h"

#define HIGH_BASE 0xc0000000u /* the higher-half alias of the first 4 MiB */
#define TEST_BASE 0x00800000u /* PDE 2: 4 KiB pages the tests remap */
#define LARGE_RO_BASE 0x01000000u /* PDE 4: a second view of the first 4 MiB */
#define TEST_PAGE(n) ((volatile u32 *)(TEST_BASE + (n) * PAGE_SIZE))

static u32 page_dir[1024] __attribute__((aligned(4096)));
static u32 high_table[1024] __attribute__((aligned(4096)));
static u32 test_table[1024] __attribute__((aligned(4096)));
static u32 frames[3][1024] __attribute__((aligned(4096)));
static u8 smc_page[4096] __attribute__((aligned(4096)));
static u8 straddle_frames[3][4096] __attribute__((aligned(4096)));
static u32 straddle_table[1024] __attribute__((aligned(4096)));
static u8 thunk_frames[2][4096] __attribute__((aligned(4096)));
static u32 data_frames[3][1024] __attribute__((aligned(4096)));
static u8 pge_frames[2][4096] __attribute__((aligned(4096)));

#define STRADDLE_BASE 0x00c00000u /* PDE 3: two pages on frames in reverse order */
#define SPACES_BASE 0x01400000u /* PDE 5: code whose second page differs per address space */

static u32 page_dir2[1024] __attribute__((aligned(4096)));
static u32 spaces_tables[2][1024] __attribute__((aligned(4096)));
static u8 spaces_frames[3][4096] __attribute__((aligned(4096)));

/* The CPU sets A and D in the tables behind the compiler's back: read entries through this. */
#define LIVE(table, i) (((volatile u32 *)(table))[i])

static u32 phys(const volatile void *p) { return (u32)p; } /* the kernel runs identity-mapped */

static void setup_paging(void)
{
	/* 0..8 MiB identity through two 4 MiB pages, supervisor read/write. */
	page_dir[0] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
	page_dir[1] = 0x400000 | PTE_P | PTE_RW | PTE_PS;
	/* 0xc0000000.. -> 0..4 MiB through 4 KiB pages. */
	for (u32 i = 0; i < 1024; i++)
		high_table[i] = (i * PAGE_SIZE) | PTE_P | PTE_RW;
	page_dir[pde_index(HIGH_BASE)] = phys(high_table) | PTE_P | PTE_RW;
	/* The test region: page n -> frames[n]. */
	for (u32 i = 0; i < 3; i++)
		test_table[i] = phys(frames[i]) | PTE_P | PTE_RW;
	page_dir[pde_index(TEST_BASE)] = phys(test_table) | PTE_P | PTE_RW;

	write_cr4(read_cr4() | CR4_PSE);
	write_cr3(phys(page_dir));
	write_cr0(read_cr0() | CR0_PG | CR0_WP);
}

/* Position-independent: runs the same at its identity address and its alias. */
static int __attribute__((noinline)) add3(int a, int b, int c) { return a + b + c; }

static void test_mappings(void)
{
	report_prefix_push("mappings");
	report((read_cr0() & CR0_PG) && read_cr3() == phys(page_dir), "paging on, CR3 is the directory");

	static volatile u32 cell;
	cell = 0x1234abcd;
	volatile u32 *high = (volatile u32 *)((u32)&cell + HIGH_BASE);
	report(*high == 0x1234abcd, "a write through the identity map reads back through the higher half");
	*high = 0x0badf00d;
	report(cell == 0x0badf00d, "a write through the higher half reads back through the identity map");

	int (*alias)(int, int, int) = (int (*)(int, int, int))((u32)add3 + HIGH_BASE);
	report(add3(1, 2, 3) == 6 && alias(10, 20, 30) == 60,
	       "the same code runs at its identity address and its higher-half alias");

	frames[0][0] = 0x11111111;
	frames[1][0] = 0x22222222;
	report(*TEST_PAGE(0) == 0x11111111 && *TEST_PAGE(1) == 0x22222222,
	       "4 KiB pages map their frames");
	report_prefix_pop();
}

static void test_live_ptes(void)
{
	report_prefix_push("live PTEs");
	volatile u32 *p = TEST_PAGE(0);
	frames[0][0] = 0x11111111;
	frames[1][0] = 0x22222222;
	(void)*p;
	test_table[0] = phys(frames[1]) | PTE_P | PTE_RW;
	invlpg(p);
	report(*p == 0x22222222, "a PTE pointed at another frame is seen after INVLPG");

	test_table[0] = phys(frames[0]) | PTE_P | PTE_RW;
	flush_tlb();
	report(*p == 0x11111111, "and after a CR3 reload");

	*p = 0x33333333;
	report(frames[0][0] == 0x33333333, "writes land in the mapped frame");

	/* Accessed and dirty bits. */
	test_table[2] = phys(frames[2]) | PTE_P | PTE_RW;
	invlpg(TEST_PAGE(2));
	(void)*TEST_PAGE(2);
	u32 e = LIVE(test_table, 2);
	report((e & PTE_A) && !(e & PTE_D), "a read sets A, not D");
	*TEST_PAGE(2) = 5;
	e = LIVE(test_table, 2);
	report((e & PTE_A) && (e & PTE_D), "a write sets D");
	report((LIVE(page_dir, pde_index(TEST_BASE)) & PTE_A) != 0, "the PDE's A is set");
	report((LIVE(page_dir, 0) & (PTE_A | PTE_D)) == (PTE_A | PTE_D),
	       "the kernel's 4 MiB page has A and D in its PDE");

	/* A large page first only read, then written. */
	page_dir[pde_index(LARGE_RO_BASE)] = 0x000000 | PTE_P | PTE_RW | PTE_PS;
	volatile u32 *big = (volatile u32 *)(LARGE_RO_BASE + phys(&frames[0][1]));
	invlpg(big);
	u32 was = *big;
	u32 pde = LIVE(page_dir, pde_index(LARGE_RO_BASE));
	report((pde & PTE_A) && !(pde & PTE_D), "a read through a 4 MiB page sets A only");
	*big = was + 1;
	pde = LIVE(page_dir, pde_index(LARGE_RO_BASE));
	report((pde & PTE_D) && frames[0][1] == was + 1, "a write sets D and reaches the frame");

	/* The dirty bit is set again after the guest clears it. */
	LIVE(test_table, 2) &= ~(PTE_D | PTE_A);
	invlpg(TEST_PAGE(2));
	*TEST_PAGE(2) = 6;
	e = LIVE(test_table, 2);
	report((e & PTE_A) && (e & PTE_D), "D and A are set again after the kernel clears them");
	report_prefix_pop();
}

static void test_faults(void)
{
	report_prefix_push("#PF");
	volatile u32 *p = TEST_PAGE(1);
	u32 v = 0;

	test_table[1] = phys(frames[1]) | PTE_RW; /* not present */
	invlpg(p);
	pf_catch_begin();
	asm volatile(FAULT_ASM("movl (%1), %0") : "=r"(v) : "r"(p) : "memory");
	report(pf_catch_end(0, (u32)p), "read of a not-present page: error 0, CR2");

	pf_catch_begin();
	asm volatile(FAULT_ASM("movl $1, (%0)") ::"r"(p) : "memory");
	report(pf_catch_end(PF_W, (u32)p), "write to a not-present page: error W, CR2");

	frames[1][0] = 0x44444444;
	test_table[1] = phys(frames[1]) | PTE_P; /* read-only */
	invlpg(p);
	report(*p == 0x44444444, "a read-only page reads");
	pf_catch_begin();
	asm volatile(FAULT_ASM("movl $7, 4(%0)") ::"r"(p) : "memory");
	report(pf_catch_end(PF_P | PF_W, (u32)p + 4) && frames[1][1] == 0,
	       "supervisor write to a read-only page with CR0.WP=1: error P|W, nothing written");

	write_cr0(read_cr0() & ~CR0_WP);
	pf_catch_begin();
	asm volatile(FAULT_ASM("movl $7, 4(%0)") ::"r"(p) : "memory");
	report(last_pf.count == 0 && frames[1][1] == 7,
	       "with CR0.WP=0 the supervisor write goes through");
	handle_exception(PF_VECTOR, NULL);
	write_cr0(read_cr0() | CR0_WP);

	pf_catch_begin();
	asm volatile(FAULT_ASM("movl $8, 8(%0)") ::"r"(p) : "memory");
	report(pf_catch_end(PF_P | PF_W, (u32)p + 8) && frames[1][2] == 0,
	       "CR0.WP=1 again: the write faults again");

	test_table[1] = phys(frames[1]) | PTE_P | PTE_RW;
	invlpg(p);
	(void)v;
	report_prefix_pop();
}

/* Page-table updates with the instruction forms kernels use: each changes a live PTE
 * (one a mapping was derived from) and the change is seen after INVLPG. */
static void test_table_updates(void)
{
	report_prefix_push("PTE updates");
	volatile u32 *p = TEST_PAGE(0);
	volatile u32 *pte = &test_table[0];
	u32 frame0 = phys(frames[0]), frame1 = phys(frames[1]);
	frames[0][0] = 0x11111111;
	frames[1][0] = 0x22222222;
	*pte = frame0 | PTE_P | PTE_RW;
	invlpg(p);
	(void)*p;

	u32 old = frame1 | PTE_P | PTE_RW;
	asm volatile("xchgl %0, (%1)" : "+r"(old) : "r"(pte) : "memory");
	invlpg(p);
	report((old & ~0xfffu) == frame0 && *p == 0x22222222, "XCHG swaps in a new frame");

	u32 expect = *pte, seen = 0;
	u8 ok = 0;
	asm volatile("lock cmpxchgl %3, (%2); sete %1"
		     : "=a"(seen), "=q"(ok)
		     : "r"(pte), "r"(frame0 | PTE_P | PTE_RW), "0"(expect)
		     : "memory", "cc");
	invlpg(p);
	report(ok && seen == expect && *p == 0x11111111, "LOCK CMPXCHG installs it when it matches");
	asm volatile("lock cmpxchgl %3, (%2); sete %1"
		     : "=a"(seen), "=q"(ok)
		     : "r"(pte), "r"(frame1 | PTE_P | PTE_RW), "0"(expect)
		     : "memory", "cc");
	invlpg(p);
	report(!ok && (seen & ~0xfffu) == frame0 && *p == 0x11111111,
	       "and leaves it when it does not, returning the current entry");

	u8 was = 0;
	asm volatile("btrl $1, (%1); setc %0" : "=q"(was) : "r"(pte) : "memory", "cc");
	invlpg(p);
	pf_catch_begin();
	asm volatile(FAULT_ASM("movl $9, (%0)") ::"r"(p) : "memory");
	report(was && pf_catch_end(PF_P | PF_W, (u32)p), "BTR clears R/W: the page is read-only");

	asm volatile("lock orl %1, (%0)" ::"r"(pte), "i"(PTE_RW) : "memory", "cc");
	invlpg(p);
	*p = 0x55555555;
	report(frames[0][0] == 0x55555555, "LOCK OR sets R/W again");

	asm volatile("andl %1, (%0)" ::"r"(pte), "i"(~PTE_P) : "memory", "cc");
	invlpg(p);
	pf_catch_begin();
	asm volatile(FAULT_ASM("movl (%0), %%eax") ::"r"(p) : "eax", "memory");
	report(pf_catch_end(0, (u32)p), "AND clears P: not present");

	asm volatile("incl (%0)" ::"r"(pte) : "memory", "cc"); /* P is bit 0 */
	invlpg(p);
	report(*p == 0x55555555, "INC sets P back");

	/* A whole table cleared with REP STOSD, then rebuilt. */
	(void)*TEST_PAGE(1);
	(void)*TEST_PAGE(2);
	u32 n = 3;
	void *dst = (void *)test_table;
	asm volatile("rep stosl" : "+D"(dst), "+c"(n) : "a"(0) : "memory");
	flush_tlb();
	pf_catch_begin();
	asm volatile(FAULT_ASM("movl (%0), %%eax") ::"r"(TEST_PAGE(2)) : "eax", "memory");
	report(pf_catch_end(0, (u32)TEST_PAGE(2)) && n == 0, "REP STOSD empties the table");
	for (u32 i = 0; i < 3; i++)
		test_table[i] = phys(frames[i]) | PTE_P | PTE_RW;
	flush_tlb();
	report(*TEST_PAGE(0) == 0x55555555, "and the rebuilt table maps again");
	report_prefix_pop();
}

typedef u32 (*code_fn)(void);

static void test_self_modifying(void)
{
	report_prefix_push("code");
	/* mov $imm32, %eax; ret */
	static const u8 mov_ret[] = { 0xb8, 0x11, 0x11, 0x11, 0x11, 0xc3 };
	memcpy(smc_page, mov_ret, sizeof(mov_ret));
	code_fn f = (code_fn)smc_page;
	u32 first = f();
	*(volatile u32 *)(smc_page + 1) = 0x22222222;
	u32 second = f();
	report(first == 0x11111111 && second == 0x22222222,
	       "code written, run, rewritten, run again: the new code runs");

	/* pushf; pop %eax; ret: a sensitive instruction in generated code. */
	static const u8 pushf_ret[] = { 0x9c, 0x58, 0xc3 };
	memcpy(smc_page + 64, pushf_ret, sizeof(pushf_ret));
	code_fn g = (code_fn)(smc_page + 64);
	u32 flags = g();
	report((flags & EFLAGS_FIXED1) && (flags & EFLAGS_IF) == (read_eflags() & EFLAGS_IF),
	       "generated PUSHF reports the kernel's flags");
	volatile u8 *b = smc_page + 64;
	if (cmdline_has("code-reads"))
		report(b[0] == 0x9c && b[1] == 0x58 && b[2] == 0xc3,
		       "reading generated code after it ran gives the bytes written");
	else
		report_skip("reading generated code back (code-reads not given)");

	/* The same frame through the higher half: one scan serves both addresses. */
	code_fn h = (code_fn)((u32)smc_page + 64 + HIGH_BASE);
	u32 alias_flags = h();
	report((alias_flags & EFLAGS_FIXED1) && (alias_flags & EFLAGS_IF) == (flags & EFLAGS_IF),
	       "the generated code also runs through its higher-half alias");
	report_prefix_pop();
}

/* An instruction that straddles two linear pages whose frames are not neighbours: MOV
 * EAX, imm32 starts at the last byte of the first page; its immediate is the first four
 * bytes of the second, which begin with B8 — read from offset 0, they would swallow the
 * PUSHF that follows. The PUSHF must be found (and run as the guest's PUSHF, IF clear). */
static void test_straddle(void)
{
	report_prefix_push("straddle");
	u8 *first = straddle_frames[2], *second = straddle_frames[0];
	memset(first, 0x90, PAGE_SIZE);
	first[PAGE_SIZE - 1] = 0xb8;
	static const u8 tail[] = { 0xb8, 0, 0, 0, 0x9c, 0x58, 0xc3 };
	memcpy(second, tail, sizeof(tail));
	straddle_table[0] = (u32)first | PTE_P | PTE_RW;
	straddle_table[1] = (u32)second | PTE_P | PTE_RW;
	page_dir[pde_index(STRADDLE_BASE)] = (u32)straddle_table | PTE_P | PTE_RW;
	code_fn f = (code_fn)(STRADDLE_BASE + PAGE_SIZE - 16);
	u32 saved = read_eflags();
	cli();
	u32 flags = f();
	write_eflags(saved);
	report((flags & EFLAGS_FIXED1) && !(flags & EFLAGS_IF),
	       "PUSHF after an instruction straddling into a non-adjacent frame sees IF clear");
	report_prefix_pop();
}

/* The same straddle with the second page run first: its scan starts at an entry past the
 * tail and cannot know the tail, whose bytes (06, PUSH ES on their own) must not be patched
 * when the first page shows them to be MOV's immediate. */
static void test_straddle_second_first(void)
{
	report_prefix_push("straddle");
	u8 *first = straddle_frames[2], *second = straddle_frames[1];
	memset(first, 0x90, PAGE_SIZE);
	first[PAGE_SIZE - 1] = 0xb8;
	static const u8 tail[] = { 0x06, 0x06, 0x06, 0x06, 0xc3 };
	memcpy(second, tail, sizeof(tail));
	straddle_table[2] = (u32)first | PTE_P | PTE_RW;
	straddle_table[3] = (u32)second | PTE_P | PTE_RW;
	flush_tlb();
	code_fn ret_only = (code_fn)(STRADDLE_BASE + 3 * PAGE_SIZE + 4);
	ret_only();
	code_fn f = (code_fn)(STRADDLE_BASE + 3 * PAGE_SIZE - 16);
	u32 got = f();
	report(got == 0x06060606,
	       "second page run first: the straddling MOV's immediate stays intact (got %x)", got);
	report_prefix_pop();
}

/* i386 position-independent code finds its address by calling a thunk, MOV EBX,[ESP]
 * then RET. The thunk lies on another page (STRADDLE_BASE's sixth, mapped to one of two
 * frames); the callers (in smc_page) keep EBX and return what the thunk gave, or what it
 * left below ESP. The thunk is then rewritten in place, and its page remapped: callers run
 * what the thunk's bytes now say. */
#define THUNK_PAGE 5
static void test_pic_thunks(void)
{
	report_prefix_push("thunks");
	u32 thunk = STRADDLE_BASE + THUNK_PAGE * PAGE_SIZE;
	static const u8 plain[] = { 0x8b, 0x1c, 0x24, 0xc3 }; /* mov ebx,[esp]; ret */
	static const u8 plus_one[] = { 0x8b, 0x1c, 0x24, 0x43, 0xc3 }; /* ...; inc ebx; ret */
	memcpy(thunk_frames[0], plain, sizeof(plain));
	memcpy(thunk_frames[1], plus_one, sizeof(plus_one));
	straddle_table[THUNK_PAGE] = phys(thunk_frames[0]) | PTE_P | PTE_RW;
	page_dir[pde_index(STRADDLE_BASE)] = phys(straddle_table) | PTE_P | PTE_RW;
	invlpg((void *)thunk);
	/* push ebx; call thunk; mov eax,ebx (or mov eax,[esp-4]); pop ebx; ret */
	u8 *callers[2] = { smc_page + 256, smc_page + 320 };
	static const u8 tails[2][5] = { { 0x89, 0xd8, 0x5b, 0xc3 }, { 0x8b, 0x44, 0x24, 0xfc, 0x5b } };
	for (u32 c = 0; c < 2; c++) {
		u8 *code = callers[c];
		code[0] = 0x53;
		code[1] = 0xe8;
		u32 rel = thunk - ((u32)code + 6);
		memcpy(code + 2, &rel, 4);
		memcpy(code + 6, tails[c], 5);
		code[11] = 0xc3;
	}
	code_fn in_ebx = (code_fn)callers[0], below_esp = (code_fn)callers[1];
	u32 ret[2] = { (u32)callers[0] + 6, (u32)callers[1] + 6 };
	int same = 1;
	for (int k = 0; k < 3; k++)
		same &= in_ebx() == ret[0] && below_esp() == ret[1];
	report(same, "a call of a PIC thunk gives its return address in EBX and below ESP");

	volatile u8 *bytes = thunk_frames[0];
	bytes[4] = 0xc3;
	bytes[3] = 0x43;
	u32 rewritten = in_ebx(), rewritten_again = in_ebx();
	bytes[3] = 0xc3;
	u32 restored = in_ebx(), restored_again = in_ebx();
	report(rewritten == ret[0] + 1 && rewritten_again == ret[0] + 1 && restored == ret[0] &&
		       restored_again == ret[0],
	       "the thunk rewritten in place: its callers run the new code (got %x, then %x)", rewritten,
	       restored);

	straddle_table[THUNK_PAGE] = phys(thunk_frames[1]) | PTE_P | PTE_RW;
	invlpg((void *)thunk);
	u32 remapped = in_ebx(), remapped_again = in_ebx();
	straddle_table[THUNK_PAGE] = phys(thunk_frames[0]) | PTE_P | PTE_RW;
	invlpg((void *)thunk);
	u32 back = in_ebx();
	report(remapped == ret[0] + 1 && remapped_again == ret[0] + 1 && back == ret[0],
	       "the thunk's page remapped: its callers run the new frame's code (got %x, then %x)",
	       remapped, back);
	report_prefix_pop();
}

/* Lazy FPU switching under paging: #NM, CLTS in the handler, the instruction again. */
#define NM_VECTOR 7
static volatile u32 nm_faults;
static void nm_clts(struct frame *f)
{
	(void)f;
	nm_faults++;
	asm volatile("clts");
}

static void test_lazy_fpu(void)
{
	report_prefix_push("#NM");
	volatile u32 result = 0;
	asm volatile("fninit; fld1; fstps %0" : "=m"(result)); /* scanned with TS clear */
	handle_exception(NM_VECTOR, nm_clts);
	nm_faults = 0;
	result = 0;
	write_cr0(read_cr0() | CR0_TS);
	asm volatile("fld1; fstps %0" : "=m"(result));
	handle_exception(NM_VECTOR, NULL);
	report(nm_faults == 1 && result == 0x3f800000 && !(read_cr0() & CR0_TS),
	       "[lazy paging] #NM under paging, CLTS, FLD1 restarted (faults %u, result %x)",
	       nm_faults, result);
	report_prefix_pop();
}

/* pushf; pop %eax; ret in the kernel's own text. */
u32 text_pushf(void);
asm(".text\n.globl text_pushf\ntext_pushf:\n\tpushfl\n\tpopl %eax\n\tret\n");

/* Under a monitor that plants traps in code, reading code back needs execute-only host
 * pages; the command-line word `code-reads` asks for these checks. */
static void test_read_own_code(void)
{
	report_prefix_push("own code");
	if (!cmdline_has("code-reads")) {
		report_skip("reading the kernel's own code (code-reads not given)");
		report_prefix_pop();
		return;
	}
	u32 flags = text_pushf();
	volatile u8 *b = (volatile u8 *)text_pushf;
	report((flags & EFLAGS_FIXED1) && b[0] == 0x9c && b[1] == 0x58 && b[2] == 0xc3,
	       "the kernel reads its own PUSHF; POP; RET bytes after running them");
	volatile u8 *hb = (volatile u8 *)((u32)text_pushf + HIGH_BASE);
	report(hb[0] == 0x9c, "and through the higher-half alias");
	report_prefix_pop();
}

/* One store instruction, as a kernel's set_pte is. */
static void __attribute__((noinline)) store32(volatile u32 *where, u32 value) { *where = value; }

/* The same instruction writes a live PTE again and again (the monitor may come to perform
 * it itself), then ordinary memory: every store lands and every new mapping is seen. */
static void test_repeated_writers(void)
{
	report_prefix_push("repeated writers");
	volatile u32 *p = TEST_PAGE(0);
	volatile u32 *pte = &test_table[0];
	u32 frame[2] = { phys(frames[0]), phys(frames[1]) };
	u32 want[2] = { 0xaaaa0000, 0xbbbb0000 };
	frames[0][3] = want[0];
	frames[1][3] = want[1];
	int seen = 1;
	for (u32 i = 0; i < 40; i++) {
		store32(pte, frame[i & 1] | PTE_P | PTE_RW);
		invlpg(p);
		seen &= p[3] == want[i & 1];
	}
	store32(pte, frame[0] | PTE_P | PTE_RW);
	invlpg(p);
	report(seen && p[3] == want[0], "one store rewriting a PTE 40 times: each new frame is seen");
	static u32 plain[64];
	for (u32 i = 0; i < 64; i++)
		store32(&plain[i], i * 3 + 1);
	int stored = 1;
	for (u32 i = 0; i < 64; i++)
		stored &= plain[i] == i * 3 + 1;
	report(stored, "the same store then writing ordinary memory: every store lands");
	report_prefix_pop();
}

/* Two address spaces share the first page of SPACES_BASE (a JMP to the second page) and
 * map the second page to different frames, each returning its own value. Whatever was
 * entered or chained in one space, the other runs its own code after a CR3 write, and a
 * PTE changed and invalidated takes effect at once. */
static void test_code_across_spaces(void)
{
	report_prefix_push("spaces");
	u8 *jmp = spaces_frames[0];
	u32 target = SPACES_BASE + PAGE_SIZE;
	jmp[0] = 0xe9; /* jmp rel32 to the second page */
	u32 rel = target - (SPACES_BASE + 5);
	memcpy(jmp + 1, &rel, 4);
	static const u8 one[] = { 0xb8, 0x11, 0x11, 0x11, 0x11, 0xc3 };
	static const u8 two[] = { 0xb8, 0x22, 0x22, 0x22, 0x22, 0xc3 };
	memcpy(spaces_frames[1], one, sizeof(one));
	memcpy(spaces_frames[2], two, sizeof(two));
	for (u32 s = 0; s < 2; s++) {
		spaces_tables[s][0] = phys(spaces_frames[0]) | PTE_P | PTE_RW;
		spaces_tables[s][1] = phys(spaces_frames[1 + s]) | PTE_P | PTE_RW;
	}
	page_dir[pde_index(SPACES_BASE)] = phys(spaces_tables[0]) | PTE_P | PTE_RW;
	flush_tlb();
	for (u32 i = 0; i < 1024; i++)
		page_dir2[i] = page_dir[i];
	page_dir2[pde_index(SPACES_BASE)] = phys(spaces_tables[1]) | PTE_P | PTE_RW;

	code_fn through_jmp = (code_fn)SPACES_BASE, direct = (code_fn)target;
	u32 dirs[2] = { phys(page_dir), phys(page_dir2) };
	u32 want[2] = { 0x11111111, 0x22222222 };
	int jumped = 1, called = 1;
	for (u32 round = 0; round < 6; round++) {
		u32 s = round & 1;
		write_cr3(dirs[s]);
		/* Twice each: the second run takes what the first chained and looked up. */
		for (int k = 0; k < 2; k++) {
			jumped &= through_jmp() == want[s];
			called &= direct() == want[s];
		}
	}
	write_cr3(dirs[0]);
	report(jumped, "a jump into a page mapped differently per space runs that space's code");
	report(called, "an indirect call there runs that space's code");

	/* Same space: the PTE moves to the other frame; INVLPG makes it seen. */
	u32 before_jmp = through_jmp(), before_call = direct();
	spaces_tables[0][1] = phys(spaces_frames[2]) | PTE_P | PTE_RW;
	invlpg((void *)target);
	u32 after_jmp = through_jmp(), after_call = direct();
	spaces_tables[0][1] = phys(spaces_frames[1]) | PTE_P | PTE_RW;
	invlpg((void *)target);
	u32 back = through_jmp();
	report(before_jmp == 0x11111111 && before_call == 0x11111111 && after_jmp == 0x22222222 && after_call == 0x22222222 &&
		       back == 0x11111111,
	       "a code PTE changed and invalidated runs the new frame's code at once");
	report_prefix_pop();
}

/* Data pages under two address spaces (after test_code_across_spaces, whose directories
 * they reuse): the third page of SPACES_BASE maps a frame of its own in each. Every
 * switch reads the loaded space's data; a PTE of the space not loaded, changed to another
 * frame and left without its accessed bit, is followed at the next switch, and its
 * accessed bit is set by the access, not before. */
static void test_data_across_spaces(void)
{
	report_prefix_push("spaces");
	volatile u32 *p = (volatile u32 *)(SPACES_BASE + 2 * PAGE_SIZE);
	for (u32 f = 0; f < 3; f++)
		data_frames[f][0] = 0x1000 + f;
	for (u32 s = 0; s < 2; s++)
		spaces_tables[s][2] = phys(data_frames[s]) | PTE_P | PTE_RW;
	u32 dirs[2] = { phys(page_dir), phys(page_dir2) };
	int seen = 1;
	for (u32 round = 0; round < 8; round++) {
		u32 s = round & 1;
		write_cr3(dirs[s]);
		seen &= p[0] == 0x1000 + s;
		p[1] = round;
	}
	report(seen && data_frames[0][1] == 6 && data_frames[1][1] == 7,
	       "each address space reads and writes its own data page at every switch");
	write_cr3(dirs[1]);
	(void)p[0];
	spaces_tables[0][2] = phys(data_frames[2]) | PTE_P | PTE_RW;
	write_cr3(dirs[0]);
	u32 before = LIVE(spaces_tables[0], 2) & PTE_A;
	u32 got = p[0];
	u32 after = LIVE(spaces_tables[0], 2) & PTE_A;
	report(before == 0 && got == 0x1002 && after,
	       "a PTE changed while its space was not loaded is followed, accessed only when used (got %x)",
	       got);
	report_prefix_pop();
}


/* CR4.PGE toggled, as Linux flushes its global TLB entries: code in a global page runs
 * what its frame holds through every toggle, CR3 reload and INVLPG. */
#define PGE_PAGE 8

static u32 __attribute__((noinline)) call_at(u32 addr)
{
	u32 (*volatile f)(void) = (u32 (*)(void))addr;
	return f();
}

static void test_global_toggle(void)
{
	report_prefix_push("PGE");
	static const u8 code[2][6] = { { 0xb8, 1, 0, 0, 0, 0xc3 }, { 0xb8, 2, 0, 0, 0, 0xc3 } };
	for (int f = 0; f < 2; f++)
		memcpy(pge_frames[f], code[f], sizeof(code[f]));
	u32 page = TEST_BASE + PGE_PAGE * PAGE_SIZE;
	test_table[PGE_PAGE] = phys(pge_frames[0]) | PTE_P | PTE_RW | PTE_G;
	invlpg((void *)page);
	write_cr4(read_cr4() | CR4_PGE);
	u32 first = call_at(page) + call_at(page);
	write_cr3(read_cr3());
	u32 kept = call_at(page);
	/* PGE cleared: the whole TLB goes, and the page is global no more: a CR3 reload
	 * then drops what was looked up through it since. */
	write_cr4(read_cr4() & ~CR4_PGE);
	u32 before = call_at(page);
	test_table[PGE_PAGE] = phys(pge_frames[1]) | PTE_P | PTE_RW | PTE_G;
	write_cr3(read_cr3());
	u32 second = call_at(page);
	write_cr4(read_cr4() | CR4_PGE);
	u32 third = call_at(page);
	test_table[PGE_PAGE] = phys(pge_frames[0]) | PTE_P | PTE_RW | PTE_G;
	invlpg((void *)page);
	u32 fourth = call_at(page);
	write_cr4(read_cr4() & ~CR4_PGE);
	report(first == 2 && kept == 1, "code in a global page runs, and again after a CR3 reload");
	report(before == 1 && second == 2,
	       "with PGE cleared, a CR3 reload drops the global page's old frame");
	report(third == 2 && fourth == 1,
	       "with PGE set again the page runs its frame's code, then the one INVLPG gives");
	report_prefix_pop();
}

/* Loads of data segment registers under paging, which translate mode performs without
 * an exit once the monitor has checked the selector: each load must still see the
 * descriptor as the GDT holds it at that moment, however often it was loaded before. */
#define SEG_ENTRY 10
#define SEG_SEL (SEG_ENTRY * 8)
#define SEG_NEIGHBOUR 11
/* QEMU TCG checks neither data segment limits nor the use of a null data selector. */
#define QUIRK_NO_LIMITS "quirk-no-segment-limit-checks"
#define QUIRK_NULL_USABLE "quirk-null-segment-usable"

static u32 seg_cell = 0x5e65e600u;

/* Loads FS with SEG_SEL and reads FS:offset. FS keeps the selector: every call loads the
 * selector FS already holds, the load translate mode makes without an exit. */
static u32 fs_read(u32 offset)
{
	u32 v;
	asm volatile("movw %w1, %%fs\n\t"
		     "movl %%fs:(%2), %0"
		     : "=&r"(v)
		     : "r"(SEG_SEL), "r"(offset)
		     : "memory");
	return v;
}

static void test_segment_loads(void)
{
	report_prefix_push("segment loads");
	gdt_load(SEG_NEIGHBOUR + 1);
	u32 ok = 0;
	for (int i = 0; i < 1000; i++) {
		u32 v;
		asm volatile("movw %w1, %%ds\n\tmovl (%2), %0" : "=r"(v) : "r"(KERNEL_DS), "r"(&seg_cell) : "memory");
		ok += v == seg_cell && READ_SREG(ds) == KERNEL_DS;
	}
	report(ok == 1000, "a thousand reloads of DS keep the kernel's data segment");

	gdt[SEG_ENTRY] = make_segment(0, 0xfffff, ACC_DATA0, FLAGS_4K_32);
	ok = 0;
	for (int i = 0; i < 100; i++)
		ok += fs_read((u32)&seg_cell) == seg_cell;
	report(ok == 100, "a hundred loads of a second selector into FS read through it");

	gdt[SEG_ENTRY] = make_segment(0x1000, 0xffffe, ACC_DATA0, FLAGS_4K_32);
	report(fs_read((u32)&seg_cell - 0x1000) == seg_cell,
	       "a load after its descriptor's base changed uses the new base");

	gdt[SEG_NEIGHBOUR] = make_segment(0x2000, 0xfffff, ACC_DATA0, FLAGS_4K_32);
	report(fs_read((u32)&seg_cell - 0x1000) == seg_cell,
	       "a write to the neighbouring descriptor leaves it as it was");

	/* FS back to the kernel's: a fault's handler saves and restores it. */
	asm volatile("movw %w0, %%fs" ::"r"(KERNEL_DS));
	gdt[SEG_ENTRY] = make_segment(0, 0xfff, ACC_DATA0, 0x4);
	if (cmdline_has(QUIRK_NO_LIMITS)) {
		report_skip("a load after its limit shrank to 4 KiB faults past it: skipped by " QUIRK_NO_LIMITS);
	} else {
		asm volatile("movw %w0, %%fs" ::"r"(SEG_SEL));
		catch_begin(GP_VECTOR);
		asm volatile(FAULT_ASM("movl %%fs:0x1000, %%eax") ::: "eax", "memory");
		bool limit = catch_end(GP_VECTOR, 0);
		asm volatile("movw %w0, %%fs" ::"r"(KERNEL_DS));
		report(limit, "a load after its limit shrank to 4 KiB faults past it");
	}

	gdt[SEG_ENTRY].hi &= ~(1u << 15); /* P */
	catch_begin(NP_VECTOR);
	asm volatile(FAULT_ASM("movw %w0, %%fs") ::"r"(SEG_SEL) : "memory");
	report(catch_end(NP_VECTOR, SEG_SEL) && READ_SREG(fs) == KERNEL_DS,
	       "a load after it was marked not present raises #NP(selector)");
	gdt[SEG_ENTRY] = make_segment(0, 0xfffff, ACC_DATA0, FLAGS_4K_32);

	u16 es_after, ds_after;
	asm volatile("pushl %2\n\tpopl %%es\n\tmovw %%es, %0\n\t"
		     "pushl %3\n\tpopl %%ds\n\tmovw %%ds, %1\n\t"
		     "movw %w3, %%es"
		     : "=r"(es_after), "=r"(ds_after)
		     : "r"(SEG_SEL), "r"(KERNEL_DS)
		     : "memory");
	report(es_after == SEG_SEL && ds_after == KERNEL_DS, "POP to ES and DS");

	u16 fs_null;
	asm volatile("movw %w1, %%fs\n\tmovw %%fs, %0" : "=r"(fs_null) : "r"(0));
	report(fs_null == 0, "FS loaded with the null selector reads 0");
	if (cmdline_has(QUIRK_NULL_USABLE)) {
		report_skip("an access through the null FS raises #GP(0): skipped by " QUIRK_NULL_USABLE);
	} else {
		catch_begin(GP_VECTOR);
		asm volatile(FAULT_ASM("movl %%fs:0, %%eax") ::: "eax", "memory");
		report(catch_end(GP_VECTOR, 0), "an access through the null FS raises #GP(0)");
	}
	asm volatile("movw %w0, %%fs" ::"r"(KERNEL_DS));
	gdt_load(GDT_BASE_ENTRIES);
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	setup_paging();
	test_mappings();
	test_live_ptes();
	test_faults();
	test_table_updates();
	test_self_modifying();
	test_straddle();
	test_straddle_second_first();
	test_pic_thunks();
	test_lazy_fpu();
	test_read_own_code();
	test_code_across_spaces();
	test_data_across_spaces();
	test_repeated_writers();
	test_segment_loads();
	test_global_toggle();
	return report_summary();
}
