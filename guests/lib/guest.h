/* Shared library of the project's 32-bit test and demo guest kernels. */
#ifndef GUEST_H
#define GUEST_H

#include <stdarg.h>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int s32;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

/* Selectors of the library GDT; 0x33 (the host's 64-bit code selector) is outside it. */
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_CS (0x18 | 3)
#define USER_DS (0x20 | 3)
#define TSS_SEL 0x28
#define GDT_BASE_ENTRIES 6
#define GDT_MAX_ENTRIES 16

/* Assembly text: every data segment register and SS loaded with KERNEL_DS (0x10), as
 * code arriving in 32-bit protected mode from real mode does first. Clobbers AX. */
#define ASM_LOAD_KERNEL_DATA_SEGMENTS \
	"movw $0x10, %ax\n\t"            \
	"movw %ax, %ds\n\t"              \
	"movw %ax, %es\n\t"              \
	"movw %ax, %fs\n\t"              \
	"movw %ax, %gs\n\t"              \
	"movw %ax, %ss\n\t"

#define EFLAGS_CF (1u << 0)
#define EFLAGS_FIXED1 (1u << 1)
#define EFLAGS_TF (1u << 8)
#define EFLAGS_IF (1u << 9)
#define EFLAGS_DF (1u << 10)
#define EFLAGS_IOPL (3u << 12)

#define CR0_PE (1u << 0)
#define CR0_TS (1u << 3)
#define CR0_ET (1u << 4)
#define CR4_PSE (1u << 4)
#define CR4_PCE (1u << 8)

#define MSR_SYSENTER_CS 0x174
#define MSR_SYSENTER_ESP 0x175
#define MSR_SYSENTER_EIP 0x176

#define DE_VECTOR 0
#define DB_VECTOR 1
#define BP_VECTOR 3
#define BR_VECTOR 5
#define UD_VECTOR 6
#define NP_VECTOR 11
#define GP_VECTOR 13
#define PF_VECTOR 14
#define IRQ_BASE 0x20
#define SYSCALL_VECTOR 0x80

/* The syscall number the library's INT 0x80 handler takes as "leave user mode". It is no
 * host syscall number, so a leak to the host could never be mistaken for it. */
#define SYS_RETURN_TO_KERNEL 0x4b524554

#define SERIAL_PORT 0x3f8
#define SERIAL_SCRATCH (SERIAL_PORT + 7)
#define DEBUG_EXIT_PORT 0xf4
#define PIT_HZ 1193182u

/* Register frame built by the interrupt stubs (lib/entry.S); handlers may modify it. */
struct frame {
	u32 gs, fs, es, ds;
	u32 edi, esi, ebp, esp_at_pusha, ebx, edx, ecx, eax;
	u32 vector, error;
	u32 eip, cs, eflags;
	u32 user_esp, user_ss; /* only present when the interrupt came from CPL 3 */
};

struct descriptor {
	u32 lo, hi;
};

struct pseudo_descriptor {
	u16 limit;
	u32 base;
} __attribute__((packed));

struct tss32 {
	u32 link, esp0, ss0, esp1, ss1, esp2, ss2, cr3, eip, eflags;
	u32 eax, ecx, edx, ebx, esp, ebp, esi, edi;
	u32 es, cs, ss, ds, fs, gs, ldt;
	u16 trap, iomap_base;
} __attribute__((packed));

typedef void (*handler_fn)(struct frame *f);

/* libc subset */
void *memset(void *d, int c, unsigned long n);
void *memcpy(void *d, const void *s, unsigned long n);
int memcmp(const void *a, const void *b, unsigned long n);
unsigned long strlen(const char *s);
int strncmp(const char *a, const char *b, unsigned long n);

