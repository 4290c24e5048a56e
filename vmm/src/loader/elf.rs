//! 32-bit little-endian i386 ELF files: the one reader the loader, the image tools and
//! the kernel proxy share.
//!
//! The file is guest input and so hostile: every table and every segment is checked
//! against the file before a byte of it is used, and a bad file is an [`ElfError`]
//! naming the header field, table, segment or section at fault, never a panic.
//! [`ElfFile::parse`] checks the header and the `PT_LOAD` segments (all a loader
//! needs); section headers and symbols are read on demand, so a file whose section
//! table is damaged can still be loaded by its segments.

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{
    machine_to_str, EI_CLASS, EI_DATA, ELFCLASS32, ELFCLASS64, ELFDATA2LSB, EM_386,
};
use goblin::elf::program_header::{PF_X, PT_LOAD};
use goblin::elf::section_header::{
    SHF_EXECINSTR, SHN_UNDEF, SHN_XINDEX, SHT_DYNSYM, SHT_NOBITS, SHT_STRTAB, SHT_SYMTAB,
};
use goblin::elf::sym::{STT_FUNC, STT_NOTYPE};
use goblin::elf::{Elf, ProgramHeader, SectionHeader, Sym};
use goblin::elf32;
use thiserror::Error;

/// The ELF identification magic at offset 0.
pub const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// Size of the ELF32 file header.
pub const EHDR_SIZE: usize = elf32::header::SIZEOF_EHDR;
/// Size of an ELF32 program header.
const PHDR_SIZE: usize = elf32::program_header::SIZEOF_PHDR;
/// Size of an ELF32 section header.
const SHDR_SIZE: usize = elf32::section_header::SIZEOF_SHDR;
/// Size of an ELF32 symbol.
const SYM_SIZE: usize = elf32::sym::SIZEOF_SYM;
/// Offset of `e_machine` in the ELF header (the same for both classes): far enough to
/// name a foreign file's class and machine before reading the rest of its header.
const E_MACHINE_OFFSET: usize = 18;

/// Whether `bytes` start with the ELF magic.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(&ELF_MAGIC)
}

/// What is wrong with an ELF file.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ElfError {
    /// No ELF magic at offset 0.
    #[error("not an ELF file (no \"\\x7fELF\" magic at offset 0)")]
    NotElf,
    /// The file ends inside the ELF header.
    #[error("the file is {len} bytes, too short for the {needed}-byte ELF header")]
    TooShort {
        /// File length.
        len: usize,
        /// Bytes the header needs.
        needed: usize,
    },
    /// An ELF file of another class, byte order or machine.
    #[error(
        "ELF file is {}, machine {}; expected 32-bit little-endian i386 (ELFCLASS32, EM_386)",
        class_name(*class, *data),
        machine_to_str(*machine)
    )]
    NotI386 {
        /// `e_ident[EI_CLASS]`.
        class: u8,
        /// `e_ident[EI_DATA]`.
        data: u8,
        /// `e_machine` (read little-endian unless `data` says big-endian).
        machine: u16,
    },
    /// A header field with a value this reader cannot use.
    #[error("ELF header field {field} = {value:#x}: expected {expected}")]
    BadHeaderField {
        /// The field's name in the specification.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What it should have been.
        expected: &'static str,
    },
    /// A header table (program headers, section headers, symbols) the file does not hold.
    #[error("the {table} ({count} entries of {entry_size} bytes at offset {offset:#x}) run past the end of the {file_len}-byte file")]
    TableBeyondFile {
        /// Which table.
        table: &'static str,
        /// File offset of the table.
        offset: u64,
        /// Number of entries.
        count: u64,
        /// Bytes per entry.
        entry_size: usize,
        /// File length.
        file_len: usize,
    },
    /// A table the parser rejected although it lies inside the file.
    #[error("the {table} do not parse: {reason}")]
    MalformedTable {
        /// Which table.
        table: &'static str,
        /// The parser's explanation.
        reason: String,
    },
    /// A loadable segment holds more file bytes than memory bytes.
    #[error("program header {index}: file size {filesz:#x} exceeds memory size {memsz:#x}")]
    FileSizeExceedsMemSize {
        /// Index of the program header.
        index: usize,
        /// `p_filesz`.
        filesz: u32,
        /// `p_memsz`.
        memsz: u32,
    },
    /// A loadable segment's file bytes run past the end of the file.
    #[error("program header {index}: file bytes {offset:#x}+{filesz:#x} run past the end of the file ({file_len:#x} bytes)")]
    SegmentBeyondFile {
        /// Index of the program header.
        index: usize,
        /// `p_offset`.
        offset: u32,
        /// `p_filesz`.
        filesz: u32,
        /// File length.
        file_len: usize,
    },
    /// A section's file bytes run past the end of the file.
    #[error("section {name}: file bytes {offset:#x}+{size:#x} run past the end of the file ({file_len:#x} bytes)")]
    SectionBeyondFile {
        /// The section's name, or `#index` when it has none.
        name: String,
        /// `sh_offset`.
        offset: u32,
        /// `sh_size`.
        size: u32,
        /// File length.
        file_len: usize,
    },
    /// A symbol table section that does not describe a symbol table.
    #[error("symbol table section {index}: {reason}")]
    BadSymbolTable {
        /// Index of the section.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The class as a reader would name it, for [`ElfError::NotI386`].
fn class_name(class: u8, data: u8) -> &'static str {
    match (class, data) {
        (ELFCLASS32, ELFDATA2LSB) => "ELF32",
        (ELFCLASS32, _) => "big-endian ELF32",
        (ELFCLASS64, ELFDATA2LSB) => "ELF64",
        (ELFCLASS64, _) => "big-endian ELF64",
        _ => "of unknown class",
    }
}

