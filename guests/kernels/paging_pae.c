/* PAE paging: 2 MiB and 4 KiB pages, a higher-half alias, live PTE changes, A/D bits, #PF error codes, NX fetch faults with EFER.NXE */
#include "paging.h"

typedef u64 pae_entry;

#define HIGH_BASE 0xc0000000u /* PDPTE 3: alias of the first 2 MiB through 4 KiB pages */
#define TEST_BASE 0x00800000u /* PDE 4 of PDPTE 0: 4 KiB pages the tests remap */
#define TEST_PAGE(n) ((volatile u32 *)(TEST_BASE + (n) * PAGE_SIZE))
#define PDPTE_P 1ull

static pae_entry pdpt[4] __attribute__((aligned(32)));
static pae_entry low_dir[512] __attribute__((aligned(4096)));
static pae_entry high_dir[512] __attribute__((aligned(4096)));
static pae_entry high_table[512] __attribute__((aligned(4096)));
static pae_entry test_table[512] __attribute__((aligned(4096)));
static u32 frames[3][1024] __attribute__((aligned(4096)));
static u8 code_frame[4096] __attribute__((aligned(4096)));

static bool have_nx;

static void setup_paging(void)
{
	/* 0..8 MiB identity through 2 MiB pages. */
	for (u32 i = 0; i < 4; i++)
		low_dir[i] = (pae_entry)(i * LARGE_PAGE_2M) | PTE_P | PTE_RW | PTE_PS;
	for (u32 i = 0; i < 512; i++)
		high_table[i] = (pae_entry)(i * PAGE_SIZE) | PTE_P | PTE_RW;
	high_dir[0] = (u32)high_table | PTE_P | PTE_RW;
	for (u32 i = 0; i < 3; i++)
		test_table[i] = (u32)frames[i] | PTE_P | PTE_RW;
	low_dir[TEST_BASE / LARGE_PAGE_2M] = (u32)test_table | PTE_P | PTE_RW;
	pdpt[0] = (u32)low_dir | PDPTE_P;
	pdpt[3] = (u32)high_dir | PDPTE_P;

	have_nx = (cpuid(0x80000000).a >= 0x80000001) && (cpuid(0x80000001).d & CPUID_EXT_NX);
	if (have_nx)
		wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_NXE);
	write_cr4(read_cr4() | CR4_PAE);
	write_cr3((u32)pdpt);
	write_cr0(read_cr0() | CR0_PG | CR0_WP);
}

static int __attribute__((noinline)) mul2(int a) { return a * 2; }

static void test_mappings(void)
{
	report_prefix_push("mappings");
	report((read_cr0() & CR0_PG) && (read_cr4() & CR4_PAE), "PAE paging on");
	static volatile u32 cell;
	cell = 0xfeedbeef;
	volatile u32 *high = (volatile u32 *)((u32)&cell + HIGH_BASE);
	report(*high == 0xfeedbeef, "the higher-half alias reads what the identity map wrote");
	int (*alias)(int) = (int (*)(int))((u32)mul2 + HIGH_BASE);
	report(mul2(4) == 8 && alias(21) == 42, "code runs through both mappings");
	frames[0][0] = 0xaaaa0000;
	frames[1][0] = 0xbbbb0000;
	report(*TEST_PAGE(0) == 0xaaaa0000 && *TEST_PAGE(1) == 0xbbbb0000, "4 KiB pages map their frames");
	report_prefix_pop();
}

static void test_live_ptes(void)
{
	report_prefix_push("live PTEs");
	volatile u32 *p = TEST_PAGE(0);
	(void)*p;
	test_table[0] = (u32)frames[1] | PTE_P | PTE_RW;
	invlpg(p);
	report(*p == 0xbbbb0000, "a 64-bit PTE pointed elsewhere is seen after INVLPG");
	test_table[0] = (u32)frames[0] | PTE_P | PTE_RW;
	flush_tlb();
	report(*p == 0xaaaa0000, "and after a CR3 reload");

	test_table[2] = (u32)frames[2] | PTE_P | PTE_RW;
	invlpg(TEST_PAGE(2));
	(void)*TEST_PAGE(2);
	/* The CPU sets A and D behind the compiler's back: read the entry as volatile. */
	pae_entry e = ((volatile pae_entry *)test_table)[2];
	report((e & PTE_A) && !(e & PTE_D), "a read sets A, not D");
	*TEST_PAGE(2) = 1;
	e = ((volatile pae_entry *)test_table)[2];
	report((e & PTE_A) && (e & PTE_D), "a write sets D");
	report_prefix_pop();
}

/* A 64-bit PTE replaced atomically with CMPXCHG8B, as PAE kernels do. */
static void test_cmpxchg8b(void)
{
	report_prefix_push("CMPXCHG8B");
	volatile u32 *p = TEST_PAGE(0);
	(void)*p;
	pae_entry old = test_table[0];
	pae_entry new = (u32)frames[1] | PTE_P | PTE_RW;
	u32 lo = (u32)old, hi = (u32)(old >> 32);
	u8 ok = 0;
	asm volatile("lock cmpxchg8b (%5); sete %0"
		     : "=q"(ok), "+a"(lo), "+d"(hi)
		     : "b"((u32) new), "c"((u32)(new >> 32)), "S"(&test_table[0])
		     : "memory", "cc");
	invlpg(p);
	report(ok && *p == 0xbbbb0000, "the new entry is installed and seen after INVLPG");
	test_table[0] = (u32)frames[0] | PTE_P | PTE_RW;
	invlpg(p);
	report(*p == 0xaaaa0000, "and put back");
	report_prefix_pop();
}

