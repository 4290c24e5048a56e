//! Port I/O: IN/OUT with immediate or DX port, 8/16/32 bits, and INS/OUTS with REP,
//! DF, the address size of the string operand and the segment override of OUTS.

use super::operands::{linear, read_gpr, read_mem, string_addr16, write_gpr, write_mem};
use super::{Ctx, Outcome, Res, Stop, REP_BATCH};
use crate::addr::GuestLinear;
use crate::bits::low16;
use crate::vcpu::descriptor::system_type;
use crate::vcpu::state::{gpr, VcpuState};
use crate::vcpu::{Effects, Fault, GuestBus};
use crate::x86::{eflags, SegReg};
use iced_x86::{Mnemonic, OpKind, Register};

/// I/O permission (SDM Vol. 1 §18.5.2): allowed in real mode and when CPL ≤ IOPL;
/// otherwise every bit for `port .. port + size` in the 32-bit TSS's I/O permission
/// bitmap must be 0, and the bitmap bytes must lie inside the TSS limit. #GP(0) if not.
fn check_io(s: &VcpuState, bus: &mut impl GuestBus, port: u16, size: u32) -> Result<(), Fault> {
    if !s.protected() || (!s.v86() && s.cpl() <= s.iopl()) {
        return Ok(());
    }
    let tr = &s.tr;
    if !tr.present
        || !matches!(
            tr.typ,
            system_type::TSS32_AVAILABLE | system_type::TSS32_BUSY
        )
        || tr.limit < 103
    {
        return Err(Fault::gp0());
    }
    let mut b = [0u8; 2];
    bus.read_linear(GuestLinear(tr.base.wrapping_add(0x66)), &mut b, false)?;
    let map = u32::from(u16::from_le_bytes(b));
    let byte = map + u32::from(port) / 8;
    if byte + 1 > tr.limit {
        return Err(Fault::gp0());
    }
    bus.read_linear(GuestLinear(tr.base.wrapping_add(byte)), &mut b, false)?;
    let bits = u32::from(u16::from_le_bytes(b)) >> (port % 8);
    if bits & ((1 << size) - 1) != 0 {
        return Err(Fault::gp0());
    }
    Ok(())
}

fn access_size(m: Mnemonic, reg: Register) -> u32 {
    match m {
        Mnemonic::Insb | Mnemonic::Outsb => 1,
        Mnemonic::Insw | Mnemonic::Outsw => 2,
        Mnemonic::Insd | Mnemonic::Outsd => 4,
        _ => match reg.size() {
            1 => 1,
            2 => 2,
            _ => 4,
        },
    }
}

/// The width argument of [`GuestBus::port_in`] / [`GuestBus::port_out`] for an access of
/// `size` (1, 2 or 4) bytes.
fn port_width(size: u32) -> u8 {
    u8::try_from(size).unwrap_or(4)
}

/// IN, OUT, INS, OUTS in all their forms.
pub(crate) fn emulate(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let m = i.mnemonic();
    match m {
        Mnemonic::In | Mnemonic::Out => {
            let (data_op, port_op) = if m == Mnemonic::In { (0, 1) } else { (1, 0) };
            let data = i.op_register(data_op);
            let size = access_size(m, data);
            let port = if i.op_kind(port_op) == OpKind::Immediate8 {
                u16::from(i.immediate8())
            } else {
                low16(read_gpr(s, Register::DX))
            };
            check_io(s, bus, port, size)?;
            if m == Mnemonic::In {
                let v = bus.port_in(port, port_width(size));
                write_gpr(s, data, v);
            } else {
                bus.port_out(port, port_width(size), read_gpr(s, data));
            }
            Ok(Outcome::Next(Effects::NONE))
        }
        _ => string(s, bus, cx),
    }
}

