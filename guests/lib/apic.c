/* Local APIC and IOAPIC access for the test kernels that use them (apic, ioapic, echo). */
#include "guest.h"

#define IOAPIC_IOREGSEL 0x00
#define IOAPIC_IOWIN 0x10

void apic_vectors_install(void)
{
	for (int v = APIC_VECTORS_FIRST; v < 256; v++)
		if (v != SYSCALL_VECTOR && idt_stub(v))
			idt_set_gate(v, idt_stub(v), KERNEL_CS, 0xe, 0);
}

u32 lapic_read(u32 reg) { return *(volatile u32 *)(LAPIC_BASE + reg); }

void lapic_write(u32 reg, u32 v) { *(volatile u32 *)(LAPIC_BASE + reg) = v; }

void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

bool lapic_vector_set(u32 bank, u8 vector)
{
	return (lapic_read(bank + 0x10 * (vector >> 5)) >> (vector & 31)) & 1;
}

void lapic_self_ipi(u8 vector) { lapic_write(LAPIC_ICR_LOW, ICR_SELF | vector); }

u32 ioapic_read(u8 index)
{
	*(volatile u32 *)(IOAPIC_BASE + IOAPIC_IOREGSEL) = index;
	return *(volatile u32 *)(IOAPIC_BASE + IOAPIC_IOWIN);
}

void ioapic_write(u8 index, u32 v)
{
	*(volatile u32 *)(IOAPIC_BASE + IOAPIC_IOREGSEL) = index;
	*(volatile u32 *)(IOAPIC_BASE + IOAPIC_IOWIN) = v;
}

u64 ioapic_entry(int pin)
{
	u32 lo = ioapic_read(IOAPIC_REDTBL + 2 * pin);
	u32 hi = ioapic_read(IOAPIC_REDTBL + 2 * pin + 1);
	return ((u64)hi << 32) | lo;
}

void ioapic_set_entry(int pin, u64 entry)
{
	/* high half first, so an unmasking low half comes last */
	ioapic_write(IOAPIC_REDTBL + 2 * pin + 1, (u32)(entry >> 32));
	ioapic_write(IOAPIC_REDTBL + 2 * pin, (u32)entry);
}

void ioapic_route(int pin, u8 vector, u32 flags)
{
	ioapic_set_entry(pin, (u64)(vector | flags)); /* physical destination APIC 0 */
}
