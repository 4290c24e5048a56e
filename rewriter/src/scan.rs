//! Finding instruction boundaries in guest code (ARCHITECTURE §5).
//!
//! In-place rewriting is only safe on real instruction starts: a trap byte written into
//! the middle of an instruction changes that instruction. Boundaries are found the way
//! a careful disassembler does it:
//!
//! 1. *Recursive descent* from the known entry points, following direct jumps, branches
//!    and calls that stay inside the scanned range. These starts are certain (execution
//!    reaches them) as long as the entry points are.
//! 2. A *linear sweep* over whatever the descent did not reach, synchronised on the
//!    starts already known: a sweep decode that would run over a known start is
//!    discarded and the sweep resynchronises one byte further on.
//!
//! Bytes that do not decode end a descent path; in the sweep they are counted and
//! skipped one at a time.

use std::collections::BTreeMap;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction};
use shadow_paging::PAGE_SIZE;

use crate::class::{classify, flow_of, Action, Class, Flow};

/// The fewest undecodable bytes that make a swept gap data (page scans).
pub const DATA_GAP_MIN_INVALID: usize = 8;
/// A swept gap is data only if its undecodable bytes are at most this far apart on
/// average.
pub const DATA_GAP_INVALID_SPACING: usize = 256;

/// Longest IA-32 instruction, in bytes; longer encodings raise #GP.
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// The size of the code segment a page is executed through: what decoding its bytes
/// depends on besides the bytes (SDM Vol. 3A §3.4.5, the D flag; real mode is 16-bit).
///
/// The same bytes decode to other instructions, with other boundaries, in 16-bit and in
/// 32-bit code (`B8 38 00 8E D8` is `mov eax, 0xd88e0038` in one and `mov ax, 0x38;
/// mov ds, ax` in the other), so a scan holds only for the size it was made with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CodeSize {
    /// 32-bit code (CS.D = 1): EIP wraps at 4 GiB, so a page decodes the same whatever
    /// the segment's base.
    #[default]
    Bits32,
    /// 16-bit code (CS.D = 0, and real mode): 16-bit default operand and address sizes,
    /// and near branches wrap IP at 64 KiB.
    Bits16 {
        /// The IP (offset in CS) of the page's first byte, modulo 64 KiB: the page's
        /// linear address minus the CS base. Where IP wraps depends on it.
        page_ip: u16,
    },
}

impl CodeSize {
    /// The size of code at linear `page` run through a code segment with D flag
    /// `code_32` and linear base `cs_base`.
    pub fn of_segment(code_32: bool, cs_base: u32, page: u32) -> Self {
        if code_32 {
            CodeSize::Bits32
        } else {
            let page_ip = page.wrapping_sub(cs_base) & 0xffff;
            CodeSize::Bits16 {
                page_ip: u16::try_from(page_ip).unwrap_or(0),
            }
        }
    }

    /// The decoder's bitness: 16 or 32.
    pub fn bitness(self) -> u32 {
        match self {
            CodeSize::Bits32 => 32,
            CodeSize::Bits16 { .. } => 16,
        }
    }
}

/// Reads guest code.
pub trait CodeMemory {
    /// Copies up to `buf.len()` bytes at `addr` into `buf` and returns how many were
    /// readable: short at the end of readable memory, 0 if none.
    fn read(&self, addr: u32, buf: &mut [u8]) -> usize;
}

impl<M: CodeMemory + ?Sized> CodeMemory for &M {
    fn read(&self, addr: u32, buf: &mut [u8]) -> usize {
        (**self).read(addr, buf)
    }
}

/// Guest code held in one contiguous buffer at a base address; everything outside it is
/// unreadable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferMemory {
    /// Address of `bytes[0]`.
    pub base: u32,
    /// The memory's contents.
    pub bytes: Vec<u8>,
}

impl BufferMemory {
    /// Memory holding `bytes` at `base`.
    pub fn new(base: u32, bytes: Vec<u8>) -> Self {
        Self { base, bytes }
    }

    fn range(&self, addr: u32, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        if start >= self.bytes.len() {
            return None;
        }
        Some(start..self.bytes.len().min(start.saturating_add(len)))
    }
}

impl CodeMemory for BufferMemory {
    fn read(&self, addr: u32, buf: &mut [u8]) -> usize {
        let Some(src) = self.range(addr, buf.len()).and_then(|r| self.bytes.get(r)) else {
            return 0;
        };
        let Some(dst) = buf.get_mut(..src.len()) else {
            return 0;
        };
        dst.copy_from_slice(src);
        src.len()
    }
}

/// One instruction that is not [`Class::Innocuous`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    /// Address of its first byte.
    pub address: u32,
    /// Its length in bytes (1–15).
    pub length: u8,
    /// Its class.
    pub class: Class,
    /// The decoded instruction. Its IP is `address` in 32-bit code and the offset in CS
    /// (IP) in 16-bit code; its code size says which.
    pub instruction: Instruction,
}

