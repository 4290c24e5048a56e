/* The guest's own GDT, TSS and IDT. */
#include "guest.h"

struct descriptor gdt[GDT_MAX_ENTRIES] __attribute__((aligned(8)));
struct descriptor idt[256] __attribute__((aligned(8)));
struct tss32 tss __attribute__((aligned(16)));
extern char interrupt_stack_top[];
extern const u32 isr_stub_table[];
extern const u8 isr_vectors[];
extern const u32 isr_stub_count;

struct descriptor make_segment(u32 base, u32 limit, u8 access, u8 flags)
{
	struct descriptor d;
	d.lo = (limit & 0xffff) | (base << 16);
	d.hi = ((base >> 16) & 0xff) | ((u32)access << 8) | (limit & 0xf0000) |
	       ((u32)(flags & 0xf) << 20) | (base & 0xff000000);
	return d;
}

void gdt_load(unsigned entries)
{
	struct pseudo_descriptor p = { (u16)(entries * 8 - 1), (u32)gdt };
	asm volatile("lgdt %0" ::"m"(p) : "memory");
}

static void reload_segments(void)
{
	asm volatile("ljmp $0x08, $1f\n1:\n\t"
		     "movw $0x10, %%ax\n\t"
		     "movw %%ax, %%ds\n\t"
		     "movw %%ax, %%es\n\t"
		     "movw %%ax, %%fs\n\t"
		     "movw %%ax, %%gs\n\t"
		     "movw %%ax, %%ss" ::
			     : "eax", "memory");
}

void idt_set_gate(int vector, u32 offset, u16 selector, u8 type, u8 dpl)
{
	idt[vector].lo = (offset & 0xffff) | ((u32)selector << 16);
	idt[vector].hi = (offset & 0xffff0000) | 0x8000 | ((u32)dpl << 13) | ((u32)type << 8);
}

u32 idt_stub(int vector)
{
	for (u32 i = 0; i < isr_stub_count; i++)
		if (isr_vectors[i] == vector)
			return isr_stub_table[i];
	return 0;
}

void idt_load_default(void)
{
	struct pseudo_descriptor p = { sizeof(idt) - 1, (u32)idt };
	asm volatile("lidt %0" ::"m"(p) : "memory");
}

void desc_init(void)
{
	memset(gdt, 0, sizeof(gdt));
	gdt[1] = make_segment(0, 0xfffff, ACC_CODE0, FLAGS_4K_32);
	gdt[2] = make_segment(0, 0xfffff, ACC_DATA0, FLAGS_4K_32);
	gdt[3] = make_segment(0, 0xfffff, ACC_CODE3, FLAGS_4K_32);
	gdt[4] = make_segment(0, 0xfffff, ACC_DATA3, FLAGS_4K_32);
	memset(&tss, 0, sizeof(tss));
	tss.esp0 = (u32)interrupt_stack_top;
	tss.ss0 = KERNEL_DS;
	/* I/O bitmap offset past the limit: CPL 3 port access faults unless IOPL allows it */
	tss.iomap_base = sizeof(tss);
	gdt[5] = make_segment((u32)&tss, sizeof(tss) - 1, ACC_TSS32, 0);
	gdt_load(GDT_BASE_ENTRIES);
	reload_segments();
	asm volatile("ltr %w0" ::"r"(TSS_SEL));

	memset(idt, 0, sizeof(idt));
	for (u32 i = 0; i < isr_stub_count; i++) {
		int v = isr_vectors[i];
		/* The APIC vectors get gates only in kernels that ask (apic_vectors_install()):
		 * the others test what an empty gate there does. */
		if (v >= APIC_VECTORS_FIRST && v != SYSCALL_VECTOR)
			continue;
		/* #BP, #OF and the syscall gate are reachable with INT n from CPL 3 */
		u8 dpl = (v == BP_VECTOR || v == 4 || v == SYSCALL_VECTOR) ? 3 : 0;
		idt_set_gate(v, isr_stub_table[i], KERNEL_CS, 0xe, dpl);
	}
	idt_load_default();
}
