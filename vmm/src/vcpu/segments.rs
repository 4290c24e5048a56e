//! Segment-register loads with every check the processor makes, and the host LDT
//! mirror that backs each guest segment (ARCHITECTURE.md §4).

use super::descriptor::{selector, Descriptor, TYPE_ACCESSED};
use super::state::{Segment, VcpuState};
use super::{Effects, Fault, GuestBus};
use crate::addr::GuestLinear;
use crate::x86::SegReg;

/// A descriptor read from the GDT or LDT and where it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorRef {
    /// The decoded descriptor.
    pub desc: Descriptor,
    /// Linear address of its 8 bytes.
    pub addr: GuestLinear,
}

/// Reads the descriptor `sel` names from the GDT or (TI = 1) the LDT, as an implicit
/// supervisor access. `Ok(None)` when the descriptor lies outside the table limit or the
/// LDT is unusable: the caller raises the fault its instruction specifies. A null
/// selector is not special here; callers check it first.
///
/// # Errors
/// A #PF from the bus while reading the table.
pub fn fetch_descriptor(
    state: &VcpuState,
    bus: &mut impl GuestBus,
    sel: u16,
) -> Result<Option<DescriptorRef>, Fault> {
    let (base, limit) = if selector::ti(sel) {
        if !state.ldtr.present || selector::is_null(state.ldtr.selector) {
            return Ok(None);
        }
        (state.ldtr.base, state.ldtr.limit)
    } else {
        (state.gdtr.base, u32::from(state.gdtr.limit))
    };
    let offset = u32::from(sel & 0xfff8);
    if offset + 7 > limit {
        return Ok(None);
    }
    let addr = GuestLinear(base.wrapping_add(offset));
    let raw = read_u64(bus, addr)?;
    Ok(Some(DescriptorRef {
        desc: Descriptor::decode(raw),
        addr,
    }))
}

/// Reads 8 bytes of guest memory as an implicit supervisor access.
pub(crate) fn read_u64(bus: &mut impl GuestBus, addr: GuestLinear) -> Result<u64, Fault> {
    let mut b = [0u8; 8];
    bus.read_linear(addr, &mut b, false)?;
    Ok(u64::from_le_bytes(b))
}

/// Sets the accessed bit of a code/data descriptor in guest memory, as the processor
/// does on every segment load (SDM Vol. 3A, §3.4.5.1).
///
/// # Errors
/// A #PF from the bus.
pub fn set_accessed(bus: &mut impl GuestBus, d: &DescriptorRef) -> Result<(), Fault> {
    if d.desc.typ & TYPE_ACCESSED != 0 {
        return Ok(());
    }
    let byte = (u8::from(d.desc.present) << 7)
        | ((d.desc.dpl & 3) << 5)
        | (u8::from(d.desc.s) << 4)
        | d.desc.typ
        | TYPE_ACCESSED;
    bus.write_linear(d.addr.wrapping_add(5), &[byte], false)
}

/// Loads `reg` (DS, ES, FS, GS or SS) with `sel` as MOV/POP Sreg and LDS..LSS do,
/// raising the faults the SDM lists for MOV (Vol. 2B, "MOV—Move", protected-mode
/// exceptions). Nothing changes when it faults, except the accessed bit that a successful
/// descriptor check has already set. CS is never loaded this way: MOV to CS is #UD.
///
/// Sets the interrupt shadow is left to the caller (MOV SS / POP SS do it, LSS does not).
///
/// # Errors
/// #GP(0) for a null SS; #GP(selector) for a selector outside its table, a wrong
/// descriptor type or a privilege violation; #NP(selector) (#SS(selector) for SS) for a
/// not-present segment; #UD for CS; #PF from reading the descriptor table.
pub fn load_segment(
    state: &mut VcpuState,
    bus: &mut impl GuestBus,
    reg: SegReg,
    sel: u16,
) -> Result<Effects, Fault> {
    if reg == SegReg::Cs {
        return Err(Fault::ud());
    }
    let cache = check_segment_load(state, bus, reg, sel)?;
    *state.sreg_mut(reg) = cache;
    Ok(Effects::segment(reg))
}

