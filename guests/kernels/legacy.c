/* Legacy PC devices: i8042, port 0x92, CGA CRTC, PCI host bridge, ACPI PM timer, port 0x61 */
#include "guest.h"

/* With one of these words on the command line the kernel resets the machine that way
 * instead of testing (tests/tests/reset.rs): the run must end there. */
#define RESET_I8042 "reset-i8042"
#define RESET_CF9 "reset-cf9"
#define RESET_PORT92 "reset-port92"

#define I8042_DATA 0x60
#define I8042_CMD 0x64
#define I8042_OBF 0x01
#define I8042_IBF 0x02
#define I8042_READ_CTR 0x20
#define I8042_WRITE_CTR 0x60
#define I8042_KBD_DISABLE 0xad
#define I8042_KBD_ENABLE 0xae
#define I8042_SELF_TEST 0xaa
#define I8042_KBD_TEST 0xab
#define I8042_READ_OUTPUT 0xd0
#define I8042_WRITE_OUTPUT 0xd1
#define I8042_PULSE_RESET 0xfe
#define CTR_SYS 0x04
#define CTR_KBD_DISABLE 0x10
#define CTR_XLATE 0x40
#define OUT_RESET_N 0x01
#define OUT_A20 0x02
#define KBD_RESET 0xff
#define KBD_IDENTIFY 0xf2
#define KBD_ACK 0xfa

#define PORT92 0x92
#define PORT92_RESET 0x01
#define PORT92_A20 0x02

#define CRTC_INDEX 0x3d4
#define CRTC_DATA 0x3d5
#define CGA_STATUS 0x3da
#define CGA_VRETRACE 0x08
#define CRTC_CURSOR_START 0x0a
#define CRTC_CURSOR_END 0x0b
#define CRTC_START_HIGH 0x0c
#define CRTC_START_LOW 0x0d
#define CRTC_CURSOR_HIGH 0x0e
#define CRTC_CURSOR_LOW 0x0f
#define CGA_TEXT 0xb8000

#define PCI_ADDRESS 0xcf8
#define PCI_DATA 0xcfc
#define PCI_ENABLE 0x80000000u
#define PCI_COMMAND 0x04
#define PCI_COMMAND_SERR 0x0100
#define PCI_CLASS_REV 0x08
#define PCI_HEADER 0x0c
#define PCI_SUBSYSTEM 0x2c
#define PCI_MULTIFUNCTION 0x80
#define CLASS_HOST_BRIDGE 0x0600
#define RESET_CONTROL 0xcf9
#define RC_SYSTEM_RESET 0x02
#define RC_RESET_CPU 0x04

#define PORT61 0x61
#define PORT61_GATE2 0x01
#define PORT61_SPEAKER 0x02
#define PORT61_OUT2 0x20
#define PIT_CH2 0x42
#define PIT_CONTROL 0x43
#define PIT_CH2_MODE0_LOHI 0xb0

/* Where the A20 tests run from: with A20 off QEMU folds address bit 20, so the code that
 * switches it off and reads it back must lie below 1 MiB and touch no memory. */
#define LOW_CODE 0x7000
#define SPIN_LIMIT 1000000

/* u32 stub(void): A20 off through port 0x92, read the port, A20 on, read it again;
 * returns the two readings in AL (off) and AH (on again). */
extern const u8 a20_port92_stub[], a20_port92_stub_end[];
/* u32 stub(u32 off, u32 on): writes the i8042 output port with `off`, reads it back with
 * command 0xD0, writes `on`; returns the value read while A20 was off. */
