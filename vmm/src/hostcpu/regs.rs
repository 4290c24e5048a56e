//! Bit views of the register images the host hands over: a signal frame keeps each
//! 64-bit register as a signed `greg_t`, and a compat-mode guest owns only the low 32 bits
//! of a general register and the low 16 of a selector slot.

/// The 64 bits of a saved register.
pub const fn reg64(v: libc::greg_t) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// A 64-bit value as a signal frame stores it.
pub const fn greg(v: u64) -> libc::greg_t {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// The low 32 bits: what a compat-mode guest sees of a 64-bit register.
pub use crate::bits::low32;

/// The low 16 bits of a saved register (a selector, or a 16-bit field of a packed
/// register).
pub const fn low16(v: u64) -> u16 {
    crate::bits::low16(low32(v))
}

/// The low 8 bits of a saved register (a vector number in `trapno`).
pub const fn low8(v: u64) -> u8 {
    crate::bits::low8(low32(v))
}

/// Index of a `REG_*` constant in `gregs`.
pub const fn reg_index(r: libc::c_int) -> usize {
    r.unsigned_abs() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_keep_the_low_bits() {
        assert_eq!(reg64(-1), u64::MAX);
        assert_eq!(greg(u64::MAX), -1);
        assert_eq!(low32(0x1234_5678_9abc_def0), 0x9abc_def0);
        assert_eq!(low16(0x1234_5678_9abc_def0), 0xdef0);
        assert_eq!(low8(0x10e), 0x0e);
        assert_eq!(reg_index(libc::REG_RIP), 16);
    }
}
