//! Architectural state of the virtual CPU: what the guest observes, independent of how
//! the host runs it.

use super::descriptor::Descriptor;
use crate::x86::{cr0, eflags, SegReg};

/// The hidden part of a segment register (the "descriptor cache"), with the limit already
/// expanded to bytes. Also used for LDTR and TR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Segment {
    /// The guest-visible selector, including its RPL.
    pub selector: u16,
    /// Linear base address.
    pub base: u32,
    /// Byte-granular limit (G already applied).
    pub limit: u32,
    /// Descriptor type field (bits 40..43).
    pub typ: u8,
    /// S: 1 for code/data, 0 for system descriptors.
    pub s: bool,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Present. A null selector loaded in protected mode leaves the register unusable,
    /// which is represented as `present == false`.
    pub present: bool,
    /// Default operation size / big (D/B).
    pub db: bool,
    /// Granularity as loaded (the limit is already expanded).
    pub g: bool,
    /// Available for software.
    pub avl: bool,
    /// 64-bit code (always clear for an IA-32 guest, kept for completeness).
    pub l: bool,
}

impl Segment {
    /// The cache contents after loading `selector` with `desc` (SDM Vol. 3A, §3.4.3).
    pub fn from_descriptor(selector: u16, desc: &Descriptor) -> Self {
        Self {
            selector,
            base: desc.base,
            limit: desc.byte_limit(),
            typ: desc.typ,
            s: desc.s,
            dpl: desc.dpl,
            present: desc.present,
            db: desc.db,
            g: desc.g,
            avl: desc.avl,
            l: desc.l,
        }
    }

    /// A real-mode segment: base = selector × 16, 64 KiB limit, read/write data.
    pub const fn real_mode(selector: u16) -> Self {
        Self {
            selector,
            base: (selector as u32) << 4,
            limit: 0xffff,
            typ: 0x3,
            s: true,
            dpl: 0,
            present: true,
            db: false,
            g: false,
            avl: false,
            l: false,
        }
    }

    /// A flat 4 GiB segment of the given type and DPL (Multiboot, SYSENTER/SYSEXIT).
    pub const fn flat(selector: u16, typ: u8, dpl: u8) -> Self {
        Self {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            typ,
            s: true,
            dpl,
            present: true,
            db: true,
            g: true,
            avl: false,
            l: false,
        }
    }

    /// An unusable register (null selector loaded in protected mode).
    pub const fn null(selector: u16) -> Self {
        Self {
            selector,
            base: 0,
            limit: 0,
            typ: 0,
            s: false,
            dpl: 0,
            present: false,
            db: false,
            g: false,
            avl: false,
            l: false,
        }
    }

    /// Code segment (S=1, type bit 3).
    pub const fn is_code(&self) -> bool {
        self.s && self.typ & 8 != 0
    }
    /// Conforming code segment.
    pub const fn is_conforming(&self) -> bool {
        self.is_code() && self.typ & 4 != 0
    }
    /// Writable data segment.
    pub const fn is_writable_data(&self) -> bool {
        self.s && self.typ & 8 == 0 && self.typ & 2 != 0
    }
    /// Readable: any data segment, or code with the R bit.
    pub const fn is_readable(&self) -> bool {
        self.s && (self.typ & 8 == 0 || self.typ & 2 != 0)
    }
    /// Expand-down data segment.
    pub const fn is_expand_down(&self) -> bool {
        self.s && self.typ & 8 == 0 && self.typ & 4 != 0
    }

    /// Whether the `len`-byte access at `offset` lies within the limit (SDM Vol. 3A,
    /// §5.3: expand-down segments hold offsets above the limit, up to 0xFFFF or
    /// 0xFFFFFFFF by the B flag).
    pub fn contains(&self, offset: u32, len: u32) -> bool {
        let Some(last) = offset.checked_add(len.saturating_sub(1)) else {
            return false;
        };
        if self.is_expand_down() {
            let top = if self.db { u32::MAX } else { 0xffff };
            offset > self.limit && last <= top
        } else {
            last <= self.limit
        }
    }
}

/// A descriptor-table register (GDTR, IDTR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TableReg {
    /// Linear base.
    pub base: u32,
    /// Byte limit.
    pub limit: u16,
}

