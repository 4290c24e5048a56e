//! The virtual CPU: architectural state of an IA-32 processor as the guest sees it, and
//! the pure emulation of every instruction that cannot run natively at host CPL 3.
//!
//! Nothing here calls the operating system. Guest memory and ports are reached through
//! [`GuestBus`]; what the run loop must do on the host afterwards (reinstall a segment
//! mirror, flush shadow mappings, block on HLT...) is returned as [`Effects`].
//!
//! Entry points:
//! - [`emulate()`] executes one decoded instruction against the state,
//! - [`emulate::mediate`] and [`emulate::data_access`] perform the memory instructions
//!   the run loop hands over (writes to mediated pages, accesses without a host mapping),
//! - [`deliver`] delivers an exception or interrupt through the guest IDT,
//! - [`load_segment`] loads a data or stack segment register with all hardware checks,
//! - [`mirror_of`] describes the host LDT entry that backs a guest segment,
//! - [`exit::handle`] maps a classified exit to emulation or delivery,
//! - [`task::switch_task`] performs a hardware task switch between 32-bit TSSs (far
//!   JMP/CALL to a TSS or task gate, events through an IDT task gate, IRET with NT = 1).
//!
//! Faults are precise: a faulting instruction leaves the state as it was (REP string I/O
//! keeps its completed iterations, as hardware does). Guest-controlled values never
//! panic the monitor; what is not emulated is reported as [`Unsupported`] or
//! [`DeliveryError`] so the run loop can stop the VM with a diagnostic.
//!
//! Not emulated: task switches to or from a 16-bit TSS or into a virtual-8086 task, the
//! TSS T flag's debug trap, virtual-8086 mode, the breakpoints DR0–DR3 describe (the registers are kept;
//! triggering them is up to the run loop), counting performance counters (the PMC MSRs
//! hold what was written), loading PAE PDPTEs on MOV CR3 (the shadow-paging code reads
//! them from guest memory).

pub mod descriptor;
pub mod emulate;
pub mod exit;
pub mod fpu;
pub mod interrupts;
pub mod segments;
pub mod stack;
pub mod state;
pub mod task;

/// A guest bus over a plain byte vector, for tests of the emulator and of parts that
/// plug into the engine (feature `test-bus`).
#[cfg(any(test, feature = "test-bus"))]
pub mod testbus;

use crate::addr::GuestLinear;
use crate::x86::{Exception, SegReg};

pub use emulate::{emulate, Emulated, Unsupported};
pub use interrupts::{deliver, DeliveryError, Event};
pub use segments::{load_segment, mirror_below, mirror_of, mirrors, MirrorDescriptor};
pub use state::{Segment, VcpuState};

/// An exception raised by the guest's own instruction or by an event delivery: the vector
/// and, for the vectors that have one, the error code to push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Exception vector (see [`Exception`]).
    pub vector: u8,
    /// Error code pushed on delivery, `None` for vectors without one.
    pub error_code: Option<u32>,
    /// For #PF: the faulting linear address; [`deliver`] writes it to CR2.
    pub cr2: Option<GuestLinear>,
}

impl Fault {
    /// A fault without error code (e.g. #UD, #DE).
    pub const fn new(vector: u8) -> Self {
        Self {
            vector,
            error_code: None,
            cr2: None,
        }
    }
    /// A fault with error code.
    pub const fn with_code(vector: u8, code: u32) -> Self {
        Self {
            vector,
            error_code: Some(code),
            cr2: None,
        }
    }
    /// #GP with the given error code.
    pub const fn gp(code: u32) -> Self {
        Self::with_code(Exception::GP, code)
    }
    /// #GP(0).
    pub const fn gp0() -> Self {
        Self::gp(0)
    }
    /// #SS with the given error code.
    pub const fn ss(code: u32) -> Self {
        Self::with_code(Exception::SS, code)
    }
    /// #NP with the given error code.
    pub const fn np(code: u32) -> Self {
        Self::with_code(Exception::NP, code)
    }
    /// #TS with the given error code.
    pub const fn ts(code: u32) -> Self {
        Self::with_code(Exception::TS, code)
    }
    /// #UD.
    pub const fn ud() -> Self {
        Self::new(Exception::UD)
    }
    /// #PF at `addr` with the page-fault error code (P, W/R, U/S, RSVD, I/D bits).
    pub const fn page_fault(addr: GuestLinear, code: u32) -> Self {
        Self {
            vector: Exception::PF,
            error_code: Some(code),
            cr2: Some(addr),
        }
    }
}

