//! Inline loads of data segment registers in translate mode (ARCHITECTURE §5b).
//!
//! Translated code performs a MOV or POP to DS, ES, FS or GS without an exit when the
//! selector is null or is the one named by that register's *reload record* in the vCPU
//! page ([`rewriter::translate::SLOT_RELOADS`]). A record stands for a load the monitor
//! has already checked: the selector's descriptor as read from the guest's table, the
//! cache it gives, and the guest-physical address it was read from. Before each entry
//! the monitor publishes the records that still hold:
//!
//! - the descriptor is unchanged: its frame is write-mediated (the shadow state
//!   *watches* it), and every write that reaches it drops the records it overlaps; after
//!   an address-space change a record stays only if its descriptor's linear address
//!   still leads to the same bytes in the same frame; a change of GDTR or LDTR, of the
//!   paging mode, or of the running vCPU drops them all;
//! - the load passes the privilege checks at the current CPL (type, DPL against CPL and
//!   RPL, present; the accessed bit is already set, so the load writes nothing);
//! - the mirror the monitor would install for it is the one installed in the register's
//!   host slot for the current privilege level, so the load is one host segment load.
//!
//! A record is made from a register's current contents when its cache matches the table
//! (which is what the monitor's own load left there). The record outlives later loads of
//! a null selector: Linux's kernel entry loads its per-CPU FS selector over the user's
//! null one at every system call, and the slot still holds that mirror.
//!
//! A guest write to a watched frame faults. While a record relies on the frame, the
//! monitor performs the write (an instruction that keeps writing there is retranslated
//! into a gate exit, as page-table writers are) and drops the records it overlaps: Linux
//! rewrites its TLS and TSS descriptors at each context switch, in the GDT page its user
//! and per-CPU data descriptors live in. A frame no record relies on any more (freed and
//! reused for other data) is unwatched at its first write, which then runs natively. A
//! frame whose writes (an exit each) outnumber the reloads translated code made inline (an
//! exit saved each; translated code counts them) over a window of entries is given up for
//! a while: no record is made from it (a descriptor table sharing its page with hot data,
//! as xv6's per-CPU struct holds its lock depth beside the GDT; Linux's kernel threads,
//! which switch often and reload no segment).

use rewriter::translate::{RELOAD_NONE, SLOT_LOADED, SLOT_RELOAD_HITS, SLOT_SELECTORS};
use shadow_paging::{peek, Access, PagingContext};

use super::handle::Step;
use super::mirrors::Mirrors;
use super::shadow_backend::RamPhys;
use super::{Vm, VmError};
use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::memory::GuestRam;
use crate::vcpu::descriptor::{selector, Descriptor, TYPE_ACCESSED};
use crate::vcpu::emulate::Mediated;
use crate::vcpu::exit::GuestExit;
use crate::vcpu::{Segment, VcpuState};
use crate::x86::SegReg;

/// The data segment registers a load may be inline for.
pub const REGISTERS: [SegReg; 4] = [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs];

/// The window, in entries, a watched frame's writes are weighed against the inline
/// reloads over.
const WRITE_WINDOW: u64 = 8192;

/// Writes beyond the reloads a window forgives.
const WRITE_SLACK: u64 = 64;

/// Entries a frame given up stays given up.
const GIVEN_UP_FOR: u64 = 1 << 16;

/// Frames given up at most (beyond, the oldest is forgotten and may be watched again).
const GIVEN_UP_KEPT: usize = 64;

/// The descriptor tables a record was read through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tables {
    gdt: (u32, u16),
    ldt: Segment,
}

impl Tables {
    fn of(s: &VcpuState) -> Self {
        Self {
            gdt: (s.gdtr.base, s.gdtr.limit),
            ldt: s.ldtr,
        }
    }
}

/// A checked load a register may repeat inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reload {
    /// The selector.
    pub selector: u16,
    /// The cache the load gives.
    pub segment: Segment,
    /// Guest-physical address of the descriptor's 8 bytes (within one page).
    phys: GuestPhys,
    /// Their linear address.
    lin: u32,
    /// The descriptor's 8 bytes, as in the table (accessed bit set).
    raw: u64,
    tables: Tables,
}

