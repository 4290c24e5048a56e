//! Guest RAM and the reserved guest linear address space.
//!
//! Guest physical memory is one memfd ([`GuestRam`]). The monitor reaches it through its own
//! shared mapping above 4 GiB; the guest reaches it through *linear* mappings of the same
//! memfd placed in the low 4 GiB of the process ([`LinearSpace`]), which is reserved at
//! start-up so that nothing else (heap, libraries, thread stacks) can ever land where guest
//! code can address it.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::addr::{GuestLinear, GuestPhys, HostAddr, PAGE_SIZE};

/// Smallest guest RAM accepted: real-mode low memory plus room for a kernel.
pub const MIN_RAM_SIZE: u64 = 1 << 20;
/// The largest guest RAM: a PC's RAM below 4 GiB ends where the MMIO hole begins
/// ([`crate::devices::pc::MAX_RAM`], 3 GiB).
pub const MAX_RAM_SIZE: u64 = crate::devices::pc::MAX_RAM;
/// The top of the guest linear address space (exclusive).
pub const LINEAR_TOP: u64 = 1 << 32;
/// The lowest address the host lets a process map (`vm.mmap_min_addr` on this host kind);
/// guest linear page 0 stays unmapped anyway, so the reservation starts here.
pub const LINEAR_RESERVE_START: u64 = PAGE_SIZE as u64;

