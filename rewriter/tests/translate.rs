//! The block translator through its public interface: relocation of every near branch
//! form in 16- and 32-bit code (with `66`/`67` prefixes), and properties on random
//! code: every block the translator makes passes the validator, its side table covers
//! it, and (against capstone) every IDENT instruction is the guest's instruction.
//!
//! Running translated blocks against a reference needs the engine (a host code segment
//! and the gate); that is tested there, not here.

// reason: a test builds and checks its own fixtures; an index or unwrap that fails
// stops it with the place, which is what it should do.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use capstone::arch::x86::ArchMode;
use capstone::prelude::*;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic};
use proptest::prelude::*;
use rewriter::translate::{
    translate_block, validate, Block, CodeReader, CodeSegment, CodeSize, ExitKind, Gate, GuestPage,
    GuestPages, Origin, Refusal, Rules, Scratch, ScratchSegment, StackSize, TranslateConfig,
};

const TC: u32 = 0xE000_0000;
const TC_END: u64 = 0xE100_0000;
const EIP: u32 = 0x1000;

fn segment(bitness: u32) -> CodeSegment {
    match bitness {
        16 => CodeSegment::real16(0),
        _ => CodeSegment::FLAT32,
    }
}

fn translate(bitness: u32, bytes: &[u8]) -> Block {
    let code = GuestPages::flat(EIP, bytes);
    let cfg = TranslateConfig::default();
    let block = translate_block(&code, EIP, segment(bitness), TC, &cfg).expect("translates");
    validate(&block.bytes, TC, &Rules::new(&cfg, u64::from(TC)..TC_END)).expect("valid");
    block
}

fn disasm(block: &Block) -> Vec<Instruction> {
    Decoder::with_ip(
        32,
        &block.bytes,
        u64::from(block.tc_address),
        DecoderOptions::NONE,
    )
    .into_iter()
    .collect()
}

/// The targets of the block's direct exits, in address order (its other exits are
/// left out: the HLT a test puts after a branch).
fn direct_targets(block: &Block) -> Vec<u32> {
    block
        .side
        .exits
        .iter()
        .filter_map(|e| match e.kind {
            ExitKind::Direct { target } => Some(target),
            ExitKind::Sensitive(_) => None,
            other => panic!("unexpected exit {other:?}"),
        })
        .collect()
}

/// How a guest branch must come out of the translator.
enum Expect {
    /// JMP: one chainable exit to the target.
    Jump(u32),
    /// A conditional or counted branch: `code` (rel8, 32-bit operand size) to the taken
    /// stub, then the fall-through stub, then the taken one.
    Branch { code: Code, taken: u32, fall: u32 },
    /// CALL: a push of the guest return address (`push`: the push's code), then one
    /// chainable exit to the target.
    Call { push: Code, ret: u32, target: u32 },
}

