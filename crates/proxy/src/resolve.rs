//! Choosing the service that serves a type: the policy's if it names one that can be
//! accessed, else the default table's; every fallback is counted and logged.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
            .field("stats", &*lock(&self.stats))
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
        *self
            .defaults
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(defaults);
    }

    /// Counters of how each type's calls were served.
    pub fn stats(&self) -> BTreeMap<ServiceType, TypeStats> {
        lock(&self.stats).clone()
    }

    fn defaults(&self) -> Arc<DefaultTable> {
        Arc::clone(
            &self
                .defaults
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The (cached) service `spec` names, checked to be accessible now.
    fn open(&self, ty: ServiceType, spec: &ServiceSpec) -> Result<ServiceHandle, String> {
        let k = key(ty, spec);
        let cached = lock(&self.cache).get(&k).cloned();
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
                lock(&self.cache).insert(k.clone(), h.clone());
                h
            }
        };
        handle.probe().map_err(|e| {
            // A service that stopped answering is rebuilt next time rather than reused.
            lock(&self.cache).remove(&k);
            e.to_string()
        })?;
        Ok(handle)
    }

    fn record(&self, ty: ServiceType, f: impl FnOnce(&mut TypeStats)) {
        f(lock(&self.stats).entry(ty).or_default());
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
                            lock(&self.cache).remove(&key(ty, spec));
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
