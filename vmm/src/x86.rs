//! The x86 vocabulary the engine speaks, named once: EFLAGS and control-register bits,
//! exception vectors, page-fault error-code bits and the segment registers (SDM Vol. 1
//! §3.4.3, Vol. 3A §2.5, Table 6-1, §4.7). Addresses have their own types in
//! [`crate::addr`].

/// EFLAGS bits (SDM Vol. 1, §3.4.3).
pub mod eflags {
    /// Carry.
    pub const CF: u32 = 1 << 0;
    /// Reserved, always 1.
    pub const FIXED1: u32 = 1 << 1;
    /// Parity.
    pub const PF: u32 = 1 << 2;
    /// Auxiliary carry.
    pub const AF: u32 = 1 << 4;
    /// Zero.
    pub const ZF: u32 = 1 << 6;
    /// Sign.
    pub const SF: u32 = 1 << 7;
    /// Trap (single step).
    pub const TF: u32 = 1 << 8;
    /// Interrupt enable.
    pub const IF: u32 = 1 << 9;
    /// Direction.
    pub const DF: u32 = 1 << 10;
    /// Overflow.
    pub const OF: u32 = 1 << 11;
    /// I/O privilege level (2 bits).
    pub const IOPL: u32 = 3 << 12;
    /// Shift of the IOPL field.
    pub const IOPL_SHIFT: u32 = 12;
    /// Nested task.
    pub const NT: u32 = 1 << 14;
    /// Resume.
    pub const RF: u32 = 1 << 16;
    /// Virtual-8086 mode.
    pub const VM: u32 = 1 << 17;
    /// Alignment check.
    pub const AC: u32 = 1 << 18;
    /// Virtual interrupt flag.
    pub const VIF: u32 = 1 << 19;
    /// Virtual interrupt pending.
    pub const VIP: u32 = 1 << 20;
    /// CPUID available.
    pub const ID: u32 = 1 << 21;
    /// The arithmetic status flags.
    pub const STATUS: u32 = CF | PF | AF | ZF | SF | OF;
    /// Every bit a P6-class CPU implements; the others read as 0.
    pub const IMPLEMENTED: u32 =
        STATUS | FIXED1 | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID;
}

/// CR0 bits (SDM Vol. 3A, §2.5).
pub mod cr0 {
    /// Protection enable.
    pub const PE: u32 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u32 = 1 << 1;
    /// x87 emulation.
    pub const EM: u32 = 1 << 2;
    /// Task switched.
    pub const TS: u32 = 1 << 3;
    /// Extension type (hard-wired 1 on P6).
    pub const ET: u32 = 1 << 4;
    /// Numeric error.
    pub const NE: u32 = 1 << 5;
    /// Write protect.
    pub const WP: u32 = 1 << 16;
    /// Alignment mask.
    pub const AM: u32 = 1 << 18;
    /// Not write-through.
    pub const NW: u32 = 1 << 29;
    /// Cache disable.
    pub const CD: u32 = 1 << 30;
    /// Paging.
    pub const PG: u32 = 1 << 31;
    /// Bits that may be set; writing any other bit is #GP(0).
    pub const DEFINED: u32 = PE | MP | EM | TS | ET | NE | WP | AM | NW | CD | PG;
}

