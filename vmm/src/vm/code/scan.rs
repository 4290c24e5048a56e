//! Scan-before-execute over guest RAM (ARCHITECTURE.md §5).
//!
//! RAM is mapped without execute permission. The first instruction fetch from a page
//! faults; the page is scanned from the fetch address (plus every entry point learnt for
//! it), its sensitive instructions are patched into traps, and it becomes executable and
//! read-only. A guest write to a scanned page faults; the page goes back to writable,
//! non-executable, and when it is next executed its code is compared with what was
//! scanned: changed code (loaded or self-modifying) is rescanned, and a page that only
//! had data written next to its code is made executable again without a rescan.
//!
//! A scan holds for the code size it was made with ([`CodeSize`]: 16-bit code decodes to
//! other instructions than 32-bit code). Each page records its size; when the code
//! segment changes size ([`CodePages::other_size_pages`]), the pages scanned for the
//! other size stop being executable, and their next fetch treats them like changed
//! code: patches reverted, page rescanned with the new size (or armed again at once
//! when it comes back to the size it was scanned with, its code unchanged).
//!
//! Addresses here are guest-physical: with paging off they equal the linear addresses
//! the host mapping uses. With paging on, pages are scanned by guest-physical frame
//! ([`CodePages::scan_physical`]), so every linear alias of a frame shares one scan and
//! one patch table entry; the shadow state (vm/shadow_backend.rs) owns their host protections.

use foldhash::{HashMap, HashSet};

use rewriter::{
    scan_page_after, Action, Class, CodeMemory, CodeMemoryMut, CodeSize, PageScan, PatchError,
    PatchTable, Site, TRAP_BYTE,
};

use super::fetch::insn_len;
use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::memory::{GuestRam, LinearSpace, MemoryError, Prot};

/// Guest RAM seen as code by the rewriter.
#[derive(Debug)]
pub struct RamCode<'a>(pub &'a GuestRam);

impl CodeMemory for RamCode<'_> {
    fn read(&self, addr: u32, buf: &mut [u8]) -> usize {
        let avail = self.0.size().saturating_sub(u64::from(addr));
        let n = buf.len().min(usize::try_from(avail).unwrap_or(usize::MAX));
        let Some(buf) = buf.get_mut(..n) else {
            return 0;
        };
        match self.0.read(GuestPhys(addr), buf) {
            Ok(()) => n,
            Err(_) => 0,
        }
    }
}

impl CodeMemoryMut for RamCode<'_> {
    fn write(&mut self, addr: u32, data: &[u8]) -> usize {
        let avail = self.0.size().saturating_sub(u64::from(addr));
        let n = data.len().min(usize::try_from(avail).unwrap_or(usize::MAX));
        let Some(data) = data.get(..n) else {
            return 0;
        };
        match self.0.write(GuestPhys(addr), data) {
            Ok(()) => n,
            Err(_) => 0,
        }
    }
}

/// Why a page could not be made executable.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The patcher refused a site.
    #[error("patching page {page}")]
    Patch {
        /// The page.
        page: GuestPhys,
        /// What the patcher said.
        #[source]
        source: PatchError,
    },
    /// The host mapping could not be changed.
    #[error("changing the host mapping of page {page}")]
    Map {
        /// The page.
        page: GuestPhys,
        /// What the mapping layer said.
        #[source]
        source: MemoryError,
    },
}

/// Counters for `--stats`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CodeStats {
    /// Pages scanned for the first time.
    pub pages_scanned: u64,
    /// Scans of pages that had been scanned before and whose code changed since, or that
    /// were entered with another code size than they were scanned with.
    pub rescans: u64,
    /// Scanned pages that stopped being executable because the code segment changed size
    /// (16-bit and 32-bit code).
    pub size_switches: u64,
    /// Scanned pages parked (made writable) because the guest wrote to them.
    pub parks: u64,
    /// Parked pages made executable again without a rescan: the write did not touch
    /// their code.
    pub rearms: u64,
    /// Times a conditional class (the FPU under CR0.TS/EM) came into or out of force.
    pub conditional_switches: u64,
    /// Conditional sites patched or reverted at those times.
    pub conditional_sites: u64,
}

/// A scanned page's code as it was right after patching: every byte that belongs to an
/// instruction the scan decoded, through the end of the last one (which may straddle into
/// the next page). Data bytes between the code are not part of it, so writes to data
/// that shares a page with code do not force a rescan.
#[derive(Debug)]
struct Snapshot {
    /// `(offset from the page, bytes)` runs of code.
    runs: Vec<(u32, Box<[u8]>)>,
    /// The instruction starts the scan found (sorted).
    starts: Vec<u32>,
    /// How many bytes of the next page the page's last instruction takes.
    carried: usize,
    /// The code size the page was scanned with.
    size: CodeSize,
    /// The linear page the scan was made for (the physical page itself with paging off):
    /// where a 16-bit page's IP comes from.
    linear: u32,
}

