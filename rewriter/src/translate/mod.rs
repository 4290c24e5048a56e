//! The block translator (ARCHITECTURE §5): guest code in, translated code and a side
//! table out. Pure: guest bytes come through a [`CodeReader`], the result is a
//! [`Block`] for the caller to place in the translation cache at the address it gave.
//!
//! A block's layout:
//!
//! ```text
//! lookup entry:  mov ecx, [seg:SLOT_ECX]      ; what the lookup table points at
//!                mov edx, [seg:SLOT_EDX]
//! entry:         IDENT instructions           ; guest instructions, re-encoded, and
//!                jcc rel32 <taken stub>       ; conditional jumps as side exits
//!                <end>                        ; chainable exit, branch expansion,
//!                                             ; indirect lookup, or exit
//!                <taken stubs>                ; one per side exit, out of the way
//! ```
//!
//! * decoding from the real entry with the right code size: `decode.rs`;
//! * re-encoding IDENT instructions and the translator's own: `emit.rs`;
//! * exit stubs, chaining slots and [`ChainPatch`]: `stub.rs`;
//! * the inline indirect-branch lookup and [`LookupTable`]: `lookup.rs`;
//! * the side table ([`SideTable`]): `side.rs`;
//! * the validator ([`validate()`]): `validate.rs`.
//!
//! A conditional jump does not end its block: it becomes a `jcc rel32` side exit to a
//! chainable stub after the block's end, which chaining replaces with the taken target's
//! block, and the block goes on with the fall-through (the common path runs without a
//! jump of its own). LOOP and JCXZ (which have only `rel8` forms) end their block in two
//! chainable exits, fall-through and taken; they keep their counter size (`67` in the TC
//! when the guest's address size is 16) but lose any `66`, which in 32-bit code would
//! truncate the TC address. CALL pushes the guest's return address; a CALL of a PIC
//! thunk (`mov reg, [esp]; ret`) is done in one step.
//!
//! The translation depends on more than the guest bytes: on the code segment (base,
//! limit, D bit), on the stack size (SS.B, for RET) and on whether FPU instructions
//! must exit ([`TranslateConfig::exit_fpu`]). The engine's block key carries these.
//!
//! ```
//! use rewriter::translate::{
//!     translate_block, validate, CodeSegment, ExitKind, GuestPages, Rules, TranslateConfig,
//! };
//!
//! // inc eax; cmp eax, 10; jne 0x1000; jmp 0x2000
//! let code = GuestPages::flat(
//!     0x1000,
//!     &[0x40, 0x83, 0xF8, 0x0A, 0x75, 0xFA, 0xE9, 0xF5, 0x0F, 0x00, 0x00],
//! );
//! let cfg = TranslateConfig::default();
//! let block = translate_block(&code, 0x1000, CodeSegment::FLAT32, 0xF000_0000, &cfg)?;
//! let targets: Vec<_> = block.side.exits.iter().map(|e| e.kind).collect();
//! // The block's end (the JMP), then the JNE's side exit.
//! assert_eq!(
//!     targets,
//!     [ExitKind::Direct { target: 0x2000 }, ExitKind::Direct { target: 0x1000 }]
//! );
//! let rules = Rules::new(&cfg, 0xF000_0000..0xF100_0000);
//! validate(&block.bytes, block.tc_address, &rules)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod decode;
mod emit;
mod inline;
mod lookup;
mod memory;
mod side;
mod stub;
pub mod validate;

use thiserror::Error;

pub use decode::{CodeReader, CodeSegment, CodeSize, GuestPage};
pub use lookup::{
    lookup_index, LookupTable, LOOKUP_BITS, LOOKUP_ENTRIES, LOOKUP_ENTRY_SIZE, LOOKUP_TABLE_SIZE,
};
pub use memory::GuestPages;
pub use side::{ChainSlot, ExitKind, ExitStub, GuestEip, Origin, SideEntry, SideTable};
pub use stub::{ChainError, ChainPatch, CHAIN_SLOT_LEN};
pub use validate::{validate, Rules, Violation, ViolationKind};

use decode::{branch_form, decode_block, BranchForm, End};
use emit::{Emitter, Meta};
use iced_x86::Register;

