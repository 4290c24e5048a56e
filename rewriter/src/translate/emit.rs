//! Emitting translated code: IDENT instructions and the translator's own sequences.
//!
//! Every byte of a block comes out of iced's encoder, from an [`Instruction`] the
//! translator holds: a guest instruction as it was decoded (IDENT), or one the
//! translator built. Guest bytes are never copied. The TC is 32-bit code whatever the
//! guest's code size: a 16-bit guest instruction is re-encoded for a 32-bit segment,
//! where iced adds the `66`/`67` prefixes that give it the same operand and address
//! size.
//!
//! x86-32 has no IP-relative data addressing, and every control transfer ends a block,
//! so an IDENT instruction's encoding does not depend on where it lands. The only
//! relative branches are the translator's own, to its stubs, in fixed-size forms
//! (`rel8` to a label in the block, `rel32` for chaining slots and the gate), so each
//! instruction is encoded once at its final address and every stub offset is known
//! as soon as it is emitted.

use iced_x86::{
    Code, ConstantOffsets, Decoder, DecoderOptions, Encoder, IcedError, Instruction, MemoryOperand,
    Register,
};

use super::side::{GuestEip, Origin, SideEntry, SideTable};
use super::{Refusal, TranslateConfig};

/// Builds an iced [`Instruction`] with one of its `withN` constructors, turning a
/// rejection (a translator bug) into a [`Refusal`].
macro_rules! build {
    ($ctor:ident, $code:expr $(, $op:expr)* $(,)?) => {{
        let code = $code;
        iced_x86::Instruction::$ctor(code $(, $op)*)
            .map_err(|e| $crate::translate::emit::encode_error(code, &e))
    }};
}
pub(crate) use build;

/// What the side table records for the next emitted instruction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub guest: GuestEip,
    pub restore_scratch: bool,
    pub restore_eax: bool,
    pub can_fault: bool,
    pub origin: Origin,
}

impl Meta {
    /// Part of an expansion of the guest instruction at `guest`.
    pub fn expansion(guest: GuestEip, restore_scratch: bool, can_fault: bool) -> Meta {
        Meta {
            guest,
            restore_scratch,
            restore_eax: false,
            can_fault,
            origin: Origin::Expansion,
        }
    }
}

/// A `rel8` branch whose target is bound later.
#[derive(Debug)]
#[must_use]
pub(crate) struct Fixup {
    /// Offset of the displacement byte; the branch ends right after it.
    disp: usize,
}

/// The block under construction.
pub(crate) struct Emitter<'c> {
    /// TC address of the block's first byte.
    pub base: u32,
    pub bytes: Vec<u8>,
    pub side: SideTable,
    pub cfg: &'c TranslateConfig,
    /// Offsets of the 32-bit displacements rebased onto `cfg.gs_rebase`: the code
    /// depends on that base there.
    pub gs_sites: Vec<u32>,
    encoder: Encoder,
}

