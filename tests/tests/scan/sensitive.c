/*
 * A freestanding 32-bit program whose functions each hold a known set of sensitive
 * instructions, so that `vmm scan` can be checked class by class and site by site.
 * It is only ever scanned, never run. Built by tests/scan_cli.rs with
 *   gcc -m32 -ffreestanding -nostdlib -fno-pic -O2 -c; ld -m elf_i386 -e start
 * The instructions per function are listed in EXPECTED in tests/scan_cli.rs.
 */

typedef unsigned short u16;
typedef unsigned int u32;

struct table_register {
	u16 limit;
	u32 base;
} __attribute__((packed));

struct far_pointer {
	u32 offset;
	u16 selector;
} __attribute__((packed));

struct table_register gdtr, idtr;
struct far_pointer far_gs = { 0, 0x18 };
volatile u32 sink;

__attribute__((noinline)) u32 read_flags(void)
{
	u32 flags;
	asm volatile("pushfl; popl %0" : "=r"(flags));
	return flags;
}

__attribute__((noinline)) void write_flags(u32 flags)
{
	asm volatile("pushl %0; popfl" : : "g"(flags) : "memory", "cc");
}

__attribute__((noinline)) void save_tables(void)
{
	asm volatile("sgdt %0; sidt %1" : "=m"(gdtr), "=m"(idtr));
}

__attribute__((noinline)) u32 machine_status(void)
{
	u32 msw;
	asm volatile("smsw %0" : "=r"(msw));
	return msw;
}

__attribute__((noinline)) u32 task_registers(void)
{
	u16 ldt, tr;
	asm volatile("sldt %0; str %1" : "=r"(ldt), "=r"(tr));
	return (u32)ldt << 16 | tr;
}

__attribute__((noinline)) u32 check_selector(u32 selector)
{
	u32 rights, limit;
	asm volatile("lar %2, %0; lsl %2, %1; verr %w2; verw %w2"
		     : "=&r"(rights), "=&r"(limit)
		     : "r"(selector)
		     : "cc");
	return rights ^ limit;
}

__attribute__((noinline)) u16 reload_data_segment(void)
{
	u16 ds;
	asm volatile("mov %%ds, %0; mov %0, %%ds" : "=r"(ds) : : "memory");
	return ds;
}

__attribute__((noinline)) void segment_stack(void)
{
	asm volatile("push %%es; pop %%es; push %%fs; pop %%fs" : : : "memory");
}

__attribute__((noinline)) u32 load_far_pointer(void)
{
	u32 offset;
	asm volatile("lgs %1, %0" : "=r"(offset) : "m"(far_gs));
	return offset;
}

__attribute__((naked)) void far_transfers(void)
{
	asm("ljmp $0x10, $1f\n"
	    "1: lcall $0x10, $2f\n"
	    "2: lret");
}

__attribute__((naked)) void interrupt_return(void)
{
	asm("iret");
}

__attribute__((noinline)) void port_io(void)
{
	asm volatile("cli; inb $0x60, %%al; outb %%al, $0x80; inl %%dx, %%eax; outl %%eax, %%dx; sti; hlt"
		     : : : "eax", "edx", "memory");
}

__attribute__((noinline)) void system_calls(void)
{
	asm volatile("int $0x80; sysenter" : : : "eax", "memory");
}

/* Hand-written entry code: a global label with neither type nor size. */
void asm_routine(void);
asm(".text\n"
    ".globl asm_routine\n"
    "asm_routine:\n"
    "\tpushfl\n"
    "\tcli\n"
    "\tpopfl\n"
    "\tret\n");

void start(void)
{
	sink = read_flags();
	write_flags(sink);
	save_tables();
	sink = machine_status();
	sink = task_registers();
	sink = check_selector(sink);
	sink = reload_data_segment();
	segment_stack();
	sink = load_far_pointer();
	port_io();
	system_calls();
	far_transfers();
	asm_routine();
	interrupt_return();
	for (;;)
		sink++;
}