/// Offset in the scratch area of the slot that holds the guest's ECX during a lookup.
pub const SLOT_ECX: u32 = 0;
/// Offset of the slot that holds the guest's EDX during a lookup.
pub const SLOT_EDX: u32 = 4;
/// Offset of the slot that holds the guest target EIP of an indirect branch.
pub const SLOT_TARGET: u32 = 8;
/// Offset of the slot where an exit stub leaves its own TC address for the gate.
pub const SLOT_EXIT: u32 = 12;
/// Offset of the guest's virtual IF (a byte: 1 set, 0 clear) that inline CLI and STI
/// write and the monitor keeps in step with the vCPU ([`TranslateConfig::inline_if`]).
pub const SLOT_VIF: u32 = 16;
/// Offset of the byte the monitor sets before an entry when an interrupt is pending:
/// an inline STI exits when it finds it set.
pub const SLOT_PENDING: u32 = 20;
/// Offset of the dword of virtual EFLAGS bits an inline PUSHFD adds to the host's image
/// (IOPL, NT, AC, TF: bits the host image has clear), kept by the monitor.
pub const SLOT_VBITS: u32 = 24;
/// Offset of the slot that holds the guest's EAX during an inline POPFD (SAHF takes AH).
pub const SLOT_EAX: u32 = 28;
/// Offset of the dword holding the guest's EFLAGS.ID (bit 21, the host's at entry): an
/// inline POPFD that would change it leaves for the monitor.
pub const SLOT_ID: u32 = 32;
/// Offset of the guest's six selectors (ES, CS, SS, DS, FS, GS; a dword each,
/// zero-extended), kept by the monitor: reads of segment registers read them.
pub const SLOT_SELECTORS: u32 = 36;
/// Offset of the reload records, 8 bytes per segment register (ES, CS, SS, DS, FS, GS
/// order; CS and SS unused), kept by the monitor before each entry: at +0 the negated
/// selector a load may perform inline ([`RELOAD_NONE`] when none), at +4 the host
/// selector of the mirror that load installs, at +6 the guest's selector it gives
/// ([`TranslateConfig::inline_segment_loads`]).
pub const SLOT_RELOADS: u32 = 60;
/// What a reload record's first dword holds when no load is inline: no 16-bit selector
/// added to it gives zero.
pub const RELOAD_NONE: u32 = 0x8000_0000;
/// Offset of a word the monitor keeps zero: the host selector an inline load of a null
/// selector loads.
pub const SLOT_NULL_SELECTOR: u32 = 108;
/// Offset of six bytes, one per segment register in [`SLOT_RELOADS`] order, that an
/// inline segment load sets: the monitor then takes the register's new state from the
/// selector slot ([`SLOT_SELECTORS`]) and clears them.
pub const SLOT_LOADED: u32 = 112;
/// Offset of the count of inline reloads (loads through a reload record) translated code
/// made; the monitor reads and clears it to weigh them against the writes that keep the
/// records valid.
pub const SLOT_RELOAD_HITS: u32 = 120;
/// Offset of the guest's CR0, CR2, CR3 and CR4 (a dword each), kept by the monitor:
/// reads of them at CPL 0 read these ([`TranslateConfig::inline_if`]).
pub const SLOT_CONTROL: u32 = 124;
/// Offset of three dwords an inline BOUND check works in (the distances it compares).
pub const SLOT_CHECK: u32 = 140;
/// Size of the scratch area.
pub const SCRATCH_LEN: u32 = 152;

/// How translated code enters the monitor's gate (ARCHITECTURE §5b).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gate {
    /// `jmp rel32` to this TC-segment address (a 32-bit trampoline in the window).
    Near(u32),
    /// `jmp far [cs:pointer]` through the far pointer stored at this address in the
    /// window: the only far transfer translated code ever contains.
    FarPointer(u32),
}

/// The segment register the translation reserves for its scratch area (the vCPU
/// page): GS in kernel mode, FS in user mode (ARCHITECTURE §5b). Guest instructions
/// that access memory through it leave for the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScratchSegment {
    /// FS.
    Fs,
    /// GS.
    Gs,
}

impl ScratchSegment {
    /// The register.
    pub fn register(self) -> Register {
        match self {
            ScratchSegment::Fs => Register::FS,
            ScratchSegment::Gs => Register::GS,
        }
    }
}

/// Where translated code keeps its scratch slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scratch {
    /// The segment register that addresses them.
    pub segment: ScratchSegment,
    /// Offset of the scratch area in that segment ([`SCRATCH_LEN`] bytes; slots at
    /// [`SLOT_ECX`], [`SLOT_EDX`], [`SLOT_TARGET`], [`SLOT_EXIT`]).
    pub base: u32,
}

/// The guest stack's address size (SS.B): RET reads SS:SP or SS:ESP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StackSize {
    /// B = 0: SP.
    Bits16,
    /// B = 1: ESP.
    Bits32,
}

