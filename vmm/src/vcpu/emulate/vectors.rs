//! The emulator's instruction cases, read from `vectors.txt` (the format is described at
//! the top of that file) and run against [`TestBus`]. Every case runs one instruction
//! through [`emulate`] (or, for cases marked `mediate` / `access`, through the entry
//! points the run loop uses for memory it performs itself) and compares the outcome and
//! the listed state; a failing case is reported with its line.

use super::{data_access, emulate, mediate, Emulated, Mediated, Unsupported};
use crate::addr::GuestLinear;
use crate::bits::{low16, low8};
use crate::vcpu::descriptor::Descriptor;
use crate::vcpu::interrupts::{Event, SoftwareKind};
use crate::vcpu::state::{gpr, Segment, VcpuState};
use crate::vcpu::testbus::{TestBus, GDT};
use crate::vcpu::{Effects, Fault};
use crate::x86::{eflags, Exception, SegReg};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use std::fmt::Write as _;

const VECTORS: &str = include_str!("vectors.txt");

/// Which entry point a case runs through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    Emulate,
    Mediate,
    Access,
}

/// What the instruction is expected to end in.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Fault(Fault),
    Deliver(Event),
    Unsupported(Unsupported),
    /// Mediation or access emulation refused the form.
    Refused,
}

fn num(v: &str) -> Result<u64, String> {
    let v = v.replace('_', "");
    let r = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    r.map_err(|e| format!("bad number `{v}`: {e}"))
}

fn num32(v: &str) -> Result<u32, String> {
    u32::try_from(num(v)?).map_err(|_| format!("`{v}` does not fit in 32 bits"))
}

fn hex_bytes(v: &str) -> Result<Vec<u8>, String> {
    let v: String = v.split_whitespace().collect();
    if !v.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in `{v}`"));
    }
    (0..v.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v[i..i + 2], 16).map_err(|e| format!("`{v}`: {e}")))
        .collect()
}

fn flag_bit(name: &str) -> Result<u32, String> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "CF" => eflags::CF,
        "PF" => eflags::PF,
        "AF" => eflags::AF,
        "ZF" => eflags::ZF,
        "SF" => eflags::SF,
        "TF" => eflags::TF,
        "IF" => eflags::IF,
        "DF" => eflags::DF,
        "OF" => eflags::OF,
        "IOPL" => eflags::IOPL,
        "NT" => eflags::NT,
        "RF" => eflags::RF,
        "VM" => eflags::VM,
        "AC" => eflags::AC,
        "VIF" => eflags::VIF,
        "VIP" => eflags::VIP,
        "ID" => eflags::ID,
        _ => return Err(format!("unknown flag `{name}`")),
    })
}

/// `flags=A+B`: EFLAGS with bit 1 and the named bits.
fn flags_value(v: &str) -> Result<u32, String> {
    v.split('+')
        .filter(|f| !f.is_empty())
        .try_fold(eflags::FIXED1, |acc, f| Ok(acc | flag_bit(f)?))
}

fn gpr_index(name: &str) -> Option<usize> {
    Some(match name {
        "eax" => gpr::EAX,
        "ecx" => gpr::ECX,
        "edx" => gpr::EDX,
        "ebx" => gpr::EBX,
        "esp" => gpr::ESP,
        "ebp" => gpr::EBP,
        "esi" => gpr::ESI,
        "edi" => gpr::EDI,
        _ => return None,
    })
}

fn seg_reg(name: &str) -> Option<SegReg> {
    Some(match name {
        "es" => SegReg::Es,
        "cs" => SegReg::Cs,
        "ss" => SegReg::Ss,
        "ds" => SegReg::Ds,
        "fs" => SegReg::Fs,
        "gs" => SegReg::Gs,
        _ => return None,
    })
}

fn segment<'a>(s: &'a mut VcpuState, name: &str) -> Option<&'a mut Segment> {
    match name {
        "tr" => Some(&mut s.tr),
        "ldtr" => Some(&mut s.ldtr),
        _ => seg_reg(name).map(|r| s.sreg_mut(r)),
    }
}