/// The result of scanning one guest page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageScan {
    /// Address of the page (4 KiB aligned).
    pub page: u32,
    /// The code size the page was decoded with.
    pub size: CodeSize,
    /// Instruction starts inside the page, sorted.
    pub starts: Vec<u32>,
    /// The instructions inside the page that are not innocuous, sorted by address; those
    /// whose action is [`Action::Patch`] are what the patcher rewrites.
    pub sites: Vec<Site>,
    /// Direct branch targets, and fall-through addresses, of reached code that lie
    /// outside the page; sorted, without duplicates.
    pub exits: Vec<u32>,
    /// One past the last byte the found instructions occupy: at least the page end, more
    /// when an instruction straddles it (the scan then depends on the next page's bytes).
    /// A `u64` because the page end of the top page is 2^32.
    pub straddle_end: u64,
    /// Offsets at which the sweep found no valid instruction (one per byte skipped), plus
    /// reached addresses that did not decode.
    pub invalid_bytes: usize,
    /// Reached instruction starts that lie inside another reached instruction (code that
    /// jumps into the middle of an instruction). Patching either may change the other.
    pub overlaps: Vec<u32>,
}

impl PageScan {
    /// Sites whose action is [`Action::Patch`].
    pub fn patch_sites(&self) -> impl Iterator<Item = &Site> {
        self.sites
            .iter()
            .filter(|s| s.class.action() == Action::Patch)
    }

    /// Whether `addr` is a known instruction start inside this page.
    pub fn is_start(&self, addr: u32) -> bool {
        self.starts.binary_search(&addr).is_ok()
    }
}

/// The result of scanning a whole region (an ELF text section, a kernel image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionScan {
    /// Address of the region's first byte.
    pub base: u32,
    /// Length of the region in bytes.
    pub len: usize,
    /// Instruction starts, sorted.
    pub starts: Vec<u32>,
    /// The instructions that are not innocuous, sorted by address.
    pub sites: Vec<Site>,
    /// Direct branch targets and fall-through addresses of reached code outside the
    /// region; sorted, without duplicates.
    pub exits: Vec<u32>,
    /// Bytes where no valid instruction could be decoded.
    pub invalid_bytes: usize,
    /// Reached instruction starts that lie inside another reached instruction.
    pub overlaps: Vec<u32>,
}

/// Scans the 4 KiB page at `page` (rounded down to a page boundary), starting the
/// recursive descent at those `entries` that lie inside it.
///
/// Reads up to 14 bytes past the page end through `mem` for an instruction that
/// straddles into the next page; an instruction that cannot be read completely is
/// invalid. The page's first bytes are swept like any other gap; when they are known to
/// be the tail of an instruction from the previous page, use [`scan_page_after`].
///
/// Its sites are patched in place, where the guest may also read them as data: a swept
/// gap (bytes between instructions the descent proved) full of undecodable bytes is taken
/// for data, and the sensitive-looking sequences in it are not reported as sites.
/// Region scans (the census) report every site.
///
/// `mem`'s addresses are those of the page table the patches will go into (guest
/// physical for the engine). The bytes past the page end must be those that follow the
/// page in the guest's *linear* view, so an engine's `CodeMemory` maps
/// `page + 4096 ..` to the physical page that follows linearly, or reports them
/// unreadable when that page is not mapped.
///
/// The page is decoded as 32-bit code; [`scan_page_after`] takes the code size.
pub fn scan_page(mem: &impl CodeMemory, page: u32, entries: &[u32]) -> PageScan {
    scan_page_after(mem, page, entries, 0, CodeSize::Bits32)
}

/// [`scan_page`] for code of `size`, in a page whose first `carried_in` bytes are the
/// tail of an instruction that starts in the previous page: the sweep never starts an
/// instruction there (decoding that tail as code would put a trap byte inside the
/// previous page's instruction). An entry point inside the tail is still followed.
///
/// In 16-bit code, branch targets are computed in IP space and mapped back to
/// addresses through the page's IP ([`CodeSize::Bits16`]), so a near branch that wraps
/// IP at 64 KiB lands where the CPU lands.
pub fn scan_page_after(
    mem: &impl CodeMemory,
    page: u32,
    entries: &[u32],
    carried_in: usize,
    size: CodeSize,
) -> PageScan {
    let page = page & !(PAGE_SIZE - 1);
    const BUF: usize = PAGE_SIZE as usize + MAX_INSTRUCTION_LEN - 1;
    let mut buf = [0u8; BUF];
    // Code cannot run past 4 GiB (the flat segment's limit), so neither may a read.
    let room = (1u64 << 32) - u64::from(page);
    let want = BUF.min(usize::try_from(room).unwrap_or(BUF));
    let got = mem
        .read(page, buf.get_mut(..want).unwrap_or_default())
        .min(want);
    let limit = got.min(PAGE_SIZE as usize);
    let mut lengths = [0u8; PAGE_SIZE as usize];
    let mut core = Core::new(
        buf.get(..got).unwrap_or_default(),
        page,
        lengths.get_mut(..limit).unwrap_or_default(),
        size,
    );
    core.carried_in = carried_in.min(MAX_INSTRUCTION_LEN - 1);
    core.data_gaps = true;
    core.data_prefix = elf_tables_end(buf.get(..limit).unwrap_or_default());
    core.run(entries);
    let straddle_end = u64::from(page) + core.max_end.max(PAGE_SIZE as usize) as u64;
    let out = core.finish();
    PageScan {
        page,
        size,
        starts: out.starts,
        sites: out.sites,
        exits: out.exits,
        straddle_end,
        invalid_bytes: out.invalid_bytes,
        overlaps: out.overlaps,
    }
}