/// The fields of the ELF header the users of this reader need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfHeader {
    /// `e_type` (`ET_EXEC`, `ET_REL`, ...).
    pub e_type: u16,
    /// `e_entry`: the entry point as linked.
    pub entry: u32,
    /// `e_phoff`: file offset of the program headers.
    pub phoff: u32,
    /// `e_phnum`: number of program headers.
    pub phnum: u16,
    /// `e_shoff`: file offset of the section headers (0: none).
    pub shoff: u32,
    /// `e_shentsize`: size of a section header.
    pub shentsize: u16,
    /// `e_shnum`: number of section headers (0 with a non-zero `shoff`: see section 0).
    pub shnum: u16,
    /// `e_shstrndx`: index of the section-name string table.
    pub shstrndx: u16,
}

/// A `PT_LOAD` program header whose file bytes lie inside the file and fit its memory
/// size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// Index of the program header in the table.
    pub index: usize,
    /// `p_vaddr`: where the segment is linked.
    pub vaddr: u32,
    /// `p_paddr`: where a loader without paging puts it.
    pub paddr: u32,
    /// `p_offset`: file offset of its bytes.
    pub offset: u32,
    /// `p_filesz`: bytes in the file (at most `memsz`).
    pub filesz: u32,
    /// `p_memsz`: bytes in memory; the rest past `filesz` is zero.
    pub memsz: u32,
    /// `p_flags` (`PF_X`, `PF_W`, `PF_R`).
    pub flags: u32,
}

impl LoadSegment {
    /// Whether the segment is mapped executable.
    pub fn is_executable(&self) -> bool {
        self.flags & PF_X != 0
    }

    /// Whether linear address `addr` lies in the segment's memory image.
    pub fn contains_vaddr(&self, addr: u32) -> bool {
        addr.checked_sub(self.vaddr)
            .is_some_and(|off| off < self.memsz)
    }

    /// Whether physical address `addr` lies in the segment's memory image.
    pub fn contains_paddr(&self, addr: u32) -> bool {
        addr.checked_sub(self.paddr)
            .is_some_and(|off| off < self.memsz)
    }
}

