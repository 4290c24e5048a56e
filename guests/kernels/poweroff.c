/* ACPI S5 power-off through PM1a control: the run ends with status 0 */
#include "guest.h"

#define S5_SLP_TYP 0 /* the DSDT's \_S5 package, QEMU's and the monitor's */
#define PM1_CNT_SCI_EN 0x0001

int main(u32 magic, const void *mbi)
{
	struct acpi_pm pm = acpi_pm_find();

	report_prefix_push("poweroff");
	report_info("PM1a control at %x (%s)", pm.pm1a_cnt,
		    pm.from_fadt ? "from the FADT" : "no FADT: the SeaBIOS PM base");
	report(pm.pm1a_cnt == PM_BASE_SEABIOS + 4, "PM1a control block at 0x604");
	/* The closing line comes first: after the write nothing more is printed. */
	report_summary();
	u16 cnt = inw(pm.pm1a_cnt) & PM1_CNT_SCI_EN;
	outw(cnt | S5_SLP_TYP << PM1_CNT_SLP_TYP_SHIFT | PM1_CNT_SLP_EN, pm.pm1a_cnt);
	/*
	 * A machine may take a moment to act on the request (QEMU handles it in its main
	 * loop, after this CPU has run on): wait two seconds of PM-timer time (24 bits wrap
	 * every 4.7 s, so the difference is taken modulo 2^24).
	 */
	u32 start = inl(pm.pm_tmr) & 0xffffff, waited = 0;
	while (waited < 2 * PM_TIMER_HZ)
		waited = ((inl(pm.pm_tmr) & 0xffffff) - start) & 0xffffff;
	/* Still here: the write did not power off. Exit with a status that is not 0. */
	printf("FAIL: poweroff: the machine still runs after SLP_TYP=S5|SLP_EN\n");
	exit(1);
}
