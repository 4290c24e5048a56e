//! Cost of one guest exit round trip (guest trap → signal → monitor → iretq → guest),
//! against the bare signal round trip of a plain 64-bit process raising the same trap.
//!
//! `cargo bench -p vmm --bench exit_roundtrip` prints medians of several batches and the
//! ratios. The target is an exit within 1.2× of the bare signal.

use std::time::Instant;

use iced_x86::code_asm::*;
use vmm::addr::{GuestLinear, GuestPhys};
use vmm::hostcpu::ldt::{self, ldt_selector, LdtDescriptor};
use vmm::hostcpu::{seccomp, ExitKind, GuestContext, HostCpu, VECTOR_BP, VECTOR_GP};
use vmm::memory::{GuestRam, LinearSpace, Prot};

const BATCHES: usize = 15;
const PER_BATCH: u32 = 20_000;
const CODE: u32 = 0x10_0000;

/// Median nanoseconds per iteration of `body` over the batches.
fn median_ns(mut body: impl FnMut()) -> f64 {
    for _ in 0..PER_BATCH / 10 {
        body();
    }
    let mut v: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..PER_BATCH {
                body();
            }
            t.elapsed().as_nanos() as f64 / f64::from(PER_BATCH)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

extern "C" fn return_at_once(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

extern "C" fn skip_one_byte(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
    let uc = unsafe { &mut *uc.cast::<libc::ucontext_t>() };
    uc.uc_mcontext.gregs[libc::REG_RIP as usize] += 1;
}

fn set_handler(
    sig: libc::c_int,
    f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) {
    // SAFETY: sigaction is plain data; the handler follows the SA_SIGINFO convention.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = f as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

/// The bare signal round trips: INT3 → SIGTRAP and HLT → #GP → SIGSEGV in 64-bit code.
fn bare() -> (f64, f64) {
    set_handler(libc::SIGTRAP, return_at_once);
    set_handler(libc::SIGSEGV, skip_one_byte);
    // SAFETY: INT3 traps to the handler above, which returns after it.
    let int3 = median_ns(|| unsafe { std::arch::asm!("int3") });
    // SAFETY: HLT faults at CPL 3; the handler above skips it.
    let hlt = median_ns(|| unsafe { std::arch::asm!("hlt") });
    (int3, hlt)
}

fn main() {
    let (bare_int3, bare_hlt) = bare();

    let ram = GuestRam::new(4 << 20).unwrap();
    let mut lin = LinearSpace::reserve().unwrap();
    lin.map(
        GuestLinear(0x1000),
        &ram,
        GuestPhys(0x1000),
        (4 << 20) - 0x1000,
        Prot::RWX,
    )
    .unwrap();
    ldt::set_ldt_entry(1, &LdtDescriptor::flat_code32()).unwrap();
    ldt::set_ldt_entry(2, &LdtDescriptor::flat_data32()).unwrap();
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    a.set_label(&mut top).unwrap();
    a.int3().unwrap();
    a.hlt().unwrap();
    a.jmp(top).unwrap();
    let code = a.assemble(u64::from(CODE)).unwrap();
    ram.write(GuestPhys(CODE), &code).unwrap();

    seccomp::install_guest_syscall_trap().unwrap();
    // The filter runs on every host syscall of this thread, rt_sigreturn included: measure
    // the bare trip again under it to separate its share.
    let (bare_int3_seccomp, _) = bare();
    // Installs the exit handler over the bare ones.
    let mut cpu = HostCpu::new().unwrap();

    let mut ctx = GuestContext {
        cs: ldt_selector(1),
        ss: ldt_selector(2),
        ds: ldt_selector(2),
        es: ldt_selector(2),
        eip: CODE,
        esp: 0x8_0000,
        ..GuestContext::default()
    };
    // INT3 exits: resume after the INT3 at a HLT we skip straight over to the JMP.
    let int3_exit = median_ns(|| {
        ctx.eip = CODE;
        let e = cpu.run(&mut ctx);
        assert_eq!(
            e.kind,
            ExitKind::Fault {
                vector: VECTOR_BP,
                error_code: 0
            }
        );
    });
    let hlt_exit = median_ns(|| {
        ctx.eip = CODE + 1;
        let e = cpu.run(&mut ctx);
        assert_eq!(
            e.kind,
            ExitKind::Fault {
                vector: VECTOR_GP,
                error_code: 0
            }
        );
    });

    println!("bare signal round trip, INT3 -> SIGTRAP:            {bare_int3:8.0} ns");
    println!("bare signal round trip, HLT -> #GP -> SIGSEGV:      {bare_hlt:8.0} ns");
    println!("bare INT3 round trip under the guest seccomp filter:{bare_int3_seccomp:8.0} ns");
    println!(
        "guest exit round trip, INT3:                        {int3_exit:8.0} ns  ({:.2}x bare)",
        int3_exit / bare_int3
    );
    println!(
        "guest exit round trip, HLT (#GP):                   {hlt_exit:8.0} ns  ({:.2}x bare)",
        hlt_exit / bare_hlt
    );
}