/// Where the code of an ELF image that starts a page may begin: 0 for a page that does
/// not start with a 32-bit ELF header. A page that does (a shared object mapped whole,
/// such as the kernel's vDSO) holds the ELF and program headers and, before its text, the
/// dynamic symbol tables, which a C library reads as data to look symbols up; patching
/// what the sweep takes for instructions there would corrupt them. For a shared object
/// linked at 0 whose entry point lies in the page past the headers, everything before
/// the entry is taken for headers and tables; otherwise the headers alone.
pub fn elf_tables_end(page: &[u8]) -> usize {
    /// The ELF header's size (ELFCLASS32).
    const EHDR: usize = 52;
    const ET_DYN: u16 = 3;
    let u16_at = |at: usize| {
        page.get(at..at + 2)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map_or(0, u16::from_le_bytes)
    };
    let u32_at = |at: usize| {
        page.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_le_bytes)
    };
    // Magic, ELFCLASS32, ELFDATA2LSB.
    if page.len() < EHDR || page.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 1, 1][..]) {
        return 0;
    }
    let program_headers = usize::try_from(u32_at(28)).unwrap_or(usize::MAX);
    let headers = program_headers
        .saturating_add(usize::from(u16_at(42)) * usize::from(u16_at(44)))
        .max(EHDR);
    let entry = usize::try_from(u32_at(24)).unwrap_or(usize::MAX);
    let end = if u16_at(16) == ET_DYN && entry > headers && entry < page.len() {
        entry
    } else {
        headers
    };
    end.min(page.len())
}

/// Scans a whole region of code at `base` with the same algorithm as [`scan_page`]:
/// recursive descent from `entries` (those inside the region), then a synchronised
/// sweep. Bytes beyond 4 GiB are ignored. Instructions may not extend past the region.
pub fn scan_region(bytes: &[u8], base: u32, entries: &[u32]) -> RegionScan {
    let room = (1u64 << 32) - u64::from(base);
    let bytes = bytes
        .get(..usize::try_from(room).unwrap_or(usize::MAX))
        .unwrap_or(bytes);
    let mut lengths = vec![0u8; bytes.len()];
    let mut core = Core::new(bytes, base, &mut lengths, CodeSize::Bits32);
    core.run(entries);
    let out = core.finish();
    RegionScan {
        base,
        len: bytes.len(),
        starts: out.starts,
        sites: out.sites,
        exits: out.exits,
        invalid_bytes: out.invalid_bytes,
        overlaps: out.overlaps,
    }
}

struct CoreOutput {
    starts: Vec<u32>,
    sites: Vec<Site>,
    exits: Vec<u32>,
    invalid_bytes: usize,
    overlaps: Vec<u32>,
}

/// The boundary finder shared by pages and regions.
///
/// `bytes` may extend past `lengths.len()`: instructions may *start* only at offsets
/// below `lengths.len()` but may read into the rest (the next page's first bytes).
struct Core<'a> {
    base: u32,
    /// The decoder's IP at `base`: `base` itself in 32-bit code, the page's IP in 16-bit
    /// code. Branch targets come back in IP space and are mapped to addresses through it.
    ip_base: u32,
    /// Length of the instruction starting at each offset, 0 where none is known. Doubles
    /// as the start bitmap and lets the sweep step over known instructions.
    lengths: &'a mut [u8],
    decoder: Decoder<'a>,
    instr: Instruction,
    /// Instruction starts in address order; the sweep visits every offset in order, so it
    /// collects them.
    starts: Vec<u32>,
    sites: Vec<Site>,
    exits: Vec<u32>,
    overlaps: Vec<u32>,
    invalid_bytes: usize,
    max_end: usize,
    work: Vec<usize>,
    /// Leading bytes that belong to an instruction of the previous page.
    carried_in: usize,
    /// Treat a swept gap that holds an undecodable byte as data: its sites are dropped
    /// (page scans, whose sites are patched in place; see [`scan_page_after`]).
    data_gaps: bool,
    /// Leading bytes the sweep takes for data (an ELF image's headers and tables, see
    /// [`elf_tables_end`]); instructions the descent proves there still count.
    data_prefix: usize,
}

impl<'a> Core<'a> {
    fn new(bytes: &'a [u8], base: u32, lengths: &'a mut [u8], size: CodeSize) -> Self {
        let expected_starts = lengths.len() / 3;
        let ip_base = match size {
            CodeSize::Bits32 => base,
            CodeSize::Bits16 { page_ip } => u32::from(page_ip),
        };
        Self {
            base,
            ip_base,
            lengths,
            decoder: Decoder::with_ip(
                size.bitness(),
                bytes,
                u64::from(ip_base),
                DecoderOptions::NONE,
            ),
            instr: Instruction::default(),
            // Compiled IA-32 code averages three to four bytes per instruction.
            starts: Vec::with_capacity(expected_starts),
            sites: Vec::new(),
            exits: Vec::new(),
            overlaps: Vec::new(),
            invalid_bytes: 0,
            max_end: 0,
            work: Vec::new(),
            carried_in: 0,
            data_gaps: false,
            data_prefix: 0,
        }
    }

