//! Reading guest code images for inspection: 32-bit ELF, Linux bzImage and raw blobs.
//!
//! The format is recognised from the content, never from the file name. Every format is
//! reduced to the same [`Image`]: executable regions at their guest linear addresses,
//! the entry points known for each, and the symbols that name the code.

mod bzimage;
mod decompress;
mod elf;
mod raw;
mod symbols;

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use vmm::addr::GuestLinear;
use vmm::loader::elf::ElfError;

pub use bzimage::{BzImageInfo, SETUP_HEADER_MAGIC, SETUP_HEADER_MAGIC_OFFSET};
pub use decompress::{Compression, MAX_DECOMPRESSED_SIZE};
pub use symbols::{Symbol, SymbolKind, SymbolTable};

/// The container format an image was recognised as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A 32-bit i386 ELF file (kernel, object or executable).
    Elf32,
    /// A Linux bzImage whose payload is a compressed vmlinux ELF.
    BzImage,
    /// Bytes with no container, loaded at a base address the user names.
    Raw,
}

impl Format {
    /// Lower-case name used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Elf32 => "elf32",
            Format::BzImage => "bzimage",
            Format::Raw => "raw",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A contiguous run of executable bytes at a guest linear address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeRegion {
    /// Where the bytes came from (a section or segment name), for reports.
    pub name: String,
    /// Guest linear address of `bytes[0]`.
    pub base: GuestLinear,
    /// The code as stored in the image.
    pub bytes: Vec<u8>,
    /// Known instruction starts inside the region, sorted and unique: where recursive
    /// descent begins.
    pub entries: Vec<GuestLinear>,
}

impl CodeRegion {
    /// Whether `addr` lies inside the region.
    pub fn contains(&self, addr: GuestLinear) -> bool {
        addr.raw()
            .checked_sub(self.base.raw())
            .is_some_and(|off| usize::try_from(off).is_ok_and(|off| off < self.bytes.len()))
    }