impl Reload {
    /// Whether a guest at `cpl` may load it into a data segment register (the checks of
    /// `check_segment_load` for DS, ES, FS and GS).
    fn allowed_at(&self, cpl: u8) -> bool {
        let d = Descriptor::decode(self.raw);
        let rpl = selector::rpl(self.selector);
        (d.is_data() || d.is_readable_code())
            && (d.is_conforming_code() || (rpl <= d.dpl && cpl <= d.dpl))
            && d.present
    }

    /// Whether a write of `len` bytes at `at` changes its descriptor.
    fn overlaps(&self, at: GuestPhys, len: u32) -> bool {
        let (a, b) = (u64::from(at.raw()), u64::from(self.phys.raw()));
        a < b + 8 && b < a + u64::from(len)
    }
}

/// A frame the shadow state watches for records, with its write rate.
#[derive(Clone, Copy, Debug)]
struct Watched {
    frame: GuestPhys,
    /// The offsets in the frame (first, last) the descriptor tables its records were
    /// read from cover: writes there change descriptors, writes elsewhere are other data
    /// sharing the page.
    table: (u32, u32),
    /// Writes outside `table` in the current window.
    writes: u32,
    /// Watched now (a native write unwatches it until a record is made there again).
    active: bool,
}

/// Counters for `--stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReloadStats {
    /// Records made.
    pub recorded: u64,
    /// Records a write to their descriptor dropped.
    pub written: u64,
    /// Guest writes to watched frames (each one exit).
    pub frame_writes: u64,
    /// Frames no longer watched for being written too often.
    pub frames_given_up: u64,
    /// Inline loads the monitor took in after the fact.
    pub inline_loads: u64,
    /// Inline reloads translated code made (null loads not counted).
    pub hits: u64,
}

/// The reload records of the running vCPU and the frames watched for them.
#[derive(Debug, Default)]
pub struct Reloads {
    records: [Option<Reload>; 6],
    /// The register contents last found not to match their table (not tried again).
    unmatched: [Option<Segment>; 6],
    watched: Vec<Watched>,
    /// Frames given up, with the entry count when.
    given_up: Vec<(GuestPhys, u64)>,
    /// Entries so far (the clock write rates are measured by).
    entries: u64,
    /// The entry count the current window started at.
    window_start: u64,
    /// Inline reloads in the current window.
    hits: u64,
    /// Bumped whenever a record or a refusal changes.
    generation: u64,
    /// What the last entry published, and for what.
    published: Option<(Published, [(u32, u32); 6])>,
    /// Counters.
    pub stats: ReloadStats,
}

/// Everything the slots published before an entry depend on: an entry with the same
/// publishes the same (the records' generation stands for the records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Published {
    generation: u64,
    ldt_writes: u64,
    cpl: u8,
    clamp: Option<GuestLinear>,
    segments: [Segment; 4],
    tables: Tables,
}

/// What a record needs read from guest memory: the physical address of the descriptor of
/// `sel` and its 8 bytes, or `None` when it cannot be read without a fault.
pub trait DescriptorReader {
    /// The descriptor at linear `lin`, read as the CPU's implicit supervisor read.
    fn descriptor_at(&mut self, lin: u32) -> Option<(GuestPhys, u64)>;
}

impl Reloads {
    /// Forgets every record (the address space, the descriptor tables or the vCPU
    /// changed). Watched frames stay watched: the next records are likely read there.
    pub fn forget(&mut self) {
        self.records = [None; 6];
        self.unmatched = [None; 6];
        self.generation += 1;
    }

    /// Keeps the records whose descriptors are still where they were read and what they
    /// were (the address space changed: CR3 or INVLPG); the rest go.
    pub fn revalidate(&mut self, mem: &mut impl DescriptorReader) {
        for slot in &mut self.records {
            if let Some(r) = *slot {
                if mem.descriptor_at(r.lin) != Some((r.phys, r.raw)) {
                    *slot = None;
                    self.generation += 1;
                }
            }
        }
    }

    /// Takes in writes to watched frames performed through the monitor (mediated page
    /// tables, emulated accesses): drops the records they overlap.
    pub fn written(&mut self, writes: &[(GuestPhys, u32)]) {
        for &(at, len) in writes {
            for r in &mut self.records {
                if r.is_some_and(|r| r.overlaps(at, len)) {
                    *r = None;
                    self.stats.written += 1;
                    self.generation += 1;
                }
            }
            self.count_write(at, len);
        }
    }

