//! The Linux/x86 boot protocol (the kernel's `Documentation/arch/x86/boot.rst`), 32-bit
//! entry: a bzImage's protected-mode kernel is loaded at 1 MiB and entered at its
//! `code32_start` with ESI pointing at the zero page (`struct boot_params`), which this
//! loader fills as a boot loader does after the real-mode setup code would have run.
//!
//! Guest-physical layout (all below the EBDA, clear of the BIOS data area):
//!
//! | what                      | where                                   |
//! |---------------------------|-----------------------------------------|
//! | boot GDT (null, null, `__BOOT_CS`, `__BOOT_DS`) | [`GDT_BASE`]      |
//! | boot_params (zero page)   | [`BOOT_PARAMS_BASE`], one page          |
//! | command line              | [`CMDLINE_BASE`], up to the EBDA        |
//! | protected-mode kernel     | [`KERNEL_BASE`] (1 MiB)                 |
//! | initrd                    | highest page-aligned fit below `initrd_addr_max` and the end of RAM |
//!
//! The header is read through offsets named after the `setup_header` fields; nothing
//! is written to RAM unless the image, the command line and the initrd are all usable.

use thiserror::Error;

use super::ram_range_mut;
use crate::addr::PAGE_SIZE;
use crate::devices::pc;
use crate::firmware::e820::{pc_e820, E820Entry};

/// "HdrS", the setup header's signature.
pub const HEADER_MAGIC: [u8; 4] = *b"HdrS";
/// Where the signature lies in the file.
pub const HEADER_MAGIC_OFFSET: usize = 0x202;
/// The oldest protocol this loader speaks: 2.02 moved the command line anywhere in
/// memory (`cmd_line_ptr`), which a 32-bit entry needs.
pub const MIN_PROTOCOL: u16 = 0x0202;

/// `__BOOT_CS`: the boot GDT's flat code selector the protocol enters with.
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`: the boot GDT's flat data selector.
pub const BOOT_DS: u16 = 0x18;
/// `type_of_loader` for a loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// The boot GDT.
pub const GDT_BASE: u32 = 0x6000;
/// The zero page.
pub const BOOT_PARAMS_BASE: u32 = 0x7000;
/// The command line (NUL-terminated).
pub const CMDLINE_BASE: u32 = 0x2_0000;
/// Where the protected-mode kernel is loaded (LOADED_HIGH kernels).
pub const KERNEL_BASE: u32 = 0x10_0000;

/// Size of the zero page.
const BOOT_PARAMS_LEN: usize = 4096;
const SECTOR: usize = 512;
/// `setup_sects` of 0 means 4 (ancient kernels).
const DEFAULT_SETUP_SECTS: usize = 4;
/// The boot sector and the setup header must be present: the fields read go to 0x264.
const MIN_HEADER_END: usize = 0x264;

// setup_header fields, as offsets in the file and in boot_params alike.
const SETUP_SECTS: usize = 0x1f1;
const SYSSIZE: usize = 0x1f4;
const JUMP_END: usize = 0x201;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const CODE32_START: usize = 0x214;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const HEAP_END_PTR: usize = 0x224;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22c;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const CMDLINE_SIZE: usize = 0x238;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;

// boot_params fields outside the setup header.
const SCREEN_EXT_MEM_K: usize = 0x002;
const ALT_MEM_K: usize = 0x1e0;
const E820_ENTRIES: usize = 0x1e8;
const E820_TABLE: usize = 0x2d0;
/// Entries the zero page holds (`E820_MAX_ENTRIES_ZEROPAGE`).
const E820_MAX: usize = 128;
const E820_ENTRY_LEN: usize = 20;

/// `loadflags.LOADED_HIGH`: the protected-mode code is loaded at 1 MiB.
const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags.CAN_USE_HEAP`: `heap_end_ptr` is valid.
const CAN_USE_HEAP: u8 = 1 << 7;
/// `heap_end_ptr` as boot.rst's example loader sets it: 0xe000 - 0x200, relative to the
/// start of the real-mode code.
const HEAP_END: u16 = 0xde00;
/// `initrd_addr_max` before protocol 2.03.
const OLD_INITRD_ADDR_MAX: u32 = 0x37ff_ffff;
/// `cmdline_size` before protocol 2.06.
const OLD_CMDLINE_SIZE: u32 = 255;

