/* Firmware data a kernel finds at boot: BIOS data area, MP table, ACPI tables, fw_cfg, the Multiboot memory map and command line */
#include "guest.h"

/* Only properties are checked: addresses and OEM strings differ between SeaBIOS (under QEMU)
 * and the monitor. Tables are found the way kernels look for them: the MP floating pointer
 * as xv6 and the MP specification 1.4 §4 say, the RSDP as Linux and ACPI §5.2.5.1 say. */

#define BDA_COM1 0x400
#define BDA_EBDA_SEGMENT 0x40e
#define BDA_BASE_MEMORY_KIB 0x413
#define BIOS_ROM 0xf0000
#define BIOS_AREA 0xe0000
#define BIOS_END 0x100000
#define LAPIC_BASE 0xfee00000u
#define IOAPIC_BASE 0xfec00000u
#define PIT_IRQ 0

#define FW_CFG_PORT_SEL 0x510
#define FW_CFG_PORT_DATA 0x511
#define FW_CFG_SIGNATURE 0x0000
#define FW_CFG_ID 0x0001
#define FW_CFG_RAM_SIZE 0x0003
#define FW_CFG_NB_CPUS 0x0005
#define FW_CFG_MAX_CPUS 0x000f
#define FW_CFG_FILE_DIR 0x0019
#define FW_CFG_ID_TRADITIONAL (1u << 0)
#define FW_CFG_UNUSED_KEY 0x3fff

#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71
#define CMOS_MEM_ABOVE_16M 0x34

#define MBI_FLAG_MEM (1u << 0)
#define MBI_FLAG_CMDLINE (1u << 2)
#define MBI_FLAG_MMAP (1u << 6)
#define E820_RAM 1

#define MP_PROCESSOR 0
#define MP_BUS 1
#define MP_IOAPIC 2
#define MP_IOINT 3
#define MP_LINT 4
#define MP_INT 0
#define MP_NMI 1
#define MP_EXTINT 3

#define MADT_LAPIC 0
#define MADT_IOAPIC 1
#define MADT_ISO 2
#define MADT_PCAT_COMPAT 1
#define ISO_ACTIVE_HIGH 1
#define ISO_LEVEL (3 << 2)

struct mp_floating {
	char signature[4];
	u32 config;
	u8 length, revision, checksum, feature[5];
} __attribute__((packed));

struct mp_config {
	char signature[4];
	u16 length;
	u8 revision, checksum;
	char oem[8], product[12];
	u32 oem_table;
	u16 oem_table_size, entries;
	u32 lapic;
	u16 ext_length;
	u8 ext_checksum, reserved;
} __attribute__((packed));

struct rsdp {
	char signature[8];
	u8 checksum;
	char oem[6];
	u8 revision;
	u32 rsdt;
	u32 length;
	u64 xsdt;
	u8 ext_checksum, reserved[3];
} __attribute__((packed));

struct sdt {
	char signature[4];
	u32 length;
	u8 revision, checksum;
	char oem[6], oem_table[8];
	u32 oem_revision, creator, creator_revision;
} __attribute__((packed));

struct fadt {
	struct sdt h;
	u32 facs, dsdt;
	u8 int_model, pm_profile;
	u16 sci_int;
	u32 smi_cmd;
	u8 acpi_enable, acpi_disable, s4bios_req, pstate_cnt;
	u32 pm1a_evt, pm1b_evt, pm1a_cnt, pm1b_cnt, pm2_cnt, pm_tmr, gpe0, gpe1;
	u8 pm1_evt_len, pm1_cnt_len, pm2_cnt_len, pm_tmr_len;
} __attribute__((packed));

static u8 bytes_sum(const void *p, u32 len)
{
	const u8 *b = p;
	u8 s = 0;
	while (len--)
		s += *b++;
	return s;
}

/* A word of the BIOS data area. Through asm: the compiler takes addresses in the first page
 * for null-pointer arithmetic. */
static u16 bda16(u32 addr)
{
	u16 v;
	asm volatile("movw (%1), %0" : "=r"(v) : "r"(addr));
	return v;
}