/// What went wrong with guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested RAM size is not usable.
    #[error(
        "guest RAM size {size:#x} is invalid: it must be a multiple of 4 KiB and at least 1 MiB"
    )]
    BadRamSize {
        /// The rejected size in bytes.
        size: u64,
    },
    /// More RAM than fits below the PC's MMIO hole.
    #[error("guest RAM size {size:#x} is too large: at most {MAX_RAM_SIZE:#x} (3 GiB), since a PC's RAM ends where the MMIO hole below 4 GiB (IOAPIC, local APIC, firmware) begins")]
    RamTooLarge {
        /// The rejected size in bytes.
        size: u64,
    },
    /// memfd_create or ftruncate failed.
    #[error("cannot create the guest RAM memfd")]
    Memfd(#[source] io::Error),
    /// The monitor's view of guest RAM could not be mapped.
    #[error("cannot map the monitor's view of guest RAM")]
    MapView(#[source] io::Error),
    /// The monitor's view landed below 4 GiB, where the guest could reach it.
    #[error("the monitor's view of guest RAM landed at {addr}, below 4 GiB")]
    ViewTooLow {
        /// Where the host placed the view.
        addr: HostAddr,
    },
    /// An access to guest physical memory left guest RAM.
    #[error("guest physical access at {addr} of {len} bytes is outside guest RAM")]
    OutOfBounds {
        /// Start of the access.
        addr: GuestPhys,
        /// Length of the access.
        len: usize,
    },
    /// Another `LinearSpace` already reserves the low 4 GiB of this process.
    #[error("the guest linear address space is already reserved in this process")]
    AlreadyReserved,
    /// Something already lives in the low 4 GiB, so the reservation failed.
    #[error("cannot reserve the low 4 GiB for the guest linear address space (is something already mapped there?)")]
    Reserve(#[source] io::Error),
    /// A linear range is not page-aligned, empty, or leaves the 32-bit space.
    #[error("linear range {lin} + {len:#x} is not a non-empty, page-aligned range below 4 GiB")]
    BadLinearRange {
        /// Start of the range.
        lin: GuestLinear,
        /// Length of the range.
        len: u32,
    },
    /// Guest linear page 0 is never mapped: accesses there are emulated.
    #[error("linear range {lin} + {len:#x} touches guest linear page 0, which is never mapped")]
    NullPage {
        /// Start of the range.
        lin: GuestLinear,
        /// Length of the range.
        len: u32,
    },
    /// The physical side of a mapping is not page-aligned or leaves guest RAM.
    #[error("physical range {gpa} + {len:#x} is not page-aligned or leaves guest RAM")]
    BadPhysRange {
        /// Start of the range.
        gpa: GuestPhys,
        /// Length of the range.
        len: u32,
    },
    /// `protect` was asked for a range that is not (entirely) mapped.
    #[error("linear range {lin} + {len:#x} is not entirely mapped")]
    NotMapped {
        /// Start of the range.
        lin: GuestLinear,
        /// Length of the range.
        len: u32,
    },
    /// mmap, mprotect or the re-reservation failed.
    #[error("host {op} failed for linear range {lin} + {len:#x}")]
    Host {
        /// The host call that failed.
        op: &'static str,
        /// Start of the range.
        lin: GuestLinear,
        /// Length of the range.
        len: u32,
        /// The host error.
        #[source]
        source: io::Error,
    },
}

/// Guest physical memory: one memfd, seen by the monitor through a shared mapping above
/// 4 GiB, between PROT_NONE guard pages.
///
/// The guest sees the same pages through linear mappings ([`LinearSpace::map`]), so the
/// accessors copy through raw pointers and never hand out references that could be held
/// across a guest run (except [`GuestRam::as_mut_slice`], whose `&mut self` borrow forbids
/// that).
#[derive(Debug)]
pub struct GuestRam {
    fd: OwnedFd,
    view: NonNull<u8>,
    size: usize,
}

// SAFETY: the view is a plain shared mapping owned by this value; moving it to another
// thread moves the only handle. It is deliberately not `Sync`: unsynchronised copies from
// two threads would race.
unsafe impl Send for GuestRam {}

impl GuestRam {
    /// Creates `size` bytes of zeroed guest RAM.
    ///
    /// # Errors
    /// [`MemoryError::BadRamSize`] unless `size` is a multiple of 4 KiB and ≥ 1 MiB;
    /// [`MemoryError::RamTooLarge`] above [`MAX_RAM_SIZE`];
    /// [`MemoryError::Memfd`] / [`MemoryError::MapView`] when the host refuses;
    /// [`MemoryError::ViewTooLow`] if the host put the monitor's view below 4 GiB.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size > MAX_RAM_SIZE {
            return Err(MemoryError::RamTooLarge { size });
        }
        if size & u64::from(PAGE_SIZE - 1) != 0 || size < MIN_RAM_SIZE {
            return Err(MemoryError::BadRamSize { size });
        }
        let fd = create_memfd(c"vmm-guest-ram", size).map_err(MemoryError::Memfd)?;
        let size = usize::try_from(size).map_err(|_| MemoryError::BadRamSize { size })?;
        let view = map_view(&fd, size).map_err(MemoryError::MapView)?;
        let ram = Self { fd, view, size };
        if ram.host_base().raw() < LINEAR_TOP {
            return Err(MemoryError::ViewTooLow {
                addr: ram.host_base(),
            });
        }
        Ok(ram)
    }

    /// Size of guest RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size as u64
    }

    /// The memfd backing guest RAM (for linear mappings).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Host address of the monitor's view (always ≥ 4 GiB).
    pub fn host_base(&self) -> HostAddr {
        HostAddr::of(self.view.as_ptr())
    }

    /// All of guest RAM as one mutable slice, for loaders. The borrow ends before any guest
    /// run can start, since running the guest needs the monitor's other state anyway.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the view maps `size` bytes for the lifetime of `self`; `&mut self` makes
        // this the only live reference created through this value.
        unsafe { std::slice::from_raw_parts_mut(self.view.as_ptr(), self.size) }
    }

    fn check(&self, addr: GuestPhys, len: usize) -> Result<usize, MemoryError> {
        let start = addr.raw() as usize;
        match start.checked_add(len) {
            Some(end) if end <= self.size => Ok(start),
            _ => Err(MemoryError::OutOfBounds { addr, len }),
        }
    }

    /// Copies guest RAM at `addr` into `buf`.
    ///
    /// # Errors
    /// [`MemoryError::OutOfBounds`] if the range leaves guest RAM.
    pub fn read(&self, addr: GuestPhys, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self.check(addr, buf.len())?;
        // SAFETY: `check` proved `off + buf.len() <= size`, inside the live view; `buf` is a
        // distinct monitor buffer (the view is never borrowed), so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.view.as_ptr().add(off), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `data` into guest RAM at `addr`.
    ///
    /// # Errors
    /// [`MemoryError::OutOfBounds`] if the range leaves guest RAM.
    pub fn write(&self, addr: GuestPhys, data: &[u8]) -> Result<(), MemoryError> {
        let off = self.check(addr, data.len())?;
        // SAFETY: as in `read`, the destination lies inside the live, writable view and does
        // not overlap `data`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.view.as_ptr().add(off), data.len())
        };
        Ok(())
    }

    /// Reads one byte.
    ///
    /// # Errors
    /// [`MemoryError::OutOfBounds`] if `addr` is outside guest RAM.
    pub fn read_u8(&self, addr: GuestPhys) -> Result<u8, MemoryError> {
        let mut b = [0; 1];
        self.read(addr, &mut b)?;
        Ok(b[0])
    }

    /// Reads a little-endian u16 (any alignment).
    ///
    /// # Errors
    /// [`MemoryError::OutOfBounds`] if the two bytes are not all inside guest RAM.
    pub fn read_u16(&self, addr: GuestPhys) -> Result<u16, MemoryError> {
        let mut b = [0; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian u32 (any alignment).
    ///
    /// # Errors
    /// [`MemoryError::OutOfBounds`] if the four bytes are not all inside guest RAM.
    pub fn read_u32(&self, addr: GuestPhys) -> Result<u32, MemoryError> {
        let mut b = [0; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes one byte.
    ///
    /// # Errors
    /// [`MemoryError::OutOfBounds`] if `addr` is outside guest RAM.
    pub fn write_u8(&self, addr: GuestPhys, v: u8) -> Result<(), MemoryError> {
        self.write(addr, &[v])
    }

    /// Writes a little-endian u16 (any alignment).
    ///
    /// # Errors
    /// [`MemoryError::OutOfBounds`] if the two bytes are not all inside guest RAM.
    pub fn write_u16(&self, addr: GuestPhys, v: u16) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Writes a little-endian u32 (any alignment).
    ///
    /// # Errors
    /// [`MemoryError::OutOfBounds`] if the four bytes are not all inside guest RAM.
    pub fn write_u32(&self, addr: GuestPhys, v: u32) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }
}

/// The monitor's own memory in the monitor window (the translation cache, its lookup
/// tables, the gate, the vCPU page): one memfd, mapped into the window with the
/// protections each part needs ([`LinearSpace::map_monitor`]) and written only through
/// this value's view above 4 GiB (between PROT_NONE guard pages), so no address is ever
/// writable and executable at once.
pub struct WindowMemory {
    fd: OwnedFd,
    view: NonNull<u8>,
    size: usize,
}

// SAFETY: as for GuestRam: the view is a shared mapping owned by this value.
unsafe impl Send for WindowMemory {}

impl std::fmt::Debug for WindowMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowMemory")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl WindowMemory {
    /// `size` zeroed bytes.
    ///
    /// # Errors
    /// [`MemoryError::Memfd`] / [`MemoryError::MapView`] when the host refuses;
    /// [`MemoryError::ViewTooLow`] if the view landed below 4 GiB.
    pub fn new(size: u32) -> Result<Self, MemoryError> {
        let fd =
            create_memfd(c"vmm-monitor-window", u64::from(size)).map_err(MemoryError::Memfd)?;
        let size = size as usize;
        let view = map_view(&fd, size).map_err(MemoryError::MapView)?;
        let mem = Self { fd, view, size };
        let addr = HostAddr::of(mem.view.as_ptr());
        if addr.raw() < LINEAR_TOP {
            return Err(MemoryError::ViewTooLow { addr });
        }
        Ok(mem)
    }

    /// The memfd.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The monitor's view.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the view maps `size` bytes for the lifetime of `self`.
        unsafe { std::slice::from_raw_parts(self.view.as_ptr(), self.size) }
    }

    /// The monitor's view, for writing.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the view maps `size` bytes for the lifetime of `self`; `&mut self`
        // makes this the only reference made through this value.
        unsafe { std::slice::from_raw_parts_mut(self.view.as_ptr(), self.size) }
    }
}