/// CR4 bits (SDM Vol. 3A, §2.5).
pub mod cr4 {
    /// Virtual-8086 mode extensions.
    pub const VME: u32 = 1 << 0;
    /// Protected-mode virtual interrupts.
    pub const PVI: u32 = 1 << 1;
    /// Time stamp disable.
    pub const TSD: u32 = 1 << 2;
    /// Debugging extensions.
    pub const DE: u32 = 1 << 3;
    /// Page size extensions.
    pub const PSE: u32 = 1 << 4;
    /// Physical address extension.
    pub const PAE: u32 = 1 << 5;
    /// Machine-check enable.
    pub const MCE: u32 = 1 << 6;
    /// Page global enable.
    pub const PGE: u32 = 1 << 7;
    /// Performance-monitoring counter enable.
    pub const PCE: u32 = 1 << 8;
    /// OS supports FXSAVE/FXRSTOR.
    pub const OSFXSR: u32 = 1 << 9;
    /// OS supports unmasked SIMD exceptions.
    pub const OSXMMEXCPT: u32 = 1 << 10;
    /// The bits the CPU model supports (see `cpuid`): VME/PVI are not offered (no
    /// virtual-8086 support), nor MCE (no machine-check architecture), nor anything past
    /// OSXMMEXCPT.
    pub const SUPPORTED: u32 = TSD | DE | PSE | PAE | PGE | PCE | OSFXSR | OSXMMEXCPT;
}

/// The six segment registers, numbered as the ModRM `reg` field and iced number them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegReg {
    /// ES.
    Es = 0,
    /// CS.
    Cs = 1,
    /// SS.
    Ss = 2,
    /// DS.
    Ds = 3,
    /// FS.
    Fs = 4,
    /// GS.
    Gs = 5,
}

impl SegReg {
    /// All six, in encoding order.
    pub const ALL: [SegReg; 6] = [
        SegReg::Es,
        SegReg::Cs,
        SegReg::Ss,
        SegReg::Ds,
        SegReg::Fs,
        SegReg::Gs,
    ];

    /// The segment register an iced register names, if it is one.
    pub fn from_iced(reg: iced_x86::Register) -> Option<Self> {
        use iced_x86::Register as R;
        Some(match reg {
            R::ES => SegReg::Es,
            R::CS => SegReg::Cs,
            R::SS => SegReg::Ss,
            R::DS => SegReg::Ds,
            R::FS => SegReg::Fs,
            R::GS => SegReg::Gs,
            _ => return None,
        })
    }
}

/// Exception vectors (SDM Vol. 3A, Table 6-1).
#[derive(Debug)]
pub struct Exception;

impl Exception {
    /// Divide error.
    pub const DE: u8 = 0;
    /// Debug exception.
    pub const DB: u8 = 1;
    /// Non-maskable interrupt.
    pub const NMI: u8 = 2;
    /// Breakpoint (INT3).
    pub const BP: u8 = 3;
    /// Overflow (INTO).
    pub const OF: u8 = 4;
    /// BOUND range exceeded.
    pub const BR: u8 = 5;
    /// Invalid opcode.
    pub const UD: u8 = 6;
    /// Device not available.
    pub const NM: u8 = 7;
    /// Double fault.
    pub const DF: u8 = 8;
    /// Invalid TSS.
    pub const TS: u8 = 10;
    /// Segment not present.
    pub const NP: u8 = 11;
    /// Stack-segment fault.
    pub const SS: u8 = 12;
    /// General protection.
    pub const GP: u8 = 13;
    /// Page fault.
    pub const PF: u8 = 14;
    /// x87 floating-point error.
    pub const MF: u8 = 16;
    /// Alignment check.
    pub const AC: u8 = 17;
    /// Machine check.
    pub const MC: u8 = 18;
    /// SIMD floating-point exception.
    pub const XM: u8 = 19;

    /// Whether the processor pushes an error code when it delivers this exception
    /// (SDM Vol. 3A, Table 6-1: #DF, #TS, #NP, #SS, #GP, #PF, #AC).
    pub const fn has_error_code(vector: u8) -> bool {
        matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17)
    }
}

/// Page-fault error-code bits (SDM Vol. 3A §4.7).
pub mod pf_error {
    /// The fault was a protection violation (clear: the page was not present).
    pub const P: u32 = 1 << 0;
    /// The access was a write.
    pub const W: u32 = 1 << 1;
    /// The access was made in user mode (CPL 3).
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
    /// The access was an instruction fetch.
    pub const I: u32 = 1 << 4;
}