static void test_faults(void)
{
	report_prefix_push("#PF");
	volatile u32 *p = TEST_PAGE(1);
	u32 v = 0;
	test_table[1] = (u32)frames[1] | PTE_RW;
	invlpg(p);
	pf_catch_begin();
	asm volatile(FAULT_ASM("movl (%1), %0") : "=r"(v) : "r"(p) : "memory");
	report(pf_catch_end(0, (u32)p), "read of a not-present page: error 0, CR2");

	test_table[1] = (u32)frames[1] | PTE_P;
	invlpg(p);
	pf_catch_begin();
	asm volatile(FAULT_ASM("movl $3, (%0)") ::"r"(p) : "memory");
	report(pf_catch_end(PF_P | PF_W, (u32)p), "write to a read-only page: error P|W");

	/* Reserved bit 62 in a PTE (with NXE set, bit 63 is XD, not reserved). */
	test_table[1] = (u32)frames[1] | PTE_P | PTE_RW | (1ull << 62);
	invlpg(p);
	pf_catch_begin();
	asm volatile(FAULT_ASM("movl (%1), %0") : "=r"(v) : "r"(p) : "memory");
	/* The SDM sets P with RSVD (the entry is present); QEMU's TCG leaves P clear, so
	 * only RSVD and the access bits are compared. */
	handle_exception(PF_VECTOR, NULL);
	report(last_pf.count == 1 && (last_pf.error & ~PF_P) == (1u << 3) && last_pf.cr2 == (u32)p,
	       "a reserved bit set: error RSVD, CR2");
	test_table[1] = (u32)frames[1] | PTE_P | PTE_RW;
	invlpg(p);
	(void)v;
	report_prefix_pop();
}

typedef int (*code_fn)(void);

static void test_nx(void)
{
	report_prefix_push("NX");
	if (!have_nx) {
		report_skip("the CPU does not report NX");
		report_prefix_pop();
		return;
	}
	report((rdmsr(MSR_EFER) & EFER_NXE) != 0, "EFER.NXE is set");
	/* mov $42, %eax; ret, reached through a 4 KiB page of the test region. */
	static const u8 code[] = { 0xb8, 42, 0, 0, 0, 0xc3 };
	memcpy(code_frame, code, sizeof(code));
	volatile u8 *lin = (volatile u8 *)(TEST_BASE + 8 * PAGE_SIZE);
	test_table[8] = (u32)code_frame | PTE_P | PTE_RW;
	invlpg(lin);
	code_fn f = (code_fn)lin;
	report(f() == 42, "code runs from a page without XD");

	test_table[8] = (u32)code_frame | PTE_P | PTE_RW | PAE_XD;
	invlpg(lin);
	u32 ret = 0;
	pf_catch_begin();
	/* A call by hand: the fetch faults at the target and the handler resumes at the
	 * return address, where ESP is put back whichever way the code got there. */
	asm volatile("movl %%esp, %%ebx\n\t"
		     "movl $2f, fault_resume_eip\n\t"
		     "pushl $2f\n\t"
		     "jmp *%1\n"
		     "2:\n\t"
		     "movl %%ebx, %%esp"
		     : "=a"(ret)
		     : "r"(f)
		     : "ebx", "ecx", "edx", "memory");
	bool caught = last_pf.count == 1 && last_pf.eip == (u32)lin;
	report(pf_catch_end(PF_P | PF_ID, (u32)lin) && caught,
	       "fetch from an XD page: error P|I/D, CR2 and EIP are the target");
	report(lin[0] == 0xb8 && ret != 42, "an XD page still reads; its code did not run");
	report_prefix_pop();
}

static pae_entry bad_pdpt[4] __attribute__((aligned(32)));

/* The SDM checks PDPTEs when CR3 is loaded; QEMU's TCG only when it walks, so this runs
 * when the command line has `pdpte-load-check`. */
static void test_pdpte_load(void)
{
	report_prefix_push("PDPTE");
	if (!cmdline_has("pdpte-load-check")) {
		report_skip("reserved PDPTE bits at CR3 load (pdpte-load-check not given)");
		report_prefix_pop();
		return;
	}
	/* Bit 1 (R/W) is reserved in a PAE PDPTE: loading CR3 with it faults. */
	bad_pdpt[0] = (u32)low_dir | PDPTE_P | PTE_RW;
	bad_pdpt[3] = (u32)high_dir | PDPTE_P;
	catch_begin(GP_VECTOR);
	asm volatile(FAULT_ASM("movl %0, %%cr3") ::"r"((u32)bad_pdpt) : "memory");
	report(catch_end(GP_VECTOR, 0) && read_cr3() == (u32)pdpt,
	       "MOV CR3 with a reserved PDPTE bit: #GP(0), CR3 unchanged");
	report(*TEST_PAGE(0) == 0xaaaa0000, "the old tables still translate");
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	setup_paging();
	test_mappings();
	test_live_ptes();
	test_cmpxchg8b();
	test_faults();
	test_pdpte_load();
	test_nx();
	return report_summary();
}
