//! Runs real 32-bit guest code on the host CPU and checks every exit kind, state survival
//! across exits and that guest code can never make a host syscall.
//!
//! The low 4 GiB reservation and the LDT are process-wide, so the tests share one
//! [`World`] and take turns; everything per-thread (HostCpu, seccomp, CPUID faulting,
//! timer) is set up by each test on its own thread.

// reason: a test builds and checks its own fixtures; an index or unwrap that fails
// stops it with the place, which is what it should do.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use vmm::addr::{GuestLinear, GuestPhys};
use vmm::hostcpu::ldt::{self, ldt_selector, LdtDescriptor, SegmentKind};
use vmm::hostcpu::timer::{kick_signal, timer_signal, VcpuTimer};
use vmm::hostcpu::{
    cpuid, seccomp, BadEntry, GuestContext, HostCpu, HostExit, HostExitKind, HOST_CS64,
};
use vmm::memory::{GuestRam, LinearSpace, MemoryError, Prot};
use vmm::x86::{Exception, SegReg};

const RAM_SIZE: u64 = 8 << 20;
/// Guest code is placed here; RAM is mapped 1:1 from 4 KiB to `MAPPED_END`.
const CODE: u32 = 0x10_0000;
const DATA: u32 = 0x20_0000;
const READ_ONLY: u32 = 0x30_0000;
const MAPPED_END: u32 = 0x40_0000;
/// Mapped in RAM terms but never mapped linearly.
const UNMAPPED: u32 = 0x50_0000;
const STACK_TOP: u32 = 0x8_0000;

const CODE_IDX: u16 = 1;
const DATA_IDX: u16 = 2;
const WINDOW_IDX: u16 = 3;
const MISSING_IDX: u16 = 10;

/// Times each scenario is repeated, to shake out state leaking between runs.
const ROUNDS: usize = 2000;

struct World {
    ram: GuestRam,
    lin: LinearSpace,
}

static WORLD: Mutex<Option<World>> = Mutex::new(None);

/// Sets up the shared world once and the per-thread host CPU state for this test.
fn setup() -> (MutexGuard<'static, Option<World>>, HostCpu) {
    let mut w = WORLD.lock().unwrap_or_else(|e| e.into_inner());
    if w.is_none() {
        let ram = GuestRam::new(RAM_SIZE).unwrap();
        let mut lin = LinearSpace::reserve().unwrap();
        lin.map(
            GuestLinear(0x1000),
            &ram,
            GuestPhys(0x1000),
            READ_ONLY - 0x1000,
            Prot::RWX,
        )
        .unwrap();
        lin.map(
            GuestLinear(READ_ONLY),
            &ram,
            GuestPhys(READ_ONLY),
            0x1000,
            Prot::R,
        )
        .unwrap();
        lin.map(
            GuestLinear(READ_ONLY + 0x1000),
            &ram,
            GuestPhys(READ_ONLY + 0x1000),
            MAPPED_END - READ_ONLY - 0x1000,
            Prot::RWX,
        )
        .unwrap();
        ldt::set_ldt_entry(CODE_IDX, &LdtDescriptor::flat_code32()).unwrap();
        ldt::set_ldt_entry(DATA_IDX, &LdtDescriptor::flat_data32()).unwrap();
        // A small window onto DATA: base DATA, limit 0xfff bytes.
        let window = LdtDescriptor {
            base: DATA,
            limit: 0xfff,
            limit_in_pages: false,
            seg_32bit: true,
            kind: SegmentKind::Data {
                writable: true,
                expand_down: false,
            },
            present: true,
            useable: false,
        };
        ldt::set_ldt_entry(WINDOW_IDX, &window).unwrap();
        ldt::clear_ldt_entry(MISSING_IDX).unwrap();
        *w = Some(World { ram, lin });
    }
    let cpu = HostCpu::new().unwrap();
    seccomp::install_guest_syscall_trap().unwrap();
    (w, cpu)
}

fn fresh_ctx(eip: u32) -> GuestContext {
    GuestContext {
        cs: ldt_selector(CODE_IDX),
        ss: ldt_selector(DATA_IDX),
        ds: ldt_selector(DATA_IDX),
        es: ldt_selector(DATA_IDX),
        eip,
        esp: STACK_TOP,
        ..GuestContext::default()
    }
}

/// Assembles 32-bit code at `CODE`, writes it to RAM and returns the labels' addresses.
fn load32(ram: &GuestRam, build: impl FnOnce(&mut CodeAssembler) -> Vec<CodeLabel>) -> Vec<u32> {
    load(ram, 32, CODE, build)
}