    /// The guest wrote the watched frame `frame` natively: the shadow state stops
    /// watching it so the write can run, and every record read from it goes (it is
    /// watched again when a record is made there).
    pub fn frame_written(&mut self, frame: GuestPhys) {
        for r in &mut self.records {
            if r.is_some_and(|r| r.phys.page() == frame) {
                *r = None;
                self.stats.written += 1;
                self.generation += 1;
            }
        }
        self.stats.frame_writes += 1;
        if let Some(w) = self.watched.iter_mut().find(|w| w.frame == frame) {
            w.active = false;
        }
    }

    /// Whether a record was read from `frame`.
    pub fn reads_frame(&self, frame: GuestPhys) -> bool {
        self.records
            .iter()
            .flatten()
            .any(|r| r.phys.page() == frame)
    }

    /// Counts a write of `len` bytes at `at`, in a watched frame, in the current window
    /// if it lies outside the descriptor tables there.
    fn count_write(&mut self, at: GuestPhys, len: u32) {
        self.stats.frame_writes += 1;
        let (frame, offset) = (at.page(), at.raw() % PAGE_SIZE);
        if let Some(w) = self.watched.iter_mut().find(|w| w.frame == frame) {
            let (first, last) = w.table;
            if offset > last || offset.saturating_add(len) <= first {
                w.writes += 1;
            }
        }
    }

    /// Counts an entry, with the inline reloads translated code made since the last one
    /// (`hits`). At the end of each window of [`WRITE_WINDOW`] entries, a frame whose
    /// writes to other data than descriptors (each an exit) outnumber the reloads (each
    /// an exit saved) by more than [`WRITE_SLACK`] is given up: its records go and none is made there for
    /// [`GIVEN_UP_FOR`] entries. Returns the frames given up, to be unwatched.
    pub fn entered(&mut self, hits: u32) -> Vec<GuestPhys> {
        self.entries += 1;
        self.hits = self.hits.saturating_add(u64::from(hits));
        self.stats.hits += u64::from(hits);
        if self.entries - self.window_start < WRITE_WINDOW {
            return Vec::new();
        }
        let hits = std::mem::take(&mut self.hits);
        self.window_start = self.entries;
        let costly: Vec<GuestPhys> = self
            .watched
            .iter()
            .filter(|w| u64::from(w.writes) > hits + WRITE_SLACK)
            .map(|w| w.frame)
            .collect();
        for w in &mut self.watched {
            w.writes = 0;
        }
        for &frame in &costly {
            self.give_up(frame);
        }
        costly
    }

    fn give_up(&mut self, frame: GuestPhys) {
        self.generation += 1;
        self.watched.retain(|w| w.frame != frame);
        for r in &mut self.records {
            if r.is_some_and(|r| r.phys.page() == frame) {
                *r = None;
            }
        }
        if self.given_up.len() >= GIVEN_UP_KEPT {
            self.given_up.remove(0);
        }
        self.given_up.push((frame, self.entries));
        self.stats.frames_given_up += 1;
    }

    /// Makes a record from `reg`'s contents when they are a table load the record does
    /// not have yet. Returns a frame to watch.
    pub fn update(
        &mut self,
        s: &VcpuState,
        reg: SegReg,
        mem: &mut impl DescriptorReader,
    ) -> Option<GuestPhys> {
        let entries = self.entries;
        let given_up = self.given_up.len();
        self.given_up.retain(|&(_, at)| entries - at < GIVEN_UP_FOR);
        if self.given_up.len() != given_up {
            // Contents refused for a frame given up may be recorded now.
            self.unmatched = [None; 6];
            self.generation += 1;
        }
        let i = reg as usize;
        let cur = *s.sreg(reg);
        let known = self.records.get(i).copied().flatten();
        if selector::is_null(cur.selector)
            || !cur.present
            || known.is_some_and(|r| {
                r.selector == cur.selector && r.segment == cur && r.tables == Tables::of(s)
            })
            || self.unmatched.get(i).copied().flatten() == Some(cur)
        {
            return None;
        }
        self.generation += 1;
        let Some(record) = read_record(s, cur, mem) else {
            if let Some(u) = self.unmatched.get_mut(i) {
                *u = Some(cur);
            }
            return None;
        };
        if self.given_up.iter().any(|&(f, _)| f == record.phys.page()) {
            if let Some(u) = self.unmatched.get_mut(i) {
                *u = Some(cur);
            }
            return None;
        }
        if let Some(r) = self.records.get_mut(i) {
            *r = Some(record);
        }
        self.stats.recorded += 1;
        let frame = record.phys.page();
        let table = table_in_page(s, record.lin);
        match self.watched.iter_mut().find(|w| w.frame == frame) {
            Some(w) => {
                w.table = (w.table.0.min(table.0), w.table.1.max(table.1));
                let again = !w.active;
                w.active = true;
                again.then_some(frame)
            }
            None => {
                self.watched.push(Watched {
                    frame,
                    table,
                    writes: 0,
                    active: true,
                });
                Some(frame)
            }
        }
    }

