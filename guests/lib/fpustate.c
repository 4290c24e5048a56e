/* A recognisable x87/SSE state, loaded with FXRSTOR and compared after an FXSAVE: the state
 * a guest leaves in its registers must come back unchanged from any number of exits to the
 * monitor, and each processor's must stay its own. */
#include "guest.h"

#define CR4_OSFXSR (1u << 9)
#define CR0_FPU_BITS ((1u << 1) | (1u << 2) | (1u << 3)) /* MP, EM, TS */
#define CR0_MP (1u << 1)
#define CR0_NE (1u << 5)

/* FXSAVE image offsets (SDM Vol. 1 Table 10-2). */
#define FX_FCW 0
#define FX_FSW 2
#define FX_FTW 4
#define FX_MXCSR 24
#define FX_ST0 32
#define FX_XMM0 160
#define FX_XMM_END 288

static u8 images[2][SMP_MAX_CPUS][512] __attribute__((aligned(16)));

static u8 *image(u32 which, u32 cpu) { return images[which & 1][cpu % SMP_MAX_CPUS]; }

/* Bytes that differ from seed to seed; every x87 register and XMM register distinct. */
static u8 pattern(u32 seed, u32 i) { return (u8)((seed * 0x9du + i * 0x3bu + (i >> 3)) ^ seed >> 8); }

void fpu_state_load(u32 cpu, u32 seed)
{
	write_cr0((read_cr0() & ~CR0_FPU_BITS) | CR0_MP | CR0_NE);
	write_cr4(read_cr4() | CR4_OSFXSR);
	u8 *img = image(0, cpu);
	memset(img, 0, 512);
	/* Precision 64 bits, rounding toward zero (RC = 11), every exception masked. */
	img[FX_FCW] = 0x7f;
	img[FX_FCW + 1] = 0x0f;
	/* TOP = 0 and all eight registers valid (abridged tag byte). */
	img[FX_FTW] = 0xff;
	/* Rounding toward zero and DAZ off, every exception masked: 0x7f80. */
	img[FX_MXCSR] = 0x80;
	img[FX_MXCSR + 1] = 0x7f;
	for (u32 r = 0; r < 8; r++)
		for (u32 b = 0; b < 10; b++)
			img[FX_ST0 + 16 * r + b] = pattern(seed, r * 16 + b);
	for (u32 i = FX_XMM0; i < FX_XMM_END; i++)
		img[i] = pattern(seed + 1, i);
	asm volatile("fxrstor %0" ::"m"(*(u8(*)[512])img));
}

bool fpu_state_intact(u32 cpu)
{
	u8 *want = image(0, cpu), *got = image(1, cpu);
	asm volatile("fxsave %0" : "=m"(*(u8(*)[512])got));
	/* The control, status and tag words, MXCSR, the eight x87 registers' 80 bits and
	 * XMM0-7. The last-instruction pointers are left out: they name where the last x87
	 * instruction ran, which a translated guest does not know. */
	static const u16 spans[][2] = { { FX_FCW, 5 }, { FX_MXCSR, 4 } };
	for (u32 s = 0; s < sizeof(spans) / sizeof(spans[0]); s++)
		for (u32 i = spans[s][0]; i < (u32)(spans[s][0] + spans[s][1]); i++)
			if (want[i] != got[i])
				return false;
	for (u32 r = 0; r < 8; r++)
		for (u32 b = 0; b < 10; b++)
			if (want[FX_ST0 + 16 * r + b] != got[FX_ST0 + 16 * r + b])
				return false;
	for (u32 i = FX_XMM0; i < FX_XMM_END; i++)
		if (want[i] != got[i])
			return false;
	return true;
}
