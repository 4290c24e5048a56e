//! Guest data accesses the host mapping cannot serve: linear page 0 (never mapped, so
//! that no host null-pointer bug can touch guest memory through it) and physical
//! addresses without RAM. The faulting instruction is decoded and its data move is done
//! by the emulator ([`crate::vcpu::emulate::data_access`]). Only the forms a kernel uses
//! on such memory (the BIOS data area, probing for memory) are emulated; anything else
//! stops the VM with a diagnostic.

use iced_x86::Instruction;

use super::exits::{machine_bus, Step};
use super::guest_bus::MachineBus;
use super::{RunOutcome, Vm};
use crate::vcpu::emulate::{data_access, Mediated};

impl Vm {
    /// Emulates the access of `instr` to linear `lin`, which has no host mapping.
    pub(super) fn emulate_access(&mut self, instr: &Instruction, lin: u32) -> Step {
        let mut bus = machine_bus!(self);
        let result = data_access(&mut self.state, &mut bus, instr).map(|m| m == Mediated::Done);
        if let Some(f) = bus.failure.take() {
            return Ok(Some(RunOutcome::GuestFailure {
                reason: format!("monitor failure during an emulated access: {f:?}"),
                dump: super::dump(&self.state),
            }));
        }
        match result {
            Ok(true) => Ok(None),
            Ok(false) => Ok(Some(RunOutcome::GuestFailure {
                reason: format!(
                    "access to {lin:#010x} (page 0, no RAM, or patched code) by `{instr}`: only moves, \
                     read-modify-write and string stores are emulated there"
                ),
                dump: super::dump(&self.state),
            })),
            Err(fault) => self.handle(crate::vcpu::exit::Exit::Exception(fault)),
        }
    }
}
