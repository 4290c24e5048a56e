//! What each IA-32 instruction means for a guest that runs at host CPL 3.
//!
//! The guest kernel believes it runs at CPL 0 but really runs at CPL 3 in
//! compatibility mode (ARCHITECTURE §1–§2). Every instruction falls in one of three
//! groups, the [`Action`] of its [`Class`]:
//!
//! * [`Action::None`]: the instruction gives the same result at CPL 3 as the guest
//!   expects at its virtual CPL.
//! * [`Action::Patch`]: *sensitive but unprivileged* (Robin & Irvine, "Analysis of the
//!   Intel Pentium's Ability to Support a Secure Virtual Machine Monitor", USENIX
//!   Security 2000): it runs at CPL 3 without faulting but observes or changes state the
//!   monitor virtualises, so it must be rewritten into a trap before it first runs.
//! * [`Action::Trap`]: privileged or faulting at CPL 3; the CPU already delivers an exit
//!   (a signal) and the monitor emulates it there, so no patch is needed.
//! * [`Action::Conditional`]: runs natively with the right result *unless* virtual state
//!   the host CPU never sees says it must fault (the FPU with the guest's CR0.TS or
//!   CR0.EM set). The engine patches these sites only while that state is in force.
//!
//! The table in [`CLASS_TABLE`] is the single source of the classes, their names, their
//! actions and the reference that justifies each; [`classify`] maps decoded instructions
//! onto it and [`flow`] tells the scanner where execution may go next.

use std::sync::OnceLock;

use iced_x86::{Code, FlowControl, Instruction, Mnemonic};

/// The byte every patched instruction starts with: `INT3`.
///
/// An `INT3` exit arrives as SIGTRAP, which is cheaper than the #GP path on this host
/// because the host kernel first tries its UMIP fix-up on every #GP (ARCHITECTURE §2).
pub const TRAP_BYTE: u8 = 0xCC;

/// What the rewriter does about an instruction class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Runs natively with the result the guest expects.
    None,
    /// Runs at CPL 3 without faulting but misbehaves: rewrite its first byte into
    /// [`TRAP_BYTE`] and emulate it when the trap fires.
    Patch,
    /// Faults at CPL 3 by itself; emulated at the exit, no patch needed.
    Trap,
    /// Runs natively unless virtual state the host CPU cannot hold says it must fault:
    /// patched (as [`Action::Patch`]) only while that state is in force.
    Conditional,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: &'static [Action] = &[
        Action::None,
        Action::Patch,
        Action::Trap,
        Action::Conditional,
    ];

    /// Lower-case name: `"none"`, `"patch"`, `"trap"` or `"cond"`.
    pub fn name(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Patch => "patch",
            Action::Trap => "trap",
            Action::Conditional => "cond",
        }
    }

    /// The action called `name` (as returned by [`Action::name`]).
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.name() == name)
    }
}

/// One row of the audited class table.
#[derive(Clone, Copy, Debug)]
pub struct ClassInfo {
    /// The class this row describes.
    pub class: Class,
    /// Stable lower-case snake name used by the CLI and test vectors.
    pub name: &'static str,
    /// What the rewriter does about it.
    pub action: Action,
    /// Where the behaviour is specified (Intel SDM volume and instruction or section).
    pub reference: &'static str,
    /// Why the instruction has this action, in one sentence.
    pub description: &'static str,
}

