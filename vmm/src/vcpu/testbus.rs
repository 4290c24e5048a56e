//! A fake machine for the emulation tests: flat RAM (linear = physical), descriptor tables
#![allow(dead_code)]
//! built in it, a port log.

use super::descriptor::{system_type, Descriptor, Gate};
use super::state::{gpr, Segment, TableReg, VcpuState};
use super::{Fault, GuestBus};
use crate::addr::GuestLinear;
use crate::x86::SegReg;
use std::collections::HashMap;

/// RAM size.
pub const RAM: usize = 0x10_0000;
/// GDT base (limit 0xFF).
pub const GDT: u32 = 0x1000;
/// IDT base (limit 0x7FF).
pub const IDT: u32 = 0x2000;
/// TSS base.
pub const TSS: u32 = 0x3000;
/// I/O bitmap offset inside the TSS.
pub const IOMAP: u32 = 0x68;
/// LDT base.
pub const LDT: u32 = 0x6000;
/// Kernel stack top (TSS.ESP0).
pub const KSTACK: u32 = 0x9000;
/// User stack top.
pub const USTACK: u32 = 0x8000;

/// The fake bus.
#[derive(Debug)]
pub struct TestBus {
    pub ram: Vec<u8>,
    pub outs: Vec<(u16, u8, u32)>,
    pub ins: HashMap<u16, u32>,
    /// Linear ranges [start, end) that fault as not-present pages.
    pub unmapped: Vec<(u32, u32)>,
    pub tsc: u64,
}

pub fn flat(typ: u8, dpl: u8) -> Descriptor {
    Descriptor {
        base: 0,
        limit: 0xfffff,
        typ,
        s: true,
        dpl,
        present: true,
        avl: false,
        l: false,
        db: true,
        g: true,
    }
}

pub fn system(base: u32, limit: u32, typ: u8) -> Descriptor {
    Descriptor {
        base,
        limit,
        typ,
        s: false,
        dpl: 0,
        present: true,
        ..Default::default()
    }
}

pub fn int_gate(sel: u16, offset: u32, typ: u8, dpl: u8) -> Gate {
    Gate {
        offset,
        selector: sel,
        typ,
        dpl,
        present: true,
        ..Default::default()
    }
}

impl Default for TestBus {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBus {
    /// A bus whose IDT sends every vector `v` to `handler + v` through a DPL 0 interrupt
    /// gate, and INT 0x80 through a DPL 3 trap gate, with the flat protected-mode state
    /// that goes with it.
    pub fn with_interrupt_handlers(handler: u32) -> (VcpuState, Self) {
        let mut bus = Self::new();
        for v in 0..=255u8 {
            bus.set_gate(
                v,
                int_gate(0x08, handler + u32::from(v), system_type::INT_GATE32, 0),
            );
        }
        bus.set_gate(
            0x80,
            int_gate(0x08, handler + 0x80, system_type::TRAP_GATE32, 3),
        );
        let s = bus.protected_state();
        (s, bus)
    }

    pub fn new() -> Self {
        let mut b = Self {
            ram: vec![0; RAM],
            outs: Vec::new(),
            ins: HashMap::new(),
            unmapped: Vec::new(),
            tsc: 1000,
        };
        let gdt: [(u16, Descriptor); 10] = [
            (0x08, flat(0xb, 0)),
            (0x10, flat(0x2, 0)),
            (0x18, flat(0xb, 3)),
            (0x20, flat(0x3, 3)),
            (0x28, system(TSS, IOMAP + 0x2000, 11)),
            (0x30, system(LDT, 0x17, 2)),
            (0x38, flat(0x9, 0)),
            (
                0x40,
                Descriptor {
                    present: false,
                    ..flat(0x3, 0)
                },
            ),
            (0x48, flat(0xf, 0)),
            (
                0x50,
                Descriptor {
                    db: false,
                    limit: 0xffff,
                    g: false,
                    ..flat(0xb, 0)
                },
            ),
        ];
        for (sel, d) in gdt {
            b.write_u64(GDT + u32::from(sel), d.encode());
        }
        // TSS: SS0:ESP0 and the I/O map base; the bitmap allows nothing, plus the
        // terminating 0xFF byte.
        b.write_u32(TSS + 4, KSTACK);
        b.write_u32(TSS + 8, 0x10);
        b.write_u32(TSS + 0x64, IOMAP << 16);
        let bitmap = (TSS + IOMAP) as usize;
        b.ram_mut(bitmap, 0x2001).fill(0xff);
        b
    }

