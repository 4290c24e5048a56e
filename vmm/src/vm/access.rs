//! Guest data accesses the host mapping cannot serve: linear page 0 (never mapped, so
//! that no host null-pointer bug can touch guest memory through it) and physical
//! addresses without RAM. The faulting instruction is decoded and its data move is done
//! by the monitor. Only the data-move forms a kernel uses on such memory (the BIOS data
//! area, probing for memory) are emulated; anything else stops the VM with a diagnostic.

use iced_x86::{Instruction, Mnemonic, OpKind};

use crate::vcpu::emulate::operands::{effective_address, read_gpr, read_mem, write_gpr, write_mem};
use crate::vcpu::{Fault, GuestBus, VcpuState};

/// Performs `instr` if it is a plain data move (MOV, MOVZX, MOVSX with a memory
/// operand). `Ok(false)`: not one of those; nothing changed.
pub(super) fn data_move(
    s: &mut VcpuState,
    bus: &mut impl GuestBus,
    instr: &Instruction,
) -> Result<bool, Fault> {
    let size = instr.memory_size().size() as u32;
    if !matches!(size, 1 | 2 | 4) {
        return Ok(false);
    }
    let (seg, off) = effective_address(s, instr);
    match (instr.mnemonic(), instr.op0_kind(), instr.op1_kind()) {
        (Mnemonic::Mov, OpKind::Memory, OpKind::Register) => {
            let v = read_gpr(s, instr.op1_register());
            write_mem(s, bus, seg, off, size, v)?;
        }
        (
            Mnemonic::Mov,
            OpKind::Memory,
            OpKind::Immediate8 | OpKind::Immediate16 | OpKind::Immediate32,
        ) => {
            write_mem(s, bus, seg, off, size, instr.immediate(1) as u32)?;
        }
        (Mnemonic::Mov, OpKind::Register, OpKind::Memory) => {
            let v = read_mem(s, bus, seg, off, size)?;
            write_gpr(s, instr.op0_register(), v);
        }
        (Mnemonic::Movzx, OpKind::Register, OpKind::Memory) => {
            let v = read_mem(s, bus, seg, off, size)?;
            write_gpr(s, instr.op0_register(), v);
        }
        (Mnemonic::Movsx, OpKind::Register, OpKind::Memory) => {
            let v = read_mem(s, bus, seg, off, size)?;
            let v = if size == 1 {
                v as u8 as i8 as i32 as u32
            } else {
                v as u16 as i16 as i32 as u32
            };
            write_gpr(s, instr.op0_register(), v);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::state::gpr;
    use iced_x86::{Decoder, DecoderOptions};

    struct Ram(Vec<u8>);

    impl GuestBus for Ram {
        fn read_linear(
            &mut self,
            a: crate::addr::GuestLinear,
            buf: &mut [u8],
            _: bool,
        ) -> Result<(), Fault> {
            let a = a.raw() as usize;
            buf.copy_from_slice(&self.0[a..a + buf.len()]);
            Ok(())
        }
        fn write_linear(
            &mut self,
            a: crate::addr::GuestLinear,
            d: &[u8],
            _: bool,
        ) -> Result<(), Fault> {
            let a = a.raw() as usize;
            self.0[a..a + d.len()].copy_from_slice(d);
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

    fn run(bytes: &[u8], s: &mut VcpuState, ram: &mut Ram) -> Result<bool, Fault> {
        let instr = Decoder::with_ip(32, bytes, 0, DecoderOptions::NONE).decode();
        data_move(s, ram, &instr)
    }

    #[test]
    fn moves_to_and_from_page_zero() {
        let mut s = VcpuState::multiboot_entry(0, 0, 0);
        let mut ram = Ram(vec![0; 0x1000]);
        ram.0[0x40e..0x410].copy_from_slice(&0x9fc0u16.to_le_bytes());
        // movzx eax, word [0x40e]: the EBDA segment a kernel reads from the BIOS data area.
        assert_eq!(
            run(&[0x0f, 0xb7, 0x05, 0x0e, 0x04, 0, 0], &mut s, &mut ram),
            Ok(true)
        );
        assert_eq!(s.gpr[gpr::EAX], 0x9fc0);
        // mov dword [0x10], 0x12345678
        assert_eq!(
            run(
                &[0xc7, 0x05, 0x10, 0, 0, 0, 0x78, 0x56, 0x34, 0x12],
                &mut s,
                &mut ram
            ),
            Ok(true)
        );
        assert_eq!(&ram.0[0x10..0x14], &[0x78, 0x56, 0x34, 0x12]);
        // movsx ecx, byte [0x13]
        assert_eq!(
            run(&[0x0f, 0xbe, 0x0d, 0x13, 0, 0, 0], &mut s, &mut ram),
            Ok(true)
        );
        assert_eq!(s.gpr[gpr::ECX], 0x12);
        // add [0x10], eax is not a data move: refused, nothing changed
        assert_eq!(
            run(&[0x01, 0x05, 0x10, 0, 0, 0], &mut s, &mut ram),
            Ok(false)
        );
        assert_eq!(&ram.0[0x10..0x14], &[0x78, 0x56, 0x34, 0x12]);
    }
}