/* ---- The MP floating pointer and configuration table ---- */

static const struct mp_floating *mp_scan(u32 start, u32 len)
{
	for (u32 a = start; a + sizeof(struct mp_floating) <= start + len; a += 16) {
		const struct mp_floating *f = (const void *)a;
		if (!memcmp(f->signature, "_MP_", 4) && f->length == 1 &&
		    bytes_sum(f, sizeof(*f)) == 0)
			return f;
	}
	return NULL;
}

/* MP specification §4: the EBDA's first KiB, else the last KiB of base memory; then the
 * BIOS ROM at 0xF0000–0xFFFFF. */
static const struct mp_floating *mp_search(const char **where)
{
	u32 ebda = (u32)bda16(BDA_EBDA_SEGMENT) << 4;
	const struct mp_floating *f;
	if (ebda) {
		*where = "the EBDA";
		f = mp_scan(ebda, 1024);
	} else {
		*where = "the last KiB of base memory";
		f = mp_scan(((u32)bda16(BDA_BASE_MEMORY_KIB) << 10) - 1024, 1024);
	}
	if (!f) {
		*where = "the BIOS ROM";
		f = mp_scan(BIOS_ROM, BIOS_END - BIOS_ROM);
	}
	return f;
}

/* ---- ACPI ---- */

static const struct rsdp *rsdp_scan(u32 start, u32 len)
{
	for (u32 a = start; a + 20 <= start + len; a += 16) {
		const struct rsdp *r = (const void *)a;
		if (!memcmp(r->signature, "RSD PTR ", 8) && bytes_sum(r, 20) == 0)
			return r;
	}
	return NULL;
}

/* ACPI §5.2.5.1: the EBDA's first KiB, then 0xE0000–0xFFFFF. */
static const struct rsdp *rsdp_search(const char **where)
{
	u32 ebda = (u32)bda16(BDA_EBDA_SEGMENT) << 4;
	const struct rsdp *r = NULL;
	if (ebda) {
		*where = "the EBDA";
		r = rsdp_scan(ebda, 1024);
	}
	if (!r) {
		*where = "the BIOS area";
		r = rsdp_scan(BIOS_AREA, BIOS_END - BIOS_AREA);
	}
	return r;
}

static bool sdt_valid(const struct sdt *t, const char *sig)
{
	return t && !memcmp(t->signature, sig, 4) && t->length >= sizeof(*t) &&
	       bytes_sum(t, t->length) == 0;
}

static const struct sdt *rsdt_find(const struct sdt *rsdt, const char *sig)
{
	const u32 *entry = (const u32 *)(rsdt + 1);
	u32 n = (rsdt->length - sizeof(*rsdt)) / 4;
	for (u32 i = 0; i < n; i++) {
		const struct sdt *t = (const void *)entry[i];
		if (!memcmp(t->signature, sig, 4))
			return t;
	}
	return NULL;
}

/* ---- fw_cfg ---- */

static void fw_cfg_select(u16 key) { outw(key, FW_CFG_PORT_SEL); }

static void fw_cfg_read(void *buf, u32 len)
{
	u8 *b = buf;
	while (len--)
		*b++ = inb(FW_CFG_PORT_DATA);
}

static u32 be32(const u8 *b) { return (u32)b[0] << 24 | (u32)b[1] << 16 | (u32)b[2] << 8 | b[3]; }
static u16 be16(const u8 *b) { return (u16)(b[0] << 8 | b[1]); }

/* ---- The memory map, from Multiboot and from fw_cfg's etc/e820 ---- */

struct range {
	u64 base, len;
	u32 type;
};

#define MAX_RANGES 32
static struct range mmap[MAX_RANGES];
static u32 mmap_count;

/* The type of the memory-map entry holding `addr`, 0 if none does. */
static u32 mmap_type(const struct range *map, u32 n, u64 addr)
{
	for (u32 i = 0; i < n; i++)
		if (addr >= map[i].base && addr - map[i].base < map[i].len)
			return map[i].type;
	return 0;
}