/// A section header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfSection<'a> {
    /// Index in the section table (what symbols' `st_shndx` refer to).
    pub index: usize,
    /// Its name from the section-name string table, when it has a readable one.
    pub name: Option<&'a str>,
    /// `sh_type`.
    pub kind: u32,
    /// `sh_flags`.
    pub flags: u32,
    /// `sh_addr`: where the section is linked.
    pub addr: u32,
    /// `sh_offset`.
    pub offset: u32,
    /// `sh_size`.
    pub size: u32,
    /// `sh_link`.
    pub link: u32,
    /// `sh_entsize`.
    pub entsize: u32,
}

impl ElfSection<'_> {
    /// Whether the section holds instructions (`SHF_EXECINSTR`).
    pub fn is_executable(&self) -> bool {
        self.flags & SHF_EXECINSTR != 0
    }

    /// Whether the section has bytes in the file (not `SHT_NOBITS`, not empty).
    pub fn occupies_file(&self) -> bool {
        self.kind != SHT_NOBITS && self.size != 0
    }

    /// The name for messages: the section's own, or `#index`.
    pub fn display_name(&self) -> String {
        self.name
            .filter(|n| !n.is_empty())
            .map_or_else(|| format!("#{}", self.index), str::to_owned)
    }
}

/// What a code symbol names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SymbolKind {
    /// `STT_FUNC`: a function, whose extent is known when its size is non-zero.
    Function,
    /// `STT_NOTYPE`: an untyped label (assembly entry points often are).
    Label,
}

/// A defined, named function or label symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfSymbol<'a> {
    /// Its name.
    pub name: &'a str,
    /// `st_value`: its address as linked.
    pub value: u32,
    /// `st_size`: its size in bytes, 0 when unknown.
    pub size: u32,
    /// Function or label.
    pub kind: SymbolKind,
    /// `st_shndx`: the section it is defined in (never `SHN_UNDEF`).
    pub section: u16,
}

/// A validated 32-bit i386 ELF file.
#[derive(Debug, Clone)]
pub struct ElfFile<'a> {
    bytes: &'a [u8],
    header: ElfHeader,
    segments: Vec<LoadSegment>,
}

/// The little-endian ELF32 layout every table is read with.
const CTX: Ctx = Ctx {
    container: Container::Little,
    le: Endian::Little,
};

impl<'a> ElfFile<'a> {
    /// Checks the ELF header (32-bit, little-endian, i386, ELF32 program header size)
    /// and every `PT_LOAD` segment against the file.
    ///
    /// # Errors
    /// [`ElfError::NotElf`] without the magic, [`ElfError::NotI386`] for other classes
    /// and machines, [`ElfError::TooShort`] and [`ElfError::TableBeyondFile`] for
    /// truncated files, [`ElfError::FileSizeExceedsMemSize`] and
    /// [`ElfError::SegmentBeyondFile`] for loadable segments that are inconsistent.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        let header = parse_header(bytes)?;
        let file = ElfFile {
            bytes,
            header,
            segments: Vec::new(),
        };
        let segments = file.parse_segments()?;
        Ok(ElfFile { segments, ..file })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The header.
    pub fn header(&self) -> &ElfHeader {
        &self.header
    }

    /// The entry point as linked (`e_entry`).
    pub fn entry(&self) -> u32 {
        self.header.entry
    }

    /// The `PT_LOAD` segments in program-header order.
    pub fn load_segments(&self) -> &[LoadSegment] {
        &self.segments
    }