extern const u8 a20_i8042_stub[], a20_i8042_stub_end[];
asm(".pushsection .text\n"
    "a20_port92_stub:\n\t"
    "inb $0x92, %al\n\t"
    "andb $0xfc, %al\n\t"
    "outb %al, $0x92\n\t"
    "inb $0x92, %al\n\t"
    "movb %al, %dl\n\t"
    "orb $0x02, %al\n\t"
    "outb %al, $0x92\n\t"
    "inb $0x92, %al\n\t"
    "movb %al, %dh\n\t"
    "movzwl %dx, %eax\n\t"
    "ret\n"
    "a20_port92_stub_end:\n"
    "a20_i8042_stub:\n\t"
    "movl 4(%esp), %edx\n\t"
    "movl 8(%esp), %ecx\n\t"
    "movb $0xd1, %al\n\t"
    "outb %al, $0x64\n\t"
    "movb %dl, %al\n\t"
    "outb %al, $0x60\n\t"
    "movb $0xd0, %al\n\t"
    "outb %al, $0x64\n\t"
    "movl $1000000, %edx\n"
    "1:\n\t"
    "inb $0x64, %al\n\t"
    "testb $1, %al\n\t"
    "jnz 2f\n\t"
    "decl %edx\n\t"
    "jnz 1b\n"
    "2:\n\t"
    "inb $0x60, %al\n\t"
    "movb %al, %ch\n\t"
    "movb $0xd1, %al\n\t"
    "outb %al, $0x64\n\t"
    "movb %cl, %al\n\t"
    "outb %al, $0x60\n\t"
    "movzbl %ch, %eax\n\t"
    "ret\n"
    "a20_i8042_stub_end:\n"
    ".popsection");

typedef u32 (*low_fn)(u32, u32);

static low_fn copy_low(const u8 *start, const u8 *end)
{
	memcpy((void *)LOW_CODE, start, (unsigned long)(end - start));
	return (low_fn)LOW_CODE;
}

/* ---- i8042 ---- */

static void i8042_flush(void)
{
	for (int i = 0; i < 32 && (inb(I8042_CMD) & I8042_OBF); i++)
		inb(I8042_DATA);
}

static void i8042_wait_input(void)
{
	for (int i = 0; i < SPIN_LIMIT && (inb(I8042_CMD) & I8042_IBF); i++)
		;
}

/* The next output byte, or -1 if none arrives. */
static int i8042_read(void)
{
	for (int i = 0; i < SPIN_LIMIT; i++)
		if (inb(I8042_CMD) & I8042_OBF)
			return inb(I8042_DATA);
	return -1;
}

static void i8042_command(u8 cmd)
{
	i8042_wait_input();
	outb(cmd, I8042_CMD);
}

static void i8042_write(u8 data)
{
	i8042_wait_input();
	outb(data, I8042_DATA);
}

static int i8042_query(u8 cmd)
{
	i8042_command(cmd);
	return i8042_read();
}

static void test_i8042(void)
{
	int v, ack, id1, id2;

	report_prefix_push("i8042");
	i8042_flush();
	report(!(inb(I8042_CMD) & I8042_OBF), "output buffer empty after draining");
	v = i8042_query(I8042_SELF_TEST);
	report(v == 0x55, "controller self-test answers 0x55 (%x)", v);
	v = i8042_query(I8042_KBD_TEST);
	report(v == 0x00, "keyboard interface test answers 0x00 (%x)", v);

	int ctr = i8042_query(I8042_READ_CTR);
	report(ctr >= 0 && (ctr & CTR_XLATE), "command byte has translation on (%x)", ctr);
	i8042_command(I8042_WRITE_CTR);
	i8042_write((u8)(ctr ^ CTR_SYS));
	v = i8042_query(I8042_READ_CTR);
	report(v == (ctr ^ CTR_SYS), "command byte reads back what was written (%x)", v);
	i8042_command(I8042_WRITE_CTR);
	i8042_write((u8)ctr);

	i8042_command(I8042_KBD_DISABLE);
	v = i8042_query(I8042_READ_CTR);
	report(v >= 0 && (v & CTR_KBD_DISABLE), "0xAD sets the keyboard-disable bit (%x)", v);
	i8042_command(I8042_KBD_ENABLE);
	v = i8042_query(I8042_READ_CTR);
	report(v >= 0 && !(v & CTR_KBD_DISABLE), "0xAE clears it (%x)", v);

	i8042_command(I8042_SELF_TEST);
	report(inb(I8042_CMD) & I8042_OBF, "a reply sets OBF");
	inb(I8042_DATA);
	report(!(inb(I8042_CMD) & I8042_OBF), "reading the data port clears OBF");

	i8042_write(KBD_RESET);
	ack = i8042_read();
	v = i8042_read();
	report(ack == KBD_ACK && v == 0xaa, "keyboard reset: ACK then 0xAA (%x %x)", ack, v);
	i8042_write(KBD_IDENTIFY);
	ack = i8042_read();
	id1 = i8042_read();
	id2 = i8042_read();
	report(ack == KBD_ACK && id1 == 0xab && id2 == 0x41,
	       "keyboard identify: ACK, 0xAB, 0x41 translated (%x %x %x)", ack, id1, id2);
	i8042_flush();

	int out = i8042_query(I8042_READ_OUTPUT);
	report(out >= 0 && (out & (OUT_RESET_N | OUT_A20)) == (OUT_RESET_N | OUT_A20),
	       "output port: reset line high, A20 on (%x)", out);
	if (out >= 0) {
		low_fn stub = copy_low(a20_i8042_stub, a20_i8042_stub_end);
		v = (int)stub((u32)out & ~OUT_A20, (u32)out);
		report(v >= 0 && !(v & OUT_A20) && (v & OUT_RESET_N),
		       "output port write with A20 off reads back off (%x)", v);
		v = i8042_query(I8042_READ_OUTPUT);
		report(v >= 0 && (v & OUT_A20), "and A20 on again reads back on (%x)", v);
	}
	report_prefix_pop();
}

