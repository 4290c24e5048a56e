//! The host backend of shadow paging (ARCHITECTURE.md §6): guest RAM as the page walk
//! sees it, the [`HostMapper`] that carries shadow mappings out with mmap/mprotect over
//! the reserved linear space, the paging state a VM keeps, and the counters `--stats`
//! shows. The policy itself (what to map, what to drop) is the `shadow-paging` crate;
//! acting on its decisions at a host page fault is `page_fault.rs`.

use shadow_paging::bits::entry;
use shadow_paging::{
    HostMapper, PagingContext, PagingMode, Prot as SpProt, ShadowConfig, ShadowState,
};

use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::memory::{GuestRam, LinearSpace, MemoryError, Prot};

/// Guest RAM for the page walk: reads outside RAM are `None`, writes outside RAM are
/// dropped, as the walk expects.
#[derive(Debug)]
pub struct RamPhys<'a>(pub &'a GuestRam);

impl shadow_paging::GuestPhysMemory for RamPhys<'_> {
    fn read_u32(&self, gpa: GuestPhys) -> Option<u32> {
        self.0.read_u32(gpa).ok()
    }
    fn read_u64(&self, gpa: GuestPhys) -> Option<u64> {
        let mut b = [0u8; 8];
        self.0.read(gpa, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
    fn write_u32(&mut self, gpa: GuestPhys, value: u32) -> bool {
        self.0.write_u32(gpa, value).is_ok()
    }
    fn write_u64(&mut self, gpa: GuestPhys, value: u64) -> bool {
        self.0.write(gpa, &value.to_le_bytes()).is_ok()
    }
    fn ram_size(&self) -> u64 {
        self.0.size()
    }
}

/// Shadow mappings carried out on the host: `mmap` of the memfd at guest linear
/// addresses, `mprotect`, and unmapping back into the PROT_NONE reservation. The first
/// failure is kept (the trait has no error path): the run loop stops the VM with it,
/// since the host address space no longer matches the shadow state.
#[derive(Debug)]
pub struct HostSpace<'a> {
    /// Guest RAM (the memfd).
    pub ram: &'a GuestRam,
    /// The reserved low 4 GiB.
    pub space: &'a mut LinearSpace,
    /// Whether PROT_EXEC alone gives an execute-only page here (protection keys).
    pub exec_only: bool,
    /// The first host call that failed.
    pub error: Option<MemoryError>,
    /// Linear ranges `[start, end)` unmapped but not yet carried out: a mapping made over
    /// one in the same pass replaces it without the unmap (a PTE pointed at another
    /// frame, a CR3 switch between spaces that map a page differently), the rest is
    /// carried out by [`HostSpace::flush`] before the guest runs again.
    pending: Vec<(u64, u64)>,
}

impl HostSpace<'_> {
    fn prot(&self, p: SpProt) -> Prot {
        // Without protection keys PROT_EXEC alone is readable anyway; ask for it openly.
        let read = p.read || (p.exec && !self.exec_only);
        Prot::new(read, p.write, p.exec)
    }

    fn keep(&mut self, r: Result<(), MemoryError>) {
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
    }

    /// Takes `[start, end)` out of the pending unmaps.
    fn trim(&mut self, start: u64, end: u64) {
        if self.pending.iter().all(|&(a, b)| b <= start || a >= end) {
            return;
        }
        let mut kept = Vec::with_capacity(self.pending.len() + 1);
        for &(a, b) in &self.pending {
            if b <= start || a >= end {
                kept.push((a, b));
                continue;
            }
            if a < start {
                kept.push((a, start));
            }
            if b > end {
                kept.push((end, b));
            }
        }
        self.pending = kept;
    }

    /// Carries out the pending unmaps.
    pub fn flush(&mut self) {
        for (start, end) in std::mem::take(&mut self.pending) {
            // Ranges of the 4 GiB linear space the shadow state asked to unmap.
            let (Ok(lin), Ok(len)) = (u32::try_from(start), u32::try_from(end - start)) else {
                continue;
            };
            let r = self.space.unmap(GuestLinear(lin), len);
            self.keep(r);
        }
    }
}

