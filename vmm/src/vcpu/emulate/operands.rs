//! Operand access: general-purpose registers by iced register name, ModRM memory
//! operands (effective address from base, index, scale, displacement, 16- or 32-bit
//! addressing, segment override or default segment), and segment-checked guest memory
//! reads and writes (SDM Vol. 3A §5.3: limit and type checks, #SS(0) for SS accesses).

use crate::addr::GuestLinear;
use crate::bits::low32;
use crate::vcpu::state::VcpuState;
use crate::vcpu::{Fault, GuestBus};
use crate::x86::SegReg;
use iced_x86::{Instruction, OpKind, Register};

/// Index into [`VcpuState::gpr`] of a general-purpose register of any width, and
/// whether it is one of AH/CH/DH/BH.
fn gpr_slot(reg: Register) -> Option<(usize, bool)> {
    if (Register::AH..=Register::BH).contains(&reg) {
        return Some((reg as usize - Register::AH as usize, true));
    }
    let full = reg.full_register32();
    if (Register::EAX..=Register::EDI).contains(&full) {
        Some((full as usize - Register::EAX as usize, false))
    } else {
        None
    }
}

/// Whether a string instruction addresses with SI/DI (16-bit addressing) rather than
/// ESI/EDI: its string operands say so.
pub fn string_addr16(instr: &Instruction) -> bool {
    (0..instr.op_count())
        .any(|n| matches!(instr.op_kind(n), OpKind::MemorySegSI | OpKind::MemoryESDI))
}

/// The destination index, source index and count registers of a string instruction, by
/// its address size: DI, SI, CX or EDI, ESI, ECX.
pub fn string_registers(instr: &Instruction) -> (Register, Register, Register) {
    if string_addr16(instr) {
        (Register::DI, Register::SI, Register::CX)
    } else {
        (Register::EDI, Register::ESI, Register::ECX)
    }
}

/// Reads a general-purpose register (8, 16 or 32 bits), zero-extended.
pub fn read_gpr(s: &VcpuState, reg: Register) -> u32 {
    let Some((i, high)) = gpr_slot(reg) else {
        return 0;
    };
    let Some(&v) = s.gpr.get(i) else {
        return 0;
    };
    match reg.size() {
        1 if high => (v >> 8) & 0xff,
        1 => v & 0xff,
        2 => v & 0xffff,
        _ => v,
    }
}

/// Writes a general-purpose register; 8- and 16-bit writes keep the other bits.
pub fn write_gpr(s: &mut VcpuState, reg: Register, value: u32) {
    let Some((i, high)) = gpr_slot(reg) else {
        return;
    };
    let Some(v) = s.gpr.get_mut(i) else {
        return;
    };
    match reg.size() {
        1 if high => *v = (*v & !0xff00) | ((value & 0xff) << 8),
        1 => *v = (*v & !0xff) | (value & 0xff),
        2 => *v = (*v & !0xffff) | (value & 0xffff),
        _ => *v = value,
    }
}

/// Whether the memory operand uses 16-bit addressing (address-size prefix in 32-bit
/// code, or 16-bit code): a 16-bit base or index register, or a lone 16-bit displacement.
pub fn addr16(instr: &Instruction) -> bool {
    let b = instr.memory_base();
    let i = instr.memory_index();
    if b != Register::None {
        return b.size() == 2;
    }
    if i != Register::None {
        return i.size() == 2;
    }
    instr.memory_displ_size() == 2
}

/// The segment and offset of the instruction's ModRM memory operand.
pub fn effective_address(s: &VcpuState, instr: &Instruction) -> (SegReg, u32) {
    let mut off = instr.memory_displacement32();
    if instr.memory_base() != Register::None {
        off = off.wrapping_add(read_gpr(s, instr.memory_base()));
    }
    if instr.memory_index() != Register::None {
        off = off.wrapping_add(
            read_gpr(s, instr.memory_index()).wrapping_mul(instr.memory_index_scale()),
        );
    }
    if addr16(instr) {
        off &= 0xffff;
    }
    let seg = SegReg::from_iced(instr.memory_segment()).unwrap_or(SegReg::Ds);
    (seg, off)
}

