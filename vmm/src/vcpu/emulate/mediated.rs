//! The memory instructions the run loop has the emulator perform instead of the guest
//! (ARCHITECTURE.md §6): writes to pages it maps read-only (page tables, scanned code)
//! and accesses the host mapping cannot serve (linear page 0, physical addresses
//! without RAM). The instruction faulted natively; the emulator carries it out through
//! the [`GuestBus`], which translates, reverts code patches and reports page-table
//! writes. Only the forms kernels use on such memory are accepted; the semantics are
//! those of the instruction groups (`data`, `sreg`, `alu`, `cmpxchg`, `string`).

use super::{
    alu, cmpxchg, data, execute, sreg, string, string_read, Ctx, Emulated, Res, Stop, Unsupported,
};
use crate::vcpu::{Fault, GuestBus, VcpuState};
use iced_x86::{Instruction, Mnemonic, OpKind};

/// What a mediated instruction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mediated {
    /// Done; EIP is past the instruction, or still on a REP string store that has
    /// elements left after a batch (the guest executes it again for them).
    Done,
    /// Not an instruction form mediation performs; nothing changed.
    Unsupported,
}

/// The memory instruction groups, dispatched by mnemonic.
fn dispatch(s: &mut VcpuState, bus: &mut impl GuestBus, cx: &Ctx<'_>) -> Res {
    use Mnemonic as M;
    match cx.instr.mnemonic() {
        M::Mov if sreg::is_sreg_mov(cx.instr) => sreg::mov(s, bus, cx),
        M::Mov => data::mov(s, bus, cx),
        M::Movzx | M::Movsx => data::mov_extend(s, bus, cx),
        M::Xchg => data::xchg(s, bus, cx),
        M::Push if cx.instr.op0_kind() == OpKind::Memory => data::push_memory(s, bus, cx),
        M::Add | M::Sub | M::And | M::Or | M::Xor | M::Inc | M::Dec | M::Cmp | M::Test => {
            alu::arith(s, bus, cx)
        }
        M::Bts | M::Btr => alu::bit_set_reset(s, bus, cx),
        M::Cmpxchg => cmpxchg::cmpxchg(s, bus, cx),
        M::Cmpxchg8b => cmpxchg::cmpxchg8b(s, bus, cx),
        M::Stosb | M::Stosw | M::Stosd | M::Movsb | M::Movsw | M::Movsd => {
            string::store(s, bus, cx)
        }
        M::Lodsb | M::Lodsw | M::Lodsd | M::Cmpsb | M::Cmpsw | M::Scasb | M::Scasw | M::Scasd => {
            string_read::load_compare(s, bus, cx)
        }
        // CMPSD shares its mnemonic with the SSE2 compare; the code tells them apart.
        M::Cmpsd if cx.instr.code() == iced_x86::Code::Cmpsd_m32_m32 => {
            string_read::load_compare(s, bus, cx)
        }
        m => Err(Stop::Unsupported(Unsupported::Instruction(m))),
    }
}

fn run(s: &mut VcpuState, bus: &mut impl GuestBus, instr: &Instruction) -> Result<Mediated, Fault> {
    Ok(match execute(s, bus, instr, dispatch)? {
        Emulated::Done(_) => Mediated::Done,
        Emulated::Deliver(_) | Emulated::Unsupported(_) => Mediated::Unsupported,
    })
}

/// A string store (STOS, MOVS), whose destination is ES:(E)DI.
fn is_string_store(instr: &Instruction) -> bool {
    matches!(instr.op0_kind(), OpKind::MemoryESEDI | OpKind::MemoryESDI)
}

/// Performs `instr`, a write to memory (MOV, XCHG, CMPXCHG, CMPXCHG8B, ADD, SUB, AND,
/// OR, XOR, INC, DEC, BTS, BTR with a memory destination; STOS and MOVS, REP too), as
/// [`super::emulate`] would: EIP moves past it, and on a fault nothing is committed but
/// the completed elements of a string store.
///
/// # Errors
/// The guest fault an access raised (#PF, #GP, #SS).
pub fn mediate(
    s: &mut VcpuState,
    bus: &mut impl GuestBus,
    instr: &Instruction,
) -> Result<Mediated, Fault> {
    if instr.op0_kind() != OpKind::Memory && !is_string_store(instr) {
        return Ok(Mediated::Unsupported);
    }
    run(s, bus, instr)
}

/// Performs `instr`, an access to memory the host does not map: the writes [`mediate`]
/// performs, the reads of MOV, MOVZX and MOVSX into a register, ADD, SUB, AND, OR, XOR,
/// CMP and TEST with a memory source (a stack-protector check reads its canary so), CMP
/// and TEST of memory, and PUSH of memory.
///
/// # Errors
/// The guest fault an access raised (#PF, #GP, #SS).
pub fn data_access(
    s: &mut VcpuState,
    bus: &mut impl GuestBus,
    instr: &Instruction,
) -> Result<Mediated, Fault> {
    use Mnemonic as M;
    let m = instr.mnemonic();
    let into_register = instr.op0_kind() == OpKind::Register
        && instr.op1_kind() == OpKind::Memory
        && matches!(
            m,
            M::Mov
                | M::Movzx
                | M::Movsx
                | M::Add
                | M::Sub
                | M::And
                | M::Or
                | M::Xor
                | M::Cmp
                | M::Test
        );
    let compare = instr.op0_kind() == OpKind::Memory && matches!(m, M::Cmp | M::Test);
    // i386 C libraries push TLS words (GS-relative, at offsets that wrap past 4 GiB).
    let push = instr.op0_kind() == OpKind::Memory && m == M::Push;
    let string_read = matches!(
        m,
        M::Lodsb
            | M::Lodsw
            | M::Lodsd
            | M::Cmpsb
            | M::Cmpsw
            | M::Cmpsd
            | M::Scasb
            | M::Scasw
            | M::Scasd
    );
    if into_register || compare || string_read || push {
        return run(s, bus, instr);
    }
    mediate(s, bus, instr)
}
