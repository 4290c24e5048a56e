/* IDE/ATA primary channel: IDENTIFY, LBA28/LBA48/CHS sector reads and writes by polling and IRQ 14, READ/WRITE MULTIPLE, 32-bit data transfers, SRST and nIEN, out-of-range sectors, master and slave */
#include "guest.h"

/* The runner gives the drives' sizes on the command line: hda-sectors=N hdb-sectors=N (an
 * absent hdb-sectors means no slave). The images hold the pattern of
 * guests/src/disk_image.rs in their first 4 MiB and zeros beyond. */
#define ATA_DATA 0x1f0
#define ATA_ERROR 0x1f1
#define ATA_FEATURES 0x1f1
#define ATA_COUNT 0x1f2
#define ATA_LBA_LOW 0x1f3
#define ATA_LBA_MID 0x1f4
#define ATA_LBA_HIGH 0x1f5
#define ATA_DEVICE 0x1f6
#define ATA_STATUS 0x1f7
#define ATA_COMMAND 0x1f7
#define ATA_CTRL 0x3f6 /* alternate status (read) / device control (write) */
#define ATA_IRQ 14

#define ST_BSY 0x80
#define ST_DRDY 0x40
#define ST_DRQ 0x08
#define ST_ERR 0x01
#define ST_MASK (ST_BSY | ST_DRDY | ST_DRQ | ST_ERR)
#define ER_ABRT 0x04
#define ER_IDNF 0x10
#define CTL_NIEN 0x02
#define CTL_SRST 0x04
#define CTL_HOB 0x80
#define DEV_LBA 0x40
#define DEV_SLAVE 0x10

#define CMD_READ 0x20
#define CMD_READ_EXT 0x24
#define CMD_READ_MULTIPLE 0xc4
#define CMD_WRITE 0x30
#define CMD_WRITE_EXT 0x34
#define CMD_WRITE_MULTIPLE 0xc5
#define CMD_SET_MULTIPLE 0xc6
#define CMD_FLUSH 0xe7
#define CMD_IDENTIFY 0xec

#define SECTOR 512
#define PATTERN_SECTORS (4u << 20) / SECTOR
/* How long a wait for the drive may take, in TSC cycles (a few seconds at any rate this
 * runs at): QEMU completes some commands (FLUSH CACHE) on a host thread, which a loaded
 * host can delay for much longer than a fixed number of status reads would cover. */
#define WAIT_CYCLES 10000000000ull

static bool waited_out(u64 start)
{
	return rdtsc() - start > WAIT_CYCLES;
}
/* QEMU reports ABRT where ATA gives IDNF for a sector beyond the medium. */
#define QUIRK_RANGE_ABRT "quirk-ide-range-abrt"
/* QEMU keeps the IDENTIFY data it built first: word 59 misses a later SET MULTIPLE MODE. */
#define QUIRK_IDENTIFY_CACHED "quirk-ide-identify-cached"

static u8 buf[16 * SECTOR] __attribute__((aligned(4)));
static u16 ident[256];
static volatile u32 irq_count;
static volatile u8 irq_status;

static u8 pattern(int disk, u32 lba, u32 k)
{
	if (k < 4)
		return (u8)(lba >> (8 * k));
	if (k == 4)
		return (u8)disk;
	return (u8)(k + 3 * lba + 0x40 * disk);
}

static bool matches_pattern(const u8 *p, int disk, u32 lba, u32 sectors)
{
	for (u32 s = 0; s < sectors; s++)
		for (u32 k = 0; k < SECTOR; k++)
			if (p[s * SECTOR + k] != pattern(disk, lba + s, k))
				return false;
	return true;
}

static u8 written(u32 seed, u32 i) { return (u8)(i * 13 + seed); }

static bool matches_written(const u8 *p, u32 seed, u32 bytes)
{
	for (u32 i = 0; i < bytes; i++)
		if (p[i] != written(seed, i))
			return false;
	return true;
}

static bool all_zero(const u8 *p, u32 bytes)
{
	for (u32 i = 0; i < bytes; i++)
		if (p[i])
			return false;
	return true;
}

static void insw(u16 port, void *dst, u32 words)
{
	asm volatile("cld; rep insw" : "+D"(dst), "+c"(words) : "d"(port) : "memory");
}

static void insl(u16 port, void *dst, u32 dwords)
{
	asm volatile("cld; rep insl" : "+D"(dst), "+c"(dwords) : "d"(port) : "memory");
}