impl HostMapper for HostSpace<'_> {
    fn map(&mut self, lin: GuestLinear, gpa: GuestPhys, len: u32, prot: SpProt) {
        let start = u64::from(lin.raw());
        self.trim(start, start + u64::from(len));
        let prot = self.prot(prot);
        let r = self.space.map(lin, self.ram, gpa, len, prot);
        self.keep(r);
    }
    fn unmap(&mut self, lin: GuestLinear, len: u32) {
        let start = u64::from(lin.raw());
        match self.pending.last_mut() {
            Some((_, end)) if *end == start => *end += u64::from(len),
            _ => self.pending.push((start, start + u64::from(len))),
        }
    }
    fn protect(&mut self, lin: GuestLinear, len: u32, prot: SpProt) {
        // Protections apply to what is mapped: the pending unmaps first.
        self.flush();
        let prot = self.prot(prot);
        let r = self.space.protect(lin, len, prot);
        self.keep(r);
    }
}

/// Counters of shadow paging for `--stats`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PagingStats {
    /// Host faults the guest's tables allowed: a mapping was filled.
    pub hidden_faults: u64,
    /// Host faults the guest's tables forbid: #PF injected.
    pub true_faults: u64,
    /// Guest writes to its page-table pages applied by the monitor.
    pub table_writes: u64,
    /// Guest accesses emulated because they cannot be a shadow mapping (page 0, no RAM,
    /// reads of patched code).
    pub emulated: u64,
    /// Writes to scanned code under paging (patches reverted).
    pub code_writes: u64,
}

/// Shadow paging state of a VM.
#[derive(Debug)]
pub struct Paging {
    /// The policy state.
    pub shadow: ShadowState,
    /// Counters.
    pub stats: PagingStats,
    /// Execute-only host pages work (PKU): patched code is mapped execute-only and data
    /// reads of it are served from the original bytes.
    pub exec_only: bool,
    /// While the guest runs at CPL 3 with paging on: the limit its segment mirrors are
    /// clamped below.
    pub user_clamp: Option<GuestLinear>,
    /// User limits computed lately, by paging context, with the frames of the tables
    /// each was read from (a return to user mode would otherwise read the directory, and
    /// tables, each time).
    limits: Vec<(PagingContext, Vec<u32>, Option<GuestLinear>)>,
    /// Guest-physical ranges written in frames the shadow state watches (descriptor
    /// tables behind inline segment loads), since the monitor last looked.
    pub descriptor_writes: Vec<(GuestPhys, u32)>,
}

impl Paging {
    /// Paging off, nothing mapped through the shadow state yet.
    pub fn new(exec_only: bool) -> Self {
        Self {
            shadow: ShadowState::new(ShadowConfig {
                min_linear: GuestLinear(PAGE_SIZE),
                max_run_pages: 16,
            }),
            stats: PagingStats::default(),
            exec_only,
            user_clamp: None,
            limits: Vec::new(),
            descriptor_writes: Vec::new(),
        }
    }

    /// [`user_limit`] for the current paging context, from the cache while none of the
    /// tables it was read from was written. A table the monitor does not mediate (no
    /// mapping derives from it) can change unseen: the limit is then too low or too high
    /// until the next mediated write to it or the cache's turnover, which costs speed
    /// (accesses above it are emulated, mappings below it dropped at each return to user
    /// mode), never isolation.
    pub fn user_limit(&mut self, ram: &GuestRam) -> Option<GuestLinear> {
        const KEPT: usize = 8;
        let ctx = *self.shadow.context();
        if let Some((_, _, limit)) = self.limits.iter().find(|(c, _, _)| *c == ctx) {
            return *limit;
        }
        let (limit, frames) = user_limit(ram, &ctx);
        if self.limits.len() >= KEPT {
            self.limits.remove(0);
        }
        self.limits.push((ctx, frames, limit));
        limit
    }

