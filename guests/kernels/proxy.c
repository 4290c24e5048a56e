/* Kernel-proxy guest: console, disk and clock services a kernel policy can take over */
#include "guest.h"

/*
 * The OS-service functions below are what a kernel policy binds by symbol. Each has a
 * complete implementation of its own (console on the UART, an in-guest RAM disk, a
 * TSC clock), so the kernel runs the same with or without a monitor serving them; the
 * checks in main() hold for either. They are `noipa` so that callers see nothing of
 * their bodies (no inlining, no return values known in advance, no clobber sets
 * narrowed), exactly as for a function in another object file.
 */

#define SECTOR_SIZE 512
#define DISK_SECTORS 128
#define CONSOLE_MAX 4096
#define EIO 5
#define MULTIBOOT_LOADER_MAGIC 0x2badb002
#define MBI_FLAG_MEM (1u << 0)
#define BENCH_BYTES (1u << 20)
#define SOAK_TICK_MS 20

static u8 ramdisk[DISK_SECTORS * SECTOR_SIZE];
/* First byte above RAM, from the Multiboot memory map; what an access check needs. */
static u32 ram_top = 0x100000;

/* The caller's buffer [p, p + len) lies in RAM (a kernel's access_ok). */
static bool buffer_ok(const void *p, u32 len)
{
	u32 a = (u32)p;
	return a < ram_top && len <= ram_top - a;
}

/* Bytes in the code page of os_console_write that the guest rewrites, as a kernel
 * patching its own text does (alternatives, static keys): the monitor then reverts and
 * rescans that page, and a bound entry point must stay bound through that. */
extern u8 os_text_scratch[16];
asm(".pushsection .text.os_console,\"ax\"\n"
    ".globl os_text_scratch\n"
    "os_text_scratch: .fill 16, 1, 0x90\n"
    ".popsection");

__attribute__((noipa, section(".text.os_console"))) int os_console_write(const char *s, unsigned len)
{
	if (len > CONSOLE_MAX || !buffer_ok(s, len))
		return -1;
	for (unsigned i = 0; i < len; i++)
		putchar(s[i]);
	return (int)len;
}

static bool sectors_ok(unsigned sector, unsigned count)
{
	return sector < DISK_SECTORS && count <= DISK_SECTORS - sector;
}

__attribute__((noipa)) int os_disk_read(unsigned sector, void *buf, unsigned count)
{
	if (!sectors_ok(sector, count) || count > 128 || !buffer_ok(buf, count * SECTOR_SIZE))
		return -EIO;
	memcpy(buf, ramdisk + sector * SECTOR_SIZE, count * SECTOR_SIZE);
	return 0;
}

__attribute__((noipa)) int os_disk_write(unsigned sector, const void *buf, unsigned count)
{
	if (!sectors_ok(sector, count) || count > 128 || !buffer_ok(buf, count * SECTOR_SIZE))
		return -EIO;
	memcpy(ramdisk + sector * SECTOR_SIZE, buf, count * SECTOR_SIZE);
	return 0;
}

__attribute__((noipa)) u64 os_clock_monotonic(void)
{
	return rdtsc();
}

/* Numeric value of `name=N` on the command line, or `dflt`. */
static u32 cmdline_value(const char *name, u32 dflt)
{
	const char *c = cmdline();
	unsigned long n = strlen(name);
	for (; c && *c; c++) {
		if ((c == cmdline() || c[-1] == ' ') && !strncmp(c, name, n) && c[n] == '=') {
			u32 v = 0;
			for (c += n + 1; *c >= '0' && *c <= '9'; c++)
				v = v * 10 + (u32)(*c - '0');
			return v;
		}
	}
	return dflt;
}

static int format(char *buf, int size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n < size ? n : size - 1;
}

static u8 sector_buf[4 * SECTOR_SIZE];
static u8 check_buf[4 * SECTOR_SIZE];

