/* Built-in default guest: a banner, a few sensitive instructions, PIT ticks, a ring 3 round trip */
#include "guest.h"

static u32 user_cs_seen;

static void user_main(void)
{
	user_cs_seen = READ_SREG(cs);
	user_return(0x600d);
}

#define MULTIBOOT_LOADER_MAGIC 0x2badb002
#define MBI_FLAG_MEM (1u << 0)

int main(u32 magic, const void *mbi)
{
	const u32 *info = mbi;
	printf("demo guest: a 32-bit kernel booted by Multiboot (magic %x)\n", magic);
	printf("command line: \"%s\"\n", cmdline());

	report_prefix_push("multiboot");
	report(magic == MULTIBOOT_LOADER_MAGIC, "loader magic 0x2badb002");
	bool mem = magic == MULTIBOOT_LOADER_MAGIC && info && (info[0] & MBI_FLAG_MEM);
	if (mem)
		printf("  memory: %u KiB below 1 MiB, %u KiB above\n", info[1], info[2]);
	report(mem && info[2] > 0, "memory information (requested by the header flags)");
	report_prefix_pop();

	report_prefix_push("sensitive");
	struct pseudo_descriptor g;
	asm volatile("sgdt %0" : "=m"(g));
	u32 cr0 = read_cr0();
	u16 msw;
	asm volatile("smsw %0" : "=r"(msw));
	struct cpuid_result v = cpuid(0);
	char vendor[13];
	memcpy(vendor, &v.b, 4);
	memcpy(vendor + 4, &v.d, 4);
	memcpy(vendor + 8, &v.c, 4);
	vendor[12] = '\0';
	cli();
	u32 flags_cli = read_eflags();
	printf("  mov %%cs -> %x, sgdt -> base %x limit %x, mov %%cr0 -> %x, smsw -> %x\n",
	       READ_SREG(cs), g.base, g.limit, cr0, msw);
	printf("  cpuid 0 -> vendor \"%s\", max leaf %u; pushf after cli -> %x\n", vendor, v.a,
	       flags_cli);
	report(READ_SREG(cs) == KERNEL_CS, "CS is the kernel selector 0x08");
	report(g.base == (u32)gdt && g.limit == GDT_BASE_ENTRIES * 8 - 1, "SGDT returns the loaded GDTR");
	report((msw & CR0_PE) && msw == (u16)cr0, "SMSW shows PE and the low CR0 bits");
	report(!(flags_cli & EFLAGS_IF), "PUSHF shows IF clear after CLI");
	report_prefix_pop();

	report_prefix_push("timer");
	u32 start = pit_ticks;
	pit_start(1000);
	watchdog_arm(2000, "waiting for PIT ticks");
	sti();
	while (pit_ticks - start < 3)
		asm volatile("hlt");
	cli();
	watchdog_disarm();
	pit_stop();
	printf("  %u PIT ticks arrived through the PIC as vector 0x20\n", pit_ticks - start);
	report(pit_ticks - start >= 3, "HLT woken by PIT ticks");
	report_prefix_pop();

	report_prefix_push("ring3");
	u32 r = run_user(user_main, EFLAGS_FIXED1);
	printf("  IRET to CPL 3 ran with CS %x; INT 0x80 came back with %x\n", user_cs_seen, r);
	report(user_cs_seen == USER_CS, "user code ran at CPL 3");
	report(r == 0x600d, "INT 0x80 returned to the kernel");
	report_prefix_pop();

	return report_summary();
}