impl Drop for WindowMemory {
    fn drop(&mut self) {
        // SAFETY: the view made in `new`, referenced by nothing once `self` drops.
        unsafe { unmap_view(self.view, self.size) };
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: `view`/`size` describe the view made in `new`, which nothing else
        // references once `self` is dropped.
        unsafe { unmap_view(self.view, self.size) };
    }
}

fn create_memfd(name: &std::ffi::CStr, size: u64) -> io::Result<OwnedFd> {
    // SAFETY: the name is NUL-terminated; the call has no memory side effects.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let size =
        libc::off_t::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: ftruncate on an owned memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The PROT_NONE guard page on each side of a monitor view.
pub const VIEW_GUARD: usize = 4096;

/// Maps `size` bytes of `fd` shared and writable, between two PROT_NONE guard pages: a
/// monitor access that runs off either end of the view faults instead of reaching
/// whatever the host placed beside it. [`unmap_view`] takes all three back.
fn map_view(fd: &OwnedFd, size: usize) -> io::Result<NonNull<u8>> {
    let total = size
        .checked_add(2 * VIEW_GUARD)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a fresh anonymous reservation chosen by the kernel (no MAP_FIXED), so it
    // cannot replace any existing mapping.
    let reserve = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserve == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let view = reserve as usize + VIEW_GUARD;
    // SAFETY: MAP_FIXED over the middle of the reservation just made, which nothing else
    // references; the guard pages on either side stay PROT_NONE.
    let p = unsafe {
        libc::mmap(
            view as *mut c_void,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        // SAFETY: the reservation made above, referenced by nothing.
        unsafe { libc::munmap(reserve, total) };
        return Err(e);
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))
}

/// Unmaps a view made by [`map_view`] with its guard pages.
///
/// # Safety
/// `view` and `size` are those of a live [`map_view`] mapping that nothing references.
unsafe fn unmap_view(view: NonNull<u8>, size: usize) {
    // SAFETY: the caller's promise; the guard pages were reserved with the view.
    unsafe { libc::munmap(view.as_ptr().sub(VIEW_GUARD).cast(), size + 2 * VIEW_GUARD) };
}

/// Host protection of a linear mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prot {
    /// Loads allowed.
    pub read: bool,
    /// Stores allowed (on x86 this implies loads).
    pub write: bool,
    /// Instruction fetch allowed.
    pub exec: bool,
}

