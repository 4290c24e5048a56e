//! Entering the guest and landing back: the register state the guest owns, and the
//! assembly that switches between the monitor's 64-bit context and guest compat-mode code.
//!
//! `vmm_hostcpu_enter` saves the monitor's callee-saved registers, stack pointer, FS base
//! and floating-point control state, loads the guest's extended state, data segments and
//! general registers, clears every register the guest does not own and `iretq`s into
//! compat mode. The exit signal handler redirects the signal frame to
//! `vmm_hostcpu_landing`, which runs after `sigreturn` on the monitor's stack: it saves the
//! guest's extended state (restored from the signal frame by `sigreturn`), gives the
//! monitor a clean FPU and its FS base back and returns from `vmm_hostcpu_enter` as an
//! ordinary function would.
//!
//! A gate exit (translated code calling the monitor) keeps the guest's x87 state in the
//! CPU and puts aside only XMM0-7 and MXCSR, which the monitor's own code uses; the next
//! entry of the same context restores just those. An XSAVE and an XRSTOR per exit were
//! more than half of an empty gate exit. The state is completed into the context when
//! another context runs or on [`HostCpu::save_fpu`](super::HostCpu::save_fpu).
//!
//! Segment loads cost about 50-60 ns each on this host kind (measured), a large share of an
//! exit, so the data segment registers keep the guest's selectors while the monitor runs
//! (64-bit code ignores DS/ES; the monitor, like all x86-64 Linux user code, never uses
//! GS; only the FS *base* matters to it and is swapped with WRFSBASE). The next entry
//! reloads a register only when its selector changed, or, for FS/GS whose cached
//! descriptors the kernel does not refresh after `modify_ldt`, when the LDT changed.

use std::mem::offset_of;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8};

use super::regs::low32;

/// Bytes reserved for one XSAVE image. The host's enabled components (AVX-512 included)
/// need about 2.7 KiB; [`HostCpu::new`](super::HostCpu::new) refuses hosts that need more.
pub const XSAVE_AREA_SIZE: usize = 4096;

/// Offset of MXCSR in the legacy (FXSAVE) region.
const MXCSR_OFFSET: usize = 24;
/// Offset of the XSAVE header's XSTATE_BV.
const XSTATE_BV_OFFSET: usize = 512;
/// Offset of XMM0 in the legacy region.
const XMM0_OFFSET: usize = 160;
/// MXCSR after reset: all SIMD exceptions masked, round to nearest.
const MXCSR_DEFAULT: u32 = 0x1f80;
/// x87 control word after FNINIT.
const FCW_DEFAULT: u16 = 0x037f;

/// A standard-format XSAVE image of the guest's x87/SSE/AVX state.
///
/// Its bytes are only ever written by XSAVE or by [`XsaveArea::default`], so XRSTOR can
/// never fault on it.
#[repr(C, align(64))]
#[derive(Clone)]
pub struct XsaveArea {
    bytes: [u8; XSAVE_AREA_SIZE],
}

impl Default for XsaveArea {
    /// The state after reset: every component in its init configuration (XSTATE_BV = 0),
    /// MXCSR 0x1F80.
    fn default() -> Self {
        let mut bytes = [0u8; XSAVE_AREA_SIZE];
        bytes[0..2].copy_from_slice(&FCW_DEFAULT.to_le_bytes());
        bytes[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&MXCSR_DEFAULT.to_le_bytes());
        Self { bytes }
    }
}

impl std::fmt::Debug for XsaveArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XsaveArea")
            .field("xstate_bv", &format_args!("{:#x}", self.xstate_bv()))
            .field("mxcsr", &format_args!("{:#x}", self.mxcsr()))
            .finish_non_exhaustive()
    }
}

impl XsaveArea {
    /// The raw image (legacy region, XSAVE header, extended components).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// XSTATE_BV: which components hold non-init state.
    pub fn xstate_bv(&self) -> u64 {
        u64::from_le_bytes(
            self.bytes[XSTATE_BV_OFFSET..XSTATE_BV_OFFSET + 8]
                .try_into()
                .unwrap_or_default(),
        )
    }