    /// What an entry in `s` depends on.
    fn key(&self, s: &VcpuState, mirrors: &Mirrors, clamp: Option<GuestLinear>) -> Published {
        Published {
            generation: self.generation,
            ldt_writes: mirrors.writes,
            cpl: s.cpl(),
            clamp,
            segments: REGISTERS.map(|r| *s.sreg(r)),
            tables: Tables::of(s),
        }
    }

    /// The slots the last entry published, when nothing they depend on changed since.
    fn unchanged(
        &self,
        s: &VcpuState,
        mirrors: &Mirrors,
        clamp: Option<GuestLinear>,
    ) -> Option<[(u32, u32); 6]> {
        let (key, out) = self.published?;
        (key == self.key(s, mirrors, clamp)).then_some(out)
    }

    /// The record of `reg` a guest in `s` may load inline, if any.
    pub fn usable(&self, s: &VcpuState, reg: SegReg) -> Option<&Reload> {
        self.records
            .get(reg as usize)?
            .as_ref()
            .filter(|r| r.tables == Tables::of(s) && r.allowed_at(s.cpl()))
    }

    /// `reg`'s record when `selector` is its selector: the cache an inline load of it
    /// gave.
    pub fn loaded(&self, reg: SegReg, selector: u16) -> Option<Segment> {
        self.records
            .get(reg as usize)?
            .filter(|r| r.selector == selector)
            .map(|r| r.segment)
    }
}

/// Descriptors read from guest RAM through the guest's page tables (a walk that sets no
/// accessed bit: a page the guest has not reached gives no record).
struct RamDescriptors<'a> {
    ram: &'a GuestRam,
    ctx: PagingContext,
}

impl DescriptorReader for RamDescriptors<'_> {
    fn descriptor_at(&mut self, lin: u32) -> Option<(GuestPhys, u64)> {
        let t = peek(
            &RamPhys(self.ram),
            &self.ctx,
            GuestLinear(lin),
            Access::read(false),
        )?;
        let p = t.phys.below_4g()?;
        let mut b = [0u8; 8];
        self.ram.read(p, &mut b).ok()?;
        Some((p, u64::from_le_bytes(b)))
    }
}

impl Vm {
    /// The address space changed (CR3, INVLPG; `mode_changed`: the paging mode): the
    /// records whose descriptors moved or changed go (all of them with the mode).
    pub(super) fn reloads_after_space_change(&mut self, mode_changed: bool) {
        let Some(t) = self.tc.as_mut() else {
            return;
        };
        if mode_changed || !self.mem.paging.enabled() {
            t.reloads.forget();
            return;
        }
        let mut reader = RamDescriptors {
            ram: &self.mem.ram,
            ctx: *self.mem.paging.shadow.context(),
        };
        t.reloads.revalidate(&mut reader);
    }