static void fill(u8 *p, unsigned len, u32 seed)
{
	for (unsigned i = 0; i < len; i++)
		p[i] = (u8)(seed * 31 + i * 7 + (i >> 8));
}

static void console_checks(void)
{
	static const char msg[] = "proxy guest: hello through os_console_write\n";
	report_prefix_push("console");
	int n = os_console_write(msg, sizeof(msg) - 1);
	report(n == (int)sizeof(msg) - 1, "write returns the length (%d)", n);
	report(os_console_write(msg, 0) == 0, "empty write returns 0");
	/* Rewrite code next to the function: nops become int3s that never run. */
	bool same_page = ((u32)os_text_scratch >> 12) == ((u32)os_console_write >> 12);
	for (int i = 0; i < 16; i++)
		((volatile u8 *)os_text_scratch)[i] = 0xcc;
	static const char again[] = "proxy guest: the same call after its code page changed\n";
	n = os_console_write(again, sizeof(again) - 1);
	report(same_page && n == (int)sizeof(again) - 1,
	       "write after the guest rewrote code in its page returns the length (%d)", n);
	report_prefix_pop();
}

static void disk_checks(void)
{
	report_prefix_push("disk");
	static const char sig[] = "PROXY-GUEST-SECTOR-1";
	memset(sector_buf, 0, SECTOR_SIZE);
	memcpy(sector_buf, sig, sizeof(sig) - 1);
	report(os_disk_write(1, sector_buf, 1) == 0, "write sector 1");

	fill(sector_buf, sizeof(sector_buf), 0x5a);
	report(os_disk_write(4, sector_buf, 4) == 0, "write sectors 4-7");
	memset(check_buf, 0, sizeof(check_buf));
	report(os_disk_read(4, check_buf, 4) == 0, "read sectors 4-7");
	report(!memcmp(sector_buf, check_buf, sizeof(check_buf)), "sectors 4-7 read back equal");
	memset(check_buf, 0, SECTOR_SIZE);
	report(os_disk_read(1, check_buf, 1) == 0 && !memcmp(check_buf, sig, sizeof(sig) - 1),
	       "sector 1 reads back its signature");

	/* What was on the disk before this run: a file-backed disk shows its image. */
	memset(check_buf, 0, SECTOR_SIZE);
	if (os_disk_read(0, check_buf, 1) == 0) {
		char first[17];
		for (int i = 0; i < 16; i++)
			first[i] = check_buf[i] >= 0x20 && check_buf[i] < 0x7f ? (char)check_buf[i] : '.';
		first[16] = '\0';
		report_info("sector 0 begins \"%s\"", first);
	}
	report_prefix_pop();
}

static void clock_checks(void)
{
	report_prefix_push("clock");
	u64 t1 = os_clock_monotonic();
	for (volatile int i = 0; i < 100000; i++)
		;
	u64 t2 = os_clock_monotonic();
	u64 t3 = os_clock_monotonic();
	report(t2 > t1 && t3 >= t2, "monotonic across three reads");
	report_info("delta %u", (u32)(t2 - t1));
	report_prefix_pop();
}

/* Arguments no function should accept: each call must fail with the function's own
 * error value, whoever serves it. */
static void hostile_checks(void)
{
	report_prefix_push("hostile");
	const char *unmapped = (const char *)0xf0000000;
	report(os_console_write(unmapped, 16) == -1, "console buffer outside RAM");
	report(os_console_write("x", 0x7fffffff) == -1, "console length 2 GiB");
	report(os_console_write((const char *)0xffffff00, 0x200) == -1, "console buffer wraps 4 GiB");
	report(os_disk_read(0xfffffff0, sector_buf, 1) == -EIO, "disk sector number past the disk");
	report(os_disk_read(DISK_SECTORS * 1024, sector_buf, 1) == -EIO, "disk sector far past the disk");
	report(os_disk_read(0, sector_buf, 0x100000) == -EIO, "disk count of a million sectors");
	report(os_disk_read(0, (void *)0xf0000000, 1) == -EIO, "disk read into memory outside RAM");
	report(os_disk_write(0, (const void *)0xfffffe00, 2) == -EIO, "disk write from a buffer wrapping 4 GiB");
	/* The disk is intact after all that. */
	memset(check_buf, 0, SECTOR_SIZE);
	report(os_disk_read(1, check_buf, 1) == 0 && !memcmp(check_buf, "PROXY-GUEST-SECTOR-1", 20),
	       "disk intact after refused calls");
	report_prefix_pop();
}