fn load(
    ram: &GuestRam,
    bitness: u32,
    at: u32,
    build: impl FnOnce(&mut CodeAssembler) -> Vec<CodeLabel>,
) -> Vec<u32> {
    let mut a = CodeAssembler::new(bitness).unwrap();
    let labels = build(&mut a);
    let res = a
        .assemble_options(
            u64::from(at),
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .unwrap();
    ram.write(GuestPhys(at), &res.inner.code_buffer).unwrap();
    labels
        .iter()
        .map(|l| u32::try_from(res.label_ip(l).unwrap()).unwrap())
        .collect()
}

fn label(a: &mut CodeAssembler) -> CodeLabel {
    let mut l = a.create_label();
    a.set_label(&mut l).unwrap();
    // A label must precede an instruction; `zero_bytes` keeps it from merging.
    a.zero_bytes().unwrap();
    l
}

fn expect(exit: &HostExit, kind: HostExitKind) {
    assert_eq!(exit.kind, kind, "{exit:?}");
}

fn expect_fault(exit: &HostExit, vector: u8, error_code: u32) {
    expect(exit, HostExitKind::Fault { vector, error_code });
}

/// A page fault at `addr` whose U and W error bits are `user_write` (`what` says which
/// access it was; the P bit is the host's and not checked).
fn expect_page_fault(exit: &HostExit, addr: GuestLinear, user_write: u32, what: &str) {
    let HostExitKind::PageFault {
        addr: at,
        error_code,
    } = exit.kind
    else {
        panic!("{exit:?}")
    };
    assert_eq!(at, addr);
    assert_eq!(error_code & 0x6, user_write, "{what} ({error_code:#x})");
}

fn pipe_nonblocking() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(rc, 0);
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn every_synchronous_exit_kind_and_resume() {
    let (w, mut cpu) = setup();
    let ram = &w.as_ref().unwrap().ram;
    let (pipe_r, pipe_w) = pipe_nonblocking();
    let msg = DATA + 0x800;
    ram.write(GuestPhys(msg), b"leak!").unwrap();
    // 32-bit syscall numbers: write, exit, exit_group.
    const NR_WRITE: i32 = 4;
    const NR_EXIT: i32 = 1;
    const NR_EXIT_GROUP: i32 = 252;
    let pw = u32::try_from(pipe_w.as_raw_fd()).unwrap();

    let l = load32(ram, |a| {
        let start = label(a);
        // Compute 1 + 2 + ... + 100 before halting.
        a.xor(eax, eax).unwrap();
        a.mov(ecx, 100).unwrap();
        let mut top = a.create_label();
        a.set_label(&mut top).unwrap();
        a.add(eax, ecx).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.mov(ebx, 0x1234).unwrap();
        let hlt = label(a);
        a.hlt().unwrap();
        let after_hlt = label(a);
        a.int3().unwrap();
        let after_int3 = label(a);
        let ud2 = label(a);
        a.ud2().unwrap();
        let after_ud2 = label(a);
        a.xor(edx, edx).unwrap();
        a.mov(eax, 7).unwrap();
        a.xor(ecx, ecx).unwrap();
        let div = label(a);
        a.div(ecx).unwrap();
        let after_div = label(a);
        a.mov(eax, dword_ptr(UNMAPPED + 0x24)).unwrap();
        let after_read = label(a);
        a.mov(dword_ptr(READ_ONLY + 8), 1).unwrap();
        let after_write = label(a);
        let cpuid_at = label(a);
        a.cpuid().unwrap();
        let after_cpuid = label(a);
        // Would print to the pipe if it reached the host kernel.
        a.mov(eax, NR_WRITE).unwrap();
        a.mov(ebx, pw).unwrap();
        a.mov(ecx, msg).unwrap();
        a.mov(edx, 5).unwrap();
        a.int(0x80).unwrap();
        let after_int80_write = label(a);
        // Would end the test thread / the process with status 77.
        a.mov(eax, NR_EXIT).unwrap();
        a.mov(ebx, 77).unwrap();
        a.int(0x80).unwrap();
        let after_int80_exit = label(a);
        a.mov(eax, NR_EXIT_GROUP).unwrap();
        a.int(0x80).unwrap();
        let after_int80_exit_group = label(a);
        a.mov(eax, NR_WRITE).unwrap();
        a.mov(ebx, pw).unwrap();
        a.mov(ecx, msg).unwrap();
        a.mov(edx, 5).unwrap();
        a.mov(ebp, DATA).unwrap();
        a.sysenter().unwrap();
        let after_sysenter = label(a);
        a.mov(eax, NR_WRITE).unwrap();
        a.syscall().unwrap();
        let after_syscall = label(a);
        a.mov(eax, 0xfeed).unwrap();
        a.hlt().unwrap();
        vec![
            start,
            hlt,
            after_hlt,
            after_int3,
            ud2,
            after_ud2,
            div,
            after_div,
            after_read,
            after_write,
            cpuid_at,
            after_cpuid,
            after_int80_write,
            after_int80_exit,
            after_int80_exit_group,
            after_sysenter,
            after_syscall,
        ]
    });
    let [start, hlt, after_hlt, after_int3, ud2, after_ud2, div, after_div, after_read, after_write, cpuid_at, after_cpuid, after_int80_write, after_int80_exit, after_int80_exit_group, after_sysenter, after_syscall] =
        l[..]
    else {
        unreachable!()
    };

    // Measured: AMD EPYC guests of this host kind lack CPUID faulting (ENODEV); there CPUID
    // runs natively and has to be rewritten, so both behaviours are checked.
    let faulting = match cpuid::enable_cpuid_faulting() {
        Ok(()) => true,
        Err(cpuid::CpuidError::Unavailable) => false,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(cpuid::cpuid_faulting_enabled(), faulting);
    // The monitor's own CPUID still works (emulated by the exit handler when faulting).
    let leaf0 = std::arch::x86_64::__cpuid(0);
    assert_ne!(leaf0.ebx, 0);

    for round in 0..ROUNDS {
        let mut ctx = fresh_ctx(start);
        let e = cpu.run(&mut ctx);
        expect_fault(&e, Exception::GP, 0);
        assert_eq!(e.signo, libc::SIGSEGV);
        assert_eq!(
            (ctx.eip, ctx.eax, ctx.ebx, ctx.ecx),
            (hlt, 5050, 0x1234, 0),
            "round {round}"
        );
        assert_eq!(ctx.eflags & 0x200, 0x200, "host IF stays set");

        ctx.eip = after_hlt;
        let e = cpu.run(&mut ctx);
        expect_fault(&e, Exception::BP, 0);
        assert_eq!((e.signo, ctx.eip), (libc::SIGTRAP, after_int3));

        let e = cpu.run(&mut ctx);
        expect_fault(&e, Exception::UD, 0);
        assert_eq!((e.signo, ctx.eip), (libc::SIGILL, ud2));

        ctx.eip = after_ud2;
        let e = cpu.run(&mut ctx);
        expect_fault(&e, Exception::DE, 0);
        assert_eq!((e.signo, ctx.eip, ctx.eax), (libc::SIGFPE, div, 7));

        ctx.eip = after_div;
        let e = cpu.run(&mut ctx);
        expect_page_fault(
            &e,
            GuestLinear(UNMAPPED + 0x24),
            0x4,
            "user read: U set, W clear",
        );

        ctx.eip = after_read;
        let e = cpu.run(&mut ctx);
        expect_page_fault(
            &e,
            GuestLinear(READ_ONLY + 8),
            0x6,
            "user write: U and W set",
        );

        ctx.eip = after_write;
        if faulting {
            let e = cpu.run(&mut ctx);
            expect_fault(&e, Exception::GP, 0);
            assert_eq!(ctx.eip, cpuid_at);
            ctx.eip = after_cpuid;
        }
        let e = cpu.run(&mut ctx);
        expect(&e, HostExitKind::Syscall { nr: NR_WRITE });
        assert_eq!(
            (e.signo, ctx.eip, ctx.eax),
            (libc::SIGSYS, after_int80_write, NR_WRITE.unsigned_abs())
        );
        assert_eq!(ctx.cs, ldt_selector(CODE_IDX));

        let e = cpu.run(&mut ctx);
        expect(&e, HostExitKind::Syscall { nr: NR_EXIT });
        assert_eq!(ctx.eip, after_int80_exit);

        let e = cpu.run(&mut ctx);
        expect(&e, HostExitKind::Syscall { nr: NR_EXIT_GROUP });
        assert_eq!(ctx.eip, after_int80_exit_group);

        // SYSENTER comes back mangled (host selector 0x23, EIP elsewhere) but never runs
        // a host syscall; the monitor resumes where it wants.
        let e = cpu.run(&mut ctx);
        assert!(
            matches!(
                e.kind,
                HostExitKind::Syscall { .. }
                    | HostExitKind::Fault { .. }
                    | HostExitKind::PageFault { .. }
            ),
            "{e:?}"
        );
        ctx.cs = ldt_selector(CODE_IDX);
        ctx.ss = ldt_selector(DATA_IDX);
        ctx.esp = STACK_TOP;
        ctx.eip = after_sysenter;

        // SYSCALL in compat mode: #UD on Intel, SIGSYS where the host takes it.
        let e = cpu.run(&mut ctx);
        assert!(
            matches!(
                e.kind,
                HostExitKind::Syscall { .. }
                    | HostExitKind::Fault {
                        vector: Exception::UD,
                        ..
                    }
            ),
            "{e:?}"
        );
        ctx.cs = ldt_selector(CODE_IDX);
        ctx.ss = ldt_selector(DATA_IDX);
        ctx.eip = after_syscall;
        let e = cpu.run(&mut ctx);
        expect_fault(&e, Exception::GP, 0);
        assert_eq!(ctx.eax, 0xfeed);
    }

    // Nothing reached the host: the pipe is empty.
    let mut buf = [0u8; 8];
    let err = std::fs::File::from(pipe_r).read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    drop(pipe_w);
}

#[test]
fn fpu_and_sse_state_survive_monitor_float_work() {
    let (w, mut cpu) = setup();
    let ram = &w.as_ref().unwrap().ram;
    let xmm_in = DATA + 0x100;
    let x87_in = DATA + 0x120;
    let mxcsr_in = DATA + 0x130;
    let xmm_out = DATA + 0x140;
    let x87_out = DATA + 0x160;
    let mxcsr_out = DATA + 0x170;
    let pattern: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
    // Round toward zero, all exceptions masked.
    let guest_mxcsr: u32 = 0x7f80;
    ram.write(GuestPhys(xmm_in), &pattern.to_le_bytes())
        .unwrap();
    ram.write(GuestPhys(x87_in), &std::f64::consts::PI.to_le_bytes())
        .unwrap();
    ram.write_u32(GuestPhys(mxcsr_in), guest_mxcsr).unwrap();
    let l = load32(ram, |a| {
        let start = label(a);
        a.movups(xmm0, xmmword_ptr(xmm_in)).unwrap();
        a.fld(qword_ptr(x87_in)).unwrap();
        a.ldmxcsr(dword_ptr(mxcsr_in)).unwrap();
        a.int3().unwrap();
        a.movups(xmmword_ptr(xmm_out), xmm0).unwrap();
        a.fstp(qword_ptr(x87_out)).unwrap();
        a.stmxcsr(dword_ptr(mxcsr_out)).unwrap();
        a.hlt().unwrap();
        vec![start]
    });
    for _ in 0..ROUNDS {
        ram.write(GuestPhys(xmm_out), &[0; 48]).unwrap();
        let mut ctx = fresh_ctx(l[0]);
        let e = cpu.run(&mut ctx);
        expect_fault(&e, Exception::BP, 0);
        assert_eq!(ctx.fpu.mxcsr(), guest_mxcsr);
        assert_eq!(ctx.fpu.xmm(0), pattern);

        // The monitor's SSE work runs with its own MXCSR (round to nearest: 0.1 rounds up
        // in the last bit, toward zero it would not) and clobbers xmm0.
        let tenth = std::hint::black_box(1.0f64) / std::hint::black_box(10.0f64);
        assert_eq!(tenth.to_bits(), 0x3fb9_9999_9999_999a);
        let junk: f64 = (0..16)
            .map(|i| std::hint::black_box(f64::from(i)).sqrt())
            .sum();
        assert!(junk > 0.0);
        // SAFETY: only clobbers xmm0, declared as such.
        unsafe { std::arch::asm!("xorps xmm0, xmm0", out("xmm0") _) };

        let e = cpu.run(&mut ctx);
        expect_fault(&e, Exception::GP, 0);
        let mut out = [0u8; 16];
        ram.read(GuestPhys(xmm_out), &mut out).unwrap();
        assert_eq!(u128::from_le_bytes(out), pattern);
        let mut pi = [0u8; 8];
        ram.read(GuestPhys(x87_out), &mut pi).unwrap();
        assert_eq!(f64::from_le_bytes(pi), std::f64::consts::PI);
        assert_eq!(ram.read_u32(GuestPhys(mxcsr_out)).unwrap(), guest_mxcsr);
    }
    let tenth = std::hint::black_box(1.0f64) / std::hint::black_box(10.0f64);
    assert_eq!(tenth.to_bits(), 0x3fb9_9999_9999_999a);
}

#[test]
fn data_selectors_are_reported_and_limits_enforced() {
    let (w, mut cpu) = setup();
    let ram = &w.as_ref().unwrap().ram;
    let win = ldt_selector(WINDOW_IDX);
    let flat = ldt_selector(DATA_IDX);
    ram.write_u32(GuestPhys(DATA + 0x10), 0xcafe_f00d).unwrap();
    let l = load32(ram, |a| {
        let start = label(a);
        a.mov(eax, u32::from(win)).unwrap();
        a.mov(fs, ax).unwrap();
        a.mov(gs, ax).unwrap();
        a.xor(eax, eax).unwrap();
        a.mov(es, ax).unwrap();
        a.mov(eax, dword_ptr(0x10).fs()).unwrap();
        a.hlt().unwrap();
        let beyond = label(a);
        a.mov(ebx, dword_ptr(0x1000).gs()).unwrap();
        vec![start, beyond]
    });
    for _ in 0..ROUNDS {
        let mut ctx = fresh_ctx(l[0]);
        let e = cpu.run(&mut ctx);
        expect_fault(&e, Exception::GP, 0);
        assert_eq!(ctx.eax, 0xcafe_f00d, "FS base applied");
        assert_eq!((ctx.ds, ctx.es, ctx.fs, ctx.gs), (flat, 0, win, win));
        // Re-entry reloads them: the access past the 4 KiB limit faults.
        ctx.eip = l[1];
        let e = cpu.run(&mut ctx);
        expect_fault(&e, Exception::GP, 0);
        assert_eq!(ctx.eip, l[1]);
    }
}

#[test]
fn bad_entry_state_is_refused_not_fatal() {
    let (w, mut cpu) = setup();
    let ram = &w.as_ref().unwrap().ram;
    let l = load32(ram, |a| {
        let start = label(a);
        a.mov(eax, 1).unwrap();
        a.hlt().unwrap();
        vec![start]
    });
    let mut ctx = fresh_ctx(l[0]);
    ctx.cs = HOST_CS64;
    expect(
        &cpu.run(&mut ctx),
        HostExitKind::BadEntry(BadEntry::Selector {
            reg: SegReg::Cs,
            sel: HOST_CS64,
        }),
    );
    for _ in 0..ROUNDS {
        let mut ctx = fresh_ctx(l[0]);
        ctx.fs = ldt_selector(MISSING_IDX);
        let e = cpu.run(&mut ctx);
        expect(
            &e,
            HostExitKind::BadEntry(BadEntry::Faulted {
                vector: Exception::GP,
                error_code: u32::from(ldt_selector(MISSING_IDX) & !3),
            }),
        );
        assert_eq!(ctx.eax, 0, "guest did not run");
        ctx.fs = 0;
        let e = cpu.run(&mut ctx);
        expect_fault(&e, Exception::GP, 0);
        assert_eq!(ctx.eax, 1);
    }
}

#[test]
fn escape_to_64_bit_mode_is_caught_and_sees_no_monitor_registers() {
    let (w, mut cpu) = setup();
    let ram = &w.as_ref().unwrap().ram;
    let stub = CODE + 0x800;
    // 64-bit code: OR R8-R15 and the upper halves of RAX..RBP together into EAX, then HLT.
    load(ram, 64, stub, |a| {
        a.mov(rax, rbx).unwrap();
        for r in [rcx, rdx, rsi, rdi, rbp] {
            a.or(rax, r).unwrap();
        }
        a.shr(rax, 32).unwrap();
        for r in [r8, r9, r10, r11, r12, r13, r14, r15] {
            a.or(rax, r).unwrap();
        }
        a.mov(rcx, rax).unwrap();
        a.shr(rcx, 32).unwrap();
        a.or(eax, ecx).unwrap();
        a.hlt().unwrap();
        vec![]
    });
    let l = load32(ram, |a| {
        let start = label(a);
        a.mov(ebx, 0x1111).unwrap();
        // jmp far 0x33:stub
        let mut far = vec![0xea];
        far.extend_from_slice(&stub.to_le_bytes());
        far.extend_from_slice(&HOST_CS64.to_le_bytes());
        a.db(&far).unwrap();
        vec![start]
    });
    for _ in 0..ROUNDS / 4 {
        let mut ctx = fresh_ctx(l[0]);
        ctx.eax = 0xffff_ffff;
        let e = cpu.run(&mut ctx);
        let HostExitKind::Escape { rip } = e.kind else {
            panic!("{e:?}")
        };
        assert!(
            rip.raw() < 1 << 32 && rip.raw() > u64::from(stub),
            "{rip:#x}"
        );
        assert_eq!(ctx.eax, 0, "a monitor register was visible to the guest");
        // The host CPU is still usable afterwards.
        let mut ok = fresh_ctx(l[0] + 0x1000);
        ram.write(GuestPhys(l[0] + 0x1000), &[0xf4]).unwrap();
        expect(
            &cpu.run(&mut ok),
            HostExitKind::Fault {
                vector: Exception::GP,
                error_code: 0,
            },
        );
    }
}

#[test]
fn timer_and_kick_interrupt_guest_loops_and_mark_pending_in_monitor() {
    let (w, mut cpu) = setup();
    let ram = &w.as_ref().unwrap().ram;
    let l = load32(ram, |a| {
        let start = label(a);
        a.mov(eax, 0x5a5a).unwrap();
        let mut spin = a.create_label();
        a.set_label(&mut spin).unwrap();
        a.inc(ecx).unwrap();
        a.jmp(spin).unwrap();
        vec![start]
    });
    let timer = VcpuTimer::new(&cpu.kicker()).unwrap();

    // An asynchronous exit either interrupted the guest inside its loop, or (when the
    // signal beat the entry, e.g. while this thread was descheduled) did not enter at all
    // and left the context untouched. Returns whether the guest ran.
    let start = l[0];
    let check = |ctx: &GuestContext, eax_before: u32, eip_before: u32| -> bool {
        if ctx.eax == 0x5a5a && ctx.eip > start && ctx.eip < start + 16 {
            true
        } else {
            assert_eq!((ctx.eax, ctx.eip), (eax_before, eip_before), "{ctx:x?}");
            false
        }
    };
    let (mut entered, mut resumed) = (0, 0);
    for _ in 0..ROUNDS / 4 {
        let mut ctx = fresh_ctx(start);
        timer
            .arm(Duration::from_micros(100), Duration::ZERO)
            .unwrap();
        let e = cpu.run(&mut ctx);
        expect(
            &e,
            HostExitKind::Async {
                signo: timer_signal(),
            },
        );
        if !check(&ctx, 0, start) {
            continue;
        }
        entered += 1;
        // Resuming continues the loop where it was.
        let (before, eip) = (ctx.ecx, ctx.eip);
        timer
            .arm(Duration::from_micros(100), Duration::ZERO)
            .unwrap();
        expect(
            &cpu.run(&mut ctx),
            HostExitKind::Async {
                signo: timer_signal(),
            },
        );
        if check(&ctx, 0x5a5a, eip) && ctx.ecx > before {
            resumed += 1;
        }
    }
    assert!(
        entered > 0 && resumed > 0,
        "entered {entered}, resumed {resumed}"
    );

    // Kicks from another thread.
    let kicker = cpu.kicker();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
    let other = std::thread::spawn(move || {
        while let Ok(true) = go_rx.recv() {
            std::thread::sleep(Duration::from_micros(200));
            kicker.kick().unwrap();
        }
    });
    let mut entered = 0;
    for _ in 0..ROUNDS / 4 {
        let mut ctx = fresh_ctx(start);
        go_tx.send(true).unwrap();
        let e = cpu.run(&mut ctx);
        expect(
            &e,
            HostExitKind::Async {
                signo: kick_signal(),
            },
        );
        entered += usize::from(check(&ctx, 0, start));
    }
    go_tx.send(false).unwrap();
    other.join().unwrap();
    assert!(entered > 0);

    // A timer landing in monitor code only marks work pending; the next run returns at
    // once without entering the guest.
    for _ in 0..50 {
        timer
            .arm(Duration::from_micros(200), Duration::ZERO)
            .unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        let mut ctx = fresh_ctx(l[0]);
        let e = cpu.run(&mut ctx);
        expect(
            &e,
            HostExitKind::Async {
                signo: timer_signal(),
            },
        );
        assert_eq!(ctx.eax, 0, "guest did not run");
        assert!(!cpu.take_pending());
    }
}

#[test]
fn linear_space_validates_ranges() {
    let (mut w, _cpu) = setup();
    let world = w.as_mut().unwrap();
    let lin = &mut world.lin;
    let ram = &world.ram;
    assert!(matches!(
        LinearSpace::reserve(),
        Err(MemoryError::AlreadyReserved)
    ));
    assert!(matches!(
        lin.map(GuestLinear(0), ram, GuestPhys(0), 0x1000, Prot::R),
        Err(MemoryError::NullPage { .. })
    ));
    assert!(matches!(
        lin.map(GuestLinear(0x1_0800), ram, GuestPhys(0), 0x1000, Prot::R),
        Err(MemoryError::BadLinearRange { .. })
    ));
    assert!(matches!(
        lin.map(GuestLinear(0xffff_f000), ram, GuestPhys(0), 0x2000, Prot::R),
        Err(MemoryError::BadLinearRange { .. })
    ));
    assert!(matches!(
        lin.map(
            GuestLinear(0x90_0000),
            ram,
            GuestPhys(u32::try_from(RAM_SIZE).unwrap() - 0x1000),
            0x2000,
            Prot::R
        ),
        Err(MemoryError::BadPhysRange { .. })
    ));
    assert!(matches!(
        lin.protect(GuestLinear(UNMAPPED), 0x1000, Prot::RW),
        Err(MemoryError::NotMapped { .. })
    ));
    // Map a page twice at different linear addresses: both see the same RAM.
    lin.map(
        GuestLinear(0x90_0000),
        ram,
        GuestPhys(DATA),
        0x1000,
        Prot::RW,
    )
    .unwrap();
    lin.map(
        GuestLinear(0x91_0000),
        ram,
        GuestPhys(DATA),
        0x1000,
        Prot::R,
    )
    .unwrap();
    ram.write_u32(GuestPhys(DATA + 0x44), 0x600d_cafe).unwrap();
    // SAFETY: both pages were just mapped readable in the reserved low 4 GiB.
    let (a, b) = unsafe {
        (
            std::ptr::read_volatile(0x90_0044 as *const u32),
            std::ptr::read_volatile(0x91_0044 as *const u32),
        )
    };
    assert_eq!((a, b), (0x600d_cafe, 0x600d_cafe));
    lin.protect(GuestLinear(0x91_0000), 0x1000, Prot::NONE)
        .unwrap();
    assert!(lin.is_mapped(GuestLinear(0x91_0000)));
    lin.unmap(GuestLinear(0x90_0000), 0x2_0000).unwrap();
    assert!(!lin.is_mapped(GuestLinear(0x90_0000)));
    // Unmapped means reserved, not a hole: the kernel will not place anything there.
    // SAFETY: a hint-only mmap; the result is unmapped again at once.
    let p = unsafe {
        libc::mmap(
            0x90_0000 as *mut libc::c_void,
            0x1000,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(p, libc::MAP_FAILED);
}

/// The host mappings of `[start, end)` in this process, as `/proc/self/maps` shows
/// them: (start, end, permissions).
fn host_mappings(start: usize, end: usize) -> Vec<(usize, usize, String)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (a, b) = f.next()?.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            let perms = f.next()?.to_string();
            (a < end && b > start).then_some((a, b, perms))
        })
        .collect()
}

#[test]
fn linear_space_drops_to_prot_none_and_bounds_what_it_keeps() {
    let (mut w, _cpu) = setup();
    let world = w.as_mut().unwrap();
    let lin = &mut world.lin;
    let ram = &world.ram;
    const BASE: u32 = 0x1000_0000;
    ram.write_u32(GuestPhys(DATA), 0xaaaa_0001).unwrap();
    ram.write_u32(GuestPhys(DATA + 0x1000), 0xbbbb_0002)
        .unwrap();
    let read = |at: u32| {
        // SAFETY: callers read pages they just mapped readable in the reservation.
        unsafe { std::ptr::read_volatile(at as usize as *const u32) }
    };
    // Dropped, mapped again with the same frame, then with another.
    lin.map(GuestLinear(BASE), ram, GuestPhys(DATA), 0x1000, Prot::R)
        .unwrap();
    assert_eq!(read(BASE), 0xaaaa_0001);
    lin.unmap(GuestLinear(BASE), 0x1000).unwrap();
    assert!(!lin.is_mapped(GuestLinear(BASE)));
    let none = |at: u32| {
        host_mappings(at as usize, at as usize + 0x1000)
            .iter()
            .all(|(_, _, perms)| perms.starts_with("---"))
    };
    assert!(none(BASE), "a dropped page is inaccessible");
    assert!(
        matches!(
            lin.protect(GuestLinear(BASE), 0x1000, Prot::R),
            Err(MemoryError::NotMapped { .. })
        ),
        "a kept frame comes back only through map"
    );
    lin.map(GuestLinear(BASE), ram, GuestPhys(DATA), 0x1000, Prot::R)
        .unwrap();
    assert_eq!(read(BASE), 0xaaaa_0001);
    lin.unmap(GuestLinear(BASE), 0x1000).unwrap();
    lin.map(
        GuestLinear(BASE),
        ram,
        GuestPhys(DATA + 0x1000),
        0x1000,
        Prot::R,
    )
    .unwrap();
    assert_eq!(read(BASE), 0xbbbb_0002);
    lin.unmap(GuestLinear(BASE), 0x1000).unwrap();
    // Pages dropped one by one, each its own host mapping: past the limit they go back
    // to the reservation, so the process stays far from vm.max_map_count.
    const PAGES: u32 = 9000;
    let page = |i: u32| GuestLinear(BASE + 0x2000 * i);
    for i in 0..PAGES {
        lin.map(page(i), ram, GuestPhys(DATA), 0x1000, Prot::R)
            .unwrap();
    }
    let span = (BASE as usize, BASE as usize + 0x2000 * PAGES as usize);
    assert!(host_mappings(span.0, span.1).len() >= PAGES as usize);
    for i in 0..PAGES {
        lin.unmap(page(i), 0x1000).unwrap();
    }
    let left = host_mappings(span.0, span.1);
    assert!(
        left.len() < PAGES as usize / 4,
        "{} host mappings left",
        left.len()
    );
    assert!(left.iter().all(|(_, _, perms)| perms.starts_with("---")));
    // And still no hole.
    assert!(left.first().unwrap().0 <= span.0 && left.last().unwrap().1 >= span.1);
}

#[test]
fn signal_storm_anywhere_in_entry_and_exit_keeps_guest_state_exact() {
    let (w, mut cpu) = setup();
    let ram = &w.as_ref().unwrap().ram;
    let win = ldt_selector(WINDOW_IDX);
    let counter = DATA + 0x900;
    ram.write_u32(GuestPhys(DATA + 0x10), 0xcafe_f00d).unwrap();
    ram.write_u32(GuestPhys(counter), 0).unwrap();
    let l = load32(ram, |a| {
        let mut top = a.create_label();
        let mut bad = a.create_label();
        a.set_label(&mut top).unwrap();
        // FS must point at the window even when a signal hit between loading it and iretq.
        a.mov(eax, dword_ptr(0x10).fs()).unwrap();
        a.cmp(eax, i32::from_ne_bytes(0xcafe_f00du32.to_ne_bytes()))
            .unwrap();
        a.jne(bad).unwrap();
        a.inc(esi).unwrap();
        a.mov(dword_ptr(counter), esi).unwrap();
        let hlt = label(a);
        a.hlt().unwrap();
        a.jmp(top).unwrap();
        a.set_label(&mut bad).unwrap();
        a.ud2().unwrap();
        vec![hlt]
    });
    let hlt = l[0];
    let timer = VcpuTimer::new(&cpu.kicker()).unwrap();
    // A period a few exit costs long (unoptimised builds included, or the monitor would
    // only ever handle ticks), so ticks land in guest code, the entry sequence, the
    // landing pad and the monitor alike.
    timer
        .arm(Duration::from_micros(25), Duration::from_micros(25))
        .unwrap();
    let mut ctx = fresh_ctx(CODE);
    ctx.fs = win;
    let (mut halts, mut asyncs) = (0u32, 0u32);
    while halts < 5 * u32::try_from(ROUNDS).unwrap() {
        let e = cpu.run(&mut ctx);
        match e.kind {
            HostExitKind::Fault {
                vector: Exception::GP,
                ..
            } => {
                halts += 1;
                assert_eq!(ctx.eip, hlt);
                assert_eq!(ctx.esi, halts);
                assert_eq!(ram.read_u32(GuestPhys(counter)).unwrap(), halts);
                assert_eq!(ctx.fs, win);
                ctx.eip = hlt + 1;
            }
            HostExitKind::Async { signo } => {
                assert_eq!(signo, timer_signal());
                asyncs += 1;
            }
            _ => panic!("{e:?} after {halts} halts, ctx {ctx:x?}"),
        }
    }
    timer.disarm().unwrap();
    let _ = cpu.take_pending();
    assert!(asyncs > 0, "the storm never interrupted anything");
}

#[test]
fn changed_ldt_descriptor_behind_an_unchanged_selector_takes_effect() {
    const MOVING_IDX: u16 = 4;
    let (w, mut cpu) = setup();
    let ram = &w.as_ref().unwrap().ram;
    let sel = ldt_selector(MOVING_IDX);
    let l = load32(ram, |a| {
        let start = label(a);
        a.mov(eax, dword_ptr(0).fs()).unwrap();
        a.mov(ebx, dword_ptr(0).gs()).unwrap();
        a.hlt().unwrap();
        vec![start]
    });
    for i in 0..u32::try_from(ROUNDS).unwrap() / 4 {
        // Each round moves the segment to another page holding a different value.
        let base = DATA + 0x1000 * (1 + i % 8);
        ram.write_u32(GuestPhys(base), 0x1000_0000 + i).unwrap();
        let desc = LdtDescriptor {
            base,
            limit: 0xfff,
            limit_in_pages: false,
            ..LdtDescriptor::flat_data32()
        };
        ldt::set_ldt_entry(MOVING_IDX, &desc).unwrap();
        let mut ctx = fresh_ctx(l[0]);
        ctx.fs = sel;
        ctx.gs = sel;
        let e = cpu.run(&mut ctx);
        expect_fault(&e, Exception::GP, 0);
        assert_eq!((ctx.eax, ctx.ebx), (0x1000_0000 + i, 0x1000_0000 + i));
    }
}

/// Set in the child process of `a_fault_in_monitor_code_kills_the_process_loudly`.
const CRASH_CHILD_ENV: &str = "VMM_HOSTCPU_CRASH_CHILD";

#[test]
fn a_fault_in_monitor_code_kills_the_process_loudly() {
    if std::env::var_os(CRASH_CHILD_ENV).is_some() {
        let _cpu = HostCpu::new().unwrap();
        // A monitor bug: the exit handler must not swallow it as a guest exit.
        // SAFETY: deliberately faulting; the process is expected to die here.
        let v = unsafe { std::ptr::read_volatile(0x10 as *const u32) };
        println!("survived a fault, read {v}");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_fault_in_monitor_code_kills_the_process_loudly",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, "1")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "{:?}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("vmm: fatal signal 11 (si_code 1) in monitor code at 0x"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
}
