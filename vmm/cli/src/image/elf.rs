//! 32-bit i386 ELF files: executable sections (or segments), entry points and symbols.

use goblin::elf::header::{
    machine_to_str, EI_CLASS, EI_DATA, ELFCLASS32, ELFCLASS64, ELFDATA2LSB, EM_386,
};
use goblin::elf::program_header::{PF_X, PT_LOAD};
use goblin::elf::section_header::{SHF_EXECINSTR, SHT_NOBITS};
use goblin::elf::sym::{STT_FUNC, STT_NOTYPE};
use goblin::elf::Elf;

use super::{CodeRegion, Format, Image, ImageError, Symbol, SymbolKind, SymbolTable};
use vmm::addr::GuestLinear;

/// The ELF identification magic at offset 0.
pub const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Offset of `e_machine` in the ELF header (same for both classes).
const E_MACHINE_OFFSET: usize = 18;

/// Whether `bytes` start with the ELF magic.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(&ELF_MAGIC)
}

/// Rejects anything but 32-bit little-endian i386 before the full parse, so that an
/// x86-64 binary gets a precise message rather than a parse error.
fn check_ident(bytes: &[u8]) -> Result<(), ImageError> {
    let class = bytes.get(EI_CLASS).copied();
    let data = bytes.get(EI_DATA).copied();
    let machine = bytes
        .get(E_MACHINE_OFFSET..E_MACHINE_OFFSET + 2)
        .map(|m| match data {
            Some(ELFDATA2LSB) => u16::from_le_bytes([m[0], m[1]]),
            _ => u16::from_be_bytes([m[0], m[1]]),
        });
    let Some(machine) = machine else {
        return Err(ImageError::CorruptElf {
            reason: format!("file is {} bytes, too short for an ELF header", bytes.len()),
        });
    };
    if class == Some(ELFCLASS32) && data == Some(ELFDATA2LSB) && machine == EM_386 {
        return Ok(());
    }
    let class = match (class, data) {
        (Some(ELFCLASS32), Some(ELFDATA2LSB)) => "ELF32",
        (Some(ELFCLASS32), _) => "big-endian ELF32",
        (Some(ELFCLASS64), Some(ELFDATA2LSB)) => "ELF64",
        (Some(ELFCLASS64), _) => "big-endian ELF64",
        _ => "of unknown class",
    };
    Err(ImageError::UnsupportedElf {
        class,
        machine: machine_to_str(machine),
    })
}

/// The file bytes `[offset, offset + size)`, or a precise error naming `what`.
fn file_range<'a>(
    bytes: &'a [u8],
    offset: u64,
    size: u64,
    what: &str,
) -> Result<&'a [u8], ImageError> {
    usize::try_from(offset)
        .ok()
        .zip(usize::try_from(size).ok())
        .and_then(|(start, len)| bytes.get(start..start.checked_add(len)?))
        .ok_or_else(|| ImageError::CorruptElf {
            reason: format!(
                "{what} occupies file bytes {offset:#x}..{:#x}, past the end of the {}-byte file",
                offset.saturating_add(size),
                bytes.len()
            ),
        })
}

/// A region's guest address, or an error when it does not fit the 32-bit space.
fn region_base(addr: u64, len: usize, what: &str) -> Result<GuestLinear, ImageError> {
    u32::try_from(addr)
        .ok()
        .filter(|&a| u64::from(a) + len as u64 <= 1 << 32)
        .map(GuestLinear)
        .ok_or_else(|| ImageError::CorruptElf {
            reason: format!("{what} at {addr:#x} ({len} bytes) does not fit in 32-bit addresses"),
        })
}

