//! Sensitive instructions translated inline (ARCHITECTURE §5b): CLI, STI, PUSHFD and
//! POPFD at CPL 0.
//!
//! ```text
//! CLI:    mov  byte [seg:SLOT_VIF], 0
//! STI:    mov  byte [seg:SLOT_VIF], 1           ; the commit
//!         mov  [seg:SLOT_ECX], ecx
//!         mov  [seg:SLOT_EDX], edx
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
//!
//! ```text
//! PUSHFD: mov  [seg:SLOT_ECX], ecx
//!         mov  [seg:SLOT_EDX], edx
//!         pushfd                                ; where the guest's push goes: same fault
//!         pop  edx                              ; the host's image (IF set, IOPL 0)
//!         movzx ecx, byte [seg:SLOT_VIF]
//!         lea  ecx, [ecx*8]
//!         lea  ecx, [ecx*8]
//!         lea  ecx, [ecx*8 - 0x200]             ; IF as the guest has it, less the host's
//!         lea  edx, [edx + ecx]
//!         mov  ecx, [seg:SLOT_VBITS]
//!         lea  edx, [edx + ecx]                 ; IOPL, NT, AC, TF as the guest has them
//!         push edx                              ; the commit
//!         mov  ecx, [seg:SLOT_ECX]
//!         mov  edx, [seg:SLOT_EDX]
//! ```
//!
//! Only MOV, MOVZX, LEA, PUSH and POP: the guest's flags stay as they were. The only
//! guest memory written is the dword the guest's PUSHFD writes, first by the host's
//! PUSHFD (which faults exactly where the guest's would) and then by the commit. Between
//! the host's PUSHFD and its POP the stack holds a dword the guest has not pushed: a stop
//! there takes ESP back up ([`GuestEip::AtPushed`]).

//!
//! ```text
//! POPFD:  mov  [seg:SLOT_ECX], ecx
//!         mov  [seg:SLOT_EDX], edx
//!         mov  edx, [esp]                       ; the image: the guest's read, same fault
//!         mov  ecx, edx
//!         xor  ecx, [seg:SLOT_ID]
//!         and  ecx, TF | ID                      ; TF set or ID changed: the monitor
//!         jecxz inline
//!         <reload, exit Sensitive(Popf)>
//! inline: mov  [seg:SLOT_EAX], eax              ; SAHF needs AH
//!         <IOPL, NT, AC of the image into SLOT_VBITS>
//!         <AL = IF, AH = the image's low byte>
//!         <STD or CLD from bit 10; OF from 0x7F + bit 11; SAHF>
//!         lea  esp, [esp + 4]
//!         mov  [seg:SLOT_VIF], al               ; the commit
//!         <PENDING and IF: reload, exit InterruptDue>
//!         <reload EAX, ECX, EDX>
//! ```
//!
//! Up to the commit a stop leaves the guest at the POPFD (scratch registers restored;
//! after the `lea`, ESP taken back: [`GuestEip::AtPopped`]); the flags, SLOT_VBITS and
//! the stack pointer it already changed are what the POPFD sets again. The host's flags
//! get only what the guest owns natively (status flags and DF); IF, IOPL, NT and AC stay
//! virtual.
//!
//! ```text
//! MOV Sreg, src / POP Sreg (DS, ES, FS, GS; not the scratch segment):
//!         mov  [seg:SLOT_ECX], ecx
//!         mov  [seg:SLOT_EDX], edx
//!         movzx ecx, src16                      ; POP: mov ecx, [esp]; movzx ecx, cx
//!         jecxz null
//!         mov  edx, [seg:RELOAD]                ; minus the selector a reload loads
//!         lea  ecx, [ecx + edx]
//!         jecxz reload
//!         <reload ECX, EDX, exit Sensitive>     ; any other selector: the monitor
//! null:   mov  [seg:SELECTOR], ecx              ; 0
//!         mov  byte [seg:LOADED], 1
//!         mov  sreg, [seg:SLOT_NULL_SELECTOR]   ; the host's null selector
//!         jmp  done
//! reload: movzx ecx, word [seg:RELOAD + 6]      ; the guest's selector
//!         mov  [seg:SELECTOR], ecx
//!         mov  byte [seg:LOADED], 1
//!         <SLOT_RELOAD_HITS + 1, through ECX>
//!         mov  sreg, [seg:RELOAD + 4]           ; the mirror's host selector
//! done:   lea  esp, [esp + 4]                   ; POP only
//!         <reload ECX, EDX>
//! ```
//!
//! ```text
//! DIV, IDIV src with a divisor check (a site that kept raising #DE):
//!         mov  [seg:SLOT_ECX], ecx
//!         mov  [seg:SLOT_EDX], edx
//!         mov  ecx, src                          ; MOVZX for 8- and 16-bit: same fault
//!         jecxz zero
//!         mov  ecx, [seg:SLOT_ECX]
//!         div  src                               ; the guest's instruction
//!         jmp  done
//! zero:   mov  ecx, [seg:SLOT_ECX]
//!         <exit DivideError>                     ; the monitor raises #DE there
//! done:
//! ```
//!
//! The check reads the divisor as the instruction does (a #PF there is the one the
//! instruction raises first) and changes no flag. An IDIV whose quotient overflows still
//! faults natively.
//!
//! ```text
//! BOUND r32, m32&32 with a check of its bounds (a site that kept raising #BR):
//!         mov  [seg:SLOT_ECX], ecx
//!         mov  [seg:SLOT_EDX], edx
//!         lea  ecx, m                            ; the bounds' offset
//!         mov  [seg:T0], ecx
//!         mov  edx, s:[ecx]                      ; lower (s: the operand's segment)
//!         not  edx
//!         lea  ecx, [r + edx + 1]                ; d = r - lower (r from its slot if
//!         mov  [seg:T1], ecx                     ;     it is ECX or EDX)
//!         mov  ecx, [seg:T0]
//!         mov  ecx, s:[ecx + 4]                  ; upper
//!         lea  ecx, [ecx + edx + 1]              ; w = upper - lower
//!         mov  [seg:T0], ecx
//!         movzx ecx, word [seg:T0 + 2]           ; w and d compared unsigned, high
//!         movzx edx, word [seg:T1 + 2]           ; halves first: x = w.hi - d.hi
//!         not  edx
//!         lea  ecx, [ecx + edx + 1]
//!         jecxz low
//!         mov  [seg:T2], ecx                     ; x's sign: its top byte
//!         movzx ecx, byte [seg:T2 + 3]
//!         jecxz in
//!         jmp  out
//! low:    <the same for the low halves>
//!         jecxz in
//! out:    <reload ECX, EDX>
//!         <exit BoundRange>                      ; the monitor raises #BR there
//! in:     <reload ECX, EDX>
//!         bound r, m                             ; the guest's instruction
//! ```
//!
//! With lower <= upper, r lies in the bounds exactly when d <= w as unsigned numbers, so
//! an exit is a #BR the BOUND raises. When lower > upper (no index is inside) the check
//! may let an index through, and the BOUND faults natively, as before the check. The
//! bounds are read as the instruction reads them (a fault there is its own) and no flag
//! changes.
//!
//! A null selector needs no check (DS, ES, FS and GS take it at any privilege); the
//! reload record names the one other selector the monitor has checked for the current
//! privilege level, whose descriptor it watches for writes and whose mirror is installed
//! in the register's host slot. Up to the segment load (POP: up to the `lea`) a stop
//! leaves the guest at the instruction, which loads the same selector again; the monitor
//! takes the new state of every register whose LOADED byte is set. Only MOV, MOVZX, LEA
//! and JECXZ: the guest's flags stay as they were.

use iced_x86::{
    Code, Decoder, DecoderOptions, Encoder, Instruction, MemoryOperand, OpKind, Register,
};

use super::emit::{build, Emitter, Meta};
use super::side::{ExitKind, GuestEip, Origin};
use super::{
    stub, Refusal, StackSize, TranslateConfig, SLOT_CHECK, SLOT_CONTROL, SLOT_EAX, SLOT_ECX,
    SLOT_EDX, SLOT_ID, SLOT_LOADED, SLOT_NULL_SELECTOR, SLOT_PENDING, SLOT_RELOADS,
    SLOT_RELOAD_HITS, SLOT_SELECTORS, SLOT_VBITS, SLOT_VIF,
};

