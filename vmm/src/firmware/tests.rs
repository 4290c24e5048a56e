//! The tables read back the way a kernel finds them: the BDA, then the specifications'
//! searches for the MP floating pointer and the RSDP, then every pointer followed and
//! every checksum and field checked.

use super::e820::{pc_e820, E820Type};
use super::mptable::*;
use super::*;
use crate::devices::pc;

const RAM: u64 = 16 << 20;

fn u16_at(ram: &[u8], a: usize) -> u16 {
    u16::from_le_bytes([ram[a], ram[a + 1]])
}

fn u32_at(ram: &[u8], a: usize) -> u32 {
    u32::from_le_bytes([ram[a], ram[a + 1], ram[a + 2], ram[a + 3]])
}

fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |s, &x| s.wrapping_add(x)) == 0
}

fn booted(layout: &MachineLayout) -> Vec<u8> {
    let mut ram = vec![0u8; usize::try_from(layout.ram_size).unwrap()];
    write_firmware(&mut ram, layout).unwrap();
    ram
}

/// `[start, start + len)` searched on 16-byte boundaries for `sig` heading a structure of
/// `len_of(bytes)` bytes that sums to zero.
fn scan(ram: &[u8], start: usize, len: usize, sig: &[u8], size: usize) -> Option<usize> {
    (start..start + len)
        .step_by(16)
        .find(|&a| ram[a..].starts_with(sig) && sums_to_zero(&ram[a..a + size]))
}

/// MP spec §4: the EBDA's first KiB, else the last KiB of base memory; then 0xF0000.
fn find_mp(ram: &[u8]) -> Option<usize> {
    let ebda = usize::from(u16_at(ram, pc::BDA_EBDA_SEGMENT as usize)) << 4;
    let base = usize::from(u16_at(ram, pc::BDA_BASE_MEMORY_KIB as usize)) << 10;
    let first = if ebda != 0 { ebda } else { base - 1024 };
    scan(ram, first, 1024, FLOATING_SIGNATURE, FLOATING_LEN)
        .or_else(|| scan(ram, 0xf_0000, 0x1_0000, FLOATING_SIGNATURE, FLOATING_LEN))
}

/// ACPI §5.2.5.1: the EBDA's first KiB, then 0xE0000–0xFFFFF.
fn find_rsdp(ram: &[u8]) -> Option<usize> {
    let ebda = usize::from(u16_at(ram, pc::BDA_EBDA_SEGMENT as usize)) << 4;
    scan(ram, ebda, 1024, acpi::RSDP_SIGNATURE, acpi::RSDP_LEN).or_else(|| {
        scan(
            ram,
            0xe_0000,
            0x2_0000,
            acpi::RSDP_SIGNATURE,
            acpi::RSDP_LEN,
        )
    })
}

/// A checked ACPI table at `a`: its bytes.
fn sdt<'a>(ram: &'a [u8], a: usize, sig: &[u8; 4]) -> &'a [u8] {
    assert_eq!(&ram[a..a + 4], sig);
    let len = u32_at(ram, a + 4) as usize;
    assert!(len >= acpi::HEADER_LEN);
    let t = &ram[a..a + len];
    assert!(sums_to_zero(t), "{} checksum", String::from_utf8_lossy(sig));
    assert_eq!(t[8], 1, "revision");
    t
}

/// What the MP table says about interrupts.
#[derive(Debug, Default, PartialEq)]
struct MpView {
    cpus: Vec<(u8, u8)>,
    isa_bus: Option<u8>,
    ioapic: Option<(u8, u32)>,
    /// (irq, pin, flags) of the ISA bus's I/O interrupt entries.
    isa: Vec<(u8, u8, u16)>,
    local: Vec<(u8, u8, u8)>,
}

