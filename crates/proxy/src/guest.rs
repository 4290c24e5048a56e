//! What the proxy needs from the guest: its registers, its stack and its memory as the
//! guest's own page tables map it.

/// A 32-bit general register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