/// Model-specific registers the CPU model implements (see `emulate::msr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msrs {
    /// IA32_SYSENTER_CS.
    pub sysenter_cs: u32,
    /// IA32_SYSENTER_ESP.
    pub sysenter_esp: u32,
    /// IA32_SYSENTER_EIP.
    pub sysenter_eip: u32,
    /// Guest TSC = host TSC + this (wrapping); changed by WRMSR to IA32_TIME_STAMP_COUNTER.
    pub tsc_offset: u64,
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_MISC_ENABLE.
    pub misc_enable: u64,
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: u64,
    /// Variable-range MTRRs: PHYSBASE0/PHYSMASK0 .. 7, interleaved as in the MSR space.
    pub mtrr_var: [u64; 16],
    /// Fixed-range MTRRs (64K_00000, 16K_80000, 16K_A0000, 4K_C0000 .. 4K_F8000).
    pub mtrr_fixed: [u64; 11],
    /// IA32_MCG_STATUS.
    pub mcg_status: u64,
    /// IA32_EFER. The model has neither long mode nor NX, so it stays 0.
    pub efer: u64,
    /// IA32_PERFEVTSEL0/1. Stored only: no event is counted.
    pub perf_evtsel: [u64; 2],
    /// IA32_PMC0/1 as last written (they do not count, see `perf_evtsel`).
    pub perf_ctr: [u64; 2],
}

impl Default for Msrs {
    fn default() -> Self {
        Self {
            sysenter_cs: 0,
            sysenter_esp: 0,
            sysenter_eip: 0,
            tsc_offset: 0,
            // BSP flag, APIC globally enabled, default base 0xFEE00000 (SDM Vol. 3A §10.4.4).
            apic_base: 0xfee0_0000 | (1 << 8) | (1 << 11),
            // Power-on PAT value (SDM Vol. 3A §11.12.4).
            pat: 0x0007_0406_0007_0406,
            // Fast strings enabled, as firmware leaves it.
            misc_enable: 1,
            // MTRRs enabled, default type write-back: all RAM cacheable without setup.
            mtrr_def_type: (1 << 11) | 6,
            mtrr_var: [0; 16],
            mtrr_fixed: [0; 11],
            mcg_status: 0,
            efer: 0,
            perf_evtsel: [0; 2],
            perf_ctr: [0; 2],
        }
    }
}

/// General-purpose register numbers, in ModRM encoding order.
pub mod gpr {
    /// EAX.
    pub const EAX: usize = 0;
    /// ECX.
    pub const ECX: usize = 1;
    /// EDX.
    pub const EDX: usize = 2;
    /// EBX.
    pub const EBX: usize = 3;
    /// ESP.
    pub const ESP: usize = 4;
    /// EBP.
    pub const EBP: usize = 5;
    /// ESI.
    pub const ESI: usize = 6;
    /// EDI.
    pub const EDI: usize = 7;
}

/// The complete architectural state of one virtual IA-32 processor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI (index with [`gpr`]).
    pub gpr: [u32; 8],
    /// Instruction pointer (offset in CS).
    pub eip: u32,
    /// The full architectural EFLAGS, including the virtual IF and IOPL.
    pub eflags: u32,
    /// Segment registers, indexed by `SegReg as usize`.
    pub seg: [Segment; 6],
    /// CR0.
    pub cr0: u32,
    /// CR2 (last page-fault address).
    pub cr2: u32,
    /// CR3.
    pub cr3: u32,
    /// CR4.
    pub cr4: u32,
    /// GDTR.
    pub gdtr: TableReg,
    /// IDTR.
    pub idtr: TableReg,
    /// LDTR (selector and cache).
    pub ldtr: Segment,
    /// TR (selector and cache).
    pub tr: Segment,
    /// DR0..DR7 (DR4/DR5 are aliases of DR6/DR7 and never stored).
    pub dr: [u32; 8],
    /// Model-specific registers.
    pub msr: Msrs,
    /// HLT executed; cleared by the next delivered interrupt.
    pub halted: bool,
    /// Interrupts are inhibited until after the next instruction (after STI with IF
    /// previously 0, MOV SS, POP SS).
    pub interrupt_shadow: bool,
    /// An NMI was delivered and no IRET has run since: further NMIs wait (SDM Vol. 3A
    /// §6.7.1).
    pub nmi_blocked: bool,
    /// The CPU model CPUID reports.
    pub cpu_model: crate::vcpu::emulate::cpuid::CpuModel,
}

