//! The shadow address space: which linear pages are mapped, from what, through which
//! guest entries; and what to drop or re-protect when the guest changes its tables or
//! its control registers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::bits::{CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, CR4_PSE, EFER_NXE};
use crate::decision::{grant, Decision, EmulateReason, HostAccess, MapDecision, PageUse, Prot};
use crate::memory::GuestPhysMemory;
use crate::mode::{PaeRoots, PagingContext, PagingMode, PdpteFault};
use crate::walk::{pde_address, peek, walk, Access, PageSize, Perms, TableEntries, Translation};

/// The host side of shadow mappings: `mmap` of the guest-RAM memfd, `munmap` and
/// `mprotect` in the engine, a recording fake in tests. Lengths are multiples of 4 KiB.
/// A backend that cannot carry out a call has lost the guest's address space and must
/// stop the VM.
pub trait HostMapper {
    /// Maps `len` bytes of guest RAM from `gpa` at `lin`, replacing what was there.
    fn map(&mut self, lin: GuestLinear, gpa: GuestPhys, len: u32, prot: Prot);
    /// Removes the mappings of `len` bytes at `lin`.
    fn unmap(&mut self, lin: GuestLinear, len: u32);
    /// Changes the protections of `len` mapped bytes at `lin`.
    fn protect(&mut self, lin: GuestLinear, len: u32, prot: Prot);
}

/// Tunables of the shadow address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowConfig {
    /// Linear pages below this are never mapped (the host's `mmap_min_addr`); accesses
    /// there are emulated.
    pub min_linear: GuestLinear,
    /// Most 4 KiB pages one fault maps. Rounded down to a power of two, at most 512, so a
    /// run never leaves the guest page table or large page it started in.
    pub max_run_pages: u32,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self {
            min_linear: GuestLinear(PAGE_SIZE),
            max_run_pages: 16,
        }
    }
}

/// One 4 KiB shadow mapping and what it was derived from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowPage {
    /// The guest-physical frame mapped.
    pub gpa: GuestPhys,
    /// Current host protections.
    pub prot: Prot,
    /// Guest rights at the time of mapping.
    pub perms: Perms,
    /// D was set in the guest entry.
    pub dirty: bool,
    /// G was set in the guest entry.
    pub global: bool,
    /// Protections are those user mode may have.
    pub for_user: bool,
    /// Size of the guest page this lies in.
    pub size: PageSize,
    /// The guest entries it was derived from.
    pub entries: TableEntries,
}

/// The shadow address space of one guest.
///
/// What it keeps true of the host address space (and the property tests check against
/// an independent walk after arbitrary sequences of guest actions):
/// * every mapped linear page translates, in the guest's current tables, to the frame
///   it maps, through entries whose accessed bits are set (global pages that survived a
///   CR3 write excepted, as the TLB keeps them);
/// * a page is writable only if the guest allows the write at the privilege it was
///   mapped for, its dirty bit is set, and its frame is neither a page table of any
///   mapping nor scanned code — so every guest write to a page table traps;
/// * a page is executable only if its frame is scanned code and the guest does not mark
///   it NX.
#[derive(Clone, Debug)]
pub struct ShadowState {
    ctx: PagingContext,
    config: ShadowConfig,
    /// Linear page number → mapping.
    maps: BTreeMap<u32, ShadowPage>,
    /// Page-table frame number → linear pages derived through entries in it.
    by_table: BTreeMap<u32, BTreeSet<u32>>,
    /// Frame number → linear pages mapping it.
    aliases: BTreeMap<u32, BTreeSet<u32>>,
    /// Frame number → scanned code (value: execute-only).
    code: BTreeMap<u32, bool>,
    /// Frame numbers whose writes are mediated like a page table's although no mapping
    /// derives from them: descriptor tables the monitor relies on ([`Self::watch`]).
    watched: BTreeSet<u32>,
    /// Linear pages whose protections exceed what user mode may have.
    beyond_user: BTreeSet<u32>,
    /// Linear pages mapped through entries without G: what a CR3 write must look at
    /// under CR4.PGE.
    non_global: BTreeSet<u32>,
    /// While the virtual CPL is 3: the linear address below which user code can reach.
    user_limit: Option<GuestLinear>,
    /// CR3 value → the pages (numbers) the CR3 write that left it dropped: what that
    /// address space used last, mapped again when it is loaded next (see
    /// [`Self::prefill`]).
    working_sets: HashMap<u32, Vec<u32>>,
    /// Pages mapped ahead at CR3 writes.
    prefilled: u64,
}

/// Most pages remembered for an address space left by a CR3 write: the lowest and the
/// highest it had mapped, its data and its stack. Measured with a pipe between two
/// processes (W1, 64 MiB through `dd | md5sum`): 128 pages 1.1 s, 64 0.87 s, 32 0.75 s,
/// 16 0.68 s, 8 0.64 s. Pages a process touched once (a buffer it streams through)
/// cost a map and an unmap at every switch for nothing; a 300-fork+exec loop, whose
/// processes each run once, loses up to a tenth with 128 and nothing measurable with 16.
const WORKING_SET_PAGES: usize = 16;
/// Most pages nothing maps that a run of dropped pages spans ([`ShadowState::drop_pages`]).
const MAX_DROP_GAP: u32 = 256;
/// Most address spaces whose pages are remembered; past it the memory starts afresh.
const WORKING_SETS: usize = 256;

/// Most users of a table page looked at one by one when a write to it is mediated;
/// past it, only those whose walk can have gone through the entries written. (Low in
/// tests, so the property tests' small address spaces take the arithmetic path.)
const SCANNED_USERS: usize = if cfg!(test) { 2 } else { 16 };

/// The ranges of linear page numbers among `users` (the pages derived through one table
/// page) that a walk takes through entry `first..=last` of that page: as a page table,
/// pages with those low index bits in every page-table span that has users; as a page
/// directory, the spans those entries cover in every directory span that has users.
/// (PDPTEs are loaded at CR3 writes and never recorded as entries.)
fn candidate_ranges(
    users: &BTreeSet<u32>,
    entry_size: u32,
    first: u32,
    last: u32,
) -> Vec<(u32, u32)> {
    // Index bits per level: 10 with 4-byte entries, 9 with 8-byte (PAE) ones.
    let bits = if entry_size == 8 { 9 } else { 10 };
    let mut ranges = Vec::new();
    for shift in [0, bits] {
        let span = shift + bits;
        let mut from = 0u32;
        while let Some(&n) = users.range(from..).next() {
            let base = (n >> span) << span;
            ranges.push((base + (first << shift), base + ((last + 1) << shift)));
            match base.checked_add(1 << span) {
                Some(next) => from = next,
                None => break,
            }
        }
    }
    ranges
}

const fn page_no(addr: u32) -> u32 {
    addr >> 12
}

const fn page_addr(no: u32) -> u32 {
    no << 12
}

/// The mapping of `pages` pages from `lin` to `gpa` with `prot`, derived from translation
/// `t` (its rights, dirty and global state, page size) through `entries` for `user`.
#[allow(clippy::too_many_arguments)] // the run's place and the translation it comes from
fn map_from(
    t: &Translation,
    lin: GuestLinear,
    gpa: GuestPhys,
    pages: u32,
    prot: Prot,
    user: bool,
    entries: TableEntries,
    entry_stride: u32,
) -> MapDecision {
    MapDecision {
        lin,
        gpa,
        len: pages * PAGE_SIZE,
        prot,
        perms: t.perms,
        dirty: t.dirty,
        global: t.global,
        for_user: user,
        size: t.size,
        entries,
        entry_stride,
    }
}

/// Whether the paging-structure entries at `a` and `b` hold the same value under `mode`
/// (both readable).
fn same_entry<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    mode: PagingMode,
    a: GuestPhys,
    b: GuestPhys,
) -> bool {
    match mode {
        PagingMode::Pae { .. } => mem.read_u64(a).is_some_and(|v| Some(v) == mem.read_u64(b)),
        PagingMode::TwoLevel { .. } => mem.read_u32(a).is_some_and(|v| Some(v) == mem.read_u32(b)),
        PagingMode::Off => false,
    }
}

/// Whether `[a, a + alen)` and `[b, b + blen)` intersect.
fn overlaps(a: u32, alen: u32, b: u32, blen: u32) -> bool {
    let (a, b) = (u64::from(a), u64::from(b));
    a < b + u64::from(blen) && b < a + u64::from(alen)
}

impl ShadowState {
    /// An empty shadow address space with paging off (the state at reset).
    pub fn new(config: ShadowConfig) -> Self {
        let n = config.max_run_pages.clamp(1, 512);
        let max_run_pages = 1 << (31 - n.leading_zeros());
        Self {
            ctx: PagingContext::reset(),
            config: ShadowConfig {
                max_run_pages,
                ..config
            },
            maps: BTreeMap::new(),
            by_table: BTreeMap::new(),
            aliases: BTreeMap::new(),
            code: BTreeMap::new(),
            watched: BTreeSet::new(),
            beyond_user: BTreeSet::new(),
            non_global: BTreeSet::new(),
            user_limit: None,
            working_sets: HashMap::new(),
            prefilled: 0,
        }
    }

    /// How many pages CR3 writes have mapped ahead ([`Self::write_cr3`]).
    pub fn prefilled(&self) -> u64 {
        self.prefilled
    }

    /// The control registers and roots walks use.
    pub fn context(&self) -> &PagingContext {
        &self.ctx
    }

    /// The configuration in effect (with `max_run_pages` rounded).
    pub fn config(&self) -> ShadowConfig {
        self.config
    }

    /// The mapping of the linear page holding `lin`, if any.
    pub fn mapping(&self, lin: GuestLinear) -> Option<&ShadowPage> {
        self.maps.get(&page_no(lin.0))
    }

    /// Every mapping, by linear page, in address order.
    pub fn mappings(&self) -> impl Iterator<Item = (GuestLinear, &ShadowPage)> {
        self.maps
            .iter()
            .map(|(&n, p)| (GuestLinear(page_addr(n)), p))
    }