/// Everything emulation needs from the machine around the vCPU.
pub trait GuestBus {
    /// Reads guest linear memory as the guest would: the implementation translates
    /// through guest paging and reports a failed translation as a #PF [`Fault`] (with CR2
    /// and the guest error code). `user` makes it a CPL-3 access; descriptor-table, TSS
    /// and IDT reads are implicit supervisor accesses and pass `false`.
    ///
    /// # Errors
    /// A #PF fault when the guest page tables forbid the access.
    fn read_linear(&mut self, addr: GuestLinear, buf: &mut [u8], user: bool) -> Result<(), Fault>;
    /// Writes guest linear memory; see [`GuestBus::read_linear`].
    ///
    /// # Errors
    /// A #PF fault when the guest page tables forbid the access.
    fn write_linear(&mut self, addr: GuestLinear, data: &[u8], user: bool) -> Result<(), Fault>;
    /// Reads `size` (1, 2 or 4) bytes from an I/O port.
    fn port_in(&mut self, port: u16, size: u8) -> u32;
    /// Writes the low `size` (1, 2 or 4) bytes of `value` to an I/O port.
    fn port_out(&mut self, port: u16, size: u8, value: u32);
    /// The host's time-stamp counter (RDTSC on the host); the guest sees it plus
    /// [`state::Msrs::tsc_offset`].
    fn host_tsc(&mut self) -> u64;
}

/// Side effects of an emulated instruction or delivered event that the run loop must
/// apply on the host before it re-enters the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Segment registers whose mirror must be (re)installed: bit `SegReg as u8`.
    pub segments_dirty: u8,
    /// The virtual CPL changed: every mirror's user clamp and the shadow mappings'
    /// user/supervisor view must be recomputed.
    pub cpl_changed: bool,
    /// GDTR, IDTR, LDTR or TR changed.
    pub descriptor_tables_changed: bool,
    /// CR0.PG/WP/PE or CR4.PSE/PAE/PGE changed: rebuild the shadow paging mode.
    pub paging_mode_changed: bool,
    /// CR3 was written: flush non-global shadow mappings.
    pub cr3_written: bool,
    /// INVLPG of this linear address.
    pub invlpg: Option<GuestLinear>,
    /// The vCPU executed HLT: block until the next interrupt.
    pub halted: bool,
    /// WBINVD/INVD: caches flushed (nothing to do for coherent host memory, reported
    /// for tracing).
    pub cache_flush: bool,
    /// The guest wrote the TSC (the new offset is in the state's MSRs).
    pub tsc_written: bool,
}

impl Effects {
    /// No effect.
    pub const NONE: Self = Self {
        segments_dirty: 0,
        cpl_changed: false,
        descriptor_tables_changed: false,
        paging_mode_changed: false,
        cr3_written: false,
        invlpg: None,
        halted: false,
        cache_flush: false,
        tsc_written: false,
    };

    /// The mirror of `reg` must be reinstalled.
    pub const fn segment(reg: SegReg) -> Self {
        let mut e = Self::NONE;
        e.segments_dirty = 1 << reg as u8;
        e
    }

    /// Whether the mirror of `reg` must be reinstalled.
    pub const fn segment_dirty(&self, reg: SegReg) -> bool {
        self.segments_dirty & (1 << reg as u8) != 0
    }

    /// The segment registers whose mirror must be reinstalled; all six when the CPL
    /// changed, since the user clamp of every mirror depends on it.
    pub fn dirty_segments(&self) -> impl Iterator<Item = SegReg> + '_ {
        SegReg::ALL
            .into_iter()
            .filter(move |&r| self.cpl_changed || self.segment_dirty(r))
    }

    /// Both sets of effects.
    #[must_use]
    pub fn merge(self, other: Self) -> Self {
        Self {
            segments_dirty: self.segments_dirty | other.segments_dirty,
            cpl_changed: self.cpl_changed | other.cpl_changed,
            descriptor_tables_changed: self.descriptor_tables_changed
                | other.descriptor_tables_changed,
            paging_mode_changed: self.paging_mode_changed | other.paging_mode_changed,
            cr3_written: self.cr3_written | other.cr3_written,
            invlpg: other.invlpg.or(self.invlpg),
            halted: self.halted | other.halted,
            cache_flush: self.cache_flush | other.cache_flush,
            tsc_written: self.tsc_written | other.tsc_written,
        }
    }
}
