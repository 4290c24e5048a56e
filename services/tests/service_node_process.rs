//! The `service-node` binary as a separate process, reached over loopback.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use services::node::{NodeClient, RemoteBlock, RemoteTty};
use services::{Block, Tty};

/// Kills the node process however the test ends.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> (Node, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_service-node"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let node = Node(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (node, addr)
}

#[test]
fn node_process_performs_block_and_tty_services() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0x11u8; 4 * 512]).unwrap();
    let log = dir.path().join("console.log");
    let (_node, addr) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--block",
        &format!("disk0=cow,base={}", image.display()),
        "--tty",
        &format!("console=logfile,path={}", log.display()),
    ]);
    let client = NodeClient::connect(addr, Duration::from_secs(5)).unwrap();
    let disk = RemoteBlock::open(client.clone(), "disk0").unwrap();
    assert_eq!(disk.capacity(), 4);
    disk.write(1, &[0x22; 512]).unwrap();
    let mut buf = [0u8; 1024];
    disk.read(0, &mut buf).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 0x11));
    assert!(buf[512..].iter().all(|&b| b == 0x22));
    assert_eq!(
        std::fs::read(&image).unwrap(),
        vec![0x11u8; 4 * 512],
        "the node's copy-on-write disk left its base image alone"
    );
    let tty = RemoteTty::open(client, "console").unwrap();
    tty.write(b"from the guest\n").unwrap();
    assert_eq!(std::fs::read(&log).unwrap(), b"from the guest\n");
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_service-node"))
        .args(["--listen", "127.0.0.1:0", "--block", "disk0=tape"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tape") && err.contains("cow, file, memory"),
        "{err}"
    );
}
