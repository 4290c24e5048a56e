//! The translation cache (ARCHITECTURE §5): where translated blocks live, how they are
//! found, chained and thrown away.
//!
//! The top of the guest's linear space is the **monitor window**:
//!
//! ```text
//! WINDOW_START + 0x0000_0000  gate page         r-x  the far pointer every exit stub jumps
//!                                                    through, the 64-bit trampoline to the
//!                                                    monitor's gate; INT3 elsewhere
//!              + 0x0000_1000  vCPU page         rw-  the scratch slots (reserved segment)
//!              + 0x0000_4000  bounce pages      rw-  a guest page, for one window access
//!              + 0x0001_0000  lookup tables     r--  kernel, user, always-empty
//!              + 0x0020_0000  translated code   r-x  up to the window's end
//! ```
//!
//! All of it is one memfd ([`WindowMemory`]), written only through the monitor's view
//! above 4 GiB: no address is writable and executable at once, and the guest's own
//! segments stop below the window. Blocks are keyed by what their translation depends on
//! ([`Key`]); a block is entered by the monitor at its direct entry, reached from other
//! blocks through chained exits, and from indirect branches through the lookup table of
//! its privilege level. Single-instruction blocks (for single steps) are never chained
//! nor looked up, and their indirect branches read the always-empty table, so each of
//! them runs exactly one guest instruction.
//!
//! Invalidation: a write to a guest-physical page that blocks came from drops those
//! blocks (their lookup entries and every chain into them go first). A change of the
//! address space (CR3, INVLPG, paging mode) clears the lookup tables and undoes every
//! chain that crosses a linear page, since the linear→physical mapping those relied on may
//! have changed; blocks themselves stay, keyed by the physical page they came from. When
//! the code area is full the whole cache is flushed.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use rewriter::translate::{
    translate_block, Block, CodeReader, CodeSegment, ExitStub, Gate, LookupTable, Refusal, Scratch,
    ScratchSegment, SideEntry, StackSize, TranslateConfig, LOOKUP_ENTRY_SIZE, LOOKUP_TABLE_SIZE,
    SCRATCH_LEN,
};

use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::memory::{LinearSpace, MemoryError, Prot, WindowMemory};

/// First linear address of the monitor window (the last 64 MiB below 4 GiB: Linux's
/// fixmap and kmap areas lie there, and guest accesses to them are emulated).
pub const WINDOW_START: u32 = 0xFC00_0000;
/// Size of the window.
pub const WINDOW_SIZE: u32 = 0x0400_0000;

const GATE_OFFSET: u32 = 0;
const VCPU_OFFSET: u32 = 0x1000;
const BOUNCE_OFFSET: u32 = 0x4000;
const TABLES_OFFSET: u32 = 0x1_0000;
const CODE_OFFSET: u32 = 0x20_0000;

/// The trap gate: an INT3 that reaches the monitor through a signal
/// (`VMM_TC_GATE=trap`, for measuring what the far-call gate saves).
pub const GATE: u32 = WINDOW_START + GATE_OFFSET;
/// The far pointer (offset, then the host's 64-bit code selector) exit stubs jump
/// through.
const GATE_POINTER: u32 = WINDOW_START + GATE_OFFSET + 0x100;
/// The 64-bit trampoline the far pointer names. Its `jmp [rip]` target (6 bytes in) is
/// 8-byte aligned: the guest may arrive with EFLAGS.AC set (alignment checks on at CPL 3).
const GATE_TRAMPOLINE: u32 = WINDOW_START + GATE_OFFSET + 0x202;
const _: () = assert!((GATE_TRAMPOLINE + 6).is_multiple_of(8));
/// The vCPU page (base of the reserved segment).
pub const VCPU_PAGE: u32 = WINDOW_START + VCPU_OFFSET;
/// The two bounce pages: guest RAM mapped for one instruction's access to the window.
pub const BOUNCE: u32 = WINDOW_START + BOUNCE_OFFSET;

const OP_INT3: u8 = 0xCC;
/// Most guest instructions in one block.
const MAX_BLOCK_INSTRUCTIONS: usize = 64;
/// Items `relying` holds before the first compaction (then twice what the last kept).
const RELIANTS_COMPACT: usize = 1 << 16;
/// Blocks start on this alignment.
const BLOCK_ALIGN: u32 = 16;

/// The lookup tables, by use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Table {
    Kernel = 0,
    User = 1,
    /// Never written: single-instruction blocks look up here and always miss.
    Empty = 2,
}

const _: () = assert!(TABLES_OFFSET as usize + 3 * LOOKUP_TABLE_SIZE <= CODE_OFFSET as usize);

/// [`LOOKUP_TABLE_SIZE`] as a linear-address span (512 KiB: it fits).
const TABLE_SPAN: u32 = 1 << (rewriter::translate::LOOKUP_BITS + 3);
const _: () = assert!(TABLE_SPAN as usize == LOOKUP_TABLE_SIZE);

fn table_address(t: Table) -> u32 {
    WINDOW_START + TABLES_OFFSET + (t as u32) * TABLE_SPAN
}

/// Whether MOV and PUSH from segment registers are translated as immediates of the
/// guest's selectors (blocks are then keyed by them). Off: they read the vCPU page's
/// selector slots, which costs no exit either, while immediates would leave a kernel
/// entered from processes with different TLS selectors sharing no translation (README,
/// Known limits).
pub const SELECTOR_IMMEDIATES: bool = false;

/// Code area [`TranslationCache::make_room`] keeps open past the next free byte: more
/// than any block takes.
const CODE_ROOM: u32 = 0x1_0000;
/// How much of the code area opens at a time.
const OPEN_CHUNK: u32 = 0x10_0000;

/// Bytes of code area per entry of [`TranslationCache::by_stub`]: an exit stub is
/// longer (the store that names it and the gate jump), so no two start in one.
const STUB_GRANULE: u32 = 16;

/// The entry of [`TranslationCache::by_stub`] for the stub at TC address `at`.
fn stub_slot(at: u32) -> Option<usize> {
    let offset = at.checked_sub(WINDOW_START + CODE_OFFSET)?;
    Some((offset / STUB_GRANULE) as usize)
}

