//! The data a PC BIOS leaves in memory for the kernel, written at boot: the BIOS data area
//! and EBDA ([`bda`]), the memory map ([`e820`]), the Intel MultiProcessor table
//! ([`mptable`]) and the ACPI tables ([`acpi`]).
//!
//! Everything is a pure builder of bytes over a [`MachineLayout`] and the PC's addresses
//! and wiring in [`crate::devices::pc`], so the tables agree with each other and with the
//! devices. They lie where a BIOS puts them and kernels look: the EBDA at
//! [`pc::EBDA_BASE`], the ACPI tables (RSDP first) from [`pc::BIOS_AREA`], the MP
//! floating pointer and configuration table from [`pc::BIOS_ROM`]. Those ranges are
//! reserved in the memory map, and the Multiboot loader refuses to load a kernel there.

pub mod acpi;
pub mod bda;
pub mod e820;
pub mod mptable;

use thiserror::Error;

use crate::addr::GuestPhys;
use crate::devices::pc;

/// The most processors the tables describe: local APIC IDs 0..MAX_CPUS, all below the
/// xAPIC broadcast ID and well within the space the tables have.
pub const MAX_CPUS: u8 = 32;

/// Where the ACPI tables go: the E segment of the BIOS area.
const ACPI_AREA: (GuestPhys, u32) = (pc::BIOS_AREA, pc::BIOS_ROM.raw() - pc::BIOS_AREA.raw());
/// Where the MP table goes: the BIOS ROM segment (F segment).
const MP_AREA: (GuestPhys, u32) = (pc::BIOS_ROM, pc::HIGH_MEMORY.raw() - pc::BIOS_ROM.raw());

/// What the firmware tables describe: the machine's size. Everything else (addresses,
/// interrupt wiring, the PM block) is the PC's, from [`pc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineLayout {
    /// Guest RAM in bytes, from address 0.
    pub ram_size: u64,
    /// Processors, local APIC IDs 0 to `cpus - 1`; the first is the bootstrap processor.
    pub cpus: u8,
}

impl MachineLayout {
    /// This monitor's PC: one processor and `ram_size` bytes of RAM.
    pub const fn pc(ram_size: u64) -> Self {
        Self { ram_size, cpus: 1 }
    }

    /// The local APIC IDs of the processors, the bootstrap processor first.
    pub fn apic_ids(&self) -> impl Iterator<Item = u8> {
        0..self.cpus
    }
}

/// Why the firmware data could not be written (monitor-side configuration errors).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum FirmwareError {
    /// The tables describe 1 to [`MAX_CPUS`] processors.
    #[error("{cpus} processors: the firmware tables describe 1 to {MAX_CPUS}")]
    BadCpuCount {
        /// The count asked for.
        cpus: u8,
    },
    /// RAM must reach past the BIOS area, where the tables are.
    #[error("guest RAM of {ram_size:#x} bytes does not reach the BIOS area (1 MiB is needed)")]
    RamTooSmall {
        /// The RAM size.
        ram_size: u64,
    },
    /// The layout's RAM size is not the RAM given.
    #[error("the layout says {layout:#x} bytes of RAM, but {ram:#x} were given")]
    RamMismatch {
        /// The layout's RAM size.
        layout: u64,
        /// The RAM slice's length.
        ram: u64,
    },
    /// The tables outgrew their area (only with far more processors than supported).
    #[error("the firmware tables need more than the {len:#x} bytes at {base}")]
    AreaFull {
        /// The area's start.
        base: GuestPhys,
        /// The area's size.
        len: u32,
    },
}

/// Writes the BIOS data area, the EBDA, the MP table and the ACPI tables into `ram`
/// (index = guest-physical address) for the machine `layout` describes.
///
/// # Errors
/// [`FirmwareError`] if the layout is not one the tables can describe or `ram` does not
/// match it.
pub fn write_firmware(ram: &mut [u8], layout: &MachineLayout) -> Result<(), FirmwareError> {
    if !(1..=MAX_CPUS).contains(&layout.cpus) {
        return Err(FirmwareError::BadCpuCount { cpus: layout.cpus });
    }
    if ram.len() as u64 != layout.ram_size {
        return Err(FirmwareError::RamMismatch {
            layout: layout.ram_size,
            ram: ram.len() as u64,
        });
    }
    if layout.ram_size < u64::from(pc::HIGH_MEMORY.raw()) {
        return Err(FirmwareError::RamTooSmall {
            ram_size: layout.ram_size,
        });
    }
    let acpi = acpi::build(layout, Area::new(ACPI_AREA))?;
    let mp = mptable::build(layout, Area::new(MP_AREA))?;
    for (at, bytes) in bda::build()
        .into_iter()
        .chain([(acpi.base, acpi.bytes), (mp.base, mp.bytes)])
    {
        let start = at.raw() as usize;
        // The areas all lie below 1 MiB, which RAM was checked to cover.
        if let Some(dst) = ram.get_mut(start..start + bytes.len()) {
            dst.copy_from_slice(&bytes);
        }
    }
    Ok(())
}