static void wait_ms(u32 ms)
{
	u32 start = pit_ticks;
	while (pit_ticks - start < ms)
		asm volatile("sti; hlt; cli");
}

/* soak=N: N rounds 20 ms apart, each writing one sector and one console line, so a
 * test can change the policy or stop a service node while calls keep coming. Every
 * sector is then read back. */
static void soak(u32 rounds)
{
	char line[48];
	report_prefix_push("soak");
	if (rounds > DISK_SECTORS - 16)
		rounds = DISK_SECTORS - 16;
	pit_start(1000);
	watchdog_arm(60000, "soak rounds");
	u32 failed = 0;
	for (u32 r = 0; r < rounds; r++) {
		fill(sector_buf, SECTOR_SIZE, r);
		memcpy(sector_buf, "SOAK", 4);
		sector_buf[4] = (u8)r;
		if (os_disk_write(16 + r, sector_buf, 1) != 0)
			failed++;
		int n = format(line, sizeof(line), "console: soak round %u\n", r);
		if (os_console_write(line, (unsigned)n) != n)
			failed++;
		printf("soak: round %u done\n", r);
		wait_ms(SOAK_TICK_MS);
	}
	u32 bad = 0;
	for (u32 r = 0; r < rounds; r++) {
		fill(sector_buf, SECTOR_SIZE, r);
		memcpy(sector_buf, "SOAK", 4);
		sector_buf[4] = (u8)r;
		if (os_disk_read(16 + r, check_buf, 1) != 0 || memcmp(check_buf, sector_buf, SECTOR_SIZE))
			bad++;
	}
	watchdog_disarm();
	pit_stop();
	report(failed == 0, "%u rounds of calls succeeded", rounds);
	report(bad == 0, "every soak sector reads back (%u bad)", bad);
	report_prefix_pop();
}

/* bench=N: N bytes to the console in 4 KiB writes (nothing else is printed). */
static void bench(u32 bytes)
{
	static char chunk[CONSOLE_MAX];
	for (unsigned i = 0; i < sizeof(chunk); i++)
		chunk[i] = (i % 64 == 63) ? '\n' : (char)('a' + i % 26);
	u32 done = 0, failed = 0;
	while (done < bytes) {
		u32 n = bytes - done < CONSOLE_MAX ? bytes - done : CONSOLE_MAX;
		if (os_console_write(chunk, n) != (int)n)
			failed++;
		done += n;
	}
	report(failed == 0, "bench: %u bytes written", bytes);
}

int main(u32 magic, const void *mbi)
{
	const u32 *info = mbi;
	if (magic == MULTIBOOT_LOADER_MAGIC && info && (info[0] & MBI_FLAG_MEM))
		ram_top = 0x100000 + info[2] * 1024;
	u32 bench_bytes = cmdline_value("bench", 0xffffffff);
	if (bench_bytes != 0xffffffff) {
		bench(bench_bytes);
		return report_summary();
	}
	console_checks();
	disk_checks();
	clock_checks();
	/* Code a service node shipped runs as the guest's own, without the monitor's
	 * argument checks: a run that installs it skips the hostile calls. */
	if (cmdline_has("nohostile"))
		report_skip("hostile: not run (nohostile)");
	else
		hostile_checks();
	u32 rounds = cmdline_value("soak", 0);
	if (rounds)
		soak(rounds);
	return report_summary();
}