fn read_mp(ram: &[u8]) -> MpView {
    let f = find_mp(ram).expect("floating pointer");
    assert_eq!(ram[f + 8], 1, "length in paragraphs");
    assert_eq!(ram[f + 9], SPEC_REV_1_4);
    assert_eq!(
        &ram[f + 11..f + 16],
        &[0; 5],
        "no default configuration, no IMCR"
    );
    let c = u32_at(ram, f + 4) as usize;
    assert_eq!(&ram[c..c + 4], CONFIG_SIGNATURE);
    let len = usize::from(u16_at(ram, c + 4));
    assert!(
        sums_to_zero(&ram[c..c + len]),
        "configuration table checksum"
    );
    assert_eq!(ram[c + 6], SPEC_REV_1_4);
    assert_eq!(u32_at(ram, c + 36), pc::LAPIC_BASE.raw());
    assert_eq!(u16_at(ram, c + 40), 0, "no extended table");
    let count = u16_at(ram, c + 34);
    let mut v = MpView::default();
    let mut e = c + CONFIG_HEADER_LEN;
    let mut last_type = 0;
    for _ in 0..count {
        let t = ram[e];
        assert!(t >= last_type, "entries in type order");
        last_type = t;
        match t {
            ENTRY_PROCESSOR => {
                assert_eq!(ram[e + 2], pc::LAPIC_VERSION);
                assert_eq!(ram[e + 3] & CPU_ENABLED, CPU_ENABLED);
                v.cpus.push((ram[e + 1], ram[e + 3]));
                e += PROCESSOR_ENTRY_LEN;
            }
            ENTRY_BUS => {
                if &ram[e + 2..e + 8] == BUS_TYPE_ISA {
                    v.isa_bus = Some(ram[e + 1]);
                }
                e += ENTRY_LEN;
            }
            ENTRY_IOAPIC => {
                assert_eq!(ram[e + 2], pc::IOAPIC_VERSION);
                assert_eq!(ram[e + 3], IOAPIC_ENABLED);
                v.ioapic = Some((ram[e + 1], u32_at(ram, e + 4)));
                e += ENTRY_LEN;
            }
            ENTRY_IO_INTERRUPT => {
                assert_eq!(ram[e + 1], INT_TYPE_INT);
                assert_eq!(Some(ram[e + 4]), v.isa_bus);
                assert_eq!(Some(ram[e + 6]), v.ioapic.map(|(id, _)| id));
                v.isa.push((ram[e + 5], ram[e + 7], u16_at(ram, e + 2)));
                e += ENTRY_LEN;
            }
            ENTRY_LOCAL_INTERRUPT => {
                v.local.push((ram[e + 1], ram[e + 6], ram[e + 7]));
                e += ENTRY_LEN;
            }
            other => panic!("unknown entry type {other}"),
        }
    }
    assert_eq!(e, c + len, "the entries fill the table");
    v
}

/// What the ACPI tables say.
#[derive(Debug, Default)]
struct AcpiView {
    cpus: Vec<(u8, u8, u32)>,
    ioapic: Option<(u8, u32, u32)>,
    /// (irq, gsi, flags).
    overrides: Vec<(u8, u32, u16)>,
    sci: u16,
    pm1a_evt: u32,
    pm1a_cnt: u32,
    pm_tmr: u32,
    s5: Option<Vec<u8>>,
    tables: Vec<(usize, usize)>,
}