impl Prot {
    /// No access.
    pub const NONE: Self = Self::new(false, false, false);
    /// Read-only data.
    pub const R: Self = Self::new(true, false, false);
    /// Read-write data.
    pub const RW: Self = Self::new(true, true, false);
    /// Read and execute (scanned code).
    pub const RX: Self = Self::new(true, false, true);
    /// Execute only (through protection keys where the host has them).
    pub const X: Self = Self::new(false, false, true);
    /// Everything.
    pub const RWX: Self = Self::new(true, true, true);

    /// A protection from its three flags.
    pub const fn new(read: bool, write: bool, exec: bool) -> Self {
        Self { read, write, exec }
    }

    fn to_host(self) -> libc::c_int {
        let mut p = libc::PROT_NONE;
        if self.read {
            p |= libc::PROT_READ;
        }
        if self.write {
            p |= libc::PROT_WRITE;
        }
        if self.exec {
            p |= libc::PROT_EXEC;
        }
        p
    }
}

/// Only one reservation of the low 4 GiB can exist per process.
static RESERVED: AtomicBool = AtomicBool::new(false);

/// Linear pages in the 32-bit space.
const LINEAR_PAGES: usize = 1 << 20;
/// The reservation as host addresses: `[LINEAR_RESERVE_START, LINEAR_TOP)`.
const RESERVE_START: usize = 1 << 12;
const RESERVE_LEN: usize = (1 << 32) - RESERVE_START;
const _: () = assert!(LINEAR_TOP == (LINEAR_PAGES as u64) * PAGE_SIZE as u64);
const _: () = assert!(LINEAR_RESERVE_START == RESERVE_START as u64);

/// The guest linear address space: the low 4 GiB of this process, reserved PROT_NONE at
/// creation; guest RAM pages are mapped into it and taken back out, never leaving a hole.
///
/// Process-global: at most one exists at a time.
#[derive(Debug)]
pub struct LinearSpace {
    /// One bit per linear page: set while a run of the memfd is mapped there. `protect`
    /// must never turn the anonymous PROT_NONE reservation into accessible memory.
    mapped: Vec<u64>,
    /// Where the guest's part of the space ends: the monitor window starts there in
    /// translate mode ([`LinearSpace::reserve_window`]); guest mappings are clipped below.
    guest_top: u64,
    /// Guest mappings never get PROT_EXEC (translate mode: only the TC executes).
    no_exec: bool,
    /// The memfd frame behind every page that maps guest RAM or did until a drop left it
    /// PROT_NONE.
    backing: Backing,
    /// Pages whose frame is kept behind PROT_NONE (backed, not mapped).
    kept: usize,
}

/// Most pages kept behind PROT_NONE before they go back to the reservation: each can be
/// a host VMA of its own, and a process has at most `vm.max_map_count` (65,530 by
/// default) of them.
const KEPT_LIMIT: usize = 8192;

/// The memfd frame behind each linear page's host mapping.
///
/// Dropping a guest mapping by mapping the anonymous reservation over it is an mmap,
/// which costs about five times an mprotect on this host kind (11,000 against 2,300
/// cycles, measured with a standalone loop), and a drop is followed so often by a
/// mapping of the same frame at the same place (a CR3 switch back, a refault after a
/// flush) that the mapping is rather kept, PROT_NONE, and made accessible again by
/// mprotect when the same frame comes back.
#[derive(Debug, Default)]
struct Backing {
    /// Per 4 MiB of linear space (allocated on first use), the frame number plus one
    /// behind each page; 0 for the anonymous reservation.
    tables: Vec<Option<Box<[u32; 1024]>>>,
}

impl Backing {
    fn get(&self, page: usize) -> Option<u32> {
        let table = self.tables.get(page >> 10)?.as_ref()?;
        table.get(page & 1023)?.checked_sub(1)
    }

