//! Several vCPUs on the monitor's one vCPU thread, as ESX ran several virtual CPUs on one
//! physical processor.
//!
//! One vCPU runs at a time in [`Vm::cpu`]; the others wait in [`Vcpus`] with their
//! architectural state and host context (registers, FPU and SSE state). The parts of the
//! running vCPU that describe what is installed on the host (segment mirrors in the host
//! LDT, breakpoint traps, the shadow page tables) stay with the thread: a switch swaps the
//! state in and brings them in step the way an emulated instruction's effects do, so a
//! switch between vCPUs with different CR3 costs what a guest CR3 switch costs.
//!
//! A vCPU runs until it halts, waits for a start-up IPI, executes PAUSE (translate mode:
//! it spins on something another vCPU holds, as pause-loop exiting detects on hardware),
//! or its time slice ends (the host timer is armed for the slice's end); a vCPU an
//! interrupt waits for runs at once, so its timer ticks do not wait for the others'
//! slices (ticks that end while one still waits are owed, not lost: see `lapic.rs`).
//! Application processors start in the state INIT leaves (wait-for-SIPI); a start-up IPI
//! starts one in real mode at vector × 4 KiB.
//!
//! Memory ordering between vCPUs is trivially sequential: one host thread runs them all,
//! so every store is seen by every vCPU in program order. The per-vCPU state (this
//! module's [`Parked`] and the local APICs of [`crate::devices::Lapics`]) is what one host
//! thread per vCPU would own; moving to one host process per vCPU with guest RAM shared
//! is a change of scheduler, not of the vCPU model.

use super::effects::Before;
use super::{RunOutcome, Vm, VmError};
use crate::hostcpu::{GuestContext, HostCpu};
use crate::vcpu::exit::GuestExit;
use crate::vcpu::{Effects, Segment, VcpuState};
use crate::x86::eflags;

/// How long a vCPU runs while another is runnable. A switch between vCPUs with different
/// address spaces costs what a guest CR3 switch costs: `vmm bench` measures a hand-off
/// between two CPUs in their own address spaces at about 14,000 cycles (5.4 µs, release
/// build, translate mode), so a 2 ms slice spends under 0.3% of it switching, and a
/// vCPU an interrupt waits for is never parked longer than the others' slices.
pub const SLICE_NS: u64 = 2_000_000;

/// IA32_APIC_BASE.BSP: set on the bootstrap processor only.
const APIC_BASE_BSP: u64 = 1 << 8;

/// A vCPU that is not running.
#[derive(Debug)]
pub struct Parked {
    /// Its architectural state.
    pub state: VcpuState,
    /// Its host context (the FPU and SSE state live there between entries).
    pub ctx: Box<GuestContext>,
}

/// Every vCPU: the parked ones, and the bookkeeping of the running one.
#[derive(Debug)]
pub struct Vcpus {
    /// One entry per vCPU (index = APIC ID); the running vCPU's entry holds whatever
    /// was swapped out last and is not used until it is parked again.
    parked: Vec<Parked>,
    /// vCPUs waiting for a start-up IPI (after INIT, and application processors at
    /// power-up).
    waiting_for_sipi: Vec<bool>,
    /// NMIs sent to each vCPU and not yet delivered.
    nmi: Vec<bool>,
    /// The running vCPU.
    current: usize,
    /// When the running vCPU's slice ends (the clock of the platform), if another vCPU
    /// is runnable.
    slice_end: Option<u64>,
    /// vCPU switches so far.
    pub switches: u64,
    /// The running vCPU executed PAUSE: it spins on something another vCPU may hold.
    yield_requested: bool,
    /// PAUSE exits so far.
    pub pauses: u64,
}

/// What the scheduler decided at the top of the run loop.
#[derive(Debug)]
pub enum Scheduled {
    /// Enter the running vCPU (it may have just been switched in).
    Run,
    /// Nothing can run now; the loop waited and looks again.
    Again,
    /// The run ends.
    Stop(RunOutcome),
}