macro_rules! class_table {
    ($( $(#[$doc:meta])* $variant:ident, $name:literal, $action:ident, $reference:literal, $description:literal; )*) => {
        /// The class of an instruction with respect to running at host CPL 3.
        ///
        /// See [`CLASS_TABLE`] for the action and the justification of each class.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Class {
            $( $(#[$doc])* $variant, )*
        }

        /// The audited table: class → name → action → SDM reference → why.
        pub const CLASS_TABLE: &[ClassInfo] = &[
            $( ClassInfo {
                class: Class::$variant,
                name: $name,
                action: Action::$action,
                reference: $reference,
                description: $description,
            }, )*
        ];

        impl Class {
            /// Every class, in declaration (and table) order.
            pub const ALL: &'static [Class] = &[ $( Class::$variant, )* ];

            /// This class's row of [`CLASS_TABLE`].
            // reason: the enum and the table are generated from the same list, in the same
            // order, so every discriminant indexes its own row (and the lengths are
            // asserted equal below); there is no other answer to give.
            #[allow(clippy::indexing_slicing)]
            pub fn info(self) -> &'static ClassInfo {
                &CLASS_TABLE[self as usize]
            }
        }

        const _: () = assert!(CLASS_TABLE.len() == Class::ALL.len());
    };
}

class_table! {
    /// Everything that behaves the same at CPL 3 as the guest expects.
    Innocuous, "innocuous", None, "-", "Same result at host CPL 3 as at the guest's virtual CPL.";

    // --- Sensitive, unprivileged: must be patched. ---
    /// PUSHF/PUSHFD (all operand sizes).
    Pushf, "pushf", Patch, "SDM 2B PUSHF; Robin & Irvine", "Pushes the host's IF and IOPL instead of the guest's virtual ones.";
    /// POPF/POPFD (all operand sizes).
    Popf, "popf", Patch, "SDM 2B POPF; Robin & Irvine", "Silently ignores IF and IOPL changes at CPL 3 instead of faulting.";
    /// SGDT.
    Sgdt, "sgdt", Patch, "SDM 2B SGDT; Robin & Irvine", "Stores the host GDTR (or a UMIP dummy emulated by the host kernel) instead of the guest's.";
    /// SIDT.
    Sidt, "sidt", Patch, "SDM 2B SIDT; Robin & Irvine", "Stores the host IDTR (or a UMIP dummy emulated by the host kernel) instead of the guest's.";
    /// SMSW (register and memory forms).
    Smsw, "smsw", Patch, "SDM 2B SMSW; Robin & Irvine", "Runs natively and shows the host's CR0 bits, not the guest's.";
    /// SLDT.
    Sldt, "sldt", Patch, "SDM 2B SLDT; Robin & Irvine", "Stores the host LDTR (or a UMIP dummy) instead of the guest's.";
    /// STR.
    Str, "str", Patch, "SDM 2B STR; Robin & Irvine", "Stores the host TR (or a UMIP dummy) instead of the guest's.";
    /// LAR.
    Lar, "lar", Patch, "SDM 2A LAR; Robin & Irvine", "Checks the selector against the host's descriptor tables and CPL 3.";
    /// LSL.
    Lsl, "lsl", Patch, "SDM 2A LSL; Robin & Irvine", "Reads the limit from the host's descriptor tables with CPL 3 checks.";
    /// VERR.
    Verr, "verr", Patch, "SDM 2B VERR; Robin & Irvine", "Checks readability against the host's descriptor tables at CPL 3.";
    /// VERW.
    Verw, "verw", Patch, "SDM 2B VERW; Robin & Irvine", "Checks writability against the host's descriptor tables at CPL 3.";
    /// MOV r/m16, Sreg (and the r32 form).
    MovFromSreg, "mov_from_sreg", Patch, "SDM 2A MOV (8C); Robin & Irvine", "Reads the mirror selector with RPL 3, not the guest-visible selector.";
    /// PUSH ES/CS/SS/DS/FS/GS in every operand size.
    PushSreg, "push_sreg", Patch, "SDM 2B PUSH (06/0E/16/1E, 0F A0/A8); Robin & Irvine", "Pushes the mirror selector with RPL 3, not the guest-visible selector.";
    /// POP ES/SS/DS/FS/GS in every operand size.
    PopSreg, "pop_sreg", Patch, "SDM 2B POP (07/17/1F, 0F A1/A9); Robin & Irvine", "Loads a guest selector against the host's descriptor tables.";
    /// MOV Sreg, r/m16.
    MovToSreg, "mov_to_sreg", Patch, "SDM 2A MOV (8E); Robin & Irvine", "Loads a guest selector against the host's descriptor tables.";
    /// LDS.
    Lds, "lds", Patch, "SDM 2A LDS/LES/LFS/LGS/LSS", "Loads DS from a guest selector against the host's descriptor tables.";
    /// LES.
    Les, "les", Patch, "SDM 2A LDS/LES/LFS/LGS/LSS", "Loads ES from a guest selector against the host's descriptor tables.";
    /// LFS.
    Lfs, "lfs", Patch, "SDM 2A LDS/LES/LFS/LGS/LSS", "Loads FS from a guest selector against the host's descriptor tables.";
    /// LGS.
    Lgs, "lgs", Patch, "SDM 2A LDS/LES/LFS/LGS/LSS", "Loads GS from a guest selector against the host's descriptor tables.";
    /// LSS.
    Lss, "lss", Patch, "SDM 2A LDS/LES/LFS/LGS/LSS", "Loads SS from a guest selector against the host's descriptor tables.";
    /// Far CALL, direct (ptr16:16/ptr16:32) or indirect (m16:16/m16:32).
    FarCall, "far_call", Patch, "SDM 2A CALL (9A, FF /3); Robin & Irvine", "Loads CS through the host's descriptor tables and pushes the mirror CS.";
    /// Far JMP, direct (ptr16:16/ptr16:32) or indirect (m16:16/m16:32).
    FarJmp, "far_jmp", Patch, "SDM 2A JMP (EA, FF /5); Robin & Irvine", "Loads CS through the host's descriptor tables.";
    /// Far RET, with and without imm16.
    FarRet, "far_ret", Patch, "SDM 2B RET (CA/CB); Robin & Irvine", "Pops CS (and SS on a level change) through the host's descriptor tables.";
    /// IRET/IRETD.
    Iret, "iret", Patch, "SDM 2A IRET; Robin & Irvine (POPF rules)", "Loads CS/SS through the host tables and silently drops IF/IOPL changes.";
    /// SYSENTER.
    Sysenter, "sysenter", Patch, "SDM 2B SYSENTER; ARCHITECTURE §2", "Enters the host kernel's fast-syscall path, which mangles guest state before seccomp sees it.";
    /// SYSCALL.
    Syscall, "syscall", Patch, "SDM 2B SYSCALL; ARCHITECTURE §2", "On AMD hosts it enters the host kernel's 32-bit syscall path (Intel raises #UD); patched so the guest never depends on the host CPU.";

    // --- Conditional: patched only while the guest's virtual state says they fault. ---
    /// x87, WAIT/FWAIT, MMX, SSE through SSE4, AVX, FXSAVE/FXRSTOR and XSAVE/XRSTOR: every
    /// instruction whose behaviour depends on CR0.TS, CR0.EM or CR0.MP ([`fpu_kind`]).
    Fpu, "fpu", Conditional, "SDM 3A §2.5 (CR0.EM, MP, TS) and Table 2-2; SDM 2 per instruction (#NM, #UD)", "The host FPU never sees the guest's virtual CR0.TS and CR0.EM: patched while either is set, so the instruction raises #NM (or #UD) as the guest expects.";
    /// PAUSE.
    Pause, "pause", Conditional, "SDM 2B PAUSE; SDM 3C §25.1.3 (PAUSE-loop exiting)", "A spin-wait hint with nothing to emulate: patched (translated to an exit) while several vCPUs share the monitor's thread, so a spinner lets the vCPU it waits for run, as pause-loop exiting does on hardware.";

    // --- Privileged or faulting at CPL 3: the CPU traps them already. ---
    /// CLI.
    Cli, "cli", Trap, "SDM 2A CLI", "#GP at CPL 3 with IOPL 0.";
    /// STI.
    Sti, "sti", Trap, "SDM 2B STI", "#GP at CPL 3 with IOPL 0.";
    /// HLT.
    Hlt, "hlt", Trap, "SDM 2A HLT", "#GP at CPL > 0.";
    /// IN (immediate and DX port).
    In, "in", Trap, "SDM 2A IN", "#GP: IOPL 0 and no I/O bitmap permission for the process.";
    /// OUT (immediate and DX port).
    Out, "out", Trap, "SDM 2B OUT", "#GP: IOPL 0 and no I/O bitmap permission for the process.";
    /// INSB/INSW/INSD.
    Ins, "ins", Trap, "SDM 2A INS", "#GP: IOPL 0 and no I/O bitmap permission for the process.";
    /// OUTSB/OUTSW/OUTSD.
    Outs, "outs", Trap, "SDM 2B OUTS", "#GP: IOPL 0 and no I/O bitmap permission for the process.";
    /// LGDT.
    Lgdt, "lgdt", Trap, "SDM 2A LGDT", "#GP at CPL > 0.";
    /// LIDT.
    Lidt, "lidt", Trap, "SDM 2A LIDT", "#GP at CPL > 0.";
    /// LLDT.
    Lldt, "lldt", Trap, "SDM 2A LLDT", "#GP at CPL > 0.";
    /// LTR.
    Ltr, "ltr", Trap, "SDM 2A LTR", "#GP at CPL > 0.";
    /// MOV to or from CR0–CR7 (including the LOCK-prefixed CR8 alias).
    MovCr, "mov_cr", Trap, "SDM 2A MOV (Control Registers)", "#GP at CPL > 0.";
    /// MOV to or from DR0–DR7.
    MovDr, "mov_dr", Trap, "SDM 2A MOV (Debug Registers)", "#GP at CPL > 0.";
    /// CLTS.
    Clts, "clts", Trap, "SDM 2A CLTS", "#GP at CPL > 0.";
    /// INVD.
    Invd, "invd", Trap, "SDM 2A INVD", "#GP at CPL > 0.";
    /// WBINVD.
    Wbinvd, "wbinvd", Trap, "SDM 2B WBINVD", "#GP at CPL > 0.";
    /// INVLPG.
    Invlpg, "invlpg", Trap, "SDM 2A INVLPG", "#GP at CPL > 0.";
    /// RDMSR (and RDMSRLIST).
    Rdmsr, "rdmsr", Trap, "SDM 2B RDMSR", "#GP at CPL > 0.";
    /// WRMSR (and WRMSRNS, WRMSRLIST).
    Wrmsr, "wrmsr", Trap, "SDM 2B WRMSR", "#GP at CPL > 0.";
    /// LMSW.
    Lmsw, "lmsw", Trap, "SDM 2A LMSW", "#GP at CPL > 0.";
    /// SYSEXIT.
    Sysexit, "sysexit", Trap, "SDM 2B SYSEXIT", "#GP at CPL > 0.";
    /// SYSRET.
    Sysret, "sysret", Trap, "SDM 2B SYSRET", "#UD outside 64-bit mode on Intel, #GP at CPL > 0.";
    /// RDPMC.
    Rdpmc, "rdpmc", Trap, "SDM 2B RDPMC", "#GP at CPL > 0 unless the host set CR4.PCE for this process (it does not: no perf event is mapped).";
    /// CPUID.
    Cpuid, "cpuid", Trap, "SDM 2A CPUID; ARCHITECTURE §2", "#GP through CPUID faulting, which the monitor enables with ARCH_SET_CPUID.";
    /// INT imm8.
    Int, "int", Trap, "SDM 2A INTn", "#GP (SIGSEGV, vector in the error code) on the host's DPL 0 gates; INT 3/4 reach the host's DPL 3 #BP/#OF gates and INT 0x80 the seccomp SIGSYS backstop.";
    /// INT3 (0xCC), including the monitor's own trap bytes.
    Int3, "int3", Trap, "SDM 2A INT3", "SIGTRAP; the patch table tells a patched site from a guest breakpoint.";
    /// INTO.
    Into, "into", Trap, "SDM 2A INTO", "With OF set it raises #OF through the host IDT (SIGSEGV); with OF clear it does nothing, as the guest expects.";
    /// INT1 (ICEBP, 0xF1).
    Int1, "int1", Trap, "SDM 2A INT1", "Raises #DB (SIGTRAP).";
    /// UD0/UD1/UD2.
    Ud, "ud", Trap, "SDM 2B UD", "#UD (SIGILL) by definition.";
    /// MONITOR.
    Monitor, "monitor", Trap, "SDM 2B MONITOR", "#UD at CPL > 0 unless the host enables ring-3 MONITOR (Linux does not).";
    /// MWAIT.
    Mwait, "mwait", Trap, "SDM 2B MWAIT", "#UD at CPL > 0 unless the host enables ring-3 MWAIT (Linux does not).";
    /// XSETBV.
    Xsetbv, "xsetbv", Trap, "SDM 2C XSETBV", "#GP at CPL > 0.";
    /// XSAVES.
    Xsaves, "xsaves", Trap, "SDM 2C XSAVES", "#GP at CPL > 0.";
    /// XRSTORS.
    Xrstors, "xrstors", Trap, "SDM 2C XRSTORS", "#GP at CPL > 0.";
    /// CLAC.
    Clac, "clac", Trap, "SDM 2A CLAC", "#UD at CPL > 0.";
    /// STAC.
    Stac, "stac", Trap, "SDM 2B STAC", "#UD at CPL > 0.";
    /// INVPCID.
    Invpcid, "invpcid", Trap, "SDM 2A INVPCID", "#GP at CPL > 0.";
    /// Every other instruction that faults at CPL 3 or outside SMM/VMX/SVM operation:
    /// RSM, WBNOINVD, INVLPGA/INVLPGB/TLBSYNC, VMX and SVM instructions, GETSEC,
    /// ENCLS, PCONFIG, MOV to/from test registers, LOADALL, HRESET, SNP/TDX instructions.
    Privileged, "privileged", Trap, "SDM 2 (per instruction); AMD APM 3", "Faults (#GP or #UD) at CPL 3 outside the operating modes the guest never has.";
}

impl Class {
    /// Stable lower-case snake name, e.g. `"pushf"`, `"mov_to_sreg"`, `"far_jmp"`.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// What the rewriter does about this class.
    pub fn action(self) -> Action {
        self.info().action
    }

    /// Why the class has its action, in one sentence.
    pub fn description(self) -> &'static str {
        self.info().description
    }

    /// Where the behaviour is specified.
    pub fn reference(self) -> &'static str {
        self.info().reference
    }

    /// The class called `name` (as returned by [`Class::name`]).
    pub fn from_name(name: &str) -> Option<Class> {
        CLASS_TABLE
            .iter()
            .find(|row| row.name == name)
            .map(|row| row.class)
    }
}