impl Snapshot {
    /// `end` bounds the bytes kept (contiguous RAM from `page`); `straddle_end` is where
    /// the scan's last instruction ends, possibly in the next page; `linear` is the linear
    /// page the scan was made for.
    fn take(ram: &GuestRam, scan: &PageScan, end: u64, linear: u32) -> Self {
        let (page, starts, straddle_end) = (scan.page, &scan.starts, scan.straddle_end);
        let len = usize::try_from(end.saturating_sub(u64::from(page))).unwrap_or(0);
        let mut bytes = vec![0u8; len];
        let n = RamCode(ram).read(page, &mut bytes);
        bytes.truncate(n);
        // The bytes of a run, as far as they were readable.
        let snapshot = |s: u32, e: u32| -> Box<[u8]> {
            let end = (e as usize).min(bytes.len());
            bytes.get(s as usize..end).unwrap_or_default().into()
        };
        let mut runs: Vec<(u32, Box<[u8]>)> = Vec::new();
        let mut run: Option<(u32, u32)> = None;
        for &start in starts {
            let off = start - page;
            let len = instruction_len(&bytes, off, scan.size);
            match run {
                Some((s, e)) if off <= e => run = Some((s, e.max(off + len))),
                Some((s, e)) => {
                    runs.push((s, snapshot(s, e)));
                    run = Some((off, off + len));
                }
                None => run = Some((off, off + len)),
            }
        }
        if let Some((s, e)) = run {
            runs.push((s, snapshot(s, e)));
        }
        let page_end = u64::from(page) + u64::from(PAGE_SIZE);
        Self {
            runs,
            starts: starts.to_vec(),
            carried: usize::try_from(straddle_end.saturating_sub(page_end)).unwrap_or(0),
            size: scan.size,
            linear,
        }
    }

    fn straddles(&self) -> bool {
        self.carried_out() > 0
    }

    /// How many bytes of the next page the last instruction of this page takes.
    fn carried_out(&self) -> usize {
        self.carried
    }

    /// Whether the page holds the code it was scanned from, for code of `size`.
    fn holds(&self, ram: &GuestRam, page: u32, size: CodeSize) -> bool {
        self.size == size && self.unchanged(ram, page)
    }

    fn unchanged(&self, ram: &GuestRam, page: u32) -> bool {
        self.runs.iter().all(|(off, bytes)| {
            let mut now = vec![0u8; bytes.len()];
            RamCode(ram).read(page + off, &mut now) == bytes.len() && *now == **bytes
        })
    }

    /// Records that the byte at `off` of the page is now `byte` (a conditional site
    /// patched or reverted after the snapshot was taken).
    fn set(&mut self, off: u32, byte: u8) {
        for (start, b) in &mut self.runs {
            if let Some(slot) = off.checked_sub(*start).and_then(|i| b.get_mut(i as usize)) {
                *slot = byte;
            }
        }
    }

    fn byte(&self, off: u32) -> Option<u8> {
        self.runs.iter().find_map(|(start, b)| {
            off.checked_sub(*start)
                .and_then(|i| b.get(i as usize).copied())
        })
    }
}

/// Where the instruction at `last` (the last one of its page, code of `size`) continues,
/// if it runs into the next page and falls through to the instruction after it.
fn fall_through_into_next(
    ram: &GuestRam,
    patches: &PatchTable,
    last: u32,
    size: CodeSize,
) -> Option<u32> {
    let mut bytes = [0u8; 15];
    let n = RamCode(ram).read(last, &mut bytes);
    let code = bytes.get_mut(..n).unwrap_or_default();
    patches.overlay_originals(last, code);
    let mut decoder = iced_x86::Decoder::with_ip(
        size.bitness(),
        code,
        u64::from(last),
        iced_x86::DecoderOptions::NONE,
    );
    let instr = decoder.decode();
    let end = last.checked_add(insn_len(&instr))?;
    let falls_through = !instr.is_invalid() && rewriter::flow(&instr).falls_through();
    (falls_through && page_of(end) != page_of(last)).then_some(end)
}

/// The length of the instruction of code of `size` at `off` in `bytes` (1 if it does not
/// decode: the scan only reports starts it decoded, so that does not happen in practice).
fn instruction_len(bytes: &[u8], off: u32, size: CodeSize) -> u32 {
    let tail = bytes.get(off as usize..).unwrap_or(&[]);
    let mut decoder = iced_x86::Decoder::new(size.bitness(), tail, iced_x86::DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() {
        1
    } else {
        insn_len(&instr)
    }
}

/// A guest-physical code page as the CPU fetches it under paging: its own bytes, then
/// the bytes of the physical page the next linear page maps to; patched bytes read as
/// their originals.
struct PagedCode<'a> {
    ram: &'a GuestRam,
    patches: &'a PatchTable,
    page: u32,
    next: Option<u32>,
}

impl CodeMemory for PagedCode<'_> {
    fn read(&self, addr: u32, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let at = addr.wrapping_add(u32::try_from(done).unwrap_or(u32::MAX));
            let phys = if page_of(at) == self.page {
                at
            } else if page_of(at) == self.page.wrapping_add(PAGE_SIZE) {
                match self.next {
                    Some(next) => next | (at & (PAGE_SIZE - 1)),
                    None => break,
                }
            } else {
                break;
            };
            let room = (PAGE_SIZE - (phys & (PAGE_SIZE - 1))) as usize;
            let n = room.min(buf.len() - done);
            let Some(chunk) = buf.get_mut(done..done + n) else {
                break;
            };
            let got = RamCode(self.ram).read(phys, chunk);
            self.patches
                .overlay_originals(phys, chunk.get_mut(..got).unwrap_or_default());
            done += got;
            if got < n {
                break;
            }
        }
        done
    }
}

