//! The in-place engine's page scanner and patch table.
//!
//! Input layout: a flags byte (page near the top of the address space, 16-bit code whose
//! IP wraps inside the page, bytes carried in from the previous page), up to four entry
//! offsets, then the page's bytes (and up to 14 that follow it).
//!
//! Promises checked: no panic; the scan's starts and sites are sorted and inside the
//! page; patching a fresh table succeeds; a scan through [`PatchTable::unpatched`] of
//! the patched page equals the scan of the original, and patching it again patches
//! nothing new; the guest's view through `overlay_originals` and a page revert both give
//! back the original bytes; a pinned entry survives a revert and unpins cleanly; the
//! region scan of the same bytes is sorted and inside the region.

use crate::input::Input;
use rewriter::patch::{CodeMemoryMut, PatchTable};
use rewriter::scan::{scan_page_after, scan_region, BufferMemory, CodeMemory, CodeSize};

const PAGE_LEN: usize = 4096;
const READ_LEN: usize = PAGE_LEN + 14;

/// Runs one case.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let page: u32 = if flags & 1 != 0 {
        0xFFFF_F000
    } else {
        0x0010_0000
    };
    let size = if flags & 8 != 0 {
        CodeSize::Bits16 { page_ip: 0xf800 }
    } else {
        CodeSize::Bits32
    };
    let carried_in = usize::from(flags >> 4) % 15;
    let count = usize::from((flags >> 1) & 3) + 1;
    let entries: Vec<u32> = (0..count)
        .map(|_| page.wrapping_add(u32::from(input.u16()) & 0x1fff))
        .collect();
    let mut bytes = input.bytes(READ_LEN).to_vec();
    bytes.resize(READ_LEN, 0xcc);
    // On the top page nothing lies past 4 GiB.
    if page == 0xFFFF_F000 {
        bytes.truncate(PAGE_LEN);
    }
    let original = BufferMemory::new(page, bytes.clone());

    let scan = scan_page_after(&original, page, &entries, carried_in, size);
    assert_eq!(scan.page, page);
    let in_page = |a: u32| a & !0xfff == page;
    assert!(scan.starts.windows(2).all(|w| w[0] < w[1]));
    assert!(scan.starts.iter().all(|&a| in_page(a)));
    assert!(scan.sites.windows(2).all(|w| w[0].address < w[1].address));
    for site in &scan.sites {
        assert!(
            in_page(site.address),
            "site {:#x} outside the page",
            site.address
        );
        assert!((1..=15).contains(&site.length));
        assert_eq!(site.instruction.len(), usize::from(site.length));
    }
    assert!(scan.exits.windows(2).all(|w| w[0] < w[1]));

    let mut mem = original.clone();
    let mut table = PatchTable::new();
    let patched = table
        .patch(&mut mem, &scan)
        .expect("a fresh table patches the scan of the bytes it patches");
    assert_eq!(patched, scan.patch_sites().count());

    let rescan = scan_page_after(&table.unpatched(&mem), page, &entries, carried_in, size);
    assert_eq!(rescan, scan, "the unpatched view scans as the original");
    assert_eq!(
        table.patch(&mut mem, &rescan),
        Ok(0),
        "patching is idempotent"
    );

    let mut seen = vec![0u8; PAGE_LEN];
    let got = mem.read(page, &mut seen);
    table.overlay_originals(page, &mut seen[..got]);
    assert_eq!(&seen[..got], &bytes[..got], "the guest reads its own code");

    if let Some(&entry) = entries.first() {
        if in_page(entry) && table.pin_entry(&mut mem, entry).is_ok() {
            table.revert_page(&mut mem, page);
            assert!(table.is_entry(entry));
            assert!(table.unpin_entry(&mut mem, entry));
        }
    }
    table.revert_page(&mut mem, page);
    assert!(!table.is_patched(page));
    assert_eq!(mem.bytes, bytes, "reverting restores the page");
    // Writes outside the memory are refused, not panics.
    assert_eq!(mem.write(page.wrapping_sub(1), &[0]), 0);

    let region = scan_region(&bytes, page, &entries);
    let end = u64::from(page) + region.len as u64;
    assert!(region.starts.windows(2).all(|w| w[0] < w[1]));
    assert!(region
        .starts
        .iter()
        .all(|&a| a >= page && u64::from(a) < end));
    assert!(region.sites.windows(2).all(|w| w[0].address < w[1].address));
}
