//! Boundary accuracy against ground truth (ARCHITECTURE.md §5): in symbolised code, a
//! linear disassembly from each function's start to its end finds the true instruction
//! starts, since compilers put no data inside functions. The scanner's starts inside
//! those functions are compared with them.

use iced_x86::{Decoder, DecoderOptions, Instruction};
use serde::Serialize;

use super::ImageScan;
use crate::image::Image;
use vmm::addr::GuestLinear;

/// How many mismatching addresses a report lists, as leads for investigation.
pub const MAX_EXAMPLES: usize = 16;

/// The scanner's boundaries measured against the functions' linear disassembly.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Truth {
    /// Sized functions measured.
    pub functions: usize,
    /// Sized functions not measured because they do not lie inside one region.
    pub functions_outside_code: usize,
    /// Instruction starts of the linear disassembly.
    pub true_starts: usize,
    /// The scanner's instruction starts inside measured functions.
    pub scanner_starts: usize,
    /// Starts found by both.
    pub matched: usize,
    /// `matched / scanner_starts`: how many of the scanner's starts are real.
    pub precision: f64,
    /// `matched / true_starts`: how many real starts the scanner found.
    pub recall: f64,
    /// Scanner starts that are not true starts (first few).
    #[serde(serialize_with = "hex_list")]
    pub false_starts: Vec<GuestLinear>,
    /// True starts the scanner missed (first few).
    #[serde(serialize_with = "hex_list")]
    pub missed_starts: Vec<GuestLinear>,
}

fn hex_list<S: serde::Serializer>(addrs: &[GuestLinear], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(addrs.iter().map(|a| format!("{:#x}", a.raw())))
}

/// The true starts of the sized functions of `image`, sorted and unique, with the
/// merged `[start, end)` ranges they cover, the number of functions measured and the
/// number skipped.
fn ground_truth(image: &Image) -> (Vec<u32>, Vec<(u64, u64)>, usize, usize) {
    let mut starts = Vec::new();
    let mut ranges = Vec::new();
    let (mut measured, mut skipped) = (0, 0);
    for func in image.symbols.sized_functions() {
        let Some(region) = image.regions.iter().find(|r| r.contains(func.start)) else {
            skipped += 1;
            continue;
        };
        let off = (func.start.raw() - region.base.raw()) as usize;
        let Some(bytes) = off
            .checked_add(func.size as usize)
            .and_then(|end| region.bytes.get(off..end))
        else {
            skipped += 1;
            continue;
        };
        measured += 1;
        // A function may end exactly at 4 GiB, so ends are 64-bit.
        let start = u64::from(func.start.raw());
        ranges.push((start, start + u64::from(func.size)));
        linear_sweep(bytes, func.start.raw(), &mut starts);
    }
    starts.sort_unstable();
    starts.dedup();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    (starts, merged, measured, skipped)
}

/// Appends the start of every valid instruction of a linear disassembly of `bytes` at
/// `ip`. An undecodable byte is stepped over, as a disassembler's `(bad)` is.
fn linear_sweep(bytes: &[u8], ip: u32, starts: &mut Vec<u32>) {
    let mut decoder = Decoder::with_ip(32, bytes, u64::from(ip), DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut pos = 0;
    while pos < bytes.len() {
        decoder.decode_out(&mut instr);
        let addr = ip.wrapping_add(u32::try_from(pos).unwrap_or(u32::MAX));
        if instr.is_invalid() {
            pos += 1;
            // The position is always inside `bytes`, so repositioning cannot fail.
            if decoder.set_position(pos).is_err() {
                break;
            }
            decoder.set_ip(u64::from(ip) + pos as u64);
        } else {
            starts.push(addr);
            pos += instr.len();
        }
    }
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// Measures `scan` against the ground truth of its image's sized function symbols, or
/// `None` when the image has none.
pub fn measure(scan: &ImageScan<'_>) -> Option<Truth> {
    let (truth, ranges, functions, functions_outside_code) = ground_truth(scan.image);
    if functions == 0 {
        return None;
    }
    let in_functions = |addr: u32| {
        let addr = u64::from(addr);
        let idx = ranges.partition_point(|&(start, _)| start <= addr);
        idx > 0 && addr < ranges[idx - 1].1
    };
    let mut scanner: Vec<u32> = scan
        .regions
        .iter()
        .flat_map(|r| r.starts.iter().copied())
        .filter(|&a| in_functions(a))
        .collect();
    scanner.sort_unstable();
    scanner.dedup();

    let is_true = |a: &u32| truth.binary_search(a).is_ok();
    let found = |a: &u32| scanner.binary_search(a).is_ok();
    let matched = scanner.iter().filter(|a| is_true(a)).count();
    let examples = |list: &[u32], keep: &dyn Fn(&u32) -> bool| {
        list.iter()
            .filter(|a| keep(a))
            .take(MAX_EXAMPLES)
            .map(|&a| GuestLinear(a))
            .collect()
    };
    Some(Truth {
        functions,
        functions_outside_code,
        true_starts: truth.len(),
        scanner_starts: scanner.len(),
        matched,
        precision: ratio(matched, scanner.len()),
        recall: ratio(matched, truth.len()),
        false_starts: examples(&scanner, &|a| !is_true(a)),
        missed_starts: examples(&truth, &|a| !found(a)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{CodeRegion, Format, Symbol, SymbolKind, SymbolTable};
    use crate::scan::scan_image;

    #[test]
    fn function_ending_at_4gib_is_measured() {
        let base = 0xffff_fff0u32;
        // Sixteen one-byte instructions: pushfd, then nops, then ret.
        let mut bytes = vec![0x90u8; 16];
        bytes[0] = 0x9c;
        bytes[15] = 0xc3;
        let image = Image {
            format: Format::Raw,
            symbols: SymbolTable::new(
                vec![Symbol {
                    name: "top".into(),
                    start: GuestLinear(base),
                    size: 16,
                    kind: SymbolKind::Function,
                }],
                &[(u64::from(base), 1 << 32)],
            ),
            regions: vec![CodeRegion {
                name: "top".into(),
                base: GuestLinear(base),
                bytes,
                entries: vec![GuestLinear(base)],
            }],
            bzimage: None,
        };
        let truth = measure(&scan_image(&image)).expect("one sized function");
        assert_eq!(
            (truth.functions, truth.true_starts, truth.matched),
            (1, 16, 16)
        );
        assert_eq!((truth.precision, truth.recall), (1.0, 1.0));
    }

    #[test]
    fn linear_sweep_steps_over_bad_bytes() {
        // nop; 0f 04 is undefined, so the sweep resumes at 04 c3 (add al, 0xc3).
        let mut starts = Vec::new();
        linear_sweep(&[0x90, 0x0f, 0x04, 0xc3], 0x1000, &mut starts);
        assert_eq!(starts, vec![0x1000, 0x1002]);
        let mut starts = Vec::new();
        // A two-byte instruction cut by the function end is not a start.
        linear_sweep(&[0xc3, 0x0f], 0x2000, &mut starts);
        assert_eq!(starts, vec![0x2000]);
    }
}