/// How a fetch under paging reaches the guest-physical page it scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedFetch {
    /// The physical instruction start the fetch reaches in the page, if known.
    pub entry: Option<GuestPhys>,
    /// The physical page the linear page before this one maps to: the tail of an
    /// instruction straddling in from it is not code of this page.
    pub prev: Option<GuestPhys>,
    /// The physical page the linear page after this one maps to: an instruction
    /// straddling out into it is decoded from the bytes the CPU will fetch.
    pub next: Option<GuestPhys>,
    /// The linear page the guest reaches the page through.
    pub linear: GuestLinear,
    /// The code size the guest executes it with.
    pub size: CodeSize,
}

/// What a scan under paging found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysicalScan {
    /// The page holds patches.
    pub patched: bool,
    /// The physical page after it (through the linear successor) was scanned from inside
    /// the tail of this page's last instruction; the caller reverts and unmarks it so
    /// that its next fetch scans it again.
    pub stale_next: Option<GuestPhys>,
}

/// The scan state of guest RAM and the patch table.
///
/// A scanned page is *armed* (executable, read-only) or *parked* (writable, not
/// executable, patches still in place). A write to an armed page parks it; the next
/// fetch from a parked page compares it with its snapshot: unchanged code is armed again
/// at once, changed code has its untouched trap bytes restored and is rescanned.
#[derive(Debug, Default)]
pub struct CodePages {
    /// Armed pages.
    armed: HashMap<u32, Snapshot>,
    /// Parked pages.
    parked: HashMap<u32, Snapshot>,
    /// Pages that have ever been scanned (to tell rescans from first scans).
    ever_scanned: HashSet<u32>,
    /// Entry points learnt for each page: fetch addresses and direct branch targets from
    /// other pages, with the code size they were learnt in. A rescan starts from all of
    /// them of its size (an entry of 32-bit code says nothing of 16-bit code).
    entries: HashMap<u32, Vec<(u32, CodeSize)>>,
    /// The code segment armed pages were made executable for: its D flag, and for 16-bit
    /// code its base modulo 64 KiB (what a 16-bit page's IP depends on). `None` before
    /// the first fetch.
    segment: Option<(bool, u32)>,
    /// The patches in force, keyed by guest-physical address.
    pub patches: PatchTable,
    /// Classes patched besides the [`rewriter::Action::Patch`] ones: CPUID, where the
    /// host has no CPUID faulting (ARCHITECTURE.md §2), and the conditional classes in
    /// force ([`CodePages::set_conditional`]).
    pub also_patch: Vec<Class>,
    /// The conditional-class sites each armed page's last scan found, patched or not.
    conditional: HashMap<u32, Vec<Site>>,
    /// Counters.
    pub stats: CodeStats,
    /// Translate mode: guest-physical pages the translation cache holds blocks of,
    /// write-protected like armed pages (nothing is patched in them).
    translated: HashSet<u32>,
    /// Translated pages written since the run loop last took them: their blocks are
    /// stale ([`CodePages::take_written`]).
    written: Vec<u32>,
}

fn page_of(addr: u32) -> u32 {
    addr & !(PAGE_SIZE - 1)
}

fn map_err(page: u32) -> impl FnOnce(MemoryError) -> CodeError {
    move |source| CodeError::Map {
        page: GuestPhys(page),
        source,
    }
}

fn patch_err(page: u32) -> impl FnOnce(PatchError) -> CodeError {
    move |source| CodeError::Patch {
        page: GuestPhys(page),
        source,
    }
}

/// With paging off the host maps guest RAM 1:1: a physical page is also the linear page
/// the host protections apply to.
const fn identity(page: u32) -> GuestLinear {
    GuestLinear(page)
}

/// Drops a page's patch entries, restoring an original byte only where the trap byte is
/// still there and was there at scan time: a byte the guest rewrote is the guest's.
struct Reconcile<'a> {
    ram: &'a GuestRam,
    page: u32,
    snapshot: &'a Snapshot,
}

impl CodeMemory for Reconcile<'_> {
    fn read(&self, addr: u32, buf: &mut [u8]) -> usize {
        RamCode(self.ram).read(addr, buf)
    }
}

impl CodeMemoryMut for Reconcile<'_> {
    fn write(&mut self, addr: u32, data: &[u8]) -> usize {
        let off = addr - self.page;
        let mut now = [0u8; 1];
        let unchanged = RamCode(self.ram).read(addr, &mut now) == 1
            && now[0] == TRAP_BYTE
            && self.snapshot.byte(off) == Some(TRAP_BYTE);
        if unchanged {
            RamCode(self.ram).write(addr, data);
        }
        data.len()
    }
}

impl CodePages {
    /// Whether `addr`'s page is scanned and executable.
    pub fn is_armed(&self, addr: GuestPhys) -> bool {
        let page = page_of(addr.raw());
        self.armed.contains_key(&page) || self.translated.contains(&page)
    }

    /// Translate mode: the translation cache took a block from guest-physical `page`.
    /// Returns whether the page is new to the set (paging off, its 1:1 mapping is then
    /// write-protected here; with paging on the caller marks it in the shadow state).
    ///
    /// # Errors
    /// [`CodeError::Map`] when the host mapping could not be changed.
    pub fn arm_translated(
        &mut self,
        space: &mut LinearSpace,
        page: GuestPhys,
        paging: bool,
    ) -> Result<bool, CodeError> {
        let page = page_of(page.raw());
        if !self.translated.insert(page) {
            return Ok(false);
        }
        if !paging {
            space
                .protect(identity(page), PAGE_SIZE, Prot::R)
                .map_err(map_err(page))?;
        }
        Ok(true)
    }