    /// The guest wrote the page table in frame `frame` (through mediation): the user
    /// limits read from it go.
    pub fn forget_limits_read_from(&mut self, frame: GuestPhys) {
        let frame = frame.page().raw();
        self.limits
            .retain(|(_, frames, _)| !frames.contains(&frame));
    }

    /// Runs `f` on the shadow state with the host mapper over `space`; returns its result
    /// and the first host call that failed, if one did.
    pub fn with_host<T>(
        &mut self,
        ram: &GuestRam,
        space: &mut LinearSpace,
        f: impl FnOnce(&mut ShadowState, &mut HostSpace<'_>) -> T,
    ) -> (T, Option<MemoryError>) {
        let mut host = HostSpace {
            ram,
            space,
            exec_only: self.exec_only,
            error: None,
            pending: Vec::new(),
        };
        let out = f(&mut self.shadow, &mut host);
        host.flush();
        (out, host.error)
    }

    /// Whether guest paging is on.
    pub fn enabled(&self) -> bool {
        self.shadow.context().mode != PagingMode::Off
    }
}

/// Whether this host gives execute-only pages for `PROT_EXEC` alone: the CPU has
/// protection keys and the OS enabled them (CPUID.7.0:ECX.PKU and OSPKE). Must run
/// before CPUID faulting is turned on.
pub fn host_has_exec_only() -> bool {
    // Leaf 7 exists on every CPU this monitor runs on (it needs FSGSBASE, reported there).
    let r = core::arch::x86_64::__cpuid_count(7, 0);
    const PKU: u32 = 1 << 3;
    const OSPKE: u32 = 1 << 4;
    r.ecx & (PKU | OSPKE) == PKU | OSPKE
}

/// The linear address the user-mode segment mirrors are clamped below (ARCHITECTURE §4):
/// the end of the highest page user mode may use, its directory entry and its table entry
/// both present and user. Everything above it is out of user mode's reach, so cutting the
/// segments there costs user code nothing, and the kernel's mappings there stay while user
/// code runs; supervisor pages below it are handled page by page (dropped on the way to
/// user mode, and user faults there are walked as user accesses). Kernels commonly mark
/// their own directory entries user (32-bit Linux does, for every kernel page table) and
/// leave the rights to the table entries: looking at the directory alone would put the
/// limit at the top and drop every kernel mapping at each return to user mode. Any limit
/// is safe: a user access above it is emulated. `None`: user mode may use the top page,
/// no clamp. Guest RAM outside RAM reads as not present. Returned with the
/// guest-physical frames of the tables it read ([`Paging::user_limit`] caches it until
/// one of them is written).
pub fn user_limit(ram: &GuestRam, ctx: &PagingContext) -> (Option<GuestLinear>, Vec<u32>) {
    let mut frames = Vec::new();
    // One table page, its entries as u64 (zeros outside RAM).
    let mut table = |addr: u64, pae: bool| -> Vec<u64> {
        let mut page = [0u8; PAGE_SIZE as usize];
        let frame = u32::try_from(addr & !u64::from(PAGE_SIZE - 1)).ok();
        if let Some(frame) = frame {
            frames.push(frame);
            if ram.read(GuestPhys(frame), &mut page).is_err() {
                page.fill(0);
            }
        }
        if pae {
            page.chunks_exact(8)
                .map(|c| c.try_into().map_or(0, u64::from_le_bytes))
                .collect()
        } else {
            page.chunks_exact(4)
                .map(|c| c.try_into().map_or(0, |b| u64::from(u32::from_le_bytes(b))))
                .collect()
        }
    };
    let user = |e: u64| e & (entry::P | entry::US) == entry::P | entry::US;
    let next_table = |e: u64, pae: bool| {
        if pae {
            entry::pae_addr_4k(e)
        } else {
            u64::from(entry::legacy_addr_4k(entry::low_dword(e)))
        }
    };
    // The directories, highest first: (linear base, table address, span of one entry,
    // PAE). A PAE directory is the first 512 entries of its page (the PDPTE's address is
    // page-aligned).
    let mut directories: Vec<(u64, u64, u64, bool)> = Vec::new();
    let large = match ctx.mode {
        PagingMode::Off => return (None, frames),
        PagingMode::Pae { .. } => {
            for (i, pdpte) in ctx.roots.0.iter().enumerate().rev() {
                if pdpte & entry::P != 0 {
                    let base = (i as u64) << 30;
                    directories.push((base, next_table(*pdpte, true), 1 << 21, true));
                }
            }
            true
        }
        PagingMode::TwoLevel { pse } => {
            let pd = u64::from(shadow_paging::mode::legacy_directory_base(ctx.cr3));
            directories.push((0, pd, 1 << 22, false));
            pse
        }
    };
    let mut end = None;
    'search: for (base, pd, span, pae) in directories {
        let pdes = table(pd, pae);
        for (j, &pde) in pdes.iter().enumerate().rev() {
            let j = j as u64;
            if !user(pde) {
                continue;
            }
            let start = base + j * span;
            if large && pde & entry::PS != 0 {
                end = Some(start + span);
                break 'search;
            }
            let ptes = table(next_table(pde, pae), pae);
            if let Some(k) = ptes.iter().rposition(|&e| user(e)) {
                end = Some(start + (k as u64 + 1) * u64::from(PAGE_SIZE));
                break 'search;
            }
        }
    }
    let limit = u32::try_from(end.unwrap_or(0)).ok().map(GuestLinear);
    (limit, frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_alone_is_asked_for_only_where_it_is_execute_only() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut space = LinearSpace::reserve().unwrap();
        let x = SpProt {
            read: false,
            write: false,
            exec: true,
        };
        let with_pku = HostSpace {
            ram: &ram,
            space: &mut space,
            exec_only: true,
            error: None,
            pending: Vec::new(),
        };
        assert_eq!(with_pku.prot(x), Prot::X);
        assert_eq!(with_pku.prot(SpProt::READ), Prot::R);
        let without = HostSpace {
            exec_only: false,
            ..with_pku
        };
        assert_eq!(without.prot(x), Prot::RX);
        drop(without);
        // A refused host call is kept, not lost: the run loop stops the VM with it.
        let mut host = HostSpace {
            ram: &ram,
            space: &mut space,
            exec_only: false,
            error: None,
            pending: Vec::new(),
        };
        host.map(GuestLinear(0x1000), GuestPhys(0x1000), 0x2000, SpProt::READ);
        assert!(host.error.is_none());
        host.map(
            GuestLinear(0x1000),
            GuestPhys(0xff000),
            0x2000,
            SpProt::READ,
        );
        assert!(matches!(host.error, Some(MemoryError::BadPhysRange { .. })));
        host.error = None;
        // Unmaps wait for the end of the pass; a mapping over one replaces it.
        host.map(GuestLinear(0x4000), GuestPhys(0x4000), 0x4000, SpProt::READ);
        host.unmap(GuestLinear(0x4000), 0x2000);
        host.unmap(GuestLinear(0x6000), 0x2000);
        assert!(host.space.is_mapped(GuestLinear(0x4000)), "not yet");
        host.map(GuestLinear(0x5000), GuestPhys(0x9000), 0x2000, SpProt::READ);
        host.flush();
        let mapped: Vec<bool> = (4..8)
            .map(|p| host.space.is_mapped(GuestLinear(p << 12)))
            .collect();
        assert_eq!(mapped, [false, true, true, false]);
        assert!(host.error.is_none());
        host.unmap(GuestLinear(0x1000), 0x7000);
        host.flush();
        assert!(!host.space.is_mapped(GuestLinear(0x5000)));
    }

