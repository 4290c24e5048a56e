//! The guest page walk: 32-bit paging (4 KiB and PSE 4 MiB pages) and PAE paging
//! (4 KiB and 2 MiB pages, NX), with the permission rules of SDM §4.6, the error code of
//! §4.7 and the accessed/dirty updates of §4.8.
//!
//! Choices where the SDM leaves room or the monitor differs from a CPU:
//! * I/D (error-code bit 4) is reported for instruction fetches only under PAE paging
//!   with EFER.NXE = 1; the monitor's CPU model has no SMEP, the other case the SDM names.
//! * A paging-structure entry outside RAM reads as not present: unbacked physical memory
//!   gives no translation, and the guest sees a not-present #PF it can handle.
//! * Accessed and dirty bits are set only by a walk that succeeds (A on every entry
//!   used, D on the entry mapping the page for a write), as the CPU does for the
//!   translations it caches.

use crate::addr::{GuestLinear, GuestPhys, GuestPhys64};
use crate::bits::{entry, linear, ErrorCode};
use crate::memory::GuestPhysMemory;
use crate::mode::{legacy_directory_base, PagingContext, PagingMode};

/// The kind of access being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Access {
    /// A data write (never set together with `fetch`).
    pub write: bool,
    /// Made at CPL 3 (user mode).
    pub user: bool,
    /// An instruction fetch.
    pub fetch: bool,
}

impl Access {
    /// A data read at the given privilege.
    pub const fn read(user: bool) -> Self {
        Self {
            write: false,
            user,
            fetch: false,
        }
    }
    /// A data write at the given privilege.
    pub const fn write(user: bool) -> Self {
        Self {
            write: true,
            user,
            fetch: false,
        }
    }
    /// An instruction fetch at the given privilege.
    pub const fn fetch(user: bool) -> Self {
        Self {
            write: false,
            user,
            fetch: true,
        }
    }
}

/// A page fault to deliver to the guest: CR2 and the error code it pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageFault {
    /// The faulting linear address (the guest's CR2).
    pub cr2: GuestLinear,
    /// The error code pushed with vector 14.
    pub error_code: ErrorCode,
}

impl PageFault {
    fn new(
        cr2: GuestLinear,
        access: Access,
        present: bool,
        rsvd: bool,
        report_fetch: bool,
    ) -> Self {
        let mut code = 0;
        if present {
            code |= ErrorCode::P;
        }
        if access.write {
            code |= ErrorCode::W;
        }
        if access.user {
            code |= ErrorCode::U;
        }
        if rsvd {
            code |= ErrorCode::RSVD;
        }
        if access.fetch && report_fetch {
            code |= ErrorCode::ID;
        }
        Self {
            cr2,
            error_code: ErrorCode(code),
        }
    }
}

/// Size of the page a translation came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// A 4 KiB page (or paging off).
    Size4K,
    /// A PAE 2 MiB page.
    Size2M,
    /// A 32-bit PSE 4 MiB page.
    Size4M,
}

impl PageSize {
    /// Bytes in the page.
    pub const fn bytes(self) -> u32 {
        match self {
            Self::Size4K => 4 << 10,
            Self::Size2M => 2 << 20,
            Self::Size4M => 4 << 20,
        }
    }
}

/// Effective rights, combined over every level of the walk (SDM §4.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perms {
    /// R/W set at every level.
    pub writable: bool,
    /// U/S set at every level.
    pub user: bool,
    /// XD set at some level while EFER.NXE = 1.
    pub nx: bool,
}

/// Where the entries a translation used live: these pages become write-protected, so
/// the monitor sees every guest change to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TableEntries {
    /// The page-directory entry (`None` with paging off).
    pub pde: Option<GuestPhys>,
    /// The page-table entry (`None` for large pages and with paging off).
    pub pte: Option<GuestPhys>,
}

