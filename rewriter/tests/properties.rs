//! Properties of scanning and patching on arbitrary code pages.

// reason: a test builds and checks its own fixtures; an index or unwrap that fails
// stops it with the place, which is what it should do.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use iced_x86::{Decoder, DecoderOptions};
use proptest::prelude::*;
use rewriter::{
    classify, scan_page, scan_region, Action, BufferMemory, Census, CodeMemory, PageScan,
    PatchTable, TRAP_BYTE,
};
use shadow_paging::PAGE_SIZE;

const PAGE: u32 = 0x0040_1000;

/// Real instructions, sensitive ones over-represented, so that pages hold many sites.
const PIECES: &[&[u8]] = &[
    &[0x9C],
    &[0x66, 0x9D],
    &[0x0F, 0x01, 0x00],
    &[0x0F, 0x00, 0xC8],
    &[0x8C, 0xD8],
    &[0x8E, 0x18],
    &[0x0F, 0xA0],
    &[0x1F],
    &[0xC5, 0x00],
    &[0x9A, 0, 0, 0, 0, 0x10, 0],
    &[0xFF, 0x28],
    &[0xCA, 0x08, 0x00],
    &[0xCF],
    &[0x0F, 0x34],
    &[0xFA],
    &[0xCD, 0x80],
    &[0x0F, 0x0B],
    &[0x90],
    &[0x55],
    &[0x89, 0xE5],
    &[0x8B, 0x45, 0x08],
    &[0xE8, 0x10, 0, 0, 0],
    &[0xEB, 0x04],
    &[0x74, 0xF0],
    &[0xE9, 0x00, 0x01, 0, 0],
    &[0xC3],
    &[0xB8, 0x9C, 0x9D, 0xCF, 0x1F],
];

/// A page and the following page, made of real instructions and random bytes.
fn code() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => (0..PIECES.len()).prop_map(|i| PIECES[i].to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 1..8),
    ];
    proptest::collection::vec(piece, 600..1600).prop_map(|pieces| {
        let mut bytes: Vec<u8> = pieces.concat();
        bytes.resize(2 * PAGE_SIZE as usize, 0x90);
        bytes
    })
}

fn entries() -> impl Strategy<Value = Vec<u32>> {
    proptest::collection::vec(0..PAGE_SIZE, 0..6)
        .prop_map(|offsets| offsets.into_iter().map(|o| PAGE + o).collect())
}