    fn run(&mut self, entries: &[u32]) {
        for &entry in entries {
            if let Some(offset) = self.offset_of(entry) {
                self.descend(offset);
            }
        }
        self.sweep();
    }

    /// The offset of `addr` if an instruction may start there.
    fn offset_of(&self, addr: u32) -> Option<usize> {
        let offset = usize::try_from(addr.wrapping_sub(self.base)).ok()?;
        (offset < self.lengths.len()).then_some(offset)
    }

    fn address_of(&self, offset: usize) -> Option<u32> {
        u32::try_from(u64::from(self.base) + offset as u64).ok()
    }

    /// Decodes at `offset`; returns the length, or `None` for invalid or truncated bytes.
    fn decode_at(&mut self, offset: usize) -> Option<usize> {
        // The sweep mostly decodes where the previous instruction ended; repositioning
        // only when needed saves a measurable share of the scan.
        if self.decoder.position() != offset {
            // `offset` < lengths.len() <= bytes.len(), so repositioning cannot fail.
            self.decoder.set_position(offset).ok()?;
            self.decoder.set_ip(u64::from(self.ip_base) + offset as u64);
        }
        self.decoder.decode_out(&mut self.instr);
        if self.instr.code() == Code::INVALID {
            None
        } else {
            Some(self.instr.len())
        }
    }

    /// The guest address `offset` bytes into the buffer (a page and one instruction, so
    /// every offset fits 32 bits).
    fn address(&self, offset: usize) -> u32 {
        self.base
            .wrapping_add(u32::try_from(offset).unwrap_or(u32::MAX))
    }

    /// Records the instruction just decoded at `offset` and returns its class.
    fn record(&mut self, offset: usize, len: usize) -> Class {
        // Lengths are 1..=15, so they fit the byte.
        let length = u8::try_from(len).unwrap_or(u8::MAX);
        if let Some(l) = self.lengths.get_mut(offset) {
            *l = length;
        }
        self.max_end = self.max_end.max(offset + len);
        let class = classify(&self.instr);
        if class != Class::Innocuous {
            self.sites.push(Site {
                address: self.address(offset),
                length,
                class,
                instruction: self.instr,
            });
        }
        class
    }

    /// Whether a known instruction covers `offset` without starting there, or starts
    /// strictly inside `offset..offset + len`.
    fn overlaps_known(&self, offset: usize, len: usize) -> bool {
        self.starts_within(offset + 1, offset + len)
            || (1..MAX_INSTRUCTION_LEN.min(offset + 1))
                .any(|back| self.known_len(offset - back) > back)
    }

    /// The length of the known instruction starting at `offset`, 0 if none (or past the
    /// end).
    fn known_len(&self, offset: usize) -> usize {
        self.lengths.get(offset).map_or(0, |&l| usize::from(l))
    }

    /// Whether a known instruction starts in `from..to` (clipped to the buffer).
    fn starts_within(&self, from: usize, to: usize) -> bool {
        let to = to.min(self.lengths.len());
        self.lengths
            .get(from..to)
            .is_some_and(|l| l.iter().any(|&l| l != 0))
    }

    fn exit(&mut self, offset: usize) {
        if let Some(addr) = self.address_of(offset) {
            self.exits.push(addr);
        }
    }

    /// A branch target (in IP space): its offset when an instruction may start there,
    /// else it is recorded as an exit.
    fn target(&mut self, target_ip: u32) -> Option<usize> {
        let target = self.base.wrapping_add(target_ip.wrapping_sub(self.ip_base));
        let t = self.offset_of(target);
        if t.is_none() {
            self.exits.push(target);
        }
        t
    }

    fn descend(&mut self, entry: usize) {
        self.work.push(entry);
        while let Some(mut offset) = self.work.pop() {
            loop {
                if offset >= self.lengths.len() {
                    self.exit(offset);
                    break;
                }
                if self.known_len(offset) != 0 {
                    break;
                }
                let Some(len) = self.decode_at(offset) else {
                    self.invalid_bytes += 1;
                    break;
                };
                if self.overlaps_known(offset, len) {
                    if let Some(addr) = self.address_of(offset) {
                        self.overlaps.push(addr);
                    }
                }
                let class = self.record(offset, len);
                match flow_of(&self.instr, class) {
                    Flow::Sequential | Flow::IndirectCall => offset += len,
                    Flow::Branch(t) | Flow::Call(t) => {
                        if let Some(t) = self.target(t) {
                            self.work.push(t);
                        }
                        offset += len;
                    }
                    Flow::Jump(t) => match self.target(t) {
                        Some(t) => offset = t,
                        None => break,
                    },
                    Flow::Return | Flow::Indirect | Flow::Stop => break,
                }
            }
        }
    }

