//! Decoding one guest basic block from the address where it is really entered.
//!
//! The block is decoded with the code segment's own size (16-bit code is never decoded
//! as 32-bit) from exactly the entry EIP, one instruction after the other, and ends:
//!
//! * at a control transfer other than a conditional jump (the last instruction is then a
//!   branch the emitter expands; a conditional jump is a side exit and decoding goes on
//!   with its fall-through);
//! * at an instruction the translation may not run natively (its class is in the
//!   rewriter's table, it reads through CS or the reserved scratch segment, or it is
//!   unsupported): it becomes an exit;
//! * at bytes that do not decode: a #UD exit, never copied;
//! * at the size cap, or where the next instruction would start on another page, or
//!   where its bytes cannot be fetched or pass the segment limit: a fall-through exit,
//!   so that the fault (if any) is raised when that instruction is the entry of its own
//!   block, with the CPU's fault address.
//!
//! An instruction that straddles into the next page stays in the block; both
//! guest-physical pages are recorded, because the block depends on both.

use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind,
    Register,
};
use shadow_paging::PAGE_SIZE;

use super::{ExitKind, Refusal, TranslateConfig};
use crate::class::{classify, Class};
use crate::scan::MAX_INSTRUCTION_LEN;

/// Reads guest code for the translator.
///
/// Addresses are guest-linear. A read never spans a page boundary; the reader answers
/// with the guest-physical address of the page the bytes came from (the block's
/// dependency on that page), or `None` when an instruction fetch from that page would
/// fault (not present, or not executable for the current privilege level).
pub trait CodeReader {
    /// Fills all of `buf` with the code bytes at `linear` (never past the end of its
    /// page) and returns the guest-physical address of that page, or `None` when a fetch
    /// there faults.
    fn fetch(&self, linear: u32, buf: &mut [u8]) -> Option<u64>;

    /// Whether the block must end before the instruction at `linear` (a breakpoint or an
    /// entry point the monitor serves there): the instruction then starts a block of its
    /// own, which the monitor enters itself. Never asked for the block's entry.
    fn stop_before(&self, linear: u32) -> bool {
        let _ = linear;
        false
    }

    /// Whether the monitor performs the instruction at guest-physical `phys` itself
    /// ([`ExitKind::Mediated`]): it keeps writing to pages whose writes the monitor
    /// mediates (page tables), so an exit through the gate is cheaper than the host
    /// fault each of its writes would take.
    fn mediated(&self, phys: u64) -> bool {
        let _ = phys;
        false
    }

    /// Whether the DIV, IDIV or BOUND at guest-physical `phys` is translated behind an
    /// inline check of what makes it fault, its divisor ([`ExitKind::DivideError`]) or
    /// its bounds ([`ExitKind::BoundRange`]): it kept raising #DE or #BR, which each
    /// cost a host signal.
    fn fault_checked(&self, phys: u64) -> bool {
        let _ = phys;
        false
    }
}

impl<R: CodeReader + ?Sized> CodeReader for &R {
    fn fetch(&self, linear: u32, buf: &mut [u8]) -> Option<u64> {
        (**self).fetch(linear, buf)
    }

    fn stop_before(&self, linear: u32) -> bool {
        (**self).stop_before(linear)
    }

    fn mediated(&self, phys: u64) -> bool {
        (**self).mediated(phys)
    }

    fn fault_checked(&self, phys: u64) -> bool {
        (**self).fault_checked(phys)
    }
}

/// Operand and address size of a code segment (its descriptor's D bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeSize {
    /// D = 0: 16-bit code.
    Bits16,
    /// D = 1: 32-bit code.
    Bits32,
}

impl CodeSize {
    /// 16 or 32, as iced's decoder wants it.
    pub fn bitness(self) -> u32 {
        match self {
            CodeSize::Bits16 => 16,
            CodeSize::Bits32 => 32,
        }
    }
}

/// The guest's current code segment, as far as decoding needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodeSegment {
    /// Segment base: guest linear = base + EIP.
    pub base: u32,
    /// Highest valid offset (the byte-granular effective limit).
    pub limit: u32,
    /// Its D bit.
    pub size: CodeSize,
}

impl CodeSegment {
    /// A flat 4 GiB 32-bit code segment.
    pub const FLAT32: CodeSegment = CodeSegment {
        base: 0,
        limit: u32::MAX,
        size: CodeSize::Bits32,
    };

    /// A 16-bit code segment at `base` with a 64 KiB limit.
    pub fn real16(base: u32) -> CodeSegment {
        CodeSegment {
            base,
            limit: 0xFFFF,
            size: CodeSize::Bits16,
        }
    }
}

/// A guest page the block's bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuestPage {
    /// Its guest-linear address.
    pub linear: u32,
    /// The guest-physical page it was mapped to.
    pub phys: u64,
}