/// The class of one decoded instruction.
///
/// An invalid instruction (`Code::INVALID`) is [`Class::Innocuous`]: the scanner never
/// reports it as an instruction, and executing it raises #UD natively.
#[inline]
pub fn classify(instr: &Instruction) -> Class {
    classify_code(instr.code())
}

/// The class of every instruction with this iced `Code` (the class never depends on
/// operands beyond what the code encodes).
///
/// Looks the code up in a table built once from [`class_of_code`]: the scanner
/// classifies every instruction it decodes, and a table lookup keeps that off the
/// profile.
#[inline]
pub fn classify_code(code: Code) -> Class {
    static TABLE: OnceLock<Box<[Class]>> = OnceLock::new();
    let table = TABLE.get_or_init(|| Code::values().map(class_of_code).collect());
    table
        .get(code as usize)
        .copied()
        .unwrap_or_else(|| class_of_code(code))
}

/// The classification rules: what [`classify_code`] tabulates.
pub fn class_of_code(code: Code) -> Class {
    use Mnemonic as M;
    match code.mnemonic() {
        M::Pushf | M::Pushfd | M::Pushfq => Class::Pushf,
        M::Popf | M::Popfd | M::Popfq => Class::Popf,
        M::Sgdt => Class::Sgdt,
        M::Sidt => Class::Sidt,
        M::Smsw => Class::Smsw,
        M::Sldt => Class::Sldt,
        M::Str => Class::Str,
        M::Lar => Class::Lar,
        M::Lsl => Class::Lsl,
        M::Verr => Class::Verr,
        M::Verw => Class::Verw,
        M::Mov => classify_mov(code),
        M::Push => match code {
            Code::Pushw_ES
            | Code::Pushd_ES
            | Code::Pushw_CS
            | Code::Pushd_CS
            | Code::Pushw_SS
            | Code::Pushd_SS
            | Code::Pushw_DS
            | Code::Pushd_DS
            | Code::Pushw_FS
            | Code::Pushd_FS
            | Code::Pushq_FS
            | Code::Pushw_GS
            | Code::Pushd_GS
            | Code::Pushq_GS => Class::PushSreg,
            _ => Class::Innocuous,
        },
        M::Pop => match code {
            Code::Popw_ES
            | Code::Popd_ES
            | Code::Popw_CS
            | Code::Popw_SS
            | Code::Popd_SS
            | Code::Popw_DS
            | Code::Popd_DS
            | Code::Popw_FS
            | Code::Popd_FS
            | Code::Popq_FS
            | Code::Popw_GS
            | Code::Popd_GS
            | Code::Popq_GS => Class::PopSreg,
            _ => Class::Innocuous,
        },
        M::Lds => Class::Lds,
        M::Les => Class::Les,
        M::Lfs => Class::Lfs,
        M::Lgs => Class::Lgs,
        M::Lss => Class::Lss,
        M::Call => match code {
            Code::Call_ptr1616
            | Code::Call_ptr1632
            | Code::Call_m1616
            | Code::Call_m1632
            | Code::Call_m1664 => Class::FarCall,
            _ => Class::Innocuous,
        },
        M::Jmp => match code {
            Code::Jmp_ptr1616
            | Code::Jmp_ptr1632
            | Code::Jmp_m1616
            | Code::Jmp_m1632
            | Code::Jmp_m1664 => Class::FarJmp,
            _ => Class::Innocuous,
        },
        M::Retf => Class::FarRet,
        M::Iret | M::Iretd | M::Iretq => Class::Iret,
        M::Sysenter => Class::Sysenter,
        M::Syscall => Class::Syscall,
        M::Cli => Class::Cli,
        M::Sti => Class::Sti,
        M::Hlt => Class::Hlt,
        M::In => Class::In,
        M::Out => Class::Out,
        M::Insb | M::Insw | M::Insd => Class::Ins,
        M::Outsb | M::Outsw | M::Outsd => Class::Outs,
        M::Lgdt => Class::Lgdt,
        M::Lidt => Class::Lidt,
        M::Lldt => Class::Lldt,
        M::Ltr => Class::Ltr,
        M::Clts => Class::Clts,
        M::Invd => Class::Invd,
        M::Wbinvd => Class::Wbinvd,
        M::Invlpg => Class::Invlpg,
        M::Rdmsr | M::Rdmsrlist => Class::Rdmsr,
        M::Wrmsr | M::Wrmsrns | M::Wrmsrlist => Class::Wrmsr,
        M::Lmsw => Class::Lmsw,
        M::Sysexit | M::Sysexitq => Class::Sysexit,
        M::Sysret | M::Sysretq => Class::Sysret,
        M::Rdpmc => Class::Rdpmc,
        M::Cpuid => Class::Cpuid,
        M::Pause => Class::Pause,
        M::Int => Class::Int,
        M::Int3 => Class::Int3,
        M::Into => Class::Into,
        M::Int1 => Class::Int1,
        M::Ud0 | M::Ud1 | M::Ud2 => Class::Ud,
        M::Monitor => Class::Monitor,
        M::Mwait => Class::Mwait,
        M::Xsetbv => Class::Xsetbv,
        M::Xsaves | M::Xsaves64 => Class::Xsaves,
        M::Xrstors | M::Xrstors64 => Class::Xrstors,
        M::Clac => Class::Clac,
        M::Stac => Class::Stac,
        M::Invpcid => Class::Invpcid,
        M::Rsm
        | M::Wbnoinvd
        | M::Invlpga
        | M::Invlpgb
        | M::Tlbsync
        | M::Skinit
        | M::Vmrun
        | M::Vmload
        | M::Vmsave
        | M::Vmmcall
        | M::Vmcall
        | M::Vmlaunch
        | M::Vmresume
        | M::Vmxoff
        | M::Vmxon
        | M::Vmclear
        | M::Vmptrld
        | M::Vmptrst
        | M::Vmread
        | M::Vmwrite
        | M::Vmfunc
        | M::Vmgexit
        | M::Invept
        | M::Invvpid
        | M::Getsec
        | M::Encls
        | M::Pconfig
        | M::Seamcall
        | M::Seamops
        | M::Seamret
        | M::Tdcall
        | M::Psmash
        | M::Pvalidate
        | M::Rmpadjust
        | M::Rmpupdate
        | M::Hreset
        | M::Loadall
        | M::Swapgs
        | M::Erets
        | M::Eretu
        | M::Lkgs => Class::Privileged,
        _ if fpu_kind(code).is_some() => Class::Fpu,
        _ => Class::Innocuous,
    }
}

