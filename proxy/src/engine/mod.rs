//! The kernel proxy in the engine (ARCHITECTURE.md §8): loading the kernel policy,
//! pinning the trap on every bound guest entry point before the guest runs, serving a
//! call to one when its trap fires, and the administration interface that replaces the
//! policy while the VM runs.
//!
//! ```text
//! vmm run --kernel k.elf --policy policy.toml [--defaults defaults.toml] [--api-sock vm.sock]
//! vmm policy show --api-sock vm.sock
//! vmm policy set --api-sock vm.sock new-policy.toml
//! vmm service-node --listen 127.0.0.1:7000 --services "block:disk0=file,path=disk.img;tty:console=logfile,path=c.log"
//! ```
//!
//! The engine's part is three calls: [`ProxyRuntime::pin`] when the runtime is attached,
//! [`ProxyRuntime::on_trap`] at the top of the INT3 exit path (before the rewriter's
//! patch table is asked), and [`ProxyRuntime::sync`] there too, so a policy replaced
//! through the control socket binds and unbinds entry points at the next trap.
//!
//! Choices worth knowing:
//! - Guest arguments are read through the engine's [`GuestBus`] with the caller's
//!   privilege, so buffers follow the guest's own translation; lengths are bounded by
//!   the binding (`max`) before any byte is read, and nothing is written to the guest
//!   unless all of it can be.
//! - Ship mode writes the node's code over the function before the guest runs; from
//!   then on it is guest code like any other, with the guest's own (lack of) argument
//!   checks, and no exit at all.
//! - A node that stops makes the proxy fall back to the default table. For a disk,
//!   "nothing acknowledged is lost" holds when the default serves the same image file
//!   as the node (`--defaults` naming it): every write the node acknowledged is in that
//!   file. The proxy does not mirror writes itself.

pub mod admin;
pub mod api;
mod vcpu_access;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{
    BindError, CallStatus, CodePatch, DefaultTable, EntryPoints, GrpcNodes, KernelProxy, NodeMode,
    Policy, PolicyError, PolicyHandle, ProxyOutcome, Source, SymbolMap,
};
use rewriter::{CodeMemoryMut, PatchTable};
use services::ServiceRegistry;

use vmm::addr::GuestLinear;
use vmm::loader::elf::{ElfError, ElfFile};
use vmm::memory::GuestRam;
use vmm::vcpu::state::gpr;
use vmm::vcpu::{Fault, GuestBus, VcpuState};
use vmm::vm::code::RamCode;
use vmm::vm::{EntryHook, HookError};
use vmm::x86::Exception;

pub use vcpu_access::VcpuGuest;

/// Why the kernel proxy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProxySetupError {
    /// The policy (or default-table) file is unreadable or invalid; the message names
    /// the file, line and field.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The guest kernel's symbol table cannot be read.
    #[error("reading the guest kernel's ELF symbols: {0}")]
    Symbols(#[from] ElfError),
    /// A binding names a symbol the kernel lacks, or two bind one address.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// An entry point has no guest memory behind it.
    #[error("binding entry point {addr:#010x}: {reason}")]
    Pin {
        /// The entry point.
        addr: u32,
        /// What the patch table said.
        reason: String,
    },
}

/// What the kernel proxy did, for `--stats` and the control socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyCounters {
    /// Calls to bound entry points (each one exit).
    pub calls: u64,
    /// Calls that returned the binding's error value.
    pub failed: u64,
    /// Calls served, by `type:id` of the service and where it was chosen from.
    pub served: BTreeMap<String, u64>,
}

/// The policy text in force, beside the proxy that serves it: what the control socket
/// shows and replaces.
#[derive(Debug)]
pub struct SharedPolicy {
    /// The proxy.
    pub proxy: Arc<KernelProxy>,
    /// The guest kernel's symbols, to check a new policy's bindings against.
    pub symbols: Arc<SymbolMap>,
    /// The TOML text of the policy in force.
    text: Mutex<String>,
    /// Counters, updated by the vCPU thread.
    counters: Mutex<ProxyCounters>,
}

impl SharedPolicy {
    /// The TOML text of the policy in force.
    pub fn text(&self) -> String {
        self.text.lock().clone()
    }