impl Vcpus {
    /// `count` vCPUs: the bootstrap processor starts in `bsp` (the running one); the
    /// application processors wait for a start-up IPI with the same CPU model and their
    /// own APIC ID.
    pub fn new(bsp: &VcpuState, count: u8) -> Self {
        let parked = (0..count.max(1))
            .map(|id| Parked {
                state: if id == 0 {
                    bsp.clone()
                } else {
                    ap_reset_state(bsp, id)
                },
                ctx: Box::default(),
            })
            .collect();
        let n = usize::from(count.max(1));
        Self {
            parked,
            waiting_for_sipi: (0..n).map(|i| i != 0).collect(),
            nmi: vec![false; n],
            current: 0,
            slice_end: None,
            switches: 0,
            yield_requested: false,
            pauses: 0,
        }
    }

    /// How many vCPUs there are.
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    /// The running vCPU (its APIC ID).
    pub fn current(&self) -> usize {
        self.current
    }

    /// The running vCPU executed PAUSE: at the next scheduling point another runnable
    /// vCPU runs, as if its slice had ended.
    pub fn yield_now(&mut self) {
        self.yield_requested = true;
        self.pauses += 1;
    }
}

/// The state INIT leaves a processor in (SDM Vol. 3A Table 9-1: real mode at
/// F000:FFF0), with `model`'s CPU model and the APIC base of processor `id`.
fn ap_reset_state(model: &VcpuState, id: u8) -> VcpuState {
    let mut s = VcpuState::reset();
    s.cpu_model = model.cpu_model.clone();
    s.cpu_model.apic_id = id;
    s.msr.apic_base = model.msr.apic_base & !APIC_BASE_BSP;
    if id == 0 {
        s.msr.apic_base |= APIC_BASE_BSP;
    }
    s
}

/// The state a start-up IPI with `vector` starts a waiting processor in: real mode at
/// CS:IP = (vector × 256):0000, CS base vector × 4 KiB.
fn startup(state: &mut VcpuState, vector: u8) {
    let mut cs = Segment::real_mode(u16::from(vector) << 8);
    // Execute/read, accessed: as the reset state's CS.
    cs.typ = 0xb;
    *state.sreg_mut(crate::x86::SegReg::Cs) = cs;
    state.eip = 0;
    state.halted = false;
}

impl Vm {
    /// The architectural state of vCPU `i`, running or parked.
    fn vcpu(&self, i: usize) -> Option<&VcpuState> {
        if i == self.vcpus.current {
            Some(&self.cpu.state)
        } else {
            self.vcpus.parked.get(i).map(|p| &p.state)
        }
    }

    /// [`Vm::vcpu`], to change.
    fn vcpu_state(&mut self, i: usize) -> Option<&mut VcpuState> {
        if i == self.vcpus.current {
            Some(&mut self.cpu.state)
        } else {
            self.vcpus.parked.get_mut(i).map(|p| &mut p.state)
        }
    }

    /// The running vCPU executed PAUSE (`len` bytes; an exit in translate mode, a patch
    /// in patch mode): it goes past it, and at the next scheduling point another
    /// runnable vCPU runs.
    pub(super) fn pause_yield(&mut self, len: usize) {
        let len = u32::try_from(len).unwrap_or(2);
        self.cpu.state.eip = self.cpu.state.eip.wrapping_add(len);
        self.vcpus.yield_now();
    }

    /// Applies what IPIs asked of every vCPU: INIT resets it to wait for a start-up IPI,
    /// a start-up IPI starts a waiting one, an NMI is noted for delivery.
    fn take_signals(&mut self) {
        for i in 0..self.vcpus.len() {
            let signals = self.platform.take_signals(i);
            if signals.init {
                let model = self.cpu.state.clone();
                let id = self.vcpu(i).map_or(0, |s| s.cpu_model.apic_id);
                if let Some(s) = self.vcpu_state(i) {
                    *s = ap_reset_state(&model, id);
                }
                if let Some(w) = self.vcpus.waiting_for_sipi.get_mut(i) {
                    *w = true;
                }
                if let Some(n) = self.vcpus.nmi.get_mut(i) {
                    *n = false;
                }
            }
            if self.trace_smp && (signals.init || signals.startup.is_some() || signals.nmi) {
                eprintln!("vmm: smp: vcpu {i} signals {signals:?}");
            }
            if let Some(vector) = signals.startup {
                if !self.started(i) {
                    if let Some(s) = self.vcpu_state(i) {
                        startup(s, vector);
                    }
                    if let Some(w) = self.vcpus.waiting_for_sipi.get_mut(i) {
                        *w = false;
                    }
                }
            }
            if signals.nmi {
                if let Some(n) = self.vcpus.nmi.get_mut(i) {
                    *n = true;
                }
            }
        }
    }

