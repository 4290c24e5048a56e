//! The kernel policy and the default service table.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::Duration;

use services::{ParamValue, ServiceParams, ServiceRegistry, ServiceType};

use crate::binding::Binding;
use crate::parse;

/// Time allowed to a remote service node when the policy gives none.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(500);

/// How a service node provides a service (the two modes of the patent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum NodeMode {
    /// The node performs each call and answers.
    #[default]
    Perform,
    /// The node ships an implementation once; the compute node installs it over the
    /// bound entry point and the guest runs it itself.
    Ship,
}

impl NodeMode {
    /// The name a policy uses.
    pub fn name(self) -> &'static str {
        match self {
            NodeMode::Perform => "perform",
            NodeMode::Ship => "ship",
        }
    }
}

/// Which service serves a type: an id, optionally on a remote node, with parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceSpec {
    /// The service id (`"cow"`, `"terminal"`, ...).
    pub id: String,
    /// The service node that provides it; `None` for a local service.
    pub node: Option<SocketAddr>,
    /// How long to wait for the node.
    pub timeout: Duration,
    /// Whether the node performs the service or ships it (only with `node`).
    pub mode: NodeMode,
    /// The service's parameters.
    pub params: ServiceParams,
    /// Line of the entry in its file (0 when built in code).
    pub line: usize,
}

impl ServiceSpec {
    /// A local service without parameters.
    pub fn local(id: &str) -> Self {
        ServiceSpec {
            id: id.to_owned(),
            node: None,
            timeout: DEFAULT_NODE_TIMEOUT,
            mode: NodeMode::Perform,
            params: ServiceParams::new(),
            line: 0,
        }
    }

    /// Adds a parameter (builder style).
    pub fn with_param(mut self, name: &str, value: ParamValue) -> Self {
        self.params = self.params.with(name, value);
        self
    }

    /// Names a service node (builder style).
    pub fn on_node(mut self, node: SocketAddr, timeout: Duration) -> Self {
        self.node = Some(node);
        self.timeout = timeout;
        self
    }
}

/// A policy file that cannot be used, said in terms of the file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The host error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape (syntax, unknown or missing fields,
    /// values of the wrong type).
    #[error("{origin}:{line}:{column}: {}{message}", field_prefix(field))]
    Syntax {
        /// The file.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The field the line sets (`services.tty.id`), or "" when none.
        field: String,
        /// What the TOML reader said.
        message: String,
    },
    /// A field has a value the monitor cannot use.
    #[error("{origin}:{line}: field `{field}`: found {found}, expected {expected}")]
    Invalid {
        /// The file.
        origin: String,
        /// 1-based line.
        line: usize,
        /// The field, as a TOML path (`services.tty.id`, `bindings[2].op`).
        field: String,
        /// What the file has.
        found: String,
        /// What would have been accepted.
        expected: String,
    },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("field `{field}`: ")
    }
}

/// The kernel policy: the service for each type it names, and the guest entry points
/// the proxy takes over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The service the policy names for each type; a type not here is left to the
    /// default service table.
    pub services: BTreeMap<ServiceType, ServiceSpec>,
    /// Bound guest entry points.
    pub bindings: Vec<Binding>,
}

impl Policy {
    /// Parses a policy from TOML text; `origin` names it in errors.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the line and field at fault.
    pub fn from_toml(
        src: &str,
        origin: &str,
        registry: &ServiceRegistry,
    ) -> Result<Self, PolicyError> {
        parse::policy(src, origin, registry)
    }

    /// Reads and parses a policy file.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid policy.
    pub fn load(path: &Path, registry: &ServiceRegistry) -> Result<Self, PolicyError> {
        let src = read(path)?;
        Self::from_toml(&src, &path.display().to_string(), registry)
    }

    /// The service the policy names for `ty`.
    pub fn service(&self, ty: ServiceType) -> Option<&ServiceSpec> {
        self.services.get(&ty)
    }
}

/// The default service table: the service used for a type when the policy names none
/// or the named one cannot be accessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultTable {
    /// The default service for each type.
    pub services: BTreeMap<ServiceType, ServiceSpec>,
}

/// Sectors of the built-in default disk: an empty 1 MiB memory disk, so a guest whose
/// policy names no disk sees a small blank one rather than none.
const DEFAULT_DISK_SECTORS: i64 = 2048;

impl Default for DefaultTable {
    fn default() -> Self {
        DefaultTable::builtin()
    }
}