static void outsw(u16 port, const void *src, u32 words)
{
	asm volatile("cld; rep outsw" : "+S"(src), "+c"(words) : "d"(port) : "memory");
}

static void outsl(u16 port, const void *src, u32 dwords)
{
	asm volatile("cld; rep outsl" : "+S"(src), "+c"(dwords) : "d"(port) : "memory");
}

/* The value of `key=N` on the command line, 0 when absent. */
static u64 cmdline_number(const char *key)
{
	unsigned long n = strlen(key);
	for (const char *p = cmdline(); *p; p++) {
		if ((p == cmdline() || p[-1] == ' ') && !strncmp(p, key, n) && p[n] == '=') {
			u64 v = 0;
			for (p += n + 1; *p >= '0' && *p <= '9'; p++)
				v = v * 10 + (u64)(*p - '0');
			return v;
		}
	}
	return 0;
}

static void irq_handler(struct frame *f)
{
	(void)f;
	irq_status = inb(ATA_STATUS); /* acknowledges the drive's interrupt */
	irq_count++;
	pic_eoi(ATA_IRQ);
}

/* The 400 ns the drive may take to show BSY after a command: four alternate status reads. */
static void ata_delay(void)
{
	for (int i = 0; i < 4; i++)
		inb(ATA_CTRL);
}

/* Alternate status once BSY is clear (0xff if it never clears). */
static u8 wait_idle(void)
{
	for (u64 t0 = rdtsc(); !waited_out(t0);) {
		u8 s = inb(ATA_CTRL);
		if (!(s & ST_BSY))
			return s;
	}
	return 0xff;
}

/* Alternate status once the drive wants data moved or failed (0xff on a timeout). */
static u8 wait_drq(void)
{
	for (u64 t0 = rdtsc(); !waited_out(t0);) {
		u8 s = inb(ATA_CTRL);
		if (!(s & ST_BSY) && (s & (ST_DRQ | ST_ERR)))
			return s;
	}
	return 0xff;
}

/* IRQ 14 through the IOAPIC: the vector its redirection entry names. */
#define IOAPIC_VECTOR 0x50

static volatile u32 ioapic_count;

static void ioapic_handler(struct frame *f)
{
	(void)f;
	irq_status = inb(ATA_STATUS);
	ioapic_count++;
	lapic_eoi();
}

static bool wait_ioapic_irq(u32 count)
{
	for (u64 t0 = rdtsc(); !waited_out(t0) && ioapic_count < count;)
		inb(ATA_CTRL);
	return ioapic_count >= count;
}

static bool wait_irq(u32 count)
{
	for (u64 t0 = rdtsc(); !waited_out(t0) && irq_count < count;)
		inb(ATA_CTRL);
	return irq_count >= count;
}

static void select_drive(int slave)
{
	outb(0xa0 | (slave ? DEV_SLAVE : 0), ATA_DEVICE);
	ata_delay();
}

static void command(u8 cmd)
{
	outb(cmd, ATA_COMMAND);
	ata_delay();
}

static void lba28(int slave, u8 cmd, u32 lba, u8 count)
{
	outb(0xe0 | (slave ? DEV_SLAVE : 0) | ((lba >> 24) & 0x0f), ATA_DEVICE);
	outb(count, ATA_COUNT);
	outb((u8)lba, ATA_LBA_LOW);
	outb((u8)(lba >> 8), ATA_LBA_MID);
	outb((u8)(lba >> 16), ATA_LBA_HIGH);
	command(cmd);
}

/* The registers of an LBA48 command: each written twice, high-order byte first. */
static void lba48_registers(int slave, u64 lba, u16 count)
{
	outb(DEV_LBA | (slave ? DEV_SLAVE : 0), ATA_DEVICE);
	outb((u8)(count >> 8), ATA_COUNT);
	outb((u8)(lba >> 24), ATA_LBA_LOW);
	outb((u8)(lba >> 32), ATA_LBA_MID);
	outb((u8)(lba >> 40), ATA_LBA_HIGH);
	outb((u8)count, ATA_COUNT);
	outb((u8)lba, ATA_LBA_LOW);
	outb((u8)(lba >> 8), ATA_LBA_MID);
	outb((u8)(lba >> 16), ATA_LBA_HIGH);
}