/// Why a bzImage could not be loaded; each variant names the field or input at fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinuxLoadError {
    /// No "HdrS" signature at 0x202.
    #[error("not a Linux bzImage: no \"HdrS\" setup header signature at offset 0x202")]
    NotBzImage,
    /// The boot protocol predates 2.02.
    #[error("boot protocol {major}.{minor:02} is too old: at least 2.02 is needed")]
    ProtocolTooOld {
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
    },
    /// The setup sectors, or the protected-mode code `syssize` announces, run past the
    /// end of the file.
    #[error("truncated image: {part} needs file bytes up to {needed:#x}, the file has {len:#x}")]
    Truncated {
        /// "setup header", "setup sectors (setup_sects)" or "protected-mode code (syssize)".
        part: &'static str,
        /// The file length needed.
        needed: u64,
        /// The file length.
        len: usize,
    },
    /// `syssize` is 0: the header announces no protected-mode code.
    #[error("syssize is 0: the header announces no protected-mode code")]
    NoKernelCode,
    /// A zImage (loaded at 0x10000) rather than a bzImage.
    #[error("loadflags {loadflags:#04x} lack LOADED_HIGH: zImage kernels are not supported")]
    NotLoadedHigh {
        /// The header's loadflags.
        loadflags: u8,
    },
    /// The kernel and the memory it decompresses into do not fit in RAM.
    #[error(
        "the kernel needs guest memory up to {needed:#x} (init_size), but RAM ends at {ram_size:#x}"
    )]
    KernelTooLarge {
        /// End of the kernel's range.
        needed: u64,
        /// RAM size.
        ram_size: u64,
    },
    /// The command line is longer than the kernel's `cmdline_size`.
    #[error("command line of {len} bytes is longer than the kernel's cmdline_size of {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The header's limit (NUL excluded).
        max: u32,
    },
    /// The command line holds a NUL byte.
    #[error("command line has a NUL byte at position {position}")]
    CmdlineContainsNul {
        /// Where.
        position: usize,
    },
    /// No page-aligned place for the initrd above the kernel and below both
    /// `initrd_addr_max` and the end of RAM.
    #[error(
        "initrd of {size:#x} bytes does not fit: {room:#x} bytes are free between the kernel's end \
         {kernel_end:#x} and {limit:#x} (the lower of RAM's end and initrd_addr_max + 1)"
    )]
    InitrdTooLarge {
        /// Its size.
        size: u64,
        /// Free bytes.
        room: u64,
        /// End of the kernel's range.
        kernel_end: u64,
        /// The highest end the initrd may have.
        limit: u64,
    },
}

impl LinuxLoadError {
    /// Whether the initrd, not the kernel, is at fault.
    pub const fn is_initrd(&self) -> bool {
        matches!(self, Self::InitrdTooLarge { .. })
    }
}

/// What the setup header says, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    /// Boot protocol version, major in the high byte.
    pub protocol: u16,
    /// Setup sectors after the boot sector (0 already read as 4).
    pub setup_sects: usize,
    /// `syssize`: the protected-mode code in 16-byte paragraphs.
    pub syssize: u32,
    /// `loadflags`.
    pub loadflags: u8,
    /// Entry point of the protected-mode code.
    pub code32_start: u32,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// Longest command line, NUL excluded.
    pub cmdline_size: u32,
    /// `kernel_alignment` (2.05+, else 0).
    pub kernel_alignment: u32,
    /// `relocatable_kernel` (2.05+).
    pub relocatable: bool,
    /// `payload_offset`: the compressed kernel, from the protected-mode code (2.08+,
    /// else 0).
    pub payload_offset: u32,
    /// `payload_length` (2.08+, else 0).
    pub payload_length: u32,
    /// `pref_address` (2.10+, else 0).
    pub pref_address: u64,
    /// `init_size`: memory from the load address the kernel needs to decompress (2.10+,
    /// else 0).
    pub init_size: u32,
    /// End of the header in the file (0x202 + the byte at 0x201).
    pub header_end: usize,
}

impl SetupHeader {
    /// File offset of the protected-mode code.
    pub const fn pm_offset(&self) -> usize {
        (self.setup_sects + 1) * SECTOR
    }

    /// Length of the protected-mode code, from `syssize`.
    pub fn pm_len(&self) -> u64 {
        u64::from(self.syssize) * 16
    }

    /// The protocol version as "major.minor".
    pub fn protocol_string(&self) -> String {
        format!("{}.{:02}", self.protocol >> 8, self.protocol & 0xff)
    }
}