    fn set(&mut self, page: usize, frame: Option<u32>) {
        let dir = page >> 10;
        if frame.is_none() && self.tables.get(dir).is_none_or(Option::is_none) {
            // Nothing is recorded in that 4 MiB: nothing to clear.
            return;
        }
        if dir >= self.tables.len() {
            self.tables.resize_with(dir + 1, || None);
        }
        let Some(slot) = self.tables.get_mut(dir) else {
            return;
        };
        let table = slot.get_or_insert_with(|| Box::new([0; 1024]));
        if let Some(entry) = table.get_mut(page & 1023) {
            *entry = frame.map_or(0, |f| f + 1);
        }
    }
}

impl LinearSpace {
    /// Reserves `[4096, 4 GiB)` with PROT_NONE, MAP_NORESERVE and MAP_FIXED_NOREPLACE.
    ///
    /// # Errors
    /// [`MemoryError::AlreadyReserved`] if another `LinearSpace` lives in this process;
    /// [`MemoryError::Reserve`] if anything is already mapped in that range.
    pub fn reserve() -> Result<Self, MemoryError> {
        if RESERVED.swap(true, Ordering::AcqRel) {
            return Err(MemoryError::AlreadyReserved);
        }
        match reserve_fixed(RESERVE_START, RESERVE_LEN, libc::MAP_FIXED_NOREPLACE) {
            Ok(()) => Ok(Self {
                mapped: vec![0; LINEAR_PAGES / 64],
                guest_top: LINEAR_TOP,
                no_exec: false,
                backing: Backing::default(),
                kept: 0,
            }),
            Err(e) => {
                RESERVED.store(false, Ordering::Release);
                Err(MemoryError::Reserve(e))
            }
        }
    }

    /// Gives `[start, 4 GiB)` to the monitor (ARCHITECTURE §5, the monitor window) and
    /// takes PROT_EXEC away from guest mappings for good: from now on guest mappings are
    /// clipped below `start` (guest accesses there are emulated) and are never
    /// executable.
    ///
    /// # Errors
    /// [`MemoryError::BadLinearRange`] when `start` is not page-aligned.
    pub fn reserve_window(&mut self, start: GuestLinear) -> Result<(), MemoryError> {
        if start.page_offset() != 0 || start.raw() == 0 {
            return Err(MemoryError::BadLinearRange { lin: start, len: 0 });
        }
        self.release(start, start.raw().wrapping_neg())?;
        self.guest_top = u64::from(start.raw());
        self.no_exec = true;
        Ok(())
    }

    /// Where the guest's part of the space ends (4 GiB without a monitor window).
    pub fn guest_top(&self) -> u64 {
        self.guest_top
    }

    /// Maps `len` bytes of `fd` at `offset` into the monitor window at `lin` with
    /// `prot` (the monitor's own pages: the translation cache, its tables, the gate).
    ///
    /// # Errors
    /// [`MemoryError::BadLinearRange`] unless the range lies in the window;
    /// [`MemoryError::Host`] if mmap fails.
    pub fn map_monitor(
        &mut self,
        lin: GuestLinear,
        len: u32,
        prot: Prot,
        fd: &OwnedFd,
        offset: u64,
    ) -> Result<(), MemoryError> {
        let end = u64::from(lin.raw()) + u64::from(len);
        if u64::from(lin.raw()) < self.guest_top || end > LINEAR_TOP || len == 0 {
            return Err(MemoryError::BadLinearRange { lin, len });
        }
        let off =
            libc::off_t::try_from(offset).map_err(|_| MemoryError::BadLinearRange { lin, len })?;
        map_fixed_shared(lin, len, prot, fd, off).map_err(|source| MemoryError::Host {
            op: "mmap(monitor window)",
            lin,
            len,
            source,
        })
    }

    /// Changes the protection of part of what [`LinearSpace::map_monitor`] mapped.
    ///
    /// # Errors
    /// [`MemoryError::BadLinearRange`] for a range that is not page-aligned or not in
    /// the monitor window; [`MemoryError::Host`] if mprotect fails.
    pub fn protect_monitor(
        &mut self,
        lin: GuestLinear,
        len: u32,
        prot: Prot,
    ) -> Result<(), MemoryError> {
        Self::check_linear(lin, len)?;
        if u64::from(lin.raw()) < self.guest_top {
            return Err(MemoryError::BadLinearRange { lin, len });
        }
        // The range is page-aligned and lies in the monitor window above the guest's
        // part, where only map_monitor's memfd mappings and the reservation are.
        mprotect_low(lin, len, prot, "mprotect(monitor window)")
    }