    #[test]
    fn user_limit_is_the_end_of_the_highest_user_directory_entry() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let pd = 0x1000u32;
        // PDE 0 supervisor (kernel identity), PDE 1 and 0x100 user, PDE 0x300 supervisor.
        ram.write_u32(GuestPhys(pd), 0x0000_0083).unwrap();
        ram.write_u32(GuestPhys(pd + 4), 0x0040_0087).unwrap();
        ram.write_u32(GuestPhys(pd + 0x100 * 4), 0x0080_0087)
            .unwrap();
        ram.write_u32(GuestPhys(pd + 0x300 * 4), 0x0000_0083)
            .unwrap();
        let mem = RamPhys(&ram);
        let ctx = PagingContext::new(&mem, 0x8000_0011, pd, 0x10, 0).unwrap();
        assert_eq!(user_limit(&ram, &ctx).0, Some(GuestLinear(0x4040_0000)));
        // A user entry at the very top: no clamp.
        ram.write_u32(GuestPhys(pd + 0x3ff * 4), 0x0000_0087)
            .unwrap();
        assert_eq!(user_limit(&ram, &ctx).0, None);
    }

    #[test]
    fn user_limit_looks_through_user_directory_entries_at_their_tables() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let (pd, pt_top, pt_user) = (0x1000u32, 0x2000u32, 0x3000u32);
        // As 32-bit Linux builds them: the top directory entry is user, its table maps
        // supervisor pages only; below, a user table with user pages up to entry 0x1ff.
        ram.write_u32(GuestPhys(pd + 0x3fe * 4), pt_top | 0x67)
            .unwrap();
        for k in 0..1024 {
            ram.write_u32(GuestPhys(pt_top + k * 4), 0x5000 | 0x63)
                .unwrap();
        }
        ram.write_u32(GuestPhys(pd + 0x2ff * 4), pt_user | 0x67)
            .unwrap();
        for k in 0..0x200 {
            ram.write_u32(GuestPhys(pt_user + k * 4), 0x6000 | 0x67)
                .unwrap();
        }
        let mem = RamPhys(&ram);
        let ctx = PagingContext::new(&mem, 0x8000_0011, pd, 0x10, 0).unwrap();
        assert_eq!(user_limit(&ram, &ctx).0, Some(GuestLinear(0xbfe0_0000)));
        // One user page in the top table: the limit is its end.
        ram.write_u32(GuestPhys(pt_top + 0x10 * 4), 0x5000 | 0x67)
            .unwrap();
        assert_eq!(user_limit(&ram, &ctx).0, Some(GuestLinear(0xff81_1000)));
        // Under PAE: the same shape in the last directory, entries of 8 bytes.
        let (pdpt, pd3, pt3) = (0x8000u32, 0x9000u32, 0xa000u32);
        ram.write_u32(GuestPhys(pdpt + 3 * 8), pd3 | 1).unwrap();
        ram.write_u32(GuestPhys(pd3 + 0x1ff * 8), pt3 | 0x67)
            .unwrap();
        ram.write_u32(GuestPhys(pt3 + 8), 0x5000 | 0x63).unwrap();
        ram.write_u32(GuestPhys(pd3 + 0x100 * 8), pt3 | 0x67)
            .unwrap();
        let pae = PagingContext::new(&mem, 0x8000_0011, pdpt, 0x30, 0).unwrap();
        // No user page at all: nothing is reachable.
        assert_eq!(user_limit(&ram, &pae).0, Some(GuestLinear(0)));
        ram.write_u32(GuestPhys(pt3 + 0x20 * 8), 0x5000 | 0x67)
            .unwrap();
        assert_eq!(user_limit(&ram, &pae).0, Some(GuestLinear(0xffe2_1000)));
    }
}