impl TableEntries {
    /// The entry addresses present, outermost first.
    pub fn iter(&self) -> impl Iterator<Item = GuestPhys> {
        self.pde.into_iter().chain(self.pte)
    }
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The linear address translated.
    pub lin: GuestLinear,
    /// The physical address `lin` translates to.
    pub phys: GuestPhys64,
    /// Size of the page that maps `lin`.
    pub size: PageSize,
    /// Effective rights.
    pub perms: Perms,
    /// G of the entry that maps the page (meaningful only with CR4.PGE).
    pub global: bool,
    /// D of the entry that maps the page, after this walk (always true with paging off).
    pub dirty: bool,
    /// The entries used, by guest-physical address.
    pub entries: TableEntries,
    /// Entries whose accessed or dirty bit this walk set, outermost first.
    pub ad_written: [Option<GuestPhys>; 2],
}

impl Translation {
    /// The 4 KiB physical frame holding `phys`.
    pub fn frame(&self) -> GuestPhys64 {
        self.phys.page()
    }

    /// The first linear address of the (possibly large) page that maps `lin`.
    pub fn page_base(&self) -> GuestLinear {
        GuestLinear(self.lin.0 & !(self.size.bytes() - 1))
    }
}

/// The entries of one walk before accessed/dirty bits are applied.
struct Walked {
    phys: u64,
    size: PageSize,
    perms: Perms,
    global: bool,
    /// (address, value) of each entry used, outermost first; the last maps the page.
    levels: [Option<(GuestPhys, u64)>; 2],
}

impl Walked {
    fn final_entry(&self) -> Option<(GuestPhys, u64)> {
        self.levels[1].or(self.levels[0])
    }
}

/// Reads a dword entry; unbacked memory reads as a not-present entry.
fn read_legacy<M: GuestPhysMemory + ?Sized>(mem: &M, gpa: GuestPhys) -> u64 {
    mem.read_u32(gpa).map_or(0, u64::from)
}

/// Reads a qword entry; unbacked memory, including anything at or above 4 GiB, reads as
/// a not-present entry.
fn read_pae<M: GuestPhysMemory + ?Sized>(mem: &M, gpa: u64) -> (Option<GuestPhys>, u64) {
    match GuestPhys64(gpa).below_4g() {
        Some(g) => (Some(g), mem.read_u64(g).unwrap_or(0)),
        None => (None, 0),
    }
}

fn present(e: u64) -> bool {
    e & entry::P != 0
}

fn translate<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    ctx: &PagingContext,
    lin: GuestLinear,
    access: Access,
) -> Result<Walked, PageFault> {
    let l = lin.0;
    let (walked, report_fetch) = match ctx.mode {
        PagingMode::Off => {
            let perms = Perms {
                writable: true,
                user: true,
                nx: false,
            };
            let w = Walked {
                phys: u64::from(l),
                size: PageSize::Size4K,
                perms,
                global: false,
                levels: [None, None],
            };
            return Ok(w);
        }
        PagingMode::TwoLevel { pse } => (walk_legacy(mem, ctx.cr3, lin, access, pse)?, false),
        PagingMode::Pae { nxe } => (walk_pae(mem, ctx, lin, access, nxe)?, nxe),
    };
    let p = walked.perms;
    let denied = if access.user {
        !p.user || (access.write && !p.writable)
    } else {
        access.write && !p.writable && ctx.wp()
    };
    if denied || (access.fetch && p.nx) {
        return Err(PageFault::new(lin, access, true, false, report_fetch));
    }
    Ok(walked)
}

/// The address of the 32-bit PDE for `lin` in the directory CR3 names.
fn legacy_pde_address(cr3: u32, lin: u32) -> GuestPhys {
    GuestPhys(
        legacy_directory_base(cr3) + linear::legacy_pde_index(lin) * linear::LEGACY_ENTRY_BYTES,
    )
}

/// The address of the PAE PDE for `lin` in the directory `pdpte` names.
fn pae_pde_address(pdpte: u64, lin: u32) -> u64 {
    entry::pae_addr_4k(pdpte) + u64::from(linear::pae_pde_index(lin) * linear::PAE_ENTRY_BYTES)
}

