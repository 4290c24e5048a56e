//! Guest writes the monitor performs itself (ARCHITECTURE.md §6, write mediation): a
//! write to a page-table page (mapped read-only), to scanned code, or to memory that
//! cannot be mapped faults; the monitor decodes the writing instruction and carries it
//! out through the [`GuestBus`], which translates, reverts code patches and reports
//! page-table writes. These are the instruction forms kernels use to update their tables
//! and code: MOV, XCHG, CMPXCHG (LOCK too: one vCPU, so the read-modify-write is atomic
//! as performed), CMPXCHG8B, STOS/MOVS (REP too), and AND/OR/XOR/ADD/SUB/INC/DEC/BTS/BTR
//! with the flags they set.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use crate::vcpu::emulate::operands::{
    addr16, effective_address, read_gpr, read_mem, write_gpr, write_mem,
};
use crate::vcpu::state::{eflags, gpr, SegReg};
use crate::vcpu::{Fault, GuestBus, VcpuState};

/// What a mediated instruction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mediated {
    /// Done; EIP is past the instruction.
    Done,
    /// Not an instruction form mediation performs; nothing changed.
    Unsupported,
}

/// The flags of an ALU result (SDM Vol. 1 §3.4.3.1), for an operation of `bits` width.
fn result_flags(res: u32, bits: u32) -> u32 {
    let mask = width_mask(bits);
    let r = res & mask;
    let mut f = 0;
    if r == 0 {
        f |= eflags::ZF;
    }
    if r >> (bits - 1) & 1 != 0 {
        f |= eflags::SF;
    }
    if (r as u8).count_ones().is_multiple_of(2) {
        f |= eflags::PF;
    }
    f
}

fn width_mask(bits: u32) -> u32 {
    if bits == 32 {
        u32::MAX
    } else {
        (1 << bits) - 1
    }
}

/// `a + b` (or `a - b`): the result and the status flags, as ADD/SUB/CMP set them.
fn add_sub(a: u32, b: u32, bits: u32, sub: bool) -> (u32, u32) {
    let mask = width_mask(bits);
    let (a, b) = (a & mask, b & mask);
    let wide = if sub {
        u64::from(a).wrapping_sub(u64::from(b))
    } else {
        u64::from(a) + u64::from(b)
    };
    let res = wide as u32 & mask;
    let mut f = result_flags(res, bits);
    if wide >> bits & 1 != 0 {
        f |= eflags::CF;
    }
    if (a ^ b ^ res) & 0x10 != 0 {
        f |= eflags::AF;
    }
    let sign = 1 << (bits - 1);
    let overflow = if sub {
        (a ^ b) & (a ^ res) & sign
    } else {
        !(a ^ b) & (a ^ res) & sign
    };
    if overflow != 0 {
        f |= eflags::OF;
    }
    (res, f)
}

fn set_status(s: &mut VcpuState, flags: u32, which: u32) {
    s.eflags = (s.eflags & !which) | (flags & which);
}

/// The memory operand's width in bits, if 8, 16 or 32.
fn mem_bits(instr: &Instruction) -> Option<u32> {
    match instr.memory_size().size() {
        1 => Some(8),
        2 => Some(16),
        4 => Some(32),
        _ => None,
    }
}

/// Operand 1 as a value: register or immediate (sign-extended immediates included).
fn source(s: &VcpuState, instr: &Instruction) -> Option<u32> {
    match instr.op1_kind() {
        OpKind::Register => Some(read_gpr(s, instr.op1_register())),
        OpKind::Immediate8 | OpKind::Immediate16 | OpKind::Immediate32 => {
            Some(instr.immediate(1) as u32)
        }
        OpKind::Immediate8to16 | OpKind::Immediate8to32 => Some(instr.immediate(1) as u32),
        _ => None,
    }
}