/// A contiguous firmware area filled table by table at aligned addresses.
#[derive(Debug)]
pub(crate) struct Area {
    base: GuestPhys,
    len: u32,
    bytes: Vec<u8>,
}

impl Area {
    fn new((base, len): (GuestPhys, u32)) -> Self {
        Self {
            base,
            len,
            bytes: Vec::new(),
        }
    }

    /// Appends `data` at the next multiple of `align` (a power of two dividing the base);
    /// returns its guest-physical address.
    pub(crate) fn place(&mut self, data: &[u8], align: usize) -> Result<u32, FirmwareError> {
        let offset = self.bytes.len().next_multiple_of(align);
        let full = FirmwareError::AreaFull {
            base: self.base,
            len: self.len,
        };
        let end = offset.checked_add(data.len()).ok_or(full.clone())?;
        let (Ok(offset32), Ok(end32)) = (u32::try_from(offset), u32::try_from(end)) else {
            return Err(full);
        };
        if end32 > self.len {
            return Err(full);
        }
        self.bytes.resize(offset, 0);
        self.bytes.extend_from_slice(data);
        Ok(self.base.raw() + offset32)
    }
}

/// The bytes an [`Area`] was filled with, and where they go.
#[derive(Debug)]
pub(crate) struct Placed {
    base: GuestPhys,
    bytes: Vec<u8>,
}

impl From<Area> for Placed {
    fn from(a: Area) -> Self {
        Self {
            base: a.base,
            bytes: a.bytes,
        }
    }
}

/// The byte that makes `bytes` sum to zero (mod 256) when stored among them in place of a
/// zero: the checksum of the MP and ACPI structures.
pub(crate) fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)))
}

/// Stores the checksum of `bytes` at `at` (which must hold zero until then).
pub(crate) fn seal(bytes: &mut [u8], at: usize) {
    let sum = checksum(bytes);
    if let Some(b) = bytes.get_mut(at) {
        *b = sum;
    }
}

/// Polarity and trigger mode of an interrupt input, encoded alike in the MP table's
/// interrupt entries (MP spec Table 4-10) and the MADT's MPS INTI flags (ACPI §5.2.12.5):
/// polarity in bits 0–1, trigger mode in bits 2–3, 0 meaning "conforms to the bus".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntiFlags(pub u16);

impl IntiFlags {
    /// As the bus specifies (ISA: edge-triggered, active high).
    pub const CONFORMS: Self = Self(0);
    /// Level-triggered, active high: the ACPI SCI as PIIX4 and QEMU wire it.
    pub const LEVEL_HIGH: Self = Self(0b01 | (0b11 << 2));
}

/// How one ISA IRQ reaches the IOAPIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaRoute {
    /// The ISA IRQ (0–15).
    pub irq: u8,
    /// The IOAPIC input (global system interrupt) it arrives on.
    pub gsi: u8,
    /// Its polarity and trigger mode.
    pub flags: IntiFlags,
}

impl IsaRoute {
    /// Whether the route differs from the identity, ISA-conforming default and so needs
    /// an interrupt source override in the MADT.
    pub fn is_override(&self) -> bool {
        self.gsi != self.irq || self.flags != IntiFlags::CONFORMS
    }
}

/// The ISA IRQs wired to the IOAPIC, in IRQ order: every IRQ but 2 (the PIC cascade,
/// whose pin the PIT's IRQ 0 takes), per [`pc::isa_irq_to_gsi`], the SCI level-triggered
/// and active high. The MP table's interrupt entries and the MADT's overrides both come
/// from here.
pub fn isa_routes() -> impl Iterator<Item = IsaRoute> {
    (0..16u8).filter(|&irq| irq != 2).map(|irq| IsaRoute {
        irq,
        gsi: pc::isa_irq_to_gsi(irq),
        flags: if irq == pc::SCI_IRQ {
            IntiFlags::LEVEL_HIGH
        } else {
            IntiFlags::CONFORMS
        },
    })
}

#[cfg(test)]
mod tests;