/// Parses a 32-bit i386 ELF file.
///
/// # Errors
/// [`ImageError::UnsupportedElf`] for other classes or machines,
/// [`ImageError::CorruptElf`] for tables that do not parse or point outside the file,
/// [`ImageError::NoCode`] when nothing is executable.
pub fn parse(bytes: &[u8]) -> Result<Image, ImageError> {
    check_ident(bytes)?;
    let elf = Elf::parse(bytes).map_err(|e| ImageError::CorruptElf {
        reason: e.to_string(),
    })?;

    // Executable sections by index; they carry the symbols' section indices.
    let mut regions = Vec::new();
    let mut section_region = vec![None; elf.section_headers.len()];
    for (idx, sh) in elf.section_headers.iter().enumerate() {
        if sh.sh_flags & u64::from(SHF_EXECINSTR) == 0
            || sh.sh_type == SHT_NOBITS
            || sh.sh_size == 0
        {
            continue;
        }
        let name = elf
            .shdr_strtab
            .get_at(sh.sh_name)
            .filter(|n| !n.is_empty())
            .map_or_else(|| format!("section {idx}"), str::to_owned);
        let data = file_range(bytes, sh.sh_offset, sh.sh_size, &format!("section {name}"))?;
        let base = region_base(sh.sh_addr, data.len(), &format!("section {name}"))?;
        section_region[idx] = Some(regions.len());
        regions.push(CodeRegion {
            name,
            base,
            bytes: data.to_vec(),
            entries: Vec::new(),
        });
    }
    if regions.is_empty() {
        // No section headers (or none executable): fall back to what the loader maps.
        for (idx, ph) in elf.program_headers.iter().enumerate() {
            if ph.p_type != PT_LOAD || ph.p_flags & PF_X == 0 || ph.p_filesz == 0 {
                continue;
            }
            let name = format!("segment {idx}");
            let data = file_range(bytes, ph.p_offset, ph.p_filesz, &name)?;
            let base = region_base(ph.p_vaddr, data.len(), &name)?;
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

    let mut symbols = Vec::new();
    for sym in elf.syms.iter() {
        let kind = match sym.st_type() {
            STT_FUNC => SymbolKind::Function,
            STT_NOTYPE => SymbolKind::Label,
            _ => continue,
        };
        let in_code = section_region
            .get(sym.st_shndx)
            .is_some_and(Option::is_some);
        let (Ok(start), Ok(size)) = (u32::try_from(sym.st_value), u32::try_from(sym.st_size))
        else {
            continue;
        };
        if !in_code {
            continue;
        }
        let Some(name) = elf.strtab.get_at(sym.st_name) else {
            continue;
        };
        symbols.push(Symbol {
            name: name.to_owned(),
            start: GuestLinear(start),
            size,
            kind,
        });
    }

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

    let extents: Vec<(u64, u64)> = regions
        .iter()
        .map(|r| {
            let start = u64::from(r.base.raw());
            (start, start + r.bytes.len() as u64)
        })
        .collect();
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
fn entry_address(elf: &Elf<'_>) -> Option<GuestLinear> {
    let entry = elf.entry;
    let loads = || elf.program_headers.iter().filter(|ph| ph.p_type == PT_LOAD);
    let virt =
        if loads().any(|ph| (ph.p_vaddr..ph.p_vaddr.saturating_add(ph.p_memsz)).contains(&entry)) {
            Some(entry)
        } else {
            loads()
                .find(|ph| (ph.p_paddr..ph.p_paddr.saturating_add(ph.p_memsz)).contains(&entry))
                .and_then(|ph| (entry - ph.p_paddr).checked_add(ph.p_vaddr))
        };
    // Without program headers (relocatable objects) the entry is taken as it stands.
    let virt = if elf.program_headers.is_empty() {
        Some(entry)
    } else {
        virt
    };
    virt.and_then(|v| u32::try_from(v).ok()).map(GuestLinear)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&ELF_MAGIC);
        h[EI_CLASS] = class;
        h[EI_DATA] = data;
        h[E_MACHINE_OFFSET..E_MACHINE_OFFSET + 2].copy_from_slice(&machine.to_le_bytes());
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