/* Reads `sectors` one DRQ block of `per_block` at a time by polling; false if a block did
 * not come. */
static bool read_blocks(void *dst, u32 sectors, u32 per_block, bool dwords)
{
	u8 *p = dst;
	while (sectors) {
		u32 n = sectors < per_block ? sectors : per_block;
		if ((wait_drq() & ST_MASK) != (ST_DRDY | ST_DRQ))
			return false;
		if (dwords)
			insl(ATA_DATA, p, n * SECTOR / 4);
		else
			insw(ATA_DATA, p, n * SECTOR / 2);
		p += n * SECTOR;
		sectors -= n;
	}
	return (wait_idle() & ST_MASK) == ST_DRDY;
}

static bool write_blocks(const void *src, u32 sectors, u32 per_block, bool dwords)
{
	const u8 *p = src;
	while (sectors) {
		u32 n = sectors < per_block ? sectors : per_block;
		if ((wait_drq() & ST_MASK) != (ST_DRDY | ST_DRQ))
			return false;
		if (dwords)
			outsl(ATA_DATA, p, n * SECTOR / 4);
		else
			outsw(ATA_DATA, p, n * SECTOR / 2);
		p += n * SECTOR;
		sectors -= n;
	}
	return (wait_idle() & ST_MASK) == ST_DRDY;
}

static bool identify(int slave)
{
	select_drive(slave);
	command(CMD_IDENTIFY);
	if ((wait_drq() & ST_MASK) != (ST_DRDY | ST_DRQ))
		return false;
	insw(ATA_DATA, ident, 256);
	return (wait_idle() & ST_MASK) == ST_DRDY;
}

static u64 words_u64(int first, int count)
{
	u64 v = 0;
	for (int i = count - 1; i >= 0; i--)
		v = (v << 16) | ident[first + i];
	return v;
}

static void test_identify(int slave, u64 sectors)
{
	report_prefix_push(slave ? "identify slave" : "identify master");
	bool ok = identify(slave);
	report(ok, "IDENTIFY DEVICE gives 256 words, DRQ then ready");
	report(ident[27] != 0 && ident[27] != 0x2020, "the model string is not empty");
	report((ident[0] & 0x8000) == 0, "an ATA device");
	report(ident[49] & (1 << 9), "LBA supported");
	report(ident[83] & (1 << 10), "48-bit addresses supported");
	u64 lba28 = sectors > 0x0fffffff ? 0x0fffffff : sectors;
	report(words_u64(60, 2) == lba28, "LBA28 capacity (words 60-61) is %u sectors",
	       (u32)lba28);
	report(words_u64(100, 4) == sectors, "LBA48 capacity (words 100-103) matches the image");
	u32 cylinders = (sectors >> 32) || (u32)sectors / 1008 > 16383 ? 16383 : (u32)sectors / 1008;
	if (cylinders < 2)
		cylinders = 2;
	report(ident[1] == cylinders && ident[3] == 16 && ident[6] == 63,
	       "default geometry: %u cylinders, 16 heads, 63 sectors", cylinders);
	report((ident[47] & 0xff) >= 1 && (ident[47] & 0xff) <= 16, "READ/WRITE MULTIPLE up to %u",
	       ident[47] & 0xff);
	report_prefix_pop();
}

static void test_read_polling(u64 sectors)
{
	report_prefix_push("read");
	outb(CTL_NIEN, ATA_CTRL);
	lba28(0, CMD_READ, 5, 1);
	bool ok = read_blocks(buf, 1, 1, false);
	report(ok && matches_pattern(buf, 0, 5, 1), "[lba28 poll] sector 5 by READ SECTORS");
	lba28(0, CMD_READ, 7, 3);
	ok = read_blocks(buf, 3, 1, true);
	report(ok && matches_pattern(buf, 0, 7, 3), "[lba28 poll rep insl] sectors 7-9, 32-bit");
	u32 last = (u32)(sectors < PATTERN_SECTORS ? sectors : PATTERN_SECTORS) - 1;
	lba28(0, CMD_READ, last, 1);
	ok = read_blocks(buf, 1, 1, false);
	report(ok && matches_pattern(buf, 0, last, 1), "[lba28 poll] the last patterned sector");
	/* Cylinder 0, head 1, sector 1 of the default 16 x 63 translation is LBA 63. */
	outb(0xa0 | 1, ATA_DEVICE);
	outb(1, ATA_COUNT);
	outb(1, ATA_LBA_LOW);
	outb(0, ATA_LBA_MID);
	outb(0, ATA_LBA_HIGH);
	command(CMD_READ);
	ok = read_blocks(buf, 1, 1, false);
	report(ok && matches_pattern(buf, 0, 63, 1), "[chs] C/H/S 0/1/1 is sector 63");
	u16 w;
	asm volatile("inw %1, %0" : "=a"(w) : "Nd"((u16)ATA_DATA));
	report(w == 0, "a data read without DRQ reads 0");
	report_prefix_pop();
}