/// How a decoded block ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// A near control transfer that the emitter expands.
    Branch(Instruction),
    /// An instruction that leaves for the monitor.
    Exit {
        /// Its guest EIP.
        eip: u32,
        /// Why.
        kind: ExitKind,
    },
    /// Continue at this guest EIP in another block.
    FallThrough(u32),
    /// A direct CALL of a position-independent-code thunk (`mov reg, [esp]` then `ret`,
    /// how i386 PIC finds its own address): the call, the thunk and its return are one
    /// step that leaves the return address below ESP and in `reg`, and goes on at `ret`.
    Thunk {
        /// The CALL's guest EIP.
        eip: u32,
        /// The register the thunk loads.
        reg: Register,
        /// The return address (the CALL's end).
        ret: u32,
    },
}

/// A decoded guest basic block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DecodedBlock {
    /// The instructions that run natively, in order.
    pub ident: Vec<Instruction>,
    /// How the block ends.
    pub end: End,
    /// The pages the decoded bytes came from (one, or two when an instruction
    /// straddles a page end).
    pub pages: Vec<GuestPage>,
    /// One past the last guest byte of the decoded instructions, the ending branch or
    /// exit instruction included (as a guest EIP).
    pub guest_end: u32,
    /// The guest EIPs of the DIV and IDIV instructions in `ident` to translate behind a
    /// divisor check ([`CodeReader::fault_checked`]).
    pub checked: Vec<u32>,
    /// The instruction an [`End::Exit`] for one instruction leaves at.
    pub exit_instruction: Option<Instruction>,
}

const PAGE: usize = PAGE_SIZE as usize;

/// The bytes fetched so far: the rest of the entry's page, then (when an instruction
/// needs them) the first bytes of the next page.
struct Window {
    bytes: Vec<u8>,
    /// Length of the part that lies in the entry's page.
    first_page_len: usize,
    /// Linear address of the next page.
    next_page: u32,
    next: NextPage,
}

#[derive(PartialEq, Eq)]
enum NextPage {
    NotRead,
    Read,
    Unreadable,
}

/// Decodes the block entered at `eip` in the code segment `cs`.
///
/// # Errors
///
/// [`Refusal::Fetch`] when the entry instruction's bytes cannot be fetched,
/// [`Refusal::SegmentLimit`] when they lie past the segment limit: the CPU would fault
/// before executing anything, and so does the monitor.
pub(crate) fn decode_block(
    reader: &impl CodeReader,
    eip: u32,
    cs: CodeSegment,
    cfg: &TranslateConfig,
) -> Result<DecodedBlock, Refusal> {
    if eip > cs.limit {
        return Err(Refusal::SegmentLimit {
            eip,
            limit: cs.limit,
        });
    }
    let linear = cs.base.wrapping_add(eip);
    let page = linear & !(PAGE_SIZE - 1);
    let in_page = usize::try_from(linear - page).unwrap_or(PAGE);
    let mut bytes = vec![0u8; PAGE - in_page];
    let phys = reader
        .fetch(linear, &mut bytes)
        .ok_or(Refusal::Fetch { linear })?;
    let mut pages = vec![GuestPage { linear: page, phys }];
    let mut window = Window {
        first_page_len: bytes.len(),
        bytes,
        next_page: page.wrapping_add(PAGE_SIZE),
        next: NextPage::NotRead,
    };

    let bitness = cs.size.bitness();
    let mut ident = Vec::new();
    let mut checked = Vec::new();
    let mut exit_instruction = None;
    let mut at = eip;
    let mut guest_end = eip;
    let mut offset = 0usize;
    let end = loop {
        if ident.len() >= cfg.max_instructions.max(1) || offset >= window.first_page_len {
            break End::FallThrough(at);
        }
        let first = ident.is_empty();
        if !first && reader.stop_before(cs.base.wrapping_add(at)) {
            break End::FallThrough(at);
        }
        let Some(instr) = window.decode(reader, offset, at, bitness, &mut pages) else {
            // The instruction needs bytes from a page that faults on fetch.
            if first {
                return Err(Refusal::Fetch {
                    linear: window.next_page,
                });
            }
            break End::FallThrough(at);
        };
        if instr.is_invalid() {
            break End::Exit {
                eip: at,
                kind: ExitKind::Undefined,
            };
        }
        let len = instr.len();
        let last = u64::from(at) + len as u64 - 1;
        if last > u64::from(cs.limit) {
            if first {
                return Err(Refusal::SegmentLimit {
                    eip: at,
                    limit: cs.limit,
                });
            }
            break End::FallThrough(at);
        }
        // `last` is at most the limit, so the next EIP fits.
        let next = u32::try_from(last + 1).unwrap_or(u32::MAX);
        guest_end = next;
        if let Some(kind) = exit_kind(&instr, cfg) {
            exit_instruction = Some(instr);
            break End::Exit { eip: at, kind };
        }
        // Every instruction starts in the entry's page (`offset` stays below its end).
        let here = phys + offset as u64 + in_page as u64;
        if reader.mediated(here) {
            exit_instruction = Some(instr);
            break End::Exit {
                eip: at,
                kind: ExitKind::Mediated,
            };
        }
        if matches!(
            instr.mnemonic(),
            Mnemonic::Div | Mnemonic::Idiv | Mnemonic::Bound
        ) && reader.fault_checked(here)
        {
            checked.push(at);
        }
        // A conditional jump leaves the block only when taken: the block goes on with its
        // fall-through (a side exit), so the common path runs without a jump of its own.
        if instr.flow_control() != FlowControl::Next && side_exit(&instr).is_none() {
            break End::Branch(instr);
        }
        ident.push(instr);
        at = next;
        offset += len;
    };
    let end = match end {
        End::Branch(call) => {
            pic_thunk(reader, &call, cs, cfg, &mut pages).unwrap_or(End::Branch(call))
        }
        other => other,
    };
    Ok(DecodedBlock {
        ident,
        end,
        pages,
        guest_end,
        checked,
        exit_instruction,
    })
}