    /// The guest's MXCSR.
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes(
            self.bytes[MXCSR_OFFSET..MXCSR_OFFSET + 4]
                .try_into()
                .unwrap_or_default(),
        )
    }

    /// The guest's XMM register `i` (0–7 in compat mode), or 0 while SSE state is in its
    /// init configuration.
    pub fn xmm(&self, i: usize) -> u128 {
        if i >= 16 || self.xstate_bv() & 2 == 0 {
            return 0;
        }
        let off = XMM0_OFFSET + 16 * i;
        self.bytes
            .get(off..off + 16)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u128::from_le_bytes)
    }
}

/// The guest registers the host CPU runs with.
///
/// Segment selectors are *host* selectors: the LDT mirrors of the guest's segments
/// ([`ldt_selector`](super::ldt::ldt_selector)); CS and SS must be LDT selectors with RPL 3,
/// data selectors LDT selectors with RPL 3 or null. EFLAGS holds only what the guest owns:
/// on entry IF is forced on and IOPL, NT, VM, VIF, VIP cleared (the virtual ones live in
/// the vCPU).
#[repr(C, align(64))]
#[derive(Debug, Clone, Default)]
#[allow(missing_docs)]
pub struct GuestContext {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
    pub esi: u32,
    pub edi: u32,
    pub ebp: u32,
    pub esp: u32,
    pub eip: u32,
    pub eflags: u32,
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    /// The guest's x87/SSE/AVX state; the guest owns the real FPU while it runs.
    pub fpu: XsaveArea,
}

/// Why `vmm_hostcpu_enter` returned (written before entry and by the signal handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Landing {
    /// Work was pending at entry; the guest did not run.
    EarlyPending = 0,
    /// A signal interrupted guest code.
    Guest = 1,
    /// An asynchronous signal hit between loading guest state and `iretq`.
    AsyncInWindow = 2,
    /// Loading the guest's segments or the `iretq` faulted.
    EntryFault = 3,
    /// Translated code left through the gate (a far jump to [`gate_entry`]): the
    /// guest's registers were saved by the gate, no signal was involved.
    Gate = 4,
}

/// The block of the thread that runs translated code, for the gate, which reaches the
/// monitor with the guest's stack and FS and so cannot use TLS. One such thread per
/// process: the translation cache's gate is per VM, and a VM has one vCPU thread.
pub(crate) static GATE_BLOCK: AtomicU64 = AtomicU64::new(0);
/// The guest's EAX while the gate saves the other registers.
static GATE_EAX: AtomicU64 = AtomicU64::new(0);

/// The raw facts of one exit, as the handler found them.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct RawExit {
    pub signo: i32,
    pub si_code: i32,
    pub trapno: u64,
    pub err: u64,
    pub addr: u64,
    pub rip: u64,
    pub cs: u16,
    pub syscall_nr: i32,
}

/// Optional FPU-state instructions the host has.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FpuFeatures {
    /// VZEROUPPER (AVX enabled in XCR0).
    pub avx: bool,
    /// XSAVEOPT (CPUID.(EAX=0DH,ECX=1):EAX[0]).
    pub xsaveopt: bool,
    /// AVX-512 opmask registers k0-k7 (XCR0 bit 5).
    pub opmask: bool,
}