/// How an FPU, MMX or SSE instruction depends on CR0.EM, CR0.MP and CR0.TS
/// (SDM Vol. 3A §2.5 and Table 2-2, and each instruction's exception list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FpuKind {
    /// An x87 instruction (D8–DF): #NM when EM or TS is set.
    X87,
    /// WAIT/FWAIT: #NM only when both MP and TS are set.
    Wait,
    /// MMX and legacy-encoded SSE through SSE4.2 (and LDMXCSR/STMXCSR, EMMS): #UD when EM
    /// is set, otherwise #NM when TS is set.
    Simd,
    /// FXSAVE/FXRSTOR: #NM when EM or TS is set.
    Fxsr,
    /// VEX-, EVEX- and XOP-encoded instructions and XSAVE/XRSTOR/XSAVEOPT/XSAVEC: #NM
    /// when TS is set; EM does not apply.
    Extended,
}

/// The [`FpuKind`] of every instruction with this iced `Code`, or `None` when it does
/// not use the x87, MMX or SSE state (fences, prefetches, CLFLUSH, MOVNTI, CRC32, PAUSE
/// and XGETBV carry SSE-era CPUID bits but never raise #NM).
pub fn fpu_kind(code: Code) -> Option<FpuKind> {
    use iced_x86::CpuidFeature as F;
    use iced_x86::EncodingKind as E;
    use Mnemonic as M;
    match code.mnemonic() {
        M::Wait => return Some(FpuKind::Wait),
        M::Fxsave | M::Fxsave64 | M::Fxrstor | M::Fxrstor64 => return Some(FpuKind::Fxsr),
        M::Xsave
        | M::Xsave64
        | M::Xrstor
        | M::Xrstor64
        | M::Xsaveopt
        | M::Xsaveopt64
        | M::Xsavec
        | M::Xsavec64 => return Some(FpuKind::Extended),
        M::Sfence
        | M::Lfence
        | M::Mfence
        | M::Prefetchnta
        | M::Prefetcht0
        | M::Prefetcht1
        | M::Prefetcht2
        | M::Clflush
        | M::Movnti
        | M::Crc32
        | M::Pause
        | M::Xgetbv => return None,
        _ => {}
    }
    let features = code.cpuid_features();
    let any = |set: &[F]| features.iter().any(|f| set.contains(f));
    if any(&[
        F::FPU,
        F::FPU287,
        F::FPU287XL_ONLY,
        F::FPU387,
        F::FPU387SL_ONLY,
        F::CYRIX_FPU,
    ]) {
        return Some(FpuKind::X87);
    }
    match code.encoding() {
        // BMI, TBM and LWP are VEX/XOP-encoded but work on general registers only.
        E::VEX | E::EVEX | E::XOP if any(&[F::BMI1, F::BMI2, F::TBM, F::LWP]) => None,
        E::VEX | E::EVEX | E::XOP => Some(FpuKind::Extended),
        E::D3NOW => Some(FpuKind::Simd),
        E::Legacy
            if any(&[
                F::MMX,
                F::D3NOW,
                F::D3NOWEXT,
                F::CYRIX_D3NOW,
                F::SSE,
                F::SSE2,
                F::SSE3,
                F::SSSE3,
                F::SSE4_1,
                F::SSE4_2,
                F::SSE4A,
                F::AES,
                F::PCLMULQDQ,
                F::SHA,
                F::GFNI,
                F::KL,
                F::AESKLE,
                F::WIDE_KL,
            ]) =>
        {
            Some(FpuKind::Simd)
        }
        _ => None,
    }
}

