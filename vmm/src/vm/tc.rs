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

use std::collections::{BTreeMap, HashMap};

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
/// Blocks start on this alignment.
const BLOCK_ALIGN: u32 = 16;

/// The lookup tables, by use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
/// guest's selectors (blocks are then keyed by them). Off: with it on, Debian's init died
/// intermittently with a null GS after a kernel entry; until that is understood, those
/// reads leave for the monitor, and blocks are not keyed by selectors (a kernel entered
/// from processes with different TLS selectors shares its translations).
pub const SELECTOR_IMMEDIATES: bool = false;

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
    /// The guest's selectors (ES, CS, SS, DS, FS, GS) with [`SELECTOR_IMMEDIATES`]: reads
    /// of them are immediates. Zeros without.
    pub selectors: [u16; 6],
    /// The GS base GS-relative operands are rebased onto (user mode with flat DS and SS
    /// and a 4 GiB GS).
    pub gs_rebase: Option<u32>,
    /// One guest instruction only, never chained nor looked up.
    pub single: bool,
    /// Paging was on.
    pub paging: bool,
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

    /// The translator's configuration for this key, leaving through `gate`.
    pub fn config(&self, gate: Gate) -> TranslateConfig {
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
            inline_if: self.inline_if,
            selectors: SELECTOR_IMMEDIATES.then_some(self.selectors),
            gs_rebase: self.gs_rebase,
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
    gs_rebase: Option<u32>,
    paging: bool,
}

impl TableContext {
    fn of(key: &Key) -> Self {
        Self {
            cs: key.cs,
            stack32: key.stack32,
            exit_fpu: key.exit_fpu,
            inline_if: key.inline_if,
            selectors: key.selectors,
            gs_rebase: key.gs_rebase,
            paging: key.paging,
        }
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
    /// Every page it came from is mapped global (CR4.PGE and PTE.G).
    pub global: bool,
    /// Its exits chained to global blocks.
    chained_global: Vec<usize>,
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
}

/// The translation cache.
pub struct TranslationCache {
    mem: WindowMemory,
    /// Next free offset in the code area (relative to the window).
    next: u32,
    blocks: Vec<TcBlock>,
    by_tc: BTreeMap<u32, usize>,
    by_key: HashMap<Key, usize>,
    by_page: HashMap<u64, Vec<usize>>,
    /// Chains that cross a linear page: undone when the address space changes.
    far_chains: Vec<(usize, usize)>,
    tables: [Option<TableContext>; 2],
    /// The entries written in each table since it was last cleared (cleared one by one
    /// while few: a CR3 switch should not cost a 512 KiB copy).
    filled: [Vec<usize>; 2],
    /// Whether each table holds an entry for a block that is not global (its mapping
    /// may change with CR3).
    non_global: [bool; 2],
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
        {
            let bytes = mem.bytes_mut();
            let gate = GATE_OFFSET as usize;
            bytes[gate..gate + PAGE_SIZE as usize].fill(OP_INT3);
            for t in 0..3 {
                let at = TABLES_OFFSET as usize + t * LOOKUP_TABLE_SIZE;
                bytes[at..at + LOOKUP_TABLE_SIZE].copy_from_slice(empty.as_bytes());
            }
            // Unused code space traps: a stray jump lands on INT3, which the monitor
            // refuses as not a gate exit.
            bytes[CODE_OFFSET as usize..].fill(OP_INT3);
            let ptr = (GATE_POINTER - WINDOW_START) as usize;
            bytes[ptr..ptr + 4].copy_from_slice(&GATE_TRAMPOLINE.to_le_bytes());
            bytes[ptr + 4..ptr + 6].copy_from_slice(&crate::hostcpu::HOST_CS64.to_le_bytes());
            let tramp = (GATE_TRAMPOLINE - WINDOW_START) as usize;
            let code = crate::hostcpu::gate_trampoline();
            bytes[tramp..tramp + code.len()].copy_from_slice(&code);
        }
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
        space.map_monitor(
            at(CODE_OFFSET),
            WINDOW_SIZE - CODE_OFFSET,
            Prot::RX,
            fd,
            u64::from(CODE_OFFSET),
        )?;
        Ok(Self {
            mem,
            next: CODE_OFFSET,
            blocks: Vec::new(),
            by_tc: BTreeMap::new(),
            by_key: HashMap::new(),
            by_page: HashMap::new(),
            far_chains: Vec::new(),
            tables: [None, None],
            filled: [Vec::new(), Vec::new()],
            non_global: [false, false],
            empty_table: empty.as_bytes().to_vec(),
            gate,
            stats: TcStats::default(),
        })
    }