    fn sweep(&mut self) {
        let mut offset = 0;
        // One past the last byte of the known instructions that start before `offset`.
        // Known instructions may overlap (descent into the middle of an instruction), so
        // the sweep walks through them byte by byte rather than jumping by one length.
        let mut covered = self.carried_in;
        // The current gap (bytes between descent-proven instructions): its first site
        // and whether it holds bytes that do not decode.
        let mut gap_sites = self.sites.len();
        let mut gap_start = 0;
        let mut gap_invalid = 0;
        while offset < self.lengths.len() {
            let known = self.known_len(offset);
            if known != 0 {
                self.end_gap(gap_sites, offset.saturating_sub(gap_start), gap_invalid);
                gap_sites = self.sites.len();
                gap_invalid = 0;
                gap_start = offset + known;
                self.starts.push(self.address(offset));
                covered = covered.max(offset + known);
                let end = (offset + known).min(self.lengths.len());
                // Jump over the instruction unless another one starts inside it.
                offset = if self.starts_within(offset + 1, end) {
                    offset + 1
                } else {
                    end
                };
                continue;
            }
            if offset < covered || offset < self.data_prefix {
                offset += 1;
                continue;
            }
            match self.decode_at(offset) {
                None => {
                    self.invalid_bytes += 1;
                    gap_invalid += 1;
                    offset += 1;
                }
                Some(len) => {
                    if self.starts_within(offset + 1, offset + len) {
                        // Runs over a start the descent proved: this decode is out of
                        // step with the real instruction stream.
                        offset += 1;
                    } else {
                        // Nothing starts inside it, so its interior can be skipped.
                        self.record(offset, len);
                        self.starts.push(self.address(offset));
                        covered = offset + len;
                        offset += len;
                    }
                }
            }
        }
        self.end_gap(
            gap_sites,
            self.lengths.len().saturating_sub(gap_start),
            gap_invalid,
        );
    }

    /// Ends a swept gap of `len` bytes whose sites start at index `first` and in which
    /// `invalid` bytes did not decode: with `data_gaps`, a gap with undecodable bytes
    /// throughout ([`DATA_GAP_MIN_INVALID`] or more, at least one per
    /// [`DATA_GAP_INVALID_SPACING`] bytes) is data, and the sensitive-looking byte
    /// sequences the sweep found in it are not sites. Compiled code has no undecodable
    /// bytes but the odd deliberate #UD; compressed data has one every hundred bytes or
    /// so. Patching it would corrupt data the guest reads, such as a compressed kernel
    /// sharing a page with its decompressor's code.
    fn end_gap(&mut self, first: usize, len: usize, invalid: usize) {
        if self.data_gaps
            && invalid >= DATA_GAP_MIN_INVALID
            && invalid * DATA_GAP_INVALID_SPACING >= len
        {
            self.sites.truncate(first);
        }
    }

    fn finish(mut self) -> CoreOutput {
        self.sites.sort_unstable_by_key(|s| s.address);
        self.exits.sort_unstable();
        self.exits.dedup();
        self.overlaps.sort_unstable();
        self.overlaps.dedup();
        CoreOutput {
            starts: self.starts,
            sites: self.sites,
            exits: self.exits,
            invalid_bytes: self.invalid_bytes,
            overlaps: self.overlaps,
        }
    }
}

/// Counts of what a scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Bytes scanned.
    pub bytes: u64,
    /// Instructions decoded.
    pub instructions: u64,
    /// Bytes where no valid instruction could be decoded.
    pub invalid_bytes: u64,
    /// Instructions per class (classes with no instruction are absent).
    pub classes: BTreeMap<Class, u64>,
    /// Instructions per action (actions with no instruction are absent).
    pub actions: BTreeMap<Action, u64>,
}

impl Census {
    /// The census of one region scan.
    pub fn from_region(scan: &RegionScan) -> Self {
        Self::build(
            scan.len as u64,
            scan.starts.len(),
            &scan.sites,
            scan.invalid_bytes,
        )
    }

    /// The census of one page scan.
    pub fn from_page(scan: &PageScan) -> Self {
        Self::build(
            u64::from(PAGE_SIZE),
            scan.starts.len(),
            &scan.sites,
            scan.invalid_bytes,
        )
    }

    fn build(bytes: u64, instructions: usize, sites: &[Site], invalid: usize) -> Self {
        let mut census = Census {
            bytes,
            instructions: instructions as u64,
            invalid_bytes: invalid as u64,
            ..Census::default()
        };
        let innocuous = instructions.saturating_sub(sites.len()) as u64;
        if innocuous > 0 {
            census.classes.insert(Class::Innocuous, innocuous);
            census.actions.insert(Action::None, innocuous);
        }
        for site in sites {
            *census.classes.entry(site.class).or_default() += 1;
            *census.actions.entry(site.class.action()).or_default() += 1;
        }
        census
    }

    /// Adds another census to this one (e.g. several text sections of one image).
    pub fn add(&mut self, other: &Census) {
        self.bytes += other.bytes;
        self.instructions += other.instructions;
        self.invalid_bytes += other.invalid_bytes;
        for (class, n) in &other.classes {
            *self.classes.entry(*class).or_default() += n;
        }
        for (action, n) in &other.actions {
            *self.actions.entry(*action).or_default() += n;
        }
    }