#[rustfmt::skip]
const RELOCATIONS: &[(u32, &[u8], Expect)] = &[
    // 32-bit code.
    (32, &[0xEB, 0x10], Expect::Jump(0x1012)),
    (32, &[0xEB, 0xFE], Expect::Jump(0x1000)),
    (32, &[0xE9, 0x00, 0x01, 0x00, 0x00], Expect::Jump(0x1105)),
    (32, &[0xE9, 0x00, 0x00, 0x00, 0x80], Expect::Jump(0x8000_1005)),
    // A 16-bit operand size wraps the target at 64 KiB.
    (32, &[0x66, 0xE9, 0x00, 0xF0], Expect::Jump(0x0004)),
    (32, &[0x74, 0x10], Expect::Branch { code: Code::Je_rel32_32, taken: 0x1012, fall: 0x1002 }),
    (32, &[0x7F, 0x80], Expect::Branch { code: Code::Jg_rel32_32, taken: 0x0F82, fall: 0x1002 }),
    (32, &[0x0F, 0x85, 0x00, 0x01, 0x00, 0x00], Expect::Branch { code: Code::Jne_rel32_32, taken: 0x1106, fall: 0x1006 }),
    (32, &[0x66, 0x0F, 0x84, 0x00, 0xF0], Expect::Branch { code: Code::Je_rel32_32, taken: 0x0005, fall: 0x1005 }),
    // A branch hint prefix changes nothing.
    (32, &[0x3E, 0x72, 0x10], Expect::Branch { code: Code::Jb_rel32_32, taken: 0x1013, fall: 0x1003 }),
    (32, &[0xE2, 0xFE], Expect::Branch { code: Code::Loop_rel8_32_ECX, taken: 0x1000, fall: 0x1002 }),
    // 67: the counter is CX.
    (32, &[0x67, 0xE2, 0xFD], Expect::Branch { code: Code::Loop_rel8_32_CX, taken: 0x1000, fall: 0x1003 }),
    // 66: the target wraps at 64 KiB, the TC's LOOP has no 66 (it would truncate the TC address).
    (32, &[0x66, 0xE2, 0xFD], Expect::Branch { code: Code::Loop_rel8_32_ECX, taken: 0x1000, fall: 0x1003 }),
    (32, &[0xE1, 0x10], Expect::Branch { code: Code::Loope_rel8_32_ECX, taken: 0x1012, fall: 0x1002 }),
    (32, &[0x67, 0xE0, 0x10], Expect::Branch { code: Code::Loopne_rel8_32_CX, taken: 0x1013, fall: 0x1003 }),
    (32, &[0xE3, 0x10], Expect::Branch { code: Code::Jecxz_rel8_32, taken: 0x1012, fall: 0x1002 }),
    (32, &[0x67, 0xE3, 0x10], Expect::Branch { code: Code::Jcxz_rel8_32, taken: 0x1013, fall: 0x1003 }),
    (32, &[0xE8, 0x00, 0x01, 0x00, 0x00], Expect::Call { push: Code::Pushd_imm32, ret: 0x1005, target: 0x1105 }),
    (32, &[0xE8, 0xFB, 0xFF, 0xFF, 0xFF], Expect::Call { push: Code::Pushd_imm32, ret: 0x1005, target: 0x1000 }),
    (32, &[0x66, 0xE8, 0x00, 0xF0], Expect::Call { push: Code::Push_imm16, ret: 0x1004, target: 0x0004 }),
    // 16-bit code.
    (16, &[0xEB, 0x10], Expect::Jump(0x1012)),
    (16, &[0xE9, 0x00, 0xF0], Expect::Jump(0x0003)),
    (16, &[0x66, 0xE9, 0x00, 0x01, 0x00, 0x00], Expect::Jump(0x1106)),
    (16, &[0x74, 0x10], Expect::Branch { code: Code::Je_rel32_32, taken: 0x1012, fall: 0x1002 }),
    (16, &[0x0F, 0x84, 0xFD, 0xFF], Expect::Branch { code: Code::Je_rel32_32, taken: 0x1001, fall: 0x1004 }),
    (16, &[0xE2, 0xFE], Expect::Branch { code: Code::Loop_rel8_32_CX, taken: 0x1000, fall: 0x1002 }),
    (16, &[0x67, 0xE2, 0xFD], Expect::Branch { code: Code::Loop_rel8_32_ECX, taken: 0x1000, fall: 0x1003 }),
    (16, &[0x66, 0x67, 0xE1, 0xFC], Expect::Branch { code: Code::Loope_rel8_32_ECX, taken: 0x1000, fall: 0x1004 }),
    (16, &[0xE3, 0x10], Expect::Branch { code: Code::Jcxz_rel8_32, taken: 0x1012, fall: 0x1002 }),
    (16, &[0x67, 0xE3, 0x10], Expect::Branch { code: Code::Jecxz_rel8_32, taken: 0x1013, fall: 0x1003 }),
    (16, &[0xE8, 0x00, 0x01], Expect::Call { push: Code::Push_imm16, ret: 0x1003, target: 0x1103 }),
    (16, &[0x66, 0xE8, 0x00, 0x01, 0x00, 0x00], Expect::Call { push: Code::Pushd_imm32, ret: 0x1006, target: 0x1106 }),
];