/// The checks of [`load_segment`] without committing: the new cache contents.
///
/// # Errors
/// As [`load_segment`].
pub fn check_segment_load(
    state: &VcpuState,
    bus: &mut impl GuestBus,
    reg: SegReg,
    sel: u16,
) -> Result<Segment, Fault> {
    if !state.protected() || state.v86() {
        // Real mode: only the selector and base change; limit and attributes stay as
        // they were (which is what makes "unreal mode" work).
        let mut s = *state.sreg(reg);
        s.selector = sel;
        s.base = u32::from(sel) << 4;
        return Ok(s);
    }
    let cpl = state.cpl();
    let rpl = selector::rpl(sel);
    let code = selector::error_code(sel);
    if selector::is_null(sel) {
        if reg == SegReg::Ss {
            return Err(Fault::gp0());
        }
        return Ok(Segment::null(sel));
    }
    let d = fetch_descriptor(state, bus, sel)?.ok_or(Fault::gp(code))?;
    let desc = d.desc;
    if reg == SegReg::Ss {
        if rpl != cpl || !desc.is_writable_data() || desc.dpl != cpl {
            return Err(Fault::gp(code));
        }
        if !desc.present {
            return Err(Fault::ss(code));
        }
    } else {
        if !(desc.is_data() || desc.is_readable_code()) {
            return Err(Fault::gp(code));
        }
        // Data and non-conforming code: both RPL and CPL must be ≤ DPL.
        if !desc.is_conforming_code() && (rpl > desc.dpl || cpl > desc.dpl) {
            return Err(Fault::gp(code));
        }
        if !desc.present {
            return Err(Fault::np(code));
        }
    }
    set_accessed(bus, &d)?;
    let mut desc = desc;
    desc.typ |= TYPE_ACCESSED;
    Ok(Segment::from_descriptor(sel, &desc))
}

/// The host LDT entry (always DPL 3) that backs a guest segment while the guest runs.
/// There is deliberately no L flag: a mirror is never a 64-bit code segment, whatever the
/// guest descriptor's bit 53 says (it is reserved on IA-32), so guest code cannot reach
/// 64-bit mode through its own descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorDescriptor {
    /// Linear base, copied from the guest.
    pub base: u32,
    /// Byte-granular limit after clamping. Use [`MirrorDescriptor::encoded_limit`] for the
    /// 20-bit field and G flag of the host descriptor.
    pub limit: u32,
    /// Code segment (else data).
    pub code: bool,
    /// Code: readable.
    pub readable: bool,
    /// Data: writable.
    pub writable: bool,
    /// Data: expand-down. Code: conforming.
    pub expand_down_or_conforming: bool,
    /// D/B flag.
    pub db: bool,
    /// Present; `false` means "load a null selector": the guest register is unusable
    /// (or the clamp leaves nothing accessible) so any access must fault.
    pub present: bool,
}

impl MirrorDescriptor {
    /// The 20-bit limit field and the granularity flag that encode [`Self::limit`]. A byte
    /// limit above 1 MiB is only expressible in 4 KiB units; it is rounded *down* to the
    /// last whole page so the mirror never grants more than the guest segment.
    pub const fn encoded_limit(&self) -> (u32, bool) {
        if self.limit <= 0xf_ffff {
            (self.limit, false)
        } else if self.limit & 0xfff == 0xfff {
            (self.limit >> 12, true)
        } else {
            // (limit + 1) / 4096 whole pages, minus one for the field encoding.
            ((self.limit >> 12).saturating_sub(1), true)
        }
    }
}

/// Describes the host LDT mirror of `seg` for a guest running at `cpl`.
///
/// `user_limit_clamp` is the lowest guest-supervisor linear address (e.g. 0xC000_0000 for
/// Linux's default split): when `cpl == 3`, the mirror's limit is lowered so that no
/// offset reaches it (ARCHITECTURE.md §4). A segment whose base already lies at or above
/// the clamp, and an expand-down segment whose top crosses it (its reach can only be cut
/// from above by the limit, which grows it instead), become not present.
pub fn mirror_of(seg: &Segment, cpl: u8, user_limit_clamp: Option<u32>) -> MirrorDescriptor {
    mirror_below(seg, user_limit_clamp.filter(|_| cpl == 3))
}