/// A register-or-memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rm {
    /// A general-purpose register.
    Reg(Register),
    /// Memory at segment:offset.
    Mem(SegReg, u32),
}

/// Operand `op` as register or memory; `None` for other kinds (immediates...).
pub fn rm_operand(s: &VcpuState, instr: &Instruction, op: u32) -> Option<Rm> {
    match instr.op_kind(op) {
        OpKind::Register => Some(Rm::Reg(instr.op_register(op))),
        OpKind::Memory => {
            let (seg, off) = effective_address(s, instr);
            Some(Rm::Mem(seg, off))
        }
        _ => None,
    }
}

/// The linear address of a `len`-byte access at `seg:off`, after the protection checks
/// of SDM Vol. 3A §5.3–5.4: unusable (null) segment, type (write to non-writable,
/// read of execute-only), and limit. Violations are #GP(0), or #SS(0) for SS.
///
/// # Errors
/// #GP(0) or #SS(0) as above.
pub fn linear(
    s: &VcpuState,
    seg: SegReg,
    off: u32,
    len: u32,
    write: bool,
) -> Result<GuestLinear, Fault> {
    let c = s.sreg(seg);
    let fault = if seg == SegReg::Ss {
        Fault::ss(0)
    } else {
        Fault::gp0()
    };
    if s.protected() && !s.v86() {
        if !c.present {
            return Err(fault);
        }
        let ok_type = if write {
            c.is_writable_data()
        } else {
            c.is_readable()
        };
        if !ok_type {
            return Err(fault);
        }
    }
    if !c.contains(off, len) {
        return Err(fault);
    }
    Ok(GuestLinear(c.base.wrapping_add(off)))
}

/// Reads `size` (1, 2 or 4) bytes at `seg:off` with segment checks, as a CPL-3 access
/// when the guest runs at CPL 3.
///
/// # Errors
/// Segment faults from [`linear`]; #PF from the bus.
pub fn read_mem(
    s: &VcpuState,
    bus: &mut impl GuestBus,
    seg: SegReg,
    off: u32,
    size: u32,
) -> Result<u32, Fault> {
    let a = linear(s, seg, off, size, false)?;
    let mut b = [0u8; 4];
    // Operands are 1, 2 or 4 bytes; a wider one is no instruction the emulator takes.
    let operand = b.get_mut(..size as usize).ok_or(Fault::ud())?;
    bus.read_linear(a, operand, s.cpl() == 3)?;
    Ok(u32::from_le_bytes(b))
}

/// Writes the low `size` bytes of `value` at `seg:off` with segment checks.
///
/// # Errors
/// Segment faults from [`linear`]; #PF from the bus.
pub fn write_mem(
    s: &VcpuState,
    bus: &mut impl GuestBus,
    seg: SegReg,
    off: u32,
    size: u32,
    value: u32,
) -> Result<(), Fault> {
    let a = linear(s, seg, off, size, true)?;
    let bytes = value.to_le_bytes();
    let operand = bytes.get(..size as usize).ok_or(Fault::ud())?;
    bus.write_linear(a, operand, s.cpl() == 3)
}

/// Reads an r/m operand of `size` bytes.
///
/// # Errors
/// As [`read_mem`].
pub fn read_rm(s: &VcpuState, bus: &mut impl GuestBus, rm: Rm, size: u32) -> Result<u32, Fault> {
    match rm {
        Rm::Reg(r) => Ok(read_gpr(s, r)),
        Rm::Mem(seg, off) => read_mem(s, bus, seg, off, size),
    }
}

/// Writes an r/m operand of `size` bytes (a register keeps its bits above `size`).
///
/// # Errors
/// As [`write_mem`].
pub fn write_rm(
    s: &mut VcpuState,
    bus: &mut impl GuestBus,
    rm: Rm,
    size: u32,
    value: u32,
) -> Result<(), Fault> {
    match rm {
        Rm::Reg(r) => {
            write_gpr(s, r, value);
            Ok(())
        }
        Rm::Mem(seg, off) => write_mem(s, bus, seg, off, size, value),
    }
}