    /// The file bytes of a segment of this file (`filesz` of them).
    pub fn segment_bytes(&self, segment: &LoadSegment) -> &'a [u8] {
        // Checked in `parse`; an empty slice for a segment of another file.
        file_range(self.bytes, segment.offset.into(), segment.filesz.into()).unwrap_or_default()
    }

    fn parse_segments(&self) -> Result<Vec<LoadSegment>, ElfError> {
        let h = &self.header;
        let count = usize::from(h.phnum);
        if count == 0 {
            return Ok(Vec::new());
        }
        let offset = self.table("program headers", h.phoff, count, PHDR_SIZE)?;
        let phdrs = ProgramHeader::parse(self.bytes, offset, count, CTX).map_err(|e| {
            ElfError::MalformedTable {
                table: "program headers",
                reason: e.to_string(),
            }
        })?;
        let mut segments = Vec::new();
        for (index, ph) in phdrs.into_iter().enumerate() {
            let ph = elf32::program_header::ProgramHeader::from(ph);
            if ph.p_type != PT_LOAD {
                continue;
            }
            if ph.p_filesz > ph.p_memsz {
                return Err(ElfError::FileSizeExceedsMemSize {
                    index,
                    filesz: ph.p_filesz,
                    memsz: ph.p_memsz,
                });
            }
            if file_range(self.bytes, ph.p_offset.into(), ph.p_filesz.into()).is_none() {
                return Err(ElfError::SegmentBeyondFile {
                    index,
                    offset: ph.p_offset,
                    filesz: ph.p_filesz,
                    file_len: self.bytes.len(),
                });
            }
            segments.push(LoadSegment {
                index,
                vaddr: ph.p_vaddr,
                paddr: ph.p_paddr,
                offset: ph.p_offset,
                filesz: ph.p_filesz,
                memsz: ph.p_memsz,
                flags: ph.p_flags,
            });
        }
        Ok(segments)
    }

    /// The file offset of a table of `count` entries of `entry_size` bytes at `offset`,
    /// once the file is known to hold all of it.
    fn table(
        &self,
        table: &'static str,
        offset: u32,
        count: usize,
        entry_size: usize,
    ) -> Result<usize, ElfError> {
        count
            .checked_mul(entry_size)
            .and_then(|len| file_range(self.bytes, offset.into(), u64::try_from(len).ok()?))
            .and_then(|_| usize::try_from(offset).ok())
            .ok_or(ElfError::TableBeyondFile {
                table,
                offset: offset.into(),
                count: u64::try_from(count).unwrap_or(u64::MAX),
                entry_size,
                file_len: self.bytes.len(),
            })
    }

    /// The section headers, named from the section-name string table. Empty when the
    /// file has none.
    ///
    /// # Errors
    /// [`ElfError::TableBeyondFile`] when the table does not lie in the file.
    pub fn sections(&self) -> Result<Vec<ElfSection<'a>>, ElfError> {
        const TABLE: &str = "section headers";
        let h = &self.header;
        if h.shoff == 0 {
            return Ok(Vec::new());
        }
        if usize::from(h.shentsize) != SHDR_SIZE {
            return Err(ElfError::BadHeaderField {
                field: "e_shentsize",
                value: h.shentsize.into(),
                expected: "40, the ELF32 section header size",
            });
        }
        let malformed = |e: goblin::error::Error| ElfError::MalformedTable {
            table: TABLE,
            reason: e.to_string(),
        };
        // Section 0 holds the real count and string-table index when they overflow
        // the header's 16-bit fields.
        let first_at = self.table(TABLE, h.shoff, 1, SHDR_SIZE)?;
        let first = SectionHeader::parse_from(self.bytes, first_at, 1, CTX).map_err(malformed)?;
        let first = first
            .first()
            .map(|s| elf32::section_header::SectionHeader::from(s.clone()));
        let count = match (h.shnum, first) {
            (0, Some(s)) => usize::try_from(s.sh_size).unwrap_or(usize::MAX),
            (n, _) => usize::from(n),
        };
        let shstrndx = match (u32::from(h.shstrndx), first) {
            (SHN_XINDEX, Some(s)) => s.sh_link,
            (i, _) => i,
        };
        if count == 0 {
            return Ok(Vec::new());
        }
        let at = self.table(TABLE, h.shoff, count, SHDR_SIZE)?;
        let headers: Vec<elf32::section_header::SectionHeader> =
            SectionHeader::parse_from(self.bytes, at, count, CTX)
                .map_err(malformed)?
                .into_iter()
                .map(elf32::section_header::SectionHeader::from)
                .collect();
        let names = usize::try_from(shstrndx)
            .ok()
            .and_then(|i| headers.get(i))
            .filter(|s| s.sh_type == SHT_STRTAB)
            .and_then(|s| file_range(self.bytes, s.sh_offset.into(), s.sh_size.into()));
        Ok(headers
            .iter()
            .enumerate()
            .map(|(index, s)| ElfSection {
                index,
                name: names.and_then(|t| string_at(t, s.sh_name)),
                kind: s.sh_type,
                flags: s.sh_flags,
                addr: s.sh_addr,
                offset: s.sh_offset,
                size: s.sh_size,
                link: s.sh_link,
                entsize: s.sh_entsize,
            })
            .collect())
    }

    /// The file bytes of `section` (empty for `SHT_NOBITS`).
    ///
    /// # Errors
    /// [`ElfError::SectionBeyondFile`] when they run past the end of the file.
    pub fn section_bytes(&self, section: &ElfSection<'_>) -> Result<&'a [u8], ElfError> {
        if section.kind == SHT_NOBITS {
            return Ok(&[]);
        }
        file_range(self.bytes, section.offset.into(), section.size.into()).ok_or_else(|| {
            ElfError::SectionBeyondFile {
                name: section.display_name(),
                offset: section.offset,
                size: section.size,
                file_len: self.bytes.len(),
            }
        })
    }

    /// The defined, named function and label symbols of the static symbol table
    /// (`.symtab`), in table order. Empty for a stripped file.
    ///
    /// # Errors
    /// A section table or symbol table that does not lie in the file.
    pub fn symbols(&self) -> Result<Vec<ElfSymbol<'a>>, ElfError> {
        self.code_symbols(SHT_SYMTAB)
    }

    /// As [`ElfFile::symbols`], from the dynamic symbol table (`.dynsym`).
    ///
    /// # Errors
    /// As [`ElfFile::symbols`].
    pub fn dynamic_symbols(&self) -> Result<Vec<ElfSymbol<'a>>, ElfError> {
        self.code_symbols(SHT_DYNSYM)
    }

    fn code_symbols(&self, table_kind: u32) -> Result<Vec<ElfSymbol<'a>>, ElfError> {
        let sections = self.sections()?;
        let Some(table) = sections.iter().find(|s| s.kind == table_kind) else {
            return Ok(Vec::new());
        };
        let bad = |reason| ElfError::BadSymbolTable {
            index: table.index,
            reason,
        };
        if table.entsize != 0 && usize::try_from(table.entsize).ok() != Some(SYM_SIZE) {
            return Err(bad("sh_entsize is not 16, the ELF32 symbol size"));
        }
        let strings = usize::try_from(table.link)
            .ok()
            .and_then(|i| sections.get(i))
            .filter(|s| s.kind == SHT_STRTAB)
            .ok_or(bad("sh_link does not name a string table"))?;
        let strings = self.section_bytes(strings)?;
        let count = usize::try_from(table.size).unwrap_or(usize::MAX) / SYM_SIZE;
        let at = self.table("symbol table", table.offset, count, SYM_SIZE)?;
        let syms =
            Sym::parse(self.bytes, at, count, CTX).map_err(|e| ElfError::MalformedTable {
                table: "symbol table",
                reason: e.to_string(),
            })?;
        Ok(syms
            .into_iter()
            .filter_map(|s| {
                let kind = match s.st_type() {
                    STT_FUNC => SymbolKind::Function,
                    STT_NOTYPE => SymbolKind::Label,
                    _ => return None,
                };
                let s = elf32::sym::Sym::from(s);
                let name = string_at(strings, s.st_name).filter(|n| !n.is_empty())?;
                (u32::from(s.st_shndx) != SHN_UNDEF).then_some(ElfSymbol {
                    name,
                    value: s.st_value,
                    size: s.st_size,
                    kind,
                    section: s.st_shndx,
                })
            })
            .collect())
    }
}

