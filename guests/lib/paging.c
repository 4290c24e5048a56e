/* Page-fault catching for the paging test kernels (see paging.h). */
#include "paging.h"

volatile struct pf_record last_pf;

static void pf_handler(struct frame *f)
{
	last_pf.count++;
	last_pf.error = f->error;
	last_pf.cr2 = read_cr2();
	last_pf.eip = f->eip;
	if (fault_resume_eip) {
		f->eip = fault_resume_eip;
		fault_resume_eip = 0;
		return;
	}
	report(false, "#PF error %x CR2 %x at %x with no resume point", f->error, last_pf.cr2,
	       f->eip);
	exit(report_summary());
}

void pf_catch_begin(void)
{
	last_pf.count = 0;
	last_pf.error = ~0u;
	last_pf.cr2 = 0;
	handle_exception(PF_VECTOR, pf_handler);
}

bool pf_catch_end(u32 error, u32 cr2)
{
	handle_exception(PF_VECTOR, NULL);
	fault_resume_eip = 0;
	if (last_pf.count != 1 || last_pf.error != error || last_pf.cr2 != cr2)
		report_info("#PF count %u error %x CR2 %x; expected error %x CR2 %x", last_pf.count,
			    last_pf.error, last_pf.cr2, error, cr2);
	return last_pf.count == 1 && last_pf.error == error && last_pf.cr2 == cr2;
}
