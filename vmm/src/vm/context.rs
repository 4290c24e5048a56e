//! Moving the guest's registers between the vCPU (the architectural state the guest
//! sees) and the host context the CPU runs with.
//!
//! The vCPU is the master copy. Before an entry the general registers, EIP and the
//! EFLAGS bits the guest owns on the host are copied out; after an exit they are copied
//! back, keeping the virtual bits (IF, IOPL, NT, VM, VIF, VIP) of the vCPU.

use crate::hostcpu::{GuestContext, GUEST_EFLAGS_MASK};
use crate::vcpu::state::gpr;
use crate::vcpu::VcpuState;
use crate::x86::{cr0, eflags};

/// The EFLAGS bits the guest owns natively in its current mode. AC is passed to the host
/// only when it means something to the guest (CPL 3 with CR0.AM): the host runs with
/// CR0.AM set, so a kernel-mode guest with AC set would otherwise take alignment faults
/// it never asked for.
fn native_mask(state: &VcpuState) -> u32 {
    if state.cpl() == 3 && state.cr0 & cr0::AM != 0 {
        GUEST_EFLAGS_MASK
    } else {
        GUEST_EFLAGS_MASK & !eflags::AC
    }
}

/// Copies GPRs, EIP and the host-owned EFLAGS bits from the vCPU into `ctx`.
pub fn load(state: &VcpuState, ctx: &mut GuestContext) {
    ctx.eax = state.gpr[gpr::EAX];
    ctx.ecx = state.gpr[gpr::ECX];
    ctx.edx = state.gpr[gpr::EDX];
    ctx.ebx = state.gpr[gpr::EBX];
    ctx.esp = state.gpr[gpr::ESP];
    ctx.ebp = state.gpr[gpr::EBP];
    ctx.esi = state.gpr[gpr::ESI];
    ctx.edi = state.gpr[gpr::EDI];
    ctx.eip = state.eip;
    ctx.eflags = state.eflags & native_mask(state);
}

/// Copies GPRs, EIP and the host-owned EFLAGS bits from `ctx` back into the vCPU.
pub fn store(ctx: &GuestContext, state: &mut VcpuState) {
    state.gpr[gpr::EAX] = ctx.eax;
    state.gpr[gpr::ECX] = ctx.ecx;
    state.gpr[gpr::EDX] = ctx.edx;
    state.gpr[gpr::EBX] = ctx.ebx;
    state.gpr[gpr::ESP] = ctx.esp;
    state.gpr[gpr::EBP] = ctx.ebp;
    state.gpr[gpr::ESI] = ctx.esi;
    state.gpr[gpr::EDI] = ctx.edi;
    state.eip = ctx.eip;
    let mask = native_mask(state);
    state.eflags = (state.eflags & !mask) | (ctx.eflags & mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_virtual_flags() {
        let mut state = VcpuState::multiboot_entry(0x1000, 0x2bad_b002, 0x9000);
        state.eflags |= eflags::IOPL | eflags::AC;
        state.gpr = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut ctx = GuestContext::default();
        load(&state, &mut ctx);
        assert_eq!(
            ctx.eflags & (eflags::IF | eflags::AC),
            0,
            "IF and kernel AC are virtual"
        );
        // The guest sets CF and tries IF natively (it cannot: the host forces it).
        ctx.eflags |= 1 | eflags::IF;
        ctx.eax = 42;
        ctx.eip = 0x1002;
        store(&ctx, &mut state);
        assert_eq!(state.gpr[gpr::EAX], 42);
        assert_eq!(state.gpr[gpr::EDI], 8);
        assert_eq!(state.eip, 0x1002);
        assert_eq!(state.eflags & 1, 1);
        assert_eq!(state.eflags & eflags::IF, 0, "the host's IF never leaks in");
        assert_eq!(state.eflags & eflags::IOPL, eflags::IOPL);
        assert_ne!(state.eflags & eflags::AC, 0, "kernel-mode AC stays virtual");
        assert_eq!(ctx.eflags & eflags::AC, 0);
    }
}
