//! Multiboot v1 (specification 0.6.96) loading of ELF32 and "a.out kludge" kernels.
//!
//! The kernel is entered as a Multiboot boot loader leaves it: 32-bit protected mode with
//! paging off, CS a flat 4 GiB execute/read code segment, DS/ES/FS/GS/SS flat 4 GiB
//! read/write data segments, A20 enabled, EFLAGS.IF and EFLAGS.VM clear, EIP =
//! [`BootInfo::entry`], EAX = [`BootInfo::eax`], EBX = [`BootInfo::ebx`]; ESP, the GDT
//! and the IDT are undefined and the kernel must set them up.

use std::fmt;

use goblin::elf::header::{ELFCLASS32, ELFDATA2LSB, ET_EXEC};
use thiserror::Error;

use super::elf::{ElfError, ElfFile, LoadSegment};
use super::ram_range_mut;
use crate::addr::PAGE_SIZE;
use crate::devices::pc;
use crate::firmware::e820::{pc_e820, E820Entry, E820Type};

/// The magic number in the kernel's Multiboot header.
pub const MULTIBOOT_HEADER_MAGIC: u32 = 0x1bad_b002;
/// The value EAX holds at kernel entry, telling the kernel a Multiboot loader started it.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The name passed in the boot information's `boot_loader_name`.
pub const BOOT_LOADER_NAME: &str = "vmm";

/// The header must lie entirely within the image's first 8 KiB, 32-bit aligned.
const HEADER_SEARCH_LIMIT: usize = 8192;
const HEADER_ALIGN: usize = 4;
/// magic, flags, checksum.
const HEADER_BASE_LEN: usize = 12;
/// ... plus header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
const HEADER_AOUT_LEN: usize = 32;
const HEADER_FLAGS_OFFSET: usize = 4;
const HEADER_CHECKSUM_OFFSET: usize = 8;
const HEADER_ADDR_OFFSET: usize = 12;
const LOAD_ADDR_OFFSET: usize = 16;
const LOAD_END_ADDR_OFFSET: usize = 20;
const BSS_END_ADDR_OFFSET: usize = 24;
const ENTRY_ADDR_OFFSET: usize = 28;

/// Header flag: align modules on page boundaries (we load no modules).
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: the kernel needs memory information (always provided).
const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: the kernel needs a video mode set.
const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: the a.out address fields are valid and override the ELF headers.
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Bits 0–15 are requirements: a loader that does not understand one must refuse.
const REQUIRED_FLAGS: u32 = 0xffff;
const SUPPORTED_REQUIRED_FLAGS: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO;

/// Size of the Multiboot information structure up to and including the framebuffer
/// fields; the fields we do not fill stay zero.
const MBI_SIZE: usize = 116;
const MBI_FLAGS: usize = 0;
const MBI_MEM_LOWER: usize = 4;
const MBI_MEM_UPPER: usize = 8;
const MBI_CMDLINE: usize = 16;
const MBI_MMAP_LENGTH: usize = 44;
const MBI_MMAP_ADDR: usize = 48;
const MBI_BOOT_LOADER_NAME: usize = 64;
const MBI_FLAG_MEMORY: u32 = 1 << 0;
const MBI_FLAG_CMDLINE: u32 = 1 << 2;
const MBI_FLAG_MMAP: u32 = 1 << 6;
const MBI_FLAG_BOOT_LOADER_NAME: u32 = 1 << 9;
/// A memory map entry: size (u32, not counting itself), base (u64), length (u64), type.
const MMAP_ENTRY_LEN: usize = 24;
const MMAP_ENTRY_SIZE_FIELD: u32 = 20;
/// Preferred home of the boot information: low memory, clear of a kernel at 1 MiB.
const BOOT_INFO_LOW_BASE: u32 = 0x9000;
const KIB: u32 = 1024;

/// Where the CPU must start the loaded kernel (see the module documentation for the
/// rest of the entry state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// Guest-physical address to start executing at (EIP).
    pub entry: u32,
    /// EAX at entry: [`MULTIBOOT_BOOTLOADER_MAGIC`].
    pub eax: u32,
    /// EBX at entry: guest-physical address of the Multiboot information structure.
    pub ebx: u32,
    /// Guest-physical `[start, end)` of everything loaded, bss included.
    pub kernel_range: (u32, u32),
    /// Guest-physical `[start, end)` of the boot information, memory map and strings.
    pub boot_info_range: (u32, u32),
}

/// Which part of the image described a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentSource {
    /// The ELF program header with this index.
    ProgramHeader(usize),
    /// The a.out kludge address fields of the Multiboot header.
    AoutKludge,
}

impl fmt::Display for SegmentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentSource::ProgramHeader(i) => write!(f, "ELF program header {i}"),
            SegmentSource::AoutKludge => f.write_str("the a.out kludge fields"),
        }
    }
}

