//! Guest code as the CPU fetches it: a CS offset made linear, the linear address
//! translated for an instruction fetch (without setting accessed bits), and the bytes the
//! guest wrote there (trap bytes read as the originals), decoded with the code segment's
//! operand size.

use iced_x86::{Decoder, DecoderOptions, Instruction};
use rewriter::CodeSize;

use super::CodePages;
use crate::addr::{GuestLinear, PAGE_SIZE};
use crate::vcpu::VcpuState;
use crate::vm::guest_memory::GuestMemory;
use crate::x86::SegReg;

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// A read-only view of what a fetch sees: guest memory and paging, the patch table, and
/// the vCPU's code segment and privilege level.
#[derive(Debug, Clone, Copy)]
pub struct Fetch<'a> {
    /// Guest RAM and paging.
    pub mem: &'a GuestMemory,
    /// The patch table (for the original bytes under trap bytes).
    pub pages: &'a CodePages,
    /// The vCPU (CS base and size, CPL).
    pub state: &'a VcpuState,
}

impl Fetch<'_> {
    /// The guest linear address of `offset` in CS.
    pub fn linear(&self, offset: u32) -> GuestLinear {
        GuestLinear(self.state.sreg(SegReg::Cs).base).wrapping_add(offset)
    }

    /// Up to 15 bytes of original guest code at linear `lin`, through the guest's
    /// translation page by page.
    pub fn read(&self, lin: GuestLinear) -> ([u8; MAX_INSN_LEN], usize) {
        let mut buf = [0u8; MAX_INSN_LEN];
        let user = self.state.cpl() == 3;
        let mut done = 0;
        while done < buf.len() {
            // `done` < 15: the sum cannot leave the 32-bit offset range.
            let at = lin.wrapping_add(u32::try_from(done).unwrap_or(0));
            let Some(phys) = self.mem.code_phys(at, user) else {
                break;
            };
            let room = (PAGE_SIZE - at.page_offset()) as usize;
            let n = room.min(buf.len() - done);
            let Some(chunk) = buf.get_mut(done..done + n) else {
                break;
            };
            let got = self.pages.read_original(&self.mem.ram, phys, chunk);
            done += got;
            if got < n {
                break;
            }
        }
        (buf, done)
    }

    /// The size of the code at linear `page` as the code segment executes it (16-bit
    /// code when CS.D is clear, in real mode too): what a scan of the page must decode
    /// with.
    pub fn code_size(&self, page: GuestLinear) -> CodeSize {
        let cs = self.state.sreg(SegReg::Cs);
        CodeSize::of_segment(cs.db, cs.base, page.page().raw())
    }

    /// The original guest instruction at CS:`offset`, decoded with the code segment's
    /// size, if it decodes.
    pub fn decode_at(&self, offset: u32) -> Option<Instruction> {
        let (bytes, n) = self.read(self.linear(offset));
        let bitness = if self.state.code_32() { 32 } else { 16 };
        let code = bytes.get(..n).unwrap_or_default();
        let mut decoder = Decoder::with_ip(bitness, code, u64::from(offset), DecoderOptions::NONE);
        let instr = decoder.decode();
        (!instr.is_invalid()).then_some(instr)
    }
}

/// The length of a decoded instruction (at most 15, so it always fits).
pub fn insn_len(instr: &Instruction) -> u32 {
    u32::try_from(instr.len()).unwrap_or(0)
}
