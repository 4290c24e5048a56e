//! Rewriting sensitive instructions into traps, and undoing it (ARCHITECTURE §5).
//!
//! Each [`Action::Patch`] site gets [`TRAP_BYTE`] as its first byte; the rest of the
//! instruction is left alone (it is never executed: the trap fires first, and the
//! monitor resumes after the whole original instruction). The [`PatchTable`] remembers,
//! per trap byte, the original bytes and the decoded instruction the monitor emulates.

use std::collections::BTreeMap;

use iced_x86::{CodeSize as IcedCodeSize, Decoder, DecoderOptions, Instruction};
use thiserror::Error;

use crate::class::{Action, Class, TRAP_BYTE};
use shadow_paging::PAGE_SIZE;

use crate::scan::{BufferMemory, CodeMemory, PageScan, Site, MAX_INSTRUCTION_LEN};

/// Writes guest code.
pub trait CodeMemoryMut: CodeMemory {
    /// Copies `data` to `addr` and returns how many bytes were writable (short at the end
    /// of writable memory, 0 if none).
    fn write(&mut self, addr: u32, data: &[u8]) -> usize;
}

impl CodeMemoryMut for BufferMemory {
    fn write(&mut self, addr: u32, data: &[u8]) -> usize {
        let Some(start) = addr
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
        else {
            return 0;
        };
        let Some(dst) = self.bytes.get_mut(start..) else {
            return 0;
        };
        let n = data.len().min(dst.len());
        for (d, s) in dst.iter_mut().zip(data) {
            *d = *s;
        }
        n
    }
}

/// One patched instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patch {
    /// Address of the instruction, where the trap byte now is.
    pub address: u32,
    /// Length of the original instruction (1–15).
    pub length: u8,
    /// The instruction's original bytes; only the first `length` are meaningful.
    pub original: [u8; MAX_INSTRUCTION_LEN],
    /// Its class: one whose action is [`Action::Patch`], or a class the caller asked for
    /// besides ([`PatchTable::patch_with`]).
    pub class: Class,
    /// The original instruction as the scan decoded it (with the page's code size; its IP
    /// is `address` in 32-bit code, the offset in CS in 16-bit code): what the monitor
    /// emulates.
    pub instruction: Instruction,
}

impl Patch {
    /// The original bytes of the instruction.
    pub fn original_bytes(&self) -> &[u8] {
        // `length` is 1–15: every patch is made from a decoded instruction.
        let len = usize::from(self.length);
        self.original.get(..len).unwrap_or(&self.original)
    }
}

/// Why a site could not be patched.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PatchError {
    /// The instruction's bytes could not all be read.
    #[error("cannot read the {length}-byte instruction at {address:#010x}")]
    Unreadable {
        /// Address of the instruction.
        address: u32,
        /// Its length according to the scan.
        length: u8,
    },
    /// Memory no longer holds the instruction the scan found there; rescan the page.
    #[error("the bytes at {address:#010x} no longer hold the scanned {} instruction", class.name())]
    Stale {
        /// Address of the instruction.
        address: u32,
        /// What the scan said was there.
        class: Class,
    },
    /// The address is already patched, as a different instruction than the scan found:
    /// the scan was made of different bytes than the ones patched earlier.
    #[error("{address:#010x} is already patched as {} but the scan found {}", existing.name(), found.name())]
    Conflict {
        /// Address of the instruction.
        address: u32,
        /// The class recorded in the table.
        existing: Class,
        /// The class in the scan.
        found: Class,
    },
    /// The trap byte could not be written.
    #[error("cannot write the trap byte at {address:#010x}")]
    WriteFailed {
        /// Address of the instruction.
        address: u32,
    },
}

/// The patches in force, keyed by the address of their trap byte in whatever address
/// space the caller uses (the engine uses guest-physical addresses).
///
/// Besides the sensitive-instruction patches it holds *pinned entries*: arbitrary
/// instruction starts (kernel-proxy entry points) that carry the trap byte whatever the
/// scanner thinks of the instruction there, and keep it across rescans of their page.
#[derive(Clone, Debug, Default)]
pub struct PatchTable {
    patches: BTreeMap<u32, Patch>,
    /// Pinned entries: address → the original first byte of the instruction there.
    entries: BTreeMap<u32, u8>,
}