fn read_acpi(ram: &[u8]) -> AcpiView {
    let r = find_rsdp(ram).expect("RSDP");
    assert_eq!(ram[r + 15], 0, "ACPI 1.0 RSDP");
    let rsdt_at = u32_at(ram, r + 16) as usize;
    let rsdt = sdt(ram, rsdt_at, b"RSDT");
    assert_eq!((rsdt.len() - acpi::HEADER_LEN) % 4, 0);
    let mut v = AcpiView {
        tables: vec![(r, acpi::RSDP_LEN), (rsdt_at, rsdt.len())],
        ..AcpiView::default()
    };
    for i in (acpi::HEADER_LEN..rsdt.len()).step_by(4) {
        let a = u32_at(rsdt, i) as usize;
        match &ram[a..a + 4] {
            b"APIC" => {
                let t = sdt(ram, a, b"APIC");
                v.tables.push((a, t.len()));
                assert_eq!(u32_at(t, 36), pc::LAPIC_BASE.raw());
                assert_eq!(u32_at(t, 40), acpi::MADT_PCAT_COMPAT);
                let mut e = 44;
                while e < t.len() {
                    let len = usize::from(t[e + 1]);
                    match (t[e], len) {
                        (acpi::MADT_LOCAL_APIC, 8) => {
                            v.cpus.push((t[e + 2], t[e + 3], u32_at(t, e + 4)))
                        }
                        (acpi::MADT_IOAPIC, 12) => {
                            v.ioapic = Some((t[e + 2], u32_at(t, e + 4), u32_at(t, e + 8)));
                        }
                        (acpi::MADT_SOURCE_OVERRIDE, 10) => {
                            assert_eq!(t[e + 2], 0, "bus ISA");
                            v.overrides
                                .push((t[e + 3], u32_at(t, e + 4), u16_at(t, e + 8)));
                        }
                        (acpi::MADT_LOCAL_APIC_NMI, 6) => assert_eq!(t[e + 5], 1, "LINT1"),
                        other => panic!("unexpected MADT entry {other:?}"),
                    }
                    e += len;
                }
                assert_eq!(e, t.len(), "the entries fill the MADT");
            }
            b"FACP" => {
                let t = sdt(ram, a, b"FACP");
                v.tables.push((a, t.len()));
                assert_eq!(t.len(), acpi::FADT_LEN);
                let facs = u32_at(t, 36) as usize;
                assert_eq!(&ram[facs..facs + 4], b"FACS");
                assert_eq!(u32_at(ram, facs + 4), 64);
                assert_eq!(facs % 64, 0, "FACS alignment");
                v.tables.push((facs, 64));
                let dsdt_at = u32_at(t, 40) as usize;
                let dsdt = sdt(ram, dsdt_at, b"DSDT");
                v.tables.push((dsdt_at, dsdt.len()));
                let aml = &dsdt[acpi::HEADER_LEN..];
                let at = aml.windows(4).position(|w| w == b"_S5_").expect("_S5_");
                assert_eq!(&aml[at - 2..at], &[0x08, b'\\'], "Name (\\_S5, ...)");
                assert_eq!(aml[at + 4], 0x12, "a package");
                let pkg_len = usize::from(aml[at + 5]);
                v.s5 = Some(aml[at + 5..at + 5 + pkg_len].to_vec());
                v.sci = u16_at(t, 46);
                assert_eq!(u32_at(t, 48), 0, "no SMI_CMD: always in ACPI mode");
                v.pm1a_evt = u32_at(t, 56);
                v.pm1a_cnt = u32_at(t, 64);
                v.pm_tmr = u32_at(t, 76);
                assert_eq!(
                    &t[88..92],
                    &[4, 2, 0, 4],
                    "PM1 event, PM1 control, PM2, PM timer lengths"
                );
                assert_eq!(u32_at(t, 112), acpi::FADT_FLAGS);
            }
            other => panic!("unexpected table {other:?}"),
        }
    }
    v
}

#[test]
fn bda_points_at_the_ebda_below_base_memory() {
    let ram = booted(&MachineLayout::pc(RAM));
    let ebda = u32::from(u16_at(&ram, 0x40e)) << 4;
    assert_eq!(ebda, pc::EBDA_BASE.raw());
    assert_eq!(u32::from(u16_at(&ram, 0x413)) * 1024, ebda);
    assert_eq!(ram[ebda as usize], 1, "EBDA size in KiB");
    assert_eq!(u16_at(&ram, 0x400), 0x3f8);
}

#[test]
fn mp_table_lists_the_machine() {
    let ram = booted(&MachineLayout::pc(RAM));
    let v = read_mp(&ram);
    assert_eq!(v.cpus, [(0, CPU_ENABLED | CPU_BSP)]);
    assert_eq!(v.isa_bus, Some(ISA_BUS_ID));
    assert_eq!(v.ioapic, Some((pc::IOAPIC_ID, pc::IOAPIC_BASE.raw())));
    let pins: Vec<(u8, u8)> = v.isa.iter().map(|&(irq, pin, _)| (irq, pin)).collect();
    let mut expect: Vec<(u8, u8)> = (0..16).filter(|&i| i != 2).map(|i| (i, i)).collect();
    expect[0] = (0, 2);
    assert_eq!(
        pins, expect,
        "IRQ 0 on INTIN2, the others on their own pins"
    );
    assert!(v.isa.contains(&(9, 9, IntiFlags::LEVEL_HIGH.0)), "the SCI");
    assert_eq!(
        v.local,
        [
            (INT_TYPE_EXTINT, ALL_LOCAL_APICS, 0),
            (INT_TYPE_NMI, ALL_LOCAL_APICS, 1)
        ]
    );
}