fn string(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let m = i.mnemonic();
    let input = matches!(m, Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd);
    let size = access_size(m, Register::None);
    let a16 = string_addr16(i);
    let (idx, src_seg) = if input {
        (Register::EDI, SegReg::Es)
    } else {
        (
            Register::ESI,
            SegReg::from_iced(i.memory_segment()).unwrap_or(SegReg::Ds),
        )
    };
    let port = low16(read_gpr(s, Register::DX));
    let rep = i.has_rep_prefix() || i.has_repe_prefix() || i.has_repne_prefix();
    let mask = if a16 { 0xffff } else { u32::MAX };
    let step = if s.eflags & eflags::DF != 0 {
        size.wrapping_neg()
    } else {
        size
    };
    let mut count = if rep { s.gpr[gpr::ECX] & mask } else { 1 };
    if rep && count == 0 {
        return Ok(Outcome::Next(Effects::NONE));
    }
    check_io(s, bus, port, size)?;
    let mut done = 0;
    while count > 0 {
        let off = read_gpr(s, idx) & mask;
        let r = if input {
            // Check the destination first so a bad segment does not swallow the input.
            linear(s, SegReg::Es, off, size, true).and_then(|_| {
                let v = bus.port_in(port, port_width(size));
                write_mem(s, bus, SegReg::Es, off, size, v)
            })
        } else {
            read_mem(s, bus, src_seg, off, size).map(|v| bus.port_out(port, port_width(size), v))
        };
        if let Err(f) = r {
            // Iterations already done stay done; EIP stays on the instruction.
            return Err(if done > 0 {
                Stop::FaultCommit(f)
            } else {
                Stop::Fault(f)
            });
        }
        let next = (read_gpr(s, idx) & !mask) | (off.wrapping_add(step) & mask);
        write_gpr(s, idx, next);
        count -= 1;
        done += 1;
        if rep {
            s.gpr[gpr::ECX] = (s.gpr[gpr::ECX] & !mask) | count;
            if count > 0 && done == REP_BATCH {
                return Ok(Outcome::Jumped(Effects::NONE));
            }
        }
    }
    Ok(Outcome::Next(Effects::NONE))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::exec;
    use super::super::{Emulated, REP_BATCH};
    use crate::vcpu::state::gpr;
    use crate::vcpu::testbus::TestBus;

    #[test]
    fn long_rep_insb_stops_after_a_batch_and_resumes_in_place() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        let n = 2 * REP_BATCH + 7;
        bus.ins.insert(0x60, 0x5a);
        s.gpr[gpr::EDX] = 0x60;
        s.gpr[gpr::ECX] = n;
        s.gpr[gpr::EDI] = 0x1_0000;
        let eip = s.eip;
        let mut exits = 0;
        while s.eip == eip {
            assert!(matches!(
                exec(&mut s, &mut bus, &[0xf3, 0x6c]),
                Ok(Emulated::Done(_))
            ));
            exits += 1;
            let done = (n - s.gpr[gpr::ECX]).min(exits * REP_BATCH);
            assert_eq!(s.gpr[gpr::EDI], 0x1_0000 + done);
        }
        assert_eq!(exits, 3);
        assert_eq!(s.eip, eip + 2);
        assert_eq!(s.gpr[gpr::ECX], 0);
        let end = usize::try_from(0x1_0000 + n).unwrap();
        assert!(bus.ram[0x1_0000..end].iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn rep_outsw_of_exactly_one_batch_finishes_in_one_exit() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        s.gpr[gpr::EDX] = 0x3f8;
        s.gpr[gpr::ECX] = REP_BATCH;
        s.gpr[gpr::ESI] = 0x1_0000;
        let eip = s.eip;
        assert!(matches!(
            exec(&mut s, &mut bus, &[0x66, 0xf3, 0x6f]),
            Ok(Emulated::Done(_))
        ));
        assert_eq!(s.eip, eip + 3);
        assert_eq!(s.gpr[gpr::ESI], 0x1_0000 + 2 * REP_BATCH);
        assert_eq!(bus.outs.len(), usize::try_from(REP_BATCH).unwrap());
    }
}