/* ---- port 0x92 ---- */

static void test_port92(void)
{
	report_prefix_push("port92");
	u8 v = inb(PORT92);
	report((v & (PORT92_A20 | PORT92_RESET)) == PORT92_A20, "A20 on, reset bit clear (%x)", v);
	low_fn stub = copy_low(a20_port92_stub, a20_port92_stub_end);
	u32 r = stub(0, 0);
	report(!(r & PORT92_A20), "A20 off reads back off (%x)", r & 0xff);
	report(((r >> 8) & (PORT92_A20 | PORT92_RESET)) == PORT92_A20,
	       "A20 on again reads back on (%x)", (r >> 8) & 0xff);
	report_prefix_pop();
}

/* ---- CGA ---- */

static u8 crtc_read(u8 reg)
{
	outb(reg, CRTC_INDEX);
	return inb(CRTC_DATA);
}

static void crtc_write(u8 reg, u8 v)
{
	outb(reg, CRTC_INDEX);
	outb(v, CRTC_DATA);
}

static void test_cga(void)
{
	report_prefix_push("cga");
	/* xv6's console: the cursor position through registers 14 and 15. */
	crtc_write(CRTC_CURSOR_HIGH, 0x01);
	crtc_write(CRTC_CURSOR_LOW, 0x42);
	u16 pos = crtc_read(CRTC_CURSOR_HIGH) << 8 | crtc_read(CRTC_CURSOR_LOW);
	report(pos == 0x142, "cursor location reads back (%x)", pos);
	report(inb(CRTC_INDEX) == CRTC_CURSOR_LOW, "the index register reads back");
	outw(0x0a00 | CRTC_CURSOR_LOW, CRTC_INDEX);
	report(crtc_read(CRTC_CURSOR_LOW) == 0x0a, "a word write sets index and data");
	crtc_write(CRTC_CURSOR_START, 0x06);
	crtc_write(CRTC_CURSOR_END, 0x07);
	report(crtc_read(CRTC_CURSOR_START) == 0x06 && crtc_read(CRTC_CURSOR_END) == 0x07,
	       "cursor shape reads back");
	crtc_write(CRTC_START_HIGH, 0x00);
	crtc_write(CRTC_START_LOW, 0x50);
	report(crtc_read(CRTC_START_HIGH) == 0x00 && crtc_read(CRTC_START_LOW) == 0x50,
	       "start address reads back");
	crtc_write(CRTC_START_LOW, 0x00);
	crtc_write(CRTC_CURSOR_HIGH, 0x00);
	crtc_write(CRTC_CURSOR_LOW, 0x00);

	/* A retrace wait: bit 3 must be seen both set and clear. */
	bool set = false, clear = false;
	for (int i = 0; i < SPIN_LIMIT && !(set && clear); i++) {
		if (inb(CGA_STATUS) & CGA_VRETRACE)
			set = true;
		else
			clear = true;
	}
	report(set && clear, "status shows vertical retrace come and go");

	volatile u16 *text = (volatile u16 *)CGA_TEXT;
	const char *msg = "legacy";
	for (int i = 0; msg[i]; i++)
		text[i] = 0x0700 | (u8)msg[i];
	bool same = true;
	for (int i = 0; msg[i]; i++)
		same = same && text[i] == (0x0700 | (u8)msg[i]);
	report(same, "text memory at 0xB8000 reads back");
	report_prefix_pop();
}