/// Block `block`'s exit `index` as an entry of [`TranslationCache::by_stub`] (0 is
/// none): the block's index plus one in the high 22 bits, the exit's in the low 10.
fn pack_stub(block: usize, index: usize) -> Option<u32> {
    let block = u32::try_from(block)
        .ok()?
        .checked_add(1)
        .filter(|b| *b < 1 << 22)?;
    let index = u32::try_from(index).ok().filter(|i| *i < 1 << 10)?;
    Some(block << 10 | index)
}

/// The block and exit index [`pack_stub`] packed.
fn unpack_stub(packed: u32) -> Option<(usize, usize)> {
    let block = (packed >> 10).checked_sub(1)?;
    Some((block as usize, (packed & 0x3ff) as usize))
}

/// Entries of [`TranslationCache::recent`]: a power of two.
const RECENT_FINDS: usize = 2048;

/// The entry of [`TranslationCache::recent`] for `key`: its EIP, physical page and
/// privilege level (what tells apart the blocks a run enters most).
fn recent_slot(key: &Key) -> usize {
    let h = key.eip ^ key.phys.rotate_left(9) ^ u32::from(key.user) << 11;
    (h ^ h >> 11) as usize & (RECENT_FINDS - 1)
}

/// What changed in the guest's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceChange {
    /// CR3 was written.
    Cr3,
    /// The linear pages from `first` to `last` (page addresses, inclusive) may map
    /// elsewhere (INVLPG).
    Pages {
        /// The first page.
        first: u32,
        /// The last page.
        last: u32,
    },
    /// Every page may map elsewhere, global ones included (CR4.PGE toggled: the TLB is
    /// flushed whole). Every chain and lookup entry is undone without a walk (a check of
    /// each would cost more than the exits that redo them), the translations stay.
    All,
}

/// Something in the cache that leads to a block without the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Reliant {
    /// Exit `exit` of block `from` chained to block `to`.
    Chain { from: usize, exit: usize, to: usize },
    /// Entry `index` of `table`, for `block`.
    Entry {
        table: Table,
        index: usize,
        block: usize,
    },
}

/// A [`Reliant`] with what a change of address space needs to know of the block it leads
/// to, copied when it was made: checking a CR3 write's thousand reliants then reads their
/// lists in order instead of a block each (cache misses that cost 18% of the monitor's
/// time while a kernel without global pages patched its text). The copy holds while the
/// block is alive: its pages never change, and its `global` changes only with every
/// reliant undone ([`TranslationCache::reassess_global`]). A dead block's reliants are
/// the compaction's to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Relied {
    what: Reliant,
    /// The block was global.
    global: bool,
    /// The block was translated for CPL 3.
    user: bool,
    /// The block's (linear page, physical page) pairs: the second repeats the first for
    /// a block in one page.
    pages: [(u32, u64); 2],
}

/// Everything a block's translation depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The guest EIP it starts at.
    pub eip: u32,
    /// The code segment it was decoded in.
    pub cs: CodeSegment,
    /// SS.B.
    pub stack32: bool,
    /// Translated for CPL 3 (FS reserved, the user table) or CPL 0–2 (GS, the kernel's).
    pub user: bool,
    /// FPU instructions exit (CR0.TS or CR0.EM set).
    pub exit_fpu: bool,
    /// CLI and STI inline (CPL 0).
    pub inline_if: bool,
    /// PAUSE exits (several vCPUs share the thread).
    pub exit_pause: bool,
    /// The guest's selectors (ES, CS, SS, DS, FS, GS) with [`SELECTOR_IMMEDIATES`]: reads
    /// of them are immediates. Zeros without.
    pub selectors: [u16; 6],
    /// GS-relative operands are rebased onto the cache's GS base (user mode with flat DS
    /// and SS and a 4 GiB GS; [`TranslationCache::rebase_gs`] moves every such block onto
    /// the base of the moment, so processes whose TLS lies elsewhere share them). A block
    /// with no such operand is kept under `false`: it serves both.
    pub gs_rebase: bool,
    /// One guest instruction only, never chained nor looked up.
    pub single: bool,
    /// Paging was on.
    pub paging: bool,
    /// Loads of data segment registers are inline (protected mode with paging on, not
    /// virtual-8086: [`rewriter::translate::TranslateConfig::inline_segment_loads`]).
    pub segment_loads: bool,
    /// The guest-physical page of the entry.
    pub phys: u32,
}

impl Key {
    /// The lookup table blocks of this key read and are entered in.
    fn table(&self) -> Table {
        if self.single {
            Table::Empty
        } else if self.user {
            Table::User
        } else {
            Table::Kernel
        }
    }

    /// The translator's configuration for this key, leaving through `gate`, with GS
    /// operands rebased onto `gs_base` if at all.
    pub fn config(&self, gate: Gate, gs_base: u32) -> TranslateConfig {
        TranslateConfig {
            gate,
            scratch: Scratch {
                segment: if self.user {
                    ScratchSegment::Fs
                } else {
                    ScratchSegment::Gs
                },
                base: 0,
            },
            lookup_table: table_address(self.table()),
            stack_size: if self.stack32 {
                StackSize::Bits32
            } else {
                StackSize::Bits16
            },
            max_instructions: if self.single {
                1
            } else {
                MAX_BLOCK_INSTRUCTIONS
            },
            exit_fpu: self.exit_fpu,
            exit_pause: self.exit_pause,
            inline_if: self.inline_if,
            selectors: SELECTOR_IMMEDIATES.then_some(self.selectors),
            gs_rebase: self.gs_rebase.then_some(gs_base),
            inline_segment_loads: self.segment_loads,
        }
    }
}

/// What a lookup table's entries assume besides the guest EIP: the code and stack
/// segments and the FPU setting they were translated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TableContext {
    cs: CodeSegment,
    stack32: bool,
    exit_fpu: bool,
    inline_if: bool,
    selectors: [u16; 6],
    gs_rebase: bool,
    paging: bool,
    segment_loads: bool,
}

impl TableContext {
    /// The same context with GS operands left as they are.
    fn any_base(self) -> Self {
        Self {
            gs_rebase: false,
            ..self
        }
    }

    fn of(key: &Key) -> Self {
        Self {
            cs: key.cs,
            stack32: key.stack32,
            exit_fpu: key.exit_fpu,
            inline_if: key.inline_if,
            selectors: key.selectors,
            gs_rebase: key.gs_rebase,
            paging: key.paging,
            segment_loads: key.segment_loads,
        }
    }
}