    /// The part of a guest range below the monitor window, with the protection guest
    /// mappings may have; `None` when nothing of it is the guest's.
    fn guest_part(&self, lin: GuestLinear, len: u32, prot: Prot) -> Option<(u32, Prot)> {
        let start = u64::from(lin.raw());
        if start >= self.guest_top {
            return None;
        }
        let len = u64::from(len).min(self.guest_top - start);
        let prot = Prot {
            exec: prot.exec && !self.no_exec,
            ..prot
        };
        Some((u32::try_from(len).ok()?, prot))
    }

    fn check_linear(lin: GuestLinear, len: u32) -> Result<(), MemoryError> {
        let end = u64::from(lin.raw()) + u64::from(len);
        if len == 0 || lin.page_offset() != 0 || len & (PAGE_SIZE - 1) != 0 || end > LINEAR_TOP {
            return Err(MemoryError::BadLinearRange { lin, len });
        }
        if u64::from(lin.raw()) < LINEAR_RESERVE_START {
            return Err(MemoryError::NullPage { lin, len });
        }
        Ok(())
    }

    fn pages(lin: GuestLinear, len: u32) -> std::ops::Range<usize> {
        let first = (lin.raw() / PAGE_SIZE) as usize;
        first..first + (len / PAGE_SIZE) as usize
    }

    fn set_mapped(&mut self, lin: GuestLinear, len: u32, on: bool) {
        for p in Self::pages(lin, len) {
            // The bitmap has a bit for every page of the 4 GiB.
            let Some(word) = self.mapped.get_mut(p / 64) else {
                continue;
            };
            if on {
                *word |= 1 << (p % 64);
            } else {
                *word &= !(1 << (p % 64));
            }
        }
    }

    /// Whether linear page `p` currently maps guest RAM.
    fn page_mapped(&self, p: usize) -> bool {
        self.mapped
            .get(p / 64)
            .is_some_and(|word| word & (1 << (p % 64)) != 0)
    }

    /// Whether the page holding `lin` currently maps guest RAM.
    pub fn is_mapped(&self, lin: GuestLinear) -> bool {
        self.page_mapped((lin.raw() / PAGE_SIZE) as usize)
    }

    /// Maps guest RAM `[gpa, gpa + len)` at `[lin, lin + len)` with one shared mmap,
    /// replacing whatever was there.
    ///
    /// # Errors
    /// [`MemoryError::BadLinearRange`], [`MemoryError::NullPage`] or
    /// [`MemoryError::BadPhysRange`] for invalid ranges; [`MemoryError::Host`] if mmap fails.
    pub fn map(
        &mut self,
        lin: GuestLinear,
        ram: &GuestRam,
        gpa: GuestPhys,
        len: u32,
        prot: Prot,
    ) -> Result<(), MemoryError> {
        Self::check_linear(lin, len)?;
        if gpa.page_offset() != 0 || u64::from(gpa.raw()) + u64::from(len) > ram.size() {
            return Err(MemoryError::BadPhysRange { gpa, len });
        }
        let Some((len, prot)) = self.guest_part(lin, len, prot) else {
            return Ok(());
        };
        let pages = Self::pages(lin, len);
        let frame = gpa.raw() / PAGE_SIZE;
        let frames = (frame..).take(pages.len());
        let was_kept = pages.clone().filter(|&p| self.page_kept(p)).count();
        if pages
            .clone()
            .zip(frames.clone())
            .all(|(p, f)| self.backing.get(p) == Some(f))
        {
            // The same frames are still behind these pages (see `Backing`).
            mprotect_low(lin, len, prot, "mprotect")?;
        } else {
            map_fixed_shared(lin, len, prot, ram.fd(), libc::off_t::from(gpa.raw())).map_err(
                |source| MemoryError::Host {
                    op: "mmap",
                    lin,
                    len,
                    source,
                },
            )?;
            for (p, f) in pages.zip(frames) {
                self.backing.set(p, Some(f));
            }
        }
        self.kept = self.kept.saturating_sub(was_kept);
        self.set_mapped(lin, len, true);
        Ok(())
    }

    /// Changes the protection of a mapped linear range.
    ///
    /// # Errors
    /// [`MemoryError::NotMapped`] unless every page of the range maps guest RAM; range
    /// errors as for [`LinearSpace::map`]; [`MemoryError::Host`] if mprotect fails.
    pub fn protect(&mut self, lin: GuestLinear, len: u32, prot: Prot) -> Result<(), MemoryError> {
        Self::check_linear(lin, len)?;
        let Some((len, prot)) = self.guest_part(lin, len, prot) else {
            return Ok(());
        };
        if !Self::pages(lin, len).all(|p| self.page_mapped(p)) {
            return Err(MemoryError::NotMapped { lin, len });
        }
        // The range lies inside the reservation and only covers memfd mappings this
        // value made.
        mprotect_low(lin, len, prot, "mprotect")
    }