/// A bracketed address: `m32[0x500]` → ("m32", 0x500).
fn indexed(key: &str) -> Result<Option<(&str, u32)>, String> {
    let Some((name, rest)) = key.split_once('[') else {
        return Ok(None);
    };
    let inner = rest
        .strip_suffix(']')
        .ok_or_else(|| format!("unclosed `[` in `{key}`"))?;
    Ok(Some((name, num32(inner)?)))
}

/// A location of the machine a key names: read in expectations, written in the
/// initial state.
enum Place {
    Gpr(usize),
    Eip,
    Eflags,
    Flag(u32),
    Iopl,
    Cr(usize),
    Dr(usize),
    Seg(String, String),
    Table(bool, bool),
    Msr(String),
    Mem(u32, u32),
    Bytes(u32),
    Cpl,
    Shadow,
    Halted,
}

fn place(key: &str) -> Result<Place, String> {
    if let Some((name, at)) = indexed(key)? {
        return Ok(match name {
            "m8" => Place::Mem(at, 1),
            "m16" => Place::Mem(at, 2),
            "m32" => Place::Mem(at, 4),
            "m64" => Place::Mem(at, 8),
            "gdt" => Place::Mem(GDT + (at & !7), 8),
            "bytes" => Place::Bytes(at),
            _ => return Err(format!("unknown memory key `{key}`")),
        });
    }
    if let Some(i) = gpr_index(key) {
        return Ok(Place::Gpr(i));
    }
    if let Some((seg, field)) = key.split_once('.') {
        return Ok(match seg {
            "gdtr" | "idtr" => Place::Table(seg == "gdtr", field == "base"),
            "msr" => Place::Msr(field.to_string()),
            _ => Place::Seg(seg.to_string(), field.to_string()),
        });
    }
    Ok(match key {
        "eip" => Place::Eip,
        "eflags" => Place::Eflags,
        "iopl" => Place::Iopl,
        "cpl" => Place::Cpl,
        "shadow" => Place::Shadow,
        "halted" => Place::Halted,
        "cr0" | "cr2" | "cr3" | "cr4" => Place::Cr(usize::from(key.as_bytes()[2] - b'0')),
        _ if key.starts_with("dr") && key.len() == 3 => {
            Place::Dr(usize::from(key.as_bytes()[2].wrapping_sub(b'0')).min(7))
        }
        _ if key.len() == 2 && flag_bit(key).is_ok() => Place::Flag(flag_bit(key)?),
        _ => return Err(format!("unknown key `{key}`")),
    })
}

fn msr_slot<'a>(s: &'a mut VcpuState, name: &str) -> Result<&'a mut u64, String> {
    Ok(match name {
        "pat" => &mut s.msr.pat,
        "tsc_offset" => &mut s.msr.tsc_offset,
        "perf_ctr0" => &mut s.msr.perf_ctr[0],
        "perf_ctr1" => &mut s.msr.perf_ctr[1],
        _ => return Err(format!("unknown MSR `{name}`")),
    })
}

fn seg_field<'a>(seg: &'a mut Segment, field: &str) -> Result<SegField<'a>, String> {
    Ok(match field {
        "sel" => SegField::U16(&mut seg.selector),
        "base" => SegField::U32(&mut seg.base),
        "limit" => SegField::U32(&mut seg.limit),
        "typ" => SegField::U8(&mut seg.typ),
        "dpl" => SegField::U8(&mut seg.dpl),
        "p" => SegField::Bool(&mut seg.present),
        "db" => SegField::Bool(&mut seg.db),
        _ => return Err(format!("unknown segment field `{field}`")),
    })
}