/// Per-vCPU-thread state shared by the entry assembly, the signal handler and `HostCpu`.
/// The handler finds it through the altstack table, never through TLS.
#[repr(C, align(64))]
pub(crate) struct CpuBlock {
    /// The monitor's extended state, saved only when the light path is off.
    pub host_xsave: XsaveArea,
    /// The guest's XMM0-7 at the last gate landing, while the rest of its extended state
    /// stays in the CPU (see [`CpuBlock::fpu_live`]).
    pub live_xmm: [u128; 8],
    /// The address of the context whose extended state is in the CPU and in `live_xmm`
    /// and `live_mxcsr` rather than in its [`GuestContext::fpu`]; 0 when none is. Only
    /// compared with a context's address, never followed, but by
    /// [`HostCpu::save_fpu`](super::HostCpu::save_fpu) with that very context.
    pub fpu_live: u64,
    pub host_rsp: u64,
    pub host_fsbase: u64,
    /// The guest's FS base at the last landing, reinstated when FS is not reloaded.
    pub guest_fsbase: u64,
    /// The LDT generation the live FS/GS descriptors were loaded under; `u64::MAX` forces
    /// a reload.
    pub seg_gen: u64,
    pub xsave_mask_lo: u32,
    pub xsave_mask_hi: u32,
    pub host_mxcsr: u32,
    /// The guest's MXCSR at the last gate landing (with `live_xmm`).
    pub live_mxcsr: u32,
    pub host_fcw: u16,
    /// 1: the monitor's FPU is rebuilt from MXCSR and the x87 control word instead of a
    /// full XSAVE/XRSTOR (safe unless PKRU, which the monitor needs back, is XSAVE state).
    pub light_fpu: u8,
    /// 1: VZEROUPPER is available and used to leave no guest upper state behind.
    pub has_avx: u8,
    /// 1: XSAVEOPT is available: the guest's state is saved with it, which skips the
    /// components the guest left in their initial state or did not modify since the
    /// entry's XRSTOR from the same area (most exits: the guest has no AVX state).
    pub has_xsaveopt: u8,
    /// 1: a gate landing leaves the guest's extended state in the CPU, saving only what
    /// the monitor's code may change: XMM0-7 and MXCSR (see the gate's landing). Needs
    /// the light path (no PKRU to give back).
    pub light_gate: u8,
    /// 1: the host has AVX-512 opmask registers, cleared at an entry that skips XRSTOR
    /// (compat code can read them; the monitor's string functions leave values there).
    pub has_opmask: u8,
    /// DS, ES, FS, GS as the handler prologue found them.
    pub guest_sel: [u16; 4],
    /// Set by an asynchronous signal that landed in monitor code.
    pub pending: AtomicU8,
    pub pending_signo: AtomicI32,
    /// True between entry and landing.
    pub running: AtomicBool,
    pub landing: Landing,
    pub ctx: *mut GuestContext,
    pub raw: RawExit,
}

impl CpuBlock {
    pub fn new(xsave_mask: u64, host_fsbase: u64, light_fpu: bool, features: FpuFeatures) -> Self {
        Self {
            host_xsave: XsaveArea::default(),
            live_xmm: [0; 8],
            fpu_live: 0,
            host_rsp: 0,
            host_fsbase,
            guest_fsbase: 0,
            seg_gen: u64::MAX,
            xsave_mask_lo: low32(xsave_mask),
            xsave_mask_hi: low32(xsave_mask >> 32),
            host_mxcsr: MXCSR_DEFAULT,
            live_mxcsr: MXCSR_DEFAULT,
            host_fcw: FCW_DEFAULT,
            light_fpu: u8::from(light_fpu),
            has_avx: u8::from(features.avx),
            has_xsaveopt: u8::from(features.xsaveopt),
            light_gate: u8::from(light_fpu),
            has_opmask: u8::from(features.opmask),
            guest_sel: [0; 4],
            pending: AtomicU8::new(0),
            pending_signo: AtomicI32::new(0),
            running: AtomicBool::new(false),
            landing: Landing::EarlyPending,
            ctx: std::ptr::null_mut(),
            raw: RawExit::default(),
        }
    }
}

const _: () = assert!(offset_of!(CpuBlock, live_xmm) % 16 == 0);

pub(crate) const OFF_SEL_DS: usize = offset_of!(CpuBlock, guest_sel);
pub(crate) const OFF_HOST_FSBASE: usize = offset_of!(CpuBlock, host_fsbase);

