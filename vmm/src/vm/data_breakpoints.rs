//! Guest data breakpoints: DR0–DR3 with R/W = 01 (writes) or 11 (reads and writes)
//! enabled in DR7 (SDM Vol. 3B §17.2).
//!
//! The guest's debug registers are virtual and the host's are not the monitor's to set.
//! While a data breakpoint is enabled, translate mode runs the guest one instruction per
//! block: before each instruction the monitor records the linear ranges it will access
//! (its memory operands, with the registers it starts with), and when it has completed,
//! a range that overlaps an enabled breakpoint of a matching kind raises the #DB trap
//! hardware raises, with DR6.Bn set and EIP after the instruction. Breakpoint lengths
//! follow DR7's LEN field (1, 2, 4 or 8 bytes, the address aligned down to the length).
//! Accesses the monitor performs while emulating an instruction (a sensitive instruction,
//! a delivery) are not watched.

use crate::addr::GuestLinear;

/// One enabled data breakpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBreakpoint {
    /// DR0–DR3.
    pub slot: usize,
    /// First watched byte (DRn aligned down to the length).
    pub start: u32,
    /// Watched bytes.
    pub len: u32,
    /// R/W = 11: reads fire too.
    pub reads: bool,
}

/// A memory access an instruction is about to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Linear address.
    pub lin: GuestLinear,
    /// Bytes.
    pub size: u32,
    /// A write (or read-modify-write).
    pub write: bool,
}

/// The data breakpoints DR7 enables over addresses `dr[0..4]`.
pub fn enabled(dr: &[u32; 8]) -> Vec<DataBreakpoint> {
    let dr7 = dr[7];
    (0..4)
        .filter_map(|slot| {
            let on = dr7 & (0b11 << (2 * slot)) != 0;
            let rw = (dr7 >> (16 + 4 * slot)) & 0b11;
            let len = match (dr7 >> (18 + 4 * slot)) & 0b11 {
                0b00 => 1,
                0b01 => 2,
                0b10 => 8,
                _ => 4,
            };
            (on && (rw == 0b01 || rw == 0b11)).then(|| DataBreakpoint {
                slot,
                start: dr[slot] & !(len - 1),
                len,
                reads: rw == 0b11,
            })
        })
        .collect()
}

/// The DR6 B0–B3 bits the accesses fire.
pub fn hits(breakpoints: &[DataBreakpoint], accesses: &[Access]) -> u32 {
    let mut dr6 = 0;
    for bp in breakpoints {
        let (b0, b1) = (u64::from(bp.start), u64::from(bp.start) + u64::from(bp.len));
        let fired = accesses.iter().any(|a| {
            let (a0, a1) = (
                u64::from(a.lin.raw()),
                u64::from(a.lin.raw()) + u64::from(a.size),
            );
            (a.write || bp.reads) && a0 < b1 && b0 < a1
        });
        if fired {
            dr6 |= 1 << bp.slot;
        }
    }
    dr6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dr(addr: u32, dr7: u32) -> [u32; 8] {
        [addr, 0, 0, 0, 0, 0, 0, dr7]
    }

    fn access(lin: u32, size: u32, write: bool) -> Access {
        Access {
            lin: GuestLinear(lin),
            size,
            write,
        }
    }

    #[test]
    fn dr7_fields_decide_kind_and_length() {
        // L0, R/W0 = 01 (write), LEN0 = 11 (4 bytes).
        let bps = enabled(&dr(0x1002, 0b11_01 << 16 | 1));
        assert_eq!(
            bps,
            [DataBreakpoint {
                slot: 0,
                start: 0x1000,
                len: 4,
                reads: false
            }]
        );
        // R/W = 00 is an instruction breakpoint, 10 an I/O one: not data breakpoints.
        assert!(enabled(&dr(0x1000, 1)).is_empty());
        assert!(enabled(&dr(0x1000, 0b10 << 16 | 1)).is_empty());
        // Disabled.
        assert!(enabled(&dr(0x1000, 0b11_01 << 16)).is_empty());
    }

    #[test]
    fn writes_fire_write_breakpoints_reads_only_read_write_ones() {
        let write_only = enabled(&dr(0x2000, 0b11_01 << 16 | 2));
        assert_eq!(hits(&write_only, &[access(0x2003, 1, true)]), 1);
        assert_eq!(hits(&write_only, &[access(0x2000, 4, false)]), 0);
        assert_eq!(hits(&write_only, &[access(0x2004, 4, true)]), 0);
        assert_eq!(hits(&write_only, &[access(0x1ffe, 4, true)]), 1, "overlap");
        let read_write = enabled(&dr(0x2000, 0b00_11 << 16 | 1));
        assert_eq!(hits(&read_write, &[access(0x2000, 1, false)]), 1);
        assert_eq!(hits(&read_write, &[access(0x2001, 1, false)]), 0, "1 byte");
    }
}