/* No byte of [base, base + len) lies in RAM the map calls usable. */
static bool mmap_not_usable(const struct range *map, u32 n, u64 base, u64 len)
{
	for (u32 i = 0; i < n; i++)
		if (map[i].type == E820_RAM && base < map[i].base + map[i].len &&
		    map[i].base < base + len)
			return false;
	return true;
}

/* The end of the highest usable range below 4 GiB. */
static u64 mmap_ram_top(const struct range *map, u32 n)
{
	u64 top = 0;
	for (u32 i = 0; i < n; i++) {
		u64 end = map[i].base + map[i].len;
		if (map[i].type == E820_RAM && end <= (1ull << 32) && end > top)
			top = end;
	}
	return top;
}

static u64 ram_size;

static void test_fw_cfg(void)
{
	u8 b[64];

	report_prefix_push("fw_cfg");
	fw_cfg_select(FW_CFG_SIGNATURE);
	fw_cfg_read(b, 5);
	report(!memcmp(b, "QEMU", 4), "signature \"QEMU\" at selector 0");
	report(b[4] == 0, "reads past the end of an item give zeros");
	fw_cfg_select(FW_CFG_ID);
	fw_cfg_read(b, 4);
	u32 id = b[0] | b[1] << 8 | b[2] << 16 | (u32)b[3] << 24;
	report(id & FW_CFG_ID_TRADITIONAL, "ID has the traditional I/O interface bit (%x)", id);
	fw_cfg_select(FW_CFG_NB_CPUS);
	fw_cfg_read(b, 2);
	u16 cpus = b[0] | b[1] << 8;
	report(cpus == 1, "one CPU (%u)", cpus);
	fw_cfg_select(FW_CFG_MAX_CPUS);
	fw_cfg_read(b, 2);
	u16 max_cpus = b[0] | b[1] << 8;
	report(max_cpus >= cpus, "max CPUs at least the CPU count (%u)", max_cpus);
	fw_cfg_select(FW_CFG_RAM_SIZE);
	fw_cfg_read(b, 8);
	memcpy(&ram_size, b, 8);
	report(ram_size >= (2u << 20) && !(ram_size & 0xfff) && ram_size <= (3ull << 30),
	       "RAM size is whole pages, 2 MiB to 3 GiB (%u MiB)", (u32)(ram_size >> 20));
	fw_cfg_select(FW_CFG_UNUSED_KEY);
	fw_cfg_read(b, 8);
	report(!memcmp(b, "\0\0\0\0\0\0\0\0", 8), "an unused selector reads zeros");

	fw_cfg_select(FW_CFG_FILE_DIR);
	fw_cfg_read(b, 4);
	u32 files = be32(b);
	report(files >= 1 && files < 256, "file directory lists %u files", files);
	u32 e820_size = 0;
	u16 e820_key = 0;
	for (u32 i = 0; i < files && i < 256; i++) {
		fw_cfg_read(b, 64);
		b[63] = 0;
		report_info("file %s: %u bytes at selector %x", (char *)b + 8, be32(b), be16(b + 4));
		if (!strncmp((char *)b + 8, "etc/e820", 56)) {
			e820_size = be32(b);
			e820_key = be16(b + 4);
		}
	}
	report(e820_key >= 0x20 && e820_size && e820_size % 20 == 0,
	       "etc/e820: 20-byte entries at a file selector");
	struct range e820[MAX_RANGES];
	u32 n = 0;
	fw_cfg_select(e820_key);
	for (; n < e820_size / 20 && n < MAX_RANGES; n++) {
		fw_cfg_read(b, 20);
		memcpy(&e820[n].base, b, 8);
		memcpy(&e820[n].len, b + 8, 8);
		memcpy(&e820[n].type, b + 16, 4);
		report_info("e820 %x_%x + %x_%x type %u", (u32)(e820[n].base >> 32), (u32)e820[n].base,
			    (u32)(e820[n].len >> 32), (u32)e820[n].len, e820[n].type);
	}
	report(mmap_type(e820, n, 0) == E820_RAM && mmap_type(e820, n, 1 << 20) == E820_RAM,
	       "etc/e820: RAM at 0 and at 1 MiB");
	report(mmap_ram_top(e820, n) == ram_size, "etc/e820: RAM ends at the RAM size");
	report_prefix_pop();
}

