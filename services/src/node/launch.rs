//! Starting a service node: the one front end behind `vmm service-node` and the
//! `service-node` program. A node performs block and tty services for monitors and ships
//! implementations of operations to them; it listens on loopback only.
//!
//! [`start`] takes `TYPE:ID=SERVICE[,PARAM=VALUE...]` entries separated by `;` (or
//! given as several options): the type (`block` or `tty`), the id monitors name in their
//! policy, the local service that performs it and its parameters (integers,
//! `true`/`false`, else strings). Every node also ships the implementations it has
//! (`tty.write`) to monitors that ask.

use std::net::SocketAddr;

use super::{RunningNode, ServiceNode};
use crate::{ServiceHandle, ServiceRegistry, ServiceSpec, ServiceType};

/// Why a node could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A `--services` entry is malformed or names an unknown service.
    #[error("--services {entry:?}: {reason}")]
    Entry {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The listen address is not loopback: nodes serve this host only.
    #[error("--listen {0}: service nodes listen on loopback (127.0.0.1) only")]
    NotLoopback(SocketAddr),
    /// The server could not start.
    #[error("starting the service node: {0}")]
    Start(String),
}

/// Adds one `TYPE:ID=SERVICE[,PARAM=VALUE...]` entry to `node`.
fn add(
    node: ServiceNode,
    registry: &ServiceRegistry,
    entry: &str,
) -> Result<ServiceNode, NodeError> {
    let bad = |reason: String| NodeError::Entry {
        entry: entry.to_owned(),
        reason,
    };
    let (ty, rest) = entry
        .split_once(':')
        .ok_or_else(|| bad("expected TYPE:ID=SERVICE[,PARAM=VALUE...]".into()))?;
    let ty: ServiceType = ty.trim().parse().map_err(|e| bad(format!("{e}")))?;
    let spec = ServiceSpec::parse(rest).map_err(|e| bad(e.to_string()))?;
    let id = spec.id;
    let handle = registry
        .instantiate(ty, spec.service, &spec.params)
        .map_err(|e| bad(e.to_string()))?;
    match handle {
        ServiceHandle::Block(b) => Ok(node.with_block(id, b)),
        ServiceHandle::Tty(t) => Ok(node.with_tty(id, t)),
        other => Err(bad(format!(
            "nodes perform block and tty services, not {}",
            other.service_type()
        ))),
    }
}

/// Starts a node on `listen` serving `entries` (each one or more `;`-separated
/// entries).
///
/// # Errors
/// [`NodeError`] naming the entry at fault.
pub fn start(listen: SocketAddr, entries: &[String]) -> Result<RunningNode, NodeError> {
    if !listen.ip().is_loopback() {
        return Err(NodeError::NotLoopback(listen));
    }
    let registry = ServiceRegistry::new();
    let mut node = ServiceNode::new();
    for entry in entries.iter().flat_map(|e| e.split(';')) {
        let entry = entry.trim();
        if !entry.is_empty() {
            node = add(node, &registry, entry)?;
        }
    }
    node.spawn(listen)
        .map_err(|e| NodeError::Start(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked() {
        let reg = ServiceRegistry::new();
        assert!(add(ServiceNode::new(), &reg, "tty:console=buffer").is_ok());
        assert!(add(ServiceNode::new(), &reg, "block:d=memory,sectors=8").is_ok());
        for bad in [
            "tty",
            "tty:console",
            "ttyx:c=buffer",
            "tty:=buffer",
            "tty:c=nosuch",
            "block:d=memory,sectors",
            "clock:c=host",
        ] {
            assert!(add(ServiceNode::new(), &reg, bad).is_err(), "{bad}");
        }
        assert!(matches!(
            start("0.0.0.0:0".parse().unwrap(), &[]),
            Err(NodeError::NotLoopback(_))
        ));
    }
}
