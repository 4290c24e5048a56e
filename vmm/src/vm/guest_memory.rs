//! The memory-and-paging part of a VM: guest RAM, the reserved linear space the guest
//! runs in, and the shadow paging state that decides what is mapped there.

use shadow_paging::{peek, resolve, Access, ShadowState};

use super::shadow_backend::{HostSpace, Paging, RamPhys};
use crate::addr::{GuestLinear, GuestPhys, PAGE_SIZE};
use crate::memory::{GuestRam, LinearSpace, MemoryError, Prot};

/// Guest RAM, the linear space and shadow paging.
#[derive(Debug)]
pub struct GuestMemory {
    /// Guest RAM (the memfd and the monitor's view).
    pub ram: GuestRam,
    /// The host mapping of the guest's linear space.
    pub space: LinearSpace,
    /// Shadow paging.
    pub paging: Paging,
}

impl GuestMemory {
    /// Reserves the linear space and maps RAM 1:1 without execute permission (paging is
    /// off at boot). Page 0 stays unmapped: guest accesses to it are emulated.
    ///
    /// # Errors
    /// [`MemoryError`] when the reservation or the mapping is refused.
    pub fn new(ram: GuestRam, exec_only: bool) -> Result<Self, MemoryError> {
        let mut mem = Self {
            ram,
            space: LinearSpace::reserve()?,
            paging: Paging::new(exec_only),
        };
        mem.map_identity()?;
        Ok(mem)
    }

    /// Runs `f` on the shadow state with the host mapper; a failed host call is a
    /// monitor error (the host address space no longer matches the shadow state).
    ///
    /// # Errors
    /// The first host call that failed.
    pub fn with_host<T>(
        &mut self,
        f: impl FnOnce(&mut ShadowState, &mut HostSpace<'_>, &RamPhys<'_>) -> T,
    ) -> Result<T, MemoryError> {
        let ram = &self.ram;
        let (out, err) = self
            .paging
            .with_host(ram, &mut self.space, |s, h| f(s, h, &RamPhys(ram)));
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Whether `p` is guest RAM.
    pub fn in_ram(&self, p: GuestPhys) -> bool {
        u64::from(p.raw()) < self.ram.size()
    }

    /// The guest-physical address of linear `lin` for an instruction fetch at user or
    /// supervisor level, without setting accessed bits (for decoding), or `lin` itself
    /// with paging off. `None` when it does not translate to RAM.
    pub fn code_phys(&self, lin: GuestLinear, user: bool) -> Option<GuestPhys> {
        if !self.paging.enabled() {
            return Some(GuestPhys(lin.raw()));
        }
        let ctx = self.paging.shadow.context();
        let mem = RamPhys(&self.ram);
        let t = peek(&mem, ctx, lin, Access::fetch(user))
            .or_else(|| peek(&mem, ctx, lin, Access::read(user)))?;
        let p = t.phys.below_4g()?;
        self.in_ram(p).then_some(p)
    }

    /// The guest-physical page code at `lin` comes from when the guest reaches it, even
    /// if it has not yet (accessed bit clear; nothing is written): the neighbours of a
    /// page being scanned, whose bytes an instruction straddling the boundary takes.
    pub fn code_neighbour_phys(&self, lin: GuestLinear, user: bool) -> Option<GuestPhys> {
        if !self.paging.enabled() {
            return Some(GuestPhys(lin.raw()));
        }
        let ctx = self.paging.shadow.context();
        let mem = RamPhys(&self.ram);
        let t = resolve(&mem, ctx, lin, Access::fetch(user))?;
        let p = t.phys.below_4g()?;
        self.in_ram(p).then_some(p)
    }

    /// The length of the 1:1 mapping of RAM above page 0.
    fn identity_len(&self) -> u32 {
        u32::try_from(self.ram.size() - u64::from(PAGE_SIZE)).unwrap_or(!(PAGE_SIZE - 1))
    }

    /// Maps RAM 1:1 (paging off), writable, not executable.
    ///
    /// # Errors
    /// [`MemoryError`] when the host refuses.
    pub fn map_identity(&mut self) -> Result<(), MemoryError> {
        let len = self.identity_len();
        self.space.map(
            GuestLinear(PAGE_SIZE),
            &self.ram,
            GuestPhys(PAGE_SIZE),
            len,
            Prot::RW,
        )
    }

    /// Takes the 1:1 mapping of RAM away (paging goes on: shadow mappings fill in on
    /// demand).
    ///
    /// # Errors
    /// [`MemoryError`] when the host refuses.
    pub fn unmap_identity(&mut self) -> Result<(), MemoryError> {
        let len = self.identity_len();
        self.space.unmap(GuestLinear(PAGE_SIZE), len)
    }
}
