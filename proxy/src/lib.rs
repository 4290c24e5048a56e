//! The kernel proxy: serves guest OS-service entry points with services chosen by a
//! kernel policy.
//!
//! A policy file names, per service type, the service to use (and optionally the remote
//! service node that provides it), and binds guest entry points (by ELF symbol or
//! address) to operations with their calling convention and argument layout. When the
//! guest calls a bound entry point, [`KernelProxy::dispatch`] reads the arguments through
//! [`GuestAccess`], asks the security service, serves the call with the policy's service
//! (or the default table's when the policy names none or the named one cannot be
//! accessed), and returns the [`ProxyOutcome`] the engine applies to the vCPU.
//!
//! The policy file format is shown, with comments, in `policy.example.toml` beside this
//! crate's `Cargo.toml`; a test keeps that file valid.

mod binding;
mod dispatch;
pub mod engine;
mod guest;
mod nodes;
mod parse;
mod policy;
mod resolve;
mod ship;
mod symbols;

pub use binding::{
    Binding, BufferArg, Convention, Direction, EntryPoint, LenUnit, Operation, Returns, MAX_ARGS,
    MAX_BUFFER_BYTES, NO_DEADLINE,
};
pub use dispatch::{ArgError, CallStatus, DispatchFault, ProxyOutcome};
pub use guest::{AccessError, GuestAccess, Reg};
pub use nodes::{GrpcNodes, NODE_TYPES};
pub use policy::{
    DefaultTable, NodeMode, Policy, PolicyError, PolicyHandle, ServiceSpec, DEFAULT_NODE_TIMEOUT,
};
pub use resolve::{
    FallbackReason, KernelProxy, NoService, NodeConnector, ServeError, ServedBy, Source, TypeStats,
};
pub use ship::{ship_patch, CodePatch, InstallError};
pub use symbols::{function_sizes, resolve_symbols, BindError, EntryPoints, SymbolMap};