/// The mirror of `seg` that reaches no linear address at or above `clamp`: an expand-up
/// segment's limit is cut there, a segment that would reach past it otherwise is not
/// present (every access through it faults, and the monitor performs the ones the guest's
/// own segment allows).
pub fn mirror_below(seg: &Segment, clamp: Option<u32>) -> MirrorDescriptor {
    let code = seg.is_code();
    let mut m = MirrorDescriptor {
        base: seg.base,
        limit: seg.limit,
        code,
        readable: code && seg.typ & 2 != 0,
        writable: !code && seg.typ & 2 != 0,
        expand_down_or_conforming: seg.typ & 4 != 0,
        db: seg.db,
        present: seg.present && seg.s,
    };
    if let Some(clamp) = clamp {
        if seg.base >= clamp {
            m.present = false;
        } else if seg.is_expand_down() {
            let top = if seg.db { u32::MAX } else { 0xffff };
            if u64::from(seg.base) + u64::from(top) >= u64::from(clamp) {
                m.present = false;
            }
        } else {
            let max = clamp - 1 - seg.base;
            m.limit = m.limit.min(max);
        }
    }
    if !m.present {
        m.limit = 0;
    }
    m
}

/// The mirrors of all six segment registers for the state's current CPL, indexed by
/// `SegReg as usize`.
pub fn mirrors(state: &VcpuState, user_limit_clamp: Option<u32>) -> [MirrorDescriptor; 6] {
    SegReg::ALL.map(|r| mirror_of(state.sreg(r), state.cpl(), user_limit_clamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::testbus::{TestBus, GDT};

    fn setup() -> (VcpuState, TestBus) {
        let bus = TestBus::new();
        let s = bus.protected_state();
        (s, bus)
    }

    #[test]
    fn loads_flat_data_and_sets_accessed() {
        let (mut s, mut bus) = setup();
        // Entry 2 (0x10) is stored without the accessed bit.
        let before = bus.read_u64(GDT + 0x10);
        assert_eq!(before & (1 << 40), 0);
        let e = load_segment(&mut s, &mut bus, SegReg::Ds, 0x10).unwrap();
        assert!(e.segment_dirty(SegReg::Ds));
        assert_eq!(s.sreg(SegReg::Ds).selector, 0x10);
        assert_eq!(s.sreg(SegReg::Ds).limit, u32::MAX);
        assert_ne!(bus.read_u64(GDT + 0x10) & (1 << 40), 0);
    }

    #[test]
    fn null_selector_rules() {
        let (mut s, mut bus) = setup();
        load_segment(&mut s, &mut bus, SegReg::Fs, 0x3).unwrap();
        assert!(!s.sreg(SegReg::Fs).present);
        assert_eq!(s.sreg(SegReg::Fs).selector, 3);
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Ss, 0),
            Err(Fault::gp0())
        );
    }

    #[test]
    fn faults_carry_the_selector() {
        let (mut s, mut bus) = setup();
        let before = s.clone();
        // Beyond the GDT limit.
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Ds, 0x400),
            Err(Fault::gp(0x400))
        );
        // LDT with no LDT loaded.
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Ds, 0x0f),
            Err(Fault::gp(0xc))
        );
        // Execute-only code segment (0x38) into DS.
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Ds, 0x38),
            Err(Fault::gp(0x38))
        );
        // A TSS descriptor (0x28) is a system segment.
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Es, 0x28),
            Err(Fault::gp(0x28))
        );
        // Not-present data (0x40): #NP, and #SS for SS.
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Gs, 0x40),
            Err(Fault::np(0x40))
        );
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Ss, 0x40),
            Err(Fault::ss(0x40))
        );
        // SS with RPL != CPL, and a read-only... DPL-3 data as SS at CPL 0.
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Ss, 0x13),
            Err(Fault::gp(0x10))
        );
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Ss, 0x20),
            Err(Fault::gp(0x20))
        );
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Cs, 0x08),
            Err(Fault::ud())
        );
        assert_eq!(s, before);
    }

    #[test]
    fn privilege_checks_at_cpl3() {
        let (mut s, mut bus) = setup();
        bus.enter_user(&mut s);
        // Kernel data (DPL 0) from CPL 3.
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Ds, 0x13),
            Err(Fault::gp(0x10))
        );
        // User data with RPL 3 works, also into SS.
        load_segment(&mut s, &mut bus, SegReg::Ds, 0x23).unwrap();
        load_segment(&mut s, &mut bus, SegReg::Ss, 0x23).unwrap();
        // Readable kernel code (non-conforming) is refused.
        assert_eq!(
            load_segment(&mut s, &mut bus, SegReg::Es, 0x0b),
            Err(Fault::gp(0x8))
        );
        // Conforming readable code (0x48, DPL 0) is allowed into a data register.
        load_segment(&mut s, &mut bus, SegReg::Es, 0x4b).unwrap();
    }

    proptest::proptest! {
        /// Any selector and any descriptor bits: no panic, and a fault changes nothing.
        #[test]
        fn loads_are_total_and_precise(sel in proptest::prelude::any::<u16>(),
                                       raw in proptest::prelude::any::<u64>(),
                                       reg in 0usize..6, user in proptest::prelude::any::<bool>()) {
            let (mut s, mut bus) = setup();
            if user {
                bus.enter_user(&mut s);
            }
            bus.write_u64(GDT + 0x58, raw);
            bus.write_u64(GDT + 0x60, raw);
            let before = s.clone();
            match load_segment(&mut s, &mut bus, SegReg::ALL[reg], sel) {
                Ok(_) => proptest::prop_assert_eq!(s.seg[reg].selector, sel),
                Err(_) => proptest::prop_assert_eq!(&s, &before),
            }
        }
    }

    #[test]
    fn real_mode_load_keeps_attributes() {
        let mut s = VcpuState::reset();
        let mut bus = TestBus::new();
        s.sreg_mut(SegReg::Ds).limit = u32::MAX;
        load_segment(&mut s, &mut bus, SegReg::Ds, 0x1234).unwrap();
        assert_eq!(s.sreg(SegReg::Ds).base, 0x12340);
        assert_eq!(s.sreg(SegReg::Ds).limit, u32::MAX);
    }

    #[test]
    fn mirror_clamps_user_segments() {
        let flat = Segment::flat(0x23, 0x3, 3);
        let m = mirror_of(&flat, 3, Some(0xc000_0000));
        assert!(m.present && m.writable && !m.code);
        assert_eq!(m.limit, 0xbfff_ffff);
        assert_eq!(m.encoded_limit(), (0xbffff, true));
        // In kernel mode no clamp applies.
        assert_eq!(mirror_of(&flat, 0, Some(0xc000_0000)).limit, u32::MAX);
        // A segment based in kernel space is unusable from user mode.
        let mut high = flat;
        high.base = 0xc000_0000;
        assert!(!mirror_of(&high, 3, Some(0xc000_0000)).present);
        // Limits not page-aligned above 1 MiB round down.
        let mut odd = flat;
        odd.limit = 0x12_3456;
        assert_eq!(mirror_of(&odd, 0, None).encoded_limit(), (0x122, true));
        assert!(!mirror_of(&Segment::null(0), 0, None).present);
        let code = Segment::flat(0x08, 0xb, 0);
        let mc = mirror_of(&code, 0, None);
        assert!(mc.code && mc.readable && !mc.writable && mc.db);
        let mut s = VcpuState::multiboot_entry(0, 0, 0);
        let mut bus = TestBus::new();
        s.gdtr.base = GDT;
        s.gdtr.limit = 0xff;
        load_segment(&mut s, &mut bus, SegReg::Fs, 0).unwrap();
        let all = mirrors(&s, Some(0xc000_0000));
        assert!(all[SegReg::Cs as usize].code && !all[SegReg::Fs as usize].present);
        assert_eq!(all[SegReg::Ds as usize].limit, u32::MAX);
    }
}