enum SegField<'a> {
    U8(&'a mut u8),
    U16(&'a mut u16),
    U32(&'a mut u32),
    Bool(&'a mut bool),
}

impl SegField<'_> {
    fn get(&self) -> u64 {
        match self {
            SegField::U8(v) => u64::from(**v),
            SegField::U16(v) => u64::from(**v),
            SegField::U32(v) => u64::from(**v),
            SegField::Bool(v) => u64::from(**v),
        }
    }
    fn set(self, v: u64) -> Result<(), String> {
        let bad = |_| format!("{v:#x} does not fit the field");
        match self {
            SegField::U8(f) => *f = u8::try_from(v).map_err(bad)?,
            SegField::U16(f) => *f = u16::try_from(v).map_err(bad)?,
            SegField::U32(f) => *f = u32::try_from(v).map_err(bad)?,
            SegField::Bool(f) => *f = v != 0,
        }
        Ok(())
    }
}

fn mem_read(bus: &TestBus, at: u32, size: u32) -> u64 {
    match size {
        1 => u64::from(bus.ram[at as usize]),
        2 => u64::from(bus.read_u16(at)),
        4 => u64::from(bus.read_u32(at)),
        _ => bus.read_u64(at),
    }
}

/// Reads a place as a number (for `bytes[..]`, the hex string).
fn read(s: &mut VcpuState, bus: &TestBus, p: &Place, want: &str) -> Result<String, String> {
    let v = match p {
        Place::Gpr(i) => u64::from(s.gpr[*i]),
        Place::Eip => u64::from(s.eip),
        Place::Eflags => u64::from(s.eflags),
        Place::Flag(b) => u64::from(s.eflags & b != 0),
        Place::Iopl => u64::from(s.iopl()),
        Place::Cr(0) => u64::from(s.cr0),
        Place::Cr(2) => u64::from(s.cr2),
        Place::Cr(3) => u64::from(s.cr3),
        Place::Cr(_) => u64::from(s.cr4),
        Place::Dr(i) => u64::from(s.dr[*i]),
        Place::Seg(seg, field) => {
            let sg = segment(s, seg).ok_or_else(|| format!("unknown segment `{seg}`"))?;
            seg_field(sg, field)?.get()
        }
        Place::Table(gdt, base) => {
            let t = if *gdt { s.gdtr } else { s.idtr };
            if *base {
                u64::from(t.base)
            } else {
                u64::from(t.limit)
            }
        }
        Place::Msr(name) if name == "sysenter_cs" => u64::from(s.msr.sysenter_cs),
        Place::Msr(name) => *msr_slot(s, name)?,
        Place::Mem(at, size) => mem_read(bus, *at, *size),
        Place::Bytes(at) => {
            let n = want.len() / 2;
            let a = *at as usize;
            return Ok(bus.ram[a..a + n].iter().fold(String::new(), |mut o, b| {
                let _ = write!(o, "{b:02x}");
                o
            }));
        }
        Place::Cpl => u64::from(s.cpl()),
        Place::Shadow => u64::from(s.interrupt_shadow),
        Place::Halted => u64::from(s.halted),
    };
    Ok(format!("{v:#x}"))
}

fn write(s: &mut VcpuState, bus: &mut TestBus, p: &Place, v: &str) -> Result<(), String> {
    if let Place::Bytes(at) = p {
        let b = hex_bytes(v)?;
        let a = *at as usize;
        bus.ram[a..a + b.len()].copy_from_slice(&b);
        return Ok(());
    }
    let n = num(v)?;
    let n32 = || u32::try_from(n).map_err(|_| format!("{v} does not fit in 32 bits"));
    match p {
        Place::Gpr(i) => s.gpr[*i] = n32()?,
        Place::Eip => s.eip = n32()?,
        Place::Eflags => s.eflags = n32()?,
        Place::Flag(b) if n != 0 => s.eflags |= b,
        Place::Flag(b) => s.eflags &= !b,
        Place::Iopl => s.eflags = (s.eflags & !eflags::IOPL) | (n32()? << eflags::IOPL_SHIFT),
        Place::Cr(0) => s.cr0 = n32()?,
        Place::Cr(2) => s.cr2 = n32()?,
        Place::Cr(3) => s.cr3 = n32()?,
        Place::Cr(_) => s.cr4 = n32()?,
        Place::Dr(i) => s.dr[*i] = n32()?,
        Place::Seg(seg, field) => {
            let sg = segment(s, seg).ok_or_else(|| format!("unknown segment `{seg}`"))?;
            seg_field(sg, field)?.set(n)?;
        }
        Place::Table(gdt, base) => {
            let t = if *gdt { &mut s.gdtr } else { &mut s.idtr };
            if *base {
                t.base = n32()?;
            } else {
                t.limit = u16::try_from(n).map_err(|_| format!("{v}: limit over 16 bits"))?;
            }
        }
        Place::Msr(name) => match name.as_str() {
            "sysenter_cs" => s.msr.sysenter_cs = n32()?,
            "sysenter_esp" => s.msr.sysenter_esp = n32()?,
            "sysenter_eip" => s.msr.sysenter_eip = n32()?,
            _ => *msr_slot(s, name)? = n,
        },
        Place::Mem(at, size) => match size {
            1 => bus.ram[*at as usize] = u8::try_from(n).map_err(|_| format!("{v}: not a byte"))?,
            2 => bus.write_u16(
                *at,
                u16::try_from(n).map_err(|_| format!("{v}: not a word"))?,
            ),
            4 => bus.write_u32(*at, n32()?),
            _ => bus.write_u64(*at, n),
        },
        Place::Cpl | Place::Shadow | Place::Halted | Place::Bytes(_) => {
            return Err("only an expectation".to_string())
        }
    }
    Ok(())
}

fn fault(tok: &str) -> Result<Fault, String> {
    let (name, arg) = match tok.split_once('(') {
        Some((n, a)) => (
            n,
            Some(
                a.strip_suffix(')')
                    .ok_or_else(|| format!("unclosed `(` in `{tok}`"))?,
            ),
        ),
        None => (tok, None),
    };
    let vector = match name {
        "#DE" => Exception::DE,
        "#DB" => Exception::DB,
        "#UD" => Exception::UD,
        "#NM" => Exception::NM,
        "#DF" => Exception::DF,
        "#TS" => Exception::TS,
        "#NP" => Exception::NP,
        "#SS" => Exception::SS,
        "#GP" => Exception::GP,
        "#PF" => Exception::PF,
        "#AC" => Exception::AC,
        _ => return Err(format!("unknown exception `{name}`")),
    };
    Ok(match arg {
        None => Fault::new(vector),
        Some(a) if vector == Exception::PF => {
            let (addr, code) = a
                .split_once(',')
                .ok_or_else(|| format!("#PF needs (address,code): `{tok}`"))?;
            Fault::page_fault(GuestLinear(num32(addr)?), num32(code)?)
        }
        Some(a) => Fault::with_code(vector, num32(a)?),
    })
}

fn deliver(v: &str) -> Result<Event, String> {
    let mut it = v.split(':');
    let kind = match it.next() {
        Some("int") => SoftwareKind::IntN,
        Some("int3") => SoftwareKind::Int3,
        Some("into") => SoftwareKind::Into,
        Some("int1") => SoftwareKind::Int1,
        other => return Err(format!("unknown software interrupt {other:?}")),
    };
    let (Some(vector), Some(next)) = (it.next(), it.next()) else {
        return Err(format!("`deliver={v}` needs kind:vector:next_eip"));
    };
    Ok(Event::Software {
        vector: u8::try_from(num(vector)?).map_err(|_| "vector over 255".to_string())?,
        kind,
        next_eip: num32(next)?,
    })
}

fn unsupported(v: &str) -> Result<Unsupported, String> {
    Ok(match v {
        "task-switch" => Unsupported::TaskSwitch,
        "v86" => Unsupported::Virtual8086,
        _ => Unsupported::Instruction(
            Mnemonic::values()
                .find(|m| format!("{m:?}") == v)
                .ok_or_else(|| format!("unknown mnemonic `{v}`"))?,
        ),
    })
}

fn effects(v: &str) -> Result<Effects, String> {
    let mut e = Effects::NONE;
    for t in v.split(',').filter(|t| !t.is_empty()) {
        match t {
            "halted" => e.halted = true,
            "cache_flush" => e.cache_flush = true,
            "tsc_written" => e.tsc_written = true,
            "cr3_written" => e.cr3_written = true,
            "paging" => e.paging_mode_changed = true,
            "tables" => e.descriptor_tables_changed = true,
            "cpl" => e.cpl_changed = true,
            _ => {
                if let Some(a) = t.strip_prefix("invlpg:") {
                    e.invlpg = Some(GuestLinear(num32(a)?));
                } else if let Some(r) = t.strip_prefix("seg:").and_then(seg_reg) {
                    e = e.merge(Effects::segment(r));
                } else {
                    return Err(format!("unknown effect `{t}`"));
                }
            }
        }
    }
    Ok(e)
}

/// Port writes, `port:size:value` separated by commas.
fn outs(v: &str) -> Result<Vec<(u16, u8, u32)>, String> {
    v.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let p: Vec<&str> = t.split(':').collect();
            let [port, size, value] = p[..] else {
                return Err(format!("`{t}` is not port:size:value"));
            };
            Ok((low16(num32(port)?), low8(num32(size)?), num32(value)?))
        })
        .collect()
}

