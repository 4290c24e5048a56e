//! The compute node's side: service-trait implementations that call a service node.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::from_failure;
use super::pb::service_node_client::ServiceNodeClient;
use super::pb::{self, ServiceFailure};
use crate::{Block, Service, ServiceError, ServiceType, Tty, SECTOR_SIZE};

/// A timeout in whole milliseconds, for messages (saturating: no one waits 584 million
/// years).
fn millis(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
}

/// A connection to one service node. Calls block the calling thread (a vCPU thread)
/// for at most the timeout.
#[derive(Debug)]
pub struct NodeClient {
    rt: tokio::runtime::Runtime,
    client: ServiceNodeClient<Channel>,
    addr: SocketAddr,
    timeout: Duration,
}

/// Code a node shipped for the guest to run in place of an entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedCode {
    /// Position-independent IA-32 code.
    pub code: Vec<u8>,
    /// Offset of the entry within `code`.
    pub entry_offset: u32,
    /// The calling convention it follows.
    pub convention: String,
    /// What it needs from the platform (e.g. a UART port).
    pub requires: Vec<String>,
    /// What it does.
    pub description: String,
}

impl NodeClient {
    /// Connects to the node at `addr`; each later call waits at most `timeout`.
    ///
    /// # Errors
    /// [`ServiceError::Unavailable`] or [`ServiceError::Timeout`] when the node cannot
    /// be reached.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Arc<Self>, ServiceError> {
        let name = addr.to_string();
        let unavailable = |reason: String| ServiceError::Unavailable {
            service: name.clone(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unavailable(format!("cannot start a client runtime: {e}")))?;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| unavailable(e.to_string()))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = rt
            // The timer must be made inside the runtime it runs on.
            .block_on(async { tokio::time::timeout(timeout, endpoint.connect()).await })
            .map_err(|_| ServiceError::Timeout {
                service: name.clone(),
                timeout_ms: millis(timeout),
            })?
            .map_err(|e| unavailable(format!("cannot connect: {e}")))?;
        Ok(Arc::new(NodeClient {
            rt,
            client: ServiceNodeClient::new(channel),
            addr,
            timeout,
        }))
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs one request with the timeout; transport failures and timeouts become
    /// "cannot be accessed" errors of `service`.
    fn call<T, F, Fut>(&self, service: &str, f: F) -> Result<T, ServiceError>
    where
        F: FnOnce(ServiceNodeClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let request = f(self.client.clone());
        let timeout = self.timeout;
        match self
            .rt
            .block_on(async move { tokio::time::timeout(timeout, request).await })
        {
            Err(_) => Err(ServiceError::Timeout {
                service: service.to_owned(),
                timeout_ms: millis(self.timeout),
            }),
            Ok(Err(status)) => Err(ServiceError::Unavailable {
                service: service.to_owned(),
                reason: format!("node {}: {}", self.addr, status.message()),
            }),
            Ok(Ok(reply)) => Ok(reply.into_inner()),
        }
    }

    fn check(service: &str, failure: Option<ServiceFailure>) -> Result<(), ServiceError> {
        failure.map_or(Ok(()), |f| Err(from_failure(service, f)))
    }

    /// Asks whether the node provides service `id` of `ty` and can serve it now.
    ///
    /// # Errors
    /// The node's answer, or why it could not be asked.
    pub fn probe(&self, ty: ServiceType, id: &str) -> Result<(), ServiceError> {
        let req = pb::ProbeRequest {
            service_type: ty.name().to_owned(),
            service_id: id.to_owned(),
        };
        let reply = self.call(id, |mut c| async move { c.probe(req).await })?;
        Self::check(id, reply.failure)
    }

    /// Ship mode: the node's implementation of `op` for `convention`.
    ///
    /// # Errors
    /// When the node has none or cannot be asked.
    pub fn ship(&self, op: &str, convention: &str) -> Result<ShippedCode, ServiceError> {
        let req = pb::ShipRequest {
            op: op.to_owned(),
            convention: convention.to_owned(),
        };
        let r = self.call(op, |mut c| async move { c.ship(req).await })?;
        Self::check(op, r.failure)?;
        if r.arch != "ia32" || r.entry_offset as usize >= r.code.len() {
            return Err(ServiceError::Unavailable {
                service: op.to_owned(),
                reason: format!(
                    "node shipped unusable code: arch {:?}, entry {} of {} bytes",
                    r.arch,
                    r.entry_offset,
                    r.code.len()
                ),
            });
        }
        Ok(ShippedCode {
            code: r.code,
            entry_offset: r.entry_offset,
            convention: r.convention,
            requires: r.requires,
            description: r.description,
        })
    }
}