impl Window {
    /// Decodes the instruction at `offset` (guest EIP `at`), fetching the next page's
    /// first bytes when it straddles into it. `None` when those bytes cannot be fetched.
    fn decode(
        &mut self,
        reader: &impl CodeReader,
        offset: usize,
        at: u32,
        bitness: u32,
        pages: &mut Vec<GuestPage>,
    ) -> Option<Instruction> {
        loop {
            let mut decoder = Decoder::with_ip(
                bitness,
                self.bytes.get(offset..).unwrap_or_default(),
                u64::from(at),
                DecoderOptions::NONE,
            );
            let instr = decoder.decode();
            if decoder.last_error() != DecoderError::NoMoreBytes {
                return Some(instr);
            }
            match self.next {
                NextPage::NotRead => {
                    let mut more = vec![0u8; MAX_INSTRUCTION_LEN - 1];
                    match reader.fetch(self.next_page, &mut more) {
                        Some(phys) => {
                            self.bytes.extend_from_slice(&more);
                            self.next = NextPage::Read;
                            pages.push(GuestPage {
                                linear: self.next_page,
                                phys,
                            });
                        }
                        None => self.next = NextPage::Unreadable,
                    }
                }
                // Every byte an instruction may have was there: it is invalid.
                NextPage::Read => return Some(instr),
                NextPage::Unreadable => return None,
            }
        }
    }
}

/// [`End::Thunk`] for `call` when it is a direct 32-bit CALL of a PIC thunk that the
/// translation may take as one step: 32-bit code and stack, not single-stepped or watched
/// (one-instruction blocks), the thunk's four bytes (`8B /r` with `[esp]`, then `C3`)
/// inside the code segment, in one page, with no breakpoint or served entry on them,
/// and the return address inside the segment (else the thunk's RET faults). The thunk's
/// page joins the block's pages: a write to it, or a new mapping of it, undoes the block.
fn pic_thunk(
    reader: &impl CodeReader,
    call: &Instruction,
    cs: CodeSegment,
    cfg: &TranslateConfig,
    pages: &mut Vec<GuestPage>,
) -> Option<End> {
    const LEN: u32 = 4;
    if call.code() != Code::Call_rel32_32
        || cs.size != CodeSize::Bits32
        || cfg.stack_size != super::StackSize::Bits32
        || cfg.max_instructions <= 1
    {
        return None;
    }
    let target = u32::try_from(call.near_branch_target()).ok()?;
    let ret = end_of(call);
    if target > cs.limit.checked_sub(LEN - 1)? || ret > cs.limit {
        return None;
    }
    let linear = cs.base.checked_add(target)?;
    let page = linear & !(PAGE_SIZE - 1);
    if linear - page > PAGE_SIZE - LEN || (0..LEN).any(|i| reader.stop_before(linear + i)) {
        return None;
    }
    let mut bytes = [0u8; LEN as usize];
    let phys = reader.fetch(linear, &mut bytes)?;
    let [0x8B, modrm, 0x24, 0xC3] = bytes else {
        return None;
    };
    // mod 00, r/m 100 (a SIB byte, here [esp]); any register but ESP itself.
    let reg = (modrm >> 3) & 7;
    if modrm & 0xC7 != 0x04 || reg == 4 {
        return None;
    }
    let reg = *[
        Register::EAX,
        Register::ECX,
        Register::EDX,
        Register::EBX,
        Register::ESP,
        Register::EBP,
        Register::ESI,
        Register::EDI,
    ]
    .get(usize::from(reg))?;
    if !pages.iter().any(|p| p.linear == page) {
        pages.push(GuestPage { linear: page, phys });
    }
    Some(End::Thunk {
        eip: u32::try_from(call.ip()).ok()?,
        reg,
        ret,
    })
}

/// For a conditional jump (not LOOP or JCXZ, which keep ending blocks): its `rel8`
/// 32-bit-operand code and its target, taken as a side exit mid-block.
pub(crate) fn side_exit(instr: &Instruction) -> Option<(Code, u32)> {
    if instr.flow_control() != FlowControl::ConditionalBranch {
        return None;
    }
    match branch_form(instr)? {
        BranchForm::Conditional { code, target } => Some((code, target)),
        _ => None,
    }
}