impl PatchTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Patches every [`Action::Patch`] site of `scan` and returns how many sites were
    /// newly patched.
    ///
    /// Patching is idempotent: a site already in the table with the same class is left
    /// as it is, so the trap byte is never recorded as an original. Pinned entries of the
    /// scanned page that the guest overwrote are pinned again. Scan a page that may
    /// already hold patches through [`PatchTable::unpatched`], so that the scan sees the
    /// original instructions and boundaries.
    ///
    /// # Errors
    ///
    /// The first site that cannot be patched stops the operation (sites patched before
    /// it stay patched and recorded): see [`PatchError`].
    pub fn patch(
        &mut self,
        mem: &mut impl CodeMemoryMut,
        scan: &PageScan,
    ) -> Result<usize, PatchError> {
        self.patch_with(mem, scan, &[])
    }

    /// [`PatchTable::patch`], also patching the sites of the classes in `also`: classes
    /// that trap natively only with host support the engine may lack (CPUID traps only
    /// where the host has CPUID faulting; elsewhere it must be rewritten).
    ///
    /// # Errors
    ///
    /// As for [`PatchTable::patch`].
    pub fn patch_with(
        &mut self,
        mem: &mut impl CodeMemoryMut,
        scan: &PageScan,
        also: &[Class],
    ) -> Result<usize, PatchError> {
        let patched = self.patch_sites_with(mem, &scan.sites, also)?;
        self.repin_page(mem, scan.page)?;
        Ok(patched)
    }

    /// [`PatchTable::patch`] for any sites (e.g. those of a region scan); sites whose
    /// action is not [`Action::Patch`] are skipped.
    ///
    /// # Errors
    ///
    /// As for [`PatchTable::patch`].
    pub fn patch_sites<'s>(
        &mut self,
        mem: &mut impl CodeMemoryMut,
        sites: impl IntoIterator<Item = &'s Site>,
    ) -> Result<usize, PatchError> {
        self.patch_sites_with(mem, sites, &[])
    }

    /// [`PatchTable::patch_sites`], also patching the sites of the classes in `also`.
    ///
    /// # Errors
    ///
    /// As for [`PatchTable::patch`].
    pub fn patch_sites_with<'s>(
        &mut self,
        mem: &mut impl CodeMemoryMut,
        sites: impl IntoIterator<Item = &'s Site>,
        also: &[Class],
    ) -> Result<usize, PatchError> {
        let mut patched = 0;
        for site in sites {
            if site.class.action() != Action::Patch && !also.contains(&site.class) {
                continue;
            }
            if let Some(existing) = self.patches.get(&site.address) {
                if existing.class == site.class && existing.length == site.length {
                    continue;
                }
                return Err(PatchError::Conflict {
                    address: site.address,
                    existing: existing.class,
                    found: site.class,
                });
            }
            let patch = self.original_of(mem, site)?;
            if mem.write(site.address, &[TRAP_BYTE]) != 1 {
                return Err(PatchError::WriteFailed {
                    address: site.address,
                });
            }
            self.patches.insert(site.address, patch);
            patched += 1;
        }
        Ok(patched)
    }

    /// Reads the site's original bytes and checks they still decode to what was scanned.
    fn original_of(&self, mem: &impl CodeMemory, site: &Site) -> Result<Patch, PatchError> {
        let length = site.length;
        let len = usize::from(length);
        let mut original = [0u8; MAX_INSTRUCTION_LEN];
        let unreadable = PatchError::Unreadable {
            address: site.address,
            length,
        };
        let bytes = original
            .get_mut(..len)
            .filter(|b| !b.is_empty())
            .ok_or(unreadable)?;
        if mem.read(site.address, bytes) < len {
            return Err(unreadable);
        }
        // A patch of an overlapping instruction may lie inside this one.
        self.overlay_originals(site.address, bytes);
        // Decoded as the scan decoded it: same code size, same IP.
        let bitness = match site.instruction.code_size() {
            IcedCodeSize::Code16 => 16,
            _ => 32,
        };
        let instruction =
            Decoder::with_ip(bitness, bytes, site.instruction.ip(), DecoderOptions::NONE).decode();
        if instruction.code() != site.instruction.code() || instruction.len() != len {
            return Err(PatchError::Stale {
                address: site.address,
                class: site.class,
            });
        }
        Ok(Patch {
            address: site.address,
            length,
            original,
            class: site.class,
            instruction,
        })
    }

    /// Pins a trap byte on the instruction starting at `addr` (a kernel-proxy entry
    /// point), whatever its class. The byte stays until [`PatchTable::unpin_entry`]:
    /// reverting the page leaves it, and patching a scan of its page puts it back if
    /// the guest wrote new code over it. Pinning an address twice changes nothing.
    ///
    /// # Errors
    /// [`PatchError::Unreadable`] when no byte can be read there,
    /// [`PatchError::WriteFailed`] when the trap byte cannot be written.
    pub fn pin_entry(&mut self, mem: &mut impl CodeMemoryMut, addr: u32) -> Result<(), PatchError> {
        if self.entries.contains_key(&addr) {
            return Ok(());
        }
        let original = self.byte_beneath(mem, addr)?;
        if mem.write(addr, &[TRAP_BYTE]) != 1 {
            return Err(PatchError::WriteFailed { address: addr });
        }
        self.entries.insert(addr, original);
        Ok(())
    }

    /// Removes the pinned entry at `addr` and restores its original byte, unless a
    /// sensitive-instruction patch there still needs the trap. Returns whether `addr` was
    /// pinned.
    pub fn unpin_entry(&mut self, mem: &mut impl CodeMemoryMut, addr: u32) -> bool {
        let Some(original) = self.entries.remove(&addr) else {
            return false;
        };
        if !self.patches.contains_key(&addr) {
            mem.write(addr, &[original]);
        }
        true
    }

    /// Whether `addr` is a pinned entry.
    pub fn is_entry(&self, addr: u32) -> bool {
        self.entries.contains_key(&addr)
    }

    /// The pinned entries, by address.
    pub fn entries(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries.keys().copied()
    }

    /// The guest's own byte at `addr`: memory, or the original a patch recorded.
    fn byte_beneath(&self, mem: &impl CodeMemory, addr: u32) -> Result<u8, PatchError> {
        let mut byte = [0u8; 1];
        if mem.read(addr, &mut byte) != 1 {
            return Err(PatchError::Unreadable {
                address: addr,
                length: 1,
            });
        }
        Ok(self.original_byte(addr).unwrap_or(byte[0]))
    }

    /// Puts the trap back on pinned entries of `page` whose byte the guest replaced;
    /// the new byte becomes the entry's original.
    fn repin_page(&mut self, mem: &mut impl CodeMemoryMut, page: u32) -> Result<(), PatchError> {
        let first = page & !(PAGE_SIZE - 1);
        let pinned: Vec<u32> = self
            .entries
            .range(first..=first | (PAGE_SIZE - 1))
            .map(|(&a, _)| a)
            .collect();
        for addr in pinned {
            let mut byte = [0u8; 1];
            if mem.read(addr, &mut byte) != 1 || byte[0] == TRAP_BYTE {
                continue;
            }
            if mem.write(addr, &[TRAP_BYTE]) != 1 {
                return Err(PatchError::WriteFailed { address: addr });
            }
            self.entries.insert(addr, byte[0]);
        }
        Ok(())
    }

    /// Drops the patch at `addr` and restores its original byte, unless a pinned entry
    /// there keeps the trap. Returns whether `addr` was patched; a byte that cannot be
    /// written keeps its entry.
    pub fn revert_site(&mut self, mem: &mut impl CodeMemoryMut, addr: u32) -> bool {
        let Some(patch) = self.patches.get(&addr) else {
            return false;
        };
        if !self.entries.contains_key(&addr) && mem.write(addr, &[patch.original[0]]) != 1 {
            return false;
        }
        self.patches.remove(&addr);
        true
    }

    /// Drops the patch at `addr` without touching memory (the guest already replaced the
    /// byte). Returns whether `addr` was patched.
    pub fn forget_site(&mut self, addr: u32) -> bool {
        self.patches.remove(&addr).is_some()
    }

    /// Puts the original byte back under the patch at `addr` for one native step of the
    /// instruction, keeping the entry; [`PatchTable::relatch`] puts the trap back.
    /// Returns whether `addr` was patched and its byte written.
    pub fn lift(&self, mem: &mut impl CodeMemoryMut, addr: u32) -> bool {
        self.patches
            .get(&addr)
            .is_some_and(|p| mem.write(addr, &[p.original[0]]) == 1)
    }

    /// Writes the trap byte again at a patch [`PatchTable::lift`] lifted. Returns whether
    /// `addr` is patched (or pinned) and the byte was written.
    pub fn relatch(&self, mem: &mut impl CodeMemoryMut, addr: u32) -> bool {
        (self.patches.contains_key(&addr) || self.entries.contains_key(&addr))
            && mem.write(addr, &[TRAP_BYTE]) == 1
    }

    /// The addresses of the patches of `class`, ascending.
    pub fn sites_of(&self, class: Class) -> Vec<u32> {
        self.patches
            .values()
            .filter(|p| p.class == class)
            .map(|p| p.address)
            .collect()
    }

    /// The patch whose trap byte is at `addr`.
    pub fn lookup(&self, addr: u32) -> Option<&Patch> {
        self.patches.get(&addr)
    }

    /// What memory held at `addr` before it was patched, if `addr` holds a trap byte this
    /// table wrote.
    pub fn original_byte(&self, addr: u32) -> Option<u8> {
        self.patches
            .get(&addr)
            .map(|p| p.original[0])
            .or_else(|| self.entries.get(&addr).copied())
    }

    /// Replaces the trap bytes in `buf`, read from memory at `addr`, by the original
    /// bytes: what a guest reading its own code must see.
    pub fn overlay_originals(&self, addr: u32, buf: &mut [u8]) {
        if buf.is_empty() {
            return;
        }
        let last = u64::from(addr) + buf.len() as u64 - 1;
        let last = u32::try_from(last).unwrap_or(u32::MAX);
        // Every address in addr..=last is a byte of `buf`.
        for (&at, patch) in self.patches.range(addr..=last) {
            if let Some(b) = buf.get_mut((at - addr) as usize) {
                *b = patch.original[0];
            }
        }
        for (&at, &original) in self.entries.range(addr..=last) {
            if let Some(b) = buf.get_mut((at - addr) as usize) {
                if !self.patches.contains_key(&at) {
                    *b = original;
                }
            }
        }
    }

    /// Restores every patched byte of the page containing `page` and drops its entries;
    /// returns how many were restored. A byte that cannot be written keeps its entry, so
    /// the table still describes memory. Pinned entries keep their trap byte (a patch at
    /// the same address is dropped all the same).
    pub fn revert_page(&mut self, mem: &mut impl CodeMemoryMut, page: u32) -> usize {
        let originals: Vec<(u32, u8)> = self
            .page_patches(page)
            .map(|p| (p.address, p.original[0]))
            .collect();
        let mut restored = 0;
        for (addr, byte) in originals {
            if self.entries.contains_key(&addr) {
                self.patches.remove(&addr);
                restored += 1;
                continue;
            }
            if mem.write(addr, &[byte]) == 1 {
                self.patches.remove(&addr);
                restored += 1;
            }
        }
        restored
    }

    /// The patches whose trap byte lies in the page containing `page`, by address.
    pub fn page_patches(&self, page: u32) -> impl Iterator<Item = &Patch> {
        let first = page & !(PAGE_SIZE - 1);
        self.patches
            .range(first..=first | (PAGE_SIZE - 1))
            .map(|(_, p)| p)
    }

    /// Whether the page containing `page` holds any patch.
    pub fn is_patched(&self, page: u32) -> bool {
        let first = page & !(PAGE_SIZE - 1);
        self.patches
            .range(first..=first | (PAGE_SIZE - 1))
            .next()
            .is_some()
    }

    /// Number of patches in force.
    pub fn len(&self) -> usize {
        self.patches.len()
    }

    /// Whether no patch is in force.
    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }

    /// The patches in force, by address.
    pub fn iter(&self) -> impl Iterator<Item = &Patch> {
        self.patches.values()
    }

    /// A view of `mem` with every trap byte of this table replaced by its original: scan
    /// through it to see the guest's own code.
    pub fn unpatched<'a, M: CodeMemory>(&'a self, mem: &'a M) -> Unpatched<'a, M> {
        Unpatched { mem, table: self }
    }
}