/// A block service on a service node.
#[derive(Debug)]
pub struct RemoteBlock {
    node: Arc<NodeClient>,
    id: String,
    capacity: u64,
}

impl RemoteBlock {
    /// The node's block service `id`; its capacity is read once, now.
    ///
    /// # Errors
    /// When the node cannot be reached or has no such service.
    pub fn open(node: Arc<NodeClient>, id: &str) -> Result<Self, ServiceError> {
        let req = pb::BlockInfoRequest {
            service_id: id.to_owned(),
        };
        let r = node.call(id, |mut c| async move { c.block_info(req).await })?;
        NodeClient::check(id, r.failure)?;
        Ok(RemoteBlock {
            node,
            id: id.to_owned(),
            capacity: r.capacity,
        })
    }
}

impl Service for RemoteBlock {
    fn id(&self) -> &str {
        &self.id
    }

    fn probe(&self) -> Result<(), ServiceError> {
        self.node.probe(ServiceType::Block, &self.id)
    }
}

impl Block for RemoteBlock {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), ServiceError> {
        if !buf.len().is_multiple_of(SECTOR_SIZE) {
            return Err(ServiceError::BadLength {
                len: buf.len(),
                unit: SECTOR_SIZE,
            });
        }
        let count =
            u32::try_from(buf.len() / SECTOR_SIZE).map_err(|_| ServiceError::BadLength {
                len: buf.len(),
                unit: SECTOR_SIZE,
            })?;
        let req = pb::BlockReadRequest {
            service_id: self.id.clone(),
            sector,
            count,
        };
        let r = self
            .node
            .call(&self.id, |mut c| async move { c.block_read(req).await })?;
        NodeClient::check(&self.id, r.failure)?;
        // A node that answers with the wrong amount is broken, not the guest.
        if r.data.len() != buf.len() {
            return Err(ServiceError::Unavailable {
                service: self.id.clone(),
                reason: format!("node sent {} bytes for {}", r.data.len(), buf.len()),
            });
        }
        buf.copy_from_slice(&r.data);
        Ok(())
    }

    fn write(&self, sector: u64, data: &[u8]) -> Result<(), ServiceError> {
        let req = pb::BlockWriteRequest {
            service_id: self.id.clone(),
            sector,
            data: data.to_vec(),
        };
        let r = self
            .node
            .call(&self.id, |mut c| async move { c.block_write(req).await })?;
        NodeClient::check(&self.id, r.failure)
    }

    fn flush(&self) -> Result<(), ServiceError> {
        let req = pb::BlockFlushRequest {
            service_id: self.id.clone(),
        };
        let r = self
            .node
            .call(&self.id, |mut c| async move { c.block_flush(req).await })?;
        NodeClient::check(&self.id, r.failure)
    }
}

/// A console on a service node.
#[derive(Debug)]
pub struct RemoteTty {
    node: Arc<NodeClient>,
    id: String,
}

impl RemoteTty {
    /// The node's tty service `id`.
    ///
    /// # Errors
    /// When the node cannot be reached or has no such service.
    pub fn open(node: Arc<NodeClient>, id: &str) -> Result<Self, ServiceError> {
        node.probe(ServiceType::Tty, id)?;
        Ok(RemoteTty {
            node,
            id: id.to_owned(),
        })
    }
}

impl Service for RemoteTty {
    fn id(&self) -> &str {
        &self.id
    }

    fn probe(&self) -> Result<(), ServiceError> {
        self.node.probe(ServiceType::Tty, &self.id)
    }
}

impl Tty for RemoteTty {
    fn write(&self, bytes: &[u8]) -> Result<usize, ServiceError> {
        let req = pb::TtyWriteRequest {
            service_id: self.id.clone(),
            data: bytes.to_vec(),
        };
        let r = self
            .node
            .call(&self.id, |mut c| async move { c.tty_write(req).await })?;
        NodeClient::check(&self.id, r.failure)?;
        Ok(usize::try_from(r.written)
            .unwrap_or(usize::MAX)
            .min(bytes.len()))
    }