    /// Instructions of `class`.
    pub fn class_count(&self, class: Class) -> u64 {
        self.classes.get(&class).copied().unwrap_or(0)
    }

    /// Instructions whose class has `action`.
    pub fn action_count(&self, action: Action) -> u64 {
        self.actions.get(&action).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with(code: &[(u32, &[u8])], fill: u8) -> BufferMemory {
        let mut bytes = vec![fill; 3 * PAGE_SIZE as usize];
        for (offset, c) in code {
            bytes[*offset as usize..*offset as usize + c.len()].copy_from_slice(c);
        }
        BufferMemory::new(0x10_0000, bytes)
    }

    #[test]
    fn descent_follows_branches_and_finds_sites() {
        // 0x1000: pushf; jmp +2; (2 bytes of junk that would desync a sweep); popf; ret
        let mem = page_with(
            &[(0x1000, &[0x9C, 0xEB, 0x02, 0x0F, 0x01, 0x9D, 0xC3])],
            0x90,
        );
        let scan = scan_page(&mem, 0x10_1000, &[0x10_1000]);
        assert_eq!(scan.page, 0x10_1000);
        let patch: Vec<_> = scan.patch_sites().map(|s| (s.address, s.class)).collect();
        assert_eq!(patch, [(0x10_1000, Class::Pushf), (0x10_1005, Class::Popf)]);
        assert!(scan.is_start(0x10_1001) && scan.is_start(0x10_1006));
        assert_eq!(scan.straddle_end, 0x10_2000);
        assert!(scan.exits.is_empty());
    }

    #[test]
    fn an_elf_image_s_headers_and_tables_are_data() {
        // A shared object linked at 0 (a vDSO): the header, then "tables" whose bytes
        // look like CLI and INT 0x80, then its entry at 0x100 with a real CLI.
        let mut page = vec![0x90u8; 0x1000];
        page[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1]);
        page[16..18].copy_from_slice(&3u16.to_le_bytes());
        page[24..28].copy_from_slice(&0x100u32.to_le_bytes());
        page[28..32].copy_from_slice(&52u32.to_le_bytes());
        page[42..44].copy_from_slice(&32u16.to_le_bytes());
        page[44..46].copy_from_slice(&1u16.to_le_bytes());
        page[0x80] = 0xfa;
        page[0xa0..0xa2].copy_from_slice(&[0xcd, 0x80]);
        page[0x100] = 0xfa;
        assert_eq!(elf_tables_end(&page), 0x100);
        let base = 0x10_0000;
        let mem = BufferMemory::new(base, page.clone());
        let scan = scan_page(&mem, base, &[base + 0x100]);
        let sites: Vec<u32> = scan.sites.iter().map(|s| s.address - base).collect();
        assert!(sites.contains(&0x100), "{sites:x?}");
        assert!(sites.iter().all(|&a| a >= 0x100), "{sites:x?}");
        // An entry the descent proves inside the tables still counts.
        let scan = scan_page(&mem, base, &[base + 0x80]);
        assert!(scan.sites.iter().any(|s| s.address == base + 0x80));
        // Without the ELF magic the same bytes are swept as code.
        page[0] = 0;
        assert_eq!(elf_tables_end(&page), 0);
        let mem = BufferMemory::new(base, page);
        let scan = scan_page(&mem, base, &[base + 0x100]);
        assert!(scan.sites.iter().any(|s| s.address == base + 0x80));
    }

    #[test]
    fn a_swept_gap_with_undecodable_bytes_is_data() {
        // 0x1000: ret (the descent's only instruction); then a gap to the page end: popf,
        // pushf, then an undecodable 0F and add al, 0x90 (04 90) over and over (a region
        // scan reports the two sites).
        let mut data = vec![0xC3, 0x9D, 0x9C];
        data.extend([0x0F, 0x04, 0x90].repeat(1364));
        let mem = page_with(&[(0x1000, &data)], 0x90);
        let page = scan_page(&mem, 0x10_1000, &[0x10_1000]);
        assert!(page.invalid_bytes > 0);
        assert_eq!(page.patch_sites().count(), 0, "{:x?}", page.sites);
        let region = scan_region(&mem.bytes[0x1000..0x2000], 0x10_1000, &[0x10_1000]);
        assert_eq!(region.sites.len(), 2);
        // The same gap with one deliberate #UD is code: both sites stay.
        let mem = page_with(&[(0x1000, &[0xC3, 0x9D, 0x0F, 0x04, 0x90, 0x9C])], 0x90);
        let page = scan_page(&mem, 0x10_1000, &[0x10_1000]);
        let patch: Vec<_> = page.patch_sites().map(|s| (s.address, s.class)).collect();
        assert_eq!(patch, [(0x10_1001, Class::Popf), (0x10_1005, Class::Pushf)]);
        // A descent-proven instruction splits the gaps: code after it is judged alone.
        let mut code = vec![0xEB, 0x19, 0x9D];
        code.extend([0x0F, 0x04, 0x90].repeat(8));
        code.extend([0xC3, 0x9C]);
        let mem = page_with(&[(0x1000, &code)], 0x90);
        let page = scan_page(&mem, 0x10_1000, &[0x10_1000]);
        let patch: Vec<_> = page.patch_sites().map(|s| (s.address, s.class)).collect();
        assert_eq!(patch, [(0x10_101c, Class::Pushf)]);
    }