#[test]
fn acpi_tables_describe_the_machine() {
    let ram = booted(&MachineLayout::pc(RAM));
    let v = read_acpi(&ram);
    assert_eq!(v.cpus, [(0, 0, acpi::MADT_LAPIC_ENABLED)]);
    assert_eq!(v.ioapic, Some((pc::IOAPIC_ID, pc::IOAPIC_BASE.raw(), 0)));
    assert_eq!(v.overrides, [(0, 2, 0), (9, 9, 0b1101)]);
    assert_eq!(v.sci, u16::from(pc::SCI_IRQ));
    assert_eq!(v.pm1a_evt, u32::from(pc::PM1A_EVT_BLK));
    assert_eq!(v.pm1a_cnt, u32::from(pc::PM1A_CNT_BLK));
    assert_eq!(v.pm_tmr, u32::from(pc::PM_TMR_BLK));
    // PkgLength 6, four elements: SLP_TYPa, SLP_TYPb (ZeroOp each), two reserved zeros.
    assert_eq!(v.s5.as_deref(), Some(&[6, 4, 0, 0, 0, 0][..]));
}

#[test]
fn madt_and_mp_table_agree() {
    for cpus in [1, 4, MAX_CPUS] {
        let ram = booted(&MachineLayout {
            ram_size: RAM,
            cpus,
        });
        let mp = read_mp(&ram);
        let acpi = read_acpi(&ram);
        let mp_ids: Vec<u8> = mp.cpus.iter().map(|c| c.0).collect();
        let madt_ids: Vec<u8> = acpi.cpus.iter().map(|c| c.1).collect();
        assert_eq!(mp_ids, madt_ids);
        assert_eq!(mp.cpus.iter().filter(|c| c.1 & CPU_BSP != 0).count(), 1);
        let (mp_id, mp_addr) = mp.ioapic.unwrap();
        let (madt_id, madt_addr, _) = acpi.ioapic.unwrap();
        assert_eq!((mp_id, mp_addr), (madt_id, madt_addr));
        // Every MADT override is the MP table's route for that IRQ, flags included, and
        // every MP route the MADT does not override is the identity, bus-conforming.
        for &(irq, pin, flags) in &mp.isa {
            match acpi.overrides.iter().find(|o| o.0 == irq) {
                Some(&(_, gsi, oflags)) => assert_eq!((u32::from(pin), flags), (gsi, oflags)),
                None => assert_eq!((pin, flags), (irq, 0)),
            }
        }
        // The SCI the FADT names is routed as level/high by both.
        let sci = u8::try_from(acpi.sci).unwrap();
        assert!(mp.isa.contains(&(sci, sci, IntiFlags::LEVEL_HIGH.0)));
    }
}

#[test]
fn tables_lie_in_reserved_memory() {
    let ram = booted(&MachineLayout::pc(RAM));
    let map = pc_e820(RAM);
    let reserved = |a: usize, len: usize| {
        map.iter()
            .filter(|e| e.overlaps(a as u64, len as u64))
            .all(|e| e.kind == E820Type::Reserved)
    };
    let mp = find_mp(&ram).unwrap();
    let config = u32_at(&ram, mp + 4) as usize;
    assert!(reserved(mp, FLOATING_LEN));
    assert!(reserved(config, usize::from(u16_at(&ram, config + 4))));
    for (a, len) in read_acpi(&ram).tables {
        assert!(reserved(a, len), "table at {a:#x}");
    }
    assert!(reserved(
        pc::EBDA_BASE.raw() as usize,
        pc::EBDA_LEN as usize
    ));
}

#[test]
fn layouts_the_tables_cannot_describe_are_refused() {
    let mut ram = vec![0u8; 2 << 20];
    let bad = |ram: &mut [u8], layout: MachineLayout| write_firmware(ram, &layout).unwrap_err();
    assert_eq!(
        bad(
            &mut ram,
            MachineLayout {
                ram_size: 2 << 20,
                cpus: 0
            }
        ),
        FirmwareError::BadCpuCount { cpus: 0 }
    );
    assert_eq!(
        bad(
            &mut ram,
            MachineLayout {
                ram_size: 2 << 20,
                cpus: MAX_CPUS + 1
            }
        ),
        FirmwareError::BadCpuCount { cpus: MAX_CPUS + 1 }
    );
    assert!(matches!(
        bad(&mut ram, MachineLayout::pc(4 << 20)),
        FirmwareError::RamMismatch { .. }
    ));
    let mut small = vec![0u8; 512 << 10];
    assert_eq!(
        bad(&mut small, MachineLayout::pc(512 << 10)),
        FirmwareError::RamTooSmall {
            ram_size: 512 << 10
        }
    );
    assert!(small.iter().all(|&b| b == 0), "nothing written");
}

#[test]
fn checksums_cover_every_byte() {
    let mut b = vec![1, 2, 3, 0, 250];
    seal(&mut b, 3);
    assert!(sums_to_zero(&b));
    assert_eq!(checksum(&[]), 0);
}