/// DR6 value at reset (SDM Vol. 3B §17.2.3: reserved bits read as 1).
pub const DR6_INIT: u32 = 0xffff_0ff0;
/// DR7 value at reset (bit 10 reads as 1).
pub const DR7_INIT: u32 = 0x0000_0400;

impl VcpuState {
    /// The state at power-on (SDM Vol. 3A, Table 9-1): real mode, CS:IP = F000:FFF0 with
    /// CS base 0xFFFF0000.
    pub fn reset() -> Self {
        let mut cs = Segment::real_mode(0xf000);
        cs.base = 0xffff_0000;
        cs.typ = 0xb;
        let mut ldtr = Segment::null(0);
        ldtr.typ = 2;
        ldtr.present = true;
        ldtr.limit = 0xffff;
        let mut tr = Segment::null(0);
        tr.typ = 0xb;
        tr.present = true;
        tr.limit = 0xffff;
        let ds = Segment::real_mode(0);
        Self {
            gpr: [0; 8],
            eip: 0xfff0,
            eflags: eflags::FIXED1,
            seg: [ds, cs, ds, ds, ds, ds],
            cr0: cr0::ET | cr0::CD | cr0::NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            gdtr: TableReg {
                base: 0,
                limit: 0xffff,
            },
            idtr: TableReg {
                base: 0,
                limit: 0xffff,
            },
            ldtr,
            tr,
            dr: [0, 0, 0, 0, 0, 0, DR6_INIT, DR7_INIT],
            msr: Msrs::default(),
            halted: false,
            interrupt_shadow: false,
            nmi_blocked: false,
            cpu_model: crate::vcpu::emulate::cpuid::CpuModel::default(),
        }
    }

    /// Flat 32-bit protected mode at CPL 0 with paging off and IF = 0, as boot protocols
    /// enter a kernel: CS = `code_sel` (4 GiB execute/read), DS/ES/FS/GS/SS = `data_sel`
    /// (4 GiB read/write), CR0 = PE|ET, EIP = `entry`, all GPRs 0. GDTR, IDTR, LDTR and
    /// TR are empty; the loader sets GDTR when its protocol requires a GDT in memory.
    pub fn flat_protected(entry: u32, code_sel: u16, data_sel: u16) -> Self {
        let mut s = Self::reset();
        s.eip = entry;
        s.eflags = eflags::FIXED1;
        let data = Segment::flat(data_sel, 0x3, 0);
        s.seg = [
            data,
            Segment::flat(code_sel, 0xb, 0),
            data,
            data,
            data,
            data,
        ];
        s.cr0 = cr0::PE | cr0::ET;
        s.gdtr = TableReg { base: 0, limit: 0 };
        s.idtr = TableReg { base: 0, limit: 0 };
        s.ldtr = Segment::null(0);
        // No TSS until the kernel loads one: I/O-bitmap and stack-switch lookups fault
        // cleanly instead of reading a TSS at linear 0.
        s.tr = Segment::null(0);
        s
    }

    /// The machine state a Multiboot v1 loader hands to the kernel (Multiboot spec §3.2):
    /// EAX = magic, EBX = info address, CS a flat 4 GiB 32-bit execute/read segment
    /// (selector 0x08, CPL 0), DS/ES/FS/GS/SS flat 4 GiB read/write (selector 0x10), CR0 =
    /// PE|ET with paging off, IF = 0. GDTR/IDTR are undefined by the spec (the kernel must
    /// set up its own) and are left empty; ESP is undefined and left 0.
    pub fn multiboot_entry(entry: u32, eax: u32, ebx: u32) -> Self {
        let mut s = Self::flat_protected(entry, 0x08, 0x10);
        s.gpr[gpr::EAX] = eax;
        s.gpr[gpr::EBX] = ebx;
        s
    }