/// The guest's XMM0-7 and MXCSR back from where a gate landing put them (rdi = the
/// `CpuBlock`), and XMM8-15 cleared of the monitor's values: the light entry and
/// `vmm_hostcpu_fpu_spill` both start so.
macro_rules! load_live_xmm {
    () => {
        concat!(
            "movaps xmm0, [rdi + {live_xmm}]\n",
            "movaps xmm1, [rdi + {live_xmm} + 16]\n",
            "movaps xmm2, [rdi + {live_xmm} + 32]\n",
            "movaps xmm3, [rdi + {live_xmm} + 48]\n",
            "movaps xmm4, [rdi + {live_xmm} + 64]\n",
            "movaps xmm5, [rdi + {live_xmm} + 80]\n",
            "movaps xmm6, [rdi + {live_xmm} + 96]\n",
            "movaps xmm7, [rdi + {live_xmm} + 112]\n",
            "xorps xmm8, xmm8\n",
            "xorps xmm9, xmm9\n",
            "xorps xmm10, xmm10\n",
            "xorps xmm11, xmm11\n",
            "xorps xmm12, xmm12\n",
            "xorps xmm13, xmm13\n",
            "xorps xmm14, xmm14\n",
            "xorps xmm15, xmm15\n",
            "ldmxcsr [rdi + {live_mxcsr}]",
        )
    };
}

/// The monitor's FPU as the ABI expects it at a return (rdi = the `CpuBlock`): an empty
/// x87 stack with the caller's control words, and no upper AVX state left behind.
macro_rules! monitor_fpu {
    () => {
        concat!(
            "fninit\n",
            "fldcw [rdi + {host_fcw}]\n",
            "ldmxcsr [rdi + {host_mxcsr}]\n",
            "test byte ptr [rdi + {has_avx}], 1\n",
            "jz 7f\n",
            "vzeroupper\n",
            "7:",
        )
    };
}

