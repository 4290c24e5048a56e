//! Builds services from the (type, id, parameters) a policy entry names.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::params::ParamTypeError;
use crate::{
    AllowAll, AuditLog, Block, BufferTty, Clock, CowBlock, CowOverlay, DenyList, DiscardTty,
    FastForwardIdle, FileBlock, HostClock, Idle, LogFileTty, MemoryBlock, Security, ServiceError,
    ServiceParams, ServiceType, SleepIdle, SpinIdle, TerminalTty, Tty, VirtualClock,
};

/// A built service, typed by its service type.
#[derive(Clone)]
pub enum ServiceHandle {
    /// A console.
    Tty(Arc<dyn Tty>),
    /// A disk.
    Block(Arc<dyn Block>),
    /// A clock.
    Clock(Arc<dyn Clock>),
    /// An idle service.
    Idle(Arc<dyn Idle>),
    /// A security service.
    Security(Arc<dyn Security>),
}

impl ServiceHandle {
    /// The type of service held.
    pub fn service_type(&self) -> ServiceType {
        match self {
            ServiceHandle::Tty(_) => ServiceType::Tty,
            ServiceHandle::Block(_) => ServiceType::Block,
            ServiceHandle::Clock(_) => ServiceType::Clock,
            ServiceHandle::Idle(_) => ServiceType::Idle,
            ServiceHandle::Security(_) => ServiceType::Security,
        }
    }

    /// The service's id.
    pub fn id(&self) -> &str {
        match self {
            ServiceHandle::Tty(s) => s.id(),
            ServiceHandle::Block(s) => s.id(),
            ServiceHandle::Clock(s) => s.id(),
            ServiceHandle::Idle(s) => s.id(),
            ServiceHandle::Security(s) => s.id(),
        }
    }

    /// Whether the service can be accessed now (see [`crate::Service::probe`]).
    ///
    /// # Errors
    /// The service's own probe error.
    pub fn probe(&self) -> Result<(), ServiceError> {
        match self {
            ServiceHandle::Tty(s) => s.probe(),
            ServiceHandle::Block(s) => s.probe(),
            ServiceHandle::Clock(s) => s.probe(),
            ServiceHandle::Idle(s) => s.probe(),
            ServiceHandle::Security(s) => s.probe(),
        }
    }
}

impl fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceHandle({}:{})", self.service_type(), self.id())
    }
}

/// Why a service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The type has no service with this id.
    #[error("no {ty} service is called `{id}` (known: {known})")]
    UnknownId {
        /// The service type.
        ty: ServiceType,
        /// The id asked for.
        id: String,
        /// The ids that exist, comma-separated.
        known: String,
    },
    /// The type is reserved and has no services yet.
    #[error("service type `{ty}` is reserved and has no implementations yet")]
    Reserved {
        /// The service type.
        ty: ServiceType,
    },
    /// A required parameter is missing.
    #[error("{ty} service `{id}` needs parameter `{param}` ({expected})")]
    MissingParam {
        /// The service type.
        ty: ServiceType,
        /// The service id.
        id: String,
        /// The parameter.
        param: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// A parameter the service does not take.
    #[error("{ty} service `{id}` takes no parameter `{param}` (it takes: {allowed})")]
    UnknownParam {
        /// The service type.
        ty: ServiceType,
        /// The service id.
        id: String,
        /// The parameter given.
        param: String,
        /// The parameters it takes, comma-separated.
        allowed: String,
    },
    /// A parameter has the wrong kind of value.
    #[error("{ty} service `{id}`: {source}")]
    BadParam {
        /// The service type.
        ty: ServiceType,
        /// The service id.
        id: String,
        /// What was wrong.
        #[source]
        source: ParamTypeError,
    },
    /// The service was recognised but failed to start (file missing, node unreachable).
    #[error("{ty} service `{id}` cannot be started: {source}")]
    Service {
        /// The service type.
        ty: ServiceType,
        /// The service id.
        id: String,
        /// The service's error.
        #[source]
        source: ServiceError,
    },
}