#[test]
fn near_branches_are_relocated_to_chainable_exits() {
    for (bitness, bytes, expect) in RELOCATIONS {
        let what = format!("{bytes:02x?} in {bitness}-bit code");
        // A NOP first, so that the branch is not the entry; a HLT after, where a block
        // that goes on past a conditional jump ends.
        let guest = [&[0x90][..], bytes, &[0xF4]].concat();
        let block = translate(*bitness, &guest);
        let body: Vec<Instruction> = disasm(&block)
            .into_iter()
            .skip_while(|i| {
                let offset = u32::try_from(i.ip()).unwrap() - TC;
                offset < block.entry_offset + 1
            })
            .collect();
        // The NOP moves every target by one.
        match expect {
            Expect::Jump(target) => {
                assert_eq!(direct_targets(&block), [target + 1], "{what}");
            }
            Expect::Branch { code, taken, fall } => {
                // Past the NOP that aligns a jcc rel32's displacement.
                let branch = *body.iter().find(|i| i.mnemonic() != Mnemonic::Nop).unwrap();
                assert_eq!(branch.code(), *code, "{what}");
                let target = u32::try_from(branch.near_branch_target()).unwrap() - TC;
                let counted = matches!(
                    code.mnemonic(),
                    Mnemonic::Loop
                        | Mnemonic::Loope
                        | Mnemonic::Loopne
                        | Mnemonic::Jcxz
                        | Mnemonic::Jecxz
                );
                if counted {
                    assert_eq!(direct_targets(&block), [fall + 1, taken + 1], "{what}");
                    // The conditional jumps past the fall-through stub, to the taken one.
                    let fall_stub = block.side.exits[0];
                    let taken_stub = block.side.exits[1];
                    assert!(
                        target > fall_stub.offset && target <= taken_stub.offset,
                        "{what}"
                    );
                    let padding = &block.bytes[usize::try_from(target).unwrap()
                        ..usize::try_from(taken_stub.offset).unwrap()];
                    assert!(
                        Decoder::new(32, padding, DecoderOptions::NONE)
                            .into_iter()
                            .all(|i| i.mnemonic() == Mnemonic::Nop),
                        "{what}: only padding before the taken stub"
                    );
                } else {
                    // A side exit: the block goes on at the fall-through (to the HLT);
                    // the jump enters the taken stub, after the block's end.
                    assert_eq!(direct_targets(&block), [taken + 1], "{what}");
                    let hlt = block.side.exits[0];
                    assert_eq!(
                        hlt.guest,
                        rewriter::translate::GuestEip::At(fall + 1),
                        "{what}"
                    );
                    assert!(matches!(hlt.kind, ExitKind::Sensitive(_)), "{what}");
                    let taken_stub = block.side.exits[1];
                    assert_eq!(target, taken_stub.offset, "{what}");
                    assert!(taken_stub.offset > hlt.offset, "{what}");
                }
            }
            Expect::Call { push, ret, target } => {
                let push_instr = body[0];
                assert_eq!(push_instr.code(), *push, "{what}");
                assert_eq!(push_instr.immediate(0), u64::from(ret + 1), "{what}");
                assert_eq!(direct_targets(&block), [target + 1], "{what}");
            }
        }
    }
}

/// A block translated for one GS base, its rebased displacements moved by the difference,
/// is the block translated for another: the engine moves blocks from one process's TLS
/// base to the next that way.
#[test]
fn gs_sites_move_a_block_onto_another_base() {
    // mov eax, gs:[0xfffffff8]; mov ecx, gs:[ebx+0x14]; add gs:[esi*4+0x100], edx; hlt
    let bytes = [
        0x65, 0xA1, 0xF8, 0xFF, 0xFF, 0xFF, 0x65, 0x8B, 0x4B, 0x14, 0x65, 0x01, 0x14, 0xB5, 0x00,
        0x01, 0x00, 0x00, 0xF4,
    ];
    let code = GuestPages::flat(EIP, &bytes);
    let at = |base: u32| {
        let default = TranslateConfig::default();
        // User code: FS is the scratch segment and GS the guest's.
        let cfg = TranslateConfig {
            gs_rebase: Some(base),
            scratch: Scratch {
                segment: ScratchSegment::Fs,
                ..default.scratch
            },
            ..default
        };
        let block = translate_block(&code, EIP, CodeSegment::FLAT32, TC, &cfg).expect("translates");
        validate(&block.bytes, TC, &Rules::new(&cfg, u64::from(TC)..TC_END)).expect("valid");
        block
    };
    let from = at(0x0847_9380);
    assert_eq!(from.gs_sites.len(), 3, "every GS operand is rebased");
    let displacement = |bytes: &[u8], site: u32| {
        let s = site as usize;
        u32::from_le_bytes(bytes[s..s + 4].try_into().unwrap())
    };
    assert_eq!(displacement(&from.bytes, from.gs_sites[0]), 0x0847_9378);
    // Base 8 wraps the first displacement to 0: it must stay a 32-bit field.
    for base in [0xB7F0_1000u32, 8] {
        let to = at(base);
        assert_eq!(to.gs_sites, from.gs_sites);
        let mut moved = from.bytes.clone();
        for &site in &from.gs_sites {
            let v = displacement(&moved, site).wrapping_add(base.wrapping_sub(0x0847_9380));
            let s = site as usize;
            moved[s..s + 4].copy_from_slice(&v.to_le_bytes());
        }
        assert_eq!(moved, to.bytes, "base {base:#x}");
    }
}

