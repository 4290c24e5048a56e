//! The service node's gRPC handlers and their argument checks: requests with any
//! service id, sector, count, length and operation, sent through a real tonic client to a
//! node serving in this process (started once).
//!
//! Input: a sequence of requests, each an operation byte, an id selector byte, then the
//! fields that operation takes (sector, count, data length and bytes...).
//!
//! Promises checked: every request gets a reply (a handler that panicked or a node that
//! went away fails the call); a read that succeeds returns exactly the bytes asked for;
//! a refused request says why in its failure; nothing grows without bound.

use crate::input::Input;
use services::node::pb::service_node_client::ServiceNodeClient;
use services::node::pb::{
    BlockFlushRequest, BlockInfoRequest, BlockReadRequest, BlockWriteRequest, ProbeRequest,
    ShipRequest, TtyReadRequest, TtyWriteRequest,
};
use services::node::{RunningNode, ServiceNode};
use services::{BufferTty, MemoryBlock, SECTOR_SIZE};
use std::sync::{Arc, Mutex, OnceLock};
use tonic::transport::{Channel, Endpoint};

/// Sectors of the node's disk.
const DISK_SECTORS: u64 = 64;

struct Fixture {
    rt: tokio::runtime::Runtime,
    client: ServiceNodeClient<Channel>,
    tty: Arc<BufferTty>,
    // Dropping it stops the node; it lives as long as the process.
    _node: RunningNode,
}

fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tty = Arc::new(BufferTty::new());
        let disk = MemoryBlock::new(DISK_SECTORS).expect("a small memory disk");
        let node = ServiceNode::new()
            .with_block("disk0", Arc::new(disk))
            .with_tty("console", tty.clone())
            .spawn(([127, 0, 0, 1], 0).into())
            .expect("a node on a free loopback port");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a client runtime");
        let endpoint =
            Endpoint::from_shared(format!("http://{}", node.addr())).expect("a node URI");
        let channel = rt
            .block_on(endpoint.connect())
            .expect("the node accepts a connection");
        Mutex::new(Fixture {
            rt,
            client: ServiceNodeClient::new(channel),
            tty,
            _node: node,
        })
    })
}

/// A service id: the ones the node has, near misses, or bytes from the input.
fn id(input: &mut Input<'_>) -> String {
    match input.u8() % 6 {
        0 => "disk0".into(),
        1 => "console".into(),
        2 => String::new(),
        3 => "disk0\0".into(),
        _ => {
            let n = usize::from(input.u8() % 32);
            String::from_utf8_lossy(input.bytes(n)).into_owned()
        }
    }
}

fn text(input: &mut Input<'_>) -> String {
    let n = usize::from(input.u8() % 32);
    String::from_utf8_lossy(input.bytes(n)).into_owned()
}

/// Runs one case.
pub fn run(data: &[u8]) {
    let mut guard = fixture().lock().unwrap_or_else(|e| e.into_inner());
    let f = &mut *guard;
    let mut input = Input::new(data);
    // A few requests per case keep a case quick.
    for _ in 0..8 {
        if input.is_empty() {
            break;
        }
        let mut c = f.client.clone();
        let op = input.u8() % 8;
        let service_id = id(&mut input);
        match op {
            0 => {
                let service_type = match input.u8() % 4 {
                    0 => "block".to_owned(),
                    1 => "tty".to_owned(),
                    2 => "clock".to_owned(),
                    _ => text(&mut input),
                };
                let req = ProbeRequest {
                    service_type,
                    service_id,
                };
                f.rt.block_on(c.probe(req)).expect("probe answered");
            }
            1 => {
                let r =
                    f.rt.block_on(c.block_info(BlockInfoRequest { service_id }))
                        .expect("block_info answered")
                        .into_inner();
                assert!(r.failure.is_some() || r.capacity == DISK_SECTORS);
            }
            2 => {
                let sector = input.u64() >> (input.u8() % 64);
                let count = input.u32() >> (input.u8() % 32);
                let req = BlockReadRequest {
                    service_id,
                    sector,
                    count,
                };
                let r =
                    f.rt.block_on(c.block_read(req))
                        .expect("block_read answered")
                        .into_inner();
                match r.failure {
                    None => assert_eq!(r.data.len() as u64, u64::from(count) * SECTOR_SIZE as u64),
                    Some(fail) => {
                        assert!(r.data.is_empty());
                        assert!(!fail.message.is_empty());
                    }
                }
            }
            3 => {
                let sector = input.u64() >> (input.u8() % 64);
                let len = usize::from(input.u16() % 4096);
                let mut data = input.bytes(len).to_vec();
                data.resize(len, 0);
                let req = BlockWriteRequest {
                    service_id,
                    sector,
                    data,
                };
                f.rt.block_on(c.block_write(req))
                    .expect("block_write answered");
            }
            4 => {
                f.rt.block_on(c.block_flush(BlockFlushRequest { service_id }))
                    .expect("block_flush answered");
            }
            5 => {
                let len = usize::from(input.u16() % 4096);
                let data = input.bytes(len).to_vec();
                let r =
                    f.rt.block_on(c.tty_write(TtyWriteRequest {
                        service_id,
                        data: data.clone(),
                    }))
                    .expect("tty_write answered")
                    .into_inner();
                assert!(r.written <= data.len() as u64);
                f.tty.take_output();
            }
            6 => {
                let queued = usize::from(input.u8() % 16);
                f.tty.push_input(input.bytes(queued));
                let max = input.u32() >> (input.u8() % 32);
                let r =
                    f.rt.block_on(c.tty_read(TtyReadRequest { service_id, max }))
                        .expect("tty_read answered")
                        .into_inner();
                assert!(r.data.len() as u64 <= u64::from(max));
            }
            _ => {
                let op = match input.u8() % 3 {
                    0 => "tty.write".to_owned(),
                    1 => "block.read".to_owned(),
                    _ => text(&mut input),
                };
                let convention = match input.u8() % 3 {
                    0 => "cdecl".to_owned(),
                    1 => "regparm3".to_owned(),
                    _ => text(&mut input),
                };
                let r =
                    f.rt.block_on(c.ship(ShipRequest { op, convention }))
                        .expect("ship answered")
                        .into_inner();
                if r.failure.is_none() {
                    assert!((r.entry_offset as usize) < r.code.len().max(1));
                }
            }
        }
    }
    // Drain what the tty kept, so a long run does not grow it.
    f.tty.take_output();
}