/// Builds a service from its parameters; registered under a (type, id).
pub type ServiceConstructor =
    Arc<dyn Fn(&ServiceParams) -> Result<ServiceHandle, ServiceError> + Send + Sync>;

/// Parameters each built-in service takes: (type, id, [(name, required, expected)]).
type ParamSpec = (&'static str, bool, Kind);

/// The kind of value a parameter takes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Path,
    Count,
    Flag,
    Names,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Path => "a path string",
            Kind::Count => "a non-negative integer",
            Kind::Flag => "a boolean",
            Kind::Names => "a list of strings",
        }
    }

    fn check(self, params: &ServiceParams, name: &str) -> Result<(), ParamTypeError> {
        match self {
            Kind::Path => params.str(name).map(drop),
            Kind::Count => params.u64(name).map(drop),
            Kind::Flag => params.bool(name).map(drop),
            Kind::Names => params.list(name).map(drop),
        }
    }
}
const BUILTIN: &[(ServiceType, &str, &[ParamSpec])] = &[
    (ServiceType::Tty, "terminal", &[]),
    (ServiceType::Tty, "logfile", &[("path", true, Kind::Path)]),
    (ServiceType::Tty, "discard", &[]),
    (ServiceType::Tty, "buffer", &[]),
    (
        ServiceType::Block,
        "file",
        &[("path", true, Kind::Path), ("read_only", false, Kind::Flag)],
    ),
    (
        ServiceType::Block,
        "cow",
        &[("base", true, Kind::Path), ("overlay", false, Kind::Path)],
    ),
    (
        ServiceType::Block,
        "memory",
        &[("sectors", true, Kind::Count)],
    ),
    (ServiceType::Clock, "host", &[]),
    (
        ServiceType::Clock,
        "virtual",
        &[
            ("step_ns", false, Kind::Count),
            ("start_ns", false, Kind::Count),
        ],
    ),
    (ServiceType::Idle, "sleep", &[]),
    (ServiceType::Idle, "spin", &[]),
    (ServiceType::Idle, "fast-forward", &[]),
    (ServiceType::Security, "allow-all", &[]),
    (
        ServiceType::Security,
        "audit-log",
        &[("path", false, Kind::Path)],
    ),
    (
        ServiceType::Security,
        "deny-list",
        &[("ops", true, Kind::Names)],
    ),
];

/// Default step of the shared virtual clock: 1 µs per read.
const VIRTUAL_STEP_NS: u64 = 1_000;
/// Wall time of the shared virtual clock at monotonic zero: 2024-01-01T00:00:00Z.
const VIRTUAL_EPOCH_NS: u64 = 1_704_067_200_000_000_000;

/// Builds services by (type, id, parameters).
///
/// Some services are one instance per registry, so that what the guest does through
/// them can be seen from the host: the `buffer` console, the `virtual` clock (which the
/// `fast-forward` idle service advances) and the in-memory `audit-log`.
pub struct ServiceRegistry {
    buffer_tty: Arc<BufferTty>,
    virtual_clock: Arc<VirtualClock>,
    audit_log: Arc<AuditLog>,
    extra: BTreeMap<(ServiceType, String), ServiceConstructor>,
}

