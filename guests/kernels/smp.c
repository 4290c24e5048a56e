/* Several processors: INIT/SIPI start-up, IPIs of each kind, a spinlock, a TLB shootdown */
/* The bootstrap processor counts the processors of the MADT, starts the others with
 * INIT, SIPI, SIPI into the real-mode trampoline of lib/smp.c (which enters protected
 * mode and calls ap_main on a stack of its own), then drives them through commands woken by IPIs:
 * fixed IPIs by physical ID, logical destination and the all-excluding-self shorthand,
 * an NMI, NMI blocking until IRET, an IPI from an AP to the BSP, a spinlock every
 * processor contends for, a TLB shootdown (a PTE changed, INVLPG on every processor, no
 * stale translation), and control-register and FPU state that stays each processor's own. */
#include "guest.h"
#include "paging.h"

#define MAX_CPUS SMP_MAX_CPUS
#define WAKE_VECTOR 0x60   /* an AP is woken to look at the command */
#define COUNT_VECTOR 0x61  /* counted by the processor that takes it */
#define BSP_VECTOR 0x62	   /* sent by an AP to the BSP */
#define NMI_VECTOR 2
#define LOCK_ROUNDS 20000
#define WINDOW 0x00800000u /* a linear page whose mapping changes under the APs */
#define CR4_PCE_BIT (1u << 8)

enum command { CMD_NONE, CMD_COUNT_LOCK, CMD_PAGING_ON, CMD_READ_WINDOW, CMD_SHOOTDOWN, CMD_SEND_TO_BSP, CMD_CR4, CMD_READ_CR4, CMD_FPU };

struct percpu {
	volatile u32 started, apic_id, cpuid_id, ipis, nmis, done_seq, window_value, cr4, fpu_ok;
};

static struct percpu cpus[MAX_CPUS];
static volatile u32 command, command_arg, command_seq;
static volatile u32 lock_word, lock_counter;
static volatile u32 bsp_ipis;
static u32 page_dir[1024] __attribute__((aligned(4096)));
static u32 page_table[1024] __attribute__((aligned(4096)));
static u32 page_a[1024] __attribute__((aligned(4096)));
static u32 page_b[1024] __attribute__((aligned(4096)));

static u32 cpuid_apic_id(void)
{
	u32 a = 1, b, c = 0, d;
	asm volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	return b >> 24;
}

static void spin_lock(volatile u32 *l)
{
	while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
		while (*l)
			asm volatile("pause");
}

