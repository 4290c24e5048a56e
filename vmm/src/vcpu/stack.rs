//! Stack frames as the processor pushes and pops them, and the inner-level stacks the
//! TSS holds: address size by SS.B, limit
//! checks on the whole frame before any byte is written (so a fault leaves memory and
//! ESP unchanged), little-endian values of 2 or 4 bytes.

use super::descriptor::{selector, system_type};
use super::state::{Segment, VcpuState};
use super::{Fault, GuestBus};
use crate::addr::GuestLinear;

/// The stack pointer after adding `delta` bytes modulo 2^32 (`n.wrapping_neg()` moves it
/// down by `n`): SP wraps within 16 bits and the upper half of ESP is kept when the stack
/// segment is 16-bit (SS.B = 0).
pub const fn adjust_sp(esp: u32, delta: u32, big: bool) -> u32 {
    let n = esp.wrapping_add(delta);
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

/// The largest frame handled as one access: nine 4-byte slots (an IRET to
/// virtual-8086 mode) and then some.
const FRAME_BYTES: usize = 64;

/// `count` slots of `size` bytes from the stack pointer `low` upwards, as a slice of
/// `buf`, when they lie at consecutive offsets (SP does not wrap inside the frame) and
/// fit in `buf`.
fn contiguous(
    buf: &mut [u8; FRAME_BYTES],
    low: u32,
    count: usize,
    size: u32,
    big: bool,
) -> Option<&mut [u8]> {
    let total = u32::try_from(count).ok()?.checked_mul(size)?;
    let first = u64::from(sp_offset(low, big));
    let end = if big { 1u64 << 32 } else { 1 << 16 };
    if size == 0 || first + u64::from(total) > end {
        return None;
    }
    buf.get_mut(..total as usize)
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
    let mut new_esp = esp;
    if !ss.present {
        return Err(fault);
    }
    // Every slot is checked against the limit before the first is written.
    for _ in values {
        new_esp = adjust_sp(new_esp, size.wrapping_neg(), big);
        if !ss.contains(sp_offset(new_esp, big), size) {
            return Err(fault);
        }
    }
    // A frame that does not wrap around the stack's offsets and lies in one page is one
    // write (one page walk, not one per slot); its first value is at the highest
    // address. Across a page end the slots are written one by one, highest first as the
    // processor pushes them, so a fault on both pages reports the upper one.
    let mut frame = [0u8; FRAME_BYTES];
    let low = ss.base.wrapping_add(sp_offset(new_esp, big));
    let high = ss.base.wrapping_add(sp_offset(esp, big).wrapping_sub(1));
    let one_page = low >> 12 == high >> 12;
    if let Some(bytes) =
        contiguous(&mut frame, new_esp, values.len(), size, big).filter(|_| one_page)
    {
        let n = size as usize;
        for (chunk, v) in bytes.chunks_exact_mut(n).rev().zip(values) {
            chunk.copy_from_slice(slot(&v.to_le_bytes(), size)?);
        }
        bus.write_linear(GuestLinear(low), bytes, user)?;
        return Ok(new_esp);
    }
    let mut at = esp;
    for v in values {
        at = adjust_sp(at, size.wrapping_neg(), big);
        let addr = GuestLinear(ss.base.wrapping_add(sp_offset(at, big)));
        let bytes = v.to_le_bytes();
        bus.write_linear(addr, slot(&bytes, size)?, user)?;
    }
    Ok(new_esp)
}

/// The low `size` bytes of a stack slot's value: slots are 2 or 4 bytes; no instruction
/// the emulator takes has wider ones (#UD).
fn slot(bytes: &[u8; 4], size: u32) -> Result<&[u8], Fault> {
    bytes.get(..size as usize).ok_or(Fault::ud())
}

fn slot_mut(bytes: &mut [u8; 4], size: u32) -> Result<&mut [u8], Fault> {
    bytes.get_mut(..size as usize).ok_or(Fault::ud())
}

/// Reads `N` values of `size` bytes from the stack `ss`:`esp` without popping (the first
/// value is the one at ESP); the caller moves ESP once every check has passed.
///
/// # Errors
/// `fault` when any slot lies outside SS; a #PF from the bus.
pub fn peek_frame<const N: usize>(
    bus: &mut impl GuestBus,
    ss: &Segment,
    esp: u32,
    size: u32,
    user: bool,
    fault: Fault,
) -> Result<[u32; N], Fault> {
    let mut out = [0; N];
    peek_frame_into(bus, ss, esp, &mut out, size, user, fault)?;
    Ok(out)
}

/// [`peek_frame`] for a count known only at run time: fills `out`.
///
/// # Errors
/// `fault` when any slot lies outside SS; a #PF from the bus.
pub fn peek_frame_into(
    bus: &mut impl GuestBus,
    ss: &Segment,
    esp: u32,
    out: &mut [u32],
    size: u32,
    user: bool,
    fault: Fault,
) -> Result<(), Fault> {
    let big = ss.db;
    if !ss.present {
        return Err(fault);
    }
    let mut frame = [0u8; FRAME_BYTES];
    if let Some(bytes) = contiguous(&mut frame, esp, out.len(), size, big) {
        // Every slot is inside SS before the frame is read, in one access.
        let mut sp = esp;
        for _ in 0..out.len() {
            if !ss.contains(sp_offset(sp, big), size) {
                return Err(fault);
            }
            sp = adjust_sp(sp, size, big);
        }
        let addr = GuestLinear(ss.base.wrapping_add(sp_offset(esp, big)));
        bus.read_linear(addr, bytes, user)?;
        for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(size as usize)) {
            let mut b = [0u8; 4];
            slot_mut(&mut b, size)?.copy_from_slice(chunk);
            *value = u32::from_le_bytes(b);
        }
        return Ok(());
    }
    let mut sp = esp;
    for value in out {
        let off = sp_offset(sp, big);
        if !ss.contains(off, size) {
            return Err(fault);
        }
        let mut b = [0u8; 4];
        bus.read_linear(
            GuestLinear(ss.base.wrapping_add(off)),
            slot_mut(&mut b, size)?,
            user,
        )?;
        *value = u32::from_le_bytes(b);
        sp = adjust_sp(sp, size, big);
    }
    Ok(())
}

