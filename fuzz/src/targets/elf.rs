//! The ELF reader the loaders, the image tools and the kernel proxy share, and the
//! proxy's symbol resolution on top of it.
//!
//! Input: the file.
//!
//! Promises checked: no panic; every load segment and every section that occupies the
//! file lies inside it, as the reader promises.

use proxy::{function_sizes, resolve_symbols};
use vmm::loader::elf::{is_elf, ElfFile};

/// Runs one case.
pub fn run(data: &[u8]) {
    let _ = is_elf(data);
    let Ok(elf) = ElfFile::parse(data) else {
        return;
    };
    let _ = elf.entry();
    let _ = elf.header();
    for seg in elf.load_segments() {
        assert!(seg.filesz <= seg.memsz);
        let bytes = elf.segment_bytes(seg);
        assert_eq!(bytes.len() as u64, u64::from(seg.filesz));
        let _ = seg.contains_vaddr(elf.entry());
    }
    if let Ok(sections) = elf.sections() {
        for s in &sections {
            let _ = s.display_name();
            if let Ok(bytes) = elf.section_bytes(s) {
                if s.occupies_file() {
                    assert_eq!(bytes.len() as u64, u64::from(s.size));
                }
            }
        }
    }
    let _ = elf.symbols().map(|s| s.len());
    let _ = elf.dynamic_symbols().map(|s| s.len());
    let _ = resolve_symbols(&elf);
    let _ = function_sizes(&elf);
}
