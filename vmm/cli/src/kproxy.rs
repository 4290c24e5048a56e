//! The kernel proxy's commands and options: `vmm run --policy`, `vmm policy`,
//! `vmm service-node` (feature `kproxy`, on by default); and the control socket that
//! serves them, which every run can have (`vmm run --api-sock`, `vmm stop`).

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use proxy::engine::{admin, api, ProxyRuntime, SharedPolicy};
use vmm::vm::{SyscallNeeds, Vm};

use crate::{EXIT_INPUT_ERROR, EXIT_USAGE_ERROR};

/// `vmm run`'s kernel-proxy options.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Kernel policy (TOML): the services that serve each type and the guest entry
    /// points the kernel proxy takes over (see proxy/policy.example.toml).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Default service table (TOML `[services.*]` entries) replacing the built-in
    /// defaults for the types it names.
    #[arg(long, value_name = "FILE", requires = "policy")]
    pub defaults: Option<PathBuf>,
    /// Serve the control socket here: one JSON request per line (`{"op":"stop"}`, and
    /// with --policy `{"op":"show"}`, `{"op":"set","policy":"<toml>"}`,
    /// `{"op":"stats"}`); see `vmm stop` and `vmm policy`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    action: PolicyAction,
}

#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Print the policy in force.
    Show {
        /// The VM's control socket.
        #[arg(long, value_name = "PATH")]
        api_sock: PathBuf,
    },
    /// Validate FILE and put it in force from the next proxied call on.
    Set {
        /// The VM's control socket.
        #[arg(long, value_name = "PATH")]
        api_sock: PathBuf,
        /// The new policy (TOML, the format of `vmm run --policy`).
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The VM's control socket.
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServiceNodeArgs {
    /// Address to listen on (loopback only; port 0 picks one, printed at start).
    #[arg(long, value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// Services, `TYPE:ID=SERVICE[,PARAM=VALUE...]` separated by `;`, e.g.
    /// `block:disk0=file,path=disk.img;tty:console=logfile,path=console.log`.
    #[arg(long, value_name = "LIST", required = true)]
    services: Vec<String>,
}

pub fn policy_command(args: &PolicyArgs) -> ExitCode {
    let result = match &args.action {
        PolicyAction::Show { api_sock } => admin::show(api_sock).map(|text| print!("{text}")),
        PolicyAction::Set { api_sock, file } => match std::fs::read_to_string(file) {
            Ok(text) => admin::set(api_sock, &text, &file.display().to_string())
                .map(|generation| println!("policy generation {generation} in force")),
            Err(e) => {
                eprintln!("vmm: error: cannot read {}: {e}", file.display());
                return ExitCode::from(EXIT_USAGE_ERROR);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm: error: {e}");
            ExitCode::from(EXIT_INPUT_ERROR)
        }
    }
}

pub fn stop_command(args: &StopArgs) -> ExitCode {
    match admin::stop(&args.api_sock) {
        Ok(()) => {
            println!("stop requested");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmm: error: {e}");
            ExitCode::from(EXIT_INPUT_ERROR)
        }
    }
}

pub fn service_node_command(args: &ServiceNodeArgs) -> ExitCode {
    match services::node::start(args.listen, &args.services) {
        Ok(node) => {
            // Scripts and tests read the port from this line when they asked for 0.
            println!("listening on {}", node.addr());
            let _ = io::stdout().flush();
            node.wait();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmm: error: {e}");
            ExitCode::from(EXIT_USAGE_ERROR)
        }
    }
}

/// Sets up the kernel proxy of `vmm run` and its control socket: loads the policy and
/// attaches it to `vm` as its entry hook (with `--policy`), and serves the control socket
/// (with `--api-sock`, policy or not) when `serve` is set. `Ok(None)` with neither.
///
/// # Errors
/// What was wrong with the policy or the control socket, ready to print.
pub fn attach(
    vm: &mut Vm,
    args: &ProxyArgs,
    kernel: &[u8],
    serve: bool,
) -> Result<Option<Attached>, String> {
    let shared = match &args.policy {
        None => None,
        Some(policy) => {
            let runtime = ProxyRuntime::load(policy, args.defaults.as_deref(), kernel)
                .map_err(|e| format!("kernel policy: {e}"))?;
            let shared = Arc::clone(runtime.shared());
            vm.attach_entry_hook(Box::new(runtime))
                .map_err(|e| format!("kernel policy: {e}"))?;
            Some(shared)
        }
    };
    let api = match args.api_sock.as_ref().filter(|_| serve) {
        None => None,
        Some(path) => {
            let socket_error = |e: io::Error| format!("control socket {}: {e}", path.display());
            let listener = api::bind(path).map_err(socket_error)?;
            let control = api::Control {
                policy: shared.clone(),
                stop: vm.stop_handle(),
            };
            Some(api::spawn(listener, path.clone(), control).map_err(socket_error)?)
        }
    };
    if shared.is_none() && args.api_sock.is_none() {
        return Ok(None);
    }
    Ok(Some(Attached {
        shared,
        control_socket: args.api_sock.is_some(),
        _api: api,
    }))
}

/// The kernel proxy and the control socket attached to a running VM.
#[derive(Debug)]
pub struct Attached {
    /// The kernel policy, with `--policy`.
    shared: Option<Arc<SharedPolicy>>,
    /// Whether the run serves the control socket.
    control_socket: bool,
    /// The control socket's thread, when one serves.
    _api: Option<std::thread::JoinHandle<()>>,
}

impl Attached {
    /// What the proxy and the control socket need once the guest runs: the proxy's
    /// services (files opened at their first call), the control socket's clients, and
    /// gRPC when the policy or the default table names a service node, or a policy set
    /// through the control socket could.
    pub fn syscall_needs(&self) -> SyscallNeeds {
        SyscallNeeds {
            kernel_proxy: self.shared.is_some(),
            control_socket: self.control_socket,
            service_nodes: self.control_socket
                || self
                    .shared
                    .as_ref()
                    .is_some_and(|s| s.proxy.names_service_nodes()),
            ..SyscallNeeds::default()
        }
    }

    /// Prints what the proxy did, after the exit statistics (`--stats`); nothing without a
    /// kernel policy.
    pub fn print_stats(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let c = shared.counters();
        eprintln!("kernel proxy: {} calls, {} failed", c.calls, c.failed);
        for (service, n) in &c.served {
            eprintln!("  {n:>10}  {service}");
        }
    }

    /// Adds what the proxy did to the `--stats-json` object: its calls are exits too
    /// (one trap each), counted by the proxy. Nothing without a kernel policy.
    pub fn add_stats_json(&self, json: &mut serde_json::Value) {
        let Some(shared) = &self.shared else {
            return;
        };
        let c = shared.counters();
        json["kernel_proxy"] =
            serde_json::json!({ "calls": c.calls, "failed": c.failed, "served": c.served });
    }
}
