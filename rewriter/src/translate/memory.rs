//! Guest code held in memory the translator can read: for tests, examples and tools.

use std::collections::BTreeMap;

use shadow_paging::PAGE_SIZE;

use super::decode::CodeReader;

/// Guest pages by linear address, each with the guest-physical page it maps to; any
/// other linear page faults on fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestPages {
    pages: BTreeMap<u32, (u64, Vec<u8>)>,
}

impl GuestPages {
    /// No pages.
    pub fn new() -> Self {
        Self::default()
    }

    /// `bytes` at linear `base`, identity-mapped, in as many pages as they touch;
    /// the rest of those pages is zero.
    pub fn flat(base: u32, bytes: &[u8]) -> Self {
        let mut pages = Self::new();
        let mut at = base;
        let mut rest = bytes;
        while !rest.is_empty() {
            let page = at & !(PAGE_SIZE - 1);
            if !pages.pages.contains_key(&page) {
                pages.map(page, u64::from(page), &[]);
            }
            let in_page = usize::try_from(at - page).unwrap_or(0);
            let n = rest.len().min(PAGE_SIZE as usize - in_page);
            let (chunk, tail) = rest.split_at_checked(n).unwrap_or((rest, &[]));
            let dst = pages
                .pages
                .get_mut(&page)
                .and_then(|(_, data)| data.get_mut(in_page..in_page + chunk.len()));
            if let Some(dst) = dst {
                dst.copy_from_slice(chunk);
            }
            rest = tail;
            at = at.wrapping_add(u32::try_from(n).unwrap_or(0));
        }
        pages
    }

    /// Maps the linear page at `linear` (rounded down) to the physical page `phys`
    /// holding `bytes` (zero-filled to a page).
    pub fn map(&mut self, linear: u32, phys: u64, bytes: &[u8]) {
        let mut data = bytes.to_vec();
        data.resize(PAGE_SIZE as usize, 0);
        self.pages.insert(linear & !(PAGE_SIZE - 1), (phys, data));
    }

    /// Unmaps the linear page at `linear` (rounded down).
    pub fn unmap(&mut self, linear: u32) {
        self.pages.remove(&(linear & !(PAGE_SIZE - 1)));
    }
}

impl CodeReader for GuestPages {
    fn fetch(&self, linear: u32, buf: &mut [u8]) -> Option<u64> {
        let page = linear & !(PAGE_SIZE - 1);
        let (phys, data) = self.pages.get(&page)?;
        let at = usize::try_from(linear - page).ok()?;
        buf.copy_from_slice(data.get(at..at + buf.len())?);
        Some(*phys)
    }
}
