/* C side of interrupt handling: per-vector handlers, provoked-fault bookkeeping, the INT
 * 0x80 gate, PIC and PIT. */
#include "guest.h"

static handler_fn handlers[256];
static syscall_hook_fn syscall_hook;
volatile struct fault_record last_fault;
volatile u32 fault_resume_eip, fault_insn_eip;
volatile u32 pit_ticks;
static u32 watchdog_limit;
static const char *watchdog_what;

void handle_exception(int vector, handler_fn fn) { handlers[vector] = fn; }
handler_fn get_handler(int vector) { return handlers[vector]; }
void set_syscall_hook(syscall_hook_fn fn) { syscall_hook = fn; }

void isr_dispatch(struct frame *f)
{
	handler_fn h = handlers[f->vector & 0xff];
	if (h) {
		h(f);
		return;
	}
	/* Inside a FAULT_ASM() region a wrong exception fails only that check: record it (so
	 * catch_end() sees the wrong vector) and resume after the instruction. */
	if (fault_resume_eip && f->vector < IRQ_BASE) {
		last_fault.count++;
		last_fault.vector = f->vector;
		last_fault.error = f->error;
		last_fault.eip = f->eip;
		last_fault.cs = f->cs;
		report_info("vector %u error %x at %x:%x instead of the expected fault", f->vector,
			    f->error, f->cs, f->eip);
		f->eip = fault_resume_eip;
		fault_resume_eip = 0;
		return;
	}
	report(false, "unexpected vector %u error %x at %x:%x eflags %x", f->vector, f->error,
	       f->cs, f->eip, f->eflags);
	report_summary();
	exit(1);
}

static void fault_handler(struct frame *f)
{
	last_fault.count++;
	last_fault.vector = f->vector;
	last_fault.error = f->error;
	last_fault.eip = f->eip;
	last_fault.cs = f->cs;
	if (fault_resume_eip) {
		f->eip = fault_resume_eip;
		fault_resume_eip = 0;
	}
}

void expect_fault(int vector) { handle_exception(vector, fault_handler); }

void fault_clear(void)
{
	last_fault.count = 0;
	last_fault.vector = ~0u;
	last_fault.error = ~0u;
	last_fault.eip = 0;
	last_fault.cs = 0;
}

bool fault_seen(int vector, u32 error)
{
	return last_fault.count == 1 && last_fault.vector == (u32)vector &&
	       last_fault.error == error && last_fault.eip == fault_insn_eip;
}

/* Catch exactly one fault of `vector` raised by a FAULT_ASM() instruction. */
void catch_begin(int vector)
{
	fault_clear();
	expect_fault(vector);
}

/* Stop catching; true if exactly one fault with this vector and error code came from the
 * wrapped instruction. */
bool catch_end(int vector, u32 error)
{
	handle_exception(vector, NULL);
	fault_resume_eip = 0;
	return fault_seen(vector, error);
}

void rdpmc_probe_pce_clear(void)
{
	write_cr4(read_cr4() & ~CR4_PCE);
	catch_begin(GP_VECTOR);
	catch_begin(UD_VECTOR);
	u32 lo, hi;
	asm volatile(FAULT_ASM("rdpmc") : "=a"(lo), "=d"(hi) : "c"(0));
	(void)lo;
	(void)hi;
	handle_exception(GP_VECTOR, NULL);
	handle_exception(UD_VECTOR, NULL);
	fault_resume_eip = 0;
}

void return_to_kernel(u32 value) __attribute__((noreturn));

static void syscall_handler(struct frame *f)
{
	if (f->eax == SYS_RETURN_TO_KERNEL && (f->cs & 3) == 3)
		return_to_kernel(f->ebx);
	if (syscall_hook) {
		syscall_hook(f);
		return;
	}
	report(false, "INT 0x80 eax=%x with no handler", f->eax);
}

#define PIC1 0x20
#define PIC2 0xa0
static u8 pic_masks[2] = { 0xff, 0xff };

static void io_delay(void) { outb(0, 0x80); }

void pic_remap(void)
{
	outb(0x11, PIC1); /* ICW1: edge, cascade, ICW4 */
	io_delay();
	outb(0x11, PIC2);
	io_delay();
	outb(IRQ_BASE, PIC1 + 1);
	io_delay();
	outb(IRQ_BASE + 8, PIC2 + 1);
	io_delay();
	outb(4, PIC1 + 1); /* slave on IRQ 2 */
	io_delay();
	outb(2, PIC2 + 1);
	io_delay();
	outb(1, PIC1 + 1); /* 8086 mode */
	io_delay();
	outb(1, PIC2 + 1);
	io_delay();
	pic_mask_all();
}

static void pic_write_masks(void)
{
	outb(pic_masks[0], PIC1 + 1);
	outb(pic_masks[1], PIC2 + 1);
}

void pic_mask_all(void)
{
	pic_masks[0] = pic_masks[1] = 0xff;
	pic_write_masks();
}

void pic_unmask(int irq)
{
	pic_masks[irq >> 3] &= ~(1u << (irq & 7));
	if (irq >= 8)
		pic_masks[0] &= ~(1u << 2);
	pic_write_masks();
}

void pic_mask(int irq)
{
	pic_masks[irq >> 3] |= 1u << (irq & 7);
	pic_write_masks();
}

void pic_eoi(int irq)
{
	if (irq >= 8)
		outb(0x20, PIC2);
	outb(0x20, PIC1);
}

void pit_start(u32 hz)
{
	u32 divisor = PIT_HZ / hz;
	outb(0x34, 0x43); /* channel 0, lo/hi, mode 2 (rate generator) */
	outb((u8)divisor, 0x40);
	outb((u8)(divisor >> 8), 0x40);
	pic_unmask(0);
}

void pit_stop(void)
{
	pic_mask(0);
	outb(0x30, 0x43); /* mode 0 with no count written: the counter stops */
}

void watchdog_arm(u32 ticks, const char *what)
{
	watchdog_what = what;
	watchdog_limit = pit_ticks + ticks;
}

void watchdog_disarm(void) { watchdog_limit = 0; }

static void timer_handler(struct frame *f)
{
	(void)f;
	pit_ticks++;
	pic_eoi(0);
	if (watchdog_limit && pit_ticks >= watchdog_limit) {
		report(false, "watchdog: %s did not finish", watchdog_what);
		report_summary();
		exit(1);
	}
}

static void spurious_irq_handler(struct frame *f) { pic_eoi((int)f->vector - IRQ_BASE); }

void interrupts_init(void)
{
	fault_clear();
	handle_exception(SYSCALL_VECTOR, syscall_handler);
	handle_exception(IRQ_BASE, timer_handler);
	for (int irq = 1; irq < 16; irq++)
		handle_exception(IRQ_BASE + irq, spurious_irq_handler);
	pic_remap();
}