    /// The counters so far.
    pub fn counters(&self) -> ProxyCounters {
        self.counters.lock().clone()
    }

    /// Parses `text` as a policy, checks that its bindings resolve against the guest
    /// kernel, and puts it in force for the next proxied call. Returns the new
    /// generation.
    ///
    /// # Errors
    /// The policy's own error (line and field) or the binding error; the policy in force
    /// is then unchanged.
    pub fn replace(&self, text: &str, origin: &str) -> Result<u64, ProxySetupError> {
        let policy = Policy::from_toml(text, origin, self.proxy.registry())?;
        policy.entry_points(&self.symbols)?;
        let mut current = self.text.lock();
        self.proxy.policy().replace(policy);
        *current = text.to_owned();
        Ok(self.proxy.policy().generation())
    }
}

/// The kernel proxy as the vCPU thread runs it.
#[derive(Debug)]
pub struct ProxyRuntime {
    shared: Arc<SharedPolicy>,
    /// Bound entry points of the policy generation `generation`, by guest address.
    entries: EntryPoints,
    /// Code service nodes shipped (ship mode), written over their entry points instead
    /// of a trap: the guest runs the service itself.
    shipped: Vec<CodePatch>,
    /// The kernel's loadable segments, `(linear start, linear end, physical start)`:
    /// where in guest RAM the code at an entry point's (linear) address was loaded.
    segments: Vec<(u32, u32, u32)>,
    generation: u64,
    trace: bool,
}

impl ProxyRuntime {
    /// Loads the policy at `policy_path` (and the default table at `defaults_path`, else
    /// the built-in one) for the guest kernel `kernel` (an ELF image), resolving every
    /// binding against its symbols. Entry points named by policy entries on service
    /// nodes are reached over gRPC.
    ///
    /// # Errors
    /// [`ProxySetupError`] naming the file, line and field at fault.
    pub fn load(
        policy_path: &Path,
        defaults_path: Option<&Path>,
        kernel: &[u8],
    ) -> Result<Self, ProxySetupError> {
        let registry = Arc::new(ServiceRegistry::new());
        let text = std::fs::read_to_string(policy_path).map_err(|source| PolicyError::Read {
            path: policy_path.to_owned(),
            source,
        })?;
        let policy = Policy::from_toml(&text, &policy_path.display().to_string(), &registry)?;
        let defaults = match defaults_path {
            Some(p) => DefaultTable::load(p, &registry)?,
            None => DefaultTable::builtin(),
        };
        let elf = ElfFile::parse(kernel)?;
        let symbols = Arc::new(crate::resolve_symbols(&elf)?);
        let entries = policy.entry_points(&symbols)?;
        let shipped = fetch_shipped(&policy, &entries, &elf)?;
        let segments = load_segments(&elf);
        let proxy = KernelProxy::new(PolicyHandle::new(policy), defaults, registry)
            .with_node_connector(Arc::new(GrpcNodes));
        let generation = proxy.policy().generation();
        Ok(Self {
            shared: Arc::new(SharedPolicy {
                proxy: Arc::new(proxy),
                symbols,
                text: Mutex::new(text),
                counters: Mutex::default(),
            }),
            entries,
            shipped,
            segments,
            generation,
            trace: std::env::var_os("VMM_TRACE").is_some_and(|v| v == "1"),
        })
    }

    /// The policy, proxy and counters, for the control socket.
    pub fn shared(&self) -> &Arc<SharedPolicy> {
        &self.shared
    }

    /// The bound entry points in force.
    pub fn entry_points(&self) -> &EntryPoints {
        &self.entries
    }