/* ---- PCI ---- */

static u32 pci_read(u32 bus, u32 dev, u32 fn, u32 reg)
{
	outl(PCI_ENABLE | bus << 16 | dev << 11 | fn << 8 | (reg & 0xfc), PCI_ADDRESS);
	return inl(PCI_DATA);
}

static void pci_write16(u32 bus, u32 dev, u32 fn, u32 reg, u16 v)
{
	outl(PCI_ENABLE | bus << 16 | dev << 11 | fn << 8 | (reg & 0xfc), PCI_ADDRESS);
	outw(v, PCI_DATA + (reg & 2));
}

static void test_pci(void)
{
	report_prefix_push("pci");
	outl(PCI_ENABLE, PCI_ADDRESS);
	report(inl(PCI_ADDRESS) == PCI_ENABLE, "CONFIG_ADDRESS reads back");

	u32 id = pci_read(0, 0, 0, 0);
	report(id == 0x12378086, "00:00.0 is an i440FX, 8086:1237 (%x)", id);
	u32 class_rev = pci_read(0, 0, 0, PCI_CLASS_REV);
	report(class_rev >> 16 == CLASS_HOST_BRIDGE && (class_rev & 0xff) == 2,
	       "00:00.0 class 0x0600 host bridge, revision 2 (%x)", class_rev);
	u32 header = pci_read(0, 0, 0, PCI_HEADER);
	report(((header >> 16) & 0xff) == 0, "00:00.0 header type 0, one function (%x)", header);
	u32 sub = pci_read(0, 0, 0, PCI_SUBSYSTEM);
	report(sub == 0x11001af4, "00:00.0 subsystem 1af4:1100 (%x)", sub);

	/* Enumerate bus 0 as Linux does: function 0 of every slot, the others of
	 * multi-function devices. */
	int bridges = 0, at_zero = 0, devices = 0;
	for (u32 dev = 0; dev < 32; dev++) {
		for (u32 fn = 0; fn < 8; fn++) {
			u32 v = pci_read(0, dev, fn, 0);
			if ((v & 0xffff) == 0xffff) {
				if (fn == 0)
					break;
				continue;
			}
			devices++;
			if (pci_read(0, dev, fn, PCI_CLASS_REV) >> 16 == CLASS_HOST_BRIDGE) {
				bridges++;
				at_zero += dev == 0 && fn == 0;
			}
			if (fn == 0 && !((pci_read(0, dev, 0, PCI_HEADER) >> 16) & PCI_MULTIFUNCTION))
				break;
		}
	}
	report_info("bus 0: %d functions", devices);
	report(bridges == 1 && at_zero == 1, "bus 0 has one host bridge, at 00:00.0 (%d)", bridges);
	report((pci_read(0, 0, 1, 0) & 0xffff) == 0xffff, "absent function 00:00.1 reads 0xffff");
	report((pci_read(1, 0, 0, 0) & 0xffff) == 0xffff, "absent bus 1 reads 0xffff");
	outl(0, PCI_ADDRESS);
	report(inl(PCI_DATA) == 0xffffffffu, "with the enable bit clear CONFIG_DATA floats");

	u16 cmd = pci_read(0, 0, 0, PCI_COMMAND) & 0xffff;
	pci_write16(0, 0, 0, PCI_COMMAND, cmd ^ PCI_COMMAND_SERR);
	u16 now = pci_read(0, 0, 0, PCI_COMMAND) & 0xffff;
	report(now == (cmd ^ PCI_COMMAND_SERR), "command SERR# enable is writable (%x -> %x)", cmd, now);
	pci_write16(0, 0, 0, PCI_COMMAND, cmd);
	pci_write16(0, 0, 0, 0, 0);
	report(pci_read(0, 0, 0, 0) == id, "the vendor ID is read-only");
	report_prefix_pop();

	report_prefix_push("reset-control");
	report(inb(RESET_CONTROL) == 0, "0xCF9 reads 0");
	outb(RC_SYSTEM_RESET, RESET_CONTROL);
	report(inb(RESET_CONTROL) == RC_SYSTEM_RESET, "hard-reset select alone reads back, no reset");
	outb(0, RESET_CONTROL);
	report_prefix_pop();
}

