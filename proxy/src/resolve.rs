//! Choosing the service that serves a type: the policy's if it names one that can be
//! accessed, else the default table's; every fallback is counted and logged.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use services::{ServiceError, ServiceHandle, ServiceParams, ServiceRegistry, ServiceType};

use crate::policy::{DefaultTable, PolicyHandle, ServiceSpec};

/// Reaches services on remote service nodes.
pub trait NodeConnector: Send + Sync {
    /// A client for the service `spec` names, provided by `node`.
    ///
    /// # Errors
    /// When the node cannot be reached or does not provide the service; the proxy then
    /// treats the service as inaccessible.
    fn connect(
        &self,
        ty: ServiceType,
        spec: &ServiceSpec,
        node: SocketAddr,
    ) -> Result<ServiceHandle, ServiceError>;
}

/// Why the default service served a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackReason {
    /// The policy names no service for the type.
    PolicySilent,
    /// The policy's service could not be accessed (start, probe or call failed).
    Inaccessible {
        /// The policy's service id.
        id: String,
        /// What went wrong.
        error: String,
    },
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackReason::PolicySilent => f.write_str("the policy names no service"),
            FallbackReason::Inaccessible { id, error } => {
                write!(f, "policy service `{id}` cannot be accessed: {error}")
            }
        }
    }
}

/// Which table a serving service came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The kernel policy.
    Policy,
    /// The default service table, for the reason given.
    Default(FallbackReason),
}

/// The service that served a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedBy {
    /// Its type.
    pub ty: ServiceType,
    /// Its id.
    pub id: String,
    /// Where it was chosen from.
    pub source: Source,
}

/// Per-type counters of how calls were served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStats {
    /// Calls served by the policy's service.
    pub served_by_policy: u64,
    /// Calls served by the default because the policy names no service.
    pub default_policy_silent: u64,
    /// Calls served by the default because the policy's service could not be accessed.
    pub fell_back_inaccessible: u64,
    /// Calls no service could serve (neither the policy's nor the default).
    pub unserved: u64,
    /// The latest reason for falling back.
    pub last_fallback: Option<FallbackReason>,
}

impl TypeStats {
    /// Every call served by the default table.
    pub fn fell_back(&self) -> u64 {
        self.default_policy_silent + self.fell_back_inaccessible
    }
}

/// No service could serve a type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {ty} service: {reason}; default: {default_error}")]
pub struct NoService {
    /// The type.
    pub ty: ServiceType,
    /// Why the policy's service was not used.
    pub reason: FallbackReason,
    /// Why the default was not used either.
    pub default_error: String,
}

/// A service request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No service could be reached.
    #[error(transparent)]
    NoService(Box<NoService>),
    /// The serving service refused or failed the request itself.
    #[error("{} service `{}`: {error}", served.ty, served.id)]
    Service {
        /// The service that failed.
        served: Box<ServedBy>,
        /// Its error.
        error: ServiceError,
    },
}

/// Instances are shared across calls, keyed by what makes them the same service (not
/// the line of the policy that named it, so reloading an unchanged entry keeps, say, the
/// same in-memory disk).
type CacheKey = (ServiceType, String, Option<SocketAddr>, ServiceParams);

fn key(ty: ServiceType, spec: &ServiceSpec) -> CacheKey {
    (ty, spec.id.clone(), spec.node, spec.params.clone())
}

/// The kernel proxy: serves bound guest OS-service calls with services chosen by the
/// kernel policy, falling back to the default service table.
pub struct KernelProxy {
    policy: PolicyHandle,
    defaults: RwLock<Arc<DefaultTable>>,
    registry: Arc<ServiceRegistry>,
    nodes: Option<Arc<dyn NodeConnector>>,
    cache: Mutex<HashMap<CacheKey, ServiceHandle>>,
    stats: Mutex<BTreeMap<ServiceType, TypeStats>>,
}

impl fmt::Debug for KernelProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelProxy")
            .field("policy", &self.policy.current())
            .field("stats", &*self.stats.lock())
            .finish_non_exhaustive()
    }
}

impl KernelProxy {
    /// A proxy serving `policy`, falling back to `defaults`, building services from
    /// `registry`.
    pub fn new(
        policy: PolicyHandle,
        defaults: DefaultTable,
        registry: Arc<ServiceRegistry>,
    ) -> Self {
        KernelProxy {
            policy,
            defaults: RwLock::new(Arc::new(defaults)),
            registry,
            nodes: None,
            cache: Mutex::default(),
            stats: Mutex::default(),
        }
    }