#[test]
fn far_pointer_immediates_are_exits_and_never_reach_the_output() {
    for (bitness, bytes) in [
        (32, &[0xEA, 0x78, 0x56, 0x34, 0x12, 0x33, 0x00][..]),
        (32, &[0x9A, 0x78, 0x56, 0x34, 0x12, 0x33, 0x00]),
        (16, &[0xEA, 0x34, 0x12, 0x33, 0x00]),
        (16, &[0x66, 0x9A, 0x78, 0x56, 0x34, 0x12, 0x33, 0x00]),
    ] {
        let block = translate(bitness, bytes);
        assert!(
            matches!(block.side.exits[..], [e] if matches!(e.kind, ExitKind::Sensitive(_))),
            "{bytes:02x?}"
        );
        // The selector 0x33 (the host's 64-bit code) appears nowhere as a far pointer.
        assert!(disasm(&block).iter().all(|i| !matches!(
            i.code(),
            Code::Jmp_ptr1632 | Code::Jmp_ptr1616 | Code::Call_ptr1632 | Code::Call_ptr1616
        )));
    }
}

#[test]
fn sixteen_bit_code_hiding_a_far_jump_stays_sixteen_bit() {
    // As 16-bit code: mov ax, 0x00EA; add [bx+si], al; ... As 32-bit code the same bytes
    // would be `mov eax, ...` followed by a far jump to the 64-bit selector.
    let bytes = [0xB8, 0xEA, 0x00, 0x00, 0x00, 0x00, 0x33, 0x00, 0xF4];
    let block = translate(16, &bytes);
    let ident: Vec<Code> = disasm(&block)
        .iter()
        .zip(&block.side.entries)
        .filter(|(_, e)| matches!(e.origin, Origin::Ident { .. }))
        .map(|(i, _)| i.code())
        .collect();
    assert_eq!(ident[0], Code::Mov_r16_imm16);
    assert!(!ident
        .iter()
        .any(|c| matches!(c, Code::Jmp_ptr1616 | Code::Jmp_ptr1632)));
}

#[test]
fn a_block_records_the_pages_its_straddling_instruction_came_from() {
    let mut code = GuestPages::new();
    let mut tail = vec![0u8; 0x1000];
    // 16-bit code in a segment at 0x10000: mov ax, 0x1234 straddles linear 0x12000.
    tail[0xFFE..].copy_from_slice(&[0x90, 0xB8]);
    code.map(0x1_1000, 0x9_9000, &tail);
    code.map(0x1_2000, 0x4_4000, &[0x34, 0x12, 0xC3]);
    let cs = CodeSegment {
        base: 0x1_0000,
        limit: 0xFFFF,
        size: CodeSize::Bits16,
    };
    let cfg = TranslateConfig::default();
    let block = translate_block(&code, 0x1FFE, cs, TC, &cfg).unwrap();
    assert_eq!(
        block.pages,
        [
            GuestPage {
                linear: 0x1_1000,
                phys: 0x9_9000
            },
            GuestPage {
                linear: 0x1_2000,
                phys: 0x4_4000
            },
        ]
    );
    assert_eq!(block.guest_end, 0x2002);
    assert_eq!(direct_targets(&block), [0x2002]);

    code.unmap(0x1_2000);
    assert_eq!(
        translate_block(&code, 0x1FFF, cs, TC, &cfg),
        Err(Refusal::Fetch { linear: 0x1_2000 })
    );
}

// ---------------------------------------------------------------------------------
// Properties on random code.

/// Real instructions (branches of every form, sensitive ones, prefixes), mixed with
/// random bytes.
const PIECES: &[&[u8]] = &[
    &[0x90],
    // Segment loads: MOV DS, AX; POP ES; MOV FS, [EBX+8]; MOV GS, CX; 16-bit addressing.
    &[0x8E, 0xD8],
    &[0x07],
    &[0x8E, 0x63, 0x08],
    &[0x8E, 0xE9],
    &[0x67, 0x8E, 0x1F],
    &[0x55],
    &[0x89, 0xE5],
    &[0x8B, 0x45, 0x08],
    &[0x66, 0x8B, 0x40, 0xFE],
    &[0x67, 0x8B, 0x40, 0xFE],
    &[0xF3, 0xA5],
    &[0xF0, 0x0F, 0xB1, 0x0A],
    &[0x2E, 0x8B, 0x00],
    &[0x65, 0x8B, 0x00],
    &[0x64, 0x8B, 0x00],
    &[0xEB, 0x10],
    &[0x66, 0xE9, 0x00, 0xF0],
    &[0x74, 0xF0],
    &[0x0F, 0x84, 0x00, 0x01, 0x00, 0x00],
    &[0xE2, 0xFE],
    &[0x67, 0xE3, 0x10],
    &[0xE8, 0x10, 0, 0, 0],
    &[0x66, 0xE8, 0x10, 0],
    &[0xC3],
    &[0xC2, 0x08, 0x00],
    &[0x66, 0xC3],
    &[0xFF, 0xE0],
    &[0xFF, 0x24, 0x85, 0, 0x20, 0, 0],
    &[0xFF, 0xD0],
    &[0xFF, 0x17],
    &[0xEA, 0, 0, 0, 0, 0x33, 0],
    &[0x9A, 0, 0, 0, 0, 0x33, 0],
    &[0xFF, 0x2D, 0, 0x20, 0, 0],
    &[0xCB],
    &[0xCF],
    &[0xFA],
    &[0x9C],
    &[0xCD, 0x80],
    &[0x0F, 0x34],
    &[0x8E, 0xD8],
    &[0xD9, 0xE8],
    &[0x0F, 0x0B],
    &[0xF7, 0xF1],
    &[0xF7, 0x73, 0x08],
    &[0xF6, 0xFF],
    &[0x66, 0xF7, 0x7D, 0x08],
    &[0x67, 0xF7, 0x37],
    &[
        0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x90,
    ],
];

