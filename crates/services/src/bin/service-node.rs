//! `service-node`: a process that performs block and tty services for monitors on
//! other hosts (or this one), and ships implementations of operations to them.
//!
//! ```text
//! service-node --listen 127.0.0.1:7000 \
//!     --block disk0=cow,base=disk.img,overlay=disk.cow \
//!     --tty console=logfile,path=console.log
//! ```
//!
//! Each `--block`/`--tty` takes `ID=SERVICE[,PARAM=VALUE...]`: the id monitors name in
//! their policy, the local service that performs it and that service's parameters
//! (integers, `true`/`false`, else strings).

use std::net::SocketAddr;
use std::process::ExitCode;

use services::node::ServiceNode;
use services::{ServiceHandle, ServiceRegistry, ServiceSpec, ServiceType};

const USAGE: &str = "usage: service-node --listen IP:PORT [--block ID=SERVICE[,PARAM=VALUE...]]... [--tty ID=SERVICE[,PARAM=VALUE...]]...";

/// Builds one `ID=SERVICE[,PARAM=VALUE...]` service.
fn service(
    registry: &ServiceRegistry,
    ty: ServiceType,
    arg: &str,
) -> Result<(String, ServiceHandle), String> {
    let spec = ServiceSpec::parse(arg).map_err(|e| format!("--{ty} {arg:?}: {e}"))?;
    let handle = registry
        .instantiate(ty, spec.service, &spec.params)
        .map_err(|e| format!("--{ty} {arg:?}: {e}"))?;
    Ok((spec.id.to_owned(), handle))
}

fn run(args: &[String]) -> Result<(), String> {
    let registry = ServiceRegistry::new();
    let mut node = ServiceNode::new();
    let mut listen: Option<SocketAddr> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--listen" => {
                listen = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--listen {value:?}: expected IP:PORT"))?,
                );
            }
            "--block" => match service(&registry, ServiceType::Block, value)? {
                (id, ServiceHandle::Block(b)) => node = node.with_block(&id, b),
                (id, _) => return Err(format!("--block {id}: not a block service")),
            },
            "--tty" => match service(&registry, ServiceType::Tty, value)? {
                (id, ServiceHandle::Tty(t)) => node = node.with_tty(&id, t),
                (id, _) => return Err(format!("--tty {id}: not a tty service")),
            },
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    let running = node.spawn(listen).map_err(|e| e.to_string())?;
    // Monitors and scripts read the port from this line when asked for port 0.
    println!("listening on {}", running.addr());
    running.wait();
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("service-node: {e}");
            ExitCode::from(2)
        }
    }
}