fn classify_mov(code: Code) -> Class {
    match code {
        Code::Mov_rm16_Sreg | Code::Mov_r32m16_Sreg | Code::Mov_r64m16_Sreg => Class::MovFromSreg,
        Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 | Code::Mov_Sreg_r64m16 => Class::MovToSreg,
        Code::Mov_r32_cr | Code::Mov_r64_cr | Code::Mov_cr_r32 | Code::Mov_cr_r64 => Class::MovCr,
        Code::Mov_r32_dr | Code::Mov_r64_dr | Code::Mov_dr_r32 | Code::Mov_dr_r64 => Class::MovDr,
        Code::Mov_r32_tr | Code::Mov_tr_r32 => Class::Privileged,
        _ => Class::Innocuous,
    }
}

/// Where execution may continue after an instruction, as far as the scanner can tell
/// from the instruction alone. Targets are in the decoder's IP space: the address in
/// 32-bit code decoded at its address, the offset in CS in 16-bit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flow {
    /// Continues with the next instruction.
    Sequential,
    /// Always continues at the near target (JMP rel).
    Jump(u32),
    /// Continues at the near target or with the next instruction (Jcc, LOOP, JCXZ, XBEGIN).
    Branch(u32),
    /// Calls the near target; the callee normally returns to the next instruction.
    Call(u32),
    /// Calls through a register or memory; the callee normally returns to the next
    /// instruction.
    IndirectCall,
    /// Near RET: continues at an address popped from the stack.
    Return,
    /// Near JMP through a register or memory: the target is unknown.
    Indirect,
    /// Control leaves for another code segment, a handler or nowhere: far transfers,
    /// IRET, SYSENTER/SYSCALL/SYSEXIT/SYSRET, INT3 (padding, breakpoints, trap sites) and
    /// UD0/UD1/UD2.
    Stop,
}