    /// The region's guest linear `[start, end)`.
    pub fn extent(&self) -> (u64, u64) {
        let start = u64::from(self.base.raw());
        (
            start,
            start + u64::try_from(self.bytes.len()).unwrap_or(u64::MAX),
        )
    }
}

/// A guest code image reduced to what a scan needs.
#[derive(Clone, Debug)]
pub struct Image {
    /// The format the content was recognised as.
    pub format: Format,
    /// Executable regions, sorted by base address.
    pub regions: Vec<CodeRegion>,
    /// Symbols naming code, empty when the image carries none.
    pub symbols: SymbolTable,
    /// What the bzImage header said, for bzImages.
    pub bzimage: Option<BzImageInfo>,
}

impl Image {
    /// Total number of executable bytes over all regions.
    pub fn code_bytes(&self) -> usize {
        self.regions.iter().map(|r| r.bytes.len()).sum()
    }
}

/// What was wrong with an image's content.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The file holds no bytes at all.
    #[error("the file is empty")]
    Empty,
    /// Content that matches no known format and no `--base` to read it as raw code.
    #[error(
        "not an ELF file or a Linux bzImage (no \"\\x7fELF\" magic at offset 0, no \"HdrS\" \
         at offset 0x202); to scan raw code, give its load address with --base ADDR"
    )]
    UnknownFormat,
    /// `--base` was given for a file whose format carries its own addresses.
    #[error("the file is {format}, which carries its own load addresses; --base applies only to raw code")]
    BaseWithFormat {
        /// The format the file was recognised as.
        format: Format,
    },
    /// An ELF file of a class or machine other than 32-bit i386.
    #[error("{0}")]
    UnsupportedElf(ElfError),
    /// An ELF file the reader rejected: truncated, or tables pointing outside the file.
    #[error("corrupt ELF: {0}")]
    CorruptElf(ElfError),
    /// An executable section or segment that runs past the 32-bit address space.
    #[error("corrupt ELF: {what} at {addr:#x} ({len} bytes) does not fit in 32-bit addresses")]
    RegionBeyond4GiB {
        /// The section or segment.
        what: String,
        /// Its address.
        addr: u32,
        /// Its length.
        len: usize,
    },
    /// An ELF file with no executable section or segment.
    #[error("ELF file has no executable section (SHF_EXECINSTR) or executable PT_LOAD segment")]
    NoCode,
    /// A bzImage whose setup header is inconsistent or truncated.
    #[error("corrupt bzImage: {field}: {reason}")]
    CorruptBzImage {
        /// The setup-header field at fault.
        field: &'static str,
        /// What was expected of it.
        reason: String,
    },
    /// A bzImage too old to say where its payload is.
    #[error("bzImage boot protocol {major}.{minor:02} has no payload_offset/payload_length fields (needs 2.08 or later)")]
    OldBootProtocol {
        /// Protocol major version.
        major: u8,
        /// Protocol minor version.
        minor: u8,
    },
    /// A payload compressed with a method this reader does not implement.
    #[error("bzImage payload is compressed with {method}, which is not supported (supported: gzip, xz, lzma, zstd)")]
    UnsupportedCompression {
        /// The method recognised from the payload magic.
        method: &'static str,
    },
    /// A payload whose first bytes match no compression magic.
    #[error("bzImage payload starts with {magic}, which matches no known compression magic (gzip 1f 8b, xz fd 37 7a 58 5a 00, lzma 5d 00 00, zstd 28 b5 2f fd)")]
    UnknownCompression {
        /// The first payload bytes in hex.
        magic: String,
    },
    /// The decompressor rejected the payload.
    #[error("bzImage payload ({method}) does not decompress: {source}")]
    Decompress {
        /// Compression method.
        method: Compression,
        /// The decompressor's error.
        #[source]
        source: std::io::Error,
    },
    /// The payload expands past the bound that protects against decompression bombs.
    #[error("bzImage payload ({method}) expands beyond {limit} bytes")]
    TooLarge {
        /// Compression method.
        method: Compression,
        /// The bound in bytes.
        limit: usize,
    },
    /// The decompressed payload is not the vmlinux ELF it should be.
    #[error("decompressed bzImage payload ({method}) is not a usable vmlinux: {source}")]
    BadPayload {
        /// Compression method.
        method: Compression,
        /// Why the payload ELF was rejected.
        #[source]
        source: Box<ImageError>,
    },
    /// Raw code that would not fit below 4 GiB at the given base.
    #[error("{len} bytes of raw code at base {base} do not fit below 4 GiB")]
    RawOutOfRange {
        /// The requested base.
        base: GuestLinear,
        /// Length of the file.
        len: usize,
    },
}

/// An image that could not be read, with the path it came from.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The path given.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its content is unusable.
    #[error("{}: {source}", path.display())]
    Image {
        /// The path given.
        path: PathBuf,
        /// What was wrong with the content.
        #[source]
        source: ImageError,
    },
}

impl LoadError {
    /// Whether the error is about how the command was invoked (`--base` missing or
    /// misplaced) rather than about the file itself.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LoadError::Image {
                source: ImageError::UnknownFormat | ImageError::BaseWithFormat { .. },
                ..
            }
        )
    }
}

/// Reads and parses the image at `path`. `base` asks for raw code loaded at that address
/// and is only accepted when the content is no known format.
///
/// # Errors
/// [`LoadError::Io`] when the file cannot be read, [`LoadError::Image`] when its content
/// is unusable; both name the path.
pub fn load(path: &Path, base: Option<GuestLinear>) -> Result<Image, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(bytes, base).map_err(|source| LoadError::Image {
        path: path.to_owned(),
        source,
    })
}

/// Recognises the format of `bytes` and parses it. See [`load`].
///
/// # Errors
/// An [`ImageError`] saying what the content lacks.
pub fn parse(bytes: Vec<u8>, base: Option<GuestLinear>) -> Result<Image, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = if elf::is_elf(&bytes) {
        Some(Format::Elf32)
    } else if bzimage::is_bzimage(&bytes) {
        Some(Format::BzImage)
    } else {
        None
    };
    match (format, base) {
        (Some(format), Some(_)) => Err(ImageError::BaseWithFormat { format }),
        (Some(Format::Elf32), None) => elf::parse(&bytes),
        (Some(Format::BzImage), None) => bzimage::parse(&bytes),
        (Some(Format::Raw), None) | (None, None) => Err(ImageError::UnknownFormat),
        (None, Some(base)) => raw::parse(bytes, base),
    }
}