static void test_read_irq(void)
{
	report_prefix_push("irq");
	pic_unmask(ATA_IRQ);
	sti();
	outb(0, ATA_CTRL);
	u32 before = irq_count;
	lba28(0, CMD_READ, 10, 2);
	bool first = wait_irq(before + 1);
	report(first && (irq_status & ST_MASK) == (ST_DRDY | ST_DRQ),
	       "[lba28] IRQ 14 with the first sector ready");
	insw(ATA_DATA, buf, SECTOR / 2);
	bool second = wait_irq(before + 2);
	report(second, "IRQ 14 again for the second sector");
	insw(ATA_DATA, buf + SECTOR, SECTOR / 2);
	report(matches_pattern(buf, 0, 10, 2), "the interrupt-driven data matches");
	report((wait_idle() & ST_MASK) == ST_DRDY && irq_count == before + 2,
	       "no DRQ and no interrupt after the last sector");

	/* nIEN: the command completes, the line stays quiet. */
	outb(CTL_NIEN, ATA_CTRL);
	before = irq_count;
	lba28(0, CMD_READ, 12, 1);
	bool ok = read_blocks(buf, 1, 1, false);
	inb(ATA_STATUS); /* acknowledge before interrupts are enabled again */
	outb(0, ATA_CTRL);
	for (int i = 0; i < 1000; i++)
		inb(ATA_CTRL);
	report(ok && matches_pattern(buf, 0, 12, 1) && irq_count == before,
	       "with nIEN set a read completes without an interrupt");

	/* Writes interrupt after every block, the last one included. */
	for (u32 i = 0; i < 2 * SECTOR; i++)
		buf[i] = written(1, i);
	before = irq_count;
	lba28(0, CMD_WRITE, 100, 2);
	ok = (wait_drq() & ST_MASK) == (ST_DRDY | ST_DRQ) && irq_count == before;
	outsw(ATA_DATA, buf, SECTOR / 2);
	ok = ok && wait_irq(before + 1);
	outsl(ATA_DATA, buf + SECTOR, SECTOR / 4);
	ok = ok && wait_irq(before + 2);
	report(ok && (irq_status & ST_MASK) == ST_DRDY,
	       "[lba28 rep outsl] WRITE SECTORS: one interrupt per written sector");
	cli();
	pic_mask(ATA_IRQ);
	outb(CTL_NIEN, ATA_CTRL);
	memset(buf, 0, 2 * SECTOR);
	lba28(0, CMD_READ, 100, 2);
	ok = read_blocks(buf, 2, 1, false);
	report(ok && matches_written(buf, 1, 2 * SECTOR), "the written sectors read back");
	command(CMD_FLUSH);
	report((wait_idle() & ST_MASK) == ST_DRDY, "FLUSH CACHE completes");
	report_prefix_pop();
}

static void test_multiple(void)
{
	report_prefix_push("multiple");
	select_drive(0);
	outb(8, ATA_COUNT);
	command(CMD_SET_MULTIPLE);
	report((wait_idle() & ST_MASK) == ST_DRDY, "SET MULTIPLE MODE 8");
	if (cmdline_has(QUIRK_IDENTIFY_CACHED))
		report_skip("IDENTIFY word 59 shows 8 sectors: skipped by " QUIRK_IDENTIFY_CACHED);
	else
		report(identify(0) && ident[59] == (0x100 | 8), "IDENTIFY word 59 shows 8 sectors");
	lba28(0, CMD_READ_MULTIPLE, 200, 12);
	bool ok = read_blocks(buf, 12, 8, true);
	report(ok && matches_pattern(buf, 0, 200, 12), "READ MULTIPLE of 12 sectors in blocks of 8 and 4");
	for (u32 i = 0; i < 12 * SECTOR; i++)
		buf[i] = written(2, i);
	lba28(0, CMD_WRITE_MULTIPLE, 300, 12);
	ok = write_blocks(buf, 12, 8, false);
	memset(buf, 0, 12 * SECTOR);
	lba28(0, CMD_READ, 300, 12);
	ok = read_blocks(buf, 12, 1, false) && ok;
	report(ok && matches_written(buf, 2, 12 * SECTOR), "WRITE MULTIPLE, read back");
	outb(3, ATA_COUNT);
	command(CMD_SET_MULTIPLE);
	u8 s = wait_idle();
	report((s & ST_MASK) == (ST_DRDY | ST_ERR) && inb(ATA_ERROR) == ER_ABRT,
	       "SET MULTIPLE MODE 3 (not a power of two) aborts");
	report_prefix_pop();
}