/// Performs `instr`, a write to memory, on `bus`. On a fault nothing after the faulting
/// access is done and EIP is unchanged.
///
/// # Errors
/// The guest fault an access raised (#PF, #GP, #SS).
pub fn mediate(
    s: &mut VcpuState,
    bus: &mut impl GuestBus,
    instr: &Instruction,
) -> Result<Mediated, Fault> {
    if addr16(instr) {
        return Ok(Mediated::Unsupported);
    }
    match instr.mnemonic() {
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd => return string_store(s, bus, instr),
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd
            if instr.op0_kind() == OpKind::MemoryESEDI =>
        {
            return string_store(s, bus, instr)
        }
        Mnemonic::Cmpxchg8b => return cmpxchg8b(s, bus, instr),
        _ => {}
    }
    if instr.op0_kind() != OpKind::Memory {
        return Ok(Mediated::Unsupported);
    }
    let Some(bits) = mem_bits(instr) else {
        return Ok(Mediated::Unsupported);
    };
    let size = bits / 8;
    let (seg, off) = effective_address(s, instr);
    let mask = width_mask(bits);
    match instr.mnemonic() {
        Mnemonic::Mov => {
            let Some(v) = source(s, instr) else {
                return Ok(Mediated::Unsupported);
            };
            write_mem(s, bus, seg, off, size, v)?;
        }
        Mnemonic::Xchg => {
            let reg = instr.op1_register();
            let old = read_mem(s, bus, seg, off, size)?;
            write_mem(s, bus, seg, off, size, read_gpr(s, reg))?;
            write_gpr(s, reg, old);
        }
        Mnemonic::Cmpxchg => {
            let acc = match bits {
                8 => Register::AL,
                16 => Register::AX,
                _ => Register::EAX,
            };
            let old = read_mem(s, bus, seg, off, size)?;
            let (_, f) = add_sub(read_gpr(s, acc), old, bits, true);
            if f & eflags::ZF != 0 {
                write_mem(s, bus, seg, off, size, read_gpr(s, instr.op1_register()))?;
            } else {
                // The destination is written back unchanged, as the CPU does.
                write_mem(s, bus, seg, off, size, old)?;
                write_gpr(s, acc, old);
            }
            set_status(s, f, eflags::STATUS);
        }
        Mnemonic::Add | Mnemonic::Sub | Mnemonic::And | Mnemonic::Or | Mnemonic::Xor => {
            let Some(b) = source(s, instr) else {
                return Ok(Mediated::Unsupported);
            };
            let a = read_mem(s, bus, seg, off, size)?;
            let (res, f) = match instr.mnemonic() {
                Mnemonic::Add => add_sub(a, b, bits, false),
                Mnemonic::Sub => add_sub(a, b, bits, true),
                m => {
                    let r = match m {
                        Mnemonic::And => a & b,
                        Mnemonic::Or => a | b,
                        _ => a ^ b,
                    } & mask;
                    // Logic ops clear CF and OF; AF is undefined (left clear).
                    (r, result_flags(r, bits))
                }
            };
            write_mem(s, bus, seg, off, size, res)?;
            set_status(s, f, eflags::STATUS);
        }
        Mnemonic::Inc | Mnemonic::Dec => {
            let a = read_mem(s, bus, seg, off, size)?;
            let (res, f) = add_sub(a, 1, bits, instr.mnemonic() == Mnemonic::Dec);
            write_mem(s, bus, seg, off, size, res)?;
            // INC and DEC leave CF alone.
            set_status(s, f, eflags::STATUS & !eflags::CF);
        }
        Mnemonic::Bts | Mnemonic::Btr => {
            let Some(bit) = source(s, instr) else {
                return Ok(Mediated::Unsupported);
            };
            // A register bit offset addresses memory beyond the operand (SDM BT).
            let (off, bit) = if instr.op1_kind() == OpKind::Register {
                let signed = if bits == 16 {
                    i32::from(bit as u16 as i16)
                } else {
                    bit as i32
                };
                let unit = signed.div_euclid(bits as i32);
                (
                    off.wrapping_add((unit * size as i32) as u32),
                    signed.rem_euclid(bits as i32) as u32,
                )
            } else {
                (off, bit % bits)
            };
            let a = read_mem(s, bus, seg, off, size)?;
            let was = a >> bit & 1;
            let res = if instr.mnemonic() == Mnemonic::Bts {
                a | 1 << bit
            } else {
                a & !(1 << bit)
            };
            write_mem(s, bus, seg, off, size, res)?;
            set_status(s, was * eflags::CF, eflags::CF);
        }
        _ => return Ok(Mediated::Unsupported),
    }
    s.eip = instr.next_ip32();
    Ok(Mediated::Done)
}