static void spin_unlock(volatile u32 *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

static void count_under_lock(void)
{
	for (int i = 0; i < LOCK_ROUNDS; i++) {
		spin_lock(&lock_word);
		u32 v = lock_counter;
		asm volatile("" ::: "memory");
		lock_counter = v + 1;
		spin_unlock(&lock_word);
	}
}

static void paging_on(void)
{
	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((u32)page_dir);
	write_cr0(read_cr0() | CR0_PG);
}

static void on_wake(struct frame *f)
{
	(void)f;
	lapic_eoi();
}

static void on_count(struct frame *f)
{
	(void)f;
	__atomic_fetch_add(&cpus[smp_apic_id() % MAX_CPUS].ipis, 1, __ATOMIC_SEQ_CST);
	lapic_eoi();
}

static void on_bsp(struct frame *f)
{
	(void)f;
	bsp_ipis++;
	lapic_eoi();
}

/* The BSP's NMIs: how many arrived, whether one arrived inside the handler of another. */
static volatile u32 bsp_nmi_depth, bsp_nmi_nested;

static void on_nmi(struct frame *f)
{
	(void)f;
	u32 id = smp_apic_id();
	u32 n = __atomic_add_fetch(&cpus[id % MAX_CPUS].nmis, 1, __ATOMIC_SEQ_CST);
	if (id != 0)
		return;
	if (bsp_nmi_depth++)
		bsp_nmi_nested = 1;
	else if (n == 1) {
		/* A second NMI to itself, sent from the handler: held until this IRET. */
		smp_send_ipi(0, 0x400);
		for (volatile u32 i = 0; i < 100000; i++)
			;
	}
	bsp_nmi_depth--;
}

/* Each processor loads an x87/SSE state of its own, then exits to the monitor (port reads,
 * PAUSE, which hands the host thread to another vCPU) while the others do the same. */
#define FPU_ROUNDS 3000
static void fpu_own_state(struct percpu *me)
{
	u32 id = (u32)(me - cpus);
	fpu_state_load(id, 0x1000u + 77u * id);
	for (u32 i = 0; i < FPU_ROUNDS; i++) {
		(void)inb(0x21);
		asm volatile("pause");
	}
	me->fpu_ok = fpu_state_intact(id);
}

static void run_command(struct percpu *me, u32 cmd)
{
	switch (cmd) {
	case CMD_COUNT_LOCK:
		count_under_lock();
		break;
	case CMD_PAGING_ON:
		paging_on();
		break;
	case CMD_READ_WINDOW:
		me->window_value = *(volatile u32 *)WINDOW;
		break;
	case CMD_SHOOTDOWN:
		invlpg((void *)WINDOW);
		me->window_value = *(volatile u32 *)WINDOW;
		break;
	case CMD_SEND_TO_BSP:
		lapic_write(LAPIC_ICR_HIGH, 0);
		lapic_write(LAPIC_ICR_LOW, BSP_VECTOR);
		break;
	case CMD_READ_CR4:
		me->cr4 = read_cr4();
		break;
	case CMD_FPU:
		fpu_own_state(me);
		break;
	case CMD_CR4:
		if (command_arg & (1u << (me - cpus)))
			write_cr4(read_cr4() | CR4_PCE_BIT);
		else
			write_cr4(read_cr4() & ~CR4_PCE_BIT);
		break;
	}
}

static void ap_main(u32 id)
{
	struct percpu *me = &cpus[id % MAX_CPUS];
	me->apic_id = id;
	me->cpuid_id = cpuid_apic_id();
	me->started = 1;
	u32 seen = 0;
	for (;;) {
		asm volatile("cli");
		if (command_seq == seen) {
			/* Sleep until an IPI; STI's shadow covers HLT, so none is missed. */
			asm volatile("sti; hlt" ::: "memory");
			continue;
		}
		seen = command_seq;
		asm volatile("sti");
		run_command(me, command);
		me->done_seq = seen;
	}
}

static u32 ncpus;

/* Every AP runs `cmd` (woken by a fixed IPI to all others); true when all finished. */
static bool all_run(u32 cmd, u32 arg)
{
	command = cmd;
	command_arg = arg;
	u32 seq = ++command_seq;
	smp_send_ipi(0, (3u << 18) | WAKE_VECTOR);
	bool ok = true;
	for (u32 i = 1; i < ncpus; i++)
		ok &= SMP_WAIT_FOR(cpus[i].done_seq == seq);
	return ok;
}

/* AP `id` alone runs `cmd`. */
static bool one_runs(u32 id, u32 cmd)
{
	command = cmd;
	u32 seq = ++command_seq;
	smp_send_ipi(id, WAKE_VECTOR);
	return SMP_WAIT_FOR(cpus[id].done_seq == seq);
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	ncpus = madt_processors();
	report(ncpus >= 2 && ncpus <= MAX_CPUS, "smp: the MADT lists %u processors", ncpus);
	if (ncpus < 2 || ncpus > MAX_CPUS)
		return report_summary();

	apic_vectors_install();
	handle_exception(WAKE_VECTOR, on_wake);
	handle_exception(COUNT_VECTOR, on_count);
	handle_exception(BSP_VECTOR, on_bsp);
	handle_exception(NMI_VECTOR, on_nmi);
	asm volatile("sti");
	u32 reported = smp_boot_aps(ncpus, ap_main);
	bool up = reported == ncpus - 1;
	report(up, "smp: every AP reports in after INIT and start-up IPIs (%u of %u)", reported,
	       ncpus - 1);
	if (!up)
		return report_summary();

	bool ids = true;
	for (u32 i = 1; i < ncpus; i++)
		ids &= cpus[i].started && cpus[i].apic_id == i && cpus[i].cpuid_id == i;
	report(ids && smp_apic_id() == 0 && cpuid_apic_id() == 0,
	       "smp: each processor reads its own APIC ID, and CPUID agrees");

	bool ok = true;
	for (u32 i = 1; i < ncpus; i++) {
		smp_send_ipi(i, COUNT_VECTOR);
		ok &= SMP_WAIT_FOR(cpus[i].ipis == 1);
	}
	report(ok && cpus[0].ipis == 0, "smp: a fixed IPI by physical ID reaches that AP only");

	smp_send_ipi(0, (3u << 18) | COUNT_VECTOR);
	ok = true;
	for (u32 i = 1; i < ncpus; i++)
		ok &= SMP_WAIT_FOR(cpus[i].ipis == 2);
	report(ok && cpus[0].ipis == 0, "smp: all-excluding-self reaches every AP, not the sender");

	u32 mask = ((1u << ncpus) - 1) & ~1u;
	smp_send_ipi(mask, (1u << 11) | COUNT_VECTOR);
	ok = true;
	for (u32 i = 1; i < ncpus; i++)
		ok &= SMP_WAIT_FOR(cpus[i].ipis == 3);
	report(ok && cpus[0].ipis == 0, "smp: a logical destination (flat model) reaches the APs it names");

	smp_send_ipi(ncpus - 1, 0x400);
	ok = SMP_WAIT_FOR(cpus[ncpus - 1].nmis == 1);
	report(ok && cpus[0].nmis == 0, "smp: an NMI IPI reaches its AP");

	smp_send_ipi(0, 0x400);
	ok = SMP_WAIT_FOR(cpus[0].nmis == 2);
	report(ok && !bsp_nmi_nested,
	       "smp: an NMI sent from the NMI handler arrives after its IRET, not inside it (%u)",
	       cpus[0].nmis);

	ok = one_runs(1, CMD_SEND_TO_BSP) && SMP_WAIT_FOR(bsp_ipis == 1);
	report(ok, "smp: an AP's IPI reaches the BSP");

	lock_counter = 0;
	command = CMD_COUNT_LOCK;
	u32 seq = ++command_seq;
	smp_send_ipi(0, (3u << 18) | WAKE_VECTOR);
	count_under_lock();
	ok = true;
	for (u32 i = 1; i < ncpus; i++)
		ok &= SMP_WAIT_FOR(cpus[i].done_seq == seq);
	report(ok && lock_counter == ncpus * LOCK_ROUNDS,
	       "pause: a spinlock contended by every processor (PAUSE while it waits) keeps the count exact (%u)",
	       lock_counter);

	/* Paging on every processor: 4 MiB pages 1:1, and WINDOW through a page table. */
	for (u32 i = 0; i < 1024; i++) {
		page_a[i] = 0xaaaa0000u | i;
		page_b[i] = 0xbbbb0000u | i;
	}
	for (u32 i = 0; i < 1024; i++)
		page_dir[i] = (i << 22) | PTE_P | PTE_RW | PTE_PS;
	page_dir[pde_index(WINDOW)] = (u32)page_table | PTE_P | PTE_RW;
	for (u32 i = 0; i < 1024; i++)
		page_table[i] = (WINDOW + (i << 12)) | PTE_P | PTE_RW;
	page_table[pte_index(WINDOW)] = (u32)page_a | PTE_P | PTE_RW;
	paging_on();
	ok = all_run(CMD_PAGING_ON, 0) && all_run(CMD_READ_WINDOW, 0);
	for (u32 i = 1; i < ncpus; i++)
		ok &= cpus[i].window_value == 0xaaaa0000u;
	report(ok, "smp: every processor runs with paging and sees the window's first page");
	page_table[pte_index(WINDOW)] = (u32)page_b | PTE_P | PTE_RW;
	invlpg((void *)WINDOW);
	ok = *(volatile u32 *)WINDOW == 0xbbbb0000u && all_run(CMD_SHOOTDOWN, 0);
	for (u32 i = 1; i < ncpus; i++)
		ok &= cpus[i].window_value == 0xbbbb0000u;
	report(ok, "smp: after a PTE change and INVLPG on every processor, none sees the old page");

	/* CR4.PCE set on the odd processors only, each reading back its own. */
	ok = all_run(CMD_CR4, 0xaaaaaaaau);
	write_cr4(read_cr4() & ~CR4_PCE_BIT);
	ok &= all_run(CMD_READ_CR4, 0);
	for (u32 i = 1; i < ncpus; i++)
		ok &= ((cpus[i].cr4 & CR4_PCE_BIT) != 0) == ((i & 1) != 0);
	report(ok && !(read_cr4() & CR4_PCE_BIT),
	       "smp: CR4 is each processor's own (PCE set on the odd ones only)");

	command = CMD_FPU;
	seq = ++command_seq;
	smp_send_ipi(0, (3u << 18) | WAKE_VECTOR);
	fpu_own_state(&cpus[0]);
	ok = cpus[0].fpu_ok;
	for (u32 i = 1; i < ncpus; i++)
		ok &= SMP_WAIT_FOR(cpus[i].done_seq == seq) && cpus[i].fpu_ok;
	report(ok, "smp: x87 and SSE registers are each processor's own through %u exits each",
	       2 * FPU_ROUNDS);
	return report_summary();
}