/* ---- port 0x61 and the PM timer ---- */

/* Rates are measured against the TSC with every device access bracketed by TSC reads, so
 * each interval is known to lie between a shortest and a longest possible length. A host
 * preemption widens that span instead of skewing the result; the tightest of several tries
 * is used (Linux's quick PIT calibration works the same way), and the rate check accepts
 * what the span allows, so a loaded host cannot fail it while a wrong rate still does. */
#define PIT_WINDOWS_PER_SEC 20 /* a 50 ms countdown */
#define TRIES 20
#define POLL_LIMIT (2 * SPIN_LIMIT)

struct span {
	u64 shortest, longest; /* TSC cycles; longest 0: nothing measured */
};

static bool tight(struct span s) { return s.longest - s.shortest < s.shortest / 200; }

/* The better of two measurements: the narrower span. */
static struct span tighter(struct span best, struct span s)
{
	if (!best.longest || (s.longest && s.longest - s.shortest < best.longest - best.shortest))
		return s;
	return best;
}

/* A channel 2 mode 0 countdown of 50 ms, gate on, speaker off, timed by OUT2 in port 0x61:
 * the TSC cycles it took. longest 0: OUT2 never rose. */
static struct span pit_window(bool *low_while_counting)
{
	u16 count = PIT_HZ / PIT_WINDOWS_PER_SEC;
	outb((inb(PORT61) & ~PORT61_SPEAKER) | PORT61_GATE2, PORT61);
	outb(PIT_CH2_MODE0_LOHI, PIT_CONTROL);
	outb(count & 0xff, PIT_CH2);
	u64 s0 = rdtsc();
	outb(count >> 8, PIT_CH2); /* counting starts with the high byte */
	u64 s1 = rdtsc();
	*low_while_counting = !(inb(PORT61) & PORT61_OUT2);
	u64 prev_before = s1;
	for (int i = 0; i < POLL_LIMIT; i++) {
		u64 before = rdtsc();
		bool high = inb(PORT61) & PORT61_OUT2;
		u64 after = rdtsc();
		/* OUT2 rose after the previous (low) read began and before this one ended;
		 * counting began between s0 and s1. */
		if (high)
			return (struct span){ prev_before - s1, after - s0 };
		prev_before = before;
	}
	return (struct span){ 0, 0 };
}

/* n / d, saturating when the quotient does not fit 32 bits (no libgcc for 64-bit
 * division; DIV would raise #DE). */
static u32 div64_32(u64 n, u32 d)
{
	if (!d || (n >> 32) >= d)
		return 0xffffffffu;
	u32 q, r;
	asm("divl %4" : "=a"(q), "=d"(r) : "a"((u32)n), "d"((u32)(n >> 32)), "rm"(d));
	return q;
}

static u32 pm_timer(const struct acpi_pm *pm) { return inl(pm->pm_tmr); }

/* PM timer ticks over at least `cycles` TSC cycles; *span gets the interval's length. */
static u32 pm_ticks(const struct acpi_pm *pm, u64 cycles, struct span *span)
{
	u64 b0 = rdtsc();
	u32 p0 = pm_timer(pm);
	u64 a0 = rdtsc();
	while (rdtsc() - a0 < cycles)
		;
	u64 b1 = rdtsc();
	u32 p1 = pm_timer(pm);
	u64 a1 = rdtsc();
	*span = (struct span){ b1 - a0, a1 - b0 };
	return (p1 - p0) & 0xffffff;
}