/// Builds the machine a case starts from.
fn initial(bits: u32, init: &str) -> Result<(VcpuState, TestBus, Entry), String> {
    let mut bus = TestBus::new();
    let mut s = bus.protected_state();
    let mut entry = Entry::Emulate;
    if bits == 16 {
        let d = Descriptor::decode(bus.read_u64(GDT + 0x50));
        *s.sreg_mut(SegReg::Cs) = Segment::from_descriptor(0x50, &d);
    }
    for tok in init.split_whitespace() {
        match tok {
            "user" => bus.enter_user(&mut s),
            "real" => {
                s = VcpuState::reset();
                *s.sreg_mut(SegReg::Cs) = Segment::real_mode(0);
                s.eip = 0x7000;
                s.idtr.base = 0;
            }
            "mediate" => entry = Entry::Mediate,
            "access" => entry = Entry::Access,
            _ => {
                let (k, v) = tok
                    .split_once('=')
                    .ok_or_else(|| format!("`{tok}` is not key=value"))?;
                match k {
                    "flags" => s.eflags = flags_value(v)?,
                    "tsc" => bus.tsc = num(v)?,
                    "unmapped" => {
                        let (a, b) = v
                            .split_once('-')
                            .ok_or_else(|| format!("`{v}` is not start-end"))?;
                        bus.unmapped.push((num32(a)?, num32(b)?));
                    }
                    _ if k.starts_with("port[") => {
                        let (_, p) = indexed(k)?.ok_or("bad port key")?;
                        bus.ins.insert(low16(p), num32(v)?);
                    }
                    _ if v == "null" => {
                        *segment(&mut s, k).ok_or_else(|| format!("`{k}` is no segment"))? =
                            Segment::null(0);
                    }
                    _ => write(&mut s, &mut bus, &place(k)?, v)?,
                }
            }
        }
    }
    Ok((s, bus, entry))
}

