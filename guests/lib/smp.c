/* Application processors for the kernels that use several (smp, the IPI benchmark): how
 * many the MADT lists, and their start-up with INIT, SIPI, SIPI into a real-mode
 * trampoline that enters protected mode, loads the kernel's GDT and IDT, enables the
 * processor's local APIC and calls the kernel's entry on a stack of its own. */
#include "guest.h"

#define TRAMPOLINE 0x7000u /* start-up vector 0x07 */

u8 ap_stacks[SMP_MAX_CPUS][4096] __attribute__((aligned(16)));
volatile u32 ap_next_stack;
static volatile u32 ap_count;
static struct pseudo_descriptor ap_idtr;
static void (*ap_entry)(u32 id);
extern char ap_tramp_start[], ap_tramp_end[], ap_tramp_gdt[];
void ap_start(void);

/* Real mode at 0700:0000, copied to TRAMPOLINE from the read-only data (in patch mode a
 * read of a scanned code page can see trap bytes, which a copy would carry along). The
 * GDT's pseudo-descriptor is stored at ap_tramp_gdt by the BSP. */
asm(".section .rodata\n"
    ".globl ap_tramp_start, ap_tramp_end, ap_tramp_gdt\n"
    ".p2align 4\n"
    "ap_tramp_start:\n"
    ".code16\n\t"
    "cli\n\t"
    "movw %cs, %ax\n\t"
    "movw %ax, %ds\n\t"
    "lgdtl (ap_tramp_gdt - ap_tramp_start)\n\t"
    "movl %cr0, %eax\n\t"
    "orl $1, %eax\n\t"
    "movl %eax, %cr0\n\t"
    "ljmpl $0x08, $ap_pm32\n"
    ".p2align 2\n"
    "ap_tramp_gdt:\n\t"
    ".word 0\n\t"
    ".long 0\n"
    "ap_tramp_end:\n"
    ".code32\n"
    ".text\n"
    "ap_pm32:\n\t"
    ASM_LOAD_KERNEL_DATA_SEGMENTS
    "movl $1, %eax\n\t"
    "lock xaddl %eax, ap_next_stack\n\t"
    "incl %eax\n\t"
    "shll $12, %eax\n\t"
    "leal ap_stacks(%eax), %esp\n\t"
    "call ap_start\n"
    "1:\n\t"
    "cli\n\t"
    "hlt\n\t"
    "jmp 1b\n");

u32 smp_apic_id(void) { return lapic_read(LAPIC_ID) >> 24; }

void smp_send_ipi(u32 dest, u32 low)
{
	lapic_write(LAPIC_ICR_HIGH, dest << 24);
	lapic_write(LAPIC_ICR_LOW, low);
}

u32 madt_processors(void)
{
	for (u32 a = 0xe0000; a < 0x100000; a += 16) {
		if (memcmp((const void *)a, "RSD PTR ", 8))
			continue;
		const u32 *rsdt = (const u32 *)*(const u32 *)(a + 16);
		u32 entries = (rsdt[1] - 36) / 4;
		for (u32 i = 0; i < entries; i++) {
			const u8 *t = (const u8 *)rsdt[9 + i];
			if (memcmp(t, "APIC", 4))
				continue;
			u32 len = *(const u32 *)(t + 4), n = 0;
			for (const u8 *e = t + 44; e + 2 <= t + len && e[1] >= 2; e += e[1])
				if (e[0] == 0)
					n += *(const u32 *)(e + 4) & 1;
			return n;
		}
	}
	return 0;
}

void ap_start(void)
{
	asm volatile("lidt %0" ::"m"(ap_idtr));
	u32 id = smp_apic_id();
	lapic_write(LAPIC_SVR, APIC_SVR_ENABLE | 0xff);
	lapic_write(LAPIC_DFR, 0xffffffffu);
	lapic_write(LAPIC_LDR, (1u << id) << 24);
	lapic_write(LAPIC_TPR, 0);
	__atomic_fetch_add(&ap_count, 1, __ATOMIC_SEQ_CST);
	ap_entry(id);
}

static void delay(void)
{
	for (volatile int i = 0; i < 100000; i++)
		;
}

u32 smp_boot_aps(u32 ncpus, void (*entry)(u32 id))
{
	ap_entry = entry;
	lapic_write(LAPIC_SVR, APIC_SVR_ENABLE | 0xff);
	lapic_write(LAPIC_DFR, 0xffffffffu);
	lapic_write(LAPIC_LDR, 1u << 24);
	u32 len = (u32)(ap_tramp_end - ap_tramp_start);
	memcpy((void *)TRAMPOLINE, ap_tramp_start, len);
	asm volatile("sidt %0" : "=m"(ap_idtr));
	asm volatile("sgdt %0"
		     : "=m"(*(struct pseudo_descriptor *)(TRAMPOLINE +
							 (ap_tramp_gdt - ap_tramp_start))));
	for (u32 id = 1; id < ncpus; id++) {
		smp_send_ipi(id, 0x4500); /* INIT */
		delay();
		smp_send_ipi(id, 0x4600 | (TRAMPOLINE >> 12)); /* start-up, twice */
		delay();
		smp_send_ipi(id, 0x4600 | (TRAMPOLINE >> 12));
	}
	SMP_WAIT_FOR(ap_count == ncpus - 1);
	return ap_count;
}