    /// Takes a linear range away from the guest: it becomes PROT_NONE, never a hole
    /// another mapping could fill. The frames behind it stay there (see `Backing`) until
    /// too many are kept, when they all go back to the reservation. Unmapping pages that
    /// were not mapped is allowed and costs nothing.
    ///
    /// # Errors
    /// Range errors as for [`LinearSpace::map`]; [`MemoryError::Host`] if the host refuses.
    pub fn unmap(&mut self, lin: GuestLinear, len: u32) -> Result<(), MemoryError> {
        Self::check_linear(lin, len)?;
        let Some((len, _)) = self.guest_part(lin, len, Prot::NONE) else {
            return Ok(());
        };
        let newly_kept = Self::pages(lin, len)
            .filter(|&p| self.page_mapped(p))
            .count();
        if newly_kept == 0 {
            // Already PROT_NONE: the reservation, or frames kept behind it.
            return Ok(());
        }
        mprotect_low(lin, len, Prot::NONE, "mprotect(PROT_NONE)")?;
        self.set_mapped(lin, len, false);
        self.kept += newly_kept;
        if self.kept > KEPT_LIMIT {
            self.release_kept()?;
        }
        Ok(())
    }

    /// Whether linear page `p` is PROT_NONE over a frame kept there.
    fn page_kept(&self, p: usize) -> bool {
        !self.page_mapped(p) && self.backing.get(p).is_some()
    }

    /// Returns every kept page to the reservation, in runs that stop only at mapped
    /// pages (the reservation between kept pages is replaced by itself).
    fn release_kept(&mut self) -> Result<(), MemoryError> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut open: Option<(usize, usize)> = None;
        let dirs: Vec<usize> = (self.backing.tables.iter().enumerate())
            .filter_map(|(dir, t)| t.is_some().then_some(dir))
            .collect();
        for dir in dirs {
            for p in dir << 10..(dir + 1) << 10 {
                if self.page_mapped(p) {
                    runs.extend(open.take());
                } else if self.backing.get(p).is_some() {
                    open = Some(match open {
                        Some((start, _)) => (start, p + 1),
                        None => (p, p + 1),
                    });
                }
            }
        }
        runs.extend(open);
        for (start, end) in runs {
            // Page numbers of the 4 GiB: below 2^20, so the range's bytes fit.
            let (Ok(first), Ok(count)) = (u32::try_from(start), u32::try_from(end - start)) else {
                continue;
            };
            self.release(GuestLinear(first << 12), count << 12)?;
        }
        Ok(())
    }

    /// Returns a linear range to the anonymous PROT_NONE reservation, frames and all.
    fn release(&mut self, lin: GuestLinear, len: u32) -> Result<(), MemoryError> {
        Self::check_linear(lin, len)?;
        reserve_fixed(lin.raw() as usize, len as usize, libc::MAP_FIXED).map_err(|source| {
            MemoryError::Host {
                op: "mmap(PROT_NONE)",
                lin,
                len,
                source,
            }
        })?;
        for p in Self::pages(lin, len) {
            if self.page_kept(p) {
                self.kept = self.kept.saturating_sub(1);
            }
            self.backing.set(p, None);
        }
        self.set_mapped(lin, len, false);
        Ok(())
    }
}

impl Drop for LinearSpace {
    fn drop(&mut self) {
        // SAFETY: the whole range is this value's reservation; nothing else may map there.
        unsafe { libc::munmap(RESERVE_START as *mut c_void, RESERVE_LEN) };
        RESERVED.store(false, Ordering::Release);
    }
}