fn end_of(instr: &Instruction) -> u32 {
    let len = u32::try_from(instr.len()).unwrap_or(0);
    u32::try_from(instr.ip()).unwrap_or(0).wrapping_add(len)
}

/// Why `instr` must leave for the monitor instead of running from the TC, if it must.
fn exit_kind(instr: &Instruction, cfg: &TranslateConfig) -> Option<ExitKind> {
    if cfg.exit_pause && instr.mnemonic() == iced_x86::Mnemonic::Pause {
        return Some(ExitKind::Pause);
    }
    let class = classify(instr);
    let runs_natively = class == Class::Innocuous
        || class == Class::Pause
        || (class == Class::Fpu && !cfg.exit_fpu)
        || (cfg.inline_if
            && (matches!(class, Class::Cli | Class::Sti)
                || (class == Class::Pushf && instr.code() == iced_x86::Code::Pushfd)))
        || super::inline::popfd_inline(cfg, instr)
        || super::inline::selector_read(instr).is_some()
        || super::inline::segment_load(cfg, instr).is_some()
        || super::inline::control_read(cfg, instr).is_some();
    if !runs_natively {
        return Some(ExitKind::Sensitive(class));
    }
    if reads_through(instr, cfg.scratch.segment.register()) {
        return Some(ExitKind::SegmentOverride);
    }
    match instr.flow_control() {
        FlowControl::Next => None,
        FlowControl::UnconditionalBranch
        | FlowControl::ConditionalBranch
        | FlowControl::Call
        | FlowControl::IndirectBranch
        | FlowControl::IndirectCall
        | FlowControl::Return => match branch_form(instr) {
            Some(_) => None,
            None => Some(ExitKind::Unsupported),
        },
        // RTM has a relative abort target the TC cannot honour; INT n, INT3, UD2 and
        // friends are in the class table, and anything else that raises an exception by
        // design is left to the monitor.
        FlowControl::XbeginXabortXend | FlowControl::Interrupt | FlowControl::Exception => {
            Some(ExitKind::Unsupported)
        }
    }
}

/// Whether `instr` has a memory operand whose segment, or whose segment override even
/// where the CPU ignores it (string stores), is CS or `reserved` (the scratch segment).
/// Inside the TC, CS is the TC's own code segment and the reserved register addresses
/// the vCPU page: neither is the guest's segment. NOP and LEA never access memory.
pub(crate) fn reads_through(instr: &Instruction, reserved: Register) -> bool {
    if matches!(instr.mnemonic(), Mnemonic::Nop | Mnemonic::Lea) || !has_memory(instr) {
        return false;
    }
    [instr.memory_segment(), instr.segment_prefix()]
        .iter()
        .any(|&s| s == Register::CS || s == reserved)
}

/// Whether the instruction has a memory operand (explicit, or a string operand).
pub(crate) fn has_memory(instr: &Instruction) -> bool {
    (0..instr.op_count()).any(|i| {
        matches!(
            instr.op_kind(i),
            OpKind::Memory
                | OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemorySegDI
                | OpKind::MemorySegEDI
                | OpKind::MemorySegRDI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
                | OpKind::MemoryESRDI
        )
    })
}

/// The shape of a near control transfer, as the emitter expands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BranchForm {
    /// JMP rel8/rel16/rel32.
    Jump { target: u32 },
    /// Jcc rel8/rel16/rel32: the rel8 32-bit-operand code with the same condition.
    Conditional { code: Code, target: u32 },
    /// LOOP/LOOPE/LOOPNE/JCXZ/JECXZ: the rel8 32-bit-operand code with the same
    /// counter register.
    Counted { code: Code, target: u32 },
    /// CALL rel16/rel32, pushing a 16-bit or 32-bit return address.
    Call { target: u32, ret: u32, op16: bool },
    /// JMP r/m16 or r/m32.
    JumpIndirect { op16: bool },
    /// CALL r/m16 or r/m32.
    CallIndirect { ret: u32, op16: bool },
    /// RET or RET imm16 with a 16-bit or 32-bit operand size.
    Return { pop: u16, op16: bool },
}