    /// The machine state the Linux boot protocol's 32-bit entry wants (boot.rst, "32-bit
    /// boot protocol"): ESI = the zero page, CS = `__BOOT_CS` and DS/ES/FS/GS/SS =
    /// `__BOOT_DS` (flat 4 GiB, from the boot GDT at `gdt`), CR0 = PE|ET with paging off,
    /// IF = 0, EBP/EDI/EBX = 0.
    pub fn linux_entry(entry: u32, esi: u32, gdt: (u32, u16), cs: u16, ds: u16) -> Self {
        let mut s = Self::flat_protected(entry, cs, ds);
        s.gpr[gpr::ESI] = esi;
        s.gdtr = TableReg {
            base: gdt.0,
            limit: gdt.1,
        };
        s
    }

    /// Protected mode is on (CR0.PE).
    pub const fn protected(&self) -> bool {
        self.cr0 & cr0::PE != 0
    }

    /// Virtual-8086 mode (EFLAGS.VM in protected mode).
    pub const fn v86(&self) -> bool {
        self.protected() && self.eflags & eflags::VM != 0
    }

    /// The current privilege level: 0 in real mode, 3 in virtual-8086 mode, and in
    /// protected mode the DPL of SS, which always equals the CPL (every SS load checks
    /// DPL = CPL). Unlike CS.RPL it stays right in the window after CR0.PE is set from
    /// real mode with an arbitrary CS value, where the processor still runs at CPL 0.
    pub const fn cpl(&self) -> u8 {
        if !self.protected() {
            0
        } else if self.eflags & eflags::VM != 0 {
            3
        } else {
            self.sreg(SegReg::Ss).dpl
        }
    }

    /// EFLAGS.IOPL.
    pub const fn iopl(&self) -> u8 {
        ((self.eflags & eflags::IOPL) >> eflags::IOPL_SHIFT) as u8
    }

    /// A segment register's cache.
    pub const fn sreg(&self, reg: SegReg) -> &Segment {
        // `seg` is in SegReg's encoding order.
        let [es, cs, ss, ds, fs, gs] = &self.seg;
        match reg {
            SegReg::Es => es,
            SegReg::Cs => cs,
            SegReg::Ss => ss,
            SegReg::Ds => ds,
            SegReg::Fs => fs,
            SegReg::Gs => gs,
        }
    }

    /// A segment register's cache, mutably.
    pub fn sreg_mut(&mut self, reg: SegReg) -> &mut Segment {
        let [es, cs, ss, ds, fs, gs] = &mut self.seg;
        match reg {
            SegReg::Es => es,
            SegReg::Cs => cs,
            SegReg::Ss => ss,
            SegReg::Ds => ds,
            SegReg::Fs => fs,
            SegReg::Gs => gs,
        }
    }

    /// The stack pointer as the current stack's address size sees it (SS.B).
    pub const fn stack_32(&self) -> bool {
        self.sreg(SegReg::Ss).db
    }

    /// The code segment's default operand size is 32 bits (CS.D).
    pub const fn code_32(&self) -> bool {
        self.sreg(SegReg::Cs).db
    }

    /// Sets EFLAGS.ZF to `z`.
    pub fn set_zf(&mut self, z: bool) {
        if z {
            self.eflags |= eflags::ZF;
        } else {
            self.eflags &= !eflags::ZF;
        }
    }
}

impl std::fmt::Display for VcpuState {
    /// A register dump for diagnostics (triple faults, unsupported operations).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = &self.gpr;
        writeln!(
            f,
            "EAX={:08x} EBX={:08x} ECX={:08x} EDX={:08x} ESI={:08x} EDI={:08x} EBP={:08x} ESP={:08x}",
            g[gpr::EAX], g[gpr::EBX], g[gpr::ECX], g[gpr::EDX],
            g[gpr::ESI], g[gpr::EDI], g[gpr::EBP], g[gpr::ESP]
        )?;
        writeln!(
            f,
            "EIP={:08x} EFL={:08x} CPL={} IOPL={} IF={} HLT={} SHADOW={}",
            self.eip,
            self.eflags,
            self.cpl(),
            self.iopl(),
            u8::from(self.eflags & eflags::IF != 0),
            u8::from(self.halted),
            u8::from(self.interrupt_shadow)
        )?;
        let names = ["ES", "CS", "SS", "DS", "FS", "GS"];
        for (name, s) in names.iter().zip(self.seg.iter()) {
            writeln!(f, "{name} ={}", SegDump(s))?;
        }
        writeln!(f, "LDT={}", SegDump(&self.ldtr))?;
        writeln!(f, "TR ={}", SegDump(&self.tr))?;
        writeln!(f, "GDT=     {:08x} {:08x}", self.gdtr.base, self.gdtr.limit)?;
        writeln!(f, "IDT=     {:08x} {:08x}", self.idtr.base, self.idtr.limit)?;
        writeln!(
            f,
            "CR0={:08x} CR2={:08x} CR3={:08x} CR4={:08x}",
            self.cr0, self.cr2, self.cr3, self.cr4
        )?;
        write!(
            f,
            "DR0={:08x} DR1={:08x} DR2={:08x} DR3={:08x} DR6={:08x} DR7={:08x}",
            self.dr[0], self.dr[1], self.dr[2], self.dr[3], self.dr[6], self.dr[7]
        )
    }
}