    /// Pins the trap on every bound entry point (paging is off at boot: the ELF's
    /// addresses are guest-physical).
    ///
    /// # Errors
    /// [`ProxySetupError::Pin`] for an entry point outside guest RAM.
    pub fn pin(&self, patches: &mut PatchTable, ram: &GuestRam) -> Result<(), ProxySetupError> {
        for patch in &self.shipped {
            let at = self.physical(patch.addr);
            if RamCode(ram).write(at, &patch.bytes) != patch.bytes.len() {
                return Err(ProxySetupError::Pin {
                    addr: patch.addr,
                    reason: "shipped code does not fit in guest RAM".into(),
                });
            }
        }
        for (addr, _) in self.entries.iter() {
            if self.shipped.iter().any(|p| p.addr == addr) {
                continue;
            }
            patches
                .pin_entry(&mut RamCode(ram), self.physical(addr))
                .map_err(|e| ProxySetupError::Pin {
                    addr,
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// The guest-physical address the kernel image put the code at linear `addr`
    /// (the patch table is keyed by guest-physical addresses): the loadable segment's
    /// physical address plus the offset, or `addr` itself outside every segment (an
    /// address binding into code the kernel loads later).
    pub fn physical(&self, addr: u32) -> u32 {
        self.segments
            .iter()
            .find(|&&(start, end, _)| (start..end).contains(&addr))
            .map_or(addr, |&(start, _, phys)| phys.wrapping_add(addr - start))
    }

    fn count(&self, outcome: &ProxyOutcome) {
        let mut c = self.shared.counters.lock();
        c.calls += 1;
        if !matches!(outcome.status, CallStatus::Done) {
            c.failed += 1;
        }
        if let Some(by) = &outcome.served_by {
            let from = match by.source {
                Source::Policy => "policy",
                Source::Default(_) => "default",
            };
            *c.served
                .entry(format!("{}:{} ({from})", by.ty, by.id))
                .or_default() += 1;
        }
    }
}

/// The kernel's loadable segments as `(linear start, linear end, physical start)`;
/// a segment that wraps past 4 GiB places nothing.
fn load_segments(elf: &ElfFile<'_>) -> Vec<(u32, u32, u32)> {
    elf.load_segments()
        .iter()
        .filter_map(|s| Some((s.vaddr, s.vaddr.checked_add(s.memsz)?, s.paddr)))
        .collect()
}

/// Asks the nodes of ship-mode policy entries for their code and sizes it to the
/// functions it replaces. A node that cannot ship leaves its entry point to the proxy
/// (which then performs the call through the policy, or the default), with a warning.
fn fetch_shipped(
    policy: &Policy,
    entries: &EntryPoints,
    kernel: &ElfFile<'_>,
) -> Result<Vec<CodePatch>, ProxySetupError> {
    let mut shipped = Vec::new();
    let mut sizes = None;
    for (addr, binding) in entries.iter() {
        let Some(spec) = policy.service(binding.op.service_type()) else {
            continue;
        };
        let (NodeMode::Ship, Some(node)) = (spec.mode, spec.node) else {
            continue;
        };
        let sizes = match &sizes {
            Some(s) => s,
            None => sizes.insert(crate::function_sizes(kernel)?),
        };
        let room = sizes.get(&addr).copied().unwrap_or(0);
        let patch = GrpcNodes
            .ship(node, spec.timeout, binding)
            .map_err(|e| e.to_string())
            .and_then(|code| {
                crate::ship_patch(binding, addr, room, &code).map_err(|e| e.to_string())
            });
        match patch {
            Ok(p) => shipped.push(p),
            Err(e) => eprintln!(
                "vmm: kernel proxy: node {node} cannot ship {} for {addr:#010x} ({e}); the proxy serves it",
                binding.op
            ),
        }
    }
    Ok(shipped)
}

/// Finishes a proxied call as the function's own `ret` would: the return value in EAX
/// (and EDX), the return address (and callee-popped arguments) off the stack, and on at
/// the caller.
pub fn apply(state: &mut VcpuState, outcome: &ProxyOutcome) {
    state.gpr[gpr::EAX] = outcome.eax;
    if let Some(edx) = outcome.edx {
        state.gpr[gpr::EDX] = edx;
    }
    state.gpr[gpr::ESP] = state.gpr[gpr::ESP].wrapping_add(outcome.esp_adjust);
    state.eip = outcome.return_to;
}

/// The engine consults the proxy through its entry-hook trait.
impl EntryHook for ProxyRuntime {
    fn pin(&mut self, patches: &mut PatchTable, ram: &GuestRam) -> Result<(), HookError> {
        ProxyRuntime::pin(self, patches, ram).map_err(Into::into)
    }

    /// Follows a policy replaced through the administration interface: entry points it
    /// no longer binds get their own code back, new ones get the trap.
    fn sync(&mut self, patches: &mut PatchTable, ram: &GuestRam) {
        let generation = self.shared.proxy.policy().generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let policy = self.shared.proxy.policy().current();
        // The control socket only puts in force policies whose bindings resolve.
        let Ok(entries) = policy.entry_points(&self.shared.symbols) else {
            return;
        };
        for (addr, _) in self.entries.iter() {
            if entries.get(addr).is_none() {
                patches.unpin_entry(&mut RamCode(ram), self.physical(addr));
            }
        }
        for (addr, _) in entries.iter() {
            if let Err(e) = patches.pin_entry(&mut RamCode(ram), self.physical(addr)) {
                eprintln!("vmm: kernel proxy: cannot bind {addr:#010x}: {e}");
            }
        }
        self.entries = entries;
    }

    /// Serves the call if `site`, where an INT3 fired, is a bound entry point: the
    /// guest's registers in `state` are set as the function's return leaves them.
    /// `None` when `site` is not bound (the trap is the rewriter's or the guest's own).
    ///
    /// # Errors
    /// The fault the guest's own `ret` would have met when its return address cannot be
    /// read (the engine delivers it).
    fn on_trap(
        &mut self,
        site: GuestLinear,
        state: &mut VcpuState,
        bus: &mut dyn GuestBus,
        ram_size: u64,
    ) -> Option<Result<(), Fault>> {
        let site = site.raw();
        let binding = Arc::clone(self.entries.get(site)?);
        let outcome = {
            let mut guest = VcpuGuest::new(state, bus, ram_size);
            self.shared.proxy.dispatch(site, &binding, &mut guest)
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(fault) => {
                if self.trace {
                    eprintln!("vmm: kernel proxy: {} at {site:#010x}: {fault}", binding.op);
                }
                return Some(Err(Fault::with_code(Exception::SS, 0)));
            }
        };
        self.count(&outcome);
        if self.trace {
            eprintln!(
                "vmm: kernel proxy: {} at {site:#010x} -> eax {:#x} ({:?}, {:?})",
                binding.op, outcome.eax, outcome.status, outcome.served_by
            );
        }
        apply(state, &outcome);
        Some(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::addr::GuestLinear;
    use vmm::vcpu::testbus::TestBus;

    const RET: u32 = 0x0010_1234;
    const ESP: u32 = 0x8000;
    const BUF: u32 = 0x4000;

    fn runtime(dir: &Path, services: &str, bindings: &str) -> ProxyRuntime {
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, format!("{services}\n{bindings}")).unwrap();
        let kernel = std::fs::read(guests::find("proxy").unwrap().path).unwrap();
        ProxyRuntime::load(&policy, None, &kernel).unwrap()
    }

    const CONSOLE: &str = "[[bindings]]\nsymbol = \"os_console_write\"\nop = \"tty.write\"\n\
        args = 2\nbuffer = { ptr = 0, len = 1, max = 64 }\nreturns = \"count\"\nerror_return = -1\n";

    /// The guest at the entry point of a cdecl call with `args`.
    fn at_call(bus: &mut TestBus, args: &[u32]) -> VcpuState {
        let mut state = VcpuState::flat_protected(0x10_0000, 0x08, 0x10);
        state.gpr[gpr::ESP] = ESP;
        let words: Vec<u8> = std::iter::once(RET)
            .chain(args.iter().copied())
            .flat_map(u32::to_le_bytes)
            .collect();
        bus.write_linear(GuestLinear(ESP), &words, false).unwrap();
        state
    }

    #[test]
    fn a_bound_call_returns_to_its_caller_with_the_services_result() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let mut rt = runtime(
            dir.path(),
            &format!(
                "[services.tty]\nid = \"logfile\"\nparams = {{ path = \"{}\" }}",
                log.display()
            ),
            CONSOLE,
        );
        let (entry, _) = rt.entry_points().iter().next().unwrap();
        let mut bus = TestBus::new();
        bus.write_linear(GuestLinear(BUF), b"hello", false).unwrap();
        let mut state = at_call(&mut bus, &[BUF, 5]);
        state.gpr[gpr::EBX] = 0xb0b0;

        assert!(
            rt.on_trap(GuestLinear(entry + 1), &mut state, &mut bus, 0x10_0000)
                .is_none(),
            "not bound"
        );
        assert_eq!(
            rt.on_trap(GuestLinear(entry), &mut state, &mut bus, 0x10_0000),
            Some(Ok(()))
        );
        assert_eq!(std::fs::read(&log).unwrap(), b"hello");
        assert_eq!(
            (
                state.gpr[gpr::EAX],
                state.eip,
                state.gpr[gpr::ESP],
                state.gpr[gpr::EBX]
            ),
            (5, RET, ESP + 4, 0xb0b0),
            "count in EAX, ret popped, callee-saved registers kept"
        );

        // Too long, outside RAM: the binding's error value, nothing written.
        for args in [[BUF, 65], [0xf000_0000, 4]] {
            let mut state = at_call(&mut bus, &args);
            assert_eq!(
                rt.on_trap(GuestLinear(entry), &mut state, &mut bus, 0x10_0000),
                Some(Ok(()))
            );
            assert_eq!((state.gpr[gpr::EAX], state.eip), (u32::MAX, RET));
        }
        assert_eq!(std::fs::read(&log).unwrap(), b"hello");
        assert_eq!(rt.shared().counters().calls, 3);
        assert_eq!(rt.shared().counters().failed, 2);

        // A return address the guest's own `ret` could not read: #SS, state untouched.
        let mut state = at_call(&mut bus, &[BUF, 5]);
        state.gpr[gpr::ESP] = 0x0fff_fff0;
        let before = state.clone();
        assert_eq!(
            rt.on_trap(GuestLinear(entry), &mut state, &mut bus, 0x10_0000),
            Some(Err(Fault::with_code(Exception::SS, 0)))
        );
        assert_eq!(state, before);
    }

    #[test]
    fn entry_points_are_pinned_where_the_kernel_was_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let mut rt = runtime(dir.path(), "", CONSOLE);
        let (entry, _) = rt.entry_points().iter().next().unwrap();
        // The proxy guest is linked where it is loaded.
        assert_eq!(rt.physical(entry), entry);
        // A kernel linked at 3 GiB and loaded at 1 MiB, as Linux is.
        rt.segments = vec![(0xc010_0000, 0xc020_0000, 0x0010_0000)];
        assert_eq!(rt.physical(0xc010_1234), 0x0010_1234);
        assert_eq!(
            rt.physical(0xc020_0000),
            0xc020_0000,
            "outside every segment"
        );
    }

    #[test]
    fn a_replaced_policy_moves_the_pins() {
        let dir = tempfile::tempdir().unwrap();
        let mut rt = runtime(dir.path(), "[services.tty]\nid = \"discard\"", CONSOLE);
        let mut ram = GuestRam::new(4 << 20).unwrap();
        let kernel = std::fs::read(guests::find("proxy").unwrap().path).unwrap();
        vmm::loader::multiboot::load_multiboot(ram.as_mut_slice(), &kernel, "").unwrap();
        let mut patches = PatchTable::new();
        rt.pin(&mut patches, &ram).unwrap();
        let console = rt.entry_points().iter().next().unwrap().0;
        assert!(patches.is_entry(console));

        let clock = "[[bindings]]\nsymbol = \"os_clock_monotonic\"\nop = \"clock.monotonic\"\n\
                     returns = \"value64\"\n";
        assert!(rt
            .shared()
            .replace(
                "[[bindings]]\nsymbol = \"nope\"\nop = \"clock.wall\"\n",
                "x"
            )
            .is_err());
        rt.sync(&mut patches, &ram);
        assert!(
            patches.is_entry(console),
            "a refused policy changes nothing"
        );
        rt.shared().replace(clock, "new.toml").unwrap();
        rt.sync(&mut patches, &ram);
        let clock_at = rt.entry_points().iter().next().unwrap().0;
        assert!(!patches.is_entry(console) && patches.is_entry(clock_at));
        let mut byte = [0u8; 1];
        ram.read(vmm::addr::GuestPhys(console), &mut byte).unwrap();
        assert_ne!(byte[0], rewriter::TRAP_BYTE, "the guest's own code is back");
    }
}
