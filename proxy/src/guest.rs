//! What the proxy needs from the guest: its registers, its stack and its memory as the
//! guest's own page tables map it.

/// A 32-bit general register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reg {
    /// EAX.
    Eax,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
    /// EBX.
    Ebx,
    /// ESP.
    Esp,
    /// EBP.
    Ebp,
    /// ESI.
    Esi,
    /// EDI.
    Edi,
}

/// Why guest memory could not be accessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No guest mapping at the address.
    #[error("guest address {addr:#010x} is not mapped")]
    Unmapped {
        /// The first inaccessible address.
        addr: u32,
    },
    /// A supervisor-only page reached from a user-mode caller.
    #[error("guest address {addr:#010x} is supervisor-only and the caller runs in user mode")]
    Supervisor {
        /// The first inaccessible address.
        addr: u32,
    },
    /// A write to a read-only page.
    #[error("guest address {addr:#010x} is read-only")]
    ReadOnly {
        /// The first inaccessible address.
        addr: u32,
    },
    /// The range runs past the top of the 4 GiB linear space.
    #[error("guest range {addr:#010x}+{len:#x} runs past 4 GiB")]
    Wraps {
        /// Start of the range.
        addr: u32,
        /// Its length in bytes.
        len: u64,
    },
}

/// The guest as the proxy sees it at a bound entry point. The engine implements it
/// through the guest's page tables and the vCPU state; tests implement it over a map of
/// pages.
pub trait GuestAccess {
    /// A register's value at the call.
    fn reg(&self, reg: Reg) -> u32;

    /// Whether the call came from guest user mode (virtual CPL 3).
    fn user_caller(&self) -> bool;

    /// The 32-bit word at ESP + `esp_offset` on the guest stack.
    ///
    /// # Errors
    /// When the stack address is not readable by the guest.
    fn read_stack_u32(&mut self, esp_offset: u32) -> Result<u32, AccessError>;

    /// `len` bytes at guest linear `ptr`, checked as a `user_caller` access would be.
    ///
    /// # Errors
    /// When any byte is not readable by such a caller.
    fn read_buffer(
        &mut self,
        ptr: u32,
        len: u32,
        user_caller: bool,
    ) -> Result<Vec<u8>, AccessError>;

    /// Writes `data` at guest linear `ptr`, checked as a `user_caller` access would be;
    /// nothing is written unless all of it can be.
    ///
    /// # Errors
    /// When any byte is not writable by such a caller.
    fn write_buffer(&mut self, ptr: u32, data: &[u8], user_caller: bool)
        -> Result<(), AccessError>;
}

/// A guest made of a register file and a map of 4 KiB pages, each user or supervisor,
/// writable or not; what the dispatch tests call through.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::BTreeMap;

    use vmm::addr::PAGE_SIZE;

    use super::{AccessError, GuestAccess, Reg};

    #[derive(Debug, Clone)]
    pub struct Page {
        pub data: Vec<u8>,
        pub user: bool,
        pub writable: bool,
    }

    #[derive(Debug, Clone, Default)]
    pub struct FakeGuest {
        pub regs: BTreeMap<Reg, u32>,
        pub pages: BTreeMap<u32, Page>,
        pub user: bool,
    }

    impl FakeGuest {
        /// Maps `[addr, addr+len)` (page-rounded) zero-filled.
        pub fn map(&mut self, addr: u32, len: u32, user: bool, writable: bool) {
            let last = addr.checked_add(len.max(1) - 1).expect("map below 4 GiB");
            for p in addr / PAGE_SIZE..=last / PAGE_SIZE {
                self.pages.insert(
                    p,
                    Page {
                        data: vec![0; PAGE_SIZE as usize],
                        user,
                        writable,
                    },
                );
            }
        }

        fn check(&self, addr: u32, len: u32, user: bool, write: bool) -> Result<(), AccessError> {
            let end = u64::from(addr) + u64::from(len);
            if end > 1 << 32 {
                return Err(AccessError::Wraps {
                    addr,
                    len: u64::from(len),
                });
            }
            let mut a = u64::from(addr);
            while a < end {
                let at = u32::try_from(a).expect("below the 4 GiB checked above");
                let page = self
                    .pages
                    .get(&(at / PAGE_SIZE))
                    .ok_or(AccessError::Unmapped { addr: at })?;
                if user && !page.user {
                    return Err(AccessError::Supervisor { addr: at });
                }
                if write && !page.writable {
                    return Err(AccessError::ReadOnly { addr: at });
                }
                a = (a / u64::from(PAGE_SIZE) + 1) * u64::from(PAGE_SIZE);
            }
            Ok(())
        }

        pub fn poke(&mut self, addr: u32, data: &[u8]) {
            for (a, b) in (addr..).zip(data) {
                let page = self.pages.get_mut(&(a / PAGE_SIZE)).expect("poke unmapped");
                page.data[(a % PAGE_SIZE) as usize] = *b;
            }
        }

        pub fn peek(&self, addr: u32, len: u32) -> Vec<u8> {
            (0..len)
                .map(|i| {
                    let a = addr + i;
                    self.pages[&(a / PAGE_SIZE)].data[(a % PAGE_SIZE) as usize]
                })
                .collect()
        }

        /// Pushes words so that ESP points at the first.
        pub fn stack(&mut self, esp: u32, words: &[u32]) {
            let len = u32::try_from(4 * words.len()).expect("a short stack");
            self.map(esp, len, true, true);
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.poke(esp, &bytes);
            self.regs.insert(Reg::Esp, esp);
        }
    }

    impl GuestAccess for FakeGuest {
        fn reg(&self, reg: Reg) -> u32 {
            self.regs.get(&reg).copied().unwrap_or(0)
        }

        fn user_caller(&self) -> bool {
            self.user
        }

        fn read_stack_u32(&mut self, esp_offset: u32) -> Result<u32, AccessError> {
            let addr = self.reg(Reg::Esp).wrapping_add(esp_offset);
            let bytes = self.read_buffer(addr, 4, self.user)?;
            Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        }

        fn read_buffer(
            &mut self,
            ptr: u32,
            len: u32,
            user_caller: bool,
        ) -> Result<Vec<u8>, AccessError> {
            self.check(ptr, len, user_caller, false)?;
            Ok(self.peek(ptr, len))
        }

        fn write_buffer(
            &mut self,
            ptr: u32,
            data: &[u8],
            user_caller: bool,
        ) -> Result<(), AccessError> {
            let len = u32::try_from(data.len()).map_err(|_| AccessError::Wraps {
                addr: ptr,
                len: data.len() as u64,
            })?;
            self.check(ptr, len, user_caller, true)?;
            self.poke(ptr, data);
            Ok(())
        }
    }
}