/// Why a kernel image could not be loaded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LoadError {
    /// Guest RAM must be addressable with 32 bits.
    #[error("guest RAM of {size:#x} bytes does not fit the 32-bit physical address space")]
    RamTooLarge {
        /// RAM size in bytes.
        size: usize,
    },
    /// No Multiboot header in the first 8192 bytes.
    #[error("no Multiboot header (magic {MULTIBOOT_HEADER_MAGIC:#010x}) 32-bit aligned in the first 8192 bytes")]
    NoHeader,
    /// The header's magic was found but magic + flags + checksum is not 0.
    #[error("Multiboot header at offset {offset:#x}: checksum {checksum:#010x} does not make magic + flags + checksum zero (flags {flags:#010x})")]
    BadChecksum {
        /// File offset of the header.
        offset: usize,
        /// Its flags field.
        flags: u32,
        /// Its checksum field.
        checksum: u32,
    },
    /// The kernel requires a graphics mode (flag bit 2); this monitor has no display.
    #[error("the Multiboot header requires a video mode (flag bit 2), which is not supported")]
    VideoModeRequired,
    /// The kernel requires features (flag bits 3–15) this loader does not know.
    #[error("the Multiboot header requires unknown features (flag bits {bits:#06x} of 0-15)")]
    UnsupportedRequiredFlags {
        /// The unknown required bits.
        bits: u32,
    },
    /// The header ends past the end of the image.
    #[error("the Multiboot header at offset {offset:#x} needs {needed} bytes but the image ends at {image_len:#x}")]
    HeaderTruncated {
        /// File offset of the header.
        offset: usize,
        /// Bytes the header needs.
        needed: usize,
        /// Image length.
        image_len: usize,
    },
    /// An a.out kludge address field is inconsistent.
    #[error("Multiboot header field {field} = {value:#010x}: expected {expected}")]
    InvalidAoutField {
        /// The field's name in the specification.
        field: &'static str,
        /// Its value.
        value: u32,
        /// What it should have been.
        expected: &'static str,
    },
    /// Not an ELF file, and no a.out kludge to say where to load it.
    #[error("the image is not ELF and its Multiboot header has no a.out kludge (flag bit 16)")]
    NotElf,
    /// An ELF header field has a value this loader cannot load.
    #[error("ELF header field {field} = {value:#x}: expected {expected}")]
    UnsupportedElf {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What it should have been.
        expected: &'static str,
    },
    /// The ELF headers could not be parsed.
    #[error("malformed ELF image: {reason}")]
    MalformedElf {
        /// The parser's explanation.
        reason: String,
    },
    /// The image has nothing to load.
    #[error("the ELF image has no PT_LOAD segment with a non-zero memory size")]
    NoLoadableSegments,
    /// A segment's file size exceeds its memory size.
    #[error("{segment}: file size {filesz:#x} exceeds memory size {memsz:#x}")]
    FileSizeExceedsMemSize {
        /// The segment.
        segment: SegmentSource,
        /// Bytes in the file.
        filesz: u64,
        /// Bytes in memory.
        memsz: u64,
    },
    /// A segment's file bytes run past the end of the image.
    #[error("{segment}: file bytes {offset:#x}+{filesz:#x} run past the end of the image ({image_len:#x} bytes)")]
    SegmentBeyondImage {
        /// The segment.
        segment: SegmentSource,
        /// File offset.
        offset: u64,
        /// Bytes in the file.
        filesz: u64,
        /// Image length.
        image_len: usize,
    },
    /// A segment would be loaded over memory the firmware keeps (its tables, the EBDA).
    #[error("{segment}: physical range {start:#x}..{end:#x} overlaps {reserved_start:#x}..{reserved_end:#x}, which the memory map reserves for the firmware")]
    SegmentInReservedMemory {
        /// The segment.
        segment: SegmentSource,
        /// First physical address.
        start: u64,
        /// End (exclusive).
        end: u64,
        /// The reserved range's first address.
        reserved_start: u64,
        /// The reserved range's end (exclusive).
        reserved_end: u64,
    },
    /// A segment would be loaded outside guest RAM.
    #[error(
        "{segment}: physical range {start:#x}..{end:#x} is outside guest RAM (0..{ram_size:#x})"
    )]
    SegmentOutsideRam {
        /// The segment.
        segment: SegmentSource,
        /// First physical address.
        start: u64,
        /// End (exclusive), saturated on overflow.
        end: u64,
        /// RAM size.
        ram_size: usize,
    },
    /// The entry point is not inside anything that was loaded.
    #[error("entry point {entry:#010x} is not inside any loaded segment")]
    EntryOutsideImage {
        /// The entry point.
        entry: u64,
    },
    /// A NUL inside the command line would silently cut it short.
    #[error("the kernel command line contains a NUL byte at position {position}")]
    CmdlineContainsNul {
        /// Byte index of the NUL.
        position: usize,
    },
    /// Neither low memory nor the RAM above the kernel can hold the boot information.
    #[error("no room in guest RAM for {size} bytes of Multiboot information clear of the kernel")]
    NoRoomForBootInfo {
        /// Bytes needed.
        size: usize,
    },
}

/// A validated piece of the image to copy into RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    source: SegmentSource,
    paddr: u64,
    file_offset: u64,
    filesz: u64,
    memsz: u64,
}

impl Segment {
    fn end(&self) -> u64 {
        self.paddr + self.memsz
    }
}

/// A Multiboot header found in the image.
#[derive(Debug, Clone, Copy)]
struct Header {
    offset: usize,
    flags: u32,
}

fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    b.try_into().ok().map(u32::from_le_bytes)
}

fn find_header(image: &[u8]) -> Result<Header, LoadError> {
    let limit = image.len().min(HEADER_SEARCH_LIMIT);
    let mut bad_checksum = None;
    for offset in (0..limit.saturating_sub(HEADER_BASE_LEN - 1)).step_by(HEADER_ALIGN) {
        if read_u32(image, offset) != Some(MULTIBOOT_HEADER_MAGIC) {
            continue;
        }
        let flags = read_u32(image, offset + HEADER_FLAGS_OFFSET).unwrap_or(0);
        let checksum = read_u32(image, offset + HEADER_CHECKSUM_OFFSET).unwrap_or(0);
        if MULTIBOOT_HEADER_MAGIC
            .wrapping_add(flags)
            .wrapping_add(checksum)
            == 0
        {
            return Ok(Header { offset, flags });
        }
        // The magic can occur by chance (in code or data); a later copy may be the real one.
        bad_checksum.get_or_insert(LoadError::BadChecksum {
            offset,
            flags,
            checksum,
        });
    }
    Err(bad_checksum.unwrap_or(LoadError::NoHeader))
}

fn check_flags(flags: u32) -> Result<(), LoadError> {
    if flags & FLAG_VIDEO_MODE != 0 {
        return Err(LoadError::VideoModeRequired);
    }
    let unknown = flags & REQUIRED_FLAGS & !SUPPORTED_REQUIRED_FLAGS & !FLAG_VIDEO_MODE;
    if unknown != 0 {
        return Err(LoadError::UnsupportedRequiredFlags { bits: unknown });
    }
    Ok(())
}