    /// The linear pages currently mapping the frame holding `gpa`.
    pub fn aliases_of(&self, gpa: GuestPhys) -> impl Iterator<Item = GuestLinear> + '_ {
        let set = self.aliases.get(&page_no(gpa.0));
        set.into_iter()
            .flatten()
            .map(|&n| GuestLinear(page_addr(n)))
    }

    /// What the monitor knows about the frame holding `gpa`.
    pub fn page_use(&self, gpa: GuestPhys) -> PageUse {
        self.page_use_with(gpa, &TableEntries::default())
    }

    /// Whether some mapping depends on an entry in the frame holding `gpa`.
    pub fn is_page_table(&self, gpa: GuestPhys) -> bool {
        self.by_table.contains_key(&page_no(gpa.0))
    }

    /// [`Self::page_use`], counting as page tables also the frames of `extra`, the
    /// entries of a walk about to be mapped.
    fn page_use_with(&self, gpa: GuestPhys, extra: &TableEntries) -> PageUse {
        let frame = page_no(gpa.0);
        if self.by_table.contains_key(&frame) || extra.iter().any(|e| page_no(e.0) == frame) {
            PageUse::PageTable
        } else if let Some(&exec_only) = self.code.get(&frame) {
            PageUse::Code { exec_only }
        } else if self.watched.contains(&frame) {
            PageUse::PageTable
        } else {
            PageUse::Plain
        }
    }

    /// Mediates every guest write to the frame holding `gpa` from now on, as if it held
    /// a page table (its aliases lose write): the monitor relies on what it holds (the
    /// descriptors behind inline segment loads) and must see each change. Scanned code
    /// stays code: its writes revert the scan first, then are mediated.
    pub fn watch<H: HostMapper + ?Sized>(&mut self, mapper: &mut H, gpa: GuestPhys) {
        if self.watched.insert(page_no(gpa.0)) {
            self.reclassify(mapper, page_no(gpa.0));
        }
    }

    /// Stops [`Self::watch`]ing the frame holding `gpa`; its aliases regain write at
    /// their next write fault.
    pub fn unwatch<H: HostMapper + ?Sized>(&mut self, mapper: &mut H, gpa: GuestPhys) {
        if self.watched.remove(&page_no(gpa.0)) {
            self.reclassify(mapper, page_no(gpa.0));
        }
    }

    /// Whether the frame holding `gpa` is [`Self::watch`]ed.
    pub fn is_watched(&self, gpa: GuestPhys) -> bool {
        self.watched.contains(&page_no(gpa.0))
    }

    /// Decides what a host page fault at `lin` means, walking the guest's tables (which
    /// sets their accessed and dirty bits as the CPU would). `user` is the virtual CPL
    /// being 3; it must agree with [`Self::enter_user_mode`]/[`Self::leave_user_mode`].
    /// Nothing is mapped yet: see [`Self::apply`] and [`Self::on_host_fault`].
    pub fn decide<M: GuestPhysMemory + ?Sized>(
        &self,
        mem: &mut M,
        lin: GuestLinear,
        access: HostAccess,
        user: bool,
    ) -> Decision {
        let t = match walk(mem, &self.ctx, lin, access.guest_access(user)) {
            Ok(t) => t,
            Err(fault) => return Decision::TrueFault(fault),
        };
        let Some(gpa) = self.ram_frame(&*mem, &t) else {
            return Decision::Emulate {
                translation: t,
                reason: EmulateReason::NotRam,
            };
        };
        if lin.page() < self.config.min_linear {
            return Decision::Emulate {
                translation: t,
                reason: EmulateReason::LowPage,
            };
        }
        let page_use = self.page_use_with(gpa, &t.entries);
        match (access, page_use) {
            (HostAccess::Write, PageUse::PageTable) => return Decision::Mediate { translation: t },
            (HostAccess::Write, PageUse::Code { .. }) => {
                return Decision::CodeWrite {
                    gpa,
                    translation: t,
                }
            }
            (HostAccess::Fetch, PageUse::PageTable) => {
                let reason = EmulateReason::FetchFromPageTable;
                return Decision::Emulate {
                    translation: t,
                    reason,
                };
            }
            (HostAccess::Fetch, PageUse::Plain) => {
                return Decision::ScanFirst {
                    gpa,
                    translation: t,
                }
            }
            (HostAccess::Read, PageUse::Code { exec_only: true }) => {
                let reason = EmulateReason::ReadPatchedCode;
                return Decision::Emulate {
                    translation: t,
                    reason,
                };
            }
            _ => {}
        }
        let prot = grant(t.perms, t.dirty, page_use, user, self.ctx.wp());
        let (first, pages) = if page_use == PageUse::Plain {
            self.run_around(&*mem, &t, prot, user)
        } else {
            (page_no(lin.0), 1)
        };
        let back = page_no(lin.0) - first;
        let stride = self.ctx.mode.entry_size();
        let entries = TableEntries {
            pde: t.entries.pde,
            pte: t.entries.pte.map(|p| GuestPhys(p.0 - back * stride)),
        };
        Decision::HiddenFault(map_from(
            &t,
            GuestLinear(page_addr(first)),
            GuestPhys(gpa.0 - back * PAGE_SIZE),
            pages,
            prot,
            user,
            entries,
            stride,
        ))
    }

    /// The translation's frame if the whole frame is RAM.
    fn ram_frame<M: GuestPhysMemory + ?Sized>(
        &self,
        mem: &M,
        t: &Translation,
    ) -> Option<GuestPhys> {
        let frame = t.frame().below_4g()?;
        (u64::from(frame.0) + u64::from(PAGE_SIZE) <= mem.ram_size()).then_some(frame)
    }

    /// The run of linear pages around the faulting one that can share its mapping: same
    /// guest rights and protections, physically contiguous, plain RAM, not yet mapped,
    /// and already accessed (so mapping them early changes no guest-visible A/D bit).
    /// Returns the first page number and the page count.
    fn run_around<M: GuestPhysMemory + ?Sized>(
        &self,
        mem: &M,
        t: &Translation,
        prot: Prot,
        user: bool,
    ) -> (u32, u32) {
        let here = page_no(t.lin.0);
        let window = self.config.max_run_pages;
        let start = here & !(window - 1);
        let end = u64::from(start) + u64::from(window);
        let fits = |n: u32| self.joins_run(mem, t, prot, user, here, n);
        let mut first = here;
        while first > start && fits(first - 1) {
            first -= 1;
        }
        let mut last = here;
        while u64::from(last) + 1 < end && fits(last + 1) {
            last += 1;
        }
        (first, last - first + 1)
    }

    fn joins_run<M: GuestPhysMemory + ?Sized>(
        &self,
        mem: &M,
        t: &Translation,
        prot: Prot,
        user: bool,
        here: u32,
        n: u32,
    ) -> bool {
        let lin = GuestLinear(page_addr(n));
        if lin < self.config.min_linear || self.maps.contains_key(&n) {
            return false;
        }
        let Some(nt) = peek(mem, &self.ctx, lin, Access::read(user)) else {
            return false;
        };
        let delta = i64::from(n) - i64::from(here);
        let stride = i64::from(self.ctx.mode.entry_size());
        let same_entries = nt.entries.pde == t.entries.pde
            && match (nt.entries.pte, t.entries.pte) {
                (Some(a), Some(b)) => i64::from(a.0) == i64::from(b.0) + delta * stride,
                (None, None) => true,
                _ => false,
            };
        let contiguous = i128::from(nt.frame().0)
            == i128::from(t.frame().0) + i128::from(delta) * i128::from(PAGE_SIZE);
        if !(same_entries && contiguous && nt.perms == t.perms && nt.global == t.global)
            || nt.size != t.size
        {
            return false;
        }
        let Some(gpa) = self.ram_frame(mem, &nt) else {
            return false;
        };
        let page_use = self.page_use_with(gpa, &t.entries);
        page_use == PageUse::Plain
            && grant(nt.perms, nt.dirty, page_use, user, self.ctx.wp()) == prot
    }

    /// Installs a mapping [`Self::decide`] returned (on this state, with nothing changed
    /// in between), replacing what those linear pages
    /// mapped before, and write-protects every alias of a frame that thereby becomes a
    /// page table.
    pub fn apply<H: HostMapper + ?Sized>(&mut self, mapper: &mut H, d: &MapDecision) {
        let first = page_no(d.lin.0);
        let pages = d.len / PAGE_SIZE;
        let mut touched = BTreeSet::new();
        for k in 0..pages {
            self.unlink(first + k, &mut touched);
        }
        for k in 0..pages {
            let n = first + k;
            let page = ShadowPage {
                gpa: d.gpa.wrapping_add(k.wrapping_mul(PAGE_SIZE)),
                prot: d.prot,
                perms: d.perms,
                dirty: d.dirty,
                global: d.global,
                for_user: d.for_user,
                size: d.size,
                entries: TableEntries {
                    pde: d.entries.pde,
                    pte: d
                        .entries
                        .pte
                        .map(|p| p.wrapping_add(k.wrapping_mul(d.entry_stride))),
                },
            };
            self.link(n, page, &mut touched);
        }
        mapper.map(d.lin, d.gpa, d.len, d.prot);
        for frame in touched {
            self.reclassify(mapper, frame);
        }
    }

    /// [`Self::decide`], then [`Self::apply`] if the fault is hidden.
    pub fn on_host_fault<M: GuestPhysMemory + ?Sized, H: HostMapper + ?Sized>(
        &mut self,
        mem: &mut M,
        mapper: &mut H,
        lin: GuestLinear,
        access: HostAccess,
        user: bool,
    ) -> Decision {
        let d = self.decide(mem, lin, access, user);
        if let Decision::HiddenFault(m) = &d {
            self.apply(mapper, m);
        }
        d
    }

    fn exceeds_user(page: &ShadowPage) -> bool {
        !page.perms.user || (page.prot.write && !page.perms.writable)
    }

    fn link(&mut self, n: u32, page: ShadowPage, touched: &mut BTreeSet<u32>) {
        self.aliases
            .entry(page_no(page.gpa.0))
            .or_default()
            .insert(n);
        for e in page.entries.iter() {
            let users = self.by_table.entry(page_no(e.0)).or_default();
            if users.is_empty() {
                touched.insert(page_no(e.0));
            }
            users.insert(n);
        }
        if Self::exceeds_user(&page) {
            self.beyond_user.insert(n);
        }
        if !page.global {
            self.non_global.insert(n);
        }
        self.maps.insert(n, page);
    }

    /// Forgets the mapping of linear page `n` (the host mapping is the caller's), noting
    /// frames that stop being page tables.
    fn unlink(&mut self, n: u32, touched: &mut BTreeSet<u32>) -> Option<ShadowPage> {
        let page = self.maps.remove(&n)?;
        let frame = page_no(page.gpa.0);
        if let Some(set) = self.aliases.get_mut(&frame) {
            set.remove(&n);
            if set.is_empty() {
                self.aliases.remove(&frame);
            }
        }
        for e in page.entries.iter() {
            let table = page_no(e.0);
            if let Some(set) = self.by_table.get_mut(&table) {
                set.remove(&n);
                if set.is_empty() {
                    self.by_table.remove(&table);
                    touched.insert(table);
                }
            }
        }
        self.beyond_user.remove(&n);
        self.non_global.remove(&n);
        Some(page)
    }

    /// Brings every alias of `frame` within the protections its current use allows:
    /// write-protects aliases of a new page table or code page, and takes away what an
    /// ended use no longer allows (exec of code). Rights an alias only gains are left
    /// to the hidden fault of the first access that needs them.
    fn reclassify<H: HostMapper + ?Sized>(&mut self, mapper: &mut H, frame: u32) {
        let Some(lins) = self.aliases.get(&frame).cloned() else {
            return;
        };
        let page_use = self.page_use(GuestPhys(page_addr(frame)));
        let wp = self.ctx.wp();
        let mut gone = Vec::new();
        for n in lins {
            // In user mode, rights are recomputed as user mode may have them, or a
            // restore could hand user code a supervisor-only right.
            let reachable = self
                .user_limit
                .is_some_and(|l| u64::from(page_addr(n)) < u64::from(l.0));
            let Some(page) = self.maps.get_mut(&n) else {
                continue;
            };
            let as_user = page.for_user || reachable;
            let prot = grant(page.perms, page.dirty, page_use, as_user, wp);
            if (as_user && !page.perms.user) || prot == Prot::NONE {
                gone.push(n);
                continue;
            }
            page.for_user = as_user;
            // A right the mapping gains (write, when the frame stops being a page table)
            // is left to the hidden fault of the first access that needs it: a frame
            // that is a page table in one address space and not in the next would
            // otherwise be re-protected at every switch between them.
            let gains_only = (!page.prot.read || prot.read)
                && (!page.prot.write || prot.write)
                && (!page.prot.exec || prot.exec);
            if gains_only {
                continue;
            }
            page.prot = prot;
            let beyond = Self::exceeds_user(page);
            mapper.protect(GuestLinear(page_addr(n)), PAGE_SIZE, prot);
            if beyond {
                self.beyond_user.insert(n);
            } else {
                self.beyond_user.remove(&n);
            }
        }
        self.drop_pages(mapper, gone);
    }

    /// Drops the mappings of linear pages `pages`, unmapping runs at once: a run goes on
    /// over pages nothing maps (unmapping them changes nothing), so a process's pages
    /// dropped together cost one host call per stretch between the mappings that stay.
    fn drop_pages<H: HostMapper + ?Sized>(&mut self, mapper: &mut H, mut pages: Vec<u32>) -> usize {
        pages.sort_unstable();
        pages.dedup();
        let mut touched = BTreeSet::new();
        pages.retain(|&n| self.unlink(n, &mut touched).is_some());
        let mut run: Option<(u32, u32)> = None;
        let dropped = pages.len();
        for n in pages {
            run = match run {
                Some((start, count))
                    if n - (start + count) <= MAX_DROP_GAP
                        && self.maps.range(start + count..n).next().is_none() =>
                {
                    Some((start, n - start + 1))
                }
                Some((start, count)) => {
                    mapper.unmap(GuestLinear(page_addr(start)), count * PAGE_SIZE);
                    Some((n, 1))
                }
                None => Some((n, 1)),
            };
        }
        if let Some((start, count)) = run {
            mapper.unmap(GuestLinear(page_addr(start)), count * PAGE_SIZE);
        }
        for frame in touched {
            self.reclassify(mapper, frame);
        }
        dropped
    }

    /// The guest (or a device, or the monitor's own emulation) wrote `len` bytes at
    /// `gpa`: drops every mapping derived through an entry the write touched. Returns how
    /// many 4 KiB mappings were dropped.
    pub fn table_written<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
        gpa: GuestPhys,
        len: u32,
    ) -> usize {
        let stale = self.derived_through(gpa, len);
        self.drop_pages(mapper, stale)
    }

    /// The linear pages mapped through an entry in the `len` bytes at `gpa`.
    fn derived_through(&self, gpa: GuestPhys, len: u32) -> Vec<u32> {
        if len == 0 {
            return Vec::new();
        }
        let size = self.ctx.mode.entry_size();
        let end = gpa.0.saturating_add(len - 1);
        let mut stale = Vec::new();
        for (&table, users) in self.by_table.range(page_no(gpa.0)..=page_no(end)) {
            let derived = |n: &u32| {
                self.maps
                    .get(n)
                    .is_some_and(|p| p.entries.iter().any(|e| overlaps(e.0, size, gpa.0, len)))
            };
            if users.len() <= SCANNED_USERS {
                stale.extend(users.iter().copied().filter(|n| derived(n)));
                continue;
            }
            // The entries written, as indices into this table page.
            let first = gpa.0.max(page_addr(table)) % PAGE_SIZE / size;
            let last = end.min(page_addr(table) + (PAGE_SIZE - 1)) % PAGE_SIZE / size;
            for (lo, hi) in candidate_ranges(users, size, first, last) {
                stale.extend(users.range(lo..hi).copied().filter(|n| derived(n)));
            }
        }
        stale.sort_unstable();
        stale.dedup();
        stale
    }

    /// [`Self::table_written`], then maps again each dropped page that the guest's
    /// tables now give already accessed (a walk would set no A or D bit), plain RAM, as a
    /// hidden read fault at the current privilege level would: a PTE changed under a
    /// live mapping (copy-on-write set up or broken, rights changed) costs no hidden
    /// fault at the next touch. Returns how many pages were dropped and how many mapped.
    pub fn table_updated<M: GuestPhysMemory + ?Sized, H: HostMapper + ?Sized>(
        &mut self,
        mem: &M,
        mapper: &mut H,
        gpa: GuestPhys,
        len: u32,
    ) -> (usize, usize) {
        let stale = self.derived_through(gpa, len);
        let dropped = self.drop_pages(mapper, stale.clone());
        let user = self.user_limit.is_some();
        let mapped = stale
            .into_iter()
            .filter(|&n| self.refill(mem, mapper, GuestLinear(page_addr(n)), user))
            .count();
        (dropped, mapped)
    }

    /// Maps linear page `lin` from what a walk gives now, if that is plain RAM already
    /// accessed: what a hidden read fault by `user` (or the kernel) would map, without
    /// the run around it. Whether it mapped.
    fn refill<M: GuestPhysMemory + ?Sized, H: HostMapper + ?Sized>(
        &mut self,
        mem: &M,
        mapper: &mut H,
        lin: GuestLinear,
        user: bool,
    ) -> bool {
        if lin < self.config.min_linear || self.maps.contains_key(&page_no(lin.0)) {
            return false;
        }
        let Some(t) = peek(mem, &self.ctx, lin, Access::read(user)) else {
            return false;
        };
        let Some(gpa) = self.ram_frame(mem, &t) else {
            return false;
        };
        let page_use = self.page_use_with(gpa, &t.entries);
        if page_use != PageUse::Plain {
            return false;
        }
        let prot = grant(t.perms, t.dirty, page_use, user, self.ctx.wp());
        if prot == Prot::NONE || (user && !t.perms.user) {
            return false;
        }
        let stride = self.ctx.mode.entry_size();
        let d = map_from(&t, lin.page(), gpa, 1, prot, user, t.entries, stride);
        self.apply(mapper, &d);
        true
    }

    /// INVLPG: drops the mapping of the page holding `lin` and every mapping derived
    /// from the large page that covers it.
    pub fn invlpg<H: HostMapper + ?Sized>(&mut self, mapper: &mut H, lin: GuestLinear) -> usize {
        let span = self.ctx.mode.pde_span();
        let base = page_no(lin.0 & !(span - 1));
        let mut stale = vec![page_no(lin.0)];
        stale.extend(
            self.maps
                .range(base..=base + (span / PAGE_SIZE - 1))
                .filter(|(_, p)| p.size != PageSize::Size4K)
                .map(|(&n, _)| n),
        );
        self.drop_pages(mapper, stale)
    }

    /// Drops every mapping.
    pub fn flush_all<H: HostMapper + ?Sized>(&mut self, mapper: &mut H) -> usize {
        let all = self.maps.keys().copied().collect();
        self.drop_pages(mapper, all)
    }

    /// Drops every mapping except global ones (when CR4.PGE is set): what a CR3 write
    /// does to the TLB.
    pub fn flush_non_global<H: HostMapper + ?Sized>(&mut self, mapper: &mut H) -> usize {
        let pge = self.ctx.pge();
        let stale = self
            .maps
            .iter()
            .filter(|(_, p)| !(pge && p.global))
            .map(|(&n, _)| n)
            .collect();
        self.drop_pages(mapper, stale)
    }

    /// MOV to CR3: under PAE loads the PDPTEs; drops the non-global mappings the new
    /// tables do not give exactly as they are (see the TLB note on `revalidate`).
    ///
    /// # Errors
    /// [`PdpteFault`] (inject #GP(0); nothing changed) when PAE paging is on and a PDPTE
    /// has reserved bits set.
    pub fn write_cr3<M: GuestPhysMemory + ?Sized, H: HostMapper + ?Sized>(
        &mut self,
        mem: &M,
        mapper: &mut H,
        cr3: u32,
    ) -> Result<(), PdpteFault> {
        let c = self.ctx;
        self.set_control(mem, mapper, c.cr0, cr3, c.cr4, c.efer, true)
    }

    /// MOV to CR0 (or LMSW, CLTS). Changing PG or WP drops every mapping.
    ///
    /// # Errors
    /// [`PdpteFault`] as for [`Self::write_cr3`] when the write makes the CPU reload the
    /// PDPTEs.
    pub fn write_cr0<M: GuestPhysMemory + ?Sized, H: HostMapper + ?Sized>(
        &mut self,
        mem: &M,
        mapper: &mut H,
        cr0: u32,
    ) -> Result<(), PdpteFault> {
        let c = self.ctx;
        self.set_control(mem, mapper, cr0, c.cr3, c.cr4, c.efer, false)
    }

    /// MOV to CR4. Changing PSE, PAE or PGE drops every mapping.
    ///
    /// # Errors
    /// [`PdpteFault`] as for [`Self::write_cr0`].
    pub fn write_cr4<M: GuestPhysMemory + ?Sized, H: HostMapper + ?Sized>(
        &mut self,
        mem: &M,
        mapper: &mut H,
        cr4: u32,
    ) -> Result<(), PdpteFault> {
        let c = self.ctx;
        self.set_control(mem, mapper, c.cr0, c.cr3, cr4, c.efer, false)
    }

    /// WRMSR to IA32_EFER. Changing NXE drops every mapping.
    pub fn write_efer<H: HostMapper + ?Sized>(&mut self, mapper: &mut H, efer: u64) {
        let c = self.ctx;
        if (c.efer ^ efer) & EFER_NXE != 0 {
            self.flush_all(mapper);
        }
        self.ctx.efer = efer;
        self.ctx.mode = PagingMode::from_control(c.cr0, c.cr4, efer);
    }

    #[allow(clippy::too_many_arguments)] // the four registers plus what was written
    fn set_control<M: GuestPhysMemory + ?Sized, H: HostMapper + ?Sized>(
        &mut self,
        mem: &M,
        mapper: &mut H,
        cr0: u32,
        cr3: u32,
        cr4: u32,
        efer: u64,
        cr3_written: bool,
    ) -> Result<(), PdpteFault> {
        let old = self.ctx;
        let mode = PagingMode::from_control(cr0, cr4, efer);
        let mut next = PagingContext {
            cr0,
            cr3,
            cr4,
            efer,
            mode,
            roots: old.roots,
        };
        let reload = matches!(mode, PagingMode::Pae { .. })
            && (cr3_written || next.reloads_pdptes_from(old.cr0, old.cr4));
        if reload {
            next.roots = PaeRoots::load(mem, cr3)?;
        } else if !matches!(mode, PagingMode::Pae { .. }) {
            next.roots = PaeRoots::default();
        }
        let everything = (old.cr0 ^ cr0) & (CR0_PG | CR0_WP) != 0
            || (old.cr4 ^ cr4) & (CR4_PSE | CR4_PAE | CR4_PGE) != 0
            || (reload && !cr3_written);
        self.ctx = next;
        if everything {
            self.working_sets.clear();
            self.flush_all(mapper);
        } else if cr3_written && mode != PagingMode::Off {
            let left = self.revalidate(mem, mapper);
            if old.cr3 != cr3 {
                self.prefill(mem, mapper, old.cr3, left);
            }
        }
        Ok(())
    }

    /// After a CR3 write from `old_cr3` that dropped `left` (the old address space's
    /// own pages): remembers them for `old_cr3`, and maps again what the new address
    /// space used when it was left, where its tables still give those pages already
    /// accessed (a walk would set no A or D bit), plain RAM, as a hidden read fault would
    /// ([`Self::refill`]). The CPU may cache such translations ahead of use as well; a
    /// process switched back to then takes no hidden fault for each page it touches
    /// again, the cost that dominates a pipe between two processes.
    fn prefill<M: GuestPhysMemory + ?Sized, H: HostMapper + ?Sized>(
        &mut self,
        mem: &M,
        mapper: &mut H,
        old_cr3: u32,
        mut left: Vec<u32>,
    ) {
        if self.working_sets.len() >= WORKING_SETS {
            self.working_sets.clear();
        }
        if left.len() > WORKING_SET_PAGES {
            // The lowest and the highest pages: a process's data and its stack.
            left.drain(WORKING_SET_PAGES / 2..left.len() - WORKING_SET_PAGES / 2);
        }
        if !left.is_empty() {
            self.working_sets.insert(old_cr3, left);
        }
        let Some(pages) = self.working_sets.remove(&self.ctx.cr3) else {
            return;
        };
        let user = self.user_limit.is_some();
        for n in pages {
            if self.refill(mem, mapper, GuestLinear(page_addr(n)), user) {
                self.prefilled += 1;
            }
        }
    }

    /// After a CR3 write: keeps the non-global mappings the new tables give exactly as
    /// they were (same frame, rights, dirty state and page size, through entries already
    /// accessed), re-linked to the new tables' entries; drops the rest. The TLB flush a
    /// CR3 write makes is thereby kept: every mapping that survives is one a fresh walk
    /// would install. Every write to a table a mapping depends on is mediated, so no
    /// mapping can be stale before the switch. Kernel mappings shared by all address
    /// spaces then survive a process switch instead of faulting back in one by one.
    /// Returns the pages dropped.
    fn revalidate<M: GuestPhysMemory + ?Sized, H: HostMapper + ?Sized>(
        &mut self,
        mem: &M,
        mapper: &mut H,
    ) -> Vec<u32> {
        let pge = self.ctx.pge();
        let mut stale = Vec::new();
        let mut relink = Vec::new();
        let mut repoint = Vec::new();
        let mut last_pair = None;
        // The non-global pages, looked up one by one when they are few beside the
        // global ones (a kernel mapped global, a process's pages not), else in one pass
        // over every mapping.
        let candidates: Box<dyn Iterator<Item = (u32, &ShadowPage)> + '_> =
            if pge && self.non_global.len() * 4 < self.maps.len() {
                let maps = &self.maps;
                Box::new(
                    self.non_global
                        .iter()
                        .filter_map(move |&n| maps.get(&n).map(|p| (n, p))),
                )
            } else {
                Box::new(
                    self.maps
                        .iter()
                        .map(|(&n, p)| (n, p))
                        .filter(move |(_, p)| !(pge && p.global)),
                )
            };
        for (n, p) in candidates {
            // Read through the same directory entry (a directory shared by both
            // address spaces, as page-table isolation's kernel half is): the same
            // translation, whose tables' every change was mediated.
            let pde = pde_address(&self.ctx, GuestLinear(page_addr(n)));
            if p.entries.pde.is_some() && pde == p.entries.pde {
                continue;
            }
            // Read through another directory entry that holds the same value (the
            // kernel's half of a directory copied into each address space, as Linux's
            // PAE directories are under page-table isolation): the same translation too,
            // through the same lower tables; only what it depends on moves.
            if let (Some(old), Some(new)) = (p.entries.pde, pde) {
                // Neighbours share their entries: one comparison for each pair.
                let same = match last_pair {
                    Some((o, w, same)) if (o, w) == (old, new) => same,
                    _ => same_entry(mem, self.ctx.mode, old, new),
                };
                last_pair = Some((old, new, same));
                if same {
                    repoint.push((n, new));
                    continue;
                }
            }
            let access = Access {
                write: p.prot.write,
                user: p.for_user,
                fetch: false,
            };
            let same = peek(mem, &self.ctx, GuestLinear(page_addr(n)), access).filter(|t| {
                t.frame() == p.gpa.into()
                    && t.perms == p.perms
                    && t.dirty == p.dirty
                    && t.global == p.global
                    && t.size == p.size
            });
            match same {
                Some(t) if t.entries == p.entries => {}
                Some(t) => relink.push((n, t.entries)),
                None => stale.push(n),
            }
        }
        let mut touched = BTreeSet::new();
        self.repoint(repoint, &mut touched);
        for (n, entries) in relink {
            if let Some(page) = self.unlink(n, &mut touched) {
                self.link(n, ShadowPage { entries, ..page }, &mut touched);
            }
        }
        for frame in touched {
            self.reclassify(mapper, frame);
        }
        self.drop_pages(mapper, stale.clone());
        stale
    }

    /// Moves each mapping of `moves` (linear page, ascending, and the directory entry
    /// it now depends on instead of its own, holding the same value) to that entry. The
    /// dependency sets of the two directories change by their smaller parts: a switch
    /// between address spaces that copy the kernel's directory costs a pass over the
    /// moved pages instead of an unlink and a link each.
    fn repoint(&mut self, moves: Vec<(u32, GuestPhys)>, touched: &mut BTreeSet<u32>) {
        let (Some(&(first, _)), Some(&(last, _))) = (moves.first(), moves.last()) else {
            return;
        };
        // By (from, to) directory frames (a few, neighbours alike): the pages moved,
        // ascending, and whether one of them has its PTE in either (a table that also
        // holds a page's PTE stays its table).
        let mut groups: Vec<((u32, u32), Vec<u32>, bool)> = Vec::new();
        let mut next = moves.iter().peekable();
        for (&n, page) in self.maps.range_mut(first..=last) {
            let Some(&&(m, new)) = next.peek() else {
                break;
            };
            if m != n {
                continue;
            }
            next.next();
            let Some(old) = page.entries.pde.replace(new) else {
                continue;
            };
            let key = (page_no(old.0), page_no(new.0));
            let entangled = page
                .entries
                .pte
                .is_some_and(|e| page_no(e.0) == key.0 || page_no(e.0) == key.1);
            let at = match groups.iter().rposition(|g| g.0 == key) {
                Some(at) => at,
                None => {
                    groups.push((key, Vec::new(), false));
                    groups.len() - 1
                }
            };
            if let Some((_, pages, e)) = groups.get_mut(at) {
                pages.push(n);
                *e |= entangled;
            }
        }
        for ((from, to), pages, entangled) in groups {
            let keeps_from = |p: &ShadowPage| p.entries.pte.is_some_and(|e| page_no(e.0) == from);
            let (leaving, kept): (Vec<u32>, Vec<u32>) = if entangled {
                pages
                    .iter()
                    .partition(|&n| !self.maps.get(n).is_some_and(keeps_from))
            } else {
                (pages, Vec::new())
            };
            // The sets are split and joined by moving their smaller parts: the thousands
            // of pages of a kernel's directory move whole, a few others stay or join.
            let mut set = self.by_table.remove(&from).unwrap_or_default();
            let mut goes = leaving.iter().peekable();
            let stays: Vec<u32> = set
                .iter()
                .copied()
                .filter(|&n| {
                    while goes.next_if(|&&m| m < n).is_some() {}
                    goes.peek() != Some(&&n)
                })
                .collect();
            let (mut moving, staying) = if stays.len() <= leaving.len() {
                for n in &stays {
                    set.remove(n);
                }
                if set.len() != leaving.len() {
                    // Pages the set lacked (it holds every dependant): now it does.
                    set.extend(&leaving);
                }
                (set, stays.into_iter().collect::<BTreeSet<u32>>())
            } else {
                for n in &leaving {
                    set.remove(n);
                }
                (leaving.into_iter().collect(), set)
            };
            moving.extend(kept);
            if staying.is_empty() {
                touched.insert(from);
            } else {
                self.by_table.insert(from, staying);
            }
            match self.by_table.get_mut(&to) {
                Some(users) if !users.is_empty() => {
                    if users.len() < moving.len() {
                        std::mem::swap(users, &mut moving);
                    }
                    users.extend(moving);
                }
                _ => {
                    touched.insert(to);
                    self.by_table.insert(to, moving);
                }
            }
        }
    }

    /// The frame holding `gpa` was scanned and patched: write-protect (and, if
    /// `exec_only`, read-protect) every alias, so writes revert the patches.
    pub fn mark_code<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
        gpa: GuestPhys,
        exec_only: bool,
    ) {
        self.code.insert(page_no(gpa.0), exec_only);
        self.reclassify(mapper, page_no(gpa.0));
    }

    /// The frame holding `gpa` is no longer scanned code (its patches were reverted):
    /// aliases lose exec and regain what plain data may have.
    pub fn unmark_code<H: HostMapper + ?Sized>(&mut self, mapper: &mut H, gpa: GuestPhys) {
        if self.code.remove(&page_no(gpa.0)).is_some() {
            self.reclassify(mapper, page_no(gpa.0));
        }
    }

    /// The virtual CPL becomes 0 (an interrupt, exception or system call entered the
    /// guest kernel). Nothing is unmapped: supervisor accesses upgrade mappings through
    /// hidden faults.
    pub fn leave_user_mode(&mut self) {
        self.user_limit = None;
    }

    /// The virtual CPL becomes 3: mappings below `user_limit` that give more than user
    /// mode may have (supervisor pages; read-only pages made writable under CR0.WP = 0)
    /// are dropped or write-protected. Above `user_limit` the clamped segment limits keep
    /// user code out, so kernel mappings there stay. Until [`Self::leave_user_mode`],
    /// protections restored below `user_limit` are user-mode ones.
    pub fn enter_user_mode<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
        user_limit: GuestLinear,
    ) {
        self.user_limit = Some(user_limit);
        // Pages that start below the limit, the top page too when the limit is the last
        // byte of the address space.
        let end = u64::from(user_limit.0).div_ceil(u64::from(PAGE_SIZE));
        let below: Vec<u32> = self
            .beyond_user
            .range(..u32::try_from(end).unwrap_or(u32::MAX))
            .copied()
            .collect();
        let wp = self.ctx.wp();
        let mut gone = Vec::new();
        for n in below {
            let Some(page) = self.maps.get(&n).copied() else {
                continue;
            };
            let prot = grant(page.perms, page.dirty, self.page_use(page.gpa), true, wp);
            if !page.perms.user || prot == Prot::NONE {
                gone.push(n);
                continue;
            }
            self.beyond_user.remove(&n);
            if let Some(p) = self.maps.get_mut(&n) {
                p.prot = prot;
                p.for_user = true;
            }
            mapper.protect(GuestLinear(page_addr(n)), PAGE_SIZE, prot);
        }
        self.drop_pages(mapper, gone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bits::{entry, ErrorCode, CR0_PE};
    use crate::testutil::{FakeMapper, FakeMemory};

    const P: u32 = entry::low_dword(entry::P);
    const RW: u32 = entry::low_dword(entry::RW);
    const US: u32 = entry::low_dword(entry::US);
    const A: u32 = entry::low_dword(entry::A);
    const D: u32 = entry::low_dword(entry::D);
    const PS: u32 = entry::low_dword(entry::PS);
    const G: u32 = entry::low_dword(entry::G);
    const PD: u32 = 0x1000;
    const PT: u32 = 0x2000;
    const RW_PROT: Prot = Prot {
        read: true,
        write: true,
        exec: false,
    };

    /// 32-bit paging with CR0.WP and CR4.PSE; PDE 1 (0x0040_0000..) → PT at 0x2000,
    /// where entry i maps 0x0040_0000 + i * 4 KiB to `pte(i)` if it returns one.
    fn setup(pte: impl Fn(u32) -> Option<u32>) -> (FakeMemory, ShadowState, FakeMapper) {
        let mut mem = FakeMemory::new(1 << 20);
        mem.set32(PD + 4, PT | P | RW | US);
        for i in 0..1024 {
            if let Some(v) = pte(i) {
                mem.set32(PT + 4 * i, v);
            }
        }
        let mut s = ShadowState::new(ShadowConfig::default());
        let mut m = FakeMapper::default();
        s.write_cr4(&mem, &mut m, CR4_PSE | CR4_PGE).unwrap();
        s.write_cr3(&mem, &mut m, PD).unwrap();
        s.write_cr0(&mem, &mut m, CR0_PE | CR0_PG | CR0_WP).unwrap();
        (mem, s, m)
    }

    fn lin(i: u32) -> GuestLinear {
        GuestLinear(0x0040_0000 + i * PAGE_SIZE)
    }

    fn mapped(d: Decision) -> MapDecision {
        match d {
            Decision::HiddenFault(m) => m,
            other => panic!("expected a hidden fault, got {other:?}"),
        }
    }

    #[test]
    fn write_after_read_sets_dirty_then_maps_writable() {
        let (mut mem, mut s, mut m) = setup(|i| (i == 3).then_some(0x9000 | P | RW));
        let d = mapped(s.on_host_fault(&mut mem, &mut m, lin(3), HostAccess::Read, false));
        assert_eq!(
            (d.lin, d.gpa, d.len, d.prot),
            (lin(3), GuestPhys(0x9000), PAGE_SIZE, Prot::READ)
        );
        assert_eq!(m.at(lin(3).0), Some((GuestPhys(0x9000), Prot::READ)));
        assert_eq!(mem.get32(PT + 12) & (A | D), A);
        let d = mapped(s.on_host_fault(&mut mem, &mut m, lin(3), HostAccess::Write, false));
        assert_eq!(d.prot, RW_PROT);
        assert_eq!(mem.get32(PT + 12) & D, D);
        assert_eq!(m.at(lin(3).0), Some((GuestPhys(0x9000), RW_PROT)));
        assert!(s.is_page_table(GuestPhys(PT)) && s.is_page_table(GuestPhys(PD)));
    }

    #[test]
    fn true_faults_carry_the_guest_error_code() {
        let (mut mem, mut s, mut m) = setup(|i| match i {
            0 => Some(0x9000 | P | RW),
            1 => Some(0xa000 | P | US),
            _ => None,
        });
        let user_to_kernel = s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Read, true);
        let code = ErrorCode(ErrorCode::P | ErrorCode::U);
        assert_eq!(
            user_to_kernel,
            Decision::TrueFault(crate::PageFault {
                cr2: lin(0),
                error_code: code
            })
        );
        let read_only = s.on_host_fault(&mut mem, &mut m, lin(1), HostAccess::Write, false);
        let code = ErrorCode(ErrorCode::P | ErrorCode::W);
        assert_eq!(
            read_only,
            Decision::TrueFault(crate::PageFault {
                cr2: lin(1),
                error_code: code
            })
        );
        let missing = s.on_host_fault(
            &mut mem,
            &mut m,
            lin(2).wrapping_add(5),
            HostAccess::Fetch,
            true,
        );
        let code = ErrorCode(ErrorCode::U);
        assert_eq!(
            missing,
            Decision::TrueFault(crate::PageFault {
                cr2: lin(2).wrapping_add(5),
                error_code: code
            })
        );
        assert!(m.pages.is_empty());
    }

    #[test]
    fn runs_cover_accessed_contiguous_neighbours_only() {
        // Entries 16..32 map contiguous frames; 20 was never accessed, 27 breaks contiguity.
        let (mut mem, mut s, mut m) = setup(|i| {
            let a = if i == 20 { 0 } else { A | D };
            let frame = if i == 27 {
                0x8_0000
            } else {
                0x4_0000 + i * PAGE_SIZE
            };
            (16..32).contains(&i).then_some(frame | P | RW | a)
        });
        let d = mapped(s.on_host_fault(&mut mem, &mut m, lin(23), HostAccess::Write, false));
        assert_eq!((d.lin, d.len, d.prot), (lin(21), 6 * PAGE_SIZE, RW_PROT));
        assert_eq!(d.gpa, GuestPhys(0x4_0000 + 21 * PAGE_SIZE));
        assert_eq!(m.maps, 1);
        for i in 21..27 {
            let page = s.mapping(lin(i)).unwrap();
            assert_eq!(page.entries.pte, Some(GuestPhys(PT + 4 * i)));
            assert_eq!(
                m.at(lin(i).0),
                Some((GuestPhys(0x4_0000 + i * PAGE_SIZE), RW_PROT))
            );
        }
        assert_eq!(
            mem.get32(PT + 80) & A,
            0,
            "a run never sets A on a neighbour"
        );
        // A PTE write drops exactly the mapping derived through it.
        mem.set32(PT + 4 * 24, 0);
        assert_eq!(s.table_written(&mut m, GuestPhys(PT + 4 * 24), 4), 1);
        assert_eq!(m.at(lin(24).0), None);
        assert!(m.at(lin(23).0).is_some() && m.at(lin(25).0).is_some());
        // A PDE write drops everything derived through that PDE.
        assert_eq!(s.table_written(&mut m, GuestPhys(PD + 4), 4), 5);
        assert!(m.pages.is_empty() && s.mappings().next().is_none());
        assert!(!s.is_page_table(GuestPhys(PT)));
    }

    #[test]
    fn page_table_pages_are_never_writable() {
        // Entry 1 maps the page table itself; entry 0 maps a data page.
        let (mut mem, mut s, mut m) = setup(|i| match i {
            0 => Some(0x9000 | P | RW | A | D),
            1 => Some(PT | P | RW | A | D),
            _ => None,
        });
        let d = mapped(s.on_host_fault(&mut mem, &mut m, lin(1), HostAccess::Read, false));
        assert_eq!(
            d.prot,
            Prot::READ,
            "the walk itself made this frame a page table"
        );
        match s.on_host_fault(&mut mem, &mut m, lin(1), HostAccess::Write, false) {
            Decision::Mediate { translation } => {
                assert_eq!(translation.frame(), crate::GuestPhys64(u64::from(PT)))
            }
            other => panic!("expected mediation, got {other:?}"),
        }
        // A frame stops being a page table when the last mapping derived through it
        // goes; its aliases regain write at the first write. PDE 2 (0x0080_0000..) → PT2 at 0x3000,
        // whose entry 0 maps the first page table, PT.
        let (mut mem, mut s, mut m) = setup(|i| (i == 2).then_some(0x3000 | P | RW | A | D));
        mem.set32(PD + 8, 0x3000 | P | RW);
        mem.set32(0x3000, PT | P | RW | A | D);
        let d = mapped(s.on_host_fault(&mut mem, &mut m, lin(2), HostAccess::Write, false));
        assert_eq!((d.gpa, d.prot), (GuestPhys(0x3000), RW_PROT));
        let data = GuestLinear(0x0080_0000);
        let d = mapped(s.on_host_fault(&mut mem, &mut m, data, HostAccess::Read, false));
        assert_eq!(
            (d.gpa, d.prot),
            (GuestPhys(PT), Prot::READ),
            "PT is lin(2)'s table"
        );
        assert_eq!(
            m.at(lin(2).0),
            Some((GuestPhys(0x3000), Prot::READ)),
            "PT2 became a table"
        );
        mem.set32(PD + 4, 0);
        assert_eq!(s.table_written(&mut m, GuestPhys(PD + 4), 4), 1);
        assert_eq!(m.at(lin(2).0), None);
        assert!(!s.is_page_table(GuestPhys(PT)) && s.is_page_table(GuestPhys(0x3000)));
        assert_eq!(
            m.at(data.0),
            Some((GuestPhys(PT), Prot::READ)),
            "write is not restored ahead of a write"
        );
        let d = mapped(s.on_host_fault(&mut mem, &mut m, data, HostAccess::Write, false));
        assert_eq!(
            (d.gpa, d.prot),
            (GuestPhys(PT), RW_PROT),
            "the write restores it"
        );
        assert_eq!(m.at(data.0), Some((GuestPhys(PT), RW_PROT)));
    }

    #[test]
    fn aliases_of_a_new_page_table_are_write_protected() {
        // 0x0040_0000 maps frame 0x5000 writable; later 0x5000 becomes the page table of
        // PDE 3 (0x00c0_0000..), through which 0x00c0_0000 maps frame 0x9000.
        let (mut mem, mut s, mut m) = setup(|i| (i == 0).then_some(0x5000 | P | RW | A | D));
        mapped(s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Write, false));
        assert_eq!(m.at(lin(0).0).unwrap().1, RW_PROT);
        mem.set32(PD + 12, 0x5000 | P | RW);
        mem.set32(0x5000, 0x9000 | P | RW | A | D);
        let d = mapped(s.on_host_fault(
            &mut mem,
            &mut m,
            GuestLinear(0x00c0_0000),
            HostAccess::Write,
            false,
        ));
        assert_eq!(d.prot, RW_PROT);
        assert_eq!(m.at(lin(0).0).unwrap().1, Prot::READ);
        assert_eq!(
            s.aliases_of(GuestPhys(0x5123)).collect::<Vec<_>>(),
            [lin(0)]
        );
        assert!(matches!(
            s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Write, false),
            Decision::Mediate { .. }
        ));
    }

    #[test]
    fn cr3_write_keeps_global_pages_and_revalidates_the_rest() {
        let (mut mem, mut s, mut m) = setup(|i| match i {
            0 => Some(0x9000 | P | RW | A | D | G),
            1 => Some(0xa000 | P | RW | A | D),
            2 => Some(0xb000 | P | RW | A | D),
            _ => None,
        });
        s.config.max_run_pages = 1;
        for i in 0..3 {
            mapped(s.on_host_fault(&mut mem, &mut m, lin(i), HostAccess::Write, false));
        }
        // A second address space: its own directory and table; page 0 is not mapped
        // there, page 1 maps the same frame, page 2 another one.
        const PD2: u32 = 0x3000;
        const PT2: u32 = 0x4000;
        mem.set32(PD2 + 4, PT2 | P | RW | US | A);
        mem.set32(PT2 + 4, 0xa000 | P | RW | A | D);
        mem.set32(PT2 + 8, 0xc000 | P | RW | A | D);
        s.write_cr3(&mem, &mut m, PD2).unwrap();
        assert!(m.at(lin(0).0).is_some(), "global: kept as the TLB keeps it");
        assert_eq!(
            m.at(lin(1).0),
            Some((GuestPhys(0xa000), RW_PROT)),
            "same translation"
        );
        assert_eq!(m.at(lin(2).0), None, "another frame now");
        // The kept page now depends on the new table, not the old one.
        assert!(s.is_page_table(GuestPhys(PT2)));
        assert_eq!(
            s.mapping(lin(1)).unwrap().entries.pte,
            Some(GuestPhys(PT2 + 4))
        );
        assert_eq!(s.table_written(&mut m, GuestPhys(PT2 + 4), 4), 1);
        assert_eq!(m.at(lin(1).0), None);
        // Without PGE (clearing it flushes everything) nothing is global.
        s.write_cr3(&mem, &mut m, PD).unwrap();
        s.write_cr4(&mem, &mut m, CR4_PSE).unwrap();
        assert!(m.pages.is_empty());
        mapped(s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Read, false));
        s.write_cr3(&mem, &mut m, PD2).unwrap();
        assert!(m.pages.is_empty());
    }

    #[test]
    fn a_table_write_finds_its_pages_among_many_users() {
        let (mut mem, mut s, mut m) =
            setup(|i| (i < 64).then_some((0x1_0000 + (i << 12)) | P | RW | A | D));
        // The same page table behind a second directory entry, and another table behind
        // a third: the table and the directory each have well over SCANNED_USERS users.
        const PT2: u32 = 0x6000;
        mem.set32(PD + 12, PT | P | RW | US | A);
        mem.set32(PD + 8, PT2 | P | RW | US | A);
        for i in 0..64 {
            mem.set32(PT2 + 4 * i, (0x6_0000 + (i << 12)) | P | RW | A | D);
        }
        let region = |pde: u32, i: u32| GuestLinear((pde << 22) + i * PAGE_SIZE);
        for pde in 1..4 {
            for i in 0..64 {
                if s.mapping(region(pde, i)).is_none() {
                    mapped(s.on_host_fault(
                        &mut mem,
                        &mut m,
                        region(pde, i),
                        HostAccess::Read,
                        false,
                    ));
                }
            }
        }
        assert_eq!(s.mappings().count(), 192);
        // (the write, the pages it must drop): one PTE of the shared table, a write
        // straddling two of its entries, a directory entry, the next table's first PTE.
        let cases = [
            ((PT + 4 * 5, 4), vec![region(1, 5), region(3, 5)]),
            (
                (PT + 4 * 9 + 2, 4),
                vec![region(1, 9), region(3, 9), region(1, 10), region(3, 10)],
            ),
            ((PD + 8, 4), (0..64).map(|i| region(2, i)).collect()),
            ((PT + 4 * 63, 8), vec![region(1, 63), region(3, 63)]),
        ];
        for ((gpa, len), gone) in cases {
            let before = s.mappings().count();
            assert_eq!(
                s.table_written(&mut m, GuestPhys(gpa), len),
                gone.len(),
                "{gpa:#x}"
            );
            for g in &gone {
                assert!(
                    s.mapping(*g).is_none() && m.at(g.0).is_none(),
                    "{gpa:#x}: {g:?} kept"
                );
            }
            assert_eq!(
                s.mappings().count(),
                before - gone.len(),
                "{gpa:#x}: others dropped"
            );
        }
    }

    #[test]
    fn a_copied_directory_keeps_the_mappings_and_takes_their_mediation() {
        let (mut mem, mut s, mut m) =
            setup(|i| (i < 3).then_some((0x9000 + (i << 12)) | P | RW | A | D));
        s.config.max_run_pages = 1;
        for i in 0..3 {
            mapped(s.on_host_fault(&mut mem, &mut m, lin(i), HostAccess::Write, false));
        }
        // Another address space whose directory is a copy: page-table isolation's
        // kernel half, or any process's under PAE without a shared kernel directory.
        const PD2: u32 = 0x3000;
        mem.set32(PD2 + 4, mem.get32(PD + 4));
        s.write_cr3(&mem, &mut m, PD2).unwrap();
        for i in 0..3 {
            assert_eq!(
                m.at(lin(i).0),
                Some((GuestPhys(0x9000 + (i << 12)), RW_PROT))
            );
            assert_eq!(
                s.mapping(lin(i)).unwrap().entries.pde,
                Some(GuestPhys(PD2 + 4))
            );
        }
        assert!(s.is_page_table(GuestPhys(PD2)));
        assert!(
            !s.is_page_table(GuestPhys(PD)),
            "nothing derives through it now"
        );
        assert_eq!(s.table_written(&mut m, GuestPhys(PD + 4), 4), 0);
        // The new directory's entry is what the pages now depend on.
        assert_eq!(s.table_written(&mut m, GuestPhys(PD2 + 4), 4), 3);
        assert!(m.pages.is_empty());
        // A copy that differs drops what it changes and keeps the rest.
        s.write_cr3(&mem, &mut m, PD).unwrap();
        for i in 0..3 {
            mapped(s.on_host_fault(&mut mem, &mut m, lin(i), HostAccess::Write, false));
        }
        mem.set32(PD2 + 4, mem.get32(PD + 4) & !RW);
        s.write_cr3(&mem, &mut m, PD2).unwrap();
        assert!(
            m.pages.is_empty(),
            "another entry value: walked again, and dropped"
        );
    }

    #[test]
    fn an_address_space_loaded_again_gets_back_what_it_used_still_accessed() {
        let (mut mem, mut s, mut m) = setup(|i| match i {
            0 => Some(0x9000 | P | RW | A | D),
            1 => Some(0xa000 | P | RW | A),
            2 => Some(0xb000 | P | RW | A | D),
            _ => None,
        });
        s.config.max_run_pages = 1;
        mapped(s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Write, false));
        mapped(s.on_host_fault(&mut mem, &mut m, lin(1), HostAccess::Read, false));
        // Another address space maps nothing there: both pages go, remembered.
        const PD2: u32 = 0x3000;
        s.write_cr3(&mem, &mut m, PD2).unwrap();
        assert!(m.pages.is_empty());
        // While away, page 0 moves to another frame and page 1 loses its accessed bit.
        mem.set32(PT, 0xd000 | P | RW | A | D);
        mem.set32(PT + 4, 0xa000 | P | RW);
        s.write_cr3(&mem, &mut m, PD).unwrap();
        assert_eq!(
            m.at(lin(0).0),
            Some((GuestPhys(0xd000), RW_PROT)),
            "what a walk gives now"
        );
        assert_eq!(
            m.at(lin(1).0),
            None,
            "a walk would set A: left to the first touch"
        );
        assert_eq!(m.at(lin(2).0), None, "never used");
        assert_eq!(mem.get32(PT + 4) & A, 0, "no accessed bit set ahead of use");
        assert_eq!(s.prefilled(), 1);
        // A page written while mapped read-only is mapped read-only again until dirty.
        mem.set32(PT + 4, 0xa000 | P | RW | A);
        mapped(s.on_host_fault(&mut mem, &mut m, lin(1), HostAccess::Read, false));
        s.write_cr3(&mem, &mut m, PD2).unwrap();
        s.write_cr3(&mem, &mut m, PD).unwrap();
        assert_eq!(m.at(lin(1).0), Some((GuestPhys(0xa000), Prot::READ)));
        // A paging-mode change forgets every address space.
        s.write_cr3(&mem, &mut m, PD2).unwrap();
        s.write_cr4(&mem, &mut m, CR4_PSE).unwrap();
        s.write_cr3(&mem, &mut m, PD).unwrap();
        assert!(m.pages.is_empty());
    }

    #[test]
    fn dropped_pages_are_unmapped_in_runs_over_what_nothing_maps() {
        let (mut mem, mut s, mut m) =
            setup(|i| (i < 8).then_some((0x10 + i) << 12 | P | RW | A | D));
        s.config.max_run_pages = 1;
        for i in [0, 2, 3, 5, 7] {
            mapped(s.on_host_fault(&mut mem, &mut m, lin(i), HostAccess::Read, false));
        }
        let before = m.unmaps;
        // 0, 2 and 3 go, 5 stays: one call over 0..=3 (1 was never mapped).
        s.drop_pages(&mut m, vec![lin(3).0 >> 12, lin(0).0 >> 12, lin(2).0 >> 12]);
        assert_eq!(m.unmaps, before + 1);
        assert!(m.at(lin(5).0).is_some() && m.at(lin(7).0).is_some());
        // 5 and 7 go with 6 between them never mapped: one call.
        s.drop_pages(&mut m, vec![lin(5).0 >> 12, lin(7).0 >> 12]);
        assert_eq!(m.unmaps, before + 2);
        assert!(m.pages.is_empty());
        // Two pages around one that stays: two calls.
        for i in [0, 1, 2] {
            mapped(s.on_host_fault(&mut mem, &mut m, lin(i), HostAccess::Read, false));
        }
        s.drop_pages(&mut m, vec![lin(0).0 >> 12, lin(2).0 >> 12]);
        assert_eq!(m.unmaps, before + 4);
        assert!(m.at(lin(1).0).is_some());
    }

    #[test]
    fn paging_mode_changes_drop_everything() {
        let (mut mem, mut s, mut m) = setup(|i| (i == 0).then_some(0x9000 | P | RW | A | D | G));
        let cr0 = s.context().cr0;
        for change in [0, 1, 2] {
            mapped(s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Read, false));
            assert!(!m.pages.is_empty());
            match change {
                0 => s.write_cr0(&mem, &mut m, cr0 & !CR0_WP).unwrap(),
                1 => s.write_cr0(&mem, &mut m, cr0 | CR0_WP).unwrap(),
                _ => s.write_efer(&mut m, EFER_NXE),
            }
            assert!(m.pages.is_empty(), "change {change}");
        }
        // Writes that change nothing paging-related keep the mappings.
        mapped(s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Read, false));
        s.write_cr0(&mem, &mut m, cr0 | (1 << 3)).unwrap();
        assert!(!m.pages.is_empty());
    }

    #[test]
    fn invlpg_drops_the_page_or_the_whole_large_page() {
        let (mut mem, mut s, mut m) =
            setup(|i| (i < 4).then_some((0x9000 + i * PAGE_SIZE) | P | RW | A));
        let d = mapped(s.on_host_fault(&mut mem, &mut m, lin(1), HostAccess::Read, false));
        assert_eq!(d.len, 4 * PAGE_SIZE);
        assert_eq!(s.invlpg(&mut m, lin(2).wrapping_add(0x10)), 1);
        assert_eq!(m.pages.len(), 3);
        // PDE 4 maps a 4 MiB page at 0: pages of it mapped in one run all go.
        mem.set32(PD + 16, P | RW | PS | A | D);
        let big = GuestLinear(0x0102_8000);
        let d = mapped(s.on_host_fault(&mut mem, &mut m, big, HostAccess::Read, false));
        let want = (
            GuestLinear(0x0102_0000),
            GuestPhys(0x2_0000),
            16 * PAGE_SIZE,
            RW_PROT,
        );
        assert_eq!((d.lin, d.gpa, d.len, d.prot), want);
        // A run never covers a page-table frame: frames 1 and 2 hold PD and PT.
        let d = mapped(s.on_host_fault(
            &mut mem,
            &mut m,
            GuestLinear(0x0100_8000),
            HostAccess::Read,
            false,
        ));
        assert_eq!((d.lin, d.len), (GuestLinear(0x0100_3000), 13 * PAGE_SIZE));
        assert_eq!(s.invlpg(&mut m, GuestLinear(0x013f_f000)), 29);
        assert_eq!(m.pages.len(), 3);
    }

    #[test]
    fn pae_invlpg_and_large_runs() {
        let mut mem = FakeMemory::new(4 << 20);
        let pdpt = 0x1000;
        mem.set64(pdpt, 0x2000 | entry::P);
        mem.set64(
            0x2000 + 8,
            0x0020_0000 | entry::P | entry::RW | entry::PS | entry::A,
        );
        let mut s = ShadowState::new(ShadowConfig {
            max_run_pages: 600,
            ..ShadowConfig::default()
        });
        let mut m = FakeMapper::default();
        assert_eq!(s.config().max_run_pages, 512);
        s.write_cr4(&mem, &mut m, CR4_PAE).unwrap();
        s.write_cr3(&mem, &mut m, pdpt).unwrap();
        s.write_cr0(&mem, &mut m, CR0_PE | CR0_PG).unwrap();
        let d = mapped(s.on_host_fault(
            &mut mem,
            &mut m,
            GuestLinear(0x0030_0000),
            HostAccess::Read,
            false,
        ));
        assert_eq!(
            (d.lin, d.len, d.prot, d.size),
            (
                GuestLinear(0x0020_0000),
                2 << 20,
                Prot::READ,
                PageSize::Size2M
            )
        );
        assert_eq!(s.invlpg(&mut m, GuestLinear(0x0020_0000)), 512);
        assert!(m.pages.is_empty());
        // A PDPTE with reserved bits makes the CR3 write fail and leaves the state alone.
        mem.set64(0x3000, entry::P | (1 << 5));
        assert!(s.write_cr3(&mem, &mut m, 0x3000).is_err());
        assert_eq!(s.context().cr3, pdpt);
    }

    #[test]
    fn watched_frames_are_mediated_until_unwatched() {
        // Two linear pages alias frame 0x9000, written already (D set).
        let (mut mem, mut s, mut m) = setup(|i| match i {
            0 | 1 => Some(0x9000 | P | RW | A | D),
            _ => None,
        });
        s.config.max_run_pages = 1;
        for page in [0, 1] {
            let d = mapped(s.on_host_fault(&mut mem, &mut m, lin(page), HostAccess::Write, false));
            assert_eq!(d.prot, RW_PROT);
        }
        s.watch(&mut m, GuestPhys(0x9008));
        assert!(s.is_watched(GuestPhys(0x9ff0)));
        for page in [0, 1] {
            assert_eq!(m.at(lin(page).0).unwrap().1, Prot::READ, "every alias");
            assert!(matches!(
                s.on_host_fault(&mut mem, &mut m, lin(page), HostAccess::Write, false),
                Decision::Mediate { .. }
            ));
        }
        // Code in a watched frame is still code: a write reverts it first.
        s.mark_code(&mut m, GuestPhys(0x9000), false);
        assert!(matches!(
            s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Write, false),
            Decision::CodeWrite { .. }
        ));
        s.unmark_code(&mut m, GuestPhys(0x9000));
        s.unwatch(&mut m, GuestPhys(0x9000));
        assert!(!s.is_watched(GuestPhys(0x9000)));
        let d = mapped(s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Write, false));
        assert_eq!(d.prot, RW_PROT);
    }

    #[test]
    fn code_pages_are_scanned_then_executable_never_writable() {
        let (mut mem, mut s, mut m) = setup(|i| match i {
            0 | 1 => Some(0x9000 | P | RW | US | A | D),
            _ => None,
        });
        s.config.max_run_pages = 1;
        mapped(s.on_host_fault(&mut mem, &mut m, lin(1), HostAccess::Write, true));
        let gpa = match s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Fetch, true) {
            Decision::ScanFirst { gpa, .. } => gpa,
            other => panic!("expected a scan, got {other:?}"),
        };
        assert_eq!(gpa, GuestPhys(0x9000));
        s.mark_code(&mut m, gpa, false);
        assert_eq!(
            m.at(lin(1).0).unwrap().1,
            Prot {
                read: true,
                write: false,
                exec: true
            }
        );
        let d = mapped(s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Fetch, true));
        assert_eq!(
            d.prot,
            Prot {
                read: true,
                write: false,
                exec: true
            }
        );
        assert!(matches!(
            s.on_host_fault(&mut mem, &mut m, lin(1), HostAccess::Write, true),
            Decision::CodeWrite { .. }
        ));
        s.mark_code(&mut m, gpa, true);
        assert_eq!(
            m.at(lin(0).0).unwrap().1,
            Prot {
                read: false,
                write: false,
                exec: true
            }
        );
        assert!(matches!(
            s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Read, true),
            Decision::Emulate {
                reason: EmulateReason::ReadPatchedCode,
                ..
            }
        ));
        s.unmark_code(&mut m, gpa);
        assert_eq!(m.at(lin(0).0).unwrap().1, RW_PROT);
        assert_eq!(m.at(lin(1).0).unwrap().1, RW_PROT);
    }

    #[test]
    fn nx_code_is_never_executable() {
        let mut mem = FakeMemory::new(1 << 20);
        mem.set64(0x1000, 0x2000 | entry::P);
        mem.set64(0x2000, 0x3000 | entry::P | entry::RW | entry::US);
        mem.set64(0x3000 + 8, 0x9000 | entry::P | entry::US | entry::XD);
        let mut s = ShadowState::new(ShadowConfig::default());
        let mut m = FakeMapper::default();
        s.write_efer(&mut m, EFER_NXE);
        s.write_cr4(&mem, &mut m, CR4_PAE).unwrap();
        s.write_cr3(&mem, &mut m, 0x1000).unwrap();
        s.write_cr0(&mem, &mut m, CR0_PE | CR0_PG | CR0_WP).unwrap();
        s.mark_code(&mut m, GuestPhys(0x9000), false);
        let d = mapped(s.on_host_fault(
            &mut mem,
            &mut m,
            GuestLinear(0x1000),
            HostAccess::Read,
            true,
        ));
        assert_eq!(d.prot, Prot::READ);
        let code = ErrorCode(ErrorCode::P | ErrorCode::U | ErrorCode::ID);
        assert_eq!(
            s.on_host_fault(
                &mut mem,
                &mut m,
                GuestLinear(0x1000),
                HostAccess::Fetch,
                true
            ),
            Decision::TrueFault(crate::PageFault {
                cr2: GuestLinear(0x1000),
                error_code: code
            })
        );
    }

    #[test]
    fn mmio_and_low_pages_are_emulated() {
        let (mut mem, mut s, mut m) = setup(|i| (i == 0).then_some(0xfee0_0000 | P | RW | A | D));
        assert!(matches!(
            s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Write, false),
            Decision::Emulate {
                reason: EmulateReason::NotRam,
                ..
            }
        ));
        s.write_cr0(&mem, &mut m, CR0_PE).unwrap();
        assert!(matches!(
            s.on_host_fault(&mut mem, &mut m, GuestLinear(0x7c), HostAccess::Read, false),
            Decision::Emulate {
                reason: EmulateReason::LowPage,
                ..
            }
        ));
        // Paging off maps RAM 1:1: data in runs, a fetched page alone once scanned.
        let d = mapped(s.on_host_fault(
            &mut mem,
            &mut m,
            GuestLinear(0x2_3000),
            HostAccess::Write,
            false,
        ));
        assert_eq!(
            (d.lin, d.gpa, d.len, d.prot),
            (
                GuestLinear(0x2_0000),
                GuestPhys(0x2_0000),
                16 * PAGE_SIZE,
                RW_PROT
            )
        );
        m.pages.clear();
        let d = mapped(
            s.on_host_fault(
                &mut mem,
                &mut m,
                GuestLinear(0x5000),
                HostAccess::Fetch,
                false,
            )
            .scan_and_retry(&mut s, &mut m, &mut mem),
        );
        assert_eq!(
            (d.lin, d.gpa, d.len),
            (GuestLinear(0x5000), GuestPhys(0x5000), PAGE_SIZE)
        );
        assert_eq!(
            m.at(0x5000).unwrap().1,
            Prot {
                read: true,
                write: false,
                exec: true
            }
        );
    }

    /// Plays the engine's part for a fetch: scan, mark, retry.
    trait ScanAndRetry {
        fn scan_and_retry(
            self,
            s: &mut ShadowState,
            m: &mut FakeMapper,
            mem: &mut FakeMemory,
        ) -> Decision;
    }

    impl ScanAndRetry for Decision {
        fn scan_and_retry(
            self,
            s: &mut ShadowState,
            m: &mut FakeMapper,
            mem: &mut FakeMemory,
        ) -> Decision {
            match self {
                Decision::ScanFirst { gpa, translation } => {
                    s.mark_code(m, gpa, false);
                    s.on_host_fault(mem, m, translation.lin, HostAccess::Fetch, false)
                }
                other => other,
            }
        }
    }

    #[test]
    fn entering_user_mode_drops_supervisor_rights() {
        let (mut mem, mut s, mut m) = setup(|i| match i {
            0 => Some(0x9000 | P | RW | A | D),
            1 => Some(0xa000 | P | US | A | D),
            2 => Some(0xb000 | P | RW | US | A | D),
            _ => None,
        });
        s.write_cr0(&mem, &mut m, CR0_PE | CR0_PG).unwrap();
        s.config.max_run_pages = 1;
        for i in 0..3 {
            mapped(s.on_host_fault(&mut mem, &mut m, lin(i), HostAccess::Write, false));
        }
        assert_eq!(
            m.at(lin(1).0).unwrap().1,
            RW_PROT,
            "CR0.WP=0 lets ring 0 write a read-only page"
        );
        s.enter_user_mode(&mut m, GuestLinear(0x0040_0000));
        assert_eq!(m.pages.len(), 3, "above the user limit nothing changes");
        s.enter_user_mode(&mut m, GuestLinear(0xc000_0000));
        assert_eq!(m.at(lin(0).0), None);
        assert_eq!(m.at(lin(1).0).unwrap().1, Prot::READ);
        assert_eq!(m.at(lin(2).0).unwrap().1, RW_PROT);
        assert!(s.beyond_user.is_empty());
    }

    #[test]
    fn restores_in_user_mode_grant_only_user_rights() {
        // 0x0040_0000 maps a user read-only page in frame 0x3000, which is also the page
        // table behind kernel page 0x00c0_0000. Under CR0.WP = 0 the kernel may write the
        // user page, but once the table role ends in user mode, user rights apply.
        let (mut mem, mut s, mut m) = setup(|i| (i == 0).then_some(0x3000 | P | US | A | D));
        s.write_cr0(&mem, &mut m, CR0_PE | CR0_PG).unwrap();
        mem.set32(PD + 12, 0x3000 | P | RW);
        mem.set32(0x3000, 0x9000 | P | RW | A | D);
        mapped(s.on_host_fault(
            &mut mem,
            &mut m,
            GuestLinear(0x00c0_0000),
            HostAccess::Read,
            false,
        ));
        let d = mapped(s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Read, false));
        assert_eq!(
            d.prot,
            Prot::READ,
            "a page table, though ring 0 may write it"
        );
        s.enter_user_mode(&mut m, GuestLinear(0xc000_0000));
        assert_eq!(m.at(0x00c0_0000), None);
        assert_eq!(m.at(lin(0).0), Some((GuestPhys(0x3000), Prot::READ)));
        s.leave_user_mode();
        let d = mapped(s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Write, false));
        assert_eq!(d.prot, RW_PROT, "back in ring 0 with the table role gone");
    }

    #[test]
    fn an_updated_entry_is_mapped_again_only_when_already_accessed() {
        // lin(0) → 0x7000, read by the kernel; its PTE then moves to 0x8000.
        let (mut mem, mut s, mut m) = setup(|i| (i == 0).then_some(0x7000 | P | RW | A));
        mapped(s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Read, false));
        assert_eq!(m.at(lin(0).0).map(|p| p.0), Some(GuestPhys(0x7000)));
        // Accessed, not dirty: mapped again at once, read-only (a write must set D).
        mem.set32(PT, 0x8000 | P | RW | A);
        assert_eq!(s.table_updated(&mem, &mut m, GuestPhys(PT), 4), (1, 1));
        assert_eq!(m.at(lin(0).0), Some((GuestPhys(0x8000), Prot::READ)));
        assert_eq!(mem.get32(PT), 0x8000 | P | RW | A, "no A or D bit set");
        // Not accessed: dropped, left to the next touch (whose walk sets A).
        mem.set32(PT, 0x9000 | P | RW);
        assert_eq!(s.table_updated(&mem, &mut m, GuestPhys(PT), 4), (1, 0));
        assert_eq!(m.at(lin(0).0), None);
        // Not present: dropped.
        mapped(s.on_host_fault(&mut mem, &mut m, lin(0), HostAccess::Read, false));
        mem.set32(PT, 0);
        assert_eq!(s.table_updated(&mem, &mut m, GuestPhys(PT), 4), (1, 0));
        assert_eq!(m.at(lin(0).0), None);
    }

    #[test]
    fn host_error_code_decoding_ignores_the_host_p_bit() {
        assert_eq!(HostAccess::from_host_error_code(0x7), HostAccess::Write);
        assert_eq!(HostAccess::from_host_error_code(0x4), HostAccess::Read);
        assert_eq!(HostAccess::from_host_error_code(0x15), HostAccess::Fetch);
    }
}
