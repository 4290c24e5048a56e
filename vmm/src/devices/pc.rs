//! The PC machine's fixed addresses and wiring, named once so that the devices, the
//! firmware tables (MP table, ACPI) and the guest tests agree. The values are those of
//! QEMU's `pc` machine (i440FX, PIIX), the reference a guest is compared against.

use crate::addr::GuestPhys;

/// The local APIC's xAPIC register page (IA32_APIC_BASE after reset).
pub const LAPIC_BASE: GuestPhys = GuestPhys(0xfee0_0000);
/// The local APIC's register page size.
pub const LAPIC_LEN: u32 = 0x1000;
/// The IOAPIC's register window (IOREGSEL at +0, IOWIN at +0x10).
pub const IOAPIC_BASE: GuestPhys = GuestPhys(0xfec0_0000);
/// The IOAPIC's register window size.
pub const IOAPIC_LEN: u32 = 0x20;
/// The IOAPIC's APIC ID. QEMU's IOAPIC resets to ID 0 and its MADT and SeaBIOS's MP table
/// both say 0 (an xAPIC's IOAPIC IDs need not differ from the processors').
pub const IOAPIC_ID: u8 = 0;
/// The IOAPIC version register's version field: 0x11, the 82093AA (QEMU's default IOAPIC
/// is 0x20, which adds a directed-EOI register this one has not; the suite runs QEMU with
/// `-global ioapic.version=0x11` where a kernel reads it).
pub const IOAPIC_VERSION: u8 = 0x11;
/// The local APIC version register's version field (an integrated xAPIC: 0x14).
pub const LAPIC_VERSION: u8 = 0x14;
/// IOAPIC input pins.
pub const IOAPIC_PINS: u8 = 24;

/// The IOAPIC pin (global system interrupt) an ISA IRQ arrives on: identity, except the
/// PIT's IRQ 0, which a PC wires to pin 2 (an interrupt source override in the MADT and
/// the MP table).
pub const fn isa_irq_to_gsi(irq: u8) -> u8 {
    if irq == 0 {
        2
    } else {
        irq
    }
}

/// The ACPI SCI's ISA IRQ (level-triggered, active high, as QEMU's PIIX4 PM routes it).
pub const SCI_IRQ: u8 = 9;
/// Base of the ACPI PM I/O block (PIIX4 PMBA as QEMU programs it).
pub const PM_BASE: u16 = 0x600;
/// PM1a event block: PM1_STS (2 bytes) then PM1_EN (2 bytes).
pub const PM1A_EVT_BLK: u16 = PM_BASE;
/// PM1a control block (2 bytes): SCI_EN, SLP_TYP, SLP_EN.
pub const PM1A_CNT_BLK: u16 = PM_BASE + 4;
/// The ACPI PM timer (4 bytes, 24 bits significant, 3.579545 MHz).
pub const PM_TMR_BLK: u16 = PM_BASE + 8;
/// The PM timer's frequency in Hz (ACPI spec §4.8.3.3).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The SLP_TYP value the DSDT's `\_S5` package gives: writing it with SLP_EN powers off.
pub const S5_SLP_TYP: u16 = 0;

/// QEMU's firmware-configuration device: selector (16 bits) and data (8 bits) ports.
pub const FW_CFG_PORT_SEL: u16 = 0x510;
/// The fw_cfg data port.
pub const FW_CFG_PORT_DATA: u16 = 0x511;

/// The primary IDE channel's command block (data, error/features, count, LBA low/mid/
/// high, device, status/command).
pub const IDE_PRIMARY_BASE: u16 = 0x1f0;
/// The primary IDE channel's control block (alternate status / device control).
pub const IDE_PRIMARY_CTRL: u16 = 0x3f6;
/// The primary IDE channel's ISA IRQ.
pub const IDE_PRIMARY_IRQ: u8 = 14;

/// The i8042 keyboard controller's data and status/command ports.
pub const I8042_DATA: u16 = 0x60;
/// The i8042 status (read) / command (write) port.
pub const I8042_CMD: u16 = 0x64;
/// The keyboard's ISA IRQ (the i8042 output buffer holding a keyboard byte).
pub const KBD_IRQ: u8 = 1;
/// The PS/2 auxiliary (mouse) port's ISA IRQ.
pub const AUX_IRQ: u8 = 12;
/// System control port A (fast A20 and fast reset).
pub const SYSTEM_CONTROL_PORT_A: u16 = 0x92;
/// PCI configuration mechanism #1: CONFIG_ADDRESS (4 bytes) and CONFIG_DATA (4 bytes).
pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
/// PCI CONFIG_DATA.
pub const PCI_CONFIG_DATA: u16 = 0xcfc;
/// The reset control register of the PIIX (bit 2 starts a reset).
pub const RESET_CONTROL: u16 = 0xcf9;
/// CGA text memory.
pub const CGA_TEXT_BASE: GuestPhys = GuestPhys(0xb8000);
/// The CGA CRTC index and data ports.
pub const CGA_CRTC_INDEX: u16 = 0x3d4;
/// The CGA (VGA colour) status register: display enable and vertical retrace.
pub const CGA_STATUS: u16 = 0x3da;
/// The ports of the PM I/O block the monitor decodes: PM1a event, PM1a control, PM timer.
pub const PM_BLOCK_LEN: u16 = 0x0c;

/// Where the BIOS data area keeps the EBDA segment (a word).
pub const BDA_EBDA_SEGMENT: u32 = 0x40e;
/// Where the BIOS data area keeps the base memory size in KiB (a word).
pub const BDA_BASE_MEMORY_KIB: u32 = 0x413;
/// The extended BIOS data area, as SeaBIOS places it: the last KiB below 640 KiB.
pub const EBDA_BASE: GuestPhys = GuestPhys(0x9fc00);
/// The EBDA's size: one KiB, up to 640 KiB.
pub const EBDA_LEN: u32 = 0x400;
/// The start of the BIOS area where firmware tables may also be found (0xE0000–0xFFFFF).
pub const BIOS_AREA: GuestPhys = GuestPhys(0xe0000);
/// The system BIOS ROM segment (0xF0000–0xFFFFF), where the MP floating pointer is searched.
pub const BIOS_ROM: GuestPhys = GuestPhys(0xf0000);
/// The start of guest RAM above the legacy hole (640 KiB – 1 MiB).
pub const HIGH_MEMORY: GuestPhys = GuestPhys(0x10_0000);
/// The most guest RAM a PC of this layout has: RAM ends where the 32-bit MMIO hole
/// begins (QEMU's `pc` machine puts up to 3 GiB below 4 GiB).
pub const MAX_RAM: u64 = 3 << 30;