    /// Reads a `u32` scratch slot of the vCPU page.
    pub fn slot(&self, offset: u32) -> u32 {
        let at = (VCPU_OFFSET + offset) as usize;
        let b = &self.mem.bytes()[at..at + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Writes a byte slot of the vCPU page.
    pub fn set_slot_u8(&mut self, offset: u32, value: u8) {
        self.mem.bytes_mut()[(VCPU_OFFSET + offset) as usize] = value;
    }

    /// Writes a dword slot of the vCPU page.
    pub fn set_slot(&mut self, offset: u32, value: u32) {
        let at = (VCPU_OFFSET + offset) as usize;
        self.mem.bytes_mut()[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Reads a byte slot of the vCPU page.
    pub fn slot_u8(&self, offset: u32) -> u8 {
        self.mem.bytes()[(VCPU_OFFSET + offset) as usize]
    }

    /// Length of the vCPU page's segment.
    pub fn vcpu_page_len() -> u32 {
        SCRATCH_LEN.max(PAGE_SIZE)
    }

    /// The live block `key` names, if any.
    pub fn find(&mut self, key: &Key) -> Option<usize> {
        let i = *self.by_key.get(key)?;
        self.stats.hits += 1;
        Some(i)
    }

    /// A block by index.
    pub fn block(&self, i: usize) -> &TcBlock {
        &self.blocks[i]
    }

    /// The block whose code contains TC address `addr`, and the side entry there.
    pub fn at(&self, addr: u32) -> Option<(usize, Option<&SideEntry>)> {
        let (&start, &i) = self.by_tc.range(..=addr).next_back()?;
        let b = &self.blocks[i];
        let end = start.wrapping_add(u32::try_from(b.block.bytes.len()).ok()?);
        if addr >= end {
            return None;
        }
        Some((i, b.block.side.at(addr - start)))
    }

    /// The exit stub whose address the exit slot holds, with its block.
    pub fn exit_for(&self, slot: u32) -> Option<(usize, usize, ExitStub)> {
        let (i, _) = self.at(slot)?;
        let b = &self.blocks[i].block;
        let offset = slot.wrapping_sub(b.tc_address);
        let index = b.side.exits.iter().position(|e| e.offset == offset)?;
        Some((i, index, b.side.exits[index]))
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
        let cfg = key.config(self.gate);
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
            let off = self.next as usize;
            self.mem.bytes_mut()[off..off + len].copy_from_slice(&block.bytes);
            let aligned = (end + u64::from(BLOCK_ALIGN) - 1) & !u64::from(BLOCK_ALIGN - 1);
            self.next = u32::try_from(aligned.min(u64::from(WINDOW_SIZE))).unwrap_or(WINDOW_SIZE);
            self.stats.blocks += 1;
            self.stats.bytes += len as u64;
            let i = self.blocks.len();
            for page in &block.pages {
                self.by_page.entry(page_of(page.phys)).or_default().push(i);
            }
            self.by_tc.insert(block.tc_address, i);
            if let Some(old) = self.by_key.insert(key, i) {
                self.drop_block(old);
            }
            self.blocks.push(TcBlock {
                block,
                key,
                alive: true,
                incoming: Vec::new(),
                global: false,
                chained_global: Vec::new(),
            });
            return Ok(Ok(i));
        }
    }

    /// Marks block `i` as lying entirely in global pages.
    pub fn set_global(&mut self, i: usize) {
        self.blocks[i].global = true;
    }

    /// The guest-physical pages (page addresses) block `i` came from.
    pub fn pages_of(&self, i: usize) -> Vec<GuestPhys> {
        self.blocks[i]
            .block
            .pages
            .iter()
            .filter_map(|p| u32::try_from(page_of(p.phys)).ok().map(GuestPhys))
            .collect()
    }

    /// Chains exit `exit` of block `from` to block `to` when that is sound: both are
    /// ordinary blocks of the same privilege level and context, alive, and the exit is
    /// chainable. Chains that cross a linear page are remembered, so an address-space
    /// change can undo them.
    pub fn chain(&mut self, from: usize, exit: usize, to: usize) {
        let (f, t) = (&self.blocks[from], &self.blocks[to]);
        if !f.alive || !t.alive || f.key.single || t.key.single {
            return;
        }
        if f.key.user != t.key.user || TableContext::of(&f.key) != TableContext::of(&t.key) {
            return;
        }
        let same_page =
            f.one_page() && t.one_page() && f.block.pages[0].linear == t.block.pages[0].linear;
        let Ok(patch) = f.block.chain(exit, t.block.entry()) else {
            return;
        };
        if self.apply_patch(from, &patch).is_err() {
            return;
        }
        self.blocks[to].incoming.push((from, exit));
        if !same_page && self.blocks[from].key.paging {
            self.far_chains.push((from, exit));
            if self.blocks[to].global {
                self.blocks[from].chained_global.push(exit);
            }
        }
        self.stats.chains += 1;
    }

    fn apply_patch(
        &mut self,
        i: usize,
        patch: &rewriter::translate::ChainPatch,
    ) -> Result<(), rewriter::translate::ChainError> {
        let b = &self.blocks[i].block;
        let start = (b.tc_address - WINDOW_START) as usize;
        let len = b.bytes.len();
        let bytes = &mut self.mem.bytes_mut()[start..start + len];
        patch.apply(bytes)
    }

    fn unchain(&mut self, from: usize, exit: usize) {
        if !self.blocks[from].alive {
            return;
        }
        self.blocks[from].chained_global.retain(|&e| e != exit);
        if let Ok(patch) = self.blocks[from].block.unchain(exit) {
            if self.apply_patch(from, &patch).is_ok() {
                self.stats.unchains += 1;
            }
        }
    }

    /// Makes indirect branches of `i`'s privilege level find block `i` for its guest
    /// EIP (after a lookup miss), clearing the table first if it was filled for another
    /// code segment, stack size or FPU setting.
    pub fn enter_lookup(&mut self, i: usize) {
        let key = self.blocks[i].key;
        let table = key.table();
        if table == Table::Empty || !self.blocks[i].alive {
            return;
        }
        let ctx = TableContext::of(&key);
        let slot = table as usize;
        if self.tables[slot] != Some(ctx) {
            self.clear_table(table);
            self.tables[slot] = Some(ctx);
        }
        let index = rewriter::translate::lookup_index(key.eip);
        let at = (table_address(table) - WINDOW_START) as usize + index * LOOKUP_ENTRY_SIZE;
        let entry = self.blocks[i].block.lookup_entry();
        let bytes = &mut self.mem.bytes_mut()[at..at + LOOKUP_ENTRY_SIZE];
        bytes[..4].copy_from_slice(&key.eip.to_le_bytes());
        bytes[4..].copy_from_slice(&entry.to_le_bytes());
        self.filled[slot].push(index);
        if !self.blocks[i].global {
            self.non_global[slot] = true;
        }
        self.stats.lookups_missed += 1;
    }

    /// Makes the lookup table block `i` reads hold only entries translated for the same
    /// context (code and stack segments, selectors, FPU and inline settings): indirect
    /// branches of the block are about to look targets up there.
    pub fn prepare_table(&mut self, i: usize) {
        let key = self.blocks[i].key;
        let table = key.table();
        if table == Table::Empty {
            return;
        }
        let ctx = TableContext::of(&key);
        if self.tables[table as usize] != Some(ctx) {
            self.clear_table(table);
            self.tables[table as usize] = Some(ctx);
        }
    }

    fn clear_table(&mut self, table: Table) {
        let slot = table as usize;
        let Some(filled) = self.filled.get_mut(slot) else {
            return;
        };
        let filled = std::mem::take(filled);
        let at = (table_address(table) - WINDOW_START) as usize;
        let empty = std::mem::take(&mut self.empty_table);
        let bytes = &mut self.mem.bytes_mut()[at..at + LOOKUP_TABLE_SIZE];
        if filled.len() < LOOKUP_TABLE_SIZE / LOOKUP_ENTRY_SIZE / 8 {
            for index in filled.iter().map(|i| i * LOOKUP_ENTRY_SIZE) {
                bytes[index..index + LOOKUP_ENTRY_SIZE]
                    .copy_from_slice(&empty[index..index + LOOKUP_ENTRY_SIZE]);
            }
        } else {
            bytes.copy_from_slice(&empty);
        }
        self.empty_table = empty;
        self.non_global[slot] = false;
        if !filled.is_empty() {
            self.stats.table_clears += 1;
        }
        self.tables[slot] = None;
    }

    /// The guest's linear→physical mapping may have changed: lookups and chains across
    /// linear pages are undone. A CR3 switch (`keep_global`) leaves what lies entirely
    /// in global pages (CR4.PGE): the CPU keeps those translations across CR3 writes too,
    /// and the guest must INVLPG or toggle PGE to change them, which comes here without
    /// `keep_global`.
    pub fn address_space_changed(&mut self, keep_global: bool) {
        for table in [Table::Kernel, Table::User] {
            if !keep_global || self.non_global[table as usize] {
                self.clear_table(table);
            }
        }
        let chains = std::mem::take(&mut self.far_chains);
        for (from, exit) in chains {
            let target_global = self.blocks[from]
                .block
                .side
                .exits
                .get(exit)
                .is_some_and(|_| self.blocks[from].chained_global.contains(&exit));
            if keep_global && self.blocks[from].global && target_global {
                self.far_chains.push((from, exit));
            } else {
                self.unchain(from, exit);
            }
        }
    }

    /// Drops the blocks that came from guest-physical `page` (it was written).
    pub fn invalidate_page(&mut self, page: GuestPhys) {
        let Some(list) = self.by_page.remove(&u64::from(page.page().raw())) else {
            return;
        };
        for i in list {
            if self.blocks[i].alive {
                self.stats.invalidations += 1;
                self.drop_block(i);
            }
        }
    }

    fn drop_block(&mut self, i: usize) {
        if !self.blocks[i].alive {
            return;
        }
        for (from, exit) in std::mem::take(&mut self.blocks[i].incoming) {
            self.unchain(from, exit);
        }
        self.blocks[i].alive = false;
        let key = self.blocks[i].key;
        if self.by_key.get(&key) == Some(&i) {
            self.by_key.remove(&key);
        }
        let table = key.table();
        if table != Table::Empty {
            let at = (table_address(table) - WINDOW_START) as usize
                + rewriter::translate::lookup_index(key.eip) * LOOKUP_ENTRY_SIZE;
            let entry = self.blocks[i].block.lookup_entry();
            let bytes = &self.mem.bytes()[at..at + LOOKUP_ENTRY_SIZE];
            if bytes[4..] == entry.to_le_bytes() {
                let empty = &self.empty_table
                    [at - (table_address(table) - WINDOW_START) as usize..][..LOOKUP_ENTRY_SIZE];
                let empty: [u8; LOOKUP_ENTRY_SIZE] =
                    empty.try_into().unwrap_or([0; LOOKUP_ENTRY_SIZE]);
                self.mem.bytes_mut()[at..at + LOOKUP_ENTRY_SIZE].copy_from_slice(&empty);
            }
        }
    }

    /// Empties the cache: every block, table entry and chain goes; translated code is
    /// overwritten with INT3.
    pub fn flush(&mut self) {
        self.blocks.clear();
        self.by_tc.clear();
        self.by_key.clear();
        self.by_page.clear();
        self.far_chains.clear();
        self.clear_table(Table::Kernel);
        self.clear_table(Table::User);
        let used = self.next as usize;
        self.mem.bytes_mut()[CODE_OFFSET as usize..used].fill(OP_INT3);
        self.next = CODE_OFFSET;
        self.stats.flushes += 1;
    }
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