/// Emits the inline form of `guest`, a CLI or STI.
pub(crate) fn interrupt_flag(em: &mut Emitter, guest: &Instruction) -> Result<(), Refusal> {
    let eip = u32::try_from(guest.ip()).unwrap_or(0);
    let next = eip.wrapping_add(u32::try_from(guest.len()).unwrap_or(1));
    let sti = guest.code() == Code::Sti;
    let commit = Meta {
        guest: GuestEip::At(eip),
        restore_scratch: false,
        restore_eax: false,
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
    // Both scratch registers into their slots: a stop in what follows takes both back.
    spill_scratch(em, after(false))?;
    let pending: MemoryOperand = em.slot(SLOT_PENDING);
    let load = build!(with2, Code::Movzx_r32_rm8, Register::ECX, pending)?;
    em.emit(&load, after(true))?;
    let quiet = em.branch_forward(Code::Jecxz_rel8_32, after(true))?;
    let reload = load_slot(em, Register::ECX, SLOT_ECX)?;
    em.emit(&reload, after(true))?;
    stub::exit(em, ExitKind::InterruptWindow, GuestEip::At(next))?;
    em.bind(quiet)?;
    em.emit(&reload, after(true))?;
    Ok(())
}

/// Emits the inline form of `guest`, a 32-bit PUSHF (PUSHFD).
pub(crate) fn pushfd(em: &mut Emitter, guest: &Instruction) -> Result<(), Refusal> {
    let eip = u32::try_from(guest.ip()).unwrap_or(0);
    let len = u8::try_from(guest.len()).unwrap_or(1);
    let next = eip.wrapping_add(u32::from(len));
    let before = |restore, can_fault| Meta::expansion(GuestEip::At(eip), restore, can_fault);
    let spill_ecx = build!(with2, Code::Mov_rm32_r32, em.slot(SLOT_ECX), Register::ECX)?;
    em.emit(&spill_ecx, before(false, false))?;
    let spill_edx = build!(with2, Code::Mov_rm32_r32, em.slot(SLOT_EDX), Register::EDX)?;
    em.emit(&spill_edx, before(false, false))?;
    em.emit(&Instruction::with(Code::Pushfd), before(true, true))?;
    // Stopped here (a timer signal), the host's image is on the stack and the guest has
    // pushed nothing yet.
    em.emit(
        &build!(with1, Code::Pop_r32, Register::EDX)?,
        Meta::expansion(GuestEip::AtPushed(eip), true, false),
    )?;
    let vif = build!(with2, Code::Movzx_r32_rm8, Register::ECX, em.slot(SLOT_VIF))?;
    em.emit(&vif, before(true, false))?;
    for displ in [0i64, 0, -0x200] {
        let scaled = MemoryOperand::with_base_index_scale_displ_size(
            Register::None,
            Register::ECX,
            8,
            displ,
            4,
        );
        let lea = build!(with2, Code::Lea_r32_m, Register::ECX, scaled)?;
        em.emit(&lea, before(true, false))?;
    }
    let sum = MemoryOperand::with_base_index(Register::EDX, Register::ECX);
    let add = build!(with2, Code::Lea_r32_m, Register::EDX, sum)?;
    em.emit(&add, before(true, false))?;
    let vbits = build!(
        with2,
        Code::Mov_r32_rm32,
        Register::ECX,
        em.slot(SLOT_VBITS)
    )?;
    em.emit(&vbits, before(true, false))?;
    em.emit(&add, before(true, false))?;
    let commit = Meta {
        guest: GuestEip::At(eip),
        restore_scratch: true,
        restore_eax: false,
        can_fault: true,
        origin: Origin::Inline { guest_len: len },
    };
    em.emit(&build!(with1, Code::Push_r32, Register::EDX)?, commit)?;
    let after = Meta::expansion(GuestEip::At(next), true, false);
    let reload_ecx = build!(with2, Code::Mov_r32_rm32, Register::ECX, em.slot(SLOT_ECX))?;
    em.emit(&reload_ecx, after)?;
    let reload_edx = build!(with2, Code::Mov_r32_rm32, Register::EDX, em.slot(SLOT_EDX))?;
    em.emit(&reload_edx, after)?;
    Ok(())
}

/// Whether `instr` is a POPFD the translation performs inline: at CPL 0 with inline IF
/// ([`TranslateConfig::inline_if`]), on a 32-bit stack, and not in a one-instruction
/// block (those run while the guest single-steps or is watched: the monitor keeps the
/// guest's TF and checks its accesses there).
pub(crate) fn popfd_inline(cfg: &TranslateConfig, instr: &Instruction) -> bool {
    cfg.inline_if
        && instr.code() == Code::Popfd
        && cfg.stack_size == StackSize::Bits32
        && cfg.max_instructions > 1
}

/// EFLAGS bits a POPFD image gives the virtual flags rather than the host's: IOPL, NT, AC.
const VIRTUAL_BITS: u32 = 0x3000 | 0x4000 | 0x4_0000;
/// EFLAGS.TF.
const TF: u32 = 1 << 8;
/// EFLAGS.ID.
const ID: u32 = 1 << 21;

/// Emits the inline form of `guest`, a POPFD on a 32-bit stack.
pub(crate) fn popfd(em: &mut Emitter, guest: &Instruction) -> Result<(), Refusal> {
    let eip = u32::try_from(guest.ip()).unwrap_or(0);
    let len = u8::try_from(guest.len()).unwrap_or(1);
    let next = eip.wrapping_add(u32::from(len));
    let at = |guest, restore_eax, can_fault| Meta {
        guest,
        restore_scratch: true,
        restore_eax,
        can_fault,
        origin: Origin::Expansion,
    };
    let before = |restore_eax| at(GuestEip::At(eip), restore_eax, false);
    em.emit(
        &store_slot(em, SLOT_ECX, Register::ECX)?,
        Meta::expansion(GuestEip::At(eip), false, false),
    )?;
    em.emit(
        &store_slot(em, SLOT_EDX, Register::EDX)?,
        Meta::expansion(GuestEip::At(eip), false, false),
    )?;
    // The image, read where the guest's POPFD reads it (same fault).
    let top = MemoryOperand::with_base(Register::ESP);
    em.emit(
        &build!(with2, Code::Mov_r32_rm32, Register::EDX, top)?,
        at(GuestEip::At(eip), false, true),
    )?;
    // TF set (a single step starts after the next instruction) or ID changed (only POPF
    // and IRET change it on the host): the monitor does those.
    em.emit(
        &build!(with2, Code::Mov_r32_rm32, Register::ECX, Register::EDX)?,
        before(false),
    )?;
    let id = build!(with2, Code::Xor_r32_rm32, Register::ECX, em.slot(SLOT_ID))?;
    em.emit(&id, before(false))?;
    em.emit(
        &build!(with2, Code::And_rm32_imm32, Register::ECX, TF | ID)?,
        before(false),
    )?;
    let inline = em.branch_forward(Code::Jecxz_rel8_32, before(false))?;
    em.emit(&load_slot(em, Register::ECX, SLOT_ECX)?, before(false))?;
    em.emit(&load_slot(em, Register::EDX, SLOT_EDX)?, before(false))?;
    stub::exit_at(
        em,
        ExitKind::Sensitive(crate::Class::Popf),
        GuestEip::At(eip),
        guest,
    )?;
    em.bind(inline)?;
    em.emit(&store_slot(em, SLOT_EAX, Register::EAX)?, before(false))?;
    // The virtual bits (IOPL, NT, AC) into their slot.
    em.emit(
        &build!(with2, Code::Mov_r32_rm32, Register::ECX, Register::EDX)?,
        before(true),
    )?;
    em.emit(
        &build!(with2, Code::And_rm32_imm32, Register::ECX, VIRTUAL_BITS)?,
        before(true),
    )?;
    em.emit(&store_slot(em, SLOT_VBITS, Register::ECX)?, before(true))?;
    // AL = IF, AH = the image's SF ZF AF PF CF for SAHF.
    emit_all(em, &edx_bit_to_ecx(9)?, before(true))?;
    em.emit(
        &build!(with2, Code::Mov_r32_rm32, Register::EAX, Register::EDX)?,
        before(true),
    )?;
    em.emit(
        &build!(with2, Code::Shl_rm32_imm8, Register::EAX, 8u32)?,
        before(true),
    )?;
    em.emit(
        &build!(with2, Code::Or_rm8_r8, Register::AL, Register::CL)?,
        before(true),
    )?;
    // DF.
    em.emit(
        &build!(with2, Code::Bt_rm32_imm8, Register::EDX, 10u32)?,
        before(true),
    )?;
    let clear = em.branch_forward(Code::Jae_rel8_32, before(true))?;
    em.emit(&Instruction::with(Code::Std), before(true))?;
    let set = em.branch_forward(Code::Jmp_rel8_32, before(true))?;
    em.bind(clear)?;
    em.emit(&Instruction::with(Code::Cld), before(true))?;
    em.bind(set)?;
    // OF: 0x7F + bit 11 overflows exactly when the bit is set.
    emit_all(em, &edx_bit_to_ecx(11)?, before(true))?;
    em.emit(
        &build!(with2, Code::Add_rm8_imm8, Register::CL, 0x7fu32)?,
        before(true),
    )?;
    // SF ZF AF PF CF; OF and DF stay.
    em.emit(&Instruction::with(Code::Sahf), before(true))?;
    let popped = MemoryOperand::with_base_displ(Register::ESP, 4);
    em.emit(
        &build!(with2, Code::Lea_r32_m, Register::ESP, popped)?,
        before(true),
    )?;
    // The commit: the virtual IF.
    let commit = Meta {
        origin: Origin::Inline { guest_len: len },
        ..at(GuestEip::AtPopped(eip), true, false)
    };
    let vif = build!(with2, Code::Mov_rm8_r8, em.slot(SLOT_VIF), Register::AL)?;
    em.emit(&vif, commit)?;
    let after = at(GuestEip::At(next), true, false);
    // IF now set with an interrupt waiting: it is taken after the POPFD.
    let pending = build!(
        with2,
        Code::Movzx_r32_rm8,
        Register::ECX,
        em.slot(SLOT_PENDING)
    )?;
    em.emit(&pending, after)?;
    let quiet = em.branch_forward(Code::Jecxz_rel8_32, after)?;
    let enabled = build!(with2, Code::Movzx_r32_rm8, Register::ECX, em.slot(SLOT_VIF))?;
    em.emit(&enabled, after)?;
    let masked = em.branch_forward(Code::Jecxz_rel8_32, after)?;
    let restore = [
        load_slot(em, Register::EAX, SLOT_EAX)?,
        load_slot(em, Register::ECX, SLOT_ECX)?,
        load_slot(em, Register::EDX, SLOT_EDX)?,
    ];
    emit_all(em, &restore, after)?;
    stub::exit(em, ExitKind::InterruptDue, GuestEip::At(next))?;
    em.bind(quiet)?;
    em.bind(masked)?;
    emit_all(em, &restore, after)?;
    Ok(())
}

/// Emits `instrs` in order, each with `meta`.
fn emit_all(em: &mut Emitter, instrs: &[Instruction], meta: Meta) -> Result<(), Refusal> {
    instrs.iter().try_for_each(|i| em.emit(i, meta))
}

/// ECX = bit `bit` of EDX (0 or 1); writes the flags.
fn edx_bit_to_ecx(bit: u32) -> Result<[Instruction; 3], Refusal> {
    Ok([
        build!(with2, Code::Mov_r32_rm32, Register::ECX, Register::EDX)?,
        build!(with2, Code::Shr_rm32_imm8, Register::ECX, bit)?,
        build!(with2, Code::And_rm32_imm8, Register::ECX, 1u32)?,
    ])
}

/// The index of a segment register in the selector and reload slots (ES, CS, SS, DS,
/// FS, GS: the order of their encodings).
fn segment_index(reg: Register) -> Option<u32> {
    match reg {
        Register::ES => Some(0),
        Register::CS => Some(1),
        Register::SS => Some(2),
        Register::DS => Some(3),
        Register::FS => Some(4),
        Register::GS => Some(5),
        _ => None,
    }
}

/// The register `instr` loads, if it is a MOV or POP to a segment register the
/// translation performs inline ([`TranslateConfig::inline_segment_loads`]): DS, ES, FS
/// or GS but the scratch segment; a register source, a memory source through DS, ES or
/// SS with 32-bit addressing, or a 32-bit POP from a 32-bit stack; never in a
/// one-instruction block (the monitor steps those).
pub(crate) fn segment_load(cfg: &TranslateConfig, instr: &Instruction) -> Option<Register> {
    if !cfg.inline_segment_loads || cfg.max_instructions <= 1 {
        return None;
    }
    let reg = match instr.code() {
        Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 => {
            let source_ok = match instr.op1_kind() {
                OpKind::Register => {
                    instr.op1_register().is_gpr16() || instr.op1_register().is_gpr32()
                }
                OpKind::Memory => {
                    matches!(
                        instr.memory_segment(),
                        Register::DS | Register::ES | Register::SS
                    ) && !instr.memory_base().is_gpr16()
                        && !instr.memory_index().is_gpr16()
                }
                _ => false,
            };
            source_ok.then(|| instr.op0_register())?
        }
        Code::Popd_DS | Code::Popd_ES | Code::Popd_FS | Code::Popd_GS
            if cfg.stack_size == StackSize::Bits32 =>
        {
            instr.op0_register()
        }
        _ => return None,
    };
    let data = matches!(
        reg,
        Register::ES | Register::DS | Register::FS | Register::GS
    );
    (data && reg != cfg.scratch.segment.register()).then_some(reg)
}

/// The 16-bit register of a 16- or 32-bit general register.
fn low_word(reg: Register) -> Register {
    const WORDS: [Register; 8] = [
        Register::AX,
        Register::CX,
        Register::DX,
        Register::BX,
        Register::SP,
        Register::BP,
        Register::SI,
        Register::DI,
    ];
    WORDS.get(reg.number() % 8).copied().unwrap_or(Register::AX)
}

/// Emits the inline form of `guest`, a MOV or POP to `reg` ([`segment_load`]).
pub(crate) fn load_segment(
    em: &mut Emitter,
    guest: &Instruction,
    reg: Register,
) -> Result<(), Refusal> {
    let eip = u32::try_from(guest.ip()).unwrap_or(0);
    let len = u8::try_from(guest.len()).unwrap_or(1);
    let next = eip.wrapping_add(u32::from(len));
    let index = segment_index(reg).unwrap_or(3);
    let record = SLOT_RELOADS + 8 * index;
    let pop = guest.code() != Code::Mov_Sreg_rm16 && guest.code() != Code::Mov_Sreg_r32m16;
    let before = |restore, can_fault| Meta::expansion(GuestEip::At(eip), restore, can_fault);
    spill_scratch(em, before(false, false))?;
    // The selector, read as the guest's instruction reads it (same fault).
    if pop {
        let top = MemoryOperand::with_base(Register::ESP);
        em.emit(
            &build!(with2, Code::Mov_r32_rm32, Register::ECX, top)?,
            before(true, true),
        )?;
        em.emit(
            &build!(with2, Code::Movzx_r32_rm16, Register::ECX, Register::CX)?,
            before(true, false),
        )?;
    } else if guest.op1_kind() == OpKind::Register {
        let source = low_word(guest.op1_register());
        em.emit(
            &build!(with2, Code::Movzx_r32_rm16, Register::ECX, source)?,
            before(true, false),
        )?;
    } else {
        let source = guest_operand(guest);
        em.emit(
            &build!(with2, Code::Movzx_r32_rm16, Register::ECX, source)?,
            before(true, true),
        )?;
    }
    let null = em.branch_forward(Code::Jecxz_rel8_32, before(true, false))?;
    em.emit(&load_slot(em, Register::EDX, record)?, before(true, false))?;
    let sum = MemoryOperand::with_base_index(Register::ECX, Register::EDX);
    em.emit(
        &build!(with2, Code::Lea_r32_m, Register::ECX, sum)?,
        before(true, false),
    )?;
    let recorded = em.branch_forward(Code::Jecxz_rel8_32, before(true, false))?;
    em.emit(
        &load_slot(em, Register::ECX, SLOT_ECX)?,
        before(true, false),
    )?;
    em.emit(
        &load_slot(em, Register::EDX, SLOT_EDX)?,
        before(true, false),
    )?;
    stub::exit_at(
        em,
        ExitKind::Sensitive(crate::class::classify(guest)),
        GuestEip::At(eip),
        guest,
    )?;
    let selector_slot = SLOT_SELECTORS + 4 * index;
    // After the segment load, a MOV is done; a POP is done once ESP moves.
    let commit = Meta {
        guest: GuestEip::At(eip),
        restore_scratch: true,
        restore_eax: false,
        can_fault: false,
        origin: Origin::Inline { guest_len: len },
    };
    let load_meta = if pop { before(true, false) } else { commit };
    // ECX holds the guest's selector: into its slot, marked loaded, then the host's.
    let load = |em: &mut Emitter, host_slot: u32, meta: Meta| -> Result<(), Refusal> {
        let store = build!(
            with2,
            Code::Mov_rm32_r32,
            em.slot(selector_slot),
            Register::ECX
        )?;
        em.emit(&store, before(true, false))?;
        let loaded = build!(
            with2,
            Code::Mov_rm8_imm8,
            em.slot(SLOT_LOADED + index),
            1u32
        )?;
        em.emit(&loaded, before(true, false))?;
        em.emit(
            &build!(with2, Code::Mov_Sreg_r32m16, reg, em.slot(host_slot))?,
            meta,
        )
    };
    em.bind(null)?;
    // One entry per guest instruction carries its length: the reload path's.
    load(em, SLOT_NULL_SELECTOR, before(true, false))?;
    let done = em.branch_forward(Code::Jmp_rel8_32, after_load(eip, next, pop))?;
    em.bind(recorded)?;
    // Counted for the monitor (a stop before the load counts it again: no harm).
    em.emit(
        &load_slot(em, Register::ECX, SLOT_RELOAD_HITS)?,
        before(true, false),
    )?;
    let one_more = MemoryOperand::with_base_displ(Register::ECX, 1);
    em.emit(
        &build!(with2, Code::Lea_r32_m, Register::ECX, one_more)?,
        before(true, false),
    )?;
    let count = build!(
        with2,
        Code::Mov_rm32_r32,
        em.slot(SLOT_RELOAD_HITS),
        Register::ECX
    )?;
    em.emit(&count, before(true, false))?;
    let selector = build!(
        with2,
        Code::Movzx_r32_rm16,
        Register::ECX,
        em.slot(record + 6)
    )?;
    em.emit(&selector, before(true, false))?;
    load(em, record + 4, load_meta)?;
    em.bind(done)?;
    if pop {
        let popped = MemoryOperand::with_base_displ(Register::ESP, 4);
        em.emit(
            &build!(with2, Code::Lea_r32_m, Register::ESP, popped)?,
            commit,
        )?;
    }
    let after = Meta::expansion(GuestEip::At(next), true, false);
    em.emit(&load_slot(em, Register::ECX, SLOT_ECX)?, after)?;
    em.emit(&load_slot(em, Register::EDX, SLOT_EDX)?, after)?;
    Ok(())
}

/// Where the guest is right after an inline segment load's host load: a MOV is done, a
/// POP has yet to move ESP.
fn after_load(eip: u32, next: u32, pop: bool) -> Meta {
    Meta::expansion(GuestEip::At(if pop { eip } else { next }), true, false)
}

/// The slot of the control register `instr` reads, if it is a MOV r32, CRn the
/// translation performs inline: CR0, CR2, CR3 or CR4 at CPL 0 ([`TranslateConfig::inline_if`];
/// at CPL 1 to 3 it raises #GP, and the other CRs #UD: the monitor does those).
pub(crate) fn control_read(cfg: &TranslateConfig, instr: &Instruction) -> Option<u32> {
    if !cfg.inline_if || instr.code() != Code::Mov_r32_cr {
        return None;
    }
    let index = match instr.op1_register() {
        Register::CR0 => 0,
        Register::CR2 => 1,
        Register::CR3 => 2,
        Register::CR4 => 3,
        _ => return None,
    };
    Some(SLOT_CONTROL + 4 * index)
}

/// Emits MOV r32, CRn as a load of the register's slot ([`control_read`]).
pub(crate) fn read_control(
    em: &mut Emitter,
    guest: &Instruction,
    slot: u32,
) -> Result<(), Refusal> {
    let meta = Meta {
        guest: GuestEip::At(u32::try_from(guest.ip()).unwrap_or(0)),
        restore_scratch: false,
        restore_eax: false,
        can_fault: false,
        origin: Origin::Inline {
            guest_len: u8::try_from(guest.len()).unwrap_or(3),
        },
    };
    let load = build!(
        with2,
        Code::Mov_r32_rm32,
        guest.op0_register(),
        em.slot(slot)
    )?;
    em.emit(&load, meta)
}

/// The segment register `instr` reads, if it is a PUSH Sreg or a MOV reg, Sreg (the
/// forms the translator gives an immediate).
pub(crate) fn selector_read(instr: &Instruction) -> Option<Register> {
    use iced_x86::OpKind;
    match instr.code() {
        Code::Pushd_ES
        | Code::Pushd_CS
        | Code::Pushd_SS
        | Code::Pushd_DS
        | Code::Pushd_FS
        | Code::Pushd_GS
        | Code::Pushw_ES
        | Code::Pushw_CS
        | Code::Pushw_SS
        | Code::Pushw_DS
        | Code::Pushw_FS
        | Code::Pushw_GS => Some(instr.op0_register()),
        // A memory destination leaves for the monitor.
        Code::Mov_r32m16_Sreg | Code::Mov_rm16_Sreg if instr.op0_kind() == OpKind::Register => {
            Some(instr.op1_register())
        }
        _ => None,
    }
}

/// Emits PUSH Sreg or MOV reg, Sreg: with `selectors`, the guest's selector of `reg` as
/// an immediate; without, read from its slot ([`super::SLOT_SELECTORS`]), which the
/// monitor keeps (every change of a segment register is the monitor's).
pub(crate) fn selector(
    em: &mut Emitter,
    guest: &Instruction,
    reg: Register,
    selectors: Option<[u16; 6]>,
) -> Result<(), Refusal> {
    let eip = u32::try_from(guest.ip()).unwrap_or(0);
    let len = u8::try_from(guest.len()).unwrap_or(1);
    let index = segment_index(reg).unwrap_or(5);
    let meta = Meta {
        guest: GuestEip::At(eip),
        restore_scratch: false,
        restore_eax: false,
        can_fault: true,
        origin: Origin::Inline { guest_len: len },
    };
    let pushd = matches!(
        guest.code(),
        Code::Pushd_ES
            | Code::Pushd_CS
            | Code::Pushd_SS
            | Code::Pushd_DS
            | Code::Pushd_FS
            | Code::Pushd_GS
    );
    let out = if let Some(selectors) = selectors {
        let at = usize::try_from(index).unwrap_or(usize::MAX);
        let sel = u32::from(selectors.get(at).copied().unwrap_or(0));
        match guest.code() {
            // Zero-extended, as the monitor's emulation and QEMU push it.
            _ if pushd => build!(with1, Code::Pushd_imm32, sel)?,
            // MOV r32, Sreg zero-extends (P6 and later).
            Code::Mov_r32m16_Sreg => build!(with2, Code::Mov_r32_imm32, guest.op0_register(), sel)?,
            Code::Mov_rm16_Sreg => build!(with2, Code::Mov_r16_imm16, guest.op0_register(), sel)?,
            // PUSH Sreg with a 16-bit operand size.
            _ => build!(with1, Code::Push_imm16, sel)?,
        }
    } else {
        let slot = em.slot(super::SLOT_SELECTORS + 4 * index);
        match guest.code() {
            _ if pushd => build!(with1, Code::Push_rm32, slot)?,
            Code::Mov_r32m16_Sreg => build!(with2, Code::Mov_r32_rm32, guest.op0_register(), slot)?,
            Code::Mov_rm16_Sreg => build!(with2, Code::Mov_r16_rm16, guest.op0_register(), slot)?,
            _ => build!(with1, Code::Push_rm16, slot)?,
        }
    };
    em.emit(&out, meta)
}

/// Emits `guest`, a DIV or IDIV, behind a check that leaves for the monitor with
/// [`ExitKind::DivideError`] when its divisor is zero (module docs). `false`, with
/// nothing emitted, for a form the check does not read as the instruction does (a
/// segment other than DS, ES and SS, 16-bit addressing) or one that does not encode
/// back: the caller emits it as it is.
pub(crate) fn divide_check(em: &mut Emitter, guest: &Instruction) -> Result<bool, Refusal> {
    let load = match guest.code() {
        Code::Div_rm8 | Code::Idiv_rm8 => Code::Movzx_r32_rm8,
        Code::Div_rm16 | Code::Idiv_rm16 => Code::Movzx_r32_rm16,
        Code::Div_rm32 | Code::Idiv_rm32 => Code::Mov_r32_rm32,
        _ => return Ok(false),
    };
    let source = match guest.op0_kind() {
        OpKind::Register => None,
        OpKind::Memory if read_as_is(guest) => Some(guest_operand(guest)),
        _ => return Ok(false),
    };
    if !reencodes(guest) {
        return Ok(false);
    }
    let eip = u32::try_from(guest.ip()).unwrap_or(0);
    let next = eip.wrapping_add(u32::try_from(guest.len()).unwrap_or(1));
    let before = |restore, can_fault| Meta::expansion(GuestEip::At(eip), restore, can_fault);
    spill_scratch(em, before(false, false))?;
    let read = match source {
        Some(memory) => build!(with2, load, Register::ECX, memory)?,
        None => build!(with2, load, Register::ECX, guest.op0_register())?,
    };
    em.emit(&read, before(true, source.is_some()))?;
    let zero = em.branch_forward(Code::Jecxz_rel8_32, before(true, false))?;
    let reload = load_slot(em, Register::ECX, SLOT_ECX)?;
    em.emit(&reload, before(true, false))?;
    if !em.ident(guest)? {
        return Err(Refusal::Encode {
            what: format!("{:?}", guest.code()),
            reason: "encoded once, not twice".to_string(),
        });
    }
    let done = em.branch_forward(
        Code::Jmp_rel8_32,
        Meta::expansion(GuestEip::At(next), false, false),
    )?;
    em.bind(zero)?;
    em.emit(&reload, before(true, false))?;
    stub::exit_at(em, ExitKind::DivideError, GuestEip::At(eip), guest)?;
    em.bind(done)?;
    Ok(true)
}

/// Emits `guest`, a DIV, IDIV or BOUND, behind the check of what makes it fault:
/// [`divide_check`] or [`bound_check`]. `false`, with nothing emitted, when the form has
/// no check.
pub(crate) fn fault_check(em: &mut Emitter, guest: &Instruction) -> Result<bool, Refusal> {
    if guest.mnemonic() == iced_x86::Mnemonic::Bound {
        bound_check(em, guest)
    } else {
        divide_check(em, guest)
    }
}

/// Emits `guest`, a 32-bit BOUND, behind a check that leaves for the monitor with
/// [`ExitKind::BoundRange`] when its index lies outside its bounds (module docs).
/// `false`, with nothing emitted, for a form the check does not read as the instruction
/// does (16-bit operands, a segment other than DS, ES and SS, 16-bit addressing) or one
/// that does not encode back: the caller emits it as it is.
pub(crate) fn bound_check(em: &mut Emitter, guest: &Instruction) -> Result<bool, Refusal> {
    if guest.code() != Code::Bound_r32_m3232
        || guest.op1_kind() != OpKind::Memory
        || !read_as_is(guest)
        || !reencodes(guest)
    {
        return Ok(false);
    }
    let eip = u32::try_from(guest.ip()).unwrap_or(0);
    let before = |restore, can_fault| Meta::expansion(GuestEip::At(eip), restore, can_fault);
    let checking = before(true, false);
    let (t0, t1, t2) = (SLOT_CHECK, SLOT_CHECK + 4, SLOT_CHECK + 8);
    // ECX = ECX + EDX + 1: with EDX = NOT b, a - b without touching the flags.
    let minus = |a: Register, out: Register| {
        build!(
            with2,
            Code::Lea_r32_m,
            out,
            MemoryOperand::new(a, Register::EDX, 1, 1, 1, false, Register::None)
        )
    };
    spill_scratch(em, before(false, false))?;
    // The bounds' offset, as the instruction computes it (guest registers intact).
    let bounds = guest_operand(guest);
    let offset = MemoryOperand::new(
        bounds.base,
        bounds.index,
        bounds.scale,
        bounds.displacement,
        bounds.displ_size,
        false,
        Register::None,
    );
    em.emit(
        &build!(with2, Code::Lea_r32_m, Register::ECX, offset)?,
        checking,
    )?;
    em.emit(&store_slot(em, t0, Register::ECX)?, checking)?;
    let segment = guest.memory_segment();
    let at = |displacement: i64| {
        MemoryOperand::new(
            Register::ECX,
            Register::None,
            1,
            displacement,
            1,
            false,
            segment,
        )
    };
    em.emit(
        &build!(with2, Code::Mov_r32_rm32, Register::EDX, at(0))?,
        before(true, true),
    )?;
    em.emit(&build!(with1, Code::Not_rm32, Register::EDX)?, checking)?;
    // d = r - lower, with the guest's r (its slot when the check took its register).
    let index = guest.op0_register();
    let r = match index {
        Register::ECX | Register::EDX => {
            let slot = if index == Register::ECX {
                SLOT_ECX
            } else {
                SLOT_EDX
            };
            em.emit(&load_slot(em, Register::ECX, slot)?, checking)?;
            Register::ECX
        }
        other => other,
    };
    em.emit(&minus(r, Register::ECX)?, checking)?;
    em.emit(&store_slot(em, t1, Register::ECX)?, checking)?;
    // w = upper - lower.
    em.emit(&load_slot(em, Register::ECX, t0)?, checking)?;
    em.emit(
        &build!(with2, Code::Mov_r32_rm32, Register::ECX, at(4))?,
        before(true, true),
    )?;
    em.emit(&minus(Register::ECX, Register::ECX)?, checking)?;
    em.emit(&store_slot(em, t0, Register::ECX)?, checking)?;
    // One half of w minus the same half of d, in ECX, and its sign's byte tested: the
    // branch is taken when the difference is not negative.
    let half = |em: &mut Emitter, at: u32| -> Result<(), Refusal> {
        em.emit(
            &build!(with2, Code::Movzx_r32_rm16, Register::ECX, em.slot(t0 + at))?,
            checking,
        )?;
        em.emit(
            &build!(with2, Code::Movzx_r32_rm16, Register::EDX, em.slot(t1 + at))?,
            checking,
        )?;
        em.emit(&build!(with1, Code::Not_rm32, Register::EDX)?, checking)?;
        em.emit(&minus(Register::ECX, Register::ECX)?, checking)
    };
    let sign = |em: &mut Emitter| -> Result<(), Refusal> {
        em.emit(&store_slot(em, t2, Register::ECX)?, checking)?;
        em.emit(
            &build!(with2, Code::Movzx_r32_rm8, Register::ECX, em.slot(t2 + 3))?,
            checking,
        )
    };
    half(em, 2)?;
    let high_equal = em.branch_forward(Code::Jecxz_rel8_32, checking)?;
    sign(em)?;
    let in_high = em.branch_forward(Code::Jecxz_rel8_32, checking)?;
    let out_high = em.branch_forward(Code::Jmp_rel8_32, checking)?;
    em.bind(high_equal)?;
    half(em, 0)?;
    sign(em)?;
    let in_low = em.branch_forward(Code::Jecxz_rel8_32, checking)?;
    em.bind(out_high)?;
    let reload = [
        load_slot(em, Register::ECX, SLOT_ECX)?,
        load_slot(em, Register::EDX, SLOT_EDX)?,
    ];
    emit_all(em, &reload, checking)?;
    stub::exit_at(em, ExitKind::BoundRange, GuestEip::At(eip), guest)?;
    em.bind(in_high)?;
    em.bind(in_low)?;
    emit_all(em, &reload, checking)?;
    if !em.ident(guest)? {
        return Err(Refusal::Encode {
            what: format!("{:?}", guest.code()),
            reason: "encoded once, not twice".to_string(),
        });
    }
    Ok(true)
}

/// Whether `instr` encodes in 32-bit code to bytes that decode back to it.
fn reencodes(instr: &Instruction) -> bool {
    let mut encoder = Encoder::new(32);
    if encoder.encode(instr, instr.ip()).is_err() {
        return false;
    }
    let bytes = encoder.take_buffer();
    let out = Decoder::with_ip(32, &bytes, instr.ip(), DecoderOptions::NONE).decode();
    out.len() == bytes.len() && super::emit::same_instruction(instr, &out)
}

/// `mov [seg:slot], reg`: a register into its slot of the vCPU page.
fn store_slot(em: &Emitter, slot: u32, reg: Register) -> Result<Instruction, Refusal> {
    build!(with2, Code::Mov_rm32_r32, em.slot(slot), reg)
}

/// `mov reg, [seg:slot]`: a slot of the vCPU page into a register.
fn load_slot(em: &Emitter, reg: Register, slot: u32) -> Result<Instruction, Refusal> {
    build!(with2, Code::Mov_r32_rm32, reg, em.slot(slot))
}

/// Stores ECX and EDX in their slots, each instruction with `meta` (the guest is where it
/// was: nothing changed yet).
fn spill_scratch(em: &mut Emitter, meta: Meta) -> Result<(), Refusal> {
    for (slot, reg) in [(SLOT_ECX, Register::ECX), (SLOT_EDX, Register::EDX)] {
        em.emit(&store_slot(em, slot, reg)?, meta)?;
    }
    Ok(())
}

/// `guest`'s memory operand, for another instruction to read what it reads (an
/// absolute address keeps its 32-bit displacement).
fn guest_operand(guest: &Instruction) -> MemoryOperand {
    let absolute = guest.memory_base() == Register::None && guest.memory_index() == Register::None;
    MemoryOperand::new(
        guest.memory_base(),
        guest.memory_index(),
        guest.memory_index_scale(),
        i64::from(guest.memory_displacement32().cast_signed()),
        if absolute {
            4
        } else {
            guest.memory_displ_size().min(4)
        },
        false,
        guest.segment_prefix(),
    )
}

/// Whether `guest`'s memory operand can be read by another instruction as it reads it:
/// through DS, ES or SS, with 32-bit addressing.
fn read_as_is(guest: &Instruction) -> bool {
    let (base, index) = (guest.memory_base(), guest.memory_index());
    let absolute16 =
        base == Register::None && index == Register::None && guest.memory_displ_size() == 2;
    matches!(
        guest.memory_segment(),
        Register::DS | Register::ES | Register::SS
    ) && !base.is_gpr16()
        && !index.is_gpr16()
        && !absolute16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{disasm, translate_with};
    use crate::translate::{validate, Rules, TranslateConfig};

    /// `bytes` translated as 32-bit code with `cfg`, the block checked by the validator
    /// (which only debug builds run inside the translator).
    fn translate_valid(cfg: &TranslateConfig, bytes: &[u8]) -> crate::translate::Block {
        let block = translate_with(32, bytes, cfg);
        let start = u64::from(block.tc_address);
        let rules = Rules::new(cfg, start..start + 4096);
        validate(&block.bytes, block.tc_address, &rules).unwrap();
        block
    }

    /// Every instruction whose stop takes ECX and EDX back from their slots comes after
    /// both were stored there since the last guest instruction that ran as it is (which
    /// may change them), for expansions laid out in one piece.
    fn assert_spilled_before_restored(block: &crate::translate::Block) {
        let code = disasm(block);
        let (mut ecx, mut edx) = (false, false);
        for (entry, instr) in block.side.entries.iter().zip(&code) {
            if matches!(entry.origin, Origin::Ident { .. }) {
                (ecx, edx) = (false, false);
            }
            if entry.restore_scratch && entry.origin != Origin::Prologue {
                assert!(
                    ecx && edx,
                    "{instr} at {:#x} restores an unsaved slot",
                    entry.offset
                );
            }
            if instr.code() == Code::Mov_rm32_r32 && instr.op0_kind() == OpKind::Memory {
                ecx |= instr.op1_register() == Register::ECX;
                edx |= instr.op1_register() == Register::EDX;
            }
        }
    }

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
        let block = translate_valid(&cfg, &[0xFA, 0x40, 0xFB, 0x40, 0xC3]);
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
        assert_spilled_before_restored(&block);
    }

    #[test]
    fn control_register_reads_at_cpl0_read_their_slots() {
        // mov eax, cr2; mov ebx, cr0; mov ecx, cr3; mov edx, cr4; ret
        let bytes = [
            0x0F, 0x20, 0xD0, 0x0F, 0x20, 0xC3, 0x0F, 0x20, 0xD9, 0x0F, 0x20, 0xE2, 0xC3,
        ];
        let block = translate_valid(&inline_cfg(), &bytes);
        let loads: Vec<(Register, u32)> = disasm(&block)
            .iter()
            .filter(|i| i.code() == Code::Mov_r32_rm32 && i.memory_segment() == Register::GS)
            .map(|i| {
                (
                    i.op0_register(),
                    i.memory_displacement32().wrapping_sub(0xFFFF_E000),
                )
            })
            .filter(|&(_, offset)| offset >= SLOT_CONTROL)
            .collect();
        assert_eq!(
            loads,
            [
                (Register::EAX, SLOT_CONTROL + 4),
                (Register::EBX, SLOT_CONTROL),
                (Register::ECX, SLOT_CONTROL + 8),
                (Register::EDX, SLOT_CONTROL + 12)
            ]
        );
        assert!(!block
            .side
            .exits
            .iter()
            .any(|e| e.kind == ExitKind::Sensitive(crate::Class::MovCr)));
        // Above CPL 0 (#GP), and CR8 (#UD), the monitor does them.
        let user = translate_with(32, &[0x0F, 0x20, 0xD0], &TranslateConfig::default());
        assert_eq!(
            user.side.exits[0].kind,
            ExitKind::Sensitive(crate::Class::MovCr)
        );
        let cr8 = translate_with(32, &[0xF0, 0x0F, 0x20, 0xC0], &inline_cfg());
        assert!(matches!(
            cr8.side.exits[0].kind,
            ExitKind::Undefined | ExitKind::Sensitive(crate::Class::MovCr)
        ));
    }

    /// Code whose every DIV, IDIV and BOUND is to be checked.
    struct Checking(crate::translate::GuestPages);

    impl crate::translate::CodeReader for Checking {
        fn fetch(&self, linear: u32, buf: &mut [u8]) -> Option<u64> {
            self.0.fetch(linear, buf)
        }

        fn fault_checked(&self, _phys: u64) -> bool {
            true
        }
    }

    /// `bytes` at EIP translated with every DIV, IDIV and BOUND checked, validated.
    fn checked_block(bytes: &[u8], cfg: &TranslateConfig) -> crate::translate::Block {
        use crate::translate::testing::{EIP, TC};
        use crate::translate::{translate_block, CodeSegment, GuestPages};
        let code = Checking(GuestPages::flat(EIP, bytes));
        let block = translate_block(&code, EIP, CodeSegment::FLAT32, TC, cfg).unwrap();
        let start = u64::from(block.tc_address);
        validate(
            &block.bytes,
            block.tc_address,
            &Rules::new(cfg, start..start + 4096),
        )
        .unwrap();
        block
    }

    /// What a checked BOUND's translation decides, run on a model of the CPU that knows
    /// the instructions a check may contain: `Some(true)` when it reaches the BOUND,
    /// `Some(false)` when it leaves through the gate, `None` on anything else.
    fn run_bound_check(
        block: &crate::translate::Block,
        cfg: &TranslateConfig,
        regs: &mut [u32; 8],
        guest: &std::collections::HashMap<u32, u8>,
    ) -> Option<bool> {
        use iced_x86::Mnemonic;
        let scratch = cfg.scratch.segment.register();
        let mut slots = vec![0u8; 4096];
        let code = disasm(block);
        let reg = |r: Register| r.full_register32().number() - Register::EAX.number();
        let addr = |i: &Instruction, regs: &[u32; 8]| {
            let base = match i.memory_base() {
                Register::None => 0,
                b => regs[reg(b)],
            };
            let index = match i.memory_index() {
                Register::None => 0,
                x => regs[reg(x)].wrapping_mul(i.memory_index_scale()),
            };
            base.wrapping_add(index)
                .wrapping_add(i.memory_displacement32())
        };
        // From the block's entry (past the lookup entry's reload of ECX and EDX).
        let mut pc = code
            .iter()
            .position(|t| t.ip() == u64::from(block.entry()))?;
        for _ in 0..200 {
            let i = code.get(pc)?;
            let mem = |i: &Instruction| i.memory_segment() == scratch;
            let load = |i: &Instruction, regs: &[u32; 8], slots: &[u8], n: usize| -> u32 {
                let a = addr(i, regs);
                (0..n)
                    .map(|k| {
                        let at = a.wrapping_add(u32::try_from(k).unwrap());
                        let b = if mem(i) {
                            slots[(at as usize) % 4096]
                        } else {
                            guest.get(&at).copied().unwrap_or(0)
                        };
                        u32::from(b) << (8 * k)
                    })
                    .fold(0, |x, y| x | y)
            };
            match i.mnemonic() {
                Mnemonic::Bound => return Some(true),
                Mnemonic::Jmp if i.op0_kind() == OpKind::Memory => return Some(false),
                Mnemonic::Mov if i.op0_kind() == OpKind::Memory => {
                    assert!(mem(i), "a check writes only its slots: {i}");
                    let a = addr(i, regs) as usize;
                    let v = regs[reg(i.op1_register())].to_le_bytes();
                    slots[a % 4096..a % 4096 + 4].copy_from_slice(&v);
                }
                Mnemonic::Mov => regs[reg(i.op0_register())] = load(i, regs, &slots, 4),
                Mnemonic::Movzx => {
                    let n = if i.code() == Code::Movzx_r32_rm8 {
                        1
                    } else {
                        2
                    };
                    regs[reg(i.op0_register())] = load(i, regs, &slots, n);
                }
                Mnemonic::Lea => regs[reg(i.op0_register())] = addr(i, regs),
                Mnemonic::Not => regs[reg(i.op0_register())] ^= u32::MAX,
                Mnemonic::Jecxz | Mnemonic::Jmp => {
                    if i.mnemonic() == Mnemonic::Jmp || regs[1] == 0 {
                        pc = code.iter().position(|t| t.ip() == i.near_branch_target())?;
                        continue;
                    }
                }
                _ => return None,
            }
            pc += 1;
        }
        None
    }

    #[test]
    fn checked_bounds_exit_exactly_for_an_index_outside_them() {
        use crate::translate::testing::EIP;
        let cfg = TranslateConfig::default();
        // bound eax, [ebx+8]; bound ecx, [ecx]; bound edx, [esp+4]; bound esi, fs:[0]; ret
        let bytes = [
            0x62, 0x43, 0x08, 0x62, 0x09, 0x62, 0x54, 0x24, 0x04, 0x64, 0x62, 0x35, 0, 0, 0, 0,
            0xC3,
        ];
        let block = checked_block(&bytes, &cfg);
        let all = disasm(&block);
        // No flag changes: the guest's flags are live across a BOUND.
        for i in all
            .iter()
            .filter(|i| i.mnemonic() != iced_x86::Mnemonic::Bound)
        {
            assert_eq!(i.rflags_modified(), 0, "{i} writes flags");
        }
        let exits: Vec<GuestEip> = block
            .side
            .exits
            .iter()
            .filter(|e| e.kind == ExitKind::BoundRange)
            .map(|e| e.guest)
            .collect();
        // The FS-relative BOUND is left as it is.
        assert_eq!(exits, [EIP, EIP + 3, EIP + 5].map(GuestEip::At).to_vec());
        let bounds = all
            .iter()
            .filter(|i| i.mnemonic() == iced_x86::Mnemonic::Bound)
            .count();
        assert_eq!(bounds, 4);
        // Each check reads the two bounds, where the BOUND's own fault would come from.
        let reads = block
            .side
            .entries
            .iter()
            .filter(|e| e.origin == Origin::Expansion && e.can_fault && e.restore_scratch)
            .filter(|e| matches!(e.guest, GuestEip::At(at) if at < EIP + 9))
            .count();
        assert_eq!(reads, 6);

        // The first check's decisions, run: an exit exactly when EAX is outside
        // [lower, upper]; with lower > upper every index is outside, and the check may
        // let one through to the BOUND, which then faults natively.
        let first = checked_block(&bytes[..3], &cfg);
        let values: [i32; 12] = [
            i32::MIN,
            i32::MIN + 1,
            -65536,
            -65535,
            -1,
            0,
            1,
            65535,
            65536,
            0x1234_5678,
            -0x1234_5678,
            i32::MAX,
        ];
        for lower in values {
            for upper in values {
                let mut guest = std::collections::HashMap::new();
                for (k, b) in lower.to_le_bytes().into_iter().enumerate() {
                    guest.insert(0x5008 + u32::try_from(k).unwrap(), b);
                }
                for (k, b) in upper.to_le_bytes().into_iter().enumerate() {
                    guest.insert(0x500c + u32::try_from(k).unwrap(), b);
                }
                for r in values.into_iter().chain([lower, upper]) {
                    let mut regs = [0u32; 8];
                    regs[0] = r.cast_unsigned();
                    regs[3] = 0x5000;
                    let inside = lower <= r && r <= upper;
                    let ran = run_bound_check(&first, &cfg, &mut regs, &guest);
                    if lower <= upper {
                        assert_eq!(ran, Some(inside), "r {r} in [{lower}, {upper}]");
                    } else {
                        assert!(ran.is_some(), "r {r} in [{lower}, {upper}]");
                    }
                    assert_eq!(
                        (regs[0], regs[3]),
                        (r.cast_unsigned(), 0x5000),
                        "guest registers kept"
                    );
                }
            }
        }
        // The index in a scratch register (ECX, EDX) is read from its slot; an operand
        // based on ESP reads through SS as the BOUND does.
        let (ecx_form, edx_form) = (
            checked_block(&bytes[3..5], &cfg),
            checked_block(&bytes[5..9], &cfg),
        );
        for (lower, upper, inside) in [(0x4000, 0x6000, true), (0x5001, 0x6000, false)] {
            let mut guest = std::collections::HashMap::new();
            for (k, b) in [lower, upper]
                .iter()
                .flat_map(|v: &u32| v.to_le_bytes())
                .enumerate()
            {
                guest.insert(0x5000 + u32::try_from(k).unwrap(), b);
                guest.insert(0x6004 + u32::try_from(k).unwrap(), b);
            }
            let mut regs = [0u32; 8];
            regs[1] = 0x5000;
            assert_eq!(
                run_bound_check(&ecx_form, &cfg, &mut regs, &guest),
                Some(inside)
            );
            assert_eq!(regs[1], 0x5000);
            let mut regs = [0u32; 8];
            regs[2] = 0x5000;
            regs[4] = 0x6000;
            assert_eq!(
                run_bound_check(&edx_form, &cfg, &mut regs, &guest),
                Some(inside)
            );
            assert_eq!((regs[2], regs[4]), (0x5000, 0x6000));
        }
    }

    #[test]
    fn checked_divisions_exit_only_for_a_zero_divisor() {
        use crate::translate::testing::EIP;
        // div ecx; div dword [ebx+8]; idiv bh; div word fs:[0]; ret
        let bytes = [
            0xF7, 0xF1, 0xF7, 0x73, 0x08, 0xF6, 0xFF, 0x64, 0x66, 0xF7, 0x35, 0, 0, 0, 0, 0xC3,
        ];
        let block = checked_block(&bytes, &TranslateConfig::default());
        let code: Vec<Code> = disasm(&block).iter().map(Instruction::code).collect();
        // Three checks (the FS operand is not read through DS, ES or SS: left as it is)
        // and the RET's lookup.
        assert_eq!(
            code.iter().filter(|c| **c == Code::Jecxz_rel8_32).count(),
            4
        );
        let loads = [Code::Mov_r32_rm32, Code::Movzx_r32_rm8];
        assert!(loads.iter().all(|l| code.contains(l)));
        let divisions = [
            Code::Div_rm32,
            Code::Div_rm32,
            Code::Idiv_rm8,
            Code::Div_rm16,
        ];
        let found: Vec<Code> = code
            .iter()
            .copied()
            .filter(|c| divisions.contains(c))
            .collect();
        assert_eq!(found, divisions);
        let exits: Vec<GuestEip> = block
            .side
            .exits
            .iter()
            .filter(|e| e.kind == ExitKind::DivideError)
            .map(|e| e.guest)
            .collect();
        assert_eq!(
            exits,
            [EIP, EIP + 2, EIP + 5].map(GuestEip::At).to_vec(),
            "each check raises #DE at its own instruction"
        );
        // The stubs keep the divisions, so the monitor need not decode them again.
        let kept: Vec<Code> = block
            .side
            .exits
            .iter()
            .filter(|e| e.kind == ExitKind::DivideError)
            .filter_map(|e| block.side.instruction(e).map(Instruction::code))
            .collect();
        assert_eq!(kept, [Code::Div_rm32, Code::Div_rm32, Code::Idiv_rm8]);
        // The divisor's read from memory is the one place the check can fault, with the
        // guest at the DIV and ECX and EDX in their slots.
        let reads: Vec<_> = block
            .side
            .entries
            .iter()
            .filter(|e| e.origin == Origin::Expansion && e.can_fault)
            // The RET's read of its target, at EIP + 15, is not the checks'.
            .filter(|e| matches!(e.guest, GuestEip::At(at) if at < EIP + 15))
            .collect();
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0].guest, GuestEip::At(EIP + 2));
        assert!(reads[0].restore_scratch);
    }

    fn segment_cfg() -> TranslateConfig {
        TranslateConfig {
            inline_segment_loads: true,
            ..TranslateConfig::default()
        }
    }

    #[test]
    fn segment_loads_stay_in_the_block() {
        // mov ds, ax; inc eax; pop es; inc eax; mov fs, [ebx+8]; ret
        let cfg = segment_cfg();
        let bytes = [0x8E, 0xD8, 0x40, 0x07, 0x40, 0x8E, 0x63, 0x08, 0xC3];
        let block = translate_valid(&cfg, &bytes);
        assert_spilled_before_restored(&block);
        let code: Vec<Code> = disasm(&block).iter().map(Instruction::code).collect();
        assert_eq!(code.iter().filter(|c| **c == Code::Inc_r32).count(), 2);
        // Each load has its null and its reload path; no other segment load.
        let loads: Vec<Register> = disasm(&block)
            .iter()
            .filter(|i| i.code() == Code::Mov_Sreg_r32m16)
            .map(Instruction::op0_register)
            .collect();
        use Register::{DS, ES, FS};
        assert_eq!(loads, [DS, DS, ES, ES, FS, FS]);
        // Any other selector leaves for the monitor, at the load.
        let exits: Vec<(ExitKind, GuestEip)> =
            block.side.exits.iter().map(|e| (e.kind, e.guest)).collect();
        for (class, eip) in [
            (crate::Class::MovToSreg, 0x1000),
            (crate::Class::PopSreg, 0x1003),
            (crate::Class::MovToSreg, 0x1005),
        ] {
            assert!(
                exits.contains(&(ExitKind::Sensitive(class), GuestEip::At(eip))),
                "{exits:?}"
            );
        }
        // The guest's flags are never written.
        assert!(disasm(&block)
            .iter()
            .all(|i| i.rflags_modified() == 0 || i.code() == Code::Inc_r32));
    }

    #[test]
    fn a_pop_is_done_when_esp_moves() {
        // pop ds; ret
        let block = translate_valid(&segment_cfg(), &[0x1F, 0xC3]);
        let instrs = disasm(&block);
        let lea = instrs
            .iter()
            .position(|i| i.code() == Code::Lea_r32_m && i.op0_register() == Register::ESP)
            .unwrap();
        assert_eq!(block.side.entries[lea].guest, GuestEip::At(0x1000));
        assert_eq!(block.side.entries[lea + 1].guest, GuestEip::At(0x1001));
        // Every segment load is still at the POP: it is done again after a stop.
        for (i, instr) in instrs.iter().enumerate() {
            if instr.code() == Code::Mov_Sreg_r32m16 {
                assert_eq!(block.side.entries[i].guest, GuestEip::At(0x1000));
            }
        }
    }

    #[test]
    fn segment_loads_the_translation_keeps_for_the_monitor() {
        let cfg = segment_cfg();
        let exits_at_once = |cfg: &TranslateConfig, bytes: &[u8]| {
            let block = translate_with(32, bytes, cfg);
            !disasm(&block)
                .iter()
                .any(|i| i.code() == Code::Mov_Sreg_r32m16)
        };
        // The scratch segment (GS here), SS, a source through GS, 16-bit POP.
        assert!(exits_at_once(&cfg, &[0x8E, 0xE8]));
        assert!(exits_at_once(&cfg, &[0x8E, 0xD0]));
        assert!(exits_at_once(&cfg, &[0x65, 0x8E, 0x18]));
        assert!(exits_at_once(&cfg, &[0x66, 0x1F]));
        // A 16-bit stack, a one-instruction block, the setting off.
        let stack16 = TranslateConfig {
            stack_size: StackSize::Bits16,
            ..cfg
        };
        assert!(exits_at_once(&stack16, &[0x1F]));
        let single = TranslateConfig {
            max_instructions: 1,
            ..cfg
        };
        assert!(exits_at_once(&single, &[0x8E, 0xD8]));
        assert!(exits_at_once(&TranslateConfig::default(), &[0x8E, 0xD8]));
        // FS is the scratch segment in user mode: GS loads inline there.
        let user = TranslateConfig {
            scratch: crate::translate::Scratch {
                segment: crate::translate::ScratchSegment::Fs,
                ..cfg.scratch
            },
            ..cfg
        };
        assert!(exits_at_once(&user, &[0x8E, 0xE0]));
        assert!(!exits_at_once(&user, &[0x8E, 0xE8]));
    }

    #[test]
    fn pushfd_inline_is_valid_and_keeps_the_block_going() {
        // pushfd; inc eax; ret
        let cfg = inline_cfg();
        let block = translate_valid(&cfg, &[0x9C, 0x40, 0xC3]);
        assert_spilled_before_restored(&block);
        let code: Vec<Code> = disasm(&block).iter().map(Instruction::code).collect();
        assert_eq!(code.iter().filter(|c| **c == Code::Pushfd).count(), 1);
        assert!(code.contains(&Code::Inc_r32));
        // The commit is the push of the merged image; after it the guest is past PUSHFD.
        let commit = block
            .side
            .entries
            .iter()
            .position(|e| matches!(e.origin, Origin::Inline { .. }))
            .unwrap();
        assert_eq!(block.side.entries[commit].guest, GuestEip::At(0x1000));
        assert_eq!(block.side.entries[commit + 1].guest, GuestEip::At(0x1001));
        // Stopped right after the host's PUSHFD, the guest is still at its PUSHFD with
        // one dword to take off the stack.
        let host = code.iter().position(|c| *c == Code::Pushfd).unwrap();
        assert_eq!(code[host + 1], Code::Pop_r32);
        let pop = &block.side.entries[host + 1];
        assert_eq!(
            (pop.guest, pop.restore_scratch),
            (GuestEip::AtPushed(0x1000), true)
        );
        let before_and_after: Vec<_> = block.side.entries[..commit]
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != host + 1)
            .map(|(_, e)| e.guest)
            .collect();
        assert!(before_and_after.iter().all(|g| *g == GuestEip::At(0x1000)));
        // A 16-bit PUSHF still exits.
        let o16 = translate_with(32, &[0x66, 0x9C], &cfg);
        assert!(matches!(
            o16.side.exits[0].kind,
            ExitKind::Sensitive(crate::Class::Pushf)
        ));
    }

    #[test]
    fn popfd_inline_is_valid_and_commits_with_the_virtual_if() {
        // popfd; inc eax; ret
        let cfg = inline_cfg();
        let block = translate_valid(&cfg, &[0x9D, 0x40, 0xC3]);
        assert_spilled_before_restored(&block);
        let code: Vec<Code> = disasm(&block).iter().map(Instruction::code).collect();
        assert!(!code.contains(&Code::Popfd), "no host POPFD");
        assert!(code.contains(&Code::Sahf) && code.contains(&Code::Inc_r32));
        let exits: Vec<_> = block.side.exits.iter().map(|e| e.kind).collect();
        assert!(
            exits.contains(&ExitKind::Sensitive(crate::Class::Popf)),
            "TF set"
        );
        assert!(exits.contains(&ExitKind::InterruptDue));
        let entries = &block.side.entries;
        let commit = entries
            .iter()
            .position(|e| matches!(e.origin, Origin::Inline { .. }))
            .unwrap();
        assert_eq!(code[commit], Code::Mov_rm8_r8);
        assert_eq!(code[commit - 1], Code::Lea_r32_m);
        assert_eq!(entries[commit].guest, GuestEip::AtPopped(0x1000));
        assert_eq!(entries[commit - 1].guest, GuestEip::At(0x1000));
        assert!(entries[commit].restore_eax && entries[commit].restore_scratch);
        assert_eq!(entries[commit + 1].guest, GuestEip::At(0x1001));
        // Of the expansion, only the read of the image can fault.
        let faulting = entries[..commit].iter().filter(|e| e.can_fault).count();
        assert_eq!(faulting, 1, "the image read");
        // A 16-bit stack, a 16-bit POPF or a one-instruction block exits.
        let stack16 = TranslateConfig {
            stack_size: StackSize::Bits16,
            ..inline_cfg()
        };
        for (bytes, cfg) in [
            (&[0x9D][..], stack16),
            (&[0x66, 0x9D][..], inline_cfg()),
            (
                &[0x9D][..],
                TranslateConfig {
                    max_instructions: 1,
                    ..inline_cfg()
                },
            ),
        ] {
            let b = translate_with(32, bytes, &cfg);
            assert!(matches!(
                b.side.exits[0].kind,
                ExitKind::Sensitive(crate::Class::Popf)
            ));
        }
    }

    #[test]
    fn selector_reads_become_immediates() {
        let cfg = TranslateConfig {
            selectors: Some([0x7b, 0x60, 0x68, 0x7b, 0xd8, 0]),
            ..TranslateConfig::default()
        };
        // push ds; mov eax, fs; mov ax, cs; mov [eax], ds; ret
        let block = translate_valid(
            &cfg,
            &[0x1E, 0x8C, 0xE0, 0x66, 0x8C, 0xC8, 0x8C, 0x18, 0xC3],
        );
        let out = disasm(&block);
        let imms: Vec<(Code, u64)> = out
            .iter()
            .filter(|i| {
                matches!(
                    i.code(),
                    Code::Pushd_imm32 | Code::Mov_r32_imm32 | Code::Mov_r16_imm16
                )
            })
            .map(|i| (i.code(), i.immediate(i.op_count() - 1)))
            .collect();
        assert_eq!(
            imms,
            [
                (Code::Pushd_imm32, 0x7b),
                (Code::Mov_r32_imm32, 0xd8),
                (Code::Mov_r16_imm16, 0x60)
            ]
        );
        // The store of a selector to memory leaves for the monitor.
        assert!(matches!(
            block.side.exits[0].kind,
            ExitKind::Sensitive(crate::Class::MovFromSreg)
        ));
    }

    #[test]
    fn selector_reads_read_the_monitors_slots() {
        let cfg = TranslateConfig::default();
        // push ds; mov eax, fs; mov ax, cs; push gs (the reserved register); mov [eax], ds
        let block = translate_valid(
            &cfg,
            &[
                0x1E, 0x8C, 0xE0, 0x66, 0x8C, 0xC8, 0x0F, 0xA8, 0x8C, 0x18, 0xC3,
            ],
        );
        let out = disasm(&block);
        let scratch = cfg.scratch.segment.register();
        let slot = |n: u32| crate::translate::SLOT_SELECTORS + 4 * n;
        let reads: Vec<(Code, u32)> = out
            .iter()
            .filter(|i| i.op_count() > 0 && i.memory_segment() == scratch)
            .map(|i| (i.code(), i.memory_displacement32() - cfg.scratch.base))
            .filter(|&(_, at)| (slot(0)..slot(6)).contains(&at))
            .collect();
        assert_eq!(
            reads,
            [
                (Code::Push_rm32, slot(3)),
                (Code::Mov_r32_rm32, slot(4)),
                (Code::Mov_r16_rm16, slot(1)),
                (Code::Push_rm32, slot(5)),
            ]
        );
        assert!(matches!(
            block.side.exits[0].kind,
            ExitKind::Sensitive(crate::Class::MovFromSreg)
        ));
    }

    #[test]
    fn gs_operands_are_rebased_onto_flat_addressing() {
        let cfg = TranslateConfig {
            gs_rebase: Some(0x0847_9380),
            scratch: crate::translate::Scratch {
                segment: crate::translate::ScratchSegment::Fs,
                base: 0xFFFF_E000,
            },
            ..TranslateConfig::default()
        };
        // push dword gs:[eax]; mov ecx, gs:[0xffffffb4]; lea edx, gs:[eax+4]; ret
        let bytes = [
            0x65, 0xFF, 0x30, 0x65, 0x8B, 0x0D, 0xB4, 0xFF, 0xFF, 0xFF, 0x65, 0x8D, 0x50, 0x04,
            0xC3,
        ];
        let block = translate_with(32, &bytes, &cfg);
        let out = disasm(&block);
        let push = out.iter().find(|i| i.code() == Code::Push_rm32).unwrap();
        assert_eq!(push.segment_prefix(), Register::None);
        assert_eq!(push.memory_base(), Register::EAX);
        assert_eq!(push.memory_displacement32(), 0x0847_9380);
        let mov = out
            .iter()
            .find(|i| {
                i.code() == Code::Mov_r32_rm32
                    && i.op0_register() == Register::ECX
                    && i.segment_prefix() == Register::None
            })
            .unwrap();
        assert_eq!(
            mov.memory_displacement32(),
            0x0847_9334,
            "wrapped past 4 GiB"
        );
        let lea = out.iter().find(|i| i.code() == Code::Lea_r32_m).unwrap();
        assert_eq!(lea.memory_displacement32(), 4, "LEA keeps its offset");
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