    fn read(&self, buf: &mut [u8]) -> Result<usize, ServiceError> {
        let req = pb::TtyReadRequest {
            service_id: self.id.clone(),
            max: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        };
        let r = self
            .node
            .call(&self.id, |mut c| async move { c.tty_read(req).await })?;
        NodeClient::check(&self.id, r.failure)?;
        let n = r.data.len().min(buf.len());
        buf[..n].copy_from_slice(&r.data[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::node::{implementation, ServiceNode};
    use crate::{BufferTty, MemoryBlock};

    const T: Duration = Duration::from_secs(5);

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[test]
    fn perform_mode_block_round_trip() {
        let disk = Arc::new(MemoryBlock::new(8).unwrap());
        let node = ServiceNode::new()
            .with_block("disk0", disk.clone())
            .spawn(loopback())
            .unwrap();
        let client = NodeClient::connect(node.addr(), T).unwrap();
        let remote = RemoteBlock::open(client, "disk0").unwrap();
        assert_eq!(remote.capacity(), 8);
        remote.probe().unwrap();
        remote.write(2, &[0x5A; 1024]).unwrap();
        remote.flush().unwrap();
        let mut local = [0u8; 1024];
        disk.read(2, &mut local).unwrap();
        assert_eq!(local, [0x5A; 1024], "the node's disk holds the write");
        let mut back = [0u8; 512];
        remote.read(3, &mut back).unwrap();
        assert_eq!(back, [0x5A; 512]);
        match remote.read(7, &mut [0u8; 1024]) {
            Err(ServiceError::OutOfRange {
                sector: 7,
                count: 2,
                capacity: 8,
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn perform_mode_tty_round_trip() {
        let console = Arc::new(BufferTty::new());
        let node = ServiceNode::new()
            .with_tty("console", console.clone())
            .spawn(loopback())
            .unwrap();
        let tty = RemoteTty::open(NodeClient::connect(node.addr(), T).unwrap(), "console").unwrap();
        assert_eq!(tty.write(b"hello node").unwrap(), 10);
        assert_eq!(console.output(), b"hello node");
        console.push_input(b"key");
        let mut buf = [0u8; 2];
        assert_eq!(tty.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf, b"ke");
    }

    #[test]
    fn unknown_service_on_a_node_is_unavailable() {
        let node = ServiceNode::new().spawn(loopback()).unwrap();
        let client = NodeClient::connect(node.addr(), T).unwrap();
        let err = RemoteBlock::open(client.clone(), "disk9").unwrap_err();
        assert!(err.is_inaccessible(), "{err}");
        assert!(RemoteTty::open(client, "console")
            .unwrap_err()
            .is_inaccessible());
    }

    #[test]
    fn a_node_that_stops_becomes_inaccessible() {
        let node = ServiceNode::new()
            .with_tty("console", Arc::new(BufferTty::new()))
            .spawn(loopback())
            .unwrap();
        let addr = node.addr();
        let tty = RemoteTty::open(
            NodeClient::connect(addr, Duration::from_millis(500)).unwrap(),
            "console",
        )
        .unwrap();
        node.shutdown();
        let err = tty.write(b"x").unwrap_err();
        assert!(err.is_inaccessible(), "{err}");
        assert!(tty.probe().unwrap_err().is_inaccessible());
        let err = NodeClient::connect(addr, Duration::from_millis(500)).unwrap_err();
        assert!(err.is_inaccessible(), "{err}");
    }

    #[test]
    fn a_node_that_never_answers_times_out() {
        // Accepts TCP connections (the kernel's backlog does) but never speaks gRPC.
        let silent = std::net::TcpListener::bind(loopback()).unwrap();
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let result = NodeClient::connect(silent.local_addr().unwrap(), timeout)
            .and_then(|c| c.probe(ServiceType::Tty, "console"));
        let err = result.unwrap_err();
        assert!(err.is_inaccessible(), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn ship_mode_sends_the_node_implementation() {
        let node = ServiceNode::new().spawn(loopback()).unwrap();
        let client = NodeClient::connect(node.addr(), T).unwrap();
        let shipped = client.ship("tty.write", "regparm3").unwrap();
        let expected = implementation("tty.write", "regparm3").unwrap();
        assert_eq!(shipped.code, expected.code);
        assert_eq!(shipped.entry_offset, 0);
        assert_eq!(shipped.convention, "regparm3");
        assert!(
            shipped.requires[0].contains("0x3f8"),
            "{:?}",
            shipped.requires
        );
        assert!(client.ship("block.read", "cdecl").is_err());
    }
}
