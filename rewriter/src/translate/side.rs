//! The side table of a translated block: what the monitor needs to turn a TC address
//! back into guest state (ARCHITECTURE §5, "Precise state").
//!
//! Every emitted instruction has one [`SideEntry`]. A fault or an interrupt that lands
//! at the start of an emitted instruction (or a fault *in* it) means the guest is at
//! [`SideEntry::guest`], after the scratch registers are restored from their slots when
//! [`SideEntry::restore_scratch`] says so. Expansions are ordered so that this is exact:
//! everything before an expansion's single guest-visible commit resumes at the guest
//! instruction itself, everything after it at the guest target (see `lookup.rs`).

use crate::class::Class;

/// Where the guest is when execution stops at an emitted instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestEip {
    /// At this guest EIP (the instruction there has not executed).
    At(u32),
    /// At the guest EIP held in the target slot of the scratch area
    /// ([`super::SLOT_TARGET`]): an indirect branch has committed and the lookup of its
    /// target is under way.
    TargetSlot,
    /// At this guest EIP, with one dword on the stack that the translation pushed and the
    /// guest has not: the guest's ESP (SP with a 16-bit stack) is 4 above the host's
    /// (inline PUSHFD between the host's PUSHFD and the POP that takes its image back).
    AtPushed(u32),
    /// At this guest EIP, with one dword taken off the stack that the guest has not
    /// popped yet: the guest's ESP is 4 below the host's (inline POPFD between its ESP
    /// adjustment and the store of the virtual IF that commits it).
    AtPopped(u32),
}

/// What an emitted instruction is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The lookup entry's restore of the scratch registers.
    Prologue,
    /// A guest instruction re-encoded unchanged; `guest_len` guest bytes at the entry's
    /// guest EIP.
    Ident {
        /// Length of the guest's encoding.
        guest_len: u8,
    },
    /// The instruction that carries out a sensitive guest instruction translated inline
    /// (CLI, STI: a store to the virtual IF); `guest_len` guest bytes at the entry's guest
    /// EIP.
    Inline {
        /// Length of the guest's encoding.
        guest_len: u8,
    },
    /// Part of a multi-instruction expansion of a guest control transfer.
    Expansion,
    /// Part of an exit stub.
    Exit,
}

/// One emitted instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SideEntry {
    /// Offset of its first byte in the block.
    pub offset: u32,
    /// Its length in bytes.
    pub len: u8,
    /// Where the guest is when execution stops at (or faults in) this instruction.
    pub guest: GuestEip,
    /// ECX and EDX must be reloaded from their scratch slots ([`super::SLOT_ECX`],
    /// [`super::SLOT_EDX`]) to get the guest's values.
    pub restore_scratch: bool,
    /// EAX too must be reloaded, from [`super::SLOT_EAX`] (inline POPFD).
    pub restore_eax: bool,
    /// The instruction can fault on guest state (a guest memory access, a guest stack
    /// push, an IDENT instruction); the others only touch the monitor's scratch slots
    /// and lookup table.
    pub can_fault: bool,
    /// What the instruction is for.
    pub origin: Origin,
}

impl SideEntry {
    /// One past its last byte.
    pub fn end(&self) -> u32 {
        self.offset + u32::from(self.len)
    }
}

/// Why a block leaves for the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitKind {
    /// Continue at a guest EIP known when the block was translated: a direct branch's
    /// or call's target, a fall-through, the end of a page or the size cap. Chainable.
    Direct {
        /// The guest EIP to continue at.
        target: u32,
    },
    /// An indirect branch whose target was not in the lookup table; the guest EIP is in
    /// the target slot and the scratch registers are already restored.
    IndirectMiss,
    /// An instruction of the rewriter's class table, to be emulated by the monitor.
    Sensitive(Class),
    /// An instruction that reads memory through CS or through the segment register the
    /// translation reserves for its scratch slots: inside the TC those segments are not
    /// the guest's, so the monitor emulates it.
    SegmentOverride,
    /// An instruction the monitor performs with its write mediation
    /// ([`super::CodeReader::mediated`]).
    Mediated,
    /// Bytes that do not decode: the monitor raises what the CPU would (#UD, or #GP for
    /// an encoding longer than 15 bytes).
    Undefined,
    /// A valid instruction the translator does not handle (RTM, or one the encoder
    /// cannot reproduce exactly): the monitor emulates it or raises #UD.
    Unsupported,
    /// An inline STI found an interrupt pending: the guest is at the instruction after
    /// the STI, in its interrupt shadow, with IF set.
    InterruptWindow,
    /// An inline POPFD set IF with an interrupt pending: the guest is at the instruction
    /// after it, and the interrupt is taken there (POPF has no shadow).
    InterruptDue,
    /// A DIV or IDIV translated with a divisor check found its divisor zero: the monitor
    /// raises #DE at it (the guest is at the instruction). Sites that kept faulting get
    /// the check ([`super::CodeReader::fault_checked`]), so the fault costs an exit
    /// through the gate rather than a host signal.
    DivideError,
    /// A BOUND translated with a check of its bounds found its index outside them: the
    /// monitor raises #BR at it (the guest is at the instruction). As for
    /// [`Self::DivideError`], only sites that kept faulting get the check.
    BoundRange,
    /// PAUSE, while several vCPUs share the thread ([`super::TranslateConfig::exit_pause`]):
    /// the guest spins on something another vCPU holds, so the monitor runs another
    /// vCPU, as pause-loop exiting does on hardware. The guest is at the PAUSE.
    Pause,
}