/// The guest-physical address of the page-directory entry a walk of `lin` reads
/// (`None` with paging off, under a not-present PDPTE, or above 4 GiB). Two contexts that
/// read the same entry for `lin` translate it alike: the entries below it are the same
/// memory.
pub fn pde_address(ctx: &PagingContext, lin: GuestLinear) -> Option<GuestPhys> {
    match ctx.mode {
        PagingMode::Off => None,
        PagingMode::TwoLevel { .. } => Some(legacy_pde_address(ctx.cr3, lin.0)),
        PagingMode::Pae { .. } => {
            let pdpte = *ctx.roots.0.get(linear::pdpte_index(lin.0))?;
            if !present(pdpte) {
                return None;
            }
            GuestPhys64(pae_pde_address(pdpte, lin.0)).below_4g()
        }
    }
}

fn walk_legacy<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    cr3: u32,
    lin: GuestLinear,
    access: Access,
    pse: bool,
) -> Result<Walked, PageFault> {
    let l = lin.0;
    let not_present = || PageFault::new(lin, access, false, false, false);
    let pde_gpa = legacy_pde_address(cr3, l);
    let pde = read_legacy(mem, pde_gpa);
    if !present(pde) {
        return Err(not_present());
    }
    if pse && pde & entry::PS != 0 {
        // The value came from a dword read, so its low dword is all of it.
        let raw = entry::low_dword(pde);
        if entry::legacy_4m_reserved(raw) {
            return Err(PageFault::new(lin, access, true, true, false));
        }
        return Ok(Walked {
            phys: entry::legacy_addr_4m(raw) | u64::from(linear::offset_4m(l)),
            size: PageSize::Size4M,
            perms: Perms {
                writable: pde & entry::RW != 0,
                user: pde & entry::US != 0,
                nx: false,
            },
            global: pde & entry::G != 0,
            levels: [Some((pde_gpa, pde)), None],
        });
    }
    let pte_gpa = GuestPhys(
        entry::legacy_addr_4k(entry::low_dword(pde))
            + linear::legacy_pte_index(l) * linear::LEGACY_ENTRY_BYTES,
    );
    let pte = read_legacy(mem, pte_gpa);
    if !present(pte) {
        return Err(not_present());
    }
    let both = pde & pte;
    Ok(Walked {
        phys: u64::from(entry::legacy_addr_4k(entry::low_dword(pte)) | linear::offset_4k(l)),
        size: PageSize::Size4K,
        perms: Perms {
            writable: both & entry::RW != 0,
            user: both & entry::US != 0,
            nx: false,
        },
        global: pte & entry::G != 0,
        levels: [Some((pde_gpa, pde)), Some((pte_gpa, pte))],
    })
}

fn walk_pae<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    ctx: &PagingContext,
    lin: GuestLinear,
    access: Access,
    nxe: bool,
) -> Result<Walked, PageFault> {
    let not_present = || PageFault::new(lin, access, false, false, nxe);
    let reserved = || PageFault::new(lin, access, true, true, nxe);
    // The PDPTEs were checked for reserved bits when they were loaded; bits 31:30 of
    // the address select one of the four.
    let Some(&pdpte) = ctx.roots.0.get(linear::pdpte_index(lin.0)) else {
        return Err(not_present());
    };
    if !present(pdpte) {
        return Err(not_present());
    }
    let (pde_gpa, pde) = read_pae(mem, pae_pde_address(pdpte, lin.0));
    let pde_gpa = match pde_gpa {
        Some(g) if present(pde) => g,
        _ => return Err(not_present()),
    };
    let maps_2m = pde & entry::PS != 0;
    if entry::pae_reserved(pde, nxe, maps_2m) {
        return Err(reserved());
    }
    let xd = |e: u64| nxe && e & entry::XD != 0;
    if maps_2m {
        return Ok(Walked {
            phys: entry::pae_addr_2m(pde) | u64::from(linear::offset_2m(lin.0)),
            size: PageSize::Size2M,
            perms: Perms {
                writable: pde & entry::RW != 0,
                user: pde & entry::US != 0,
                nx: xd(pde),
            },
            global: pde & entry::G != 0,
            levels: [Some((pde_gpa, pde)), None],
        });
    }
    let (pte_gpa, pte) = read_pae(
        mem,
        entry::pae_addr_4k(pde) + u64::from(linear::pae_pte_index(lin.0) * linear::PAE_ENTRY_BYTES),
    );
    let pte_gpa = match pte_gpa {
        Some(g) if present(pte) => g,
        _ => return Err(not_present()),
    };
    if entry::pae_reserved(pte, nxe, false) {
        return Err(reserved());
    }
    let both = pde & pte;
    Ok(Walked {
        phys: entry::pae_addr_4k(pte) | u64::from(linear::offset_4k(lin.0)),
        size: PageSize::Size4K,
        perms: Perms {
            writable: both & entry::RW != 0,
            user: both & entry::US != 0,
            nx: xd(pde) || xd(pte),
        },
        global: pte & entry::G != 0,
        levels: [Some((pde_gpa, pde)), Some((pte_gpa, pte))],
    })
}