    /// The translated pages written since the last call (their blocks must go).
    pub fn take_written(&mut self) -> Vec<GuestPhys> {
        std::mem::take(&mut self.written)
            .into_iter()
            .map(GuestPhys)
            .collect()
    }

    /// Translate mode: forgets every translated page (the cache was flushed). With
    /// paging off their 1:1 mappings become writable again.
    ///
    /// # Errors
    /// [`CodeError::Map`] when the host mapping could not be changed.
    pub fn forget_translated(
        &mut self,
        space: &mut LinearSpace,
        paging: bool,
    ) -> Result<Vec<GuestPhys>, CodeError> {
        let pages: Vec<u32> = self.translated.drain().collect();
        if !paging {
            for &page in &pages {
                space
                    .protect(identity(page), PAGE_SIZE, Prot::RW)
                    .map_err(map_err(page))?;
            }
        }
        self.written.clear();
        Ok(pages.into_iter().map(GuestPhys).collect())
    }

    fn learn_entry(&mut self, addr: u32, size: CodeSize) {
        let list = self.entries.entry(page_of(addr)).or_default();
        if !list.contains(&(addr, size)) {
            list.push((addr, size));
        }
    }

    /// The entry points learnt for `page` in code of `size`.
    fn entries_of(&self, page: u32, size: CodeSize) -> Vec<u32> {
        self.entries.get(&page).map_or_else(Vec::new, |list| {
            list.iter()
                .filter(|&&(_, s)| s == size)
                .map(|&(addr, _)| addr)
                .collect()
        })
    }

    /// The guest now executes through a code segment with D flag `code_32` and base
    /// `cs_base`: the armed pages scanned for another code size (or, in 16-bit code, for
    /// another IP of their first byte), which must not run with the traps placed for
    /// it. Empty when the segment is the one the pages were last checked against.
    ///
    /// With paging off the caller parks them ([`CodePages::park_for_size`]): the next
    /// fetch rescans each, or arms it again at once if it comes back to its size
    /// unchanged. With paging on it reverts them ([`CodePages::revert_physical`]) and
    /// takes them out of the shadow state's code pages, so the next fetch scans them.
    pub fn other_size_pages(&mut self, code_32: bool, cs_base: u32) -> Vec<GuestPhys> {
        let key = (code_32, if code_32 { 0 } else { cs_base & 0xffff });
        if self.segment == Some(key) {
            return Vec::new();
        }
        self.segment = Some(key);
        let mut other: Vec<u32> = self
            .armed
            .iter()
            .filter(|(_, s)| s.size != CodeSize::of_segment(code_32, cs_base, s.linear))
            .map(|(&page, _)| page)
            .collect();
        other.sort_unstable();
        self.stats.size_switches += other.len() as u64;
        other.into_iter().map(GuestPhys).collect()
    }

    /// Parks armed `pages` (paging off) because the code segment changed size: they stay
    /// patched but are no longer executable, until a fetch checks them against the size
    /// that runs them.
    ///
    /// # Errors
    /// [`CodeError::Map`] when the host mapping could not be changed.
    pub fn park_for_size(
        &mut self,
        space: &mut LinearSpace,
        pages: &[GuestPhys],
    ) -> Result<(), CodeError> {
        for page in pages {
            self.park(space, page_of(page.raw()), Prot::RW)?;
        }
        Ok(())
    }

    /// A fetch from `page`, which is not executable, in code of `size`: arm it again if it
    /// is parked and its code is unchanged and was scanned for `size`; otherwise scan it,
    /// patch it, and map it execute + read-only. `entry` is the instruction start the fetch
    /// is known to reach (none when it is not known, e.g. a fetch that only continued an
    /// instruction from the previous page).
    ///
    /// # Errors
    /// [`CodeError`] when patching or remapping failed (a monitor-side failure).
    pub fn on_fetch(
        &mut self,
        ram: &GuestRam,
        space: &mut LinearSpace,
        page: GuestPhys,
        entry: Option<GuestPhys>,
        size: CodeSize,
    ) -> Result<(), CodeError> {
        let page = page_of(page.raw());
        if let Some(entry) = entry {
            self.learn_entry(entry.raw(), size);
        }
        if let Some(snapshot) = self.parked.remove(&page) {
            if snapshot.holds(ram, page, size) {
                self.stats.rearms += 1;
                self.armed.insert(page, snapshot);
                // Conditional classes that came into force while the page was parked.
                self.patch_conditional(ram, page)?;
                space
                    .protect(identity(page), PAGE_SIZE, Prot::RX)
                    .map_err(map_err(page))?;
                return Ok(());
            }
            let mut reconcile = Reconcile {
                ram,
                page,
                snapshot: &snapshot,
            };
            self.patches.revert_page(&mut reconcile, page);
        }
        let targets = self.scan_and_patch(ram, page, size)?;
        space
            .protect(identity(page), PAGE_SIZE, Prot::RX)
            .map_err(map_err(page))?;
        // What this page taught about other pages: an armed page that did not see one of
        // these as an instruction start was scanned from too little (its sweep may have
        // lost sync, e.g. starting inside an instruction that straddles into it); rescan
        // it from everything known now.
        for target in targets {
            let other = page_of(target);
            // Stale: the page did not see `target` as a start, or (when `target` is where
            // this page's last instruction ends) it started instructions inside that
            // instruction's tail.
            let tail = other == page.wrapping_add(PAGE_SIZE)
                && self
                    .armed
                    .get(&page)
                    .is_some_and(|s| s.carried_out() == (target - other) as usize);
            let stale = self.armed.get(&other).is_some_and(|s| {
                s.size == size
                    && (s.starts.binary_search(&target).is_err()
                        || (tail && s.starts.first().is_some_and(|&first| first < target)))
            });
            if stale {
                self.patches.revert_page(&mut RamCode(ram), other);
                self.armed.remove(&other);
                self.scan_and_patch(ram, other, size)?;
            }
        }
        Ok(())
    }

