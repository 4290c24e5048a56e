//! Bit layouts of segment descriptors and gate descriptors (SDM Vol. 3A, §3.4.5 and
//! §6.11), decoded into named fields and encoded back.

use crate::bits::{high32, low32};

/// System-descriptor types (S = 0), SDM Vol. 3A, Table 3-2.
pub mod system_type {
    /// 16-bit TSS (available).
    pub const TSS16_AVAILABLE: u8 = 1;
    /// LDT.
    pub const LDT: u8 = 2;
    /// 16-bit TSS (busy).
    pub const TSS16_BUSY: u8 = 3;
    /// 16-bit call gate.
    pub const CALL_GATE16: u8 = 4;
    /// Task gate.
    pub const TASK_GATE: u8 = 5;
    /// 16-bit interrupt gate.
    pub const INT_GATE16: u8 = 6;
    /// 16-bit trap gate.
    pub const TRAP_GATE16: u8 = 7;
    /// 32-bit TSS (available).
    pub const TSS32_AVAILABLE: u8 = 9;
    /// 32-bit TSS (busy).
    pub const TSS32_BUSY: u8 = 11;
    /// 32-bit call gate.
    pub const CALL_GATE32: u8 = 12;
    /// 32-bit interrupt gate.
    pub const INT_GATE32: u8 = 14;
    /// 32-bit trap gate.
    pub const TRAP_GATE32: u8 = 15;
}

/// A segment descriptor, every one of its 64 bits in a named field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Base address (bits 16..39 and 56..63).
    pub base: u32,
    /// Segment limit as stored, 20 bits (bits 0..15 and 48..51), in units of G.
    pub limit: u32,
    /// Type field (bits 40..43). For code/data: bit 0 accessed, bit 1 W/R, bit 2 E/C,
    /// bit 3 code.
    pub typ: u8,
    /// S (bit 44): 1 = code or data, 0 = system.
    pub s: bool,
    /// DPL (bits 45..46).
    pub dpl: u8,
    /// P (bit 47).
    pub present: bool,
    /// AVL (bit 52).
    pub avl: bool,
    /// L (bit 53).
    pub l: bool,
    /// D/B (bit 54).
    pub db: bool,
    /// G (bit 55): limit in 4 KiB units.
    pub g: bool,
}

/// Accessed bit of a code/data descriptor type.
pub const TYPE_ACCESSED: u8 = 1;
/// Busy bit of a TSS descriptor type.
pub const TYPE_TSS_BUSY: u8 = 2;

impl Descriptor {
    /// Decodes the 8 bytes of a descriptor (as a little-endian u64).
    pub const fn decode(raw: u64) -> Self {
        let lo = low32(raw);
        let hi = high32(raw);
        Self {
            base: (lo >> 16) | ((hi & 0xff) << 16) | (hi & 0xff00_0000),
            limit: (lo & 0xffff) | (hi & 0x000f_0000),
            typ: ((hi >> 8) & 0xf) as u8,
            s: hi & (1 << 12) != 0,
            dpl: ((hi >> 13) & 3) as u8,
            present: hi & (1 << 15) != 0,
            avl: hi & (1 << 20) != 0,
            l: hi & (1 << 21) != 0,
            db: hi & (1 << 22) != 0,
            g: hi & (1 << 23) != 0,
        }
    }

    /// Encodes back to the 8 bytes (as a little-endian u64).
    pub const fn encode(&self) -> u64 {
        let lo = (self.limit & 0xffff) | (self.base << 16);
        let hi = ((self.base >> 16) & 0xff)
            | ((self.typ as u32 & 0xf) << 8)
            | ((self.s as u32) << 12)
            | ((self.dpl as u32 & 3) << 13)
            | ((self.present as u32) << 15)
            | (self.limit & 0x000f_0000)
            | ((self.avl as u32) << 20)
            | ((self.l as u32) << 21)
            | ((self.db as u32) << 22)
            | ((self.g as u32) << 23)
            | (self.base & 0xff00_0000);
        (lo as u64) | ((hi as u64) << 32)
    }

    /// The limit in bytes: with G = 1 the 20-bit limit counts 4 KiB pages and the low
    /// 12 bits of the byte limit are ones (SDM Vol. 3A, §3.4.5).
    pub const fn byte_limit(&self) -> u32 {
        if self.g {
            (self.limit << 12) | 0xfff
        } else {
            self.limit
        }
    }

    /// Code segment (S = 1 and type bit 3).
    pub const fn is_code(&self) -> bool {
        self.s && self.typ & 8 != 0
    }
    /// Data segment (S = 1 and type bit 3 clear).
    pub const fn is_data(&self) -> bool {
        self.s && self.typ & 8 == 0
    }
    /// Conforming code segment.
    pub const fn is_conforming_code(&self) -> bool {
        self.is_code() && self.typ & 4 != 0
    }
    /// Readable code segment.
    pub const fn is_readable_code(&self) -> bool {
        self.is_code() && self.typ & 2 != 0
    }
    /// Writable data segment.
    pub const fn is_writable_data(&self) -> bool {
        self.is_data() && self.typ & 2 != 0
    }
}

