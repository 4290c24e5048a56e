//! The service node: serves local services to compute nodes over gRPC.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::pb::service_node_server::{ServiceNode as NodeRpc, ServiceNodeServer};
use super::pb::{self, ServiceFailure};
use super::{ship, to_failure};
use crate::{Block, ServiceError, ServiceType, Tty, SECTOR_SIZE};

/// Most bytes one request may move: bounds what a peer can make the node allocate.
pub const MAX_TRANSFER: usize = 4 << 20;

/// The services a node provides, by id.
#[derive(Default, Clone)]
pub struct ServiceNode {
    block: BTreeMap<String, Arc<dyn Block>>,
    tty: BTreeMap<String, Arc<dyn Tty>>,
}

impl std::fmt::Debug for ServiceNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceNode")
            .field("block", &self.block.keys().collect::<Vec<_>>())
            .field("tty", &self.tty.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn unknown(ty: ServiceType, id: &str) -> ServiceError {
    ServiceError::Unavailable {
        service: id.to_owned(),
        reason: format!("this node provides no {ty} service `{id}`"),
    }
}

/// A failure as the optional reply field.
fn fail(e: &ServiceError) -> Option<ServiceFailure> {
    Some(to_failure(e))
}

impl ServiceNode {
    /// A node providing nothing yet.
    pub fn new() -> Self {
        ServiceNode::default()
    }

    /// Provides `disk` as block service `id`.
    pub fn with_block(mut self, id: &str, disk: Arc<dyn Block>) -> Self {
        self.block.insert(id.to_owned(), disk);
        self
    }

    /// Provides `tty` as tty service `id`.
    pub fn with_tty(mut self, id: &str, tty: Arc<dyn Tty>) -> Self {
        self.tty.insert(id.to_owned(), tty);
        self
    }

    fn block(&self, id: &str) -> Result<&Arc<dyn Block>, ServiceError> {
        self.block
            .get(id)
            .ok_or_else(|| unknown(ServiceType::Block, id))
    }

    fn tty(&self, id: &str) -> Result<&Arc<dyn Tty>, ServiceError> {
        self.tty
            .get(id)
            .ok_or_else(|| unknown(ServiceType::Tty, id))
    }

    /// Listens on `addr` (port 0 picks a free port) and serves from a thread of its own
    /// until the returned [`RunningNode`] is dropped or shut down.
    ///
    /// # Errors
    /// When the address cannot be bound or the runtime cannot start.
    pub fn spawn(self, addr: SocketAddr) -> Result<RunningNode, ServiceError> {
        let io = |op, e| ServiceError::io(op, addr.to_string(), e);
        let std_listener = std::net::TcpListener::bind(addr).map_err(|e| io("bind", e))?;
        let local = std_listener.local_addr().map_err(|e| io("bind", e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| io("bind", e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| io("start runtime for", e))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let node = Arc::new(self);
        let thread = std::thread::Builder::new()
            .name(format!("service-node {local}"))
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            log::error!("service node {local}: {e}");
                            return;
                        }
                    };
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let serve = tonic::transport::Server::builder()
                        .serve_with_incoming(ServiceNodeServer::new(Rpc(node)), incoming);
                    // A graceful shutdown would wait for every client to hang up; a
                    // stopped node instead drops its runtime, which closes all
                    // connections, so clients see it gone at once.
                    tokio::select! {
                        served = serve => {
                            if let Err(e) = served {
                                log::error!("service node {local}: {e}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
            })
            .map_err(|e| io("spawn thread for", e))?;
        Ok(RunningNode {
            addr: local,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// A node serving in the background.
#[derive(Debug)]
pub struct RunningNode {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningNode {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process ends (or the server fails); what a node process does.
    pub fn wait(mut self) {
        // Keeping the sender alive keeps the node running.
        let _keep = self.stop.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("service node {}: server thread panicked", self.addr);
            }
        }
    }

    /// Stops serving, closes every connection and waits for the node's thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("service node {}: server thread panicked", self.addr);
            }
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct Rpc(Arc<ServiceNode>);

#[tonic::async_trait]
impl NodeRpc for Rpc {
    async fn probe(
        &self,
        req: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeReply>, Status> {
        let r = req.into_inner();
        let result = match r.service_type.parse::<ServiceType>() {
            Ok(ServiceType::Block) => self.0.block(&r.service_id).and_then(|b| b.probe()),
            Ok(ServiceType::Tty) => self.0.tty(&r.service_id).and_then(|t| t.probe()),
            Ok(other) => Err(unknown(other, &r.service_id)),
            Err(e) => Err(ServiceError::Unavailable {
                service: r.service_id.clone(),
                reason: e.to_string(),
            }),
        };
        Ok(Response::new(pb::ProbeReply {
            failure: result.err().as_ref().and_then(fail),
        }))
    }

    async fn block_info(
        &self,
        req: Request<pb::BlockInfoRequest>,
    ) -> Result<Response<pb::BlockInfoReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(match self.0.block(&r.service_id) {
            Ok(b) => pb::BlockInfoReply {
                capacity: b.capacity(),
                failure: None,
            },
            Err(e) => pb::BlockInfoReply {
                capacity: 0,
                failure: fail(&e),
            },
        }))
    }

    async fn block_read(
        &self,
        req: Request<pb::BlockReadRequest>,
    ) -> Result<Response<pb::BlockReadReply>, Status> {
        let r = req.into_inner();
        let bytes = r.count as usize * SECTOR_SIZE;
        let result = self.0.block(&r.service_id).and_then(|b| {
            if bytes > MAX_TRANSFER {
                return Err(ServiceError::BadLength {
                    len: bytes,
                    unit: SECTOR_SIZE,
                });
            }
            let mut data = vec![0; bytes];
            b.read(r.sector, &mut data).map(|()| data)
        });
        Ok(Response::new(match result {
            Ok(data) => pb::BlockReadReply {
                data,
                failure: None,
            },
            Err(e) => pb::BlockReadReply {
                data: Vec::new(),
                failure: fail(&e),
            },
        }))
    }

    async fn block_write(
        &self,
        req: Request<pb::BlockWriteRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let r = req.into_inner();
        let result = self
            .0
            .block(&r.service_id)
            .and_then(|b| b.write(r.sector, &r.data));
        Ok(Response::new(pb::StatusReply {
            failure: result.err().as_ref().and_then(fail),
        }))
    }

    async fn block_flush(
        &self,
        req: Request<pb::BlockFlushRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let r = req.into_inner();
        let result = self.0.block(&r.service_id).and_then(|b| b.flush());
        Ok(Response::new(pb::StatusReply {
            failure: result.err().as_ref().and_then(fail),
        }))
    }

    async fn tty_write(
        &self,
        req: Request<pb::TtyWriteRequest>,
    ) -> Result<Response<pb::TtyWriteReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            match self.0.tty(&r.service_id).and_then(|t| t.write(&r.data)) {
                Ok(n) => pb::TtyWriteReply {
                    written: n as u64,
                    failure: None,
                },
                Err(e) => pb::TtyWriteReply {
                    written: 0,
                    failure: fail(&e),
                },
            },
        ))
    }

    async fn tty_read(
        &self,
        req: Request<pb::TtyReadRequest>,
    ) -> Result<Response<pb::TtyReadReply>, Status> {
        let r = req.into_inner();
        let result = self.0.tty(&r.service_id).and_then(|t| {
            let mut buf = vec![0; (r.max as usize).min(MAX_TRANSFER)];
            let n = t.read(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        });
        Ok(Response::new(match result {
            Ok(data) => pb::TtyReadReply {
                data,
                failure: None,
            },
            Err(e) => pb::TtyReadReply {
                data: Vec::new(),
                failure: fail(&e),
            },
        }))
    }

    async fn ship(&self, req: Request<pb::ShipRequest>) -> Result<Response<pb::ShipReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            match ship::implementation(&r.op, &r.convention) {
                Ok(s) => pb::ShipReply {
                    code: s.code,
                    entry_offset: s.entry_offset,
                    arch: "ia32".into(),
                    convention: r.convention,
                    requires: s.requires,
                    description: s.description,
                    failure: None,
                },
                Err(e) => pb::ShipReply {
                    failure: fail(&ServiceError::Unavailable {
                        service: r.op.clone(),
                        reason: e.to_string(),
                    }),
                    ..Default::default()
                },
            },
        ))
    }
}
