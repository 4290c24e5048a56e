//! Ship mode on the compute node: turning code a service node shipped into the bytes
//! the engine writes over a bound entry point, so the guest runs the service itself.

use services::node::ShippedCode;

use crate::binding::Binding;

/// `jmp rel32`: reaches a shipped entry that is not at the start of its code.
const JMP_REL32: u8 = 0xE9;
const JMP_REL32_LEN: u32 = 5;

/// Bytes to write at a guest address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodePatch {
    /// Guest linear address of the first byte (the entry point).
    pub addr: u32,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Shipped code that cannot replace an entry point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// The code follows another calling convention than the binding.
    #[error("shipped code uses convention `{shipped}`, the binding `{binding}`")]
    Convention {
        /// The binding's convention.
        binding: &'static str,
        /// The code's.
        shipped: String,
    },
    /// The code is larger than the function it would replace.
    #[error("shipped code needs {needed} bytes, the function at {addr:#010x} has {room}")]
    TooBig {
        /// The entry point.
        addr: u32,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        room: u32,
    },
    /// The entry offset is outside the code.
    #[error("shipped entry offset {offset} is outside its {len} bytes of code")]
    BadEntry {
        /// The offset.
        offset: u32,
        /// The code's length.
        len: usize,
    },
}

/// The patch that installs `shipped` in place of the function at `entry`, which has
/// `room` bytes (its ELF size). The code is position independent, so it runs wherever
/// it is copied; an entry inside the code is reached through a leading `jmp rel32`.
///
/// # Errors
/// A convention mismatch, a bad entry offset, or code that does not fit.
pub fn ship_patch(
    binding: &Binding,
    entry: u32,
    room: u32,
    shipped: &ShippedCode,
) -> Result<CodePatch, InstallError> {
    if shipped.convention != binding.convention.name() {
        return Err(InstallError::Convention {
            binding: binding.convention.name(),
            shipped: shipped.convention.clone(),
        });
    }
    if shipped.entry_offset as usize >= shipped.code.len() {
        return Err(InstallError::BadEntry {
            offset: shipped.entry_offset,
            len: shipped.code.len(),
        });
    }
    let mut bytes = Vec::with_capacity(shipped.code.len() + JMP_REL32_LEN as usize);
    if shipped.entry_offset != 0 {
        bytes.push(JMP_REL32);
        bytes.extend_from_slice(&shipped.entry_offset.to_le_bytes());
    }
    bytes.extend_from_slice(&shipped.code);
    if bytes.len() as u64 > u64::from(room) {
        return Err(InstallError::TooBig {
            addr: entry,
            needed: bytes.len() as u64,
            room,
        });
    }
    Ok(CodePatch { addr: entry, bytes })
}

#[cfg(test)]
mod tests {
    use services::node::implementation;
    use services::ServiceRegistry;

    use super::*;
    use crate::policy::Policy;

    fn binding(convention: &str) -> Binding {
        let src = format!(
            "[[bindings]]\nsymbol = \"early_console_write\"\nop = \"tty.write\"\n\
             convention = \"{convention}\"\nbuffer = {{ ptr = 0, len = 1, max = 4096 }}\n"
        );
        Policy::from_toml(&src, "p.toml", &ServiceRegistry::new())
            .unwrap()
            .bindings
            .remove(0)
    }

    fn shipped(convention: &str, entry_offset: u32) -> ShippedCode {
        let s = implementation("tty.write", convention).unwrap();
        ShippedCode {
            code: s.code,
            entry_offset,
            convention: convention.into(),
            requires: s.requires,
            description: s.description,
        }
    }

    #[test]
    fn fitting_code_replaces_the_function_start() {
        let code = shipped("regparm3", 0);
        let p = ship_patch(&binding("regparm3"), 0xc010_0000, 64, &code).unwrap();
        assert_eq!((p.addr, p.bytes), (0xc010_0000, code.code));
    }

    #[test]
    fn an_inner_entry_is_reached_by_a_jump() {
        let code = shipped("cdecl", 1);
        let p = ship_patch(&binding("cdecl"), 0x1000, 64, &code).unwrap();
        assert_eq!(&p.bytes[..5], &[0xE9, 1, 0, 0, 0]);
        assert_eq!(&p.bytes[5..], &code.code[..]);
    }

    #[test]
    fn mismatches_are_refused() {
        let code = shipped("cdecl", 0);
        assert!(matches!(
            ship_patch(&binding("regparm3"), 0, 64, &code),
            Err(InstallError::Convention { .. })
        ));
        assert!(matches!(
            ship_patch(&binding("cdecl"), 0, 8, &code),
            Err(InstallError::TooBig { room: 8, .. })
        ));
        let mut bad = code;
        bad.entry_offset = 1000;
        assert!(matches!(
            ship_patch(&binding("cdecl"), 0, 64, &bad),
            Err(InstallError::BadEntry { .. })
        ));
    }
}