    /// Scans `page` as code of `size` from its known entries, patches it and records it
    /// armed (the caller maps it). Returns the instruction starts it found in other pages:
    /// direct branch targets, and the end of an instruction that straddles into the next
    /// page.
    fn scan_and_patch(
        &mut self,
        ram: &GuestRam,
        page: u32,
        size: CodeSize,
    ) -> Result<Vec<u32>, CodeError> {
        let entries = self.entries_of(page, size);
        // The tail of the previous page's last instruction is not code of this page.
        let carried_in = page
            .checked_sub(PAGE_SIZE)
            .and_then(|prev| self.armed.get(&prev))
            .filter(|prev| prev.size == size)
            .map_or(0, Snapshot::carried_out);
        let scan = {
            let mem = RamCode(ram);
            scan_page_after(
                &self.patches.unpatched(&mem),
                page,
                &entries,
                carried_in,
                size,
            )
        };
        self.patches
            .patch_with(&mut RamCode(ram), &scan, &self.also_patch)
            .map_err(patch_err(page))?;
        let mut targets: Vec<u32> = scan
            .exits
            .iter()
            .copied()
            .filter(|&t| page_of(t) != page)
            .collect();
        if let Some(next) = scan
            .starts
            .last()
            .and_then(|&last| fall_through_into_next(ram, &self.patches, last, size))
        {
            targets.push(next);
        }
        for &t in &targets {
            self.learn_entry(t, size);
        }
        self.record_scan(page, &scan);
        let snapshot = Snapshot::take(ram, &scan, scan.straddle_end, page);
        self.armed.insert(page, snapshot);
        Ok(targets)
    }

    /// Counts a scan of `page` and keeps its conditional-class sites.
    fn record_scan(&mut self, page: u32, scan: &PageScan) {
        if self.ever_scanned.insert(page) {
            self.stats.pages_scanned += 1;
        } else {
            self.stats.rescans += 1;
        }
        let sites: Vec<Site> = scan
            .sites
            .iter()
            .filter(|s| s.class.action() == Action::Conditional)
            .copied()
            .collect();
        if sites.is_empty() {
            self.conditional.remove(&page);
        } else {
            self.conditional.insert(page, sites);
        }
    }

    /// Whether the sites of `class` are patched now.
    pub fn is_in_force(&self, class: Class) -> bool {
        self.also_patch.contains(&class)
    }

    /// Puts a conditional class in force (its sites trap) or out of it (they run
    /// natively): the guest's CR0.TS or CR0.EM went on or off for [`Class::Fpu`].
    ///
    /// Armed pages are patched or reverted at once, their snapshots following; pages
    /// scanned later follow [`CodePages::also_patch`]; a parked page gets its sites when it
    /// is armed again. Reverting restores a byte only where the trap byte is still there.
    /// Returns how many sites changed.
    ///
    /// # Errors
    /// [`CodeError::Patch`] when a site of an armed page could not be patched.
    pub fn set_conditional(
        &mut self,
        ram: &GuestRam,
        class: Class,
        on: bool,
    ) -> Result<usize, CodeError> {
        if on == self.is_in_force(class) {
            return Ok(0);
        }
        self.stats.conditional_switches += 1;
        let mut changed = 0;
        if on {
            self.also_patch.push(class);
            let pages: Vec<u32> = self.armed.keys().copied().collect();
            for page in pages {
                changed += self.patch_conditional(ram, page)?;
            }
        } else {
            self.also_patch.retain(|&c| c != class);
            for addr in self.patches.sites_of(class) {
                let mut now = [0u8; 1];
                let trapped = RamCode(ram).read(addr, &mut now) == 1 && now[0] == TRAP_BYTE;
                let original = self.patches.lookup(addr).map(|p| p.original[0]);
                let reverted = if trapped {
                    self.patches.revert_site(&mut RamCode(ram), addr)
                } else {
                    // The guest rewrote the byte of a parked page: the byte is its own.
                    self.patches.forget_site(addr)
                };
                if let (true, Some(original)) = (reverted, original) {
                    changed += 1;
                    let page = page_of(addr);
                    for snapshot in [self.armed.get_mut(&page), self.parked.get_mut(&page)]
                        .into_iter()
                        .flatten()
                    {
                        snapshot.set(addr - page, original);
                    }
                }
            }
        }
        self.stats.conditional_sites += changed as u64;
        Ok(changed)
    }

    /// Patches the recorded conditional sites of armed `page` whose class is in force.
    fn patch_conditional(&mut self, ram: &GuestRam, page: u32) -> Result<usize, CodeError> {
        let Some(sites) = self.conditional.get(&page) else {
            return Ok(0);
        };
        let wanted: Vec<Site> = sites
            .iter()
            .filter(|s| self.also_patch.contains(&s.class))
            .copied()
            .collect();
        let patched = self
            .patches
            .patch_sites_with(&mut RamCode(ram), &wanted, &self.also_patch)
            .map_err(patch_err(page))?;
        if patched > 0 {
            if let Some(snapshot) = self.armed.get_mut(&page) {
                for site in &wanted {
                    snapshot.set(site.address - page, TRAP_BYTE);
                }
            }
        }
        Ok(patched)
    }

