//! Mirrors of guest segment descriptors in the process LDT, installed with `modify_ldt`.
//!
//! The guest always runs at host CPL 3 through these mirrors: a 32-bit code segment for CS
//! and data segments with the guest's base and limit for SS/DS/ES/FS/GS.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Number of entries the host LDT can hold.
pub const LDT_ENTRIES: u16 = 8192;

/// `modify_ldt` function: write an entry with the modern (`useable`-aware) semantics.
const MODIFY_LDT_WRITE: libc::c_long = 0x11;

/// What went wrong installing a mirror.
#[derive(Debug, thiserror::Error)]
pub enum LdtError {
    /// The index is beyond the LDT.
    #[error("LDT index {index} is out of range (max {})", LDT_ENTRIES - 1)]
    BadIndex {
        /// The rejected index.
        index: u16,
    },
    /// The limit does not fit the 20-bit descriptor field.
    #[error("segment limit {limit:#x} does not fit 20 bits")]
    BadLimit {
        /// The rejected limit.
        limit: u32,
    },
    /// The kernel refused the descriptor.
    #[error("modify_ldt refused LDT entry {index}")]
    Host {
        /// The entry being written.
        index: u16,
        /// The host error.
        #[source]
        source: io::Error,
    },
}

/// The kind of a mirrored segment (the descriptor type field, as `modify_ldt` encodes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// A data segment.
    Data {
        /// Writes allowed (otherwise read-only).
        writable: bool,
        /// Expand-down (valid offsets are above the limit).
        expand_down: bool,
    },
    /// A non-conforming code segment (Linux refuses present conforming LDT code segments).
    Code {
        /// Reads allowed (otherwise execute-only).
        readable: bool,
    },
}

/// A descriptor for one host LDT entry. DPL is always 3 (the host forces it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LdtDescriptor {
    /// Segment base (linear).
    pub base: u32,
    /// The 20-bit limit field; in 4 KiB units when `limit_in_pages`.
    pub limit: u32,
    /// Granularity bit (G).
    pub limit_in_pages: bool,
    /// Default operand size / big bit (D/B): 32-bit when set.
    pub seg_32bit: bool,
    /// Code or data.
    pub kind: SegmentKind,
    /// Present bit (P); loading a not-present segment raises #NP/#SS.
    pub present: bool,
    /// The AVL bit, free for the monitor.
    pub useable: bool,
}

impl LdtDescriptor {
    /// A flat 4 GiB, 32-bit, readable code segment.
    pub const fn flat_code32() -> Self {
        Self {
            base: 0,
            limit: 0xfffff,
            limit_in_pages: true,
            seg_32bit: true,
            kind: SegmentKind::Code { readable: true },
            present: true,
            useable: false,
        }
    }

    /// A flat 4 GiB, 32-bit, writable data segment.
    pub const fn flat_data32() -> Self {
        Self {
            base: 0,
            limit: 0xfffff,
            limit_in_pages: true,
            seg_32bit: true,
            kind: SegmentKind::Data {
                writable: true,
                expand_down: false,
            },
            present: true,
            useable: false,
        }
    }

    /// Packs the descriptor into the kernel's `struct user_desc` bit fields.
    fn flags(&self) -> u32 {
        let (contents, read_exec_only) = match self.kind {
            SegmentKind::Data {
                writable,
                expand_down,
            } => (u32::from(expand_down), !writable),
            SegmentKind::Code { readable } => (2, !readable),
        };
        u32::from(self.seg_32bit)
            | contents << 1
            | u32::from(read_exec_only) << 3
            | u32::from(self.limit_in_pages) << 4
            | u32::from(!self.present) << 5
            | u32::from(self.useable) << 6
    }
}

/// The selector that loads LDT entry `index` at RPL 3 (`index << 3 | TI | 3`).
pub const fn ldt_selector(index: u16) -> u16 {
    (index << 3) | 4 | 3
}

/// Bumped after every LDT write. The entry path keeps FS/GS loaded across exits only while
/// this is unchanged: the kernel refreshes DS/ES after `modify_ldt` but not FS/GS, whose
/// cached descriptors would otherwise go stale.
pub(crate) static LDT_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The kernel's `struct user_desc` (asm/ldt.h).
#[repr(C)]
struct UserDesc {
    entry_number: u32,
    base_addr: u32,
    limit: u32,
    flags: u32,
}

fn write_entry(desc: &UserDesc) -> io::Result<()> {
    // SAFETY: modify_ldt reads exactly one `struct user_desc` from the pointer, which refers
    // to a live, correctly laid out value for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_modify_ldt,
            MODIFY_LDT_WRITE,
            desc as *const UserDesc,
            std::mem::size_of::<UserDesc>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    LDT_GENERATION.fetch_add(1, Ordering::Release);
    Ok(())
}

/// Installs `desc` as LDT entry `index` (a `modify_ldt` syscall: only call it when the
/// mirrored descriptor changed).
///
/// # Errors
/// [`LdtError::BadIndex`], [`LdtError::BadLimit`] for invalid input, [`LdtError::Host`] if the
/// kernel refuses (for instance a present conforming code segment).
pub fn set_ldt_entry(index: u16, desc: &LdtDescriptor) -> Result<(), LdtError> {
    if index >= LDT_ENTRIES {
        return Err(LdtError::BadIndex { index });
    }
    if desc.limit > 0xfffff {
        return Err(LdtError::BadLimit { limit: desc.limit });
    }
    let raw = UserDesc {
        entry_number: u32::from(index),
        base_addr: desc.base,
        limit: desc.limit,
        flags: desc.flags(),
    };
    write_entry(&raw).map_err(|source| LdtError::Host { index, source })
}

/// Clears LDT entry `index`; loading its selector afterwards raises #GP.
///
/// # Errors
/// [`LdtError::BadIndex`] or [`LdtError::Host`].
pub fn clear_ldt_entry(index: u16) -> Result<(), LdtError> {
    if index >= LDT_ENTRIES {
        return Err(LdtError::BadIndex { index });
    }
    // The kernel treats exactly this pattern (read_exec_only and seg_not_present set, all
    // else zero) as "empty" and writes a null descriptor.
    let raw = UserDesc {
        entry_number: u32::from(index),
        base_addr: 0,
        limit: 0,
        flags: 1 << 3 | 1 << 5,
    };
    write_entry(&raw).map_err(|source| LdtError::Host { index, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_and_flag_encoding() {
        assert_eq!(ldt_selector(1), 0x0f);
        assert_eq!(ldt_selector(2), 0x17);
        // seg_32bit | contents=2 | limit_in_pages
        assert_eq!(LdtDescriptor::flat_code32().flags(), 0b1_0101);
        // seg_32bit | contents=0 | limit_in_pages
        assert_eq!(LdtDescriptor::flat_data32().flags(), 0b1_0001);
        let ro_down = LdtDescriptor {
            kind: SegmentKind::Data {
                writable: false,
                expand_down: true,
            },
            present: false,
            ..LdtDescriptor::flat_data32()
        };
        assert_eq!(ro_down.flags(), 0b11_1011);
    }

    #[test]
    fn invalid_input_is_rejected_before_the_kernel() {
        assert!(matches!(
            set_ldt_entry(LDT_ENTRIES, &LdtDescriptor::flat_code32()),
            Err(LdtError::BadIndex { .. })
        ));
        let big = LdtDescriptor {
            limit: 0x10_0000,
            ..LdtDescriptor::flat_data32()
        };
        assert!(matches!(
            set_ldt_entry(5, &big),
            Err(LdtError::BadLimit { .. })
        ));
    }
}