/// Memory as it was before patching (see [`PatchTable::unpatched`]).
#[derive(Debug)]
pub struct Unpatched<'a, M> {
    mem: &'a M,
    table: &'a PatchTable,
}

impl<M: CodeMemory> CodeMemory for Unpatched<'_, M> {
    fn read(&self, addr: u32, buf: &mut [u8]) -> usize {
        let n = self.mem.read(addr, buf).min(buf.len());
        self.table
            .overlay_originals(addr, buf.get_mut(..n).unwrap_or_default());
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::scan_page;

    const BASE: u32 = 0x20_0000;

    fn memory(code: &[u8]) -> BufferMemory {
        let mut bytes = vec![0x90; 2 * PAGE_SIZE as usize];
        bytes[..code.len()].copy_from_slice(code);
        BufferMemory::new(BASE, bytes)
    }

    // pushf; mov ax, ds; cli; popf; ret
    const CODE: &[u8] = &[0x9C, 0x66, 0x8C, 0xD8, 0xFA, 0x9D, 0xC3];

    #[test]
    fn patch_lookup_overlay_revert() {
        let mut mem = memory(CODE);
        let before = mem.clone();
        let scan = scan_page(&mem, BASE, &[BASE]);
        let mut table = PatchTable::new();
        assert_eq!(table.patch(&mut mem, &scan), Ok(3));
        assert_eq!(&mem.bytes[..7], &[0xCC, 0xCC, 0x8C, 0xD8, 0xFA, 0xCC, 0xC3]);
        let p = table.lookup(BASE + 1).expect("mov from ds is patched");
        assert_eq!(p.class, Class::MovFromSreg);
        assert_eq!(p.original_bytes(), &[0x66, 0x8C, 0xD8]);
        assert_eq!(table.original_byte(BASE + 5), Some(0x9D));
        assert_eq!(table.original_byte(BASE + 4), None);
        let mut buf = [0u8; 7];
        table.unpatched(&mem).read(BASE, &mut buf);
        assert_eq!(buf, CODE);
        assert!(table.is_patched(BASE + 0x123) && !table.is_patched(BASE + PAGE_SIZE));
        let addrs: Vec<u32> = table
            .page_patches(BASE + 0xFFF)
            .map(|p| p.address)
            .collect();
        assert_eq!(addrs, [BASE, BASE + 1, BASE + 5]);
        assert_eq!(table.revert_page(&mut mem, BASE), 3);
        assert_eq!(mem, before);
        assert!(table.is_empty() && !table.is_patched(BASE));
    }

    #[test]
    fn a_16_bit_scan_is_patched_and_its_originals_decode_as_16_bit_code() {
        use crate::scan::{scan_page_after, CodeSize};
        // mov ax, 0x38; mov ds, ax; pushf; ret in 16-bit code at IP 0x100 of its page.
        let code = [0xB8, 0x38, 0x00, 0x8E, 0xD8, 0x9C, 0xC3];
        let mut mem = memory(&code);
        let size = CodeSize::Bits16 { page_ip: 0x100 };
        let scan = scan_page_after(&mem, BASE, &[BASE], 0, size);
        let mut table = PatchTable::new();
        assert_eq!(table.patch(&mut mem, &scan), Ok(2));
        assert_eq!(&mem.bytes[..7], &[0xB8, 0x38, 0x00, 0xCC, 0xD8, 0xCC, 0xC3]);
        let p = table.lookup(BASE + 3).expect("mov ds, ax is patched");
        assert_eq!(p.class, Class::MovToSreg);
        assert_eq!(p.instruction.code(), iced_x86::Code::Mov_Sreg_rm16);
        assert_eq!((p.instruction.ip(), p.instruction.len()), (0x103, 2));
        // Through the unpatched view the page scans as it did, and patches nothing new.
        let rescan = scan_page_after(&table.unpatched(&mem), BASE, &[BASE], 0, size);
        assert_eq!(rescan, scan);
        assert_eq!(table.patch(&mut mem, &rescan), Ok(0));
    }

    #[test]
    fn conditional_sites_are_patched_on_request_and_reverted_one_by_one() {
        // fld1; pushf; fwait; ret
        let code = [0xD9, 0xE8, 0x9C, 0x9B, 0xC3];
        let mut mem = memory(&code);
        let scan = scan_page(&mem, BASE, &[BASE]);
        let mut table = PatchTable::new();
        assert_eq!(table.patch(&mut mem, &scan), Ok(1), "only pushf by default");
        assert_eq!(&mem.bytes[..5], &[0xD9, 0xE8, 0xCC, 0x9B, 0xC3]);
        assert_eq!(table.patch_with(&mut mem, &scan, &[Class::Fpu]), Ok(2));
        assert_eq!(&mem.bytes[..5], &[0xCC, 0xE8, 0xCC, 0xCC, 0xC3]);
        assert_eq!(table.sites_of(Class::Fpu), [BASE, BASE + 3]);
        // A lifted site shows its original byte and keeps its entry until relatched.
        assert!(table.lift(&mut mem, BASE + 3));
        assert_eq!(mem.bytes[3], 0x9B);
        assert!(table.lookup(BASE + 3).is_some());
        assert!(table.relatch(&mut mem, BASE + 3));
        assert_eq!(mem.bytes[3], TRAP_BYTE);
        for addr in table.sites_of(Class::Fpu) {
            assert!(table.revert_site(&mut mem, addr));
        }
        assert!(!table.revert_site(&mut mem, BASE));
        assert!(!table.forget_site(BASE + 3));
        assert_eq!(&mem.bytes[..5], &[0xD9, 0xE8, 0xCC, 0x9B, 0xC3]);
        assert_eq!(table.len(), 1);
        assert!(!table.lift(&mut mem, BASE) && !table.relatch(&mut mem, BASE));
    }

    #[test]
    fn pinned_entries_survive_reverts_and_rescans() {
        // f: push ebp; mov ebp, esp; pop ebp; ret | g: pushf; popf; ret
        let code = [0x55, 0x89, 0xE5, 0x5D, 0xC3, 0x9C, 0x9D, 0xC3];
        let mut mem = memory(&code);
        let before = mem.clone();
        let mut table = PatchTable::new();
        table.pin_entry(&mut mem, BASE).unwrap();
        table.pin_entry(&mut mem, BASE).unwrap();
        assert_eq!(mem.bytes[0], TRAP_BYTE);
        assert!(table.is_entry(BASE) && !table.is_entry(BASE + 5));
        assert!(
            table.lookup(BASE).is_none(),
            "an entry is no sensitive patch"
        );
        // The scanner sees the original code, and the sensitive pushf at g is patched
        // under a pin too.
        table.pin_entry(&mut mem, BASE + 5).unwrap();
        let scan = scan_page(&table.unpatched(&mem), BASE, &[BASE, BASE + 5]);
        assert!(
            scan.starts.contains(&(BASE + 1)),
            "decoded from the original push"
        );
        assert_eq!(table.patch(&mut mem, &scan), Ok(2));
        let mut buf = [0u8; 8];
        table.unpatched(&mem).read(BASE, &mut buf);
        assert_eq!(buf, code);
        assert_eq!(table.original_byte(BASE), Some(0x55));
        assert_eq!(table.original_byte(BASE + 5), Some(0x9C));

        // Reverting the page drops the sensitive patches but keeps the pins.
        table.revert_page(&mut mem, BASE);
        assert_eq!(
            &mem.bytes[..8],
            &[0xCC, 0x89, 0xE5, 0x5D, 0xC3, 0xCC, 0x9D, 0xC3]
        );
        assert!(table.lookup(BASE + 5).is_none() && table.is_entry(BASE + 5));

        // The guest writes new code over an entry: the next patch of a scan of the page
        // pins it again, with the new byte as its original.
        mem.bytes[0] = 0x53; // push ebx
        let scan = scan_page(&table.unpatched(&mem), BASE, &[BASE]);
        table.patch(&mut mem, &scan).unwrap();
        assert_eq!(mem.bytes[0], TRAP_BYTE);
        assert_eq!(table.original_byte(BASE), Some(0x53));

        // Unpinning restores the guest's bytes, except where a sensitive patch remains.
        mem.bytes[0] = TRAP_BYTE;
        table.entries.insert(BASE, 0x55);
        assert!(table.unpin_entry(&mut mem, BASE));
        assert!(!table.unpin_entry(&mut mem, BASE));
        let scan = scan_page(&table.unpatched(&mem), BASE, &[BASE + 5]);
        table.patch(&mut mem, &scan).unwrap();
        assert!(table.unpin_entry(&mut mem, BASE + 5));
        assert_eq!(mem.bytes[5], TRAP_BYTE, "pushf is still patched");
        table.revert_page(&mut mem, BASE);
        assert_eq!(mem, before);
        assert_eq!(table.entries().count(), 0);
    }

    #[test]
    fn cpuid_is_patched_only_when_asked() {
        // cpuid; pushf; ret
        let code = [0x0F, 0xA2, 0x9C, 0xC3];
        let mut mem = memory(&code);
        let scan = scan_page(&mem, BASE, &[BASE]);
        let mut table = PatchTable::new();
        assert_eq!(table.patch(&mut mem, &scan), Ok(1));
        assert_eq!(
            mem.bytes[0], 0x0F,
            "CPUID traps natively where the host faults it"
        );
        assert_eq!(table.patch_with(&mut mem, &scan, &[Class::Cpuid]), Ok(1));
        assert_eq!(&mem.bytes[..4], &[0xCC, 0xA2, 0xCC, 0xC3]);
        assert_eq!(table.lookup(BASE).map(|p| p.class), Some(Class::Cpuid));
    }

    #[test]
    fn patching_twice_is_idempotent() {
        let mut mem = memory(CODE);
        let mut table = PatchTable::new();
        let scan = scan_page(&mem, BASE, &[BASE]);
        table.patch(&mut mem, &scan).unwrap();
        let patched = mem.clone();
        // Rescanning through the unpatched view finds the same sites: nothing new.
        let rescan = scan_page(&table.unpatched(&mem), BASE, &[BASE]);
        assert_eq!(rescan, scan);
        assert_eq!(table.patch(&mut mem, &rescan), Ok(0));
        // Re-applying the old scan also leaves memory and originals alone.
        assert_eq!(table.patch(&mut mem, &scan), Ok(0));
        assert_eq!(mem, patched);
        assert!(table.iter().all(|p| p.original[0] != TRAP_BYTE));
    }

    #[test]
    fn stale_scan_is_refused() {
        let mut mem = memory(CODE);
        let scan = scan_page(&mem, BASE, &[BASE]);
        mem.bytes[0] = 0x90;
        let mut table = PatchTable::new();
        assert_eq!(
            table.patch(&mut mem, &scan),
            Err(PatchError::Stale {
                address: BASE,
                class: Class::Pushf
            })
        );
        assert!(table.is_empty());
    }

    #[test]
    fn conflicting_rescan_is_refused() {
        let mut mem = memory(CODE);
        let mut table = PatchTable::new();
        let scan = scan_page(&mem, BASE, &[BASE]);
        table.patch(&mut mem, &scan).unwrap();
        let mut other = scan_page(&table.unpatched(&mem), BASE, &[BASE]);
        other.sites[0].class = Class::Popf;
        assert!(matches!(
            table.patch(&mut mem, &other),
            Err(PatchError::Conflict {
                address: BASE,
                existing: Class::Pushf,
                found: Class::Popf
            })
        ));
    }

    #[test]
    fn read_only_memory_fails_cleanly() {
        struct ReadOnly(BufferMemory);
        impl CodeMemory for ReadOnly {
            fn read(&self, addr: u32, buf: &mut [u8]) -> usize {
                self.0.read(addr, buf)
            }
        }
        impl CodeMemoryMut for ReadOnly {
            fn write(&mut self, _: u32, _: &[u8]) -> usize {
                0
            }
        }
        let mut mem = ReadOnly(memory(CODE));
        let scan = scan_page(&mem, BASE, &[BASE]);
        let mut table = PatchTable::new();
        assert_eq!(
            table.patch(&mut mem, &scan),
            Err(PatchError::WriteFailed { address: BASE })
        );
        assert!(table.is_empty());
    }
}