impl DefaultTable {
    /// The built-in defaults: `terminal` console, 1 MiB `memory` disk, `host` clock,
    /// `sleep` idle, `allow-all` security.
    pub fn builtin() -> Self {
        let services = [
            (ServiceType::Tty, ServiceSpec::local("terminal")),
            (
                ServiceType::Block,
                ServiceSpec::local("memory")
                    .with_param("sectors", ParamValue::Int(DEFAULT_DISK_SECTORS)),
            ),
            (ServiceType::Clock, ServiceSpec::local("host")),
            (ServiceType::Idle, ServiceSpec::local("sleep")),
            (ServiceType::Security, ServiceSpec::local("allow-all")),
        ]
        .into_iter()
        .collect();
        DefaultTable { services }
    }

    /// The built-in defaults overridden by the `[services.*]` entries of TOML text.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the line and field at fault.
    pub fn from_toml(
        src: &str,
        origin: &str,
        registry: &ServiceRegistry,
    ) -> Result<Self, PolicyError> {
        let mut table = DefaultTable::builtin();
        table
            .services
            .extend(parse::defaults(src, origin, registry)?);
        Ok(table)
    }

    /// Reads a default-table file (see [`DefaultTable::from_toml`]).
    ///
    /// # Errors
    /// When the file cannot be read or is not valid.
    pub fn load(path: &Path, registry: &ServiceRegistry) -> Result<Self, PolicyError> {
        let src = read(path)?;
        Self::from_toml(&src, &path.display().to_string(), registry)
    }

    /// The default service for `ty`.
    pub fn service(&self, ty: ServiceType) -> Option<&ServiceSpec> {
        self.services.get(&ty)
    }
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The policy in force, shared between the proxy and an administration interface.
/// Replacing it takes effect on the next proxied call; a call already running finishes
/// under the policy it started with.
#[derive(Debug, Clone, Default)]
pub struct PolicyHandle(Arc<PolicySlot>);

#[derive(Debug, Default)]
struct PolicySlot {
    policy: RwLock<Arc<Policy>>,
    /// Bumped on every replacement, so the engine can tell when bindings must be
    /// re-resolved and entry points re-patched.
    generation: AtomicU64,
}

impl PolicyHandle {
    /// A handle holding `policy`.
    pub fn new(policy: Policy) -> Self {
        PolicyHandle(Arc::new(PolicySlot {
            policy: RwLock::new(Arc::new(policy)),
            generation: AtomicU64::new(0),
        }))
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.0.policy.read())
    }

    /// Puts `policy` in force; returns the one it replaces.
    pub fn replace(&self, policy: Policy) -> Arc<Policy> {
        let mut slot = self.0.policy.write();
        let old = std::mem::replace(&mut *slot, Arc::new(policy));
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        old
    }

    /// Reads the policy file at `path` and puts it in force; an invalid file leaves the
    /// policy in force untouched. What an administration interface calls.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid policy.
    pub fn reload(&self, path: &Path, registry: &ServiceRegistry) -> Result<(), PolicyError> {
        let policy = Policy::load(path, registry)?;
        self.replace(policy);
        Ok(())
    }

    /// How many times the policy has been replaced.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }
}

