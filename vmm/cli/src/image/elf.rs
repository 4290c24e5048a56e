//! 32-bit i386 ELF files as images: executable sections (or segments), entry points
//! and symbols, read through the engine's ELF reader.

use vmm::addr::GuestLinear;
use vmm::loader::elf::{ElfError, ElfFile, SymbolKind};

use super::{CodeRegion, Format, Image, ImageError, Symbol, SymbolTable};

pub use vmm::loader::elf::is_elf;

impl From<ElfError> for ImageError {
    fn from(e: ElfError) -> Self {
        match e {
            ElfError::NotI386 { .. } => ImageError::UnsupportedElf(e),
            e => ImageError::CorruptElf(e),
        }
    }
}

/// A region's guest address, or an error when it does not fit the 32-bit space.
fn region_base(addr: u32, len: usize, what: &str) -> Result<GuestLinear, ImageError> {
    u64::try_from(len)
        .ok()
        .filter(|&len| u64::from(addr) + len <= 1 << 32)
        .map(|_| GuestLinear(addr))
        .ok_or_else(|| ImageError::RegionBeyond4GiB {
            what: what.to_owned(),
            addr,
            len,
        })
}

/// Parses a 32-bit i386 ELF file.
///
/// # Errors
/// [`ImageError::UnsupportedElf`] for other classes or machines,
/// [`ImageError::CorruptElf`] for tables that do not parse or point outside the file,
/// [`ImageError::NoCode`] when nothing is executable.
pub fn parse(bytes: &[u8]) -> Result<Image, ImageError> {
    let elf = ElfFile::parse(bytes)?;
    let sections = elf.sections()?;

    // Executable sections by index; they carry the symbols' section indices.
    let mut regions = Vec::new();
    let mut section_region = vec![false; sections.len()];
    for section in &sections {
        if !section.is_executable() || !section.occupies_file() {
            continue;
        }
        let name = section
            .name
            .filter(|n| !n.is_empty())
            .map_or_else(|| format!("section {}", section.index), str::to_owned);
        let data = elf.section_bytes(section)?;
        let base = region_base(section.addr, data.len(), &format!("section {name}"))?;
        section_region[section.index] = true;
        regions.push(CodeRegion {
            name,
            base,
            bytes: data.to_vec(),
            entries: Vec::new(),
        });
    }
    if regions.is_empty() {
        // No section headers (or none executable): fall back to what the loader maps.
        for segment in elf.load_segments() {
            if !segment.is_executable() || segment.filesz == 0 {
                continue;
            }
            let name = format!("segment {}", segment.index);
            let data = elf.segment_bytes(segment);
            let base = region_base(segment.vaddr, data.len(), &name)?;
            regions.push(CodeRegion {
                name,
                base,
                bytes: data.to_vec(),
                entries: Vec::new(),
            });
        }
    }
    if regions.is_empty() {
        return Err(ImageError::NoCode);
    }

    let symbols: Vec<Symbol> = elf
        .symbols()?
        .into_iter()
        .filter(|s| {
            section_region
                .get(usize::from(s.section))
                .is_some_and(|&code| code)
        })
        .map(|s| Symbol {
            name: s.name.to_owned(),
            start: GuestLinear(s.value),
            size: s.size,
            kind: s.kind,
        })
        .collect();

    let entry = entry_address(&elf);
    for region in &mut regions {
        let mut entries: Vec<GuestLinear> = symbols
            .iter()
            .filter(|s| s.kind == SymbolKind::Function)
            .map(|s| s.start)
            .chain(entry)
            .filter(|&a| region.contains(a))
            .collect();
        if entries.is_empty() {
            entries.push(region.base);
        }
        entries.sort_unstable();
        entries.dedup();
        region.entries = entries;
    }
    regions.sort_by_key(|r| r.base);

    let extents: Vec<(u64, u64)> = regions.iter().map(CodeRegion::extent).collect();
    Ok(Image {
        format: Format::Elf32,
        regions,
        symbols: SymbolTable::new(symbols, &extents),
        bzimage: None,
    })
}

/// The entry point as a virtual address. Kernels link `e_entry` as a physical address
/// (Linux's vmlinux enters at `startup_32` before paging is on); translate it through
/// the segment whose physical range holds it when it lies in no virtual one.
fn entry_address(elf: &ElfFile<'_>) -> Option<GuestLinear> {
    let entry = elf.entry();
    let loads = elf.load_segments();
    // Without program headers (relocatable objects) the entry is taken as it stands.
    if elf.header().phnum == 0 || loads.iter().any(|s| s.contains_vaddr(entry)) {
        return Some(GuestLinear(entry));
    }
    loads
        .iter()
        .find(|s| s.contains_paddr(entry))
        .and_then(|s| (entry - s.paddr).checked_add(s.vaddr))
        .map(GuestLinear)
}

#[cfg(test)]
mod tests {
    use vmm::loader::elf::ELF_MAGIC;

    use super::*;

    const ELFCLASS32: u8 = 1;
    const ELFCLASS64: u8 = 2;
    const ELFDATA2LSB: u8 = 1;
    const EM_386: u16 = 3;

    /// An ELF header: e_ident[EI_CLASS] at 4, e_ident[EI_DATA] at 5, e_machine at 18.
    fn header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&ELF_MAGIC);
        h[4] = class;
        h[5] = data;
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn rejects_other_classes_and_machines_by_name() {
        let err = parse(&header(ELFCLASS64, ELFDATA2LSB, 62)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ELF file is ELF64, machine X86_64; expected 32-bit little-endian i386 (ELFCLASS32, EM_386)"
        );
        let err = parse(&header(ELFCLASS32, ELFDATA2LSB, 40)).unwrap_err();
        assert!(err.to_string().contains("ELF32, machine ARM"), "{err}");
    }

    #[test]
    fn truncated_headers_are_errors_at_every_length() {
        let full = header(ELFCLASS32, ELFDATA2LSB, EM_386);
        for len in 4..full.len() {
            assert!(matches!(
                parse(&full[..len]),
                Err(ImageError::CorruptElf { .. } | ImageError::NoCode)
            ));
        }
    }
}