std::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl vmm_hostcpu_enter",
    ".type vmm_hostcpu_enter,@function",
    // rdi = *mut CpuBlock, rsi = *mut GuestContext
    "vmm_hostcpu_enter:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdi",
    "push rsi",
    "mov [rdi + {host_rsp}], rsp",
    "rdfsbase rax",
    "mov [rdi + {host_fsbase}], rax",
    "mov eax, [rdi + {mask_lo}]",
    "mov edx, [rdi + {mask_hi}]",
    // After a gate exit of this same context its x87 state is still in the CPU: only
    // XMM0-7 and MXCSR, which the monitor's code uses, come back. XMM8-15 (out of compat
    // code's reach) are cleared of the monitor's values all the same, and so are the
    // opmask registers, which compat code can read.
    "cmp [rdi + {fpu_live}], rsi",
    "jne 9f",
    "stmxcsr [rdi + {host_mxcsr}]",
    load_live_xmm!(),
    "test byte ptr [rdi + {has_opmask}], 1",
    "jz vmm_hostcpu_window_begin",
    "kxorw k0, k0, k0",
    "kxorw k1, k1, k1",
    "kxorw k2, k2, k2",
    "kxorw k3, k3, k3",
    "kxorw k4, k4, k4",
    "kxorw k5, k5, k5",
    "kxorw k6, k6, k6",
    "kxorw k7, k7, k7",
    "jmp vmm_hostcpu_window_begin",
    "9:",
    // Vector registers are caller-saved; only MXCSR and the x87 control word are the
    // caller's to keep.
    "test byte ptr [rdi + {light_fpu}], 1",
    "jz 1f",
    "stmxcsr [rdi + {host_mxcsr}]",
    "fnstcw [rdi + {host_fcw}]",
    "jmp 2f",
    "1:",
    "xsave64 [rdi + {host_xsave}]",
    "2:",
    // All components, init ones included: nothing of the monitor's state survives.
    "xrstor64 [rsi + {fpu}]",
    // From here on the FPU holds guest state: a signal redirected to the landing pad saves
    // it into the context unchanged.
    ".globl vmm_hostcpu_window_begin",
    "vmm_hostcpu_window_begin:",
    "cmp byte ptr [rdi + {pending}], 0",
    "jne vmm_hostcpu_landing",
    "movzx eax, word ptr [rsi + {ss}]",
    "push rax",
    "mov eax, [rsi + {esp}]",
    "push rax",
    "mov eax, [rsi + {eflags}]",
    "push rax",
    "movzx eax, word ptr [rsi + {cs}]",
    "push rax",
    "mov eax, [rsi + {eip}]",
    "push rax",
    // DS/ES: the kernel reloads LDT selectors in DS/ES after every modify_ldt, so an
    // unchanged selector still has the right descriptor.
    "mov ax, ds",
    "cmp ax, word ptr [rsi + {ds}]",
    "je 3f",
    "mov ds, word ptr [rsi + {ds}]",
    "3:",
    "mov ax, es",
    "cmp ax, word ptr [rsi + {es}]",
    "je 4f",
    "mov es, word ptr [rsi + {es}]",
    "4:",
    // FS/GS: cached descriptors are trusted only while the LDT generation is unchanged.
    "mov rcx, [rip + {ldt_gen}]",
    "cmp rcx, [rdi + {seg_gen}]",
    "jne 7f",
    "mov ax, fs",
    "cmp ax, word ptr [rsi + {fs}]",
    "jne 5f",
    "mov rax, [rdi + {guest_fsbase}]",
    "wrfsbase rax",
    "jmp 6f",
    "5:",
    "mov fs, word ptr [rsi + {fs}]",
    "6:",
    "mov ax, gs",
    "cmp ax, word ptr [rsi + {gs}]",
    "je 8f",
    "mov gs, word ptr [rsi + {gs}]",
    "jmp 8f",
    "7:",
    "mov fs, word ptr [rsi + {fs}]",
    "mov gs, word ptr [rsi + {gs}]",
    "mov [rdi + {seg_gen}], rcx",
    "8:",
    // Nothing of the monitor may stay visible should guest code ever reach 64-bit mode:
    // 32-bit loads zero the upper halves, R8-R15 are cleared.
    "xor r8d, r8d",
    "xor r9d, r9d",
    "xor r10d, r10d",
    "xor r11d, r11d",
    "xor r12d, r12d",
    "xor r13d, r13d",
    "xor r14d, r14d",
    "xor r15d, r15d",
    "mov eax, [rsi + {eax}]",
    "mov ebx, [rsi + {ebx}]",
    "mov ecx, [rsi + {ecx}]",
    "mov edx, [rsi + {edx}]",
    "mov edi, [rsi + {edi}]",
    "mov ebp, [rsi + {ebp}]",
    "mov esi, [rsi + {esi}]",
    "iretq",
    ".globl vmm_hostcpu_window_end",
    "vmm_hostcpu_window_end:",
    ".size vmm_hostcpu_enter, . - vmm_hostcpu_enter",
    "",
    ".p2align 4",
    ".globl vmm_hostcpu_landing",
    ".type vmm_hostcpu_landing,@function",
    // Reached by sigreturn (RSP = saved host_rsp, RFLAGS = 0x202) or by the pending jump.
    "vmm_hostcpu_landing:",
    "mov rsi, [rsp]",
    "mov rdi, [rsp + 8]",
    "mov qword ptr [rdi + {fpu_live}], 0",
    "mov eax, [rdi + {mask_lo}]",
    "mov edx, [rdi + {mask_hi}]",
    "test byte ptr [rdi + {has_xsaveopt}], 1",
    "jz 3f",
    "xsaveopt64 [rsi + {fpu}]",
    "jmp 4f",
    "3:",
    "xsave64 [rsi + {fpu}]",
    "4:",
    "test byte ptr [rdi + {light_fpu}], 1",
    "jz 1f",
    monitor_fpu!(),
    "jmp 2f",
    "1:",
    "xrstor64 [rdi + {host_xsave}]",
    "2:",
    ".globl vmm_hostcpu_landing_tail",
    "vmm_hostcpu_landing_tail:",
    "rdfsbase rax",
    "mov [rdi + {guest_fsbase}], rax",
    "mov rax, [rdi + {host_fsbase}]",
    "wrfsbase rax",
    "add rsp, 16",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size vmm_hostcpu_landing, . - vmm_hostcpu_landing",
    "",
    ".p2align 4",
    ".globl vmm_hostcpu_gate_landing",
    ".type vmm_hostcpu_gate_landing,@function",
    // A gate exit is a call the guest made, not an interruption: what the monitor's code
    // can change of the guest's extended state (XMM0-7 as scratch, MXCSR as its own
    // control) is put aside and the rest stays in the CPU for the next entry, sparing an
    // XSAVE and an XRSTOR (about 360 of the empty exit's 600 cycles, measured). The
    // monitor executes no x87 or MMX instruction, and the guest has no AVX (the VM's CPU
    // model lacks XSAVE), so nothing else of the guest's is touched before the next
    // entry or `vmm_hostcpu_fpu_spill`.
    "vmm_hostcpu_gate_landing:",
    "mov rsi, [rsp]",
    "mov rdi, [rsp + 8]",
    "test byte ptr [rdi + {light_gate}], 1",
    "jz vmm_hostcpu_landing",
    "movaps [rdi + {live_xmm}], xmm0",
    "movaps [rdi + {live_xmm} + 16], xmm1",
    "movaps [rdi + {live_xmm} + 32], xmm2",
    "movaps [rdi + {live_xmm} + 48], xmm3",
    "movaps [rdi + {live_xmm} + 64], xmm4",
    "movaps [rdi + {live_xmm} + 80], xmm5",
    "movaps [rdi + {live_xmm} + 96], xmm6",
    "movaps [rdi + {live_xmm} + 112], xmm7",
    "stmxcsr [rdi + {live_mxcsr}]",
    "ldmxcsr [rdi + {host_mxcsr}]",
    "mov [rdi + {fpu_live}], rsi",
    "jmp vmm_hostcpu_landing_tail",
    ".size vmm_hostcpu_gate_landing, . - vmm_hostcpu_gate_landing",
    "",
    ".p2align 4",
    ".globl vmm_hostcpu_fpu_spill",
    ".type vmm_hostcpu_fpu_spill,@function",
    // rdi = *mut CpuBlock, rsi = *mut XsaveArea or null. Completes the extended state
    // left in the CPU by a gate landing, stores it at rsi (unless null) and gives the
    // monitor a clean FPU, as the landing does.
    "vmm_hostcpu_fpu_spill:",
    "cmp qword ptr [rdi + {fpu_live}], 0",
    "je 2f",
    "mov qword ptr [rdi + {fpu_live}], 0",
    "test rsi, rsi",
    "jz 1f",
    load_live_xmm!(),
    "mov eax, [rdi + {mask_lo}]",
    "mov edx, [rdi + {mask_hi}]",
    "xsave64 [rsi]",
    "1:",
    monitor_fpu!(),
    "2:",
    "ret",
    ".size vmm_hostcpu_fpu_spill, . - vmm_hostcpu_fpu_spill",
    host_rsp = const offset_of!(CpuBlock, host_rsp),
    host_fsbase = const offset_of!(CpuBlock, host_fsbase),
    guest_fsbase = const offset_of!(CpuBlock, guest_fsbase),
    seg_gen = const offset_of!(CpuBlock, seg_gen),
    mask_lo = const offset_of!(CpuBlock, xsave_mask_lo),
    mask_hi = const offset_of!(CpuBlock, xsave_mask_hi),
    host_mxcsr = const offset_of!(CpuBlock, host_mxcsr),
    host_fcw = const offset_of!(CpuBlock, host_fcw),
    light_fpu = const offset_of!(CpuBlock, light_fpu),
    has_avx = const offset_of!(CpuBlock, has_avx),
    has_xsaveopt = const offset_of!(CpuBlock, has_xsaveopt),
    host_xsave = const offset_of!(CpuBlock, host_xsave),
    pending = const offset_of!(CpuBlock, pending),
    fpu_live = const offset_of!(CpuBlock, fpu_live),
    live_xmm = const offset_of!(CpuBlock, live_xmm),
    live_mxcsr = const offset_of!(CpuBlock, live_mxcsr),
    light_gate = const offset_of!(CpuBlock, light_gate),
    has_opmask = const offset_of!(CpuBlock, has_opmask),
    ldt_gen = sym super::ldt::LDT_GENERATION,
    fpu = const offset_of!(GuestContext, fpu),
    eax = const offset_of!(GuestContext, eax),
    ebx = const offset_of!(GuestContext, ebx),
    ecx = const offset_of!(GuestContext, ecx),
    edx = const offset_of!(GuestContext, edx),
    esi = const offset_of!(GuestContext, esi),
    edi = const offset_of!(GuestContext, edi),
    ebp = const offset_of!(GuestContext, ebp),
    esp = const offset_of!(GuestContext, esp),
    eip = const offset_of!(GuestContext, eip),
    eflags = const offset_of!(GuestContext, eflags),
    cs = const offset_of!(GuestContext, cs),
    ss = const offset_of!(GuestContext, ss),
    ds = const offset_of!(GuestContext, ds),
    es = const offset_of!(GuestContext, es),
    fs = const offset_of!(GuestContext, fs),
    gs = const offset_of!(GuestContext, gs),
);