/// What the cache knows of one lookup table's contents.
#[derive(Clone, Debug, Default)]
struct TableState {
    /// The context its entries were translated for, once it has any.
    context: Option<TableContext>,
    /// The entries written since it was last cleared, by index, with the block each
    /// leads to (cleared one by one while few: a context change should not cost a
    /// 512 KiB copy).
    filled: HashMap<usize, usize>,
}

impl TableState {
    /// Whether entry `index` leads to block `block`.
    fn holds(&self, index: usize, block: usize) -> bool {
        self.filled.get(&index) == Some(&block)
    }
}

/// A block in the cache.
#[derive(Debug)]
pub struct TcBlock {
    /// The translation.
    pub block: Block,
    /// Its key.
    pub key: Key,
    /// Still reachable (not invalidated).
    pub alive: bool,
    /// Chained exits into it: (source block, exit index).
    incoming: Vec<(usize, usize)>,
    /// Every page it came from was mapped global (CR4.PGE and PTE.G) when it was
    /// translated.
    pub global: bool,
    /// Every page it came from was mapped with PTE.G when it was translated (global
    /// whenever CR4.PGE is set).
    pub g_pages: bool,
    /// Translated with GS operands to rebase, without any: kept under the key that
    /// rebases none, it serves both.
    any_gs_base: bool,
}

impl TcBlock {
    /// Whether the block's guest bytes lie in one linear page.
    fn one_page(&self) -> bool {
        self.block.pages.len() == 1
    }
}

/// Translation counters for `--stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TcStats {
    /// Blocks translated.
    pub blocks: u64,
    /// Bytes of translated code emitted.
    pub bytes: u64,
    /// Exits chained to their target block.
    pub chains: u64,
    /// Chains undone (target invalidated, address space changed).
    pub unchains: u64,
    /// Indirect-branch targets entered in a lookup table (lookup misses that reached
    /// the monitor).
    pub lookups_missed: u64,
    /// Blocks found by the monitor without translating.
    pub hits: u64,
    /// Blocks dropped because a page they came from was written.
    pub invalidations: u64,
    /// Whole-cache flushes.
    pub flushes: u64,
    /// Lookup-table clears (address space or context changes).
    pub table_clears: u64,
    /// Moves of the blocks that rebase GS operands onto another GS base.
    pub gs_moves: u64,
}

/// Why the cache could not take a block.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    /// The window could not be set up.
    #[error("monitor window")]
    Memory(#[from] MemoryError),
    /// A block is larger than the whole code area (a translator bug).
    #[error("a translated block of {0} bytes does not fit the translation cache")]
    TooLarge(usize),
    /// The gate page, tables and code area do not fit the window's memory (a monitor bug).
    #[error("the monitor window's layout does not fit its {WINDOW_SIZE:#x} bytes")]
    Layout,
}

/// The translation cache.
pub struct TranslationCache {
    mem: WindowMemory,
    /// Next free offset in the code area (relative to the window).
    next: u32,
    /// End of the code area's open part (relative to the window): INT3 or translated
    /// code, and executable. The rest is inaccessible and never touched: filling the
    /// whole area up front took 60 ms and 62 MiB of memory for every VM (measured).
    open_to: u32,
    blocks: Vec<TcBlock>,
    by_tc: BTreeMap<u32, usize>,
    /// Every exit stub's block and exit index, packed ([`pack_stub`]), by its TC address
    /// (the value of the exit slot) over [`STUB_GRANULE`]: dead blocks' too, until the
    /// flush, as their code may still run. An array the size of the code area over 16
    /// (pages the host gives only where written): one load per exit, where a hash map
    /// of 200,000 stubs cost 9% of the monitor's time under Linux in cache misses.
    by_stub: Vec<u32>,
    /// The stubs that do not pack (none seen), by TC address.
    by_stub_else: HashMap<u32, (usize, usize)>,
    by_key: HashMap<Key, usize>,
    /// The blocks `find` answered lately, by a hash of the key asked: a small table
    /// that stays in the host's caches, where `by_key` (tens of thousands of blocks
    /// under Linux) costs a cache miss or two each time (measured: 9% of the
    /// monitor's time in 300 fork+exec). An entry holds while its block is alive.
    recent: Vec<Option<(Key, usize)>>,
    by_page: HashMap<u64, Vec<usize>>,
    /// Chains across linear pages and lookup entries made under paging, by each linear
    /// page of the block they lead to: undone when the address space changes that
    /// page's mapping.
    relying: BTreeMap<u32, Vec<Relied>>,
    /// The pages in `relying` with something that leads to a block not translated from
    /// global pages: what a CR3 write must look at.
    local: BTreeSet<u32>,
    /// Chains from blocks that leave GS operands as they are into blocks that rebase
    /// them, right while user code runs with `base_context`.
    base_chains: Vec<(usize, usize)>,
    base_context: bool,
    /// The GS base every rebased GS operand holds now, and where they are (window
    /// offsets of their 32-bit displacements, dead blocks' included until the flush).
    gs_base: u32,
    gs_sites: Vec<u32>,
    /// Items in `relying`, and how many the last compaction kept.
    reliants: usize,
    reliants_kept: usize,
    /// The kernel and user tables, by `Table` (the empty one has no state).
    tables: [TableState; 2],
    empty_table: Vec<u8>,
    /// How exit stubs reach the monitor.
    gate: Gate,
    /// Counters.
    pub stats: TcStats,
}