/// Everything a translation needs besides the guest's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TranslateConfig {
    /// The gate every exit jumps into.
    pub gate: Gate,
    /// The scratch slots.
    pub scratch: Scratch,
    /// TC-segment address of the guest-EIP→TC lookup table ([`LOOKUP_TABLE_SIZE`]
    /// bytes, read through CS).
    pub lookup_table: u32,
    /// The guest's stack address size.
    pub stack_size: StackSize,
    /// Most guest instructions copied into one block (at least one).
    pub max_instructions: usize,
    /// FPU, MMX and SSE instructions end the block in an exit (correct whatever the
    /// guest's CR0.TS/EM say); the engine may clear it while both are clear and must
    /// then drop those translations when either is set.
    pub exit_fpu: bool,
    /// PAUSE ends the block in an exit ([`ExitKind::Pause`]): several vCPUs share one
    /// thread, and a vCPU spinning on a lock should let the holder run.
    pub exit_pause: bool,
    /// CLI, STI and PUSHFD are translated inline (CPL 0, where they never fault): CLI and
    /// STI store to the virtual IF slot ([`SLOT_VIF`]), STI then exits, at the next
    /// instruction, only when the pending slot ([`SLOT_PENDING`]) says an interrupt
    /// waits; PUSHFD pushes the host's image with the virtual IF and [`SLOT_VBITS`] in.
    pub inline_if: bool,
    /// The guest's segment selectors (ES, CS, SS, DS, FS, GS), when MOV and PUSH from a
    /// segment register are to be translated inline as immediates. A block translated
    /// with them is valid only while the guest's selectors are these (segment loads leave
    /// for the monitor, so the engine keys blocks by them).
    pub selectors: Option<[u16; 6]>,
    /// The guest's GS base, when its data and stack segments are flat (base 0): memory
    /// operands with an explicit GS override (i386 TLS, at offsets that wrap past 4 GiB)
    /// are re-encoded without it, their displacement plus this base, so the 32-bit
    /// address arithmetic wraps as the guest's segment would without leaving the
    /// clamped flat segment.
    pub gs_rebase: Option<u32>,
    /// MOV and POP to DS, ES, FS and GS (but the scratch segment) are translated inline
    /// (protected mode, paging on): a null selector, or the selector of the register's
    /// reload record ([`SLOT_RELOADS`]), is loaded without an exit; any other leaves for
    /// the monitor. The monitor keeps the records valid: the descriptor each names is
    /// unchanged in memory (its page is write-mediated) and its mirror installed.
    pub inline_segment_loads: bool,
}

impl Default for TranslateConfig {
    /// A layout for tests and examples: gate, scratch area and table near the top of
    /// the address space, GS for the scratch segment, a 32-bit stack.
    fn default() -> Self {
        Self {
            gate: Gate::FarPointer(0xFFFF_F000),
            scratch: Scratch {
                segment: ScratchSegment::Gs,
                base: 0xFFFF_E000,
            },
            lookup_table: 0xFF00_0000,
            stack_size: StackSize::Bits32,
            max_instructions: 32,
            exit_fpu: true,
            exit_pause: false,
            inline_if: false,
            selectors: None,
            gs_rebase: None,
            inline_segment_loads: false,
        }
    }
}

/// Why no block could be translated. [`Refusal::Fetch`] and [`Refusal::SegmentLimit`]
/// mean the CPU would fault before executing the entry instruction, and the monitor
/// raises that fault instead; the other two are translator bugs.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    /// The entry instruction's bytes cannot be fetched (#PF at `linear`).
    #[error("instruction fetch faults at linear address {linear:#010x}")]
    Fetch {
        /// The first byte that cannot be fetched.
        linear: u32,
    },
    /// The entry instruction lies past the code segment's limit (#GP(0)).
    #[error("EIP {eip:#x} lies past the code segment limit {limit:#x}")]
    SegmentLimit {
        /// The instruction's EIP.
        eip: u32,
        /// The limit.
        limit: u32,
    },
    /// The encoder rejected an instruction the translator built (a translator bug,
    /// reported instead of a panic).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's reason.
        reason: String,
    },
    /// The block broke a validator rule (checked in debug builds): a translator bug,
    /// reported instead of a panic.
    #[error("translated block is invalid: {0}")]
    Invalid(Violation),
}