    /// Brings the reload records up to date before an entry and returns each data
    /// register's slot contents: the negated selector ([`RELOAD_NONE`] when no load is
    /// inline) and the host selector with the guest's in the high half.
    pub(super) fn publish_reloads(&mut self) -> Result<[(u32, u32); 6], VmError> {
        let mut out = [(RELOAD_NONE, 0); 6];
        let writes = std::mem::take(&mut self.mem.paging.descriptor_writes);
        let Some(t) = self.tc.as_mut() else {
            return Ok(out);
        };
        if !writes.is_empty() {
            t.reloads.written(&writes);
        }
        let hits = t.tc.slot(SLOT_RELOAD_HITS);
        if hits != 0 {
            t.tc.set_slot(SLOT_RELOAD_HITS, 0);
        }
        let give_up = t.reloads.entered(hits);
        let s = &self.cpu.state;
        let mut watch = Vec::new();
        if !(self.mem.paging.enabled() && s.protected() && !s.v86()) {
            t.reloads.published = None;
        } else if let Some(out) =
            t.reloads
                .unchanged(s, &self.cpu.mirrors, self.mem.paging.user_clamp)
        {
            return Ok(out);
        } else {
            // The translation keeps the scratch segment's loads for the monitor.
            let reserved = if s.cpl() == 3 { SegReg::Fs } else { SegReg::Gs };
            let mut reader = RamDescriptors {
                ram: &self.mem.ram,
                ctx: *self.mem.paging.shadow.context(),
            };
            for reg in REGISTERS.into_iter().filter(|&r| r != reserved) {
                watch.extend(t.reloads.update(s, reg, &mut reader));
                let Some(r) = t.reloads.usable(s, reg) else {
                    continue;
                };
                let clamp = self.mem.paging.user_clamp;
                let Some(host) =
                    self.cpu
                        .mirrors
                        .installed_selector(reg, &r.segment, s.cpl(), clamp)
                else {
                    continue;
                };
                if let Some(slot) = out.get_mut(reg as usize) {
                    let sel = u32::from(r.selector);
                    *slot = (sel.wrapping_neg(), u32::from(host) | (sel << 16));
                }
            }
            let key = t
                .reloads
                .key(s, &self.cpu.mirrors, self.mem.paging.user_clamp);
            t.reloads.published = Some((key, out));
        }
        if !watch.is_empty() || !give_up.is_empty() {
            self.mem.with_host(|shadow, host, _| {
                for &frame in &give_up {
                    shadow.unwatch(host, frame);
                }
                for &frame in &watch {
                    shadow.watch(host, frame);
                }
            })?;
        }
        Ok(out)
    }

    /// A host write fault on watched frame `frame` (no page table). While a record
    /// relies on the frame, the write is performed through the bus, which drops the
    /// records it overlaps (and the writer is retranslated into a gate exit if it keeps
    /// writing there). Otherwise, or for a write the monitor cannot perform, the frame is
    /// unwatched and the write runs natively when the instruction is entered again.
    pub(super) fn descriptor_table_write(&mut self, frame: GuestPhys) -> Step {
        let relied_on = self
            .tc
            .as_ref()
            .is_some_and(|t| t.reloads.reads_frame(frame));
        if relied_on {
            if let Some(instr) = self.fetch().decode_at(self.cpu.state.eip) {
                let site = self.cpu.code_linear(self.cpu.state.eip);
                match self.mediate_write(&instr) {
                    Ok(Ok(Mediated::Done)) => {
                        self.tc_mediated_write(site);
                        return Ok(None);
                    }
                    Ok(Ok(Mediated::Unsupported)) => {}
                    Ok(Err(fault)) => return self.hand_to_vcpu(GuestExit::Exception(fault)),
                    Err(e) => return self.failure(e),
                }
            }
        }
        if let Some(t) = self.tc.as_mut() {
            t.reloads.frame_written(frame);
        }
        self.mem
            .with_host(|shadow, host, _| shadow.unwatch(host, frame))?;
        Ok(None)
    }

    /// Takes in the loads translated code performed inline since the entry: each
    /// register whose LOADED byte is set gets the cache of the selector its slot holds
    /// (null, or its reload record's), and its mirror selector.
    pub(super) fn take_inline_loads(&mut self) -> Result<(), String> {
        let Some(t) = self.tc.as_mut() else {
            return Ok(());
        };
        if t.tc.slot(SLOT_LOADED) == 0 && t.tc.slot(SLOT_LOADED + 4) == 0 {
            return Ok(());
        }
        let mut dirty = 0u8;
        for reg in REGISTERS {
            let i = reg as u32;
            if t.tc.slot_u8(SLOT_LOADED + i) == 0 {
                continue;
            }
            let sel = u16::try_from(t.tc.slot(SLOT_SELECTORS + 4 * i) & 0xffff).unwrap_or(0);
            let seg = if sel == 0 {
                Segment::null(0)
            } else {
                t.reloads.loaded(reg, sel).ok_or_else(|| {
                    format!(
                        "translated code loaded {reg:?} with selector {sel:#06x}, \
                         which no reload record names"
                    )
                })?
            };
            *self.cpu.state.sreg_mut(reg) = seg;
            t.reloads.stats.inline_loads += 1;
            dirty |= 1 << i;
        }
        t.tc.set_slot(SLOT_LOADED, 0);
        t.tc.set_slot(SLOT_LOADED + 4, 0);
        let clamp = self.mem.paging.user_clamp;
        self.cpu
            .sync_mirrors(dirty, clamp)
            .map_err(|e| format!("reinstalling segment mirrors: {e}"))
    }
}