impl ExitKind {
    /// Whether a stub of this kind has a patchable jump slot.
    pub fn chainable(self) -> bool {
        matches!(self, ExitKind::Direct { .. })
    }
}

/// The patchable jump of a chainable exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChainSlot {
    /// Offset of the jump: the stub's own 5-byte `jmp rel32` (at the stub's offset), or
    /// the 6-byte `jcc rel32` of the conditional branch whose taken exit the stub is (a
    /// chained taken branch then reaches its target in one jump).
    pub jump: u32,
    /// Offset of the jump's rel32, which ends the jump. It is 4-byte aligned as a TC
    /// address, so a patch is one aligned store and another thread of execution sees
    /// either the old or the new target.
    pub rel32: u32,
    /// The rel32 that sends the jump into its own stub's exit (unchained).
    pub unchained: u32,
}

/// One exit stub of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExitStub {
    /// Offset of the stub's first instruction in the block. The stub stores
    /// `tc_address + offset` in the exit slot ([`super::SLOT_EXIT`]) before it enters
    /// the gate: that value names the stub.
    pub offset: u32,
    /// The jump a chain patch points at another block (chainable stubs only).
    pub chain_slot: Option<ChainSlot>,
    /// Why the block exits here.
    pub kind: ExitKind,
    /// Where the guest is when this exit reaches the monitor.
    pub guest: GuestEip,
    /// The guest instruction the exit leaves at, as the translator decoded it (an exit
    /// for one instruction: sensitive, mediated, a segment override, a divisor check),
    /// so the monitor need not fetch and decode it again. It is what runs there while
    /// the block lives: a write to the block's pages ends the block before the guest
    /// runs on. An index into [`SideTable::instructions`], which keeps the stubs small:
    /// the monitor looks one up at every exit.
    pub instruction: Option<u16>,
}

/// The side table of one block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SideTable {
    /// One entry per emitted instruction, in address order.
    pub entries: Vec<SideEntry>,
    /// The exit stubs, in address order.
    pub exits: Vec<ExitStub>,
    /// The guest instructions exit stubs keep ([`ExitStub::instruction`]).
    pub instructions: Vec<iced_x86::Instruction>,
}

impl SideTable {
    /// The emitted instruction that contains block offset `offset`.
    pub fn at(&self, offset: u32) -> Option<&SideEntry> {
        let i = self.entries.partition_point(|e| e.end() <= offset);
        self.entries.get(i).filter(|e| e.offset <= offset)
    }

    /// The guest instruction `stub` keeps, if any.
    pub fn instruction(&self, stub: &ExitStub) -> Option<&iced_x86::Instruction> {
        self.instructions.get(usize::from(stub.instruction?))
    }

    /// The exit stub that starts at block offset `offset` (what the exit slot names,
    /// less the block's TC address).
    pub fn exit_at(&self, offset: u32) -> Option<&ExitStub> {
        self.exits.iter().find(|e| e.offset == offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u32, len: u8) -> SideEntry {
        SideEntry {
            offset,
            len,
            guest: GuestEip::At(offset),
            restore_scratch: false,
            restore_eax: false,
            can_fault: true,
            origin: Origin::Ident { guest_len: len },
        }
    }

    #[test]
    fn at_finds_the_containing_instruction() {
        let table = SideTable {
            entries: vec![entry(0, 2), entry(2, 5), entry(7, 1)],
            exits: Vec::new(),
            instructions: Vec::new(),
        };
        assert_eq!(table.at(0).map(|e| e.offset), Some(0));
        assert_eq!(table.at(1).map(|e| e.offset), Some(0));
        assert_eq!(table.at(2).map(|e| e.offset), Some(2));
        assert_eq!(table.at(6).map(|e| e.offset), Some(2));
        assert_eq!(table.at(7).map(|e| e.offset), Some(7));
        assert_eq!(table.at(8), None);
    }
}