/// A translated block, ready to be copied to `tc_address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The TC address the code was emitted for.
    pub tc_address: u32,
    /// The translated code.
    pub bytes: Vec<u8>,
    /// The guest EIP the block translates.
    pub guest_eip: u32,
    /// One past the last guest byte the block's instructions came from (as an EIP).
    pub guest_end: u32,
    /// The code segment it was decoded in.
    pub code: CodeSegment,
    /// The guest pages its bytes came from: one, or two when an instruction straddles
    /// a page end. A write to either invalidates the block.
    pub pages: Vec<GuestPage>,
    /// Offset of the direct entry (after the lookup entry's register reloads).
    pub entry_offset: u32,
    /// TC offsets back to guest state, and the exits.
    pub side: SideTable,
    /// Offsets in `bytes` of the 32-bit displacements of the GS-relative operands rebased
    /// onto [`TranslateConfig::gs_rebase`]: each holds the guest's displacement plus that
    /// base, and adding the difference to another base moves the block onto it. Without
    /// any, the block is the same whatever the base.
    pub gs_sites: Vec<u32>,
}

impl Block {
    /// TC address of the direct entry: where chained exits jump.
    pub fn entry(&self) -> u32 {
        self.tc_address.wrapping_add(self.entry_offset)
    }

    /// TC address of the lookup entry: what the lookup table holds for `guest_eip`.
    pub fn lookup_entry(&self) -> u32 {
        self.tc_address
    }

    /// The exit stub an exit slot value names, if it is one of this block's.
    pub fn exit_for(&self, slot_value: u32) -> Option<&ExitStub> {
        self.side.exit_at(slot_value.wrapping_sub(self.tc_address))
    }

    /// The patch that chains exit `index` to the block whose direct entry is `target`.
    ///
    /// # Errors
    ///
    /// [`ChainError::NoSuchExit`] or [`ChainError::NotChainable`].
    pub fn chain(&self, index: usize, target: u32) -> Result<ChainPatch, ChainError> {
        let stub = self
            .side
            .exits
            .get(index)
            .ok_or(ChainError::NoSuchExit { index })?;
        ChainPatch::chain(self.tc_address, stub, target)
    }

    /// The patch that unchains exit `index`.
    ///
    /// # Errors
    ///
    /// [`ChainError::NoSuchExit`] or [`ChainError::NotChainable`].
    pub fn unchain(&self, index: usize) -> Result<ChainPatch, ChainError> {
        let stub = self
            .side
            .exits
            .get(index)
            .ok_or(ChainError::NoSuchExit { index })?;
        ChainPatch::unchain(stub)
    }
}

/// Translates the guest basic block entered at `entry_eip` in the code segment `cs`
/// into code for the TC address `tc_address`.
///
/// # Errors
///
/// A [`Refusal`] when the entry instruction itself cannot be fetched (the monitor
/// raises the fault the CPU would). Undecodable bytes and instructions that may not
/// run natively are not errors: the block ends in an exit for them.
pub fn translate_block(
    reader: &impl CodeReader,
    entry_eip: u32,
    cs: CodeSegment,
    tc_address: u32,
    cfg: &TranslateConfig,
) -> Result<Block, Refusal> {
    let decoded = decode_block(reader, entry_eip, cs, cfg)?;
    let mut em = Emitter::new(tc_address, cfg);
    lookup::prologue(&mut em, entry_eip)?;
    let entry_offset = em.offset();
    let mut end = decoded.end;
    let mut guest_end = decoded.guest_end;
    let mut side_exits = Vec::new();
    for instr in &decoded.ident {
        if let Some((code, target)) = decode::side_exit(instr) {
            side_exits.push((side_exit_jump(&mut em, instr, code)?, target));
            continue;
        }
        if decoded.checked.contains(&eip_of(instr)) && inline::fault_check(&mut em, instr)? {
            continue;
        }
        if !em.ident(instr)? {
            let eip = eip_of(instr);
            end = End::Exit {
                eip,
                kind: ExitKind::Unsupported,
            };
            guest_end = eip.wrapping_add(u32::try_from(instr.len()).unwrap_or(0));
            break;
        }
    }
    match end {
        End::Branch(instr) => branch(&mut em, &instr)?,
        End::Exit { eip, kind } => match decoded.exit_instruction.filter(|i| eip_of(i) == eip) {
            Some(instr) => stub::exit_at(&mut em, kind, GuestEip::At(eip), &instr)?,
            None => stub::exit(&mut em, kind, GuestEip::At(eip))?,
        },
        End::FallThrough(next) => direct(&mut em, next)?,
        End::Thunk { eip, reg, ret } => {
            lookup::thunk_call(&mut em, eip, reg, ret)?;
            direct(&mut em, ret)?;
        }
    }
    // The side exits' stubs, out of the way of the path that falls through.
    for (jcc, target) in side_exits {
        stub::taken_exit(
            &mut em,
            jcc,
            ExitKind::Direct { target },
            GuestEip::At(target),
        )?;
    }
    let block = Block {
        tc_address,
        bytes: em.bytes,
        guest_eip: entry_eip,
        guest_end,
        code: cs,
        pages: decoded.pages,
        entry_offset,
        gs_sites: em.gs_sites,
        side: em.side,
    };
    if cfg!(debug_assertions) {
        let start = u64::from(tc_address);
        let rules = Rules::new(cfg, start..start + block.bytes.len() as u64);
        validate(&block.bytes, tc_address, &rules).map_err(Refusal::Invalid)?;
    }
    Ok(block)
}