    /// Whether vCPU `i` has been started (it does not wait for a start-up IPI).
    fn started(&self, i: usize) -> bool {
        self.vcpus.waiting_for_sipi.get(i) == Some(&false)
    }

    /// Whether an NMI is due on vCPU `i`: one was sent, and it is not in an NMI handler
    /// (NMIs are blocked until the handler's IRET; one more waits meanwhile).
    fn nmi_due(&self, i: usize) -> bool {
        let blocked = self.vcpu(i).is_some_and(|s| s.nmi_blocked);
        self.vcpus.nmi.get(i) == Some(&true) && !blocked
    }

    /// Whether vCPU `i` can run now: started, and not halted unless something wakes it.
    fn runnable(&mut self, i: usize) -> bool {
        if !self.started(i) {
            return false;
        }
        if self.nmi_due(i) {
            return true;
        }
        let Some(s) = self.vcpu(i) else {
            return false;
        };
        let (halted, if_set) = (s.halted, s.eflags & eflags::IF != 0);
        !halted || self.platform.wants_cpu(i, if_set)
    }

    /// Whether vCPU `i` is started, has interrupts enabled and an interrupt (or an NMI)
    /// waits for it.
    fn interrupt_waits(&mut self, i: usize) -> bool {
        if !self.started(i) {
            return false;
        }
        if self.nmi_due(i) {
            return true;
        }
        let if_set = self
            .vcpu(i)
            .is_some_and(|s| s.eflags & eflags::IF != 0 && !s.interrupt_shadow);
        if_set && self.platform.wants_cpu(i, true)
    }

    /// Chooses the vCPU to run next, switching to it, at the top of the run loop: the
    /// running one while it can run and its slice lasts, else the next runnable one in
    /// turn. When none can run the loop waits for an interrupt; when none ever can again
    /// (every vCPU halted with interrupts disabled or waiting for a start-up IPI) the run
    /// ends as a one-processor guest's does when it halts with interrupts disabled.
    pub(super) fn schedule(&mut self, host: &HostCpu) -> Result<Scheduled, VmError> {
        if self.cpu.step.is_some() {
            // A single step finishes on the vCPU that started it.
            return Ok(Scheduled::Run);
        }
        self.take_signals();
        let n = self.vcpus.len();
        let cur = self.vcpus.current;
        let now = self.platform.now_ns();
        let expired = self.vcpus.slice_end.is_some_and(|end| now >= end)
            || std::mem::take(&mut self.vcpus.yield_requested);
        // A vCPU an interrupt waits for runs at once (the boost of credit schedulers):
        // parked, its ticks would wait for the others' slices, and the tick count other
        // vCPUs read would lag the TSC.
        let boosted = (1..n)
            .map(|k| (cur + k) % n)
            .find(|&i| self.interrupt_waits(i));
        let next = if boosted.is_some() {
            boosted
        } else if self.runnable(cur) && !expired {
            Some(cur)
        } else {
            (1..=n).map(|k| (cur + k) % n).find(|&i| self.runnable(i))
        };
        let Some(next) = next else {
            return self.idle(host);
        };
        if self.trace_smp && next != cur {
            eprintln!(
                "vmm: smp: vcpu {cur} eip {:#x} -> vcpu {next}",
                self.cpu.state.eip
            );
        }
        if next != cur {
            if let Some(stop) = self.switch_to(next, host)? {
                return Ok(Scheduled::Stop(stop));
            }
            self.vcpus.slice_end = None;
        }
        // A slice only matters while another vCPU could use the thread.
        let others = (1..n).map(|k| (next + k) % n).any(|i| self.runnable(i));
        if !others {
            self.vcpus.slice_end = None;
        } else if self.vcpus.slice_end.is_none() {
            self.vcpus.slice_end = Some(now.saturating_add(SLICE_NS));
        }
        self.platform.set_slice_deadline(self.vcpus.slice_end);
        if self.nmi_due(next) {
            if let Some(n) = self.vcpus.nmi.get_mut(next) {
                *n = false;
            }
            self.cpu.state.halted = false;
            if let Err(e) = self.hand_to_vcpu(GuestExit::Nmi) {
                return Ok(Scheduled::Stop(RunOutcome::GuestFailure {
                    reason: format!("delivering an NMI: {e}"),
                    dump: self.cpu.dump(),
                }));
            }
        }
        Ok(Scheduled::Run)
    }

