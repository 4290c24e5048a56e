//! Differential decoding: iced-x86 (which the rewriter trusts for instruction lengths)
//! against capstone, on seeded random byte windows and on the executable text of
//! Debian's i386 kernel. Wherever both decoders accept an instruction they must agree on
//! its length, except for the disagreement classes listed in [`KNOWN`], each with the
//! reason; anything else fails the test with examples.

// reason: a test builds and checks its own fixtures; an index or unwrap that fails
// stops it with the place, which is what it should do.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

#[path = "common/kernel.rs"]
mod kernel;

use std::collections::BTreeMap;

use capstone::arch::x86::ArchMode;
use capstone::prelude::*;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction};
use rewriter::{classify, Class};

const RANDOM_WINDOWS: usize = 1_000_000;
const SEED: u64 = 0x1A32_D1FF_5EED;

/// A known way in which the two decoders disagree about a length.
struct Known {
    name: &'static str,
    reason: &'static str,
    matches: fn(&Disagreement) -> bool,
}

#[derive(Clone, Debug)]
struct Disagreement {
    bytes: Vec<u8>,
    iced: Instruction,
    capstone_len: usize,
    capstone_text: String,
}

const KNOWN: &[Known] = &[Known {
    name: "ud0/ud1 ModRM",
    reason: "The Intel SDM gives UD0 (0F FF /r) and UD1 (0F B9 /r) a ModRM byte with \
             SIB and displacement; capstone decodes both as bare two-byte opcodes (AMD's \
             older definition). Linux emits `ud1 %esp,%ecx` (0F B9 CC) for its UBSAN and \
             bug traps and its #UD handler skips 3 bytes, so iced's length is the one the \
             guest relies on.",
    matches: |d| {
        matches!(
            d.iced.code(),
            Code::Ud0_r16_rm16 | Code::Ud0_r32_rm32 | Code::Ud1_r16_rm16 | Code::Ud1_r32_rm32
        ) && (d.capstone_text.starts_with("ud0") || d.capstone_text.starts_with("ud1"))
            && d.capstone_len < d.iced.len()
    },
}];

fn capstone() -> Capstone {
    Capstone::new()
        .x86()
        .mode(ArchMode::Mode32)
        .build()
        .expect("capstone x86-32")
}

/// Capstone's length and text for the instruction at the start of `bytes`.
fn capstone_decode(cs: &Capstone, bytes: &[u8], ip: u64) -> Option<(usize, String)> {
    let insns = cs.disasm_count(bytes, ip, 1).ok()?;
    let insn = insns.iter().next()?;
    Some((
        insn.len(),
        format!(
            "{} {}",
            insn.mnemonic().unwrap_or("?"),
            insn.op_str().unwrap_or("")
        ),
    ))
}

#[derive(Default)]
struct Tally {
    compared: u64,
    only_iced: u64,
    only_capstone: u64,
    /// Examples of what only one decoder accepts, by iced mnemonic or capstone text.
    only_iced_by: BTreeMap<String, (u64, String)>,
    only_capstone_by: BTreeMap<String, (u64, String)>,
    known: BTreeMap<&'static str, (u64, Vec<Disagreement>)>,
    unknown: BTreeMap<String, (u64, Vec<Disagreement>)>,
}

impl Tally {
    fn compare(&mut self, cs: &Capstone, bytes: &[u8], ip: u64, iced: &Instruction) {
        let cs_result = capstone_decode(cs, bytes, ip);
        match (iced.is_invalid(), cs_result) {
            (true, None) => {}
            (true, Some((_, text))) => {
                self.only_capstone += 1;
                let key = text.split(' ').next().unwrap_or("?").to_string();
                let e = self
                    .only_capstone_by
                    .entry(key)
                    .or_insert((0, format!("{:02X?} `{text}`", &bytes[..bytes.len().min(8)])));
                e.0 += 1;
            }
            (false, None) => {
                self.only_iced += 1;
                let e = self
                    .only_iced_by
                    .entry(format!("{:?}", iced.mnemonic()))
                    .or_insert((0, format!("{:02X?}", &bytes[..iced.len()])));
                e.0 += 1;
            }
            (false, Some((len, text))) => {
                self.compared += 1;
                if len == iced.len() {
                    return;
                }
                let d = Disagreement {
                    bytes: bytes[..bytes.len().min(16)].to_vec(),
                    iced: *iced,
                    capstone_len: len,
                    capstone_text: text,
                };
                let (count, examples) = match KNOWN.iter().find(|k| (k.matches)(&d)) {
                    Some(k) => self.known.entry(k.name).or_default(),
                    None => self
                        .unknown
                        .entry(format!("{:?}", iced.code()))
                        .or_default(),
                };
                *count += 1;
                if examples.len() < 3 {
                    examples.push(d);
                }
            }
        }
    }