/// Reads and checks the ELF header.
fn parse_header(bytes: &[u8]) -> Result<ElfHeader, ElfError> {
    if !is_elf(bytes) {
        return Err(ElfError::NotElf);
    }
    let too_short = ElfError::TooShort {
        len: bytes.len(),
        needed: EHDR_SIZE,
    };
    let machine_bytes = bytes
        .get(E_MACHINE_OFFSET..E_MACHINE_OFFSET + 2)
        .and_then(|m| <[u8; 2]>::try_from(m).ok());
    let (Some(&class), Some(&data), Some(machine_bytes)) =
        (bytes.get(EI_CLASS), bytes.get(EI_DATA), machine_bytes)
    else {
        return Err(too_short);
    };
    let machine = match data {
        ELFDATA2LSB => u16::from_le_bytes(machine_bytes),
        _ => u16::from_be_bytes(machine_bytes),
    };
    if class != ELFCLASS32 || data != ELFDATA2LSB || machine != EM_386 {
        return Err(ElfError::NotI386 {
            class,
            data,
            machine,
        });
    }
    if bytes.len() < EHDR_SIZE {
        return Err(too_short);
    }
    let h = Elf::parse_header(bytes).map_err(|e| ElfError::MalformedTable {
        table: "ELF header",
        reason: e.to_string(),
    })?;
    let h = elf32::header::Header::from(h);
    if h.e_phnum > 0 && usize::from(h.e_phentsize) != PHDR_SIZE {
        return Err(ElfError::BadHeaderField {
            field: "e_phentsize",
            value: h.e_phentsize.into(),
            expected: "32, the ELF32 program header size",
        });
    }
    Ok(ElfHeader {
        e_type: h.e_type,
        entry: h.e_entry,
        phoff: h.e_phoff,
        phnum: h.e_phnum,
        shoff: h.e_shoff,
        shentsize: h.e_shentsize,
        shnum: h.e_shnum,
        shstrndx: h.e_shstrndx,
    })
}

