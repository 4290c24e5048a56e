//! String reads: LODS, CMPS and SCAS, with or without REP/REPE/REPNE, 8/16/32 bits, DF,
//! the address size of the string operands and the source segment override (SDM Vol.
//! 2A/2B). The monitor performs them when their source is memory the host does not map
//! for the guest (the monitor window of translate mode, where Linux's fixmap lives:
//! early boot parses firmware tables there with `lodsb` and `repe cmpsb`).

use super::alu::{add_sub, set_status};
use super::operands::{read_gpr, read_mem, string_registers, write_gpr};
use super::{Ctx, Outcome, Res, Stop, Unsupported, REP_BATCH};
use crate::vcpu::{Effects, GuestBus, VcpuState};
use crate::x86::{eflags, SegReg};
use iced_x86::{Code, Register};

/// Which string read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lods,
    Cmps,
    Scas,
}

/// LODS/CMPS/SCAS. Each element is a separate access; ECX, ESI and EDI advance element
/// by element, so a fault midway keeps the completed elements and the instruction
/// restarts from there. REPE/REPNE stop on the comparison as the processor does. A REP
/// stops after [`REP_BATCH`] elements with EIP still on the instruction, as the stores
/// do, so one exit stays short; the guest executes it again for the rest.
pub(crate) fn load_compare(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    let i = cx.instr;
    let (size, kind): (u32, Kind) = match i.code() {
        Code::Lodsb_AL_m8 => (1, Kind::Lods),
        Code::Lodsw_AX_m16 => (2, Kind::Lods),
        Code::Lodsd_EAX_m32 => (4, Kind::Lods),
        Code::Cmpsb_m8_m8 => (1, Kind::Cmps),
        Code::Cmpsw_m16_m16 => (2, Kind::Cmps),
        Code::Cmpsd_m32_m32 => (4, Kind::Cmps),
        Code::Scasb_AL_m8 => (1, Kind::Scas),
        Code::Scasw_AX_m16 => (2, Kind::Scas),
        Code::Scasd_EAX_m32 => (4, Kind::Scas),
        _ => return Err(Stop::Unsupported(Unsupported::Instruction(i.mnemonic()))),
    };
    let (di, si, cx_reg) = string_registers(i);
    let acc = match size {
        1 => Register::AL,
        2 => Register::AX,
        _ => Register::EAX,
    };
    let repe = i.has_rep_prefix() || i.has_repe_prefix();
    let repne = i.has_repne_prefix();
    let rep = repe || repne;
    let step = if s.eflags & eflags::DF != 0 {
        size.wrapping_neg()
    } else {
        size
    };
    let src_seg = SegReg::from_iced(i.memory_segment()).unwrap_or(SegReg::Ds);
    let bits = size * 8;
    let mut done = 0;
    let mut count = if rep { read_gpr(s, cx_reg) } else { 1 };
    while count > 0 {
        let r = match kind {
            Kind::Lods => read_mem(s, bus, src_seg, read_gpr(s, si), size).map(|v| (v, None)),
            Kind::Cmps => read_mem(s, bus, src_seg, read_gpr(s, si), size).and_then(|a| {
                read_mem(s, bus, SegReg::Es, read_gpr(s, di), size).map(|b| (a, Some(b)))
            }),
            Kind::Scas => read_mem(s, bus, SegReg::Es, read_gpr(s, di), size)
                .map(|b| (read_gpr(s, acc), Some(b))),
        };
        let (a, b) = match r {
            Ok(v) => v,
            Err(f) => {
                return Err(if done > 0 {
                    Stop::FaultCommit(f)
                } else {
                    Stop::Fault(f)
                })
            }
        };
        done += 1;
        let mut equal = true;
        match b {
            None => write_gpr(s, acc, a),
            Some(b) => {
                let (_, flags) = add_sub(a, b, bits, true);
                set_status(s, flags, eflags::STATUS);
                equal = flags & eflags::ZF != 0;
            }
        }
        if kind != Kind::Scas {
            write_gpr(s, si, read_gpr(s, si).wrapping_add(step));
        }
        if kind != Kind::Lods {
            write_gpr(s, di, read_gpr(s, di).wrapping_add(step));
        }
        count -= 1;
        if rep {
            write_gpr(s, cx_reg, count);
            if kind != Kind::Lods && ((repe && !equal) || (repne && equal)) {
                break;
            }
            if count > 0 && done == REP_BATCH {
                return Ok(Outcome::Jumped(Effects::NONE));
            }
        }
    }
    Ok(Outcome::Next(Effects::NONE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::emulate::mediated::data_access;
    use crate::vcpu::state::gpr;
    use crate::vcpu::testbus::TestBus;
    use iced_x86::{Decoder, DecoderOptions};

    fn put(bus: &mut TestBus, at: u32, bytes: &[u8]) {
        for (n, chunk) in bytes.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            bus.write_u32(at + 4 * u32::try_from(n).unwrap(), u32::from_le_bytes(w));
        }
    }

    fn decode(bytes: &[u8]) -> iced_x86::Instruction {
        Decoder::with_ip(32, bytes, 0x1000, DecoderOptions::NONE).decode()
    }

    #[test]
    fn long_rep_reads_stop_after_a_batch_and_resume() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        let n = 2 * REP_BATCH + 5;
        s.eip = 0x1000;
        // REP LODSB, REPE CMPSB over equal bytes (the same buffer), REPNE SCASB for a
        // byte that is not there: each runs a batch, leaves EIP on the instruction.
        for bytes in [&[0xf3, 0xac][..], &[0xf3, 0xa6], &[0xf2, 0xae]] {
            s.gpr[gpr::ESI] = 0x2_0000;
            s.gpr[gpr::EDI] = 0x2_0000;
            s.gpr[gpr::ECX] = n;
            s.gpr[gpr::EAX] = 0xff;
            let (esi, edi) = (s.gpr[gpr::ESI], s.gpr[gpr::EDI]);
            let i = decode(bytes);
            assert!(data_access(&mut s, &mut bus, &i).is_ok());
            assert_eq!(s.eip, 0x1000, "{i}: EIP stays on the instruction");
            assert_eq!(s.gpr[gpr::ECX], n - REP_BATCH, "{i}");
            let moved = |after: u32, before: u32| after.wrapping_sub(before);
            assert!(
                moved(s.gpr[gpr::ESI], esi) == REP_BATCH
                    || moved(s.gpr[gpr::EDI], edi) == REP_BATCH,
                "{i}: the batch's elements are consumed"
            );
        }
    }

    #[test]
    fn repe_cmpsb_stops_at_the_first_difference() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        put(&mut bus, 0x2000, b"RSD PTR ");
        put(&mut bus, 0x3000, b"RSD PTX ");
        s.gpr[gpr::ESI] = 0x2000;
        s.gpr[gpr::EDI] = 0x3000;
        s.gpr[gpr::ECX] = 8;
        s.eip = 0x1000;
        let i = decode(&[0xf3, 0xa6]);
        assert!(data_access(&mut s, &mut bus, &i).is_ok());
        assert_eq!(s.gpr[gpr::ECX], 1, "stopped after the 7th byte");
        assert_eq!(s.gpr[gpr::ESI], 0x2007);
        assert_eq!(s.eflags & eflags::ZF, 0);
        assert_eq!(s.eip, 0x1002);
    }

    #[test]
    fn lodsb_and_repne_scasb() {
        let mut bus = TestBus::new();
        let mut s = bus.protected_state();
        put(&mut bus, 0x2000, b"abc\0");
        s.gpr[gpr::ESI] = 0x2000;
        s.eip = 0x1000;
        assert!(data_access(&mut s, &mut bus, &decode(&[0xac])).is_ok());
        assert_eq!(s.gpr[gpr::EAX] & 0xff, u32::from(b'a'));
        assert_eq!(s.gpr[gpr::ESI], 0x2001);
        // strlen: repne scasb for AL = 0.
        s.gpr[gpr::EAX] = 0;
        s.gpr[gpr::EDI] = 0x2000;
        s.gpr[gpr::ECX] = u32::MAX;
        s.eip = 0x1000;
        assert!(data_access(&mut s, &mut bus, &decode(&[0xf2, 0xae])).is_ok());
        assert_eq!(s.gpr[gpr::EDI], 0x2004);
        assert_eq!(!s.gpr[gpr::ECX] - 1, 3, "the string's length");
    }
}