    fn report(&self, what: &str) {
        eprintln!(
            "{what}: {} compared, {} only iced accepts, {} only capstone accepts",
            self.compared, self.only_iced, self.only_capstone
        );
        for (label, by) in [
            ("only iced", &self.only_iced_by),
            ("only capstone", &self.only_capstone_by),
        ] {
            let mut top: Vec<_> = by.iter().collect();
            top.sort_by_key(|b| std::cmp::Reverse(b.1 .0));
            let shown: Vec<String> = top
                .iter()
                .take(12)
                .map(|(k, (n, e))| format!("{k} {n} ({e})"))
                .collect();
            eprintln!("  {label}: {}", shown.join(", "));
        }
        for (name, (count, examples)) in &self.known {
            let reason = KNOWN
                .iter()
                .find(|k| k.name == *name)
                .map_or("", |k| k.reason);
            eprintln!(
                "  known {name}: {count}, e.g. {}\n    why: {reason}",
                show(&examples[0])
            );
        }
        for (code, (count, examples)) in &self.unknown {
            eprintln!("  UNKNOWN {code}: {count}");
            for e in examples {
                eprintln!("    {}", show(e));
            }
        }
    }

    fn assert_clean(&self, what: &str) {
        self.report(what);
        assert!(
            self.unknown.is_empty(),
            "{what}: length disagreements outside the known classes"
        );
    }
}

fn show(d: &Disagreement) -> String {
    let mut f = iced_x86::IntelFormatter::new();
    let mut text = String::new();
    iced_x86::Formatter::format(&mut f, &d.iced, &mut text);
    format!(
        "{:02X?}: iced {:?} `{text}` len {} / capstone `{}` len {}",
        d.bytes,
        d.iced.code(),
        d.iced.len(),
        d.capstone_text,
        d.capstone_len
    )
}

/// splitmix64: tiny, seedable and good enough to spread bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A 16-byte window: uniformly random bytes, but half the time led by legacy prefixes
/// and/or an opcode escape so that the 0F, 0F 38 and 0F 3A maps and prefix handling get
/// their share.
fn window(rng: &mut Rng) -> [u8; 16] {
    const PREFIXES: &[u8] = &[
        0x66, 0x67, 0xF2, 0xF3, 0xF0, 0x2E, 0x3E, 0x26, 0x36, 0x64, 0x65,
    ];
    let mut w = [0u8; 16];
    for chunk in w.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
    }
    let shape = rng.next();
    let mut at = 0;
    if shape & 1 == 1 {
        for _ in 0..(shape >> 1) % 4 {
            w[at] = PREFIXES[usize::try_from(rng.next() % PREFIXES.len() as u64).unwrap()];
            at += 1;
        }
    }
    match (shape >> 8) % 4 {
        0 => {}
        1 => w[at] = 0x0F,
        2 => w[at..at + 2].copy_from_slice(&[0x0F, 0x38]),
        _ => w[at..at + 2].copy_from_slice(&[0x0F, 0x3A]),
    }
    w
}

#[test]
fn random_windows_agree_on_length() {
    let cs = capstone();
    let mut rng = Rng(SEED);
    let mut tally = Tally::default();
    let mut instr = Instruction::default();
    for _ in 0..RANDOM_WINDOWS {
        let w = window(&mut rng);
        let mut decoder = Decoder::with_ip(32, &w, 0x1000, DecoderOptions::NONE);
        decoder.decode_out(&mut instr);
        tally.compare(&cs, &w, 0x1000, &instr);
    }
    tally.assert_clean("random windows");
    assert!(
        tally.compared > RANDOM_WINDOWS as u64 / 3,
        "too few windows both decoders accept"
    );
}

/// Linear sweep over one kernel text section: every instruction iced decodes, with the
/// bytes from its start (up to 16) for the other decoder. An invalid byte advances by one.
fn sweep(text: &kernel::Text, mut each: impl FnMut(&[u8], &Instruction)) {
    let mut decoder = Decoder::with_ip(
        32,
        &text.bytes,
        u64::from(text.address),
        DecoderOptions::NONE,
    );
    let mut instr = Instruction::default();
    let mut offset = 0;
    while offset < text.bytes.len() {
        decoder
            .set_position(offset)
            .expect("offset inside the section");
        decoder.set_ip(u64::from(text.address) + offset as u64);
        decoder.decode_out(&mut instr);
        let end = (offset + 16).min(text.bytes.len());
        each(&text.bytes[offset..end], &instr);
        offset += if instr.is_invalid() { 1 } else { instr.len() };
    }
}