/// Checks a segment against the image and RAM.
fn validate(seg: Segment, image_len: usize, ram_size: usize) -> Result<Segment, LoadError> {
    let source = seg.source;
    if seg.filesz > seg.memsz {
        return Err(LoadError::FileSizeExceedsMemSize {
            segment: source,
            filesz: seg.filesz,
            memsz: seg.memsz,
        });
    }
    let file_end = seg.file_offset.checked_add(seg.filesz);
    if file_end.is_none_or(|e| e > image_len as u64) {
        return Err(LoadError::SegmentBeyondImage {
            segment: source,
            offset: seg.file_offset,
            filesz: seg.filesz,
            image_len,
        });
    }
    let end = seg.paddr.checked_add(seg.memsz);
    if end.is_none_or(|e| e > ram_size as u64) {
        return Err(LoadError::SegmentOutsideRam {
            segment: source,
            start: seg.paddr,
            end: end.unwrap_or(u64::MAX),
            ram_size,
        });
    }
    Ok(seg)
}

/// The a.out kludge: the header says where the image goes.
fn aout_layout(
    image: &[u8],
    header: Header,
    ram_size: usize,
) -> Result<(Vec<Segment>, u64), LoadError> {
    let field = |off: usize| read_u32(image, header.offset + off);
    let (Some(header_addr), Some(load_addr), Some(load_end_addr), Some(bss_end_addr), Some(entry)) = (
        field(HEADER_ADDR_OFFSET),
        field(LOAD_ADDR_OFFSET),
        field(LOAD_END_ADDR_OFFSET),
        field(BSS_END_ADDR_OFFSET),
        field(ENTRY_ADDR_OFFSET),
    ) else {
        return Err(LoadError::HeaderTruncated {
            offset: header.offset,
            needed: HEADER_AOUT_LEN,
            image_len: image.len(),
        });
    };
    if load_addr > header_addr {
        return Err(LoadError::InvalidAoutField {
            field: "load_addr",
            value: load_addr,
            expected: "an address at or below header_addr",
        });
    }
    // The header's place in the file fixes where the load address is in the file.
    let lead = u64::from(header_addr - load_addr);
    let Some(file_offset) = (header.offset as u64).checked_sub(lead) else {
        return Err(LoadError::InvalidAoutField {
            field: "header_addr",
            value: header_addr,
            expected: "load_addr plus at most the header's file offset",
        });
    };
    let filesz = if load_end_addr == 0 {
        // Zero means "load to the end of the file".
        image.len() as u64 - file_offset
    } else if load_end_addr < load_addr {
        return Err(LoadError::InvalidAoutField {
            field: "load_end_addr",
            value: load_end_addr,
            expected: "zero or an address at or above load_addr",
        });
    } else {
        u64::from(load_end_addr - load_addr)
    };
    let memsz = if bss_end_addr == 0 {
        filesz
    } else if u64::from(bss_end_addr) < u64::from(load_addr) + filesz {
        return Err(LoadError::InvalidAoutField {
            field: "bss_end_addr",
            value: bss_end_addr,
            expected: "zero or an address at or above the end of the loaded data",
        });
    } else {
        u64::from(bss_end_addr - load_addr)
    };
    let seg = Segment {
        source: SegmentSource::AoutKludge,
        paddr: u64::from(load_addr),
        file_offset,
        filesz,
        memsz,
    };
    let seg = validate(seg, image.len(), ram_size)?;
    Ok((vec![seg], u64::from(entry)))
}