    /// Kernel (CPL 0) flat protected-mode state using the tables above.
    pub fn protected_state(&self) -> VcpuState {
        let mut s = VcpuState::multiboot_entry(0x10_0000 - 0x100, 0, 0);
        s.gdtr = TableReg {
            base: GDT,
            limit: 0xff,
        };
        s.idtr = TableReg {
            base: IDT,
            limit: 0x7ff,
        };
        let mut tss = Descriptor::decode(self.read_u64(GDT + 0x28));
        tss.typ = 11;
        s.tr = Segment::from_descriptor(0x28, &tss);
        s.gpr[gpr::ESP] = KSTACK;
        s.eip = 0x7000;
        s
    }

    /// Switches the state to CPL 3 with the flat user segments.
    pub fn enter_user(&self, s: &mut VcpuState) {
        *s.sreg_mut(SegReg::Cs) = Segment::from_descriptor(0x1b, &flat(0xb, 3));
        for r in [SegReg::Ss, SegReg::Ds, SegReg::Es] {
            *s.sreg_mut(r) = Segment::from_descriptor(0x23, &flat(0x3, 3));
        }
        s.gpr[gpr::ESP] = USTACK;
    }

    pub fn set_gate(&mut self, vector: u8, g: Gate) {
        self.write_u64(IDT + u32::from(vector) * 8, g.encode());
    }

    pub fn set_gdt(&mut self, sel: u16, d: Descriptor) {
        self.write_u64(GDT + u32::from(sel & 0xfff8), d.encode());
    }

    pub fn read_u64(&self, a: u32) -> u64 {
        u64::from_le_bytes(self.ram_array(a))
    }
    pub fn read_u32(&self, a: u32) -> u32 {
        u32::from_le_bytes(self.ram_array(a))
    }
    pub fn read_u16(&self, a: u32) -> u16 {
        u16::from_le_bytes(self.ram_array(a))
    }
    pub fn write_u64(&mut self, a: u32, v: u64) {
        self.ram_mut(a as usize, 8)
            .copy_from_slice(&v.to_le_bytes());
    }
    pub fn write_u32(&mut self, a: u32, v: u32) {
        self.ram_mut(a as usize, 4)
            .copy_from_slice(&v.to_le_bytes());
    }
    pub fn write_u16(&mut self, a: u32, v: u16) {
        self.ram_mut(a as usize, 2)
            .copy_from_slice(&v.to_le_bytes());
    }

    /// `N` bytes of RAM at `a`, for the tests' own set-up and checks.
    fn ram_array<const N: usize>(&self, a: u32) -> [u8; N] {
        let mut bytes = [0; N];
        bytes.copy_from_slice(self.ram_ref(a as usize, N));
        bytes
    }

    // reason: these set up and inspect the fixture at addresses the tests choose; one
    // outside RAM is a broken test, which should stop there. Guest accesses go through
    // the GuestBus methods below, which check.
    #[allow(clippy::indexing_slicing)]
    fn ram_ref(&self, a: usize, len: usize) -> &[u8] {
        &self.ram[a..a + len]
    }

    #[allow(clippy::indexing_slicing)] // reason: as for ram_ref
    fn ram_mut(&mut self, a: usize, len: usize) -> &mut [u8] {
        &mut self.ram[a..a + len]
    }

    fn check(
        &self,
        addr: GuestLinear,
        len: usize,
        write: bool,
        user: bool,
    ) -> Result<usize, Fault> {
        let a = addr.raw();
        for i in 0..u32::try_from(len).unwrap_or(u32::MAX) {
            let x = a.wrapping_add(i);
            let bad = self.unmapped.iter().any(|&(s, e)| x >= s && x < e) || x as usize >= RAM;
            if bad {
                return Err(outside(GuestLinear(x), write, user));
            }
        }
        Ok(a as usize)
    }
}

/// The page fault an access to `addr` outside the fixture's RAM (or in an unmapped range)
/// takes.
fn outside(addr: GuestLinear, write: bool, user: bool) -> Fault {
    let code = (u32::from(write) << 1) | (u32::from(user) << 2);
    Fault::page_fault(addr, code)
}

impl GuestBus for TestBus {
    fn read_linear(&mut self, addr: GuestLinear, buf: &mut [u8], user: bool) -> Result<(), Fault> {
        let a = self.check(addr, buf.len(), false, user)?;
        let bytes = self
            .ram
            .get(a..a + buf.len())
            .ok_or(outside(addr, false, user))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
    fn write_linear(&mut self, addr: GuestLinear, data: &[u8], user: bool) -> Result<(), Fault> {
        let a = self.check(addr, data.len(), true, user)?;
        let bytes = self
            .ram
            .get_mut(a..a + data.len())
            .ok_or(outside(addr, true, user))?;
        bytes.copy_from_slice(data);
        Ok(())
    }
    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        let v = self.ins.get(&port).copied().unwrap_or(0xffff_ffff);
        match size {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }
    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        self.outs.push((port, size, value));
    }
    fn host_tsc(&mut self) -> u64 {
        self.tsc
    }
}