static void test_multiboot(u32 magic, const u32 *mbi)
{
	report_prefix_push("multiboot");
	bool ok = magic == 0x2badb002 && mbi;
	report(ok && (mbi[0] & MBI_FLAG_MMAP), "the boot information has a memory map");
	if (ok && (mbi[0] & MBI_FLAG_MMAP)) {
		u32 len = mbi[11], addr = mbi[12];
		bool sizes = true;
		for (u32 p = addr; p < addr + len && mmap_count < MAX_RANGES; mmap_count++) {
			const u32 *e = (const u32 *)p;
			sizes &= e[0] == 20;
			memcpy(&mmap[mmap_count].base, e + 1, 8);
			memcpy(&mmap[mmap_count].len, e + 3, 8);
			mmap[mmap_count].type = e[5];
			report_info("mmap %x_%x + %x_%x type %u", e[2], e[1], e[4], e[3], e[5]);
			p += e[0] + 4;
		}
		report(sizes && mmap_count, "memory map: %u entries of 20 bytes", mmap_count);
	}
	report(mmap_type(mmap, mmap_count, 0) == E820_RAM, "memory map: conventional memory at 0");
	report(mmap_type(mmap, mmap_count, 1 << 20) == E820_RAM, "memory map: RAM at 1 MiB");
	u32 ebda = (u32)bda16(BDA_EBDA_SEGMENT) << 4;
	report(ebda && mmap_not_usable(mmap, mmap_count, ebda, 1024),
	       "memory map: the EBDA is not usable RAM");
	report(mmap_not_usable(mmap, mmap_count, BIOS_ROM, BIOS_END - BIOS_ROM),
	       "memory map: the BIOS ROM is not usable RAM");
	report(mmap_not_usable(mmap, mmap_count, IOAPIC_BASE, 4096) &&
		       mmap_not_usable(mmap, mmap_count, LAPIC_BASE, 4096),
	       "memory map: the IOAPIC and local APIC pages are not usable RAM");
	report(mmap_ram_top(mmap, mmap_count) <= ram_size && mmap_ram_top(mmap, mmap_count) > (1 << 20),
	       "memory map: usable RAM ends within the RAM size");
	report_info("mem_lower %u KiB, mem_upper %u KiB", mbi[1], mbi[2]);
	u64 high_end = 0;
	for (u32 i = 0; i < mmap_count; i++)
		if (mmap[i].type == E820_RAM && mmap[i].base == (1 << 20))
			high_end = mmap[i].base + mmap[i].len;
	report(ok && (mbi[0] & MBI_FLAG_MEM) && ((u64)mbi[2] << 10) + (1 << 20) == high_end,
	       "mem_upper is the usable RAM from 1 MiB the memory map gives");

	report(ok && (mbi[0] & MBI_FLAG_CMDLINE), "the boot information has a command line");
	const char *line = ok && (mbi[0] & MBI_FLAG_CMDLINE) ? (const char *)mbi[4] : "";
	const char *end = line;
	while (*end && *end != ' ')
		end++;
	const char *name = "firmware.elf";
	u32 n = strlen(name);
	bool path = (u32)(end - line) >= n && !memcmp(end - n, name, n) &&
		    ((u32)(end - line) == n || end[-(int)n - 1] == '/');
	report(path, "command line: the first word is the kernel's path");
	report(*end == ' ' && !strncmp(end + 1, "probe-word", 10) &&
		       (end[11] == ' ' || end[11] == '\0'),
	       "command line: then a space and the appended words");
	report(!strncmp(cmdline(), "probe-word", 10), "cmdline(): the words after the path");
	report_prefix_pop();
}

