//! Stack frames as the processor pushes and pops them: address size by SS.B, limit
//! checks on the whole frame before any byte is written (so a fault leaves memory and
//! ESP unchanged), little-endian values of 2 or 4 bytes.

use super::state::Segment;
use super::{Fault, GuestBus};
use crate::addr::GuestLinear;

/// The stack pointer after moving `esp` by `delta` bytes: SP wraps within 16 bits and the
/// upper half of ESP is kept when the stack segment is 16-bit (SS.B = 0).
pub const fn adjust_sp(esp: u32, delta: i32, big: bool) -> u32 {
    let n = esp.wrapping_add(delta as u32);
    if big {
        n
    } else {
        (esp & 0xffff_0000) | (n & 0xffff)
    }
}

/// The offset inside SS that a stack pointer addresses.
const fn sp_offset(esp: u32, big: bool) -> u32 {
    if big {
        esp
    } else {
        esp & 0xffff
    }
}

/// Pushes `values` (first value at the highest address, as successive PUSHes would) of
/// `size` bytes each on the stack `ss`:`esp`; returns the new ESP. `fault` is what a
/// segment-limit violation raises (#SS(0) for an instruction, #SS(selector + EXT) for a
/// new stack during interrupt delivery...).
///
/// # Errors
/// `fault` when any slot lies outside SS; a #PF from the bus.
pub fn push_frame(
    bus: &mut impl GuestBus,
    ss: &Segment,
    esp: u32,
    values: &[u32],
    size: u32,
    user: bool,
    fault: Fault,
) -> Result<u32, Fault> {
    let big = ss.db;
    let total = values.len() as u32 * size;
    let new_esp = adjust_sp(esp, -(total as i32), big);
    if !ss.present {
        return Err(fault);
    }
    let mut slots = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let sp = adjust_sp(esp, -(((i as u32 + 1) * size) as i32), big);
        let off = sp_offset(sp, big);
        if !ss.contains(off, size) {
            return Err(fault);
        }
        slots.push((GuestLinear(ss.base.wrapping_add(off)), *v));
    }
    for (addr, v) in slots {
        bus.write_linear(addr, &v.to_le_bytes()[..size as usize], user)?;
    }
    Ok(new_esp)
}

/// Reads `n` values of `size` bytes from the stack `ss`:`esp` without popping (the first
/// value is the one at ESP); the caller moves ESP once every check has passed.
///
/// # Errors
/// `fault` when any slot lies outside SS; a #PF from the bus.
pub fn peek_frame(
    bus: &mut impl GuestBus,
    ss: &Segment,
    esp: u32,
    n: usize,
    size: u32,
    user: bool,
    fault: Fault,
) -> Result<Vec<u32>, Fault> {
    let big = ss.db;
    if !ss.present {
        return Err(fault);
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let sp = adjust_sp(esp, (i as u32 * size) as i32, big);
        let off = sp_offset(sp, big);
        if !ss.contains(off, size) {
            return Err(fault);
        }
        let mut b = [0u8; 4];
        bus.read_linear(
            GuestLinear(ss.base.wrapping_add(off)),
            &mut b[..size as usize],
            user,
        )?;
        out.push(u32::from_le_bytes(b));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::testbus::TestBus;

    #[test]
    fn push_then_peek_round_trip_and_limit_fault() {
        let mut bus = TestBus::new();
        let ss = Segment::flat(0x10, 3, 0);
        let esp = push_frame(&mut bus, &ss, 0x9000, &[1, 2, 3], 4, false, Fault::ss(0)).unwrap();
        assert_eq!(esp, 0x9000 - 12);
        assert_eq!(bus.read_u32(0x9000 - 4), 1);
        let v = peek_frame(&mut bus, &ss, esp, 3, 4, false, Fault::ss(0)).unwrap();
        assert_eq!(v, vec![3, 2, 1]);
        let mut small = ss;
        small.limit = 0x8ff8;
        assert_eq!(
            push_frame(&mut bus, &small, 0x9000, &[9, 9, 9], 4, false, Fault::ss(0)),
            Err(Fault::ss(0))
        );
        assert_eq!(bus.read_u32(0x9000 - 4), 1, "nothing written on fault");
    }

    #[test]
    fn sixteen_bit_stack_wraps() {
        assert_eq!(adjust_sp(0x1234_0000, -2, false), 0x1234_fffe);
        assert_eq!(adjust_sp(0x1234_0000, -2, true), 0x1233_fffe);
    }
}