impl fmt::Debug for ServiceRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceRegistry")
            .field("extra", &self.extra.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for ServiceRegistry {
    fn default() -> Self {
        ServiceRegistry::new()
    }
}

impl ServiceRegistry {
    /// A registry of the built-in services.
    pub fn new() -> Self {
        ServiceRegistry {
            buffer_tty: Arc::new(BufferTty::new()),
            virtual_clock: Arc::new(VirtualClock::new(VIRTUAL_EPOCH_NS, 0, VIRTUAL_STEP_NS)),
            audit_log: Arc::new(AuditLog::new()),
            extra: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a service id for a type, e.g. a remote service client.
    pub fn register(&mut self, ty: ServiceType, id: &str, ctor: ServiceConstructor) {
        self.extra.insert((ty, id.to_owned()), ctor);
    }

    /// The built-in ids of a type.
    pub fn builtin_ids(ty: ServiceType) -> Vec<&'static str> {
        BUILTIN
            .iter()
            .filter(|(t, ..)| *t == ty)
            .map(|(_, id, _)| *id)
            .collect()
    }

    /// Every id this registry can build for a type.
    pub fn known_ids(&self, ty: ServiceType) -> Vec<String> {
        let mut ids: Vec<String> = Self::builtin_ids(ty)
            .into_iter()
            .map(str::to_owned)
            .collect();
        ids.extend(
            self.extra
                .keys()
                .filter(|(t, _)| *t == ty)
                .map(|(_, id)| id.clone()),
        );
        ids.sort();
        ids.dedup();
        ids
    }

    /// The console behind the `buffer` tty id.
    pub fn buffer_tty(&self) -> Arc<BufferTty> {
        Arc::clone(&self.buffer_tty)
    }

    /// The clock behind the `virtual` clock id.
    pub fn virtual_clock(&self) -> Arc<VirtualClock> {
        Arc::clone(&self.virtual_clock)
    }

    /// The log behind the `audit-log` security id when it has no `path`.
    pub fn audit_log(&self) -> Arc<AuditLog> {
        Arc::clone(&self.audit_log)
    }

    /// Checks, without starting anything, that `id` names a service of `ty` and that
    /// `params` suit it; what a policy loader uses to report errors against the file.
    ///
    /// # Errors
    /// As [`ServiceRegistry::instantiate`], short of failures to start.
    pub fn validate(
        &self,
        ty: ServiceType,
        id: &str,
        params: &ServiceParams,
    ) -> Result<(), RegistryError> {
        if self.extra.contains_key(&(ty, id.to_owned())) {
            // Registered services (remote clients) check their own parameters.
            return Ok(());
        }
        if ty.is_reserved() {
            return Err(RegistryError::Reserved { ty });
        }
        match BUILTIN.iter().find(|(t, i, _)| *t == ty && *i == id) {
            None => Err(RegistryError::UnknownId {
                ty,
                id: id.to_owned(),
                known: self.known_ids(ty).join(", "),
            }),
            Some((_, _, spec)) => check_params(ty, id, spec, params),
        }
    }

    /// Builds the service `id` of type `ty`.
    ///
    /// # Errors
    /// An unknown id, a reserved type, missing, unknown or mistyped parameters, or a
    /// service that fails to start.
    pub fn instantiate(
        &self,
        ty: ServiceType,
        id: &str,
        params: &ServiceParams,
    ) -> Result<ServiceHandle, RegistryError> {
        let service_err = |source| RegistryError::Service {
            ty,
            id: id.to_owned(),
            source,
        };
        if let Some(ctor) = self.extra.get(&(ty, id.to_owned())) {
            return ctor(params).map_err(service_err);
        }
        if ty.is_reserved() {
            return Err(RegistryError::Reserved { ty });
        }
        let Some((_, _, spec)) = BUILTIN.iter().find(|(t, i, _)| *t == ty && *i == id) else {
            return Err(RegistryError::UnknownId {
                ty,
                id: id.to_owned(),
                known: self.known_ids(ty).join(", "),
            });
        };
        check_params(ty, id, spec, params)?;
        let bad = |source| RegistryError::BadParam {
            ty,
            id: id.to_owned(),
            source,
        };
        // check_params made sure required parameters are present.
        let required_str = |name: &'static str| -> Result<&str, RegistryError> {
            params
                .str(name)
                .map_err(bad)?
                .ok_or(RegistryError::MissingParam {
                    ty,
                    id: id.to_owned(),
                    param: name,
                    expected: "a string",
                })
        };
        let handle = match (ty, id) {
            (ServiceType::Tty, "terminal") => ServiceHandle::Tty(Arc::new(TerminalTty::new())),
            (ServiceType::Tty, "logfile") => ServiceHandle::Tty(Arc::new(
                LogFileTty::open(Path::new(required_str("path")?)).map_err(service_err)?,
            )),
            (ServiceType::Tty, "discard") => ServiceHandle::Tty(Arc::new(DiscardTty)),
            (ServiceType::Tty, "buffer") => ServiceHandle::Tty(self.buffer_tty()),
            (ServiceType::Block, "file") => {
                let ro = params.bool("read_only").map_err(bad)?.unwrap_or(false);
                ServiceHandle::Block(Arc::new(
                    FileBlock::open(Path::new(required_str("path")?), ro).map_err(service_err)?,
                ))
            }
            (ServiceType::Block, "cow") => {
                let overlay = match params.str("overlay").map_err(bad)? {
                    Some(p) => CowOverlay::file(Path::new(p)).map_err(service_err)?,
                    None => CowOverlay::memory(),
                };
                ServiceHandle::Block(Arc::new(
                    CowBlock::new(Path::new(required_str("base")?), overlay)
                        .map_err(service_err)?,
                ))
            }
            (ServiceType::Block, "memory") => {
                let sectors = params.u64("sectors").map_err(bad)?.unwrap_or(0);
                ServiceHandle::Block(Arc::new(MemoryBlock::new(sectors).map_err(service_err)?))
            }
            (ServiceType::Clock, "host") => ServiceHandle::Clock(Arc::new(HostClock::new())),
            (ServiceType::Clock, "virtual") => {
                if let Some(step) = params.u64("step_ns").map_err(bad)? {
                    self.virtual_clock.set_step_ns(step);
                }
                if let Some(start) = params.u64("start_ns").map_err(bad)? {
                    self.virtual_clock.set_ns(start);
                }
                ServiceHandle::Clock(self.virtual_clock())
            }
            (ServiceType::Idle, "sleep") => ServiceHandle::Idle(Arc::new(SleepIdle::new())),
            (ServiceType::Idle, "spin") => ServiceHandle::Idle(Arc::new(SpinIdle::new())),
            (ServiceType::Idle, "fast-forward") => {
                ServiceHandle::Idle(Arc::new(FastForwardIdle::new(self.virtual_clock())))
            }
            (ServiceType::Security, "allow-all") => ServiceHandle::Security(Arc::new(AllowAll)),
            (ServiceType::Security, "audit-log") => match params.str("path").map_err(bad)? {
                Some(p) => ServiceHandle::Security(Arc::new(
                    AuditLog::with_file(Path::new(p)).map_err(service_err)?,
                )),
                None => ServiceHandle::Security(self.audit_log()),
            },
            (ServiceType::Security, "deny-list") => {
                let ops = params.list("ops").map_err(bad)?.unwrap_or_default();
                ServiceHandle::Security(Arc::new(DenyList::new(ops.iter().cloned())))
            }
            _ => {
                return Err(RegistryError::UnknownId {
                    ty,
                    id: id.to_owned(),
                    known: self.known_ids(ty).join(", "),
                })
            }
        };
        Ok(handle)
    }
}

fn check_params(
    ty: ServiceType,
    id: &str,
    spec: &[ParamSpec],
    params: &ServiceParams,
) -> Result<(), RegistryError> {
    if let Some(unknown) = params.names().find(|n| !spec.iter().any(|(s, ..)| s == n)) {
        let allowed: Vec<&str> = spec.iter().map(|(n, ..)| *n).collect();
        return Err(RegistryError::UnknownParam {
            ty,
            id: id.to_owned(),
            param: unknown.to_owned(),
            allowed: if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            },
        });
    }
    for &(name, required, kind) in spec {
        if required && !params.0.contains_key(name) {
            return Err(RegistryError::MissingParam {
                ty,
                id: id.to_owned(),
                param: name,
                expected: kind.expected(),
            });
        }
        kind.check(params, name)
            .map_err(|source| RegistryError::BadParam {
                ty,
                id: id.to_owned(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamValue;

    #[test]
    fn every_implemented_type_has_at_least_two_services() {
        for ty in ServiceType::ALL.into_iter().filter(|t| !t.is_reserved()) {
            assert!(ServiceRegistry::builtin_ids(ty).len() >= 2, "{ty}");
        }
    }

    #[test]
    fn builds_parameterless_builtins() {
        let r = ServiceRegistry::new();
        for (ty, id, spec) in BUILTIN {
            if spec.iter().all(|(_, required, _)| !required) {
                let h = r.instantiate(*ty, id, &ServiceParams::new()).unwrap();
                assert_eq!((h.service_type(), h.id()), (*ty, *id));
                h.probe().unwrap();
            }
        }
    }

    #[test]
    fn unknown_id_names_the_known_ones() {
        let err = ServiceRegistry::new()
            .instantiate(ServiceType::Tty, "printer", &ServiceParams::new())
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RegistryError::UnknownId { .. }));
        assert!(
            msg.contains("printer") && msg.contains("buffer, discard, logfile, terminal"),
            "{msg}"
        );
    }

    #[test]
    fn parameter_errors_are_specific() {
        let r = ServiceRegistry::new();
        assert!(matches!(
            r.instantiate(ServiceType::Block, "file", &ServiceParams::new()),
            Err(RegistryError::MissingParam { param: "path", .. })
        ));
        let p = ServiceParams::new().with("sectors", ParamValue::Str("many".into()));
        assert!(matches!(
            r.instantiate(ServiceType::Block, "memory", &p),
            Err(RegistryError::BadParam { .. })
        ));
        let p = ServiceParams::new().with("colour", ParamValue::Bool(true));
        assert!(matches!(
            r.instantiate(ServiceType::Tty, "terminal", &p),
            Err(RegistryError::UnknownParam { .. })
        ));
        assert!(matches!(
            r.instantiate(ServiceType::Memory, "x", &ServiceParams::new()),
            Err(RegistryError::Reserved { .. })
        ));
        let p = ServiceParams::new().with("path", ParamValue::Str("/nonexistent/disk.img".into()));
        assert!(matches!(
            r.instantiate(ServiceType::Block, "file", &p),
            Err(RegistryError::Service {
                source: ServiceError::Io { .. },
                ..
            })
        ));
    }

    #[test]
    fn shared_instances_are_visible_to_the_host() {
        let r = ServiceRegistry::new();
        let ServiceHandle::Tty(t) = r
            .instantiate(ServiceType::Tty, "buffer", &ServiceParams::new())
            .unwrap()
        else {
            panic!("not a tty")
        };
        t.write(b"guest").unwrap();
        assert_eq!(r.buffer_tty().output(), b"guest");

        let p = ServiceParams::new().with("step_ns", ParamValue::Int(10));
        let ServiceHandle::Clock(c) = r.instantiate(ServiceType::Clock, "virtual", &p).unwrap()
        else {
            panic!("not a clock")
        };
        let ServiceHandle::Idle(i) = r
            .instantiate(ServiceType::Idle, "fast-forward", &ServiceParams::new())
            .unwrap()
        else {
            panic!("not idle")
        };
        assert_eq!(c.monotonic_ns().unwrap(), 0);
        i.idle(Some(std::time::Duration::from_nanos(1_000)))
            .unwrap();
        assert_eq!(c.monotonic_ns().unwrap(), 1_010);
    }

    #[test]
    fn registered_constructor_overrides_and_extends() {
        let mut r = ServiceRegistry::new();
        r.register(
            ServiceType::Tty,
            "remote",
            Arc::new(|_| {
                Err(ServiceError::Unavailable {
                    service: "remote".into(),
                    reason: "no node".into(),
                })
            }),
        );
        assert!(r.known_ids(ServiceType::Tty).contains(&"remote".to_owned()));
        assert!(matches!(
            r.instantiate(ServiceType::Tty, "remote", &ServiceParams::new()),
            Err(RegistryError::Service { .. })
        ));
    }
}