static void test_bda_cmos(void)
{
	report_prefix_push("bda");
	u32 ebda = (u32)bda16(BDA_EBDA_SEGMENT) << 4;
	u32 base = (u32)bda16(BDA_BASE_MEMORY_KIB) << 10;
	report_info("EBDA at %x, base memory %u KiB", ebda, base >> 10);
	report(base >= (512u << 10) && base <= (640u << 10), "base memory 512–640 KiB");
	report(ebda >= base && ebda < 0xa0000, "the EBDA lies between base memory and 640 KiB");
	report(*(volatile u8 *)ebda >= 1 && ebda + (*(volatile u8 *)ebda << 10) <= 0xa0000,
	       "the EBDA's first byte is its size in KiB");
	report(bda16(BDA_COM1) == SERIAL_PORT, "COM1 at %x", bda16(BDA_COM1));
	report_prefix_pop();

	report_prefix_push("cmos");
	outb(CMOS_MEM_ABOVE_16M, CMOS_INDEX);
	u32 lo = inb(CMOS_DATA);
	outb(CMOS_MEM_ABOVE_16M + 1, CMOS_INDEX);
	u32 chunks = lo | (u32)inb(CMOS_DATA) << 8;
	report(((u64)chunks << 16) + (16 << 20) == ram_size,
	       "memory above 16 MiB (0x34) agrees with the RAM size");
	report_prefix_pop();
}

/* The MP table's IOAPIC and the route of ISA IRQ `irq`: INTIN pin, or -1. */
struct mp_found {
	u32 ioapic_addr;
	u8 ioapic_id, isa_bus;
	int isa_pin[16];
};

static void test_mp(struct mp_found *mp)
{
	const char *where;
	report_prefix_push("mp");
	const struct mp_floating *f = mp_search(&where);
	report(f != NULL, "floating pointer found by the specification's search");
	if (!f) {
		report_prefix_pop();
		return;
	}
	report_info("floating pointer at %p in %s", f, where);
	report(f->revision == 4, "floating pointer: specification revision 1.4");
	report(f->feature[0] == 0 && f->config, "floating pointer: a configuration table, no default");
	const struct mp_config *c = (const void *)f->config;
	report(!memcmp(c->signature, "PCMP", 4), "configuration table signature PCMP");
	report(c->length >= sizeof(*c) && bytes_sum(c, c->length) == 0,
	       "configuration table checksum");
	report(c->revision == 4, "configuration table revision 1.4");
	report(c->ext_length == 0 ||
		       (u8)(bytes_sum((const u8 *)c + c->length, c->ext_length) + c->ext_checksum) == 0,
	       "extended table checksum");
	report(c->lapic == LAPIC_BASE, "local APIC at %x", c->lapic);
	report(mmap_not_usable(mmap, mmap_count, (u32)f, 16) &&
		       mmap_not_usable(mmap, mmap_count, f->config, c->length),
	       "the tables lie outside usable RAM");

	u32 cpus = 0, bsp = 0, ioapics = 0, lint_extint = 0, lint_nmi = 0;
	bool sizes = true, isa_flags = true;
	mp->isa_bus = 0xff;
	for (int i = 0; i < 16; i++)
		mp->isa_pin[i] = -1;
	const u8 *e = (const u8 *)(c + 1), *end = (const u8 *)c + c->length;
	/* Buses first: entries come in type order (§4.3), so the ISA bus is known by the
	 * time interrupt entries name it. */
	for (u32 i = 0; i < c->entries && e < end; i++) {
		switch (e[0]) {
		case MP_PROCESSOR:
			if (e[3] & 1) {
				cpus++;
				bsp += (e[3] >> 1) & 1;
			}
			e += 20;
			break;
		case MP_BUS:
			if (!memcmp(e + 2, "ISA   ", 6))
				mp->isa_bus = e[1];
			e += 8;
			break;
		case MP_IOAPIC:
			if (e[3] & 1) {
				ioapics++;
				mp->ioapic_id = e[1];
				mp->ioapic_addr = *(const u32 *)(e + 4);
			}
			e += 8;
			break;
		case MP_IOINT:
			if (e[1] == MP_INT && e[4] == mp->isa_bus && e[5] < 16 && e[6] == mp->ioapic_id) {
				mp->isa_pin[e[5]] = e[7];
				/* ISA interrupts are edge, active high by the bus's convention, except
				 * what is level-triggered (the SCI, PCI). */
				u16 flags = *(const u16 *)(e + 2);
				isa_flags &= flags == 0 || flags == (ISO_ACTIVE_HIGH | ISO_LEVEL);
			}
			e += 8;
			break;
		case MP_LINT:
			if (e[1] == MP_EXTINT && e[7] == 0)
				lint_extint++;
			if (e[1] == MP_NMI && e[7] == 1)
				lint_nmi++;
			e += 8;
			break;
		default:
			sizes = false;
			e = end;
		}
	}
	report(sizes && e == end, "entries of known types fill the table");
	report(cpus == 1 && bsp == 1, "one enabled processor, the bootstrap processor");
	report(mp->isa_bus != 0xff, "an ISA bus");
	report(ioapics == 1 && mp->ioapic_addr == IOAPIC_BASE, "one IOAPIC, at %x",
	       mp->ioapic_addr);
	report(mp->isa_pin[PIT_IRQ] == 2, "ISA IRQ 0 (PIT) on INTIN2");
	/* SeaBIOS leaves the IRQs it gives PCI (5, 9, 10, 11) off the ISA bus. */
	bool isa = true;
	for (int irq = 1; irq < 16; irq++)
		isa &= mp->isa_pin[irq] == -1 || mp->isa_pin[irq] == irq;
	report(isa, "ISA IRQs other than 0 on their own INTIN pins");
	report(mp->isa_pin[1] == 1 && mp->isa_pin[4] == 4 && mp->isa_pin[8] == 8 &&
		       mp->isa_pin[14] == 14,
	       "the keyboard, COM1, RTC and IDE IRQs are routed");
	report(isa_flags, "ISA interrupts: conforming, or level active high");
	report(lint_extint == 1 && lint_nmi == 1, "ExtINT on LINT0 and NMI on LINT1");
	report_prefix_pop();
}

