/* Paging helpers for the paging test kernels: entry bits, control-register bits, TLB
 * maintenance, and a page-fault catcher that records CR2. */
#ifndef GUEST_PAGING_H
#define GUEST_PAGING_H

#include "guest.h"

#define PAGE_SIZE 4096u
#define LARGE_PAGE_4M (4u << 20)
#define LARGE_PAGE_2M (2u << 20)

/* Page-directory and page-table entry bits (SDM Vol. 3A §4.3, §4.4). */
#define PTE_P (1u << 0)
#define PTE_RW (1u << 1)
#define PTE_US (1u << 2)
#define PTE_A (1u << 5)
#define PTE_D (1u << 6)
#define PTE_PS (1u << 7)
#define PTE_G (1u << 8)
#define PAE_XD (1ull << 63)

/* Page-fault error code bits. */
#define PF_P (1u << 0)
#define PF_W (1u << 1)
#define PF_U (1u << 2)
#define PF_ID (1u << 4)

#define CR0_WP (1u << 16)
#define CR0_PG (1u << 31)
#define CR4_PAE (1u << 5)
#define CR4_PGE (1u << 7)

#define MSR_EFER 0xc0000080u
#define EFER_NXE (1u << 11)
#define CPUID_EXT_NX (1u << 20)

static inline void invlpg(const volatile void *p)
{
	asm volatile("invlpg (%0)" ::"r"(p) : "memory");
}

static inline void flush_tlb(void) { write_cr3(read_cr3()); }

static inline u32 pde_index(u32 lin) { return lin >> 22; }
static inline u32 pte_index(u32 lin) { return (lin >> 12) & 0x3ff; }

/* What the last caught #PF reported. */
struct pf_record {
	u32 count, error, cr2, eip;
};
extern volatile struct pf_record last_pf;

/* Catch #PF: the handler records error code and CR2, then resumes at fault_resume_eip
 * (set by FAULT_ASM) — or, for a fault with no resume point, stops the test. */
void pf_catch_begin(void);
/* True if exactly one #PF with this error code and CR2 was caught since pf_catch_begin. */
bool pf_catch_end(u32 error, u32 cr2);

#endif
