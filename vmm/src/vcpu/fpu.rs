//! What the guest's virtual CR0.EM, CR0.MP and CR0.TS make of an FPU, MMX or SSE
//! instruction (SDM Vol. 3A §2.5 and Table 2-2, and each instruction's exception list).
//!
//! The host FPU never sees these bits: the rewriter's FPU class is patched while the guest
//! has TS or EM set, and the trap asks [`device_fault`] what the instruction does.

use rewriter::FpuKind;

use super::Fault;
use crate::x86::{cr0, Exception};

/// The fault an instruction of `kind` raises under the guest's `cr0`, or `None` when it
/// executes (natively, with its trap lifted).
pub fn device_fault(cr0_value: u32, kind: FpuKind) -> Option<Fault> {
    let em = cr0_value & cr0::EM != 0;
    let ts = cr0_value & cr0::TS != 0;
    let mp = cr0_value & cr0::MP != 0;
    let vector = match kind {
        FpuKind::X87 | FpuKind::Fxsr => (em || ts).then_some(Exception::NM),
        FpuKind::Wait => (mp && ts).then_some(Exception::NM),
        // #UD is detected before #NM (SDM Vol. 3A §6.9, instruction decode faults).
        FpuKind::Simd if em => Some(Exception::UD),
        FpuKind::Simd | FpuKind::Extended => ts.then_some(Exception::NM),
    };
    vector.map(Fault::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(cr0_value: u32, kind: FpuKind) -> Option<u8> {
        device_fault(cr0_value, kind).map(|f| f.vector)
    }

    #[test]
    fn table_2_2_for_x87_and_wait() {
        // (EM, MP, TS) → (x87, WAIT), SDM Vol. 3A Table 2-2.
        let rows = [
            (0, 0, 0, None, None),
            (0, 0, 1, Some(7), None),
            (0, 1, 0, None, None),
            (0, 1, 1, Some(7), Some(7)),
            (1, 0, 0, Some(7), None),
            (1, 0, 1, Some(7), None),
            (1, 1, 0, Some(7), None),
            (1, 1, 1, Some(7), Some(7)),
        ];
        for (em, mp, ts, x87, wait) in rows {
            let value = (em * cr0::EM) | (mp * cr0::MP) | (ts * cr0::TS);
            assert_eq!(vector(value, FpuKind::X87), x87, "x87 with {value:#x}");
            assert_eq!(vector(value, FpuKind::Wait), wait, "WAIT with {value:#x}");
        }
    }

    #[test]
    fn simd_takes_ud_under_em_and_vex_ignores_em() {
        assert_eq!(vector(cr0::EM | cr0::TS, FpuKind::Simd), Some(6));
        assert_eq!(vector(cr0::TS, FpuKind::Simd), Some(7));
        assert_eq!(vector(cr0::EM, FpuKind::Extended), None);
        assert_eq!(vector(cr0::TS, FpuKind::Extended), Some(7));
        assert_eq!(vector(cr0::EM, FpuKind::Fxsr), Some(7));
        assert_eq!(vector(cr0::MP, FpuKind::Simd), None);
    }
}