#[test]
fn kernel_text_agrees_on_length() {
    let Some(texts) = kernel::text_sections() else {
        return;
    };
    let cs = capstone();
    let mut tally = Tally::default();
    for text in &texts {
        sweep(text, |bytes, instr| {
            tally.compare(&cs, bytes, instr.ip(), instr)
        });
    }
    tally.assert_clean("kernel text");
    assert!(
        tally.compared > 1_000_000,
        "the kernel has millions of instructions"
    );
}

/// The class capstone's text implies, for the mnemonics whose class does not need
/// iced's view of the encoding. `None`: not one of those (compared only when iced
/// classifies the instruction as something else than innocuous).
fn capstone_class(text: &str) -> Option<Class> {
    const SREGS: &[&str] = &["es", "cs", "ss", "ds", "fs", "gs"];
    const PREFIXES: &[&str] = &[
        "rep", "repe", "repne", "bnd", "lock", "notrack", "xacquire", "xrelease",
    ];
    let mut text = text.trim();
    let (mut mnemonic, mut rest) = text.split_once(' ').unwrap_or((text, ""));
    while PREFIXES.contains(&mnemonic) {
        text = rest.trim();
        (mnemonic, rest) = text.split_once(' ').unwrap_or((text, ""));
    }
    let ops: Vec<&str> = rest.split(", ").map(str::trim).collect();
    // Far indirect operands are m16:16/m16:32, which capstone prints without a size
    // keyword ("ptr [...]") or as "fword ptr"; direct far targets as "seg:offset".
    let far = ops[0].starts_with("ptr ")
        || ops[0].starts_with("fword ptr")
        || ops[0].contains(':') && !ops[0].contains('[');
    let class = match mnemonic {
        "pushf" | "pushfd" => Class::Pushf,
        "popf" | "popfd" => Class::Popf,
        "push" if SREGS.contains(&ops[0]) => Class::PushSreg,
        "pop" if SREGS.contains(&ops[0]) => Class::PopSreg,
        "mov" if ops.len() == 2 && SREGS.contains(&ops[0]) => Class::MovToSreg,
        "mov" if ops.len() == 2 && SREGS.contains(&ops[1]) => Class::MovFromSreg,
        "mov" if ops.iter().any(|o| o.starts_with("cr") && o.len() <= 4) => Class::MovCr,
        "mov" if ops.iter().any(|o| o.starts_with("dr") && o.len() == 3) => Class::MovDr,
        "push" | "pop" | "mov" => Class::Innocuous,
        "ljmp" => Class::FarJmp,
        "lcall" => Class::FarCall,
        "jmp" if far => Class::FarJmp,
        "call" if far => Class::FarCall,
        "rsm" | "wbnoinvd" | "invlpga" | "invlpgb" | "tlbsync" | "skinit" | "vmrun" | "vmload"
        | "vmsave" | "vmmcall" | "vmcall" | "vmlaunch" | "vmresume" | "vmxoff" | "vmxon"
        | "vmclear" | "vmptrld" | "vmptrst" | "vmread" | "vmwrite" | "vmfunc" | "invept"
        | "invvpid" | "getsec" | "encls" | "pconfig" => Class::Privileged,
        "retf" | "retfw" | "lret" => Class::FarRet,
        "iret" | "iretd" => Class::Iret,
        "sgdt" => Class::Sgdt,
        "sidt" => Class::Sidt,
        "smsw" => Class::Smsw,
        "sldt" => Class::Sldt,
        "str" => Class::Str,
        "lar" => Class::Lar,
        "lsl" => Class::Lsl,
        "verr" => Class::Verr,
        "verw" => Class::Verw,
        "lds" => Class::Lds,
        "les" => Class::Les,
        "lfs" => Class::Lfs,
        "lgs" => Class::Lgs,
        "lss" => Class::Lss,
        "sysenter" => Class::Sysenter,
        "syscall" => Class::Syscall,
        "cli" => Class::Cli,
        "sti" => Class::Sti,
        "hlt" => Class::Hlt,
        "in" => Class::In,
        "out" => Class::Out,
        "insb" | "insw" | "insd" => Class::Ins,
        "outsb" | "outsw" | "outsd" => Class::Outs,
        "lgdt" => Class::Lgdt,
        "lidt" => Class::Lidt,
        "lldt" => Class::Lldt,
        "ltr" => Class::Ltr,
        "clts" => Class::Clts,
        "invd" => Class::Invd,
        "wbinvd" => Class::Wbinvd,
        "invlpg" => Class::Invlpg,
        "rdmsr" => Class::Rdmsr,
        "wrmsr" => Class::Wrmsr,
        "lmsw" => Class::Lmsw,
        "sysexit" => Class::Sysexit,
        "sysret" => Class::Sysret,
        "rdpmc" => Class::Rdpmc,
        "cpuid" => Class::Cpuid,
        "pause" => Class::Pause,
        "int" => Class::Int,
        "int3" => Class::Int3,
        "into" => Class::Into,
        "int1" => Class::Int1,
        "ud0" | "ud1" | "ud2" => Class::Ud,
        "monitor" => Class::Monitor,
        "mwait" => Class::Mwait,
        "xsetbv" => Class::Xsetbv,
        "xsaves" => Class::Xsaves,
        "xrstors" => Class::Xrstors,
        "clac" => Class::Clac,
        "stac" => Class::Stac,
        "invpcid" => Class::Invpcid,
        _ if uses_fpu_state(mnemonic, &ops) => Class::Fpu,
        _ => return None,
    };
    Some(class)
}

