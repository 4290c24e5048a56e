//! The ACPI tables (ACPI 1.0 layout, which every ACPI kernel reads): the RSDP, the RSDT,
//! the MADT with the interrupt source overrides, the FADT with the PIIX4-style PM blocks,
//! the FACS, and a DSDT holding just the `\_S5` package that tells the OS how to power off.

use super::{isa_routes, seal, Area, FirmwareError, MachineLayout, Placed};
use crate::devices::pc;

/// The RSDP's signature.
pub const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
/// The ACPI 1.0 RSDP: 20 bytes, 16-byte aligned.
pub const RSDP_LEN: usize = 20;
/// The system description table header every table but the FACS starts with.
pub const HEADER_LEN: usize = 36;
/// The ACPI 1.0 FADT.
pub const FADT_LEN: usize = 116;
/// The FACS (no checksum; 64-byte aligned).
pub const FACS_LEN: usize = 64;

/// MADT entry types (ACPI §5.2.12): processor local APIC, I/O APIC, interrupt source
/// override, local APIC NMI.
pub const MADT_LOCAL_APIC: u8 = 0;
/// An I/O APIC entry.
pub const MADT_IOAPIC: u8 = 1;
/// An interrupt source override.
pub const MADT_SOURCE_OVERRIDE: u8 = 2;
/// A local APIC NMI entry.
pub const MADT_LOCAL_APIC_NMI: u8 = 4;
/// MADT flags: the PC's 8259 pair is present (and must be masked to use the APICs).
pub const MADT_PCAT_COMPAT: u32 = 1 << 0;
/// Local APIC entry flags: the processor is usable.
pub const MADT_LAPIC_ENABLED: u32 = 1 << 0;
/// FADT INT_MODEL: interrupts through the APICs the MADT describes.
pub const INT_MODEL_APIC: u8 = 1;
/// FADT flags (ACPI 1.0 Table 5-9): WBINVD works, C1 is supported, the power and sleep
/// buttons are not fixed features. TMR_VAL_EXT is clear: the PM timer has 24 bits.
pub const FADT_FLAGS: u32 = (1 << 0) | (1 << 2) | (1 << 4) | (1 << 5);
/// C2/C3 exit latencies above 100 / 1000 µs: the states are not supported.
const C_STATE_UNSUPPORTED: u16 = 0x0fff;
/// The CMOS index of the century register (the RTC keeps it there).
const CMOS_CENTURY: u8 = 0x32;

const OEM_ID: &[u8; 6] = b"VMM   ";
const OEM_TABLE_ID: &[u8; 8] = b"VMM-PC  ";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: &[u8; 4] = b"VMM ";
const CREATOR_REVISION: u32 = 1;
/// Revision 1 tables: ACPI 1.0 layouts, 32-bit AML integers in the DSDT.
const REVISION_1: u8 = 1;
const HEADER_CHECKSUM_OFFSET: usize = 9;
const RSDP_CHECKSUM_OFFSET: usize = 8;

/// AML opcodes and prefixes used by the DSDT (ACPI §20.2).
mod aml {
    pub const ZERO: u8 = 0x00;
    pub const ONE: u8 = 0x01;
    pub const NAME: u8 = 0x08;
    pub const BYTE_PREFIX: u8 = 0x0a;
    pub const PACKAGE: u8 = 0x12;
    pub const ROOT: u8 = b'\\';
}

/// A system description table: the header (length and checksum filled in) and `body`.
pub fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    // Tables are at most a few KiB.
    t.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    t.extend_from_slice(&[REVISION_1, 0]);
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
    t.extend_from_slice(body);
    seal(&mut t, HEADER_CHECKSUM_OFFSET);
    t
}

/// An AML integer constant in its shortest encoding (values up to 255 here).
fn aml_byte(v: u8) -> Vec<u8> {
    match v {
        0 => vec![aml::ZERO],
        1 => vec![aml::ONE],
        _ => vec![aml::BYTE_PREFIX, v],
    }
}

/// The DSDT: `Name (\_S5, Package (4) { SLP_TYPa, SLP_TYPb, 0, 0 })`, the sleep type
/// value that, written to PM1a_CNT.SLP_TYP with SLP_EN, powers the machine off.
pub fn dsdt() -> Vec<u8> {
    // SLP_TYP is a 3-bit field.
    let slp_typ = u8::try_from(pc::S5_SLP_TYP & 7).unwrap_or(0);
    let elements: Vec<u8> = [slp_typ, slp_typ, 0, 0]
        .into_iter()
        .flat_map(aml_byte)
        .collect();
    // PkgLength counts itself (one byte: the package is shorter than 64 bytes), the
    // element count and the elements.
    let pkg_len = u8::try_from(2 + elements.len()).unwrap_or(u8::MAX);
    let mut body = vec![aml::NAME, aml::ROOT];
    body.extend_from_slice(b"_S5_");
    body.extend_from_slice(&[aml::PACKAGE, pkg_len, 4]);
    body.extend_from_slice(&elements);
    table(b"DSDT", &body)
}