/// Every start decodes; no start lies inside another instruction unless the scan
/// reported the overlap; every site is a start with its decoded length and class.
fn check_boundaries(mem: &BufferMemory, scan: &PageScan) -> Result<(), TestCaseError> {
    prop_assert!(
        scan.starts.windows(2).all(|w| w[0] < w[1]),
        "starts are not sorted"
    );
    let mut lengths = Vec::new();
    for &start in &scan.starts {
        prop_assert!((PAGE..PAGE + PAGE_SIZE).contains(&start));
        let mut buf = [0u8; 15];
        let n = mem.read(start, &mut buf);
        let instr =
            Decoder::with_ip(32, &buf[..n], u64::from(start), DecoderOptions::NONE).decode();
        prop_assert!(!instr.is_invalid(), "start {start:#x} does not decode");
        lengths.push(instr.len());
    }
    for (i, (&start, &len)) in scan.starts.iter().zip(&lengths).enumerate() {
        if let Some(&next) = scan.starts.get(i + 1) {
            if next < start + u32::try_from(len).unwrap() {
                prop_assert!(
                    scan.overlaps.contains(&next) || scan.overlaps.contains(&start),
                    "{start:#x}+{len} covers {next:#x} without a reported overlap ({:02X?}; overlaps {:x?}; scan has {} starts)",
                    &mem.bytes[(start - PAGE) as usize..(start - PAGE) as usize + 16],
                    scan.overlaps,
                    scan.starts.len()
                );
            }
        }
    }
    for site in &scan.sites {
        let i = scan.starts.binary_search(&site.address);
        prop_assert!(i.is_ok(), "site {:#x} is not a start", site.address);
        prop_assert_eq!(usize::from(site.length), lengths[i.unwrap_or(0)]);
        prop_assert_eq!(classify(&site.instruction), site.class);
        prop_assert_eq!(site.instruction.ip32(), site.address);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn scan_reports_only_real_starts(bytes in code(), entries in entries()) {
        let mem = BufferMemory::new(PAGE, bytes);
        let scan = scan_page(&mem, PAGE, &entries);
        check_boundaries(&mem, &scan)?;
        // Without entries the sweep alone tiles the page: nothing overlaps.
        let swept = scan_page(&mem, PAGE, &[]);
        prop_assert!(swept.overlaps.is_empty());
        check_boundaries(&mem, &swept)?;
        // A valid entry point is always a start.
        for &e in &entries {
            let mut buf = [0u8; 15];
            let n = mem.read(e, &mut buf);
            if !Decoder::with_ip(32, &buf[..n], u64::from(e), DecoderOptions::NONE).decode().is_invalid() {
                prop_assert!(scan.is_start(e), "entry {e:#x} is not a start");
            }
        }
    }

    #[test]
    fn patch_then_revert_is_identity(bytes in code(), entries in entries()) {
        let mut mem = BufferMemory::new(PAGE, bytes);
        let before = mem.clone();
        let scan = scan_page(&mem, PAGE, &entries);
        let mut table = PatchTable::new();
        let patched = table.patch(&mut mem, &scan).expect("a fresh scan patches cleanly");
        let expected = scan.sites.iter().filter(|s| s.class.action() == Action::Patch).count();
        prop_assert_eq!(patched, expected);
        prop_assert_eq!(table.len(), expected);
        prop_assert_eq!(table.is_patched(PAGE), expected > 0);

        // Only first bytes of patch sites changed, each to the trap byte, and every
        // original is recoverable.
        for (i, (&now, &was)) in mem.bytes.iter().zip(&before.bytes).enumerate() {
            let addr = PAGE + u32::try_from(i).unwrap();
            match table.lookup(addr) {
                Some(p) => {
                    prop_assert_eq!(now, TRAP_BYTE);
                    prop_assert_eq!(table.original_byte(addr), Some(was));
                    prop_assert_eq!(p.original_bytes(), &before.bytes[i..i + usize::from(p.length)]);
                }
                None => {
                    prop_assert_eq!(now, was);
                    prop_assert_eq!(table.original_byte(addr), None);
                }
            }
        }
        let mut view = vec![0u8; before.bytes.len()];
        prop_assert_eq!(table.unpatched(&mem).read(PAGE, &mut view), view.len());
        prop_assert_eq!(&view, &before.bytes);

        // Rescanning the guest's view finds the same instructions, and patching again
        // changes nothing.
        let rescan = scan_page(&table.unpatched(&mem), PAGE, &entries);
        prop_assert_eq!(&rescan, &scan);
        let snapshot = mem.clone();
        prop_assert_eq!(table.patch(&mut mem, &rescan), Ok(0));
        prop_assert_eq!(&mem, &snapshot);

        prop_assert_eq!(table.revert_page(&mut mem, PAGE + 0x800), expected);
        prop_assert_eq!(&mem, &before);
        prop_assert!(table.is_empty());
    }

    #[test]
    fn overlay_restores_any_window(bytes in code(), entries in entries(), start in 0..PAGE_SIZE, len in 0usize..64) {
        let mut mem = BufferMemory::new(PAGE, bytes);
        let before = mem.clone();
        let scan = scan_page(&mem, PAGE, &entries);
        let mut table = PatchTable::new();
        table.patch(&mut mem, &scan).expect("a fresh scan patches cleanly");
        let addr = PAGE + start;
        let mut buf = vec![0u8; len];
        let n = mem.read(addr, &mut buf);
        table.overlay_originals(addr, &mut buf[..n]);
        prop_assert_eq!(&buf[..n], &before.bytes[start as usize..start as usize + n]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes at arbitrary addresses, up to the top of the 4 GiB space, with
    /// arbitrary entry points: the scan stays inside the region and is self-consistent.
    #[test]
    fn region_scan_is_total(
        bytes in proptest::collection::vec(any::<u8>(), 0..3000),
        base in prop_oneof![any::<u32>(), (u32::MAX - 4000)..=u32::MAX],
        entries in proptest::collection::vec(any::<u32>(), 0..4),
        near in proptest::collection::vec(0u32..3000, 0..4),
    ) {
        let entries: Vec<u32> =
            entries.into_iter().chain(near.into_iter().map(|o| base.wrapping_add(o))).collect();
        let scan = scan_region(&bytes, base, &entries);
        let end = u64::from(base) + scan.len as u64;
        prop_assert!(scan.len <= bytes.len() && end <= 1 << 32);
        prop_assert!(scan.starts.windows(2).all(|w| w[0] < w[1]));
        for &s in &scan.starts {
            prop_assert!(u64::from(s) >= u64::from(base) && u64::from(s) < end);
        }
        for site in &scan.sites {
            prop_assert!(scan.starts.binary_search(&site.address).is_ok());
            let at = (site.address - base) as usize;
            prop_assert!(at + usize::from(site.length) <= scan.len, "site runs past the region");
        }
        for &e in &scan.exits {
            prop_assert!(u64::from(e) < u64::from(base) || u64::from(e) >= end);
        }
        let census = Census::from_region(&scan);
        prop_assert_eq!(census.instructions, scan.starts.len() as u64);
        prop_assert_eq!(census.classes.values().sum::<u64>(), census.instructions);
    }

    /// A page whose neighbours are unreadable scans exactly like the same bytes as a
    /// region: one algorithm for both, except that a page scan drops the sites of swept
    /// gaps that hold undecodable bytes (data), so its sites are the region's when every
    /// byte decoded, and a subset otherwise.
    #[test]
    fn page_scan_matches_region_scan(bytes in code(), entries in entries(), top in any::<bool>()) {
        let page = if top { 0xFFFF_F000 } else { PAGE };
        let entries: Vec<u32> = entries.iter().map(|e| e - PAGE + page).collect();
        let one_page = &bytes[..PAGE_SIZE as usize];
        let mem = BufferMemory::new(page, one_page.to_vec());
        let p = scan_page(&mem, page, &entries);
        let r = scan_region(one_page, page, &entries);
        prop_assert_eq!(&p.starts, &r.starts);
        if p.invalid_bytes == 0 {
            prop_assert_eq!(&p.sites, &r.sites);
        } else {
            prop_assert!(p.sites.iter().all(|s| r.sites.contains(s)));
        }
        prop_assert_eq!(&p.exits, &r.exits);
        prop_assert_eq!(&p.overlaps, &r.overlaps);
        prop_assert_eq!(p.invalid_bytes, r.invalid_bytes);
        prop_assert_eq!(p.straddle_end, u64::from(page) + u64::from(PAGE_SIZE));
    }
}
