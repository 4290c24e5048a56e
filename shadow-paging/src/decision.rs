//! What a host page fault means for the guest, as data: the outcome of
//! [`ShadowState::decide`](crate::ShadowState::decide).

use crate::addr::{GuestLinear, GuestPhys};
use crate::bits::host_error;
use crate::walk::{Access, PageFault, PageSize, Perms, TableEntries, Translation};

/// Host protections of a shadow mapping (`PROT_READ`/`PROT_WRITE`/`PROT_EXEC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Prot {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

impl Prot {
    /// No access at all.
    pub const NONE: Self = Self {
        read: false,
        write: false,
        exec: false,
    };
    /// Read-only.
    pub const READ: Self = Self {
        read: true,
        write: false,
        exec: false,
    };

    /// Whether every right in `self` is also in `other`.
    pub fn is_subset_of(self, other: Self) -> bool {
        (!self.read || other.read) && (!self.write || other.write) && (!self.exec || other.exec)
    }
}

/// The access a host page fault reports: only its W/R and I/D bits are meaningful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostAccess {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Fetch,
}

impl HostAccess {
    /// Decodes the host's page-fault error code (`REG_ERR`). The host's P bit is ignored:
    /// it describes the host's tables, never the guest's (ARCHITECTURE §2).
    pub fn from_host_error_code(err: u64) -> Self {
        if err & host_error::ID != 0 {
            Self::Fetch
        } else if err & host_error::W != 0 {
            Self::Write
        } else {
            Self::Read
        }
    }

    /// The guest access this is at the given privilege.
    pub fn guest_access(self, user: bool) -> Access {
        match self {
            Self::Read => Access::read(user),
            Self::Write => Access::write(user),
            Self::Fetch => Access::fetch(user),
        }
    }
}

/// What the monitor knows about a guest-physical page beyond the guest's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageUse {
    /// Ordinary data.
    Plain,
    /// Holds entries some shadow mapping was derived from: never mapped writable, so
    /// every guest write to it is mediated.
    PageTable,
    /// Scanned and patched code: never mapped writable, so a write reverts the patches.
    Code {
        /// Mapped execute-only, so guest reads of patched bytes are served from the
        /// originals by emulation.
        exec_only: bool,
    },
}

/// Host protections for a page with these guest rights and this use, accessed at this
/// privilege. Writable only with D already set, for plain pages; executable only for
/// scanned code the guest does not mark NX.
pub fn grant(perms: Perms, dirty: bool, page_use: PageUse, user: bool, wp: bool) -> Prot {
    Prot {
        read: !matches!(page_use, PageUse::Code { exec_only: true }),
        write: dirty && page_use == PageUse::Plain && (perms.writable || (!user && !wp)),
        exec: matches!(page_use, PageUse::Code { .. }) && !perms.nx,
    }
}

/// A shadow mapping to install: `len` bytes of guest RAM from `gpa` at `lin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapDecision {
    /// First linear page of the run.
    pub lin: GuestLinear,
    /// Guest-physical frame mapped at `lin`; the run is physically contiguous.
    pub gpa: GuestPhys,
    /// Bytes in the run (a multiple of 4 KiB).
    pub len: u32,
    /// Host protections for the whole run.
    pub prot: Prot,
    /// Guest rights the run was derived from.
    pub perms: Perms,
    /// D was set in the guest entry (or paging is off).
    pub dirty: bool,
    /// G was set in the guest entry.
    pub global: bool,
    /// Derived for a user-mode access (rights as user mode sees them).
    pub for_user: bool,
    /// Size of the guest page the run lies in.
    pub size: PageSize,
    /// Entries used for the first page; a 4 KiB run uses consecutive PTEs.
    pub entries: TableEntries,
    /// Bytes between consecutive PTEs.
    pub entry_stride: u32,
}

/// Why a fault the guest's tables allow must be emulated rather than mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EmulateReason {
    /// The page is not RAM (MMIO, or beyond RAM): decode the instruction and send the
    /// access to the device bus.
    NotRam,
    /// The linear page lies below the host's lowest mappable address.
    LowPage,
    /// A data read of execute-only patched code: serve it from the original bytes.
    ReadPatchedCode,
    /// An instruction fetch from a page-table page: patching it would corrupt the
    /// guest's tables, so the instruction is interpreted instead.
    FetchFromPageTable,
}

/// What the monitor does about a host page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The guest allows the access: install the mapping and re-enter.
    HiddenFault(MapDecision),
    /// The guest forbids the access: inject #PF with this CR2 and error code.
    TrueFault(PageFault),
    /// A permitted write to a page-table page: emulate the write, then report it with
    /// [`ShadowState::table_written`](crate::ShadowState::table_written).
    Mediate {
        /// The translation of the written address (accessed and dirty already set).
        translation: Translation,
    },
    /// A permitted write to scanned code: revert its patches,
    /// [`ShadowState::unmark_code`](crate::ShadowState::unmark_code), retry.
    CodeWrite {
        /// The code page.
        gpa: GuestPhys,
        /// The translation of the written address.
        translation: Translation,
    },
    /// A permitted fetch from a page not yet scanned: scan and patch it,
    /// [`ShadowState::mark_code`](crate::ShadowState::mark_code), retry.
    ScanFirst {
        /// The page to scan.
        gpa: GuestPhys,
        /// The translation of the fetched address.
        translation: Translation,
    },
    /// A permitted access that cannot be a shadow mapping: emulate the instruction.
    Emulate {
        /// The translation of the accessed address.
        translation: Translation,
        /// Why it is not mapped.
        reason: EmulateReason,
    },
}
