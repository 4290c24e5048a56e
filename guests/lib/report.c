/* kvm-unit-tests style result lines; the host side parses them (src/report.rs). */
#include "guest.h"

#define MAX_PREFIX 128

static char prefix[MAX_PREFIX];
static int prefix_len;
static int prefix_stack[8];
static int prefix_depth;
static u32 tests, failures, skipped;

void report_prefix_push(const char *p)
{
	if (prefix_depth == 8)
		return;
	prefix_stack[prefix_depth++] = prefix_len;
	int n = (int)strlen(p);
	if (prefix_len + n + 3 >= MAX_PREFIX)
		return;
	memcpy(prefix + prefix_len, p, n);
	prefix_len += n;
	memcpy(prefix + prefix_len, ": ", 3);
	prefix_len += 2;
}

void report_prefix_pop(void)
{
	if (prefix_depth)
		prefix_len = prefix_stack[--prefix_depth];
	prefix[prefix_len] = '\0';
}

static void line(const char *kind, const char *fmt, va_list ap)
{
	char buf[192];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	prefix[prefix_len] = '\0';
	printf("%s: %s%s\n", kind, prefix, buf);
}

void report(bool ok, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	tests++;
	if (!ok)
		failures++;
	line(ok ? "PASS" : "FAIL", fmt, ap);
	va_end(ap);
}

void report_skip(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	tests++;
	skipped++;
	line("SKIP", fmt, ap);
	va_end(ap);
}

void report_info(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	line("INFO", fmt, ap);
	va_end(ap);
}

int report_summary(void)
{
	printf("SUMMARY: %u tests, %u unexpected failures, %u skipped\n", tests, failures, skipped);
	printf("%u passed, %u failed\n", tests - failures - skipped, failures);
	return failures ? 1 : 0;
}

void exit(int code)
{
	/* isa-debug-exit: the host process ends with status (code << 1) | 1 */
	outl((u32)code, DEBUG_EXIT_PORT);
	for (;;)
		asm volatile("cli; hlt");
}