    /// Lets the proxy reach services on remote nodes through `nodes`. Without one, a
    /// policy entry that names a node cannot be accessed and its default serves.
    pub fn with_node_connector(mut self, nodes: Arc<dyn NodeConnector>) -> Self {
        self.nodes = Some(nodes);
        self
    }

    /// The policy handle, for an administration interface to replace the policy.
    pub fn policy(&self) -> &PolicyHandle {
        &self.policy
    }

    /// The registry services are built from.
    pub fn registry(&self) -> &Arc<ServiceRegistry> {
        &self.registry
    }

    /// Replaces the default service table; takes effect on the next call.
    pub fn set_defaults(&self, defaults: DefaultTable) {
        *self.defaults.write() = Arc::new(defaults);
    }

    /// Whether the policy in force or the default table names a service on a service
    /// node (which the proxy reaches over gRPC when a call comes).
    pub fn names_service_nodes(&self) -> bool {
        let policy = self.policy.current();
        let defaults = self.defaults();
        ServiceType::ALL.into_iter().any(|ty| {
            [policy.service(ty), defaults.service(ty)]
                .into_iter()
                .flatten()
                .any(|spec| spec.node.is_some())
        })
    }

    /// Counters of how each type's calls were served.
    pub fn stats(&self) -> BTreeMap<ServiceType, TypeStats> {
        self.stats.lock().clone()
    }

    fn defaults(&self) -> Arc<DefaultTable> {
        Arc::clone(&self.defaults.read())
    }

    /// The (cached) service `spec` names, checked to be accessible now.
    fn open(&self, ty: ServiceType, spec: &ServiceSpec) -> Result<ServiceHandle, String> {
        let k = key(ty, spec);
        let cached = self.cache.lock().get(&k).cloned();
        let handle = match cached {
            Some(h) => h,
            None => {
                let h = match (spec.node, &self.nodes) {
                    (None, _) => self
                        .registry
                        .instantiate(ty, &spec.id, &spec.params)
                        .map_err(|e| e.to_string())?,
                    (Some(node), Some(nodes)) => nodes
                        .connect(ty, spec, node)
                        .map_err(|e| format!("node {node}: {e}"))?,
                    (Some(node), None) => {
                        return Err(format!(
                            "node {node}: this monitor has no service-node client"
                        ))
                    }
                };
                if h.service_type() != ty {
                    return Err(format!(
                        "`{}` built a {} service, not a {ty} one",
                        spec.id,
                        h.service_type()
                    ));
                }
                self.cache.lock().insert(k.clone(), h.clone());
                h
            }
        };
        handle.probe().map_err(|e| {
            // A service that stopped answering is rebuilt next time rather than reused.
            self.cache.lock().remove(&k);
            e.to_string()
        })?;
        Ok(handle)
    }

    fn record(&self, ty: ServiceType, f: impl FnOnce(&mut TypeStats)) {
        f(self.stats.lock().entry(ty).or_default());
    }