/// The FACS: signature, length, and nothing to say (no waking vector, no global lock).
pub fn facs() -> [u8; FACS_LEN] {
    let mut f = [0u8; FACS_LEN];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f
}

/// The ACPI 1.0 FADT pointing at the FACS and DSDT: the SCI's IRQ, the PM1a event and
/// control blocks and the PM timer of [`pc`]. SMI_CMD is zero: there is no SMM, the
/// machine is always in ACPI mode.
pub fn fadt(facs: u32, dsdt: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(FADT_LEN - HEADER_LEN);
    b.extend_from_slice(&facs.to_le_bytes());
    b.extend_from_slice(&dsdt.to_le_bytes());
    b.extend_from_slice(&[INT_MODEL_APIC, 0]); // INT_MODEL, reserved
    b.extend_from_slice(&u16::from(pc::SCI_IRQ).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // SMI_CMD
    b.extend_from_slice(&[0, 0, 0, 0]); // ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, reserved
    for block in [
        u32::from(pc::PM1A_EVT_BLK),
        0, // PM1b_EVT_BLK
        u32::from(pc::PM1A_CNT_BLK),
        0, // PM1b_CNT_BLK
        0, // PM2_CNT_BLK
        u32::from(pc::PM_TMR_BLK),
        0, // GPE0_BLK
        0, // GPE1_BLK
    ] {
        b.extend_from_slice(&block.to_le_bytes());
    }
    // PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TM_LEN, GPE0/GPE1_BLK_LEN, GPE1_BASE, reserved.
    b.extend_from_slice(&[4, 2, 0, 4, 0, 0, 0, 0]);
    b.extend_from_slice(&C_STATE_UNSUPPORTED.to_le_bytes()); // P_LVL2_LAT
    b.extend_from_slice(&C_STATE_UNSUPPORTED.to_le_bytes()); // P_LVL3_LAT
    b.extend_from_slice(&[0; 4]); // FLUSH_SIZE, FLUSH_STRIDE
                                  // DUTY_OFFSET, DUTY_WIDTH, DAY_ALRM, MON_ALRM, CENTURY, 3 reserved.
    b.extend_from_slice(&[0, 0, 0, 0, CMOS_CENTURY, 0, 0, 0]);
    b.extend_from_slice(&FADT_FLAGS.to_le_bytes());
    table(b"FACP", &b)
}

/// The MADT: the local APIC address, PC-AT compatibility, one local APIC per processor,
/// the IOAPIC (GSI base 0), an interrupt source override for every ISA route that is not
/// the identity with bus-conforming flags (IRQ 0 → GSI 2, the SCI level/high), and NMI on
/// LINT1 of every processor.
pub fn madt(layout: &MachineLayout) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&pc::LAPIC_BASE.raw().to_le_bytes());
    b.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for id in layout.apic_ids() {
        b.extend_from_slice(&[MADT_LOCAL_APIC, 8, id, id]);
        b.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
    }
    b.extend_from_slice(&[MADT_IOAPIC, 12, pc::IOAPIC_ID, 0]);
    b.extend_from_slice(&pc::IOAPIC_BASE.raw().to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for r in isa_routes().filter(|r| r.is_override()) {
        b.extend_from_slice(&[MADT_SOURCE_OVERRIDE, 10, 0, r.irq]);
        b.extend_from_slice(&u32::from(r.gsi).to_le_bytes());
        b.extend_from_slice(&r.flags.0.to_le_bytes());
    }
    // Every processor (0xFF), flags conforming, LINT1.
    b.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    table(b"APIC", &b)
}

/// The RSDT listing `tables`.
pub fn rsdt(tables: &[u32]) -> Vec<u8> {
    let body: Vec<u8> = tables.iter().flat_map(|a| a.to_le_bytes()).collect();
    table(b"RSDT", &body)
}

/// The ACPI 1.0 RSDP (revision 0) pointing at the RSDT.
pub fn rsdp(rsdt: u32) -> [u8; RSDP_LEN] {
    let mut r = [0u8; RSDP_LEN];
    r[0..8].copy_from_slice(RSDP_SIGNATURE);
    r[9..15].copy_from_slice(OEM_ID);
    r[15] = 0; // revision 0: ACPI 1.0, RSDT only
    r[16..20].copy_from_slice(&rsdt.to_le_bytes());
    seal(&mut r, RSDP_CHECKSUM_OFFSET);
    r
}

/// Places the tables in `area`, each after the ones it points at, the RSDP last.
pub(crate) fn build(layout: &MachineLayout, mut area: Area) -> Result<Placed, FirmwareError> {
    let dsdt = area.place(&dsdt(), 16)?;
    let facs = area.place(&facs(), 64)?;
    let fadt = area.place(&fadt(facs, dsdt), 16)?;
    let madt = area.place(&madt(layout), 16)?;
    let rsdt = area.place(&rsdt(&[fadt, madt]), 16)?;
    area.place(&rsdp(rsdt), 16)?;
    Ok(area.into())
}
