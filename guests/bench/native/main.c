/* Native baseline: the operations a 32-bit Linux process can run, timed with the kernels' code */
#include "ops.h"

#define SYS_EXIT_GROUP 252
#define SYS_WRITE 4
#define STDOUT 1

/* The host kernel times no exits here, so the cheap operations run longer than in the
 * kernels for a steadier figure; cycles per operation stay comparable. */
#define NATIVE_SCALE 20u

static int syscall3(int nr, int a, int b, int c)
{
	int r;
	asm volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
	return r;
}

void bench_write(const char *s)
{
	int n = 0;
	while (s[n])
		n++;
	while (n > 0) {
		int w = syscall3(SYS_WRITE, STDOUT, (int)s, n);
		if (w <= 0)
			break;
		s += w;
		n -= w;
	}
}

void bench_main(void) __attribute__((noreturn, used));
void bench_main(void)
{
	bench_u32 n = CALL_RET_ITERATIONS;
	op_call_ret(n / 10);
	bench_report("call_ret", n / 10, n, BENCH_BEST_OF_TRIALS(op_call_ret(n)), 0, 0);

	n = PUSHF_POPF_ITERATIONS * NATIVE_SCALE;
	op_pushf_popf(n / 10);
	bench_report("pushf_popf", n / 10, n, BENCH_BEST_OF_TRIALS(op_pushf_popf(n)), 0, 0);

	n = SREG_LOAD_ITERATIONS * NATIVE_SCALE;
	op_sreg_load(n / 10);
	bench_report("sreg_load", n / 10, n, BENCH_BEST_OF_TRIALS(op_sreg_load(n)), 0, 0);

	bench_u32 checksum;
	compute_fill();
	op_compute(&checksum);
	bench_u64 cycles = BENCH_BEST_OF_TRIALS(op_compute(&checksum));
	bench_report("compute", COMPUTE_ITERATIONS, COMPUTE_ITERATIONS, cycles, 1, checksum);

	syscall3(SYS_EXIT_GROUP, 0, 0, 0);
	for (;;)
		;
}

/* The kernel enters with ESP at argc; nothing here needs argv or the environment. */
asm(".text\n"
    ".globl _start\n"
    "_start:\n\t"
    "xorl %ebp, %ebp\n\t"
    "andl $-16, %esp\n\t"
    "call bench_main\n\t"
    "hlt\n");