// The gate (ARCHITECTURE §5b): translated code leaves with a far jump to the host's 64-bit
// code selector at a two-instruction trampoline in the monitor window, which jumps here.
// The guest's registers are stored into the context the run was entered with, the stack
// becomes the monitor's (the one `vmm_hostcpu_enter` left), RFLAGS the monitor's, and the
// gate's landing pad finishes much as a signal exit's does (the monitor's FS base and
// MXCSR back), but leaves most of the guest's extended state in the CPU. No guest memory is touched: the guest's ESP is
// only read. A signal that lands here finds the host's 64-bit CS above 4 GiB and only
// marks work pending.
std::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl vmm_hostcpu_gate",
    ".type vmm_hostcpu_gate,@function",
    "vmm_hostcpu_gate:",
    "mov [rip + {gate_eax}], rax",
    "mov rax, [rip + {gate_block}]",
    "mov rax, [rax + {ctx}]",
    "mov [rax + {ebx}], ebx",
    "mov [rax + {ecx}], ecx",
    "mov [rax + {edx}], edx",
    "mov [rax + {esi}], esi",
    "mov [rax + {edi}], edi",
    "mov [rax + {ebp}], ebp",
    "mov [rax + {esp}], esp",
    "mov ecx, [rip + {gate_eax}]",
    "mov [rax + {eax}], ecx",
    "mov dword ptr [rax + {eip}], 0",
    "mov rdx, [rip + {gate_block}]",
    "mov rsp, [rdx + {host_rsp}]",
    "mov ecx, {host_ss}",
    "mov ss, ecx",
    "pushfq",
    "pop rcx",
    "mov [rax + {eflags}], ecx",
    "push 0x202",
    "popfq",
    "mov byte ptr [rdx + {landing}], {gate}",
    "jmp vmm_hostcpu_gate_landing",
    ".size vmm_hostcpu_gate, . - vmm_hostcpu_gate",
    gate_eax = sym GATE_EAX,
    gate_block = sym GATE_BLOCK,
    ctx = const offset_of!(CpuBlock, ctx),
    host_rsp = const offset_of!(CpuBlock, host_rsp),
    landing = const offset_of!(CpuBlock, landing),
    gate = const Landing::Gate as u8,
    host_ss = const super::HOST_SS64,
    eax = const offset_of!(GuestContext, eax),
    ebx = const offset_of!(GuestContext, ebx),
    ecx = const offset_of!(GuestContext, ecx),
    edx = const offset_of!(GuestContext, edx),
    esi = const offset_of!(GuestContext, esi),
    edi = const offset_of!(GuestContext, edi),
    ebp = const offset_of!(GuestContext, ebp),
    esp = const offset_of!(GuestContext, esp),
    eip = const offset_of!(GuestContext, eip),
    eflags = const offset_of!(GuestContext, eflags),
);

