//! Cost of one guest exit round trip (guest trap → signal → monitor → iretq → guest),
//! against the bare signal round trip of a plain 64-bit process raising the same trap.
//!
//! `cargo bench -p vmm --bench exit_roundtrip` prints medians of several batches and the
//! ratios. The target is an exit within 1.2× of the bare signal.

// reason: a benchmark builds and checks its own fixtures; an index or unwrap that fails
// stops it with the place, which is what it should do.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use iced_x86::code_asm::*;
use vmm::addr::{GuestLinear, GuestPhys};
use vmm::hostcpu::ldt::{self, ldt_selector, LdtDescriptor};
use vmm::hostcpu::{seccomp, GuestContext, HostCpu, HostExitKind};
use vmm::memory::{GuestRam, LinearSpace, Prot};
use vmm::x86::Exception;

const BATCHES: usize = 21;
const PER_BATCH: u32 = 5_000;
const CODE: u32 = 0x10_0000;

/// Nanoseconds per iteration of `body` over one batch (after a short warm-up).
fn batch_ns(mut body: impl FnMut()) -> f64 {
    for _ in 0..PER_BATCH / 10 {
        body();
    }
    let t = Instant::now();
    for _ in 0..PER_BATCH {
        body();
    }
    t.elapsed().as_nanos() as f64 / f64::from(PER_BATCH)
}

fn median(mut v: Vec<f64>) -> f64 {
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

/// One batch of each bare signal round trip: INT3 → SIGTRAP and HLT → #GP → SIGSEGV in
/// 64-bit code, with trivial handlers.
fn bare() -> (f64, f64) {
    set_handler(libc::SIGTRAP, return_at_once);
    set_handler(libc::SIGSEGV, skip_one_byte);
    // SAFETY: INT3 traps to the handler above, which returns after it.
    let int3 = batch_ns(|| unsafe { std::arch::asm!("int3") });
    // SAFETY: HLT faults at CPL 3; the handler above skips it.
    let hlt = batch_ns(|| unsafe { std::arch::asm!("hlt") });
    (int3, hlt)
}

fn main() {
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
    // The filter runs on every host syscall of this thread (rt_sigreturn included), so the
    // bare trips are measured under it too.
    seccomp::install_guest_syscall_trap().unwrap();

    let mut ctx = GuestContext {
        cs: ldt_selector(1),
        ss: ldt_selector(2),
        ds: ldt_selector(2),
        es: ldt_selector(2),
        eip: CODE,
        esp: 0x8_0000,
        ..GuestContext::default()
    };
    // The machine is shared: bare and guest batches alternate so both see the same load,
    // and the ratio is taken per batch.
    let (mut b3, mut bgp, mut g3, mut ggp, mut r3, mut rgp) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..BATCHES {
        let (bare_int3, bare_hlt) = bare();
        // Installs the exit handlers over the bare ones.
        let mut cpu = HostCpu::new().unwrap();
        // INT3 exits: resume at the INT3 each time.
        let int3_exit = batch_ns(|| {
            ctx.eip = CODE;
            let e = cpu.run(&mut ctx);
            assert_eq!(
                e.kind,
                HostExitKind::Fault {
                    vector: Exception::BP,
                    error_code: 0
                }
            );
        });
        let hlt_exit = batch_ns(|| {
            ctx.eip = CODE + 1;
            let e = cpu.run(&mut ctx);
            assert_eq!(
                e.kind,
                HostExitKind::Fault {
                    vector: Exception::GP,
                    error_code: 0
                }
            );
        });
        drop(cpu);
        b3.push(bare_int3);
        bgp.push(bare_hlt);
        g3.push(int3_exit);
        ggp.push(hlt_exit);
        r3.push(int3_exit / bare_int3);
        rgp.push(hlt_exit / bare_hlt);
    }
    println!("medians of {BATCHES} batches of {PER_BATCH}:");
    println!(
        "bare signal round trip, INT3 -> SIGTRAP:       {:8.0} ns",
        median(b3)
    );
    println!(
        "bare signal round trip, HLT -> #GP -> SIGSEGV: {:8.0} ns",
        median(bgp)
    );
    println!(
        "guest exit round trip, INT3:                   {:8.0} ns",
        median(g3)
    );
    println!(
        "guest exit round trip, HLT (#GP):              {:8.0} ns",
        median(ggp)
    );
    println!(
        "ratio guest/bare, INT3:                        {:8.2}x",
        median(r3)
    );
    println!(
        "ratio guest/bare, HLT:                         {:8.2}x",
        median(rgp)
    );
}