/// Whether `image` carries the setup header signature.
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(HEADER_MAGIC_OFFSET..HEADER_MAGIC_OFFSET + 4) == Some(&HEADER_MAGIC[..])
}

// The header and zero-page accessors: callers read and write inside a length they checked
// (the header's, the zero page's); past the end a read is 0 and a write is dropped.

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .and_then(|f| f.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|f| f.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn put_bytes(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(f) = b.get_mut(off..off + v.len()) {
        f.copy_from_slice(v);
    }
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    put_bytes(b, off, &v.to_le_bytes());
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    put_bytes(b, off, &v.to_le_bytes());
}

/// Reads and validates the setup header of `image` for booting: [`read_header`], and the
/// protected-mode code `syssize` announces lies in the file, and the kernel is loaded
/// high.
///
/// # Errors
/// [`LinuxLoadError::NotBzImage`], `ProtocolTooOld`, `Truncated` (header, setup sectors
/// or the `syssize` code past the file end), `NoKernelCode` or `NotLoadedHigh`.
pub fn parse_header(image: &[u8]) -> Result<SetupHeader, LinuxLoadError> {
    let header = read_header(image)?;
    if header.syssize == 0 {
        return Err(LinuxLoadError::NoKernelCode);
    }
    let pm_end = header.pm_offset() as u64 + header.pm_len();
    if pm_end > image.len() as u64 {
        return Err(LinuxLoadError::Truncated {
            part: "protected-mode code (syssize)",
            needed: pm_end,
            len: image.len(),
        });
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(LinuxLoadError::NotLoadedHigh {
            loadflags: header.loadflags,
        });
    }
    Ok(header)
}

/// Reads the setup header of `image`: the signature, a protocol of at least 2.02, and
/// the header and setup sectors inside the file (what an image reader needs; booting
/// needs [`parse_header`]).
///
/// # Errors
/// [`LinuxLoadError::NotBzImage`], `ProtocolTooOld` or `Truncated` (header or setup
/// sectors past the file end).
pub fn read_header(image: &[u8]) -> Result<SetupHeader, LinuxLoadError> {
    if !is_bzimage(image) {
        return Err(LinuxLoadError::NotBzImage);
    }
    let truncated = |part, needed: usize| LinuxLoadError::Truncated {
        part,
        needed: needed as u64,
        len: image.len(),
    };
    // Every field read below lies in these bytes (constant indices into the array are
    // checked when compiling).
    let Some(fixed) = image.first_chunk::<MIN_HEADER_END>() else {
        return Err(truncated("setup header", MIN_HEADER_END));
    };
    let protocol = u16_at(image, VERSION);
    if protocol < MIN_PROTOCOL {
        let [minor, major] = protocol.to_le_bytes();
        return Err(LinuxLoadError::ProtocolTooOld { major, minor });
    }
    let setup_sects = match fixed[SETUP_SECTS] {
        0 => DEFAULT_SETUP_SECTS,
        n => usize::from(n),
    };
    let field = |off: usize, since: u16| (protocol >= since).then(|| u32_at(image, off));
    let header = SetupHeader {
        protocol,
        setup_sects,
        syssize: u32_at(image, SYSSIZE),
        loadflags: fixed[LOADFLAGS],
        code32_start: u32_at(image, CODE32_START),
        initrd_addr_max: field(INITRD_ADDR_MAX, 0x0203).unwrap_or(OLD_INITRD_ADDR_MAX),
        cmdline_size: field(CMDLINE_SIZE, 0x0206).unwrap_or(OLD_CMDLINE_SIZE),
        kernel_alignment: field(KERNEL_ALIGNMENT, 0x0205).unwrap_or(0),
        relocatable: protocol >= 0x0205 && fixed[RELOCATABLE_KERNEL] != 0,
        payload_offset: field(PAYLOAD_OFFSET, 0x0208).unwrap_or(0),
        payload_length: field(PAYLOAD_LENGTH, 0x0208).unwrap_or(0),
        pref_address: field(PREF_ADDRESS, 0x020a).map_or(0, |lo| {
            u64::from(lo) | (u64::from(u32_at(image, PREF_ADDRESS + 4)) << 32)
        }),
        init_size: field(INIT_SIZE, 0x020a).unwrap_or(0),
        header_end: HEADER_MAGIC_OFFSET + usize::from(fixed[JUMP_END]),
    };
    if header.pm_offset() > image.len() {
        return Err(truncated("setup sectors (setup_sects)", header.pm_offset()));
    }
    Ok(header)
}

/// Where the loaded kernel starts and what the loader put in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxBoot {
    /// EIP at entry: `code32_start`.
    pub entry: u32,
    /// ESI at entry: the zero page.
    pub boot_params: u32,
    /// GDTR at entry: base and limit of the boot GDT.
    pub gdt: (u32, u16),
    /// Guest-physical `[start, end)` the kernel owns: its code and the memory it
    /// decompresses into (`init_size` from `pref_address`).
    pub kernel_range: (u64, u64),
    /// Guest-physical `[start, end)` of the initrd, if one was loaded.
    pub initrd_range: Option<(u64, u64)>,
}