impl std::fmt::Debug for Emitter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("base", &self.base)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// Offsets inside a block: a block is far smaller than 4 GiB.
pub(crate) fn offset_of(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl<'c> Emitter<'c> {
    pub fn new(base: u32, cfg: &'c TranslateConfig) -> Self {
        Self {
            base,
            bytes: Vec::with_capacity(256),
            side: SideTable::default(),
            cfg,
            gs_sites: Vec::new(),
            encoder: Encoder::new(32),
        }
    }

    /// Offset of the next byte.
    pub fn offset(&self) -> u32 {
        offset_of(self.bytes.len())
    }

    /// TC address of the next byte.
    pub fn here(&self) -> u32 {
        self.base.wrapping_add(self.offset())
    }

    /// Encodes `instr` at the current address and records it.
    pub fn emit(&mut self, instr: &Instruction, meta: Meta) -> Result<(), Refusal> {
        let start = self.bytes.len();
        let len = self
            .encoder
            .encode(instr, u64::from(self.here()))
            .map_err(|e| encode_error(instr.code(), &e))?;
        // The encoder's buffer goes back to it emptied: one allocation per block, not
        // one per instruction.
        let mut encoded = self.encoder.take_buffer();
        self.bytes.extend_from_slice(&encoded);
        encoded.clear();
        self.encoder.set_buffer(encoded);
        self.side.entries.push(SideEntry {
            offset: offset_of(start),
            len: u8::try_from(len).unwrap_or(u8::MAX),
            guest: meta.guest,
            restore_scratch: meta.restore_scratch,
            restore_eax: meta.restore_eax,
            can_fault: meta.can_fault,
            origin: meta.origin,
        });
        Ok(())
    }

    /// Re-encodes the guest instruction `guest` for the TC. Returns `false` (and emits
    /// nothing) when the encoding would not decode back to the same instruction, so the
    /// caller can end the block with an exit instead.
    pub fn ident(&mut self, guest: &Instruction) -> Result<bool, Refusal> {
        let eip = u32::try_from(guest.ip()).unwrap_or(0);
        if self.cfg.inline_if && matches!(guest.code(), Code::Cli | Code::Sti) {
            super::inline::interrupt_flag(self, guest)?;
            return Ok(true);
        }
        if let Some(reg) = super::inline::selector_read(guest) {
            super::inline::selector(self, guest, reg, self.cfg.selectors)?;
            return Ok(true);
        }
        if let Some(slot) = super::inline::control_read(self.cfg, guest) {
            super::inline::read_control(self, guest, slot)?;
            return Ok(true);
        }
        if let Some(reg) = super::inline::segment_load(self.cfg, guest) {
            super::inline::load_segment(self, guest, reg)?;
            return Ok(true);
        }
        if let Some(base) = self.cfg.gs_rebase {
            if let Some(rebased) = gs_rebased(guest, base) {
                let meta = Meta {
                    guest: GuestEip::At(eip),
                    restore_scratch: false,
                    restore_eax: false,
                    can_fault: true,
                    origin: Origin::Inline {
                        guest_len: u8::try_from(guest.len()).unwrap_or(u8::MAX),
                    },
                };
                let start = self.bytes.len();
                let Some(offsets) = self.emit_checked_offsets(&rebased, meta)? else {
                    return Ok(false);
                };
                // The displacement's place, for the engine to move the code onto another
                // base; an encoding without a 32-bit one (none seen) is not emitted.
                if !offsets.has_displacement() || offsets.displacement_size() != 4 {
                    self.bytes.truncate(start);
                    self.side.entries.pop();
                    return Ok(false);
                }
                self.gs_sites
                    .push(offset_of(start + offsets.displacement_offset()));
                return Ok(true);
            }
        }
        if self.cfg.inline_if && guest.code() == Code::Pushfd {
            super::inline::pushfd(self, guest)?;
            return Ok(true);
        }
        if super::inline::popfd_inline(self.cfg, guest) {
            super::inline::popfd(self, guest)?;
            return Ok(true);
        }
        let meta = Meta {
            guest: GuestEip::At(eip),
            restore_scratch: false,
            restore_eax: false,
            can_fault: true,
            origin: Origin::Ident {
                guest_len: u8::try_from(guest.len()).unwrap_or(u8::MAX),
            },
        };
        self.emit_checked(guest, meta)
    }

    /// Emits `instr` with `meta` and checks that it decodes back to the same
    /// instruction (`==` leaves the address and length out). `false` (nothing emitted)
    /// when it does not, so the caller can end the block with an exit instead.
    fn emit_checked(&mut self, instr: &Instruction, meta: Meta) -> Result<bool, Refusal> {
        Ok(self.emit_checked_offsets(instr, meta)?.is_some())
    }

    /// [`Emitter::emit_checked`], giving where the emitted instruction's displacement and
    /// immediates lie (`None`: nothing emitted).
    fn emit_checked_offsets(
        &mut self,
        instr: &Instruction,
        meta: Meta,
    ) -> Result<Option<ConstantOffsets>, Refusal> {
        let start = self.bytes.len();
        if self.emit(instr, meta).is_err() {
            return Ok(None);
        }
        let mut decoder = Decoder::with_ip(
            32,
            self.bytes.get(start..).unwrap_or_default(),
            u64::from(self.base.wrapping_add(offset_of(start))),
            DecoderOptions::NONE,
        );
        let out = decoder.decode();
        if out.len() != self.bytes.len() - start || !same_instruction(instr, &out) {
            self.bytes.truncate(start);
            self.side.entries.pop();
            return Ok(None);
        }
        Ok(Some(decoder.get_constant_offsets(&out)))
    }

    /// Emits a `rel8` branch (`code`) to a label bound later with [`Emitter::bind`].
    pub fn branch_forward(&mut self, code: Code, meta: Meta) -> Result<Fixup, Refusal> {
        // Encoded first with a zero displacement: the form has a fixed length.
        let next = self.here().wrapping_add(instruction_len(code));
        let instr =
            Instruction::with_branch(code, u64::from(next)).map_err(|e| encode_error(code, &e))?;
        self.emit(&instr, meta)?;
        Ok(Fixup {
            disp: self.bytes.len() - 1,
        })
    }

    /// Pads with one NOP (of 1 to 3 bytes: the padding runs on the path that falls
    /// through) so that the instruction emitted next has its byte `at` 4-byte aligned
    /// as a TC address.
    pub fn align(&mut self, at: u32, meta: Meta) -> Result<(), Refusal> {
        let nop = match self.here().wrapping_add(at) & 3 {
            0 => return Ok(()),
            3 => Instruction::with(Code::Nopd),
            // 66 90
            2 => Instruction::with(Code::Nopw),
            // 0F 1F 00: nop dword [eax], which accesses nothing.
            _ => build!(
                with1,
                Code::Nop_rm32,
                MemoryOperand::with_base(Register::EAX)
            )?,
        };
        let start = self.offset();
        self.emit(&nop, meta)?;
        if self.here().wrapping_add(at) & 3 != 0 {
            return Err(Refusal::Encode {
                what: "alignment".to_string(),
                reason: format!("a NOP of {} bytes", self.offset() - start),
            });
        }
        Ok(())
    }

    /// Emits a `jcc rel32` (`code`, with `meta`) whose displacement is 4-byte aligned as
    /// a TC address (NOPs with `pad` in front), pointing at its own end until
    /// [`super::stub::taken_exit`] gives it its stub: returns the jump's offset.
    pub fn aligned_jcc(&mut self, code: Code, pad: Meta, meta: Meta) -> Result<u32, Refusal> {
        // 0F 8x and the displacement.
        const LEN: u32 = 6;
        self.align(LEN - 4, pad)?;
        let at = self.offset();
        let next = self.here().wrapping_add(LEN);
        let instr =
            Instruction::with_branch(code, u64::from(next)).map_err(|e| encode_error(code, &e))?;
        self.emit(&instr, meta)?;
        if self.offset() != at + LEN {
            return Err(Refusal::Encode {
                what: format!("{code:?}"),
                reason: "not a 6-byte jcc rel32".to_string(),
            });
        }
        Ok(at)
    }

    /// Points `fixup`'s branch at the current offset.
    pub fn bind(&mut self, fixup: Fixup) -> Result<(), Refusal> {
        let distance = self.bytes.len() - (fixup.disp + 1);
        let disp = i8::try_from(distance).map_err(|_| Refusal::Encode {
            what: "rel8 label".to_string(),
            reason: format!("label {distance} bytes away"),
        })?;
        // A fixup is made by branch_forward for a byte it emitted, and the block only grows.
        let byte = self
            .bytes
            .get_mut(fixup.disp)
            .ok_or_else(|| Refusal::Encode {
                what: "rel8 label".to_string(),
                reason: format!("no branch displacement at offset {}", fixup.disp),
            })?;
        *byte = disp.to_le_bytes()[0];
        Ok(())
    }

    /// The scratch slot at `offset` in the scratch area, through the reserved segment.
    pub fn slot(&self, offset: u32) -> MemoryOperand {
        absolute(
            self.cfg.scratch.segment.register(),
            self.cfg.scratch.base.wrapping_add(offset),
        )
    }
}

/// `seg:[address]` with a 32-bit displacement and no base or index.
pub(crate) fn absolute(segment: Register, address: u32) -> MemoryOperand {
    MemoryOperand::new(
        Register::None,
        Register::None,
        1,
        i64::from(address),
        4,
        false,
        segment,
    )
}

/// Length of the rel8 forms [`Emitter::branch_forward`] emits: the opcode and the
/// displacement, plus `67` for the CX-counter forms in 32-bit code.
fn instruction_len(code: Code) -> u32 {
    match code {
        Code::Loopne_rel8_32_CX
        | Code::Loope_rel8_32_CX
        | Code::Loop_rel8_32_CX
        | Code::Jcxz_rel8_32 => 3,
        _ => 2,
    }
}

pub(crate) fn encode_error(code: Code, e: &IcedError) -> Refusal {
    Refusal::Encode {
        what: format!("{code:?}"),
        reason: e.to_string(),
    }
}

/// Whether `a` (decoded from the guest) and `b` (decoded from the TC) are the same
/// instruction: same code, operands, prefixes and memory operand, whatever the code
/// size they were decoded in and however long their displacement encodings are.
/// `instr` with its explicit GS override dropped and `base` added to its displacement,
/// when that is the same access through flat DS/SS: a 32-bit memory operand, not a
/// string instruction, not LEA (whose result is the offset).
fn gs_rebased(instr: &Instruction, base: u32) -> Option<Instruction> {
    use iced_x86::{Mnemonic, OpKind};
    if instr.segment_prefix() != Register::GS
        || instr.is_string_instruction()
        || instr.mnemonic() == Mnemonic::Lea
        || !(0..instr.op_count()).any(|n| instr.op_kind(n) == OpKind::Memory)
        || instr.memory_base().size() == 2
        || instr.memory_index().size() == 2
        || (instr.memory_base() == Register::None
            && instr.memory_index() == Register::None
            && instr.memory_displ_size() == 2)
    {
        return None;
    }
    let mut out = *instr;
    out.set_segment_prefix(Register::None);
    out.set_memory_displacement32(instr.memory_displacement32().wrapping_add(base));
    out.set_memory_displ_size(4);
    Some(out)
}

pub(crate) fn same_instruction(a: &Instruction, b: &Instruction) -> bool {
    let mut a = *a;
    let mut b = *b;
    a.set_memory_displ_size(0);
    b.set_memory_displ_size(0);
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bitness: u32, bytes: &[u8]) -> Instruction {
        Decoder::with_ip(bitness, bytes, 0x1000, DecoderOptions::NONE).decode()
    }

    fn reencode(bitness: u32, bytes: &[u8]) -> Option<Vec<u8>> {
        let cfg = TranslateConfig::default();
        let mut em = Emitter::new(0xF000_0000, &cfg);
        let instr = decode(bitness, bytes);
        em.ident(&instr).unwrap().then_some(em.bytes)
    }

    #[test]
    fn ident_32_bit_instructions_keep_their_encoding() {
        for bytes in [
            &[0x89, 0xE5][..],
            &[0x8B, 0x45, 0x08],
            &[0xF3, 0xA5],
            &[0xF0, 0x0F, 0xB1, 0x0A],
            &[0x26, 0x8B, 0x03],
            &[0x0F, 0xAF, 0xC1],
        ] {
            assert_eq!(reencode(32, bytes).as_deref(), Some(bytes), "{bytes:02x?}");
        }
    }

    #[test]
    fn ident_16_bit_instructions_gain_size_prefixes() {
        // mov ax, [bx+si-2]
        assert_eq!(
            reencode(16, &[0x8B, 0x40, 0xFE]).unwrap(),
            [0x66, 0x67, 0x8B, 0x40, 0xFE]
        );
        // push ax
        assert_eq!(reencode(16, &[0x50]).unwrap(), [0x66, 0x50]);
        // rep movsw
        assert_eq!(
            reencode(16, &[0xF3, 0xA5]).unwrap(),
            [0x66, 0x67, 0xF3, 0xA5]
        );
        // mov eax, [ebx] (66 67 in 16-bit code): plain in 32-bit code
        assert_eq!(
            reencode(16, &[0x66, 0x67, 0x8B, 0x03]).unwrap(),
            [0x8B, 0x03]
        );
        // mov ax, [0x1234]
        assert_eq!(
            reencode(16, &[0xA1, 0x34, 0x12]).unwrap(),
            [0x66, 0x67, 0xA1, 0x34, 0x12]
        );
    }

    #[test]
    fn ident_output_decodes_to_the_guest_instruction() {
        for (bitness, bytes) in [
            (16, &[0x8B, 0x87, 0x00, 0x80][..]),
            (16, &[0x36, 0xFF, 0x76, 0xFC]),
            (32, &[0x66, 0x66, 0x66, 0x90]),
            (32, &[0x8B, 0x84, 0x88, 0x00, 0x00, 0x00, 0x00]),
        ] {
            let guest = decode(bitness, bytes);
            let out = reencode(bitness, bytes).unwrap();
            assert!(same_instruction(&guest, &decode(32, &out)), "{bytes:02x?}");
        }
    }

    #[test]
    fn forward_branches_bind_to_later_labels() {
        let cfg = TranslateConfig::default();
        let mut em = Emitter::new(0x1000, &cfg);
        let meta = Meta::expansion(GuestEip::At(0), false, false);
        let fix = em.branch_forward(Code::Loop_rel8_32_CX, meta).unwrap();
        for _ in 0..5 {
            em.emit(&Instruction::with(Code::Nopd), meta).unwrap();
        }
        em.bind(fix).unwrap();
        let instr = decode(32, &em.bytes);
        assert_eq!(instr.code(), Code::Loop_rel8_32_CX);
        assert_eq!(instr.near_branch_target(), 0x1000 + 3 + 5);
    }
}
