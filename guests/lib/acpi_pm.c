/* Finding the ACPI PM registers the way a kernel does: RSDP, RSDT, FADT (ACPI 6.5 §5.2). */
#include "guest.h"

#define BDA_EBDA_SEGMENT 0x40e
#define BIOS_AREA_START 0xe0000
#define BIOS_AREA_END 0x100000
#define RSDP_ALIGN 16
#define RSDP_V1_LEN 20
#define RSDP_RSDT_ADDRESS 16
#define SDT_HEADER_LEN 36
#define SDT_LENGTH 4
/* FADT fields: PM1a event block, PM1a control block, PM timer block (32-bit ports). */
#define FADT_PM1A_EVT_BLK 56
#define FADT_PM1A_CNT_BLK 64
#define FADT_PM_TMR_BLK 76
#define FADT_MIN_LEN 116

static u32 read32(const u8 *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }

static bool checksum_ok(const u8 *p, u32 len)
{
	u8 sum = 0;
	for (u32 i = 0; i < len; i++)
		sum += p[i];
	return sum == 0;
}

static const u8 *rsdp_in(u32 start, u32 end)
{
	for (u32 a = start; a + RSDP_V1_LEN <= end; a += RSDP_ALIGN) {
		const u8 *p = (const u8 *)a;
		if (!memcmp(p, "RSD PTR ", 8) && checksum_ok(p, RSDP_V1_LEN))
			return p;
	}
	return NULL;
}

/* A table at `addr` (not in page 0, below the 32-bit MMIO hole) with a plausible length and
 * a valid checksum. */
static const u8 *table_at(u32 addr, const char *sig)
{
	if (addr < 0x1000 || addr >= 0xfe000000u)
		return NULL;
	const u8 *t = (const u8 *)addr;
	u32 len = read32(t + SDT_LENGTH);
	if (memcmp(t, sig, 4) || len < SDT_HEADER_LEN || len > 0x10000 || !checksum_ok(t, len))
		return NULL;
	return t;
}

static const u8 *find_fadt(void)
{
	u32 ebda;
	/* A load from a constant low address, which gcc's bounds check would refuse in C. */
	asm volatile("movzwl (%1), %0" : "=r"(ebda) : "r"(BDA_EBDA_SEGMENT));
	ebda <<= 4;
	const u8 *rsdp = NULL;
	if (ebda >= 0x80000 && ebda < 0xa0000)
		rsdp = rsdp_in(ebda, ebda + 1024);
	if (!rsdp)
		rsdp = rsdp_in(BIOS_AREA_START, BIOS_AREA_END);
	if (!rsdp)
		return NULL;
	const u8 *rsdt = table_at(read32(rsdp + RSDP_RSDT_ADDRESS), "RSDT");
	if (!rsdt)
		return NULL;
	u32 entries = (read32(rsdt + SDT_LENGTH) - SDT_HEADER_LEN) / 4;
	for (u32 i = 0; i < entries; i++) {
		const u8 *t = table_at(read32(rsdt + SDT_HEADER_LEN + 4 * i), "FACP");
		if (t && read32(t + SDT_LENGTH) >= FADT_MIN_LEN)
			return t;
	}
	return NULL;
}

struct acpi_pm acpi_pm_find(void)
{
	const u8 *fadt = find_fadt();
	if (fadt)
		return (struct acpi_pm){
			.pm1a_evt = (u16)read32(fadt + FADT_PM1A_EVT_BLK),
			.pm1a_cnt = (u16)read32(fadt + FADT_PM1A_CNT_BLK),
			.pm_tmr = (u16)read32(fadt + FADT_PM_TMR_BLK),
			.from_fadt = true,
		};
	return (struct acpi_pm){
		.pm1a_evt = PM_BASE_SEABIOS,
		.pm1a_cnt = PM_BASE_SEABIOS + 4,
		.pm_tmr = PM_BASE_SEABIOS + 8,
		.from_fadt = false,
	};
}