fn finish(
    lin: GuestLinear,
    w: &Walked,
    dirty: bool,
    ad_written: [Option<GuestPhys>; 2],
) -> Translation {
    Translation {
        lin,
        phys: GuestPhys64(w.phys),
        size: w.size,
        perms: w.perms,
        global: w.global,
        dirty,
        entries: TableEntries {
            pde: w.levels[0].map(|l| l.0),
            pte: w.levels[1].map(|l| l.0),
        },
        ad_written,
    }
}

/// Translates `lin` for `access` as the CPU would, setting accessed and dirty bits in
/// guest memory on success.
///
/// # Errors
/// The [`PageFault`] the CPU would raise: not-present, reserved-bit or protection
/// violation, with the guest error code.
pub fn walk<M: GuestPhysMemory + ?Sized>(
    mem: &mut M,
    ctx: &PagingContext,
    lin: GuestLinear,
    access: Access,
) -> Result<Translation, PageFault> {
    let w = translate(mem, ctx, lin, access)?;
    let mut ad_written = [None, None];
    let mut dirty = true;
    let last = if w.levels[1].is_some() { 1 } else { 0 };
    for (i, (level, written)) in w.levels.iter().zip(&mut ad_written).enumerate() {
        let Some((gpa, value)) = *level else { continue };
        let mut new = value | entry::A;
        if i == last {
            if access.write {
                new |= entry::D;
            }
            dirty = new & entry::D != 0;
        }
        // A and D live in the low dword of both entry formats; writing only that dword
        // leaves the rest of the entry exactly as the guest wrote it.
        if new != value && mem.write_u32(gpa, entry::low_dword(new)) {
            *written = Some(gpa);
        }
    }
    Ok(finish(lin, &w, dirty, ad_written))
}

/// Translates `lin` for `access` without touching guest memory: `None` if the walk would
/// fault or would have to set an accessed or dirty bit. The monitor uses it to extend a
/// mapping over neighbouring pages the guest has already used.
pub fn peek<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    ctx: &PagingContext,
    lin: GuestLinear,
    access: Access,
) -> Option<Translation> {
    let w = translate(mem, ctx, lin, access).ok()?;
    if w.levels.iter().flatten().any(|&(_, v)| v & entry::A == 0) {
        return None;
    }
    let dirty = match w.final_entry() {
        Some((_, v)) => v & entry::D != 0,
        None => true,
    };
    if access.write && !dirty {
        return None;
    }
    Some(finish(lin, &w, dirty, [None, None]))
}