fn code() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => (0..PIECES.len()).prop_map(|i| PIECES[i].to_vec()),
        2 => proptest::collection::vec(any::<u8>(), 1..8),
    ];
    proptest::collection::vec(piece, 1..40).prop_map(|p| p.concat())
}

fn config() -> impl Strategy<Value = TranslateConfig> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        1usize..40,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(near, fs, stack16, exit_fpu, max, inline_if, exit_pause, segments)| TranslateConfig {
                gate: if near {
                    Gate::Near(0xFFFF_8000)
                } else {
                    Gate::FarPointer(0xFFFF_F000)
                },
                scratch: Scratch {
                    segment: if fs {
                        ScratchSegment::Fs
                    } else {
                        ScratchSegment::Gs
                    },
                    base: 0xFFFF_E000,
                },
                lookup_table: 0xFF00_0000,
                stack_size: if stack16 {
                    StackSize::Bits16
                } else {
                    StackSize::Bits32
                },
                max_instructions: max,
                inline_if,
                selectors: inline_if.then_some([0x23, 0x1b, 0x23, 0x23, 0x3b, 0x33]),
                gs_rebase: (!inline_if && exit_fpu).then_some(0x0847_9380),
                exit_fpu,
                exit_pause,
                inline_segment_loads: segments,
            },
        )
}

/// Guest code whose divisions and BOUNDs are all translated behind their check (of the
/// divisor, of the bounds), or none.
struct Checked<'a> {
    pages: &'a GuestPages,
    checked: bool,
}

impl CodeReader for Checked<'_> {
    fn fetch(&self, linear: u32, buf: &mut [u8]) -> Option<u64> {
        self.pages.fetch(linear, buf)
    }

    fn fault_checked(&self, _phys: u64) -> bool {
        self.checked
    }
}

/// Guest code placed so that it may cross a page end: `start` bytes into the page at
/// linear 0x0040_0000, the next page mapped elsewhere (or not at all).
struct Placed {
    pages: GuestPages,
    cs: CodeSegment,
    /// EIP of the code's first byte.
    eip: u32,
    bytes: Vec<u8>,
}

fn placed(bitness: u32, start: u32, bytes: Vec<u8>, second_page: bool) -> Placed {
    const PAGE: u32 = 0x0040_0000;
    let linear = PAGE + start;
    let mut pages = GuestPages::new();
    let mut first = vec![0u8; 0x1000];
    let n = bytes.len().min(usize::try_from(0x1000 - start).unwrap());
    first[usize::try_from(start).unwrap()..][..n].copy_from_slice(&bytes[..n]);
    pages.map(PAGE, 0x0123_4000, &first);
    if second_page {
        pages.map(PAGE + 0x1000, 0x0056_7000, &bytes[n..]);
    }
    let (cs, eip) = match bitness {
        // A 16-bit segment whose base puts EIP 0x1000 at the page.
        16 => (
            CodeSegment {
                base: PAGE - 0x1000,
                limit: 0xFFFF,
                size: CodeSize::Bits16,
            },
            0x1000 + start,
        ),
        _ => (CodeSegment::FLAT32, linear),
    };
    Placed {
        pages,
        cs,
        eip,
        bytes,
    }
}

fn placement() -> impl Strategy<Value = (u32, u32, Vec<u8>, bool, usize)> {
    (
        prop_oneof![Just(16u32), Just(32u32)],
        prop_oneof![0u32..0x1000, 0xFC0u32..0x1000],
        code(),
        any::<bool>(),
        any::<usize>(),
    )
        .prop_map(|(bitness, start, bytes, second, entry)| (bitness, start, bytes, second, entry))
}

