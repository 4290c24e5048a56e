//! Service nodes: services provided by another process over gRPC.
//!
//! A [`ServiceNode`] serves `block` and `tty` services in *perform* mode (the node runs
//! the service and answers with the result) and ships implementations in *ship* mode
//! (the node sends position-independent IA-32 code that the compute node installs in
//! the guest in place of the bound entry point). [`RemoteBlock`] and [`RemoteTty`] are
//! the compute node's side: they implement the service traits, and every transport
//! failure or timeout is reported as [`ServiceError::Unavailable`] or
//! [`ServiceError::Timeout`], which the kernel proxy takes as "cannot be accessed".

mod client;
mod launch;
mod server;
mod ship;

pub use client::{NodeClient, RemoteBlock, RemoteTty, ShippedCode};
pub use launch::{start, NodeError};
pub use server::{RunningNode, ServiceNode};
pub use ship::{implementation, ShipError, Shipped, COM1_DATA};

use crate::ServiceError;

/// Code generated from `proto/node.proto`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    unreachable_pub
)]
pub mod pb {
    tonic::include_proto!("vmm.node.v1");
}

use pb::service_failure::Kind;

/// A service error as it travels to the compute node.
pub(crate) fn to_failure(e: &ServiceError) -> pb::ServiceFailure {
    let mut f = pb::ServiceFailure {
        message: e.to_string(),
        ..Default::default()
    };
    let kind = match e {
        ServiceError::Unavailable { .. } | ServiceError::Timeout { .. } => Kind::Unavailable,
        ServiceError::OutOfRange {
            sector,
            count,
            capacity,
        } => {
            f.sector = *sector;
            f.count = *count;
            f.capacity = *capacity;
            Kind::OutOfRange
        }
        ServiceError::BadLength { len, .. } => {
            f.len = *len as u64;
            Kind::BadLength
        }
        ServiceError::ReadOnly { .. } => Kind::ReadOnly,
        ServiceError::Io { .. } => Kind::Io,
        ServiceError::Denied { .. } => Kind::Denied,
    };
    f.set_kind(kind);
    f
}

/// A failure reported by a node, as the service error it stands for. The node is not
/// trusted to be consistent: an unknown kind is reported as unavailable.
pub(crate) fn from_failure(service: &str, f: pb::ServiceFailure) -> ServiceError {
    let remote = |msg: &str| format!("node: {msg}");
    match Kind::try_from(f.kind).unwrap_or(Kind::Unspecified) {
        Kind::OutOfRange => ServiceError::OutOfRange {
            sector: f.sector,
            count: f.count,
            capacity: f.capacity,
        },
        Kind::BadLength => ServiceError::BadLength {
            len: usize::try_from(f.len).unwrap_or(usize::MAX),
            unit: crate::SECTOR_SIZE,
        },
        Kind::ReadOnly => ServiceError::ReadOnly {
            service: service.to_owned(),
        },
        Kind::Io => ServiceError::Io {
            op: "remote",
            what: service.to_owned(),
            source: std::io::Error::other(remote(&f.message)),
        },
        Kind::Denied => ServiceError::Denied {
            op: service.to_owned(),
            reason: remote(&f.message),
        },
        Kind::Unavailable | Kind::Unspecified => ServiceError::Unavailable {
            service: service.to_owned(),
            reason: remote(&f.message),
        },
    }
}