static void test_timers(void)
{
	report_prefix_push("port61");
	outb((inb(PORT61) & ~PORT61_SPEAKER) | PORT61_GATE2, PORT61);
	report((inb(PORT61) & (PORT61_GATE2 | PORT61_SPEAKER)) == PORT61_GATE2,
	       "gate and speaker bits read back");
	bool low = true;
	struct span pit = { 0, 0 };
	for (int try = 0; try < TRIES && !tight(pit); try++) {
		bool l = false;
		struct span w = pit_window(&l);
		low = low && l;
		if (!w.longest)
			break;
		pit = tighter(pit, w);
	}
	report(low, "OUT2 low while a mode 0 count runs");
	report(pit.longest != 0, "OUT2 rises when the count ends");
	outb(inb(PORT61) & ~(PORT61_GATE2 | PORT61_SPEAKER), PORT61);
	report_prefix_pop();

	report_prefix_push("pm-timer");
	struct acpi_pm pm = acpi_pm_find();
	report_info("PM timer at %x (%s)", pm.pm_tmr,
		    pm.from_fadt ? "from the FADT" : "no FADT: the SeaBIOS PM base");
	report(pm.pm_tmr == PM_BASE_SEABIOS + 8, "at 0x608");
	bool narrow = true, monotonic = true;
	u32 prev = pm_timer(&pm);
	for (int i = 0; i < 1000; i++) {
		u32 v = pm_timer(&pm);
		narrow = narrow && v <= 0xffffff;
		monotonic = monotonic && ((v - prev) & 0xffffff) < 0x800000;
		prev = v;
	}
	report(narrow, "24 bits wide: the top byte reads 0");
	report(monotonic, "monotonic over 1000 reads");

	/* rate = ticks / (pm cycles / TSC Hz), TSC Hz = pit cycles * 20: slowest and fastest
	 * rates the spans allow. */
	struct span pmw = { 0, 0 };
	u32 ticks = 0;
	for (int try = 0; try < TRIES && pit.longest && !tight(pmw); try++) {
		struct span w;
		u32 t = pm_ticks(&pm, pit.shortest, &w);
		if (tighter(pmw, w).longest == w.longest) {
			pmw = w;
			ticks = t;
		}
	}
	u64 scaled = (u64)ticks * PIT_WINDOWS_PER_SEC;
	u32 slowest = div64_32(scaled * pit.shortest, (u32)pmw.longest);
	u32 fastest = div64_32(scaled * pit.longest, (u32)pmw.shortest);
	report_info("PM timer %u-%u Hz against a TSC of %u-%u kHz", slowest, fastest,
		    (u32)pit.shortest / (1000 / PIT_WINDOWS_PER_SEC),
		    (u32)pit.longest / (1000 / PIT_WINDOWS_PER_SEC));
	report(pmw.longest && slowest < PM_TIMER_HZ / 100 * 105 && fastest > PM_TIMER_HZ / 100 * 95,
	       "counts at 3.579545 MHz against the TSC, within 5%%");
	report_prefix_pop();
}

static void reset_machine(void)
{
	if (cmdline_has(RESET_I8042)) {
		printf("resetting through the i8042 (pulse 0x%x)\n", I8042_PULSE_RESET);
		i8042_command(I8042_PULSE_RESET);
	} else if (cmdline_has(RESET_CF9)) {
		printf("resetting through 0xCF9\n");
		outb(RC_SYSTEM_RESET, RESET_CONTROL);
		outb(RC_SYSTEM_RESET | RC_RESET_CPU, RESET_CONTROL);
	} else if (cmdline_has(RESET_PORT92)) {
		printf("resetting through port 0x92\n");
		outb(inb(PORT92) | PORT92_RESET, PORT92);
	} else {
		return;
	}
	report(false, "reset: the machine still runs after the reset write");
	exit(report_summary());
}

int main(u32 magic, const void *mbi)
{
	reset_machine();
	test_i8042();
	test_port92();
	test_cga();
	test_pci();
	test_timers();
	return report_summary();
}