/// A gate descriptor: call, interrupt, trap or task gate (SDM Vol. 3A, Figures 5-8 and 6-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Gate {
    /// Entry-point offset (bits 0..15 and 48..63); unused by task gates.
    pub offset: u32,
    /// Target code-segment selector (or TSS selector for task gates), bits 16..31.
    pub selector: u16,
    /// Parameter count for call gates (bits 32..36).
    pub param_count: u8,
    /// Bits 37..39, reserved (zero in interrupt and trap gates).
    pub reserved: u8,
    /// Type field (bits 40..43), see [`system_type`].
    pub typ: u8,
    /// S (bit 44), must be 0 for a gate.
    pub s: bool,
    /// DPL (bits 45..46).
    pub dpl: u8,
    /// P (bit 47).
    pub present: bool,
}

impl Gate {
    /// Decodes the 8 bytes of a gate (as a little-endian u64).
    pub const fn decode(raw: u64) -> Self {
        let lo = low32(raw);
        let hi = high32(raw);
        Self {
            offset: (lo & 0xffff) | (hi & 0xffff_0000),
            selector: (lo >> 16) as u16,
            param_count: (hi & 0x1f) as u8,
            reserved: ((hi >> 5) & 7) as u8,
            typ: ((hi >> 8) & 0xf) as u8,
            s: hi & (1 << 12) != 0,
            dpl: ((hi >> 13) & 3) as u8,
            present: hi & (1 << 15) != 0,
        }
    }

    /// Encodes back to the 8 bytes (as a little-endian u64).
    pub const fn encode(&self) -> u64 {
        let lo = (self.offset & 0xffff) | ((self.selector as u32) << 16);
        let hi = (self.param_count as u32 & 0x1f)
            | ((self.reserved as u32 & 7) << 5)
            | ((self.typ as u32 & 0xf) << 8)
            | ((self.s as u32) << 12)
            | ((self.dpl as u32 & 3) << 13)
            | ((self.present as u32) << 15)
            | (self.offset & 0xffff_0000);
        (lo as u64) | ((hi as u64) << 32)
    }

    /// A 32-bit gate (type bit 3): pushes 32-bit values and uses a 32-bit offset.
    pub const fn is_32(&self) -> bool {
        self.typ & 8 != 0
    }
}

/// Selector fields (SDM Vol. 3A, §3.4.2).
pub mod selector {
    /// Requested privilege level.
    pub const fn rpl(sel: u16) -> u8 {
        (sel & 3) as u8
    }
    /// Table indicator: 1 = LDT.
    pub const fn ti(sel: u16) -> bool {
        sel & 4 != 0
    }
    /// Index and TI in GDT/LDT ("null" when index and TI are 0).
    pub const fn is_null(sel: u16) -> bool {
        sel & 0xfffc == 0
    }
    /// The error code a fault on this selector pushes (selector with RPL masked, EXT = 0).
    pub const fn error_code(sel: u16) -> u32 {
        (sel & 0xfffc) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flat_code_descriptor() {
        // The classic 0x00CF9A000000FFFF: flat 4 GiB, 32-bit, ring 0 execute/read.
        let d = Descriptor::decode(0x00cf_9a00_0000_ffff);
        assert_eq!(d.base, 0);
        assert_eq!(d.byte_limit(), u32::MAX);
        assert!(d.is_code() && d.is_readable_code() && !d.is_conforming_code());
        assert_eq!(d.dpl, 0);
        assert!(d.present && d.db && d.g);
        let u = Descriptor::decode(0x00cf_f200_0000_ffff);
        assert!(u.is_writable_data());
        assert_eq!(u.dpl, 3);
    }

    #[test]
    fn interrupt_gate_fields() {
        let g = Gate::decode(0xc010_8e00_0008_1234);
        assert_eq!(g.offset, 0xc010_1234);
        assert_eq!(g.selector, 8);
        assert_eq!(g.typ, system_type::INT_GATE32);
        assert!(g.present && g.is_32() && !g.s);
        assert_eq!(g.dpl, 0);
    }

    proptest! {
        #[test]
        fn descriptor_round_trip(raw in any::<u64>()) {
            prop_assert_eq!(Descriptor::decode(raw).encode(), raw);
        }

        #[test]
        fn gate_round_trip(raw in any::<u64>()) {
            prop_assert_eq!(Gate::decode(raw).encode(), raw);
        }

        #[test]
        fn descriptor_fields_round_trip(base in any::<u32>(), limit in 0u32..0x10_0000,
            typ in 0u8..16, dpl in 0u8..4, bits in 0u8..64) {
            let d = Descriptor {
                base, limit, typ, dpl,
                s: bits & 1 != 0, present: bits & 2 != 0, avl: bits & 4 != 0,
                l: bits & 8 != 0, db: bits & 16 != 0, g: bits & 32 != 0,
            };
            prop_assert_eq!(Descriptor::decode(d.encode()), d);
        }
    }
}
