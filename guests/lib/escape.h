/* What the escape_* kernels share: the host selectors they aim at, which checks a run
 * selects (only=NAME words), and a fault catcher that resumes anywhere, for faults raised
 * in the middle of an instruction, in another code segment or after a far transfer. */
#ifndef GUEST_ESCAPE_H
#define GUEST_ESCAPE_H

#include "guest.h"

/* The host's 64-bit user code selector (x86-64 Linux __USER_CS) and its 32-bit one
 * (__USER32_CS): a far transfer to either from compat mode leaves the monitor's control on
 * the host; in a guest they name the guest's own GDT entries 6 and 4. */
#define HOST_CS64 0x33
#define HOST_CS32 0x23

/* Where an escaped far transfer is aimed: `mov %cs, %eax; ud2`. In the guest (a guest code
 * segment named by 0x33) it reads CS and raises #UD; in the host's 64-bit mode the same
 * bytes read CS and stop at UD2, a fault the monitor must catch. Nothing else runs. */
extern const u8 escape_landing[];

/* Runs named on the command line as only=NAME: when any only= word is present, only those
 * checks run (one escape attempt per run, for an engine that stops the VM at the first);
 * otherwise every check runs except the opt-in ones. */
bool check_selected(const char *name);
bool check_opt_in(const char *name);

/* The last fault the catcher saw: vector, error code, where (CS:EIP) and the faulting
 * context's EAX. */
struct caught {
	u32 count, vector, error, eip, cs, eax;
};
extern volatile struct caught caught;
/* Where the catcher resumes (CS:EIP), and the ESP the resume code restores (saved by
 * CATCH_SAVE_ESP in the asm that provokes the fault). The resume EIP is cleared at each
 * fault: a second fault with no resume point fails the run. */
extern volatile u32 catch_resume_eip, catch_resume_cs, catch_saved_esp;
/* Catches every exception vector (0-31) until catch_stop(); resuming at CS `cs`. */
void catch_start(u32 cs);
void catch_stop(void);
/* True if exactly one fault with this vector and error code came from `eip`. */
bool caught_one(u32 vector, u32 error, u32 eip);

/* asm: set the resume point to `label` and save ESP; at the label, restore ESP. */
#define CATCH_RESUME_AT(label)                                                                 \
	"movl $" label ", catch_resume_eip\n\t"                                                \
	"movl %%esp, catch_saved_esp\n\t"
#define CATCH_RESUMED "movl catch_saved_esp, %%esp\n\t"

#endif