extern "C" {
    fn vmm_hostcpu_gate();
    fn vmm_hostcpu_enter(block: *mut CpuBlock, ctx: *mut GuestContext);
    fn vmm_hostcpu_landing();
    fn vmm_hostcpu_fpu_spill(block: *mut CpuBlock, dst: *mut XsaveArea);
    fn vmm_hostcpu_window_begin();
    fn vmm_hostcpu_window_end();
}

/// Completes the extended state a gate landing left in the CPU and stores it into `dst`
/// (or drops it when `dst` is `None`), leaving the monitor a clean FPU. Does nothing when
/// no state is left there.
///
/// # Safety
/// `block` must be the calling thread's live `CpuBlock`, not inside a run.
pub(crate) unsafe fn spill_fpu(block: *mut CpuBlock, dst: Option<&mut XsaveArea>) {
    let dst = dst.map_or(std::ptr::null_mut(), |d| d as *mut XsaveArea);
    // SAFETY: the caller upholds the contract; `dst` is null or an exclusive, 64-byte
    // aligned XSAVE area of XSAVE_AREA_SIZE bytes, which holds the host's components
    // (HostCpu::new checked). The routine clobbers only caller-saved registers and
    // leaves MXCSR, the x87 control word and an empty x87 stack as the ABI expects.
    unsafe { vmm_hostcpu_fpu_spill(block, dst) }
}

