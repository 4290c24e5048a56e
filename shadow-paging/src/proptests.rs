//! Property tests: the walk against the reference walk on generated page-table trees in
//! every mode; the shadow address space against the guest's tables after arbitrary
//! sequences of faults, table writes and invalidations; no panics on arbitrary input.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::bits::entry;
use crate::decision::{Decision, HostAccess};
use crate::mode::PagingContext;
use crate::reference::{self, bit, Regs};
use crate::state::{ShadowConfig, ShadowState};
use crate::testutil::{FakeMapper, FakeMemory};
use crate::walk::{peek, walk, Access, PageSize};

/// Frames of RAM in the generated machines; entries also name frames beyond it.
const FRAMES: u32 = 16;
/// Table indices the generated trees fill (and linear addresses use).
const INDICES: [u32; 6] = [0, 1, 2, 3, 256, 511];

fn entry_value() -> impl Strategy<Value = u64> {
    let frame = prop_oneof![
        8 => 0u64..u64::from(FRAMES + 4),
        1 => (0u64..8).prop_map(|k| k << 9),
        1 => (0u64..4).prop_map(|k| k << 10),
    ];
    let rare =
        prop_oneof![9 => Just(0u64), 1 => any::<u64>().prop_map(|v| v & 0xffff_ffff_003f_ee00)];
    (frame, any::<u16>(), prop::bool::weighted(0.85), rare)
        .prop_map(|(f, flags, p, rare)| f << 12 | u64::from(flags & 0x1fe) | u64::from(p) | rare)
}

/// Entries that mostly translate: frames in RAM (or 0, where large pages land in RAM),
/// rights and A/D bits usually set, reserved bits rare. Used where the interesting
/// behaviour is in what gets mapped rather than in how walks fail.
fn benign_entry() -> impl Strategy<Value = u64> {
    let frame = prop_oneof![6 => 0u64..u64::from(FRAMES), 1 => Just(0u64), 1 => 0u64..u64::from(FRAMES + 4)];
    let flag = |w: f64, b: u32| prop::bool::weighted(w).prop_map(move |on| u64::from(on) << b);
    let flags = (
        flag(0.92, 0),
        flag(0.75, 1),
        flag(0.75, 2),
        flag(0.5, 5),
        flag(0.5, 6),
        flag(0.25, 7),
        flag(0.25, 8),
        flag(0.1, 63),
    )
        .prop_map(|(a, b, c, d, e, f, g, h)| a | b | c | d | e | f | g | h);
    let rare =
        prop_oneof![30 => Just(0u64), 1 => any::<u64>().prop_map(|v| v & 0xffff_ffff_003f_ee00)];
    (frame, flags, rare).prop_map(|(f, flags, rare)| f << 12 | flags | rare)
}

/// A machine: memory holding entries at [`INDICES`] of every frame, a PDPT, and the
/// control registers.
#[derive(Clone, Debug)]
struct Machine {
    entries: Vec<u64>,
    pdpt: [u64; 4],
    cr3_frame: u32,
    cr3_slot: u32,
    pg: bool,
    pae: bool,
    pse: bool,
    nxe: bool,
    wp: bool,
    pge: bool,
}

fn machine() -> impl Strategy<Value = Machine> {
    prop_oneof![
        machine_with(entry_value().boxed()),
        machine_with(benign_entry().boxed())
    ]
}