/// Translates `lin` for `access` without touching guest memory, whatever its accessed
/// and dirty bits say: where the walk leads, for reading bytes the guest has not reached
/// yet (the tail of an instruction that straddles into the next page, which the fetch
/// of that instruction will access). `None` if the walk would fault.
pub fn resolve<M: GuestPhysMemory + ?Sized>(
    mem: &M,
    ctx: &PagingContext,
    lin: GuestLinear,
    access: Access,
) -> Option<Translation> {
    let w = translate(mem, ctx, lin, access).ok()?;
    let dirty = w.final_entry().is_none_or(|(_, v)| v & entry::D != 0);
    Some(finish(lin, &w, dirty, [None, None]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bits::{CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, EFER_NXE};
    use crate::testutil::FakeMemory;

    const P: u64 = entry::P;
    const RW: u64 = entry::RW;
    const US: u64 = entry::US;
    const PS: u64 = entry::PS;
    const XD: u64 = entry::XD;
    const PAGING: u32 = CR0_PG | CR0_PE;

    const PD: u32 = 0x1000;
    const PT: u32 = 0x2000;

    /// 32-bit paging: PD at 0x1000; PDE 1 (0x0040_0000..) → PT at 0x2000, whose entry
    /// 5 maps 0x0040_5000 to frame 0x7000 with `pte_flags`.
    fn legacy(pde_flags: u64, pte_flags: u64) -> FakeMemory {
        let mut mem = FakeMemory::new(1 << 20);
        mem.set32(PD + 4, PT | entry::low_dword(pde_flags));
        mem.set32(PT + 5 * 4, 0x7000 | entry::low_dword(pte_flags));
        mem
    }

    fn ctx(mem: &FakeMemory, cr0: u32, cr3: u32, cr4: u32, efer: u64) -> PagingContext {
        PagingContext::new(mem, cr0, cr3, cr4, efer).expect("valid roots")
    }

    fn code(r: Result<Translation, PageFault>) -> u32 {
        r.expect_err("expected #PF").error_code.0
    }

    const LIN: GuestLinear = GuestLinear(0x0040_5123);

    #[test]
    fn resolve_follows_entries_the_guest_has_not_accessed() {
        let mem = legacy(P | RW, P | RW);
        let c = ctx(&mem, PAGING, PD, 0, 0);
        assert_eq!(peek(&mem, &c, LIN, Access::fetch(false)), None);
        let t = resolve(&mem, &c, LIN, Access::fetch(false)).expect("present entries");
        assert_eq!(t.phys, GuestPhys64(0x7123));
        // Nothing was written: the accessed bits are still clear.
        assert_eq!(mem.read_u32(GuestPhys(PT + 20)), Some(0x7000 | 0x3));
        let absent = legacy(P | RW, 0);
        let c = ctx(&absent, PAGING, PD, 0, 0);
        assert_eq!(resolve(&absent, &c, LIN, Access::fetch(false)), None);
    }

    #[test]
    fn legacy_4k_translation_and_rights() {
        let mut mem = legacy(P | RW | US, P | US);
        let c = ctx(&mem, PAGING, PD, 0, 0);
        let t = walk(&mut mem, &c, LIN, Access::read(true)).unwrap();
        assert_eq!(t.phys, GuestPhys64(0x7123));
        assert_eq!(t.size, PageSize::Size4K);
        assert_eq!(
            t.perms,
            Perms {
                writable: false,
                user: true,
                nx: false
            }
        );
        assert_eq!(t.entries.pde, Some(GuestPhys(PD + 4)));
        assert_eq!(t.entries.pte, Some(GuestPhys(PT + 20)));
        assert_eq!(t.page_base(), GuestLinear(0x0040_5000));
    }

    #[test]
    fn not_present_error_codes() {
        let mut mem = legacy(0, P | RW | US);
        let c = ctx(&mem, PAGING, PD, 0, 0);
        assert_eq!(code(walk(&mut mem, &c, LIN, Access::read(false))), 0);
        assert_eq!(
            code(walk(&mut mem, &c, LIN, Access::write(true))),
            ErrorCode::W | ErrorCode::U
        );
        let mut mem = legacy(P | RW | US, RW | US);
        let pf = walk(&mut mem, &c, LIN, Access::write(false)).unwrap_err();
        assert_eq!(pf.cr2, LIN);
        assert_eq!(pf.error_code.0, ErrorCode::W);
        // Without NX the I/D bit is never reported.
        assert_eq!(
            code(walk(&mut mem, &c, LIN, Access::fetch(true))),
            ErrorCode::U
        );
    }

    #[test]
    fn read_only_page_and_cr0_wp() {
        let mut mem = legacy(P | RW | US, P | US);
        let wp = ctx(&mem, PAGING | CR0_WP, PD, 0, 0);
        let no_wp = ctx(&mem, PAGING, PD, 0, 0);
        let pu = ErrorCode::P | ErrorCode::W;
        assert_eq!(code(walk(&mut mem, &wp, LIN, Access::write(false))), pu);
        assert_eq!(
            code(walk(&mut mem, &no_wp, LIN, Access::write(true))),
            pu | ErrorCode::U
        );
        let t =
            walk(&mut mem, &no_wp, LIN, Access::write(false)).expect("CR0.WP=0 lets ring 0 write");
        assert!(t.dirty);
        // R/W must be set at both levels.
        let mut mem = legacy(P | US, P | RW | US);
        assert_eq!(code(walk(&mut mem, &wp, LIN, Access::write(false))), pu);
    }

    #[test]
    fn user_access_to_supervisor_page() {
        for (pde, pte) in [(P | RW, P | RW | US), (P | RW | US, P | RW)] {
            let mut mem = legacy(pde, pte);
            let c = ctx(&mem, PAGING | CR0_WP, PD, 0, 0);
            assert_eq!(
                code(walk(&mut mem, &c, LIN, Access::read(true))),
                ErrorCode::P | ErrorCode::U
            );
            assert!(walk(&mut mem, &c, LIN, Access::write(false)).is_ok());
        }
    }

    #[test]
    fn accessed_and_dirty_bits() {
        let mut mem = legacy(P | RW | US, P | RW | US);
        let c = ctx(&mem, PAGING | CR0_WP, PD, 0, 0);
        let t = walk(&mut mem, &c, LIN, Access::read(false)).unwrap();
        assert_eq!(
            t.ad_written,
            [Some(GuestPhys(PD + 4)), Some(GuestPhys(PT + 20))]
        );
        assert!(!t.dirty);
        assert_eq!(
            u64::from(mem.get32(PD + 4)),
            PT as u64 | P | RW | US | entry::A
        );
        assert_eq!(
            u64::from(mem.get32(PT + 20)),
            0x7000 | P | RW | US | entry::A
        );
        assert_eq!(
            peek(&mem, &c, LIN, Access::write(false)),
            None,
            "D not set yet"
        );
        let t = walk(&mut mem, &c, LIN, Access::write(false)).unwrap();
        assert_eq!(t.ad_written, [None, Some(GuestPhys(PT + 20))]);
        assert!(t.dirty);
        assert_eq!(
            u64::from(mem.get32(PT + 20)),
            0x7000 | P | RW | US | entry::A | entry::D
        );
        assert_eq!(
            u64::from(mem.get32(PD + 4)) & entry::D,
            0,
            "D is not set in a PDE that maps a table"
        );
        let t = walk(&mut mem, &c, LIN, Access::write(false)).unwrap();
        assert_eq!(t.ad_written, [None, None]);
        // A faulting walk changes nothing.
        let mut mem = legacy(P | RW, P | RW);
        let before = mem.bytes.clone();
        assert!(walk(&mut mem, &c, LIN, Access::read(true)).is_err());
        assert_eq!(mem.bytes, before);
    }

    #[test]
    fn pse_4m_pages() {
        let mut mem = FakeMemory::new(1 << 20);
        mem.set32(
            PD + 4 * 3,
            0x0080_0000 | entry::low_dword(P | RW | PS | entry::G),
        );
        let c = ctx(&mem, PAGING, PD, CR4_PSE, 0);
        let t = walk(&mut mem, &c, GuestLinear(0x00ff_f00f), Access::write(false)).unwrap();
        assert_eq!(t.phys, GuestPhys64(0x00bf_f00f));
        assert_eq!(t.size, PageSize::Size4M);
        assert!(t.global && t.dirty);
        assert_eq!(
            t.entries,
            TableEntries {
                pde: Some(GuestPhys(PD + 12)),
                pte: None
            }
        );
        assert_eq!(t.page_base(), GuestLinear(0x00c0_0000));
        assert_eq!(
            u64::from(mem.get32(PD + 12)) & (entry::A | entry::D),
            entry::A | entry::D
        );
        // Without CR4.PSE the PS bit is ignored: 0x0080_0000 names a page table.
        let c = ctx(&mem, PAGING, PD, 0, 0);
        let pf = walk(&mut mem, &c, GuestLinear(0x00ff_f00f), Access::read(false)).unwrap_err();
        assert_eq!(
            pf.error_code.0, 0,
            "the table at 8 MiB is outside RAM: not present"
        );
    }

    #[test]
    fn pse36_high_bits_and_reserved_bit_21() {
        let mut mem = FakeMemory::new(1 << 20);
        mem.set32(PD, 0x0040_0000 | (1 << 13) | entry::low_dword(P | PS));
        mem.set32(PD + 4, 0x0040_0000 | (1 << 21) | entry::low_dword(P | PS));
        let c = ctx(&mem, PAGING, PD, CR4_PSE, 0);
        let t = walk(&mut mem, &c, GuestLinear(0x1234), Access::read(false)).unwrap();
        assert_eq!(t.phys, GuestPhys64(0x1_0040_1234));
        let pf = walk(&mut mem, &c, GuestLinear(0x0040_0000), Access::write(true)).unwrap_err();
        assert_eq!(
            pf.error_code.0,
            ErrorCode::P | ErrorCode::RSVD | ErrorCode::W | ErrorCode::U
        );
    }

    const PDPT: u32 = 0x3020;
    const PAE_PD: u32 = 0x4000;
    const PAE_PT: u32 = 0x5000;

    /// PAE paging: PDPT at 0x3020; PDPTE 1 → PD at 0x4000; PDE 2 → PT at 0x5000 whose
    /// entry 5 maps 0x4040_5000 to frame 0x9000; PDE 3 maps a 2 MiB page at 0x0060_0000.
    fn pae(pde: u64, pte: u64, big: u64) -> FakeMemory {
        let mut mem = FakeMemory::new(1 << 20);
        mem.set64(PDPT + 8, u64::from(PAE_PD) | P);
        mem.set64(PAE_PD + 16, u64::from(PAE_PT) | pde);
        mem.set64(PAE_PD + 24, 0x0060_0000 | PS | big);
        mem.set64(PAE_PT + 40, 0x9000 | pte);
        mem
    }

    const PAE_LIN: GuestLinear = GuestLinear(0x4040_5abc);
    const PAE_BIG: GuestLinear = GuestLinear(0x4070_0abc);

    #[test]
    fn pae_4k_and_2m_pages() {
        let mut mem = pae(P | RW | US, P | RW | US | entry::G, P | US);
        let c = ctx(&mem, PAGING | CR0_WP, PDPT, CR4_PAE, EFER_NXE);
        let t = walk(&mut mem, &c, PAE_LIN, Access::write(true)).unwrap();
        assert_eq!(t.phys, GuestPhys64(0x9abc));
        assert_eq!(
            t.entries,
            TableEntries {
                pde: Some(GuestPhys(PAE_PD + 16)),
                pte: Some(GuestPhys(PAE_PT + 40))
            }
        );
        assert!(t.global && t.dirty);
        assert_eq!(
            mem.get64(PAE_PT + 40),
            0x9000 | P | RW | US | entry::G | entry::A | entry::D
        );
        let t = walk(&mut mem, &c, PAE_BIG, Access::read(true)).unwrap();
        assert_eq!(t.phys, GuestPhys64(0x0070_0abc));
        assert_eq!(t.size, PageSize::Size2M);
        assert_eq!(t.page_base(), GuestLinear(0x4060_0000));
        assert_eq!(
            code(walk(&mut mem, &c, PAE_BIG, Access::write(true))),
            ErrorCode::P | ErrorCode::W | ErrorCode::U
        );
        // PDPTE 0 is not present.
        assert_eq!(
            code(walk(&mut mem, &c, GuestLinear(0x1000), Access::read(false))),
            0
        );
    }

    #[test]
    fn nx_fetch_sets_id_only_with_nxe() {
        let mut mem = pae(P | RW | US | XD, P | RW | US, P | XD);
        let c = ctx(&mem, PAGING, PDPT, CR4_PAE, EFER_NXE);
        assert_eq!(
            code(walk(&mut mem, &c, PAE_LIN, Access::fetch(true))),
            ErrorCode::P | ErrorCode::U | ErrorCode::ID
        );
        assert_eq!(
            code(walk(&mut mem, &c, PAE_BIG, Access::fetch(false))),
            ErrorCode::P | ErrorCode::ID
        );
        let t = walk(&mut mem, &c, PAE_LIN, Access::read(true)).unwrap();
        assert!(t.perms.nx);
        // A not-present fetch reports I/D too under PAE with NXE.
        assert_eq!(
            code(walk(
                &mut mem,
                &c,
                GuestLinear(0x1000),
                Access::fetch(false)
            )),
            ErrorCode::ID
        );
        // Without NXE, XD is a reserved bit.
        let c = ctx(&mem, PAGING, PDPT, CR4_PAE, 0);
        assert_eq!(
            code(walk(&mut mem, &c, PAE_LIN, Access::read(false))),
            ErrorCode::P | ErrorCode::RSVD
        );
        let mut mem = pae(P | RW | US, P | RW | US, P);
        assert!(walk(&mut mem, &c, PAE_LIN, Access::fetch(true)).is_ok());
        assert_eq!(
            code(walk(
                &mut mem,
                &c,
                GuestLinear(0x1000),
                Access::fetch(false)
            )),
            0
        );
    }

    #[test]
    fn pae_reserved_bits() {
        let c_of = |mem: &FakeMemory| ctx(mem, PAGING, PDPT, CR4_PAE, EFER_NXE);
        let rsvd = ErrorCode::P | ErrorCode::RSVD;
        let mut mem = pae(P | RW | (1 << 40), P, P);
        let c = c_of(&mem);
        assert_eq!(code(walk(&mut mem, &c, PAE_LIN, Access::read(false))), rsvd);
        let mut mem = pae(P | RW, P | (1 << 52), P);
        assert_eq!(
            code(walk(&mut mem, &c, PAE_LIN, Access::write(true))),
            rsvd | ErrorCode::W | ErrorCode::U
        );
        let mut mem = pae(P, P, P | (1 << 13));
        assert_eq!(code(walk(&mut mem, &c, PAE_BIG, Access::read(false))), rsvd);
        // Reserved bits of a not-present entry are not checked.
        let mut mem = pae(P, 1 << 52, P);
        assert_eq!(code(walk(&mut mem, &c, PAE_LIN, Access::read(false))), 0);
    }

    #[test]
    fn pae_roots_are_loaded_and_checked_at_cr3_load() {
        let mut mem = pae(P, P, P);
        mem.set64(PDPT, P | RW);
        let err = PagingContext::new(&mem, PAGING, PDPT, CR4_PAE, 0).unwrap_err();
        assert_eq!((err.index, err.gpa), (0, GuestPhys(PDPT)));
        mem.set64(PDPT, 0);
        let c = ctx(&mem, PAGING, PDPT, CR4_PAE, 0);
        // A later write to the PDPT is not seen until the next load.
        mem.set64(PDPT + 8, 0);
        assert!(walk(&mut mem, &c, PAE_LIN, Access::read(false)).is_ok());
        // A PDPT at the top of the address space, outside RAM, reads as not present.
        let c = ctx(&mem, PAGING, 0xffff_ffe0, CR4_PAE, 0);
        assert_eq!(c.roots, crate::mode::PaeRoots::default());
    }

    #[test]
    fn tables_above_4g_or_outside_ram_are_not_present() {
        let mut mem = FakeMemory::new(1 << 20);
        mem.set64(PDPT, 0x1_0000_0000 | P);
        mem.set64(PDPT + 8, u64::from(PAE_PD) | P);
        mem.set64(PAE_PD, 0x0800_0000 | P);
        let c = ctx(&mem, PAGING, PDPT, CR4_PAE, 0);
        assert_eq!(
            code(walk(&mut mem, &c, GuestLinear(0x10), Access::read(false))),
            0
        );
        assert_eq!(
            code(walk(
                &mut mem,
                &c,
                GuestLinear(0x4000_0010),
                Access::read(false)
            )),
            0
        );
    }

    #[test]
    fn paging_off_is_identity() {
        let mut mem = FakeMemory::new(4096);
        let c = PagingContext::reset();
        let t = walk(&mut mem, &c, GuestLinear(0xfee0_0030), Access::write(true)).unwrap();
        assert_eq!(t.phys, GuestPhys64(0xfee0_0030));
        assert_eq!(t.entries, TableEntries::default());
        assert!(t.dirty && t.perms.writable && t.perms.user && !t.perms.nx);
    }
}