/// The flat boot GDT: null, null, then `__BOOT_CS` (4 GiB execute/read, 32-bit) and
/// `__BOOT_DS` (4 GiB read/write), both DPL 0, accessed.
fn boot_gdt() -> [u64; 4] {
    [0, 0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff]
}

/// Highest page-aligned base for `size` bytes ending at or below `limit` and starting at
/// or above `floor`.
fn place_high(size: u64, floor: u64, limit: u64) -> Option<u64> {
    let page = u64::from(PAGE_SIZE);
    let base = limit.checked_sub(size)? / page * page;
    (base >= floor).then_some(base)
}

/// The zero page for `header` (copied from `image`), with the loader's fields set.
fn boot_params(
    image: &[u8],
    header: &SetupHeader,
    map: &[E820Entry],
    ram_size: u64,
    initrd: Option<(u64, u64)>,
) -> [u8; BOOT_PARAMS_LEN] {
    let mut zp = [0u8; BOOT_PARAMS_LEN];
    let end = header
        .header_end
        .min(image.len())
        .clamp(MIN_HEADER_END, E820_TABLE);
    if let Some(setup) = image.get(SETUP_SECTS..end) {
        put_bytes(&mut zp, SETUP_SECTS, setup);
    }
    zp[TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
    zp[LOADFLAGS] |= CAN_USE_HEAP;
    put_u16(&mut zp, HEAP_END_PTR, HEAP_END);
    put_u32(&mut zp, CMD_LINE_PTR, CMDLINE_BASE);
    let (image_at, size) = initrd.map_or((0, 0), |(start, end)| (start, end - start));
    // Both fit: the initrd lies in RAM below 4 GiB.
    put_u32(&mut zp, RAMDISK_IMAGE, u32::try_from(image_at).unwrap_or(0));
    put_u32(&mut zp, RAMDISK_SIZE, u32::try_from(size).unwrap_or(0));
    let ext_kib = ram_size.saturating_sub(u64::from(KERNEL_BASE)) / 1024;
    put_u32(
        &mut zp,
        ALT_MEM_K,
        u32::try_from(ext_kib).unwrap_or(u32::MAX),
    );
    put_u16(
        &mut zp,
        SCREEN_EXT_MEM_K,
        u16::try_from(ext_kib).unwrap_or(u16::MAX),
    );
    let entries = map.iter().take(E820_MAX);
    zp[E820_ENTRIES] = u8::try_from(entries.len()).unwrap_or(u8::MAX);
    for (i, e) in entries.enumerate() {
        let at = E820_TABLE + i * E820_ENTRY_LEN;
        put_bytes(&mut zp, at, &e.base.to_le_bytes());
        put_bytes(&mut zp, at + 8, &e.len.to_le_bytes());
        put_u32(&mut zp, at + 16, e.kind.code());
    }
    zp
}

/// Loads the bzImage `image` into guest `ram` (index = guest-physical address) for a
/// 32-bit entry, with the command line `cmdline` and optionally an `initrd`.
///
/// The protected-mode code goes to 1 MiB; the initrd to the highest page-aligned place
/// below the end of RAM and `initrd_addr_max`, above the memory the kernel decompresses
/// into; boot_params, the command line and the boot GDT to low memory (see the module
/// documentation). Nothing is written unless everything fits.
///
/// # Errors
/// A [`LinuxLoadError`] naming what is wrong with the image, the command line or the
/// initrd.
pub fn load_linux(
    ram: &mut [u8],
    image: &[u8],
    cmdline: &str,
    initrd: Option<&[u8]>,
) -> Result<LinuxBoot, LinuxLoadError> {
    let header = parse_header(image)?;
    if let Some(position) = cmdline.bytes().position(|b| b == 0) {
        return Err(LinuxLoadError::CmdlineContainsNul { position });
    }
    let cmdline_room = u64::from(pc::EBDA_BASE.raw() - CMDLINE_BASE) - 1;
    if cmdline.len() as u64 > u64::from(header.cmdline_size).min(cmdline_room) {
        return Err(LinuxLoadError::CmdlineTooLong {
            len: cmdline.len(),
            max: header
                .cmdline_size
                .min(u32::try_from(cmdline_room).unwrap_or(u32::MAX)),
        });
    }
    let ram_size = ram.len() as u64;
    // parse_header checked that the code lies in the file.
    let pm = image.get(header.pm_offset()..).unwrap_or_default();
    let pm_len = usize::try_from(header.pm_len()).unwrap_or(usize::MAX);
    let pm = pm.get(..pm_len).unwrap_or(pm);
    let base = u64::from(KERNEL_BASE);
    // The decompressor works from max(load address, pref_address) up to init_size.
    let kernel_end = (base + pm.len() as u64)
        .max(base + u64::from(header.init_size))
        .max(
            header
                .pref_address
                .saturating_add(u64::from(header.init_size)),
        );
    if kernel_end > ram_size {
        return Err(LinuxLoadError::KernelTooLarge {
            needed: kernel_end,
            ram_size,
        });
    }
    let initrd_range = match initrd {
        None => None,
        Some(rd) => {
            let limit = ram_size.min(u64::from(header.initrd_addr_max) + 1);
            let size = rd.len() as u64;
            let at = place_high(size, kernel_end, limit).ok_or(LinuxLoadError::InitrdTooLarge {
                size,
                room: limit.saturating_sub(kernel_end),
                kernel_end,
                limit,
            })?;
            Some((at, at + size))
        }
    };
    let map = pc_e820(ram_size);
    let zp = boot_params(image, &header, &map, ram_size, initrd_range);
    let gdt: Vec<u8> = boot_gdt().iter().flat_map(|d| d.to_le_bytes()).collect();
    let mut cmd = cmdline.as_bytes().to_vec();
    cmd.push(0);
    let mut pieces: Vec<(u64, &[u8])> = vec![
        (u64::from(GDT_BASE), &gdt),
        (u64::from(BOOT_PARAMS_BASE), &zp),
        (u64::from(CMDLINE_BASE), &cmd),
        (base, pm),
    ];
    if let (Some((at, _)), Some(rd)) = (initrd_range, initrd) {
        pieces.push((at, rd));
    }
    for (at, bytes) in pieces {
        // Every piece was checked to lie in RAM (low pieces: RAM reaches 1 MiB + kernel).
        if let Some(dst) = ram_range_mut(ram, at, bytes.len() as u64) {
            dst.copy_from_slice(bytes);
        }
    }
    Ok(LinuxBoot {
        entry: header.code32_start,
        boot_params: BOOT_PARAMS_BASE,
        gdt: (GDT_BASE, u16::try_from(gdt.len() - 1).unwrap_or(u16::MAX)),
        kernel_range: (base, kernel_end),
        initrd_range,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: usize = 64 << 20;
    const RAM32: u32 = 64 << 20;

    /// A bzImage with one setup sector, protocol `version` and `code_len` bytes of code.
    fn synthetic(version: u16, code_len: usize) -> Vec<u8> {
        let mut b = vec![0u8; 2 * SECTOR];
        b[SETUP_SECTS] = 1;
        b[JUMP_END] = 0x66;
        b[HEADER_MAGIC_OFFSET..HEADER_MAGIC_OFFSET + 4].copy_from_slice(&HEADER_MAGIC);
        put_u16(&mut b, VERSION, version);
        b[LOADFLAGS] = LOADED_HIGH;
        put_u32(
            &mut b,
            SYSSIZE,
            u32::try_from(code_len.div_ceil(16)).unwrap(),
        );
        put_u32(&mut b, CODE32_START, KERNEL_BASE);
        put_u32(&mut b, INITRD_ADDR_MAX, 0x7fff_ffff);
        put_u32(&mut b, CMDLINE_SIZE, 2047);
        put_u32(&mut b, INIT_SIZE, 0x40_0000);
        b.extend((0..code_len.div_ceil(16) * 16).map(|i| u8::try_from(i % 251).unwrap()));
        b
    }

    fn zp_u32(ram: &[u8], off: usize) -> u32 {
        u32_at(ram, BOOT_PARAMS_BASE as usize + off)
    }

    #[test]
    fn header_fields_are_read() {
        let h = parse_header(&synthetic(0x020f, 0x1000)).unwrap();
        assert_eq!(h.protocol_string(), "2.15");
        assert_eq!(
            (h.setup_sects, h.pm_offset(), h.pm_len()),
            (1, 0x400, 0x1000)
        );
        assert_eq!((h.code32_start, h.cmdline_size), (KERNEL_BASE, 2047));
        assert_eq!((h.initrd_addr_max, h.init_size), (0x7fff_ffff, 0x40_0000));
        assert_eq!(h.header_end, 0x268);
        // Before 2.03 and 2.06 the fields are absent and take their fixed values.
        let h = parse_header(&synthetic(0x0202, 0x1000)).unwrap();
        assert_eq!((h.initrd_addr_max, h.cmdline_size), (0x37ff_ffff, 255));
        assert_eq!(h.init_size, 0);
    }

    #[test]
    fn boot_params_and_memory() {
        let image = synthetic(0x020f, 0x1000);
        let mut ram = vec![0u8; RAM];
        let rd = vec![0xa5u8; 0x1234];
        let boot = load_linux(&mut ram, &image, "console=ttyS0", Some(&rd)).unwrap();
        assert_eq!(
            (boot.entry, boot.boot_params),
            (KERNEL_BASE, BOOT_PARAMS_BASE)
        );
        assert_eq!(boot.gdt, (GDT_BASE, 31));
        let bp = BOOT_PARAMS_BASE as usize;
        assert_eq!(ram[bp + TYPE_OF_LOADER], 0xff);
        assert_eq!(ram[bp + LOADFLAGS], LOADED_HIGH | CAN_USE_HEAP);
        assert_eq!(&ram[bp + HEADER_MAGIC_OFFSET..][..4], b"HdrS");
        assert_eq!(u16_at(&ram, bp + HEAP_END_PTR), HEAP_END);
        assert_eq!(zp_u32(&ram, CMD_LINE_PTR), CMDLINE_BASE);
        assert_eq!(&ram[CMDLINE_BASE as usize..][..14], b"console=ttyS0\0");
        // The initrd: page-aligned, as high as RAM allows.
        let (start, end) = boot.initrd_range.unwrap();
        assert_eq!((start, end - start), (RAM as u64 - 0x2000, 0x1234));
        assert_eq!(zp_u32(&ram, RAMDISK_IMAGE), RAM32 - 0x2000);
        assert_eq!(zp_u32(&ram, RAMDISK_SIZE), 0x1234);
        let range = usize::try_from(start).unwrap()..usize::try_from(end).unwrap();
        assert!(ram[range].iter().all(|&b| b == 0xa5));
        // The code at 1 MiB, the memory map and the extended memory size.
        assert_eq!(&ram[0x10_0000..0x10_1000], &image[0x400..0x1400]);
        assert_eq!(zp_u32(&ram, ALT_MEM_K), (RAM32 - 0x10_0000) / 1024);
        let map = pc_e820(RAM as u64);
        assert_eq!(usize::from(ram[bp + E820_ENTRIES]), map.len());
        let last = bp + E820_TABLE + (map.len() - 1) * E820_ENTRY_LEN;
        assert_eq!(u32_at(&ram, last), pc::LAPIC_BASE.raw());
        assert_eq!(u32_at(&ram, last + 16), 2);
        // The boot GDT's __BOOT_CS is a flat 32-bit code segment.
        let cs = GDT_BASE as usize + usize::from(BOOT_CS);
        assert_eq!(&ram[cs..cs + 8], &0x00cf_9b00_0000_ffffu64.to_le_bytes());
    }

    #[test]
    fn without_initrd_the_ramdisk_fields_are_zero() {
        let mut ram = vec![0u8; RAM];
        let boot = load_linux(&mut ram, &synthetic(0x020f, 0x100), "", None).unwrap();
        assert_eq!(boot.initrd_range, None);
        assert_eq!(zp_u32(&ram, RAMDISK_IMAGE), 0);
        assert_eq!(ram[CMDLINE_BASE as usize], 0);
    }

    #[test]
    fn the_initrd_stays_below_initrd_addr_max() {
        let mut image = synthetic(0x020f, 0x100);
        put_u32(&mut image, INITRD_ADDR_MAX, 0x1ff_ffff);
        let mut ram = vec![0u8; RAM];
        let boot = load_linux(&mut ram, &image, "", Some(&[1; 0x800])).unwrap();
        assert_eq!(boot.initrd_range, Some((0x1ff_f000, 0x1ff_f800)));
    }

    #[test]
    fn every_error_names_its_cause() {
        let mut ram = vec![0u8; RAM];
        let good = synthetic(0x020f, 0x1000);
        let load = |ram: &mut [u8], image: &[u8], cmd: &str, rd: Option<&[u8]>| {
            load_linux(ram, image, cmd, rd).unwrap_err()
        };
        assert_eq!(
            load(&mut ram, &[0u8; 0x1000], "", None),
            LinuxLoadError::NotBzImage
        );
        let old = synthetic(0x0201, 0x1000);
        let err = load(&mut ram, &old, "", None);
        assert_eq!(err, LinuxLoadError::ProtocolTooOld { major: 2, minor: 1 });
        assert!(err.to_string().contains("2.01"), "{err}");
        for len in [0x207, 0x230] {
            let err = load(&mut ram, &good[..len], "", None);
            assert!(matches!(
                err,
                LinuxLoadError::Truncated {
                    part: "setup header",
                    ..
                }
            ));
        }
        let err = load(&mut ram, &good[..0x380], "", None);
        assert!(matches!(
            err,
            LinuxLoadError::Truncated {
                part: "setup sectors (setup_sects)",
                ..
            }
        ));
        let err = load(&mut ram, &good[..good.len() - 1], "", None);
        assert_eq!(
            err,
            LinuxLoadError::Truncated {
                part: "protected-mode code (syssize)",
                needed: 0x1400,
                len: 0x13ff
            }
        );
        let mut empty = good.clone();
        put_u32(&mut empty, SYSSIZE, 0);
        assert_eq!(
            load(&mut ram, &empty, "", None),
            LinuxLoadError::NoKernelCode
        );
        let mut zimage = good.clone();
        zimage[LOADFLAGS] = 0;
        let err = load(&mut ram, &zimage, "", None);
        assert_eq!(err, LinuxLoadError::NotLoadedHigh { loadflags: 0 });
        let long = "x".repeat(2048);
        let err = load(&mut ram, &good, &long, None);
        assert_eq!(
            err,
            LinuxLoadError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        );
        assert!(load_linux(&mut ram, &good, &long[..2047], None).is_ok());
        let err = load(&mut ram, &good, "a\0b", None);
        assert_eq!(err, LinuxLoadError::CmdlineContainsNul { position: 1 });
        let big = vec![0u8; RAM - 0x50_0000 + 1];
        let err = load(&mut ram, &good, "", Some(&big));
        assert!(err.is_initrd());
        assert!(matches!(
            err,
            LinuxLoadError::InitrdTooLarge {
                kernel_end: 0x50_0000,
                ..
            }
        ));
        let mut small = vec![0u8; 0x48_0000];
        let err = load(&mut small, &good, "", None);
        assert!(matches!(
            err,
            LinuxLoadError::KernelTooLarge {
                needed: 0x50_0000,
                ..
            }
        ));
        // Nothing was written by the refused loads into fresh RAM.
        assert!(small.iter().all(|&b| b == 0));
    }

    /// Debian's 686 bzImage, when `scripts/setup.sh` fetched it.
    #[test]
    fn debian_kernel_header() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debian/vmlinuz");
        let Ok(image) = std::fs::read(path) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{path} is missing (scripts/setup.sh fetches it)"
            );
            eprintln!("skipped: {path} is absent (scripts/setup.sh fetches it)");
            return;
        };
        let h = parse_header(&image).unwrap();
        assert!(h.protocol >= 0x020a, "protocol {}", h.protocol_string());
        assert!(h.loadflags & LOADED_HIGH != 0 && h.relocatable);
        assert_eq!(h.code32_start, KERNEL_BASE);
        assert!(h.cmdline_size >= 255 && h.init_size > 0);
        let mut ram = vec![0u8; 256 << 20];
        let boot = load_linux(&mut ram, &image, "console=ttyS0", Some(&[0; 4096])).unwrap();
        assert!(boot.kernel_range.1 <= boot.initrd_range.unwrap().0);
    }
}