impl Flow {
    /// Whether execution may continue with the next instruction.
    pub fn falls_through(self) -> bool {
        matches!(
            self,
            Flow::Sequential | Flow::Branch(_) | Flow::Call(_) | Flow::IndirectCall
        )
    }
}

/// Where execution may continue after `instr` (see [`Flow`]).
///
/// INT n, INTO and INT1 fall through: the guest's handler returns to the next
/// instruction. HLT falls through too: the guest resumes after it at the next interrupt
/// (`sti; hlt; ret` is Linux's idle). Far transfers stop the path because their target
/// lies in another segment whose base the scanner does not know.
pub fn flow(instr: &Instruction) -> Flow {
    flow_of(instr, classify(instr))
}

/// [`flow`] for an instruction whose class is already known.
pub(crate) fn flow_of(instr: &Instruction, class: Class) -> Flow {
    match class {
        Class::FarCall
        | Class::FarJmp
        | Class::FarRet
        | Class::Iret
        | Class::Sysenter
        | Class::Syscall
        | Class::Sysexit
        | Class::Sysret
        | Class::Int3
        | Class::Ud => return Flow::Stop,
        _ => {}
    }
    // Near branch targets are in the decoder's IP space: they wrap at 4 GiB in 32-bit
    // code and at 64 KiB for 16-bit operand size, which iced already applies; only
    // 64-bit code has wider ones, and it gets iced's "no branch" target.
    let target = u32::try_from(instr.near_branch_target()).unwrap_or(0);
    match instr.flow_control() {
        FlowControl::Next | FlowControl::Interrupt => Flow::Sequential,
        FlowControl::UnconditionalBranch => Flow::Jump(target),
        FlowControl::ConditionalBranch => Flow::Branch(target),
        FlowControl::Call => Flow::Call(target),
        FlowControl::IndirectCall => Flow::IndirectCall,
        FlowControl::IndirectBranch => Flow::Indirect,
        FlowControl::Return => Flow::Return,
        FlowControl::XbeginXabortXend => {
            if instr.mnemonic() == Mnemonic::Xbegin {
                Flow::Branch(target)
            } else {
                Flow::Sequential
            }
        }
        FlowControl::Exception => Flow::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(32, bytes, 0x1000, DecoderOptions::NONE).decode()
    }

    #[test]
    fn table_is_in_declaration_order_and_names_are_unique() {
        assert_eq!(Class::ALL.len(), CLASS_TABLE.len());
        for (i, (class, row)) in Class::ALL.iter().zip(CLASS_TABLE).enumerate() {
            assert_eq!(*class as usize, i);
            assert_eq!(*class, row.class);
            assert_eq!(Class::from_name(row.name), Some(*class));
            assert!(row
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            assert!(!row.description.is_empty() && !row.reference.is_empty());
        }
        assert_eq!(Class::from_name("no_such_class"), None);
    }

    #[test]
    fn action_names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::from_name(a.name()), Some(*a));
        }
    }

    /// Robin & Irvine's 17 sensitive unprivileged instructions (USENIX Security 2000,
    /// §4.2): each, in its sensitive form, must be classified for patching (INT n traps
    /// natively at CPL 3 on the host's gates, so it is trapped instead of patched).
    #[test]
    fn robin_irvine_seventeen_are_all_handled() {
        let cases: &[(&str, &[u8], Class)] = &[
            ("SGDT", &[0x0F, 0x01, 0x00], Class::Sgdt),
            ("SIDT", &[0x0F, 0x01, 0x08], Class::Sidt),
            ("SLDT", &[0x0F, 0x00, 0xC0], Class::Sldt),
            ("SMSW", &[0x0F, 0x01, 0xE0], Class::Smsw),
            ("PUSHF", &[0x9C], Class::Pushf),
            ("POPF", &[0x9D], Class::Popf),
            ("LAR", &[0x0F, 0x02, 0xC1], Class::Lar),
            ("LSL", &[0x0F, 0x03, 0xC1], Class::Lsl),
            ("VERR", &[0x0F, 0x00, 0xE0], Class::Verr),
            ("VERW", &[0x0F, 0x00, 0xE8], Class::Verw),
            ("POP Sreg", &[0x1F], Class::PopSreg),
            ("PUSH Sreg", &[0x0E], Class::PushSreg),
            ("CALL far", &[0x9A, 0, 0, 0, 0, 0x10, 0], Class::FarCall),
            ("JMP far", &[0xEA, 0, 0, 0, 0, 0x10, 0], Class::FarJmp),
            ("INT n", &[0xCD, 0x80], Class::Int),
            ("RET far", &[0xCB], Class::FarRet),
            ("STR", &[0x0F, 0x00, 0xC8], Class::Str),
            ("MOV Sreg", &[0x8E, 0xD8], Class::MovToSreg),
            ("MOV from Sreg", &[0x8C, 0xD8], Class::MovFromSreg),
        ];
        for (what, bytes, class) in cases {
            let instr = decode(bytes);
            assert_eq!(classify(&instr), *class, "{what}");
            assert_ne!(class.action(), Action::None, "{what}");
            let expected = if *class == Class::Int {
                Action::Trap
            } else {
                Action::Patch
            };
            assert_eq!(class.action(), expected, "{what}");
        }
    }

    /// The code table agrees with the operand view: a PUSH/POP is segment-register
    /// class exactly when its operand is a segment register.
    #[test]
    fn sreg_push_pop_codes_match_operands() {
        use iced_x86::OpCodeOperandKind as K;
        for code in Code::values() {
            let m = code.mnemonic();
            if m != Mnemonic::Push && m != Mnemonic::Pop {
                continue;
            }
            let op = code.op_code();
            let sreg = op.op_count() == 1
                && matches!(op.op_kind(0), K::es | K::cs | K::ss | K::ds | K::fs | K::gs);
            let expected = match (sreg, m) {
                (false, _) => Class::Innocuous,
                (true, Mnemonic::Push) => Class::PushSreg,
                (true, _) => Class::PopSreg,
            };
            assert_eq!(class_of_code(code), expected, "{code:?}");
        }
    }

    #[test]
    fn table_matches_rules_for_every_code() {
        for code in Code::values() {
            assert_eq!(classify_code(code), class_of_code(code), "{code:?}");
        }
    }

    #[test]
    fn fpu_kinds_follow_the_cr0_rules_of_each_instruction_family() {
        let kind = |bytes: &[u8]| fpu_kind(decode(bytes).code());
        assert_eq!(kind(&[0xd9, 0xe8]), Some(FpuKind::X87)); // fld1
        assert_eq!(kind(&[0xdf, 0xe0]), Some(FpuKind::X87)); // fnstsw ax
        assert_eq!(kind(&[0x9b]), Some(FpuKind::Wait));
        assert_eq!(kind(&[0x0f, 0x77]), Some(FpuKind::Simd)); // emms
        assert_eq!(kind(&[0x66, 0x0f, 0xef, 0xc0]), Some(FpuKind::Simd)); // pxor xmm0, xmm0
        assert_eq!(kind(&[0x0f, 0xae, 0x10]), Some(FpuKind::Simd)); // ldmxcsr
        assert_eq!(kind(&[0x0f, 0xae, 0x00]), Some(FpuKind::Fxsr)); // fxsave
        assert_eq!(kind(&[0x0f, 0xae, 0x20]), Some(FpuKind::Extended)); // xsave
        assert_eq!(kind(&[0xc5, 0xf8, 0x58, 0xc0]), Some(FpuKind::Extended)); // vaddps
        assert_eq!(kind(&[0x0f, 0xae, 0xf8]), None); // sfence
        assert_eq!(kind(&[0x0f, 0xc3, 0x00]), None); // movnti
        assert_eq!(kind(&[0xc4, 0xe2, 0x78, 0xf2, 0xc0]), None); // andn (BMI1)
        assert_eq!(kind(&[0x0f, 0x01, 0xd0]), None); // xgetbv
        assert_eq!(classify(&decode(&[0xd9, 0xe8])), Class::Fpu);
        assert_eq!(Class::Fpu.action(), Action::Conditional);
    }

    #[test]
    fn flows() {
        assert_eq!(flow(&decode(&[0x90])), Flow::Sequential);
        assert_eq!(flow(&decode(&[0xEB, 0x10])), Flow::Jump(0x1012));
        assert_eq!(flow(&decode(&[0x74, 0xFE])), Flow::Branch(0x1000));
        assert_eq!(flow(&decode(&[0xE8, 0, 0, 0, 0])), Flow::Call(0x1005));
        assert_eq!(flow(&decode(&[0xFF, 0xD0])), Flow::IndirectCall);
        assert_eq!(flow(&decode(&[0xFF, 0xE0])), Flow::Indirect);
        assert_eq!(flow(&decode(&[0xC3])), Flow::Return);
        assert_eq!(flow(&decode(&[0xCB])), Flow::Stop);
        assert_eq!(flow(&decode(&[0xCF])), Flow::Stop);
        assert_eq!(flow(&decode(&[0xCC])), Flow::Stop);
        assert_eq!(flow(&decode(&[0x0F, 0x0B])), Flow::Stop);
        assert_eq!(flow(&decode(&[0xCD, 0x80])), Flow::Sequential);
        assert_eq!(flow(&decode(&[0xF4])), Flow::Sequential);
        // 16-bit operand size wraps the target at 64 KiB.
        assert_eq!(flow(&decode(&[0x66, 0xE9, 0x00, 0xF0])), Flow::Jump(0x0004));
    }
}