    /// Performs `call` on the service for `ty`: the policy's if it names one that can be
    /// accessed, else the default's. A policy service whose call fails as inaccessible
    /// (unavailable, timed out) is replaced by the default for this call.
    ///
    /// # Errors
    /// [`ServeError::NoService`] when neither service can be accessed;
    /// [`ServeError::Service`] when the serving service fails the request.
    pub fn serve<T>(
        &self,
        ty: ServiceType,
        mut call: impl FnMut(&ServiceHandle) -> Result<T, ServiceError>,
    ) -> Result<(T, ServedBy, ServiceHandle), ServeError> {
        let policy = self.policy.current();
        let reason = match policy.service(ty) {
            None => FallbackReason::PolicySilent,
            Some(spec) => {
                let served = ServedBy {
                    ty,
                    id: spec.id.clone(),
                    source: Source::Policy,
                };
                match self.open(ty, spec) {
                    Err(error) => FallbackReason::Inaccessible {
                        id: spec.id.clone(),
                        error,
                    },
                    Ok(h) => match call(&h) {
                        Ok(v) => {
                            self.record(ty, |s| s.served_by_policy += 1);
                            return Ok((v, served, h));
                        }
                        Err(e) if e.is_inaccessible() => {
                            self.cache.lock().remove(&key(ty, spec));
                            FallbackReason::Inaccessible {
                                id: spec.id.clone(),
                                error: e.to_string(),
                            }
                        }
                        Err(error) => {
                            self.record(ty, |s| s.served_by_policy += 1);
                            return Err(ServeError::Service {
                                served: Box::new(served),
                                error,
                            });
                        }
                    },
                }
            }
        };
        let defaults = self.defaults();
        let default = defaults
            .service(ty)
            .ok_or_else(|| "the default table names none".to_owned())
            .and_then(|spec| Ok((spec, self.open(ty, spec)?)));
        let (spec, handle) = match default {
            Ok(found) => found,
            Err(default_error) => {
                log::error!("{ty}: {reason}, and no default service: {default_error}");
                self.record(ty, |s| s.unserved += 1);
                return Err(ServeError::NoService(Box::new(NoService {
                    ty,
                    reason,
                    default_error,
                })));
            }
        };
        match &reason {
            FallbackReason::PolicySilent => {
                log::debug!("{ty}: {reason}; default `{}` serves", spec.id);
                self.record(ty, |s| s.default_policy_silent += 1);
            }
            FallbackReason::Inaccessible { .. } => {
                log::warn!("{ty}: {reason}; default `{}` serves", spec.id);
                self.record(ty, |s| s.fell_back_inaccessible += 1);
            }
        }
        let served = ServedBy {
            ty,
            id: spec.id.clone(),
            source: Source::Default(reason.clone()),
        };
        self.record(ty, |s| s.last_fallback = Some(reason));
        match call(&handle) {
            Ok(v) => Ok((v, served, handle)),
            Err(error) => Err(ServeError::Service {
                served: Box::new(served),
                error,
            }),
        }
    }