fn machine_with(entry: BoxedStrategy<u64>) -> impl Strategy<Value = Machine> {
    (
        prop::collection::vec(entry, (FRAMES as usize) * INDICES.len()),
        prop::array::uniform4(
            prop_oneof![3 => entry_value().prop_map(|e| e & 0xf_ffff_f019), 1 => entry_value()],
        ),
        0..FRAMES,
        0u32..4,
        (
            prop::bool::weighted(0.9),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(entries, pdpt, cr3_frame, cr3_slot, (pg, pae, pse, nxe, wp, pge))| Machine {
                entries,
                pdpt,
                cr3_frame,
                cr3_slot,
                pg,
                pae,
                pse,
                nxe,
                wp,
                pge,
            },
        )
}

impl Machine {
    fn regs(&self) -> Regs {
        let flag = |on: bool, b: u32| if on { 1u32 << b } else { 0 };
        Regs {
            cr0: flag(self.pg, 31) | flag(self.wp, 16) | 1,
            cr3: self.cr3_frame * PAGE_SIZE + 0x20 * (8 + self.cr3_slot),
            cr4: flag(self.pse, 4) | flag(self.pae, 5) | flag(self.pge, 7),
            efer: if self.nxe { 1 << 11 } else { 0 },
        }
    }

    /// Byte address of entry `slot` (frame-major over [`INDICES`]) in this mode.
    fn slot_addr(&self, slot: usize) -> u32 {
        let frame = u32::try_from(slot / INDICES.len()).expect("few frames");
        let index = INDICES[slot % INDICES.len()];
        frame * PAGE_SIZE + index * if self.pae { 8 } else { 4 }
    }

    fn memory(&self) -> FakeMemory {
        let mut mem = FakeMemory::new((FRAMES * PAGE_SIZE) as usize);
        for (slot, &e) in self.entries.iter().enumerate() {
            self.store(&mut mem, slot, e);
        }
        let base = self.regs().cr3 & !0x1f;
        for (i, &e) in (0u32..).zip(&self.pdpt) {
            mem.set64(base + 8 * i, e);
        }
        mem
    }

    fn store(&self, mem: &mut FakeMemory, slot: usize, e: u64) {
        let at = self.slot_addr(slot);
        if self.pae {
            mem.set64(at, e);
        } else {
            mem.set32(at, entry::low_dword(e));
        }
    }

    /// A linear address whose table indices are among [`INDICES`].
    fn lin(&self, sel: (usize, usize, usize, u32)) -> u32 {
        let (a, b, pdpte, off) = sel;
        let (a, b) = (INDICES[a % 6], INDICES[b % 6]);
        if self.pae {
            u32::try_from(pdpte % 4).expect("two bits") << 30 | a << 21 | b << 12 | off
        } else {
            a << 22 | b << 12 | off
        }
    }
}

fn lin_sel() -> impl Strategy<Value = (usize, usize, usize, u32)> {
    (0usize..6, 0usize..6, 0usize..4, 0u32..4096)
}

/// (write, user, fetch) with write and fetch exclusive.
fn access() -> impl Strategy<Value = (bool, bool, bool)> {
    (0u8..3, any::<bool>()).prop_map(|(k, user)| (k == 1, user, k == 2))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The walk agrees with the reference on the outcome, the translation, the error
    /// code, the entries used and the accessed/dirty bits it leaves in memory.
    #[test]
    fn walk_matches_reference(m in machine(), sels in prop::collection::vec((lin_sel(), access()), 1..8)) {
        let regs = m.regs();
        let mut mem = m.memory();
        let mut ref_mem = mem.clone();
        let ctx = PagingContext::new(&mem, regs.cr0, regs.cr3, regs.cr4, regs.efer);
        let roots = if regs.paging() && regs.pae() { reference::load_pdptes(&mem, regs.cr3) } else { Some([0; 4]) };
        prop_assert_eq!(ctx.is_ok(), roots.is_some(), "PDPTE load (#GP) disagrees");
        let (Ok(ctx), Some(roots)) = (ctx, roots) else { return Ok(()) };
        for (sel, (write, user, fetch)) in sels {
            let lin = m.lin(sel);
            let access = Access { write, user, fetch };
            let before = mem.clone();
            let peeked = peek(&mem, &ctx, GuestLinear(lin), access);
            let got = walk(&mut mem, &ctx, GuestLinear(lin), access);
            let want = reference::walk(&mut ref_mem, regs, roots, lin, write, user, fetch);
            match (&got, &want) {
                (Err(pf), Err(code)) => {
                    prop_assert_eq!(pf.error_code.0, *code);
                    prop_assert_eq!(pf.cr2, GuestLinear(lin));
                }
                (Ok(t), Ok(f)) => {
                    prop_assert_eq!(t.phys.0, f.phys);
                    prop_assert_eq!(u64::from(t.size.bytes()), f.page_bytes);
                    prop_assert_eq!((t.perms.writable, t.perms.user, t.perms.nx), (f.writable, f.user, f.nx));
                    prop_assert_eq!(t.global, f.global);
                    prop_assert_eq!(t.dirty, f.dirty || write);
                    let used: Vec<u64> = t.entries.iter().map(|e| u64::from(e.0)).collect();
                    let want_used: Vec<u64> = f.used.iter().map(|u| u.0).collect();
                    prop_assert_eq!(used, want_used);
                    let untouched = f.used.iter().all(|&(_, e)| bit(e, 5)) && (!write || f.dirty);
                    prop_assert_eq!(peeked.is_some(), untouched, "peek succeeds exactly when no A/D bit changes");
                }
                _ => prop_assert!(false, "walk {:?} but reference {:?}", got, want),
            }
            if got.is_err() {
                prop_assert!(peeked.is_none());
            }
            prop_assert_eq!(&mem.bytes, &ref_mem.bytes, "A/D bits differ after {:#x}", lin);
            if let Ok(t) = got {
                let mut written: Vec<u32> = t.ad_written.iter().flatten().map(|g| g.0).collect();
                // A self-referencing table can use one entry at both levels.
                written.sort_unstable();
                written.dedup();
                let changed: Vec<u32> = (0..mem.bytes.len() / 4)
                    .filter(|&i| mem.bytes[4 * i..4 * i + 4] != before.bytes[4 * i..4 * i + 4])
                    .map(|i| u32::try_from(4 * i).expect("small memory"))
                    .collect();
                prop_assert_eq!(changed, written, "ad_written names exactly the entries changed");
            }
        }
    }

    /// Arbitrary memory and control registers never make the walk or the shadow state
    /// panic.
    #[test]
    fn no_panic_on_arbitrary_tables(
        bytes in prop::collection::vec(any::<u8>(), 0..3 * PAGE_SIZE as usize),
        regs in (any::<u32>(), prop_oneof![any::<u32>(), 0u32..3 * PAGE_SIZE], any::<u32>(), any::<u64>()),
        ops in prop::collection::vec((any::<u32>(), 0u8..3, any::<bool>()), 1..16),
        config in (any::<u32>(), any::<u32>()),
    ) {
        let mut mem = FakeMemory { bytes };
        let (cr0, cr3, cr4, efer) = regs;
        if let Ok(ctx) = PagingContext::new(&mem, cr0, cr3, cr4, efer) {
            for &(lin, kind, user) in &ops {
                let access = Access { write: kind == 1, user, fetch: kind == 2 };
                let _ = peek(&mem, &ctx, GuestLinear(lin), access);
                let _ = walk(&mut mem, &ctx, GuestLinear(lin), access);
            }
        }
        let mut s = ShadowState::new(ShadowConfig { min_linear: GuestLinear(config.0), max_run_pages: config.1 });
        let mut mapper = FakeMapper::default();
        s.write_efer(&mut mapper, efer);
        let _ = s.write_cr4(&mem, &mut mapper, cr4);
        let _ = s.write_cr3(&mem, &mut mapper, cr3);
        let _ = s.write_cr0(&mem, &mut mapper, cr0);
        for &(lin, kind, user) in &ops {
            let access = [HostAccess::Read, HostAccess::Write, HostAccess::Fetch][kind as usize];
            if let Decision::ScanFirst { gpa, .. } = s.on_host_fault(&mut mem, &mut mapper, GuestLinear(lin), access, user) {
                s.mark_code(&mut mapper, gpa, lin & 1 == 0);
            }
            s.table_written(&mut mapper, GuestPhys(lin), kind.into());
            s.invlpg(&mut mapper, GuestLinear(lin.rotate_left(7)));
        }
        s.enter_user_mode(&mut mapper, GuestLinear(u32::MAX));
        s.flush_all(&mut mapper);
        prop_assert!(mapper.pages.is_empty());
    }
}

/// One step of the guest, as the engine would see it.
#[derive(Clone, Debug)]
enum Op {
    /// A host fault at a linear address; a mediated write stores `value` there.
    Fault {
        sel: (usize, usize, usize, u32),
        kind: u8,
        value: u64,
    },
    /// The guest (or a device) stores an entry.
    Store {
        slot: usize,
        value: u64,
    },
    Cr3 {
        frame: u32,
        slot: u32,
    },
    /// A new address space from a copy of the current directory (under PAE, of the
    /// directory one PDPTE names), loaded at once: Linux's kernel half of each process.
    Fork {
        to: u32,
        slot: u32,
    },
    Invlpg {
        sel: (usize, usize, usize, u32),
    },
    Toggle {
        cr: u8,
    },
    Code {
        frame: u32,
        on: bool,
        exec_only: bool,
    },
    User {
        on: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (lin_sel(), 0u8..3, benign_entry()).prop_map(|(sel, kind, value)| Op::Fault { sel, kind, value }),
        3 => (0..(FRAMES as usize) * INDICES.len(), benign_entry()).prop_map(|(slot, value)| Op::Store { slot, value }),
        1 => (0..FRAMES, 0u32..4).prop_map(|(frame, slot)| Op::Cr3 { frame, slot }),
        1 => (0..FRAMES, 0u32..4).prop_map(|(to, slot)| Op::Fork { to, slot }),
        1 => lin_sel().prop_map(|sel| Op::Invlpg { sel }),
        1 => (0u8..6).prop_map(|cr| Op::Toggle { cr }),
        1 => (0..FRAMES + 2, any::<bool>(), any::<bool>()).prop_map(|(frame, on, exec_only)| Op::Code { frame, on, exec_only }),
        1 => any::<bool>().prop_map(|on| Op::User { on }),
    ]
}

/// Everything the host maps is allowed by the guest's current tables, as the reference
/// walk reads them: same frame, accessed entries, write only to dirty plain pages the
/// guest may write, exec only of scanned code the guest may fetch, user-mode rights in
/// user mode; and no page-table frame of any mapping is writable anywhere. Pages in
/// `stale` are global translations that survived a CR3 write, as the TLB keeps them:
/// they are checked against the tables they came from when the CR3 write happened.
fn check_consistent(
    mem: &FakeMemory,
    s: &ShadowState,
    mapper: &FakeMapper,
    code: &BTreeSet<u32>,
    user: bool,
    stale: &BTreeMap<u32, GuestPhys>,
) -> Result<(), TestCaseError> {
    let ctx = s.context();
    let regs = Regs {
        cr0: ctx.cr0,
        cr3: ctx.cr3,
        cr4: ctx.cr4,
        efer: ctx.efer,
    };
    let roots = ctx.roots.0;
    let mut table_frames = BTreeSet::new();
    let state_pages: Vec<_> = s
        .mappings()
        .map(|(l, p)| (l.0 >> 12, (p.gpa, p.prot)))
        .collect();
    let host_pages: Vec<_> = mapper.pages.iter().map(|(&n, &v)| (n, v)).collect();
    prop_assert_eq!(
        state_pages,
        host_pages,
        "state and host address space disagree"
    );
    for (&n, &(gpa, prot)) in &mapper.pages {
        let lin = n << 12;
        prop_assert!(prot.read || prot.write || prot.exec);
        if prot.exec {
            prop_assert!(
                code.contains(&(gpa.0 >> 12)),
                "{:#x}: unscanned page executable",
                lin
            );
        }
        if prot.write {
            prop_assert!(
                !code.contains(&(gpa.0 >> 12)),
                "{:#x}: scanned code is writable",
                lin
            );
        }
        if stale.get(&n) == Some(&gpa) {
            continue;
        }
        let found =
            reference::translate(mem, regs, roots, lin, false, user, prot.exec && !prot.read);
        let Ok(f) = found else {
            return Err(TestCaseError::fail(format!(
                "{lin:#x} mapped to {gpa} {prot:?} but the guest faults: {found:?}"
            )));
        };
        prop_assert_eq!(f.phys, u64::from(gpa.0), "{:#x} maps the wrong frame", lin);
        prop_assert!(
            f.used.iter().all(|&(_, e)| bit(e, 5)),
            "{:#x} mapped through an entry without A",
            lin
        );
        if prot.write {
            prop_assert!(f.dirty, "{:#x} writable before D is set", lin);
            prop_assert!(
                reference::translate(mem, regs, roots, lin, true, user, false).is_ok(),
                "{:#x} writable against the guest",
                lin
            );
            prop_assert!(
                !code.contains(&(gpa.0 >> 12)),
                "{:#x}: scanned code is writable",
                lin
            );
        }
        if prot.exec {
            prop_assert!(
                code.contains(&(gpa.0 >> 12)),
                "{:#x}: unscanned page executable",
                lin
            );
            prop_assert!(
                reference::translate(mem, regs, roots, lin, false, user, true).is_ok(),
                "{:#x} executable against the guest",
                lin
            );
        }
        let large = f.page_bytes > 4096;
        prop_assert_eq!(
            s.mapping(GuestLinear(lin))
                .map(|p| p.size != PageSize::Size4K),
            Some(large)
        );
        table_frames.extend(f.used.iter().map(|&(at, _)| at >> 12));
    }
    for (&n, &(gpa, prot)) in &mapper.pages {
        prop_assert!(
            !(prot.write && table_frames.contains(&u64::from(gpa.0 >> 12))),
            "{:#x} maps page-table frame {} writable",
            n << 12,
            gpa
        );
    }
    Ok(())
}

/// MOV to CR3. With paging off CR3 translates nothing, so every mapping stays exact. A
/// non-global survivor must be exactly what the new tables give (the check walks it); a
/// global one may be what the old tables gave, and goes into `stale`.
fn switch_cr3(
    mem: &FakeMemory,
    s: &mut ShadowState,
    mapper: &mut FakeMapper,
    stale: &mut BTreeMap<u32, GuestPhys>,
    cr3: u32,
) {
    let c = *s.context();
    let old = Regs {
        cr0: c.cr0,
        cr3: c.cr3,
        cr4: c.cr4,
        efer: c.efer,
    };
    if s.write_cr3(mem, mapper, cr3).is_ok() && old.paging() {
        for (&n, &(gpa, _)) in &mapper.pages {
            if stale.get(&n) == Some(&gpa) {
                continue;
            }
            let before = reference::translate(mem, old, c.roots.0, n << 12, false, false, false);
            if before.is_ok_and(|f| f.global) && old.pge() {
                stale.insert(n, gpa);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// After any sequence of faults, table writes, CR writes, INVLPGs, code marking and
    /// privilege changes, the host address space only grants what the guest's tables do.
    #[test]
    fn shadow_mappings_stay_consistent(m in machine_with(benign_entry().boxed()), ops in prop::collection::vec(op(), 1..40), run in 0u32..5) {
        let mut mem = m.memory();
        let mut mach = m.clone();
        let mut s = ShadowState::new(ShadowConfig { max_run_pages: 1 << (2 * run), ..ShadowConfig::default() });
        let mut mapper = FakeMapper::default();
        let mut code = BTreeSet::new();
        let mut user = false;
        let mut stale = BTreeMap::new();
        let regs = m.regs();
        s.write_efer(&mut mapper, regs.efer);
        if s.write_cr4(&mem, &mut mapper, regs.cr4).is_err()
            || s.write_cr3(&mem, &mut mapper, regs.cr3).is_err()
            || s.write_cr0(&mem, &mut mapper, regs.cr0).is_err()
        {
            return Ok(());
        }
        for op in ops {
            match op {
                Op::Fault { sel, kind, value } => {
                    let lin = GuestLinear(mach.lin(sel));
                    let access = [HostAccess::Read, HostAccess::Write, HostAccess::Fetch][kind as usize];
                    for _ in 0..2 {
                        match s.on_host_fault(&mut mem, &mut mapper, lin, access, user) {
                            Decision::HiddenFault(d) => {
                                let first = d.lin.0 >> 12;
                                stale.retain(|&n, _| n < first || n >= first + d.len / PAGE_SIZE);
                                break;
                            }
                            Decision::ScanFirst { gpa, .. } => {
                                code.insert(gpa.0 >> 12);
                                s.mark_code(&mut mapper, gpa, value & 1 == 0);
                            }
                            Decision::CodeWrite { gpa, .. } => {
                                code.remove(&(gpa.0 >> 12));
                                s.unmark_code(&mut mapper, gpa);
                            }
                            Decision::Mediate { translation } => {
                                let at = u32::try_from(translation.phys.0).expect("below 4 GiB") & !3;
                                mem.set32(at, entry::low_dword(value));
                                // Either drop what the entry gave, or drop it and map
                                // again what the new entry gives already accessed.
                                if value & 4 == 0 {
                                    s.table_written(&mut mapper, GuestPhys(at), 4);
                                } else {
                                    s.table_updated(&mem, &mut mapper, GuestPhys(at), 4);
                                }
                                break;
                            }
                            _ => break,
                        }
                    }
                }
                Op::Store { slot, value } => {
                    let at = mach.slot_addr(slot);
                    let len = if mach.pae { 8 } else { 4 };
                    mach.store(&mut mem, slot, value);
                    // A store to a page no mapping depends on needs no invalidation;
                    // the check below catches any page the state failed to track.
                    if s.is_page_table(GuestPhys(at)) {
                        if value & 4 == 0 {
                            s.table_written(&mut mapper, GuestPhys(at), len);
                        } else {
                            s.table_updated(&mem, &mut mapper, GuestPhys(at), len);
                        }
                    }
                }
                Op::Fork { to, slot } => {
                    let c = *s.context();
                    let mut store = |mem: &mut FakeMemory, s: &mut ShadowState, at: u32, value: u64, len: u32| {
                        if len == 8 {
                            mem.set64(at, value);
                        } else {
                            mem.set32(at, entry::low_dword(value));
                        }
                        if s.is_page_table(GuestPhys(at)) {
                            s.table_written(&mut mapper, GuestPhys(at), len);
                        }
                    };
                    let len = if mach.pae { 8 } else { 4 };
                    let (from, cr3) = if mach.pae {
                        let pdpt = c.cr3 & !0x1f;
                        let named = mem.get64(pdpt + 8 * slot);
                        let new_pdpt = to * PAGE_SIZE + 0x20 * (8 + (slot + 1) % 4);
                        for i in 0..4 {
                            let e = mem.get64(pdpt + 8 * i);
                            let e = if i == slot { e & !0xf_ffff_f000 | u64::from(to) << 12 } else { e };
                            store(&mut mem, &mut s, new_pdpt + 8 * i, e, 8);
                        }
                        (u32::try_from(named >> 12 & 0xffff).unwrap_or(u32::MAX), new_pdpt)
                    } else {
                        (c.cr3 >> 12, to * PAGE_SIZE)
                    };
                    if from < FRAMES && from != to {
                        for &index in &INDICES {
                            let (src, dst) = (from * PAGE_SIZE + index * len, to * PAGE_SIZE + index * len);
                            let value = if mach.pae { mem.get64(src) } else { u64::from(mem.get32(src)) };
                            store(&mut mem, &mut s, dst, value, len);
                        }
                    }
                    switch_cr3(&mem, &mut s, &mut mapper, &mut stale, cr3);
                }
                Op::Cr3 { frame, slot } => {
                    switch_cr3(&mem, &mut s, &mut mapper, &mut stale, frame * PAGE_SIZE + 0x20 * (8 + slot));
                }
                Op::Invlpg { sel } => {
                    s.invlpg(&mut mapper, GuestLinear(mach.lin(sel)));
                }
                Op::Toggle { cr } => {
                    let c = *s.context();
                    let _ = match cr {
                        0 => s.write_cr0(&mem, &mut mapper, c.cr0 ^ crate::bits::CR0_WP),
                        1 => s.write_cr0(&mem, &mut mapper, c.cr0 ^ crate::bits::CR0_PG),
                        2 => s.write_cr4(&mem, &mut mapper, c.cr4 ^ crate::bits::CR4_PSE),
                        3 => s.write_cr4(&mem, &mut mapper, c.cr4 ^ crate::bits::CR4_PGE),
                        4 => s.write_cr4(&mem, &mut mapper, c.cr4 ^ crate::bits::CR4_PAE),
                        _ => {
                            s.write_efer(&mut mapper, c.efer ^ crate::bits::EFER_NXE);
                            Ok(())
                        }
                    };
                    mach.pae = s.context().cr4 & crate::bits::CR4_PAE != 0;
                }
                Op::Code { frame, on, exec_only } => {
                    let gpa = GuestPhys(frame * PAGE_SIZE);
                    if on {
                        code.insert(frame);
                        s.mark_code(&mut mapper, gpa, exec_only);
                    } else {
                        code.remove(&frame);
                        s.unmark_code(&mut mapper, gpa);
                    }
                }
                Op::User { on } => {
                    if on && !user {
                        s.enter_user_mode(&mut mapper, GuestLinear(u32::MAX));
                    } else if !on && user {
                        s.leave_user_mode();
                    }
                    user = on;
                }
            }
            stale.retain(|n, gpa| mapper.pages.get(n).is_some_and(|p| p.0 == *gpa));
            check_consistent(&mem, &s, &mapper, &code, user, &stale)?;
        }
    }
}