    #[test]
    fn sweep_skips_the_tail_of_an_instruction_from_the_previous_page() {
        // The page starts with the last 4 bytes of a `mov dword [m], 0x00101006` from the
        // previous page: 06 (push es, sensitive) 10 10 00; then rsm; ret.
        let bytes = vec![0x06, 0x10, 0x10, 0x00, 0x0f, 0xaa, 0xc3];
        let mem = BufferMemory::new(0x10_1000, bytes);
        let swept = scan_page(&mem, 0x10_1000, &[]);
        assert!(swept.sites.iter().any(|s| s.address == 0x10_1000));
        let after = scan_page_after(&mem, 0x10_1000, &[], 4, CodeSize::Bits32);
        assert!(
            after.sites.iter().all(|s| s.address != 0x10_1000),
            "{after:?}"
        );
        assert_eq!(after.starts.first(), Some(&0x10_1004));
    }

    #[test]
    fn sweep_is_synchronised_on_descent_starts() {
        // Sweep from 0 would decode `B8 xx xx xx xx` (mov eax, imm32) over the real
        // start at 1 that the descent proves.
        let mem = page_with(&[(0x1000, &[0xB8, 0x9C, 0x90, 0x90, 0x90, 0xC3])], 0x90);
        let scan = scan_page(&mem, 0x10_1000, &[0x10_1001]);
        assert!(scan.is_start(0x10_1001));
        assert_eq!(
            scan.patch_sites().map(|s| s.address).collect::<Vec<_>>(),
            [0x10_1001]
        );
        let without = scan_page(&mem, 0x10_1000, &[]);
        assert!(!without.is_start(0x10_1001));
        assert_eq!(without.patch_sites().count(), 0);
    }

    #[test]
    fn sweep_does_not_start_inside_overlapping_known_instructions() {
        // An entry at the last byte of `jmp rel32` (E9 00 01 00 00): the descent decodes
        // `add [esi+...], cl` (00 8E 18 0F 00 C8) there, and the jmp itself is reached
        // from the page start. The sweep must not then start at the jmp's end, which lies
        // inside the add.
        let mem = page_with(
            &[(
                0x1000,
                &[0xE9, 0x00, 0x01, 0x00, 0x00, 0x8E, 0x18, 0x0F, 0x00, 0xC8],
            )],
            0x90,
        );
        let scan = scan_page(&mem, 0x10_1000, &[0x10_1004, 0x10_1000]);
        assert_eq!(scan.overlaps, [0x10_1000]);
        assert!(scan.is_start(0x10_1004) && !scan.is_start(0x10_1005));
        assert_eq!(
            scan.patch_sites().count(),
            0,
            "mov ds,[eax] at 0x1005 is not a start"
        );
    }

    #[test]
    fn straddling_instruction_reads_next_page_and_exits_are_reported() {
        // `mov eax, imm32` starting 2 bytes before the page end, then falls through.
        let mem = page_with(
            &[
                (0x1FFE, &[0xB8, 1, 2, 3, 4]),
                (0x1000, &[0xE9, 0xF9, 0x0F, 0, 0]),
            ],
            0xCC,
        );
        let scan = scan_page(&mem, 0x10_1000, &[0x10_1000]);
        assert_eq!(scan.straddle_end, 0x10_2003);
        assert!(scan.is_start(0x10_1FFE));
        assert!(scan.exits.contains(&0x10_2003));
        // Unreadable next page: the straddler is invalid and the page end is the end.
        let short = BufferMemory::new(0x10_1000, mem.bytes[0x1000..0x2000].to_vec());
        let scan = scan_page(&short, 0x10_1000, &[0x10_1000]);
        assert!(!scan.is_start(0x10_1FFE));
        assert_eq!(scan.straddle_end, 0x10_2000);
    }

    #[test]
    fn jumps_out_of_the_page_are_exits() {
        let mem = page_with(&[(0x1000, &[0xE9, 0xFB, 0x0F, 0, 0])], 0xCC);
        let scan = scan_page(&mem, 0x10_1000, &[0x10_1000]);
        assert_eq!(scan.exits, [0x10_2000]);
    }

    #[test]
    fn top_page_does_not_wrap() {
        let mem = BufferMemory::new(0xFFFF_F000, vec![0x90; PAGE_SIZE as usize]);
        let scan = scan_page(&mem, 0xFFFF_F000, &[0xFFFF_F000]);
        assert_eq!(scan.starts.len(), PAGE_SIZE as usize);
        assert_eq!(scan.straddle_end, 1 << 32);
        assert!(scan.exits.is_empty());
    }