    /// No vCPU can run: wait for an interrupt one of them would take, or end the run when
    /// none ever could.
    fn idle(&mut self, host: &HostCpu) -> Result<Scheduled, VmError> {
        let n = self.vcpus.len();
        let mut wakeable = Vec::new();
        for i in 0..n {
            let started = self.started(i);
            let if_set = self.vcpu(i).is_some_and(|s| s.eflags & eflags::IF != 0);
            wakeable.push((started, if_set));
        }
        if !wakeable.iter().any(|&(started, if_set)| started && if_set) {
            return Ok(Scheduled::Stop(RunOutcome::Shutdown {
                reason: format!(
                    "every vCPU halted with interrupts disabled or waits for a start-up IPI \
                     (vCPU {} at {:#010x})",
                    self.vcpus.current, self.cpu.state.eip
                ),
            }));
        }
        self.platform.set_slice_deadline(None);
        self.platform.wait_for_event(host, |p| {
            wakeable
                .iter()
                .enumerate()
                .any(|(i, &(started, if_set))| started && p.wants_cpu(i, if_set))
        });
        Ok(Scheduled::Again)
    }

    /// Parks the running vCPU and runs vCPU `next`: its state and host context come in,
    /// the APIC page becomes its APIC, and the host (mirrors, shadow paging, the
    /// translation cache's view of the address space) is brought in step as after an
    /// instruction that changed every control and segment register.
    fn switch_to(&mut self, next: usize, host: &HostCpu) -> Result<Option<RunOutcome>, VmError> {
        let cur = self.vcpus.current;
        // A gate exit leaves the vCPU's extended state in the host CPU.
        host.save_fpu(&mut self.cpu.ctx);
        let before = Before::of(&self.cpu.state);
        let Some(out) = self.vcpus.parked.get_mut(cur) else {
            return Ok(None);
        };
        std::mem::swap(&mut self.cpu.state, &mut out.state);
        std::mem::swap(&mut self.cpu.ctx, &mut out.ctx);
        let Some(incoming) = self.vcpus.parked.get_mut(next) else {
            return Ok(None);
        };
        std::mem::swap(&mut self.cpu.state, &mut incoming.state);
        std::mem::swap(&mut self.cpu.ctx, &mut incoming.ctx);
        self.vcpus.current = next;
        self.vcpus.switches += 1;
        self.platform.set_current_cpu(next);
        self.cpu.entry_rf_at = None;
        self.tc_vcpu_switched();
        let effects = Effects {
            segments_dirty: super::cpu::ALL_SEGMENTS,
            cpl_changed: true,
            descriptor_tables_changed: true,
            ..Effects::NONE
        };
        self.apply(&effects, before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_processors_wait_with_their_own_apic_id() {
        let bsp = VcpuState::multiboot_entry(0x10_0000, 0x2bad_b002, 0x9000);
        let v = Vcpus::new(&bsp, 3);
        assert_eq!(v.len(), 3);
        assert_eq!(v.waiting_for_sipi, [false, true, true]);
        for (id, p) in v.parked.iter().enumerate().skip(1) {
            assert_eq!(usize::from(p.state.cpu_model.apic_id), id);
            assert_eq!(p.state.msr.apic_base & APIC_BASE_BSP, 0);
            assert_eq!(p.state.cr0 & crate::x86::cr0::PE, 0, "real mode");
        }
        assert_ne!(v.parked[0].state.msr.apic_base & APIC_BASE_BSP, 0);
    }

    #[test]
    fn startup_enters_real_mode_at_the_vector_page() {
        let mut s = VcpuState::reset();
        s.halted = true;
        startup(&mut s, 0x9a);
        let cs = s.sreg(crate::x86::SegReg::Cs);
        assert_eq!((cs.selector, cs.base, s.eip), (0x9a00, 0x9_a000, 0));
        assert_eq!(cs.typ, 0xb, "a code segment");
        assert!(!s.halted);
    }
}