/// Runs one case; `Err` says what differs.
fn run_case(line: &str) -> Result<(), String> {
    let fields: Vec<&str> = line.split('|').map(str::trim).collect();
    let [code, init, expect] = fields[..] else {
        return Err("expected `bits bytes | initial | expected`".to_string());
    };
    let (bits, bytes) = code
        .split_once(' ')
        .ok_or("expected the code size, then the bytes")?;
    let bits = num32(bits)?;
    if bits != 16 && bits != 32 {
        return Err(format!("code size {bits} is neither 16 nor 32"));
    }
    let bytes = hex_bytes(bytes)?;
    let (mut s, mut bus, entry) = initial(bits, init)?;
    let instr = Decoder::with_ip(bits, &bytes, u64::from(s.eip), DecoderOptions::NONE).decode();
    if instr.len() != bytes.len() {
        return Err(format!(
            "`{instr}` decodes from {} of the {} bytes",
            instr.len(),
            bytes.len()
        ));
    }
    let before = s.clone();
    let got = match entry {
        Entry::Emulate => match emulate(&mut s, &mut bus, &instr) {
            Ok(Emulated::Done(e)) => (Outcome::Done, Some(e)),
            Ok(Emulated::Deliver(ev)) => (Outcome::Deliver(ev), None),
            Ok(Emulated::Unsupported(u)) => (Outcome::Unsupported(u), None),
            Err(f) => (Outcome::Fault(f), None),
        },
        Entry::Mediate | Entry::Access => {
            let r = if entry == Entry::Mediate {
                mediate(&mut s, &mut bus, &instr)
            } else {
                data_access(&mut s, &mut bus, &instr)
            };
            match r {
                Ok(Mediated::Done) => (Outcome::Done, None),
                Ok(Mediated::Unsupported) => (Outcome::Refused, None),
                Err(f) => (Outcome::Fault(f), None),
            }
        }
    };
    let mut want = Outcome::Done;
    let mut checks = Vec::new();
    let mut eip_listed = false;
    for tok in expect.split_whitespace() {
        if tok.starts_with('#') {
            want = Outcome::Fault(fault(tok)?);
            continue;
        }
        if tok == "refused" {
            want = Outcome::Refused;
            continue;
        }
        let (k, v) = tok
            .split_once('=')
            .ok_or_else(|| format!("`{tok}` is not key=value"))?;
        match k {
            "deliver" => want = Outcome::Deliver(deliver(v)?),
            "unsupported" => want = Outcome::Unsupported(unsupported(v)?),
            "effects" => {
                let e = effects(v)?;
                if got.1 != Some(e) {
                    return Err(format!("effects {:?}, expected {e:?}", got.1));
                }
            }
            "out" => {
                let o = outs(v)?;
                if bus.outs != o {
                    return Err(format!("port writes {:x?}, expected {o:x?}", bus.outs));
                }
            }
            "flags" => checks.push((Place::Eflags, format!("{:#x}", flags_value(v)?), k)),
            _ => {
                let p = place(k)?;
                eip_listed |= matches!(p, Place::Eip);
                let v = match p {
                    Place::Bytes(_) => v.to_string(),
                    _ => format!("{:#x}", num(v)?),
                };
                checks.push((p, v, k));
            }
        }
    }
    if got.0 != want {
        return Err(format!("outcome {:x?}, expected {want:x?}", got.0));
    }
    let state_listed = checks
        .iter()
        .any(|(p, _, _)| !matches!(p, Place::Mem(..) | Place::Bytes(_)));
    match want {
        // A fault (or an event, or a refusal) leaves the state as it was, unless the case
        // lists what a partly done REP string instruction committed.
        Outcome::Done => {}
        _ if state_listed => {}
        _ => {
            if s != before {
                return Err(format!("state changed without completing:\n{s}"));
            }
        }
    }
    if want == Outcome::Done && !eip_listed {
        let len = u32::try_from(instr.len()).map_err(|e| e.to_string())?;
        let mut next = before.eip.wrapping_add(len);
        if bits == 16 {
            next &= 0xffff;
        }
        checks.push((Place::Eip, format!("{next:#x}"), "eip"));
    }
    for (p, v, k) in &checks {
        let got = read(&mut s, &bus, p, v)?;
        if &got != v {
            return Err(format!("{k} = {got}, expected {v}"));
        }
    }
    Ok(())
}