/// The width in bytes (1, 2 or 4) of operand `op`, a general-purpose register or the
/// memory operand.
pub fn operand_size(instr: &Instruction, op: u32) -> Option<u32> {
    let n = match instr.op_kind(op) {
        OpKind::Register if gpr_slot(instr.op_register(op)).is_some() => {
            instr.op_register(op).size()
        }
        OpKind::Memory => instr.memory_size().size(),
        _ => return None,
    };
    match n {
        1 | 2 | 4 => u32::try_from(n).ok(),
        _ => None,
    }
}

/// Operand `op` as a value when it is a general-purpose register or an immediate
/// (sign-extended immediates as the instruction extends them).
pub fn value_operand(s: &VcpuState, instr: &Instruction, op: u32) -> Option<u32> {
    match instr.op_kind(op) {
        OpKind::Register => {
            let r = instr.op_register(op);
            gpr_slot(r).map(|_| read_gpr(s, r))
        }
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32 => Some(low32(instr.immediate(op))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::state::gpr;
    use iced_x86::{Decoder, DecoderOptions};

    fn decode(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(32, bytes, 0, DecoderOptions::NONE).decode()
    }

    #[test]
    fn sib_and_override() {
        let mut s = VcpuState::multiboot_entry(0, 0, 0);
        s.gpr[gpr::EBX] = 0x1000;
        s.gpr[gpr::ESI] = 0x10;
        // mov eax, fs:[ebx+esi*4+0x20]
        let i = decode(&[0x64, 0x8b, 0x44, 0xb3, 0x20]);
        assert_eq!(effective_address(&s, &i), (SegReg::Fs, 0x1060));
        // mov eax, [ebp-4] defaults to SS
        s.gpr[gpr::EBP] = 0x2000;
        let i = decode(&[0x8b, 0x45, 0xfc]);
        assert_eq!(effective_address(&s, &i), (SegReg::Ss, 0x1ffc));
    }

    #[test]
    fn sixteen_bit_addressing_wraps() {
        let mut s = VcpuState::multiboot_entry(0, 0, 0);
        s.gpr[gpr::EBX] = 0x1_fff0;
        s.gpr[gpr::ESI] = 0x20;
        // addr16 mov eax, [bx+si+2]
        let i = decode(&[0x67, 0x8b, 0x40, 0x02]);
        assert!(addr16(&i));
        assert_eq!(effective_address(&s, &i), (SegReg::Ds, 0x12));
    }

    #[test]
    fn partial_registers() {
        let mut s = VcpuState::multiboot_entry(0, 0x1122_3344, 0);
        assert_eq!(read_gpr(&s, Register::AH), 0x33);
        write_gpr(&mut s, Register::AH, 0xff);
        write_gpr(&mut s, Register::AX, 0xffff_1234);
        assert_eq!(s.gpr[gpr::EAX], 0x1122_1234);
        write_gpr(&mut s, Register::BH, 0xab);
        assert_eq!(s.gpr[gpr::EBX], 0xab00);
    }

    #[test]
    fn segment_checks() {
        let mut s = VcpuState::multiboot_entry(0, 0, 0);
        s.sreg_mut(SegReg::Ss).limit = 0xfff;
        assert_eq!(linear(&s, SegReg::Ss, 0xffe, 4, false), Err(Fault::ss(0)));
        s.sreg_mut(SegReg::Ds).typ = 0x1; // read-only
        assert_eq!(linear(&s, SegReg::Ds, 0, 4, true), Err(Fault::gp0()));
        assert!(linear(&s, SegReg::Ds, 0, 4, false).is_ok());
        *s.sreg_mut(SegReg::Es) = crate::vcpu::state::Segment::null(0);
        assert_eq!(linear(&s, SegReg::Es, 0, 1, false), Err(Fault::gp0()));
        // Execute-only CS cannot be read.
        s.sreg_mut(SegReg::Cs).typ = 0x9;
        assert_eq!(linear(&s, SegReg::Cs, 0, 1, false), Err(Fault::gp0()));
    }
}