/// One segment register as a dump line: selector, base, limit, type, DPL and flags.
struct SegDump<'a>(&'a Segment);

impl std::fmt::Display for SegDump<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        write!(
            f,
            "{:04x} {:08x} {:08x} type={:x} s={} dpl={} p={} db={} g={}",
            s.selector,
            s.base,
            s.limit,
            s.typ,
            u8::from(s.s),
            s.dpl,
            u8::from(s.present),
            u8::from(s.db),
            u8::from(s.g)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_entry_has_the_boot_gdt_and_esi() {
        let s = VcpuState::linux_entry(0x10_0000, 0x7000, (0x6000, 31), 0x10, 0x18);
        assert_eq!(
            (s.eip, s.gpr[gpr::ESI], s.gpr[gpr::EBX]),
            (0x10_0000, 0x7000, 0)
        );
        assert_eq!((s.gdtr.base, s.gdtr.limit), (0x6000, 31));
        assert_eq!(s.sreg(SegReg::Cs).selector, 0x10);
        assert_eq!(s.sreg(SegReg::Ss).selector, 0x18);
        assert!(s.protected() && s.cr0 & cr0::PG == 0 && s.eflags & eflags::IF == 0);
    }

    #[test]
    fn multiboot_entry_is_flat_protected_cpl0() {
        let s = VcpuState::multiboot_entry(0x10_0000, 0x2bad_b002, 0x9000);
        assert_eq!(s.eip, 0x10_0000);
        assert_eq!(s.gpr[gpr::EAX], 0x2bad_b002);
        assert_eq!(s.gpr[gpr::EBX], 0x9000);
        assert!(s.protected());
        assert_eq!(s.cpl(), 0);
        assert_eq!(s.eflags & eflags::IF, 0);
        assert_eq!(s.cr0 & cr0::PG, 0);
        let cs = s.sreg(SegReg::Cs);
        assert!(cs.is_code() && cs.db && cs.limit == u32::MAX && cs.base == 0);
        for r in [SegReg::Ds, SegReg::Es, SegReg::Fs, SegReg::Gs, SegReg::Ss] {
            assert!(s.sreg(r).is_writable_data());
            assert_eq!(s.sreg(r).limit, u32::MAX);
        }
    }

    #[test]
    fn cpl_after_entering_protected_mode_is_zero() {
        let mut s = VcpuState::reset();
        *s.sreg_mut(SegReg::Cs) = Segment::real_mode(0x1003);
        s.cr0 |= cr0::PE;
        assert_eq!(s.cpl(), 0);
    }

    #[test]
    fn register_dump_names_the_state() {
        let s = VcpuState::multiboot_entry(0x0010_0000, 0x2bad_b002, 0x9500);
        let d = s.to_string();
        assert!(d.contains("EAX=2badb002"), "{d}");
        assert!(d.contains("EIP=00100000"), "{d}");
        assert!(d.contains("CS =0008 00000000 ffffffff type=b"), "{d}");
        assert!(d.contains("CR0=00000011"), "{d}");
    }

    #[test]
    fn expand_down_limits() {
        let mut s = Segment::flat(0x10, 0x7, 0); // expand-down, writable
        s.limit = 0xfff;
        s.db = false;
        assert!(!s.contains(0xfff, 1));
        assert!(s.contains(0x1000, 4));
        assert!(s.contains(0xfffe, 2));
        assert!(!s.contains(0xffff, 2));
        let up = Segment::flat(0x10, 0x3, 0);
        assert!(up.contains(0xffff_fffc, 4));
        assert!(!up.contains(0xffff_fffd, 4));
    }
}
