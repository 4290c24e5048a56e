//! Sensitive instructions translated inline (ARCHITECTURE §5b): CLI and STI at CPL 0.
//!
//! ```text
//! CLI:    mov  byte [seg:SLOT_VIF], 0
//! STI:    mov  byte [seg:SLOT_VIF], 1           ; the commit
//!         mov  [seg:SLOT_ECX], ecx
//!         movzx ecx, byte [seg:SLOT_PENDING]
//!         jecxz  quiet
//!         mov  ecx, [seg:SLOT_ECX]
//!         <exit InterruptWindow>                ; guest after the STI, in its shadow
//! quiet:  mov  ecx, [seg:SLOT_ECX]
//! ```
//!
//! No instruction of either writes the guest's flags or touches guest memory. Precise
//! state: before the store the guest is at the CLI/STI; after it, at the next
//! instruction, with ECX in its slot while it is spilled.

use iced_x86::{Code, Instruction, MemoryOperand, Register};

use super::emit::{build, Emitter, Meta};
use super::side::{ExitKind, GuestEip, Origin};
use super::{stub, Refusal, SLOT_ECX, SLOT_PENDING, SLOT_VIF};

/// Emits the inline form of `guest`, a CLI or STI.
pub(crate) fn interrupt_flag(em: &mut Emitter, guest: &Instruction) -> Result<(), Refusal> {
    let eip = u32::try_from(guest.ip()).unwrap_or(0);
    let next = eip.wrapping_add(u32::try_from(guest.len()).unwrap_or(1));
    let sti = guest.code() == Code::Sti;
    let commit = Meta {
        guest: GuestEip::At(eip),
        restore_scratch: false,
        can_fault: false,
        origin: Origin::Inline {
            guest_len: u8::try_from(guest.len()).unwrap_or(1),
        },
    };
    let store = build!(with2, Code::Mov_rm8_imm8, em.slot(SLOT_VIF), u32::from(sti))?;
    em.emit(&store, commit)?;
    if !sti {
        return Ok(());
    }
    let after = |restore| Meta::expansion(GuestEip::At(next), restore, false);
    let spill = build!(with2, Code::Mov_rm32_r32, em.slot(SLOT_ECX), Register::ECX)?;
    em.emit(&spill, after(false))?;
    let pending: MemoryOperand = em.slot(SLOT_PENDING);
    let load = build!(with2, Code::Movzx_r32_rm8, Register::ECX, pending)?;
    em.emit(&load, after(true))?;
    let quiet = em.branch_forward(Code::Jecxz_rel8_32, after(true))?;
    let reload = build!(with2, Code::Mov_r32_rm32, Register::ECX, em.slot(SLOT_ECX))?;
    em.emit(&reload, after(true))?;
    stub::exit(em, ExitKind::InterruptWindow, GuestEip::At(next))?;
    em.bind(quiet)?;
    em.emit(&reload, after(true))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{disasm, translate_with};
    use crate::translate::{validate, Rules, TranslateConfig};

    fn inline_cfg() -> TranslateConfig {
        TranslateConfig {
            inline_if: true,
            ..TranslateConfig::default()
        }
    }

    #[test]
    fn cli_and_sti_stay_in_the_block() {
        // cli; inc eax; sti; inc eax; ret
        let cfg = inline_cfg();
        let block = translate_with(32, &[0xFA, 0x40, 0xFB, 0x40, 0xC3], &cfg);
        let rules = Rules::new(
            &cfg,
            u64::from(block.tc_address)..u64::from(block.tc_address) + 4096,
        );
        validate(&block.bytes, block.tc_address, &rules).unwrap();
        let code: Vec<Code> = disasm(&block).iter().map(Instruction::code).collect();
        assert!(!code.contains(&Code::Cli) && !code.contains(&Code::Sti));
        assert_eq!(code.iter().filter(|c| **c == Code::Inc_r32).count(), 2);
        let kinds: Vec<ExitKind> = block.side.exits.iter().map(|e| e.kind).collect();
        assert!(kinds.contains(&ExitKind::InterruptWindow));
        let window = block
            .side
            .exits
            .iter()
            .find(|e| e.kind == ExitKind::InterruptWindow)
            .unwrap();
        assert_eq!(window.guest, GuestEip::At(0x1003), "after the STI");
    }

    #[test]
    fn without_inline_if_they_exit() {
        let block = translate_with(32, &[0xFA, 0x40], &TranslateConfig::default());
        assert!(matches!(
            block.side.exits[0].kind,
            ExitKind::Sensitive(crate::Class::Cli)
        ));
    }
}