/// Address of the 64-bit gate code the window's trampoline jumps to.
pub(crate) fn gate_entry() -> u64 {
    vmm_hostcpu_gate as *const () as usize as u64
}

/// Address of the landing pad the handler redirects guest exits to.
pub(crate) fn landing_pad() -> u64 {
    vmm_hostcpu_landing as *const () as usize as u64
}

/// `[begin, end)` of the entry instructions that run with guest state half loaded.
pub(crate) fn entry_window() -> std::ops::Range<u64> {
    vmm_hostcpu_window_begin as *const () as usize as u64
        ..vmm_hostcpu_window_end as *const () as usize as u64
}

/// Runs the guest described by `*ctx` until the next signal.
///
/// # Safety
/// `block` must be the calling thread's registered, live `CpuBlock` (its altstack table
/// entry lets the handler find it) with `block.ctx == ctx`; `ctx` must be valid for writes
/// and its selectors validated (LDT, RPL 3) so the guest cannot run with host segments.
pub(crate) unsafe fn enter(block: *mut CpuBlock, ctx: *mut GuestContext) {
    // SAFETY: the caller upholds the contract above; the assembly returns like an ordinary
    // SysV function: callee-saved registers, the FS base, MXCSR and the x87 control word
    // are restored by the landing pad (vector registers are caller-saved and come back
    // zeroed or holding guest values), DF is clear (the handler redirects with
    // RFLAGS = 0x202). DS/ES/FS/GS keep guest selectors, which 64-bit code does not use
    // for addressing; the FS base is the monitor's.
    unsafe { vmm_hostcpu_enter(block, ctx) }
}

/// The calling thread's FS base.
pub(crate) fn read_fs_base() -> u64 {
    let fs: u64;
    // SAFETY: RDFSBASE only reads a register; HostCpu::new checked that the kernel enabled
    // FSGSBASE before calling this.
    unsafe {
        std::arch::asm!("rdfsbase {}", out(reg) fs, options(nomem, nostack, preserves_flags))
    };
    fs
}

/// Loads null selectors into DS/ES/FS/GS and puts `fsbase` back, leaving the thread's
/// segment registers as a plain x86-64 process has them.
pub(crate) fn reset_data_segments(fsbase: u64) {
    // SAFETY: null selectors are always loadable in 64-bit mode and ignored for
    // addressing; the FS base is set back to the thread's own TLS base right away, and
    // nothing between the two touches TLS.
    unsafe {
        std::arch::asm!(
            "mov ds, {z:x}",
            "mov es, {z:x}",
            "mov fs, {z:x}",
            "mov gs, {z:x}",
            "wrfsbase {b}",
            z = in(reg) 0u64,
            b = in(reg) fsbase,
            options(nostack, preserves_flags)
        )
    };
}