    /// Runs the instruction at patched `addr` natively once: its original byte goes back
    /// until [`CodePages::relatch`]. Returns whether there was a patch to lift.
    pub fn lift(&mut self, ram: &GuestRam, addr: GuestPhys) -> bool {
        self.patches.lift(&mut RamCode(ram), addr.raw())
    }

    /// Puts back the trap byte [`CodePages::lift`] lifted, if the site is still patched.
    pub fn relatch(&mut self, ram: &GuestRam, addr: GuestPhys) {
        self.patches.relatch(&mut RamCode(ram), addr.raw());
    }

    /// A write to `addr` in an armed page: park the page (writable, not executable), and
    /// the previous page too when its last instruction runs into this one.
    ///
    /// # Errors
    /// [`CodeError::Map`] when the host mapping could not be changed.
    pub fn on_write(&mut self, space: &mut LinearSpace, addr: GuestPhys) -> Result<(), CodeError> {
        let page = page_of(addr.raw());
        if self.translated.remove(&page) {
            self.written.push(page);
            self.stats.parks += 1;
            return space
                .protect(identity(page), PAGE_SIZE, Prot::RW)
                .map_err(map_err(page));
        }
        self.park(space, page, Prot::RW)?;
        if let Some(prev) = page.checked_sub(PAGE_SIZE) {
            if self.armed.get(&prev).is_some_and(Snapshot::straddles) {
                self.park(space, prev, Prot::R)?;
            }
        }
        Ok(())
    }

    fn park(&mut self, space: &mut LinearSpace, page: u32, prot: Prot) -> Result<(), CodeError> {
        let Some(snapshot) = self.armed.remove(&page) else {
            return Ok(());
        };
        self.parked.insert(page, snapshot);
        self.stats.parks += 1;
        space
            .protect(identity(page), PAGE_SIZE, prot)
            .map_err(map_err(page))
    }

    /// Makes a parked page writable *and* executable, patches in place, so that the one
    /// instruction that writes to its own page can be single-stepped.
    ///
    /// # Errors
    /// [`CodeError::Map`] when the host mapping could not be changed.
    pub fn open_for_step(
        &mut self,
        space: &mut LinearSpace,
        page: GuestPhys,
    ) -> Result<(), CodeError> {
        let page = page.raw();
        space
            .protect(identity(page), PAGE_SIZE, Prot::RWX)
            .map_err(map_err(page))
    }

    /// Ends a single step: the page goes back to writable, not executable.
    ///
    /// # Errors
    /// [`CodeError::Map`] when the host mapping could not be changed.
    pub fn close_after_step(
        &mut self,
        space: &mut LinearSpace,
        page: GuestPhys,
    ) -> Result<(), CodeError> {
        let page = page.raw();
        space
            .protect(identity(page), PAGE_SIZE, Prot::RW)
            .map_err(map_err(page))
    }

    /// Paging goes on: from now on pages are keyed by guest-physical address and their
    /// host protections belong to the shadow state. Parked pages (writable, so possibly
    /// rewritten) lose their patches; the armed pages, patches intact, are returned so the
    /// shadow state can treat them as scanned code.
    pub fn enter_paging(&mut self, ram: &GuestRam) -> Vec<GuestPhys> {
        for (page, snapshot) in std::mem::take(&mut self.parked) {
            let mut reconcile = Reconcile {
                ram,
                page,
                snapshot: &snapshot,
            };
            self.patches.revert_page(&mut reconcile, page);
        }
        self.entries.clear();
        self.armed.keys().copied().map(GuestPhys).collect()
    }

    /// Paging goes off: every scanned page loses its patches (their mappings are about
    /// to become the 1:1 RAM mapping, writable and not executable) and is scanned afresh
    /// when next executed.
    pub fn leave_paging(&mut self, ram: &GuestRam) {
        for (page, _) in std::mem::take(&mut self.armed) {
            self.patches.revert_page(&mut RamCode(ram), page);
        }
        self.parked.clear();
        self.entries.clear();
    }

    /// Scans and patches guest-physical `page` under paging for `fetch`, from its entry
    /// and the entries learnt before for its code size. Branch targets in other pages are
    /// not learnt: their physical addresses depend on mappings this page does not know.
    ///
    /// # Errors
    /// [`CodeError::Patch`] when the patcher refused a site.
    pub fn scan_physical(
        &mut self,
        ram: &GuestRam,
        page: GuestPhys,
        fetch: PagedFetch,
    ) -> Result<PhysicalScan, CodeError> {
        let page = page_of(page.raw());
        let size = fetch.size;
        if let Some(entry) = fetch.entry {
            self.learn_entry(entry.raw(), size);
        }
        let prev = fetch.prev.map(GuestPhys::raw);
        let next = fetch.next.map(GuestPhys::raw);
        let entries = self.entries_of(page, size);
        let carried_in = prev
            .map(page_of)
            .filter(|&q| q != page)
            .and_then(|q| self.armed.get(&q))
            .filter(|q| q.size == size)
            .map_or(0, Snapshot::carried_out);
        let scan = {
            let mem = PagedCode {
                ram,
                patches: &self.patches,
                page,
                next,
            };
            scan_page_after(&mem, page, &entries, carried_in, size)
        };
        self.patches
            .patch_with(&mut RamCode(ram), &scan, &self.also_patch)
            .map_err(patch_err(page))?;
        self.record_scan(page, &scan);
        let page_end = u64::from(page) + u64::from(PAGE_SIZE);
        let snapshot = Snapshot::take(ram, &scan, page_end, page_of(fetch.linear.raw()));
        let carried = snapshot.carried_out();
        self.armed.insert(page, snapshot);
        // A successor scanned before this page started its code inside the tail of this
        // page's last instruction: it must be scanned again, knowing the tail.
        let stale_next = next.map(page_of).filter(|&n| {
            n != page
                && carried > 0
                && self.armed.get(&n).is_some_and(|s| {
                    s.starts.first().is_some_and(|&first| {
                        first < n.saturating_add(u32::try_from(carried).unwrap_or(u32::MAX))
                    })
                })
        });
        Ok(PhysicalScan {
            patched: self.patches.is_patched(page),
            stale_next: stale_next.map(GuestPhys),
        })
    }

