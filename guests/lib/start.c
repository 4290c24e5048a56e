/* C entry from lib/boot.S: bring up the console and tables, run the test, exit with its
 * result so the host sees it in the exit status. */
#include "guest.h"

#define MULTIBOOT_LOADER_MAGIC 0x2badb002
#define MBI_FLAG_CMDLINE (1u << 2)

void desc_init(void);
void interrupts_init(void);
void guest_start(u32 magic, const u32 *mbi) __attribute__((noreturn));

static const char *command_line = "";

/* The words after the first: a Multiboot loader (QEMU, GRUB, the monitor) starts the
 * command line with the kernel's path, as kvm-unit-tests' argv[0]. */
const char *cmdline(void) { return command_line; }

/* True if `word` is one of the space-separated words of the kernel command line. */
bool cmdline_has(const char *word)
{
	unsigned long n = strlen(word);
	for (const char *p = command_line; *p;) {
		while (*p == ' ')
			p++;
		const char *end = p;
		while (*end && *end != ' ')
			end++;
		if ((unsigned long)(end - p) == n && !strncmp(p, word, n))
			return true;
		p = end;
	}
	return false;
}

void guest_start(u32 magic, const u32 *mbi)
{
	serial_init();
	desc_init();
	interrupts_init();
	if (magic == MULTIBOOT_LOADER_MAGIC && mbi && (mbi[0] & MBI_FLAG_CMDLINE)) {
		const char *p = (const char *)mbi[4];
		while (*p && *p != ' ')
			p++;
		while (*p == ' ')
			p++;
		command_line = p;
	}
	exit(main(magic, mbi));
}
