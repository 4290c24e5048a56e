//! Ship mode: implementations a service node sends for the guest to run itself.
//!
//! Each is position-independent IA-32 code that can be copied over a bound entry point
//! and follows the binding's calling convention, so the guest calls it exactly as it
//! called the function it replaces, with no exit to the monitor.

/// COM1's data port: the shipped console writes there, which the monitor's (or any
/// PC's) UART turns into console output.
pub const COM1_DATA: u16 = 0x3F8;

/// Shipped code and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    /// The code.
    pub code: Vec<u8>,
    /// Offset of the entry within `code`.
    pub entry_offset: u32,
    /// What the code needs from the platform.
    pub requires: Vec<String>,
    /// What it does.
    pub description: String,
}

/// An operation the node cannot ship.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no shippable implementation of `{op}` for convention `{convention}` (available: tty.write with cdecl or regparm3)")]
pub struct ShipError {
    /// The operation asked for.
    pub op: String,
    /// The convention asked for.
    pub convention: String,
}

/// `tty.write(buf, len)` with cdecl arguments: `rep outsb` of the buffer to COM1,
/// returns `len` in EAX. Preserves ESI as the i386 ABIs require; assumes DF clear as
/// they guarantee on entry.
const TTY_WRITE_CDECL: &[u8] = &[
    0x56, // push esi
    0x8B, 0x74, 0x24, 0x08, // mov esi, [esp+8]    ; buf
    0x8B, 0x4C, 0x24, 0x0C, // mov ecx, [esp+12]   ; len
    0x89, 0xC8, // mov eax, ecx                    ; return len
    0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
    0xE3, 0x02, // jecxz done
    0xF3, 0x6E, // rep outsb
    0x5E, // done: pop esi
    0xC3, // ret
];

/// `tty.write(buf, len)` with regparm(3) arguments (EAX = buf, EDX = len).
const TTY_WRITE_REGPARM3: &[u8] = &[
    0x56, // push esi
    0x89, 0xC6, // mov esi, eax                    ; buf
    0x89, 0xD1, // mov ecx, edx                    ; len
    0x89, 0xD0, // mov eax, edx                    ; return len
    0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
    0xE3, 0x02, // jecxz done
    0xF3, 0x6E, // rep outsb
    0x5E, // done: pop esi
    0xC3, // ret
];

/// The shippable implementation of `op` for `convention`.
///
/// # Errors
/// When the node has none.
pub fn implementation(op: &str, convention: &str) -> Result<Shipped, ShipError> {
    let code = match (op, convention) {
        ("tty.write", "cdecl") => TTY_WRITE_CDECL,
        ("tty.write", "regparm3") => TTY_WRITE_REGPARM3,
        _ => {
            return Err(ShipError {
                op: op.to_owned(),
                convention: convention.to_owned(),
            })
        }
    };
    Ok(Shipped {
        code: code.to_vec(),
        entry_offset: 0,
        requires: vec![format!("port {COM1_DATA:#x} (16550 UART data register)")],
        description: format!("{op} ({convention}): rep outsb of the buffer to COM1"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};

    /// Decodes `code` as 32-bit code from address 0 and checks it is position
    /// independent: every instruction decodes, branches stay inside, it ends in `ret`.
    fn check_pic(code: &[u8]) -> Vec<Mnemonic> {
        let mut d = Decoder::with_ip(32, code, 0, DecoderOptions::NONE);
        let mut seen = Vec::new();
        for ins in &mut d {
            assert!(!ins.is_invalid(), "undecodable byte at {:#x}", ins.ip());
            match ins.flow_control() {
                FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch => {
                    assert!(ins.near_branch_target() < code.len() as u64);
                }
                FlowControl::Next | FlowControl::Return => {}
                other => panic!("{other:?} at {:#x} is not position independent", ins.ip()),
            }
            assert!(!ins.is_ip_rel_memory_operand());
            seen.push(ins.mnemonic());
        }
        assert_eq!(seen.last(), Some(&Mnemonic::Ret));
        seen
    }

    #[test]
    fn shipped_console_writers_are_position_independent() {
        for conv in ["cdecl", "regparm3"] {
            let s = implementation("tty.write", conv).unwrap();
            let m = check_pic(&s.code);
            assert!(m.contains(&Mnemonic::Outsb), "{conv}: {m:?}");
            assert_eq!(m.iter().filter(|&&x| x == Mnemonic::Push).count(), 1);
            assert_eq!(m.iter().filter(|&&x| x == Mnemonic::Pop).count(), 1);
        }
    }

    #[test]
    fn unknown_operations_are_not_shipped() {
        assert!(implementation("block.read", "cdecl").is_err());
        assert!(implementation("tty.write", "stdcall").is_err());
    }
}
