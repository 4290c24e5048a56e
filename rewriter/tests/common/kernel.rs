//! Locating Debian's i386 kernel, the reference input for scans, and its code sections.

use std::path::PathBuf;

/// Environment variable naming the decompressed kernel ELF.
pub const ENV: &str = "VMM_DEBIAN_VMLINUX";

/// An executable section: its address and bytes.
pub struct Text {
    pub address: u32,
    pub bytes: Vec<u8>,
}

/// `$VMM_DEBIAN_VMLINUX`, else `<workspace root>/target/debian/vmlinux`.
pub fn path() -> PathBuf {
    match std::env::var_os(ENV) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debian/vmlinux"),
    }
}

/// The kernel's SHF_EXECINSTR sections, or `None` when the kernel is absent (with a note
/// on stderr). Panics when it is absent under CI, or present but unreadable as i386 ELF.
pub fn text_sections() -> Option<Vec<Text>> {
    let path = path();
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => {
            let note = format!(
                "Debian i386 kernel not found at {} ({e}); run scripts/debian-kernel.sh or set {ENV}",
                path.display()
            );
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{note}");
            eprintln!("note: skipping the kernel part: {note}");
            return None;
        }
    };
    let elf = goblin::elf::Elf::parse(&data)
        .unwrap_or_else(|e| panic!("{}: not an ELF file: {e}", path.display()));
    assert!(!elf.is_64, "{}: expected a 32-bit kernel", path.display());
    let mut texts = Vec::new();
    for sh in &elf.section_headers {
        if sh.sh_flags & u64::from(goblin::elf::section_header::SHF_EXECINSTR) == 0
            || sh.sh_type != goblin::elf::section_header::SHT_PROGBITS
        {
            continue;
        }
        let range = sh.file_range().unwrap_or_else(|| {
            let name = elf.shdr_strtab.get_at(sh.sh_name).unwrap_or("?");
            panic!("{}: section {name} has no file range", path.display())
        });
        texts.push(Text {
            address: u32::try_from(sh.sh_addr).expect("i386 addresses fit 32 bits"),
            bytes: data[range].to_vec(),
        });
    }
    assert!(
        !texts.is_empty(),
        "{}: no executable sections",
        path.display()
    );
    Some(texts)
}