/// The bytes `[offset, offset + len)` of `bytes`, if all of them are there.
fn file_range(bytes: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// The NUL-terminated UTF-8 string at `offset` of a string table.
fn string_at(table: &[u8], offset: u32) -> Option<&str> {
    let tail = table.get(usize::try_from(offset).ok()?..)?;
    std::ffi::CStr::from_bytes_until_nul(tail)
        .ok()?
        .to_str()
        .ok()
}

#[cfg(test)]
mod tests {
    use goblin::elf::header::ET_EXEC;
    use proptest::prelude::*;

    use super::*;

    const TEXT_ADDR: u32 = 0xc010_0000;
    const TEXT_PADDR: u32 = 0x0010_0000;
    const FUNC: u8 = 2;
    const OBJECT: u8 = 1;
    const NOTYPE: u8 = 0;
    const GLOBAL: u8 = 1 << 4;

    fn words(out: &mut Vec<u8>, words: &[u32]) {
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn halves(out: &mut Vec<u8>, halves: &[u16]) {
        for h in halves {
            out.extend_from_slice(&h.to_le_bytes());
        }
    }

    fn len32(b: &[u8]) -> u32 {
        u32::try_from(b.len()).unwrap()
    }

    /// An ELF32 i386 executable: one PT_LOAD segment holding `.text` (linked at 3 GiB,
    /// loaded at 1 MiB), a symbol table of `(name, value, size, info, section)`, its
    /// string table and the section-name table, section headers last.
    fn image(symbols: &[(&str, u32, u32, u8, u16)]) -> Vec<u8> {
        let text = vec![0xc3u8; 64];
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; SYM_SIZE];
        for &(name, value, size, info, shndx) in symbols {
            words(&mut symtab, &[len32(&strtab), value, size]);
            symtab.extend_from_slice(&[info, 0]);
            halves(&mut symtab, &[shndx]);
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        let shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0".to_vec();
        let text_off = len32(&[0; EHDR_SIZE + PHDR_SIZE]);
        let mut body = text.clone();
        let mut place = |bytes: &[u8]| {
            body.resize(body.len().next_multiple_of(4), 0);
            let at = text_off + len32(&body);
            body.extend_from_slice(bytes);
            at
        };
        let sym_off = place(&symtab);
        let str_off = place(&strtab);
        let shstr_off = place(&shstrtab);
        let shoff = place(&[]);

        let mut elf = vec![0x7f, b'E', b'L', b'F', 1, 1, 1, 0];
        elf.resize(16, 0);
        halves(&mut elf, &[ET_EXEC, EM_386]);
        words(&mut elf, &[1, TEXT_ADDR, len32(&[0; EHDR_SIZE]), shoff, 0]);
        halves(&mut elf, &[52, 32, 1, 40, 5, 4]);
        let filesz = len32(&text);
        words(
            &mut elf,
            &[
                PT_LOAD, text_off, TEXT_ADDR, TEXT_PADDR, filesz, 0x1000, 5, 0x1000,
            ],
        );
        elf.extend_from_slice(&body);
        // (name, type, flags, addr, offset, size, link, info, align, entsize)
        let sections = [
            [0; 10],
            [1, 1, 6, TEXT_ADDR, text_off, filesz, 0, 0, 16, 0],
            [7, SHT_SYMTAB, 0, 0, sym_off, len32(&symtab), 3, 1, 4, 16],
            [15, SHT_STRTAB, 0, 0, str_off, len32(&strtab), 0, 0, 1, 0],
            [
                23,
                SHT_STRTAB,
                0,
                0,
                shstr_off,
                len32(&shstrtab),
                0,
                0,
                1,
                0,
            ],
        ];
        for s in sections {
            words(&mut elf, &s);
        }
        elf
    }

    fn kernel() -> Vec<u8> {
        image(&[
            ("start", TEXT_ADDR, 0, GLOBAL | NOTYPE, 1),
            ("console_write", TEXT_ADDR + 0x10, 0x20, GLOBAL | FUNC, 1),
            ("jiffies", 0xc020_0000, 4, GLOBAL | OBJECT, 1),
            ("imported", 0, 0, GLOBAL | FUNC, 0),
            ("", TEXT_ADDR + 0x30, 0, FUNC, 1),
        ])
    }

    #[test]
    fn reads_header_segments_sections_and_code_symbols() {
        let bytes = kernel();
        let elf = ElfFile::parse(&bytes).unwrap();
        assert_eq!(elf.header().e_type, ET_EXEC);
        assert_eq!(elf.entry(), TEXT_ADDR);
        let [seg] = elf.load_segments() else {
            panic!("one PT_LOAD segment: {:?}", elf.load_segments());
        };
        assert_eq!(
            (seg.index, seg.vaddr, seg.paddr, seg.filesz, seg.memsz),
            (0, TEXT_ADDR, TEXT_PADDR, 64, 0x1000)
        );
        assert!(seg.is_executable());
        assert!(seg.contains_vaddr(TEXT_ADDR + 0xfff) && !seg.contains_vaddr(TEXT_ADDR + 0x1000));
        assert!(seg.contains_paddr(TEXT_PADDR) && !seg.contains_paddr(TEXT_PADDR - 1));
        assert_eq!(elf.segment_bytes(seg), &[0xc3; 64][..]);

        let sections = elf.sections().unwrap();
        let names: Vec<_> = sections.iter().map(|s| s.name.unwrap_or("?")).collect();
        assert_eq!(names, ["", ".text", ".symtab", ".strtab", ".shstrtab"]);
        assert!(sections[1].is_executable() && !sections[2].is_executable());
        assert_eq!(elf.section_bytes(&sections[1]).unwrap(), &[0xc3; 64][..]);

        let symbols = elf.symbols().unwrap();
        let found: Vec<_> = symbols
            .iter()
            .map(|s| (s.name, s.value, s.size, s.kind))
            .collect();
        assert_eq!(
            found,
            [
                ("start", TEXT_ADDR, 0, SymbolKind::Label),
                (
                    "console_write",
                    TEXT_ADDR + 0x10,
                    0x20,
                    SymbolKind::Function
                ),
            ],
            "data, undefined and nameless symbols are left out"
        );
        assert!(elf.dynamic_symbols().unwrap().is_empty());
    }

    #[test]
    fn foreign_and_truncated_headers_are_named() {
        assert_eq!(ElfFile::parse(b"MZ\0\0").unwrap_err(), ElfError::NotElf);
        let mut elf64 = kernel();
        elf64[EI_CLASS] = ELFCLASS64;
        elf64[E_MACHINE_OFFSET] = 62;
        assert_eq!(
            ElfFile::parse(&elf64).unwrap_err().to_string(),
            "ELF file is ELF64, machine X86_64; expected 32-bit little-endian i386 (ELFCLASS32, EM_386)"
        );
        let mut arm = kernel();
        arm[E_MACHINE_OFFSET] = 40;
        assert!(ElfFile::parse(&arm)
            .unwrap_err()
            .to_string()
            .contains("ELF32, machine ARM"));
        assert_eq!(
            ElfFile::parse(&kernel()[..30]).unwrap_err(),
            ElfError::TooShort {
                len: 30,
                needed: 52
            }
        );
        let mut wide = kernel();
        wide[42] = 56; // e_phentsize of ELF64
        assert!(matches!(
            ElfFile::parse(&wide),
            Err(ElfError::BadHeaderField {
                field: "e_phentsize",
                value: 56,
                ..
            })
        ));
    }

    #[test]
    fn loadable_segments_are_checked_against_the_file() {
        let phdr = EHDR_SIZE;
        let mut big = kernel();
        big[phdr + 16..phdr + 20].copy_from_slice(&0x2000u32.to_le_bytes()); // p_filesz
        assert_eq!(
            ElfFile::parse(&big).unwrap_err(),
            ElfError::FileSizeExceedsMemSize {
                index: 0,
                filesz: 0x2000,
                memsz: 0x1000
            }
        );
        let mut far = kernel();
        far[phdr + 4..phdr + 8].copy_from_slice(&u32::MAX.to_le_bytes()); // p_offset
        assert!(matches!(
            ElfFile::parse(&far),
            Err(ElfError::SegmentBeyondFile {
                index: 0,
                offset: u32::MAX,
                ..
            })
        ));
        let mut many = kernel();
        many[44] = 0xff; // e_phnum
        assert!(matches!(
            ElfFile::parse(&many),
            Err(ElfError::TableBeyondFile {
                table: "program headers",
                count: 255,
                ..
            })
        ));
    }

    #[test]
    fn a_damaged_section_table_still_loads_by_segments() {
        let mut bytes = kernel();
        let len = bytes.len();
        bytes.truncate(len - 8);
        let elf = ElfFile::parse(&bytes).unwrap();
        assert_eq!(elf.load_segments().len(), 1);
        assert!(matches!(
            elf.sections(),
            Err(ElfError::TableBeyondFile {
                table: "section headers",
                ..
            })
        ));
        assert!(elf.symbols().is_err());
    }

    #[test]
    fn section_bytes_past_the_end_name_the_section() {
        let mut bytes = kernel();
        let shoff = usize::try_from(ElfFile::parse(&bytes).unwrap().header().shoff).unwrap();
        let text_size = shoff + SHDR_SIZE + 20;
        bytes[text_size..text_size + 4].copy_from_slice(&0x10_0000u32.to_le_bytes());
        let elf = ElfFile::parse(&bytes).unwrap();
        let sections = elf.sections().unwrap();
        let err = elf.section_bytes(&sections[1]).unwrap_err();
        assert!(
            err.to_string().starts_with("section .text: file bytes"),
            "{err}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any corruption or truncation of a valid file is an error or a reading, never
        /// a panic, and whatever is read lies inside the file.
        #[test]
        fn damaged_files_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = kernel();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            if let Ok(elf) = ElfFile::parse(&bytes) {
                for seg in elf.load_segments() {
                    prop_assert_eq!(elf.segment_bytes(seg).len(), usize::try_from(seg.filesz).unwrap());
                }
                if let Ok(sections) = elf.sections() {
                    for s in &sections {
                        let _ = elf.section_bytes(s);
                    }
                }
                let _ = elf.symbols();
                let _ = elf.dynamic_symbols();
            }
        }
    }
}