static void test_acpi(const struct mp_found *mp)
{
	const char *where;
	report_prefix_push("acpi");
	const struct rsdp *r = rsdp_search(&where);
	report(r != NULL, "RSDP found by the specification's search");
	if (!r) {
		report_prefix_pop();
		return;
	}
	report_info("RSDP at %p in %s, revision %u", r, where, r->revision);
	report(r->revision == 0 ||
		       (r->revision >= 2 && r->length >= 36 && bytes_sum(r, r->length) == 0),
	       "RSDP: ACPI 1.0, or 2.0+ with a valid extended checksum");
	const struct sdt *rsdt = (const void *)r->rsdt;
	report(sdt_valid(rsdt, "RSDT") && (rsdt->length - sizeof(*rsdt)) % 4 == 0,
	       "RSDT: signature, length and checksum");
	bool all = true;
	const u32 *entry = (const u32 *)(rsdt + 1);
	for (u32 i = 0; i < (rsdt->length - sizeof(*rsdt)) / 4; i++) {
		const struct sdt *t = (const void *)entry[i];
		all &= t->length >= sizeof(*t) && bytes_sum(t, t->length) == 0 &&
		       mmap_not_usable(mmap, mmap_count, entry[i], t->length);
	}
	report(all, "every table the RSDT lists is checksummed and outside usable RAM");
	report(mmap_not_usable(mmap, mmap_count, (u32)r, 20) &&
		       mmap_not_usable(mmap, mmap_count, r->rsdt, rsdt->length),
	       "the RSDP and the RSDT lie outside usable RAM");

	const struct sdt *madt = rsdt_find(rsdt, "APIC");
	report(sdt_valid(madt, "APIC"), "MADT: signature, length and checksum");
	const struct fadt *fadt = (const void *)rsdt_find(rsdt, "FACP");
	report(sdt_valid(&fadt->h, "FACP") && fadt->h.length >= 116, "FADT: at least ACPI 1.0's 116 bytes");
	if (madt && sdt_valid(madt, "APIC")) {
		const u32 *head = (const u32 *)(madt + 1);
		report(head[0] == LAPIC_BASE, "MADT: local APIC at %x", head[0]);
		report(head[1] & MADT_PCAT_COMPAT, "MADT: PC-AT compatible (8259 pair present)");
		u32 cpus = 0, ioapics = 0, ioapic_addr = 0, gsi_base = ~0u, ioapic_id = ~0u;
		int irq0 = -1;
		u16 sci_flags = 0;
		int sci_gsi = -1;
		const u8 *e = (const u8 *)(madt + 1) + 8, *end = (const u8 *)madt + madt->length;
		bool sizes = true;
		while (e < end) {
			if (e[1] < 2 || e + e[1] > end) {
				sizes = false;
				break;
			}
			if (e[0] == MADT_LAPIC && (*(const u32 *)(e + 4) & 1))
				cpus++;
			if (e[0] == MADT_IOAPIC) {
				ioapics++;
				ioapic_id = e[2];
				ioapic_addr = *(const u32 *)(e + 4);
				gsi_base = *(const u32 *)(e + 8);
			}
			if (e[0] == MADT_ISO && e[2] == 0 && e[3] == PIT_IRQ)
				irq0 = (int)*(const u32 *)(e + 4);
			if (e[0] == MADT_ISO && e[2] == 0 && fadt && e[3] == fadt->sci_int) {
				sci_gsi = (int)*(const u32 *)(e + 4);
				sci_flags = *(const u16 *)(e + 8);
			}
			e += e[1];
		}
		report(sizes, "MADT: entries fill the table");
		report(cpus == 1, "MADT: one enabled processor");
		report(ioapics == 1 && ioapic_addr == IOAPIC_BASE && gsi_base == 0,
		       "MADT: one IOAPIC at %x, GSI base 0", ioapic_addr);
		report(irq0 == 2, "MADT: IRQ 0 overridden to GSI 2");
		report(sci_gsi >= 0 && sci_flags == (ISO_ACTIVE_HIGH | ISO_LEVEL),
		       "MADT: the SCI is level-triggered, active high");
		report(ioapic_id == mp->ioapic_id && ioapic_addr == mp->ioapic_addr &&
			       irq0 == mp->isa_pin[PIT_IRQ],
		       "MADT and MP table agree: IOAPIC ID and address, the IRQ 0 route");
	}
	if (fadt && sdt_valid(&fadt->h, "FACP")) {
		report_info("FADT revision %u: SCI %u, PM1a_EVT %x, PM1a_CNT %x, PM_TMR %x",
			    fadt->h.revision, fadt->sci_int, fadt->pm1a_evt, fadt->pm1a_cnt, fadt->pm_tmr);
		report(fadt->sci_int > 0 && fadt->sci_int < 16, "FADT: the SCI is an ISA IRQ");
		report(fadt->pm_tmr && fadt->pm_tmr < 0x10000 && fadt->pm_tmr_len == 4,
		       "FADT: a 4-byte PM timer block in I/O space");
		report(fadt->pm1a_cnt && fadt->pm1a_cnt < 0x10000 && fadt->pm1_cnt_len == 2,
		       "FADT: a 2-byte PM1a control block");
		report(fadt->pm1a_evt && fadt->pm1_evt_len == 4, "FADT: a 4-byte PM1a event block");
		const struct sdt *facs = (const void *)fadt->facs;
		report(facs && !memcmp(facs->signature, "FACS", 4) && facs->length >= 64,
		       "FADT: a FACS of at least 64 bytes");
		const struct sdt *dsdt = (const void *)fadt->dsdt;
		report(sdt_valid(dsdt, "DSDT"), "DSDT: signature, length and checksum");
		bool s5 = false;
		if (sdt_valid(dsdt, "DSDT")) {
			const u8 *aml = (const u8 *)(dsdt + 1), *aend = (const u8 *)dsdt + dsdt->length;
			for (; aml + 5 < aend && !s5; aml++)
				s5 = !memcmp(aml, "_S5_", 4) && aml[4] == 0x12; /* PackageOp */
		}
		report(s5, "DSDT: a \\_S5 package");
	}
	report_prefix_pop();
}

int main(u32 magic, const void *mbi)
{
	struct mp_found mp = {0};
	test_fw_cfg();
	test_multiboot(magic, mbi);
	test_bda_cmos();
	test_mp(&mp);
	test_acpi(&mp);
	return report_summary();
}