/* console */
void serial_init(void);
void putchar(char c);
void puts(const char *s);
int vsnprintf(char *buf, int size, const char *fmt, va_list ap);
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The kernel command line after its first word (the kernel's path, as Multiboot loaders pass it). */
const char *cmdline(void);
bool cmdline_has(const char *word);

/* kvm-unit-tests style reporting.
 *
 * Check names: the coverage suite (forms, privileged, io, gates, vectors) names each check
 * "<subject>: [<forms>] what", the subject being the first report_prefix_push(): a class
 * name of the rewriter's table (pushf, far_jmp, mov_cr...) or an exception mnemonic (#GP),
 * and the bracketed words the encoding the check executes: o8/o16/o32 operand size, a16
 * 16-bit addressing, seg a segment override, reg/mem, segment register names,
 * ptr16:16/ptr16:32/m16:16/m16:32 far pointers, imm8/dx ports, rep, df (DF=1), imm16,
 * gate, outer, cpl0/cpl3. `vmm coverage` computes class and form coverage from these names,
 * so a check that executes a form must say so. A check a QEMU deviation makes the kernel
 * skip ends in ": skipped by <quirk word>" (guests::qemu::QUIRKS). */
void report(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void report_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void report_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void report_prefix_push(const char *prefix);
void report_prefix_pop(void);
int report_summary(void);
void exit(int code) __attribute__((noreturn));

/* descriptor tables */
extern struct descriptor gdt[GDT_MAX_ENTRIES];
extern struct tss32 tss;
/* Access bytes and flags for make_segment. Accessed bits are preset so that LAR results and
 * descriptor bytes do not depend on whether (and when) the CPU or the monitor sets them. */
#define ACC_CODE0 0x9b
#define ACC_DATA0 0x93
#define ACC_CODE3 0xfb
#define ACC_DATA3 0xf3
#define ACC_TSS32 0x89
#define FLAGS_4K_32 0xc
struct descriptor make_segment(u32 base, u32 limit, u8 access, u8 flags);
void gdt_load(unsigned entries);
void idt_set_gate(int vector, u32 offset, u16 selector, u8 type, u8 dpl);
void idt_load_default(void);
u32 idt_stub(int vector);
extern struct descriptor idt[256];
void handle_exception(int vector, handler_fn fn);
handler_fn get_handler(int vector);

/* faults a test provokes on purpose: see lib/fault.c */
struct fault_record {
	u32 count, vector, error, eip, cs;
};
extern volatile struct fault_record last_fault;
extern volatile u32 fault_resume_eip, fault_insn_eip;
void expect_fault(int vector);
void fault_clear(void);
bool fault_seen(int vector, u32 error);
void catch_begin(int vector);
bool catch_end(int vector, u32 error);
/* RDPMC of counter 0 with CR4.PCE cleared, catching #GP and #UD: last_fault says what it
 * raised (at CPL 0 it must raise nothing). */
void rdpmc_probe_pce_clear(void);
/* Wraps one faulting instruction: records its address, and where the handler resumes. */
#define FAULT_ASM(insn)                                                                        \
	"movl $8881f, fault_insn_eip\n\t"                                                      \
	"movl $8882f, fault_resume_eip\n"                                                      \
	"8881:\n\t" insn "\n"                                                                  \
	"8882:\n\t"

/* ring 3 */
u32 run_user(void (*fn)(void), u32 eflags);
void user_return(u32 value) __attribute__((noreturn));
typedef void (*syscall_hook_fn)(struct frame *f);
void set_syscall_hook(syscall_hook_fn fn);

/* PIC / PIT */
void pic_remap(void);
void pic_mask_all(void);
void pic_unmask(int irq);
void pic_mask(int irq);
void pic_eoi(int irq);
void pit_start(u32 hz);
void pit_stop(void);
extern volatile u32 pit_ticks;
void watchdog_arm(u32 ticks, const char *what);
void watchdog_disarm(void);

/* local APIC (xAPIC page) and IOAPIC: see lib/apic.c */
#define LAPIC_BASE 0xfee00000u
#define LAPIC_ID 0x20
#define LAPIC_VERSION 0x30
#define LAPIC_TPR 0x80
#define LAPIC_PPR 0xa0
#define LAPIC_EOI 0xb0
#define LAPIC_LDR 0xd0
#define LAPIC_DFR 0xe0
#define LAPIC_SVR 0xf0
#define LAPIC_ISR 0x100
#define LAPIC_TMR 0x180
#define LAPIC_IRR 0x200
#define LAPIC_ESR 0x280
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_CURRENT 0x390
#define LAPIC_TIMER_DIVIDE 0x3e0
#define APIC_SVR_ENABLE (1u << 8)
#define APIC_LVT_MASKED (1u << 16)
#define APIC_TIMER_PERIODIC (1u << 17)
#define APIC_DELIVERY_PENDING (1u << 12)
#define ICR_SELF (1u << 18)
#define MSR_APIC_BASE 0x1b
#define APIC_BASE_ENABLE (1u << 11)
#define CPUID_1_EDX_APIC (1u << 9)
#define IOAPIC_BASE 0xfec00000u
#define IOAPIC_ID 0x00
#define IOAPIC_VER 0x01
#define IOAPIC_ARB 0x02
#define IOAPIC_REDTBL 0x10
#define IOAPIC_LOWEST_PRIORITY (1u << 8)
#define IOAPIC_LOGICAL (1u << 11)
#define IOAPIC_ACTIVE_LOW (1u << 13)
#define IOAPIC_REMOTE_IRR (1u << 14)
#define IOAPIC_LEVEL (1u << 15)
#define IOAPIC_MASKED (1u << 16)
/* Vectors 0x40-0x8F and 0xFF have stubs; their IDT gates are installed by this call. */
#define APIC_VECTORS_FIRST 0x40
void apic_vectors_install(void);
u32 lapic_read(u32 reg);
void lapic_write(u32 reg, u32 v);
void lapic_eoi(void);
/* Whether `vector` is set in the ISR, TMR or IRR (bank = LAPIC_ISR/TMR/IRR). */
bool lapic_vector_set(u32 bank, u8 vector);
void lapic_self_ipi(u8 vector);
u32 ioapic_read(u8 index);
void ioapic_write(u8 index, u32 v);
u64 ioapic_entry(int pin);
void ioapic_set_entry(int pin, u64 entry);
/* Routes IOAPIC `pin` to `vector` at APIC 0 (fixed, physical), with `flags` (trigger,
 * mask...). */
void ioapic_route(int pin, u8 vector, u32 flags);

/* Application processors (lib/smp.c). */
#define SMP_MAX_CPUS 8
/* Spins (with PAUSE) until `cond` holds or a long while has passed; gives `cond`. */
#define SMP_WAIT_FOR(cond)                                                                     \
	({                                                                                     \
		u32 spins_ = 0;                                                                \
		while (!(cond) && ++spins_ < 20000000u)                                        \
			asm volatile("pause" ::: "memory");                                    \
		(cond);                                                                        \
	})
/* Enabled processors of the ACPI MADT (0 without one). */
u32 madt_processors(void);
/* Starts processors 1 .. ncpus-1 (INIT, SIPI, SIPI; APIC IDs = indexes); each enables its
 * APIC (flat logical ID 1 << id) and calls entry(id). Gives how many reported in. */
u32 smp_boot_aps(u32 ncpus, void (*entry)(u32 id));
u32 smp_apic_id(void);
void smp_send_ipi(u32 dest, u32 icr_low);

/* A recognisable x87/SSE state (lib/fpustate.c): fpu_state_load turns the FPU on (CR0.MP
 * and NE, EM and TS clear, CR4.OSFXSR) and loads processor `cpu`'s state made from `seed`
 * (x87 registers, control words, MXCSR rounding toward zero, XMM0-7); fpu_state_intact
 * tells whether the registers still hold it. Code between the two must not touch the FPU. */
void fpu_state_load(u32 cpu, u32 seed);
bool fpu_state_intact(u32 cpu);

/* instructions */
static inline void outb(u8 v, u16 port) { asm volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 v, u16 port) { asm volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u32 v, u16 port) { asm volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u16 inw(u16 port)
{
	u16 v;
	asm volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u32 inl(u16 port)
{
	u32 v;
	asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
/* SGDT/SIDT: the descriptor-table registers as the CPU (or the monitor) reports them. */
static inline struct pseudo_descriptor sgdt(void)
{
	struct pseudo_descriptor p;
	asm volatile("sgdt %0" : "=m"(p));
	return p;
}

static inline struct pseudo_descriptor sidt(void)
{
	struct pseudo_descriptor p;
	asm volatile("sidt %0" : "=m"(p));
	return p;
}

static inline void cli(void) { asm volatile("cli" ::: "memory"); }
static inline void sti(void) { asm volatile("sti" ::: "memory"); }
static inline u32 read_eflags(void)
{
	u32 f;
	asm volatile("pushfl; popl %0" : "=r"(f)::"memory");
	return f;
}
static inline void write_eflags(u32 f) { asm volatile("pushl %0; popfl" ::"r"(f) : "memory", "cc"); }
#define DEFINE_READ_CR(n)                                                                      \
	static inline u32 read_cr##n(void)                                                     \
	{                                                                                      \
		u32 v;                                                                         \
		asm volatile("mov %%cr" #n ", %0" : "=r"(v));                                  \
		return v;                                                                      \
	}                                                                                      \
	static inline void write_cr##n(u32 v) { asm volatile("mov %0, %%cr" #n ::"r"(v) : "memory"); }
DEFINE_READ_CR(0)
DEFINE_READ_CR(2)
DEFINE_READ_CR(3)
DEFINE_READ_CR(4)
static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
	asm volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}
static inline u64 rdtsc(void)
{
	u32 lo, hi;
	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}
struct cpuid_result {
	u32 a, b, c, d;
};
static inline struct cpuid_result cpuid(u32 leaf)
{
	struct cpuid_result r;
	asm volatile("cpuid" : "=a"(r.a), "=b"(r.b), "=c"(r.c), "=d"(r.d) : "a"(leaf), "c"(0));
	return r;
}
#define READ_SREG(s)                                                                           \
	({                                                                                     \
		u16 _v;                                                                        \
		asm volatile("mov %%" #s ", %0" : "=r"(_v));                                   \
		_v;                                                                            \
	})

/* The ACPI PM registers a kernel uses (lib/acpi_pm.c): from the FADT when firmware left
 * ACPI tables (RSDP in the EBDA or 0xE0000-0xFFFFF, RSDT, FACP), else where SeaBIOS
 * programs the PIIX4's PM base (0x600). `from_fadt` says which. */
struct acpi_pm {
	u16 pm1a_evt, pm1a_cnt, pm_tmr;
	bool from_fadt;
};
struct acpi_pm acpi_pm_find(void);
#define PM_BASE_SEABIOS 0x600
#define PM1_CNT_SLP_TYP_SHIFT 10
#define PM1_CNT_SLP_EN (1u << 13)
#define PM_TIMER_HZ 3579545u

int main(u32 magic, const void *mbi);

#endif