pub(crate) fn branch_form(instr: &Instruction) -> Option<BranchForm> {
    // iced applies the operand-size wrap of the target (64 KiB for 16-bit operands).
    let target = u32::try_from(instr.near_branch_target()).unwrap_or(0);
    let ret16 = end_of(instr) & 0xFFFF;
    let code = instr.code();
    Some(match code {
        Code::Jmp_rel8_16 | Code::Jmp_rel8_32 | Code::Jmp_rel16 | Code::Jmp_rel32_32 => {
            BranchForm::Jump { target }
        }
        Code::Call_rel16 => BranchForm::Call {
            target,
            ret: ret16,
            op16: true,
        },
        Code::Call_rel32_32 => BranchForm::Call {
            target,
            ret: end_of(instr),
            op16: false,
        },
        Code::Jmp_rm16 => BranchForm::JumpIndirect { op16: true },
        Code::Jmp_rm32 => BranchForm::JumpIndirect { op16: false },
        Code::Call_rm16 => BranchForm::CallIndirect {
            ret: ret16,
            op16: true,
        },
        Code::Call_rm32 => BranchForm::CallIndirect {
            ret: end_of(instr),
            op16: false,
        },
        Code::Retnw => BranchForm::Return { pop: 0, op16: true },
        Code::Retnd => BranchForm::Return {
            pop: 0,
            op16: false,
        },
        Code::Retnw_imm16 => BranchForm::Return {
            pop: instr.immediate16(),
            op16: true,
        },
        Code::Retnd_imm16 => BranchForm::Return {
            pop: instr.immediate16(),
            op16: false,
        },
        Code::Loopne_rel8_16_CX | Code::Loopne_rel8_32_CX => BranchForm::Counted {
            code: Code::Loopne_rel8_32_CX,
            target,
        },
        Code::Loopne_rel8_16_ECX | Code::Loopne_rel8_32_ECX => BranchForm::Counted {
            code: Code::Loopne_rel8_32_ECX,
            target,
        },
        Code::Loope_rel8_16_CX | Code::Loope_rel8_32_CX => BranchForm::Counted {
            code: Code::Loope_rel8_32_CX,
            target,
        },
        Code::Loope_rel8_16_ECX | Code::Loope_rel8_32_ECX => BranchForm::Counted {
            code: Code::Loope_rel8_32_ECX,
            target,
        },
        Code::Loop_rel8_16_CX | Code::Loop_rel8_32_CX => BranchForm::Counted {
            code: Code::Loop_rel8_32_CX,
            target,
        },
        Code::Loop_rel8_16_ECX | Code::Loop_rel8_32_ECX => BranchForm::Counted {
            code: Code::Loop_rel8_32_ECX,
            target,
        },
        Code::Jcxz_rel8_16 | Code::Jcxz_rel8_32 => BranchForm::Counted {
            code: Code::Jcxz_rel8_32,
            target,
        },
        Code::Jecxz_rel8_16 | Code::Jecxz_rel8_32 => BranchForm::Counted {
            code: Code::Jecxz_rel8_32,
            target,
        },
        _ => BranchForm::Conditional {
            code: conditional_rel8(instr.mnemonic())?,
            target,
        },
    })
}