impl std::fmt::Debug for TranslationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranslationCache")
            .field("blocks", &self.blocks.len())
            .field("used", &(self.next - CODE_OFFSET))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl TranslationCache {
    /// Creates the window's memory and maps it into `space` (which from now on keeps
    /// guest mappings below the window, never executable).
    ///
    /// # Errors
    /// [`TcError::Memory`] when the host refuses.
    pub fn new(space: &mut LinearSpace) -> Result<Self, TcError> {
        let mut mem = WindowMemory::new(WINDOW_SIZE)?;
        let empty = LookupTable::new();
        lay_out(mem.bytes_mut(), &empty).ok_or(TcError::Layout)?;
        crate::hostcpu::set_gate_trampoline(GATE_TRAMPOLINE);
        let gate = if std::env::var_os("VMM_TC_GATE").is_some_and(|v| v == "trap") {
            Gate::Near(GATE)
        } else {
            Gate::FarPointer(GATE_POINTER)
        };
        space.reserve_window(GuestLinear(WINDOW_START))?;
        let fd = mem.fd();
        let at = |off: u32| GuestLinear(WINDOW_START + off);
        space.map_monitor(
            at(GATE_OFFSET),
            PAGE_SIZE,
            Prot::RX,
            fd,
            u64::from(GATE_OFFSET),
        )?;
        space.map_monitor(
            at(VCPU_OFFSET),
            PAGE_SIZE,
            Prot::RW,
            fd,
            u64::from(VCPU_OFFSET),
        )?;
        let tables_len = u32::try_from(3 * LOOKUP_TABLE_SIZE).unwrap_or(u32::MAX);
        space.map_monitor(
            at(TABLES_OFFSET),
            tables_len,
            Prot::R,
            fd,
            u64::from(TABLES_OFFSET),
        )?;
        // The code area opens (INT3 written, then executable) as translations reach it.
        space.map_monitor(
            at(CODE_OFFSET),
            WINDOW_SIZE - CODE_OFFSET,
            Prot::NONE,
            fd,
            u64::from(CODE_OFFSET),
        )?;
        Ok(Self {
            mem,
            next: CODE_OFFSET,
            open_to: CODE_OFFSET,
            blocks: Vec::new(),
            by_tc: BTreeMap::new(),
            by_stub: vec![0; ((WINDOW_SIZE - CODE_OFFSET) / STUB_GRANULE) as usize],
            by_stub_else: HashMap::default(),
            by_key: HashMap::default(),
            recent: vec![None; RECENT_FINDS],
            by_page: HashMap::default(),
            relying: BTreeMap::new(),
            local: BTreeSet::new(),
            base_chains: Vec::new(),
            base_context: false,
            gs_base: 0,
            gs_sites: Vec::new(),
            reliants: 0,
            reliants_kept: 0,
            tables: Default::default(),
            empty_table: empty.as_bytes().to_vec(),
            gate,
            stats: TcStats::default(),
        })
    }

    /// Opens the code area far enough past the next free byte for any block
    /// ([`CODE_ROOM`]), a chunk at a time: INT3 written, then made executable. Call it
    /// before [`Self::translate`].
    ///
    /// # Errors
    /// The host refused the protection change.
    pub fn make_room(&mut self, space: &mut LinearSpace) -> Result<(), MemoryError> {
        let want = self.next.saturating_add(CODE_ROOM).min(WINDOW_SIZE);
        while self.open_to < want {
            let end = self.open_to.saturating_add(OPEN_CHUNK).min(WINDOW_SIZE);
            let (from, to) = (self.open_to as usize, end as usize);
            if let Some(chunk) = self.mem.bytes_mut().get_mut(from..to) {
                chunk.fill(OP_INT3);
            }
            space.protect_monitor(
                GuestLinear(WINDOW_START + self.open_to),
                end - self.open_to,
                Prot::RX,
            )?;
            self.open_to = end;
        }
        Ok(())
    }

    /// Reads a `u32` scratch slot of the vCPU page (0 for an offset past the page).
    pub fn slot(&self, offset: u32) -> u32 {
        self.vcpu_bytes(offset, 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    }

    /// Writes a byte slot of the vCPU page (nothing for an offset past the page).
    pub fn set_slot_u8(&mut self, offset: u32, value: u8) {
        if let Some(b) = self.vcpu_bytes_mut(offset, 1) {
            b.copy_from_slice(&[value]);
        }
    }

    /// Writes a dword slot of the vCPU page (nothing for an offset past the page).
    pub fn set_slot(&mut self, offset: u32, value: u32) {
        if let Some(b) = self.vcpu_bytes_mut(offset, 4) {
            b.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Reads a byte slot of the vCPU page (0 for an offset past the page).
    pub fn slot_u8(&self, offset: u32) -> u8 {
        self.vcpu_bytes(offset, 1)
            .and_then(|b| b.first().copied())
            .unwrap_or(0)
    }

    /// `len` bytes of the vCPU page at `offset`, if they lie inside it.
    fn vcpu_bytes(&self, offset: u32, len: usize) -> Option<&[u8]> {
        let at = vcpu_range(offset, len)?;
        self.mem.bytes().get(at)
    }

    fn vcpu_bytes_mut(&mut self, offset: u32, len: usize) -> Option<&mut [u8]> {
        let at = vcpu_range(offset, len)?;
        self.mem.bytes_mut().get_mut(at)
    }

    /// Length of the vCPU page's segment.
    pub fn vcpu_page_len() -> u32 {
        SCRATCH_LEN.max(PAGE_SIZE)
    }

    /// The live block that runs `key`'s guest code in `key`'s context, if any: the one
    /// translated for that key, or for a key that rebases GS operands, one translated
    /// without any.
    pub fn find(&mut self, key: &Key) -> Option<usize> {
        let slot = recent_slot(key);
        if let Some(&Some((k, i))) = self.recent.get(slot) {
            if k == *key && self.blocks.get(i).is_some_and(|b| b.alive) {
                self.stats.hits += 1;
                return Some(i);
            }
        }
        let exact = self.by_key.get(key).copied();
        let i = exact.or_else(|| {
            if !key.gs_rebase {
                return None;
            }
            let any_base = Key {
                gs_rebase: false,
                ..*key
            };
            let i = *self.by_key.get(&any_base)?;
            self.blocks.get(i).filter(|b| b.any_gs_base).map(|_| i)
        })?;
        if let Some(r) = self.recent.get_mut(slot) {
            *r = Some((*key, i));
        }
        self.stats.hits += 1;
        Some(i)
    }

    /// A block by index.
    ///
    /// # Panics
    /// If `i` is not an index this cache returned since its last flush.
    // reason: indices come only from this cache (`translate`, `find`, `at`, `exit_for`),
    // and the engine drops every one it holds when the cache flushes; a stale index is a
    // monitor bug that no answer could hide.
    #[allow(clippy::indexing_slicing)]
    pub fn block(&self, i: usize) -> &TcBlock {
        &self.blocks[i]
    }

    /// The block whose code contains TC address `addr`, and the side entry there.
    pub fn at(&self, addr: u32) -> Option<(usize, Option<&SideEntry>)> {
        let i = self.block_at(addr)?;
        let b = self.blocks.get(i)?;
        Some((i, b.block.side.at(addr.wrapping_sub(b.block.tc_address))))
    }

    /// The block whose bytes hold TC address `addr`.
    fn block_at(&self, addr: u32) -> Option<usize> {
        let (&start, &i) = self.by_tc.range(..=addr).next_back()?;
        let b = self.blocks.get(i)?;
        let end = start.wrapping_add(u32::try_from(b.block.bytes.len()).ok()?);
        (addr < end).then_some(i)
    }

    /// Moves every block that rebases GS operands onto `base` (user code is about to run
    /// with that GS base): each rebased displacement gets the difference added. Blocks
    /// are then shared by processes whose TLS lies at different places (where keyed by
    /// the base, about 70 of them were translated again for each new process).
    pub fn rebase_gs(&mut self, base: u32) {
        if base == self.gs_base {
            return;
        }
        let delta = base.wrapping_sub(self.gs_base);
        let bytes = self.mem.bytes_mut();
        for &site in &self.gs_sites {
            let at = site as usize;
            if let Some(field) = bytes.get_mut(at..at + 4) {
                let held = <[u8; 4]>::try_from(&*field).map_or(0, u32::from_le_bytes);
                field.copy_from_slice(&held.wrapping_add(delta).to_le_bytes());
            }
        }
        self.gs_base = base;
        self.stats.gs_moves += 1;
    }

    /// The exit stub whose address the exit slot holds, with its block.
    pub fn exit_for(&self, slot: u32) -> Option<(usize, usize, ExitStub)> {
        let found = |(i, index): (usize, usize)| {
            let b = &self.blocks.get(i)?.block;
            let stub = *b.side.exits.get(index)?;
            (b.tc_address.wrapping_add(stub.offset) == slot).then_some((i, index, stub))
        };
        stub_slot(slot)
            .and_then(|s| self.by_stub.get(s))
            .and_then(|&packed| unpack_stub(packed))
            .and_then(found)
            .or_else(|| self.by_stub_else.get(&slot).copied().and_then(found))
    }

    /// Translates the block `key` names from `reader` and places it in the cache
    /// (flushing the cache first when it is full). Returns the block's index.
    ///
    /// # Errors
    /// A [`Refusal`] from the translator (the entry cannot be fetched: the caller raises
    /// the CPU's fault), or [`TcError::TooLarge`] as a translator bug.
    pub fn translate(
        &mut self,
        reader: &impl CodeReader,
        key: Key,
    ) -> Result<Result<usize, Refusal>, TcError> {
        let cfg = key.config(self.gate, self.gs_base);
        let mut flushed = false;
        loop {
            let at = WINDOW_START + self.next;
            let block = match translate_block(reader, key.eip, key.cs, at, &cfg) {
                Ok(b) => b,
                Err(r) => return Ok(Err(r)),
            };
            let len = block.bytes.len();
            let end = u64::from(self.next) + len as u64;
            if end > u64::from(WINDOW_SIZE) {
                if flushed {
                    return Err(TcError::TooLarge(len));
                }
                self.flush();
                flushed = true;
                continue;
            }
            if end > u64::from(self.open_to) {
                // Past the room make_room keeps open: no block is that large.
                return Err(TcError::TooLarge(len));
            }
            let off = self.next as usize;
            let Some(code) = self.mem.bytes_mut().get_mut(off..off + len) else {
                return Err(TcError::TooLarge(len));
            };
            code.copy_from_slice(&block.bytes);
            let aligned = (end + u64::from(BLOCK_ALIGN) - 1) & !u64::from(BLOCK_ALIGN - 1);
            self.next = u32::try_from(aligned.min(u64::from(WINDOW_SIZE))).unwrap_or(WINDOW_SIZE);
            self.stats.blocks += 1;
            self.stats.bytes += len as u64;
            let any_gs_base = key.gs_rebase && block.gs_sites.is_empty();
            let asked = key;
            let key = if any_gs_base {
                Key {
                    gs_rebase: false,
                    ..key
                }
            } else {
                key
            };
            let i = self.blocks.len();
            for page in &block.pages {
                self.by_page.entry(page_of(page.phys)).or_default().push(i);
            }
            self.by_tc.insert(block.tc_address, i);
            let at = block.tc_address.wrapping_sub(WINDOW_START);
            self.gs_sites
                .extend(block.gs_sites.iter().map(|&site| at.wrapping_add(site)));
            for (index, stub) in block.side.exits.iter().enumerate() {
                let at = block.tc_address.wrapping_add(stub.offset);
                let packed = pack_stub(i, index);
                // Code is never placed twice between flushes: a taken entry would be
                // a stub shorter than the granule.
                match (stub_slot(at).and_then(|s| self.by_stub.get_mut(s)), packed) {
                    (Some(entry), Some(packed)) if *entry == 0 => *entry = packed,
                    _ => {
                        self.by_stub_else.insert(at, (i, index));
                    }
                }
            }
            if let Some(old) = self.by_key.insert(key, i) {
                self.drop_block(old);
            }
            if let Some(r) = self.recent.get_mut(recent_slot(&asked)) {
                *r = Some((asked, i));
            }
            self.blocks.push(TcBlock {
                block,
                key,
                alive: true,
                incoming: Vec::new(),
                global: false,
                g_pages: false,
                any_gs_base,
            });
            return Ok(Ok(i));
        }
    }

    /// Marks block `i` as lying entirely in pages mapped with PTE.G, global now if
    /// CR4.PGE is set (`pge`).
    pub fn set_global(&mut self, i: usize, pge: bool) {
        if let Some(b) = self.blocks.get_mut(i) {
            b.g_pages = true;
            b.global = pge;
        }
    }

    /// CR4.PGE became `pge`: the blocks of G pages are global or not with it.
    pub fn reassess_global(&mut self, pge: bool) {
        for b in &mut self.blocks {
            b.global = b.g_pages && pge;
        }
    }

    /// The guest-physical pages (page addresses) block `i` came from.
    pub fn pages_of(&self, i: usize) -> Vec<GuestPhys> {
        self.blocks.get(i).map_or_else(Vec::new, |b| {
            b.block
                .pages
                .iter()
                .filter_map(|p| u32::try_from(page_of(p.phys)).ok().map(GuestPhys))
                .collect()
        })
    }

    /// Chains exit `exit` of block `from` to block `to`, while the guest runs in the
    /// context `now`, when that is sound: both are ordinary blocks of the same privilege
    /// level and context, alive, and the exit is chainable. Chains that cross a linear
    /// page are remembered, so an address-space change can undo them; so are chains from
    /// a block that rebases no GS operand into one that does, undone when user code runs
    /// without the rebase.
    pub fn chain(&mut self, from: usize, exit: usize, to: usize, now: &Key) {
        let (Some(f), Some(t)) = (self.blocks.get(from), self.blocks.get(to)) else {
            return;
        };
        if !f.alive || !t.alive || f.key.single || t.key.single {
            return;
        }
        // The target must be right wherever the source may run: for the same context,
        // with GS operands rebased wherever the source runs, or while they are.
        let base_fits = !t.key.gs_rebase || f.key.gs_rebase;
        let for_now = !f.key.gs_rebase && t.key.gs_rebase == now.gs_rebase;
        let context = |k: &Key| TableContext::of(k).any_base();
        if f.key.user != t.key.user || context(&f.key) != context(&t.key) || !(base_fits || for_now)
        {
            return;
        }
        let for_base = !base_fits;
        let same_page = f.one_page()
            && t.one_page()
            && f.block.pages.first().map(|p| p.linear) == t.block.pages.first().map(|p| p.linear);
        let Ok(patch) = f.block.chain(exit, t.block.entry()) else {
            return;
        };
        let paging = f.key.paging;
        if !self.apply_patch(from, &patch) {
            return;
        }
        if let Some(t) = self.blocks.get_mut(to) {
            t.incoming.push((from, exit));
        }
        if for_base {
            self.base_chains.push((from, exit));
        }
        if !same_page && paging {
            self.relies(to, Reliant::Chain { from, exit, to });
        }
        self.stats.chains += 1;
    }

    /// Applies `patch` to block `i`'s code in the window; whether it was applied.
    fn apply_patch(&mut self, i: usize, patch: &rewriter::translate::ChainPatch) -> bool {
        let Some(b) = self.blocks.get(i).map(|b| &b.block) else {
            return false;
        };
        let start = b.tc_address.wrapping_sub(WINDOW_START) as usize;
        let len = b.bytes.len();
        self.mem
            .bytes_mut()
            .get_mut(start..start + len)
            .is_some_and(|bytes| patch.apply(bytes).is_ok())
    }

    /// Notes that `what` leads to block `to`, so relies on the mapping of its pages.
    fn relies(&mut self, to: usize, what: Reliant) {
        let Some(t) = self.blocks.get(to) else {
            return;
        };
        let page_of_block =
            |p: &rewriter::translate::GuestPage| (p.linear & !(PAGE_SIZE - 1), page_of(p.phys));
        let (Some(first), Some(last)) = (t.block.pages.first(), t.block.pages.last()) else {
            return;
        };
        let relied = Relied {
            what,
            global: t.global,
            user: t.key.user,
            pages: [page_of_block(first), page_of_block(last)],
        };
        for p in &t.block.pages {
            let page = p.linear & !(PAGE_SIZE - 1);
            self.relying.entry(page).or_default().push(relied);
            self.reliants += 1;
            if !t.global {
                self.local.insert(page);
            }
        }
        if self.reliants > self.reliants_kept.saturating_mul(2).max(RELIANTS_COMPACT) {
            self.compact_reliants();
        }
    }

    /// Forgets what no longer leads anywhere: entries of dead blocks, lookup entries
    /// overwritten since, chains out of or into dead blocks (the pages of global blocks
    /// are otherwise looked at only by INVLPG, so these would pile up).
    fn compact_reliants(&mut self) {
        let (blocks, tables) = (&self.blocks, &self.tables);
        let alive = |i: usize| blocks.get(i).is_some_and(|b| b.alive);
        let mut kept = 0;
        self.relying.retain(|_, list| {
            list.retain(|r| match r.what {
                Reliant::Chain { from, to, .. } => alive(from) && alive(to),
                Reliant::Entry {
                    table,
                    index,
                    block,
                } => {
                    alive(block)
                        && tables
                            .get(table as usize)
                            .is_some_and(|s| s.holds(index, block))
                }
            });
            list.sort_unstable();
            list.dedup();
            kept += list.len();
            !list.is_empty()
        });
        let relying = &self.relying;
        self.local.retain(|page| relying.contains_key(page));
        self.reliants = kept;
        self.reliants_kept = kept;
    }

    fn unchain(&mut self, from: usize, exit: usize) {
        let Some(f) = self.blocks.get(from).filter(|f| f.alive) else {
            return;
        };
        if let Ok(patch) = f.block.unchain(exit) {
            if self.apply_patch(from, &patch) {
                self.stats.unchains += 1;
            }
        }
    }

    /// Makes indirect branches of `i`'s privilege level find block `i` for its guest
    /// EIP (after a lookup miss) while the guest runs in the context `now` (the key it
    /// was found by), clearing the table first if it was filled for another code
    /// segment, stack size, GS rebase or FPU setting.
    pub fn enter_lookup(&mut self, i: usize, now: &Key) {
        let Some(b) = self.blocks.get(i).filter(|b| b.alive) else {
            return;
        };
        let (key, entry) = (b.key, b.block.lookup_entry());
        let table = key.table();
        if table == Table::Empty {
            return;
        }
        self.use_table(table, TableContext::of(now));
        let index = rewriter::translate::lookup_index(key.eip);
        let at = table_offset(table) + index * LOOKUP_ENTRY_SIZE;
        let Some(bytes) = self.mem.bytes_mut().get_mut(at..at + LOOKUP_ENTRY_SIZE) else {
            return;
        };
        bytes.copy_from_slice(&lookup_entry_bytes(key.eip, entry));
        if let Some(state) = self.tables.get_mut(table as usize) {
            state.filled.insert(index, i);
        }
        if key.paging {
            self.relies(
                i,
                Reliant::Entry {
                    table,
                    index,
                    block: i,
                },
            );
        }
        self.stats.lookups_missed += 1;
    }

    /// Makes the lookup table block `i` reads hold only entries right for the context
    /// `now` it is entered in (code and stack segments, selectors, GS rebase, FPU and
    /// inline settings): indirect branches of the block are about to look targets up
    /// there.
    pub fn prepare_table(&mut self, i: usize, now: &Key) {
        if let Some(key) = self.blocks.get(i).map(|b| b.key) {
            self.use_table(key.table(), TableContext::of(now));
        }
        // User code runs with GS operands rebased or not, as it did not: chains made for
        // the other way go.
        if now.user && now.gs_rebase != self.base_context {
            for (from, exit) in std::mem::take(&mut self.base_chains) {
                self.unchain(from, exit);
            }
            self.base_context = now.gs_rebase;
        }
    }

    /// Makes `table` hold only entries right for `context`, which it holds from now on:
    /// after a change of GS rebase alone, the entries of blocks that serve both ways
    /// stay; after any other change, none.
    fn use_table(&mut self, table: Table, context: TableContext) {
        let Some(old) = self.tables.get(table as usize).map(|s| s.context) else {
            return;
        };
        if old == Some(context) {
            return;
        }
        let base_only = old.is_some_and(|old| old.any_base() == context.any_base());
        if base_only {
            let blocks = &self.blocks;
            if let Some(state) = self.tables.get_mut(table as usize) {
                let stale = |i: usize| blocks.get(i).is_none_or(|b| b.key.gs_rebase);
                drop_entries(state, table, self.mem.bytes_mut(), &self.empty_table, stale);
            }
        } else {
            self.clear_table(table);
        }
        if let Some(state) = self.tables.get_mut(table as usize) {
            state.context = Some(context);
        }
    }

    fn clear_table(&mut self, table: Table) {
        let Some(state) = self.tables.get_mut(table as usize) else {
            return;
        };
        let filled = std::mem::take(state).filled;
        let (bytes, empty) = (self.mem.bytes_mut(), &self.empty_table);
        if filled.len() < LOOKUP_TABLE_SIZE / LOOKUP_ENTRY_SIZE / 8 {
            for &index in filled.keys() {
                reset_entry(bytes, empty, table, index);
            }
        } else {
            let at = table_offset(table);
            let whole = bytes.get_mut(at..at + LOOKUP_TABLE_SIZE);
            if let (Some(to), Some(from)) = (whole, empty.get(..LOOKUP_TABLE_SIZE)) {
                to.copy_from_slice(from);
            }
        }
        if !filled.is_empty() {
            self.stats.table_clears += 1;
        }
    }

    /// The guest's linear→physical mapping may have changed (`change`): lookup entries
    /// and chains across linear pages that lead to a block it may concern are undone,
    /// unless `still_mapped(linear, phys, user)` says every linear page of the block
    /// still maps the physical page it came from, for a fetch at its privilege level and
    /// with its accessed bits already set (a fresh walk would find the same code). A CR3
    /// write concerns no block translated from global pages (CR4.PGE): the CPU keeps
    /// those translations across CR3 writes too, and the guest must INVLPG or toggle PGE
    /// to change them.
    pub fn address_space_changed(
        &mut self,
        change: SpaceChange,
        mut still_mapped: impl FnMut(u32, u64, bool) -> bool,
    ) {
        let pages: Vec<u32> = match change {
            SpaceChange::Cr3 => self.local.iter().copied().collect(),
            SpaceChange::Pages { first, last } => {
                self.relying.range(first..=last).map(|(&p, _)| p).collect()
            }
            SpaceChange::All => self.relying.keys().copied().collect(),
        };
        // Page verdicts: (linear, physical, user) → still mapped.
        let mut known: HashMap<(u32, u64, bool), bool> = HashMap::default();
        let mut undo = Vec::new();
        let mut cleared = false;
        for page in pages {
            let Some(list) = self.relying.get_mut(&page) else {
                continue;
            };
            let before = list.len();
            let mut local = false;
            // The reliants of one page mostly ask about the same page: the last answer
            // first, then the map.
            let mut last: Option<((u32, u64, bool), bool)> = None;
            list.retain(|r| {
                let valid = (change == SpaceChange::Cr3 && r.global)
                    || change != SpaceChange::All
                        && r.pages.iter().all(|&(linear, phys)| {
                            let page = (linear, phys, r.user);
                            match last {
                                Some((p, verdict)) if p == page => verdict,
                                _ => {
                                    let verdict = *known
                                        .entry(page)
                                        .or_insert_with(|| still_mapped(linear, phys, r.user));
                                    last = Some((page, verdict));
                                    verdict
                                }
                            }
                        });
                if valid {
                    local |= !r.global;
                } else {
                    undo.push(r.what);
                }
                valid
            });
            self.reliants = self.reliants.saturating_sub(before - list.len());
            if list.is_empty() {
                self.relying.remove(&page);
            }
            if local {
                self.local.insert(page);
            } else {
                self.local.remove(&page);
            }
        }
        for what in undo {
            match what {
                Reliant::Chain { from, exit, .. } => self.unchain(from, exit),
                Reliant::Entry {
                    table,
                    index,
                    block,
                } => cleared |= self.drop_entry(table, index, block),
            }
        }
        if cleared {
            self.stats.table_clears += 1;
        }
    }

    /// Drops the blocks that came from guest-physical `page` (it was written).
    pub fn invalidate_page(&mut self, page: GuestPhys) {
        let Some(list) = self.by_page.remove(&u64::from(page.page().raw())) else {
            return;
        };
        for i in list {
            if self.blocks.get(i).is_some_and(|b| b.alive) {
                self.stats.invalidations += 1;
                self.drop_block(i);
            }
        }
    }

    fn drop_block(&mut self, i: usize) {
        let Some(b) = self.blocks.get_mut(i).filter(|b| b.alive) else {
            return;
        };
        let incoming = std::mem::take(&mut b.incoming);
        let key = b.key;
        for (from, exit) in incoming {
            self.unchain(from, exit);
        }
        if let Some(b) = self.blocks.get_mut(i) {
            b.alive = false;
        }
        if self.by_key.get(&key) == Some(&i) {
            self.by_key.remove(&key);
        }
        // Its lookup entry goes back to the empty table's, if it is still there.
        let index = rewriter::translate::lookup_index(key.eip);
        self.drop_entry(key.table(), index, i);
    }

    /// Puts entry `index` of `table` back to the empty table's if it leads to `block`;
    /// whether it did.
    fn drop_entry(&mut self, table: Table, index: usize, block: usize) -> bool {
        let Some(state) = self
            .tables
            .get_mut(table as usize)
            .filter(|s| s.holds(index, block))
        else {
            return false;
        };
        state.filled.remove(&index);
        reset_entry(self.mem.bytes_mut(), &self.empty_table, table, index);
        true
    }

    /// Empties the cache: every block, table entry and chain goes; translated code is
    /// overwritten with INT3.
    pub fn flush(&mut self) {
        self.blocks.clear();
        self.by_tc.clear();
        let used = ((self.next.saturating_sub(CODE_OFFSET) / STUB_GRANULE) as usize)
            .saturating_add(1)
            .min(self.by_stub.len());
        if let Some(stubs) = self.by_stub.get_mut(..used) {
            stubs.fill(0);
        }
        self.by_stub_else.clear();
        self.gs_sites.clear();
        self.by_key.clear();
        self.recent.fill(None);
        self.by_page.clear();
        self.relying.clear();
        self.local.clear();
        self.base_chains.clear();
        self.reliants = 0;
        self.reliants_kept = 0;
        self.clear_table(Table::Kernel);
        self.clear_table(Table::User);
        let used = self.next as usize;
        if let Some(code) = self.mem.bytes_mut().get_mut(CODE_OFFSET as usize..used) {
            code.fill(OP_INT3);
        }
        self.next = CODE_OFFSET;
        self.stats.flushes += 1;
    }
}

/// Empties the entries of `table` (whose state is `state`, in the window's `bytes`) that
/// lead to a block `stale` names.
fn drop_entries(
    state: &mut TableState,
    table: Table,
    bytes: &mut [u8],
    empty: &[u8],
    mut stale: impl FnMut(usize) -> bool,
) {
    state.filled.retain(|&index, &mut block| {
        if !stale(block) {
            return true;
        }
        reset_entry(bytes, empty, table, index);
        false
    });
}

/// Puts entry `index` of `table`, in the window's `bytes`, back to the empty table's.
fn reset_entry(bytes: &mut [u8], empty: &[u8], table: Table, index: usize) {
    let entry = index * LOOKUP_ENTRY_SIZE..(index + 1) * LOOKUP_ENTRY_SIZE;
    let at = table_offset(table);
    let to = bytes.get_mut(at + entry.start..at + entry.end);
    if let (Some(to), Some(from)) = (to, empty.get(entry)) {
        to.copy_from_slice(from);
    }
}

/// Offset of `table` in the window.
fn table_offset(t: Table) -> usize {
    (table_address(t) - WINDOW_START) as usize
}

/// A lookup entry: the guest EIP, then the TC address it jumps to.
fn lookup_entry_bytes(eip: u32, tc: u32) -> [u8; LOOKUP_ENTRY_SIZE] {
    let mut bytes = [0; LOOKUP_ENTRY_SIZE];
    let fields = eip.to_le_bytes().into_iter().chain(tc.to_le_bytes());
    for (b, f) in bytes.iter_mut().zip(fields) {
        *b = f;
    }
    bytes
}

/// The window range of `len` bytes at `offset` in the vCPU page, if they lie inside it.
fn vcpu_range(offset: u32, len: usize) -> Option<std::ops::Range<usize>> {
    let end = usize::try_from(offset).ok()?.checked_add(len)?;
    (end <= TranslationCache::vcpu_page_len() as usize)
        .then(|| VCPU_OFFSET as usize + end - len..VCPU_OFFSET as usize + end)
}

/// Writes the window's fixed contents into `bytes` (its memory, zeroed): INT3 over the
/// gate page, the far pointer and trampoline of the gate, and three empty lookup
/// tables. `None` if the layout does not fit.
fn lay_out(bytes: &mut [u8], empty: &LookupTable) -> Option<()> {
    let mut put = |at: u32, src: &[u8]| -> Option<()> {
        let at = (at - WINDOW_START) as usize;
        bytes
            .get_mut(at..at.checked_add(src.len())?)?
            .copy_from_slice(src);
        Some(())
    };
    put(GATE, &[OP_INT3; PAGE_SIZE as usize])?;
    for t in [Table::Kernel, Table::User, Table::Empty] {
        put(table_address(t), empty.as_bytes())?;
    }
    put(GATE_POINTER, &GATE_TRAMPOLINE.to_le_bytes())?;
    put(GATE_POINTER + 4, &crate::hostcpu::HOST_CS64.to_le_bytes())?;
    put(GATE_TRAMPOLINE, &crate::hostcpu::gate_trampoline())?;
    // The code area is written as it opens (TranslationCache::make_room): unused code
    // space traps, on INT3 (which the monitor refuses as not a gate exit) or on its
    // protection past the open part.
    Some(())
}

fn page_of(phys: u64) -> u64 {
    phys & !u64::from(PAGE_SIZE - 1)
}

/// Maps guest-physical pages `pages` (one, or two for an access straddling a page end)
/// at the bounce pages, writable when `writable`, and nothing after them.
///
/// # Errors
/// [`MemoryError`] when the host refuses.
pub fn map_bounce(
    space: &mut LinearSpace,
    ram: &crate::memory::GuestRam,
    pages: &[GuestPhys],
    writable: bool,
) -> Result<(), MemoryError> {
    let prot = if writable { Prot::RW } else { Prot::R };
    for (n, page) in (0u32..).zip(pages.iter().take(2)) {
        let at = GuestLinear(BOUNCE + n * PAGE_SIZE);
        space.map_monitor(at, PAGE_SIZE, prot, ram.fd(), u64::from(page.page().raw()))?;
    }
    if pages.len() < 2 {
        space.map_monitor(
            GuestLinear(BOUNCE + PAGE_SIZE),
            PAGE_SIZE,
            Prot::NONE,
            ram.fd(),
            0,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stubs_pack_and_unpack() {
        for (block, index) in [(0, 0), (1, 7), (600_000, 300), ((1 << 22) - 2, 1023)] {
            let packed = pack_stub(block, index).unwrap();
            assert_ne!(packed, 0, "0 is no stub");
            assert_eq!(unpack_stub(packed), Some((block, index)));
        }
        assert_eq!(pack_stub((1 << 22) - 1, 0), None);
        assert_eq!(pack_stub(0, 1024), None);
        assert_eq!(unpack_stub(0), None);
    }

    #[test]
    fn stub_slots_cover_the_code_area() {
        let first = WINDOW_START + CODE_OFFSET;
        assert_eq!(stub_slot(first), Some(0));
        assert_eq!(stub_slot(first + STUB_GRANULE - 1), Some(0));
        assert_eq!(stub_slot(first + STUB_GRANULE), Some(1));
        assert_eq!(stub_slot(first - 1), None);
        let last = stub_slot(WINDOW_START + (WINDOW_SIZE - 1)).unwrap();
        assert_eq!(
            last + 1,
            ((WINDOW_SIZE - CODE_OFFSET) / STUB_GRANULE) as usize
        );
    }
}
