/* The escape_* kernels' command-line selection and fault catcher (escape.h). */
#include "escape.h"

volatile struct caught caught;
volatile u32 catch_resume_eip, catch_resume_cs, catch_saved_esp;

asm(".text\n"
    ".globl escape_landing\n"
    "escape_landing:\n\t"
    "movl %cs, %eax\n\t"
    "ud2\n");

#define ONLY "only="

static bool any_only_word(void)
{
	const char *p = cmdline();
	unsigned long n = strlen(ONLY);
	for (; *p; p++)
		if ((p == cmdline() || p[-1] == ' ') && !strncmp(p, ONLY, n))
			return true;
	return false;
}

static bool only_word(const char *name)
{
	char word[64];
	unsigned long n = strlen(ONLY), m = strlen(name);
	if (n + m >= sizeof(word))
		return false;
	memcpy(word, ONLY, n);
	memcpy(word + n, name, m + 1);
	return cmdline_has(word);
}

bool check_selected(const char *name) { return any_only_word() ? only_word(name) : true; }

bool check_opt_in(const char *name) { return only_word(name); }

static void catch_handler(struct frame *f)
{
	caught.count++;
	caught.vector = f->vector;
	caught.error = f->error;
	caught.eip = f->eip;
	caught.cs = f->cs;
	caught.eax = f->eax;
	if (!catch_resume_eip) {
		report(false, "vector %u error %x at %x:%x with no resume point", f->vector,
		       f->error, f->cs, f->eip);
		exit(report_summary());
	}
	f->eip = catch_resume_eip;
	f->cs = catch_resume_cs;
	catch_resume_eip = 0;
}

void catch_start(u32 cs)
{
	caught.count = 0;
	caught.vector = ~0u;
	caught.error = ~0u;
	caught.eip = 0;
	caught.cs = 0;
	caught.eax = 0;
	catch_resume_cs = cs;
	for (int v = 0; v < 32; v++)
		handle_exception(v, catch_handler);
}

void catch_stop(void)
{
	for (int v = 0; v < 32; v++)
		handle_exception(v, NULL);
	catch_resume_eip = 0;
}

bool caught_one(u32 vector, u32 error, u32 eip)
{
	bool ok = caught.count == 1 && caught.vector == vector && caught.error == error &&
		  caught.eip == eip;
	if (!ok)
		report_info("caught %u: vector %u error %x at %x:%x eax %x; expected vector %u "
			    "error %x at %x",
			    caught.count, caught.vector, caught.error, caught.cs, caught.eip,
			    caught.eax, vector, error, eip);
	return ok;
}
