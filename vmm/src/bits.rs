//! The truncations and sign extensions the architecture itself performs, for the vCPU and
//! the host side alike: the low half of a register is a 16-bit register, a selector is 16
//! bits of a popped slot, a byte operand is the low 8 bits, a compat-mode guest owns the
//! low 32 bits of a host register. Everywhere else the engine widens with `From` or
//! checks with `try_from`; these are the only places a value is cut.

/// The low 8 bits (AL of EAX, a byte operand, a port byte).
#[allow(clippy::cast_possible_truncation)] // the truncation is the operation
pub const fn low8(v: u32) -> u8 {
    v as u8
}

/// The low 16 bits (AX of EAX, a selector in a 32-bit slot, IP of EIP).
#[allow(clippy::cast_possible_truncation)] // the truncation is the operation
pub const fn low16(v: u32) -> u16 {
    v as u16
}

/// The low 32 bits (EAX of EDX:EAX, a 32-bit immediate iced widened to 64 bits).
#[allow(clippy::cast_possible_truncation)] // the truncation is the operation
pub const fn low32(v: u64) -> u32 {
    v as u32
}

/// The high 32 bits (EDX of EDX:EAX).
pub const fn high32(v: u64) -> u32 {
    low32(v >> 32)
}

/// A byte sign-extended to 32 bits (MOVSX r32, r/m8).
pub const fn sign_extend8(v: u32) -> u32 {
    let wide = i8::from_le_bytes([low8(v)]) as i32;
    u32::from_le_bytes(wide.to_le_bytes())
}

/// A word sign-extended to 32 bits (MOVSX r32, r/m16; a 16-bit bit offset of BTS).
pub const fn sign_extend16(v: u32) -> u32 {
    let wide = i16::from_le_bytes(low16(v).to_le_bytes()) as i32;
    u32::from_le_bytes(wide.to_le_bytes())
}

/// A 32-bit value read as two's complement.
pub const fn signed(v: u32) -> i32 {
    i32::from_le_bytes(v.to_le_bytes())
}

/// A signed 32-bit value as the register bits that hold it.
pub const fn unsigned(v: i32) -> u32 {
    u32::from_le_bytes(v.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_and_extend() {
        assert_eq!((low8(0x1234_5678), low16(0x1234_5678)), (0x78, 0x5678));
        assert_eq!((low32(0x1_0000_0002), high32(0x1_0000_0002)), (2, 1));
        assert_eq!(sign_extend8(0x80), 0xffff_ff80);
        assert_eq!(sign_extend8(0x17f), 0x7f);
        assert_eq!(sign_extend16(0x8000), 0xffff_8000);
        assert_eq!((signed(u32::MAX), unsigned(-2)), (-1, 0xffff_fffe));
    }
}