fn cmpxchg8b(
    s: &mut VcpuState,
    bus: &mut impl GuestBus,
    instr: &Instruction,
) -> Result<Mediated, Fault> {
    let (seg, off) = effective_address(s, instr);
    let lo = read_mem(s, bus, seg, off, 4)?;
    let hi = read_mem(s, bus, seg, off.wrapping_add(4), 4)?;
    if lo == s.gpr[gpr::EAX] && hi == s.gpr[gpr::EDX] {
        let (b, c) = (s.gpr[gpr::EBX], s.gpr[gpr::ECX]);
        write_mem(s, bus, seg, off, 4, b)?;
        write_mem(s, bus, seg, off.wrapping_add(4), 4, c)?;
        s.eflags |= eflags::ZF;
    } else {
        write_mem(s, bus, seg, off, 4, lo)?;
        write_mem(s, bus, seg, off.wrapping_add(4), 4, hi)?;
        s.gpr[gpr::EAX] = lo;
        s.gpr[gpr::EDX] = hi;
        s.eflags &= !eflags::ZF;
    }
    s.eip = instr.next_ip32();
    Ok(Mediated::Done)
}

/// STOS and MOVS, with or without REP: each element is a separate access, and ECX, ESI
/// and EDI are updated element by element, so a fault midway leaves the registers where
/// the CPU would and the instruction restarts from there.
fn string_store(
    s: &mut VcpuState,
    bus: &mut impl GuestBus,
    instr: &Instruction,
) -> Result<Mediated, Fault> {
    let size: u32 = match instr.code() {
        Code::Stosb_m8_AL | Code::Movsb_m8_m8 => 1,
        Code::Stosw_m16_AX | Code::Movsw_m16_m16 => 2,
        Code::Stosd_m32_EAX | Code::Movsd_m32_m32 => 4,
        _ => return Ok(Mediated::Unsupported),
    };
    let movs = matches!(
        instr.code(),
        Code::Movsb_m8_m8 | Code::Movsw_m16_m16 | Code::Movsd_m32_m32
    );
    let rep = instr.has_rep_prefix() || instr.has_repe_prefix() || instr.has_repne_prefix();
    let step = if s.eflags & eflags::DF != 0 {
        size.wrapping_neg()
    } else {
        size
    };
    let src_seg = SegReg::from_iced(instr.memory_segment()).unwrap_or(SegReg::Ds);
    loop {
        if rep && s.gpr[gpr::ECX] == 0 {
            break;
        }
        let value = if movs {
            read_mem(s, bus, src_seg, s.gpr[gpr::ESI], size)?
        } else {
            s.gpr[gpr::EAX]
        };
        write_mem(s, bus, SegReg::Es, s.gpr[gpr::EDI], size, value)?;
        s.gpr[gpr::EDI] = s.gpr[gpr::EDI].wrapping_add(step);
        if movs {
            s.gpr[gpr::ESI] = s.gpr[gpr::ESI].wrapping_add(step);
        }
        if !rep {
            break;
        }
        s.gpr[gpr::ECX] -= 1;
    }
    s.eip = instr.next_ip32();
    Ok(Mediated::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::GuestLinear;
    use iced_x86::{Decoder, DecoderOptions};

    struct Ram(Vec<u8>);

    impl GuestBus for Ram {
        fn read_linear(&mut self, a: GuestLinear, buf: &mut [u8], _: bool) -> Result<(), Fault> {
            let a = a.raw() as usize;
            let src = self
                .0
                .get(a..a + buf.len())
                .ok_or(Fault::page_fault(GuestLinear(a as u32), 0))?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write_linear(&mut self, a: GuestLinear, d: &[u8], _: bool) -> Result<(), Fault> {
            let at = a.raw() as usize;
            let dst = self
                .0
                .get_mut(at..at + d.len())
                .ok_or(Fault::page_fault(a, 2))?;
            dst.copy_from_slice(d);
            Ok(())
        }
        fn port_in(&mut self, _: u16, _: u8) -> u32 {
            u32::MAX
        }
        fn port_out(&mut self, _: u16, _: u8, _: u32) {}
        fn host_tsc(&mut self) -> u64 {
            0
        }
    }

    fn run(bytes: &[u8], s: &mut VcpuState, ram: &mut Ram) -> Result<Mediated, Fault> {
        let instr = Decoder::with_ip(32, bytes, 0x1000, DecoderOptions::NONE).decode();
        s.eip = 0x1000;
        mediate(s, ram, &instr)
    }

    fn dword(ram: &Ram, at: usize) -> u32 {
        u32::from_le_bytes(ram.0[at..at + 4].try_into().unwrap())
    }

    fn setup() -> (VcpuState, Ram) {
        (VcpuState::multiboot_entry(0, 0, 0), Ram(vec![0; 0x200]))
    }

    #[test]
    fn mov_and_xchg_store_and_advance() {
        let (mut s, mut ram) = setup();
        s.gpr[gpr::EBX] = 0x100;
        s.gpr[gpr::EAX] = 0x0040_0007;
        // mov [ebx+4], eax
        assert_eq!(
            run(&[0x89, 0x43, 0x04], &mut s, &mut ram),
            Ok(Mediated::Done)
        );
        assert_eq!(dword(&ram, 0x104), 0x0040_0007);
        assert_eq!(s.eip, 0x1003);
        // xchg [ebx+4], ecx
        s.gpr[gpr::ECX] = 0x1234;
        assert_eq!(
            run(&[0x87, 0x4b, 0x04], &mut s, &mut ram),
            Ok(Mediated::Done)
        );
        assert_eq!(dword(&ram, 0x104), 0x1234);
        assert_eq!(s.gpr[gpr::ECX], 0x0040_0007);
    }

    #[test]
    fn cmpxchg_success_and_failure_set_zf() {
        let (mut s, mut ram) = setup();
        ram.0[0x10] = 5;
        s.gpr[gpr::EAX] = 5;
        s.gpr[gpr::ECX] = 9;
        // lock cmpxchg [0x10], ecx
        let code = [0xf0, 0x0f, 0xb1, 0x0d, 0x10, 0, 0, 0];
        assert_eq!(run(&code, &mut s, &mut ram), Ok(Mediated::Done));
        assert_eq!(dword(&ram, 0x10), 9);
        assert_ne!(s.eflags & eflags::ZF, 0);
        assert_eq!(run(&code, &mut s, &mut ram), Ok(Mediated::Done));
        assert_eq!(s.eflags & eflags::ZF, 0);
        assert_eq!(
            s.gpr[gpr::EAX],
            9,
            "the accumulator receives the current value"
        );
        // cmpxchg8b [0x20]
        s.gpr[gpr::EAX] = 0;
        s.gpr[gpr::EDX] = 0;
        s.gpr[gpr::EBX] = 0x1111;
        s.gpr[gpr::ECX] = 0x2222;
        let code8 = [0x0f, 0xc7, 0x0d, 0x20, 0, 0, 0];
        assert_eq!(run(&code8, &mut s, &mut ram), Ok(Mediated::Done));
        assert_eq!((dword(&ram, 0x20), dword(&ram, 0x24)), (0x1111, 0x2222));
        assert_ne!(s.eflags & eflags::ZF, 0);
    }

    #[test]
    fn alu_ops_set_flags() {
        let (mut s, mut ram) = setup();
        ram.0[0x30] = 0xff;
        // add byte [0x30], 1 -> 0, CF ZF AF
        assert_eq!(
            run(&[0x80, 0x05, 0x30, 0, 0, 0, 1], &mut s, &mut ram),
            Ok(Mediated::Done)
        );
        assert_eq!(ram.0[0x30], 0);
        assert_eq!(
            s.eflags & eflags::STATUS,
            eflags::CF | eflags::ZF | eflags::AF | eflags::PF
        );
        // dec dword [0x30] -> 0xffffffff, CF kept
        assert_eq!(
            run(&[0xff, 0x0d, 0x30, 0, 0, 0], &mut s, &mut ram),
            Ok(Mediated::Done)
        );
        assert_eq!(dword(&ram, 0x30), u32::MAX);
        assert_ne!(s.eflags & eflags::CF, 0);
        assert_ne!(s.eflags & eflags::SF, 0);
        // and dword [0x30], 0x7fffffff (sign-extended imm32) -> clears SF
        assert_eq!(
            run(
                &[0x81, 0x25, 0x30, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f],
                &mut s,
                &mut ram
            ),
            Ok(Mediated::Done)
        );
        assert_eq!(dword(&ram, 0x30), 0x7fff_ffff);
        assert_eq!(s.eflags & (eflags::SF | eflags::CF | eflags::OF), 0);
        // sub dword [0x30], 0x7fffffff -> 0, ZF
        s.gpr[gpr::EDX] = 0x7fff_ffff;
        assert_eq!(
            run(&[0x29, 0x15, 0x30, 0, 0, 0], &mut s, &mut ram),
            Ok(Mediated::Done)
        );
        assert_eq!(dword(&ram, 0x30), 0);
        assert_ne!(s.eflags & eflags::ZF, 0);
        // bts dword [0x30], 5 ; btr dword [0x30], 5
        assert_eq!(
            run(&[0x0f, 0xba, 0x2d, 0x30, 0, 0, 0, 5], &mut s, &mut ram),
            Ok(Mediated::Done)
        );
        assert_eq!(dword(&ram, 0x30), 0x20);
        assert_eq!(s.eflags & eflags::CF, 0);
        assert_eq!(
            run(&[0x0f, 0xba, 0x35, 0x30, 0, 0, 0, 5], &mut s, &mut ram),
            Ok(Mediated::Done)
        );
        assert_eq!(dword(&ram, 0x30), 0);
        assert_ne!(s.eflags & eflags::CF, 0, "CF is the bit's old value");
        // or dword [0x30], eax
        s.gpr[gpr::EAX] = 0x8000_0001;
        assert_eq!(
            run(&[0x09, 0x05, 0x30, 0, 0, 0], &mut s, &mut ram),
            Ok(Mediated::Done)
        );
        assert_eq!(dword(&ram, 0x30), 0x8000_0001);
    }

    #[test]
    fn rep_stos_and_movs_and_faults_midway() {
        let (mut s, mut ram) = setup();
        s.gpr[gpr::EDI] = 0x40;
        s.gpr[gpr::ECX] = 4;
        s.gpr[gpr::EAX] = 0xabcd_ef01;
        // rep stosd
        assert_eq!(run(&[0xf3, 0xab], &mut s, &mut ram), Ok(Mediated::Done));
        assert_eq!(
            (dword(&ram, 0x40), dword(&ram, 0x4c)),
            (0xabcd_ef01, 0xabcd_ef01)
        );
        assert_eq!((s.gpr[gpr::ECX], s.gpr[gpr::EDI]), (0, 0x50));
        // rep movsb from 0x40 to 0x80
        s.gpr[gpr::ESI] = 0x40;
        s.gpr[gpr::EDI] = 0x80;
        s.gpr[gpr::ECX] = 16;
        assert_eq!(run(&[0xf3, 0xa4], &mut s, &mut ram), Ok(Mediated::Done));
        assert_eq!(ram.0[0x40..0x50], ram.0[0x80..0x90]);
        // rep stosb running off the end of memory faults with ECX/EDI at the fault.
        s.gpr[gpr::EDI] = 0x1fe;
        s.gpr[gpr::ECX] = 4;
        assert!(run(&[0xf3, 0xaa], &mut s, &mut ram).is_err());
        assert_eq!((s.gpr[gpr::ECX], s.gpr[gpr::EDI]), (2, 0x200));
        assert_eq!(s.eip, 0x1000, "EIP stays on the faulting instruction");
    }

    #[test]
    fn other_instructions_are_refused_untouched() {
        let (mut s, mut ram) = setup();
        // neg dword [0x30]
        assert_eq!(
            run(&[0xf7, 0x1d, 0x30, 0, 0, 0], &mut s, &mut ram),
            Ok(Mediated::Unsupported)
        );
        assert_eq!(s.eip, 0x1000);
    }
}