/// The offsets (first, last) within the page of linear `lin` that the descriptor table
/// holding `lin` (the GDT, or the LDT when it holds `lin`) covers.
fn table_in_page(s: &VcpuState, lin: u32) -> (u32, u32) {
    let page = lin - lin % PAGE_SIZE;
    let (base, limit) = if s.ldtr.present
        && lin.wrapping_sub(s.ldtr.base) <= s.ldtr.limit
        && lin.wrapping_sub(s.gdtr.base) > u32::from(s.gdtr.limit)
    {
        (s.ldtr.base, s.ldtr.limit)
    } else {
        (s.gdtr.base, u32::from(s.gdtr.limit))
    };
    let first = base.max(page);
    let last = base.saturating_add(limit).min(page + (PAGE_SIZE - 1));
    (first - page, last.max(first) - page)
}

/// The record of the load that left `cur` in a register, if `cur` is what the table
/// gives now (descriptor within the table's limit and one page, accessed bit set).
fn read_record(s: &VcpuState, cur: Segment, mem: &mut impl DescriptorReader) -> Option<Reload> {
    let sel = cur.selector;
    let (base, limit) = if selector::ti(sel) {
        if !s.ldtr.present || selector::is_null(s.ldtr.selector) {
            return None;
        }
        (s.ldtr.base, s.ldtr.limit)
    } else {
        (s.gdtr.base, u32::from(s.gdtr.limit))
    };
    let offset = u32::from(sel & 0xfff8);
    if offset + 7 > limit {
        return None;
    }
    let lin = base.wrapping_add(offset);
    if lin % PAGE_SIZE > PAGE_SIZE - 8 {
        return None;
    }
    let (phys, raw) = mem.descriptor_at(lin)?;
    let desc = Descriptor::decode(raw);
    if desc.typ & TYPE_ACCESSED == 0 || Segment::from_descriptor(sel, &desc) != cur {
        return None;
    }
    Some(Reload {
        selector: sel,
        segment: cur,
        phys,
        lin,
        raw,
        tables: Tables::of(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GDT at linear 0x1000 (physical 0x5000) holding `entries` from index 0.
    struct Gdt(Vec<u64>);

    impl DescriptorReader for Gdt {
        fn descriptor_at(&mut self, lin: u32) -> Option<(GuestPhys, u64)> {
            let i = usize::try_from((lin.checked_sub(0x1000)?) / 8).ok()?;
            Some((GuestPhys(0x5000 + lin - 0x1000), *self.0.get(i)?))
        }
    }

    /// Flat data, DPL `dpl`, accessed, 4 GiB.
    fn data(dpl: u64) -> u64 {
        0x00CF_9300_0000_FFFF | (dpl << 45)
    }

    fn state_with(ds: u16, gdt: &Gdt, cpl: u8) -> VcpuState {
        let mut s = VcpuState::multiboot_entry(0x10_0000, 0, 0);
        s.gdtr.base = 0x1000;
        s.gdtr.limit = u16::try_from(gdt.0.len() * 8 - 1).unwrap();
        let desc = Descriptor::decode(gdt.0[usize::from(ds >> 3)]);
        *s.sreg_mut(SegReg::Ds) = Segment::from_descriptor(ds, &desc);
        let cs = s.sreg_mut(SegReg::Cs);
        cs.selector = (cs.selector & !3) | u16::from(cpl);
        cs.dpl = cpl;
        let ss = s.sreg_mut(SegReg::Ss);
        ss.dpl = cpl;
        ss.selector = (ss.selector & !3) | u16::from(cpl);
        s
    }

    #[test]
    fn a_table_load_is_recorded_and_its_descriptor_watched() {
        let mut gdt = Gdt(vec![0, data(0), data(3)]);
        let s = state_with(0x13, &gdt, 0);
        let mut r = Reloads::default();
        assert_eq!(r.update(&s, SegReg::Ds, &mut gdt), Some(GuestPhys(0x5000)));
        assert_eq!(r.usable(&s, SegReg::Ds).unwrap().selector, 0x13);
        assert_eq!(r.loaded(SegReg::Ds, 0x13), Some(*s.sreg(SegReg::Ds)));
        assert_eq!(r.loaded(SegReg::Ds, 0x10), None);
        // Recorded once; the frame is watched once.
        assert_eq!(r.update(&s, SegReg::Ds, &mut gdt), None);
        // A write to another descriptor leaves it; one to its own drops it.
        r.written(&[(GuestPhys(0x5008), 8)]);
        assert!(r.usable(&s, SegReg::Ds).is_some());
        r.written(&[(GuestPhys(0x5016), 1)]);
        assert!(r.usable(&s, SegReg::Ds).is_none());
        // Made again; a native write to the frame unwatches it and drops the record; the
        // next record there watches it again.
        assert_eq!(r.update(&s, SegReg::Ds, &mut gdt), None, "still watched");
        r.frame_written(GuestPhys(0x5000));
        assert!(r.usable(&s, SegReg::Ds).is_none());
        assert_eq!(r.update(&s, SegReg::Ds, &mut gdt), Some(GuestPhys(0x5000)));
    }

    #[test]
    fn a_record_holds_only_where_the_load_would_pass() {
        let mut gdt = Gdt(vec![0, data(0), data(3)]);
        let mut r = Reloads::default();
        let kernel = state_with(0x08, &gdt, 0);
        r.update(&kernel, SegReg::Ds, &mut gdt);
        assert!(r.usable(&kernel, SegReg::Ds).is_some());
        // DPL 0 at CPL 3: #GP, so the monitor does it.
        let mut user = kernel.clone();
        let cs = user.sreg_mut(SegReg::Cs);
        cs.selector |= 3;
        cs.dpl = 3;
        user.sreg_mut(SegReg::Ss).dpl = 3;
        user.sreg_mut(SegReg::Ss).selector |= 3;
        assert_eq!(user.cpl(), 3);
        assert!(r.usable(&user, SegReg::Ds).is_none());
        // Another GDT.
        let mut moved = kernel.clone();
        moved.gdtr.base = 0x2000;
        assert!(r.usable(&moved, SegReg::Ds).is_none());
    }

    #[test]
    fn a_cache_the_table_no_longer_gives_is_not_recorded() {
        let mut gdt = Gdt(vec![0, data(0)]);
        let s = state_with(0x08, &gdt, 0);
        // The descriptor changed since the load (base 0x1000 now).
        gdt.0[1] |= 0x1000 << 16;
        let mut r = Reloads::default();
        assert_eq!(r.update(&s, SegReg::Ds, &mut gdt), None);
        assert!(r.usable(&s, SegReg::Ds).is_none());
        // Nor with the accessed bit clear (the load would write it).
        let mut fresh = Gdt(vec![0, data(0) & !(1 << 40)]);
        let s = state_with(0x08, &fresh, 0);
        assert_eq!(r.update(&s, SegReg::Ds, &mut fresh), None);
    }

    /// Runs a window of entries over `r` with `writes` writes to frame 0x5000 and `hits`
    /// inline reloads; returns the frames given up at its end.
    fn window(r: &mut Reloads, writes: u64, hits: u32) -> Vec<GuestPhys> {
        for _ in 0..writes {
            r.written(&[(GuestPhys(0x5100), 4)]);
        }
        let mut given = Vec::new();
        for i in 0..WRITE_WINDOW {
            given.extend(r.entered(if i == 0 { hits } else { 0 }));
        }
        given
    }

    #[test]
    fn a_frame_written_more_often_than_it_saves_exits_is_given_up() {
        let mut gdt = Gdt(vec![0, data(0)]);
        let s = state_with(0x08, &gdt, 0);
        let mut r = Reloads::default();
        r.update(&s, SegReg::Ds, &mut gdt);
        // Writes paid for by reloads, or few: the frame stays.
        assert!(window(&mut r, 500, 1000).is_empty());
        assert!(window(&mut r, WRITE_SLACK, 0).is_empty());
        assert!(r.usable(&s, SegReg::Ds).is_some());
        // More writes than reloads.
        assert_eq!(window(&mut r, 500, 100), [GuestPhys(0x5000)]);
        assert_eq!(r.stats.frames_given_up, 1);
        assert!(r.usable(&s, SegReg::Ds).is_none());
        r.forget();
        assert_eq!(r.update(&s, SegReg::Ds, &mut gdt), None, "not for a while");
        for _ in 0..GIVEN_UP_FOR {
            r.entered(0);
        }
        assert_eq!(r.update(&s, SegReg::Ds, &mut gdt), Some(GuestPhys(0x5000)));
    }
}
