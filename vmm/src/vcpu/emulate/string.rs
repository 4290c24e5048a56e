//! String stores: STOS and MOVS, with or without REP, 8/16/32 bits, DF, the address size
//! of the string operands (SI/DI/CX or ESI/EDI/ECX) and the source segment override
//! (SDM Vol. 2B). Kernels clear and copy page tables with them, so write mediation runs
//! them. Port string I/O (INS/OUTS) is in `io`.

use super::operands::{read_gpr, read_mem, string_registers, write_gpr, write_mem};
use super::{Ctx, Outcome, Res, Stop, Unsupported, REP_BATCH};
use crate::vcpu::{Effects, GuestBus, VcpuState};
use crate::x86::{eflags, SegReg};
use iced_x86::{Code, Register};

/// STOS/MOVS. Each element is a separate access and ECX, ESI and EDI advance element by
/// element, so a fault midway keeps the completed elements (as the processor does) and
/// the instruction restarts from there. A REP stops after [`REP_BATCH`] elements with
/// EIP still on the instruction (as an interrupted REP does), so one exit stays short;
/// the guest executes it again for the rest.
pub(crate) fn store(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let (size, movs): (u32, bool) = match i.code() {
        Code::Stosb_m8_AL => (1, false),
        Code::Stosw_m16_AX => (2, false),
        Code::Stosd_m32_EAX => (4, false),
        Code::Movsb_m8_m8 => (1, true),
        Code::Movsw_m16_m16 => (2, true),
        // Not the SSE2 MOVSD, which shares the mnemonic.
        Code::Movsd_m32_m32 => (4, true),
        _ => return Err(Stop::Unsupported(Unsupported::Instruction(i.mnemonic()))),
    };
    let (di, si, cx_reg) = string_registers(i);
    let rep = i.has_rep_prefix() || i.has_repe_prefix() || i.has_repne_prefix();
    let step = if s.eflags & eflags::DF != 0 {
        size.wrapping_neg()
    } else {
        size
    };
    let src_seg = SegReg::from_iced(i.memory_segment()).unwrap_or(SegReg::Ds);
    let mut done = 0;
    let mut count = if rep { read_gpr(s, cx_reg) } else { 1 };
    while count > 0 {
        let r = if movs {
            read_mem(s, bus, src_seg, read_gpr(s, si), size)
        } else {
            Ok(read_gpr(s, Register::EAX))
        }
        .and_then(|v| write_mem(s, bus, SegReg::Es, read_gpr(s, di), size, v));
        if let Err(f) = r {
            return Err(if done > 0 {
                Stop::FaultCommit(f)
            } else {
                Stop::Fault(f)
            });
        }
        done += 1;
        write_gpr(s, di, read_gpr(s, di).wrapping_add(step));
        if movs {
            write_gpr(s, si, read_gpr(s, si).wrapping_add(step));
        }
        count -= 1;
        if rep {
            write_gpr(s, cx_reg, count);
            if count > 0 && done == REP_BATCH {
                return Ok(Outcome::Jumped(Effects::NONE));
            }
        }
    }
    Ok(Outcome::Next(Effects::NONE))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::decode_at;
    use super::super::{mediate, Mediated, REP_BATCH};
    use crate::vcpu::state::gpr;
    use crate::vcpu::testbus::TestBus;
    use crate::vcpu::VcpuState;
    use crate::x86::eflags;

    /// Mediates the instruction at the state's EIP until it moves on; returns how many
    /// emulations (exits) that took, checking that each unfinished one resumes in place.
    fn run_to_end(s: &mut VcpuState, bus: &mut TestBus, bytes: &[u8]) -> u32 {
        let start = s.eip;
        let instr = decode_at(bytes, start);
        let mut exits = 0;
        loop {
            assert_eq!(mediate(s, bus, &instr), Ok(Mediated::Done));
            exits += 1;
            if s.eip != start {
                let len = u32::try_from(bytes.len()).unwrap();
                assert_eq!(s.eip, start + len);
                return exits;
            }
            assert_ne!(s.gpr[gpr::ECX] & 0xffff, 0, "a finished REP moves on");
        }
    }

    #[test]
    fn long_rep_stos_resumes_in_batches_at_the_same_eip() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        let n = 2 * REP_BATCH + 100;
        s.gpr[gpr::EAX] = 0xab;
        s.gpr[gpr::ECX] = n;
        s.gpr[gpr::EDI] = 0x1_0000;
        // rep stosb: the first emulation stops after a batch, state mid-instruction.
        let instr = decode_at(&[0xf3, 0xaa], s.eip);
        let eip = s.eip;
        assert_eq!(mediate(&mut s, &mut bus, &instr), Ok(Mediated::Done));
        assert_eq!(s.eip, eip);
        assert_eq!(s.gpr[gpr::ECX], n - REP_BATCH);
        assert_eq!(s.gpr[gpr::EDI], 0x1_0000 + REP_BATCH);
        assert_eq!(run_to_end(&mut s, &mut bus, &[0xf3, 0xaa]), 2);
        assert_eq!(s.gpr[gpr::ECX], 0);
        assert_eq!(s.gpr[gpr::EDI], 0x1_0000 + n);
        let end = usize::try_from(0x1_0000 + n).unwrap();
        assert!(bus.ram[0x1_0000..end].iter().all(|&b| b == 0xab));
        assert_eq!(bus.ram[end], 0);
    }

    #[test]
    fn long_rep_movsd_backwards_copies_across_batches() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        let n = REP_BATCH + 3;
        for i in 0..n {
            bus.write_u32(0x2_0000 + 4 * i, i ^ 0x5a5a_0000);
        }
        s.eflags |= eflags::DF;
        s.gpr[gpr::ECX] = n;
        s.gpr[gpr::ESI] = 0x2_0000 + 4 * (n - 1);
        s.gpr[gpr::EDI] = 0x8_0000 + 4 * (n - 1);
        assert_eq!(run_to_end(&mut s, &mut bus, &[0xf3, 0xa5]), 2);
        for i in 0..n {
            assert_eq!(bus.read_u32(0x8_0000 + 4 * i), i ^ 0x5a5a_0000);
        }
        assert_eq!(s.gpr[gpr::ESI], 0x2_0000u32.wrapping_sub(4));
        assert_eq!(s.gpr[gpr::EDI], 0x8_0000u32.wrapping_sub(4));
    }

    #[test]
    fn address_size_16_batches_count_in_cx_and_keep_the_high_halves() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        s.gpr[gpr::ECX] = 0xdead_0000 | 0x2000;
        s.gpr[gpr::EDI] = 0xbeef_1000;
        s.gpr[gpr::EAX] = 0x11;
        // a16 rep stosb: ES:DI, CX.
        let bytes = [0x67, 0xf3, 0xaa];
        let instr = decode_at(&bytes, s.eip);
        let eip = s.eip;
        assert_eq!(mediate(&mut s, &mut bus, &instr), Ok(Mediated::Done));
        assert_eq!(s.eip, eip);
        assert_eq!(s.gpr[gpr::ECX], 0xdead_0000 | (0x2000 - REP_BATCH));
        assert_eq!(s.gpr[gpr::EDI], 0xbeef_0000 | (0x1000 + REP_BATCH));
        assert_eq!(run_to_end(&mut s, &mut bus, &bytes), 1);
        assert_eq!(s.gpr[gpr::ECX], 0xdead_0000);
        assert_eq!(s.gpr[gpr::EDI], 0xbeef_3000);
    }

    #[test]
    fn a_fault_in_a_later_batch_keeps_the_elements_done() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        let n = 3 * REP_BATCH;
        // The destination runs into an unmapped page in the second batch.
        let hole = 0x3_0000 + REP_BATCH + 16;
        bus.unmapped.push((hole, hole + 0x1000));
        s.gpr[gpr::ECX] = n;
        s.gpr[gpr::EDI] = 0x3_0000;
        let instr = decode_at(&[0xf3, 0xaa], s.eip);
        assert_eq!(mediate(&mut s, &mut bus, &instr), Ok(Mediated::Done));
        let fault = mediate(&mut s, &mut bus, &instr).unwrap_err();
        assert_eq!(fault.cr2.map(|a| a.raw()), Some(hole));
        assert_eq!(s.gpr[gpr::EDI], hole);
        assert_eq!(s.gpr[gpr::ECX], n - (hole - 0x3_0000));
    }
}