impl Policy {
    /// Places the policy's bindings at guest addresses, resolving symbols in `symbols`.
    ///
    /// # Errors
    /// Unknown or ambiguous symbols, and two bindings on one address.
    pub fn entry_points(
        &self,
        symbols: &crate::SymbolMap,
    ) -> Result<crate::EntryPoints, crate::BindError> {
        crate::EntryPoints::resolve(&self.bindings, symbols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::{Convention, EntryPoint, LenUnit, Operation, Returns};

    fn parse(src: &str) -> Result<Policy, PolicyError> {
        Policy::from_toml(src, "test.toml", &ServiceRegistry::new())
    }

    /// (line, field, a word the expectation must contain)
    fn invalid(src: &str) -> (usize, String, String) {
        match parse(src) {
            Err(PolicyError::Invalid {
                line,
                field,
                expected,
                ..
            }) => (line, field, expected),
            other => panic!("expected an invalid-field error, got {other:?}"),
        }
    }

    #[test]
    fn ship_mode_only_for_a_tty_on_a_node() {
        let ok =
            parse("[services.tty]\nid = \"console\"\nnode = \"127.0.0.1:7000\"\nmode = \"ship\"\n")
                .unwrap();
        assert_eq!(ok.service(ServiceType::Tty).unwrap().mode, NodeMode::Ship);
        let perform = parse("[services.tty]\nid = \"c\"\nnode = \"127.0.0.1:7000\"\n").unwrap();
        assert_eq!(
            perform.service(ServiceType::Tty).unwrap().mode,
            NodeMode::Perform
        );
        let (line, field, expected) =
            invalid("[services.tty]\nid = \"terminal\"\nmode = \"ship\"\n");
        assert_eq!((line, field.as_str()), (3, "services.tty.mode"));
        assert!(expected.contains("node"), "{expected}");
        let (line, field, _) =
            invalid("[services.block]\nid = \"d\"\nnode = \"127.0.0.1:7000\"\nmode = \"ship\"\n");
        assert_eq!((line, field.as_str()), (4, "services.block.mode"));
        let (_, field, expected) =
            invalid("[services.tty]\nid = \"c\"\nnode = \"127.0.0.1:7000\"\nmode = \"mail\"\n");
        assert_eq!(field, "services.tty.mode");
        assert!(expected.contains("perform"), "{expected}");
    }

    #[test]
    fn example_policy_parses() {
        let p = parse(include_str!("../policy.example.toml")).unwrap();
        let tty = p.service(ServiceType::Tty).unwrap();
        assert_eq!(tty.id, "console");
        assert_eq!(tty.line, 8);
        assert_eq!(tty.node, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(tty.timeout, Duration::from_millis(200));
        assert!(p.service(ServiceType::Idle).is_none());
        assert_eq!(p.service(ServiceType::Block).unwrap().node, None);
        assert_eq!(p.bindings.len(), 3);
        let b = &p.bindings[0];
        assert_eq!(b.entry, EntryPoint::Symbol("early_console_write".into()));
        assert_eq!(
            (b.op, b.convention, b.args),
            (Operation::TtyWrite, Convention::Regparm3, 2)
        );
        assert_eq!(b.error_return, u32::MAX);
        let d = &p.bindings[1];
        assert_eq!(d.entry, EntryPoint::Address(0xc012_3450));
        assert_eq!(d.sector_arg, Some(0));
        assert_eq!(d.buffer.unwrap().unit, LenUnit::Sectors);
        assert_eq!(d.error_return, 5u32.wrapping_neg());
        assert_eq!(p.bindings[2].returns, Returns::Value64);
        assert_eq!(p.bindings[2].args, 0);
    }

    #[test]
    fn unknown_service_type_names_line_and_field() {
        let (line, field, expected) = invalid("\n[services.printer]\nid = \"x\"\n");
        assert_eq!((line, field.as_str()), (2, "services.printer"));
        assert!(expected.contains("tty"), "{expected}");
    }

    #[test]
    fn unknown_service_id_lists_the_ids_of_the_type() {
        let (line, field, expected) = invalid("[services.block]\n\nid = \"tape\"\n");
        assert_eq!((line, field.as_str()), (3, "services.block.id"));
        assert!(expected.contains("cow, file, memory"), "{expected}");
    }

    #[test]
    fn bad_node_address_is_reported() {
        let (line, field, _) = invalid("[services.tty]\nid = \"terminal\"\nnode = \"localhost\"\n");
        assert_eq!((line, field.as_str()), (3, "services.tty.node"));
    }

    #[test]
    fn nodes_are_only_for_types_nodes_perform() {
        let (line, field, expected) =
            invalid("[services.clock]\nid = \"host\"\n\nnode = \"127.0.0.1:7000\"\n");
        assert_eq!((line, field.as_str()), (4, "services.clock.node"));
        assert!(expected.contains("block or tty"), "{expected}");
        // A node's service ids are its own, not the local registry's.
        let p = parse("[services.block]\nid = \"disk7\"\nnode = \"10.0.0.2:7000\"\n").unwrap();
        assert_eq!(p.service(ServiceType::Block).unwrap().id, "disk7");
    }

    #[test]
    fn parameter_errors_name_the_parameter() {
        let (line, field, expected) =
            invalid("[services.block]\nid = \"memory\"\nparams = { sectors = \"lots\" }\n");
        assert_eq!((line, field.as_str()), (2, "services.block.params.sectors"));
        assert!(expected.contains("integer"), "{expected}");
        let (_, field, _) = invalid("[services.block]\nid = \"file\"\n");
        assert_eq!(field, "services.block.params.path");
        let (_, field, _) =
            invalid("[services.tty]\nid = \"buffer\"\nparams = { colour = true }\n");
        assert_eq!(field, "services.tty.params.colour");
        let (line, field, _) = invalid("[services.tty]\nid = \"terminal\"\nparams = { x = 1.5 }\n");
        assert_eq!((line, field.as_str()), (3, "services.tty.params.x"));
    }

    #[test]
    fn wrong_value_type_is_a_syntax_error_with_its_line() {
        match parse("[services.tty]\nid = 5\n") {
            Err(e @ PolicyError::Syntax { line: 2, .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("field `services.tty.id`"), "{msg}");
                assert!(msg.contains("expected a string"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        match parse("[services.tty]\nid = \"terminal\"\ncolour = 1\n") {
            Err(PolicyError::Syntax {
                line: 3,
                field,
                message,
                ..
            }) => {
                assert_eq!(field, "services.tty.colour");
                assert!(message.contains("unknown field"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match parse("[services.tty\n") {
            Err(PolicyError::Syntax { line: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn binding_errors_name_line_and_field() {
        let head = "[[bindings]]\n";
        let cases: &[(&str, &str, &str)] = &[
            ("op = \"tty.write\"\n", "bindings[0]", "symbol"),
            (
                "symbol = \"f\"\naddress = 1\nop = \"tty.write\"\n",
                "bindings[0].address",
                "exactly one",
            ),
            ("address = -1\nop = \"clock.wall\"\n", "bindings[0].address", "0xffffffff"),
            ("symbol = \"f\"\nop = \"tty.print\"\n", "bindings[0].op", "tty.write"),
            ("symbol = \"f\"\nop = \"tty.write\"\n", "bindings[0].buffer", "ptr"),
            (
                "symbol = \"f\"\nop = \"tty.write\"\nargs = 2\nbuffer = { ptr = 0, len = 2, max = 10 }\n",
                "bindings[0].buffer.len",
                "0 to 1",
            ),
            (
                "symbol = \"f\"\nop = \"tty.write\"\nbuffer = { ptr = 0, len = 0, max = 10 }\n",
                "bindings[0].buffer.len",
                "different",
            ),
            (
                "symbol = \"f\"\nop = \"tty.write\"\nbuffer = { ptr = 0, len = 1, max = 0 }\n",
                "bindings[0].buffer.max",
                "byte count",
            ),
            (
                "symbol = \"f\"\nop = \"tty.write\"\nbuffer = { ptr = 0, len = 1, max = 9, unit = \"sectors\" }\n",
                "bindings[0].buffer.unit",
                "bytes",
            ),
            (
                "symbol = \"f\"\nop = \"block.read\"\nbuffer = { ptr = 0, len = 1, max = 512 }\n",
                "bindings[0].sector_arg",
                "sector",
            ),
            ("symbol = \"f\"\nop = \"clock.wall\"\nsector_arg = 0\n", "bindings[0].sector_arg", "none"),
            ("symbol = \"f\"\nop = \"clock.wall\"\nconvention = \"fastcall\"\n", "bindings[0].convention", "regparm3"),
            ("symbol = \"f\"\nop = \"clock.wall\"\nreturns = \"count\"\n", "bindings[0].returns", "value64"),
            ("symbol = \"f\"\nop = \"clock.wall\"\nerror_return = 4294967296\n", "bindings[0].error_return", "32-bit"),
            ("symbol = \"f\"\nop = \"clock.wall\"\nargs = 17\n", "bindings[0].args", "16"),
        ];
        for (body, want_field, want_expected) in cases {
            let src = format!("# policy\n{head}{body}");
            let (line, field, expected) = invalid(&src);
            assert_eq!(field, *want_field, "{body}");
            assert!(expected.contains(want_expected), "{body}: {expected}");
            assert!(
                (2..=2 + body.lines().count()).contains(&line),
                "{body}: line {line}"
            );
        }
    }

    #[test]
    fn default_table_overrides_builtin_entries_only() {
        let r = ServiceRegistry::new();
        let t =
            DefaultTable::from_toml("[services.tty]\nid = \"discard\"\n", "d.toml", &r).unwrap();
        assert_eq!(t.service(ServiceType::Tty).unwrap().id, "discard");
        assert_eq!(t.service(ServiceType::Clock).unwrap().id, "host");
        assert!(matches!(
            DefaultTable::from_toml("[[bindings]]\nop = \"clock.wall\"\n", "d.toml", &r),
            Err(PolicyError::Syntax { line: 1, .. })
        ));
    }

    #[test]
    fn reload_replaces_only_with_a_valid_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let r = ServiceRegistry::new();
        let handle = PolicyHandle::new(Policy::default());
        std::fs::write(&path, "[services.tty]\nid = \"buffer\"\n").unwrap();
        handle.reload(&path, &r).unwrap();
        assert_eq!(handle.generation(), 1);
        std::fs::write(&path, "[services.tty]\nid = \"printer\"\n").unwrap();
        let err = handle.reload(&path, &r).unwrap_err();
        assert!(err.to_string().contains("policy.toml:2"), "{err}");
        assert_eq!(handle.generation(), 1);
        assert_eq!(
            handle.current().service(ServiceType::Tty).unwrap().id,
            "buffer"
        );
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = Policy::load(
            Path::new("/nonexistent/policy.toml"),
            &ServiceRegistry::new(),
        )
        .unwrap_err();
        assert!(matches!(err, PolicyError::Read { .. }));
    }
}