    /// The service that would serve `ty` now, and where it was chosen from. Counts as a
    /// use in the statistics.
    ///
    /// # Errors
    /// When no service can be accessed.
    pub fn resolve(&self, ty: ServiceType) -> Result<(ServiceHandle, ServedBy), ServeError> {
        self.serve(ty, |_| Ok(()))
            .map(|((), served, h)| (h, served))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use services::ParamValue;

    fn proxy(policy: &str, defaults: DefaultTable) -> KernelProxy {
        let registry = Arc::new(ServiceRegistry::new());
        let policy = Policy::from_toml(policy, "policy.toml", &registry).unwrap();
        KernelProxy::new(PolicyHandle::new(policy), defaults, registry)
    }

    fn defaults() -> DefaultTable {
        let mut t = DefaultTable::builtin();
        t.services
            .insert(ServiceType::Tty, ServiceSpec::local("discard"));
        t
    }

    #[test]
    fn named_and_reachable_serves_the_policy_service() {
        let p = proxy("[services.tty]\nid = \"buffer\"\n", defaults());
        let (h, by) = p.resolve(ServiceType::Tty).unwrap();
        assert_eq!((h.id(), by.source), ("buffer", Source::Policy));
        let ServiceHandle::Tty(t) = h else {
            panic!("{h:?}")
        };
        t.write(b"hi").unwrap();
        assert_eq!(p.registry().buffer_tty().output(), b"hi");
        let s = &p.stats()[&ServiceType::Tty];
        assert_eq!((s.served_by_policy, s.fell_back()), (1, 0));
    }

    #[test]
    fn named_but_unreachable_falls_back_and_is_recorded() {
        let p = proxy(
            "[services.block]\nid = \"file\"\nparams = { path = \"/nonexistent/disk.img\" }\n",
            defaults(),
        );
        for _ in 0..2 {
            let (h, by) = p.resolve(ServiceType::Block).unwrap();
            assert_eq!(h.id(), "memory");
            match by.source {
                Source::Default(FallbackReason::Inaccessible { id, error }) => {
                    assert_eq!(id, "file");
                    assert!(error.contains("/nonexistent/disk.img"), "{error}");
                }
                other => panic!("{other:?}"),
            }
        }
        let s = &p.stats()[&ServiceType::Block];
        assert_eq!((s.served_by_policy, s.fell_back_inaccessible), (0, 2));
        assert!(matches!(
            s.last_fallback,
            Some(FallbackReason::Inaccessible { .. })
        ));
    }

    #[test]
    fn a_node_without_a_node_client_is_unreachable() {
        let p = proxy(
            "[services.tty]\nid = \"buffer\"\nnode = \"127.0.0.1:9\"\n",
            defaults(),
        );
        let (h, by) = p.resolve(ServiceType::Tty).unwrap();
        assert_eq!(h.id(), "discard");
        assert!(matches!(
            by.source,
            Source::Default(FallbackReason::Inaccessible { .. })
        ));
    }

    #[test]
    fn silent_policy_uses_the_default() {
        let p = proxy("", defaults());
        let (h, by) = p.resolve(ServiceType::Clock).unwrap();
        assert_eq!(h.id(), "host");
        assert_eq!(by.source, Source::Default(FallbackReason::PolicySilent));
        let s = &p.stats()[&ServiceType::Clock];
        assert_eq!((s.default_policy_silent, s.fell_back_inaccessible), (1, 0));
    }

    #[test]
    fn no_policy_and_no_default_is_no_service() {
        let mut d = defaults();
        d.services.remove(&ServiceType::Tty);
        let p = proxy("", d);
        match p.resolve(ServiceType::Tty) {
            Err(ServeError::NoService(e)) => assert_eq!(e.reason, FallbackReason::PolicySilent),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.stats()[&ServiceType::Tty].unserved, 1);
    }

    #[test]
    fn call_that_finds_the_service_inaccessible_is_retried_on_the_default() {
        let mut d = defaults();
        d.services
            .insert(ServiceType::Idle, ServiceSpec::local("spin"));
        let p = proxy("[services.idle]\nid = \"fast-forward\"\n", d);
        // Fast-forward cannot idle without a deadline (nothing would ever happen in
        // virtual time): that call fails as unavailable and the spinning default,
        // with an event pending, serves it.
        let ((), by, h) = p
            .serve(ServiceType::Idle, |h| match h {
                ServiceHandle::Idle(i) => {
                    if i.id() == "spin" {
                        i.wake();
                    }
                    i.idle(None).map(drop)
                }
                other => panic!("{other:?}"),
            })
            .unwrap();
        assert_eq!(h.id(), "spin");
        assert!(matches!(
            by.source,
            Source::Default(FallbackReason::Inaccessible { ref id, .. }) if id == "fast-forward"
        ));
        assert_eq!(p.stats()[&ServiceType::Idle].fell_back_inaccessible, 1);
    }

    #[test]
    fn services_are_kept_across_calls_and_policy_reloads() {
        let p = proxy(
            "[services.block]\nid = \"memory\"\nparams = { sectors = 4 }\n",
            defaults(),
        );
        let (ServiceHandle::Block(d), _) = p.resolve(ServiceType::Block).unwrap() else {
            panic!()
        };
        d.write(1, &[7; 512]).unwrap();
        // The same entry at another line of a reloaded file is the same disk.
        let reloaded = Policy::from_toml(
            "\n\n[services.block]\nid = \"memory\"\nparams = { sectors = 4 }\n",
            "policy.toml",
            p.registry(),
        )
        .unwrap();
        p.policy().replace(reloaded);
        let (ServiceHandle::Block(d), _) = p.resolve(ServiceType::Block).unwrap() else {
            panic!()
        };
        let mut buf = [0u8; 512];
        d.read(1, &mut buf).unwrap();
        assert_eq!(buf, [7; 512]);
    }

    #[test]
    fn policy_change_is_seen_by_the_next_call() {
        let p = Arc::new(proxy("[services.tty]\nid = \"buffer\"\n", defaults()));
        assert_eq!(p.resolve(ServiceType::Tty).unwrap().0.id(), "buffer");
        let admin = p.policy().clone();
        std::thread::spawn(move || {
            let mut next = Policy::default();
            next.services.insert(
                ServiceType::Tty,
                ServiceSpec::local("logfile")
                    .with_param("path", ParamValue::Str("/nonexistent/dir/log".into())),
            );
            next.services
                .insert(ServiceType::Clock, ServiceSpec::local("virtual"));
            admin.replace(next);
        })
        .join()
        .unwrap();
        assert_eq!(p.policy().generation(), 1);
        // tty now names an inaccessible log file: the default serves it.
        let (h, by) = p.resolve(ServiceType::Tty).unwrap();
        assert_eq!(h.id(), "discard");
        assert!(matches!(
            by.source,
            Source::Default(FallbackReason::Inaccessible { .. })
        ));
        assert_eq!(p.resolve(ServiceType::Clock).unwrap().0.id(), "virtual");
    }
}
