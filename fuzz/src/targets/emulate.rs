//! The instruction emulator as a pure function: instruction bytes, a vCPU state and a
//! fake guest bus in; a new state, a guest exception, or a stop out.
//!
//! Input layout: a mode byte, a path byte, eight GPRs, EFLAGS, a descriptor for GDT
//! slot 0x58, an IDT gate and its vector, a port value, up to 15 instruction bytes,
//! then bytes written to guest RAM at an address the input names.
//!
//! Promises checked:
//! - nothing panics, whatever the instruction, registers and tables;
//! - a fault, a delivered software interrupt or an unsupported instruction leaves the
//!   state as it was (REP string instructions excepted: they keep completed elements);
//! - one emulation does a bounded amount of work: a REP string instruction stops after
//!   a batch of elements and resumes at the same EIP with its counter and pointers
//!   advanced.

use crate::input::Input;
use iced_x86::{Decoder, DecoderOptions, Instruction};
use vmm::addr::GuestLinear;
use vmm::vcpu::descriptor::{system_type, Descriptor};
use vmm::vcpu::emulate::{data_access, emulate, mediate, Emulated};
use vmm::vcpu::exit::{handle, GuestExit};
use vmm::vcpu::state::gpr;
use vmm::vcpu::testbus::{TestBus, GDT, IDT, RAM};
use vmm::vcpu::{Fault, GuestBus, Segment, VcpuState};
use vmm::x86::{eflags, SegReg};

/// Most guest bus accesses one emulation may make: a batch of REP elements (an access
/// in and an access out each) plus what a far transfer or an event delivery reads.
pub const MAX_ACCESSES_PER_EMULATION: u64 = 2 * 4096 + 256;

/// The test bus, counting the accesses one emulation makes.
#[derive(Debug)]
struct CountingBus {
    inner: TestBus,
    accesses: u64,
}

impl GuestBus for CountingBus {
    fn read_linear(&mut self, addr: GuestLinear, buf: &mut [u8], user: bool) -> Result<(), Fault> {
        self.accesses += 1;
        self.inner.read_linear(addr, buf, user)
    }
    fn write_linear(&mut self, addr: GuestLinear, data: &[u8], user: bool) -> Result<(), Fault> {
        self.accesses += 1;
        self.inner.write_linear(addr, data, user)
    }
    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        self.accesses += 1;
        self.inner.port_in(port, size)
    }
    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        self.accesses += 1;
        // The test bus logs every output; a long REP OUTS would only grow the log.
        if self.inner.outs.len() < 64 {
            self.inner.port_out(port, size, value);
        }
    }
    fn host_tsc(&mut self) -> u64 {
        self.inner.host_tsc()
    }
}

/// Where the instruction sits.
const CODE_EIP: u32 = 0x7000;

fn state_for(mode: u8, bus: &TestBus) -> VcpuState {
    match mode & 3 {
        // Real mode: the reset state moved to low memory.
        0 => {
            let mut s = VcpuState::reset();
            *s.sreg_mut(SegReg::Cs) = Segment::real_mode(0);
            s.eip = CODE_EIP;
            s
        }
        1 => bus.protected_state(),
        2 => {
            let mut s = bus.protected_state();
            bus.enter_user(&mut s);
            s
        }
        // Kernel code in the 16-bit code segment at GDT slot 0x50.
        _ => {
            let mut s = bus.protected_state();
            let d = Descriptor::decode(bus.read_u64(GDT + 0x50));
            *s.sreg_mut(SegReg::Cs) = Segment::from_descriptor(0x50, &d);
            s
        }
    }
}