/// SS:ESP for privilege level `pl` from the current TSS, for a stack switch to an inner
/// level by interrupt delivery (SDM Vol. 3A §6.12.1) or a call gate (§5.8.5): a 32-bit
/// TSS holds them at 8 × `pl` + 4 (§7.2.1, Figure 7-2), a 16-bit one at 4 × `pl` + 2
/// (§7.6). `ext` is the EXT bit of the error code (1 for an event external to the
/// program).
///
/// # Errors
/// #TS(TR + EXT) when TR holds no TSS or the TSS limit does not cover the SS:ESP pair
/// (the pseudo-code's "TSSstackAddress + 5 (or + 3) > TSS limit"); #PF from the bus.
pub(crate) fn tss_stack(
    state: &VcpuState,
    bus: &mut impl GuestBus,
    pl: u8,
    ext: u32,
) -> Result<(u16, u32), Fault> {
    let tr = &state.tr;
    let code = selector::error_code(tr.selector) + ext;
    let is32 = match tr.typ {
        system_type::TSS32_AVAILABLE | system_type::TSS32_BUSY => true,
        system_type::TSS16_AVAILABLE | system_type::TSS16_BUSY => false,
        _ => return Err(Fault::ts(code)),
    };
    if !tr.present || selector::is_null(tr.selector) {
        return Err(Fault::ts(code));
    }
    let pl = u32::from(pl);
    let (esp_off, ss_off, esp_len) = if is32 {
        (8 * pl + 4, 8 * pl + 8, 4)
    } else {
        (4 * pl + 2, 4 * pl + 4, 2)
    };
    if ss_off + 1 > tr.limit {
        return Err(Fault::ts(code));
    }
    let mut esp = [0u8; 4];
    bus.read_linear(
        GuestLinear(tr.base.wrapping_add(esp_off)),
        slot_mut(&mut esp, esp_len)?,
        false,
    )?;
    let mut ss = [0u8; 2];
    bus.read_linear(GuestLinear(tr.base.wrapping_add(ss_off)), &mut ss, false)?;
    Ok((u16::from_le_bytes(ss), u32::from_le_bytes(esp)))
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
        let v = peek_frame(&mut bus, &ss, esp, 4, false, Fault::ss(0)).unwrap();
        assert_eq!(v, [3, 2, 1]);
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
        assert_eq!(
            adjust_sp(0x1234_0000, 2u32.wrapping_neg(), false),
            0x1234_fffe
        );
        assert_eq!(
            adjust_sp(0x1234_0000, 2u32.wrapping_neg(), true),
            0x1233_fffe
        );
    }
}