/// Places an anonymous PROT_NONE, MAP_NORESERVE mapping at exactly `addr`.
fn reserve_fixed(addr: usize, len: usize, fixed: libc::c_int) -> io::Result<()> {
    // SAFETY: callers pass ranges inside [4096, 4 GiB), which belong to the reservation
    // (MAP_FIXED) or must be empty (MAP_FIXED_NOREPLACE); no Rust object lives there.
    let p = unsafe {
        libc::mmap(
            addr as *mut c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | fixed,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if p as usize != addr {
        // A kernel without MAP_FIXED_NOREPLACE treats it as a hint; give the stray back.
        // SAFETY: `p` is the mapping just created and referenced by nothing.
        unsafe { libc::munmap(p, len) };
        return Err(io::Error::from(io::ErrorKind::AddrInUse));
    }
    Ok(())
}

/// Changes the protection of `len` bytes at `lin`, which the caller checked lie in
/// the low 4 GiB reservation over mappings this process made there (`op` names the
/// call in errors).
fn mprotect_low(
    lin: GuestLinear,
    len: u32,
    prot: Prot,
    op: &'static str,
) -> Result<(), MemoryError> {
    // SAFETY: the caller checked the range as above; the monitor holds no references
    // into the low 4 GiB, so no Rust object loses access.
    let rc = unsafe {
        libc::mprotect(
            lin.raw() as usize as *mut c_void,
            len as usize,
            prot.to_host(),
        )
    };
    if rc != 0 {
        return Err(MemoryError::Host {
            op,
            lin,
            len,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Maps `len` bytes of `fd` at `offset` at linear `lin`, replacing what was there.
fn map_fixed_shared(
    lin: GuestLinear,
    len: u32,
    prot: Prot,
    fd: &OwnedFd,
    offset: libc::off_t,
) -> io::Result<()> {
    // SAFETY: callers validated the linear range to lie inside the reservation this
    // process owns (the guest's part or the monitor window); MAP_FIXED only replaces
    // reservation or earlier mappings made there, and no Rust object lives there.
    let p = unsafe {
        libc::mmap(
            lin.raw() as usize as *mut c_void,
            len as usize,
            prot.to_host(),
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_size_is_validated() {
        for bad in [
            0,
            4096,
            MIN_RAM_SIZE + 1,
            MIN_RAM_SIZE - 4096,
            MAX_RAM_SIZE - 1,
        ] {
            assert!(matches!(
                GuestRam::new(bad),
                Err(MemoryError::BadRamSize { size }) if size == bad
            ));
        }
        for big in [MAX_RAM_SIZE + 4096, 1 << 32] {
            let err = GuestRam::new(big).unwrap_err();
            assert!(matches!(err, MemoryError::RamTooLarge { size } if size == big));
            let msg = err.to_string();
            assert!(
                msg.contains("at most 0xc0000000 (3 GiB)") && msg.contains("MMIO hole"),
                "{msg}"
            );
        }
    }

    /// The permissions of the mapping holding `addr` in /proc/self/maps.
    fn perms_at(addr: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            let (a, b) = w.next()?.split_once('-')?;
            let range = usize::from_str_radix(a, 16).ok()?..usize::from_str_radix(b, 16).ok()?;
            range
                .contains(&addr)
                .then(|| w.next().unwrap_or("").to_string())
        })
    }

    /// The view at `base` of `size` bytes is shared and writable, with a PROT_NONE page on
    /// each side.
    fn assert_guarded(base: usize, size: usize) {
        assert_eq!(perms_at(base - 1).as_deref(), Some("---p"), "guard below");
        assert_eq!(perms_at(base - VIEW_GUARD).as_deref(), Some("---p"));
        assert_eq!(perms_at(base).as_deref(), Some("rw-s"), "the view");
        assert_eq!(perms_at(base + size - 1).as_deref(), Some("rw-s"));
        assert_eq!(
            perms_at(base + size).as_deref(),
            Some("---p"),
            "guard above"
        );
        assert_eq!(
            perms_at(base + size + VIEW_GUARD - 1).as_deref(),
            Some("---p")
        );
    }

    #[test]
    fn monitor_views_lie_between_guard_pages() {
        let ram = GuestRam::new(MIN_RAM_SIZE).unwrap();
        assert_guarded(
            usize::try_from(ram.host_base().raw()).unwrap(),
            usize::try_from(MIN_RAM_SIZE).unwrap(),
        );
        let window = WindowMemory::new(64 << 10).unwrap();
        assert_guarded(window.bytes().as_ptr() as usize, 64 << 10);
    }

    #[test]
    fn ram_accessors_round_trip_and_check_bounds() {
        let mut ram = GuestRam::new(MIN_RAM_SIZE).unwrap();
        assert!(ram.host_base().raw() >= LINEAR_TOP);
        ram.write_u32(GuestPhys(0x1001), 0xdead_beef).unwrap();
        assert_eq!(ram.read_u32(GuestPhys(0x1001)).unwrap(), 0xdead_beef);
        assert_eq!(ram.read_u16(GuestPhys(0x1003)).unwrap(), 0xdead);
        assert_eq!(ram.read_u8(GuestPhys(0x1001)).unwrap(), 0xef);
        ram.write_u16(GuestPhys(0xffffe), 0x1234).unwrap();
        assert_eq!(ram.as_mut_slice()[0xfffff], 0x12);
        let end = GuestPhys((1 << 20) - 2);
        assert!(matches!(
            ram.read_u32(end),
            Err(MemoryError::OutOfBounds { addr, len: 4 }) if addr == end
        ));
        assert!(ram.write(GuestPhys(u32::MAX), &[1, 2]).is_err());
    }
}