/// Checks everything a block must satisfy besides the validator.
fn check_block(block: &Block, cfg: &TranslateConfig) -> Result<(), TestCaseError> {
    let rules = Rules::new(cfg, u64::from(TC)..TC_END);
    prop_assert_eq!(validate(&block.bytes, TC, &rules), Ok(()));
    // The side table covers every byte, in order.
    let mut at = 0;
    for entry in &block.side.entries {
        prop_assert_eq!(entry.offset, at);
        at = entry.end();
    }
    prop_assert_eq!(at as usize, block.bytes.len());
    // Each exit names itself and its slot is aligned; one that keeps its instruction
    // leaves with the guest at that instruction, and no chainable one keeps any.
    for stub in &block.side.exits {
        prop_assert_eq!(block.exit_for(TC + stub.offset), Some(stub));
        if let Some(slot) = stub.chain_slot {
            prop_assert_eq!((TC + slot.rel32) % 4, 0);
        }
        if let Some(instr) = block.side.instruction(stub) {
            use rewriter::translate::GuestEip;
            prop_assert_eq!(stub.guest, GuestEip::At(u32::try_from(instr.ip()).unwrap()));
            prop_assert!(stub.chain_slot.is_none());
        }
    }
    // IDENT instructions are the guest's, in order from the entry.
    let mut eip = block.guest_eip;
    for entry in &block.side.entries {
        if let Origin::Ident { guest_len } | Origin::Inline { guest_len } = entry.origin {
            use rewriter::translate::GuestEip;
            // An inline commit may find the stack already moved (POPFD): still at `eip`.
            let at = match entry.guest {
                GuestEip::AtPopped(e) | GuestEip::AtPushed(e) => GuestEip::At(e),
                g => g,
            };
            prop_assert_eq!(at, GuestEip::At(eip));
            eip += u32::from(guest_len);
        }
    }
    // Chaining every exit to some block entry keeps the block valid.
    let mut chained = block.bytes.clone();
    let entries = [TC + 0x8000];
    for (i, stub) in block.side.exits.iter().enumerate() {
        if stub.chain_slot.is_some() {
            block
                .chain(i, entries[0])
                .unwrap()
                .apply(&mut chained)
                .unwrap();
        }
    }
    prop_assert_eq!(
        validate(&chained, TC, &rules.with_entries(&entries)),
        Ok(())
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Random code at a random entry either translates into a block the validator
    /// accepts, or is refused with the fault the CPU would raise. Never a panic, never
    /// an internal error.
    #[test]
    fn random_code_translates_to_valid_blocks_or_faults(
        (bitness, start, bytes, second, entry) in placement(),
        cfg in config(),
        checked in any::<bool>(),
    ) {
        let p = placed(bitness, start, bytes, second);
        let entry = p.eip + u32::try_from(entry % p.bytes.len()).unwrap();
        let reader = Checked { pages: &p.pages, checked };
        match translate_block(&reader, entry, p.cs, TC, &cfg) {
            Ok(block) => check_block(&block, &cfg)?,
            // The entry or a straddle into it lies in the unmapped second page.
            Err(Refusal::Fetch { linear }) => {
                prop_assert!(!second);
                prop_assert!(linear >= 0x0040_1000);
                prop_assert!(linear == 0x0040_1000 || linear == p.cs.base + entry);
            }
            Err(Refusal::SegmentLimit { .. }) => {}
            Err(other) => prop_assert!(false, "internal refusal {other}"),
        }
    }

    /// Every IDENT instruction in the output decodes (with capstone, an independent
    /// decoder) to the same instruction as the guest's bytes in the guest's mode.
    #[test]
    fn ident_instructions_match_the_guest_under_capstone(
        (bitness, start, bytes, second, entry) in placement(),
        cfg in config(),
    ) {
        let p = placed(bitness, start, bytes, second);
        let entry = p.eip + u32::try_from(entry % p.bytes.len()).unwrap();
        let Ok(block) = translate_block(&p.pages, entry, p.cs, TC, &cfg) else {
            return Ok(());
        };
        let mismatches = ident_mismatches(&block, bitness, |eip, len| read(&p, eip, len));
        prop_assert!(mismatches.is_empty(), "{:#?}", mismatches);
    }
}

/// Seeded random 16-byte windows in both code sizes, with FPU instructions allowed to
/// run natively so that they are compared too.
#[test]
fn ident_instructions_match_the_guest_on_random_windows() {
    let mut seed = 0x5EED_1DE7_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed.to_le_bytes()
    };
    let cfg = TranslateConfig {
        exit_fpu: false,
        ..TranslateConfig::default()
    };
    // TRANSLATE_WINDOWS=n runs a longer sweep.
    let windows: usize = std::env::var("TRANSLATE_WINDOWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let mut compared = 0;
    for bitness in [16, 32] {
        for _ in 0..windows {
            let bytes = [next(), next()].concat();
            let code = GuestPages::flat(EIP, &bytes);
            let Ok(block) = translate_block(&code, EIP, segment(bitness), TC, &cfg) else {
                continue;
            };
            let mismatches = ident_mismatches(&block, bitness, |eip, len| {
                use rewriter::translate::CodeReader;
                let mut b = vec![0u8; usize::from(len)];
                code.fetch(eip, &mut b).expect("mapped");
                b
            });
            assert!(mismatches.is_empty(), "{mismatches:#?}");
            compared += block
                .side
                .entries
                .iter()
                .filter(|e| matches!(e.origin, Origin::Ident { .. }))
                .count();
        }
    }
    assert!(compared > 20_000, "only {compared} instructions compared");
}

/// A known way in which capstone's text for the guest's instruction and for its
/// translation differ although the two are the same instruction.
struct Known {
    name: &'static str,
    reason: &'static str,
    matches: fn(&Mismatch) -> bool,
}

#[derive(Debug)]
#[allow(dead_code)] // read through Debug in failure messages
struct Mismatch {
    bitness: u32,
    guest: Vec<u8>,
    out: Vec<u8>,
    want: String,
    got: String,
}

const KNOWN: &[Known] = &[
    Known {
        name: "16-bit displacements in 32-bit code",
        reason: "With a 67 prefix, 32-bit code uses 16-bit addressing and a 16-bit \
                 displacement; capstone prints that displacement sign-extended to 32 \
                 bits (0xffffe1ea for 0xe1ea). The ModRM and displacement bytes are the \
                 guest's.",
        matches: |m| m.bitness == 16 && m.out.contains(&0x67) && unsign16(&m.got) == m.want,
    },
    Known {
        name: "CBW/CWD in 16-bit code",
        reason: "Capstone names 98 and 99 by their 32-bit forms (cwde, cdq) in 16-bit \
                 mode; the SDM's are CBW and CWD, which 66 98 / 66 99 are in 32-bit code.",
        matches: |m| {
            m.bitness == 16
                && matches!(
                    (m.want.trim(), m.got.trim()),
                    ("cwde", "cbw") | ("cdq", "cwd")
                )
        },
    },
    Known {
        name: "XACQUIRE/XRELEASE prefix order",
        reason: "Capstone prints the HLE hint only when F2/F3 is the prefix next to the \
                 opcode; the encoder puts 66/67/F0 in its canonical order. The bytes \
                 carry the same prefixes.",
        matches: |m| strip_hints(&m.want) == strip_hints(&m.got),
    },
    Known {
        name: "LOCK and 66 before an HLE hint",
        reason: "With F0 66 67 F2 in front of the opcode (the encoder's canonical order), \
                 capstone drops the LOCK and the operand-size prefix it read before the \
                 F2/F3 hint and prints a locked word CMPXCHG as an unlocked dword one. The \
                 bytes carry the guest's prefixes; iced decodes them back to the guest's \
                 instruction.",
        matches: |m| {
            let plain = |t: &str| {
                strip_hints(t)
                    .replace("lock ", "")
                    .replace("dword ptr", "word ptr")
            };
            m.guest.contains(&0xF0)
                && (m.guest.contains(&0xF2) || m.guest.contains(&0xF3))
                && plain(&m.want) == plain(&m.got)
        },
    },
    Known {
        name: "MPX in 16-bit code",
        reason: "iced and capstone disagree on which MPX form 0F 1A/0F 1B are without a \
                 66 prefix in 16-bit code; MPX executes as NOPs on hosts without it (all \
                 of this machine kind), and the guest's CPUID does not offer it.",
        matches: |m| m.want.starts_with("bnd"),
    },
    Known {
        name: "vector registers 8-15 outside 64-bit mode",
        reason: "Outside 64-bit mode the CPU ignores the VEX/XOP register bits that would \
                 select XMM8-15 (vvvv bit 3, is4 bit 7; SDM 2.3.5), and iced decodes \
                 XMM0-7 as the CPU does, then encodes the ignored bits canonically; \
                 capstone names the registers as if in 64-bit mode.",
        matches: |m| low_vector_registers(&m.want) == m.got,
    },
    Known {
        name: "hint NOPs in 16-bit code",
        reason: "Capstone gives the reserved-NOP hint space (0F 18-0F 1F) a 32-bit operand \
                 in 16-bit mode; either way the instruction does nothing.",
        matches: |m| m.bitness == 16 && m.want.starts_with("nop") && m.got.starts_with("nop"),
    },
    Known {
        name: "mandatory 66 prefix in 16-bit code",
        reason: "Capstone reads 66 in 16-bit mode as an operand-size prefix only, so it \
                 decodes 66 0F 15 as UNPCKHPS and 66 66 0F 6F as MOVQ; the SDM (and iced) \
                 make 66 the mandatory prefix of UNPCKHPD and MOVDQA in every mode.",
        matches: |m| {
            m.bitness == 16
                && m.guest.contains(&0x66)
                && m.guest.contains(&0x0F)
                && (m.want.contains("mm") || m.got.contains("mm"))
        },
    },
    Known {
        name: "32-bit displacements in 16-bit code",
        reason: "Under a 67 prefix in 16-bit mode capstone consumes a 32-bit \
                 displacement but prints only its low 16 bits; the SDM, iced and the \
                 translation use all 32.",
        matches: |m| m.bitness == 16 && m.guest.contains(&0x67) && low16(&m.got) == m.want,
    },
];

/// `[0xffffXXXX` → `[0xXXXX` in capstone text.
fn unsign16(text: &str) -> String {
    text.replace("[0xffff", "[0x").replace(" 0xffff", " 0x")
}

/// XMM8-15, YMM8-15 and ZMM8-15 named as the registers the CPU uses outside 64-bit
/// mode (0-7).
fn low_vector_registers(text: &str) -> String {
    let mut text = text.to_string();
    for kind in ["xmm", "ymm", "zmm"] {
        for n in (8..16).rev() {
            text = text.replace(&format!("{kind}{n}"), &format!("{kind}{}", n - 8));
        }
    }
    text
}

/// Every hexadecimal number inside brackets cut to its low 16 bits, in capstone text.
fn low16(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        let digits: String = rest[at + 2..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        let value = u64::from_str_radix(&digits, 16).unwrap_or(0);
        let inside = out.matches('[').count() > out.matches(']').count();
        let shown = if inside { value & 0xFFFF } else { value };
        out.push_str(&format!("{shown:#x}"));
        rest = &rest[at + 2 + digits.len()..];
    }
    out.push_str(rest);
    out
}

fn strip_hints(text: &str) -> String {
    text.replace("xacquire ", "")
        .replace("xrelease ", "")
        .replace("lock ", "")
        .replace("rep ", "")
        .replace("repne ", "")
}

/// Every IDENT instruction of `block` whose capstone text differs from the guest's
/// (in the guest's mode), other than the [`KNOWN`] disagreements.
fn ident_mismatches(
    block: &Block,
    bitness: u32,
    read: impl Fn(u32, u8) -> Vec<u8>,
) -> Vec<Mismatch> {
    let guest_cs = capstone(bitness);
    let tc_cs = capstone(32);
    let mut found = Vec::new();
    for e in &block.side.entries {
        let Origin::Ident { guest_len } = e.origin else {
            continue;
        };
        let rewriter::translate::GuestEip::At(eip) = e.guest else {
            continue;
        };
        let guest = read(eip, guest_len);
        let out = block.bytes[e.offset as usize..e.end() as usize].to_vec();
        // Capstone rejects some instructions iced accepts (the existing decoder
        // differential lists them); nothing to compare with then.
        let Some(want) = text(&guest_cs, &guest) else {
            continue;
        };
        let got = text(&tc_cs, &out).unwrap_or_default();
        let m = Mismatch {
            bitness,
            guest,
            out,
            want,
            got,
        };
        if m.want != m.got && !KNOWN.iter().any(|k| (k.matches)(&m)) {
            found.push(m);
        }
    }
    found
}

#[test]
fn known_disagreements_are_documented() {
    for k in KNOWN {
        assert!(!k.name.is_empty() && k.reason.len() > 40, "{}", k.name);
    }
}

/// `len` guest bytes at `eip`, from the pages (they may run past the placed code).
fn read(p: &Placed, eip: u32, len: u8) -> Vec<u8> {
    use rewriter::translate::CodeReader;
    (0..u32::from(len))
        .map(|i| {
            let mut b = [0u8];
            p.pages.fetch(p.cs.base + eip + i, &mut b).expect("mapped");
            b[0]
        })
        .collect()
}

fn capstone(bitness: u32) -> Capstone {
    Capstone::new()
        .x86()
        .mode(if bitness == 16 {
            ArchMode::Mode16
        } else {
            ArchMode::Mode32
        })
        .build()
        .expect("capstone")
}

/// Capstone's text for the one instruction that is all of `bytes`.
fn text(cs: &Capstone, bytes: &[u8]) -> Option<String> {
    let insns = cs.disasm_count(bytes, 0, 1).ok()?;
    let insn = insns.iter().next()?;
    if insn.len() != bytes.len() {
        return None;
    }
    Some(format!(
        "{} {}",
        insn.mnemonic().unwrap_or("?"),
        insn.op_str().unwrap_or("")
    ))
}