    #[test]
    fn a_16_bit_scan_patches_16_bit_instruction_boundaries() {
        // mov ax, 0x38; mov ds, ax; mov es, ax; int 0x50; ret in 16-bit code. As 32-bit
        // code the first five bytes are one `mov eax, 0xd88e0038`, and the trap bytes
        // would land at 5 (mov es, eax) instead of 3 and 5.
        let code = [0xB8, 0x38, 0x00, 0x8E, 0xD8, 0x8E, 0xC0, 0xCD, 0x50, 0xC3];
        let mem = page_with(&[(0x1000, &code)], 0x90);
        let size = CodeSize::of_segment(false, 0x10_1000, 0x10_1000);
        assert_eq!(size, CodeSize::Bits16 { page_ip: 0 });
        let scan = scan_page_after(&mem, 0x10_1000, &[0x10_1000], 0, size);
        assert_eq!(scan.size, size);
        let sites: Vec<_> = scan.sites.iter().map(|s| (s.address, s.class)).collect();
        assert_eq!(
            sites,
            [
                (0x10_1003, Class::MovToSreg),
                (0x10_1005, Class::MovToSreg),
                (0x10_1007, Class::Int)
            ]
        );
        assert_eq!(
            &scan.starts[..5],
            [0x10_1000, 0x10_1003, 0x10_1005, 0x10_1007, 0x10_1009]
        );
        // The instructions are 16-bit ones, their IP the offset in CS.
        let site = scan.sites[0].instruction;
        assert_eq!(site.code(), Code::Mov_Sreg_rm16);
        assert_eq!(site.ip(), 3);
        let as_32 = scan_page(&mem, 0x10_1000, &[0x10_1000]);
        assert_eq!(as_32.size, CodeSize::Bits32);
        assert!(!as_32.is_start(0x10_1003));
        assert_eq!(as_32.sites[0].address, 0x10_1005);
    }

    #[test]
    fn a_16_bit_scan_follows_branches_in_ip_space() {
        // jmp short +0x1e to a pushf at 0x20; before it, at 0x1e, 66 B8 (mov eax, imm32 in
        // 16-bit code) that a sweep from the page start would run over the pushf with.
        let mem = page_with(
            &[(0x1000, &[0xEB, 0x1E]), (0x101E, &[0x66, 0xB8, 0x9C, 0xC3])],
            0x90,
        );
        // The page at linear 0x10_1000 is IP 0x1000 of its segment (base 0x10_0000).
        let size = CodeSize::of_segment(false, 0x10_0000, 0x10_1000);
        assert_eq!(size, CodeSize::Bits16 { page_ip: 0x1000 });
        let scan = scan_page_after(&mem, 0x10_1000, &[0x10_1000], 0, size);
        assert!(scan.is_start(0x10_1020));
        let patch: Vec<_> = scan.patch_sites().map(|s| (s.address, s.class)).collect();
        assert_eq!(patch, [(0x10_1020, Class::Pushf)]);
        assert!(scan.exits.is_empty(), "{:x?}", scan.exits);
        // The same page at IP 0xfff0 (CS base 0xf_1010): the jmp targets IP 0x10010, which
        // wraps to 0x10, linear 0xf_1020 outside the page; the pushf is only swept, inside
        // the mov.
        let size = CodeSize::of_segment(false, 0xf_1010, 0x10_1000);
        assert_eq!(size, CodeSize::Bits16 { page_ip: 0xfff0 });
        let wrapped = scan_page_after(&mem, 0x10_1000, &[0x10_1000], 0, size);
        assert_eq!(wrapped.exits, [0xf_1020]);
        assert!(!wrapped.is_start(0x10_1020));
        assert_eq!(wrapped.patch_sites().count(), 0);
    }

    #[test]
    fn operand_size_prefixes_follow_the_code_size() {
        // 66 B8 imm: `mov eax, imm32` (6 bytes) in 16-bit code, `mov ax, imm16` (4) in
        // 32-bit code; the pushf after it starts at 6 in the one and is an immediate
        // byte in the other.
        let code = [0x66, 0xB8, 0x01, 0x02, 0x03, 0x04, 0x9C, 0xC3];
        let mem = page_with(&[(0x1000, &code)], 0x90);
        let bits16 = CodeSize::Bits16 { page_ip: 0 };
        let scan = scan_page_after(&mem, 0x10_1000, &[0x10_1000], 0, bits16);
        assert_eq!(
            scan.patch_sites().map(|s| s.address).collect::<Vec<_>>(),
            [0x10_1006]
        );
        let scan = scan_page(&mem, 0x10_1000, &[0x10_1000]);
        assert!(scan.is_start(0x10_1004) && !scan.is_start(0x10_1006));
    }

    #[test]
    fn census_counts_classes_and_actions() {
        let code = [0x9C, 0x9D, 0xFA, 0x90, 0x90, 0x0F, 0xFF];
        let scan = scan_region(&code, 0x1000, &[]);
        let census = Census::from_region(&scan);
        assert_eq!(census.instructions, 5);
        assert_eq!(census.class_count(Class::Pushf), 1);
        assert_eq!(census.class_count(Class::Cli), 1);
        assert_eq!(census.action_count(Action::Patch), 2);
        assert_eq!(census.action_count(Action::Trap), 1);
        assert_eq!(census.action_count(Action::None), 2);
        // 0F FF needs a ModRM byte that the region does not have.
        assert_eq!(census.invalid_bytes, 2);
    }
}
