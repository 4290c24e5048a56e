//! The Intel MultiProcessor table (MP specification 1.4, chapter 4): the floating pointer
//! structure and the configuration table with processor, bus, IOAPIC, I/O interrupt and
//! local interrupt entries, the way xv6-style kernels and Linux's `mpparse` read it.

use super::{isa_routes, seal, Area, FirmwareError, IntiFlags, MachineLayout, Placed};
use crate::devices::pc;
use crate::vcpu::emulate::cpuid;

/// The floating pointer's signature.
pub const FLOATING_SIGNATURE: &[u8; 4] = b"_MP_";
/// The configuration table's signature.
pub const CONFIG_SIGNATURE: &[u8; 4] = b"PCMP";
/// Specification revision 1.4, in the floating pointer and the table header.
pub const SPEC_REV_1_4: u8 = 4;
/// The floating pointer structure: 16 bytes, 16-byte aligned.
pub const FLOATING_LEN: usize = 16;
/// The configuration table header.
pub const CONFIG_HEADER_LEN: usize = 44;

/// Entry types (MP spec Table 4-3) and lengths.
pub const ENTRY_PROCESSOR: u8 = 0;
/// A bus entry.
pub const ENTRY_BUS: u8 = 1;
/// An I/O APIC entry.
pub const ENTRY_IOAPIC: u8 = 2;
/// An I/O interrupt assignment entry.
pub const ENTRY_IO_INTERRUPT: u8 = 3;
/// A local interrupt assignment entry.
pub const ENTRY_LOCAL_INTERRUPT: u8 = 4;
/// A processor entry's length; every other base entry is 8 bytes.
pub const PROCESSOR_ENTRY_LEN: usize = 20;
/// A bus, IOAPIC or interrupt entry's length.
pub const ENTRY_LEN: usize = 8;

/// Processor entry flags: the processor is usable, and it is the bootstrap processor.
pub const CPU_ENABLED: u8 = 1 << 0;
/// The bootstrap processor flag.
pub const CPU_BSP: u8 = 1 << 1;
/// IOAPIC entry flag: usable.
pub const IOAPIC_ENABLED: u8 = 1 << 0;
/// Interrupt types (MP spec Table 4-8): a vectored interrupt from the IOAPIC, an NMI,
/// an 8259-style external interrupt.
pub const INT_TYPE_INT: u8 = 0;
/// NMI.
pub const INT_TYPE_NMI: u8 = 1;
/// ExtINT (the 8259's vector).
pub const INT_TYPE_EXTINT: u8 = 3;
/// The ISA bus's ID, and its type string.
pub const ISA_BUS_ID: u8 = 0;
/// The bus type string of an ISA bus (MP spec Table 4-6), space-padded.
pub const BUS_TYPE_ISA: &[u8; 6] = b"ISA   ";
/// Destination "every local APIC" of a local interrupt entry.
pub const ALL_LOCAL_APICS: u8 = 0xff;

const OEM_ID: &[u8; 8] = b"VMM     ";
const PRODUCT_ID: &[u8; 12] = b"PC          ";
const CHECKSUM_OFFSET: usize = 7;
const FLOATING_CHECKSUM_OFFSET: usize = 10;

/// The configuration table for `layout`: header (checksummed) and entries in the order
/// the specification lists their types.
pub fn config_table(layout: &MachineLayout) -> Vec<u8> {
    let mut entries: Vec<Vec<u8>> = Vec::new();
    for id in layout.apic_ids() {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        let mut e = vec![ENTRY_PROCESSOR, id, pc::LAPIC_VERSION, flags];
        e.extend_from_slice(&cpuid::SIGNATURE.to_le_bytes());
        e.extend_from_slice(&cpuid::LEAF1_EDX.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        entries.push(e);
    }
    let mut bus = vec![ENTRY_BUS, ISA_BUS_ID];
    bus.extend_from_slice(BUS_TYPE_ISA);
    entries.push(bus);
    let mut ioapic = vec![
        ENTRY_IOAPIC,
        pc::IOAPIC_ID,
        pc::IOAPIC_VERSION,
        IOAPIC_ENABLED,
    ];
    ioapic.extend_from_slice(&pc::IOAPIC_BASE.raw().to_le_bytes());
    entries.push(ioapic);
    let interrupt = |kind: u8, int: u8, flags: IntiFlags, irq: u8, dest: u8, pin: u8| {
        let mut e = vec![kind, int];
        e.extend_from_slice(&flags.0.to_le_bytes());
        e.extend_from_slice(&[ISA_BUS_ID, irq, dest, pin]);
        e
    };
    for r in isa_routes() {
        entries.push(interrupt(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            r.flags,
            r.irq,
            pc::IOAPIC_ID,
            r.gsi,
        ));
    }
    // Virtual-wire mode: the 8259's output on LINT0, NMI on LINT1 of every processor.
    for (int, lint) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        entries.push(interrupt(
            ENTRY_LOCAL_INTERRUPT,
            int,
            IntiFlags::CONFORMS,
            0,
            ALL_LOCAL_APICS,
            lint,
        ));
    }

    let body: Vec<u8> = entries.concat();
    let len = CONFIG_HEADER_LEN + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(CONFIG_SIGNATURE);
    // At most MAX_CPUS processors: the table is a few hundred bytes.
    t.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
    t.extend_from_slice(&[SPEC_REV_1_4, 0]);
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(PRODUCT_ID);
    t.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    t.extend_from_slice(&0u16.to_le_bytes());
    t.extend_from_slice(
        &u16::try_from(entries.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes(),
    );
    t.extend_from_slice(&pc::LAPIC_BASE.raw().to_le_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // no extended table: length, checksum, reserved
    t.extend_from_slice(&body);
    seal(&mut t, CHECKSUM_OFFSET);
    t
}

/// The floating pointer structure pointing at a configuration table at `config`: one
/// 16-byte paragraph, revision 1.4, no default configuration, no IMCR (virtual-wire mode).
pub fn floating_pointer(config: u32) -> [u8; FLOATING_LEN] {
    let mut f = [0u8; FLOATING_LEN];
    f[0..4].copy_from_slice(FLOATING_SIGNATURE);
    f[4..8].copy_from_slice(&config.to_le_bytes());
    f[8] = 1; // length in paragraphs
    f[9] = SPEC_REV_1_4;
    seal(&mut f, FLOATING_CHECKSUM_OFFSET);
    f
}

/// Places the configuration table and then its floating pointer (16-byte aligned, as the
/// search requires) in `area`.
pub(crate) fn build(layout: &MachineLayout, mut area: Area) -> Result<Placed, FirmwareError> {
    let config = area.place(&config_table(layout), 16)?;
    area.place(&floating_pointer(config), 16)?;
    Ok(area.into())
}