#[test]
fn emulator_vectors() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for (n, line) in VECTORS.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        cases += 1;
        if let Err(e) = run_case(line) {
            failures.push(format!("vectors.txt:{}: {e}\n    {line}", n + 1));
        }
    }
    assert!(cases > 0, "no cases in vectors.txt");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The runner itself: a wrong expectation of each kind fails.
#[test]
fn wrong_expectations_fail() {
    let cases = [
        "32 0f 22 db | ebx=0x1000 | cr3=0x2000",
        "32 0f 22 db | ebx=0x1000 | #GP(0)",
        "32 0f 22 db | ebx=0x1000 | cr3=0x1000 eip=0x7004",
        "32 0f 22 db | ebx=0x1000 | cr3=0x1000 effects=",
        "32 0f 22 db | user ebx=0x1000 | #GP(1)",
        "32 89 03 | mediate ebx=0x500 eax=7 | m32[0x500]=8",
        "32 ee | edx=0x80 | out=0x80:1:1",
        "32 cd 80 | | deliver=int:0x80:0x7003",
    ];
    for c in cases {
        assert!(run_case(c).is_err(), "{c} passed");
    }
    assert_eq!(
        run_case("32 0f 22 db | ebx=0x1000 | cr3=0x1000 effects=cr3_written"),
        Ok(())
    );
}
