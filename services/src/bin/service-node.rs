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

use services::node;

const USAGE: &str = "usage: service-node --listen IP:PORT [--block ID=SERVICE[,PARAM=VALUE...]]... [--tty ID=SERVICE[,PARAM=VALUE...]]...";

fn run(args: &[String]) -> Result<(), String> {
    let mut entries = Vec::new();
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
            "--block" | "--tty" => entries.push(format!("{}:{value}", &flag[2..])),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    let running = node::start(listen, &entries).map_err(|e| e.to_string())?;
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