static void test_lba48(int slave, u64 sectors)
{
	report_prefix_push(slave ? "lba48 slave" : "lba48 master");
	lba48_registers(slave, 5, 1);
	outb(CTL_NIEN | CTL_HOB, ATA_CTRL);
	u8 hob_count = inb(ATA_COUNT), hob_low = inb(ATA_LBA_LOW);
	outb(CTL_NIEN, ATA_CTRL);
	u8 count = inb(ATA_COUNT), low = inb(ATA_LBA_LOW);
	report(hob_count == 0 && hob_low == 0 && count == 1 && low == 5,
	       "HOB reads back the high-order bytes");
	command(CMD_READ_EXT);
	bool ok = read_blocks(buf, 1, 1, false);
	report(ok && matches_pattern(buf, slave, 5, 1), "READ SECTORS EXT of sector 5");
	if (sectors <= (1u << 28) + 64) {
		report_skip("the image is not larger than 2^28 sectors");
		report_prefix_pop();
		return;
	}
	u64 far = (1ull << 28) + 5;
	lba48_registers(slave, far, 1);
	command(CMD_READ_EXT);
	ok = read_blocks(buf, 1, 1, true);
	report(ok && all_zero(buf, SECTOR), "[above 2^28] READ SECTORS EXT of an unwritten sector");
	for (u32 i = 0; i < 2 * SECTOR; i++)
		buf[i] = written(3, i);
	lba48_registers(slave, far, 2);
	command(CMD_WRITE_EXT);
	ok = write_blocks(buf, 2, 1, true);
	report(ok, "[above 2^28] WRITE SECTORS EXT of two sectors");
	memset(buf, 0, 2 * SECTOR);
	lba48_registers(slave, far, 2);
	command(CMD_READ_EXT);
	ok = read_blocks(buf, 2, 1, false);
	report(ok && matches_written(buf, 3, 2 * SECTOR), "[above 2^28] they read back");
	lba28(slave, CMD_READ, 5, 1);
	ok = read_blocks(buf, 1, 1, false);
	report(ok && matches_pattern(buf, slave, 5, 1),
	       "sector 5 by LBA28 is untouched (no 28-bit wrap)");
	report_prefix_pop();
}

static void test_out_of_range(u64 sectors)
{
	report_prefix_push("range");
	u32 past = sectors > 0x0fffffff ? 0x0fffffff : (u32)sectors;
	if (sectors > 0x0fffffff) {
		report_skip("the master fills the LBA28 space");
		report_prefix_pop();
		return;
	}
	lba28(0, CMD_READ, past, 1);
	u8 s = wait_idle();
	u8 e = inb(ATA_ERROR);
	report((s & ST_MASK) == (ST_DRDY | ST_ERR), "a sector past the end: ERR, no DRQ");
	if (cmdline_has(QUIRK_RANGE_ABRT))
		report_skip("the error register says IDNF: skipped by " QUIRK_RANGE_ABRT);
	else
		report(e == ER_IDNF, "the error register says IDNF");
	lba28(0, CMD_READ, 1, 1);
	bool ok = read_blocks(buf, 1, 1, false);
	report(ok && matches_pattern(buf, 0, 1, 1), "the next command succeeds");
	report_prefix_pop();
}

