//! OS services that the kernel proxy can serve guest OS-service calls with.
//!
//! Each service type of the kernel policy ([`ServiceType`]) has one trait here and several
//! implementations a policy chooses between by a stable service id (`"terminal"`, `"cow"`,
//! `"virtual"`, ...). [`ServiceRegistry`] builds an implementation from a (type, id,
//! parameters) triple, which is what a policy entry names.
//!
//! Every service can be asked whether it can be reached ([`Service::probe`]); a service
//! that cannot is one the proxy replaces with the default service for its type.

mod block;
mod clock;
mod error;
mod idle;
mod kind;
pub mod node;
mod params;
mod registry;
mod security;
mod tty;

pub use block::{Block, CowBlock, CowOverlay, FileBlock, MemoryBlock, SECTOR_SIZE};
pub use clock::{Clock, HostClock, VirtualClock};
pub use error::ServiceError;
pub use idle::{FastForwardIdle, Idle, IdleWake, SleepIdle, SpinIdle};
pub use kind::{ServiceType, UnknownServiceType};
pub use params::{ParamTypeError, ParamValue, ServiceParams, ServiceSpec, SpecError};
pub use registry::{RegistryError, ServiceConstructor, ServiceHandle, ServiceRegistry};
pub use security::{AllowAll, AuditLog, AuditRecord, CallInfo, Decision, DenyList, Security};
pub use tty::{BufferTty, DiscardTty, LogFileTty, TerminalTty, Tty};

/// What every service offers, whatever its type.
pub trait Service: Send + Sync {
    /// The stable id a policy names this implementation by (`"cow"`, `"host"`, ...).
    fn id(&self) -> &str;

    /// Checks that the service can be accessed now.
    ///
    /// The kernel proxy probes the policy's service before using it; a failure makes it
    /// use the default service for the type instead.
    ///
    /// # Errors
    /// [`ServiceError::Unavailable`] or [`ServiceError::Io`] when the service cannot serve.
    fn probe(&self) -> Result<(), ServiceError> {
        Ok(())
    }
}