/// Runs one case.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let path = input.u8();
    let mut bus = TestBus::new();
    let mut s = state_for(mode, &bus);
    for r in &mut s.gpr {
        *r = input.u32();
    }
    // EFLAGS as the run loop can leave them (virtual-8086 mode is never entered).
    s.eflags = (input.u32() & eflags::IMPLEMENTED & !eflags::VM) | eflags::FIXED1;
    if mode & 4 != 0 {
        // A small ECX, so REP instructions also finish.
        s.gpr[gpr::ECX] &= 0xff;
    }
    bus.write_u64(GDT + 0x58, input.u64());
    let vector = input.u8();
    let gate = input.u64();
    bus.write_u64(IDT + u32::from(vector) * 8, gate);
    bus.ins.insert(input.u16(), input.u32());
    let code = input.bytes(15).to_vec();
    let ram_at = usize::try_from(input.u32()).unwrap_or(0) % RAM;
    let rest = input.rest();
    let n = rest.len().min(RAM - ram_at);
    bus.ram[ram_at..ram_at + n].copy_from_slice(&rest[..n]);

    let bitness = if s.code_32() { 32 } else { 16 };
    let instr = Decoder::with_ip(bitness, &code, u64::from(s.eip), DecoderOptions::NONE).decode();
    let mut bus = CountingBus {
        inner: bus,
        accesses: 0,
    };
    match path & 3 {
        0 => check_emulate(&mut s, &mut bus, &instr),
        1 => {
            let exit = GuestExit::Patched { original: instr };
            let _ = handle(&mut s, &mut bus, &exit);
        }
        2 => {
            let exit = GuestExit::GeneralProtection {
                error_code: u32::from(path >> 2),
                instr: Some(instr),
            };
            let _ = handle(&mut s, &mut bus, &exit);
        }
        _ => {
            let before = s.clone();
            let r = if path & 4 != 0 {
                mediate(&mut s, &mut bus, &instr)
            } else {
                data_access(&mut s, &mut bus, &instr)
            };
            if r.is_err() && !is_string(&instr) {
                assert_eq!(s, before, "a mediated fault must leave the state as it was");
            }
        }
    }
    assert!(
        bus.accesses <= MAX_ACCESSES_PER_EMULATION,
        "one emulation of {instr} made {} bus accesses",
        bus.accesses
    );
}

/// A far JMP/CALL or IRET that left CR0.TS set and TR on a busy 32-bit TSS, as a task
/// switch that faulted after its commit point does.
fn committed_task_switch(i: &Instruction, s: &VcpuState) -> bool {
    may_switch_task(i) && s.cr0 & vmm::x86::cr0::TS != 0 && s.tr.typ == system_type::TSS32_BUSY
}

/// Far JMP/CALL and IRET: the instructions that may switch tasks.
fn may_switch_task(i: &Instruction) -> bool {
    i.is_jmp_far()
        || i.is_jmp_far_indirect()
        || i.is_call_far()
        || i.is_call_far_indirect()
        || matches!(
            i.mnemonic(),
            iced_x86::Mnemonic::Iret | iced_x86::Mnemonic::Iretd
        )
}

/// A string instruction (INS, OUTS, MOVS, STOS, LODS, CMPS, SCAS).
fn is_string(i: &Instruction) -> bool {
    i.is_string_instruction()
}

fn check_emulate(s: &mut VcpuState, bus: &mut CountingBus, instr: &Instruction) {
    let before = s.clone();
    match emulate(s, bus, instr) {
        // A task switch that faults after its commit point leaves the new task's state,
        // with TR on the new (busy, 32-bit) TSS; any other fault changes nothing.
        Err(_) if !(is_string(instr) || committed_task_switch(instr, s)) => {
            assert_eq!(
                *s, before,
                "a fault of {instr} must leave the state as it was"
            );
        }
        Ok(Emulated::Deliver(_) | Emulated::Unsupported(_)) => {
            assert_eq!(*s, before, "{instr} changed the state without completing");
        }
        Ok(Emulated::Done(_)) if is_string(instr) && instr.has_rep_prefix() => {
            // An unfinished REP resumes at the instruction itself; a finished one moves on.
            let a16 = matches!(
                instr.op0_kind(),
                iced_x86::OpKind::MemoryESDI | iced_x86::OpKind::MemorySegSI
            ) || matches!(instr.op1_kind(), iced_x86::OpKind::MemorySegSI);
            let mask = if a16 { 0xffff } else { u32::MAX };
            if s.gpr[gpr::ECX] & mask != 0 {
                assert_eq!(
                    s.eip, before.eip,
                    "an unfinished {instr} must resume in place"
                );
            }
        }
        _ => {}
    }
}