static void test_reset(void)
{
	report_prefix_push("srst");
	select_drive(0);
	outb(CTL_SRST | CTL_NIEN, ATA_CTRL);
	for (int i = 0; i < 100; i++)
		inb(ATA_CTRL);
	outb(CTL_NIEN, ATA_CTRL);
	u8 s = wait_idle();
	report((s & ST_MASK) == ST_DRDY, "the master is ready after SRST");
	report(inb(ATA_ERROR) == 0x01, "diagnostic code 01h: passed");
	report(inb(ATA_COUNT) == 1 && inb(ATA_LBA_LOW) == 1 && inb(ATA_LBA_MID) == 0 &&
		       inb(ATA_LBA_HIGH) == 0,
	       "the ATA signature 01 01 00 00");
	report((inb(ATA_DEVICE) & DEV_SLAVE) == 0, "device 0 is selected");
	lba28(0, CMD_READ, 2, 1);
	bool ok = read_blocks(buf, 1, 1, false);
	report(ok && matches_pattern(buf, 0, 2, 1), "a read after the reset");
	report_prefix_pop();
}

static void test_slave(u64 sectors)
{
	report_prefix_push("slave");
	if (!sectors) {
		select_drive(1);
		report(inb(ATA_CTRL) == 0 && inb(ATA_STATUS) == 0, "an absent slave's status reads 0");
		command(CMD_IDENTIFY);
		report(inb(ATA_CTRL) == 0, "IDENTIFY to the absent slave goes nowhere");
		select_drive(0);
		report((inb(ATA_STATUS) & ST_MASK) == ST_DRDY, "the master still answers");
		report_prefix_pop();
		return;
	}
	lba28(1, CMD_READ, 3, 2);
	bool ok = read_blocks(buf, 2, 1, false);
	report(ok && matches_pattern(buf, 1, 3, 2), "[lba28] sectors 3-4 of the slave's image");
	select_drive(0);
	report((inb(ATA_ERROR) == 0) && (inb(ATA_STATUS) & ST_MASK) == ST_DRDY,
	       "the master's registers are its own");
	report_prefix_pop();
}

/* IRQ 14 routed through the IOAPIC's pin 14 with the 8259 input masked, as an APIC
 * kernel runs the disk; then the pin masked at the IOAPIC. */
static void test_read_ioapic(void)
{
	report_prefix_push("ioapic");
	apic_vectors_install();
	handle_exception(IOAPIC_VECTOR, ioapic_handler);
	pic_mask(ATA_IRQ);
	ioapic_route(ATA_IRQ, IOAPIC_VECTOR, 0);
	outb(0, ATA_CTRL);
	sti();
	u32 before = ioapic_count;
	lba28(0, CMD_READ, 20, 1);
	bool ok = wait_ioapic_irq(before + 1);
	report(ok && (irq_status & ST_MASK) == (ST_DRDY | ST_DRQ),
	       "IRQ 14 arrives through IOAPIC pin 14 with the 8259 masked");
	insw(ATA_DATA, buf, SECTOR / 2);
	report(matches_pattern(buf, 0, 20, 1), "the data read on that interrupt matches");

	ioapic_route(ATA_IRQ, IOAPIC_VECTOR, IOAPIC_MASKED);
	before = ioapic_count;
	lba28(0, CMD_READ, 21, 1);
	ok = read_blocks(buf, 1, 1, false);
	for (int i = 0; i < 1000; i++)
		inb(ATA_CTRL);
	report(ok && matches_pattern(buf, 0, 21, 1) && ioapic_count == before,
	       "with the pin masked at the IOAPIC the read completes without an interrupt");
	cli();
	inb(ATA_STATUS);
	outb(CTL_NIEN, ATA_CTRL);
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	(void)magic;
	(void)mbi;
	u64 hda = cmdline_number("hda-sectors"), hdb = cmdline_number("hdb-sectors");
	handle_exception(IRQ_BASE + ATA_IRQ, irq_handler);
	report_prefix_push("ide");
	outb(CTL_NIEN, ATA_CTRL);
	select_drive(0);
	u8 s = inb(ATA_STATUS);
	if (!hda || s == 0 || s == 0xff) {
		report_skip("no master drive (status %02x) or no hda-sectors= on the command line", s);
		return report_summary();
	}
	test_identify(0, hda);
	if (hdb)
		test_identify(1, hdb);
	test_read_polling(hda);
	test_read_irq();
	test_read_ioapic();
	test_multiple();
	test_lba48(0, hda);
	if (hdb)
		test_lba48(1, hdb);
	test_out_of_range(hda);
	test_slave(hdb);
	test_reset();
	report_prefix_pop();
	return report_summary();
}