/// ELF32 i386 executables: load PT_LOAD segments at their physical addresses.
fn elf_layout(image: &[u8], ram_size: usize) -> Result<(Vec<Segment>, u64), LoadError> {
    let elf = ElfFile::parse(image)?;
    let e_type = elf.header().e_type;
    if e_type != ET_EXEC {
        return Err(LoadError::UnsupportedElf {
            field: "e_type",
            value: e_type.into(),
            expected: "ET_EXEC (2)",
        });
    }
    let loads: Vec<&LoadSegment> = elf
        .load_segments()
        .iter()
        .filter(|s| s.memsz != 0)
        .collect();
    let segments = loads
        .iter()
        .map(|s| {
            validate(
                Segment {
                    source: SegmentSource::ProgramHeader(s.index),
                    paddr: s.paddr.into(),
                    file_offset: s.offset.into(),
                    filesz: s.filesz.into(),
                    memsz: s.memsz.into(),
                },
                image.len(),
                ram_size,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    if segments.is_empty() {
        return Err(LoadError::NoLoadableSegments);
    }
    let entry = elf.entry();
    if loads.iter().any(|s| s.contains_paddr(entry)) {
        return Ok((segments, entry.into()));
    }
    // Kernels linked at a virtual address (higher half) give a virtual entry point;
    // translate it through the segment that contains it, as GRUB does.
    let translated = loads
        .iter()
        .find(|s| s.contains_vaddr(entry))
        .map(|s| u64::from(s.paddr) + u64::from(entry - s.vaddr));
    Ok((segments, translated.unwrap_or(entry.into())))
}

impl From<ElfError> for LoadError {
    /// Keeps the loader's own words for what it checks itself (which header field, which
    /// segment); the rest is a malformed image.
    fn from(e: ElfError) -> Self {
        match e {
            ElfError::NotElf => LoadError::NotElf,
            ElfError::NotI386 {
                class,
                data,
                machine,
            } => {
                let (field, value, expected) = if class != ELFCLASS32 {
                    ("e_ident[EI_CLASS]", class.into(), "ELFCLASS32 (1)")
                } else if data != ELFDATA2LSB {
                    ("e_ident[EI_DATA]", data.into(), "ELFDATA2LSB (1)")
                } else {
                    ("e_machine", machine.into(), "EM_386 (3)")
                };
                LoadError::UnsupportedElf {
                    field,
                    value,
                    expected,
                }
            }
            ElfError::BadHeaderField {
                field,
                value,
                expected,
            } => LoadError::UnsupportedElf {
                field,
                value,
                expected,
            },
            ElfError::FileSizeExceedsMemSize {
                index,
                filesz,
                memsz,
            } => LoadError::FileSizeExceedsMemSize {
                segment: SegmentSource::ProgramHeader(index),
                filesz: filesz.into(),
                memsz: memsz.into(),
            },
            ElfError::SegmentBeyondFile {
                index,
                offset,
                filesz,
                file_len,
            } => LoadError::SegmentBeyondImage {
                segment: SegmentSource::ProgramHeader(index),
                offset: offset.into(),
                filesz: filesz.into(),
                image_len: file_len,
            },
            other => LoadError::MalformedElf {
                reason: other.to_string(),
            },
        }
    }
}

/// The image bytes `[offset, offset + len)`, if the image holds them all.
fn file_range(image: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    image.get(start..start.checked_add(usize::try_from(len).ok()?)?)
}

/// KiB of the usable range of `map` starting at `base` (mem_lower from 0, mem_upper from
/// 1 MiB, as the Multiboot specification defines them).
fn usable_kib_from(map: &[E820Entry], base: u64) -> u32 {
    let len = map
        .iter()
        .find(|e| e.kind == E820Type::Ram && e.base == base)
        .map_or(0, |e| e.len);
    u32::try_from(len / u64::from(KIB)).unwrap_or(u32::MAX)
}

/// Builds the boot information block (MBI, memory map, strings) for placement at `base`.
fn boot_info_bytes(base: u32, map: &[E820Entry], cmdline: &str) -> Vec<u8> {
    let mmap_off = MBI_SIZE;
    let cmdline_off = mmap_off + map.len() * MMAP_ENTRY_LEN;
    let name_off = cmdline_off + cmdline.len() + 1;
    let total = name_off + BOOT_LOADER_NAME.len() + 1;
    let mut mbi = [0u8; MBI_SIZE];
    // Offsets within the block are small (the caller checked the block fits in RAM).
    let addr = |off: usize| base.saturating_add(u32::try_from(off).unwrap_or(u32::MAX));
    let mut put = |off: usize, v: u32| {
        if let Some(field) = mbi.get_mut(off..off + 4) {
            field.copy_from_slice(&v.to_le_bytes());
        }
    };
    put(
        MBI_FLAGS,
        MBI_FLAG_MEMORY | MBI_FLAG_CMDLINE | MBI_FLAG_MMAP | MBI_FLAG_BOOT_LOADER_NAME,
    );
    put(MBI_MEM_LOWER, usable_kib_from(map, 0));
    put(
        MBI_MEM_UPPER,
        usable_kib_from(map, u64::from(pc::HIGH_MEMORY.raw())),
    );
    put(MBI_CMDLINE, addr(cmdline_off));
    let mmap_len = u32::try_from(map.len() * MMAP_ENTRY_LEN).unwrap_or(u32::MAX);
    put(MBI_MMAP_LENGTH, mmap_len);
    put(MBI_MMAP_ADDR, addr(mmap_off));
    put(MBI_BOOT_LOADER_NAME, addr(name_off));
    // The MBI, then the memory map at mmap_off, the command line at cmdline_off and the
    // loader's name at name_off, each string NUL-terminated.
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&mbi);
    for region in map {
        b.extend(MMAP_ENTRY_SIZE_FIELD.to_le_bytes());
        b.extend(region.base.to_le_bytes());
        b.extend(region.len.to_le_bytes());
        b.extend(region.kind.code().to_le_bytes());
    }
    for text in [cmdline, BOOT_LOADER_NAME] {
        b.extend(text.as_bytes());
        b.push(0);
    }
    b
}

/// The Multiboot command line as QEMU's loader builds it (and GRUB's, from its `kernel`
/// line): the kernel's path, a space, then the user's arguments. Kernels that follow
/// kvm-unit-tests take the first word as their program name.
pub fn command_line(kernel_path: &str, append: &str) -> String {
    format!("{kernel_path} {append}")
}

/// Where the boot information goes: low memory if clear of the kernel, else the first
/// page boundary above the kernel; always in RAM the memory map calls usable.
fn place_boot_info(segments: &[Segment], size: u64, map: &[E820Entry]) -> Option<u64> {
    let clear = |start: u64| {
        let end = start + size;
        let usable = map
            .iter()
            .any(|e| e.kind == E820Type::Ram && e.base <= start && end <= e.end());
        usable && segments.iter().all(|s| s.end() <= start || s.paddr >= end)
    };
    let low = u64::from(BOOT_INFO_LOW_BASE);
    if clear(low) {
        return Some(low);
    }
    let kernel_end = segments.iter().map(Segment::end).max()?;
    let page = u64::from(PAGE_SIZE);
    let above = kernel_end.div_ceil(page) * page;
    clear(above).then_some(above)
}

/// The segments to load and the entry point, from the Multiboot header's address fields
/// (the a.out kludge) or else from the ELF program headers.
fn layout(image: &[u8], ram_size: usize) -> Result<(Vec<Segment>, u64), LoadError> {
    let header = find_header(image)?;
    check_flags(header.flags)?;
    if header.flags & FLAG_AOUT_KLUDGE != 0 {
        aout_layout(image, header, ram_size)
    } else {
        elf_layout(image, ram_size)
    }
}

/// Loads a Multiboot v1 kernel `image` into guest `ram` (index = guest-physical address)
/// with the command line `cmdline`, and writes the Multiboot information structure.
///
/// ELF32 i386 executables are loaded by their `PT_LOAD` program headers at their
/// physical addresses; if the Multiboot header has the a.out kludge (flag bit 16) its
/// address fields are used instead. The boot information (flags: memory, command line,
/// memory map, boot loader name) is put at 0x9000, or above the kernel if that overlaps.
/// Its memory map is the PC's ([`pc_e820`]); a segment may not overlap what that map
/// reserves, where the firmware tables are. `cmdline` is the whole command line (see
/// [`command_line`]). Nothing is written to RAM unless the whole image is valid.
///
/// # Errors
/// A [`LoadError`] naming the header field or segment that is wrong: no or corrupt
/// Multiboot header, required features not supported (video mode, unknown bits),
/// malformed or non-i386 ELF, segments outside the image or RAM or over reserved memory,
/// an entry point outside the loaded segments, a command line with a NUL, or RAM too small
/// for the boot information.
pub fn load_multiboot(ram: &mut [u8], image: &[u8], cmdline: &str) -> Result<BootInfo, LoadError> {
    let ram_size = ram.len();
    if u32::try_from(ram_size).is_err() {
        return Err(LoadError::RamTooLarge { size: ram_size });
    }
    if let Some(position) = cmdline.bytes().position(|b| b == 0) {
        return Err(LoadError::CmdlineContainsNul { position });
    }
    let (segments, entry) = layout(image, ram_size)?;
    if !segments.iter().any(|s| (s.paddr..s.end()).contains(&entry)) {
        return Err(LoadError::EntryOutsideImage { entry });
    }
    let map = pc_e820(ram_size as u64);
    for seg in &segments {
        let reserved = map
            .iter()
            .find(|e| e.kind == E820Type::Reserved && e.overlaps(seg.paddr, seg.memsz));
        if let Some(r) = reserved {
            return Err(LoadError::SegmentInReservedMemory {
                segment: seg.source,
                start: seg.paddr,
                end: seg.end(),
                reserved_start: r.base,
                reserved_end: r.end(),
            });
        }
    }

    let info_size =
        MBI_SIZE + map.len() * MMAP_ENTRY_LEN + cmdline.len() + 1 + BOOT_LOADER_NAME.len() + 1;
    let info_base = place_boot_info(&segments, info_size as u64, &map)
        .ok_or(LoadError::NoRoomForBootInfo { size: info_size })?;

    // Everything is validated: RAM is below 4 GiB, so every address and end fits in u32
    // and the errors below cannot happen; they keep that argument out of the copies.
    let phys = |v: u64| u32::try_from(v).map_err(|_| LoadError::RamTooLarge { size: ram_size });
    let info_base32 = phys(info_base)?;
    let info = boot_info_bytes(info_base32, &map, cmdline);
    let info_len = info.len() as u64;
    let boot_info_range = (info_base32, phys(info_base + info_len)?);
    let start = segments.iter().map(|s| s.paddr).min().unwrap_or(0);
    let end = segments.iter().map(Segment::end).max().unwrap_or(0);
    let kernel_range = (phys(start)?, phys(end)?);
    let entry = phys(entry)?;
    for seg in &segments {
        let dst = ram_range_mut(ram, seg.paddr, seg.memsz).ok_or(LoadError::SegmentOutsideRam {
            segment: seg.source,
            start: seg.paddr,
            end: seg.end(),
            ram_size,
        })?;
        let src = file_range(image, seg.file_offset, seg.filesz).ok_or(
            LoadError::SegmentBeyondImage {
                segment: seg.source,
                offset: seg.file_offset,
                filesz: seg.filesz,
                image_len: image.len(),
            },
        )?;
        let (file_part, bss) = dst.split_at_mut(src.len());
        file_part.copy_from_slice(src);
        bss.fill(0);
    }
    if let Some(dst) = ram_range_mut(ram, info_base, info_len) {
        dst.copy_from_slice(&info);
    }
    Ok(BootInfo {
        entry,
        eax: MULTIBOOT_BOOTLOADER_MAGIC,
        ebx: info_base32,
        kernel_range,
        boot_info_range,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const RAM_SIZE: usize = 4 << 20;
    const KERNEL_BASE: u32 = 0x10_0000;

    fn len32(len: usize) -> u32 {
        u32::try_from(len).unwrap()
    }

    fn put32(b: &mut Vec<u8>, v: u32) {
        b.extend_from_slice(&v.to_le_bytes());
    }

    fn put16(b: &mut Vec<u8>, v: u16) {
        b.extend_from_slice(&v.to_le_bytes());
    }

    fn mb_header(flags: u32) -> Vec<u8> {
        let mut h = Vec::new();
        put32(&mut h, MULTIBOOT_HEADER_MAGIC);
        put32(&mut h, flags);
        put32(
            &mut h,
            0u32.wrapping_sub(MULTIBOOT_HEADER_MAGIC)
                .wrapping_sub(flags),
        );
        h
    }

    /// A program header for the test ELF builder.
    struct Seg {
        paddr: u32,
        vaddr: u32,
        data: Vec<u8>,
        memsz: u32,
    }

    /// An ELF32 i386 executable: ELF header, program headers, the Multiboot header, then
    /// the segments' bytes.
    fn elf_image(segs: &[Seg], entry: u32, mb_flags: u32) -> Vec<u8> {
        let phoff = 52u32;
        let mb_off = phoff + 32 * len32(segs.len());
        let mut data_off = mb_off + 12;
        let mut offsets = Vec::new();
        for s in segs {
            data_off = data_off.next_multiple_of(16);
            offsets.push(data_off);
            data_off += len32(s.data.len());
        }
        let mut b = Vec::new();
        b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0]);
        b.extend_from_slice(&[0; 8]);
        put16(&mut b, 2); // ET_EXEC
        put16(&mut b, 3); // EM_386
        put32(&mut b, 1);
        put32(&mut b, entry);
        put32(&mut b, phoff);
        put32(&mut b, 0); // no section headers
        put32(&mut b, 0);
        put16(&mut b, 52);
        put16(&mut b, 32);
        put16(&mut b, u16::try_from(segs.len()).unwrap());
        put16(&mut b, 40);
        put16(&mut b, 0);
        put16(&mut b, 0);
        assert_eq!(b.len(), 52);
        for (s, off) in segs.iter().zip(&offsets) {
            put32(&mut b, goblin::elf::program_header::PT_LOAD);
            put32(&mut b, *off);
            put32(&mut b, s.vaddr);
            put32(&mut b, s.paddr);
            put32(&mut b, len32(s.data.len()));
            put32(&mut b, s.memsz);
            put32(&mut b, 7);
            put32(&mut b, 16);
        }
        b.extend_from_slice(&mb_header(mb_flags));
        for (s, off) in segs.iter().zip(&offsets) {
            b.resize(*off as usize, 0);
            b.extend_from_slice(&s.data);
        }
        b
    }

    fn text() -> Vec<u8> {
        (0..200u32).map(|i| (i * 7 + 3).to_le_bytes()[0]).collect()
    }

    fn simple_elf() -> Vec<u8> {
        elf_image(
            &[
                Seg {
                    paddr: KERNEL_BASE,
                    vaddr: KERNEL_BASE,
                    data: text(),
                    memsz: 200,
                },
                Seg {
                    paddr: 0x10_1000,
                    vaddr: 0x10_1000,
                    data: vec![0xaa; 16],
                    memsz: 0x2000,
                },
            ],
            KERNEL_BASE + 0x10,
            FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO,
        )
    }

    fn ram() -> Vec<u8> {
        // Non-zero garbage, so zeroing of bss is visible.
        vec![0x5a; RAM_SIZE]
    }

    fn u32_at(ram: &[u8], addr: u32) -> u32 {
        read_u32(ram, addr as usize).unwrap()
    }

    fn u64_at(ram: &[u8], addr: u32) -> u64 {
        u64::from(u32_at(ram, addr)) | u64::from(u32_at(ram, addr + 4)) << 32
    }

    fn c_string(ram: &[u8], addr: u32) -> String {
        let s = &ram[addr as usize..];
        String::from_utf8(s[..s.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
    }

    #[test]
    fn elf_segments_land_at_physical_addresses() {
        let mut ram = ram();
        let info = load_multiboot(&mut ram, &simple_elf(), "console=ttyS0").unwrap();
        assert_eq!(info.entry, KERNEL_BASE + 0x10);
        assert_eq!(info.eax, 0x2bad_b002);
        assert_eq!(info.kernel_range, (KERNEL_BASE, 0x10_3000));
        assert_eq!(&ram[0x10_0000..0x10_00c8], &text()[..]);
        assert_eq!(&ram[0x10_1000..0x10_1010], &[0xaa; 16]);
        assert!(
            ram[0x10_1010..0x10_3000].iter().all(|&b| b == 0),
            "bss zeroed"
        );
        assert_eq!(ram[0x10_3000], 0x5a, "nothing written past the bss");
    }

    #[test]
    fn boot_information_reads_back_from_ram() {
        let mut ram = ram();
        let info = load_multiboot(&mut ram, &simple_elf(), "console=ttyS0 quiet").unwrap();
        let mbi = info.ebx;
        assert_eq!(mbi, BOOT_INFO_LOW_BASE);
        assert_eq!(u32_at(&ram, mbi), (1 << 0) | (1 << 2) | (1 << 6) | (1 << 9));
        assert_eq!(u32_at(&ram, mbi + 4), 639);
        assert_eq!(u32_at(&ram, mbi + 8), 3 * 1024);
        assert_eq!(
            c_string(&ram, u32_at(&ram, mbi + 16)),
            "console=ttyS0 quiet"
        );
        assert_eq!(c_string(&ram, u32_at(&ram, mbi + 64)), "vmm");
        // Fields we do not provide are zero, not garbage.
        assert_eq!(u32_at(&ram, mbi + 20), 0, "mods_count");
        let (len, addr) = (u32_at(&ram, mbi + 44), u32_at(&ram, mbi + 48));
        assert_eq!(len, 6 * 24);
        let entries: Vec<(u32, u64, u64, u32)> = (0..6)
            .map(|i| {
                let e = addr + i * 24;
                (
                    u32_at(&ram, e),
                    u64_at(&ram, e + 4),
                    u64_at(&ram, e + 12),
                    u32_at(&ram, e + 20),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                (20, 0, 0x9_fc00, 1),
                (20, 0x9_fc00, 0x400, 2),
                (20, 0xe_0000, 0x2_0000, 2),
                (20, 0x10_0000, RAM_SIZE as u64 - 0x10_0000, 1),
                (20, 0xfec0_0000, 0x1000, 2),
                (20, 0xfee0_0000, 0x1000, 2),
            ]
        );
        let (start, end) = info.boot_info_range;
        assert_eq!(start, mbi);
        assert!(end <= pc::EBDA_BASE.raw());
        assert_eq!(end, mbi + 116 + 6 * 24 + 20 + 4);
    }

    #[test]
    fn boot_information_may_sit_between_two_segments() {
        let image = elf_image(
            &[
                Seg {
                    paddr: 0x1000,
                    vaddr: 0x1000,
                    data: vec![0xaa; 16],
                    memsz: 0x2000,
                },
                Seg {
                    paddr: KERNEL_BASE,
                    vaddr: KERNEL_BASE,
                    data: text(),
                    memsz: 200,
                },
            ],
            KERNEL_BASE,
            0,
        );
        let mut ram = ram();
        let info = load_multiboot(&mut ram, &image, "").unwrap();
        assert_eq!(info.kernel_range, (0x1000, KERNEL_BASE + 200));
        assert_eq!(info.ebx, BOOT_INFO_LOW_BASE);
        let (start, end) = info.boot_info_range;
        assert!(0x3000 <= start && end <= KERNEL_BASE);
        assert_eq!(ram[0x1000..0x1010], [0xaa; 16]);
        assert!(ram[0x1010..0x3000].iter().all(|&b| b == 0), "bss zeroed");
        assert_eq!(ram[KERNEL_BASE as usize..][..200], text()[..]);
    }

    #[test]
    fn boot_information_moves_above_a_low_kernel() {
        let image = elf_image(
            &[Seg {
                paddr: 0x8000,
                vaddr: 0x8000,
                data: text(),
                memsz: 0x8000,
            }],
            0x8000,
            0,
        );
        let mut ram = ram();
        let info = load_multiboot(&mut ram, &image, "").unwrap();
        assert_eq!(info.ebx, 0x1_0000);
        assert_eq!(c_string(&ram, u32_at(&ram, info.ebx + 16)), "");
        assert_eq!(&ram[0x8000..0x80c8], &text()[..]);
    }

    #[test]
    fn higher_half_entry_is_translated() {
        let image = elf_image(
            &[Seg {
                paddr: KERNEL_BASE,
                vaddr: 0xc010_0000,
                data: text(),
                memsz: 200,
            }],
            0xc010_0004,
            0,
        );
        let info = load_multiboot(&mut ram(), &image, "").unwrap();
        assert_eq!(info.entry, KERNEL_BASE + 4);
    }

    /// An a.out-kludge kernel with 64 bytes before its header; the header says it sits at
    /// 0x100040 and the text starts at 0x100000.
    fn aout_image(bss_end: u32, entry: u32) -> Vec<u8> {
        let mut b = vec![0x90; 64];
        b.extend_from_slice(&mb_header(FLAG_MEMORY_INFO | FLAG_AOUT_KLUDGE));
        put32(&mut b, KERNEL_BASE + 64); // header_addr
        put32(&mut b, KERNEL_BASE); // load_addr
        put32(&mut b, KERNEL_BASE + 128); // load_end_addr
        put32(&mut b, bss_end); // bss_end_addr
        put32(&mut b, entry); // entry_addr
        b.resize(160, 0xcc); // trailing bytes past load_end are not loaded
        b
    }

    #[test]
    fn aout_kludge_loads_by_header_addresses() {
        let image = aout_image(KERNEL_BASE + 0x1000, KERNEL_BASE + 0x60);
        let mut ram = ram();
        let info = load_multiboot(&mut ram, &image, "x").unwrap();
        assert_eq!(info.entry, KERNEL_BASE + 0x60);
        assert_eq!(info.kernel_range, (KERNEL_BASE, KERNEL_BASE + 0x1000));
        assert_eq!(&ram[0x10_0000..0x10_0080], &image[..128]);
        assert!(ram[0x10_0080..0x10_1000].iter().all(|&b| b == 0));
        assert_eq!(ram[0x10_1000], 0x5a);
    }

    #[test]
    fn aout_kludge_takes_precedence_over_elf() {
        // An ELF whose Multiboot header carries the kludge: the kludge decides.
        let mut image = elf_image(
            &[Seg {
                paddr: 0x20_0000,
                vaddr: 0x20_0000,
                data: text(),
                memsz: 200,
            }],
            0x20_0000,
            0,
        );
        let hdr = 52 + 32;
        let flags = FLAG_AOUT_KLUDGE;
        image[hdr + 4..hdr + 8].copy_from_slice(&flags.to_le_bytes());
        let sum = 0u32
            .wrapping_sub(MULTIBOOT_HEADER_MAGIC)
            .wrapping_sub(flags);
        image[hdr + 8..hdr + 12].copy_from_slice(&sum.to_le_bytes());
        let mut fields = Vec::new();
        for v in [0x30_0000 + len32(hdr), 0x30_0000, 0, 0, 0x30_0000] {
            put32(&mut fields, v);
        }
        image.splice(hdr + 12..hdr + 12, fields);
        let mut ram = ram();
        let info = load_multiboot(&mut ram, &image, "").unwrap();
        assert_eq!(info.entry, 0x30_0000);
        assert_eq!(
            info.kernel_range,
            (0x30_0000, 0x30_0000 + len32(image.len()))
        );
        assert_eq!(&ram[0x30_0000..0x30_0000 + image.len()], &image[..]);
    }

    #[test]
    fn header_errors() {
        let mut ram = ram();
        assert_eq!(
            load_multiboot(&mut ram, &[0; 100], ""),
            Err(LoadError::NoHeader)
        );
        // Beyond the 8 KiB search window.
        let mut far = vec![0; 8192];
        far.extend_from_slice(&mb_header(0));
        assert_eq!(load_multiboot(&mut ram, &far, ""), Err(LoadError::NoHeader));
        // Misaligned.
        let mut odd = vec![0; 2];
        odd.extend_from_slice(&mb_header(0));
        assert_eq!(load_multiboot(&mut ram, &odd, ""), Err(LoadError::NoHeader));
        let mut bad = mb_header(0);
        bad[8] ^= 1;
        assert!(matches!(
            load_multiboot(&mut ram, &bad, ""),
            Err(LoadError::BadChecksum { offset: 0, .. })
        ));
        assert_eq!(
            load_multiboot(&mut ram, &mb_header(FLAG_VIDEO_MODE), ""),
            Err(LoadError::VideoModeRequired)
        );
        assert_eq!(
            load_multiboot(&mut ram, &mb_header(1 << 5 | 1 << 1), ""),
            Err(LoadError::UnsupportedRequiredFlags { bits: 1 << 5 })
        );
        // Optional bits above 16 other than the kludge are fine to ignore; then it must be ELF.
        assert_eq!(
            load_multiboot(&mut ram, &mb_header(1 << 20), ""),
            Err(LoadError::NotElf)
        );
        assert_eq!(
            load_multiboot(&mut ram, &mb_header(FLAG_AOUT_KLUDGE), ""),
            Err(LoadError::HeaderTruncated {
                offset: 0,
                needed: 32,
                image_len: 12
            })
        );
        assert!(ram.iter().all(|&b| b == 0x5a), "failed loads write nothing");
    }

    #[test]
    fn aout_field_errors() {
        let mut ram = ram();
        let mut image = aout_image(0, KERNEL_BASE);
        // load_addr above header_addr.
        image[64 + 16..64 + 20].copy_from_slice(&(KERNEL_BASE + 65).to_le_bytes());
        assert!(matches!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::InvalidAoutField {
                field: "load_addr",
                ..
            })
        ));
        // header_addr implies text before the start of the file.
        let mut image = aout_image(0, KERNEL_BASE);
        image[64 + 16..64 + 20].copy_from_slice(&(KERNEL_BASE - 4).to_le_bytes());
        assert!(matches!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::InvalidAoutField {
                field: "header_addr",
                ..
            })
        ));
        let image = aout_image(KERNEL_BASE + 100, KERNEL_BASE);
        assert!(matches!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::InvalidAoutField {
                field: "bss_end_addr",
                ..
            })
        ));
        let image = aout_image(0, KERNEL_BASE + 128);
        assert_eq!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::EntryOutsideImage {
                entry: u64::from(KERNEL_BASE + 128)
            })
        );
        // load_end past the file.
        let mut image = aout_image(0, KERNEL_BASE);
        image[64 + 20..64 + 24].copy_from_slice(&(KERNEL_BASE + 4096).to_le_bytes());
        assert!(matches!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::SegmentBeyondImage {
                segment: SegmentSource::AoutKludge,
                ..
            })
        ));
        // Beyond RAM.
        let image = aout_image(0xffff_0000, KERNEL_BASE);
        assert!(matches!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::SegmentOutsideRam {
                segment: SegmentSource::AoutKludge,
                ..
            })
        ));
    }

    #[test]
    fn elf_errors() {
        let mut ram = ram();
        let seg = || Seg {
            paddr: KERNEL_BASE,
            vaddr: KERNEL_BASE,
            data: text(),
            memsz: 200,
        };
        let mut image = elf_image(&[seg()], KERNEL_BASE, 0);
        image[4] = 2; // ELFCLASS64
        assert!(matches!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::UnsupportedElf {
                field: "e_ident[EI_CLASS]",
                value: 2,
                ..
            })
        ));
        let mut image = elf_image(&[seg()], KERNEL_BASE, 0);
        image[18] = 62; // EM_X86_64
        assert!(matches!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::UnsupportedElf {
                field: "e_machine",
                value: 62,
                ..
            })
        ));
        let image = elf_image(
            &[Seg {
                memsz: 100,
                ..seg()
            }],
            KERNEL_BASE,
            0,
        );
        assert_eq!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::FileSizeExceedsMemSize {
                segment: SegmentSource::ProgramHeader(0),
                filesz: 200,
                memsz: 100
            })
        );
        let image = elf_image(
            &[Seg {
                paddr: len32(RAM_SIZE) - 100,
                ..seg()
            }],
            len32(RAM_SIZE) - 100,
            0,
        );
        assert!(matches!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::SegmentOutsideRam {
                segment: SegmentSource::ProgramHeader(0),
                ..
            })
        ));
        let image = elf_image(&[seg()], 0x50_0000, 0);
        assert_eq!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::EntryOutsideImage { entry: 0x50_0000 })
        );
        let image = elf_image(&[seg()], KERNEL_BASE, 0);
        let truncated = &image[..image.len() - 1];
        assert!(matches!(
            load_multiboot(&mut ram, truncated, ""),
            Err(LoadError::SegmentBeyondImage {
                segment: SegmentSource::ProgramHeader(0),
                ..
            })
        ));
        let image = elf_image(
            &[Seg {
                memsz: 0,
                data: vec![],
                ..seg()
            }],
            KERNEL_BASE,
            0,
        );
        assert_eq!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::NoLoadableSegments)
        );
        let mut image = elf_image(&[seg()], KERNEL_BASE, 0);
        image[44] = 0xff; // e_phnum far beyond the file
        assert!(matches!(
            load_multiboot(&mut ram, &image, ""),
            Err(LoadError::MalformedElf { .. })
        ));
        assert_eq!(
            load_multiboot(&mut ram, &simple_elf(), "a\0b"),
            Err(LoadError::CmdlineContainsNul { position: 1 })
        );
        assert!(ram.iter().all(|&b| b == 0x5a), "failed loads write nothing");
    }

    #[test]
    fn ram_too_small_for_boot_info() {
        // The kernel fills all RAM above 0x1000, including the low boot information slot.
        let size = 0x2_0000usize;
        let image = elf_image(
            &[Seg {
                paddr: 0x1000,
                vaddr: 0x1000,
                data: text(),
                memsz: len32(size) - 0x1000,
            }],
            0x1000,
            0,
        );
        let mut small = vec![0; size];
        assert!(matches!(
            load_multiboot(&mut small, &image, ""),
            Err(LoadError::NoRoomForBootInfo { .. })
        ));
    }

    #[test]
    fn segments_over_firmware_memory_are_refused() {
        for (paddr, reserved) in [
            (0xe_8000u32, (0xe_0000, 0x10_0000)),
            (0x9_f000, (0x9_fc00, 0xa_0000)),
        ] {
            let image = elf_image(
                &[Seg {
                    paddr,
                    vaddr: paddr,
                    data: text(),
                    memsz: 0x1000,
                }],
                paddr,
                0,
            );
            let mut ram = ram();
            assert_eq!(
                load_multiboot(&mut ram, &image, ""),
                Err(LoadError::SegmentInReservedMemory {
                    segment: SegmentSource::ProgramHeader(0),
                    start: u64::from(paddr),
                    end: u64::from(paddr) + 0x1000,
                    reserved_start: reserved.0,
                    reserved_end: reserved.1,
                })
            );
            assert!(ram.iter().all(|&b| b == 0x5a), "nothing written");
        }
    }

    #[test]
    fn command_line_is_the_path_then_the_arguments() {
        assert_eq!(
            command_line("/k/firmware.elf", "a b"),
            "/k/firmware.elf a b"
        );
        // QEMU keeps the space when there are no arguments.
        assert_eq!(command_line("k.elf", ""), "k.elf ");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Corrupting any bytes of a valid image gives an error or a load, never a panic,
        /// and a successful load stays inside RAM, with the boot information clear of
        /// every segment (it may sit in a gap between two of them, as GRUB puts it).
        #[test]
        fn mutated_images_never_panic(
            aout in any::<bool>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut image = if aout { aout_image(KERNEL_BASE + 0x1000, KERNEL_BASE) } else { simple_elf() };
            for (at, byte) in edits {
                let i = at.index(image.len());
                image[i] = byte;
            }
            if truncate {
                image.truncate(cut.index(image.len()));
            }
            let mut ram = vec![0u8; 2 << 20];
            if let Ok(info) = load_multiboot(&mut ram, &image, "root=/dev/sda") {
                let (ks, ke) = info.kernel_range;
                let (bs, be) = info.boot_info_range;
                prop_assert!(ke as usize <= ram.len() && be as usize <= ram.len());
                let (segments, _) = layout(&image, ram.len()).unwrap();
                prop_assert!(segments
                    .iter()
                    .all(|s| s.end() <= u64::from(bs) || s.paddr >= u64::from(be)));
                prop_assert!(segments.iter().all(|s| u64::from(ks) <= s.paddr && s.end() <= u64::from(ke)));
                prop_assert!(info.entry >= ks && info.entry < ke);
            }
        }

        #[test]
        fn random_bytes_never_panic(image in prop::collection::vec(any::<u8>(), 0..512), with_header in any::<bool>()) {
            let mut image = image;
            if with_header && image.len() >= 12 {
                image[..12].copy_from_slice(&mb_header(FLAG_AOUT_KLUDGE));
            }
            let mut ram = vec![0u8; 1 << 20];
            let _ = load_multiboot(&mut ram, &image, "");
        }
    }
}