/// Capstone's reading of "uses the x87/MMX/SSE state" (the FPU class), from the text
/// alone: an x87 mnemonic (they all start with `f`), a conversion (`cvt…`, whose
/// memory forms name no register of the state), one of the state-management
/// instructions, or an MMX, SSE, AVX or AVX-512 mask register among the operands.
fn uses_fpu_state(mnemonic: &str, ops: &[&str]) -> bool {
    const STATE: &[&str] = &[
        "wait",
        "emms",
        "ldmxcsr",
        "stmxcsr",
        "vldmxcsr",
        "vstmxcsr",
        "xsave",
        "xsaveopt",
        "xsavec",
        "xrstor",
        "vzeroupper",
        "vzeroall",
    ];
    let simd_register = |op: &str| {
        op.split(|c: char| !c.is_ascii_alphanumeric()).any(|word| {
            let digits = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
            ["mm", "xmm", "ymm", "zmm"]
                .iter()
                .any(|p| word.strip_prefix(p).is_some_and(digits))
                || word.len() == 2 && word.starts_with('k') && digits(&word[1..])
        })
    };
    mnemonic.starts_with('f')
        || mnemonic.starts_with("cvt")
        || STATE.contains(&mnemonic)
        || ops.iter().any(|o| simd_register(o))
}

/// Classes are iced's; this checks them against an independent decoder's reading of
/// the same bytes, on the kernel (every instruction of the iced sweep) and on random
/// windows. Instructions capstone has no class opinion on must not be classified as
/// sensitive by iced either, unless capstone rejects them.
#[test]
fn classes_agree_with_capstone_mnemonics() {
    let cs = capstone();
    let mut disagreements: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut checked = 0u64;
    let mut check = |bytes: &[u8], instr: &Instruction| {
        if instr.is_invalid() {
            return;
        }
        let Some((len, text)) = capstone_decode(&cs, bytes, instr.ip()) else {
            return;
        };
        if len != instr.len() {
            return; // a length disagreement, judged by the length tests
        }
        let iced = classify(instr);
        let expected = capstone_class(text.trim());
        if expected.is_none() && iced == Class::Innocuous {
            return;
        }
        checked += 1;
        if expected != Some(iced) {
            let key = match expected {
                Some(class) => format!("iced {} / capstone {}", iced.name(), class.name()),
                None => format!(
                    "iced {} / capstone `{}`",
                    iced.name(),
                    text.split(' ').next().unwrap_or("")
                ),
            };
            let e = disagreements
                .entry(key)
                .or_insert((0, format!("{:02X?} `{}`", &bytes[..len], text.trim())));
            e.0 += 1;
        }
    };
    let mut rng = Rng(SEED ^ 0xC1A5);
    let mut instr = Instruction::default();
    for _ in 0..RANDOM_WINDOWS / 4 {
        let w = window(&mut rng);
        Decoder::with_ip(32, &w, 0x1000, DecoderOptions::NONE).decode_out(&mut instr);
        check(&w, &instr);
    }
    if let Some(texts) = kernel::text_sections() {
        for text in &texts {
            sweep(text, &mut check);
        }
    }
    eprintln!("{checked} sensitive or named instructions compared");
    for (key, (n, example)) in &disagreements {
        eprintln!("  {key}: {n}, e.g. {example}");
    }
    assert!(
        disagreements.is_empty(),
        "class disagreements with capstone"
    );
    assert!(checked > 10_000);
}