/// The `Jcc rel8` (32-bit operand size) code for a conditional jump mnemonic.
fn conditional_rel8(mnemonic: Mnemonic) -> Option<Code> {
    use Mnemonic as M;
    Some(match mnemonic {
        M::Jo => Code::Jo_rel8_32,
        M::Jno => Code::Jno_rel8_32,
        M::Jb => Code::Jb_rel8_32,
        M::Jae => Code::Jae_rel8_32,
        M::Je => Code::Je_rel8_32,
        M::Jne => Code::Jne_rel8_32,
        M::Jbe => Code::Jbe_rel8_32,
        M::Ja => Code::Ja_rel8_32,
        M::Js => Code::Js_rel8_32,
        M::Jns => Code::Jns_rel8_32,
        M::Jp => Code::Jp_rel8_32,
        M::Jnp => Code::Jnp_rel8_32,
        M::Jl => Code::Jl_rel8_32,
        M::Jge => Code::Jge_rel8_32,
        M::Jle => Code::Jle_rel8_32,
        M::Jg => Code::Jg_rel8_32,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{segment, EIP};
    use crate::translate::GuestPages;

    fn decode(bitness: u32, bytes: &[u8]) -> DecodedBlock {
        decode_at(&GuestPages::flat(EIP, bytes), EIP, segment(bitness))
    }

    fn page(linear: u32, phys: u64) -> GuestPage {
        GuestPage { linear, phys }
    }

    fn decode_at(code: &GuestPages, eip: u32, cs: CodeSegment) -> DecodedBlock {
        decode_block(code, eip, cs, &TranslateConfig::default()).expect("decodes")
    }

    /// Code with an instruction the monitor performs (at a guest-physical address) or a
    /// breakpoint (at a linear address).
    struct Watched {
        code: GuestPages,
        mediated: Option<u64>,
        breakpoint: Option<u32>,
    }

    impl CodeReader for Watched {
        fn fetch(&self, linear: u32, buf: &mut [u8]) -> Option<u64> {
            self.code.fetch(linear, buf)
        }

        fn stop_before(&self, linear: u32) -> bool {
            self.breakpoint == Some(linear)
        }

        fn mediated(&self, phys: u64) -> bool {
            self.mediated == Some(phys)
        }
    }

    /// The code, with the monitor performing the instruction at guest-physical `phys`.
    fn mediating(code: GuestPages, phys: u64) -> Watched {
        Watched {
            code,
            mediated: Some(phys),
            breakpoint: None,
        }
    }

    #[test]
    fn a_mediated_instruction_ends_the_block_by_its_physical_address() {
        // At linear 0x7ff8, in a page mapped from physical 0x3000: inc eax; mov [ebx],
        // eax; ret. The store (physical 0x3ff9) is the monitor's.
        let mut code = GuestPages::new();
        let mut page = vec![0u8; 0xff8];
        page.extend([0x40, 0x89, 0x03, 0xC3]);
        code.map(0x7000, 0x3000, &page);
        let cfg = TranslateConfig::default();
        let reader = mediating(code, 0x3ff9);
        let block = decode_block(&reader, 0x7ff8, CodeSegment::FLAT32, &cfg).expect("decodes");
        assert_eq!(block.ident.len(), 1);
        assert_eq!(
            block.end,
            End::Exit {
                eip: 0x7ff9,
                kind: ExitKind::Mediated
            }
        );
        // Marked by its linear address instead, nothing is the monitor's.
        let reader = mediating(reader.code, 0x7ff9);
        let block = decode_block(&reader, 0x7ff8, CodeSegment::FLAT32, &cfg).expect("decodes");
        assert_eq!(block.ident.len(), 2);
        assert!(matches!(block.end, End::Branch(_)));
    }

    #[test]
    fn sixteen_bit_code_is_decoded_as_sixteen_bit() {
        // 16-bit: mov ax, 0x12EA; jmp $ (B8 EA 12 EB FE). As 32-bit the same bytes would
        // be one mov eax with a different end.
        let block = decode(16, &[0xB8, 0xEA, 0x12, 0xEB, 0xFE]);
        assert_eq!(block.ident.len(), 1);
        assert_eq!(block.ident[0].code(), Code::Mov_r16_imm16);
        assert!(matches!(block.end, End::Branch(i) if i.near_branch_target() == 0x1003));
        assert_eq!(block.guest_end, EIP + 5);
    }

    #[test]
    fn far_pointer_immediates_end_the_block_in_an_exit() {
        for (bitness, bytes, class) in [
            (32, &[0xEA, 1, 2, 3, 4, 0x33, 0][..], Class::FarJmp),
            (32, &[0x9A, 1, 2, 3, 4, 0x33, 0], Class::FarCall),
            (16, &[0xEA, 1, 2, 0x33, 0], Class::FarJmp),
            (16, &[0x66, 0xEA, 1, 2, 3, 4, 0x33, 0], Class::FarJmp),
            (32, &[0xFF, 0x2D, 0, 0x20, 0, 0], Class::FarJmp),
            (32, &[0xCB], Class::FarRet),
            (32, &[0xCF], Class::Iret),
        ] {
            let block = decode(bitness, &[&[0x90][..], bytes].concat());
            assert_eq!(block.ident.len(), 1, "{bytes:02x?}");
            assert_eq!(
                block.end,
                End::Exit {
                    eip: EIP + 1,
                    kind: ExitKind::Sensitive(class)
                },
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn undecodable_bytes_end_the_block_in_an_undefined_exit() {
        // nop; (FF /7 is no instruction)
        let block = decode(32, &[0x90, 0xFF, 0xFF]);
        assert_eq!(
            block.end,
            End::Exit {
                eip: EIP + 1,
                kind: ExitKind::Undefined
            }
        );
        // Sixteen prefixes make an instruction longer than 15 bytes.
        let mut long = vec![0x66; 15];
        long.push(0x90);
        assert_eq!(
            decode(32, &long).end,
            End::Exit {
                eip: EIP,
                kind: ExitKind::Undefined
            }
        );
        // Fifteen bytes are still an instruction.
        let fifteen = [&long[1..], &[0xC3]].concat();
        assert_eq!(decode(32, &fifteen).ident.len(), 1);
    }

    #[test]
    fn reads_through_cs_or_the_scratch_segment_exit() {
        for bytes in [
            &[0x2E, 0x8B, 0x00][..], // mov eax, cs:[eax]
            &[0x65, 0x8B, 0x00],     // mov eax, gs:[eax]
            &[0x2E, 0xA4],           // movsb with a cs: source
            &[0x2E, 0xFF, 0x20],     // jmp cs:[eax]
        ] {
            assert_eq!(
                decode(32, bytes).end,
                End::Exit {
                    eip: EIP,
                    kind: ExitKind::SegmentOverride
                },
                "{bytes:02x?}"
            );
        }
        // fs: is the guest's own (the scratch segment is GS); cs: NOPs and LEAs access
        // nothing.
        for bytes in [
            &[0x64, 0x8B, 0x00][..],
            &[0x66, 0x2E, 0x0F, 0x1F, 0x84, 0, 0, 0, 0, 0],
            &[0x2E, 0x8D, 0x00],
        ] {
            let block = decode(32, &[bytes, &[0xC3]].concat());
            assert_eq!(block.ident.len(), 1, "{bytes:02x?}");
        }
    }

    #[test]
    fn a_block_ends_where_the_next_instruction_starts_on_another_page() {
        // Three NOPs at the end of a page; the next page holds more.
        let code = GuestPages::flat(0x1FFD, &[0x90; 8]);
        let block = decode_at(&code, 0x1FFD, CodeSegment::FLAT32);
        assert_eq!(block.ident.len(), 3);
        assert_eq!(block.end, End::FallThrough(0x2000));
        assert_eq!(block.pages.len(), 1);
    }

    #[test]
    fn a_straddling_instruction_is_kept_and_both_pages_recorded() {
        // nop at 0x1FFD, then mov eax, imm32 from 0x1FFE to 0x2002.
        let mut code = GuestPages::new();
        let mut first = vec![0u8; 0x1000];
        first[0xFFD..].copy_from_slice(&[0x90, 0xB8, 0x78]);
        code.map(0x1000, 0x7_7000, &first);
        code.map(0x2000, 0x5_5000, &[0x56, 0x34, 0x12, 0x90]);
        let block = decode_at(&code, 0x1FFD, CodeSegment::FLAT32);
        assert_eq!(block.ident.len(), 2);
        assert_eq!(block.ident[1].immediate32(), 0x1234_5678);
        assert_eq!(block.end, End::FallThrough(0x2003));
        assert_eq!(
            block.pages,
            [page(0x1000, 0x7_7000), page(0x2000, 0x5_5000)]
        );
    }

    #[test]
    fn a_straddle_into_an_unmapped_page_faults_only_at_the_entry() {
        let mut code = GuestPages::new();
        let mut first = vec![0u8; 0x1000];
        first[0xFFD..].copy_from_slice(&[0x90, 0xB8, 0x78]);
        code.map(0x1000, 0x1000, &first);
        // Mid-block: the block stops before the instruction.
        let block = decode_at(&code, 0x1FFD, CodeSegment::FLAT32);
        assert_eq!(block.ident.len(), 1);
        assert_eq!(block.end, End::FallThrough(0x1FFE));
        assert_eq!(block.pages.len(), 1);
        // As the entry: #PF at the first byte of the missing page.
        let cfg = TranslateConfig::default();
        assert_eq!(
            decode_block(&code, 0x1FFE, CodeSegment::FLAT32, &cfg),
            Err(Refusal::Fetch { linear: 0x2000 })
        );
        assert_eq!(
            decode_block(&code, 0x3000, CodeSegment::FLAT32, &cfg),
            Err(Refusal::Fetch { linear: 0x3000 })
        );
    }

    #[test]
    fn segment_base_and_limit_apply() {
        // 16-bit segment at 0x10000: EIP 0x0000 is linear 0x10000.
        let code = GuestPages::flat(0x1_0000, &[0x40, 0x90]);
        let cs = CodeSegment {
            base: 0x1_0000,
            limit: 0x0001,
            size: CodeSize::Bits16,
        };
        let block = decode_at(&code, 0, cs);
        assert_eq!(block.ident.len(), 2);
        assert_eq!(block.ident[0].code(), Code::Inc_r16);
        // The limit ends the block; past it the entry itself is refused.
        assert_eq!(block.end, End::FallThrough(2));
        let cfg = TranslateConfig::default();
        assert_eq!(
            decode_block(&code, 2, cs, &cfg),
            Err(Refusal::SegmentLimit { eip: 2, limit: 1 })
        );
        // An instruction that runs past the limit is refused too (#GP).
        let code = GuestPages::flat(0xFFFE, &[0xB8, 0x34, 0x12]);
        assert_eq!(
            decode_block(&code, 0xFFFE, CodeSegment::real16(0), &cfg),
            Err(Refusal::SegmentLimit {
                eip: 0xFFFE,
                limit: 0xFFFF
            })
        );
    }

    #[test]
    fn the_size_cap_ends_a_block() {
        let cfg = TranslateConfig {
            max_instructions: 4,
            ..TranslateConfig::default()
        };
        let code = GuestPages::flat(EIP, &[0x90; 10]);
        let block = decode_block(&code, EIP, CodeSegment::FLAT32, &cfg).unwrap();
        assert_eq!(block.ident.len(), 4);
        assert_eq!(block.end, End::FallThrough(EIP + 4));
    }

    #[test]
    fn fpu_instructions_exit_unless_allowed() {
        let code = GuestPages::flat(EIP, &[0xD9, 0xE8, 0xC3]);
        let exits = TranslateConfig::default();
        assert_eq!(
            decode_block(&code, EIP, CodeSegment::FLAT32, &exits)
                .unwrap()
                .end,
            End::Exit {
                eip: EIP,
                kind: ExitKind::Sensitive(Class::Fpu)
            }
        );
        let native = TranslateConfig {
            exit_fpu: false,
            ..exits
        };
        let block = decode_block(&code, EIP, CodeSegment::FLAT32, &native).unwrap();
        assert_eq!(block.ident.len(), 1);
        assert!(matches!(block.end, End::Branch(_)));
    }

    #[test]
    fn pause_exits_only_when_vcpus_share_the_thread() {
        // inc eax; pause; jmp $-3
        let code = GuestPages::flat(EIP, &[0x40, 0xF3, 0x90, 0xEB, 0xFB]);
        let alone = TranslateConfig::default();
        let block = decode_block(&code, EIP, CodeSegment::FLAT32, &alone).unwrap();
        assert_eq!(block.ident.len(), 2, "PAUSE is copied");
        assert!(matches!(block.end, End::Branch(_)));
        let shared = TranslateConfig {
            exit_pause: true,
            ..alone
        };
        let block = decode_block(&code, EIP, CodeSegment::FLAT32, &shared).unwrap();
        assert_eq!(block.ident.len(), 1);
        assert_eq!(
            block.end,
            End::Exit {
                eip: EIP + 1,
                kind: ExitKind::Pause
            }
        );
    }

    #[test]
    fn a_copied_pause_passes_the_validator() {
        // inc eax; pause; ret: translated whole (the validator runs on every block).
        let block = super::super::testing::translate(32, &[0x40, 0xF3, 0x90, 0xC3]);
        assert_eq!(block.guest_end, EIP + 4);
        let bytes = &block.bytes;
        assert!(bytes.windows(2).any(|w| w == [0xF3, 0x90]), "PAUSE copied");
    }

    #[test]
    fn rtm_is_unsupported() {
        // xbegin rel32
        assert_eq!(
            decode(32, &[0xC7, 0xF8, 0, 0, 0, 0]).end,
            End::Exit {
                eip: EIP,
                kind: ExitKind::Unsupported
            }
        );
    }

    #[test]
    fn a_conditional_jump_is_a_side_exit_and_decoding_goes_on() {
        // jne +1; nop; loop -3; (never reached)
        let block = decode(32, &[0x75, 0x01, 0x90, 0xE2, 0xFB, 0x90]);
        assert_eq!(block.ident.len(), 2);
        assert_eq!(
            side_exit(&block.ident[0]),
            Some((Code::Jne_rel8_32, EIP + 3))
        );
        assert_eq!(side_exit(&block.ident[1]), None);
        // LOOP still ends the block.
        assert!(matches!(&block.end, End::Branch(i) if i.mnemonic() == Mnemonic::Loop));
        assert_eq!(block.guest_end, EIP + 5);
    }

    /// `call` at 0x1000 of a thunk (`thunk` bytes) at 0x3000, on another page.
    fn thunk_code(thunk: &[u8]) -> GuestPages {
        let mut code = GuestPages::new();
        let rel = 0x3000u32 - 0x1005;
        code.map(
            0x1000,
            0x7_7000,
            &[&[0xE8][..], &rel.to_le_bytes()].concat(),
        );
        code.map(0x3000, 0x9_9000, thunk);
        code
    }

    #[test]
    fn a_call_of_a_pic_thunk_is_one_step_depending_on_the_thunk_page() {
        for (modrm, reg) in [
            (0x1C, Register::EBX),
            (0x04, Register::EAX),
            (0x3C, Register::EDI),
        ] {
            let code = thunk_code(&[0x8B, modrm, 0x24, 0xC3]);
            let block = decode_at(&code, 0x1000, CodeSegment::FLAT32);
            assert_eq!(
                block.end,
                End::Thunk {
                    eip: 0x1000,
                    reg,
                    ret: 0x1005
                }
            );
            assert_eq!(
                block.pages,
                [page(0x1000, 0x7_7000), page(0x3000, 0x9_9000)]
            );
        }
    }

    #[test]
    fn calls_of_anything_else_stay_calls() {
        let is_call = |block: &DecodedBlock| matches!(block.end, End::Branch(_));
        // mov esp, [esp]; mov ebx, [esp+0]; mov ebx, [esp] then inc ebx; ret imm16.
        for thunk in [
            &[0x8B, 0x24, 0x24, 0xC3][..],
            &[0x8B, 0x5C, 0x24, 0x00, 0xC3],
            &[0x8B, 0x1C, 0x24, 0x43, 0xC3],
            &[0x8B, 0x1C, 0x24, 0xC2, 0x00, 0x00],
        ] {
            let block = decode_at(&thunk_code(thunk), 0x1000, CodeSegment::FLAT32);
            assert!(is_call(&block), "{thunk:02x?}");
            assert_eq!(block.pages.len(), 1);
        }
        let thunk = thunk_code(&[0x8B, 0x1C, 0x24, 0xC3]);
        // A breakpoint on the thunk's RET: the thunk runs as the guest's code.
        let watched = Watched {
            code: thunk.clone(),
            mediated: None,
            breakpoint: Some(0x3003),
        };
        let cfg = TranslateConfig::default();
        let block = decode_block(&watched, 0x1000, CodeSegment::FLAT32, &cfg).unwrap();
        assert!(is_call(&block));
        // Single steps, 16-bit stacks, a limit that cuts the thunk.
        let single = TranslateConfig {
            max_instructions: 1,
            ..TranslateConfig::default()
        };
        let stack16 = TranslateConfig {
            stack_size: super::super::StackSize::Bits16,
            ..TranslateConfig::default()
        };
        for cfg in [single, stack16] {
            let block = decode_block(&thunk, 0x1000, CodeSegment::FLAT32, &cfg).unwrap();
            assert!(is_call(&block));
        }
        let short = CodeSegment {
            limit: 0x3002,
            ..CodeSegment::FLAT32
        };
        assert!(is_call(&decode_at(&thunk, 0x1000, short)));
    }
}