fn eip_of(instr: &iced_x86::Instruction) -> u32 {
    u32::try_from(instr.ip()).unwrap_or(0)
}

/// A chainable exit to `target`.
fn direct(em: &mut Emitter, target: u32) -> Result<(), Refusal> {
    stub::exit(em, ExitKind::Direct { target }, GuestEip::At(target))
}

/// The conditional jump `instr` (`code`, its `rel8` form) as a side exit: a `jcc rel32`
/// whose stub [`stub::taken_exit`] emits later. Returns the jump's offset.
fn side_exit_jump(
    em: &mut Emitter,
    instr: &iced_x86::Instruction,
    code: iced_x86::Code,
) -> Result<u32, Refusal> {
    let pad = Meta::expansion(GuestEip::At(eip_of(instr)), false, false);
    let jump = Meta {
        origin: Origin::Inline {
            guest_len: u8::try_from(instr.len()).unwrap_or(u8::MAX),
        },
        ..pad
    };
    em.aligned_jcc(code.as_near_branch(), pad, jump)
}

/// Expands the block's final near control transfer.
fn branch(em: &mut Emitter, instr: &iced_x86::Instruction) -> Result<(), Refusal> {
    let eip = eip_of(instr);
    let next = eip.wrapping_add(u32::try_from(instr.len()).unwrap_or(0));
    let Some(form) = branch_form(instr) else {
        return stub::exit(em, ExitKind::Unsupported, GuestEip::At(eip));
    };
    match form {
        BranchForm::Jump { target } => direct(em, target),
        BranchForm::Conditional { code, target } => {
            let jcc = side_exit_jump(em, instr, code)?;
            direct(em, next)?;
            stub::taken_exit(em, jcc, ExitKind::Direct { target }, GuestEip::At(target))
        }
        BranchForm::Counted { code, target } => {
            let taken =
                em.branch_forward(code, Meta::expansion(GuestEip::At(eip), false, false))?;
            direct(em, next)?;
            em.bind(taken)?;
            direct(em, target)
        }
        BranchForm::Call { target, ret, op16 } => {
            lookup::call_push(em, eip, ret, op16)?;
            direct(em, target)
        }
        BranchForm::JumpIndirect { .. }
        | BranchForm::CallIndirect { .. }
        | BranchForm::Return { .. } => lookup::indirect(em, instr, form),
    }
}

/// Helpers for the unit tests of the translator's files.
#[cfg(test)]
pub(crate) mod testing {
    use iced_x86::{Decoder, DecoderOptions, Instruction};

    use super::*;

    /// TC address the tests translate for.
    pub const TC: u32 = 0xF000_0000;
    /// Guest EIP the tests' code starts at.
    pub const EIP: u32 = 0x1000;

    /// The code segment of size `bitness`, flat for 32-bit code.
    pub fn segment(bitness: u32) -> CodeSegment {
        if bitness == 16 {
            CodeSegment::real16(0)
        } else {
            CodeSegment::FLAT32
        }
    }

    /// `bytes` at [`EIP`] translated for [`TC`] in code of size `bitness`.
    pub fn translate_with(bitness: u32, bytes: &[u8], cfg: &TranslateConfig) -> Block {
        let code = GuestPages::flat(EIP, bytes);
        translate_block(&code, EIP, segment(bitness), TC, cfg).expect("translates")
    }

    /// [`translate_with`] the default configuration.
    pub fn translate(bitness: u32, bytes: &[u8]) -> Block {
        translate_with(bitness, bytes, &TranslateConfig::default())
    }

    /// The block's instructions as the CPU will decode them.
    pub fn disasm(block: &Block) -> Vec<Instruction> {
        Decoder::with_ip(
            32,
            &block.bytes,
            u64::from(block.tc_address),
            DecoderOptions::NONE,
        )
        .into_iter()
        .collect()
    }
}