    /// The guest writes to scanned guest-physical `page` under paging (its mappings are
    /// read-only, so the trap bytes are still in place): restore the original bytes.
    pub fn revert_physical(&mut self, ram: &GuestRam, page: GuestPhys) {
        let page = page_of(page.raw());
        if self.translated.remove(&page) {
            self.written.push(page);
            self.stats.parks += 1;
        }
        self.patches.revert_page(&mut RamCode(ram), page);
        if self.armed.remove(&page).is_some() {
            self.stats.parks += 1;
        }
    }

    /// Copies guest RAM at `addr` into `buf` as the guest wrote it: trap bytes replaced by
    /// the originals. Returns how many bytes were readable.
    pub fn read_original(&self, ram: &GuestRam, addr: GuestPhys, buf: &mut [u8]) -> usize {
        let n = RamCode(ram).read(addr.raw(), buf);
        self.patches
            .overlay_originals(addr.raw(), buf.get_mut(..n).unwrap_or_default());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 32-bit fetch of physical `page`, reached through the same linear page.
    fn paged(page: u32, entry: Option<u32>, prev: Option<u32>, next: Option<u32>) -> PagedFetch {
        PagedFetch {
            entry: entry.map(GuestPhys),
            prev: prev.map(GuestPhys),
            next: next.map(GuestPhys),
            linear: GuestLinear(page),
            size: CodeSize::Bits32,
        }
    }

    #[test]
    fn paged_code_continues_in_the_frame_the_next_linear_page_maps() {
        let ram = GuestRam::new(1 << 20).unwrap();
        // Frame 0x5000 ends with B8 (MOV EAX, imm32); the linear page after it maps
        // frame 0x2000, whose first bytes complete the instruction.
        ram.write(GuestPhys(0x5fff), &[0xb8]).unwrap();
        ram.write(GuestPhys(0x2000), &[1, 2, 3, 4, 0x9c]).unwrap();
        ram.write(GuestPhys(0x6000), &[0xee; 8]).unwrap();
        let patches = PatchTable::new();
        let mem = PagedCode {
            ram: &ram,
            patches: &patches,
            page: 0x5000,
            next: Some(0x2000),
        };
        let mut buf = [0u8; 6];
        assert_eq!(mem.read(0x5fff, &mut buf), 6);
        assert_eq!(buf, [0xb8, 1, 2, 3, 4, 0x9c]);
        // Without a translation for the next page the read stops at the page end.
        let alone = PagedCode { next: None, ..mem };
        assert_eq!(alone.read(0x5fff, &mut buf), 1);
    }

    #[test]
    fn a_physical_scan_skips_the_tail_of_an_instruction_straddling_in_from_the_linear_predecessor()
    {
        let ram = GuestRam::new(1 << 20).unwrap();
        // Frame 0x5000 ends with B8 (MOV EAX, imm32); its immediate, four 06 bytes (PUSH ES
        // when decoded on their own), opens frame 0x2000, the next linear page.
        ram.write(GuestPhys(0x5fff), &[0xb8]).unwrap();
        ram.write(GuestPhys(0x2000), &[6, 6, 6, 6, 0x9c, 0xc3])
            .unwrap();
        let mut code = CodePages::default();
        // Frame 0x2000 first, entered after the tail: its sweep may take the tail for code.
        code.scan_physical(
            &ram,
            GuestPhys(0x2000),
            paged(0x2000, Some(0x2004), None, None),
        )
        .unwrap();
        let mut bytes = [0u8; 6];
        RamCode(&ram).read(0x2000, &mut bytes);
        assert_eq!(
            bytes[0], TRAP_BYTE,
            "the hazard: the tail was swept as PUSH ES"
        );
        let first = code.scan_physical(
            &ram,
            GuestPhys(0x5000),
            paged(0x5000, Some(0x5fff), None, Some(0x2000)),
        );
        assert_eq!(first.unwrap().stale_next, Some(GuestPhys(0x2000)));
        code.revert_physical(&ram, GuestPhys(0x2000));
        let again = code
            .scan_physical(
                &ram,
                GuestPhys(0x2000),
                paged(0x2000, None, Some(0x5000), None),
            )
            .unwrap();
        assert!(again.patched && again.stale_next.is_none());
        RamCode(&ram).read(0x2000, &mut bytes);
        assert_eq!(
            bytes,
            [6, 6, 6, 6, TRAP_BYTE, 0xc3],
            "the immediate is intact"
        );
        // Scanned in the other order, the tail is known at once.
        let ram = GuestRam::new(1 << 20).unwrap();
        ram.write(GuestPhys(0x5fff), &[0xb8]).unwrap();
        ram.write(GuestPhys(0x2000), &[6, 6, 6, 6, 0x9c, 0xc3])
            .unwrap();
        let mut code = CodePages::default();
        let pred = code.scan_physical(
            &ram,
            GuestPhys(0x5000),
            paged(0x5000, Some(0x5fff), None, Some(0x2000)),
        );
        assert_eq!(pred.unwrap().stale_next, None);
        code.scan_physical(
            &ram,
            GuestPhys(0x2000),
            paged(0x2000, Some(0x2004), Some(0x5000), None),
        )
        .unwrap();
        RamCode(&ram).read(0x2000, &mut bytes);
        assert_eq!(bytes, [6, 6, 6, 6, TRAP_BYTE, 0xc3]);
    }

    #[test]
    fn a_page_entered_with_the_other_code_size_is_rescanned_for_it() {
        let ram = GuestRam::new(1 << 20).unwrap();
        // mov ax, 0x38; mov ds, ax; mov es, ax; ret as 16-bit code. As 32-bit code it is
        // `mov eax, 0xd88e0038; mov es, eax; ret`: one site, at 5.
        let code = [0xb8, 0x38, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0xc3];
        ram.write(GuestPhys(0x6000), &code).unwrap();
        let mut pages = CodePages::default();
        assert!(
            pages.other_size_pages(true, 0).is_empty(),
            "nothing armed yet"
        );
        pages
            .scan_physical(
                &ram,
                GuestPhys(0x6000),
                paged(0x6000, Some(0x6000), None, None),
            )
            .unwrap();
        let mut now = [0u8; 8];
        RamCode(&ram).read(0x6000, &mut now);
        assert_eq!(now, [0xb8, 0x38, 0x00, 0x8e, 0xd8, TRAP_BYTE, 0xc0, 0xc3]);
        // Entered as 16-bit code (CS base 0x6000, the page is IP 0): the page was scanned
        // for the other size.
        assert_eq!(pages.other_size_pages(false, 0x6000), [GuestPhys(0x6000)]);
        // Asked again for the same segment, or one whose base gives the page the same IP:
        // nothing new.
        assert!(pages.other_size_pages(false, 0x6000).is_empty());
        assert!(pages.other_size_pages(false, 0x1_6000).is_empty());
        pages.revert_physical(&ram, GuestPhys(0x6000));
        RamCode(&ram).read(0x6000, &mut now);
        assert_eq!(now, code, "the 32-bit traps are gone");
        let bits16 = PagedFetch {
            size: CodeSize::of_segment(false, 0x6000, 0x6000),
            ..paged(0x6000, Some(0x6000), None, None)
        };
        let scan = pages
            .scan_physical(&ram, GuestPhys(0x6000), bits16)
            .unwrap();
        assert!(scan.patched);
        RamCode(&ram).read(0x6000, &mut now);
        assert_eq!(
            now,
            [0xb8, 0x38, 0x00, TRAP_BYTE, 0xd8, TRAP_BYTE, 0xc0, 0xc3],
            "traps on the 16-bit instruction starts"
        );
        let mov_ds = pages.patches.lookup(0x6003).unwrap();
        assert_eq!(mov_ds.class, Class::MovToSreg);
        assert_eq!(mov_ds.instruction.code(), iced_x86::Code::Mov_Sreg_rm16);
        assert_eq!((pages.stats.pages_scanned, pages.stats.rescans), (1, 1));
        // Back in 32-bit code the page is of the other size again; a 16-bit segment whose
        // base puts the page at another IP is too.
        assert_eq!(pages.other_size_pages(true, 0), [GuestPhys(0x6000)]);
        assert_eq!(pages.other_size_pages(false, 0x5ff0), [GuestPhys(0x6000)]);
        assert_eq!(pages.stats.size_switches, 3);
    }

    #[test]
    fn a_physical_scan_patches_the_page_and_a_write_reverts_it() {
        let ram = GuestRam::new(1 << 20).unwrap();
        // pushf; pop eax; ret at 0x3000
        ram.write(GuestPhys(0x3000), &[0x9c, 0x58, 0xc3]).unwrap();
        let mut code = CodePages::default();
        assert!(
            code.scan_physical(
                &ram,
                GuestPhys(0x3000),
                paged(0x3000, Some(0x3000), None, None)
            )
            .unwrap()
            .patched
        );
        assert_eq!(ram.read_u8(GuestPhys(0x3000)).unwrap(), TRAP_BYTE);
        let mut orig = [0u8; 3];
        code.read_original(&ram, GuestPhys(0x3000), &mut orig);
        assert_eq!(orig, [0x9c, 0x58, 0xc3]);
        code.revert_physical(&ram, GuestPhys(0x3000));
        assert_eq!(ram.read_u8(GuestPhys(0x3000)).unwrap(), 0x9c);
        assert!(!code.patches.is_patched(0x3000));
        // The second scan of the page counts as a rescan.
        code.scan_physical(&ram, GuestPhys(0x3000), paged(0x3000, None, None, None))
            .unwrap();
        assert_eq!((code.stats.pages_scanned, code.stats.rescans), (1, 1));
    }
}
