//! Reaching services on remote service nodes over gRPC.

use std::net::SocketAddr;
use std::sync::Arc;

use services::node::{NodeClient, RemoteBlock, RemoteTty, ShippedCode};
use services::{ServiceError, ServiceHandle, ServiceType};

use crate::binding::Binding;
use crate::policy::ServiceSpec;
use crate::resolve::NodeConnector;

/// Service types a node can perform.
pub const NODE_TYPES: [ServiceType; 2] = [ServiceType::Block, ServiceType::Tty];

/// Connects policy entries that name a node to that node's services through
/// [`services::node`] clients; each waits at most the entry's `timeout_ms`.
#[derive(Debug, Default, Clone, Copy)]
pub struct GrpcNodes;

impl GrpcNodes {
    /// Ship mode: asks `node` for an implementation of `binding`'s operation in its
    /// calling convention, to be installed with [`crate::ship_patch`].
    ///
    /// # Errors
    /// When the node cannot be reached within `timeout` or has no such implementation.
    pub fn ship(
        &self,
        node: SocketAddr,
        timeout: std::time::Duration,
        binding: &Binding,
    ) -> Result<ShippedCode, ServiceError> {
        NodeClient::connect(node, timeout)?.ship(binding.op.name(), binding.convention.name())
    }
}

impl NodeConnector for GrpcNodes {
    fn connect(
        &self,
        ty: ServiceType,
        spec: &ServiceSpec,
        node: SocketAddr,
    ) -> Result<ServiceHandle, ServiceError> {
        let client = NodeClient::connect(node, spec.timeout)?;
        match ty {
            ServiceType::Block => Ok(ServiceHandle::Block(Arc::new(RemoteBlock::open(
                client, &spec.id,
            )?))),
            ServiceType::Tty => Ok(ServiceHandle::Tty(Arc::new(RemoteTty::open(
                client, &spec.id,
            )?))),
            other => Err(ServiceError::Unavailable {
                service: spec.id.clone(),
                reason: format!("service nodes perform block and tty services, not {other}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use services::node::ServiceNode;
    use services::{Block, MemoryBlock, ServiceRegistry};

    use super::*;
    use crate::dispatch::CallStatus;
    use crate::guest::fake::FakeGuest;
    use crate::policy::{DefaultTable, Policy, PolicyHandle};
    use crate::resolve::{FallbackReason, KernelProxy, Source};

    #[test]
    fn remote_disk_serves_until_its_node_stops_then_the_default_does() {
        let remote_disk = Arc::new(MemoryBlock::new(8).unwrap());
        let node = ServiceNode::new()
            .with_block("disk0", remote_disk.clone())
            .spawn("127.0.0.1:0".parse().unwrap())
            .unwrap();
        let registry = Arc::new(ServiceRegistry::new());
        let src = format!(
            "[services.block]\nid = \"disk0\"\nnode = \"{}\"\ntimeout_ms = 2000\n\
             [[bindings]]\nsymbol = \"disk_write\"\nop = \"block.write\"\nsector_arg = 0\n\
             buffer = {{ ptr = 1, len = 2, max = 4096, unit = \"sectors\" }}\nerror_return = -5\n",
            node.addr()
        );
        let policy = Policy::from_toml(&src, "policy.toml", &registry).unwrap();
        let binding = policy.bindings[0].clone();
        let proxy = KernelProxy::new(PolicyHandle::new(policy), DefaultTable::builtin(), registry)
            .with_node_connector(Arc::new(GrpcNodes));

        let mut g = FakeGuest::default();
        g.stack(0x9000, &[0x1234, 5, 0x2000, 1]);
        g.map(0x2000, 512, false, false);
        g.poke(0x2000, &[0xC3; 512]);

        let out = proxy.dispatch(0, &binding, &mut g).unwrap();
        assert!(matches!(out.status, CallStatus::Done), "{:?}", out.status);
        assert_eq!(out.eax, 0);
        assert_eq!(out.served_by.unwrap().source, Source::Policy);
        let mut sector = [0u8; 512];
        remote_disk.read(5, &mut sector).unwrap();
        assert_eq!(sector, [0xC3; 512], "the write reached the node's disk");

        node.shutdown();
        let started = Instant::now();
        let out = proxy.dispatch(0, &binding, &mut g).unwrap();
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(out.eax, 0, "{:?}", out.status);
        let by = out.served_by.unwrap();
        assert_eq!(by.id, "memory");
        assert!(matches!(
            by.source,
            Source::Default(FallbackReason::Inaccessible { ref id, .. }) if id == "disk0"
        ));
        let stats = &proxy.stats()[&ServiceType::Block];
        assert_eq!(
            (stats.served_by_policy, stats.fell_back_inaccessible),
            (1, 1)
        );
    }

    #[test]
    fn shipped_console_code_becomes_an_entry_point_patch() {
        let node = ServiceNode::new()
            .spawn("127.0.0.1:0".parse().unwrap())
            .unwrap();
        let src = "[[bindings]]\nsymbol = \"early_console_write\"\nop = \"tty.write\"\n\
                   convention = \"regparm3\"\nbuffer = { ptr = 0, len = 1, max = 4096 }\n";
        let policy = Policy::from_toml(src, "p.toml", &ServiceRegistry::new()).unwrap();
        let binding = &policy.bindings[0];
        let code = GrpcNodes
            .ship(node.addr(), Duration::from_secs(5), binding)
            .unwrap();
        let patch = crate::ship_patch(binding, 0xc010_0000, 64, &code).unwrap();
        assert_eq!(patch.addr, 0xc010_0000);
        assert_eq!(patch.bytes.last(), Some(&0xC3), "ends in ret");

        let clock = "[[bindings]]\nsymbol = \"c\"\nop = \"clock.wall\"\n";
        let policy = Policy::from_toml(clock, "p.toml", &ServiceRegistry::new()).unwrap();
        assert!(GrpcNodes
            .ship(node.addr(), Duration::from_secs(5), &policy.bindings[0])
            .is_err());
    }

    #[test]
    fn nodes_do_not_provide_other_types() {
        let spec = ServiceSpec::local("host");
        let node = ServiceNode::new()
            .spawn("127.0.0.1:0".parse().unwrap())
            .unwrap();
        let err = GrpcNodes
            .connect(ServiceType::Clock, &spec, node.addr())
            .unwrap_err();
        assert!(err.is_inaccessible(), "{err}");
    }
}
